//! Starting inputs for each target: well-formed requests, files, messages and lines (and encodings of a
//! few interesting structured cases), which the runner mutates. libFuzzer starts from them too
//! (`scripts/fuzz.sh` writes them into each target's corpus).

use hull_agent_protocol::agent::{StatsContainerResponse, WaitProcessResponse};
use hull_agent_protocol::protobuf::Message;

fn lines(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// `Input::chunk` encoding: a little-endian u16 length, then the bytes.
fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub fn http_request() -> Vec<Vec<u8>> {
    lines(&[
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "PUT /machine-config HTTP/1.1\r\nContent-Length: 37\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 256}",
        "PATCH /machine-config HTTP/1.1\r\nContent-Length: 13\r\nExpect: 100-continue\r\n\r\n{\"smt\": true}",
        "PUT /boot-source HTTP/1.1\r\nContent-Length: 47\r\n\r\n{\"kernel_image_path\": \"/x\", \"boot_args\": \"a=b\"}",
        "PUT /drives/rootfs HTTP/1.1\r\nContent-Length: 90\r\n\r\n{\"drive_id\": \"rootfs\", \"path_on_host\": \"/nonexistent\", \"is_root_device\": true, \"is_read_only\": true}",
        "PUT /actions HTTP/1.1\r\nContent-Length: 35\r\n\r\n{\"action_type\": \"SendCtrlAltDel\"}\r\nGET /vm/config HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "PUT /vsock HTTP/1.1\r\nContent-Length: 45\r\n\r\n{\"guest_cid\": 3, \"uds_path\": \"/tmp/x.vsock\"}",
        "PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}GET /version HTTP/1.1\r\n\r\n",
        "PUT /network-interfaces/eth0 HTTP/1.1\r\nContent-Length: 48\r\n\r\n{\"iface_id\": \"eth0\", \"host_dev_name\": \"tap0\"}",
    ])
}

pub fn api_routes() -> Vec<Vec<u8>> {
    // (method byte: 0 GET, 1 PUT, 3 PATCH; path index into the target's PATHS; body)
    let requests: &[&[(u8, u8, &str)]] = &[
        &[(1, 4, r#"{"vcpu_count": 2, "mem_size_mib": 256}"#), (0, 4, "")],
        &[(3, 4, r#"{"mem_size_mib": 1, "cpu_template": "T2"}"#), (0, 6, "")],
        &[
            (1, 3, r#"{"kernel_image_path": "/nonexistent", "initrd_path": "/x"}"#),
            (0, 0, ""),
        ],
        &[
            (
                1,
                10,
                r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent", "is_root_device": true, "is_read_only": true}"#,
            ),
            (3, 10, r#"{"drive_id": "rootfs", "path_on_host": "/y"}"#),
        ],
        &[(
            1,
            12,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01"}"#,
        )],
        &[
            (1, 9, r#"{"guest_cid": 3, "uds_path": "/tmp/hull-fuzz.vsock"}"#),
            (0, 6, ""),
        ],
        &[
            (1, 2, r#"{"action_type": "FlushMetrics"}"#),
            (1, 2, r#"{"action_type": "SendCtrlAltDel"}"#),
            (3, 5, r#"{"state": "Paused"}"#),
        ],
        &[
            (
                1,
                7,
                r#"{"log_path": "/tmp/x", "level": "Warning", "show_level": true}"#,
            ),
            (1, 8, r#"{"metrics_path": "/tmp/m"}"#),
        ],
    ];
    requests
        .iter()
        .map(|seq| {
            let mut out = vec![seq.len() as u8 - 1, 0, 0, 0];
            for (method, path, body) in seq.iter() {
                out.push(*method);
                out.push(*path);
                chunk(&mut out, body.as_bytes());
            }
            out
        })
        .collect()
}

pub fn config_file() -> Vec<Vec<u8>> {
    lines(&[
        r#"{"boot-source": {"kernel_image_path": "/nonexistent", "boot_args": "console=ttyS0"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 128}}"#,
        r#"{"drives": [{"drive_id": "rootfs", "path_on_host": "/nonexistent", "is_root_device": true, "is_read_only": false}], "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}]}"#,
        r#"{"vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"}, "logger": {"level": "Info"}, "metrics": {"metrics_path": "/tmp/m"}}"#,
        r#"{"machine-config": {"vcpu_count": 33, "mem_size_mib": 0, "smt": true, "cpu_template": "None", "track_dirty_pages": true}}"#,
    ])
}

/// Snapshot state files: a well-formed empty one, JSON payloads of the state's shape, damaged headers.
pub fn snapshot_state() -> Vec<Vec<u8>> {
    let state = br#"{"vmm_version":"0.1.0","config":{"machine":{"vcpu_count":1,"mem_size_mib":16},"drives":[],"net":[],"vsock":null},"memory":[{"guest_addr":0,"size":16777216,"file_offset":0}],"vm":{},"vcpus":[],"serial":{"registers":[0,0,0,0,0,0,0,0,0],"in_buffer":[]},"devices":[]}"#;
    let mut seeds = vec![
        vmm::snapshot::format::encode(b"{}"),
        vmm::snapshot::format::encode(state),
        state.to_vec(),
        b"HULLSNAP".to_vec(),
    ];
    let mut newer = vmm::snapshot::format::encode(b"{}");
    newer[8] = 2;
    seeds.push(newer);
    seeds
}

/// Inputs for a device target: its own prefix (backend set-up), then queue layouts of every kind.
fn virtio_with(prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut rng = crate::runner::Rng::new(0x7669_7274_696f);
    let mut seeds = Vec::new();
    // Queue size exponent (+4), layout mode (even: driver-like chains, bit 1: indirect tables), then
    // whatever the chains read.
    for (exp, mode) in [(0u8, 0u8), (0, 2), (4, 0), (255, 0), (0, 1), (1, 0xf0), (2, 3)] {
        let mut s = prefix.to_vec();
        s.extend_from_slice(&[exp, mode]);
        s.extend((0..600).map(|_| rng.next_u64() as u8));
        seeds.push(s);
    }
    seeds
}

/// Operations of the `virtio_pci` target: a driver's bring-up of the virtio-blk function (command register,
/// MSI-X on, negotiation, one queue, DRIVER_OK), then a request in memory and a kick.
pub fn virtio_pci() -> Vec<Vec<u8>> {
    // BAR write: op 4, region index, offset in the region, width index, value (8 bytes).
    let bar_write = |out: &mut Vec<u8>, region: u8, offset: u8, width: u8, value: u64| {
        out.extend_from_slice(&[4, region, offset, width]);
        out.extend_from_slice(&value.to_le_bytes());
    };
    // Config write through 0xCFC: latch (op 0) the register, then write (op 2) at port 4.
    let cfg_write = |out: &mut Vec<u8>, register: u8, width: u8, value: u64| {
        out.extend_from_slice(&[0, register, 2, 4, width]);
        out.extend_from_slice(&value.to_le_bytes());
    };
    let mut s = Vec::new();
    cfg_write(&mut s, 0x04, 1, 0x6);
    // The MSI-X capability (at 0x84, after the four virtio ones): its message control gets the enable bit.
    cfg_write(&mut s, 0x84, 2, 0x8000_0000);
    for status in [1u64, 3] {
        bar_write(&mut s, 0, 0x14, 0, status);
    }
    bar_write(&mut s, 0, 0x08, 2, 1);
    bar_write(&mut s, 0, 0x0c, 2, 1);
    bar_write(&mut s, 0, 0x14, 0, 0xb);
    bar_write(&mut s, 0, 0x18, 1, 16);
    bar_write(&mut s, 0, 0x1a, 1, 1);
    bar_write(&mut s, 0, 0x20, 3, 0x1000);
    bar_write(&mut s, 0, 0x28, 3, 0x2000);
    bar_write(&mut s, 0, 0x30, 3, 0x3000);
    bar_write(&mut s, 0, 0x1c, 1, 1);
    bar_write(&mut s, 0, 0x14, 0, 0xf);
    // A descriptor at 0x1000 pointing at 0x4000, the available ring publishing it, then a kick.
    s.extend_from_slice(&[6, 0, 0x10, 0, 0]);
    chunk(&mut s, &[0, 0x40, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]);
    s.extend_from_slice(&[6, 0, 0x20, 0, 0]);
    chunk(&mut s, &[0, 0, 1, 0, 0, 0]);
    s.extend_from_slice(&[7, 0, 0, 0, 0, 1]);
    vec![s, Vec::new()]
}

pub fn virtio_chain() -> Vec<Vec<u8>> {
    virtio_with(&[])
}

pub fn virtio_block() -> Vec<Vec<u8>> {
    // A 4 KiB read-write disk.
    virtio_with(&[2, 1])
}

pub fn virtio_net() -> Vec<Vec<u8>> {
    // One 60-byte frame waiting on the host side, a MAC.
    let mut prefix = vec![1, 0, 0, 0, 1, 60, 0, 0, 0];
    prefix.extend_from_slice(&[0x45; 60]);
    prefix.push(1);
    virtio_with(&prefix)
}

pub fn virtio_vsock() -> Vec<Vec<u8>> {
    // No host packets yet.
    virtio_with(&[0, 0, 0, 0])
}

/// `targets::mmds::stack`: V1 or V2, then a handshake (SYN, drain, ACK in sequence), a request, a drain.
pub fn mmds_stack() -> Vec<Vec<u8>> {
    let op = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&n.to_le_bytes());
    let segment = |out: &mut Vec<u8>, flags: u8, payload: &[u8]| {
        op(out, 1);
        // port 80, source port 40000, tracked seq and ack, the flags, the payload.
        out.push(0);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, flags]);
        chunk(out, payload);
    };
    let drain = |out: &mut Vec<u8>| {
        op(out, 3);
        out.extend_from_slice(&63u32.to_le_bytes());
    };
    let requests: [&[u8]; 3] = [
        b"GET /latest/meta-data/ HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: x\r\n\r\n",
    ];
    let mut seeds = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let mut s = vec![u8::from(i == 2), 0];
        // First the SYN at a fixed sequence number.
        op(&mut s, 1);
        s.push(0);
        s.extend_from_slice(&0u32.to_le_bytes());
        s.extend_from_slice(&[1, 0x10, 0, 0, 0, 0, 0x02]);
        chunk(&mut s, b"");
        drain(&mut s);
        segment(&mut s, 0x10, b"");
        segment(&mut s, 0x18, request);
        drain(&mut s);
        segment(&mut s, 0x11, b"");
        drain(&mut s);
        seeds.push(s);
    }
    seeds
}

pub fn virtio_balloon() -> Vec<Vec<u8>> {
    // A 16 MiB target, deflate on OOM, statistics on.
    virtio_with(&[16, 1, 1])
}

pub fn virtio_rng() -> Vec<Vec<u8>> {
    // No rate limit.
    virtio_with(&[0])
}

pub fn virtio_pmem() -> Vec<Vec<u8>> {
    // A read-write device.
    virtio_with(&[0])
}

pub fn vsock_muxer() -> Vec<Vec<u8>> {
    vec![
        // host connects with CONNECT 1024, the muxer runs, the guest reads the REQUEST and answers it
        vec![
            2, 0, 0, 6, 7, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 7, 4, 1,
        ],
        // guest connects to the host listener on port 52, sends data, the listener answers
        vec![
            0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 8, 4, 0, b'h', b'i', b'!', b'\n', 1, 6, 7, 3, 2,
        ],
        vec![0, 4, 3, 5, 0, b'a', b'b', b'c', b'd', b'e', 6, 7, 2, 0, 9, 0],
    ]
}

pub fn vsock_handshake() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for line in [
        "CONNECT 1024\n",
        "CONNECT 52\r\n",
        "CONNECT 4294967296\n",
        "connect 1\n",
        "CONNECT  7 \n",
    ] {
        let mut s = vec![1];
        chunk(&mut s, line.as_bytes());
        seeds.push(s);
    }
    seeds
}

fn vhost_message(out: &mut Vec<u8>, request: u32, flags: u32, payload: &[u8]) {
    // The target's encoding: selector (< 240: a message), request index or raw, flags, payload, size.
    let index = [1u32, 2, 3, 15, 16, 18, 21, 24, 25, 0, 60]
        .iter()
        .position(|r| *r == request)
        .unwrap_or(0);
    out.extend_from_slice(&[0, 0, index as u8, 0]);
    out.extend_from_slice(&(flags & 0xc).to_le_bytes());
    chunk(out, payload);
    out.extend_from_slice(&[0, 1]);
}

pub fn vhost_user_relay() -> Vec<Vec<u8>> {
    let mut s = vec![5, 0, 0, 0];
    vhost_message(&mut s, 18, 0x8, &[0, 0, 0, 0, 1, 0, 0, 0]);
    vhost_message(&mut s, 16, 0, &0x208u64.to_le_bytes());
    vhost_message(&mut s, 2, 0, &1u64.to_le_bytes());
    vhost_message(&mut s, 18, 0, &[1, 0, 0, 0, 1, 0, 0, 0]);
    vec![s]
}

pub fn blk_control() -> Vec<Vec<u8>> {
    lines(&[
        "attach /tmp/image.ext4 ro\ndetach\n",
        "attach /a b c rw\r\n",
        "detach x\nattach rel rw\n\n",
        "attach /x ro",
    ])
}

pub fn config_notify() -> Vec<Vec<u8>> {
    vec![
        vec![1, 0, 1, 1, 1, 1, 1],
        vec![0, 8, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 1, 1, 1],
    ]
}

pub fn agent_reply() -> Vec<Vec<u8>> {
    let mut wait = WaitProcessResponse::new();
    wait.exit_code = -1;
    wait.signal = 9;
    wait.oom_killed = true;
    let stats = StatsContainerResponse::new();
    let mut seeds = Vec::new();
    for m in [
        wait.write_to_bytes().unwrap_or_default(),
        stats.write_to_bytes().unwrap_or_default(),
    ] {
        let mut direct = vec![1];
        direct.extend_from_slice(&m);
        seeds.push(direct);
        // Through the client: call WaitProcess, a Response with status OK around the message.
        let mut client = vec![0, 2, 0, 0];
        chunk(&mut client, b"");
        chunk(&mut client, &m);
        seeds.push(client);
    }
    seeds
}

pub fn stdio_handshake() -> Vec<Vec<u8>> {
    lines(&[
        "\x00STDIO c1 - stdout",
        "\x00STDIO c-1 e2 terminal\n",
        "\x01OK\nrest",
        "\x02ERR no such container\n",
        "\x03OK 1073741824\n",
        "\x03ERR\n",
    ])
}
