//! The microVM's configuration: plain structs that the REST API, the JSON config file and `hull run` all
//! produce, so there is exactly one way into the VMM. Field names and JSON shapes follow Firecracker's API
//! (`boot-source`, `machine-config`); every value arriving here is user input and is validated before use.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most vCPUs a microVM may have (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory hull accepts, in MiB.
pub const MIN_MEM_MIB: usize = 16;
/// Largest guest memory hull accepts, in MiB (the layout keeps RAM below the 64-bit MMIO hole end).
pub const MAX_MEM_MIB: usize = 256 * 1024;
/// Kernel command line used when the user gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

/// Errors in a configuration the user supplied. The `Display` text is what the API reports as
/// `fault_message`, so it names the field and the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("The kernel file cannot be opened: {path}: {reason}")]
    KernelFile { path: String, reason: String },
    #[error("The initrd file cannot be opened: {path}: {reason}")]
    InitrdFile { path: String, reason: String },
    #[error("The number of vCPUs must be between 1 and {MAX_VCPUS}, and 1 or even when SMT is enabled (got {0})")]
    InvalidVcpuCount(u64),
    #[error("The memory size (MiB) must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} (got {0})")]
    InvalidMemorySize(u64),
    /// Firecracker's text for a memory size that the huge page size does not divide.
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    MemoryNotPageAligned,
    #[error("The kernel command line is invalid: {0}")]
    InvalidBootArgs(String),
    #[error("Missing boot source: configure the kernel with PUT /boot-source before starting the microVM")]
    MissingBootSource,
    #[error("Invalid drive {id:?}: {reason}")]
    InvalidDrive { id: String, reason: String },
    #[error("Invalid network interface {id:?}: {reason}")]
    InvalidNetworkInterface { id: String, reason: String },
    #[error("Invalid vsock device: {0}")]
    InvalidVsock(String),
    #[error("Invalid entropy device: {0}")]
    InvalidEntropy(String),
    #[error("Invalid pmem device {id:?}: {reason}")]
    InvalidPmem { id: String, reason: String },
    /// Firecracker's text for a balloon larger than guest memory (or than 32 bits of pages).
    #[error("Amount of pages requested is too large.")]
    BalloonTooLarge,
    #[error("Too many virtio devices: {count} configured, at most {max} fit the interrupt lines")]
    TooManyDevices { count: usize, max: usize },
}

/// `boot-source`: what to boot and with which command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; hull appends what the machine needs (devices, CPU-template switches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

impl BootSourceConfig {
    /// Checks that the files exist and can be read, and that the command line is acceptable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable(&self.kernel_image_path).map_err(|reason| ConfigError::KernelFile {
            path: self.kernel_image_path.display().to_string(),
            reason,
        })?;
        if let Some(initrd) = &self.initrd_path {
            check_readable(initrd).map_err(|reason| ConfigError::InitrdFile {
                path: initrd.display().to_string(),
                reason,
            })?;
        }
        if let Some(args) = &self.boot_args {
            if args.bytes().any(|b| b == 0) {
                return Err(ConfigError::InvalidBootArgs("it contains a NUL byte".into()));
            }
            if !args.is_ascii() {
                return Err(ConfigError::InvalidBootArgs("it must be ASCII".into()));
            }
            if args.len() > crate::layout::CMDLINE_MAX_SIZE / 2 {
                return Err(ConfigError::InvalidBootArgs(format!(
                    "it is {} bytes long; at most {} are accepted",
                    args.len(),
                    crate::layout::CMDLINE_MAX_SIZE / 2
                )));
            }
        }
        Ok(())
    }

    /// The command line the user asked for, or hull's default.
    pub fn boot_args_or_default(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}

fn check_readable(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path).map(|_| ()).map_err(|e| e.to_string())
}

