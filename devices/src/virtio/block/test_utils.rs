//! Test helpers for virtio-blk: an in-memory disk and request chains laid out like Linux's driver lays
//! them out (header, data, status in separate descriptors) at fixed guest addresses.

use std::io;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::backend::DiskBackend;
use crate::virtio::test_utils::{Desc, GuestQueue};

/// Where request headers go.
pub const HDR: u64 = 0x10_000;
/// Where data buffers go.
pub const DATA: u64 = 0x20_000;
/// Where status bytes go.
pub const STATUS: u64 = 0x0f_000;

/// Writes a request header at `HDR`.
pub fn write_header(q: &GuestQueue, kind: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    q.mem().write_slice(&raw, GuestAddress(HDR)).unwrap();
}

/// Offers header + `data` descriptors + a one-byte status at `STATUS` (pre-set to 0xff).
pub fn offer_request(q: &mut GuestQueue, kind: u32, sector: u64, data: &[Desc]) -> u16 {
    write_header(q, kind, sector);
    q.mem().write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut descs = vec![Desc::read(HDR, 16)];
    descs.extend_from_slice(data);
    descs.push(Desc::write(STATUS, 1));
    q.add_chain(&descs)
}

/// The status byte the device wrote.
pub fn status(q: &GuestQueue) -> u8 {
    q.mem().read_obj(GuestAddress(STATUS)).unwrap()
}

/// A disk in a shared vector, so tests can look at it after the device wrote.
#[derive(Clone, Default)]
pub struct MemDisk {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub flushes: Arc<Mutex<u32>>,
}

impl MemDisk {
    pub fn new(bytes: usize) -> Self {
        let data = (0..bytes).map(|i| (i % 251) as u8).collect();
        MemDisk {
            data: Arc::new(Mutex::new(data)),
            flushes: Arc::default(),
        }
    }
}

impl DiskBackend for MemDisk {
    fn capacity_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(d.get(o..o + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d.get_mut(o..o + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}
