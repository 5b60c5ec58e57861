//! A minimal i8042 keyboard controller at ports 0x60/0x64, enough for Linux's i8042 and atkbd drivers
//! to probe it, for the guest to reset the machine (`reboot=k`: command 0xFE, or clearing the reset
//! line in the output port), and for the host to press Ctrl-Alt-Del. There is no AUX (mouse) port.
//! Commands and data bytes come from the guest; unknown ones are ignored and the output buffer is
//! bounded.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use super::IrqLine;
use crate::bus::BusDevice;

pub const I8042_DATA_PORT: u64 = 0x60;
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// Keyboard interrupt.
pub const I8042_KBD_IRQ: u32 = 1;

// Status register bits.
const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM_FLAG: u8 = 0x04;
const SR_LAST_WAS_COMMAND: u8 = 0x08;
const SR_NOT_INHIBITED: u8 = 0x10;

// Controller configuration byte ("command byte") bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_PULSE_RESET: u8 = 0xfe;

// Keyboard commands (port 0x60) and replies.
const KBD_GET_ID: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];

// Output-port bit 0 is the CPU reset line (active low).
const OUTPUT_PORT_RESET_HIGH: u8 = 0x01;

/// Scan codes (set 2) for pressing Ctrl, Alt and Delete.
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const BUFFER_LIMIT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    #[error("the i8042 output buffer is full; the guest is not reading its keyboard")]
    BufferFull,
    #[error("cannot raise the keyboard interrupt: {0}")]
    Interrupt(std::io::Error),
}

pub struct I8042 {
    status: u8,
    control: u8,
    output_port: u8,
    /// A controller command that waits for its data byte on port 0x60.
    pending: Option<u8>,
    buffer: VecDeque<u8>,
    kbd_irq: IrqLine,
    reset_evt: EventFd,
}

impl I8042 {
    /// `reset_evt` is written when the guest resets the machine.
    pub fn new(kbd_irq: IrqLine, reset_evt: EventFd) -> Self {
        I8042 {
            status: SR_NOT_INHIBITED,
            control: CTR_KBD_INT | CTR_SYSTEM_FLAG,
            output_port: OUTPUT_PORT_RESET_HIGH,
            pending: None,
            buffer: VecDeque::new(),
            kbd_irq,
            reset_evt,
        }
    }

    pub fn interrupt_fd(&self) -> &EventFd {
        &self.kbd_irq.0
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if self.buffer.len() + CTRL_ALT_DEL.len() > BUFFER_LIMIT {
            return Err(I8042Error::BufferFull);
        }
        self.buffer.extend(CTRL_ALT_DEL);
        self.kbd_irq.0.write(1).map_err(I8042Error::Interrupt)
    }

    fn push(&mut self, byte: u8) {
        if self.buffer.len() < BUFFER_LIMIT {
            self.buffer.push_back(byte);
        }
    }

    fn push_keyboard(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
        self.raise_kbd_irq();
    }

    fn raise_kbd_irq(&self) {
        if self.control & CTR_KBD_INT != 0 && !self.buffer.is_empty() {
            if let Err(e) = self.kbd_irq.0.write(1) {
                hull_logging::guest_warn!(error = %e, "i8042: keyboard interrupt lost");
            }
        }
    }

    fn reset_machine(&self) {
        tracing::info!("i8042: the guest reset the machine");
        if let Err(e) = self.reset_evt.write(1) {
            tracing::error!(error = %e, "i8042: cannot signal the reset");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SR_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.control |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.control &= !CTR_AUX_DISABLE,
            CMD_SELF_TEST => {
                self.status |= SR_SYSTEM_FLAG;
                self.push(0x55);
            }
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.control |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.control &= !CTR_KBD_DISABLE,
            CMD_READ_OUTPUT_PORT => self.push(self.output_port),
            CMD_PULSE_RESET => self.reset_machine(),
            other => hull_logging::guest_debug!(command = other, "i8042: command ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !SR_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.control = byte;
                if byte & CTR_SYSTEM_FLAG != 0 {
                    self.status |= SR_SYSTEM_FLAG;
                }
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = byte;
                if byte & OUTPUT_PORT_RESET_HIGH == 0 {
                    self.reset_machine();
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.push_keyboard(&[byte]),
            // A byte for the keyboard itself: acknowledge it as an AT keyboard would.
            _ => match byte {
                KBD_RESET => self.push_keyboard(&[KBD_ACK, KBD_SELF_TEST_OK]),
                KBD_GET_ID => self.push_keyboard(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
                _ => self.push_keyboard(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(out) = data.first_mut() else { return };
        *out = match offset {
            0 => {
                let byte = self.buffer.pop_front().unwrap_or(0);
                self.raise_kbd_irq();
                byte
            }
            4 => self.status | if self.buffer.is_empty() { 0 } else { SR_OUTPUT_FULL },
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            0 => self.data(byte),
            4 => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> I8042 {
        I8042::new(IrqLine::new().unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn answers_the_linux_probe() {
        let mut d = dev();
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, 4) & SR_OUTPUT_FULL, SR_OUTPUT_FULL);
        assert_eq!(read(&mut d, 0), 0x55);
        assert_eq!(read(&mut d, 4) & SR_OUTPUT_FULL, 0);
        d.write(4, &[CMD_READ_CTR]);
        let ctr = read(&mut d, 0);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[ctr | 0x40]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), ctr | 0x40);
        d.write(0, &[KBD_GET_ID]);
        assert_eq!(
            [read(&mut d, 0), read(&mut d, 0), read(&mut d, 0)],
            [KBD_ACK, 0xab, 0x83]
        );
    }

    #[test]
    fn reset_command_and_output_port_reset_the_machine() {
        let mut d = dev();
        d.write(4, &[CMD_PULSE_RESET]);
        assert_eq!(d.reset_evt.read().unwrap(), 1);
        d.write(4, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(0, &[0x00]);
        assert_eq!(d.reset_evt.read().unwrap(), 1);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_an_interrupt_and_bounded() {
        let mut d = dev();
        d.trigger_ctrl_alt_del().unwrap();
        assert_eq!(d.interrupt_fd().read().unwrap(), 1);
        let codes: Vec<u8> = (0..4).map(|_| read(&mut d, 0)).collect();
        assert_eq!(codes, CTRL_ALT_DEL);
        for _ in 0..4 {
            d.trigger_ctrl_alt_del().unwrap();
        }
        assert!(matches!(d.trigger_ctrl_alt_del(), Err(I8042Error::BufferFull)));
    }

    #[test]
    fn garbage_is_ignored() {
        let mut d = dev();
        for b in 0..=255u8 {
            if b != CMD_PULSE_RESET && b != CMD_WRITE_OUTPUT_PORT {
                d.write(4, &[b]);
                d.write(0, &[b]);
            }
        }
        d.write(9, &[1]);
        d.read(0, &mut []);
        assert!(d.buffer.len() <= BUFFER_LIMIT);
    }
}
