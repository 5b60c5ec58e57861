//! The virtio-pci common configuration structure (virtio 1.2, 4.1.4.3): feature pages, the device
//! status, the queue registers and the MSI-X vector of each queue and of configuration changes, as a
//! driver reads and writes them in the BAR. It holds the register state; what a status write means
//! (reset, negotiation, activation) is decided by the device (`super::device`).
//!
//! Never trusted: every offset, width and value. Fields are accessed at their natural width (the 64-bit
//! ring addresses also as two 32-bit halves); anything else reads as zero and is ignored. Queue registers
//! change only between FEATURES_OK and DRIVER_OK; vector numbers outside the MSI-X table read back as
//! `NO_VECTOR`, the way a driver learns the device refused them.

use crate::transport::mmio::QueueRegs;

/// "No MSI-X vector" (virtio 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

// Field offsets.
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const MSIX_CONFIG: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;
/// Length of the structure (virtio 1.1 layout; the 1.2 additions need features hull does not offer).
pub const COMMON_CONFIG_LEN: u64 = 0x38;

/// What a register write asks of the device beyond storing a value.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver wrote the device status.
    Status(u8),
}

/// The register state of the common configuration structure.
#[derive(Debug)]
pub struct CommonConfig {
    pub(crate) device_feature_select: u32,
    pub(crate) driver_feature_select: u32,
    pub(crate) driver_features: u64,
    /// The driver wrote a nonzero word into a feature page past bit 63 (never offered).
    pub(crate) driver_features_unknown: bool,
    pub(crate) msix_config: u16,
    pub(crate) status: u32,
    pub(crate) config_generation: u8,
    pub(crate) queue_select: u16,
    pub(crate) queues: Vec<QueueRegs>,
    pub(crate) queue_vectors: Vec<u16>,
    max_sizes: Vec<u16>,
}

