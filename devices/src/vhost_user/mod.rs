//! vhost-user transport: serves any `VirtioDevice` core to a vhost-user frontend (QEMU, Cloud
//! Hypervisor) over a unix socket, with the `vhost-user-backend` crate doing the protocol. `blk`, `vsock`,
//! `net` and `rng` each build their device and call [`serve`].
//!
//! Owns: the mapping from vrings to the device's `QueueSet`, interrupt delivery through the vrings' call
//! eventfds, and the device's needs-reset state ([`NeedsReset`]: vhost-user has no message for it, so a
//! broken device is simply not called, and its host-side fd not watched, until the frontend resets it).
//! Never trusts: the frontend's messages beyond
//! what the crate validates, and the guest memory it shares (the device cores validate everything read
//! from it; a device error stops that device, never the process).
//!
//! Host-side changes to a served device (a block slot getting a new disk) go through a [`DeviceHandle`],
//! which takes the same lock the queues are served under, and are announced to the frontend by a
//! [`ConfigNotifier`] (`Protocol::ConfigNotify`).

pub mod blk;
pub mod blk_control;
pub mod config_notify;
/// Public for the fuzz targets (`fuzz/`) only; nothing outside this module calls it.
#[doc(hidden)]
pub mod enable_filter;
pub mod net;
pub mod rng;
pub mod vsock;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_error as error, guest_info as info, guest_warn as warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringMutex, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::stale_socket::bind_owner_only;
use crate::transport::NeedsReset;
use crate::virtio::{GuestMemory, QueueSet, VirtioDevice};
pub use config_notify::{ConfigNotifier, NotifyError};

type AtomicMem = GuestMemoryAtomic<GuestMemory>;

/// Largest ring a frontend may configure.
pub const VHOST_MAX_QUEUE_SIZE: usize = 1024;

