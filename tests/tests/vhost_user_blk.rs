//! End to end: `hull vhost-user blk` serving QEMU (TCG) guests. Reads a known pattern and compares
//! checksums, checks a read-only drive refuses writes, and that a write + fsync survives `kill -9` of
//! both QEMU and the backend.

mod vhost_user_common;

use std::time::Instant;

use vhost_user_common::*;

fn blk_device(id: &str, socket: &std::path::Path) -> Vec<String> {
    let mut a = chardev(id, socket);
    a.extend(["-device".into(), format!("vhost-user-blk,chardev={id}")]);
    a
}

#[test]
fn blk_reads_pattern_and_read_only_drive_refuses_writes() {
    ensure_tools();
    let dir = WorkDir::new("blk");
    let started = Instant::now();
    // 8 MiB + 512: capacity must come out as 16385 sectors.
    let image = dir.join("pattern.img");
    std::fs::write(&image, pattern(8 * 1024 * 1024 + 512, 42)).unwrap();
    let ro_image = dir.join("ro.img");
    std::fs::write(&ro_image, pattern(1024 * 1024, 7)).unwrap();
    let ro_sha_before = sha256_file(&ro_image);

    let s1 = dir.join("blk.sock");
    let s2 = dir.join("ro.sock");
    let _b1 = start_backend(
        "blk-backend",
        &s1,
        &[
            "blk",
            "--socket",
            s1.to_str().unwrap(),
            "--path",
            image.to_str().unwrap(),
            "--id",
            "pattern-drive",
        ],
    );
    let _b2 = start_backend(
        "ro-backend",
        &s2,
        &[
            "blk",
            "--socket",
            s2.to_str().unwrap(),
            "--path",
            ro_image.to_str().unwrap(),
            "--read-only",
            "--id",
            "ro-drive",
        ],
    );
    let initrd = initramfs(dir.path(), "blk.sh", &[]);
    let mut args = blk_device("c0", &s1);
    args.extend(blk_device("c1", &s2));
    let mut qemu = start_qemu(&initrd, "", &args);
    let result = qemu.wait_for("HULL-TEST-EXIT", GUEST_TIMEOUT);
    let log = qemu.output();
    result.unwrap_or_else(|e| panic!("{e}\n--- serial ---\n{log}"));
    eprintln!("blk guest finished in {:?}", started.elapsed());

    let line = |key: &str| {
        log.lines()
            .find(|l| l.starts_with(key))
            .map(|l| field(l, key))
            .unwrap_or_default()
    };
    assert_eq!(line("PATTERN-SECTORS"), "16385", "{log}");
    assert_eq!(line("PATTERN-SHA"), sha256_file(&image), "{log}");
    assert_eq!(line("RO-FLAG"), "1", "{log}");
    assert_eq!(line("RO-SHA"), ro_sha_before, "{log}");
    assert_eq!(line("RO-WRITE"), "refused", "{log}");
    assert_eq!(line("LAST-SECTOR"), "ok", "{log}");
    assert_eq!(line("PAST-END"), "0", "{log}");
    assert!(log.contains("HULL-TEST-EXIT 0"), "{log}");
    assert_eq!(sha256_file(&ro_image), ro_sha_before, "the read-only image changed");
}

#[test]
fn blk_write_with_fsync_survives_kill_9() {
    ensure_tools();
    let dir = WorkDir::new("blk-kill");
    let started = Instant::now();
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0u8; 16 * 1024 * 1024]).unwrap();
    let sock = dir.join("data.sock");
    let mut backend = start_backend(
        "data-backend",
        &sock,
        &[
            "blk",
            "--socket",
            sock.to_str().unwrap(),
            "--path",
            image.to_str().unwrap(),
            "--id",
            "data-drive",
        ],
    );
    let initrd = initramfs(dir.path(), "blk-write.sh", &[]);
    let seed = std::process::id();
    let mut qemu = start_qemu(&initrd, &format!("hull.seed={seed}"), &blk_device("c0", &sock));
    let line = qemu
        .wait_for("WRITTEN", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", qemu.output()));
    qemu.kill9();
    backend.kill9();
    eprintln!(
        "write acknowledged after {:?}; killed QEMU and the backend",
        started.elapsed()
    );

    let expected: Vec<u8> = format!("hull-durable-{seed}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(1024 * 1024)
        .collect();
    let disk = std::fs::read(&image).unwrap();
    let written = &disk[4 * 1024 * 1024..5 * 1024 * 1024];
    assert_eq!(
        field(&line, "WRITTEN"),
        sha256_bytes(&expected),
        "guest wrote something else"
    );
    assert!(
        written == &expected[..],
        "the fsynced write is not in the image after kill -9"
    );
    assert!(
        disk[..4 * 1024 * 1024].iter().all(|b| *b == 0),
        "bytes before the write changed"
    );
}
