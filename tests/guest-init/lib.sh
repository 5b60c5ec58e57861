# Helpers sourced by the guest test scripts.
# dev_by_serial SERIAL: the /dev node of the virtio-blk disk whose GET_ID answer is SERIAL.
dev_by_serial() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${d##*/}" && return 0
  done
  return 1
}
# cmdline_arg NAME: the value of NAME=... on the kernel command line.
cmdline_arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1"=*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}
