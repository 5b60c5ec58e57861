//! Firecracker's static x86_64 CPU templates (`C3`, `T2`, `T2S`, `T2CL`, `T2A`) as data: for each
//! template the CPUID bits it forces and the MSR bits it forces, built into hull's own custom-template
//! form (`cpu_config::CustomCpuTemplate`) so that one applier serves static and custom templates.
//! Each row is (register, mask of forced bits, their values); bits outside the mask are kept.

use crate::config::CpuTemplateName;
use crate::cpu_config::{
    Bitmap, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, CustomCpuTemplate, MsrModifier,
};

use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has subleaves.
const INDEXED: u32 = 1;

/// One CPUID leaf/subleaf of a table.
struct Leaf {
    leaf: u32,
    subleaf: u32,
    flags: u32,
    regs: &'static [(CpuidRegister, u32, u32)],
}

/// The MSR IA32_ARCH_CAPABILITIES.
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;

// Leaf 1 EAX (version): stepping, model, family, type, extended model and family are all forced.
const L1_EAX_VERSION: u32 = 0x0fff_3fff;
/// Family 6, extended model 3, model 0xe, stepping 4 (Ivy Bridge, as on a C3).
const C3_VERSION: u32 = 0x0003_06e4;
/// Family 6, extended model 3, model 0xf, stepping 2 (Haswell, as on a T2).
const T2_VERSION: u32 = 0x0003_06f2;

// Leaf 1 EDX: MCE (7) and MTRR (12) shown set; PSN (18), DS (21), ACPI (22), SS (27), TM (29), PBE (31)
// hidden; the T2 family also hides IA-64 (30).
const C3_L1_EDX: (u32, u32) = (0xa864_1080, 0x0000_1080);
const T2_L1_EDX: (u32, u32) = (0xe864_1080, 0x0000_1080);

// Leaf 1 ECX hidden: DTES64, MONITOR, DS-CPL, VMX, TM2, CNXT-ID, SDBG, xTPR, PDCM (all templates);
// C3 also FMA and MOVBE; the T2 family also SMX, EIST, DCA.
const C3_L1_ECX: u32 = 0x0040_dd3c;
const T2_L1_ECX: u32 = 0x0004_cdfc;

// Leaf 7.0 EBX: the T2 family hides SGX, HLE, RTM, RDT-M/A, MPX, AVX-512 (F, DQ, IFMA, PF, ER, CD,
// BW, VL), RDSEED, ADX, bit 22, CLFLUSHOPT, CLWB, PT and SHA, and shows ERMS (9) set; T2 also hides
// bits 6 and 13 (FPU data pointer and CS/DS deprecation). C3 hides BMI1, AVX2, BMI2, INVPCID on top of
// the common set and leaves bits 9 and 22 alone.
const C3_L7_EBX: (u32, u32) = (0xffaf_dd3c, 0);
const T2_L7_EBX: (u32, u32) = (0xffef_fa54, 0x0000_0200);
const T2S_L7_EBX: (u32, u32) = (0xffef_da14, 0x0000_0200);
// Leaf 7.0 ECX hidden: AVX512_VBMI, UMIP, PKU, OSPKE, AVX512_VNNI, AVX512_VPOPCNTDQ, LA57, RDPID,
// SGX_LC; the T2 family also AVX512_VBMI2, GFNI, VAES, VPCLMULQDQ, AVX512_BITALG.
const C3_L7_ECX: u32 = 0x4041_481e;
const T2_L7_ECX: u32 = 0x4041_5f5e;
// Leaf 7.0 EDX hidden: AVX512_4VNNIW, AVX512_4FMAPS; the T2 family also FSRM and AVX512_VP2INTERSECT.
const C3_L7_EDX: u32 = 0x0000_000c;
const T2_L7_EDX: u32 = 0x0000_011c;

// Leaf 0xd.0 EAX hidden: MPX (3-4), AVX-512 (5-7) and PKRU (9) state. 0xd.1 EAX: XSAVEC, XGETBV with
// ECX=1, XSAVES.
const XSTATE_0_EAX: u32 = 0x0000_02f8;
const XSTATE_1_EAX: u32 = 0x0000_000e;