/// CPU templates: which CPU features the guest is shown. Firecracker's static templates keep their names
/// their bits and their host checks (`cpu_template.rs`): Intel ones apply on Intel hosts and are refused
/// elsewhere at `InstanceStart`, as Firecracker refuses them, `T2A` only applies on AMD, and `V1N1` (Arm)
/// never on x86_64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplateName {
    /// Pass KVM's supported CPUID through, except on a software KVM (`kvm_pvm`), where `SoftKvm` is chosen.
    #[default]
    None,
    /// Hide what a software KVM cannot emulate (cmpxchg16b, popcnt, xsave, AVX, SSE4, ...).
    SoftKvm,
    /// Firecracker's Intel templates.
    C3,
    T2,
    T2S,
    T2CL,
    /// Firecracker's AMD template: an AMD host shown with a T2-like feature set.
    T2A,
    /// Firecracker's Arm Neoverse V1 template.
    V1N1,
}

/// `huge_pages`: the page size behind guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// 2 MiB hugetlbfs pages (the host needs free pages in `vm.nr_hugepages`).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl HugePages {
    /// The page size in MiB that guest memory must be a multiple of (1: no constraint beyond MiB).
    pub fn page_mib(self) -> usize {
        match self {
            HugePages::None => 1,
            HugePages::Hugetlbfs2M => 2,
        }
    }
}

/// `machine-config`: vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    /// Simultaneous multithreading in the guest topology.
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub cpu_template: CpuTemplateName,
    /// Dirty-page tracking for diff snapshots (KVM_MEM_LOG_DIRTY_PAGES, and the devices' own writes).
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: CpuTemplateName::None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.vcpu_count;
        if n == 0 || n > MAX_VCPUS || (self.smt && n > 1 && n % 2 == 1) {
            return Err(ConfigError::InvalidVcpuCount(n.into()));
        }
        if self.mem_size_mib < MIN_MEM_MIB || self.mem_size_mib > MAX_MEM_MIB {
            return Err(ConfigError::InvalidMemorySize(self.mem_size_mib as u64));
        }
        if !self.mem_size_mib.is_multiple_of(self.huge_pages.page_mib()) {
            return Err(ConfigError::MemoryNotPageAligned);
        }
        Ok(())
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// The `hull` process's standard output (Firecracker's behaviour).
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Appended to a file kept under `max_bytes` (0: no cap) by rotating it into `<path>.1`, so a guest
    /// cannot fill the host's disk through its console (`hull_logging::rotating`).
    CappedFile { path: PathBuf, max_bytes: u64 },
    /// Discarded.
    Sink,
}

/// `PUT /serial` (and `serial` in a config file): Firecracker's `SerialDevice`, where the guest's console
/// output goes. Without `serial_out_path` the console stays on hull's standard output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
}

/// Drive caching (Firecracker's `cache_type`). hull's virtio-blk always offers and honours FLUSH, so
/// both are honoured: `Writeback` exactly, `Unsafe` (no durability promised) by being safer than asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

/// How a drive's file is accessed (Firecracker's `io_engine`); only synchronous I/O exists in hull.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    /// io_uring in Firecracker; refused by validation here.
    Async,
}

/// Longest `refill_time` (ms) a token bucket takes: its nanoseconds must fit in 64 bits, as in Firecracker.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// Firecracker's `TokenBucket`: `size` tokens, refilled from empty in `refill_time` milliseconds, plus an
/// optional `one_time_burst` spent first and never refilled. A size or refill time of 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    fn to_device(self) -> devices::rate_limiter::BucketConfig {
        devices::rate_limiter::BucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst.unwrap_or(0),
            refill_time_ms: self.refill_time,
        }
    }
}

