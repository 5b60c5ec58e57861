//! Pause, resume and stop for every vCPU thread at once. A [`VcpuControl`] shared by the VMM and the
//! vCPU threads holds the target state (run, pause, exit), which threads are in KVM_RUN, how many are
//! parked, and the first [`ExitReason`]. The controller sets a target and kicks each running thread
//! out of KVM_RUN with a real-time signal whose handler sets the thread's `kvm_run.immediate_exit`.
//! The handler touches only its own thread's `kvm_run` page; it trusts nothing else.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use devices::bus::lock;
use kvm_bindings::kvm_run;
use vmm_sys_util::eventfd::EventFd;

use super::VcpuError;
use crate::exit::ExitReason;
use crate::snapshot::VcpuState;

const TARGET_RUN: u8 = 0;
const TARGET_PAUSE: u8 = 1;
const TARGET_EXIT: u8 = 2;

thread_local! {
    /// The running vCPU's `kvm_run` page, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own mapped kvm_run page, set while its VcpuFd lives;
            // a volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN (threads send it with tgkill).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

pub(super) fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

#[derive(Default)]
struct ControlState {
    paused: usize,
    running_threads: Vec<libc::pthread_t>,
    exit: Option<ExitReason>,
    /// Bumped for each state-save round; a parked thread that has not served it yet does.
    save_round: u64,
    /// The states saved in the current round, as (vCPU index, state or error).
    saved: Vec<(u8, Result<Box<VcpuState>, String>)>,
}

/// What a parked vCPU thread does when asked to save its state.
pub(crate) type SaveFn<'a> = &'a mut dyn FnMut() -> Result<Box<VcpuState>, String>;

/// Shared by the VMM and every vCPU thread: the target state, who is paused, and how the VM ended.
pub struct VcpuControl {
    target: AtomicU8,
    state: Mutex<ControlState>,
    changed: Condvar,
    /// Written once when the VM ends; the API server polls it.
    pub exit_evt: EventFd,
}

impl VcpuControl {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Self::with_target(TARGET_RUN)
    }

    /// A controller whose vCPUs park before their first KVM_RUN (a restored VM without `resume_vm`).
    pub fn new_paused() -> std::io::Result<Arc<Self>> {
        Self::with_target(TARGET_PAUSE)
    }

    fn with_target(target: u8) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(VcpuControl {
            target: AtomicU8::new(target),
            state: Mutex::new(ControlState::default()),
            changed: Condvar::new(),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    fn kick_all(state: &ControlState) {
        for t in &state.running_threads {
            // SAFETY: threads remove themselves from the list (under this lock) before they end, so
            // every handle here names a live thread.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Ends the VM with `reason` (the first reason wins) and stops every vCPU.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut st = lock(&self.state);
        if st.exit.is_none() {
            match &reason {
                ExitReason::GuestReset => tracing::info!("guest reset: stopping the microVM"),
                other => tracing::error!(reason = ?other, "microVM stopped abnormally"),
            }
            st.exit = Some(reason);
            if let Err(e) = self.exit_evt.write(1) {
                tracing::error!(error = %e, "cannot signal the VM exit");
            }
        }
        self.target.store(TARGET_EXIT, Ordering::SeqCst);
        Self::kick_all(&st);
        self.changed.notify_all();
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.state).exit.clone()
    }

    pub fn is_paused(&self) -> bool {
        self.target.load(Ordering::SeqCst) == TARGET_PAUSE
    }

    /// Blocks until the VM ended.
    pub fn wait_exit(&self) -> ExitReason {
        let mut st = lock(&self.state);
        loop {
            if let Some(r) = &st.exit {
                return r.clone();
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops all `vcpus` threads and waits until each one is parked. False if the VM is not running.
    pub fn pause(&self, vcpus: usize) -> bool {
        if self
            .target
            .compare_exchange(TARGET_RUN, TARGET_PAUSE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let mut st = lock(&self.state);
        Self::kick_all(&st);
        while st.paused < vcpus.min(st.running_threads.len()) && st.exit.is_none() {
            let (next, timeout) = self
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if timeout.timed_out() {
                // A thread may have been between its state check and KVM_RUN; kick again.
                Self::kick_all(&st);
            }
        }
        true
    }

    /// Lets paused vCPUs run again. False if the VM is not paused.
    pub fn resume(&self) -> bool {
        if self
            .target
            .compare_exchange(TARGET_PAUSE, TARGET_RUN, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let _st = lock(&self.state);
        self.changed.notify_all();
        true
    }

    /// Asks every one of the `vcpus` parked threads for its state and waits for all of them (the VM must
    /// be paused). The states come back in vCPU order.
    pub(crate) fn save_vcpus(&self, vcpus: usize) -> Result<Vec<VcpuState>, String> {
        if !self.is_paused() {
            return Err("save/restore unavailable while running".into());
        }
        let mut st = lock(&self.state);
        if st.paused < vcpus {
            return Err(format!("only {} of {vcpus} vCPUs are parked", st.paused));
        }
        st.saved.clear();
        st.save_round += 1;
        self.changed.notify_all();
        while st.saved.len() < vcpus && st.exit.is_none() {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.exit.is_some() {
            return Err("the microVM ended while its vCPUs were saved".into());
        }
        let mut saved = std::mem::take(&mut st.saved);
        saved.sort_by_key(|(index, _)| *index);
        saved.into_iter().map(|(_, r)| r.map(|b| *b)).collect()
    }

    /// Called by a vCPU thread: waits while the target is "paused", saving its state (`save`) whenever
    /// asked. Returns false when it must exit.
    pub(super) fn park_if_paused(&self, index: u8, save: SaveFn<'_>) -> bool {
        match self.target.load(Ordering::SeqCst) {
            TARGET_RUN => return true,
            TARGET_EXIT => return false,
            _ => {}
        }
        let mut st = lock(&self.state);
        // A round started before this thread parked is not its to serve.
        let mut served = st.save_round;
        st.paused += 1;
        self.changed.notify_all();
        while self.target.load(Ordering::SeqCst) == TARGET_PAUSE {
            if st.save_round != served {
                served = st.save_round;
                drop(st);
                let result = save();
                st = lock(&self.state);
                st.saved.push((index, result));
                self.changed.notify_all();
                continue;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.paused -= 1;
        self.target.load(Ordering::SeqCst) != TARGET_EXIT
    }

    /// Called by a vCPU thread before its first KVM_RUN: from now on it can be kicked out of KVM_RUN.
    pub(super) fn enter_thread(&self, me: libc::pthread_t, run: *mut kvm_run) {
        KVM_RUN_PTR.with(|p| p.set(run));
        lock(&self.state).running_threads.push(me);
    }

    /// Called by a vCPU thread whose run loop ended: it is no longer kicked, and waiters re-check.
    pub(super) fn leave_thread(&self, me: libc::pthread_t) {
        {
            let mut st = lock(&self.state);
            st.running_threads.retain(|t| *t != me);
            KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        }
        self.changed.notify_all();
    }

    /// Called by a halted vCPU thread: it no longer needs kicks, and waits until the VM ends.
    pub(super) fn park_until_exit(&self, me: libc::pthread_t) {
        let mut st = lock(&self.state);
        st.running_threads.retain(|t| *t != me);
        self.changed.notify_all();
        while self.target.load(Ordering::SeqCst) != TARGET_EXIT {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}
