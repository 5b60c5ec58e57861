//! virtio-pmem (Firecracker's pmem device): a host file the VMM maps into guest physical memory, which the
//! guest driver exposes as `/dev/pmemN` (DAX-capable: a filesystem on it can be mounted with `-o dax` and
//! read without a page cache copy). `device` is the core: the config space says where the file sits in
//! guest physical memory, and the one request queue carries flushes, answered with an `fsync` of the file.
//! `backing` maps the file into this process; giving the mapping a KVM memory slot above guest RAM is the
//! VMM's part (`vmm/src/pmem.rs`).
//!
//! Never trusts: request chains (type and status are bounds-checked through `chain`; anything but a
//! flush is answered with an error status).

pub mod backing;
pub mod device;
pub mod metrics;

pub use backing::{BackingError, PmemBacking, PMEM_ALIGN};
pub use device::Pmem;
pub use metrics::PmemMetrics;

/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`, the only request type.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// Response status: success, and anything else (the Linux driver reports -EIO for non-zero).
pub const RESP_OK: u32 = 0;
pub const RESP_EIO: u32 = 1;
