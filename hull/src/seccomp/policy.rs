//! hull's seccomp policy as data: for each kind of thread, the system calls it may make and, where the
//! arguments decide what a call does, the only argument values allowed (ioctl requests, mmap flags without
//! PROT_EXEC, socket families, futex operations, signals). Anything else traps: the thread gets SIGSYS and
//! hull exits, naming the call (see `seccomp::sigsys`).
//!
//! Read a table as "this thread needs this because ...". Filters are inherited by the threads a thread
//! starts and stack with the ones those threads add, so the main (`api`) table is the main thread's own needs
//! *plus* everything the event loop and vCPU tables allow ([`api`] merges them): a vCPU thread is then held
//! to its own, much smaller table.
//!
//! Thread kinds and their names in a `--seccomp-filter` file (Firecracker's categories where they exist):
//! - `api`: hull's main thread, which serves the API socket and builds the VM (Firecracker's `api` and the
//!   build half of its `vmm` thread);
//! - `api-running`: stacked on the main thread once the VM runs, so from then on it keeps only what serving
//!   the API and cleaning up need (optional in a `--seccomp-filter` file);
//! - `vmm`: the event loop, `hull_events`, which emulates the virtio devices (Firecracker's `vmm` thread);
//! - `vcpu`: each `hull_vcpuN` thread;
//! - `vhost-user-blk`, `vhost-user-vsock`, `vhost-user-net`, `vhost-user-rng`: every thread of a `hull vhost-user` backend.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_ioeventfd, kvm_irq_routing, kvm_irqchip,
    kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msr_list, kvm_msrs, kvm_pit_config, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

/// One allowed system call: with any arguments (`only` empty), or only when the arguments match one of the
/// alternatives in `only` (each alternative is a list of conditions that must all hold).
#[derive(Clone, Copy, Debug)]
pub struct Allow {
    pub name: &'static str,
    pub nr: i64,
    pub only: &'static [&'static [Arg]],
}

/// `(argument[index] & mask) == value`, compared on the low 32 bits (ioctl requests, flags and enums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub index: u8,
    pub mask: u32,
    pub value: u32,
}

const fn any(name: &'static str, nr: i64) -> Allow {
    Allow { name, nr, only: &[] }
}

const fn only(name: &'static str, nr: i64, only: &'static [&'static [Arg]]) -> Allow {
    Allow { name, nr, only }
}

const fn eq(index: u8, value: u32) -> Arg {
    Arg {
        index,
        mask: u32::MAX,
        value,
    }
}

const fn masked(index: u8, mask: u32, value: u32) -> Arg {
    Arg { index, mask, value }
}

/// The only mode hull gives a socket it binds (devices::stale_socket::SOCKET_FILE_MODE; mode_t is u32). Written
/// out, not imported, because the build script compiles this file alone; a unit test checks they agree.
pub const SOCKET_FILE_MODE: u32 = 0o600;

// --- ioctl request numbers (asm-generic/ioctl.h), computed from the kernel structures they carry.
const KVMIO: u32 = 0xAE;
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u32) -> u32 {
    ioc(0, nr, 0)
}
const fn iow(nr: u32, size: usize) -> u32 {
    ioc(1, nr, size)
}
const fn ior(nr: u32, size: usize) -> u32 {
    ioc(2, nr, size)
}
const fn iowr(nr: u32, size: usize) -> u32 {
    ioc(3, nr, size)
}
use std::mem::size_of;

