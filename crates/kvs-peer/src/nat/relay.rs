//! TURN allocations (RFC 8656) over UDP, TCP (RFC 6062 control connection) and TLS, through
//! the sans-IO clients of `turn-client-proto` / `turn-client-rustls`, shared by all sessions.
//!
//! Per allocation this keeps: the client (it refreshes the allocation, its permissions and
//! channels itself), the byte stream it rides on when it is TCP or TLS, the data waiting for
//! a permission (bounded), and the last error a server answered with, so that a refusal is
//! reported with its code ("401 Unauthorized") rather than as a bare failure.

use super::{Clock, NatDatagram, NatEvent, NatOut, NatServer, RelayedData, StreamIo};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::Candidate;
use tracing::{debug, info, warn};
use turn_client_proto::api::{TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::prelude::*;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::attribute::ErrorCode;
use turn_client_proto::stun::types::message::Message;
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;
use turn_client_rustls::rustls::pki_types::ServerName;
use turn_client_rustls::TurnClientRustls;

turn_client_proto::impl_client!(
    TurnClient,
    (Udp, TurnClientUdp),
    (Tcp, TurnClientTcp),
    (Tls, TurnClientRustls)
);

/// How the client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    Udp,
    Tcp,
    Tls,
}

impl std::fmt::Display for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RelayTransport::Udp => "udp",
            RelayTransport::Tcp => "tcp",
            RelayTransport::Tls => "tls",
        })
    }
}

/// Data held per allocation while its permission for the peer is being installed.
const MAX_PENDING: usize = 64;
/// Peers an allocation binds channels for (4-byte ChannelData instead of 36-byte Send
/// indications); further peers use Send indications.
const MAX_CHANNELS: usize = 64;
/// A failed allocation on a server is tried again after this long (a new server list is
/// tried at once).
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest a relay waits to be announced behind a better transport still being allocated.
const ANNOUNCE_WAIT: Duration = Duration::from_millis(500);
/// How long a retired allocation is kept for the sessions that might still be moving off it.
const RETIRED_GRACE: Duration = Duration::from_secs(10);
/// Request retransmissions: 0.5 s, doubling to 2 s, 4 resends, 2 s for the last answer —
/// a server that never answers is given up on in ~7.5 s, not the 39.5 s of RFC 8489.
const RTO_INITIAL: Duration = Duration::from_millis(500);
const RTO_MAX: Duration = Duration::from_secs(2);
const RTO_RESENDS: u32 = 4;
const RTO_LAST: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum State {
    /// Waiting for the driver's TCP connection.
    Connecting,
    Allocating,
    Ready(SocketAddr),
    Failed(Instant),
    /// Deleted (released); kept until the delete has gone out.
    Released,
}

#[derive(Debug)]
struct Relay {
    uri: String,
    server: SocketAddr,
    host: String,
    transport: RelayTransport,
    credentials: TurnCredentials,
    /// From an older server list (or older credentials) since then: serves the sessions whose
    /// path uses it, is not offered to new ones, and is released once none does.
    retired: Option<Instant>,
    state: State,
    client: Option<TurnClient>,
    conn: Option<u64>,
    local: Option<SocketAddr>,
    /// The last error a server answer carried.
    last_error: Option<String>,
    /// It worked, then failed (refresh refused, connection lost): try again at once.
    lost: bool,
    /// Allocated, not yet announced as a candidate: relays are announced UDP first, then TCP,
    /// then TLS, because str0m ranks candidates of one kind by the order they are added, and a
    /// TLS relay must not outrank a TCP one only for being ready first.
    unannounced: bool,
    /// When it was allocated.
    ready_at: Option<Instant>,
    /// Transactions the server answered 401 while allocating: the first is the challenge,
    /// a second one means our credentials were refused.
    unauthorized: Vec<u128>,
    pending: VecDeque<(SocketAddr, Vec<u8>)>,
    permission_requested: Vec<IpAddr>,
    /// Peers the server refused a permission for: not asked again ahead of a send.
    permission_refused: Vec<IpAddr>,
    channels: Vec<SocketAddr>,
    wake: Option<Instant>,
}

impl Relay {
    fn is_live(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Allocating | State::Ready(_)
        )
    }
}

