//! A bounded, deterministic run of every fuzz target: its seeds, then generated inputs from a fixed seed,
//! until `HULL_FUZZ_EXECS` executions (default 100,000) or `HULL_FUZZ_SECONDS` (default 3) have passed.
//! A failing input is printed and saved under `target/fuzz-failures/`; replay it with
//! `cargo run -p hull-fuzz -- --run TARGET FILE`.

use std::time::Duration;

use hull_fuzz::runner::{self, Budget};

const SEED: u64 = 0x6875_6c6c_6675_7a7a;

fn budget() -> Budget {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Budget {
        max_execs: env("HULL_FUZZ_EXECS", 100_000),
        time: Duration::from_secs(env("HULL_FUZZ_SECONDS", 3)),
    }
}

/// One target at a time, and the ttrpc client threads of `agent_reply` gone before the next starts: ttrpc
/// 0.9's client closes its socket before it tells its receiver thread to stop, so a receiver between its
/// poll and its read reads the next socket that gets the same descriptor number, here another target's,
/// and takes its first ten bytes (seen in CI as a `blk_control` answer missing "error: unk").
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bounded_run(name: &str) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    bounded_run_alone(name);
    if name == "agent_reply" {
        // A receiver polls at most every few milliseconds; a second is far beyond the last one's end.
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn bounded_run_alone(name: &str) {
    let target = hull_fuzz::target(name).expect("a known target");
    let stats = runner::run(target, SEED, budget());
    println!(
        "fuzz target {name}: {} inputs in {:.1} s, slowest {:?}",
        stats.execs,
        stats.elapsed.as_secs_f64(),
        stats.slowest
    );
    let reached = hull_fuzz::stats::summary(name);
    if !reached.is_empty() {
        println!("fuzz target {name} reached: {reached}");
    }
    assert!(stats.execs > (target.seeds)().len() as u64, "{name} ran only its seeds");
}

macro_rules! bounded {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                bounded_run(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_bounded_run() {
            let tested = [$(stringify!($name)),*];
            for t in hull_fuzz::TARGETS {
                assert!(tested.contains(&t.name), "fuzz target {} has no #[test]", t.name);
            }
        }
    };
}

bounded!(
    http_request,
    api_routes,
    config_file,
    snapshot_state,
    virtio_chain,
    virtio_block,
    virtio_net,
    virtio_vsock,
    virtio_pci,
    mmds_stack,
    virtio_balloon,
    virtio_rng,
    virtio_pmem,
    vsock_muxer,
    vsock_handshake,
    vhost_user_relay,
    blk_control,
    config_notify,
    agent_reply,
    stdio_handshake,
);
