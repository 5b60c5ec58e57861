//! Custom CPU templates (`PUT /cpu-config`, config-file key `cpu-config`) in Firecracker's JSON format:
//! `kvm_capabilities` (`"N"` adds capability N to those checked with KVM_CHECK_EXTENSION before the VM
//! is built, `"!N"` removes it from hull's own list), `cpuid_modifiers` (leaf, subleaf, flags and per
//! register a bitmap applied on top of the normalized, templated CPUID) and `msr_modifiers` (an address
//! and a 64-bit bitmap applied with KVM_SET_MSRS on each vCPU). A bitmap is `0b` followed by exactly 32
//! (CPUID) or 64 (MSR) characters, most significant first: `0` and `1` set the bit, `x` keeps it.
//! Everything here is user input: parsing refuses what is malformed with a message, never a panic.

use std::collections::BTreeSet;

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// Capabilities hull needs from every KVM (KVM_CAP_* numbers): irqchip, user memory, TSS address,
/// extended CPUID, irqfd, PIT2, ioeventfd.
pub const REQUIRED_KVM_CAPABILITIES: &[u32] = &[0, 3, 4, 7, 32, 33, 36];

/// Why a custom template is refused or cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuConfigError {
    #[error("Invalid KVM capability {0:?}: expected a number or '!' and a number")]
    Capability(String),
    #[error("Invalid number {0:?}: expected decimal, 0x hexadecimal or 0b binary")]
    Number(String),
    #[error("Invalid register {0:?}: expected eax, ebx, ecx or edx")]
    Register(String),
    #[error("Invalid bitmap {value:?}: expected '0b' and {bits} characters of 0, 1 or x")]
    Bitmap { value: String, bits: u32 },
    #[error("Missing KVM capability {0}")]
    MissingCapability(u32),
    #[error("The CPUID table is full: leaf {leaf:#x} subleaf {subleaf:#x} cannot be added")]
    CpuidFull { leaf: u32, subleaf: u32 },
    #[error("Cannot read MSR {addr:#x} on vCPU {index}: {reason}")]
    MsrRead { index: u8, addr: u32, reason: String },
    #[error("KVM refused MSR {addr:#x} on vCPU {index}: {reason}")]
    MsrWrite { index: u8, addr: u32, reason: String },
}

/// A number written as JSON number or string (`"0x1"`, `"0b101"`, `"17"`), as Firecracker accepts.
fn parse_u32(value: &serde_json::Value) -> Result<u32, CpuConfigError> {
    let bad = || CpuConfigError::Number(value.to_string());
    match value {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                u32::from_str_radix(hex, 16)
            } else if let Some(bin) = s.strip_prefix("0b") {
                u32::from_str_radix(bin, 2)
            } else {
                s.parse()
            };
            parsed.map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Bits to force (`filter` set) and their values; bits outside `filter` are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    pub filter: u64,
    pub value: u64,
}

impl Bitmap {
    /// Parses `0b` + exactly `bits` characters of `0`, `1`, `x`.
    pub fn parse(text: &str, bits: u32) -> Result<Bitmap, CpuConfigError> {
        let bad = || CpuConfigError::Bitmap {
            value: text.to_string(),
            bits,
        };
        let body = text.strip_prefix("0b").ok_or_else(bad)?;
        if body.len() != bits as usize {
            return Err(bad());
        }
        let mut map = Bitmap::default();
        for (i, c) in body.bytes().enumerate() {
            let bit = 1u64 << (bits as usize - 1 - i);
            match c {
                b'0' => map.filter |= bit,
                b'1' => {
                    map.filter |= bit;
                    map.value |= bit;
                }
                b'x' | b'X' => {}
                _ => return Err(bad()),
            }
        }
        Ok(map)
    }

    pub fn apply(self, old: u64) -> u64 {
        (old & !self.filter) | (self.value & self.filter)
    }

    fn to_text(self, bits: u32) -> String {
        let mut s = String::from("0b");
        for i in (0..bits).rev() {
            let bit = 1u64 << i;
            s.push(match (self.filter & bit != 0, self.value & bit != 0) {
                (false, _) => 'x',
                (true, false) => '0',
                (true, true) => '1',
            });
        }
        s
    }
}

/// One of a CPUID leaf's output registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: Bitmap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuidLeafModifier {
    pub leaf: u32,
    pub subleaf: u32,
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrModifier {
    pub addr: u32,
    pub bitmap: Bitmap,
}

/// A KVM capability to require (`Add`) or to drop from hull's own list (`Remove`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmCapability {
    Add(u32),
    Remove(u32),
}

/// A parsed custom CPU template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTemplate", into = "RawTemplate")]
pub struct CustomCpuTemplate {
    pub kvm_capabilities: Vec<KvmCapability>,
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    pub msr_modifiers: Vec<MsrModifier>,
}