/// The allocations of the device.
#[derive(Debug)]
pub struct RelayPool {
    max: usize,
    tls: Option<Arc<turn_client_rustls::rustls::ClientConfig>>,
    relays: Vec<Relay>,
    next_conn: u64,
    clock: Option<Clock>,
    /// The latest time seen (announcements are made from the poll, which has none).
    now: Option<Instant>,
}

impl RelayPool {
    pub(crate) fn new(
        max: usize,
        tls: Option<Arc<turn_client_rustls::rustls::ClientConfig>>,
    ) -> Self {
        Self {
            max,
            tls,
            relays: Vec::new(),
            next_conn: 1,
            clock: None,
            now: None,
        }
    }

    fn clock(&mut self, now: Instant) -> Clock {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
        *self.clock.get_or_insert_with(|| Clock::new(now))
    }

    pub(crate) fn live_count(&self) -> usize {
        self.relays.iter().filter(|r| r.is_live()).count()
    }

    /// An allocation on `server` for new sessions, unless one exists (or failed recently).
    pub(crate) fn ensure(
        &mut self,
        now: Instant,
        server: &NatServer,
        user: &str,
        pass: &str,
        local: Option<SocketAddr>,
        out: &mut NatOut,
    ) {
        let super::ServerKind::Turn(transport) = server.kind else {
            return;
        };
        let existing = self.relays.iter().find(|r| {
            r.retired.is_none()
                && r.uri == server.uri
                && r.server == server.addr
                && match r.state {
                    State::Failed(at) => !r.lost && now.saturating_duration_since(at) < RETRY_AFTER,
                    State::Released => false,
                    _ => true,
                }
        });
        if existing.is_some() {
            return;
        }
        if transport == RelayTransport::Tls && self.tls.is_none() {
            debug!(uri = %server.uri, "no TLS configuration for turns:; skipped");
            return;
        }
        // Retired allocations do not count: they are on their way out.
        let current = self
            .relays
            .iter()
            .filter(|r| r.is_live() && r.retired.is_none())
            .count();
        if current >= self.max {
            debug!(uri = %server.uri, max = self.max, "TURN allocation cap reached");
            return;
        }
        self.relays
            .retain(|r| !(r.uri == server.uri && matches!(r.state, State::Failed(_))));
        let mut relay = Relay {
            uri: server.uri.clone(),
            server: server.addr,
            host: server.host.clone(),
            transport,
            credentials: TurnCredentials::new(user, pass),
            retired: None,
            state: State::Connecting,
            client: None,
            conn: None,
            local,
            last_error: None,
            lost: false,
            unannounced: false,
            ready_at: None,
            unauthorized: Vec::new(),
            pending: VecDeque::new(),
            permission_requested: Vec::new(),
            permission_refused: Vec::new(),
            channels: Vec::new(),
            wake: None,
        };
        info!(uri = %relay.uri, server = %relay.server, "allocating a TURN relay");
        match transport {
            RelayTransport::Udp => {
                let Some(local) = local else { return };
                relay.client = Some(TurnClient::Udp(TurnClientUdp::allocate(
                    local,
                    server.addr,
                    turn_config(&relay.credentials),
                )));
                relay.state = State::Allocating;
                let clock = self.clock(now);
                drive(&mut relay, now, clock, out);
            }
            RelayTransport::Tcp | RelayTransport::Tls => {
                let conn = self.next_conn;
                self.next_conn += 1;
                relay.conn = Some(conn);
                out.stream(StreamIo::Connect {
                    conn,
                    server: server.addr,
                });
            }
        }
        self.relays.push(relay);
    }

    /// Allocations on servers (or with credentials) no longer listed keep serving the
    /// sessions that use them, but are not offered to new sessions.
    pub(crate) fn retire_missing(&mut self, now: Instant, servers: &[NatServer]) {
        for r in &mut self.relays {
            // New credentials for the same server keep the allocation: one UDP socket can hold
            // only one allocation per server (RFC 8656 5-tuples), and the client refreshes it
            // with the credentials it was made with. Should the server refuse those one day,
            // the relay is lost and made again at once with the newest ones (`ensure`).
            let listed = servers.iter().any(|s| s.uri == r.uri && s.addr == r.server);
            match (listed, r.retired) {
                (false, None) => r.retired = Some(now),
                // Listed again: serves new sessions again (a second allocation on the same
                // server and socket would be refused).
                (true, Some(_)) => r.retired = None,
                _ => {}
            }
        }
        // Failed or released ones are of no use to anybody.
        self.relays.retain(|r| r.is_live());
    }

