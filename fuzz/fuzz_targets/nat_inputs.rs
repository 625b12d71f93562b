//! Fuzzes the device's NAT traversal inputs from remote parties: ICE server URIs (from
//! signaling), and datagrams and TCP/TLS bytes arriving from STUN/TURN server addresses (a
//! hostile or broken server, or anyone spoofing one) while probes and allocations are in
//! flight. Nothing may panic; every output stays bounded.
#![no_main]

use kvs_peer::nat::{IceUri, NatCore, NatPolicy, NatServer, RelayTransport, ServerKind};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn server(uri: &str, kind: ServerKind, addr: &str) -> NatServer {
    NatServer {
        uri: uri.into(),
        kind,
        addr: addr.parse().unwrap(),
        host: "203.0.113.1".into(),
        username: Some("1700000000:viewer".into()),
        credential: Some("secret".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = IceUri::parse(text);
    }
    let host: SocketAddr = "192.0.2.10:5000".parse().unwrap();
    let udp: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let t0 = Instant::now();
    let mut nat = NatCore::new(NatPolicy::default(), vec![host]);
    nat.set_servers(
        t0,
        vec![
            server("turn:203.0.113.1:3478?transport=udp", ServerKind::Turn(RelayTransport::Udp), "203.0.113.1:3478"),
            server("turn:203.0.113.1:3478?transport=tcp", ServerKind::Turn(RelayTransport::Tcp), "203.0.113.1:3478"),
        ],
    );
    nat.set_sessions(t0, 1);
    let mut conn = None;
    while let Some(io) = nat.poll_stream() {
        if let kvs_peer::nat::StreamIo::Connect { conn: c, .. } = io {
            conn = Some(c);
        }
    }
    if let Some(c) = conn {
        nat.stream_connected(t0, c, "192.0.2.10:40000".parse().unwrap());
    }
    // The input, cut in chunks: the first byte of each says its length and where it goes.
    let mut rest = data;
    let mut now = t0;
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head & 0x3f).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        match head >> 6 {
            0 | 1 => {
                nat.handle_datagram(now, udp, host, chunk);
            }
            2 => {
                if let Some(c) = conn {
                    nat.stream_data(now, c, chunk);
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(head & 0x3f) * 100);
                nat.handle_timeout(now);
            }
        }
        rest = next;
        let mut outputs = 0;
        while nat.poll_datagram().is_some() || nat.poll_event().is_some() || nat.poll_received().is_some() {
            outputs += 1;
            assert!(outputs < 100_000);
        }
        while nat.poll_stream().is_some() {}
    }
});
