//! The MSI-X table and pending-bit array of one PCI function (PCI Local Bus 3.0, section 6.8.2), and the
//! capability's message-control word. The table decides, per vector, whether an interrupt goes out now
//! (through [`MsiVectors::trigger`]) or waits as a pending bit until the driver unmasks the vector; the
//! messages themselves reach KVM through [`MsiVectors::set_route`] when a vector becomes usable.
//!
//! Never trusted: every table write (offsets, widths, address and data values). Accesses that are not
//! aligned 4- or 8-byte reads and writes inside the table are ignored (reads as zero); the PBA is
//! read-only.

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_warn as warn};

/// Bytes per table entry: message address low, high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Message control: MSI-X enable (bit 15) and function mask (bit 14).
pub const MSIX_ENABLE: u16 = 1 << 15;
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Most vectors a table can have (the table-size field is 11 bits).
pub const MSIX_MAX_VECTORS: usize = 2048;

/// One MSI message as the driver programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Where the vectors of one function go: in hull, one KVM GSI with an irqfd per vector.
pub trait MsiVectors: Send {
    /// Vector `vector` is now usable with `message`: route it.
    fn set_route(&self, vector: u16, message: MsiMessage) -> std::io::Result<()>;
    /// Sends vector `vector` (already routed).
    fn trigger(&self, vector: u16) -> std::io::Result<()>;
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    message: MsiMessage,
    control: u32,
    /// The message last handed to `set_route`, if any.
    routed: Option<MsiMessage>,
}

impl Default for Entry {
    fn default() -> Self {
        // Every vector comes out of reset masked (6.8.2.9).
        Entry {
            message: MsiMessage::default(),
            control: VECTOR_MASKED,
            routed: None,
        }
    }
}

/// A function's MSI-X state: the table, the pending bits and the enable/function-mask bits.
pub struct MsixTable {
    label: String,
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    vectors: Box<dyn MsiVectors>,
}