/// Firecracker's `RateLimiter`: a `bandwidth` bucket (bytes) and an `ops` bucket (requests or frames),
/// each optional. In a `PATCH`, a bucket given replaces the device's bucket and an omitted one stays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks each bucket; `field` names the limiter in the message (`rx_rate_limiter.ops`).
    pub fn validate(&self, field: &str) -> Result<(), String> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = bucket {
                if b.refill_time > MAX_REFILL_TIME_MS {
                    return Err(format!(
                        "{field}.{name}.refill_time {} is too long: at most {MAX_REFILL_TIME_MS} ms",
                        b.refill_time
                    ));
                }
            }
        }
        Ok(())
    }

    /// The device's limiter settings (absent buckets are unlimited).
    pub fn to_device(self) -> devices::rate_limiter::RateLimiterConfig {
        let bucket = |b: Option<TokenBucketConfig>| b.map(TokenBucketConfig::to_device).unwrap_or_default();
        devices::rate_limiter::RateLimiterConfig {
            bandwidth: bucket(self.bandwidth),
            ops: bucket(self.ops),
        }
    }

    /// This configuration as a `PATCH` of a running limiter: given buckets replace, omitted ones stay.
    pub fn to_update(self) -> devices::rate_limiter::RateLimiterUpdate {
        use devices::rate_limiter::BucketUpdate;
        let bucket = |b: Option<TokenBucketConfig>| match b {
            Some(b) => BucketUpdate::Set(b.to_device()),
            None => BucketUpdate::Keep,
        };
        devices::rate_limiter::RateLimiterUpdate {
            bandwidth: bucket(self.bandwidth),
            ops: bucket(self.ops),
        }
    }

    /// The stored configuration after `patch` (its buckets replace these; omitted ones stay).
    pub fn patched(current: Option<RateLimiterConfig>, patch: Option<RateLimiterConfig>) -> Option<RateLimiterConfig> {
        let Some(patch) = patch else { return current };
        let current = current.unwrap_or_default();
        Some(RateLimiterConfig {
            bandwidth: patch.bandwidth.or(current.bandwidth),
            ops: patch.ops.or(current.ops),
        })
    }
}

/// `drives[]` / `PUT /drives/{drive_id}`: a virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    /// The guest's root filesystem: hull adds `root=/dev/vda` (or `root=PARTUUID=...`) and `rw`/`ro` to the
    /// command line and attaches this drive first, so it is always `/dev/vda`.
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    /// With `is_root_device`: boot from this partition (`root=PARTUUID=...`) instead of the whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Limits on the drive's bytes and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Firecracker's vhost-user drive socket; accepted only as `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `network-interfaces[]` / `PUT /network-interfaces/{iface_id}`: a virtio-net device over a host TAP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    /// The TAP device on the host (it must exist in hull's network namespace).
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`; the guest picks its own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on what the guest receives (bytes and frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `vsock` / `PUT /vsock`: a virtio-vsock device whose host side is a unix socket (Firecracker's hybrid
/// vsock: host-initiated connections say `CONNECT <port>` on `uds_path`, guest-initiated ones reach
/// `<uds_path>_<port>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Deprecated in Firecracker, accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id: 3 or more (0-2 are reserved), and not `u32::MAX` (VMADDR_CID_ANY).
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `entropy` / `PUT /entropy`: a virtio-rng device fed from the host's getrandom, with an optional rate
/// limiter (bytes and requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDeviceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyDeviceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate_limiter(&self.rate_limiter, "rate_limiter").map_err(ConfigError::InvalidEntropy)
    }
}

/// `balloon` / `PUT /balloon`: Firecracker's `Balloon`, a virtio-balloon device with a target size, the
/// deflate-on-OOM feature, and guest statistics refreshed every `stats_polling_interval_s` (0: off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDeviceConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
}

impl BalloonDeviceConfig {
    /// The balloon cannot be asked to hold more than the guest's memory.
    pub fn check_size(amount_mib: u32, mem_size_mib: usize) -> Result<(), ConfigError> {
        if amount_mib as usize > mem_size_mib {
            return Err(ConfigError::BalloonTooLarge);
        }
        Ok(())
    }
}

