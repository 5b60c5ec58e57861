//! Restore-based fast start, its mechanics proven with a tiny guest standing in for the agent-ready
//! template (under the software KVM no Linux guest reaches its agent): `hull_runtime::template` boots a
//! template VM with empty disk slots and a vsock, waits until it is ready, snapshots it and stops it; then
//! clones are restored from it, each with its own vsock socket and a fresh guest CID, their own disks
//! attached to the slots after the restore, and resumed. The guest (devcfg.elf) prints what it sees in the
//! devices' configuration spaces every tick, so each clone's console shows that its CID and its disks are
//! its own, and its tick count shows it continued from the template instead of booting. Also: the same
//! through hull-jailer's jails, and a clone that does not fit the template (another memory size) or a
//! disk for the wrong kind of slot, refused.
//!
//! What only hardware KVM shows (a Linux template whose agent answers, `hull run --from-snapshot`, the
//! shim's `fast_start`) is in `run_kvm.rs`, skipped here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_runtime::backend::{Vm, VmLaunchConfig};
use hull_runtime::jail::JailConfig;
use hull_runtime::template::{Template, TemplateError};
use hull_tests::{dec_field, hull_bin, require_kvm, tiny_guest, TempDir};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the console has a complete devcfg line with a tick above `after`; returns that line.
fn devcfg_line(vm: &mut dyn Vm, after: u64) -> String {
    let t0 = Instant::now();
    loop {
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        // Only complete lines: the last one may still be being written.
        let complete = console.rsplit_once('\n').map(|(c, _)| c).unwrap_or("");
        if let Some(line) = complete
            .lines()
            .filter(|l| l.starts_with("hull-tiny: devcfg tick="))
            .find(|l| dec_field(l, "tick") > after)
        {
            return line.to_string();
        }
        assert!(vm.alive(), "the VM ended; console:\n{console}");
        assert!(
            t0.elapsed() < TIMEOUT,
            "no devcfg tick above {after}; console:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every value of `key=` in `line`, in order.
fn values(line: &str, key: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(|v| v.parse().unwrap())
        .collect()
}

struct Launch {
    hull: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    jail: Option<JailConfig>,
}

impl Launch {
    fn new(dir: &Path, jail: bool) -> Launch {
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, b"not read by the tiny guest").unwrap();
        Launch {
            hull: hull_bin(),
            kernel: tiny_guest("devcfg.elf"),
            initrd,
            jail: jail.then(|| {
                let base = dir.join("jails");
                std::fs::create_dir_all(&base).unwrap();
                JailConfig {
                    jailer: hull_bin().with_file_name("hull-jailer"),
                    uid: 64300,
                    uid_count: 8,
                    gid: 64300,
                    base_dir: base,
                }
            }),
        }
    }

    /// The template's (and its clones') VM: 64 MiB, one read-only and one read-write slot, no drives.
    fn cfg<'a>(&'a self, dir: &'a Path, mem_mib: u32) -> VmLaunchConfig<'a> {
        VmLaunchConfig {
            hull: &self.hull,
            kernel: &self.kernel,
            initrd: &self.initrd,
            cpus: 1,
            mem_mib,
            drives: &[],
            slots: 1,
            rw_slots: 1,
            tap: None,
            mac: None,
            netns: None,
            cmdline_extra: String::new(),
            jail: self.jail.as_ref(),
            agent_policy: hull_agent_protocol::policy::Policy::hull_run(),
            dir,
        }
    }
}

/// A disk image of `sectors` 512-byte sectors.
fn disk(dir: &Path, name: &str, sectors: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; (sectors * 512) as usize]).unwrap();
    path
}

