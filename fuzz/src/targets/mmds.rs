//! MMDS's guest side (`devices/src/mmds/`): a sequence of frames a hostile guest sends towards the metadata
//! service on one interface — raw bytes, ARP, and TCP segments whose sequence and acknowledgement numbers
//! either follow what MMDS last sent (so handshakes complete and HTTP requests reach the parser and the
//! data store) or are arbitrary — with MMDS's answers drained in between.
//!
//! Checked besides "no panic": the responder's queue of answers stays bounded, and every answer is an
//! Ethernet frame from the MMDS MAC.

use devices::mmds::stack::{MmdsStack, MAX_PENDING_FRAMES, MMDS_MAC};
use devices::mmds::{Mmds, MmdsVersion, DEFAULT_IPV4};

use crate::input::Input;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const GUEST_IP: [u8; 4] = [169, 254, 0, 2];

/// A guest → MMDS IPv4/TCP frame (checksums left zero: MMDS does not check them).
fn tcp_frame(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&MMDS_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&DEFAULT_IPV4.octets());
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

fn arp_frame(op: u16, target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// What the guest's next in-sequence numbers would be, learned from MMDS's last TCP answer.
#[derive(Default)]
struct Tracked {
    /// MMDS's next sequence number (what the guest acknowledges).
    mmds_next: u32,
    /// The guest's next sequence number (what MMDS acknowledged).
    guest_next: u32,
}

fn learn(frame: &[u8], t: &mut Tracked) {
    assert!(
        frame.len() >= 14 && frame[6..12] == MMDS_MAC,
        "an answer not from the MMDS MAC"
    );
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let tcp = &frame[34..];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    let payload = tcp.len().saturating_sub(usize::from(tcp[12] >> 4) * 4);
    t.mmds_next = seq
        .wrapping_add(payload as u32)
        .wrapping_add(u32::from(flags & 0x03 != 0));
    t.guest_next = ack;
}

pub fn stack(data: &[u8]) {
    let mut input = Input::new(data);
    let mut mmds = Mmds::new(4096);
    let _ = mmds
        .data_store_mut()
        .put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 1, "o": {"k": "v"}}}}));
    let version = if input.bool() { MmdsVersion::V2 } else { MmdsVersion::V1 };
    mmds.configure(version, input.bool());
    let mut stack = MmdsStack::new(mmds.shared(), DEFAULT_IPV4);
    let mut tracked = Tracked::default();
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.below(4) {
            0 => {
                stack.handle_tx_frame(input.chunk(1600));
            }
            1 => {
                let dst_port = input.pick(&[80u16, 80, 80, 22]);
                let src_port = 40_000 + input.below(4) as u16;
                let seq = if input.bool() { input.u32() } else { tracked.guest_next };
                let ack = if input.bool() { input.u32() } else { tracked.mmds_next };
                let flags = input.u8();
                let payload = input.chunk(1400);
                if flags & 0x02 != 0 {
                    tracked.guest_next = seq.wrapping_add(1);
                } else {
                    tracked.guest_next = seq.wrapping_add(payload.len() as u32);
                }
                let frame = tcp_frame(src_port, dst_port, seq, ack, flags, payload);
                assert!(
                    stack.handle_tx_frame(&frame),
                    "a frame to the MMDS address passed through"
                );
            }
            2 => {
                let target = if input.bool() {
                    DEFAULT_IPV4.octets()
                } else {
                    [10, 0, 0, 1]
                };
                stack.handle_tx_frame(&arp_frame(input.below(3) as u16, target));
            }
            _ => {
                for _ in 0..input.below(64) {
                    match stack.pop_frame() {
                        Some(f) => learn(&f, &mut tracked),
                        None => break,
                    }
                }
            }
        }
    }
    let mut queued = 0;
    while let Some(f) = stack.pop_frame() {
        learn(&f, &mut tracked);
        queued += 1;
    }
    assert!(queued <= MAX_PENDING_FRAMES, "{queued} answers queued");
}
