//! A pmem device as the root filesystem of the project's real guest kernel in hull, in one boot (about a
//! minute of emulated ring 0 under the software kvm_pvm). Its own test binary: `virtio_boot.rs` points
//! `HULL_BIN` at a network-namespace wrapper for its whole process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hull_tests::{repo_root, require_kvm, skip, FileLock, Hull, TempDir};
use serde_json::json;

/// The whole boot to the root mount (~45 s idle under kvm_pvm; much more while a build runs).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a command to completion; panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest kernel: `$HULL_KERNEL`, else what `resources/build-guest.sh --kernel-only` prints as `kernel=`.
fn guest_kernel() -> PathBuf {
    if let Some(kernel) = std::env::var_os("HULL_KERNEL") {
        return kernel.into();
    }
    let out = Command::new("bash")
        .arg(repo_root().join("resources/build-guest.sh"))
        .arg("--kernel-only")
        .output()
        .expect("running build-guest.sh");
    assert!(out.status.success(), "build-guest.sh --kernel-only failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("kernel="))
        .expect("no kernel= line");
    PathBuf::from(&line["kernel=".len()..])
}

/// A pmem device as the root: hull maps an ext4 image above guest RAM, names it `root=/dev/pmem0 rw
/// rootflags=dax`, and the kernel mounts it with DAX (ext4 refuses the `dax` option with "DAX unsupported by
/// block device." unless the pmem driver gave the device struct pages and a 4 KiB-block filesystem sits on
/// it, so the mount itself is the proof). No initramfs: the kernel goes on to look for an init on the
/// image, which is where the boot is cut short.
#[test]
fn linux_mounts_an_ext4_root_from_pmem_with_dax() {
    const NAME: &str = "linux_mounts_an_ext4_root_from_pmem_with_dax";
    require_kvm!(NAME);
    if !have("mkfs.ext4") {
        skip(NAME, "mkfs.ext4 is missing; run scripts/install-test-deps.sh");
        return;
    }
    let kernel = guest_kernel();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");
    let dir = TempDir::new("pmem-root").expect("create temp dir");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hull-pmem-root"), "root on pmem\n").unwrap();
    let image = dir.path().join("root.ext4");
    // 4 KiB blocks (the page size), or ext4 cannot use DAX; 32 MiB is a multiple of pmem's 2 MiB.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("32M"));
    let config = json!({
        "boot-source": { "kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "pmem": [{ "id": "rootfs", "path_on_host": image, "root_device": true }],
    });
    let mut hull = Hull::with_config("pmem-root", &config, &[]);
    // 259 is the block major of pmem (and other extended-devt) disks; the line is waited for whole.
    hull.wait_for_output("VFS: Mounted root (ext4 filesystem) on device 259:0.", BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("the pmem root was not mounted\n{}", hull.report()));
    hull.kill();
    let serial = hull.stdout();
    let cmdline = serial.lines().find(|l| l.contains("Command line:")).unwrap_or_default();
    assert!(cmdline.contains("root=/dev/pmem0 rw rootflags=dax"), "{cmdline}");
    assert!(
        serial.contains("EXT4-fs (pmem0): mounted filesystem"),
        "{}",
        hull.report()
    );
    assert!(!serial.contains("DAX unsupported"), "{}", hull.report());
}
