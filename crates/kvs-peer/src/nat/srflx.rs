//! Server-reflexive candidates: a STUN Binding request from every host socket to every STUN
//! server (RFC 8489), retransmitted on a fixed schedule, the XOR-MAPPED-ADDRESS of the answer
//! becoming a candidate whose base is the socket.
//!
//! The probes are per socket, not per session: every session shares the sockets, so one
//! answer serves all of them. A mapping equal to the socket's own address (no NAT) gives no
//! candidate; different mappings from different servers (a symmetric NAT) each give one.

use super::{NatDatagram, NatEvent, NatOut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::Candidate;
use tracing::{debug, info};
use turn_client_proto::stun::types::attribute::XorMappedAddress;
use turn_client_proto::stun::types::message::{
    Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec, TransactionId, BINDING,
};

/// When each (re)transmission goes, from the start of the probe; past the last one the
/// server is given up on. 5.75 s in all, so a silent server does not hold gathering long.
const SCHEDULE: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(1750),
    Duration::from_millis(3750),
];
const GIVE_UP: Duration = Duration::from_millis(5750);
/// Mappings remembered (the newest kept).
const MAX_FOUND: usize = 16;
/// Probes held at once (sockets × servers).
const MAX_PROBES: usize = 64;

#[derive(Debug)]
enum ProbeState {
    /// Waiting for an answer; the next entry of [`SCHEDULE`] to send.
    Waiting {
        sent: usize,
    },
    Done,
}

#[derive(Debug)]
struct Probe {
    base: SocketAddr,
    server: SocketAddr,
    uri: String,
    transaction: TransactionId,
    request: Vec<u8>,
    started: Instant,
    state: ProbeState,
}

/// Every host socket's public addresses, as the STUN servers see them.
#[derive(Debug, Default)]
pub struct SrflxGatherer {
    hosts: Vec<SocketAddr>,
    servers: Vec<(SocketAddr, String)>,
    probes: Vec<Probe>,
    /// (base, mapped) pairs learned.
    found: Vec<(SocketAddr, SocketAddr)>,
}

impl SrflxGatherer {
    /// Probe `servers` from every host socket that can reach them (same address family;
    /// loopback sockets only towards loopback servers).
    pub(crate) fn start(
        &mut self,
        now: Instant,
        hosts: &[SocketAddr],
        servers: Vec<(SocketAddr, String)>,
        out: &mut NatOut,
    ) {
        self.hosts = hosts.to_vec();
        self.servers = servers;
        self.servers.dedup_by_key(|(a, _)| *a);
        self.restart(now, out);
    }

    /// Probe again (kept mappings stay; new ones become new candidates).
    pub(crate) fn restart(&mut self, now: Instant, out: &mut NatOut) {
        self.probes.clear();
        for base in &self.hosts {
            for (server, uri) in &self.servers {
                if base.is_ipv4() != server.is_ipv4()
                    || base.ip().is_loopback() != server.ip().is_loopback()
                {
                    continue;
                }
                if self.probes.len() >= MAX_PROBES {
                    break;
                }
                let msg = Message::builder_request(BINDING, MessageWriteVec::new());
                let transaction = msg.transaction_id();
                self.probes.push(Probe {
                    base: *base,
                    server: *server,
                    uri: uri.clone(),
                    transaction,
                    request: msg.finish(),
                    started: now,
                    state: ProbeState::Waiting { sent: 0 },
                });
            }
        }
        self.handle_timeout(now, out);
    }

    /// A datagram from the network: consumed when it answers one of our probes.
    pub(crate) fn handle(
        &mut self,
        _now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        out: &mut NatOut,
    ) -> bool {
        // STUN messages start with two zero bits; the cheap test first.
        if data.len() < 20 || data[0] > 3 {
            return false;
        }
        if !self
            .probes
            .iter()
            .any(|p| p.server == source && p.base == destination)
        {
            return false;
        }
        let Ok(msg) = Message::from_bytes(data) else {
            return false;
        };
        let transaction = msg.transaction_id();
        let Some(probe) = self
            .probes
            .iter_mut()
            .find(|p| p.server == source && p.base == destination && p.transaction == transaction)
        else {
            // A late answer to an earlier round, or the server's own traffic: not for str0m.
            return msg.has_method(BINDING) && msg.is_response();
        };
        if !msg.has_class(MessageClass::Success) || msg.method() != BINDING {
            debug!(server = %source, "STUN Binding refused");
            probe.state = ProbeState::Done;
            return true;
        }
        let Ok(mapped) = msg.attribute::<XorMappedAddress>() else {
            probe.state = ProbeState::Done;
            return true;
        };
        let mapped = mapped.addr(msg.transaction_id());
        probe.state = ProbeState::Done;
        let base = probe.base;
        let uri = probe.uri.clone();
        if mapped == base || self.found.contains(&(base, mapped)) {
            return true;
        }
        match Candidate::server_reflexive(mapped, base, "udp") {
            Ok(candidate) => {
                info!(%base, %mapped, %uri, "server-reflexive address");
                if self.found.len() >= MAX_FOUND {
                    // A NAT that keeps remapping (a symmetric one, re-probed at every ICE
                    // restart) must not grow the list every new session is given.
                    self.found.remove(0);
                }
                self.found.push((base, mapped));
                out.event(NatEvent::Candidate {
                    candidate,
                    from: uri,
                });
            }
            Err(e) => debug!(%mapped, "unusable mapped address: {e}"),
        }
        true
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut NatOut) {
        for p in &mut self.probes {
            let ProbeState::Waiting { sent } = &mut p.state else {
                continue;
            };
            if now.saturating_duration_since(p.started) >= GIVE_UP {
                debug!(server = %p.server, "no answer to STUN Binding");
                p.state = ProbeState::Done;
                continue;
            }
            while *sent < SCHEDULE.len() && p.started + SCHEDULE[*sent] <= now {
                *sent += 1;
                out.datagram(NatDatagram {
                    source: p.base,
                    destination: p.server,
                    data: p.request.clone(),
                });
            }
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.probes
            .iter()
            .filter_map(|p| match p.state {
                ProbeState::Waiting { sent } => Some(
                    SCHEDULE
                        .get(sent)
                        .map_or(p.started + GIVE_UP, |d| p.started + *d),
                ),
                ProbeState::Done => None,
            })
            .min()
    }

    pub(crate) fn candidates(&self) -> impl Iterator<Item = Candidate> + '_ {
        self.found
            .iter()
            .filter_map(|(base, mapped)| Candidate::server_reflexive(*mapped, *base, "udp").ok())
    }

    pub(crate) fn done(&self) -> bool {
        self.probes
            .iter()
            .all(|p| matches!(p.state, ProbeState::Done))
    }
}