// Leaf 0x8000_0001 ECX hidden: C3 LZCNT and PREFETCHW; T2/T2S PREFETCHW and MONITORX; T2CL/T2A also
// SSE4A and MisAlignSse. EDX: 1-GB pages; T2CL/T2A also MmxExt, MMX, FXSR opts (22-25).
const C3_EXT1_ECX: u32 = 0x0000_0120;
const T2_EXT1_ECX: u32 = 0x2000_0100;
const T2CL_EXT1_ECX: u32 = 0x2000_01c0;
const EXT1_EDX_1GB: u32 = 0x0400_0000;
const T2CL_EXT1_EDX: u32 = 0x07c0_0000;

// Leaf 0x8000_0008 EBX: WBNOINVD (9) hidden; T2A also hides CLZERO (0), RstrFpErrPtrs (2) and shows
// IbrsPreferred (18) and IbrsSameMode (19) set.
const WBNOINVD: u32 = 0x0000_0200;
const T2A_EXT8_EBX: (u32, u32) = (0x000c_0205, 0x000c_0000);

const XSAVE_0: Leaf = Leaf {
    leaf: 0xd,
    subleaf: 0,
    flags: INDEXED,
    regs: &[(Eax, XSTATE_0_EAX, 0)],
};
const XSAVE_1: Leaf = Leaf {
    leaf: 0xd,
    subleaf: 1,
    flags: INDEXED,
    regs: &[(Eax, XSTATE_1_EAX, 0)],
};
const T2_L1: Leaf = Leaf {
    leaf: 0x1,
    subleaf: 0,
    flags: 0,
    regs: &[
        (Eax, L1_EAX_VERSION, T2_VERSION),
        (Ecx, T2_L1_ECX, 0),
        (Edx, T2_L1_EDX.0, T2_L1_EDX.1),
    ],
};
/// Leaf 7.0 of T2S, T2CL and T2A (T2 differs only in EBX).
const T2S_L7: Leaf = Leaf {
    leaf: 0x7,
    subleaf: 0,
    flags: INDEXED,
    regs: &[
        (Ebx, T2S_L7_EBX.0, T2S_L7_EBX.1),
        (Ecx, T2_L7_ECX, 0),
        (Edx, T2_L7_EDX, 0),
    ],
};
const T2_EXT1: Leaf = Leaf {
    leaf: 0x8000_0001,
    subleaf: 0,
    flags: 0,
    regs: &[(Ecx, T2_EXT1_ECX, 0), (Edx, EXT1_EDX_1GB, 0)],
};
/// Leaf 0x8000_0001 of T2CL and T2A, which show the same instruction sets on Intel and AMD.
const T2CL_EXT1: Leaf = Leaf {
    leaf: 0x8000_0001,
    subleaf: 0,
    flags: 0,
    regs: &[(Ecx, T2CL_EXT1_ECX, 0), (Edx, T2CL_EXT1_EDX, 0)],
};
const NO_WBNOINVD: Leaf = Leaf {
    leaf: 0x8000_0008,
    subleaf: 0,
    flags: 0,
    regs: &[(Ebx, WBNOINVD, 0)],
};

const C3: &[Leaf] = &[
    Leaf {
        leaf: 0x1,
        subleaf: 0,
        flags: 0,
        regs: &[
            (Eax, L1_EAX_VERSION, C3_VERSION),
            (Ecx, C3_L1_ECX, 0),
            (Edx, C3_L1_EDX.0, C3_L1_EDX.1),
        ],
    },
    Leaf {
        leaf: 0x7,
        subleaf: 0,
        flags: INDEXED,
        regs: &[
            (Ebx, C3_L7_EBX.0, C3_L7_EBX.1),
            (Ecx, C3_L7_ECX, 0),
            (Edx, C3_L7_EDX, 0),
        ],
    },
    XSAVE_0,
    XSAVE_1,
    Leaf {
        leaf: 0x8000_0001,
        subleaf: 0,
        flags: 0,
        regs: &[(Ecx, C3_EXT1_ECX, 0), (Edx, EXT1_EDX_1GB, 0)],
    },
];

