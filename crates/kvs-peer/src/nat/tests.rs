//! Gathering in virtual time: [`NatCore`] against a sans-IO TURN server (`turn-server-proto`)
//! behind a simulated NAT that rewrites the device's address, no sockets, no clock.

use super::*;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer;

const HOST: &str = "192.0.2.10:5000";
/// What the NAT maps the device's socket to.
const MAPPED: &str = "198.51.100.7:40000";
const SERVER: &str = "203.0.113.1:3478";
const RELAYED: &str = "203.0.113.1:50000";
const PEER: &str = "203.0.113.99:7000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct World {
    now: Instant,
    clock: Clock,
    nat: NatCore,
    server: TurnServer,
    /// Datagrams the server sent to the peer.
    to_peer: Vec<Vec<u8>>,
    /// Drop everything the device sends to the server.
    server_silent: bool,
    /// Allocations the server made (each gets the next relayed port).
    allocations: u16,
}

impl World {
    fn new(password: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let now = Instant::now();
        let mut server = TurnServer::new(TransportType::Udp, addr(SERVER), "kvs".into());
        server.add_user("user".into(), "secret".into());
        let mut nat = NatCore::new(NatPolicy::default(), vec![addr(HOST)]);
        nat.set_servers(
            now,
            vec![NatServer {
                uri: "turn:203.0.113.1:3478?transport=udp".into(),
                kind: ServerKind::Turn(RelayTransport::Udp),
                addr: addr(SERVER),
                host: "203.0.113.1".into(),
                username: Some("user".into()),
                credential: Some(password.into()),
            }],
        );
        Self {
            now,
            clock: Clock::new(now),
            nat,
            server,
            to_peer: Vec::new(),
            server_silent: false,
            allocations: 0,
        }
    }

    fn t(&self) -> turn_client_proto::types::Instant {
        self.clock.to_turn(self.now)
    }

    /// A datagram from the server (or the relay) towards the device, through the NAT.
    fn deliver_to_device(&mut self, from: SocketAddr, data: Vec<u8>) {
        self.nat.handle_datagram(self.now, from, addr(HOST), &data);
    }

    /// Move every pending datagram until nothing moves.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(d) = self.nat.poll_datagram() {
                moved = true;
                assert_eq!(d.source, addr(HOST));
                if self.server_silent || d.destination != addr(SERVER) {
                    continue;
                }
                if let Some(reply) = binding_answer(&d.data) {
                    self.deliver_to_device(addr(SERVER), reply);
                    continue;
                }
                // The NAT rewrites the source.
                let t = self.t();
                let reply = self.server.recv(
                    Transmit::new(
                        d.data.as_slice(),
                        TransportType::Udp,
                        addr(MAPPED),
                        addr(SERVER),
                    ),
                    t,
                );
                if let Some(reply) = reply {
                    let reply = reply.build();
                    self.deliver(reply.from, reply.to, reply.data);
                }
            }
            let t = self.t();
            while let TurnServerPollRet::AllocateSocket {
                transport,
                listen_addr,
                client_addr,
                allocation_transport,
                family,
            } = self.server.poll(t)
            {
                moved = true;
                let relayed = SocketAddr::new(addr(RELAYED).ip(), 50000 + self.allocations);
                self.allocations += 1;
                self.server.allocated_socket(
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                    Ok(relayed),
                    t,
                );
            }
            while let Some(tx) = self.server.poll_transmit(t) {
                moved = true;
                self.deliver(tx.from, tx.to, tx.data);
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if to == addr(MAPPED) {
            self.deliver_to_device(from, data);
        } else if to == addr(PEER) {
            self.to_peer.push(data);
        }
    }

    /// Let `d` of virtual time pass, waking the core when it asks.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            let next = self
                .nat
                .poll_timeout()
                .unwrap_or(end)
                .min(end)
                .max(self.now);
            self.now = next;
            self.nat.handle_timeout(self.now);
            self.pump();
            if self.now >= end {
                return;
            }
        }
    }

    fn events(&mut self) -> Vec<NatEvent> {
        std::iter::from_fn(|| self.nat.poll_event()).collect()
    }

    /// The peer sends to the relayed address; what reaches the device's sessions.
    fn peer_sends(&mut self, data: &[u8]) -> Vec<RelayedData> {
        let t = self.t();
        if let Some(out) = self.server.recv(
            Transmit::new(data, TransportType::Udp, addr(PEER), addr(RELAYED)),
            t,
        ) {
            let out = out.build();
            self.deliver(out.from, out.to, out.data);
        }
        self.pump();
        std::iter::from_fn(|| self.nat.poll_received()).collect()
    }
}