    /// Release retired allocations no session's path uses (after a grace period in which a
    /// session may still be moving off it).
    pub(crate) fn release_unused_retired(
        &mut self,
        now: Instant,
        in_use: impl Fn(SocketAddr) -> bool,
        out: &mut NatOut,
    ) {
        if self.relays.iter().all(|r| r.retired.is_none()) {
            return;
        }
        let clock = self.clock(now);
        for r in &mut self.relays {
            let Some(since) = r.retired else { continue };
            let used = matches!(r.state, State::Ready(a) if in_use(a));
            if !used && now.saturating_duration_since(since) >= RETIRED_GRACE {
                release(r, now, clock, out);
            }
        }
    }

    /// Delete every allocation (no session is left).
    pub(crate) fn release_all(&mut self, now: Instant, out: &mut NatOut) {
        let clock = self.clock(now);
        for r in &mut self.relays {
            release(r, now, clock, out);
        }
        self.relays.retain(|r| r.is_live() || r.client.is_some());
    }

    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        let mut ready: Vec<&Relay> = self
            .relays
            .iter()
            .filter(|r| r.retired.is_none() && !r.unannounced)
            .collect();
        ready.sort_by_key(|r| rank(r.transport));
        ready
            .into_iter()
            .filter_map(|r| match r.state {
                State::Ready(addr) => relay_candidate(r, addr),
                _ => None,
            })
            .collect()
    }

    /// Announce allocated relays in transport order: one waits while a relay of a better
    /// transport is still being made.
    pub(crate) fn announce(&mut self, out: &mut NatOut) {
        let pending: Vec<RelayTransport> = self
            .relays
            .iter()
            .filter(|r| {
                r.retired.is_none() && matches!(r.state, State::Connecting | State::Allocating)
            })
            .map(|r| r.transport)
            .collect();
        let mut order: Vec<usize> = (0..self.relays.len()).collect();
        order.sort_by_key(|&i| rank(self.relays[i].transport));
        for i in order {
            let r = &mut self.relays[i];
            let State::Ready(addr) = r.state else {
                r.unannounced = false;
                continue;
            };
            // A better transport still on its way holds this one back, for at most
            // ANNOUNCE_WAIT: a blocked UDP must not delay TCP by its whole timeout.
            let waited = match (r.ready_at, self.now) {
                (Some(ready), Some(now)) => now.saturating_duration_since(ready) >= ANNOUNCE_WAIT,
                _ => true,
            };
            let held = !waited && pending.iter().any(|t| rank(*t) < rank(r.transport));
            if !r.unannounced || held {
                continue;
            }
            r.unannounced = false;
            if let Some(candidate) = relay_candidate(r, addr) {
                out.event(NatEvent::Candidate {
                    candidate,
                    from: r.uri.clone(),
                });
            }
        }
    }

    pub(crate) fn done(&self) -> bool {
        !self
            .relays
            .iter()
            .any(|r| matches!(r.state, State::Connecting | State::Allocating))
    }

    pub(crate) fn relay_transport(&self, addr: SocketAddr) -> Option<RelayTransport> {
        self.relays.iter().find_map(|r| match r.state {
            State::Ready(a) if a == addr => Some(r.transport),
            _ => None,
        })
    }

    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        out: &mut NatOut,
    ) -> bool {
        let clock = self.clock(now);
        let Some(r) = self.relays.iter_mut().find(|r| {
            r.transport == RelayTransport::Udp
                && r.server == source
                && r.local == Some(destination)
                && r.client.is_some()
        }) else {
            return false;
        };
        if note_error(r, data) {
            fail(r, now, refusal(r), out);
            return true;
        }
        let t = clock.to_turn(now);
        let Some(client) = r.client.as_mut() else {
            return false;
        };
        let ret = client.recv(
            Transmit::new(data, TransportType::Udp, source, destination),
            t,
        );
        let consumed = !matches!(ret, TurnRecvRet::Ignored(_));
        if let TurnRecvRet::PeerData(d) = ret {
            if let State::Ready(relayed) = r.state {
                out.received(RelayedData {
                    peer: d.peer,
                    relayed,
                    data: d.data().to_vec(),
                });
            }
        }
        drive(r, now, clock, out);
        consumed
    }

    pub(crate) fn stream_connected(
        &mut self,
        now: Instant,
        conn: u64,
        local: SocketAddr,
        out: &mut NatOut,
    ) {
        let clock = self.clock(now);
        let tls = self.tls.clone();
        let Some(r) = self.relays.iter_mut().find(|r| r.conn == Some(conn)) else {
            out.stream(StreamIo::Close { conn });
            return;
        };
        if !matches!(r.state, State::Connecting) {
            return;
        }
        r.local = Some(local);
        let config = turn_config(&r.credentials);
        r.client = match r.transport {
            RelayTransport::Tcp => Some(TurnClient::Tcp(TurnClientTcp::allocate(
                local, r.server, config,
            ))),
            RelayTransport::Tls => {
                let name = match ServerName::try_from(r.host.clone()) {
                    Ok(n) => n,
                    Err(e) => {
                        fail(r, now, format!("bad TLS server name {}: {e}", r.host), out);
                        return;
                    }
                };
                let Some(tls) = tls else {
                    fail(r, now, "no TLS configuration".into(), out);
                    return;
                };
                // The crate builds the TLS connection with an `unwrap`; a configuration that
                // rustls refuses must not take the engine down.
                let built = fenced(AssertUnwindSafe(|| {
                    TurnClientRustls::allocate(local, r.server, config, name, tls)
                }));
                match built {
                    Ok(c) => Some(TurnClient::Tls(c)),
                    Err(_) => {
                        fail(r, now, "TLS set-up refused".into(), out);
                        return;
                    }
                }
            }
            RelayTransport::Udp => None,
        };
        r.state = State::Allocating;
        drive(r, now, clock, out);
    }

    pub(crate) fn stream_data(&mut self, now: Instant, conn: u64, data: &[u8], out: &mut NatOut) {
        let clock = self.clock(now);
        let Some(r) = self.relays.iter_mut().find(|r| r.conn == Some(conn)) else {
            return;
        };
        let Some(local) = r.local else {
            return;
        };
        if data.is_empty() {
            return;
        }
        // Plain TCP: a read usually starts with a message, so a refusal is seen as over UDP
        // (over TLS the client's own timeout reports it).
        if r.transport == RelayTransport::Tcp && note_error(r, data) {
            fail(r, now, refusal(r), out);
            return;
        }
        let Some(client) = r.client.as_mut() else {
            return;
        };
        let t = clock.to_turn(now);
        let transport = TransportType::Tcp;
        let server = r.server;
        // The TLS wrapper asserts on input it does not expect (`unreachable!`); a server's
        // bytes must not be able to panic the engine, so the call is fenced.
        let result = fenced(AssertUnwindSafe(|| {
            let mut got = Vec::new();
            match client.recv(Transmit::new(data, transport, server, local), t) {
                TurnRecvRet::PeerData(d) => got.push((d.peer, d.data().to_vec())),
                TurnRecvRet::Ignored(_) => debug!("TURN stream bytes ignored"),
                _ => {}
            }
            while let Some(d) = client.poll_recv(t) {
                got.push((d.peer, d.data().to_vec()));
            }
            got
        }));
        match result {
            Ok(got) => {
                if let State::Ready(relayed) = r.state {
                    for (peer, data) in got {
                        out.received(RelayedData {
                            peer,
                            relayed,
                            data,
                        });
                    }
                }
            }
            Err(_) => {
                fail(r, now, "the server's stream could not be read".into(), out);
                return;
            }
        }
        drive(r, now, clock, out);
    }

    pub(crate) fn stream_closed(&mut self, now: Instant, conn: u64, why: &str, out: &mut NatOut) {
        let Some(r) = self.relays.iter_mut().find(|r| r.conn == Some(conn)) else {
            return;
        };
        r.conn = None;
        r.client = None;
        if r.is_live() {
            let reason = match r.state {
                State::Connecting => format!("cannot connect: {why}"),
                _ => format!("connection lost: {why}"),
            };
            fail(r, now, reason, out);
        }
    }

    /// Install a permission for `peer` on every ready allocation, ahead of any data: the
    /// server drops what a peer sends to the relayed address until a permission for its IP
    /// exists, so a viewer's first checks (and its nomination) on a pair with our relayed
    /// candidate would otherwise be lost until we happen to send to that IP ourselves.
    pub(crate) fn permit(&mut self, now: Instant, peer: IpAddr, out: &mut NatOut) {
        let clock = self.clock(now);
        let t = clock.to_turn(now);
        for r in &mut self.relays {
            let State::Ready(relayed) = r.state else {
                continue;
            };
            if relayed.is_ipv4() != peer.is_ipv4()
                || r.retired.is_some()
                || r.permission_requested.contains(&peer)
                || r.permission_refused.contains(&peer)
                || r.permission_requested.len() >= MAX_PENDING
            {
                continue;
            }
            let Some(client) = r.client.as_mut() else {
                continue;
            };
            if client.have_permission(TransportType::Udp, peer) {
                continue;
            }
            match client.create_permission(TransportType::Udp, peer, t) {
                Ok(()) => {
                    debug!(uri = %r.uri, %peer, "TURN permission ahead of data");
                    r.permission_requested.push(peer);
                    drive(r, now, clock, out);
                }
                Err(e) => debug!(%peer, "permission: {e}"),
            }
        }
    }

    /// Send `data` from the relayed address to `peer`; held while the permission for the
    /// peer's address is being installed.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        out: &mut NatOut,
    ) {
        let clock = self.clock(now);
        let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| matches!(r.state, State::Ready(a) if a == relayed))
        else {
            debug!(%relayed, "send from a relayed address that is gone");
            return;
        };
        let t = clock.to_turn(now);
        let Some(client) = r.client.as_mut() else {
            return;
        };
        if !client.have_permission(TransportType::Udp, peer.ip()) {
            if !r.permission_requested.contains(&peer.ip())
                && r.permission_requested.len() < MAX_PENDING
            {
                match client.create_permission(TransportType::Udp, peer.ip(), t) {
                    Ok(()) => r.permission_requested.push(peer.ip()),
                    Err(e) => debug!(%peer, "permission: {e}"),
                }
            }
            if r.pending.len() >= MAX_PENDING {
                r.pending.pop_front();
            }
            r.pending.push_back((peer, data.to_vec()));
            drive(r, now, clock, out);
            return;
        }
        send_now(r, now, clock, peer, data, out);
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut NatOut) {
        let clock = self.clock(now);
        for r in &mut self.relays {
            if r.client.is_some() && r.wake.is_none_or(|w| w <= now) {
                drive(r, now, clock, out);
            }
        }
        // Released allocations whose client has finished go.
        self.relays
            .retain(|r| !(matches!(r.state, State::Released) && r.client.is_none()));
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        // Only deadlines still ahead: a relay held back past its wait is announced by the next
        // poll, and a past instant here would make drivers spin.
        let announce = self
            .relays
            .iter()
            .filter(|r| r.unannounced && matches!(r.state, State::Ready(_)))
            .filter_map(|r| r.ready_at.map(|t| t + ANNOUNCE_WAIT))
            .filter(|t| self.now.is_none_or(|now| *t > now));
        self.relays
            .iter()
            .filter_map(|r| r.wake)
            .chain(announce)
            .min()
    }
}