pub const KVM_CREATE_VM: u32 = io(0x01);
pub const KVM_CHECK_EXTENSION: u32 = io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u32 = io(0x04);
pub const KVM_GET_SUPPORTED_CPUID: u32 = iowr(0x05, size_of::<kvm_cpuid2>());
pub const KVM_CREATE_VCPU: u32 = io(0x41);
pub const KVM_SET_USER_MEMORY_REGION: u32 = iow(0x46, size_of::<kvm_userspace_memory_region>());
pub const KVM_SET_TSS_ADDR: u32 = io(0x47);
pub const KVM_SET_IDENTITY_MAP_ADDR: u32 = iow(0x48, size_of::<u64>());
pub const KVM_CREATE_IRQCHIP: u32 = io(0x60);
pub const KVM_SET_GSI_ROUTING: u32 = iow(0x6a, size_of::<kvm_irq_routing>());
pub const KVM_IRQFD: u32 = iow(0x76, size_of::<kvm_irqfd>());
pub const KVM_CREATE_PIT2: u32 = iow(0x77, size_of::<kvm_pit_config>());
pub const KVM_IOEVENTFD: u32 = iow(0x79, size_of::<kvm_ioeventfd>());
pub const KVM_RUN: u32 = io(0x80);
pub const KVM_GET_REGS: u32 = ior(0x81, size_of::<kvm_regs>());
pub const KVM_SET_REGS: u32 = iow(0x82, size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u32 = ior(0x83, size_of::<kvm_sregs>());
pub const KVM_SET_SREGS: u32 = iow(0x84, size_of::<kvm_sregs>());
pub const KVM_GET_MSRS: u32 = iowr(0x88, size_of::<kvm_msrs>());
pub const KVM_SET_MSRS: u32 = iow(0x89, size_of::<kvm_msrs>());
pub const KVM_SET_FPU: u32 = iow(0x8d, size_of::<kvm_fpu>());
pub const KVM_GET_LAPIC: u32 = ior(0x8e, size_of::<kvm_lapic_state>());
pub const KVM_SET_LAPIC: u32 = iow(0x8f, size_of::<kvm_lapic_state>());
pub const KVM_SET_CPUID2: u32 = iow(0x90, size_of::<kvm_cpuid2>());
// Snapshots (vmm::snapshot): the state KVM keeps, read on create and written back on load.
pub const KVM_GET_MSR_INDEX_LIST: u32 = iowr(0x02, size_of::<kvm_msr_list>());
pub const KVM_GET_DIRTY_LOG: u32 = iow(0x42, size_of::<kvm_dirty_log>());
pub const KVM_GET_IRQCHIP: u32 = iowr(0x62, size_of::<kvm_irqchip>());
pub const KVM_SET_IRQCHIP: u32 = ior(0x63, size_of::<kvm_irqchip>());
pub const KVM_SET_CLOCK: u32 = iow(0x7b, size_of::<kvm_clock_data>());
pub const KVM_GET_CLOCK: u32 = ior(0x7c, size_of::<kvm_clock_data>());
pub const KVM_GET_PIT2: u32 = ior(0x9f, size_of::<kvm_pit_state2>());
pub const KVM_SET_PIT2: u32 = iow(0xa0, size_of::<kvm_pit_state2>());
pub const KVM_GET_CPUID2: u32 = iowr(0x91, size_of::<kvm_cpuid2>());
pub const KVM_GET_MP_STATE: u32 = ior(0x98, size_of::<kvm_mp_state>());
pub const KVM_SET_MP_STATE: u32 = iow(0x99, size_of::<kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u32 = ior(0x9f, size_of::<kvm_vcpu_events>());
pub const KVM_SET_VCPU_EVENTS: u32 = iow(0xa0, size_of::<kvm_vcpu_events>());
pub const KVM_GET_DEBUGREGS: u32 = ior(0xa1, size_of::<kvm_debugregs>());
pub const KVM_SET_DEBUGREGS: u32 = iow(0xa2, size_of::<kvm_debugregs>());
pub const KVM_GET_XSAVE: u32 = ior(0xa4, size_of::<kvm_xsave>());
pub const KVM_SET_XSAVE: u32 = iow(0xa5, size_of::<kvm_xsave>());
pub const KVM_GET_XCRS: u32 = ior(0xa6, size_of::<kvm_xcrs>());
pub const KVM_SET_XCRS: u32 = iow(0xa7, size_of::<kvm_xcrs>());
// userfaultfd (linux/userfaultfd.h), for the Uffd snapshot backend: `_IOWR(0xAA, nr, struct)` written out
// (the build script compiles this file without `vmm`; a unit test checks they agree with vmm::snapshot::uffd).
const fn uffd_iowr(nr: u32, size: u32) -> u32 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
pub const UFFDIO_API: u32 = uffd_iowr(0x3f, 24);
pub const UFFDIO_REGISTER: u32 = uffd_iowr(0x00, 32);
pub const USERFAULTFD_IOC_NEW: u32 = 0xaa00;
// TAP set-up (linux/if_tun.h) and generic fd ioctls.
pub const TUNSETIFF: u32 = 0x4004_54ca;
pub const TUNSETOFFLOAD: u32 = 0x4004_54d0;
pub const TUNSETVNETHDRSZ: u32 = 0x4004_54d8;
pub const FIONBIO: u32 = libc::FIONBIO as u32;
pub const TCGETS: u32 = libc::TCGETS as u32;

// --- argument values that recur.
const PROT_EXEC: u32 = libc::PROT_EXEC as u32;
const MAP_SHARED: u32 = libc::MAP_SHARED as u32;
const MAP_PRIVATE_FILE: u32 = libc::MAP_PRIVATE as u32;
const MAP_PRIVATE_ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const MAP_NORESERVE: u32 = libc::MAP_NORESERVE as u32;
const MAP_STACK: u32 = libc::MAP_STACK as u32;
/// Guest memory on 2 MiB pages (`huge_pages: "2M"`).
const MAP_HUGETLB_2M: u32 = (libc::MAP_HUGETLB | libc::MAP_HUGE_2MB) as u32;
/// The futex command without the PRIVATE and CLOCK_REALTIME flag bits.
const FUTEX_CMD: u32 = 0x7f;
const SIGABRT: u32 = libc::SIGABRT as u32;
/// glibc's internal signal for setuid() and friends across threads.
const GLIBC_SIGSETXID: u32 = 33;

/// Memory: the allocator, thread stacks, guest RAM and the kvm_run page. Never executable mappings.
const MMAP_RULES: &[&[Arg]] = &[
    &[eq(3, MAP_PRIVATE_ANON), masked(2, PROT_EXEC, 0)],
    &[eq(3, MAP_PRIVATE_ANON | MAP_NORESERVE), masked(2, PROT_EXEC, 0)],
    &[eq(3, MAP_PRIVATE_ANON | MAP_STACK), masked(2, PROT_EXEC, 0)],
    &[eq(3, MAP_PRIVATE_ANON | MAP_HUGETLB_2M), masked(2, PROT_EXEC, 0)],
    &[eq(3, MAP_SHARED), masked(2, PROT_EXEC, 0)],
    // Guest memory restored from a snapshot's memory file (vmm::snapshot::memory::map_private).
    &[eq(3, MAP_PRIVATE_FILE | MAP_NORESERVE), masked(2, PROT_EXEC, 0)],
    &[eq(3, MAP_SHARED | MAP_NORESERVE), masked(2, PROT_EXEC, 0)],
];

/// What every Rust thread of hull needs: memory, locks, logging to stderr, leaving (also by panic/abort).
const RUNTIME: &[Allow] = &[
    any("brk", libc::SYS_brk),
    only("mmap", libc::SYS_mmap, MMAP_RULES),
    any("munmap", libc::SYS_munmap),
    any("mremap", libc::SYS_mremap),
    only("mprotect", libc::SYS_mprotect, &[&[masked(2, PROT_EXEC, 0)]]),
    only("madvise", libc::SYS_madvise, &[&[eq(2, libc::MADV_DONTNEED as u32)]]),
    only(
        "futex",
        libc::SYS_futex,
        &[
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAIT as u32)],
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAKE as u32)],
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAIT_BITSET as u32)],
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAKE_BITSET as u32)],
        ],
    ),
    any("sched_yield", libc::SYS_sched_yield),
    any("clock_gettime", libc::SYS_clock_gettime),
    any("clock_nanosleep", libc::SYS_clock_nanosleep),
    any("getrandom", libc::SYS_getrandom),
    any("gettid", libc::SYS_gettid),
    any("getpid", libc::SYS_getpid),
    any("write", libc::SYS_write),
    any("close", libc::SYS_close),
    only(
        "fcntl",
        libc::SYS_fcntl,
        &[
            &[eq(1, libc::F_GETFD as u32)],
            &[eq(1, libc::F_SETFD as u32)],
            &[eq(1, libc::F_GETFL as u32)],
            &[eq(1, libc::F_SETFL as u32)],
            &[eq(1, libc::F_DUPFD_CLOEXEC as u32)],
        ],
    ),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    any("sigaltstack", libc::SYS_sigaltstack),
    only("rt_sigaction", libc::SYS_rt_sigaction, &[&[eq(0, SIGABRT)]]),
    only("tgkill", libc::SYS_tgkill, &[&[eq(2, SIGABRT)]]),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
];