// The JSON shapes, as written; converted into the typed template above with every value checked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    kvm_capabilities: Vec<String>,
    #[serde(default)]
    cpuid_modifiers: Vec<RawLeaf>,
    #[serde(default)]
    msr_modifiers: Vec<RawMsr>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeaf {
    leaf: serde_json::Value,
    subleaf: serde_json::Value,
    #[serde(default)]
    flags: u32,
    #[serde(default)]
    modifiers: Vec<RawRegister>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    register: String,
    bitmap: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMsr {
    addr: serde_json::Value,
    bitmap: String,
}

impl TryFrom<RawTemplate> for CustomCpuTemplate {
    type Error = CpuConfigError;

    fn try_from(raw: RawTemplate) -> Result<Self, CpuConfigError> {
        let kvm_capabilities = raw
            .kvm_capabilities
            .iter()
            .map(|c| {
                let (remove, n) = match c.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, c.as_str()),
                };
                let n: u32 = n.parse().map_err(|_| CpuConfigError::Capability(c.clone()))?;
                Ok(if remove {
                    KvmCapability::Remove(n)
                } else {
                    KvmCapability::Add(n)
                })
            })
            .collect::<Result<_, CpuConfigError>>()?;
        let cpuid_modifiers = raw
            .cpuid_modifiers
            .iter()
            .map(|l| {
                let modifiers = l
                    .modifiers
                    .iter()
                    .map(|m| {
                        let register = match m.register.as_str() {
                            "eax" => CpuidRegister::Eax,
                            "ebx" => CpuidRegister::Ebx,
                            "ecx" => CpuidRegister::Ecx,
                            "edx" => CpuidRegister::Edx,
                            other => return Err(CpuConfigError::Register(other.to_string())),
                        };
                        Ok(CpuidRegisterModifier {
                            register,
                            bitmap: Bitmap::parse(&m.bitmap, 32)?,
                        })
                    })
                    .collect::<Result<_, CpuConfigError>>()?;
                Ok(CpuidLeafModifier {
                    leaf: parse_u32(&l.leaf)?,
                    subleaf: parse_u32(&l.subleaf)?,
                    flags: l.flags,
                    modifiers,
                })
            })
            .collect::<Result<_, CpuConfigError>>()?;
        let msr_modifiers = raw
            .msr_modifiers
            .iter()
            .map(|m| {
                Ok(MsrModifier {
                    addr: parse_u32(&m.addr)?,
                    bitmap: Bitmap::parse(&m.bitmap, 64)?,
                })
            })
            .collect::<Result<_, CpuConfigError>>()?;
        Ok(CustomCpuTemplate {
            kvm_capabilities,
            cpuid_modifiers,
            msr_modifiers,
        })
    }
}

impl From<CustomCpuTemplate> for RawTemplate {
    fn from(t: CustomCpuTemplate) -> Self {
        let hex = |n: u32| serde_json::Value::String(format!("{n:#x}"));
        RawTemplate {
            kvm_capabilities: t
                .kvm_capabilities
                .iter()
                .map(|c| match c {
                    KvmCapability::Add(n) => n.to_string(),
                    KvmCapability::Remove(n) => format!("!{n}"),
                })
                .collect(),
            cpuid_modifiers: t
                .cpuid_modifiers
                .iter()
                .map(|l| RawLeaf {
                    leaf: hex(l.leaf),
                    subleaf: hex(l.subleaf),
                    flags: l.flags,
                    modifiers: l
                        .modifiers
                        .iter()
                        .map(|m| RawRegister {
                            register: format!("{:?}", m.register).to_lowercase(),
                            bitmap: m.bitmap.to_text(32),
                        })
                        .collect(),
                })
                .collect(),
            msr_modifiers: t
                .msr_modifiers
                .iter()
                .map(|m| RawMsr {
                    addr: hex(m.addr),
                    bitmap: m.bitmap.to_text(64),
                })
                .collect(),
        }
    }
}

impl CustomCpuTemplate {
    /// The capabilities to check: hull's own, minus the removed, plus the added.
    pub fn capabilities_to_check(template: Option<&CustomCpuTemplate>) -> BTreeSet<u32> {
        let mut caps: BTreeSet<u32> = REQUIRED_KVM_CAPABILITIES.iter().copied().collect();
        for c in template.map(|t| t.kvm_capabilities.as_slice()).unwrap_or_default() {
            match *c {
                KvmCapability::Add(n) => caps.insert(n),
                KvmCapability::Remove(n) => caps.remove(&n),
            };
        }
        caps
    }