/// `pmem[]` / `PUT /pmem/{id}`: Firecracker's `Pmem`, a virtio-pmem device whose file is mapped into guest
/// physical memory above RAM (`/dev/pmemN` in the guest, DAX-capable). `root_device` boots from it
/// (`root=/dev/pmem0 rootflags=dax`); `read_only` maps it privately, so the file is never written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    pub id: String,
    pub path_on_host: PathBuf,
    #[serde(default)]
    pub root_device: bool,
    #[serde(default)]
    pub read_only: bool,
}

impl PmemConfig {
    /// Checks the id and that the file opens the way the device uses it, with a size the guest can map.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::InvalidPmem {
            id: self.id.clone(),
            reason,
        };
        check_device_id(&self.id).map_err(err)?;
        devices::virtio::pmem::PmemBacking::open(&self.path_on_host, self.read_only)
            .map(|_| ())
            .map_err(|e| err(e.to_string()))
    }
}

/// Longest Linux network interface name (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
/// Longest unix socket path (sun_path is 108 bytes with the terminating NUL).
const MAX_UDS_PATH_LEN: usize = 107;

/// Device ids follow the API's rule: non-empty, ASCII letters, digits and underscores, at most 64.
fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("the id must be 1 to 64 ASCII letters, digits or underscores".into());
    }
    Ok(())
}

fn check_rate_limiter(value: &Option<RateLimiterConfig>, field: &str) -> Result<(), String> {
    value.as_ref().map_or(Ok(()), |limiter| limiter.validate(field))
}

impl BlockDeviceConfig {
    /// Checks the fields and that the image can be opened the way the drive will use it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::InvalidDrive {
            id: self.drive_id.clone(),
            reason,
        };
        check_device_id(&self.drive_id).map_err(err)?;
        if self.socket.is_some() {
            return Err(err(
                "vhost-user drives (socket) are not supported inside hull; use path_on_host".into(),
            ));
        }
        if self.io_engine == IoEngine::Async {
            return Err(err("io_engine Async (io_uring) is not supported; use Sync".into()));
        }
        check_rate_limiter(&self.rate_limiter, "rate_limiter").map_err(err)?;
        if let Some(uuid) = &self.partuuid {
            if !self.is_root_device {
                return Err(err("partuuid is only used for the root device".into()));
            }
            if uuid.is_empty() || uuid.len() > 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(err(format!(
                    "partuuid {uuid:?} is not a partition UUID (hex digits and dashes)"
                )));
            }
        }
        let path = &self.path_on_host;
        let meta = std::fs::metadata(path).map_err(|e| err(format!("path_on_host {}: {e}", path.display())))?;
        use std::os::unix::fs::FileTypeExt;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(err(format!(
                "path_on_host {} is not a regular file or block device",
                path.display()
            )));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(!self.is_read_only)
            .open(path)
            .map_err(|e| {
                let how = if self.is_read_only {
                    "reading"
                } else {
                    "reading and writing (is_read_only is false)"
                };
                err(format!(
                    "path_on_host {} cannot be opened for {how}: {e}",
                    path.display()
                ))
            })?;
        Ok(())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl NetworkInterfaceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::InvalidNetworkInterface {
            id: self.iface_id.clone(),
            reason,
        };
        check_device_id(&self.iface_id).map_err(err)?;
        let name = &self.host_dev_name;
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
        {
            return Err(err(format!(
                "host_dev_name {name:?} is not a network interface name (1 to {MAX_IFNAME_LEN} printable characters, no '/' or ':')"
            )));
        }
        if let Some(text) = &self.guest_mac {
            let mac = parse_mac(text).ok_or_else(|| {
                err(format!(
                    "guest_mac {text:?} is not a MAC address like 06:00:ac:10:00:02"
                ))
            })?;
            if mac[0] & 1 != 0 {
                return Err(err(format!("guest_mac {text} is a multicast address")));
            }
        }
        check_rate_limiter(&self.rx_rate_limiter, "rx_rate_limiter").map_err(err)?;
        check_rate_limiter(&self.tx_rate_limiter, "tx_rate_limiter").map_err(err)
    }
}

