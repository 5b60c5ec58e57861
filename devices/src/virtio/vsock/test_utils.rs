//! Test helpers for virtio-vsock: a guest with RX and TX queues in one memory, packet builders that lay
//! packets out like Linux's driver (header and payload in separate descriptors), and a harness that runs
//! the device against the real unix-socket backend in a scratch directory.

use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{PacketHeader, HDR_LEN};
use super::{Vsock, VsockConfig, HOST_CID, TYPE_STREAM};
use crate::virtio::test_utils::{Desc, GuestQueue, TestTransport, RING_SPAN};
use crate::virtio::{DeviceError, QueueSet, QueueSignals};

/// Guest CID used by the tests.
pub const GUEST_CID: u64 = 3;
/// Where TX packets are built.
pub const PKT: u64 = 0x40_000;
/// Where RX buffers live (one 4 KiB + header slot per buffer).
pub const RX_BUFS: u64 = 0x80_000;
const RX_SLOT: u64 = 0x2000;

/// A guest-to-host header with a generous advertised credit.
pub fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// Offers a TX packet at `PKT`; `split` puts header and payload in separate descriptors.
pub fn write_tx_packet(q: &mut GuestQueue, hdr: &PacketHeader, payload: &[u8], split: bool) -> u16 {
    let mut hdr = *hdr;
    hdr.len = payload.len() as u32;
    q.mem_write(PKT, &hdr.to_bytes());
    let data_at = PKT + 0x1000;
    q.mem_write(data_at, payload);
    if split {
        if payload.is_empty() {
            q.add_chain(&[Desc::read(PKT, HDR_LEN as u32)])
        } else {
            q.add_chain(&[
                Desc::read(PKT, HDR_LEN as u32),
                Desc::read(data_at, payload.len() as u32),
            ])
        }
    } else {
        let mut all = hdr.to_bytes().to_vec();
        all.extend_from_slice(payload);
        q.mem_write(PKT, &all);
        q.add_chain(&[Desc::read(PKT, all.len() as u32)])
    }
}

/// A vsock device (driven as a transport drives it) with its two queues and a scratch directory for host
/// sockets.
pub struct Harness {
    pub dev: TestTransport<Vsock>,
    pub rx: GuestQueue,
    pub tx: GuestQueue,
    pub dir: PathBuf,
    rx_posted: u64,
}

impl Harness {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hull-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dev = TestTransport::new(
            Vsock::new(&VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: dir.join("v.sock"),
            })
            .unwrap(),
        );
        let rx = GuestQueue::new(64);
        let tx = GuestQueue::with_memory(rx.mem().clone(), 0x1000 + RING_SPAN, 64);
        Harness {
            dev,
            rx,
            tx,
            dir,
            rx_posted: 0,
        }
    }

    pub fn uds(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// Posts `n` RX buffers of header + 4 KiB.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = RX_BUFS + (self.rx_posted % 48) * RX_SLOT;
            self.rx.add_chain(&[Desc::write(at, (HDR_LEN + 4096) as u32)]);
            self.rx_posted += 1;
        }
    }

    /// The driver kicked queue `index`.
    pub fn kick(&mut self, index: usize) -> Result<QueueSignals, DeviceError> {
        self.call(Some(index))
    }

    /// The backend's fd polled readable.
    pub fn backend_event(&mut self) -> Result<QueueSignals, DeviceError> {
        self.call(None)
    }

    fn call(&mut self, queue: Option<usize>) -> Result<QueueSignals, DeviceError> {
        let mem = self.rx.mem().clone();
        let mut set = QueueSet::new();
        set.push(Some(self.rx.queue_mut()));
        set.push(Some(self.tx.queue_mut()));
        match queue {
            Some(index) => self.dev.process_queue(index, &mem, &mut set),
            None => self.dev.process_backend(&mem, &mut set),
        }
    }

    /// Sends a guest packet through the TX queue.
    pub fn send(&mut self, hdr: &PacketHeader, payload: &[u8]) -> Result<QueueSignals, DeviceError> {
        write_tx_packet(&mut self.tx, hdr, payload, true);
        self.kick(super::TX_QUEUE)
    }

    /// Packets the device put in RX buffers since the last call.
    pub fn received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let used = self.rx.take_used();
        used.into_iter()
            .map(|(head, len)| {
                let at = self.rx_buf_addr(head);
                let mut raw = [0u8; HDR_LEN];
                self.rx.mem().read_slice(&mut raw, GuestAddress(at)).unwrap();
                let hdr = PacketHeader::from_bytes(&raw);
                let n = (len as usize).saturating_sub(HDR_LEN);
                let mut payload = vec![0u8; n];
                self.rx
                    .mem()
                    .read_slice(&mut payload, GuestAddress(at + HDR_LEN as u64))
                    .unwrap();
                (hdr, payload)
            })
            .collect()
    }

    fn rx_buf_addr(&self, head: u16) -> u64 {
        // Buffers are single descriptors; read the descriptor's address back from the table.
        let table = 0x1000u64;
        self.rx
            .mem()
            .read_obj::<u64>(GuestAddress(table + u64::from(head) * 16))
            .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
