//! NAT traversal for the device: server-reflexive candidates (STUN Binding) and relayed
//! candidates (TURN over UDP, TCP and TLS), sans-IO.
//!
//! Owns: the ICE-server URIs (`stun:`, `turn:`, `turns:`), the Binding probes that learn each
//! host socket's public address ([`srflx`]), and the TURN allocations that relay sessions'
//! traffic ([`relay`]). [`NatCore`] takes datagrams and stream bytes with the time, and hands
//! back what to send, candidates as they become ready, and errors worth telling a user
//! (a TURN server that refuses our credentials). STUN and TURN messages are coded by the
//! `stun-types`/`turn-client-proto` crates; nothing here writes a STUN header by hand.
//!
//! Must not touch: sockets, DNS, clocks, str0m sessions. The peer core ([`crate::core`]) adds
//! the candidates to sessions and passes relayed data in and out of them; the engine
//! ([`crate::engine`]) owns the sockets and TCP connections and resolves server names.
//!
//! Allocations are shared by every session: one per TURN URI (capped by
//! [`NatPolicy::max_turn_allocations`]), made when the first session starts and released when
//! the last session has been gone for [`RELAY_LINGER`]. A relayed candidate is then an address
//! like a host socket's: str0m routes what arrives on it by ICE credentials and source, the
//! same way several sessions share one UDP socket. The cost is one allocation per server
//! whatever the number of viewers (a TURN server counts allocations; KVS bills relayed
//! minutes, not allocations), and later viewers find the relay ready instead of waiting two
//! round trips for it.

pub mod relay;
pub mod srflx;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use relay::RelayTransport;
use str0m::Candidate;
use tracing::{info, warn};

/// How long allocations are kept after the last session ended, for a viewer that comes
/// straight back (a page reload).
pub const RELAY_LINGER: Duration = Duration::from_secs(10);

/// What kind of server a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Stun,
    Turn(RelayTransport),
}

/// A parsed `stun:` / `turn:` / `turns:` URI (RFC 7064 / 7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUri {
    pub kind: ServerKind,
    pub host: String,
    pub port: u16,
}

/// Why a URI cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("{0}: not a stun:, turn: or turns: URI")]
    Scheme(String),
    #[error("{0}: no host")]
    NoHost(String),
    #[error("{0}: bad port")]
    Port(String),
    #[error("{0}: unsupported transport (udp or tcp; turns: only over tcp)")]
    Transport(String),
}

impl IceUri {
    /// Parse `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` or
    /// `turns:host[:port][?transport=tcp]`; IPv6 literals in brackets. Default ports: 3478,
    /// and 5349 for `turns:`.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let err = |f: fn(String) -> UriError| f(uri.to_string());
        let (scheme, rest) = uri.split_once(':').ok_or_else(|| err(UriError::Scheme))?;
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => None,
            Some(q) => match q.strip_prefix("transport=") {
                Some(t) if t.eq_ignore_ascii_case("udp") => Some(RelayTransport::Udp),
                Some(t) if t.eq_ignore_ascii_case("tcp") => Some(RelayTransport::Tcp),
                _ => return Err(err(UriError::Transport)),
            },
        };
        let (kind, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "stun" if query.is_none() => (ServerKind::Stun, 3478),
            "turn" => (
                ServerKind::Turn(transport.unwrap_or(RelayTransport::Udp)),
                3478,
            ),
            "turns" => match transport {
                None | Some(RelayTransport::Tcp) => (ServerKind::Turn(RelayTransport::Tls), 5349),
                _ => return Err(err(UriError::Transport)),
            },
            "stun" => return Err(err(UriError::Transport)),
            _ => return Err(err(UriError::Scheme)),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| err(UriError::NoHost))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err(UriError::Port))?,
                None if after.is_empty() => default_port,
                None => return Err(err(UriError::Port)),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err(UriError::Port))?),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(err(UriError::NoHost));
        }
        if port == 0 {
            return Err(err(UriError::Port));
        }
        Ok(IceUri { kind, host, port })
    }
}

/// A STUN or TURN server whose name the driver has resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct NatServer {
    /// The URI as given (for messages: it holds no secret).
    pub uri: String,
    pub kind: ServerKind,
    pub addr: SocketAddr,
    /// The host name, for the TLS server name of `turns:`.
    pub host: String,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl std::fmt::Debug for NatServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatServer")
            .field("uri", &self.uri)
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A URI from the server list, parsed, its host not resolved yet.
#[derive(Clone)]
pub struct UnresolvedServer {
    pub uri: String,
    pub parsed: IceUri,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl std::fmt::Debug for UnresolvedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnresolvedServer")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl UnresolvedServer {
    /// The server at `addr` (a resolved address of its host).
    pub fn at(&self, addr: SocketAddr) -> NatServer {
        NatServer {
            uri: self.uri.clone(),
            kind: self.parsed.kind,
            addr,
            host: self.parsed.host.clone(),
            username: self.username.clone(),
            credential: self.credential.clone(),
        }
    }