thread_local! {
    /// Set while a call into the TURN client crates runs inside [`fenced`].
    static FENCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, turning a panic inside it into an error. `turn-client-rustls` asserts
/// (`unreachable!`) on some server answers it does not expect (a second 401 over TLS); a
/// server's bytes must not take the engine down, nor print a panic report as if they had: the
/// panic hook stays quiet for panics inside the fence (they are logged as a relay failure).
fn fenced<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, ()> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FENCED.with(|f| f.get()) {
                debug!("TURN client panicked (fenced): {info}");
            } else {
                previous(info);
            }
        }));
    });
    FENCED.with(|f| f.set(true));
    let result = std::panic::catch_unwind(f).map_err(|_| ());
    FENCED.with(|f| f.set(false));
    result
}

/// Preference of a relay's transport: UDP, then TCP, then TLS.
fn rank(t: RelayTransport) -> u8 {
    match t {
        RelayTransport::Udp => 0,
        RelayTransport::Tcp => 1,
        RelayTransport::Tls => 2,
    }
}

fn turn_config(credentials: &TurnCredentials) -> TurnConfig {
    let mut config = TurnConfig::new(credentials.clone());
    config.set_request_retransmits(RTO_INITIAL, RTO_MAX, RTO_RESENDS, RTO_LAST);
    config
}

