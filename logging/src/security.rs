//! The one shape of a security event, so a SIEM can pick them out of any hull process's log: a `tracing`
//! event with target [`TARGET`] (`security`) and the fields `event` (what happened, a stable snake_case
//! name), `vm_id`, `container_id` (empty where the process does not know them) and `reason` (for a person),
//! plus whatever the event adds. With `--log-format json` each one is a JSON object on its own line.
//!
//! The ids come from the process: [`set_identity`] once at start (the VMM: `--id`; `hull run`: its VM and
//! container). Events: `log_flood_suppressed` (a rate-limited log site dropped lines,
//! [`crate::ratelimit`]), `agent_permission_denied` (the agent refused a call by policy), and those the
//! callers define.

use std::sync::OnceLock;

/// The target of every security event.
pub const TARGET: &str = "security";

/// Which VM and container this process's events are about.
#[derive(Debug, Default)]
pub struct Identity {
    pub vm_id: String,
    pub container_id: String,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Names this process's VM and container in its security events; only the first call counts.
pub fn set_identity(vm_id: &str, container_id: &str) {
    let _ = IDENTITY.set(Identity {
        vm_id: vm_id.to_string(),
        container_id: container_id.to_string(),
    });
}

/// The identity set with [`set_identity`], else empty ids.
pub fn identity() -> &'static Identity {
    static NONE: Identity = Identity {
        vm_id: String::new(),
        container_id: String::new(),
    };
    IDENTITY.get().unwrap_or(&NONE)
}

/// Logs a security event at `level`: `security_event!(Level::WARN, event = "name", reason = expr, more
/// fields..., "message")`. `vm_id` and `container_id` come from [`identity`].
#[macro_export]
macro_rules! security_event {
    ($level:expr, event = $event:expr, reason = $reason:expr, $($rest:tt)+) => {{
        let identity = $crate::security::identity();
        $crate::tracing::event!(
            target: "security",
            $level,
            event = $event,
            vm_id = identity.vm_id.as_str(),
            container_id = identity.container_id.as_str(),
            reason = %$reason,
            $($rest)+
        );
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_take_fields_and_a_message() {
        super::set_identity("vm-1", "c1");
        assert_eq!(super::identity().vm_id, "vm-1");
        crate::security_event!(
            tracing::Level::WARN,
            event = "test",
            reason = "because",
            n = 3,
            "happened {}",
            3
        );
        crate::security_event!(tracing::Level::INFO, event = "test", reason = "because", "plain");
    }
}
