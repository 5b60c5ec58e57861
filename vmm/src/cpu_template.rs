//! What each vCPU is told by CPUID: KVM's supported set, normalized per vCPU (APIC ID, topology,
//! hypervisor bit), then filtered by a CPU template. The `SoftKvm` template hides what a software KVM
//! such as `kvm_pvm` cannot emulate in guest kernel mode; hull picks it automatically on such a host.
//! Firecracker's static templates are checked against the host's CPU vendor (CPUID leaf 0) with
//! Firecracker's refusals; `C3`, `T2`, `T2S`, `T2CL` apply on Intel hosts and `T2A` on AMD hosts, each
//! as the built-in custom template of `static_tables` (Firecracker's CPUID and MSR bits), with
//! `SoftKvm`'s hiding on top on a software KVM.

mod static_tables;

use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::config::CpuTemplateName;
use crate::cpu_config::{CpuConfigError, CustomCpuTemplate};

pub use static_tables::MSR_IA32_ARCH_CAPABILITIES;

/// The effective template after auto-detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTemplate {
    PassThrough,
    SoftKvm,
    /// One of Firecracker's static templates (`C3`, `T2`, `T2S`, `T2CL`, `T2A`); `soft_kvm` adds
    /// `SoftKvm`'s hiding, which a software KVM needs in any case.
    Static {
        name: CpuTemplateName,
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
        CpuTemplateName::T2A if vendor == Vendor::Amd => Ok(CpuTemplate::Static {
            name,
            soft_kvm: software_kvm,
        }),
        CpuTemplateName::T2A => Err(TemplateError::CpuVendorMismatched),
        // Firecracker checks only the vendor; its docs call T2CL unsafe before Cascade Lake, but it
        // does not refuse it there, and neither does hull.
        CpuTemplateName::C3 | CpuTemplateName::T2 | CpuTemplateName::T2S | CpuTemplateName::T2CL
            if vendor == Vendor::Intel =>
        {
            Ok(CpuTemplate::Static {
                name,
                soft_kvm: software_kvm,
            })
        }
        CpuTemplateName::C3 | CpuTemplateName::T2 | CpuTemplateName::T2S | CpuTemplateName::T2CL => {
            Err(TemplateError::CpuVendorMismatched)
        }
        CpuTemplateName::V1N1 => Err(TemplateError::InvalidStaticCpuTemplate(name)),
    }
}

impl CpuTemplate {
    /// True when the software-KVM hiding applies.
    fn soft_kvm(self) -> bool {
        matches!(self, CpuTemplate::SoftKvm | CpuTemplate::Static { soft_kvm: true, .. })
    }

