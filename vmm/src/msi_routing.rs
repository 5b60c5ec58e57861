//! KVM interrupt routing for MSI-X: the VM's GSI routing table (the legacy PIC and IO APIC routes KVM
//! starts with, plus one MSI route per vector of every virtio-pci device) and the irqfd behind each
//! vector. KVM_SET_GSI_ROUTING replaces the whole table, so the table is kept here and written out whole
//! whenever a guest driver unmasks a vector with a new message.
//!
//! Never trusted: the MSI address and data a guest programs. KVM validates the message when it
//! delivers it (a bad destination reaches no vCPU); hull only bounds the number of routes (one per vector,
//! fixed at attach time).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::transport::pci::{MsiMessage, MsiVectors};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
    KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// GSIs 0-23 are the IO APIC's pins; MSI routes start after them.
pub const MSI_GSI_BASE: u32 = 24;
/// KVM's limit on routes (KVM_MAX_IRQ_ROUTES on x86 is 4096).
const MAX_ROUTES: usize = 4096;

/// Setting up MSI routing failed.
#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    #[error("cannot duplicate the VM descriptor for interrupt routing: {0}")]
    Dup(std::io::Error),
    #[error("KVM: {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an MSI eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("no GSI left for another MSI-X vector")]
    NoGsi,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi(gsi: u32, message: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: message.address as u32,
                address_hi: (message.address >> 32) as u32,
                data: message.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The routes KVM_CREATE_IRQCHIP installs: GSI n to IO APIC pin n (0-23) and, for 0-15, also to the
/// PIC that owns it (master for 0-7, slave for 8-15).
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::with_capacity(40);
    for gsi in 0..24 {
        routes.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(irqchip(gsi, chip, gsi % 8));
        }
    }
    routes
}

struct Table {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

/// The VM's routing table, shared by every virtio-pci device's vectors.
pub struct MsiRouting {
    vm: VmFd,
    table: Mutex<Table>,
}

impl MsiRouting {
    /// Routing for `vm`, through a duplicate of its descriptor (the devices outlive no VM: the table
    /// lives as long as the devices do).
    pub fn new(kvm: &Kvm, vm: &VmFd) -> Result<Arc<Self>, MsiError> {
        // SAFETY: dup has no memory effects; the result is checked and owned below.
        let fd = unsafe { libc::dup(vm.as_raw_fd()) };
        if fd < 0 {
            return Err(MsiError::Dup(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the descriptor is a KVM VM (a duplicate of `vm`'s), and it is handed over whole.
        let vm =
            unsafe { kvm.create_vmfd_from_rawfd(std::os::fd::IntoRawFd::into_raw_fd(owned)) }.map_err(|source| {
                MsiError::Kvm {
                    what: "opening the VM for routing",
                    source,
                }
            })?;
        Ok(Arc::new(MsiRouting {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                next_gsi: MSI_GSI_BASE,
            }),
        }))
    }

    /// `count` vectors for one device: a GSI and an irqfd each. The GSIs have no route until the guest
    /// unmasks them.
    pub fn vectors(self: &Arc<Self>, vm: &VmFd, count: usize) -> Result<KvmMsiVectors, MsiError> {
        let mut vectors = Vec::with_capacity(count);
        for _ in 0..count {
            let gsi = {
                let mut table = lock(&self.table);
                if table.next_gsi as usize >= MAX_ROUTES {
                    return Err(MsiError::NoGsi);
                }
                table.next_gsi += 1;
                table.next_gsi - 1
            };
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(MsiError::EventFd)?;
            vm.register_irqfd(&evt, gsi).map_err(|source| MsiError::Kvm {
                what: "KVM_IRQFD (MSI-X vector)",
                source,
            })?;
            vectors.push((gsi, evt));
        }
        Ok(KvmMsiVectors {
            routing: self.clone(),
            vectors,
        })
    }

    /// Points `gsi` at `message` and writes the whole table to KVM.
    fn route(&self, gsi: u32, message: MsiMessage) -> std::io::Result<()> {
        let mut table = lock(&self.table);
        table.msi.insert(gsi, message);
        let mut entries = legacy_routes();
        entries.extend(table.msi.iter().map(|(gsi, m)| msi(*gsi, *m)));
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| std::io::Error::other(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// One device's MSI-X vectors: vector i is GSI `vectors[i].0`, raised through irqfd `vectors[i].1`.
pub struct KvmMsiVectors {
    routing: Arc<MsiRouting>,
    vectors: Vec<(u32, EventFd)>,
}

impl MsiVectors for KvmMsiVectors {
    fn set_route(&self, vector: u16, message: MsiMessage) -> std::io::Result<()> {
        let (gsi, _) = self
            .vectors
            .get(usize::from(vector))
            .ok_or_else(|| std::io::Error::other("no such vector"))?;
        self.routing.route(*gsi, message)
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        let (_, evt) = self
            .vectors
            .get(usize::from(vector))
            .ok_or_else(|| std::io::Error::other("no such vector"))?;
        evt.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_match_what_kvm_create_irqchip_installs() {
        let routes = legacy_routes();
        assert_eq!(routes.len(), 24 + 16);
        // SAFETY (reading a union): every entry here is an irqchip route.
        let pins: Vec<(u32, u32, u32)> = routes
            .iter()
            .map(|r| (r.gsi, unsafe { r.u.irqchip.irqchip }, unsafe { r.u.irqchip.pin }))
            .collect();
        assert!(pins.contains(&(4, KVM_IRQCHIP_IOAPIC, 4)));
        assert!(pins.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(pins.contains(&(12, KVM_IRQCHIP_PIC_SLAVE, 4)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!pins
            .iter()
            .any(|(gsi, chip, _)| *gsi >= 16 && *chip != KVM_IRQCHIP_IOAPIC));
        let m = msi(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        // SAFETY: an MSI route.
        let (lo, hi, data) = unsafe { (m.u.msi.address_lo, m.u.msi.address_hi, m.u.msi.data) };
        assert_eq!(
            (m.gsi, m.type_, lo, hi, data),
            (30, KVM_IRQ_ROUTING_MSI, 0xfee0_1000, 1, 0x4041)
        );
    }

    /// On a host with /dev/kvm: a VM with an irqchip takes the full table (legacy routes kept) and an
    /// irqfd per vector.
    #[test]
    fn kvm_accepts_the_table_and_the_irqfds() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let routing = MsiRouting::new(&kvm, &vm).unwrap();
        let vectors = routing.vectors(&vm, 3).unwrap();
        assert_eq!(
            vectors.vectors.iter().map(|v| v.0).collect::<Vec<_>>(),
            vec![24, 25, 26]
        );
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        vectors
            .set_route(1, message)
            .expect("KVM_SET_GSI_ROUTING with MSI routes");
        vectors.trigger(1).unwrap();
        assert!(vectors.set_route(3, message).is_err());
        assert!(vectors.trigger(3).is_err());
        let more = routing.vectors(&vm, 2).unwrap();
        assert_eq!(more.vectors[0].0, 27);
    }
}