fn relay_candidate(r: &Relay, addr: SocketAddr) -> Option<Candidate> {
    // str0m wants the local address the allocation was made from; for TCP/TLS that is the
    // TCP socket's, which str0m never sends from (we send for it).
    let local = r.local.unwrap_or(addr);
    match Candidate::relayed(addr, local, "udp") {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(%addr, "relayed address unusable as a candidate: {e}");
            None
        }
    }
}

/// Remember the error code of a server's error answer (401 on the first Allocate is the
/// normal challenge; the code kept is the one seen last before a failure). True when the
/// server has now refused our credentials: a 401 to a second transaction while allocating
/// (the client would otherwise wait out its retransmissions on an answer it cannot
/// authenticate).
fn note_error(r: &mut Relay, data: &[u8]) -> bool {
    if data.first().is_none_or(|b| *b > 3) {
        return false;
    }
    let Ok(msg) = Message::from_bytes(data) else {
        return false;
    };
    let Ok(code) = msg.attribute::<ErrorCode>() else {
        return false;
    };
    r.last_error = Some(format!("{} {}", code.code(), code.reason()));
    if code.code() == 401 && matches!(r.state, State::Allocating) {
        let id = u128::from(msg.transaction_id());
        if !r.unauthorized.contains(&id) && r.unauthorized.len() < 4 {
            r.unauthorized.push(id);
        }
        return r.unauthorized.len() >= 2;
    }
    false
}

