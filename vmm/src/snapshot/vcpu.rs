//! One vCPU's state in a snapshot: general and special registers, the FPU/SSE/AVX state (XSAVE), XCRs, debug registers,
//! MSRs, the in-kernel LAPIC, the MP state, pending events and the CPUID it was given. Saved by the
//! vCPU's own thread while it is paused (after a KVM_RUN with `immediate_exit` so that an MMIO or port
//! read in flight lands in its registers first), restored on a fresh vCPU before its thread starts.
//!
//! Never trusted: a state read back from a file. KVM checks every register it is given; before that the
//! CPUID must offer nothing this host's KVM cannot ([`check_cpuid_fits`]), so a snapshot from a bigger
//! host is refused with a message instead of a guest that faults later.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// A vCPU's registers and in-kernel state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The FPU, SSE and extended state (KVM_GET_XSAVE; it holds everything KVM_GET_FPU would).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

/// Reading or writing a vCPU's state failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted only {set} of the snapshot's {wanted} MSRs")]
    Msrs { index: u8, set: usize, wanted: usize },
    #[error("vCPU {index}: {reason}")]
    Cpuid { index: u8, reason: String },
}

/// The CPUID leaves whose feature bits a snapshot may only use where this host's KVM offers them:
/// (function, index, which registers).
const FEATURE_LEAVES: [(u32, u32); 3] = [(1, 0), (7, 0), (0x8000_0001, 0)];
/// Bits a VMM sets whatever KVM reports, (function, register, bits): in leaf 1 ECX the hypervisor bit and
/// the TSC deadline timer, in leaf 1 EDX HTT and in 0x80000001 ECX CmpLegacy (both describe the vCPU
/// topology, not a host feature).
const VMM_BITS: [(u32, &str, u32); 3] = [
    (1, "ecx", (1 << 31) | (1 << 24)),
    (1, "edx", 1 << 28),
    (0x8000_0001, "ecx", 1 << 1),
];

/// Checks that every feature bit the snapshot's CPUID sets in leaves 1, 7.0 and 0x80000001 (ECX, EDX;
/// EBX too for leaf 7) is offered by this host's KVM (`supported`, from KVM_GET_SUPPORTED_CPUID).
pub fn check_cpuid_fits(saved: &[kvm_cpuid_entry2], supported: &[kvm_cpuid_entry2]) -> Result<(), String> {
    for (function, index) in FEATURE_LEAVES {
        let Some(s) = saved.iter().find(|e| e.function == function && e.index == index) else {
            continue;
        };
        let host = supported
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
            .unwrap_or_default();
        let mut regs = vec![("ecx", s.ecx, host.ecx), ("edx", s.edx, host.edx)];
        if function == 7 {
            regs.push(("ebx", s.ebx, host.ebx));
        }
        for (name, want, have) in regs {
            let vmm_bits = VMM_BITS
                .iter()
                .filter(|(f, r, _)| *f == function && *r == name)
                .fold(0, |acc, (_, _, bits)| acc | bits);
            let allowed = have | vmm_bits;
            let missing = want & !allowed;
            if missing != 0 {
                return Err(format!(
                    "the snapshot's CPUID leaf {function:#x}.{index} {name} asks for features {missing:#010x} \
                     this host's KVM cannot offer"
                ));
            }
        }
    }
    Ok(())
}

impl VcpuState {
    /// [`VcpuState::save`] as the vCPU thread calls it: boxed, and never inlined. The state (XSAVE, LAPIC,
    /// MSRs) is over 10 KiB; held by value in the run loop's frame, it would be stack every vCPU thread
    /// keeps dirty for its life, snapshot or not.
    #[inline(never)]
    pub fn save_boxed(
        index: u8,
        vcpu: &mut VcpuFd,
        msr_list: &[u32],
        cpuid: &[kvm_cpuid_entry2],
    ) -> Result<Box<VcpuState>, VcpuStateError> {
        Self::save(index, vcpu, msr_list, cpuid).map(Box::new)
    }

    /// Reads the state of `vcpu` (on its own thread, paused). `msr_list` is KVM_GET_MSR_INDEX_LIST,
    /// `cpuid` what the vCPU was configured with.
    pub fn save(
        index: u8,
        vcpu: &mut VcpuFd,
        msr_list: &[u32],
        cpuid: &[kvm_cpuid_entry2],
    ) -> Result<VcpuState, VcpuStateError> {
        let kvm = |what| move |source| VcpuStateError::Kvm { index, what, source };
        // Let KVM finish an instruction whose MMIO or port read the run loop answered: its result is
        // written into the registers on the next KVM_RUN, which immediate_exit makes return at once.
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        // The CPUID hull gave the vCPU, not KVM_GET_CPUID2's: a software KVM (kvm_pvm) reports bits there
        // that it shows the guest whatever the VMM set, which no host would then be found to offer.
        let cpuid = cpuid.to_vec();
        let mut msrs = Msrs::from_entries(
            &msr_list
                .iter()
                .map(|&i| kvm_msr_entry {
                    index: i,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| VcpuStateError::Msrs {
            index,
            set: 0,
            wanted: msr_list.len(),
        })?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        let msrs = msrs.as_slice()[..read.min(msr_list.len())].to_vec();
        Ok(VcpuState {
            index,
            cpuid,
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            // A full kvm_xsave: KVM_CAP_XSAVE2 (bigger areas) is never enabled on hull's VMs.
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debug_regs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            msrs,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Writes the state into a fresh `vcpu`, CPUID first (KVM checks MSRs and XSAVE against it).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        let index = self.index;
        let kvm = |what| move |source| VcpuStateError::Kvm { index, what, source };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::Cpuid {
            index,
            reason: format!("{} CPUID entries are more than KVM takes", self.cpuid.len()),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        vcpu.set_mp_state(self.mp_state).map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a whole kvm_xsave (4 KiB) and KVM_CAP_XSAVE2 is never enabled on hull's VMs,
        // so KVM reads no more than that.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError::Msrs {
            index,
            set: 0,
            wanted: self.msrs.len(),
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set != self.msrs.len() {
            return Err(VcpuStateError::Msrs {
                index,
                set,
                wanted: self.msrs.len(),
            });
        }
        vcpu.set_vcpu_events(&self.events).map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, ecx: u32, edx: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            edx,
            ebx,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_features_the_host_lacks_are_refused() {
        let host = [leaf(1, 0x0000_2001, 0xff, 0), leaf(7, 0, 0, 0b1010)];
        assert!(check_cpuid_fits(&[leaf(1, 0x0000_2001 | (1 << 31), 0x0f | (1 << 28), 0xffff)], &host).is_ok());
        assert!(check_cpuid_fits(&[leaf(7, 0, 0, 0b1000)], &host).is_ok());
        let e = check_cpuid_fits(&[leaf(7, 0, 0, 0b0100)], &host).unwrap_err();
        assert!(e.contains("leaf 0x7.0 ebx") && e.contains("0x00000004"), "{e}");
        let e = check_cpuid_fits(&[leaf(1, 0x10, 0, 0)], &host).unwrap_err();
        assert!(e.contains("leaf 0x1.0 ecx"), "{e}");
        // A leaf the host does not report offers nothing.
        assert!(check_cpuid_fits(&[leaf(0x8000_0001, 1, 0, 0)], &host).is_err());
    }
}
