//! Legacy devices: serial, i8042, boot timer.
