//! The VMMs that `compare` and `density` put side by side, and how each one is started, asked whether its
//! control socket is up, configured and told to boot: hull and Firecracker (the same REST API:
//! `PUT /boot-source`, `/machine-config`, `/actions InstanceStart`, or `--config-file`), Cloud Hypervisor
//! (`PUT /api/v1/vm.create` then `vm.boot`, or `--kernel` on its command line) and QEMU `-M microvm -accel kvm`
//! (`--preconfig`, which serves QMP before the machine exists, then QMP `x-exit-preconfig`, which builds and
//! runs it; or its plain command line).
//!
//! Every VMM boots the same image, the tiny `halt.elf` guest (`tests/guests/halt.S`): it writes the boot timer,
//! prints [`GUEST_LINE`] on COM1 and halts with interrupts off, so the same host-side clock (the line arriving
//! on the VMM's standard output) times every VMM, and memory is read with an idle guest.
//!
//! Whatever a VMM or its guest prints or answers is untrusted text: it is only searched, and every wait has a
//! deadline.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::{ApiClient, Hull};
use serde_json::json;

use crate::error::{fail, BenchError, Result};

/// Guest RAM of every VM, MiB.
pub const GUEST_MIB: u64 = 128;
/// The line the benchmark guest prints once booted, right after its boot-timer write; it halts after it.
pub const GUEST_LINE: &str = "hull-tiny: halt booted";
/// The guest's command line (it reads none; PVH hands it over anyway).
const BOOT_ARGS: &str = "console=ttyS0";
/// How often a control socket is tried while waiting for it: the resolution of the readiness figure.
const CONTROL_POLL: Duration = Duration::from_micros(200);
/// A VMM must answer on its control socket well within this.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a single control request or QMP answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmKind {
    Hull,
    Qemu,
    Firecracker,
    CloudHypervisor,
}

impl VmmKind {
    /// The name in tables and charts.
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Hull => "hull",
            VmmKind::Qemu => "QEMU",
            VmmKind::Firecracker => "Firecracker",
            VmmKind::CloudHypervisor => "Cloud Hypervisor",
        }
    }

    /// The name in JSON keys and section ids.
    pub fn id(self) -> &'static str {
        match self {
            VmmKind::Hull => "hull",
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// What "the control socket answers" means for this VMM.
    pub fn control_ready_meaning(self) -> &'static str {
        match self {
            VmmKind::Hull | VmmKind::Firecracker => "`GET /` on the API socket answered",
            VmmKind::CloudHypervisor => "`GET /api/v1/vmm.ping` on the API socket answered",
            VmmKind::Qemu => "the QMP greeting read from the QMP socket (--preconfig: before the machine is built)",
        }
    }

    /// What the first configuration request is (the clock of the "first configuration request" row).
    pub fn first_config_meaning(self) -> &'static str {
        match self {
            VmmKind::Hull | VmmKind::Firecracker => {
                "`PUT /boot-source` (then `PUT /machine-config`, then the start request)"
            }
            VmmKind::CloudHypervisor => "`PUT /api/v1/vm.create` (then the start request)",
            VmmKind::Qemu => "QMP `qmp_capabilities` (the machine came on the command line; then the start request)",
        }
    }

    /// What the start request is.
    pub fn start_meaning(self) -> &'static str {
        match self {
            VmmKind::Hull => {
                "`PUT /actions InstanceStart` (finishes the VM pre-built during `PUT /machine-config`: devices, \
                 boot structures, threads; then runs it)"
            }
            VmmKind::Firecracker => "`PUT /actions InstanceStart` (builds the VM, then runs it)",
            VmmKind::CloudHypervisor => "`PUT /api/v1/vm.boot` after `vm.create` (builds the VM, then runs it)",
            VmmKind::Qemu => "QMP `x-exit-preconfig` (builds the machine, loads the kernel, then runs it)",
        }
    }
}

/// One VMM binary to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct Vmm {
    pub kind: VmmKind,
    pub bin: PathBuf,
}

/// How a VMM process is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// Control socket up, VM not started: configured and started through the socket.
    Control,
    /// Boots at once from a config file or the command line, no control socket.
    Direct,
    /// Boots at once from a config file or the command line and also serves its control socket.
    DirectWithSocket,
}