    /// Applies the CPUID modifiers to one vCPU's table; a leaf that is not there is added.
    pub fn apply_cpuid(&self, cpuid: &mut CpuId) -> Result<(), CpuConfigError> {
        for leaf in &self.cpuid_modifiers {
            let present = cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == leaf.leaf && e.index == leaf.subleaf);
            if !present {
                let entry = kvm_cpuid_entry2 {
                    function: leaf.leaf,
                    index: leaf.subleaf,
                    flags: leaf.flags,
                    ..Default::default()
                };
                cpuid.push(entry).map_err(|_| CpuConfigError::CpuidFull {
                    leaf: leaf.leaf,
                    subleaf: leaf.subleaf,
                })?;
            }
            for e in cpuid.as_mut_slice().iter_mut() {
                if e.function != leaf.leaf || e.index != leaf.subleaf {
                    continue;
                }
                e.flags = leaf.flags;
                for m in &leaf.modifiers {
                    let reg = match m.register {
                        CpuidRegister::Eax => &mut e.eax,
                        CpuidRegister::Ebx => &mut e.ebx,
                        CpuidRegister::Ecx => &mut e.ecx,
                        CpuidRegister::Edx => &mut e.edx,
                    };
                    *reg = m.bitmap.apply(u64::from(*reg)) as u32;
                }
            }
        }
        Ok(())
    }

    /// Applies the MSR modifiers to vCPU `index` (after its boot MSRs): read, modify, write back.
    pub fn apply_msrs(&self, vcpu: &VcpuFd, index: u8) -> Result<(), CpuConfigError> {
        for m in &self.msr_modifiers {
            let read_err = |reason: String| CpuConfigError::MsrRead {
                index,
                addr: m.addr,
                reason,
            };
            let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: m.addr,
                ..Default::default()
            }])
            .map_err(|e| read_err(e.to_string()))?;
            let read = vcpu.get_msrs(&mut msrs).map_err(|e| read_err(e.to_string()))?;
            if read != 1 {
                return Err(read_err("KVM does not know this MSR".into()));
            }
            let old = msrs.as_slice().first().map(|e| e.data).unwrap_or(0);
            let new = Msrs::from_entries(&[kvm_msr_entry {
                index: m.addr,
                data: m.bitmap.apply(old),
                ..Default::default()
            }])
            .map_err(|e| read_err(e.to_string()))?;
            let write_err = |reason: String| CpuConfigError::MsrWrite {
                index,
                addr: m.addr,
                reason,
            };
            let set = vcpu.set_msrs(&new).map_err(|e| write_err(e.to_string()))?;
            if set != 1 {
                return Err(write_err("the value was not accepted".into()));
            }
        }
        Ok(())
    }
}