impl CommonConfig {
    /// Registers after reset, for queues of the given maximum sizes.
    pub fn new(max_sizes: &[u16]) -> Self {
        let mut c = CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            driver_features_unknown: false,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: Vec::new(),
            queue_vectors: Vec::new(),
            max_sizes: max_sizes.to_vec(),
        };
        c.reset();
        c
    }

    /// Device reset: everything but the config generation goes back to its initial value.
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.msix_config = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        // A queue's size starts at its maximum; the driver may lower it.
        self.queues = self
            .max_sizes
            .iter()
            .map(|&max| QueueRegs {
                size: u32::from(max),
                ..QueueRegs::default()
            })
            .collect();
        self.queue_vectors = vec![NO_VECTOR; self.max_sizes.len()];
    }

    fn selected(&self) -> Option<usize> {
        let i = usize::from(self.queue_select);
        (i < self.queues.len()).then_some(i)
    }

    /// A read of `data.len()` bytes at `offset`; `device_features` is what the device offers.
    pub fn read(&self, offset: u64, data: &mut [u8], device_features: u64) {
        data.fill(0);
        let sel = self.selected();
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(self.device_feature_select),
            (DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => device_features & 0xffff_ffff,
                1 => device_features >> 32,
                _ => 0,
            },
            (DRIVER_FEATURE_SELECT, 4) => u64::from(self.driver_feature_select),
            (DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (MSIX_CONFIG, 2) => u64::from(self.msix_config),
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => u64::from(self.status as u8),
            (CONFIG_GENERATION, 1) => u64::from(self.config_generation),
            (QUEUE_SELECT, 2) => u64::from(self.queue_select),
            (QUEUE_SIZE, 2) => sel.map_or(0, |i| u64::from(self.queues[i].size)),
            (QUEUE_MSIX_VECTOR, 2) => sel.map_or(u64::from(NO_VECTOR), |i| u64::from(self.queue_vectors[i])),
            (QUEUE_ENABLE, 2) => sel.map_or(0, |i| u64::from(self.queues[i].ready)),
            // Queue i is notified at notify offset i (times the multiplier).
            (QUEUE_NOTIFY_OFF, 2) => sel.map_or(0, |i| i as u64),
            (o, len) if (QUEUE_DESC..COMMON_CONFIG_LEN).contains(&o) => {
                let Some(i) = sel else { return };
                let base = o & !7;
                let full = match base {
                    QUEUE_DESC => self.queues[i].desc,
                    QUEUE_DRIVER => self.queues[i].avail,
                    _ => self.queues[i].used,
                };
                match (o - base, len) {
                    (0, 8) => full,
                    (0, 4) => full & 0xffff_ffff,
                    (4, 4) => full >> 32,
                    _ => return,
                }
            }
            _ => return,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// A write of `data` at `offset`. `setup_allowed` says whether queue registers may change now;
    /// `vectors` is the size of the MSI-X table.
    pub fn write(&mut self, offset: u64, data: &[u8], setup_allowed: bool, vectors: usize) -> Effect {
        let mut raw = [0u8; 8];
        let Some(slot) = raw.get_mut(..data.len()) else {
            return Effect::None;
        };
        slot.copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let vector = |v: u64| {
            let v = v as u16;
            if v == NO_VECTOR || usize::from(v) < vectors {
                v
            } else {
                NO_VECTOR
            }
        };
        let sel = self.selected();
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => {
                if self.status & (super::device::STATUS_DRIVER | super::device::STATUS_FEATURES_OK)
                    != super::device::STATUS_DRIVER
                {
                    return Effect::None;
                }
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
                    _ => self.driver_features_unknown |= value != 0,
                }
            }
            (MSIX_CONFIG, 2) => self.msix_config = vector(value),
            (DEVICE_STATUS, 1) => return Effect::Status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_MSIX_VECTOR, 2) => {
                if let Some(i) = sel {
                    self.queue_vectors[i] = vector(value);
                }
            }
            (o, len) if setup_allowed && matches!(o, QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC..COMMON_CONFIG_LEN) => {
                let Some(i) = sel else { return Effect::None };
                let q = &mut self.queues[i];
                match (o, len) {
                    (QUEUE_SIZE, 2) => q.size = value as u32,
                    // The driver never writes 0 (4.1.4.3.2); a reset disables queues.
                    (QUEUE_ENABLE, 2) => q.ready |= value == 1,
                    (o, len) if o >= QUEUE_DESC => {
                        let base = o & !7;
                        let field = match base {
                            QUEUE_DESC => &mut q.desc,
                            QUEUE_DRIVER => &mut q.avail,
                            _ => &mut q.used,
                        };
                        match (o - base, len) {
                            (0, 8) => *field = value,
                            (0, 4) => *field = (*field & !0xffff_ffff) | value,
                            (4, 4) => *field = (*field & 0xffff_ffff) | (value << 32),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        c.read(offset, &mut b, 0x1_0000_0003);
        let mut raw = [0u8; 8];
        raw[..len].copy_from_slice(&b);
        u64::from_le_bytes(raw)
    }

    fn wr(c: &mut CommonConfig, offset: u64, len: usize, v: u64, setup: bool) -> Effect {
        c.write(offset, &v.to_le_bytes()[..len], setup, 3)
    }

    #[test]
    fn features_are_paged_and_queues_start_at_their_maximum() {
        let mut c = CommonConfig::new(&[256, 128]);
        assert_eq!(rd(&c, DEVICE_FEATURE, 4), 3);
        wr(&mut c, DEVICE_FEATURE_SELECT, 4, 1, false);
        assert_eq!(rd(&c, DEVICE_FEATURE, 4), 1);
        wr(&mut c, DEVICE_FEATURE_SELECT, 4, 7, false);
        assert_eq!(rd(&c, DEVICE_FEATURE, 4), 0);
        assert_eq!(rd(&c, NUM_QUEUES, 2), 2);
        assert_eq!(rd(&c, QUEUE_SIZE, 2), 256);
        wr(&mut c, QUEUE_SELECT, 2, 1, false);
        assert_eq!((rd(&c, QUEUE_SIZE, 2), rd(&c, QUEUE_NOTIFY_OFF, 2)), (128, 1));
        // No such queue: zeros, and NO_VECTOR for its vector.
        wr(&mut c, QUEUE_SELECT, 2, 9, false);
        assert_eq!(rd(&c, QUEUE_SIZE, 2), 0);
        assert_eq!(rd(&c, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(wr(&mut c, DEVICE_STATUS, 1, 3, false), Effect::Status(3));
    }

    #[test]
    fn queue_registers_change_only_during_setup_and_vectors_are_checked() {
        let mut c = CommonConfig::new(&[256]);
        wr(&mut c, QUEUE_DESC, 4, 0x1000, false);
        assert_eq!(c.queues[0].desc, 0);
        wr(&mut c, QUEUE_DESC, 4, 0x1000, true);
        wr(&mut c, QUEUE_DESC + 4, 4, 0x2, true);
        wr(&mut c, QUEUE_DRIVER, 8, 0x3000, true);
        wr(&mut c, QUEUE_SIZE, 2, 64, true);
        wr(&mut c, QUEUE_ENABLE, 2, 1, true);
        assert_eq!(c.queues[0].desc, 0x2_0000_1000);
        assert_eq!(rd(&c, QUEUE_DESC + 4, 4), 2);
        assert_eq!(rd(&c, QUEUE_DRIVER, 8), 0x3000);
        assert_eq!((c.queues[0].size, c.queues[0].ready), (64, true));
        // Odd widths and offsets inside a ring address do nothing.
        wr(&mut c, QUEUE_DESC + 2, 2, 0xffff, true);
        wr(&mut c, QUEUE_DESC + 1, 1, 0xff, true);
        assert_eq!(c.queues[0].desc, 0x2_0000_1000);
        // Vectors: inside the table (3 here) or NO_VECTOR.
        wr(&mut c, QUEUE_MSIX_VECTOR, 2, 2, false);
        assert_eq!(rd(&c, QUEUE_MSIX_VECTOR, 2), 2);
        wr(&mut c, QUEUE_MSIX_VECTOR, 2, 3, false);
        assert_eq!(rd(&c, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        wr(&mut c, MSIX_CONFIG, 2, 0, false);
        assert_eq!(rd(&c, MSIX_CONFIG, 2), 0);
        c.reset();
        assert_eq!((c.queues[0].size, c.queues[0].ready, c.queues[0].desc), (256, false, 0));
        assert_eq!(c.msix_config, NO_VECTOR);
    }

    #[test]
    fn any_access_is_safe() {
        let mut c = CommonConfig::new(&[8, 8]);
        for offset in 0..0x40u64 {
            for len in [0usize, 1, 2, 3, 4, 8, 9, 16] {
                let mut b = vec![0xa5; len];
                c.read(offset, &mut b, u64::MAX);
                if offset != DEVICE_STATUS {
                    c.write(offset, &vec![0xff; len], true, 2);
                }
            }
        }
    }
}