    /// The server, when its host is an IP address (no lookup needed).
    pub fn literal(&self) -> Option<NatServer> {
        let ip: std::net::IpAddr = self.parsed.host.parse().ok()?;
        Some(self.at(SocketAddr::new(ip, self.parsed.port)))
    }
}

/// Every URI of `servers`, parsed; the ones that cannot be used come back as errors.
pub fn parse_ice_servers(
    servers: &[crate::api::IceServer],
) -> (Vec<UnresolvedServer>, Vec<UriError>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for server in servers {
        for uri in &server.urls {
            match IceUri::parse(uri.trim()) {
                Ok(parsed) => ok.push(UnresolvedServer {
                    uri: uri.trim().to_string(),
                    parsed,
                    username: server.username.clone(),
                    credential: server.credential.clone(),
                }),
                Err(e) => bad.push(e),
            }
        }
    }
    (ok, bad)
}

/// What the device does about NAT (see the README's "Behind NAT").
#[derive(Debug, Clone)]
pub struct NatPolicy {
    /// STUN servers of our own (`stun:host[:port]`), used besides the servers signaling
    /// hands out.
    pub stun_urls: Vec<String>,
    /// Learn each socket's public address from the STUN servers (and from the UDP TURN
    /// servers, which answer Binding requests too).
    pub use_stun: bool,
    /// Allocate relayed candidates on the TURN servers signaling hands out.
    pub use_turn: bool,
    /// Offer relayed candidates only (ICE transport policy "relay"): the viewer never learns
    /// the device's addresses.
    pub relay_only: bool,
    /// Most TURN allocations at once (one per TURN URI, shared by all sessions).
    pub max_turn_allocations: usize,
    /// A session that has heard nothing from its viewer this long (or whose ICE reports the
    /// path lost as long) is restarted by the device: a new offer with new ICE credentials,
    /// sent to the viewer. None: leave it to the viewer.
    pub ice_restart_after: Option<Duration>,
    /// TLS for `turns:` servers; none: TLS TURN servers are skipped.
    pub turn_tls: Option<Arc<turn_client_rustls::rustls::ClientConfig>>,
}

impl Default for NatPolicy {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            use_stun: true,
            use_turn: true,
            relay_only: false,
            max_turn_allocations: 6,
            ice_restart_after: Some(Duration::from_millis(2000)),
            turn_tls: None,
        }
    }
}

/// A byte-stream connection the core asks the driver to handle (TURN over TCP or TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamIo {
    /// Open a TCP connection to `server`; report it with [`NatCore::stream_connected`] or
    /// [`NatCore::stream_closed`].
    Connect { conn: u64, server: SocketAddr },
    /// Write these bytes, in order.
    Write { conn: u64, data: Vec<u8> },
    /// Close the connection.
    Close { conn: u64 },
}

/// What the NAT core tells the peer core.
#[derive(Debug, Clone, PartialEq)]
pub enum NatEvent {
    /// A candidate to add to every session (and to offer to new ones).
    Candidate { candidate: Candidate, from: String },
    /// A relayed address is gone (allocation failed later, expired or released).
    RelayLost { addr: SocketAddr },
    /// A server failed in a way a user should hear about.
    ServerError { uri: String, reason: String },
}

/// A datagram to send from one of our UDP sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatDatagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

/// Data a peer sent to one of our relayed addresses, unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedData {
    pub peer: SocketAddr,
    pub relayed: SocketAddr,
    pub data: Vec<u8>,
}

/// Everything the gathering side produces, shared by [`srflx`] and [`relay`].
#[derive(Debug, Default)]
pub(crate) struct NatOut {
    pub datagrams: VecDeque<NatDatagram>,
    pub streams: VecDeque<StreamIo>,
    pub events: VecDeque<NatEvent>,
    pub received: VecDeque<RelayedData>,
}

/// Most outputs of each kind held before the oldest are dropped (the peer core drains them
/// after every input, so this only bounds a misbehaving server's flood).
const MAX_NAT_OUT: usize = 4096;

