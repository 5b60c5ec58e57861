//! Test helpers for virtio-net: an in-memory backend (frames in a queue, readiness through an eventfd)
//! and a guest with RX and TX queues in one memory.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::NetBackend;
use super::VNET_HDR_LEN;
use crate::virtio::test_utils::{GuestQueue, RING_SPAN};

/// Frames waiting for the guest and frames the guest sent, shared with the test.
#[derive(Clone)]
pub struct FakeTap {
    pub inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub outbound: Arc<Mutex<Vec<Vec<u8>>>>,
    ready: Arc<EventFd>,
}

impl FakeTap {
    pub fn new() -> Self {
        FakeTap {
            inbound: Arc::default(),
            outbound: Arc::default(),
            ready: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        }
    }

    /// Queues a frame (a virtio-net header is prepended) for the guest.
    pub fn push(&self, payload: &[u8]) {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(payload);
        self.inbound.lock().unwrap().push_back(f);
        self.ready.write(1).unwrap();
    }
}

impl Default for FakeTap {
    fn default() -> Self {
        Self::new()
    }
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut q = self.inbound.lock().unwrap();
        match q.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                if q.is_empty() {
                    let _ = self.ready.read();
                }
                Ok(Some(f.len()))
            }
            None => Ok(None),
        }
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.outbound.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

/// RX and TX queues sharing one guest memory.
pub fn queues() -> (GuestQueue, GuestQueue) {
    let rx = GuestQueue::new(16);
    let tx = GuestQueue::with_memory(rx.mem().clone(), 0x1000 + RING_SPAN, 16);
    (rx, tx)
}
