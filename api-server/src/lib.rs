//! hull's Firecracker-compatible front end as a library: it turns HTTP requests on the API socket and
//! Firecracker-shaped JSON config files into calls on the `vmm` crate. Everything it reads comes from a
//! client or a file and is untrusted: requests are bounded and parsed strictly, and every bad value becomes
//! a Firecracker-style error (`400 {"fault_message": ...}`) rather than a panic. The `hull` binary (crate
//! `hull`) owns the command line, signals and the process exit status.
//!
//! - [`server`]: the API socket and the main loop (socket, connections, signals, guest exit).
//! - [`http`]: HTTP/1.1 request parsing and response encoding.
//! - [`routes`]: each endpoint's request → [`instance::Instance`] call → response.
//! - [`instance`]: the microVM before and after `InstanceStart`: configuration, boot, pause/resume.
//! - [`devices`]: drive, network-interface and vsock sections.
//! - [`config_file`]: boot from a `--config-file`.
//! - [`snapshot`]: the `/snapshot/create` and `/snapshot/load` bodies.
//! - [`logger`]: the `logger`/`metrics` sections and Firecracker's log level names.

pub mod config_file;
pub mod devices;
pub mod http;
pub mod instance;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod routes;
pub mod server;
pub mod snapshot;
