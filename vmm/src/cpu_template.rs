//! What each vCPU is told by CPUID: KVM's supported set, normalized per vCPU (APIC ID, topology,
//! hypervisor bit), then filtered by a CPU template. The `SoftKvm` template hides what a software KVM
//! such as `kvm_pvm` cannot emulate in guest kernel mode; hull picks it automatically on such a host.
//! Firecracker's static templates are checked against the host's CPU vendor (CPUID leaf 0) with
//! Firecracker's refusals; `T2A` applies on AMD hosts (with `SoftKvm`'s hiding on top on a software KVM).

use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::config::CpuTemplateName;

/// The effective template after auto-detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTemplate {
    PassThrough,
    SoftKvm,
    /// Firecracker's `T2A`; `soft_kvm` adds `SoftKvm`'s hiding, which a software KVM needs in any case.
    T2A {
        soft_kvm: bool,
    },
}

/// Why a static template cannot be used on this host. The texts are Firecracker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("CPU vendor mismatched between actual CPU and CPU template.")]
    CpuVendorMismatched,
    #[error("Invalid static CPU template: {0:?}")]
    InvalidStaticCpuTemplate(CpuTemplateName),
    /// An Intel template on an Intel host: hull does not carry Firecracker's Intel CPUID/MSR tables.
    #[error("The CPU template {0:?} is not available in hull; use None, T2A (AMD) or PUT /cpu-config")]
    NotAvailable(CpuTemplateName),
}

/// The host CPU's vendor, from CPUID leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Reads the host's vendor string.
pub fn host_vendor() -> Vendor {
    // CPUID is available on every x86_64 CPU and has no side effects.
    let leaf = std::arch::x86_64::__cpuid(0);
    vendor_from_leaf0(leaf.ebx, leaf.edx, leaf.ecx)
}

fn vendor_from_leaf0(ebx: u32, edx: u32, ecx: u32) -> Vendor {
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&ebx.to_le_bytes());
    id[4..8].copy_from_slice(&edx.to_le_bytes());
    id[8..12].copy_from_slice(&ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// True when /dev/kvm is the software `kvm_pvm` implementation.
pub fn software_kvm_detected() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Chooses the template: an explicit one wins; `None` becomes `SoftKvm` on a software KVM. Static
/// templates are checked against the host's vendor as Firecracker checks them.
pub fn resolve(name: CpuTemplateName, software_kvm: bool, vendor: Vendor) -> Result<CpuTemplate, TemplateError> {
    match name {
        CpuTemplateName::SoftKvm => Ok(CpuTemplate::SoftKvm),
        CpuTemplateName::None if software_kvm => Ok(CpuTemplate::SoftKvm),
        CpuTemplateName::None => Ok(CpuTemplate::PassThrough),
        CpuTemplateName::T2A if vendor == Vendor::Amd => Ok(CpuTemplate::T2A { soft_kvm: software_kvm }),
        CpuTemplateName::T2A => Err(TemplateError::CpuVendorMismatched),
        CpuTemplateName::C3 | CpuTemplateName::T2 | CpuTemplateName::T2S | CpuTemplateName::T2CL => {
            if vendor == Vendor::Intel {
                Err(TemplateError::NotAvailable(name))
            } else {
                Err(TemplateError::CpuVendorMismatched)
            }
        }
        CpuTemplateName::V1N1 => Err(TemplateError::InvalidStaticCpuTemplate(name)),
    }
}

impl CpuTemplate {
    /// True when the software-KVM hiding applies.
    fn soft_kvm(self) -> bool {
        matches!(self, CpuTemplate::SoftKvm | CpuTemplate::T2A { soft_kvm: true })
    }
}

/// Kernel command-line switches that go with a template. On `kvm_pvm` CPUID is only partly honoured
/// (popcnt, xsave, AVX and SSE4 stay visible whatever the VMM writes), so Linux is also told directly.
/// Linux 6.1 truncates `clearcpuid=` at about 128 characters: keep the list short.
/// `tsc=unstable` keeps the guest on kvm-clock: switching to the TSC clocksource needs stop_machine,
/// which livelocked a 2-vCPU guest whose emulated timer ticks took longer than a tick, and a 1-vCPU
/// boot reached `Run /init` in well under half the time without the switch.
pub fn cmdline_switches(template: CpuTemplate) -> Option<&'static str> {
    match template.soft_kvm() {
        false => None,
        true => Some(
            "tsc=unstable noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,rdpid,fsgsbase,smap,pcid,invpcid,movbe,erms,fsrm,\
             xsaveopt,xsavec,xsaves,avx,avx2,avx512f,sse4_1",
        ),
    }
}