impl Vmm {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The control socket's path in `dir` (hull and Firecracker: API socket; CH: API socket; QEMU: QMP).
    pub fn socket(&self, dir: &Path) -> PathBuf {
        match self.kind {
            VmmKind::Qemu => dir.join("qmp.sock"),
            _ => dir.join("api.sock"),
        }
    }

    /// The arguments that start this VMM the `launch` way with `guest` in `dir`; writes `dir/vm.json` for
    /// the VMMs that boot from a config file.
    pub fn args(&self, launch: Launch, dir: &Path, guest: &Path) -> Result<Vec<OsString>> {
        let sock = self.socket(dir);
        let mut args: Vec<OsString> = Vec::new();
        match self.kind {
            VmmKind::Hull | VmmKind::Firecracker => {
                if launch != Launch::Direct {
                    args.extend(["--api-sock".into(), sock.into_os_string()]);
                }
                if launch != Launch::Control {
                    let file = dir.join("vm.json");
                    std::fs::write(&file, fc_config(guest).to_string())
                        .map_err(fail(format!("writing {}", file.display())))?;
                    if launch == Launch::Direct {
                        args.push("--no-api".into());
                    }
                    args.extend(["--config-file".into(), file.into_os_string()]);
                }
                args.push("--boot-timer".into());
            }
            VmmKind::CloudHypervisor => {
                if launch != Launch::Direct {
                    args.extend(["--api-socket".into(), format!("path={}", sock.display()).into()]);
                }
                if launch != Launch::Control {
                    args.extend(["--kernel".into(), guest.as_os_str().to_owned()]);
                    args.extend(["--cmdline".into(), BOOT_ARGS.into()]);
                    args.extend(["--cpus".into(), "boot=1".into()]);
                    args.extend(["--memory".into(), format!("size={GUEST_MIB}M").into()]);
                    args.extend(["--serial".into(), "tty".into(), "--console".into(), "off".into()]);
                }
            }
            VmmKind::Qemu => {
                args.extend(qemu_args(guest));
                if launch != Launch::Direct {
                    args.extend([
                        "-qmp".into(),
                        format!("unix:{},server=on,wait=off", sock.display()).into(),
                    ]);
                }
                if launch == Launch::Control {
                    args.push("--preconfig".into());
                }
            }
        }
        Ok(args)
    }
}

/// hull's and Firecracker's config file (and API bodies) for the benchmark guest.
fn fc_config(guest: &Path) -> serde_json::Value {
    json!({
        "boot-source": { "kernel_image_path": guest, "boot_args": BOOT_ARGS },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MIB },
    })
}

/// QEMU's microVM with KVM and the benchmark guest: no firmware option ROMs, RTC, ACPI or default devices;
/// one vCPU, the console on COM1 to standard output. `-cpu host` alone aborts on kvm_pvm ("failed to set MSR
/// 0x10a"); without arch-capabilities it runs.
pub fn qemu_args(guest: &Path) -> Vec<OsString> {
    let words = [
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-smp",
        "1",
        "-m",
        "128M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-append",
        BOOT_ARGS,
        "-kernel",
    ];
    let mut args: Vec<OsString> = words.iter().map(OsString::from).collect();
    args.push(guest.as_os_str().to_owned());
    args
}

/// A VMM's control channel once it answers.
pub enum Control {
    /// hull, Firecracker and Cloud Hypervisor: HTTP on a unix socket, one request per connection.
    Http(ApiClient),
    /// QEMU: one QMP connection, capabilities negotiated.
    Qmp(Qmp),
}