/// The server's answer to a Binding request, as seen through the NAT (the sans-IO server
/// crate addresses its Binding answers wrongly, so the harness answers them itself).
fn binding_answer(data: &[u8]) -> Option<Vec<u8>> {
    use turn_client_proto::stun::types::attribute::XorMappedAddress;
    use turn_client_proto::stun::types::message::{
        Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec, BINDING,
    };
    let msg = Message::from_bytes(data).ok()?;
    if !msg.has_class(MessageClass::Request) || msg.method() != BINDING {
        return None;
    }
    let mut reply = Message::builder_success(&msg, MessageWriteVec::new());
    reply
        .add_attribute(&XorMappedAddress::new(addr(MAPPED), msg.transaction_id()))
        .ok()?;
    Some(reply.finish())
}

fn candidates(events: &[NatEvent]) -> Vec<(str0m::CandidateKind, SocketAddr)> {
    events
        .iter()
        .filter_map(|e| match e {
            NatEvent::Candidate { candidate, .. } => Some((candidate.kind(), candidate.addr())),
            _ => None,
        })
        .collect()
}

#[test]
fn behind_a_nat_the_device_learns_its_mapping_and_a_relayed_address() {
    let mut w = World::new("secret");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    let got = candidates(&w.events());
    assert!(
        got.contains(&(str0m::CandidateKind::ServerReflexive, addr(MAPPED))),
        "{got:?}"
    );
    assert!(
        got.contains(&(str0m::CandidateKind::Relayed, addr(RELAYED))),
        "{got:?}"
    );
    assert!(w.nat.gathering_done());
    assert_eq!(w.nat.allocation_count(), 1);
    assert!(w.nat.is_relayed(addr(RELAYED)));
}

#[test]
fn relayed_data_flows_both_ways_once_the_permission_is_installed() {
    let mut w = World::new("secret");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    // The first send waits for the permission, then goes.
    w.nat
        .send_relayed(w.now, addr(RELAYED), addr(PEER), b"check-1");
    w.advance(Duration::from_millis(100));
    assert_eq!(w.to_peer, vec![b"check-1".to_vec()]);
    let back = w.peer_sends(b"answer-1");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].data, b"answer-1");
    assert_eq!(back[0].peer, addr(PEER));
    assert_eq!(back[0].relayed, addr(RELAYED));
}

#[test]
fn a_known_peer_reaches_the_relayed_address_before_the_device_sends_to_it() {
    let mut w = World::new("secret");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    // Without a permission the server drops what the peer sends (its first checks).
    assert!(w.peer_sends(b"early").is_empty());
    // The peer's candidate is known: the permission goes in ahead of any data of ours.
    w.nat.permit(w.now, addr(PEER).ip());
    w.advance(Duration::from_millis(100));
    let got = w.peer_sends(b"check-from-peer");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data, b"check-from-peer");
    assert!(
        w.to_peer.is_empty(),
        "nothing sent to the peer: {:?}",
        w.to_peer
    );
    // Asking again (every trickled candidate does) sends nothing new.
    w.nat.permit(w.now, addr(PEER).ip());
    assert!(w.nat.poll_datagram().is_none());
}

#[test]
fn the_allocation_permission_and_channel_are_refreshed_for_an_hour() {
    let mut w = World::new("secret");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    w.nat
        .send_relayed(w.now, addr(RELAYED), addr(PEER), b"hello");
    w.advance(Duration::from_millis(100));
    // Nothing is sent by the sessions for an hour: the client alone keeps the allocation
    // (requested for 30 min), the permission (5 min) and the channel (10 min) alive.
    w.advance(Duration::from_secs(3600));
    let back = w.peer_sends(b"still here");
    assert_eq!(back.len(), 1, "the relay forgot us");
    assert_eq!(back[0].data, b"still here");
    assert!(w
        .events()
        .iter()
        .all(|e| !matches!(e, NatEvent::RelayLost { .. })));
}

#[test]
fn refused_credentials_are_reported_with_the_servers_code() {
    let mut w = World::new("wrong");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_secs(1));
    let events = w.events();
    let error = events
        .iter()
        .find_map(|e| match e {
            NatEvent::ServerError { uri, reason } => Some((uri.clone(), reason.clone())),
            _ => None,
        })
        .expect("an error event");
    assert_eq!(error.0, "turn:203.0.113.1:3478?transport=udp");
    assert!(error.1.contains("401"), "{}", error.1);
    assert!(error.1.contains("credentials"), "{}", error.1);
    assert_eq!(
        candidates(&events)
            .iter()
            .filter(|(k, _)| *k == str0m::CandidateKind::Relayed)
            .count(),
        0
    );
    // The srflx candidate (Binding needs no credentials) still came.
    assert!(candidates(&events).contains(&(str0m::CandidateKind::ServerReflexive, addr(MAPPED))));
    assert!(w.nat.gathering_done());
}

