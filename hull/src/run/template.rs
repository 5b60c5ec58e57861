//! `hull template create DIR`: boots a template microVM (the guest kernel and the agent's initramfs, no
//! image disk, empty slots for a later run's rootfs, volumes and scratch disk) on the kvm backend, waits
//! until hull-agent answers, snapshots it into DIR and stops it. `hull run --from-snapshot DIR` then
//! restores a clone instead of booting (see `hull_runtime::template`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use hull_agent_protocol::policy::Policy;
use hull_runtime::backend::{self, BackendKind, VmLaunchConfig};
use hull_runtime::guard;
use hull_runtime::template::{self, Template};

use super::{guest_files, jail_config, parse_policy, MachineArgs, VmArgs};
use crate::logging::LogLevel;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Boot a template VM until its agent answers, and snapshot it into DIR (created; must be empty).
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where the template goes: state.snap, memory.mem and template.json.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Backend (kvm), vCPUs and memory of the template and of every clone.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Slots for read-only volumes (`-v SRC:DEST:ro`) of the runs restored from it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub ro_volumes: u8,
    /// Slots for read-write volumes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub rw_volumes: u8,
    /// Give the template a NIC (eth0) on this TAP; each clone then needs `--net` with its own TAP.
    #[arg(long, value_name = "TAP")]
    pub net: Option<String>,
    /// The agent policy (as `hull run --agent-policy`), fixed in the template for every clone.
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub agent_policy: Option<Policy>,
    /// How long the guest may take to get its agent answering, in seconds.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Log level on standard error.
    #[arg(long, value_name = "LEVEL", default_value = "Warning", value_parser = LogLevel::parse)]
    pub log_level: LogLevel,
}

/// Entry point: returns the process exit status.
pub fn run(cmd: TemplateCommand) -> i32 {
    let TemplateCommand::Create(args) = cmd;
    crate::logging::init(args.log_level);
    match create(&args) {
        Ok(t) => {
            println!(
                "template {} ({} vCPU, {} MiB)",
                t.dir.display(),
                t.manifest.cpus,
                t.manifest.mem_mib
            );
            0
        }
        Err(e) => {
            eprintln!("hull template create: {e}");
            1
        }
    }
}

fn create(args: &CreateArgs) -> Result<Template, String> {
    let (kind, why) = backend::choose(args.machine.backend);
    if kind != BackendKind::Kvm {
        return Err(format!(
            "a template is a snapshot of the hull VMM, which needs the kvm backend; the backend here would be \
             qemu ({why})"
        ));
    }
    let (kernel, initrd) = guest_files(&args.vm).map_err(|e| e.to_string())?;
    let run_dir = guard::RunDir::create().map_err(|e| format!("creating the run directory: {e}"))?;
    let hull = PathBuf::from("/proc/self/exe");
    let jail = jail_config(&args.vm, &hull).map_err(|e| e.to_string())?;
    let cfg = VmLaunchConfig {
        hull: &hull,
        kernel: &kernel,
        initrd: &initrd,
        cpus: args.machine.cpus,
        mem_mib: args.machine.mem,
        drives: &[],
        // The rootfs, then read-only volumes; the scratch disk, then read-write volumes.
        slots: 1 + usize::from(args.ro_volumes),
        rw_slots: 1 + usize::from(args.rw_volumes),
        tap: args.net.as_deref(),
        mac: None,
        netns: None,
        // Nothing of one run: the clock comes from the SyncClock every clone gets.
        cmdline_extra: String::new(),
        jail: jail.as_ref(),
        agent_policy: args.agent_policy.unwrap_or_else(Policy::hull_run),
        dir: run_dir.path(),
    };
    let timeout = Duration::from_secs(args.boot_timeout);
    Template::create(&cfg, &args.dir, &mut |vm| template::agent_answers(vm, timeout)).map_err(|e| e.to_string())
}