/// Polls `sock` until the VMM answers on it (see [`VmmKind::control_ready_meaning`]); returns the channel
/// and the time since `t0`. Fails when the process exits first or [`CONTROL_TIMEOUT`] passes.
pub fn wait_for_control(kind: VmmKind, proc: &Hull, sock: &Path, t0: Instant) -> Result<(Control, Duration)> {
    loop {
        let answered = match kind {
            VmmKind::Qemu => Qmp::connect(sock).ok().map(Control::Qmp),
            _ => {
                let api = ApiClient::new(sock);
                let uri = if kind == VmmKind::CloudHypervisor {
                    "/api/v1/vmm.ping"
                } else {
                    "/"
                };
                api.get(uri).ok().filter(|r| r.is_success()).map(|_| Control::Http(api))
            }
        };
        if let Some(control) = answered {
            return Ok((control, t0.elapsed()));
        }
        if let Some(status) = proc.try_status() {
            return Err(BenchError::failed(format!(
                "{} exited ({status}) before its control socket answered\n{}",
                kind.name(),
                proc.report()
            )));
        }
        if t0.elapsed() > CONTROL_TIMEOUT {
            return Err(BenchError::failed(format!(
                "{}'s control socket {} did not answer within {CONTROL_TIMEOUT:?}\n{}",
                kind.name(),
                sock.display(),
                proc.report()
            )));
        }
        std::thread::sleep(CONTROL_POLL);
    }
}

impl Control {
    /// Everything before the start request: the guest and machine for hull, Firecracker and Cloud Hypervisor;
    /// QMP capability negotiation for QEMU (its guest came on the command line).
    pub fn configure(&mut self, kind: VmmKind, guest: &Path) -> Result<()> {
        match self {
            Control::Http(api) if kind == VmmKind::CloudHypervisor => {
                let body = json!({
                    "cpus": { "boot_vcpus": 1, "max_vcpus": 1 },
                    "memory": { "size": GUEST_MIB << 20 },
                    "payload": { "kernel": guest, "cmdline": BOOT_ARGS },
                    "serial": { "mode": "Tty" },
                    "console": { "mode": "Off" },
                });
                http_ok(api, "PUT", "/api/v1/vm.create", Some(&body))
            }
            Control::Http(api) => {
                let config = fc_config(guest);
                http_ok(api, "PUT", "/boot-source", Some(&config["boot-source"]))?;
                http_ok(api, "PUT", "/machine-config", Some(&config["machine-config"]))
            }
            Control::Qmp(qmp) => qmp.execute("qmp_capabilities").map(|_| ()),
        }
    }

    /// The start request (see [`VmmKind::start_meaning`]); returns once the VMM answered it.
    pub fn start(&mut self, kind: VmmKind) -> Result<()> {
        match self {
            Control::Http(api) if kind == VmmKind::CloudHypervisor => http_ok(api, "PUT", "/api/v1/vm.boot", None),
            Control::Http(api) => http_ok(api, "PUT", "/actions", Some(&json!({ "action_type": "InstanceStart" }))),
            Control::Qmp(qmp) => qmp.execute("x-exit-preconfig").map(|_| ()),
        }
    }
}

fn http_ok(api: &ApiClient, method: &str, uri: &str, body: Option<&serde_json::Value>) -> Result<()> {
    let text = body.map(|b| b.to_string());
    let resp = api
        .request(method, uri, text.as_deref())
        .map_err(fail(format!("{method} {uri}")))?;
    if !resp.is_success() {
        return Err(BenchError::failed(format!(
            "{method} {uri} answered {} {}",
            resp.status, resp.body
        )));
    }
    Ok(())
}

/// A QMP connection: JSON lines both ways; asynchronous events are skipped while waiting for an answer.
pub struct Qmp {
    reader: BufReader<UnixStream>,
}

/// Longest QMP line read; QEMU's answers here are a few hundred bytes.
const QMP_MAX_LINE: usize = 64 * 1024;

impl Qmp {
    /// Connects and reads the greeting (`{"QMP": ...}`).
    pub fn connect(sock: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(sock).map_err(fail(format!("connecting to {}", sock.display())))?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(fail("setting a QMP read timeout"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(BenchError::failed(format!("QMP greeting expected, got {greeting}")));
        }
        Ok(qmp)
    }

    /// Runs one command; its `return` value, or its `error` as a failure.
    pub fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        let line = json!({ "execute": command }).to_string() + "\n";
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(fail(format!("sending QMP {command}")))?;
        loop {
            let msg = self.read_message()?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(BenchError::failed(format!("QMP {command} failed: {err}")));
            }
            // An event ({"event": ...}): not the answer.
        }
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, QMP_MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(fail("reading from the QMP socket"))?;
        if n == 0 {
            return Err(BenchError::failed("the QMP socket closed"));
        }
        serde_json::from_str(line.trim()).map_err(fail(format!("QMP sent a line that is not JSON: {line:?}")))
    }
}