impl VsockConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = ConfigError::InvalidVsock;
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(err(format!(
                "guest_cid {} is reserved; use a value from 3 to {}",
                self.guest_cid,
                u32::MAX - 1
            )));
        }
        if let Some(id) = &self.vsock_id {
            check_device_id(id).map_err(|r| err(format!("vsock_id {id:?}: {r}")))?;
        }
        let path = &self.uds_path;
        let len = path.as_os_str().len();
        if len == 0 || len > MAX_UDS_PATH_LEN {
            return Err(err(format!(
                "uds_path must be 1 to {MAX_UDS_PATH_LEN} bytes (got {len})"
            )));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            return Err(err(format!(
                "the directory of uds_path {} does not exist",
                path.display()
            )));
        }
        Ok(())
    }
}

/// The full configuration of one microVM: everything needed to build and start it. The API and the config
/// file fill it in; `MicroVm::start` builds the VM from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MicroVmConfig {
    pub boot_source: Option<BootSourceConfig>,
    pub machine: MachineConfig,
    /// Block devices, in the order they were configured (the root device is attached first).
    pub drives: Vec<BlockDeviceConfig>,
    pub net: Vec<NetworkInterfaceConfig>,
    pub vsock: Option<VsockConfig>,
    /// Pmem devices, in the order configured (the root one is attached first, so it is `/dev/pmem0`).
    pub pmem: Vec<PmemConfig>,
    /// The balloon device, attached after the vsock.
    pub balloon: Option<BalloonDeviceConfig>,
    /// The entropy device (virtio-rng), attached after the others.
    pub entropy: Option<EntropyDeviceConfig>,
    /// A custom CPU template (`PUT /cpu-config`), applied on top of the static or automatic one.
    pub cpu_config: Option<crate::cpu_config::CustomCpuTemplate>,
    /// MMDS on some of the network interfaces (`PUT /mmds/config`).
    pub mmds: Option<MmdsAttachment>,
}

/// MMDS served on network interfaces: the service (shared with the API, which keeps changing its data)
/// and the address it answers at.
#[derive(Clone, Debug)]
pub struct MmdsAttachment {
    pub network_interfaces: Vec<String>,
    pub ipv4_address: std::net::Ipv4Addr,
    pub mmds: devices::mmds::SharedMmds,
}

impl PartialEq for MmdsAttachment {
    fn eq(&self, other: &Self) -> bool {
        self.network_interfaces == other.network_interfaces
            && self.ipv4_address == other.ipv4_address
            && std::sync::Arc::ptr_eq(&self.mmds, &other.mmds)
    }
}

impl Eq for MmdsAttachment {}

