//! virtio-net over a TAP device (in progress).
