//! vhost-user vsock (in progress).
