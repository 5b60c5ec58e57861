//! The virtio-vsock device core: config space (guest CID), and the pump between the RX/TX queues and a
//! `VsockBackend`. Transport-agnostic (virtio-mmio in hull, vhost-user for QEMU).
//!
//! Owns: the queues' consumption order and the RX bounce buffer. Never trusts: TX packets (validated in
//! `packet`; bad ones are dropped and, if they name a connection, answered with RST by the backend) and
//! RX buffers (a buffer that cannot hold a header, or lies outside memory, means `NEEDS_RESET`).

use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::guest_debug as debug;

use super::backend::VsockBackend;
use super::metrics::VsockMetrics;
use super::muxer::VsockMuxer;
use super::packet::{parse_tx, rx_capacity, write_rx};
use super::unix::UnixBackendError;
use super::{EVENT_QUEUE, MAX_PKT_PAYLOAD, RX_QUEUE, TX_QUEUE};

/// `virtio_vsock_event.id` of a transport reset (virtio 1.2, 5.10.6.5).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
use crate::virtio::{
    read_config_bytes, DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Queue size offered to the driver (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;

/// How to build a vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host-side unix socket path (see `unix`).
    pub uds_path: PathBuf,
}

/// A virtio-vsock device.
pub struct Vsock<B: VsockBackend = VsockMuxer> {
    guest_cid: u64,
    backend: B,
    acked_features: u64,
    rx_buf: Vec<u8>,
    tx_payload: Vec<u8>,
    metrics: Arc<VsockMetrics>,
}

impl Vsock<VsockMuxer> {
    /// Binds the host-side socket at `uds_path`.
    pub fn new(cfg: &VsockConfig) -> Result<Self, UnixBackendError> {
        let metrics = Arc::new(VsockMetrics::default());
        let backend = VsockMuxer::new(cfg.guest_cid, &cfg.uds_path, metrics.clone())?;
        Ok(Self::with_backend(cfg.guest_cid, backend, metrics))
    }
}

impl<B: VsockBackend> Vsock<B> {
    /// A device over any backend.
    pub fn with_backend(guest_cid: u64, backend: B, metrics: Arc<VsockMetrics>) -> Self {
        Vsock {
            guest_cid,
            backend,
            acked_features: 0,
            rx_buf: vec![0; MAX_PKT_PAYLOAD],
            tx_payload: Vec::with_capacity(MAX_PKT_PAYLOAD),
            metrics,
        }
    }

    /// Counters for the API.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// The backend (tests inspect it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Drains the TX queue into the backend.
    fn process_tx(
        &mut self,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
        signals: &mut QueueSignals,
    ) -> Result<(), DeviceError> {
        let Some(mut txq) = queues.chains(TX_QUEUE, mem) else {
            return Ok(());
        };
        txq.serve_all(signals, |chain| {
            match parse_tx(chain, mem, &mut self.tx_payload) {
                Ok(hdr) => {
                    self.metrics.tx_packets.inc();
                    self.metrics.tx_bytes.add(self.tx_payload.len() as u64);
                    self.backend.send_pkt(&hdr, &self.tx_payload);
                }
                Err(e) => {
                    debug!(head = chain.head, error = %e, "vsock TX packet dropped");
                    self.metrics.tx_dropped.inc();
                }
            }
            Ok(0)
        })
    }

    /// Fills RX buffers with whatever the backend has for the guest.
    fn process_rx(
        &mut self,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
        signals: &mut QueueSignals,
    ) -> Result<(), DeviceError> {
        let Some(mut rxq) = queues.chains(RX_QUEUE, mem) else {
            return Ok(());
        };
        while self.backend.has_pending_rx() {
            // Starved: the guest kicks the RX queue when it adds buffers.
            let Some(chain) = rxq.pop()? else {
                break;
            };
            let cap = rx_capacity(&chain, mem).map_err(|e| rxq.unanswerable(chain.head, e))?;
            let Some((hdr, n)) = self.backend.recv_pkt(&mut self.rx_buf[..cap]) else {
                rxq.put_back();
                break;
            };
            let used = write_rx(&chain, mem, &hdr, &self.rx_buf[..n]).map_err(rxq.malformed(chain.head))?;
            self.metrics.rx_packets.inc();
            self.metrics.rx_bytes.add(n as u64);
            rxq.complete(chain.head, used, signals)?;
        }
        Ok(())
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn metrics(&self) -> Option<Arc<dyn DeviceMetrics>> {
        Some(self.metrics.clone())
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError> {
        QueueSignals::collect(|signals| {
            if index == TX_QUEUE {
                self.process_tx(mem, queues, signals)?;
            }
            // TX packets may have produced replies; an RX kick means new buffers. Either way, fill RX.
            self.process_rx(mem, queues, signals)
        })
        .inspect_err(|_| self.metrics.fatal_chains.inc())
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.event_fd())
    }

    fn process_backend(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        QueueSignals::collect(|signals| {
            self.backend.process_events();
            self.process_rx(mem, queues, signals)
        })
        .inspect_err(|_| self.metrics.fatal_chains.inc())
    }

    /// After a restore the host-side connections are gone (a new process): tell the driver with
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue, as Firecracker does, so it drops its
    /// sockets and re-reads the guest CID. No event buffer posted means the driver is not listening.
    fn after_restore(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        self.backend.reset();
        QueueSignals::collect(|signals| {
            let Some(mut evq) = queues.chains(EVENT_QUEUE, mem) else {
                return Ok(());
            };
            let Some(chain) = evq.pop()? else {
                debug!("vsock restored without an event buffer; no transport reset sent");
                return Ok(());
            };
            let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
            chain.write_at(mem, 0, &event).map_err(evq.malformed(chain.head))?;
            evq.complete(chain.head, event.len() as u32, signals)?;
            tracing::info!(
                guest_cid = self.guest_cid,
                "vsock transport reset sent to the driver after a restore"
            );
            Ok(())
        })
    }

    fn reset(&mut self) {
        self.backend.reset();
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    use super::*;
    use crate::virtio::test_utils::{xorshift, Desc};
    use crate::virtio::vsock::packet::*;
    use crate::virtio::vsock::test_utils::{guest_hdr, Harness, GUEST_CID, PKT};
    use crate::virtio::vsock::HOST_CID;

    fn ops(pkts: &[(PacketHeader, Vec<u8>)]) -> Vec<u16> {
        pkts.iter().map(|(h, _)| h.op).collect()
    }

    #[test]
    fn config_holds_guest_cid() {
        let h = Harness::new("cfg");
        let mut cid = [0u8; 8];
        h.dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    }

    #[test]
    fn guest_connects_to_host_listener_and_echoes() {
        let mut h = Harness::new("g2h");
        let listener = UnixListener::bind(format!("{}_1234", h.uds().display())).unwrap();
        h.post_rx(8);
        h.send(&guest_hdr(OP_REQUEST, 5000, 1234), b"").unwrap();
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_RESPONSE]);
        assert_eq!(
            (got[0].0.src_port, got[0].0.dst_port, got[0].0.dst_cid),
            (1234, 5000, GUEST_CID)
        );
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        h.send(&guest_hdr(OP_RW, 5000, 1234), b"ping").unwrap();
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        host.write_all(b"pong").unwrap();
        h.backend_event().unwrap();
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_RW]);
        assert_eq!(got[0].1, b"pong");

        // Host closes: the guest is told the host sends no more.
        drop(host);
        h.backend_event().unwrap();
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_SHUTDOWN]);
        assert_eq!(got[0].0.flags, SHUTDOWN_SEND);
        // Guest closes: RST finishes the connection.
        let mut sd = guest_hdr(OP_SHUTDOWN, 5000, 1234);
        sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        h.send(&sd, b"").unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RST]);
        assert_eq!(h.dev.backend().connection_count(), 0);
    }

    #[test]
    fn host_connect_handshake() {
        let mut h = Harness::new("h2g");
        h.post_rx(8);
        let mut host = UnixStream::connect(h.uds()).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        h.backend_event().unwrap(); // accept
        h.backend_event().unwrap(); // read the line
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_REQUEST]);
        let req = got[0].0;
        assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (HOST_CID, GUEST_CID, 52));
        h.send(&guest_hdr(OP_RESPONSE, 52, req.src_port), b"").unwrap();
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            host.read_exact(&mut byte).unwrap();
            line.push(byte[0] as char);
        }
        assert_eq!(line, format!("OK {}\n", req.src_port));
        host.write_all(b"data").unwrap();
        h.backend_event().unwrap();
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_RW]);
        assert_eq!(got[0].1, b"data");
    }

    #[test]
    fn bad_connect_line_is_dropped() {
        let mut h = Harness::new("badline");
        h.post_rx(4);
        let mut host = UnixStream::connect(h.uds()).unwrap();
        host.write_all(&[b'A'; 100]).unwrap();
        h.backend_event().unwrap();
        h.backend_event().unwrap();
        assert!(h.received().is_empty());
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap_or(0), 0, "the backend closed the stream");
    }

    #[test]
    fn request_to_port_without_listener_gets_rst() {
        let mut h = Harness::new("norst");
        h.post_rx(4);
        h.send(&guest_hdr(OP_REQUEST, 5000, 4242), b"").unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RST]);
    }

    #[test]
    fn data_for_unknown_connection_gets_rst() {
        let mut h = Harness::new("unknown");
        h.post_rx(4);
        h.send(&guest_hdr(OP_RW, 5000, 4242), b"xx").unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RST]);
        // ... but an RST is never answered with an RST.
        h.send(&guest_hdr(OP_RST, 5000, 4242), b"").unwrap();
        assert!(h.received().is_empty());
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let mut h = Harness::new("credit");
        let listener = UnixListener::bind(format!("{}_7", h.uds().display())).unwrap();
        h.post_rx(16);
        let mut req = guest_hdr(OP_REQUEST, 9, 7);
        req.buf_alloc = 10;
        h.send(&req, b"").unwrap();
        let (mut host, _) = listener.accept().unwrap();
        h.received();
        host.write_all(&[1u8; 100]).unwrap();
        h.backend_event().unwrap();
        let got = h.received();
        let data: usize = got.iter().filter(|(h, _)| h.op == OP_RW).map(|(_, p)| p.len()).sum();
        assert_eq!(data, 10, "sent more than the guest's credit: {:?}", ops(&got));
        assert!(ops(&got).contains(&OP_CREDIT_REQUEST));
        // Nothing more until the guest frees space, and no busy loop meanwhile.
        h.backend_event().unwrap();
        assert!(h.received().is_empty());
        let mut upd = guest_hdr(OP_CREDIT_UPDATE, 9, 7);
        upd.buf_alloc = 10;
        upd.fwd_cnt = 10;
        h.send(&upd, b"").unwrap();
        let got = h.received();
        let data: usize = got.iter().filter(|(h, _)| h.op == OP_RW).map(|(_, p)| p.len()).sum();
        assert_eq!(data, 10);
    }

    #[test]
    fn header_only_rx_buffer_is_not_a_host_eof() {
        // An RX buffer with room for a header and no data, while the host has data waiting: the device must
        // not read 0 bytes into it and take that for the host closing the stream (found by fuzz/).
        let mut h = Harness::new("hdronly");
        let listener = UnixListener::bind(format!("{}_8", h.uds().display())).unwrap();
        h.post_rx(1);
        h.send(&guest_hdr(OP_REQUEST, 11, 8), b"").unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RESPONSE]);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(b"data").unwrap();
        h.rx.add_chain(&[Desc::write(0x100_000, HDR_LEN as u32)]);
        h.backend_event().unwrap();
        assert!(
            h.received().is_empty(),
            "nothing fits a header-only buffer but a control packet"
        );
        // A control packet takes the small buffer; the data follows in the next one, and nothing was lost.
        h.post_rx(1);
        h.send(&guest_hdr(OP_CREDIT_REQUEST, 11, 8), b"").unwrap();
        let got = h.received();
        assert_eq!(ops(&got), vec![OP_CREDIT_UPDATE, OP_RW]);
        assert_eq!(got[1].1, b"data");
    }

    #[test]
    fn guest_overrunning_our_credit_gets_rst() {
        let mut h = Harness::new("overrun");
        let listener = UnixListener::bind(format!("{}_8", h.uds().display())).unwrap();
        h.post_rx(16);
        h.send(&guest_hdr(OP_REQUEST, 9, 8), b"").unwrap();
        let (_host, _) = listener.accept().unwrap(); // never reads
        h.received();
        let chunk = vec![0u8; MAX_PKT_PAYLOAD];
        let mut got_rst = false;
        // The unix socket buffer plus our 256 KiB credit absorb a bounded amount; then RST.
        for _ in 0..64 {
            h.send(&guest_hdr(OP_RW, 9, 8), &chunk).unwrap();
            if ops(&h.received()).contains(&OP_RST) {
                got_rst = true;
                break;
            }
        }
        assert!(got_rst);
    }

    #[test]
    fn rx_without_buffers_waits_for_kick() {
        let mut h = Harness::new("starve");
        h.send(&guest_hdr(OP_REQUEST, 5000, 4242), b"").unwrap();
        assert!(h.received().is_empty());
        h.post_rx(1);
        h.kick(RX_QUEUE).unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RST]);
    }

    #[test]
    fn malformed_tx_packets_are_dropped_and_device_survives() {
        let mut h = Harness::new("malformed");
        h.post_rx(4);
        // Header in a writable descriptor (wrong direction), too-short header, huge len, wrong cid.
        h.tx.add_chain(&[Desc::write(PKT, 64)]);
        h.tx.add_chain(&[Desc::read(PKT, 10)]);
        let mut huge = guest_hdr(OP_RW, 1, 2);
        huge.len = u32::MAX;
        h.tx.mem_write(PKT + 0x100, &huge.to_bytes());
        h.tx.add_chain(&[Desc::read(PKT + 0x100, HDR_LEN as u32)]);
        h.tx.add_chain(&[Desc::read(PKT, 0)]);
        h.kick(TX_QUEUE).unwrap();
        let mut wrong_cid = guest_hdr(OP_REQUEST, 1, 2);
        wrong_cid.src_cid = 77;
        h.send(&wrong_cid, b"").unwrap();
        assert!(h.received().is_empty());
        assert_eq!(h.dev.metrics().tx_dropped.get(), 5);
        assert_eq!(h.tx.take_used().len(), 5);
        // Still works.
        h.send(&guest_hdr(OP_REQUEST, 5000, 4242), b"").unwrap();
        assert_eq!(ops(&h.received()), vec![OP_RST]);
    }

    #[test]
    fn tiny_rx_buffer_needs_reset() {
        let mut h = Harness::new("tinyrx");
        h.rx.add_chain(&[Desc::write(0x80_000, 8)]);
        let r = h.send(&guest_hdr(OP_REQUEST, 5000, 4242), b"");
        assert!(matches!(r, Err(DeviceError::Unanswerable { .. })));
        assert!(matches!(h.kick(RX_QUEUE), Err(DeviceError::NeedsReset)));
        h.dev.reset();
    }

    #[test]
    fn looping_tx_chain_needs_reset() {
        let mut h = Harness::new("looptx");
        h.tx.add_raw_chain(&[(PKT, 44, 1, 1), (PKT, 44, 1, 0)]);
        assert!(matches!(h.kick(TX_QUEUE), Err(DeviceError::MalformedChain { .. })));
    }

    #[test]
    fn many_connections() {
        let mut h = Harness::new("many");
        let listener = UnixListener::bind(format!("{}_99", h.uds().display())).unwrap();
        h.post_rx(60);
        for port in 0..50 {
            h.send(&guest_hdr(OP_REQUEST, 10_000 + port, 99), b"").unwrap();
        }
        let got = h.received();
        assert_eq!(got.iter().filter(|(h, _)| h.op == OP_RESPONSE).count(), 50);
        assert_eq!(h.dev.backend().connection_count(), 50);
        for _ in 0..50 {
            listener.accept().unwrap();
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut h = Harness::new("fuzz");
        for round in 0..200 {
            // Random packets with plausible headers (so they reach the backend) and random chains.
            let mut hdr = guest_hdr(
                [
                    OP_REQUEST,
                    OP_RW,
                    OP_RST,
                    OP_SHUTDOWN,
                    OP_CREDIT_UPDATE,
                    OP_CREDIT_REQUEST,
                    99,
                ][rnd() as usize % 7],
                (rnd() % 4) as u32,
                (rnd() % 4) as u32,
            );
            hdr.flags = rnd() as u32;
            hdr.buf_alloc = rnd() as u32;
            hdr.fwd_cnt = rnd() as u32;
            let payload = vec![0x5a; (rnd() % 300) as usize];
            if rnd() % 3 == 0 {
                h.tx.add_raw_chain(&[(
                    rnd() % (16 << 20),
                    (rnd() % 100_000) as u32,
                    (rnd() % 8) as u16,
                    (rnd() % 70) as u16,
                )]);
            } else {
                crate::virtio::vsock::test_utils::write_tx_packet(&mut h.tx, &hdr, &payload, rnd() % 2 == 0);
            }
            if rnd() % 4 == 0 {
                h.rx.add_raw_chain(&[(
                    rnd() % (16 << 20),
                    (rnd() % 10_000) as u32,
                    (rnd() % 8) as u16,
                    (rnd() % 70) as u16,
                )]);
            } else {
                h.post_rx(1);
            }
            let r = if round % 2 == 0 {
                h.kick(TX_QUEUE)
            } else {
                h.backend_event()
            };
            if r.is_err() {
                h.dev.reset();
                h = Harness::new("fuzz");
            }
            let _ = h.received();
        }
    }
}
