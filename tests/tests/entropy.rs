//! End to end, under QEMU TCG with hull's vhost-user rng backend (`hull vhost-user rng`): the busybox guest's
//! kernel binds virtio_rng as its hardware RNG and `/dev/hwrng` reads return the host's random bytes (64 KiB
//! twice: full length, different each time, every byte value present). The same device core sits behind
//! hull's own virtio-mmio for `PUT /entropy`; under the software KVM here no Linux guest reaches user space
//! in hull, so this is where a guest actually reads from it.
//!
//! Everything started is killed by PID on drop, also when an assertion fails.

use hull_tests::vhost_user::{chardev, ensure_tools, initramfs, start_backend, start_qemu, WorkDir, GUEST_TIMEOUT};

fn marker(console: &str, key: &str) -> String {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn qemu_guest_reads_dev_hwrng_from_hull_vhost_user_rng() {
    ensure_tools();
    let dir = WorkDir::new("rng");
    let socket = dir.join("rng.sock");
    let backend = start_backend(
        "hull vhost-user rng",
        &socket,
        &["rng", "--socket", socket.to_str().unwrap()],
    );
    let initrd = initramfs(dir.path(), "rng.sh", &[]);
    let mut args = chardev("rng0", &socket);
    // QEMU's vhost-user-rng does not ask the backend which features it has: it offers the guest its own
    // defaults and passes on what the guest accepted. The backend has no EVENT_IDX or RING_RESET, so those
    // are turned off here (the vhost crate refuses features it did not offer).
    args.extend([
        "-device".to_string(),
        "vhost-user-rng,chardev=rng0,event_idx=off,queue_reset=off".to_string(),
    ]);
    let mut qemu = start_qemu(&initrd, "", &args);
    let report = |qemu: &hull_tests::vhost_user::Proc| {
        format!(
            "--- serial console ---\n{}\n--- backend ---\n{}",
            qemu.output(),
            backend.output()
        )
    };
    if let Err(e) = qemu.wait_for("HULL-TEST-EXIT", GUEST_TIMEOUT) {
        panic!("{e}\n{}", report(&qemu));
    }
    let console = qemu.output();
    assert!(
        marker(&console, "RNG-CURRENT").starts_with("virtio_rng"),
        "{}",
        report(&qemu)
    );
    assert_eq!(marker(&console, "RNG-BYTES"), "65536", "{}", report(&qemu));
    let (a, b) = (marker(&console, "RNG-SHA-A"), marker(&console, "RNG-SHA-B"));
    assert_eq!(a.len(), 64, "{}", report(&qemu));
    assert_ne!(a, b, "two reads returned the same bytes\n{}", report(&qemu));
    // sha256 of 64 KiB of zeros: what a device that answers without filling would produce.
    assert_ne!(a, "de2f256064a0af797747c2b97505dc0b9f3df0de4f489eac731c23ae9ca9cc31");
    // 65536 uniform bytes miss one of the 256 values with probability ~256 * e^-256.
    assert_eq!(marker(&console, "RNG-DISTINCT"), "256", "{}", report(&qemu));
    assert_eq!(marker(&console, "HULL-TEST-EXIT"), "0", "{}", report(&qemu));
}
