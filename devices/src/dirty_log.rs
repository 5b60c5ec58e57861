//! The guest pages hull's own device code wrote, for diff snapshots. KVM logs the pages the guest writes
//! (KVM_MEM_LOG_DIRTY_PAGES), not the ones this process writes through its own mapping: every device write
//! into a guest buffer goes through [`crate::virtio::ParsedChain::write_at`], which marks the pages here
//! while the log is on. (Used-ring updates are covered by the snapshot code, which adds every live
//! queue's used ring.) Off — the default — a write costs one relaxed atomic load.
//!
//! Owns only page numbers; addresses come from chains the device already validated.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Page size of the log.
pub const PAGE_SIZE: u64 = 4096;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PAGES: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// Turns the log on (a microVM with dirty-page tracking) or off.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Records that `len` bytes at guest address `addr` were written.
pub fn mark(addr: u64, len: usize) {
    if !ENABLED.load(Ordering::Relaxed) || len == 0 {
        return;
    }
    let first = addr / PAGE_SIZE;
    let last = addr.saturating_add(len as u64 - 1) / PAGE_SIZE;
    let mut pages = PAGES.lock().unwrap_or_else(|e| e.into_inner());
    pages.extend(first..=last);
}

/// The guest page numbers written since the last call, and a fresh log.
pub fn take() -> BTreeSet<u64> {
    std::mem::take(&mut *PAGES.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_logged_by_page_only_while_on() {
        mark(0x1000, 8);
        assert!(take().is_empty(), "off by default");
        set_enabled(true);
        mark(0x1ffe, 4); // straddles pages 1 and 2
        mark(0x5000, 0);
        set_enabled(false);
        // Other tests' device writes may land while it is on (the log is process-wide): check ours.
        let pages = take();
        assert!(
            pages.contains(&1) && pages.contains(&2) && !pages.contains(&5),
            "{pages:?}"
        );
        mark(0x1000, 8);
        assert!(take().is_empty());
    }
}