/// Why the server would not allocate, from its last error answer.
fn refusal(r: &Relay) -> String {
    match &r.last_error {
        Some(e) if e.starts_with("401") => format!("refused the credentials ({e})"),
        Some(e) => format!("refused the allocation ({e})"),
        None if r.transport == RelayTransport::Tls => {
            "no allocation: the TLS connection failed (is the certificate trusted? see \
             --turn-ca-file) or the server did not answer"
                .to_string()
        }
        None => "no allocation (no answer)".to_string(),
    }
}

fn fail(r: &mut Relay, now: Instant, reason: String, out: &mut NatOut) {
    let was = std::mem::replace(&mut r.state, State::Failed(now));
    warn!(uri = %r.uri, %reason, "TURN relay failed");
    if let State::Ready(addr) = was {
        r.lost = true;
        out.event(NatEvent::RelayLost { addr });
    }
    out.event(NatEvent::ServerError {
        uri: r.uri.clone(),
        reason,
    });
    if let Some(conn) = r.conn.take() {
        out.stream(StreamIo::Close { conn });
    }
    r.client = None;
    r.pending.clear();
    r.wake = None;
}

fn release(r: &mut Relay, now: Instant, clock: Clock, out: &mut NatOut) {
    if !r.is_live() {
        return;
    }
    info!(uri = %r.uri, "releasing TURN relay");
    if let State::Ready(addr) = r.state {
        out.event(NatEvent::RelayLost { addr });
    }
    r.state = State::Released;
    r.pending.clear();
    let deleting = r
        .client
        .as_mut()
        .is_some_and(|c| c.delete(clock.to_turn(now)).is_ok());
    match deleting {
        true => drive(r, now, clock, out),
        false => {
            r.client = None;
            if let Some(conn) = r.conn.take() {
                out.stream(StreamIo::Close { conn });
            }
        }
    }
}