/// The event loop: virtio queues (eventfds), block I/O on the image, the TAP, and the vsock muxer's unix
/// sockets (accepting host connections, connecting to `<uds_path>_<port>`).
const EVENT_LOOP: &[Allow] = &[
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    any("read", libc::SYS_read),
    any("readv", libc::SYS_readv),
    any("writev", libc::SYS_writev),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("fsync", libc::SYS_fsync),
    any("fdatasync", libc::SYS_fdatasync),
    any("lseek", libc::SYS_lseek),
    only("accept4", libc::SYS_accept4, &[&[eq(3, libc::SOCK_CLOEXEC as u32)]]),
    only("socket", libc::SYS_socket, &[&[eq(0, libc::AF_UNIX as u32)]]),
    any("connect", libc::SYS_connect),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
    only("ioctl", libc::SYS_ioctl, &[&[eq(1, FIONBIO)]]),
    // A throttled drive or interface arms its rate limiter's timer (devices::rate_limiter).
    any("timerfd_settime", libc::SYS_timerfd_settime),
];

/// The vCPU kick signal, SIGRTMIN with glibc ([`vmm::vcpu::kick_signal`]; a unit test checks they agree).
pub const KICK_SIGNAL: u32 = 34;

/// Stopping or pausing the VM kicks each vCPU out of KVM_RUN with [`KICK_SIGNAL`].
const KICK: &[Allow] = &[only("tgkill", libc::SYS_tgkill, &[&[eq(2, KICK_SIGNAL)]])];

