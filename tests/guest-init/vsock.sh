# virtio-vsock over vhost-user: report the CID, serve port 52, echo to the host's port 5000, then wait
# for the host to drive the rest (it kills the VM when done).
echo "GUEST-CID $(/bin/vsock-tool cid)"
/bin/vsock-tool serve 52 &
echo "ECHO-G2H $(/bin/vsock-tool echo-client 5000 hello-from-guest)"
echo VSOCK-READY
sleep 3600
