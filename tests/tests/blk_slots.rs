//! End to end, under QEMU TCG with hull's vhost-user blk backend: a disk *slot*. The guest boots with one
//! virtio-blk drive backed by an empty file (capacity 0) and `--control`; once it is up, the host attaches
//! an ext4 image through the control socket, the backend sends `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`,
//! QEMU re-reads the config and interrupts the guest, and the guest sees the new size, mounts the image and
//! checks a file byte for byte. Then `detach` (size back to 0) and a second, different image in the same
//! slot. This is how a pod's container images reach a microVM that is already running.
//!
//! Everything started is killed by PID on drop, also when an assertion fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::vhost_user::{
    chardev, ensure_tools, initramfs, pattern, sha256_bytes, start_backend, start_qemu, Proc, WorkDir, GUEST_TIMEOUT,
};

/// An ext4 image of `size_mib` MiB holding `data.bin` and `name.txt` (`mkfs.ext4 -d`).
fn ext4_image(dir: &Path, name: &str, size_mib: u32, data: &[u8]) -> std::path::PathBuf {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("data.bin"), data).unwrap();
    std::fs::write(content.join("name.txt"), format!("{name}\n")).unwrap();
    let image = dir.join(format!("{name}.ext4"));
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("running mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// One request on a fresh connection to the control socket; returns the answer line.
fn control(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

struct Slot {
    qemu: Proc,
    backend: Proc,
}

impl Slot {
    fn report(&self) -> String {
        format!(
            "--- serial console ---\n{}\n--- {} ---\n{}",
            self.qemu.output(),
            self.backend.name,
            self.backend.output()
        )
    }

    fn expect(&mut self, needle: &str) -> String {
        match self.qemu.wait_for(needle, GUEST_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!("{e}\n{}", self.report()),
        }
    }

    fn marker(&self, key: &str) -> String {
        let out = self.qemu.output();
        out.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(key))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }
}

#[test]
fn qemu_blk_slot_attach_detach_attach_while_the_guest_runs() {
    ensure_tools();
    let dir = WorkDir::new("blk-slot");
    let started = Instant::now();
    let placeholder = dir.join("slot0.empty");
    std::fs::write(&placeholder, b"").unwrap();
    let data1 = pattern(300 * 1024 + 17, 11);
    let data2 = pattern(200 * 1024 + 5, 22);
    // Different sizes, so the second size the guest reports can only come from a re-read config.
    let image1 = ext4_image(dir.path(), "first", 16, &data1);
    let image2 = ext4_image(dir.path(), "second", 24, &data2);

    let vhost_sock = dir.join("blk0.sock");
    let control_sock = dir.join("blk0.control");
    let backend = start_backend(
        "blk-backend slot0",
        &vhost_sock,
        &[
            "blk",
            "--socket",
            vhost_sock.to_str().unwrap(),
            "--path",
            placeholder.to_str().unwrap(),
            "--id",
            "slot0",
            "--control",
            control_sock.to_str().unwrap(),
        ],
    );
    assert!(
        control_sock.exists(),
        "the control socket is bound before the vhost-user socket"
    );
    let initrd = initramfs(dir.path(), "blk-slot.sh", &[]);
    let mut args = chardev("b0", &vhost_sock);
    args.extend(["-device".into(), "vhost-user-blk,chardev=b0".into()]);
    let qemu = start_qemu(&initrd, "", &args);
    let mut slot = Slot { qemu, backend };

    slot.expect("SLOT-WAITING 1");
    let booted = started.elapsed();
    assert_eq!(slot.marker("SLOT-INITIAL-SIZE"), "0", "{}", slot.report());
    // Bad requests change nothing and are answered.
    assert!(control(&control_sock, "attach relative.ext4 ro").starts_with("error: "));
    assert!(control(&control_sock, "frobnicate").starts_with("error: unknown request"));
    let answer = control(&control_sock, &format!("attach {} ro", image1.display()));
    assert_eq!(answer, "ok", "{}", slot.report());
    slot.expect("SLOT-UNMOUNTED 1");
    assert_eq!(control(&control_sock, "detach"), "ok", "{}", slot.report());
    slot.expect("SLOT-EMPTIED");
    let answer = control(&control_sock, &format!("attach {} rw", image2.display()));
    assert_eq!(answer, "ok", "{}", slot.report());
    slot.expect("HULL-TEST-EXIT");
    hull_tests::note(&format!(
        "blk slot: guest up after {booted:?}, two images attached and read after {:?}",
        started.elapsed()
    ));

    let report = slot.report();
    assert_eq!(slot.marker("SLOT-SIZE-1"), (16 * 2048).to_string(), "{report}");
    assert_eq!(slot.marker("SLOT-SHA-1"), sha256_bytes(&data1), "{report}");
    assert_eq!(slot.marker("SLOT-NAME-1"), "first", "{report}");
    assert_eq!(slot.marker("SLOT-SIZE-2"), (24 * 2048).to_string(), "{report}");
    assert_eq!(slot.marker("SLOT-SHA-2"), sha256_bytes(&data2), "{report}");
    assert_eq!(slot.marker("SLOT-NAME-2"), "second", "{report}");
    assert_eq!(slot.marker("HULL-TEST-EXIT"), "0", "{report}");
    let status = slot.qemu.wait_exit(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "QEMU did not exit 0\n{report}");
}
