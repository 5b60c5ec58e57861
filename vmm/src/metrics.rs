//! The counters a running microVM keeps, gathered for whoever writes them out (the API server's metrics
//! file): every drive's, interface's, the vsock's, the balloon's and the entropy device's counters, MMDS's, the console UART's, and the vCPU
//! exits the run loop counts ([`VcpuMetrics`], shared by all vCPUs). This file owns no policy about names
//! or deltas; it only hands out the shared counters, which stay valid after the microVM is dropped.
//!
//! The values are what the guest caused: statistics, never invariants.

use std::sync::Arc;

use devices::device_metrics;
use devices::virtio::DeviceMetrics;

device_metrics! {
    /// vCPU exits, summed over every vCPU of the microVM (Firecracker's `vcpu` names).
    pub struct VcpuMetrics {
        /// KVM exits for a port read (`in`).
        exit_io_in,
        /// KVM exits for a port write (`out`).
        exit_io_out,
        /// KVM exits for an MMIO read.
        exit_mmio_read,
        /// KVM exits for an MMIO write.
        exit_mmio_write,
        /// Runs that ended in an error: a failed KVM_RUN, a KVM internal error, a failed entry, or an exit
        /// hull does not handle.
        failures,
    }
}

/// The counters of one microVM, by device.
#[derive(Clone)]
pub struct MetricSources {
    /// Each drive's counters, by `drive_id`, in attachment order.
    pub drives: Vec<(String, Arc<dyn DeviceMetrics>)>,
    /// Each network interface's counters, by `iface_id`.
    pub nets: Vec<(String, Arc<dyn DeviceMetrics>)>,
    /// The vsock device's counters, when there is one.
    pub vsock: Option<Arc<dyn DeviceMetrics>>,
    /// The balloon's and the entropy device's, when there are.
    pub balloon: Option<Arc<dyn DeviceMetrics>>,
    pub entropy: Option<Arc<dyn DeviceMetrics>>,
    /// MMDS's, when an interface serves it.
    pub mmds: Option<Arc<dyn DeviceMetrics>>,
    /// The console UART's.
    pub uart: Arc<dyn DeviceMetrics>,
    /// The vCPU exits.
    pub vcpu: Arc<dyn DeviceMetrics>,
}

impl MetricSources {
    /// The sources of a microVM before its virtio devices are attached.
    pub fn new(uart: Arc<dyn DeviceMetrics>, vcpu: Arc<dyn DeviceMetrics>) -> Self {
        MetricSources {
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            balloon: None,
            entropy: None,
            mmds: None,
            uart,
            vcpu,
        }
    }
}
