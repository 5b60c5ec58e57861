//! virtio-vsock with the hybrid unix-socket backend (in progress).