// Leaf 1 ECX bits.
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_PCID: u32 = 1 << 17;
const L1_ECX_SSE4_1: u32 = 1 << 19;
const L1_ECX_SSE4_2: u32 = 1 << 20;
const L1_ECX_MOVBE: u32 = 1 << 22;
const L1_ECX_POPCNT: u32 = 1 << 23;
const L1_ECX_AES: u32 = 1 << 25;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_F16C: u32 = 1 << 29;
const L1_ECX_RDRAND: u32 = 1 << 30;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
// Leaf 7.0 bits.
const L7_EBX_FSGSBASE: u32 = 1 << 0;
const L7_EBX_AVX2: u32 = 1 << 5;
const L7_EBX_ERMS: u32 = 1 << 9;
const L7_EBX_INVPCID: u32 = 1 << 10;
const L7_EBX_AVX512_ALL: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
const L7_EBX_RDSEED: u32 = 1 << 18;
const L7_EBX_SMAP: u32 = 1 << 20;
const L7_ECX_AVX512_ALL: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
const L7_ECX_RDPID: u32 = 1 << 22;
const L7_EDX_FSRM: u32 = 1 << 4;

// KVM paravirtual features (leaf 0x4000_0001 EAX) that the guest drives through VMCALL hypercalls.
// kvm_pvm re-executes a VMCALL from emulated guest ring 0 forever (seen with PV IPIs and the PTP
// clock), so the SoftKvm template hides them: pv spinlock kicks, PV IPIs, PV sched_yield.
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
const SOFT_KVM_KVM_FEATURES: u32 = KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD;

const SOFT_KVM_L1_ECX: u32 = L1_ECX_FMA
    | L1_ECX_CX16
    | L1_ECX_PCID
    | L1_ECX_SSE4_1
    | L1_ECX_SSE4_2
    | L1_ECX_MOVBE
    | L1_ECX_POPCNT
    | L1_ECX_AES
    | L1_ECX_XSAVE
    | L1_ECX_OSXSAVE
    | L1_ECX_AVX
    | L1_ECX_F16C
    | L1_ECX_RDRAND;
const SOFT_KVM_L7_EBX: u32 =
    L7_EBX_FSGSBASE | L7_EBX_AVX2 | L7_EBX_ERMS | L7_EBX_INVPCID | L7_EBX_AVX512_ALL | L7_EBX_RDSEED | L7_EBX_SMAP;
const SOFT_KVM_L7_ECX: u32 = L7_ECX_AVX512_ALL | L7_ECX_RDPID;
const SOFT_KVM_L7_EDX: u32 = L7_EDX_FSRM;

/// Builds vCPU `index`'s CPUID (of `count` vCPUs) from KVM's supported set and the template.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8, template: CpuTemplate) -> CpuId {
    let mut cpuid = supported.clone();
    ensure_topology_leaf(&mut cpuid);
    let apic_id = u32::from(index);
    // Bits needed to number every vCPU at the "core" level of the topology.
    let core_shift = 32 - u32::from(count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        normalize(e, apic_id, u32::from(count), core_shift);
        if let CpuTemplate::T2A { .. } = template {
            t2a(e);
        }
        if template.soft_kvm() {
            soft_kvm(e);
        }
    }
    cpuid
}

/// KVM may report leaf 0xb without its core level; without it Linux puts every vCPU in its own
/// package. Add the SMT and core subleaves when the CPU has leaf 0xb at all (values come in `normalize`).
fn ensure_topology_leaf(cpuid: &mut CpuId) {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    if max_basic < 0xb {
        return;
    }
    for index in 0..2 {
        if !cpuid.as_slice().iter().any(|e| e.function == 0xb && e.index == index) {
            let entry = kvm_cpuid_entry2 {
                function: 0xb,
                index,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            if cpuid.push(entry).is_err() {
                tracing::warn!("CPUID table full: leaf 0xb subleaf {index} not added");
            }
        }
    }
}

fn normalize(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_shift: u32) {
    match e.function {
        0x1 => {
            // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
            e.ecx |= L1_ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= L1_EDX_HTT;
            } else {
                e.edx &= !L1_EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count.saturating_sub(1) } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((count.saturating_sub(1) & 0x3f) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: level 0 is SMT (one thread per core), level 1 is the core level.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_shift;
                    e.ebx = count;
                    e.ecx = (2 << 8) | 1;
                }
                n => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = n;
                }
            }
        }
        // No virtual PMU.
        0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