/// A vCPU: KVM_RUN, and the exits it routes (serial output, eventfds of the reset line and interrupts,
/// registers read to report a failed vCPU, the MSI routes a virtio-pci driver programs when it unmasks an
/// MSI-X vector); it kicks the other vCPUs when the guest ends the VM. Paused, it reads its whole state for
/// a snapshot (only KVM_GET_*: nothing it can change).
const VCPU: &[Allow] = &[
    only(
        "ioctl",
        libc::SYS_ioctl,
        &[
            &[eq(1, KVM_RUN)],
            &[eq(1, KVM_GET_REGS)],
            &[eq(1, KVM_GET_SREGS)],
            &[eq(1, KVM_SET_GSI_ROUTING)],
            &[eq(1, KVM_GET_CPUID2)],
            &[eq(1, KVM_GET_MSRS)],
            &[eq(1, KVM_GET_XSAVE)],
            &[eq(1, KVM_GET_XCRS)],
            &[eq(1, KVM_GET_DEBUGREGS)],
            &[eq(1, KVM_GET_LAPIC)],
            &[eq(1, KVM_GET_MP_STATE)],
            &[eq(1, KVM_GET_VCPU_EVENTS)],
        ],
    ),
    any("read", libc::SYS_read),
    // `--serial-out` with a size cap rotates the console file on the vCPU that writes the byte: copy it
    // into FILE.1 and truncate it, on descriptors opened before the VM started (hull_logging::rotating).
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("ftruncate", libc::SYS_ftruncate),
];

