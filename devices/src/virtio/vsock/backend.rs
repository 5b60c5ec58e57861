//! The interface between the vsock device core and whatever carries connections on the host. The core
//! moves packets between the queues and a `VsockBackend`; the backend owns connections, credit and the
//! host-side fds.
//!
//! Implementations must treat every header handed to `send_pkt` as hostile (the core only guarantees
//! the payload length matches `hdr.len` for `OP_RW`).

use std::os::unix::io::RawFd;

use super::packet::PacketHeader;

/// Host side of a vsock device.
pub trait VsockBackend: Send {
    /// A packet the guest sent (TX queue). `payload` is empty unless `hdr.op` is `OP_RW`.
    fn send_pkt(&mut self, hdr: &PacketHeader, payload: &[u8]);

    /// The next packet for the guest: writes up to `buf.len()` payload bytes into `buf` and returns
    /// the header (its `len` is set by the caller) and the payload length, or `None` if nothing is
    /// ready.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(PacketHeader, usize)>;

    /// Whether `recv_pkt` may have something (a cheap hint; `recv_pkt` may still return `None`).
    fn has_pending_rx(&self) -> bool;

    /// A pollable fd, readable when `process_events` has work.
    fn event_fd(&self) -> RawFd;

    /// Handles host-side readiness (accepts, reads, writes).
    fn process_events(&mut self);

    /// The driver reset the device: close every connection.
    fn reset(&mut self);
}