/// Serving a device over vhost-user failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the {device} device: {reason}")]
    Device { device: &'static str, reason: String },
    #[error("starting the vhost-user daemon for {device}: {reason}")]
    Daemon { device: &'static str, reason: String },
    #[error("watching the {device} device's host-side fd: {source}")]
    WatchBackend {
        device: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("serving vhost-user socket {socket}: {reason}")]
    Serve { socket: PathBuf, reason: String },
}

struct State<D> {
    device: D,
    mem: Option<AtomicMem>,
    activated: bool,
    needs_reset: NeedsReset,
    /// The device's host-side fd in the worker's epoll, once serving started.
    backend_watch: Option<BackendWatch>,
}

impl<D> State<D> {
    /// The device is broken until the frontend resets it. Its host-side fd stops being watched: a
    /// level-triggered fd (a TAP with frames, a socket with a pending connection) that nobody drains would
    /// wake the worker in a loop.
    fn break_device(&mut self, name: &'static str) {
        self.needs_reset.set();
        if let Some(watch) = &mut self.backend_watch {
            watch.set(false, name);
        }
    }
}

/// Switches the watching of a device's host-side fd in the worker's epoll on and off.
struct BackendWatch {
    toggle: Box<dyn Fn(bool) -> io::Result<()> + Send>,
    watched: bool,
}

impl BackendWatch {
    fn set(&mut self, on: bool, name: &'static str) {
        if on == self.watched {
            return;
        }
        match (self.toggle)(on) {
            Ok(()) => self.watched = on,
            Err(e) => {
                warn!(device = name, watch = on, error = %e, "cannot change the watch on the device's host-side fd")
            }
        }
    }
}

/// A device core wrapped for the `vhost-user-backend` crate.
pub struct DeviceBackend<D> {
    name: &'static str,
    state: Mutex<State<D>>,
    num_queues: usize,
    max_queue_size: usize,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
}

/// How the session with the frontend is run.
#[derive(Clone)]
pub enum Protocol {
    /// The crate talks to the frontend directly.
    Direct,
    /// Messages pass through `enable_filter` (QEMU's vhost-user netdev enables rings before setting
    /// features, which the crate refuses).
    DeferEarlyEnable,
    /// Messages pass through the relay, `VHOST_USER_PROTOCOL_F_BACKEND_REQ` is offered, and the notifier
    /// gets the backend request channel, to announce config changes (`ConfigNotifier`).
    ConfigNotify(ConfigNotifier),
}

impl<D: VirtioDevice> DeviceBackend<D> {
    /// Wraps `device`, exposing its first `num_queues` queues (vhost-user vsock leaves the event
    /// queue to the frontend, so it serves 2 of the device's 3).
    pub fn new(name: &'static str, device: D, num_queues: usize, protocol: Protocol) -> Self {
        // Frontends pick their own ring sizes (QEMU's vhost-user-blk uses 1024 for virtio-mmio); the
        // device cores work with any valid size, so accept up to VHOST_MAX_QUEUE_SIZE.
        let device_max = device.queue_max_sizes().iter().copied().max().unwrap_or(256) as usize;
        let max_queue_size = device_max.max(VHOST_MAX_QUEUE_SIZE);
        let features = device.avail_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        DeviceBackend {
            name,
            state: Mutex::new(State {
                device,
                mem: None,
                activated: false,
                needs_reset: NeedsReset::default(),
                backend_watch: None,
            }),
            num_queues,
            max_queue_size,
            features,
            // QEMU's netdev keeps the virtio-net config space itself and warns about CONFIG.
            protocol_features: match protocol {
                Protocol::Direct => VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ,
                Protocol::DeferEarlyEnable => VhostUserProtocolFeatures::MQ,
                Protocol::ConfigNotify(_) => {
                    VhostUserProtocolFeatures::CONFIG
                        | VhostUserProtocolFeatures::MQ
                        | VhostUserProtocolFeatures::BACKEND_REQ
                }
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<D>> {
        // A panic while holding the lock would be a bug in a device core; keep serving regardless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Epoll token under which the device's host-side fd is registered (above the queue tokens and
    /// the crate's exit token).
    pub fn backend_token(&self) -> u64 {
        self.num_queues as u64 + 1
    }
}

impl<D: VirtioDevice + 'static> VhostUserBackend for DeviceBackend<D> {
    type Bitmap = ();
    type Vring = VringMutex<AtomicMem>;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.max_queue_size
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        self.lock()
            .device
            .set_acked_features(features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    fn reset_device(&self) {
        let mut st = self.lock();
        st.device.reset();
        st.activated = false;
        st.needs_reset.clear();
        if let Some(watch) = &mut st.backend_watch {
            watch.set(true, self.name);
        }
    }

    fn set_event_idx(&self, _enabled: bool) {
        // EVENT_IDX is not offered; `Queue::needs_notification` honours whatever was negotiated.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut buf = vec![0u8; size as usize];
        self.lock().device.read_config(u64::from(offset), &mut buf);
        buf
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.lock().device.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.needs_reset.is_set() {
            return Ok(());
        }
        let Some(atomic) = st.mem.clone() else {
            return Ok(());
        };
        if !st.activated {
            if let Err(e) = st.device.activate() {
                error!(device = self.name, error = %e, "activation failed");
                st.break_device(self.name);
                return Ok(());
            }
            st.activated = true;
        }
        let mem = atomic.memory();
        let mut guards: Vec<_> = vrings.iter().map(|v| v.get_mut()).collect();
        let result = {
            let mut set = QueueSet::new();
            for g in guards.iter_mut() {
                let usable = g.is_enabled() && virtio_queue::QueueT::ready(g.get_queue());
                set.push(if usable { Some(g.get_queue_mut()) } else { None });
            }
            let index = usize::from(device_event);
            let device = &mut st.device;
            st.needs_reset.call(|| {
                if index < self.num_queues {
                    device.process_queue(index, &mem, &mut set)
                } else if u64::from(device_event) == self.backend_token() {
                    device.process_backend(&mem, &mut set)
                } else {
                    Ok(crate::virtio::QueueSignals::NONE)
                }
            })
        };
        match result {
            Ok(signals) => {
                for i in signals.iter() {
                    if let Some(g) = guards.get(i) {
                        if let Err(e) = g.signal_used_queue() {
                            warn!(device = self.name, queue = i, error = %e, "cannot signal the frontend");
                        }
                    }
                }
            }
            Err(e) => {
                error!(device = self.name, error = %e, "device needs a reset; ignoring its queues");
                st.break_device(self.name);
            }
        }
        Ok(())
    }
}

/// A host-side handle on a device being served: runs code on the device under the lock its queues are
/// served under, so never in the middle of a request.
pub struct DeviceHandle<D> {
    backend: Arc<DeviceBackend<D>>,
}

impl<D> Clone for DeviceHandle<D> {
    fn clone(&self) -> Self {
        DeviceHandle {
            backend: self.backend.clone(),
        }
    }
}

impl<D: VirtioDevice> DeviceHandle<D> {
    /// Runs `f` on the device.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.backend.lock().device)
    }
}

/// Listens on `socket`, serves one frontend until it disconnects, then returns.
pub fn serve<D: VirtioDevice + 'static>(
    name: &'static str,
    device: D,
    num_queues: usize,
    protocol: Protocol,
    socket: &Path,
) -> Result<(), Error> {
    serve_with(name, device, num_queues, protocol, socket, |_| Ok(()))
}

/// [`serve`], handing `on_start` a [`DeviceHandle`] before the socket is listened on; an error from
/// `on_start` is returned at once.
pub fn serve_with<D: VirtioDevice + 'static>(
    name: &'static str,
    device: D,
    num_queues: usize,
    protocol: Protocol,
    socket: &Path,
    on_start: impl FnOnce(DeviceHandle<D>) -> Result<(), Error>,
) -> Result<(), Error> {
    let backend_fd = device.backend_fd();
    let backend = Arc::new(DeviceBackend::new(name, device, num_queues, protocol.clone()));
    on_start(DeviceHandle {
        backend: backend.clone(),
    })?;
    let token = backend.backend_token();
    let mem = GuestMemoryAtomic::new(GuestMemory::new());
    let mut daemon = VhostUserDaemon::new(name.to_string(), backend.clone(), mem).map_err(|e| Error::Daemon {
        device: name,
        reason: e.to_string(),
    })?;
    if let Some(fd) = backend_fd {
        let handlers = daemon.get_epoll_handlers();
        let handler = handlers.first().ok_or(Error::Daemon {
            device: name,
            reason: "no worker thread".into(),
        })?;
        handler
            .register_listener(fd, EventSet::IN, token)
            .map_err(|source| Error::WatchBackend { device: name, source })?;
        let handler = Arc::downgrade(handler);
        backend.lock().backend_watch = Some(BackendWatch {
            toggle: Box::new(move |on| match handler.upgrade() {
                Some(h) if on => h.register_listener(fd, EventSet::IN, token),
                Some(h) => h.unregister_listener(fd, EventSet::IN, token),
                None => Ok(()),
            }),
            watched: true,
        });
    }
    info!(device = name, socket = %socket.display(), "vhost-user backend listening");
    let result = match protocol {
        Protocol::Direct => serve_direct(&mut daemon, socket),
        Protocol::DeferEarlyEnable => serve_filtered(&mut daemon, socket, None),
        Protocol::ConfigNotify(notifier) => serve_filtered(&mut daemon, socket, Some(&notifier)),
    }
    .map_err(|reason| Error::Serve {
        socket: socket.to_owned(),
        reason,
    });
    let _ = std::fs::remove_file(socket);
    info!(device = name, ok = result.is_ok(), "vhost-user frontend gone");
    result
}

/// Serves one frontend on `socket` as the crate's `VhostUserDaemon::serve` does, but on a socket bound
/// owner-only (the crate's gets the umask's mode).
fn serve_direct<T>(daemon: &mut VhostUserDaemon<T>, socket: &Path) -> Result<(), String>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: vhost_user_backend::bitmap::BitmapReplace + vm_memory::mmap::NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    let _ = std::fs::remove_file(socket);
    let listener = bind_owner_only(socket).map_err(|e| format!("bind: {e}"))?;
    let mut listener = vhost::vhost_user::Listener::from(listener);
    daemon.start(&mut listener).map_err(|e| e.to_string())?;
    let waited = daemon.wait();
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match waited {
        // The frontend going away mid-message is a normal end (QEMU killed, guest powered off).
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        other => other.map_err(|e| e.to_string()),
    }
}

/// Serves one frontend through `enable_filter`: the daemon connects to a private socket that the relay
/// accepts, and the relay accepts the frontend on `socket` (and shows `notifier` the backend request
/// channel).
fn serve_filtered<T>(
    daemon: &mut VhostUserDaemon<T>,
    socket: &Path,
    notifier: Option<&ConfigNotifier>,
) -> Result<(), String>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: vhost_user_backend::bitmap::BitmapReplace + vm_memory::mmap::NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    let _ = std::fs::remove_file(socket);
    let frontend_listener = bind_owner_only(socket).map_err(|e| format!("bind: {e}"))?;
    let mut inner = socket.as_os_str().to_owned();
    inner.push(format!(".relay-{}", std::process::id()));
    let inner = PathBuf::from(inner);
    let _ = std::fs::remove_file(&inner);
    let inner_listener = bind_owner_only(&inner).map_err(|e| format!("bind {}: {e}", inner.display()))?;
    let started = daemon.start_client(&inner.to_string_lossy()).map_err(|e| e.to_string());
    let backend = started.and_then(|()| inner_listener.accept().map_err(|e| e.to_string()));
    let _ = std::fs::remove_file(&inner);
    let (backend, _) = backend?;
    let (frontend, _) = frontend_listener.accept().map_err(|e| format!("accept: {e}"))?;
    let relayed = enable_filter::relay(frontend, backend, notifier);
    let waited = daemon.wait().map_err(|e| e.to_string());
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match (relayed, waited) {
        // The frontend going away mid-message is a normal end (QEMU killed, guest powered off).
        (Ok(()) | Err(_), Ok(())) => Ok(()),
        (_, Err(e)) if e.contains("disconnected") || e.contains("partial message") => Ok(()),
        (_, Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_utils::StubDevice;
    use crate::virtio::TYPE_VSOCK;

    #[test]
    fn a_device_error_stops_the_device_and_its_fd_watch_until_the_frontend_resets_it() {
        let mut broken = StubDevice::new(TYPE_VSOCK, &[8, 8]);
        broken.process_fails = true;
        let calls = broken.calls.clone();
        let backend = DeviceBackend::new("test", broken, 2, Protocol::Direct);
        let watched = Arc::new(Mutex::new(Vec::new()));
        let log = watched.clone();
        backend.lock().backend_watch = Some(BackendWatch {
            toggle: Box::new(move |on| {
                log.lock().unwrap().push(on);
                Ok(())
            }),
            watched: true,
        });
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        backend.update_memory(atomic.clone()).unwrap();
        let vrings: Vec<VringMutex<AtomicMem>> = (0..2).map(|_| VringMutex::new(atomic.clone(), 8).unwrap()).collect();
        let token = backend.backend_token() as u16;

        backend.handle_event(token, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(backend.lock().needs_reset.is_set());
        assert_eq!(
            *watched.lock().unwrap(),
            vec![false],
            "the host-side fd is no longer watched"
        );
        // Not called again, whatever fires, until the frontend resets the device.
        backend.handle_event(token, EventSet::IN, &vrings, 0).unwrap();
        backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        backend.reset_device();
        assert!(!backend.lock().needs_reset.is_set());
        assert_eq!(*watched.lock().unwrap(), vec![false, true]);
        backend.handle_event(token, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