// T2A: an AMD host shown with the feature set of a T2 instance (Skylake/Cascade Lake class), as
// Firecracker's T2A template does: no AVX-512 and newer Intel-era extensions, and none of the AMD-only
// extensions a T2 guest would not find (SVM, XOP, FMA4, TBM, LWP, IBS, perf counter extensions, ...).
const T2A_L1_ECX: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 14)
    | (1 << 15)
    | (1 << 18);
const T2A_L7_EBX: u32 =
    L7_EBX_AVX512_ALL | (1 << 2) | (1 << 4) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 22) | (1 << 24) | (1 << 29);
const T2A_L7_ECX: u32 = L7_ECX_AVX512_ALL
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 13)
    | L7_ECX_RDPID
    | (1 << 25)
    | (1 << 27)
    | (1 << 28);
const T2A_L7_EDX: u32 = L7_EDX_FSRM | (1 << 2) | (1 << 3) | (1 << 8) | (1 << 14) | (1 << 18) | (1 << 23);
const T2A_EXT1_ECX: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 22)
    | (1 << 23)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 29)
    | (1 << 30);
const T2A_EXT1_EDX: u32 = (1 << 26) | (1 << 30) | (1 << 31);

fn t2a(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (0x1, _) => e.ecx &= !T2A_L1_ECX,
        (0x7, 0) => {
            e.ebx &= !T2A_L7_EBX;
            e.ecx &= !T2A_L7_ECX;
            e.edx &= !T2A_L7_EDX;
        }
        (0x7, _) => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        (0x8000_0001, _) => {
            e.ecx &= !T2A_EXT1_ECX;
            e.edx &= !T2A_EXT1_EDX;
        }
        _ => {}
    }
}