impl MsixTable {
    /// A table of `count` vectors (1 to [`MSIX_MAX_VECTORS`]), all masked, MSI-X disabled.
    pub fn new(label: impl Into<String>, count: usize, vectors: Box<dyn MsiVectors>) -> Self {
        let count = count.clamp(1, MSIX_MAX_VECTORS);
        MsixTable {
            label: label.into(),
            entries: vec![Entry::default(); count],
            pending: vec![false; count],
            enabled: false,
            function_masked: false,
            vectors,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the pending-bit array in bytes (whole qwords).
    pub fn pba_bytes(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// Whether the driver enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The capability's message-control word: enable, function mask, table size minus one.
    pub fn message_control(&self) -> u16 {
        let mut control = (self.entries.len() - 1) as u16;
        if self.enabled {
            control |= MSIX_ENABLE;
        }
        if self.function_masked {
            control |= MSIX_FUNCTION_MASK;
        }
        control
    }

    /// The driver wrote the message-control word (only enable and function mask are writable).
    pub fn set_message_control(&mut self, control: u16) {
        self.enabled = control & MSIX_ENABLE != 0;
        self.function_masked = control & MSIX_FUNCTION_MASK != 0;
        for vector in 0..self.entries.len() {
            self.sync(vector);
        }
    }

    /// Back to power-on state (a function-level reset; a virtio reset keeps the table).
    pub fn reset(&mut self) {
        self.entries.iter_mut().for_each(|e| *e = Entry::default());
        self.pending.iter_mut().for_each(|p| *p = false);
        self.enabled = false;
        self.function_masked = false;
    }

    fn masked(&self, vector: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[vector].control & VECTOR_MASKED != 0
    }

    /// After any change to vector `vector` or the function: route it if it became usable with a new
    /// message, and send what was pending once it is unmasked.
    fn sync(&mut self, vector: usize) {
        if self.masked(vector) {
            return;
        }
        let entry = self.entries[vector];
        if entry.routed != Some(entry.message) {
            match self.vectors.set_route(vector as u16, entry.message) {
                Ok(()) => self.entries[vector].routed = Some(entry.message),
                Err(error) => {
                    warn!(device = %self.label, vector, %error, "cannot route an MSI-X vector");
                    return;
                }
            }
        }
        if std::mem::take(&mut self.pending[vector]) {
            self.fire(vector);
        }
    }

    fn fire(&self, vector: usize) {
        if let Err(error) = self.vectors.trigger(vector as u16) {
            warn!(device = %self.label, vector, %error, "cannot send an MSI-X interrupt");
        }
    }

    /// The device wants to send `vector`: now if it is usable, else as a pending bit. Returns false when
    /// MSI-X is off or the vector does not exist (the caller then has nothing to deliver).
    pub fn signal(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.fire(v);
        }
        true
    }

    /// Whether `vector` names a vector of this table.
    pub fn has_vector(&self, vector: u16) -> bool {
        usize::from(vector) < self.entries.len()
    }

    /// A read inside the table (offset relative to its start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((vector, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[vector];
        let dwords = [
            e.message.address as u32,
            (e.message.address >> 32) as u32,
            e.message.data,
            e.control,
        ];
        match data.len() {
            4 => data.copy_from_slice(&dwords[field].to_le_bytes()),
            _ => {
                let q = u64::from(dwords[field]) | (u64::from(dwords[field + 1]) << 32);
                data.copy_from_slice(&q.to_le_bytes());
            }
        }
    }

    /// A write inside the table (offset relative to its start).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((vector, field)) = self.locate(offset, data.len()) else {
            debug!(device = %self.label, offset, len = data.len(), "MSI-X table access that is not an aligned dword or qword; ignored");
            return;
        };
        let mut words = [0u32; 2];
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            words[i] = u32::from_le_bytes(b);
        }
        for (i, word) in words.iter().take(data.len() / 4).enumerate() {
            let e = &mut self.entries[vector];
            match field + i {
                0 => e.message.address = (e.message.address & !0xffff_ffff) | u64::from(*word),
                1 => e.message.address = (e.message.address & 0xffff_ffff) | (u64::from(*word) << 32),
                2 => e.message.data = *word,
                // Only the mask bit of vector control is writable.
                _ => e.control = *word & VECTOR_MASKED,
            }
        }
        self.sync(vector);
    }

    /// A read of the pending-bit array (offset relative to its start): aligned dwords or qwords.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        for (byte_index, byte) in data.iter_mut().enumerate() {
            let Some(first) = offset
                .checked_add(byte_index as u64)
                .and_then(|b| b.checked_mul(8))
                .and_then(|b| usize::try_from(b).ok())
            else {
                return;
            };
            for bit in 0..8 {
                if self.pending.get(first + bit).copied().unwrap_or(false) {
                    *byte |= 1 << bit;
                }
            }
        }
    }

    /// Which vector and which dword of it an aligned 4- or 8-byte access at `offset` touches.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !matches!(len, 4 | 8)
            || !offset.is_multiple_of(len as u64)
            || offset.checked_add(len as u64)? > self.table_bytes()
        {
            return None;
        }
        let vector = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let field = usize::try_from((offset % MSIX_ENTRY_SIZE) / 4).ok()?;
        Some((vector, field))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records routes and triggers, for tests of the table and of the device above it.
    #[derive(Clone, Default)]
    pub struct Recorder {
        pub routes: Arc<Mutex<Vec<(u16, MsiMessage)>>>,
        pub fired: Arc<Mutex<Vec<u16>>>,
    }

    impl MsiVectors for Recorder {
        fn set_route(&self, vector: u16, message: MsiMessage) -> std::io::Result<()> {
            self.routes.lock().unwrap().push((vector, message));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> std::io::Result<()> {
            self.fired.lock().unwrap().push(vector);
            Ok(())
        }
    }

    impl Recorder {
        pub fn take_fired(&self) -> Vec<u16> {
            std::mem::take(&mut *self.fired.lock().unwrap())
        }
    }

    fn wr32(t: &mut MsixTable, offset: u64, v: u32) {
        t.write_table(offset, &v.to_le_bytes());
    }

    fn rd32(t: &MsixTable, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read_table(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn pba(t: &MsixTable) -> u64 {
        let mut b = [0u8; 8];
        t.read_pba(0, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn vectors_start_masked_and_fire_only_once_enabled_and_unmasked() {
        let rec = Recorder::default();
        let mut t = MsixTable::new("t", 3, Box::new(rec.clone()));
        assert_eq!(t.message_control(), 2, "table size minus one");
        assert_eq!(rd32(&t, 12), 1, "vector 0 masked after reset");
        assert!(!t.signal(0), "MSI-X is off");
        t.set_message_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert_eq!(t.message_control(), 2 | MSIX_ENABLE | MSIX_FUNCTION_MASK);
        // Program vector 1 while masked: nothing is routed yet.
        wr32(&mut t, 16, 0xfee0_0000);
        wr32(&mut t, 20, 0);
        wr32(&mut t, 24, 0x41);
        wr32(&mut t, 28, 0);
        assert!(rec.routes.lock().unwrap().is_empty());
        assert!(t.signal(1));
        assert_eq!(pba(&t), 0b10, "function-masked: pending");
        assert!(rec.take_fired().is_empty());
        // Clearing the function mask routes the vector and sends the pending interrupt.
        t.set_message_control(MSIX_ENABLE);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(*rec.routes.lock().unwrap(), vec![(1, msg)]);
        assert_eq!(rec.take_fired(), vec![1]);
        assert_eq!(pba(&t), 0);
        assert!(t.signal(1));
        assert_eq!(rec.take_fired(), vec![1]);
        // Masking the vector again: pending, then sent on unmask, without a second route.
        wr32(&mut t, 28, 1);
        assert!(t.signal(1));
        assert_eq!(pba(&t), 0b10);
        wr32(&mut t, 28, 0xffff_fffe);
        assert_eq!(rd32(&t, 28), 0, "only the mask bit is writable");
        assert_eq!(rec.take_fired(), vec![1]);
        assert_eq!(rec.routes.lock().unwrap().len(), 1);
        // A vector that does not exist.
        assert!(!t.signal(3));
        assert!(!t.signal(u16::MAX));
    }

    #[test]
    fn a_new_message_is_routed_again() {
        let rec = Recorder::default();
        let mut t = MsixTable::new("t", 1, Box::new(rec.clone()));
        t.set_message_control(MSIX_ENABLE);
        t.write_table(0, &0x0000_0000_fee0_1000u64.to_le_bytes());
        wr32(&mut t, 8, 0x30);
        wr32(&mut t, 12, 0);
        wr32(&mut t, 12, 1);
        wr32(&mut t, 8, 0x31);
        wr32(&mut t, 12, 0);
        let routes = rec.routes.lock().unwrap().clone();
        assert_eq!(routes.last().unwrap().1.data, 0x31);
        assert_eq!(routes.last().unwrap().1.address, 0xfee0_1000);
        let mut q = [0u8; 8];
        t.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let rec = Recorder::default();
        let mut t = MsixTable::new("t", 2, Box::new(rec.clone()));
        for offset in [0u64, 1, 2, 3, 6, 31, 32, 33, u64::MAX - 3, u64::MAX] {
            for len in [0usize, 1, 2, 3, 4, 5, 8, 16] {
                t.write_table(offset, &vec![0xff; len]);
                let mut b = vec![0xa5; len];
                t.read_table(offset, &mut b);
                t.read_pba(offset, &mut b);
            }
        }
        // Only the aligned accesses inside the table took effect; vector control keeps just the mask bit.
        assert_eq!(rd32(&t, 0), 0xffff_ffff);
        assert_eq!(rd32(&t, 12), 1);
        assert_eq!(MsixTable::new("big", 100_000, Box::new(rec)).len(), MSIX_MAX_VECTORS);
    }
}
