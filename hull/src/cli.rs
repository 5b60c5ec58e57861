//! The `hull` command line: the subcommands ([`Command`]) next to the microVM mode's flags
//! ([`hull::vmm_cli::VmmArgs`]). It owns the shape of the arguments only.
//!
//! Without a subcommand, `hull` takes Firecracker's flags (`--api-sock`, `--config-file`, `--no-api`, ...).
//! Subcommands such as `hull run` and `hull vhost-user {blk,net,vsock}` go into [`Command`]; clap refuses to
//! mix them with the Firecracker-style flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hull::vmm_cli::{VmmArgs, VmmCli};

#[derive(Debug, Parser)]
#[command(
    name = "hull",
    version,
    about = "hull: a secure container runtime; one KVM microVM per process, Firecracker-compatible API",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub vmm: VmmArgs,
}

/// The names that make [`parse_args`] use the whole command line ([`Cli`]): the subcommands and help.
/// Every subcommand of [`Command`] must be here (a unit test checks it against clap's list).
const FULL_PARSER_WORDS: &[&str] = &["run", "vhost-user", "rebase-snap", "template", "help", "-h", "--help"];

/// Parses the process's arguments as [`Cli::parse`] does (and exits the same way on an error or help). A
/// command line that names no subcommand and asks for no help is parsed by the microVM mode's own parser,
/// which takes exactly the flags [`Cli`] takes without a subcommand; any argument that could be a
/// subcommand's name, wherever it stands, leaves the decision to the whole parser.
pub fn parse_args() -> Cli {
    parse_args_from(std::env::args_os().collect())
}

/// Whether the process's command line may name a subcommand or ask for help (see [`FULL_PARSER_WORDS`]);
/// if not, it is a microVM's, which the lean `hull-vmm` can run.
pub fn may_name_a_subcommand() -> bool {
    names_a_full_parser_word(std::env::args_os().skip(1))
}

fn names_a_full_parser_word(mut args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.any(|arg| FULL_PARSER_WORDS.iter().any(|word| arg == *word))
}

fn parse_args_from(args: Vec<std::ffi::OsString>) -> Cli {
    if names_a_full_parser_word(args.iter().skip(1).cloned()) {
        Cli::parse_from(args)
    } else {
        Cli {
            command: None,
            vmm: VmmCli::parse_from(args).vmm,
        }
    }
}

/// Subcommands; each one replaces the Firecracker-style flags: `hull run ...` (a container in a fresh
/// microVM, `crate::run`) and `hull vhost-user {blk,net,vsock} ...` (device backends).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a container in a fresh microVM: `hull run --rootfs DIR -- CMD...`.
    Run(Box<crate::run::RunArgs>),
    /// Serve one virtio device to a vhost-user frontend (QEMU) until it disconnects.
    #[command(subcommand)]
    VhostUser(crate::vhost_user::VhostUserCommand),
    /// Merge a diff snapshot's memory file onto the full memory file it follows (in place).
    RebaseSnap(RebaseSnapArgs),
    /// Restore-based fast start: `hull template create DIR` snapshots a VM whose agent answers, for
    /// `hull run --from-snapshot DIR`.
    #[command(subcommand)]
    Template(crate::run::template::TemplateCommand),
}

/// `hull rebase-snap --base-file FULL --diff-file DIFF` (Firecracker's rebase-snap flags).
#[derive(Debug, Args)]
pub struct RebaseSnapArgs {
    /// The full memory file; the diff's pages are written into it.
    #[arg(long, value_name = "FILE")]
    pub base_file: PathBuf,
    /// The diff memory file (same size; only its written pages count).
    #[arg(long, value_name = "FILE")]
    pub diff_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hull").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
        VmmCli::command().debug_assert();
    }

    /// The microVM mode's parser takes the same flags, with the same names, as the whole one.
    #[test]
    fn the_vmm_parser_has_the_whole_parsers_flags() {
        let names = |c: clap::Command| {
            let mut v: Vec<String> = c.get_arguments().map(|a| a.get_id().to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(names(VmmCli::command()), names(Cli::command()));
    }

    /// Which parser a command line gets: the VMM's unless a subcommand or help may be asked for.
    #[test]
    fn a_vmm_command_line_parses_the_same_either_way() {
        let os = |args: &[&str]| {
            std::iter::once("hull")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect()
        };
        let cli = parse_args_from(os(&["--api-sock", "/tmp/x.sock", "--id", "vm-1", "--boot-timer"]));
        let whole = parse(&["--api-sock", "/tmp/x.sock", "--id", "vm-1", "--boot-timer"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(format!("{:?}", cli.vmm), format!("{:?}", whole.vmm));
        let cli = parse_args_from(os(&["rebase-snap", "--base-file", "a", "--diff-file", "b"]));
        assert!(matches!(cli.command, Some(Command::RebaseSnap(_))));
        let cli = parse_args_from(os(&["template", "create", "/t"]));
        assert!(matches!(cli.command, Some(Command::Template(_))));
    }

    /// A subcommand missing from the words that select the whole parser could not be run at all.
    #[test]
    fn every_subcommand_selects_the_whole_parser() {
        use clap::CommandFactory;
        for sub in Cli::command().get_subcommands() {
            assert!(
                FULL_PARSER_WORDS.contains(&sub.get_name()),
                "subcommand {} is not in FULL_PARSER_WORDS",
                sub.get_name()
            );
        }
    }
}
