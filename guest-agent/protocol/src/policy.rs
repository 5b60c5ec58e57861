//! The agent policy: which calls of the agent service a guest serves. The host fixes it when it boots the VM
//! (kernel command line parameter `hull.policy=<text>`); the agent parses it once at start, holds it in
//! memory, and no call changes it. Refused calls come back as ttrpc PERMISSION_DENIED.
//!
//! Text form: comma-separated items applied in order. The first item may be `all` (start from every call,
//! which is also the start when it is left out) or `none` (start from no call); then `-Call` refuses a call
//! and `+Call` serves it, `Call` being a method name of `proto/agent.proto` or `PortForward` (the
//! port-forward stream, [`crate::forward`]). Examples: `-ExecProcess` (no
//! `kubectl exec`), `none,+Health,+Version,+CreateContainer,...`. Unknown names and malformed items are
//! errors: a guest never guesses what the host meant (the agent then serves nothing).
//!
//! What the policy cannot express, because the agent always enforces it whatever the policy says: only the
//! host (vsock CID 2) is served, and ReadFile only reads files the host registered for copy-back when it
//! created the container.
//!
//! Shared by the agent (parsing, enforcing) and the hosts (`hull run`, the shim: building and checking it).

use std::fmt;

/// The kernel command line parameter that carries the policy.
pub const CMDLINE_PARAM: &str = "hull.policy";

/// The OCI spec annotation that lets one container's processes create AF_VSOCK sockets (`"true"`).
pub const ALLOW_VSOCK_ANNOTATION: &str = "io.hull.allow-vsock";
/// The OCI spec annotation that gives a container an init (`"true"`, as `docker run --init`): `hull-init` stays
/// PID 1 of its PID namespace, reaps orphans and forwards signals to the program, its child. Without it the
/// program is PID 1 itself, as under runc.
pub const INIT_ANNOTATION: &str = "io.hull.init";
/// The pod (sandbox) annotation that turns ExecProcess off for the pod's VM (`"false"`).
pub const EXEC_ANNOTATION: &str = "io.hull.policy.exec";

macro_rules! calls {
    ($($call:ident),* $(,)?) => {
        /// A call of the agent service, named as in `proto/agent.proto`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Call {
            $($call),*
        }

        impl Call {
            /// Every call, in the order of the service definition.
            pub const ALL: &'static [Call] = &[$(Call::$call),*];

            /// The method name, as in `proto/agent.proto` and in the policy text.
            pub fn name(self) -> &'static str {
                match self {
                    $(Call::$call => stringify!($call)),*
                }
            }
        }
    };
}

calls!(
    Version,
    Health,
    SyncClock,
    AddEntropy,
    ConfigureNetwork,
    CreateContainer,
    StartContainer,
    ExecProcess,
    SignalProcess,
    WaitProcess,
    CloseStdin,
    ResizeTerminal,
    ListProcesses,
    StatsContainer,
    UpdateResources,
    PauseContainer,
    ResumeContainer,
    GetOomEvent,
    ReadFile,
    RemoveContainer,
    Shutdown,
    PortForward,
);

/// Calls that are not ttrpc methods but streams of their own: `PortForward` is a connection to
/// [`crate::FORWARD_PORT`] ([`crate::forward`]).
pub const STREAM_CALLS: &[Call] = &[Call::PortForward];

impl Call {
    pub fn from_name(name: &str) -> Option<Call> {
        Call::ALL.iter().copied().find(|c| c.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `hull run` itself calls: connect (Health), check (Version), clock, the RNG reseed of a VM restored
/// from a snapshot (AddEntropy), network, one container's life and its stdio, power-off. Not exec, listing,
/// stats, updates, pause, OOM events or file copy-back.
pub const HULL_RUN_CALLS: &[Call] = &[
    Call::Version,
    Call::Health,
    Call::SyncClock,
    Call::AddEntropy,
    Call::ConfigureNetwork,
    Call::CreateContainer,
    Call::StartContainer,
    Call::SignalProcess,
    Call::WaitProcess,
    Call::CloseStdin,
    Call::ResizeTerminal,
    Call::RemoveContainer,
    Call::Shutdown,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("agent policy: unknown call {0:?} (a method name of agent.proto, e.g. ExecProcess)")]
    UnknownCall(String),
    #[error("agent policy: {0:?} is neither +Call nor -Call (`all` and `none` only come first)")]
    BadItem(String),
}

/// The set of calls a guest serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    allowed: u32,
}

impl Default for Policy {
    /// Every call: what the shim needs (it makes each of them) and, with it, what `hull run` needs.
    fn default() -> Policy {
        Policy::all()
    }
}

impl Policy {
    pub fn all() -> Policy {
        Policy::only(Call::ALL)
    }

    pub fn none() -> Policy {
        Policy { allowed: 0 }
    }

    pub fn only(calls: &[Call]) -> Policy {
        Policy {
            allowed: calls.iter().fold(0, |m, c| m | c.bit()),
        }
    }

    /// `hull run`'s default: [`HULL_RUN_CALLS`].
    pub fn hull_run() -> Policy {
        Policy::only(HULL_RUN_CALLS)
    }

    pub fn allows(&self, call: Call) -> bool {
        self.allowed & call.bit() != 0
    }

    pub fn allow(&mut self, call: Call) {
        self.allowed |= call.bit();
    }

    pub fn deny(&mut self, call: Call) {
        self.allowed &= !call.bit();
    }

    /// Parses the text form (see the module doc). An empty text is the default, [`Policy::all`].
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_on(Policy::all(), text)
    }