const T2: &[Leaf] = &[
    T2_L1,
    Leaf {
        leaf: 0x7,
        subleaf: 0,
        flags: INDEXED,
        regs: &[
            (Ebx, T2_L7_EBX.0, T2_L7_EBX.1),
            (Ecx, T2_L7_ECX, 0),
            (Edx, T2_L7_EDX, 0),
        ],
    },
    XSAVE_0,
    XSAVE_1,
    T2_EXT1,
    NO_WBNOINVD,
];

const T2S: &[Leaf] = &[T2_L1, T2S_L7, XSAVE_0, XSAVE_1, T2_EXT1, NO_WBNOINVD];

const T2CL: &[Leaf] = &[T2_L1, T2S_L7, XSAVE_0, XSAVE_1, T2CL_EXT1, NO_WBNOINVD];

const T2A: &[Leaf] = &[
    T2_L1,
    T2S_L7,
    XSAVE_0,
    XSAVE_1,
    T2CL_EXT1,
    Leaf {
        leaf: 0x8000_0008,
        subleaf: 0,
        flags: 0,
        regs: &[(Ebx, T2A_EXT8_EBX.0, T2A_EXT8_EBX.1)],
    },
];

/// T2S: every IA32_ARCH_CAPABILITIES bit forced, to the value of the most vulnerable of Skylake and
/// Cascade Lake, so a snapshot moves between them safely: only RSBA (2), SKIP_L1DFL_VMENTRY (3),
/// IF_PSCHANGE_MC_NO (6), MCU_CONTROL (10) and MISC_PACKAGE_CTLS (11) set.
const T2S_ARCH_CAPABILITIES: Bitmap = Bitmap {
    filter: u64::MAX,
    value: 0x0000_0000_0000_0c4c,
};
/// T2CL: the mitigation bits KVM passes through are kept (RDCL_NO, IBRS_ALL, RSBA, SKIP_L1DFL_VMENTRY,
/// SSB_NO, MDS_NO, IF_PSCHANGE_MC_NO, TSX_CTRL, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, FB_CLEAR,
/// RRSBA, PBRSB_NO, GDS_NO, RFDS_NO); everything else is cleared.
const T2CL_ARCH_CAPABILITIES: Bitmap = Bitmap {
    filter: 0xffff_ffff_f2f5_1e00,
    value: 0,
};

/// The built-in custom template for a static template name; `None` for names that are not x86_64
/// static templates (`None`, `SoftKvm`, `V1N1`).
pub fn builtin(name: CpuTemplateName) -> Option<CustomCpuTemplate> {
    let (leaves, msrs): (&[Leaf], &[MsrModifier]) = match name {
        CpuTemplateName::C3 => (C3, &[]),
        CpuTemplateName::T2 => (T2, &[]),
        CpuTemplateName::T2S => (
            T2S,
            &[MsrModifier {
                addr: MSR_IA32_ARCH_CAPABILITIES,
                bitmap: T2S_ARCH_CAPABILITIES,
            }],
        ),
        CpuTemplateName::T2CL => (
            T2CL,
            &[MsrModifier {
                addr: MSR_IA32_ARCH_CAPABILITIES,
                bitmap: T2CL_ARCH_CAPABILITIES,
            }],
        ),
        CpuTemplateName::T2A => (T2A, &[]),
        CpuTemplateName::None | CpuTemplateName::SoftKvm | CpuTemplateName::V1N1 => return None,
    };
    let cpuid_modifiers = leaves
        .iter()
        .map(|l| CpuidLeafModifier {
            leaf: l.leaf,
            subleaf: l.subleaf,
            flags: l.flags,
            modifiers: l
                .regs
                .iter()
                .map(|&(register, filter, value)| CpuidRegisterModifier {
                    register,
                    bitmap: Bitmap {
                        filter: u64::from(filter),
                        value: u64::from(value & filter),
                    },
                })
                .collect(),
        })
        .collect();
    Some(CustomCpuTemplate {
        kvm_capabilities: Vec::new(),
        cpuid_modifiers,
        msr_modifiers: msrs.to_vec(),
    })
}