/// The main thread's own needs: the API socket and its clients, the signalfd, and building the VM (kernel,
/// initrd, images, /dev/kvm and its ioctls, guest RAM, the TAP, the vsock listener, starting threads).
const API_OWN: &[Allow] = &[
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    only("accept4", libc::SYS_accept4, &[&[eq(3, libc::SOCK_CLOEXEC as u32)]]),
    any("read", libc::SYS_read),
    any("pread64", libc::SYS_pread64),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("openat", libc::SYS_openat),
    any("newfstatat", libc::SYS_newfstatat),
    any("statx", libc::SYS_statx),
    any("fstat", libc::SYS_fstat),
    any("lseek", libc::SYS_lseek),
    any("fsync", libc::SYS_fsync),
    any("dup", libc::SYS_dup),
    any("eventfd2", libc::SYS_eventfd2),
    any("epoll_create1", libc::SYS_epoll_create1),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    // A read-only pmem device maps its file privately (devices::virtio::pmem::backing); read-write ones
    // are MAP_SHARED, which every thread may map.
    only(
        "mmap",
        libc::SYS_mmap,
        &[&[
            eq(3, (libc::MAP_PRIVATE | libc::MAP_NORESERVE) as u32),
            masked(2, PROT_EXEC, 0),
        ]],
    ),
    // Every drive and network interface gets its rate limiters' timers when it is built.
    any("timerfd_create", libc::SYS_timerfd_create),
    only("socket", libc::SYS_socket, &[&[eq(0, libc::AF_UNIX as u32)]]),
    any("bind", libc::SYS_bind),
    any("listen", libc::SYS_listen),
    any("connect", libc::SYS_connect),
    any("unlink", libc::SYS_unlink),
    // The vsock listener is made owner-only before bind (devices::stale_socket::bind_owner_only).
    only("fchmod", libc::SYS_fchmod, &[&[eq(1, SOCKET_FILE_MODE)]]),
    // The vCPU kick handler, installed when the first vCPU starts, and glibc's own handler for SIGSETXID
    // (signal 33), which it installs at the first pthread_create.
    only(
        "rt_sigaction",
        libc::SYS_rt_sigaction,
        &[&[eq(0, KICK_SIGNAL)], &[eq(0, GLIBC_SIGSETXID)]],
    ),
    // Threads. clone3 takes its flags in memory, which a filter cannot read; execve is denied everywhere,
    // so whatever it starts can only run hull's own code.
    any("clone3", libc::SYS_clone3),
    only(
        "clone",
        libc::SYS_clone,
        &[&[masked(0, libc::CLONE_THREAD as u32, libc::CLONE_THREAD as u32)]],
    ),
    any("set_robust_list", libc::SYS_set_robust_list),
    any("rseq", libc::SYS_rseq),
    any("sched_getaffinity", libc::SYS_sched_getaffinity),
    // Naming a new thread, and the thread then stacking its own, stricter filter (filters only ever narrow).
    only(
        "prctl",
        libc::SYS_prctl,
        &[
            &[eq(0, libc::PR_SET_NAME as u32)],
            &[eq(0, libc::PR_SET_NO_NEW_PRIVS as u32)],
        ],
    ),
    only("seccomp", libc::SYS_seccomp, &[&[eq(0, libc::SECCOMP_SET_MODE_FILTER)]]),
    // PUT /snapshot/load with the Uffd backend: a userfaultfd, handed to the page-fault handler.
    any("userfaultfd", libc::SYS_userfaultfd),
    any("sendmsg", libc::SYS_sendmsg),
    only(
        "ioctl",
        libc::SYS_ioctl,
        &[
            &[eq(1, UFFDIO_API)],
            &[eq(1, UFFDIO_REGISTER)],
            &[eq(1, USERFAULTFD_IOC_NEW)],
            &[eq(1, KVM_CREATE_VM)],
            &[eq(1, KVM_CHECK_EXTENSION)],
            &[eq(1, KVM_GET_VCPU_MMAP_SIZE)],
            &[eq(1, KVM_GET_SUPPORTED_CPUID)],
            &[eq(1, KVM_CREATE_VCPU)],
            &[eq(1, KVM_SET_USER_MEMORY_REGION)],
            &[eq(1, KVM_SET_TSS_ADDR)],
            &[eq(1, KVM_SET_IDENTITY_MAP_ADDR)],
            &[eq(1, KVM_CREATE_IRQCHIP)],
            &[eq(1, KVM_IRQFD)],
            &[eq(1, KVM_CREATE_PIT2)],
            &[eq(1, KVM_IOEVENTFD)],
            &[eq(1, KVM_SET_REGS)],
            &[eq(1, KVM_SET_SREGS)],
            &[eq(1, KVM_SET_MSRS)],
            &[eq(1, KVM_GET_MSRS)],
            &[eq(1, KVM_SET_FPU)],
            &[eq(1, KVM_GET_LAPIC)],
            &[eq(1, KVM_SET_LAPIC)],
            &[eq(1, KVM_SET_CPUID2)],
            &[eq(1, KVM_GET_MSR_INDEX_LIST)],
            // PUT /snapshot/create reads the VM-wide state (api-running, stacked on this filter, keeps
            // these four), PUT /snapshot/load puts the saved state back.
            &[eq(1, KVM_GET_IRQCHIP)],
            &[eq(1, KVM_GET_PIT2)],
            &[eq(1, KVM_GET_CLOCK)],
            &[eq(1, KVM_GET_DIRTY_LOG)],
            &[eq(1, KVM_SET_IRQCHIP)],
            &[eq(1, KVM_SET_PIT2)],
            &[eq(1, KVM_SET_CLOCK)],
            &[eq(1, KVM_SET_MP_STATE)],
            &[eq(1, KVM_SET_VCPU_EVENTS)],
            &[eq(1, KVM_SET_DEBUGREGS)],
            &[eq(1, KVM_SET_XSAVE)],
            &[eq(1, KVM_SET_XCRS)],
            &[eq(1, TUNSETIFF)],
            &[eq(1, TUNSETOFFLOAD)],
            &[eq(1, TUNSETVNETHDRSZ)],
            &[eq(1, FIONBIO)],
            &[eq(1, TCGETS)],
        ],
    ),
];

