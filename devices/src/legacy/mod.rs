//! Legacy devices every hull microVM has: the 8250 UART on COM1 (console), the i8042 controller
//! (reset line and Ctrl-Alt-Del), a read-only CMOS clock, and Firecracker's boot-timer MMIO page.

pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use boot_timer::BootTimer;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::SerialConsole;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an eventfd that KVM injects as a GSI (irqfd) when written.
pub struct IrqLine(pub EventFd);

impl IrqLine {
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqLine(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