/// A template of devcfg.elf, ready once the guest printed its first tick (the stand-in for the agent
/// answering); returns it and the last tick the template printed.
fn make_template(launch: &Launch, work: &Path, name: &str) -> (Template, u64) {
    let vm_dir = work.join(format!("{name}-vm"));
    std::fs::create_dir(&vm_dir).unwrap();
    let mut last = 0;
    let template = Template::create(&launch.cfg(&vm_dir, 64), &work.join(name), &mut |vm| {
        let line = devcfg_line(vm, 0);
        last = dec_field(&line, "tick");
        // The template's slots are empty and its vsock has the boot CID.
        assert_eq!(values(&line, "blk"), [0, 0], "{line}");
        assert_eq!(values(&line, "cid"), [3], "{line}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("making the template: {e}"));
    assert!(work.join(name).join("template.json").is_file());
    (template, last)
}

/// Restores a clone in `dir`, gives it a read-only disk of `ro` sectors and a read-write one of `rw`
/// sectors, resumes it, and checks what its guest sees: both disks, a CID other than the template's, and
/// a tick count that continues the template's (it did not boot). Returns the clone and its CID.
fn clone(template: &Template, launch: &Launch, dir: &Path, ro: u64, rw: u64, template_tick: u64) -> (Box<dyn Vm>, u64) {
    std::fs::create_dir(dir).unwrap();
    let mut vm = template
        .restore(&launch.cfg(dir, 64), &[])
        .unwrap_or_else(|e| panic!("restoring a clone: {e}"));
    vm.attach_disk("slot0", &disk(dir, "ro.img", ro), true).unwrap();
    vm.attach_disk("wslot0", &disk(dir, "rw.img", rw), false).unwrap();
    vm.resume().unwrap();
    let line = devcfg_line(vm.as_mut(), 0);
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(
        !console.contains("devcfg start"),
        "a clone must not boot again:\n{console}"
    );
    assert!(
        dec_field(&line, "tick") > template_tick,
        "the clone continues the template's count: {line}"
    );
    // The first line may have been printed before the disks' configuration changed: wait for one after.
    let line = devcfg_line(vm.as_mut(), dec_field(&line, "tick"));
    assert_eq!(values(&line, "blk"), [ro, rw], "{line}\n{console}");
    let cid = values(&line, "cid");
    assert_eq!(cid.len(), 1, "{line}");
    assert_ne!(cid[0], 3, "a clone gets a fresh CID: {line}");
    assert!(vm.vsock_uds().exists(), "the clone's own vsock socket");
    (vm, cid[0])
}

fn clones_of_one_template(jail: bool, label: &str) {
    let work = TempDir::new(label).unwrap();
    let launch = Launch::new(work.path(), jail);
    let (template, tick) = make_template(&launch, work.path(), "template");
    // Two clones at once, each with its own disks, socket and CID.
    let (mut a, cid_a) = clone(&template, &launch, &work.path().join("a"), 2048, 4096, tick);
    let (mut b, cid_b) = clone(&template, &launch, &work.path().join("b"), 1024, 8192, tick);
    assert_ne!(cid_a, cid_b, "two clones, two CIDs");
    assert_ne!(a.vsock_uds(), b.vsock_uds());
    assert!(a.alive() && b.alive());
    // The VMM runs the lean `hull-vmm` of hull's build (`hull_runtime::vmm_binary`), jailed (a copy of it in
    // its chroot) or not.
    for pid in a.pids() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(
            exe.file_name().and_then(|n| n.to_str()),
            Some("hull-vmm"),
            "{}",
            exe.display()
        );
    }
    a.stop(Duration::ZERO);
    b.stop(Duration::ZERO);

    // A clone must be the template's VM: another memory size is refused before anything starts.
    let other = work.path().join("c");
    std::fs::create_dir(&other).unwrap();
    let err = template.restore(&launch.cfg(&other, 128), &[]).map(drop).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Mismatch(m) if m.contains("memory MiB: the template has 64, this VM wants 128")),
        "{err}"
    );
    // A read-write image does not go into a read-only slot (nor the reverse).
    let mut c = template.restore(&launch.cfg(&other, 64), &[]).unwrap();
    let img = disk(&other, "x.img", 8);
    let e = c.attach_disk("slot0", &img, false).unwrap_err().to_string();
    assert!(e.contains("slot slot0 takes read-only images only"), "{e}");
    let e = c.attach_disk("wslot0", &img, true).unwrap_err().to_string();
    assert!(e.contains("slot wslot0 takes read-write images only"), "{e}");
    c.stop(Duration::ZERO);
    // A directory that is not a template.
    assert!(matches!(
        Template::open(work.path()),
        Err(TemplateError::NotATemplate(..))
    ));
    assert_eq!(Template::open(&template.dir).unwrap().manifest, template.manifest);
}

#[test]
fn clones_restored_from_a_template_get_their_own_cid_socket_and_disks() {
    require_kvm!("clones_restored_from_a_template_get_their_own_cid_socket_and_disks");
    clones_of_one_template(false, "fast-start");
}

#[test]
fn clones_restored_in_jails_get_their_own_cid_socket_and_disks() {
    require_kvm!("clones_restored_in_jails_get_their_own_cid_socket_and_disks");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        hull_tests::skip(
            "clones_restored_in_jails_get_their_own_cid_socket_and_disks",
            "jails need root",
        );
        return;
    }
    clones_of_one_template(true, "fast-start-jail");
}