#[test]
fn a_silent_server_is_given_up_on_within_eight_seconds() {
    let mut w = World::new("secret");
    w.server_silent = true;
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_secs(8));
    let events = w.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, NatEvent::ServerError { .. })),
        "{events:?}"
    );
    assert!(w.nat.gathering_done());
    assert_eq!(w.nat.allocation_count(), 0);
    assert!(candidates(&events).is_empty());
}

#[test]
fn the_allocation_is_released_after_the_last_session_and_made_again_for_the_next() {
    let mut w = World::new("secret");
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    w.nat
        .send_relayed(w.now, addr(RELAYED), addr(PEER), b"hello");
    w.advance(Duration::from_millis(100));
    w.events();
    w.nat.set_sessions(w.now, 0);
    // Kept through the linger (a viewer reloading its page finds it)...
    w.advance(RELAY_LINGER - Duration::from_millis(500));
    assert_eq!(w.nat.allocation_count(), 1);
    assert_eq!(w.peer_sends(b"during linger").len(), 1);
    // ...then deleted on the server: the relayed address no longer reaches us.
    w.advance(Duration::from_secs(1));
    assert_eq!(w.nat.allocation_count(), 0);
    assert!(w
        .events()
        .iter()
        .any(|e| matches!(e, NatEvent::RelayLost { addr: a } if *a == addr(RELAYED))));
    assert!(w.peer_sends(b"after release").is_empty());
    assert!(!w.nat.is_relayed(addr(RELAYED)));
    // The next session allocates again.
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    assert!(candidates(&w.events())
        .iter()
        .any(|(k, _)| *k == str0m::CandidateKind::Relayed));
}

#[test]
fn uris_parse_with_their_defaults_and_bad_ones_are_refused() {
    let u = IceUri::parse("turns:turn.example.com?transport=tcp").unwrap();
    assert_eq!(u.kind, ServerKind::Turn(RelayTransport::Tls));
    assert_eq!((u.host.as_str(), u.port), ("turn.example.com", 5349));
    let u = IceUri::parse("turn:[2001:db8::1]:3479?transport=tcp").unwrap();
    assert_eq!(u.kind, ServerKind::Turn(RelayTransport::Tcp));
    assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 3479));
    let u = IceUri::parse("stun:stun.kinesisvideo.us-west-2.amazonaws.com:443").unwrap();
    assert_eq!((u.kind, u.port), (ServerKind::Stun, 443));
    assert_eq!(
        IceUri::parse("turn:a:3478").unwrap().kind,
        ServerKind::Turn(RelayTransport::Udp)
    );
    for bad in [
        "http://x",
        "turn:",
        "turn:host:99999",
        "turn:host:0",
        "turns:host?transport=udp",
        "stun:host?transport=tcp",
        "turn:host?transport=sctp",
        "turn:[::1",
        "nothing",
    ] {
        assert!(IceUri::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn fresh_credentials_keep_the_live_allocation_and_a_lost_one_is_made_again_with_them() {
    let mut w = World::new("secret");
    w.server.add_user("user2".into(), "secret2".into());
    w.nat.set_sessions(w.now, 1);
    w.advance(Duration::from_millis(100));
    let first = addr(RELAYED);
    assert!(candidates(&w.events()).contains(&(str0m::CandidateKind::Relayed, first)));
    // The ICE-server refresh brings new credentials: the allocation serving the sessions
    // stays (one per server and socket), nothing is lost.
    let fresh = NatServer {
        uri: "turn:203.0.113.1:3478?transport=udp".into(),
        kind: ServerKind::Turn(RelayTransport::Udp),
        addr: addr(SERVER),
        host: "203.0.113.1".into(),
        username: Some("user2".into()),
        credential: Some("secret2".into()),
    };
    w.nat.set_servers(w.now, vec![fresh]);
    w.advance(Duration::from_secs(1));
    assert_eq!(w.nat.allocation_count(), 1);
    assert!(w.nat.is_relayed(first));
    assert!(w
        .events()
        .iter()
        .all(|e| !matches!(e, NatEvent::RelayLost { .. })));
    // The server goes away long enough for the allocation to expire: the relay is lost, and
    // made again as soon as the server answers, with the newest credentials.
    w.server_silent = true;
    w.advance(Duration::from_secs(31 * 60));
    assert!(w
        .events()
        .iter()
        .any(|e| matches!(e, NatEvent::RelayLost { addr: a } if *a == first)));
    w.server_silent = false;
    w.advance(Duration::from_secs(10));
    let again = candidates(&w.events());
    assert!(
        again
            .iter()
            .any(|(k, a)| *k == str0m::CandidateKind::Relayed && *a != first),
        "{again:?}"
    );
    assert_eq!(w.nat.allocation_count(), 1);
}