impl NatOut {
    fn bounded<T>(q: &mut VecDeque<T>, v: T) {
        if q.len() >= MAX_NAT_OUT {
            q.pop_front();
        }
        q.push_back(v);
    }
    pub(crate) fn datagram(&mut self, d: NatDatagram) {
        Self::bounded(&mut self.datagrams, d);
    }
    pub(crate) fn stream(&mut self, s: StreamIo) {
        // Not bounded here: stream I/O is drained by the driver after every input, and it is
        // the driver's per-connection write queue that is bounded (a connection that falls
        // behind is closed, its relay failed) — dropping a write here would corrupt the stream.
        self.streams.push_back(s);
    }
    pub(crate) fn event(&mut self, e: NatEvent) {
        Self::bounded(&mut self.events, e);
    }
    pub(crate) fn received(&mut self, r: RelayedData) {
        Self::bounded(&mut self.received, r);
    }
}

/// Gathering for every session of the device: the srflx probes and the shared allocations.
pub struct NatCore {
    policy: NatPolicy,
    host_addrs: Vec<SocketAddr>,
    servers: Vec<NatServer>,
    srflx: srflx::SrflxGatherer,
    relays: relay::RelayPool,
    /// Sessions alive, and when the last one ended.
    sessions: usize,
    idle_since: Option<Instant>,
    out: NatOut,
}

impl NatCore {
    pub fn new(policy: NatPolicy, host_addrs: Vec<SocketAddr>) -> Self {
        let max = policy.max_turn_allocations;
        let tls = policy.turn_tls.clone();
        Self {
            policy,
            host_addrs,
            servers: Vec::new(),
            srflx: srflx::SrflxGatherer::default(),
            relays: relay::RelayPool::new(max, tls),
            sessions: 0,
            idle_since: None,
            out: NatOut::default(),
        }
    }

    pub fn policy(&self) -> &NatPolicy {
        &self.policy
    }

    /// New servers (the ICE-server refresh, or the first list). Probes start at once;
    /// allocations on the new servers are made for the next session, and the old ones serve
    /// the sessions that use them until those end.
    pub fn set_servers(&mut self, now: Instant, servers: Vec<NatServer>) {
        if servers == self.servers {
            return;
        }
        info!(count = servers.len(), "ICE servers for gathering");
        self.servers = servers;
        if self.probes_srflx() {
            // UDP TURN servers answer Binding requests too.
            let stun = self
                .servers
                .iter()
                .filter(|s| {
                    matches!(
                        s.kind,
                        ServerKind::Stun | ServerKind::Turn(RelayTransport::Udp)
                    )
                })
                .map(|s| (s.addr, s.uri.clone()))
                .collect();
            self.srflx.start(now, &self.host_addrs, stun, &mut self.out);
        }
        self.relays.retire_missing(now, &self.servers);
        if self.sessions > 0 {
            self.allocate(now);
        }
    }

    /// Server-reflexive candidates are gathered (relay-only offers none).
    fn probes_srflx(&self) -> bool {
        self.policy.use_stun && !self.policy.relay_only
    }

    /// Learn the public addresses again (a session's path broke: the NAT may have changed).
    pub fn regather(&mut self, now: Instant) {
        if self.probes_srflx() {
            self.srflx.restart(now, &mut self.out);
        }
    }

    /// How many sessions exist: the first one makes the allocations; when none is left
    /// they are released after [`RELAY_LINGER`].
    pub fn set_sessions(&mut self, now: Instant, count: usize) {
        if count > 0 && self.sessions == 0 {
            self.idle_since = None;
            self.allocate(now);
        } else if count == 0 && self.sessions > 0 {
            self.idle_since = Some(now);
        }
        self.sessions = count;
    }

    fn allocate(&mut self, now: Instant) {
        if !self.policy.use_turn {
            return;
        }
        for server in &self.servers {
            let ServerKind::Turn(transport) = server.kind else {
                continue;
            };
            let (Some(user), Some(pass)) = (&server.username, &server.credential) else {
                warn!(uri = %server.uri, "TURN server without credentials; skipped");
                continue;
            };
            let local = match transport {
                RelayTransport::Udp => self
                    .host_addrs
                    .iter()
                    .find(|a| {
                        a.is_ipv4() == server.addr.is_ipv4() && !a.ip().is_loopback()
                            || a.ip().is_loopback() && server.addr.ip().is_loopback()
                    })
                    .copied(),
                _ => None,
            };
            if transport == RelayTransport::Udp && local.is_none() {
                continue;
            }
            self.relays
                .ensure(now, server, user, pass, local, &mut self.out);
        }
    }