/// The main thread once the VM runs (`api-running`, stacked on `api` right after the VM started): it only
/// serves the API (PATCH /drives opens the new image), pauses, resumes and kicks the vCPUs, and cleans up when
/// the guest ends (joining threads, unmapping guest RAM, removing its sockets). Gone from then on: /dev/kvm
/// and its ioctls, new threads, sockets and listeners, the TAP, signal handlers, new filters.
const API_RUNNING: &[Allow] = &[
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    only("accept4", libc::SYS_accept4, &[&[eq(3, libc::SOCK_CLOEXEC as u32)]]),
    any("read", libc::SYS_read),
    any("pread64", libc::SYS_pread64),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("openat", libc::SYS_openat),
    any("newfstatat", libc::SYS_newfstatat),
    any("statx", libc::SYS_statx),
    any("fstat", libc::SYS_fstat),
    any("lseek", libc::SYS_lseek),
    any("fsync", libc::SYS_fsync),
    any("unlink", libc::SYS_unlink),
    // A new API connection is made non-blocking; PUT /snapshot/create reads the VM-wide KVM state and the
    // dirty log (never a KVM_SET_*).
    only(
        "ioctl",
        libc::SYS_ioctl,
        &[
            &[eq(1, FIONBIO)],
            &[eq(1, KVM_GET_IRQCHIP)],
            &[eq(1, KVM_GET_PIT2)],
            &[eq(1, KVM_GET_CLOCK)],
            &[eq(1, KVM_GET_DIRTY_LOG)],
        ],
    ),
    // PUT /snapshot/create writes the state and memory files (a diff file is sized first, then written
    // page by page).
    any("pwrite64", libc::SYS_pwrite64),
    any("ftruncate", libc::SYS_ftruncate),
    // PATCH /drives or /network-interfaces re-arms a throttled rate limiter's timer to re-check at once.
    any("timerfd_settime", libc::SYS_timerfd_settime),
];

/// What a vhost-user backend needs whatever its device: the frontend's socket (accepting it, messages
/// with fds, the guest memory it shares), vring eventfds and the worker threads' epoll.
const VHOST_USER_COMMON: &[Allow] = &[
    only("socket", libc::SYS_socket, &[&[eq(0, libc::AF_UNIX as u32)]]),
    any("bind", libc::SYS_bind),
    any("listen", libc::SYS_listen),
    any("accept4", libc::SYS_accept4),
    any("connect", libc::SYS_connect),
    any("unlink", libc::SYS_unlink),
    any("recvmsg", libc::SYS_recvmsg),
    any("sendmsg", libc::SYS_sendmsg),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
    // Socket options at the socket level only (timeouts on the control socket, peer errors).
    only("getsockopt", libc::SYS_getsockopt, &[&[eq(1, libc::SOL_SOCKET as u32)]]),
    only("setsockopt", libc::SYS_setsockopt, &[&[eq(1, libc::SOL_SOCKET as u32)]]),
    // Sockets (the frontend's, the slot control socket) are made owner-only before bind
    // (devices::stale_socket::bind_owner_only).
    only("fchmod", libc::SYS_fchmod, &[&[eq(1, SOCKET_FILE_MODE)]]),
    any("read", libc::SYS_read),
    any("readv", libc::SYS_readv),
    any("writev", libc::SYS_writev),
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("epoll_create1", libc::SYS_epoll_create1),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("eventfd2", libc::SYS_eventfd2),
    // The device cores' rate limiter timers (unlimited in a backend, but always created).
    any("timerfd_create", libc::SYS_timerfd_create),
    any("timerfd_settime", libc::SYS_timerfd_settime),
    any("dup", libc::SYS_dup),
    any("openat", libc::SYS_openat),
    any("newfstatat", libc::SYS_newfstatat),
    any("statx", libc::SYS_statx),
    any("fstat", libc::SYS_fstat),
    any("lseek", libc::SYS_lseek),
    any("clone3", libc::SYS_clone3),
    only(
        "clone",
        libc::SYS_clone,
        &[&[masked(0, libc::CLONE_THREAD as u32, libc::CLONE_THREAD as u32)]],
    ),
    any("set_robust_list", libc::SYS_set_robust_list),
    any("rseq", libc::SYS_rseq),
    any("sched_getaffinity", libc::SYS_sched_getaffinity),
    only("prctl", libc::SYS_prctl, &[&[eq(0, libc::PR_SET_NAME as u32)]]),
    only("rt_sigaction", libc::SYS_rt_sigaction, &[&[eq(0, GLIBC_SIGSETXID)]]),
    only("ioctl", libc::SYS_ioctl, &[&[eq(1, FIONBIO)], &[eq(1, TCGETS)]]),
];