    /// The static template's CPUID and MSR modifiers, in the custom-template form.
    pub fn builtin(self) -> Option<CustomCpuTemplate> {
        match self {
            CpuTemplate::Static { name, .. } => static_tables::builtin(name),
            CpuTemplate::PassThrough | CpuTemplate::SoftKvm => None,
        }
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

/// Builds vCPU `index`'s CPUID (of `count` vCPUs) from KVM's supported set and the template: the
/// normalized set, then a static template's modifiers, then the software-KVM hiding.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8, template: CpuTemplate) -> Result<CpuId, CpuConfigError> {
    let mut cpuid = supported.clone();
    ensure_topology_leaf(&mut cpuid);
    let apic_id = u32::from(index);
    // Bits needed to number every vCPU at the "core" level of the topology.
    let core_shift = 32 - u32::from(count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        normalize(e, apic_id, u32::from(count), core_shift);
    }
    if let Some(builtin) = template.builtin() {
        builtin.apply_cpuid(&mut cpuid)?;
    }
    if template.soft_kvm() {
        for e in cpuid.as_mut_slice().iter_mut() {
            soft_kvm(e);
        }
    }
    Ok(cpuid)
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
            assert_eq!(
                resolve(intel, false, Vendor::Intel),
                Ok(CpuTemplate::Static {
                    name: intel,
                    soft_kvm: false
                })
            );
            assert!(CpuTemplate::Static {
                name: intel,
                soft_kvm: false
            }
            .builtin()
            .is_some());
        }
        assert_eq!(
            resolve(CpuTemplateName::T2A, true, Vendor::Amd),
            Ok(CpuTemplate::Static {
                name: CpuTemplateName::T2A,
                soft_kvm: true
            })
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

    fn static_template(name: CpuTemplateName, soft_kvm: bool) -> CpuTemplate {
        CpuTemplate::Static { name, soft_kvm }
    }

    /// A Cascade Lake-like Intel CPUID: every feature bit of the templated registers set, so that
    /// what a template clears shows as a 0 and what it keeps as a 1.
    fn intel_host() -> CpuId {
        let all = |function: u32, index: u32| kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        };
        let mut l1 = all(1, 0);
        l1.eax = 0x0005_0657; // family 6 model 0x55 stepping 7
        l1.ebx = 0x0000_0800;
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0x16,
                ..Default::default()
            },
            l1,
            all(7, 0),
            all(0xd, 0),
            all(0xd, 1),
            all(0x8000_0001, 0),
            all(0x8000_0008, 0),
        ])
        .unwrap()
    }

    const AVX512F: u32 = 1 << 16;
    const AVX512_VNNI: u32 = 1 << 11;

    #[test]
    fn intel_templates_apply_firecrackers_cpuid_bits() {
        let host = intel_host();
        let get = |name, function, index| {
            let c = vcpu_cpuid(&host, 0, 1, static_template(name, false)).unwrap();
            find(&c, function, index)
        };
        for name in [
            CpuTemplateName::C3,
            CpuTemplateName::T2,
            CpuTemplateName::T2S,
            CpuTemplateName::T2CL,
        ] {
            let l7 = get(name, 7, 0);
            assert_eq!(
                l7.ebx & (AVX512F | L7_EBX_RDSEED),
                0,
                "{name:?}: AVX-512F and RDSEED hidden"
            );
            assert_eq!(l7.ecx & (AVX512_VNNI | L7_ECX_RDPID), 0, "{name:?}");
            assert_ne!(l7.ebx & L7_EBX_FSGSBASE, 0, "{name:?}: FSGSBASE kept");
            // AVX-512, MPX and PKRU state hidden; x87/SSE/AVX state kept.
            assert_eq!(get(name, 0xd, 0).eax & 0x2f8, 0, "{name:?}");
            assert_ne!(get(name, 0xd, 0).eax & 0x7, 0, "{name:?}");
            assert_eq!(get(name, 0xd, 1).eax & 0xe, 0, "{name:?}: XSAVEC/XGETBV1/XSAVES hidden");
            let l1 = get(name, 1, 0);
            assert_eq!(l1.ecx & (1 << 5), 0, "{name:?}: VMX hidden");
            assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0, "{name:?}");
            assert_eq!(
                get(name, 0x8000_0001, 0).edx & (1 << 26),
                0,
                "{name:?}: 1-GB pages hidden"
            );
        }
        // C3 is an Ivy Bridge: no AVX2, BMI1/2, FMA, MOVBE; shown as family 6 model 0x3e stepping 4.
        let c3 = get(CpuTemplateName::C3, 1, 0);
        assert_eq!(c3.eax, 0x0003_06e4);
        assert_eq!(c3.ecx & (L1_ECX_FMA | L1_ECX_MOVBE), 0);
        assert_eq!(
            get(CpuTemplateName::C3, 7, 0).ebx & (L7_EBX_AVX2 | (1 << 3) | (1 << 8)),
            0
        );
        assert_eq!(
            get(CpuTemplateName::C3, 7, 0).ebx & L7_EBX_ERMS,
            L7_EBX_ERMS,
            "ERMS kept by C3"
        );
        // The T2 family is a Haswell-era T2: AVX2, FMA, MOVBE kept, ERMS shown, model 0x3f stepping 2.
        for name in [CpuTemplateName::T2, CpuTemplateName::T2S, CpuTemplateName::T2CL] {
            let l1 = get(name, 1, 0);
            assert_eq!(l1.eax, 0x0003_06f2, "{name:?}");
            assert_eq!(
                l1.ecx & (L1_ECX_FMA | L1_ECX_MOVBE),
                L1_ECX_FMA | L1_ECX_MOVBE,
                "{name:?}"
            );
            assert_eq!(l1.edx & ((1 << 31) | (1 << 30)), 0, "{name:?}: PBE, IA-64 hidden");
            let l7 = get(name, 7, 0);
            assert_ne!(l7.ebx & L7_EBX_AVX2, 0, "{name:?}");
            assert_eq!(l7.edx & L7_EDX_FSRM, 0, "{name:?}");
            assert_eq!(get(name, 0x8000_0008, 0).ebx & (1 << 9), 0, "{name:?}: WBNOINVD hidden");
        }
        // T2 also hides leaf 7 EBX bits 6 and 13; T2S/T2CL keep them.
        assert_eq!(get(CpuTemplateName::T2, 7, 0).ebx & 0x2040, 0);
        assert_eq!(get(CpuTemplateName::T2S, 7, 0).ebx & 0x2040, 0x2040);
        // T2CL hides SSE4A, MisAlignSse and the AMD MMX/FXSR extensions, like T2A; T2S keeps them.
        assert_eq!(get(CpuTemplateName::T2CL, 0x8000_0001, 0).ecx & 0xc0, 0);
        assert_eq!(get(CpuTemplateName::T2CL, 0x8000_0001, 0).edx & 0x03c0_0000, 0);
        assert_eq!(get(CpuTemplateName::T2S, 0x8000_0001, 0).ecx & 0xc0, 0xc0);
        // Registers no template names are passed through.
        assert_eq!(get(CpuTemplateName::T2, 0x8000_0008, 0).eax, u32::MAX);
    }

    #[test]
    fn t2s_and_t2cl_carry_firecrackers_arch_capabilities_bits() {
        let msrs = |name| static_template(name, false).builtin().unwrap().msr_modifiers;
        assert!(msrs(CpuTemplateName::C3).is_empty());
        assert!(msrs(CpuTemplateName::T2).is_empty());
        assert!(msrs(CpuTemplateName::T2A).is_empty());
        let t2s = msrs(CpuTemplateName::T2S);
        assert_eq!(t2s.len(), 1);
        assert_eq!(t2s[0].addr, MSR_IA32_ARCH_CAPABILITIES);
        // Every bit forced: RSBA, SKIP_L1DFL_VMENTRY, IF_PSCHANGE_MC_NO, MCU_CONTROL, MISC_PACKAGE_CTLS.
        assert_eq!(
            t2s[0].bitmap.apply(u64::MAX),
            (1 << 2) | (1 << 3) | (1 << 6) | (1 << 10) | (1 << 11)
        );
        assert_eq!(t2s[0].bitmap.apply(0), t2s[0].bitmap.apply(u64::MAX));
        let t2cl = msrs(CpuTemplateName::T2CL);
        assert_eq!(t2cl[0].addr, MSR_IA32_ARCH_CAPABILITIES);
        // Mitigation bits pass through (RDCL_NO, MDS_NO, TAA_NO, GDS_NO, RFDS_NO), the rest cleared
        // (MCU_CONTROL, DOITM, BHI_NO, bit 40).
        let host = 1 | (1 << 5) | (1 << 8) | (1 << 26) | (1 << 27) | (1 << 9) | (1 << 12) | (1 << 20) | (1 << 40);
        assert_eq!(
            t2cl[0].bitmap.apply(host),
            1 | (1 << 5) | (1 << 8) | (1 << 26) | (1 << 27)
        );
    }

    /// The IA32_ARCH_CAPABILITIES modifiers on a real vCPU (KVM emulates the MSR on AMD hosts too).
    /// The vCPU gets its templated CPUID first, as in the builder: KVM takes the MSR only when the
    /// guest's CPUID shows it, and only bits the host's KVM offers (its feature MSR), so T2S's forced
    /// ones are refused, naming the MSR, where KVM lacks one of them, as under Firecracker.
    #[test]
    fn arch_capabilities_modifiers_reach_a_vcpu() {
        use kvm_bindings::{kvm_msr_entry, Msrs};
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let arch_caps = || {
            Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_IA32_ARCH_CAPABILITIES,
                ..Default::default()
            }])
            .unwrap()
        };
        let mut offered = arch_caps();
        assert_eq!(kvm.get_msrs(&mut offered).unwrap(), 1);
        let offered = offered.as_slice()[0].data;
        let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap();
        for name in [CpuTemplateName::T2S, CpuTemplateName::T2CL] {
            let template = static_template(name, false);
            let modifier = template.builtin().unwrap().msr_modifiers[0];
            let vm = kvm.create_vm().unwrap();
            let vcpu = vm.create_vcpu(0).unwrap();
            vcpu.set_cpuid2(&vcpu_cpuid(&supported, 0, 1, template).unwrap())
                .unwrap();
            let read = || {
                let mut msrs = arch_caps();
                assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
                msrs.as_slice()[0].data
            };
            let before = read();
            let wanted = modifier.bitmap.apply(before);
            let result = template.builtin().unwrap().apply_msrs(&vcpu, 0);
            if wanted & !offered == 0 {
                result.unwrap();
                assert_eq!(read(), wanted, "{name:?}: before {before:#x}");
            } else {
                let e = result.unwrap_err().to_string();
                assert!(e.contains("MSR 0x10a"), "{name:?}: {e}");
                assert_eq!(read(), before, "{name:?}");
            }
        }
    }

    #[test]
    fn t2a_matches_firecrackers_table() {
        let mut s = sample();
        s.push(kvm_cpuid_entry2 {
            function: 0x8000_0001,
            ecx: (1 << 2) | (1 << 6) | (1 << 8) | 1,
            edx: (1 << 29) | (1 << 23) | (1 << 26),
            ..Default::default()
        })
        .unwrap();
        s.push(kvm_cpuid_entry2 {
            function: 0x8000_0008,
            ebx: 1 | (1 << 9) | (1 << 12),
            ..Default::default()
        })
        .unwrap();
        let c = vcpu_cpuid(&s, 0, 1, static_template(CpuTemplateName::T2A, false)).unwrap();
        let ext = find(&c, 0x8000_0001, 0);
        assert_eq!(
            ext.ecx,
            (1 << 2) | 1,
            "SSE4A and PREFETCHW hidden; SVM and LAHF/SAHF kept"
        );
        assert_eq!(ext.edx, 1 << 29, "MMX and 1-GB pages hidden, long mode kept");
        // CLZERO and WBNOINVD hidden, IbrsPreferred and IbrsSameMode shown, bit 12 kept.
        assert_eq!(find(&c, 0x8000_0008, 0).ebx, (1 << 12) | (1 << 18) | (1 << 19));
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.eax, 0x0003_06f2, "shown with the T2 family's version");
        assert_ne!(l1.ecx & L1_ECX_POPCNT, 0, "no SoftKvm hiding asked");
        assert_eq!(
            l1.edx & ((1 << 7) | (1 << 12)),
            (1 << 7) | (1 << 12),
            "MCE and MTRR shown"
        );
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ecx & L7_ECX_RDPID, 0);
        assert_ne!(l7.ebx & L7_EBX_AVX2, 0, "a T2 has AVX2");
        assert_ne!(l7.ebx & L7_EBX_ERMS, 0, "ERMS shown");
        let soft = vcpu_cpuid(&s, 0, 1, static_template(CpuTemplateName::T2A, true)).unwrap();
        assert_eq!(find(&soft, 1, 0).ecx & L1_ECX_POPCNT, 0);
        assert_eq!(
            find(&soft, 7, 0).ebx & L7_EBX_ERMS,
            0,
            "SoftKvm's hiding wins over the template"
        );
        assert!(cmdline_switches(static_template(CpuTemplateName::T2A, true)).is_some());
    }

    #[test]
    fn soft_kvm_hides_unemulated_features_and_keeps_the_rest() {
        let c = vcpu_cpuid(&sample(), 0, 1, CpuTemplate::SoftKvm).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ecx & (L1_ECX_CX16 | L1_ECX_POPCNT | L1_ECX_XSAVE), 0);
        assert_eq!(l1.ecx & 1, 1, "SSE3 stays");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0);
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx, 1 << 3, "only BMI1 stays");
        assert_eq!(l7.ecx & L7_ECX_RDPID, 0);
        assert_eq!(find(&c, 0xd, 0).eax, 0);
        assert_eq!(find(&c, 0x4000_0001, 0).eax, 1, "kvm-clock stays, PV IPIs go");

        let p = vcpu_cpuid(&sample(), 0, 1, CpuTemplate::PassThrough).unwrap();
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
        let c = vcpu_cpuid(&sparse, 1, 2, CpuTemplate::PassThrough).unwrap();
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, (2 << 8) | 1, 1));
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let c = vcpu_cpuid(&sample(), 3, 4, CpuTemplate::PassThrough).unwrap();
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
