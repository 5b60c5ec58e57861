//! The virtio-pmem device core: `struct virtio_pmem_config { le64 start; le64 size; }` and the request
//! queue. A request is a device-readable `le32 type` followed by a device-writable `le32 ret`; a flush makes
//! the guest's writes to the mapping durable with `fsync` on the backing file (nothing to do for a
//! read-only device, whose mapping is private).
//!
//! Owns: the backing file's mapping (`backing`; the VMM gives it a KVM slot) and the metrics. Never trusts: the chains.

use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::guest_debug as debug;

use super::backing::PmemBacking;
use super::metrics::PmemMetrics;
use super::{REQ_TYPE_FLUSH, RESP_EIO, RESP_OK};
use crate::virtio::{
    read_config_bytes, DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice, TYPE_PMEM,
    VIRTIO_F_VERSION_1,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// A virtio-pmem device whose file the VMM put at guest physical `start`.
pub struct Pmem {
    backing: PmemBacking,
    read_only: bool,
    config: [u8; 16],
    acked_features: u64,
    metrics: Arc<PmemMetrics>,
}

impl Pmem {
    pub fn new(backing: PmemBacking, start: u64, read_only: bool) -> Self {
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&start.to_le_bytes());
        config[8..16].copy_from_slice(&backing.len().to_le_bytes());
        Pmem {
            backing,
            read_only,
            config,
            acked_features: 0,
            metrics: Arc::new(PmemMetrics::default()),
        }
    }

    /// Counters for the API.
    pub fn metrics(&self) -> Arc<PmemMetrics> {
        self.metrics.clone()
    }

    fn flush(&self) -> u32 {
        if self.read_only {
            return RESP_OK;
        }
        match self.backing.file().sync_all() {
            Ok(()) => RESP_OK,
            Err(error) => {
                debug!(%error, "pmem flush: fsync failed");
                RESP_EIO
            }
        }
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        TYPE_PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
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
        let Some(mut queue) = queues.chains(index, mem).filter(|_| index == 0) else {
            return Ok(QueueSignals::NONE);
        };
        QueueSignals::collect(|signals| {
            while let Some(chain) = queue.pop()? {
                // The status goes in the first 4 writable bytes; without them the request cannot be answered.
                chain
                    .check_writable(mem, 0, 4)
                    .map_err(|e| queue.unanswerable(chain.head, e))?;
                let mut kind = [0u8; 4];
                let status = match chain.read_at(mem, 0, &mut kind) {
                    Ok(()) if u32::from_le_bytes(kind) == REQ_TYPE_FLUSH => {
                        self.metrics.flushes.inc();
                        self.flush()
                    }
                    other => {
                        debug!(head = chain.head, ?other, "pmem: request is not a flush");
                        RESP_EIO
                    }
                };
                if status != RESP_OK {
                    self.metrics.failed_requests.inc();
                }
                chain
                    .write_at(mem, 0, &status.to_le_bytes())
                    .map_err(queue.malformed(chain.head))?;
                queue.complete(chain.head, 4, signals)?;
            }
            Ok(())
        })
        .inspect_err(|_| self.metrics.event_fails.inc())
    }

    fn reset(&mut self) {
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{Desc, GuestQueue, TestTransport};

    const REQ: u64 = 0x10_000;
    const RESP: u64 = 0x20_000;

    fn device(read_only: bool) -> TestTransport<Pmem> {
        let path = std::env::temp_dir().join(format!("hull-pmem-dev-{}-{read_only}", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(4 << 20).unwrap();
        let backing = PmemBacking::map(&path, read_only).unwrap();
        std::fs::remove_file(path).unwrap();
        TestTransport::new(Pmem::new(backing, 1 << 32, read_only))
    }

    fn run(dev: &mut TestTransport<Pmem>, q: &mut GuestQueue) -> Result<QueueSignals, DeviceError> {
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        dev.process_queue(0, mem, &mut set)
    }

    fn status(q: &GuestQueue) -> u32 {
        u32::from_le(q.mem().read_obj(GuestAddress(RESP)).unwrap())
    }

    #[test]
    fn config_space_has_start_and_size() {
        let dev = device(false);
        let mut start = [0u8; 8];
        let mut size = [0u8; 8];
        dev.read_config(0, &mut start);
        dev.read_config(8, &mut size);
        assert_eq!(
            (u64::from_le_bytes(start), u64::from_le_bytes(size)),
            (1 << 32, 4 << 20)
        );
        assert_eq!(dev.device_type(), 27);
    }

    #[test]
    fn flushes_succeed_and_other_requests_get_an_error_status() {
        for read_only in [false, true] {
            let mut dev = device(read_only);
            let mut q = GuestQueue::new(16);
            q.mem_write(REQ, &REQ_TYPE_FLUSH.to_le_bytes());
            q.mem_write(RESP, &[0xff; 4]);
            let head = q.add_chain(&[Desc::read(REQ, 4), Desc::write(RESP, 4)]);
            assert!(run(&mut dev, &mut q).unwrap().contains(0));
            assert_eq!(q.take_used(), vec![(head, 4)]);
            assert_eq!(status(&q), RESP_OK);
            assert_eq!(dev.metrics().flushes.get(), 1);

            q.mem_write(REQ + 0x100, &7u32.to_le_bytes());
            q.add_chain(&[Desc::read(REQ + 0x100, 4), Desc::write(RESP, 4)]);
            run(&mut dev, &mut q).unwrap();
            assert_eq!(status(&q), RESP_EIO);
            // A request too short to hold its type is answered with an error too.
            q.add_chain(&[Desc::read(REQ, 2), Desc::write(RESP, 4)]);
            q.mem_write(RESP, &[0; 4]);
            run(&mut dev, &mut q).unwrap();
            assert_eq!(status(&q), RESP_EIO);
            assert_eq!(dev.metrics().failed_requests.get(), 2);
        }
    }

    #[test]
    fn a_request_without_room_for_its_status_is_a_device_error() {
        let mut dev = device(false);
        let mut q = GuestQueue::new(16);
        q.add_chain(&[Desc::read(REQ, 4), Desc::write(RESP, 2)]);
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::Unanswerable { .. })));
        assert_eq!(dev.metrics().event_fails.get(), 1);
    }
}