/// vhost-user-blk: the disk image (and the control socket that swaps it).
const VHOST_USER_BLK: &[Allow] = &[
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("fsync", libc::SYS_fsync),
    any("fdatasync", libc::SYS_fdatasync),
];

/// vhost-user-vsock: nothing beyond the common unix sockets.
const VHOST_USER_VSOCK: &[Allow] = &[];

/// vhost-user-rng: nothing beyond the common set (getrandom is in every thread's runtime set).
const VHOST_USER_RNG: &[Allow] = &[];

/// vhost-user-net: the TAP.
const VHOST_USER_NET: &[Allow] = &[only(
    "ioctl",
    libc::SYS_ioctl,
    &[&[eq(1, TUNSETIFF)], &[eq(1, TUNSETOFFLOAD)], &[eq(1, TUNSETVNETHDRSZ)]],
)];

/// A thread kind's table, merged: the same system call listed twice (by different groups) is allowed
/// unconditionally if either says so, else under the union of their argument rules.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// (number, name, the alternatives of argument conditions, or None for any arguments), by number.
    pub entries: Vec<(i64, &'static str, Option<ArgRules>)>,
}

/// Alternatives of argument conditions: a call matches if all conditions of one alternative hold.
pub type ArgRules = Vec<&'static [Arg]>;

impl Table {
    fn merge(groups: &[&[Allow]]) -> Table {
        let mut table = Table::default();
        for allow in groups.iter().flat_map(|g| g.iter()) {
            match table.entries.iter_mut().find(|(nr, _, _)| *nr == allow.nr) {
                Some((_, _, rules)) => match (rules.as_mut(), allow.only.is_empty()) {
                    (None, _) => {}
                    (Some(_), true) => *rules = None,
                    (Some(list), false) => {
                        for r in allow.only {
                            if !list.contains(r) {
                                list.push(r);
                            }
                        }
                    }
                },
                None => {
                    let rules = (!allow.only.is_empty()).then(|| allow.only.to_vec());
                    table.entries.push((allow.nr, allow.name, rules));
                }
            }
        }
        table.entries.sort_by_key(|(nr, _, _)| *nr);
        table
    }

    /// Number of distinct system calls allowed (with or without argument rules).
    #[cfg(test)]
    #[allow(clippy::len_without_is_empty)] // a test helper; every table allows something
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn allows(&self, name: &str) -> bool {
        self.entries.iter().any(|(_, n, _)| *n == name)
    }
}

/// The event loop thread (`vmm`).
pub fn event_loop() -> Table {
    Table::merge(&[RUNTIME, EVENT_LOOP])
}

/// A vCPU thread (`vcpu`).
pub fn vcpu() -> Table {
    Table::merge(&[RUNTIME, VCPU, KICK])
}

/// The main thread (`api`): its own needs plus what every thread it starts needs (filters are inherited).
pub fn api() -> Table {
    Table::merge(&[RUNTIME, API_OWN, KICK, EVENT_LOOP, VCPU])
}

/// The main thread after the VM started (`api-running`), on top of `api`.
pub fn api_running() -> Table {
    Table::merge(&[RUNTIME, API_RUNNING, KICK])
}

/// A `hull vhost-user` backend, all its threads.
pub fn vhost_user(device: VhostUserDevice) -> Table {
    let own = match device {
        VhostUserDevice::Blk => VHOST_USER_BLK,
        VhostUserDevice::Vsock => VHOST_USER_VSOCK,
        VhostUserDevice::Net => VHOST_USER_NET,
        VhostUserDevice::Rng => VHOST_USER_RNG,
    };
    Table::merge(&[RUNTIME, VHOST_USER_COMMON, own])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VhostUserDevice {
    Blk,
    Vsock,
    Net,
    Rng,
}