/// Memory and threads of one VMM process, from `/proc/PID/smaps_rollup` and `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessFootprint {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// The PSS of anonymous memory (heap, stacks, the guest's touched RAM) and of file mappings (binary,
    /// libraries: shared between VMMs of one binary, so it shrinks as more run).
    pub pss_anon_kib: u64,
    pub pss_file_kib: u64,
    pub threads: u64,
}

impl ProcessFootprint {
    pub fn read(pid: u32) -> Result<ProcessFootprint> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .map_err(fail(format!("reading /proc/{pid}/smaps_rollup")))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(fail(format!("reading /proc/{pid}/status")))?;
        let missing = |what: &str| BenchError::failed(format!("no {what} for pid {pid}"));
        Ok(ProcessFootprint {
            rss_kib: crate::smaps::kib_field(&rollup, "Rss").ok_or_else(|| missing("Rss in smaps_rollup"))?,
            pss_kib: crate::smaps::kib_field(&rollup, "Pss").ok_or_else(|| missing("Pss in smaps_rollup"))?,
            // Both appeared in Linux 5.13; older kernels report only the total.
            pss_anon_kib: crate::smaps::kib_field(&rollup, "Pss_Anon").unwrap_or(0),
            pss_file_kib: crate::smaps::kib_field(&rollup, "Pss_File").unwrap_or(0),
            threads: crate::smaps::status_number(&status, "Threads").ok_or_else(|| missing("Threads in status"))?,
        })
    }
}

/// `MemAvailable` of `/proc/meminfo`, KiB.
pub fn mem_available_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(fail("reading /proc/meminfo"))?;
    crate::smaps::kib_field(&text, "MemAvailable").ok_or_else(|| BenchError::failed("no MemAvailable in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn each_launch_gives_the_expected_arguments() {
        let dir = hull_tests::TempDir::new("bench-vmm-args").unwrap();
        let guest = Path::new("/g/halt.elf");
        let hull = Vmm {
            kind: VmmKind::Hull,
            bin: "hull".into(),
        };
        let control = strings(&hull.args(Launch::Control, dir.path(), guest).unwrap());
        assert_eq!(control[0], "--api-sock");
        assert!(!control.contains(&"--config-file".to_string()));
        let direct = strings(&hull.args(Launch::Direct, dir.path(), guest).unwrap());
        assert!(direct.contains(&"--no-api".to_string()) && !direct.contains(&"--api-sock".to_string()));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("vm.json")).unwrap()).unwrap();
        assert_eq!(config["machine-config"]["mem_size_mib"], GUEST_MIB);
        let both = strings(&hull.args(Launch::DirectWithSocket, dir.path(), guest).unwrap());
        assert!(both.contains(&"--api-sock".to_string()) && both.contains(&"--config-file".to_string()));
        assert!(!both.contains(&"--no-api".to_string()));

        let qemu = Vmm {
            kind: VmmKind::Qemu,
            bin: "qemu-system-x86_64".into(),
        };
        let q = strings(&qemu.args(Launch::Control, dir.path(), guest).unwrap());
        let preconfig = q.contains(&"--preconfig".to_string());
        assert!(preconfig && q.iter().any(|a| a.starts_with("unix:") && a.ends_with("wait=off")));
        assert!(q.contains(&"host,-arch-capabilities".to_string()) && q.contains(&"/g/halt.elf".to_string()));
        let q = strings(&qemu.args(Launch::Direct, dir.path(), guest).unwrap());
        assert!(!q.contains(&"--preconfig".to_string()) && !q.contains(&"-qmp".to_string()));

        let ch = Vmm {
            kind: VmmKind::CloudHypervisor,
            bin: "cloud-hypervisor".into(),
        };
        let c = strings(&ch.args(Launch::DirectWithSocket, dir.path(), guest).unwrap());
        assert!(c.contains(&"--api-socket".to_string()) && c.contains(&"size=128M".to_string()));
        let c = strings(&ch.args(Launch::Control, dir.path(), guest).unwrap());
        assert!(!c.contains(&"--kernel".to_string()));
    }
}
