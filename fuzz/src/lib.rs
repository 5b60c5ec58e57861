//! Fuzz targets for everything in hull that parses bytes it must not trust: the API's HTTP framing and
//! routes, the config file, descriptor chains and the virtio-blk/-net/-vsock/-balloon/-rng/-pmem request parsing over
//! arbitrary guest memory, the virtio-pci transport's configuration cycles and BAR registers, the frames a guest sends to MMDS, the vsock muxer and its hybrid `CONNECT` handshake, hull's vhost-user relay,
//! control socket and config-change acknowledgement, and the agent's replies and stdio handshake as the
//! host reads them.
//!
//! Every target is a plain `fn(&[u8])` in [`targets`] that must return normally for every input: a panic,
//! an abort, a hang or an unbounded allocation is a bug in the code it feeds. The same functions run
//! three ways: a bounded, deterministic run of each as a `#[test]` (`fuzz/tests/targets.rs`, part of
//! `cargo test --workspace`), a longer time-budgeted run with a random seed (`hull-fuzz`, from
//! `scripts/fuzz.sh`), and coverage-guided libFuzzer (`fuzz/libfuzzer/`, also from `scripts/fuzz.sh`).
//!
//! Inputs are decoded with [`input::Input`], which never fails (it yields zeros once the bytes run out),
//! so random bytes, mutated seeds and libFuzzer's inputs all reach deep into the code under test.

pub mod guest;
pub mod input;
pub mod runner;
pub mod scratch;
pub mod seeds;
pub mod stats;
pub mod targets;

/// One fuzz target: its name (`scripts/fuzz.sh` and the libFuzzer binaries use it) and its entry point.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Well-formed or interesting inputs the mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, in the order the runner reports them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "http_request",
        run: targets::api::http_request,
        seeds: seeds::http_request,
    },
    Target {
        name: "api_routes",
        run: targets::api::api_routes,
        seeds: seeds::api_routes,
    },
    Target {
        name: "config_file",
        run: targets::api::config_file,
        seeds: seeds::config_file,
    },
    Target {
        name: "snapshot_state",
        run: targets::snapshot::state_file,
        seeds: seeds::snapshot_state,
    },
    Target {
        name: "virtio_chain",
        run: targets::virtio::chain,
        seeds: seeds::virtio_chain,
    },
    Target {
        name: "virtio_block",
        run: targets::virtio::block,
        seeds: seeds::virtio_block,
    },
    Target {
        name: "virtio_net",
        run: targets::virtio::net,
        seeds: seeds::virtio_net,
    },
    Target {
        name: "virtio_vsock",
        run: targets::virtio::vsock,
        seeds: seeds::virtio_vsock,
    },
    Target {
        name: "virtio_pci",
        run: targets::pci::transport,
        seeds: seeds::virtio_pci,
    },
    Target {
        name: "mmds_stack",
        run: targets::mmds::stack,
        seeds: seeds::mmds_stack,
    },
    Target {
        name: "virtio_balloon",
        run: targets::virtio::balloon,
        seeds: seeds::virtio_balloon,
    },
    Target {
        name: "virtio_rng",
        run: targets::virtio::rng,
        seeds: seeds::virtio_rng,
    },
    Target {
        name: "virtio_pmem",
        run: targets::virtio::pmem,
        seeds: seeds::virtio_pmem,
    },
    Target {
        name: "vsock_muxer",
        run: targets::vsock::muxer,
        seeds: seeds::vsock_muxer,
    },
    Target {
        name: "vsock_handshake",
        run: targets::vsock::handshake,
        seeds: seeds::vsock_handshake,
    },
    Target {
        name: "vhost_user_relay",
        run: targets::vhost_user::relay,
        seeds: seeds::vhost_user_relay,
    },
    Target {
        name: "blk_control",
        run: targets::vhost_user::blk_control,
        seeds: seeds::blk_control,
    },
    Target {
        name: "config_notify",
        run: targets::vhost_user::config_notify,
        seeds: seeds::config_notify,
    },
    Target {
        name: "agent_reply",
        run: targets::agent::reply,
        seeds: seeds::agent_reply,
    },
    Target {
        name: "stdio_handshake",
        run: targets::agent::stdio_handshake,
        seeds: seeds::stdio_handshake,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
