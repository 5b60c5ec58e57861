//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2`. containerd runs this binary
//! with `start` (start or reuse the shim of the pod, print its address), without an action (serve the
//! task API on a socket), and with `delete` (clean up after a container whose shim may be gone).
//!
//! One shim process and one microVM serve a whole pod sandbox: containers carrying the
//! `io.kubernetes.cri.sandbox-id` annotation are grouped with their sandbox; a plain `ctr run` container
//! gets a shim and a VM of its own.

mod cgroup;
mod config;
mod create;
mod error;
mod events;
mod fast_start;
mod guest_spec;
mod hooks;
mod host_file;
mod logging;
mod network;
mod pod;
mod port_forward;
mod process;
mod rootfs;
mod service;
mod shim;
mod state;
mod stats;
mod tasks;
mod vm_record;
mod watch;

fn main() {
    let config = containerd_shim::Config {
        // The shim reaps its own children (the VM's processes, through their guards): the library's
        // waitpid(-1) reaper would take their exit statuses away.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<shim::HullShim>("io.containerd.hull.v2", Some(config));
}