fn send_now(
    r: &mut Relay,
    now: Instant,
    clock: Clock,
    peer: SocketAddr,
    data: &[u8],
    out: &mut NatOut,
) {
    let t = clock.to_turn(now);
    let Some(client) = r.client.as_mut() else {
        return;
    };
    if r.channels.len() < MAX_CHANNELS
        && !r.channels.contains(&peer)
        && r.transport == RelayTransport::Udp
    {
        // Channels only over UDP: over TCP/TLS the 32 bytes saved per packet matter less
        // than keeping the stream path simple.
        if client.bind_channel(TransportType::Udp, peer, t).is_ok() {
            r.channels.push(peer);
        }
    }
    match client.send_to(TransportType::Udp, peer, data, t) {
        Ok(Some(transmit)) => {
            let transmit = transmit.build();
            emit(r, transmit.from, transmit.to, transmit.data, out);
        }
        Ok(None) => {}
        Err(e) => debug!(%peer, "relayed send: {e}"),
    }
    drive(r, now, clock, out);
}

fn emit(r: &Relay, from: SocketAddr, to: SocketAddr, data: Vec<u8>, out: &mut NatOut) {
    match (r.transport, r.conn) {
        (RelayTransport::Udp, _) => out.datagram(NatDatagram {
            source: from,
            destination: to,
            data,
        }),
        (_, Some(conn)) => out.stream(StreamIo::Write { conn, data }),
        (_, None) => {}
    }
}

/// Run the client: its timers, what it wants sent, what happened.
fn drive(r: &mut Relay, now: Instant, clock: Clock, out: &mut NatOut) {
    let t = clock.to_turn(now);
    let mut events = Vec::new();
    let mut transmits = Vec::new();
    let mut closed = false;
    {
        let Some(client) = r.client.as_mut() else {
            r.wake = None;
            return;
        };
        // Poll until the client only has a wait left (as with str0m: drain after changes).
        for _ in 0..16 {
            match client.poll(t) {
                TurnPollRet::WaitUntil(w) => {
                    r.wake = Some(clock.std_instant(w).max(now));
                }
                TurnPollRet::Closed => {
                    closed = true;
                    r.wake = None;
                }
                TurnPollRet::TcpClose { .. } | TurnPollRet::AllocateTcpSocket { .. } => {
                    continue;
                }
            }
            while let Some(tx) = client.poll_transmit(t) {
                transmits.push((tx.from, tx.to, tx.data.as_ref().to_vec()));
            }
            while let Some(e) = client.poll_event() {
                events.push(e);
            }
            break;
        }
    }
    for (from, to, data) in transmits {
        emit(r, from, to, data, out);
    }
    for e in events {
        on_event(r, now, clock, e, out);
    }
    if closed {
        r.client = None;
        match r.state {
            State::Released => {
                if let Some(conn) = r.conn.take() {
                    out.stream(StreamIo::Close { conn });
                }
            }
            State::Failed(_) => {}
            _ => {
                let reason = refusal(r);
                fail(r, now, reason, out);
            }
        }
    }
}

fn on_event(r: &mut Relay, now: Instant, clock: Clock, e: TurnEvent, out: &mut NatOut) {
    match e {
        TurnEvent::AllocationCreated(_, addr) => {
            if !matches!(r.state, State::Allocating) {
                return;
            }
            info!(uri = %r.uri, relayed = %addr, "TURN relay allocated");
            r.state = State::Ready(addr);
            r.unannounced = true;
            r.ready_at = Some(now);
        }
        TurnEvent::AllocationCreateFailed(_) => {
            if matches!(r.state, State::Allocating) {
                let reason = refusal(r);
                fail(r, now, reason, out);
            }
        }
        TurnEvent::PermissionCreated(_, ip) => {
            r.permission_requested.retain(|p| *p != ip);
            let (ready, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut r.pending)
                .into_iter()
                .partition(|(peer, _)| peer.ip() == ip);
            r.pending = rest;
            for (peer, data) in ready {
                send_now(r, now, clock, peer, &data, out);
            }
        }
        TurnEvent::PermissionCreateFailed(_, ip) => {
            debug!(uri = %r.uri, %ip, "TURN permission refused");
            r.permission_requested.retain(|p| *p != ip);
            if !r.permission_refused.contains(&ip) && r.permission_refused.len() < MAX_PENDING {
                r.permission_refused.push(ip);
            }
            r.pending.retain(|(peer, _)| peer.ip() != ip);
        }
        TurnEvent::ChannelCreateFailed(_, peer) => {
            r.channels.retain(|p| *p != peer);
        }
        _ => {}
    }
}