fn soft_kvm(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (0x1, _) => e.ecx &= !SOFT_KVM_L1_ECX,
        (0x7, 0) => {
            e.ebx &= !SOFT_KVM_L7_EBX;
            e.ecx &= !SOFT_KVM_L7_ECX;
            e.edx &= !SOFT_KVM_L7_EDX;
        }
        (0x4000_0001, _) => e.eax &= !SOFT_KVM_KVM_FEATURES,
        // XSAVE state enumeration: nothing to save when XSAVE is hidden.
        (0xd, _) => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            ebx,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(
                0x1,
                0,
                L1_ECX_CX16 | L1_ECX_POPCNT | L1_ECX_XSAVE | (1 << 0),
                0x0000_0800,
            ),
            entry(0x7, 0, L7_ECX_RDPID, L7_EBX_AVX2 | L7_EBX_SMAP | (1 << 3)),
            entry(0xb, 0, 0, 0),
            entry(0xb, 1, 0, 0),
            entry(0xd, 0, 7, 0x240),
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: KVM_FEATURE_PV_SEND_IPI | 1,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn auto_template_follows_the_host() {
        let amd = Vendor::Amd;
        assert_eq!(resolve(CpuTemplateName::None, true, amd), Ok(CpuTemplate::SoftKvm));
        assert_eq!(resolve(CpuTemplateName::None, false, amd), Ok(CpuTemplate::PassThrough));
        assert_eq!(resolve(CpuTemplateName::SoftKvm, false, amd), Ok(CpuTemplate::SoftKvm));
        assert!(cmdline_switches(CpuTemplate::PassThrough).is_none());
        let sw = cmdline_switches(CpuTemplate::SoftKvm).unwrap();
        let list = sw.split("clearcpuid=").nth(1).unwrap();
        assert!(list.len() < 128, "Linux truncates clearcpuid at ~128 chars");
    }

    #[test]
    fn static_templates_are_checked_against_the_vendor_as_firecracker_does() {
        for intel in [
            CpuTemplateName::C3,
            CpuTemplateName::T2,
            CpuTemplateName::T2S,
            CpuTemplateName::T2CL,
        ] {
            let e = resolve(intel, false, Vendor::Amd).unwrap_err();
            assert_eq!(
                e.to_string(),
                "CPU vendor mismatched between actual CPU and CPU template."
            );
            assert!(resolve(intel, false, Vendor::Intel).is_err());
        }
        assert_eq!(
            resolve(CpuTemplateName::T2A, true, Vendor::Amd),
            Ok(CpuTemplate::T2A { soft_kvm: true })
        );
        assert_eq!(
            resolve(CpuTemplateName::T2A, false, Vendor::Intel),
            Err(TemplateError::CpuVendorMismatched)
        );
        assert_eq!(
            resolve(CpuTemplateName::V1N1, false, Vendor::Amd)
                .unwrap_err()
                .to_string(),
            "Invalid static CPU template: V1N1"
        );
        // "AuthenticAMD" is EBX, EDX, ECX of leaf 0.
        let le = |s: &[u8; 4]| u32::from_le_bytes(*s);
        assert_eq!(vendor_from_leaf0(le(b"Auth"), le(b"enti"), le(b"cAMD")), Vendor::Amd);
        assert_eq!(vendor_from_leaf0(le(b"Genu"), le(b"ineI"), le(b"ntel")), Vendor::Intel);
        assert_eq!(vendor_from_leaf0(0, 0, 0), Vendor::Other);
    }

    #[test]
    fn t2a_hides_avx512_and_amd_only_extensions() {
        let mut s = sample();
        s.push(kvm_cpuid_entry2 {
            function: 0x8000_0001,
            ecx: (1 << 2) | (1 << 16) | 1,
            edx: 1 << 29,
            ..Default::default()
        })
        .unwrap();
        let c = vcpu_cpuid(&s, 0, 1, CpuTemplate::T2A { soft_kvm: false });
        let ext = find(&c, 0x8000_0001, 0);
        assert_eq!(ext.ecx, 1, "SVM and FMA4 hidden, LAHF/SAHF kept");
        assert_eq!(ext.edx, 1 << 29, "long mode kept");
        assert_ne!(find(&c, 1, 0).ecx & L1_ECX_POPCNT, 0, "no SoftKvm hiding asked");
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ecx & L7_ECX_RDPID, 0);
        assert_ne!(l7.ebx & L7_EBX_AVX2, 0, "a T2 has AVX2");
        let soft = vcpu_cpuid(&s, 0, 1, CpuTemplate::T2A { soft_kvm: true });
        assert_eq!(find(&soft, 1, 0).ecx & L1_ECX_POPCNT, 0);
        assert!(cmdline_switches(CpuTemplate::T2A { soft_kvm: true }).is_some());
    }

    #[test]
    fn soft_kvm_hides_unemulated_features_and_keeps_the_rest() {
        let c = vcpu_cpuid(&sample(), 0, 1, CpuTemplate::SoftKvm);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ecx & (L1_ECX_CX16 | L1_ECX_POPCNT | L1_ECX_XSAVE), 0);
        assert_eq!(l1.ecx & 1, 1, "SSE3 stays");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0);
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx, 1 << 3, "only BMI1 stays");
        assert_eq!(l7.ecx & L7_ECX_RDPID, 0);
        assert_eq!(find(&c, 0xd, 0).eax, 0);
        assert_eq!(find(&c, 0x4000_0001, 0).eax, 1, "kvm-clock stays, PV IPIs go");

        let p = vcpu_cpuid(&sample(), 0, 1, CpuTemplate::PassThrough);
        assert_ne!(find(&p, 1, 0).ecx & L1_ECX_POPCNT, 0);
    }

    #[test]
    fn missing_core_level_is_added() {
        let sparse = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            entry(0xb, 0, 0, 0),
        ])
        .unwrap();
        let c = vcpu_cpuid(&sparse, 1, 2, CpuTemplate::PassThrough);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, (2 << 8) | 1, 1));
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let c = vcpu_cpuid(&sample(), 3, 4, CpuTemplate::PassThrough);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & L1_EDX_HTT, 0);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.ebx, smt.edx), (1, 3));
    }
}
