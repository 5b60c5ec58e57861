//! The guest console: an 8250 UART (vm-superio) at COM1 whose transmit side goes to a host writer
//! (stdout or a file) and whose receive FIFO is fed from the host (stdin). Register offsets come from
//! the guest and are passed to vm-superio, which ignores unknown ones. Its counters
//! ([`SerialMetrics`], Firecracker's `uart` section) are bumped from the UART's own events.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Serial;

use super::IrqLine;
use crate::bus::BusDevice;
use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters of the console UART, named as Firecracker's `uart` metrics.
    pub struct SerialMetrics {
        /// Bytes the guest read from the receive buffer.
        read_count,
        /// Bytes the guest sent that reached the host writer.
        write_count,
        /// Reads of a width other than one byte (answered with nothing).
        missed_read_count,
        /// Bytes lost: writes of another width, or bytes the host writer refused.
        missed_write_count,
        /// Register writes the UART refused (e.g. the interrupt line could not be raised).
        error_count,
    }
}

/// Feeds the UART's events into [`SerialMetrics`].
struct CountingEvents(Arc<SerialMetrics>);

impl SerialEvents for CountingEvents {
    fn buffer_read(&self) {
        self.0.read_count.inc();
    }
    fn out_byte(&self) {
        self.0.write_count.inc();
    }
    fn tx_lost_byte(&self) {
        self.0.missed_write_count.inc();
    }
    fn in_buffer_empty(&self) {}
}

/// The UART's state in a snapshot: its nine registers (divisor low/high, IER, IIR, LCR, LSR, MCR, MSR,
/// scratch) and the bytes waiting in its receive FIFO.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

/// COM1's I/O ports and interrupt.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

pub struct SerialConsole {
    uart: Serial<IrqLine, CountingEvents, Box<dyn Write + Send>>,
    metrics: Arc<SerialMetrics>,
}

impl SerialConsole {
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        let metrics = Arc::new(SerialMetrics::default());
        SerialConsole {
            uart: Serial::with_events(irq, CountingEvents(metrics.clone()), out),
            metrics,
        }
    }

    /// The UART's counters, readable from any thread.
    pub fn metrics(&self) -> Arc<SerialMetrics> {
        self.metrics.clone()
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                hull_logging::guest_warn!(error = ?e, "serial input dropped");
                0
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn save_state(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Puts the UART back in a saved state (from a snapshot file: a FIFO longer than the UART's is
    /// refused). The host writer, interrupt line and counters stay.
    pub fn restore_state(&mut self, snap: &SerialSnapshot) -> Result<(), String> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            snap.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: snap.in_buffer.clone(),
        };
        let irq = IrqLine(self.uart.interrupt_evt().0.try_clone().map_err(|e| e.to_string())?);
        let placeholder = Serial::with_events(
            IrqLine(self.uart.interrupt_evt().0.try_clone().map_err(|e| e.to_string())?),
            CountingEvents(self.metrics.clone()),
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        match Serial::from_state(&state, irq, CountingEvents(self.metrics.clone()), out) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(format!("the serial console's state is refused: {e:?}")),
        }
    }

    pub fn interrupt_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            self.metrics.missed_read_count.inc();
        }
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            self.metrics.missed_write_count.inc();
        }
        let Ok(off) = u8::try_from(offset) else { return };
        for &byte in data.iter().take(1) {
            if let Err(e) = self.uart.write(off, byte) {
                self.metrics.error_count.inc();
                hull_logging::guest_warn!(error = ?e, "serial output failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::DeviceMetrics;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_guest_bytes_and_receives_host_input() {
        let cap = Capture::default();
        let mut s = SerialConsole::new(IrqLine::new().unwrap(), Box::new(cap.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(cap.0.lock().unwrap().as_slice(), b"hi\n");
        // Enable the receive-data interrupt, then feed input: the IRQ fires and LSR shows data ready.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert_eq!(s.interrupt_fd().read().unwrap(), 1);
        let mut b = [0u8];
        s.read(5, &mut b);
        assert_eq!(b[0] & 1, 1);
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
        // Offsets and widths the UART does not have are ignored.
        s.write(0x1_0000, &[1]);
        s.read(3, &mut []);
        let m = s.metrics().snapshot();
        assert_eq!(m.get("write_count"), Some(3), "{m:?}");
        assert_eq!(m.get("read_count"), Some(1), "{m:?}");
        assert_eq!(m.get("missed_read_count"), Some(1), "{m:?}");
        assert_eq!(m.get("missed_write_count"), Some(0), "{m:?}");
    }
}
