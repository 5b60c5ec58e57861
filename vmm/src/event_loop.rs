//! The VMM's event loop (event-manager) on its own thread: device events that do not come from a
//! vCPU exit. For now that is host input for the serial console; virtio devices add their queue
//! and backend events here. The loop ends when the VM ends.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::lock;
use devices::legacy::SerialConsole;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::seccomp::{self, BpfProgram};
use crate::vcpu::VcpuControl;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Feeds the host's standard input to the guest's serial console.
pub struct SerialInput {
    serial: Arc<Mutex<SerialConsole>>,
    stdin: RawFd,
}

impl SerialInput {
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> Self {
        SerialInput {
            serial,
            // The descriptor itself, not `std::io::stdin()`: that handle carries an 8 KiB read buffer, a
            // third of an idle VMM's live heap, which this reader (64 bytes at a time) never uses.
            stdin: libc::STDIN_FILENO,
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.stdin, EventSet::IN)) {
            tracing::debug!(error = ?e, "standard input is not pollable; serial input disabled");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, which lives on this stack.
            let read = unsafe { libc::read(self.stdin, buf.as_mut_ptr().cast(), buf.len()) };
            usize::try_from(read).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // End of input or hang-up: stop watching stdin.
            let _ = ops.remove(events);
            return;
        }
        let taken = lock(&self.serial).enqueue_input(&buf[..n]);
        if taken < n {
            tracing::warn!(
                dropped = n - taken,
                "serial input FIFO full; the guest is not reading its console"
            );
        }
    }
}

/// Wakes the loop when the VM ends, so it stops at once instead of at its next timeout. It watches
/// the exit eventfd without reading it: others poll the same fd.
struct ExitWatcher(RawFd);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0, EventSet::IN)) {
            tracing::warn!(error = ?e, "cannot watch the VM exit; the event loop stops at its next timeout");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Level-triggered and never read: stop watching, the loop condition ends the thread.
        let _ = ops.remove(events);
    }
}

/// Runs `subscribers` until the VM ends, on a thread that first installs `filter` (and does nothing else
/// if it cannot).
pub fn spawn(
    subscribers: Vec<Subscriber>,
    control: Arc<VcpuControl>,
    filter: Option<Arc<BpfProgram>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Ready events taken per epoll_wait: a VM watches a few dozen descriptors at most, and more ready ones
    // wait for the next round (event-manager's default, 256, is a 3 KiB array kept for the VM's life).
    const READY_EVENTS: usize = 32;
    let mut manager: EventManager<Subscriber> = EventManager::new_with_capacity(READY_EVENTS)
        .map_err(|e| std::io::Error::other(format!("event manager: {e:?}")))?;
    for s in subscribers {
        manager.add_subscriber(s);
    }
    manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(control.exit_evt.as_raw_fd()))));
    let (installed_tx, installed_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("hull_events".into()).spawn(move || {
        let installed = seccomp::install(filter.as_deref());
        let ok = installed.is_ok();
        let _ = installed_tx.send(installed);
        if !ok {
            return;
        }
        while control.exit_reason().is_none() {
            if let Err(e) = manager.run_with_timeout(Duration::from_millis(100).as_millis() as i32) {
                tracing::error!(error = ?e, "event loop failed");
                break;
            }
        }
    })?;
    match installed_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "the event loop thread ended before installing its filter",
        )),
    }
}
