//! vhost-user net (in progress).