    /// Parses the text form with `base` as the start when the text does not begin with `all` or `none`
    /// (`hull run --agent-policy +ExecProcess` adds to hull run's default).
    pub fn parse_on(base: Policy, text: &str) -> Result<Policy, PolicyError> {
        let mut p = base;
        for (i, item) in text.split(',').map(str::trim).enumerate() {
            match item {
                "" if text.trim().is_empty() => {}
                "all" if i == 0 => p = Policy::all(),
                "none" if i == 0 => p = Policy::none(),
                _ => {
                    let (allow, name) = match (item.strip_prefix('+'), item.strip_prefix('-')) {
                        (Some(n), _) => (true, n),
                        (_, Some(n)) => (false, n),
                        _ => return Err(PolicyError::BadItem(item.chars().take(64).collect())),
                    };
                    let call = Call::from_name(name)
                        .ok_or_else(|| PolicyError::UnknownCall(name.chars().take(64).collect()))?;
                    if allow {
                        p.allow(call)
                    } else {
                        p.deny(call)
                    }
                }
            }
        }
        Ok(p)
    }

    /// The calls refused, in service order.
    pub fn refused(&self) -> impl Iterator<Item = Call> + '_ {
        Call::ALL.iter().copied().filter(|c| !self.allows(*c))
    }

    /// The kernel command line parameter, `hull.policy=<text>`.
    pub fn cmdline_param(&self) -> String {
        format!("{CMDLINE_PARAM}={self}")
    }
}

/// The shorter of `all,-A,-B...` and `none,+A,+B...` (no spaces: it goes on the kernel command line).
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refused = self.refused().count();
        if refused * 2 <= Call::ALL.len() {
            f.write_str("all")?;
            for c in self.refused() {
                write!(f, ",-{c}")?;
            }
        } else {
            f.write_str("none")?;
            for c in Call::ALL.iter().filter(|c| self.allows(**c)) {
                write!(f, ",+{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_form() {
        assert_eq!(Policy::parse("").unwrap(), Policy::all());
        assert_eq!(Policy::parse("all").unwrap(), Policy::all());
        let p = Policy::parse("-ExecProcess").unwrap();
        assert!(!p.allows(Call::ExecProcess));
        assert_eq!(p.refused().collect::<Vec<_>>(), [Call::ExecProcess]);
        let p = Policy::parse("none,+Health,+Version").unwrap();
        assert!(p.allows(Call::Health) && p.allows(Call::Version) && !p.allows(Call::Shutdown));
        // Later items win.
        let p = Policy::parse("all,-ReadFile,+ReadFile,-SyncClock").unwrap();
        assert!(p.allows(Call::ReadFile) && !p.allows(Call::SyncClock));
        // On another base.
        let p = Policy::parse_on(Policy::hull_run(), "+ExecProcess").unwrap();
        assert!(p.allows(Call::ExecProcess) && p.allows(Call::Health) && !p.allows(Call::ReadFile));
        assert_eq!(Policy::parse_on(Policy::hull_run(), "all").unwrap(), Policy::all());
        assert_eq!(Policy::parse_on(Policy::hull_run(), "").unwrap(), Policy::hull_run());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert_eq!(Policy::parse("-Exec"), Err(PolicyError::UnknownCall("Exec".into())));
        assert_eq!(
            Policy::parse("ExecProcess"),
            Err(PolicyError::BadItem("ExecProcess".into()))
        );
        assert_eq!(
            Policy::parse("-ExecProcess,none"),
            Err(PolicyError::BadItem("none".into()))
        );
        assert_eq!(
            Policy::parse("-execprocess"),
            Err(PolicyError::UnknownCall("execprocess".into()))
        );
        assert!(Policy::parse("all,,-ExecProcess").is_err());
    }

    #[test]
    fn the_text_form_round_trips() {
        for p in [
            Policy::all(),
            Policy::none(),
            Policy::hull_run(),
            Policy::parse("-ExecProcess,-ReadFile").unwrap(),
        ] {
            let text = p.to_string();
            assert!(!text.contains(' '), "{text}");
            assert_eq!(Policy::parse(&text).unwrap(), p, "{text}");
        }
        assert_eq!(
            Policy::parse("-ExecProcess").unwrap().cmdline_param(),
            "hull.policy=all,-ExecProcess"
        );
        assert_eq!(Policy::none().to_string(), "none");
    }

    #[test]
    fn hull_run_needs_no_exec() {
        let p = Policy::hull_run();
        for c in [
            Call::ExecProcess,
            Call::ReadFile,
            Call::UpdateResources,
            Call::ListProcesses,
        ] {
            assert!(!p.allows(c), "{c}");
        }
        assert!(p.allows(Call::Health) && p.allows(Call::CreateContainer) && p.allows(Call::Shutdown));
    }

    /// AddEntropy is a host-only call like SyncClock: every default that serves SyncClock serves it too
    /// (hull run's, the shim's `all`), and the text form names it like any other call.
    #[test]
    fn add_entropy_is_served_wherever_sync_clock_is() {
        assert!(HULL_RUN_CALLS.contains(&Call::AddEntropy));
        for p in [Policy::hull_run(), Policy::all(), Policy::default()] {
            assert!(p.allows(Call::SyncClock) && p.allows(Call::AddEntropy), "{p}");
        }
        assert_eq!(Call::from_name("AddEntropy"), Some(Call::AddEntropy));
        assert_eq!(Call::AddEntropy.name(), "AddEntropy");
        assert!(!STREAM_CALLS.contains(&Call::AddEntropy));
        let p = Policy::parse_on(Policy::hull_run(), "-AddEntropy").unwrap();
        assert!(!p.allows(Call::AddEntropy) && p.allows(Call::SyncClock));
        assert!(p.to_string().contains(",-AddEntropy"), "{p}");
        assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
        assert!(!Policy::none().allows(Call::AddEntropy));
    }
}