    /// Release the allocations of servers no longer listed that no session's media path uses
    /// any more (`in_use`: is this local address one of the sessions' paths?).
    pub fn release_unused(&mut self, now: Instant, in_use: impl Fn(SocketAddr) -> bool) {
        self.relays
            .release_unused_retired(now, in_use, &mut self.out);
    }

    /// Candidates ready now (srflx of every socket, relayed addresses of live allocations).
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut v = Vec::new();
        if !self.policy.relay_only {
            v.extend(self.srflx.candidates());
        }
        v.extend(self.relays.candidates());
        v
    }

    /// Whether the probes and allocations started so far have all finished.
    pub fn gathering_done(&self) -> bool {
        self.srflx.done() && self.relays.done()
    }

    /// Is `addr` one of our relayed addresses (str0m sends "from" it)?
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relays.relay_transport(addr).is_some()
    }

    /// The transport carrying a relayed address (for reports).
    pub fn relay_transport(&self, addr: SocketAddr) -> Option<RelayTransport> {
        self.relays.relay_transport(addr)
    }

    /// A UDP datagram for one of our sockets: consumed (true) when it is a STUN answer to a
    /// probe or traffic from a TURN server we allocated on.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        if self
            .srflx
            .handle(now, source, destination, data, &mut self.out)
        {
            return true;
        }
        self.relays
            .handle_datagram(now, source, destination, data, &mut self.out)
    }

    /// A remote peer's address became known (a viewer's candidate): let it reach our
    /// relayed addresses at once (TURN permissions are per IP).
    pub fn permit(&mut self, now: Instant, peer: std::net::IpAddr) {
        if self.policy.use_turn {
            self.relays.permit(now, peer, &mut self.out);
        }
    }

    /// Send `data` from relayed address `relayed` to `peer`.
    pub fn send_relayed(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        self.relays.send(now, relayed, peer, data, &mut self.out);
    }

    /// A TCP connection asked for with [`StreamIo::Connect`] is up.
    pub fn stream_connected(&mut self, now: Instant, conn: u64, local: SocketAddr) {
        self.relays
            .stream_connected(now, conn, local, &mut self.out);
    }

    /// Bytes read from a TCP connection.
    pub fn stream_data(&mut self, now: Instant, conn: u64, data: &[u8]) {
        self.relays.stream_data(now, conn, data, &mut self.out);
    }

    /// A TCP connection failed to connect, or closed.
    pub fn stream_closed(&mut self, now: Instant, conn: u64, why: &str) {
        self.relays.stream_closed(now, conn, why, &mut self.out);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.srflx.handle_timeout(now, &mut self.out);
        if self.sessions > 0 {
            // A relay lost while sessions need it is made again (with the newest credentials).
            self.allocate(now);
        }
        if let Some(since) = self.idle_since {
            if now.saturating_duration_since(since) >= RELAY_LINGER {
                self.idle_since = None;
                self.relays.release_all(now, &mut self.out);
            }
        }
        self.relays.handle_timeout(now, &mut self.out);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let linger = self.idle_since.map(|t| t + RELAY_LINGER);
        [
            self.srflx.poll_timeout(),
            self.relays.poll_timeout(),
            linger,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_datagram(&mut self) -> Option<NatDatagram> {
        self.out.datagrams.pop_front()
    }

    pub fn poll_stream(&mut self) -> Option<StreamIo> {
        self.out.streams.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NatEvent> {
        // Relays allocated since the last poll are announced here, in transport order.
        self.relays.announce(&mut self.out);
        self.out.events.pop_front()
    }

    pub fn poll_received(&mut self) -> Option<RelayedData> {
        self.out.received.pop_front()
    }

    /// Allocations alive (for tests and stats).
    pub fn allocation_count(&self) -> usize {
        self.relays.live_count()
    }
}

/// `turn-client-proto` keeps its own time type (nanoseconds since an origin); ours are
/// `std::time::Instant`s. The first instant seen is the origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new(origin: Instant) -> Self {
        Self { origin }
    }
    pub(crate) fn to_turn(self, t: Instant) -> turn_client_proto::types::Instant {
        let nanos = t.saturating_duration_since(self.origin).as_nanos();
        turn_client_proto::types::Instant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
    pub(crate) fn std_instant(self, t: turn_client_proto::types::Instant) -> Instant {
        let since = t.saturating_duration_since(turn_client_proto::types::Instant::from_nanos(0));
        self.origin + since
    }
}