impl MicroVmConfig {
    /// Checks the whole configuration before any VM resource is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.boot_source
            .as_ref()
            .ok_or(ConfigError::MissingBootSource)?
            .validate()?;
        self.machine.validate()?;
        if let Some(balloon) = &self.balloon {
            BalloonDeviceConfig::check_size(balloon.amount_mib, self.machine.mem_size_mib)?;
        }
        self.validate_devices()
    }

    /// Each device on its own, then across devices: unique ids and host resources, one root device,
    /// and no more devices than interrupt lines.
    pub fn validate_devices(&self) -> Result<(), ConfigError> {
        let mut roots = 0;
        for (i, drive) in self.drives.iter().enumerate() {
            drive.validate()?;
            if self.drives[..i].iter().any(|d| d.drive_id == drive.drive_id) {
                return Err(ConfigError::InvalidDrive {
                    id: drive.drive_id.clone(),
                    reason: "the id is used twice".into(),
                });
            }
            roots += usize::from(drive.is_root_device);
            if roots > 1 {
                return Err(ConfigError::InvalidDrive {
                    id: drive.drive_id.clone(),
                    reason: "a root device is already configured; only one drive may have is_root_device".into(),
                });
            }
        }
        for (i, iface) in self.net.iter().enumerate() {
            iface.validate()?;
            let err = |reason: &str| ConfigError::InvalidNetworkInterface {
                id: iface.iface_id.clone(),
                reason: reason.into(),
            };
            let earlier = &self.net[..i];
            if earlier.iter().any(|n| n.iface_id == iface.iface_id) {
                return Err(err("the id is used twice"));
            }
            if earlier.iter().any(|n| n.host_dev_name == iface.host_dev_name) {
                return Err(err("its host_dev_name is already used by another interface"));
            }
            if let Some(mac) = iface.guest_mac.as_deref().and_then(parse_mac) {
                if earlier
                    .iter()
                    .any(|n| n.guest_mac.as_deref().and_then(parse_mac) == Some(mac))
                {
                    return Err(err("its guest_mac is already used by another interface"));
                }
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if let Some(entropy) = &self.entropy {
            entropy.validate()?;
        }
        for (i, pmem) in self.pmem.iter().enumerate() {
            pmem.validate()?;
            let err = |reason: &str| ConfigError::InvalidPmem {
                id: pmem.id.clone(),
                reason: reason.into(),
            };
            if self.pmem[..i].iter().any(|p| p.id == pmem.id) {
                return Err(err("the id is used twice"));
            }
            if pmem.root_device {
                roots += 1;
                if roots > 1 {
                    return Err(err(
                        "a root device is already configured; only one drive or pmem device may be the root device",
                    ));
                }
            }
        }
        let count = self.drives.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + self.pmem.len()
            + usize::from(self.balloon.is_some())
            + usize::from(self.entropy.is_some());
        let max = (crate::layout::IRQ_MAX - crate::layout::IRQ_BASE + 1) as usize;
        if count > max {
            return Err(ConfigError::TooManyDevices { count, max });
        }
        Ok(())
    }

    /// The pmem devices in attachment order: the root device first (`/dev/pmem0`), the others as configured.
    pub fn pmem_in_attach_order(&self) -> impl Iterator<Item = &PmemConfig> {
        self.pmem
            .iter()
            .filter(|p| p.root_device)
            .chain(self.pmem.iter().filter(|p| !p.root_device))
    }

    /// The drives in attachment order: the root device first, the others as configured.
    pub fn drives_in_attach_order(&self) -> impl Iterator<Item = &BlockDeviceConfig> {
        self.drives
            .iter()
            .filter(|d| d.is_root_device)
            .chain(self.drives.iter().filter(|d| !d.is_root_device))
    }
}

/// How the VMM runs, besides the VM's own configuration.
#[derive(Clone, Debug, Default)]
pub struct VmmOptions {
    /// Log `Guest-boot-time` when the guest writes 123 to the boot-timer MMIO address.
    pub boot_timer: bool,
    pub serial: SerialOutput,
    /// Seccomp filters for the event loop and vCPU threads, installed as each thread starts.
    pub seccomp: crate::seccomp::ThreadFilters,
    /// `--enable-pci`: every virtio device is a virtio-pci function (else virtio-mmio, and `pci=off`).
    pub enable_pci: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_rejects_out_of_range_values() {
        let mut m = MachineConfig::default();
        assert!(m.validate().is_ok());
        m.vcpu_count = 0;
        assert_eq!(m.validate(), Err(ConfigError::InvalidVcpuCount(0)));
        m.vcpu_count = MAX_VCPUS + 1;
        assert!(m.validate().is_err());
        m.vcpu_count = 3;
        m.smt = true;
        assert!(m.validate().is_err());
        m.smt = false;
        m.mem_size_mib = 1;
        assert_eq!(m.validate(), Err(ConfigError::InvalidMemorySize(1)));
    }

    #[test]
    fn huge_pages_parse_with_firecrackers_names_and_need_whole_pages() {
        let m: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":129,"huge_pages":"2M"}"#).unwrap();
        assert_eq!(m.huge_pages, HugePages::Hugetlbfs2M);
        assert_eq!(m.validate(), Err(ConfigError::MemoryNotPageAligned));
        let m = MachineConfig { mem_size_mib: 128, ..m };
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(serde_json::to_value(m).unwrap()["huge_pages"], "2M");
        let r: Result<MachineConfig, _> =
            serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}"#);
        assert!(r.unwrap_err().to_string().contains("unknown variant"));
        let t: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2A"}"#).unwrap();
        assert_eq!(t.cpu_template, CpuTemplateName::T2A);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<MachineConfig, _> = serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":1}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field"));
        let r: Result<BootSourceConfig, _> = serde_json::from_str(r#"{"boot_args":"x"}"#);
        assert!(r.unwrap_err().to_string().contains("missing field"));
    }

    fn temp_image(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hull-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        path
    }

    fn drive(id: &str, path: &std::path::Path, root: bool) -> BlockDeviceConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false
        }))
        .unwrap()
    }

    #[test]
    fn drives_parse_in_firecrackers_shape_and_validate() {
        let img = temp_image("drive");
        let d: BlockDeviceConfig = serde_json::from_value(serde_json::json!({
            "drive_id": "rootfs", "path_on_host": img, "is_root_device": true, "is_read_only": true,
            "partuuid": "0eaa91a0-01", "cache_type": "Writeback", "io_engine": "Sync", "rate_limiter": null
        }))
        .unwrap();
        assert_eq!(d.cache_type, CacheType::Writeback);
        d.validate().unwrap();
        let mut bad = d.clone();
        bad.io_engine = IoEngine::Async;
        assert!(bad.validate().unwrap_err().to_string().contains("io_uring"));
        let mut bad = d.clone();
        bad.rate_limiter = Some(RateLimiterConfig {
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: None,
                refill_time: MAX_REFILL_TIME_MS + 1,
            }),
            bandwidth: None,
        });
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("rate_limiter.ops.refill_time") && e.contains("too long"),
            "{e}"
        );
        let mut bad = d.clone();
        bad.partuuid = Some("1234 init=/bin/sh".into());
        assert!(bad.validate().unwrap_err().to_string().contains("partuuid"));
        let mut bad = d.clone();
        bad.path_on_host = "/nonexistent/rootfs.ext4".into();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("rootfs") && e.contains("/nonexistent/rootfs.ext4"), "{e}");
        let r: Result<BlockDeviceConfig, _> = serde_json::from_value(
            serde_json::json!({"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "cache_type": "Fast"}),
        );
        assert!(r.is_err());
        std::fs::remove_file(img).unwrap();
    }

    #[test]
    fn rate_limiters_take_firecrackers_shape() {
        let d: BlockDeviceConfig = serde_json::from_value(serde_json::json!({
            "drive_id": "data", "path_on_host": "/x", "is_root_device": false,
            "rate_limiter": {
                "bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 100},
                "ops": {"size": 0, "refill_time": 0}
            }
        }))
        .unwrap();
        let limiter = d.rate_limiter.unwrap();
        let device = limiter.to_device();
        assert_eq!(
            (
                device.bandwidth.size,
                device.bandwidth.one_time_burst,
                device.bandwidth.refill_time_ms
            ),
            (1048576, 4096, 100)
        );
        assert!(device.ops.is_unlimited());
        // Round trip: what was given is what GET /vm/config shows.
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["rate_limiter"]["bandwidth"]["one_time_burst"], 4096);
        assert!(json["rate_limiter"]["ops"].get("one_time_burst").is_none());
        // Missing required fields, negative numbers and unknown fields are refused by the decoder.
        for (bucket, expected) in [
            (serde_json::json!({"size": 1}), "missing field `refill_time`"),
            (serde_json::json!({"refill_time": 1}), "missing field `size`"),
            (serde_json::json!({"size": -1, "refill_time": 1}), "invalid value"),
            (
                serde_json::json!({"size": 1, "refill_time": 1, "rate": 2}),
                "unknown field `rate`",
            ),
        ] {
            let e = serde_json::from_value::<NetworkInterfaceConfig>(serde_json::json!({
                "iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": bucket}
            }))
            .unwrap_err()
            .to_string();
            assert!(e.contains(expected), "{e}");
        }
        // PATCH semantics: a given bucket replaces, an omitted one stays.
        let ops = TokenBucketConfig {
            size: 10,
            one_time_burst: None,
            refill_time: 1000,
        };
        let patch = RateLimiterConfig {
            ops: Some(ops),
            bandwidth: None,
        };
        let merged = RateLimiterConfig::patched(Some(limiter), Some(patch)).unwrap();
        assert_eq!((merged.bandwidth, merged.ops), (limiter.bandwidth, Some(ops)));
        assert_eq!(RateLimiterConfig::patched(Some(limiter), None), Some(limiter));
        let update = patch.to_update();
        assert_eq!(update.bandwidth, devices::rate_limiter::BucketUpdate::Keep);
        assert_eq!(update.ops, devices::rate_limiter::BucketUpdate::Set(ops.to_device()));
    }

    #[test]
    fn devices_are_checked_across_each_other() {
        let img = temp_image("cross");
        let mut vm = MicroVmConfig {
            drives: vec![drive("a", &img, true), drive("b", &img, false)],
            ..Default::default()
        };
        vm.validate_devices().unwrap();
        assert_eq!(
            vm.drives_in_attach_order()
                .map(|d| d.drive_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        vm.drives.swap(0, 1);
        assert_eq!(
            vm.drives_in_attach_order()
                .map(|d| d.drive_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        vm.drives.push(drive("c", &img, true));
        assert!(vm.validate_devices().unwrap_err().to_string().contains("root device"));
        vm.drives.pop();
        vm.drives.push(drive("a", &img, false));
        assert!(vm.validate_devices().unwrap_err().to_string().contains("used twice"));
        vm.drives.pop();
        let tap = |id: &str, dev: &str, mac: Option<&str>| NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: dev.into(),
            guest_mac: mac.map(Into::into),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        vm.net = vec![tap("eth0", "tap0", Some("06:00:AC:10:00:02"))];
        vm.validate_devices().unwrap();
        vm.net.push(tap("eth1", "tap0", None));
        assert!(vm.validate_devices().unwrap_err().to_string().contains("host_dev_name"));
        vm.net[1] = tap("eth1", "tap1", Some("06:00:ac:10:00:02"));
        assert!(vm.validate_devices().unwrap_err().to_string().contains("guest_mac"));
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "g6:00:ac:10:00:02",
            "07:00:ac:10:00:02",
            "6:0:ac:10:0:2",
        ] {
            vm.net[1] = tap("eth1", "tap1", Some(bad));
            assert!(vm.validate_devices().is_err(), "{bad}");
        }
        vm.net[1] = tap("eth1", "a/b", None);
        assert!(vm.validate_devices().is_err());
        vm.net[1] = tap("eth1", "sixteen-chars-xx", None);
        assert!(vm.validate_devices().is_err());
        vm.net.pop();
        vm.vsock = Some(VsockConfig {
            vsock_id: None,
            guest_cid: 2,
            uds_path: std::env::temp_dir().join("v.sock"),
        });
        assert!(vm.validate_devices().unwrap_err().to_string().contains("guest_cid"));
        vm.vsock = Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: "/nonexistent/dir/v.sock".into(),
        });
        assert!(vm.validate_devices().unwrap_err().to_string().contains("directory"));
        vm.vsock = Some(VsockConfig {
            vsock_id: Some("vsock0".into()),
            guest_cid: 3,
            uds_path: std::env::temp_dir().join("v.sock"),
        });
        vm.validate_devices().unwrap();
        vm.drives = (0..19).map(|i| drive(&format!("d{i}"), &img, false)).collect();
        assert!(matches!(
            vm.validate_devices(),
            Err(ConfigError::TooManyDevices { count: 21, max: 19 })
        ));
        std::fs::remove_file(img).unwrap();
    }

    #[test]
    fn missing_kernel_is_reported_with_its_path() {
        let b = BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            ..Default::default()
        };
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }
}