/// Checks every capability the template and hull need (KVM_CHECK_EXTENSION).
pub fn check_capabilities(kvm: &Kvm, template: Option<&CustomCpuTemplate>) -> Result<(), CpuConfigError> {
    for cap in CustomCpuTemplate::capabilities_to_check(template) {
        let ok = i32::try_from(cap)
            .map(|c| kvm.check_extension_raw(c as u64) > 0)
            .unwrap_or(false);
        if !ok {
            return Err(CpuConfigError::MissingCapability(cap));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CustomCpuTemplate, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    const APIC_ID_7: &str = "0b00000111xxxxxxxxxxxxxxxxxxxxxxxx";

    #[test]
    fn firecrackers_format_parses_and_round_trips() {
        let json = format!(
            r#"{{"kvm_capabilities": ["!36", "10"],
                "cpuid_modifiers": [{{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                    "modifiers": [{{"register": "ebx", "bitmap": "{APIC_ID_7}"}}]}}],
                "msr_modifiers": [{{"addr": "0x10a", "bitmap": "0b{}1"}}]}}"#,
            "x".repeat(63)
        );
        let t = parse(&json).unwrap();
        assert_eq!(
            t.kvm_capabilities,
            vec![KvmCapability::Remove(36), KvmCapability::Add(10)]
        );
        assert_eq!(t.cpuid_modifiers[0].leaf, 1);
        assert_eq!(t.cpuid_modifiers[0].modifiers[0].register, CpuidRegister::Ebx);
        assert_eq!(
            t.msr_modifiers[0],
            MsrModifier {
                addr: 0x10a,
                bitmap: Bitmap { filter: 1, value: 1 }
            }
        );
        let again: CustomCpuTemplate = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        assert_eq!(again, t);
        let caps = CustomCpuTemplate::capabilities_to_check(Some(&t));
        assert!(caps.contains(&10) && !caps.contains(&36) && caps.contains(&0));
        assert_eq!(parse("{}").unwrap(), CustomCpuTemplate::default());
    }

    #[test]
    fn malformed_templates_are_refused_with_a_message() {
        let leaf = |reg: &str, bitmap: &str| {
            format!(
                r#"{{"cpuid_modifiers": [{{"leaf": "0x1", "subleaf": 0, "flags": 0,
                    "modifiers": [{{"register": "{reg}", "bitmap": "{bitmap}"}}]}}]}}"#
            )
        };
        let e = parse(&leaf("esi", APIC_ID_7)).unwrap_err();
        assert!(e.contains("Invalid register \"esi\""), "{e}");
        let e = parse(&leaf("eax", "0b101")).unwrap_err();
        assert!(e.contains("32 characters"), "{e}");
        let e = parse(&leaf("eax", &format!("0b{}2", "0".repeat(31)))).unwrap_err();
        assert!(e.contains("Invalid bitmap"), "{e}");
        let e = parse(&leaf("eax", &"0".repeat(34))).unwrap_err();
        assert!(e.contains("Invalid bitmap"), "{e}");
        let e = parse(r#"{"kvm_capabilities": ["!x"]}"#).unwrap_err();
        assert!(e.contains("Invalid KVM capability"), "{e}");
        let e = parse(r#"{"cpuid_modifiers": [{"leaf": "0xzz", "subleaf": 0}]}"#).unwrap_err();
        assert!(e.contains("Invalid number"), "{e}");
        let e = parse(r#"{"cpuid_modifiers": [{"leaf": 4294967296, "subleaf": 0}]}"#).unwrap_err();
        assert!(e.contains("Invalid number"), "{e}");
        let e = parse(r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1"}]}"#).unwrap_err();
        assert!(e.contains("64 characters"), "{e}");
        assert!(parse(r#"{"bogus": []}"#).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn cpuid_modifiers_set_only_the_given_bits_and_add_missing_leaves() {
        let t = parse(&format!(
            r#"{{"cpuid_modifiers": [
                {{"leaf": 1, "subleaf": 0, "flags": 0, "modifiers": [{{"register": "ebx", "bitmap": "{APIC_ID_7}"}}]}},
                {{"leaf": "0x40000010", "subleaf": 0, "flags": 1,
                  "modifiers": [{{"register": "eax", "bitmap": "0b{}"}}]}}]}}"#,
            "1".repeat(32)
        ))
        .unwrap();
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0x0001_0800,
            ..Default::default()
        }])
        .unwrap();
        t.apply_cpuid(&mut cpuid).unwrap();
        let l1 = cpuid.as_slice()[0];
        assert_eq!(l1.ebx, 0x0701_0800);
        let added = cpuid.as_slice().iter().find(|e| e.function == 0x4000_0010).unwrap();
        assert_eq!((added.eax, added.flags), (u32::MAX, 1));
    }

    /// A created vCPU: the modified MSR reads back changed in the forced bits only, and an MSR KVM does not
    /// know is refused with a message.
    #[test]
    fn msr_modifiers_are_read_modified_and_written_on_a_vcpu() {
        let Ok(kvm) = Kvm::new() else { return };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        const PAT: u32 = 0x277;
        let read = |vcpu: &VcpuFd| {
            let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: PAT,
                ..Default::default()
            }])
            .unwrap();
            vcpu.get_msrs(&mut msrs).unwrap();
            msrs.as_slice()[0].data
        };
        let before = read(&vcpu);
        // PA1 (bits 15:8) becomes write-back (6); everything else is kept.
        let bitmap = format!("0b{}00000110{}", "x".repeat(48), "x".repeat(8));
        let t = parse(&format!(
            r#"{{"msr_modifiers": [{{"addr": "0x277", "bitmap": "{bitmap}"}}]}}"#
        ))
        .unwrap();
        t.apply_msrs(&vcpu, 0).unwrap();
        assert_eq!(read(&vcpu), (before & !0xff00) | 0x0600, "before {before:#x}");

        let unknown = parse(&format!(
            r#"{{"msr_modifiers": [{{"addr": "0xdead0000", "bitmap": "0b{}"}}]}}"#,
            "1".repeat(64)
        ))
        .unwrap();
        let e = unknown.apply_msrs(&vcpu, 0).unwrap_err().to_string();
        assert!(e.contains("0xdead0000"), "{e}");
    }

    #[test]
    fn capabilities_are_checked_on_this_kvm() {
        let Ok(kvm) = Kvm::new() else { return };
        check_capabilities(&kvm, None).unwrap();
        let t = CustomCpuTemplate {
            kvm_capabilities: vec![KvmCapability::Add(999_999)],
            ..Default::default()
        };
        assert_eq!(
            check_capabilities(&kvm, Some(&t)),
            Err(CpuConfigError::MissingCapability(999_999))
        );
    }
}
