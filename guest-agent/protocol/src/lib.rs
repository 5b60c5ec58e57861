//! The hull agent protocol, defined once for the agent, `hull run` and the containerd shim.
//!
//! - [`agent`] and [`agent_ttrpc`]: the protobuf messages and the ttrpc service generated from
//!   `proto/agent.proto` (pure-Rust code generation, no `protoc`).
//! - [`stdio`]: the one-line handshake that opens a process's stdio stream on its own vsock connection.
//! - [`forward`]: the same for a TCP connection forwarded to a port on the guest's loopback.
//! - [`ids`]: the identifier rule both sides enforce.
//! - [`hybrid`]: the host end of Firecracker's hybrid vsock (`CONNECT <port>\n` → `OK <port>\n`).
//! - [`client`]: a checked ttrpc client connection to the agent over that socket.
//! - [`policy`]: which calls a guest serves, fixed by the host at boot (`hull.policy=` on the kernel command line).
//!
//! Nothing here trusts the peer: every text read from a connection is length-bounded and validated.

/// Generated protobuf messages.
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
#[allow(unused_imports, unused_mut, unused_results, unknown_lints)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}
/// Generated ttrpc client and server glue.
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals
)]
#[allow(unused_imports, unused_mut, unused_results, unknown_lints)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub mod client;
pub mod forward;
pub mod hybrid;
pub mod ids;
pub mod policy;
pub mod stdio;

/// Guest vsock port the agent's ttrpc service listens on.
pub const AGENT_PORT: u32 = 1024;
/// Guest vsock port for process stdio streams.
pub const STDIO_PORT: u32 = 1025;
/// Guest vsock port for forwarded TCP connections (CRI PortForward).
pub const FORWARD_PORT: u32 = 1026;
/// The guest's vsock context id, on every backend.
pub const GUEST_CID: u32 = 3;
/// The host's vsock context id (VMADDR_CID_HOST): the only peer the agent serves.
pub const HOST_CID: u32 = 2;
/// Bumped when a message or call changes meaning.
pub const PROTOCOL_REVISION: u32 = 2;

pub use protobuf;
pub use ttrpc;
