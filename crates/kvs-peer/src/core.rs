//! The sans-IO core: every session's str0m [`Rtc`], the fan-out state, pending candidates.
//!
//! Inputs come with the time (`now`); outputs are pulled: [`PeerCore::poll_transmit`],
//! [`PeerCore::poll_event`], [`PeerCore::poll_timeout`]. No sockets, no clocks, no tasks —
//! the tokio driver in [`crate::engine`] owns those.
//!
//! Rules kept here (the str0m traps): after every change to an `Rtc` its output is drained
//! until `Output::Timeout`; `is_alive()` is checked after every drain (a remote close only
//! shows there); data channel writes refused for a full buffer stay queued (bounded) and are
//! retried; nothing is written before the session is connected, and video starts with a
//! keyframe (see [`kvs_media::fanout`]).
//!
//! Media goes out in str0m's RTP mode: each frame is cut into RTP payloads once
//! ([`kvs_media::rtp`]) and every session writes the same reference-counted payloads with its
//! own SSRC, sequence numbers and SRTP. So a viewer's resend buffer holds handles to the one
//! shared copy, not a private copy of every packet, and the frame is not re-cut per viewer.
//! The resend buffer keeps [`PeerConfig::resend_window`] of packets (capped by
//! [`PeerConfig::send_buffer_video_packets`]). Transport-wide congestion control is not
//! negotiated: nothing here adapts the bitrate to it yet, and str0m's record of every sent
//! packet for it costs ~88 KB per viewer. [`PeerConfig::congestion_control`] turns it on
//! ([`crate::congestion`]): each session then reports its estimate.

use crate::api::{
    Datagram, PeerCommand, PeerConfig, PeerError, PeerEvent, SelectedPath, SessionStats,
    SessionTiming,
};
use crate::candidate::{parse_candidate, ParsedCandidate};
use crate::drain::{drain, DrainPolicy, DrainTarget};
use crate::nat::{NatCore, NatEvent, NatServer, RelayTransport, RelayedData, StreamIo};
use bytes::Bytes;
use kvs_media::fanout::{FanoutKind, PushOutcome, Subscriber};
use kvs_media::receive::{RxItem, RxMedia, RxPacket};
use kvs_media::rtp::{PacketizedFrame, DEFAULT_MAX_PAYLOAD};
use kvs_media::talkback::TalkPacket;
use kvs_platform::{AudioCodec, EncodedFrame, VideoCodec};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, RtpWrite};
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, Input, Rtc, RtcConfig};
use tracing::{debug, info, warn};

/// Remote candidates held per peer before its offer arrives.
const MAX_PENDING_CANDIDATES_PER_PEER: usize = 32;
/// Peers with held candidates.
const MAX_PENDING_PEERS: usize = 64;
/// Remote candidate addresses remembered per session, to name the type of the path in use.
const MAX_REMOTE_KINDS: usize = 32;
/// Rounds of passing data between the sessions and the relays after one input.
const NAT_ROUNDS: usize = 8;
/// Largest data channel message we send (str0m's default SCTP send buffer: a larger one
/// would never be accepted).
pub const MAX_DATA_MESSAGE: usize = 128 * 1024;
/// Data channel messages queued per session.
const MAX_DATA_QUEUE: usize = 64;
/// Bytes we let wait inside SCTP (unsent or unacknowledged) before holding further messages
/// in our own queue. SCTP (sctp-proto, under str0m) walks every message in flight each time
/// it is polled, so its cost grows with what it holds: measured on loopback, 32 KiB echoes
/// ~1.5× the throughput of str0m's 128 KiB limit. A message larger than this still goes
/// (alone), up to [`MAX_DATA_MESSAGE`].
pub const DATA_SOFT_BUFFERED: usize = 32 * 1024;
/// Source-address → session cache entries.
const MAX_ADDR_CACHE: usize = 4096;
/// Events held in the core before the driver takes them (bounded by sessions × a few).
const MAX_CORE_EVENTS: usize = 4096;
/// Viewers' audio packets held before the driver takes them (~1 s of ten talkers at 20 ms);
/// the oldest are dropped beyond.
const MAX_TALK_PACKETS: usize = 512;
/// Viewers' media packets (with `receive_media`) held before the driver takes them (~1 s of a
/// 3 Mbit/s camera); the oldest are dropped beyond.
const MAX_RX_PACKETS: usize = 1024;
/// Wake at least this often (timeouts for connect, candidates).
const MAX_IDLE: Duration = Duration::from_secs(1);
/// DTLS datagrams no session accepts yet, held for a retry (see [`PeerCore::handle_datagram`]).
const MAX_HELD_DATAGRAMS: usize = 16;
const HELD_DATAGRAM_TTL: Duration = Duration::from_millis(500);

/// str0m's cap on resends relative to sends (its default): past it, queued resends are
/// dropped rather than let retransmissions crowd out fresh media.
const RTX_RATIO_CAP: f32 = 0.15;

/// A frame cut into RTP payloads, queued (as a handle) by every session.
type SharedFrame = Arc<PacketizedFrame>;

/// Builds the `RtcConfig` every session uses.
pub fn rtc_config(config: &PeerConfig, cert: Option<DtlsCert>) -> RtcConfig {
    // Idempotent: the first installed provider stays.
    str0m::crypto::from_feature_flags().install_process_default();
    let mut rc = RtcConfig::new()
        .clear_codecs()
        .set_rtp_mode(true)
        .set_send_buffer_video(config.send_buffer_video_packets())
        .set_send_buffer_audio(config.send_buffer_audio_packets())
        .clear_extension_map();
    // str0m's standard header extensions (Chrome's ids) without transport-wide sequence
    // numbers; see the module doc.
    for (id, ext) in [
        (1, Extension::AudioLevel),
        (2, Extension::AbsoluteSendTime),
        (4, Extension::RtpMid),
        (10, Extension::RtpStreamId),
        (11, Extension::RepairedRtpStreamId),
        (13, Extension::VideoOrientation),
    ] {
        rc = rc.set_extension(id, ext);
    }
    if let Some(cc) = &config.congestion_control {
        rc = cc.configure(rc);
    }
    if let Some(cert) = cert {
        rc = rc.set_dtls_cert(cert);
    }
    // The source's codec; a device that only receives declares H.264 (what the receive path
    // depacketizes and records).
    let video = config
        .video
        .or(config.receive_media.then_some(VideoCodec::H264));
    if let Some(codec) = video {
        crate::codecs::declare_video(rc.codec_config(), codec);
    }
    // One codec list per m-line: the codecs sent, then those only taken from viewers.
    for codec in config.negotiable_audio_codecs() {
        rc = match codec {
            AudioCodec::Opus => rc.enable_opus(true, false),
            AudioCodec::Pcmu => rc.enable_pcmu(true, false),
            AudioCodec::Pcma => rc.enable_pcma(true, false),
        };
    }
    rc
}

fn str0m_codec(codec: AudioCodec) -> Codec {
    match codec {
        AudioCodec::Opus => Codec::Opus,
        AudioCodec::Pcmu => Codec::PCMU,
        AudioCodec::Pcma => Codec::PCMA,
    }
}

fn audio_codec_of(codec: Codec) -> Option<AudioCodec> {
    match codec {
        Codec::Opus => Some(AudioCodec::Opus),
        Codec::PCMU => Some(AudioCodec::Pcmu),
        Codec::PCMA => Some(AudioCodec::Pcma),
        _ => None,
    }
}

/// A datagram that arrived before any session would take it.
struct HeldDatagram {
    received: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

/// RFC 7983 demultiplexing: DTLS records start with a byte in 20..=63.
pub(crate) fn is_dtls(data: &[u8]) -> bool {
    matches!(data.first(), Some(20..=63))
}

#[derive(Debug)]
struct PendingCandidate {
    received: Instant,
    candidate: String,
}

struct Session {
    peer_id: String,
    rtc: Rtc,
    started: Instant,
    /// Our offer waiting for the remote answer.
    pending_offer: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    video_pt: Option<Pt>,
    audio_pt: Option<Pt>,
    /// The codec of `audio_pt`.
    audio_codec: Option<AudioCodec>,
    video: Subscriber<SharedFrame>,
    audio: Subscriber<SharedFrame>,
    /// Next RTP sequence numbers (extended; started below 2^15 so the rollover counter is 0).
    video_seq: u64,
    audio_seq: u64,
    /// The video stream's resend buffer has been sized (after each negotiation).
    video_rtx_sized: bool,
    channel: Option<ChannelId>,
    data_out: VecDeque<(Bytes, bool)>,
    connected: bool,
    disconnected_since: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    keyframe_request_pending: bool,
    first_keyframe_sent: bool,
    timing: SessionTiming,
    stats: SessionStats,
    failure: Option<String>,
    next_timeout: Instant,
    /// The mid candidates are trickled with (the first m-line's).
    sdp_mid: Option<String>,
    /// The candidate pair media last went out on.
    path: Option<(SocketAddr, SocketAddr)>,
    /// Types of the remote candidates we were told about, by address.
    remote_kinds: Vec<(SocketAddr, &'static str)>,
    /// The viewer's ICE username fragment (a new one in an offer is an ICE restart).
    remote_ufrag: Option<String>,
    /// The viewer's candidates, kept from ICE until the viewer has our answer (see
    /// [`REMOTE_CANDIDATE_HOLD`]).
    held_remote: Option<HeldRemote>,
    /// When the device last offered an ICE restart for the current loss of connectivity.
    restart_at: Option<Instant>,
    /// When the last datagram from the viewer arrived on the path media takes (RTCP, STUN,
    /// media, data): checks arriving on other pairs do not count, they say nothing about it.
    last_received: Instant,
    /// Gathering was still running when the session started: GatheringComplete is owed.
    gathering_pending: bool,
    /// Rate limit of the bandwidth estimates reported (congestion control on).
    estimates: crate::congestion::EstimateGate,
}

impl Session {
    fn new(peer_id: String, rtc: Rtc, now: Instant, config: &PeerConfig) -> Self {
        Self {
            peer_id,
            rtc,
            started: now,
            pending_offer: None,
            video_mid: None,
            audio_mid: None,
            video_pt: None,
            audio_pt: None,
            audio_codec: None,
            video: Subscriber::with_capacity(FanoutKind::Video, config.video_queue_frames),
            audio: Subscriber::with_capacity(FanoutKind::Audio, config.audio_queue_frames),
            video_seq: u64::from(rand::random::<u16>() >> 1),
            audio_seq: u64::from(rand::random::<u16>() >> 1),
            video_rtx_sized: false,
            channel: None,
            data_out: VecDeque::new(),
            connected: false,
            disconnected_since: None,
            last_keyframe_request: None,
            keyframe_request_pending: false,
            first_keyframe_sent: false,
            timing: SessionTiming::default(),
            stats: SessionStats::default(),
            failure: None,
            next_timeout: now,
            sdp_mid: None,
            path: None,
            remote_kinds: Vec::new(),
            remote_ufrag: None,
            held_remote: None,
            restart_at: None,
            last_received: now,
            gathering_pending: false,
            estimates: Default::default(),
        }
    }

    fn remember_remote(&mut self, c: &Candidate) {
        if self.remote_kinds.len() < MAX_REMOTE_KINDS
            && !self.remote_kinds.iter().any(|(a, _)| *a == c.addr())
        {
            self.remote_kinds.push((c.addr(), kind_name(c.kind())));
        }
    }

    fn is_live(&self) -> bool {
        self.rtc.is_alive() && self.failure.is_none()
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            warn!(peer = %self.peer_id, %reason, "session failed");
            self.failure = Some(reason);
        }
        self.rtc.disconnect();
    }

    fn final_stats(&self, now: Instant) -> SessionStats {
        let v = self.video.stats();
        let a = self.audio.stats();
        SessionStats {
            video_frames_sent: v.frames_sent,
            video_frames_dropped: v.frames_dropped,
            audio_frames_sent: a.frames_sent,
            audio_frames_dropped: a.frames_dropped,
            data_messages_dropped: self.stats.data_messages_dropped + self.data_out.len() as u64,
            duration: now.saturating_duration_since(self.started),
            ..self.stats
        }
    }
}

/// Output queues shared by all sessions.
#[derive(Default)]
struct Outputs {
    transmits: VecDeque<Datagram>,
    events: VecDeque<PeerEvent>,
    /// Datagrams str0m sends from a relayed address: they go through the TURN client.
    relayed: VecDeque<Datagram>,
    /// Our relayed addresses and how each reaches its server.
    relay_addrs: Vec<(SocketAddr, RelayTransport)>,
    /// Viewers' audio packets (talk-back), bounded by [`MAX_TALK_PACKETS`].
    talk: VecDeque<TalkPacket>,
    talk_dropped: u64,
    /// Viewers' media (with `receive_media`), bounded by [`MAX_RX_PACKETS`] packets.
    received: VecDeque<RxItem>,
    received_dropped: u64,
    /// Sessions that sent media: their end is announced with [`RxItem::Ended`].
    receiving: HashSet<String>,
}

impl Outputs {
    /// Queue a viewer's packet for the application (the oldest dropped when full).
    fn receive(&mut self, p: RxPacket) {
        if !self.receiving.contains(&p.peer_id) {
            self.receiving.insert(p.peer_id.clone());
        }
        if self.received.len() >= MAX_RX_PACKETS {
            if let Some(i) = self
                .received
                .iter()
                .position(|r| matches!(r, RxItem::Packet(_)))
            {
                self.received.remove(i);
                self.received_dropped += 1;
            }
        }
        self.received.push_back(RxItem::Packet(p));
    }

    fn event(&mut self, e: PeerEvent) {
        if self.events.len() >= MAX_CORE_EVENTS && e.is_droppable() {
            warn!(
                peer = e.peer_id(),
                "event queue full, dropping {:?}",
                event_name(&e)
            );
            return;
        }
        self.events.push_back(e);
    }
}

fn event_name(e: &PeerEvent) -> &'static str {
    match e {
        PeerEvent::DataMessage { .. } => "DataMessage",
        PeerEvent::SessionTiming { .. } => "SessionTiming",
        _ => "event",
    }
}

/// All sessions of the device, sans-IO.
pub struct PeerCore {
    config: PeerConfig,
    rtc_config: RtcConfig,
    local_addrs: Vec<SocketAddr>,
    /// Boxed: an `Rtc` is ~10 KB, and a map grows its slots in powers of two.
    sessions: HashMap<String, Box<Session>>,
    addr_cache: HashMap<SocketAddr, String>,
    pending_candidates: HashMap<String, VecDeque<PendingCandidate>>,
    held_datagrams: VecDeque<HeldDatagram>,
    out: Outputs,
    nat: NatCore,
    /// Some session still waits for GatheringComplete (checked after inputs only then).
    gathering_owed: bool,
}

impl PeerCore {
    /// A core whose sessions offer `local_addrs` as host candidates. `cert` is the DTLS
    /// certificate shared by every session (generate it once at start-up: it is slow).
    pub fn new(config: PeerConfig, local_addrs: Vec<SocketAddr>, cert: Option<DtlsCert>) -> Self {
        let rtc_config = rtc_config(&config, cert);
        let nat = NatCore::new(config.nat.clone(), local_addrs.clone());
        Self {
            config,
            rtc_config,
            nat,
            gathering_owed: false,
            local_addrs,
            sessions: HashMap::new(),
            addr_cache: HashMap::new(),
            pending_candidates: HashMap::new(),
            held_datagrams: VecDeque::new(),
            out: Outputs::default(),
        }
    }

    /// The STUN/TURN servers new sessions are given (see [`PeerCommand::SetIceServers`]).
    pub fn ice_servers(&self) -> &[crate::api::IceServer] {
        &self.config.ice_servers
    }

    /// Live sessions (closed and failed ones are removed as soon as they are seen).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.out.transmits.pop_front()
    }

    /// The next audio packet a viewer sent (when [`PeerConfig::talkback`] is on), in arrival
    /// order. Decoding and playing it is the application's (`kvs_media::talkback`), off the
    /// engine's task.
    pub fn poll_talk_packet(&mut self) -> Option<TalkPacket> {
        self.out.talk.pop_front()
    }

    /// The next packet (or session end) of viewers' media, with [`PeerConfig::receive_media`],
    /// in arrival order. Depacketizing, recording and decoding are the application's
    /// (`kvs_media::receive`), off the engine's task.
    pub fn poll_received(&mut self) -> Option<RxItem> {
        self.out.received.pop_front()
    }

    /// Received packets dropped because the driver did not take them in time.
    pub fn received_packets_dropped(&self) -> u64 {
        self.out.received_dropped
    }

    /// Talk-back packets dropped because the driver did not take them in time.
    pub fn talk_packets_dropped(&self) -> u64 {
        self.out.talk_dropped
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.out.events.pop_front()
    }

    /// TCP connections to TURN servers: what to open, write and close.
    pub fn poll_stream_io(&mut self) -> Option<StreamIo> {
        self.nat.poll_stream()
    }

    /// The STUN/TURN servers, resolved (the driver looks names up; see
    /// [`crate::nat::parse_ice_servers`]).
    pub fn set_nat_servers(&mut self, now: Instant, servers: Vec<NatServer>) {
        self.nat.set_servers(now, servers);
        self.after(now);
    }

    /// A TCP connection to a TURN server is up.
    pub fn stream_connected(&mut self, now: Instant, conn: u64, local: SocketAddr) {
        self.nat.stream_connected(now, conn, local);
        self.after(now);
    }

    /// Bytes from a TCP connection to a TURN server.
    pub fn stream_data(&mut self, now: Instant, conn: u64, data: &[u8]) {
        self.nat.stream_data(now, conn, data);
        self.after(now);
    }

    /// A TCP connection to a TURN server could not be made, or closed.
    pub fn stream_closed(&mut self, now: Instant, conn: u64, why: &str) {
        self.nat.stream_closed(now, conn, why);
        self.after(now);
    }

    /// `servers` and the STUN servers of our own configuration.
    pub fn with_own_servers(
        &self,
        servers: &[crate::api::IceServer],
    ) -> Vec<crate::api::IceServer> {
        let mut all = servers.to_vec();
        if !self.config.nat.stun_urls.is_empty() {
            all.push(crate::api::IceServer {
                urls: self.config.nat.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        all
    }

    /// TURN allocations alive.
    pub fn relay_count(&self) -> usize {
        self.nat.allocation_count()
    }

    /// When [`PeerCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let mut t = now + MAX_IDLE;
        // Expiries are fixed instants: a driver woken more often than MAX_IDLE by other input
        // (frames keep coming while no session exists) must still get to them.
        let ttl = self.config.pending_candidate_ttl;
        for q in self.pending_candidates.values() {
            if let Some(oldest) = q.front() {
                t = t.min(oldest.received + ttl);
            }
        }
        if let Some(oldest) = self.held_datagrams.front() {
            t = t.min(oldest.received + HELD_DATAGRAM_TTL);
        }
        if let Some(n) = self.nat.poll_timeout() {
            t = t.min(n);
        }
        let restart_after = self.config.nat.ice_restart_after;
        for s in self.sessions.values() {
            t = t.min(s.next_timeout);
            if let Some(h) = &s.held_remote {
                t = t.min(h.until);
            }
            // The session deadlines too: str0m may have no timer of its own left (its ICE
            // agent gave up), and frames waking the driver must not keep pushing them out.
            if !s.connected {
                t = t.min(s.started + self.config.connect_timeout);
            }
            if let Some(since) = s.disconnected_since {
                t = t.min(since + self.config.disconnected_timeout);
            }
            if let (Some(after), true) = (restart_after, s.connected) {
                t = t.min(restart_due(s, after));
            }
            if s.keyframe_request_pending {
                if let Some(last) = s.last_keyframe_request {
                    t = t.min(last + self.config.keyframe_request_min_interval);
                }
            }
        }
        t.max(now)
    }

    /// Apply one application command.
    pub fn handle_command(&mut self, now: Instant, cmd: PeerCommand) -> Result<(), PeerError> {
        let result = match cmd {
            PeerCommand::RemoteOffer { peer_id, sdp } => self.remote_offer(now, peer_id, &sdp),
            PeerCommand::RemoteAnswer { peer_id, sdp } => self.remote_answer(now, peer_id, &sdp),
            PeerCommand::RemoteCandidate {
                peer_id, candidate, ..
            } => self.remote_candidate(now, peer_id, candidate),
            PeerCommand::CreateOffer { peer_id } => self.create_offer(now, peer_id),
            PeerCommand::SendData {
                peer_id,
                data,
                binary,
            } => self.send_data(now, &peer_id, data, binary),
            PeerCommand::CloseSession { peer_id } => self.close_session(now, &peer_id),
            PeerCommand::SignalingRestored => {
                let restarting = self
                    .sessions
                    .values_mut()
                    .filter(|s| s.restart_at.is_some() && s.connected && s.is_live());
                for s in restarting {
                    restart_ice(s, now, &mut self.out);
                    service(s, now, &self.config, &mut self.out);
                }
                Ok(())
            }
            PeerCommand::RequestViewerKeyframe { peer_id } => {
                self.request_viewer_keyframe(now, &peer_id)
            }
            PeerCommand::SetMaxSessions { max } => {
                self.config.max_sessions = max;
                Ok(())
            }
            PeerCommand::SetDesiredBitrate { bps } => {
                if let Some(cc) = &mut self.config.congestion_control {
                    cc.desired_bps = Some(bps.clamp(cc.min_bps, cc.max_bps));
                    let cc = *cc;
                    for s in self.sessions.values_mut() {
                        cc.start(&mut s.rtc);
                        service(s, now, &self.config, &mut self.out);
                    }
                }
                Ok(())
            }
            PeerCommand::SetIceServers { servers } => {
                // A list of addresses only is taken here; one with names waits for the
                // driver, which looks them up and calls `set_nat_servers` with the whole list
                // (a partial list first would restart the probes and retire the relays of the
                // named servers, only to list them again).
                let (parsed, _) = crate::nat::parse_ice_servers(&self.with_own_servers(&servers));
                let literal: Vec<NatServer> = parsed.iter().filter_map(|s| s.literal()).collect();
                if literal.len() == parsed.len() {
                    self.nat.set_servers(now, literal);
                }
                self.config.ice_servers = servers;
                Ok(())
            }
        };
        self.after(now);
        result
    }

    /// One received UDP datagram.
    ///
    /// A DTLS datagram that no session accepts yet is held (bounded, briefly) and offered
    /// again after the next datagram a session does take: the viewer's ClientHello can
    /// overtake the ICE check that makes its address known here (the viewer nominates first),
    /// and dropping it would cost the viewer's DTLS retransmission timer, a whole second.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        if self.nat.handle_datagram(now, source, destination, data) {
            self.after(now);
            return;
        }
        self.accept_datagram(now, source, destination, data);
        self.after(now);
    }

    /// A datagram for the sessions (from a socket, or unwrapped from a relay).
    fn accept_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        if self.route_datagram(now, source, destination, data) {
            self.retry_held_datagrams(now);
        } else if is_dtls(data) {
            if self.held_datagrams.len() >= MAX_HELD_DATAGRAMS {
                self.held_datagrams.pop_front();
            }
            debug!(%source, "holding a DTLS datagram no session accepts yet");
            self.held_datagrams.push_back(HeldDatagram {
                received: now,
                source,
                destination,
                data: data.to_vec(),
            });
        }
    }

    fn retry_held_datagrams(&mut self, now: Instant) {
        if self.held_datagrams.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held_datagrams);
        for d in held {
            if now.saturating_duration_since(d.received) >= HELD_DATAGRAM_TTL {
                continue;
            }
            if !self.route_datagram(now, d.source, d.destination, &d.data) {
                self.held_datagrams.push_back(d);
            }
        }
    }

    /// Hand a datagram to the session that accepts it; false when none does.
    fn route_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(contents) = data.try_into() else {
            debug!(%source, len = data.len(), "ignoring datagram that is no WebRTC protocol");
            return true;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );

        let cached = self
            .addr_cache
            .get(&source)
            .filter(|id| {
                self.sessions
                    .get(*id)
                    .is_some_and(|s| s.rtc.accepts(&input))
            })
            .cloned();
        let peer_id = match cached {
            Some(id) => Some(id),
            None => {
                let found = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.is_live() && s.rtc.accepts(&input))
                    .map(|(id, _)| id.clone());
                if let Some(id) = &found {
                    if self.addr_cache.len() >= MAX_ADDR_CACHE {
                        self.addr_cache.clear();
                    }
                    self.addr_cache.insert(source, id.clone());
                }
                found
            }
        };
        let Some(peer_id) = peer_id else {
            debug!(%source, "no session accepts datagram");
            return false;
        };
        let Some(s) = self.sessions.get_mut(&peer_id) else {
            return false;
        };
        // A datagram from the viewer: it has our answer, our checks may go now.
        release_remote(s, now);
        if let Err(e) = s.rtc.handle_input(input) {
            s.fail(format!("input rejected: {e}"));
        }
        if s.path
            .is_none_or(|(local, remote)| local == destination && remote == source)
        {
            s.last_received = now;
            s.restart_at = None;
        }
        service(s, now, &self.config, &mut self.out);
        self.reap(now);
        true
    }

    /// Time passed: drive every session's timers, expire held candidates, enforce timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.nat.handle_timeout(now);
        let sessions = &self.sessions;
        self.nat.release_unused(now, |addr| {
            sessions
                .values()
                .any(|s| s.path.is_some_and(|(local, _)| local == addr))
        });
        let restart_after = self.config.nat.ice_restart_after;
        let mut restarted = false;
        self.held_datagrams
            .retain(|d| now.saturating_duration_since(d.received) < HELD_DATAGRAM_TTL);
        let ttl = self.config.pending_candidate_ttl;
        self.pending_candidates.retain(|_, q| {
            q.retain(|c| now.saturating_duration_since(c.received) < ttl);
            !q.is_empty()
        });
        for s in self.sessions.values_mut() {
            let released = s.held_remote.as_ref().is_some_and(|h| now >= h.until);
            if released {
                release_remote(s, now);
            }
            if !s.connected
                && now.saturating_duration_since(s.started) >= self.config.connect_timeout
            {
                s.fail(format!(
                    "not connected within {:?}",
                    self.config.connect_timeout
                ));
            }
            if let Some(since) = s.disconnected_since {
                if now.saturating_duration_since(since) >= self.config.disconnected_timeout {
                    s.fail(format!(
                        "ICE disconnected for more than {:?}",
                        self.config.disconnected_timeout
                    ));
                }
            }
            if let Some(after) = restart_after {
                if s.connected && s.is_live() && now >= restart_due(s, after) {
                    restart_ice(s, now, &mut self.out);
                    restarted = true;
                }
            }
            // Only sessions whose own timer is due are driven: polling an `Rtc` is not free,
            // and one session's timer must not cost every other session a poll.
            let due = released || s.next_timeout <= now || !s.is_live();
            if s.next_timeout <= now && s.rtc.is_alive() {
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    s.fail(format!("timeout handling failed: {e}"));
                }
            }
            if s.keyframe_request_pending {
                request_keyframe(s, now, &self.config, &mut self.out);
            }
            if due {
                service(s, now, &self.config, &mut self.out);
            }
        }
        if restarted {
            // The path broke: the NAT may have moved or forgotten our mappings.
            self.nat.regather(now);
        }
        self.after(now);
    }

    /// One encoded frame from the capture: offer it to every session and send what each
    /// session's gate lets through.
    pub fn push_frame(&mut self, now: Instant, kind: FanoutKind, frame: &EncodedFrame) {
        if self.sessions.is_empty() {
            return;
        }
        let primary = self.config.audio.unwrap_or(AudioCodec::Opus);
        let codec = frame.audio_codec.unwrap_or(primary);
        let preference = self.config.send_audio_codecs();
        // An audio frame goes to the sessions that negotiated its codec (those that have not
        // negotiated yet, or found no common codec, count the primary codec's frames as drops).
        let takes = |s: &mut Session| {
            kind == FanoutKind::Video
                || audio_pt(s, &preference)
                    .map_or(codec == primary, |_| s.audio_codec == Some(codec))
        };
        // Cut the frame once, and only when some session is past its transport gate.
        let wanted = self.sessions.values_mut().any(|s| {
            s.is_live()
                && takes(s)
                && match kind {
                    FanoutKind::Video => s.video.gate(),
                    FanoutKind::Audio => s.audio.gate(),
                } != kvs_media::fanout::Gate::WaitingForTransport
        });
        let frame: SharedFrame = Arc::new(match kind {
            // Every gate is closed: the sessions only count it as dropped.
            _ if !wanted => PacketizedFrame {
                timestamp_us: frame.timestamp_us,
                kind: frame.kind,
                payloads: Vec::new(),
            },
            FanoutKind::Video => PacketizedFrame::video(
                self.config.video.unwrap_or(VideoCodec::H264),
                frame,
                DEFAULT_MAX_PAYLOAD,
            ),
            FanoutKind::Audio => PacketizedFrame::opus(frame),
        });
        for s in self.sessions.values_mut() {
            if !s.is_live() || !takes(s) {
                continue;
            }
            let sub = match kind {
                FanoutKind::Video => &mut s.video,
                FanoutKind::Audio => &mut s.audio,
            };
            if sub.push(&frame) == PushOutcome::KeyframeNeeded {
                s.keyframe_request_pending = true;
            }
            send_queued_media(s, now, &self.config, &mut self.out);
            if s.video.take_keyframe_needed() {
                s.keyframe_request_pending = true;
            }
            if s.keyframe_request_pending {
                request_keyframe(s, now, &self.config, &mut self.out);
            }
            service(s, now, &self.config, &mut self.out);
        }
        self.after(now);
    }

    /// Close every session (engine shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for id in ids {
            let _ = self.close_session(now, &id);
        }
        self.after(now);
    }

    /// After every input: pass data between the sessions and the relays until neither has
    /// more, add gathered candidates to the sessions, remove dead sessions.
    fn after(&mut self, now: Instant) {
        for _ in 0..NAT_ROUNDS {
            let mut progressed = false;
            while let Some(d) = self.out.relayed.pop_front() {
                self.nat.send_relayed(now, d.source, d.destination, &d.data);
                progressed = true;
            }
            while let Some(d) = self.nat.poll_datagram() {
                self.out.transmits.push_back(Datagram {
                    source: d.source,
                    destination: d.destination,
                    data: d.data,
                });
            }
            while let Some(RelayedData {
                peer,
                relayed,
                data,
            }) = self.nat.poll_received()
            {
                self.accept_datagram(now, peer, relayed, &data);
                progressed = true;
            }
            while let Some(e) = self.nat.poll_event() {
                self.on_nat_event(now, e);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if self.gathering_owed && self.nat.gathering_done() {
            self.gathering_owed = false;
            for s in self.sessions.values_mut() {
                if s.gathering_pending {
                    s.gathering_pending = false;
                    self.out.event(PeerEvent::GatheringComplete {
                        peer_id: s.peer_id.clone(),
                    });
                }
            }
        }
        self.reap(now);
    }

    fn on_nat_event(&mut self, now: Instant, e: NatEvent) {
        match e {
            NatEvent::Candidate { candidate, from } => {
                let relayed = candidate.kind() == CandidateKind::Relayed;
                if relayed {
                    let transport = self
                        .nat
                        .relay_transport(candidate.addr())
                        .unwrap_or(RelayTransport::Udp);
                    self.out.relay_addrs.retain(|(a, _)| *a != candidate.addr());
                    self.out.relay_addrs.push((candidate.addr(), transport));
                    for s in self.sessions.values() {
                        if s.is_live() {
                            permit_remotes(&mut self.nat, now, s);
                        }
                    }
                }
                self.out.event(PeerEvent::CandidateGathered {
                    kind: kind_name(candidate.kind()).to_string(),
                    addr: candidate.addr(),
                    from,
                });
                if self.config.nat.relay_only && !relayed {
                    return;
                }
                for s in self.sessions.values_mut() {
                    if !s.is_live() {
                        continue;
                    }
                    if let Some(c) = s.rtc.add_local_candidate(candidate.clone()) {
                        let line = c.to_sdp_string();
                        self.out.event(PeerEvent::LocalCandidate {
                            peer_id: s.peer_id.clone(),
                            candidate: line,
                            sdp_mid: s.sdp_mid.clone(),
                            sdp_m_line_index: Some(0),
                        });
                    }
                    service(s, now, &self.config, &mut self.out);
                }
            }
            NatEvent::RelayLost { addr } => {
                self.out.relay_addrs.retain(|(a, _)| *a != addr);
            }
            NatEvent::ServerError { uri, reason } => {
                self.out.event(PeerEvent::NatServerError { uri, reason });
            }
        }
    }

    /// A PLI on the video the viewer sends (see [`PeerCommand::RequestViewerKeyframe`]).
    fn request_viewer_keyframe(&mut self, now: Instant, peer_id: &str) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(peer_id) else {
            return Err(PeerError::UnknownPeer(peer_id.to_string()));
        };
        let Some(mid) = s.video_mid else {
            return Ok(());
        };
        if let Some(rx) = s.rtc.direct_api().stream_rx_by_mid(mid, None) {
            debug!(peer = %peer_id, "asking the viewer for a keyframe (PLI)");
            rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        }
        service(s, now, &self.config, &mut self.out);
        Ok(())
    }

    fn live_count(&self) -> usize {
        self.sessions.values().filter(|s| s.is_live()).count()
    }

    /// A session with every candidate we have: host ones (unless relay-only), and what
    /// gathering has found so far (the rest is trickled as it comes). Returns the candidates'
    /// SDP lines for trickling.
    fn new_session(&mut self, now: Instant, peer_id: &str) -> (Box<Session>, Vec<String>) {
        let mut rtc = self.rtc_config.clone().build(now);
        if let Some(cc) = &self.config.congestion_control {
            cc.start(&mut rtc);
        }
        let mut lines = Vec::new();
        if !self.config.nat.relay_only {
            for addr in &self.local_addrs {
                match Candidate::host(*addr, "udp") {
                    Ok(c) => {
                        if let Some(c) = rtc.add_local_candidate(c) {
                            lines.push(c.to_sdp_string());
                        }
                    }
                    Err(e) => warn!(%addr, "cannot use local address as candidate: {e}"),
                }
            }
        }
        // Allocations are made when sessions exist: count this one in now.
        self.nat.set_sessions(now, self.sessions.len() + 1);
        for c in self.nat.candidates() {
            if let Some(c) = rtc.add_local_candidate(c) {
                lines.push(c.to_sdp_string());
            }
        }
        let mut s = Box::new(Session::new(peer_id.to_string(), rtc, now, &self.config));
        s.gathering_pending = true;
        (s, lines)
    }

    fn remote_offer(&mut self, now: Instant, peer_id: String, sdp: &str) -> Result<(), PeerError> {
        // The peer's early candidates belong to this offer: taken first, so that no way out
        // of here (a bad SDP, a refusal, an offer str0m rejects) leaves them behind.
        let held = self.pending_candidates.remove(&peer_id);
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::InvalidSdp {
            peer_id: peer_id.clone(),
            reason: e.to_string(),
        })?;

        let ufrag = sdp_ufrag(sdp);
        // Renegotiation of a live session (an offer of ours still pending — an ICE restart —
        // gives way: str0m drops it when it accepts the viewer's).
        if let Some(s) = self.sessions.get_mut(&peer_id) {
            if s.is_live() && (s.pending_offer.is_none() || s.connected) {
                let restart =
                    s.remote_ufrag.is_some() && ufrag.is_some() && s.remote_ufrag != ufrag;
                remember_sdp_candidates(s, sdp);
                permit_remotes(&mut self.nat, now, s);
                let answer = s
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| PeerError::Rtc {
                        peer_id: peer_id.clone(),
                        reason: e.to_string(),
                    })?;
                s.pending_offer = None;
                s.video_pt = None;
                s.audio_pt = None;
                s.audio_codec = None;
                s.video_rtx_sized = false;
                if restart {
                    s.remote_ufrag = ufrag;
                    info!(peer = %peer_id, "the viewer restarted ICE");
                    self.out.event(PeerEvent::IceRestart {
                        peer_id: peer_id.clone(),
                        reason: "the viewer's offer restarts ICE".to_string(),
                    });
                    self.nat.regather(now);
                }
                self.out.event(PeerEvent::LocalAnswer {
                    peer_id: peer_id.clone(),
                    sdp: answer.to_sdp_string(),
                });
                service(s, now, &self.config, &mut self.out);
                return Ok(());
            }
            // A dead session, or glare with our own offer: replace it.
            info!(peer = %peer_id, "replacing previous session of this peer");
            let _ = self.close_session(now, &peer_id);
            self.reap(now);
        }

        // A viewer that cannot receive our video would get a black picture: refuse it, saying
        // why (checked first: unlike the session limit, waiting will not help).
        if let Some(reason) = self
            .config
            .video
            .and_then(|codec| crate::codecs::offer_refusal(codec, sdp))
        {
            info!(peer = %peer_id, %reason, "refusing offer");
            self.out.event(PeerEvent::OfferRefused {
                peer_id,
                reason,
                code: crate::api::REFUSED_CODEC,
            });
            return Ok(());
        }
        if self.live_count() >= self.config.max_sessions {
            let reason = format!("session limit of {} reached", self.config.max_sessions);
            info!(peer = %peer_id, %reason, "refusing offer");
            self.out.event(PeerEvent::OfferRefused {
                peer_id,
                reason,
                code: crate::api::REFUSED_SESSION_LIMIT,
            });
            return Ok(());
        }

        let (mut s, lines) = self.new_session(now, &peer_id);
        s.remote_ufrag = ufrag;
        // The offer's candidates wait for the viewer to have our answer (REMOTE_CANDIDATE_HOLD).
        let (without_candidates, candidates) = split_sdp_candidates(sdp);
        for c in &candidates {
            s.remember_remote(c);
        }
        let offer = SdpOffer::from_sdp_string(&without_candidates).unwrap_or(offer);
        s.held_remote = Some(HeldRemote {
            until: now + REMOTE_CANDIDATE_HOLD,
            candidates,
        });
        let answer: SdpAnswer =
            s.rtc
                .sdp_api()
                .accept_offer(offer)
                .map_err(|e| PeerError::Rtc {
                    peer_id: peer_id.clone(),
                    reason: e.to_string(),
                })?;
        let sdp = answer.to_sdp_string();
        s.timing.answer_sent = Some(now.saturating_duration_since(s.started));
        self.out.event(PeerEvent::Requested {
            peer_id: peer_id.clone(),
        });
        self.out.event(PeerEvent::LocalAnswer {
            peer_id: peer_id.clone(),
            sdp: sdp.clone(),
        });
        self.emit_local_candidates(&mut s, &sdp, lines);
        self.apply_held_candidates(&mut s, held, now);
        permit_remotes(&mut self.nat, now, &s);
        start_checks(&mut s, now);
        service(&mut s, now, &self.config, &mut self.out);
        self.sessions.insert(peer_id, s);
        Ok(())
    }

    fn create_offer(&mut self, now: Instant, peer_id: String) -> Result<(), PeerError> {
        if self.sessions.get(&peer_id).is_some_and(|s| s.is_live()) {
            return Err(PeerError::Rtc {
                peer_id,
                reason: "a session with this peer exists".to_string(),
            });
        }
        self.sessions.remove(&peer_id);
        if self.live_count() >= self.config.max_sessions {
            let reason = format!("session limit of {} reached", self.config.max_sessions);
            self.out.event(PeerEvent::OfferRefused {
                peer_id,
                reason,
                code: crate::api::REFUSED_SESSION_LIMIT,
            });
            return Ok(());
        }
        let (mut s, lines) = self.new_session(now, &peer_id);
        let mut api = s.rtc.sdp_api();
        let receive = self.config.receive_media;
        if self.config.video.is_some() || receive {
            // Receiving viewers' video: the viewer may answer with its camera.
            let dir = match (self.config.video.is_some(), receive) {
                (true, true) => Direction::SendRecv,
                (false, _) => Direction::RecvOnly,
                (true, false) => Direction::SendOnly,
            };
            s.video_mid = Some(api.add_media(MediaKind::Video, dir, None, None, None));
        }
        if self.config.audio.is_some() || self.config.talkback || receive {
            // With talk-back (or recording) the viewer may answer with its microphone.
            let dir = match (self.config.audio.is_some(), self.config.talkback || receive) {
                (true, true) => Direction::SendRecv,
                (false, _) => Direction::RecvOnly,
                (true, false) => Direction::SendOnly,
            };
            s.audio_mid = Some(api.add_media(MediaKind::Audio, dir, None, None, None));
        }
        if self.config.data_channel {
            api.add_channel(self.config.data_channel_label.clone());
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(PeerError::Rtc {
                peer_id,
                reason: "nothing to offer".to_string(),
            });
        };
        s.pending_offer = Some(pending);
        let sdp = offer.to_sdp_string();
        self.out.event(PeerEvent::LocalOffer {
            peer_id: peer_id.clone(),
            sdp: sdp.clone(),
        });
        self.emit_local_candidates(&mut s, &sdp, lines);
        service(&mut s, now, &self.config, &mut self.out);
        self.sessions.insert(peer_id, s);
        Ok(())
    }

    fn remote_answer(&mut self, now: Instant, peer_id: String, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::InvalidSdp {
            peer_id: peer_id.clone(),
            reason: e.to_string(),
        })?;
        let Some(mut s) = self.sessions.remove(&peer_id) else {
            return Err(PeerError::UnknownPeer(peer_id));
        };
        let Some(pending) = s.pending_offer.take() else {
            self.sessions.insert(peer_id.clone(), s);
            return Err(PeerError::NoPendingOffer(peer_id));
        };
        if let Err(e) = s.rtc.sdp_api().accept_answer(pending, answer) {
            if s.connected {
                // An answer to a restart that no longer applies: the session goes on.
                warn!(peer = %peer_id, "answer ignored: {e}");
                self.sessions.insert(peer_id.clone(), s);
                return Err(PeerError::Rtc {
                    peer_id,
                    reason: e.to_string(),
                });
            }
            s.fail(format!("answer rejected: {e}"));
            self.sessions.insert(peer_id.clone(), s);
            return Err(PeerError::Rtc {
                peer_id,
                reason: e.to_string(),
            });
        }
        s.timing
            .answer_sent
            .get_or_insert(now.saturating_duration_since(s.started));
        if s.remote_ufrag.is_none() {
            s.remote_ufrag = sdp_ufrag(sdp);
        }
        remember_sdp_candidates(&mut s, sdp);
        let held = self.pending_candidates.remove(&peer_id);
        self.apply_held_candidates(&mut s, held, now);
        permit_remotes(&mut self.nat, now, &s);
        start_checks(&mut s, now);
        service(&mut s, now, &self.config, &mut self.out);
        self.sessions.insert(peer_id, s);
        Ok(())
    }

    fn remote_candidate(
        &mut self,
        now: Instant,
        peer_id: String,
        candidate: String,
    ) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&peer_id) else {
            // Before the offer: hold it (bounded) until the offer arrives.
            if !self.pending_candidates.contains_key(&peer_id)
                && self.pending_candidates.len() >= MAX_PENDING_PEERS
            {
                warn!(peer = %peer_id, "too many peers with early candidates; dropping");
                return Ok(());
            }
            let q = self.pending_candidates.entry(peer_id.clone()).or_default();
            if q.len() >= MAX_PENDING_CANDIDATES_PER_PEER {
                q.pop_front();
            }
            debug!(peer = %peer_id, "holding candidate until the offer arrives");
            q.push_back(PendingCandidate {
                received: now,
                candidate,
            });
            return Ok(());
        };
        match parse_candidate(&candidate) {
            Ok(ParsedCandidate::Candidate(c)) => {
                s.remember_remote(&c);
                self.nat.permit(now, c.addr().ip());
                if !hold_remote(s, &c) {
                    s.rtc.add_remote_candidate(c);
                }
                service(s, now, &self.config, &mut self.out);
                Ok(())
            }
            Ok(ParsedCandidate::Ignored(why)) => {
                debug!(peer = %peer_id, why, "ignoring remote candidate");
                Ok(())
            }
            Err(reason) => Err(PeerError::InvalidCandidate { peer_id, reason }),
        }
    }

    /// Add the candidates held for the session's peer, except those past their TTL: the timer
    /// that drops them may not have run yet.
    fn apply_held_candidates(
        &self,
        s: &mut Session,
        held: Option<VecDeque<PendingCandidate>>,
        now: Instant,
    ) {
        let ttl = self.config.pending_candidate_ttl;
        for c in held.into_iter().flatten() {
            if now.saturating_duration_since(c.received) >= ttl {
                debug!(peer = %s.peer_id, "dropping expired held candidate");
                continue;
            }
            match parse_candidate(&c.candidate) {
                Ok(ParsedCandidate::Candidate(c)) => {
                    debug!(peer = %s.peer_id, "applying held candidate {c}");
                    s.remember_remote(&c);
                    if !hold_remote(s, &c) {
                        s.rtc.add_remote_candidate(c);
                    }
                }
                Ok(ParsedCandidate::Ignored(why)) => debug!(peer = %s.peer_id, why, "ignored"),
                Err(e) => warn!(peer = %s.peer_id, "bad held candidate: {e}"),
            }
        }
    }

    /// Trickle the session's first candidates; gathering complete is announced now or when
    /// the probes and allocations running finish (see [`PeerCore::after`]).
    fn emit_local_candidates(&mut self, s: &mut Session, sdp: &str, lines: Vec<String>) {
        s.sdp_mid = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=mid:"))
            .map(|m| m.trim().to_string());
        for candidate in lines {
            self.out.event(PeerEvent::LocalCandidate {
                peer_id: s.peer_id.clone(),
                candidate,
                sdp_mid: s.sdp_mid.clone(),
                sdp_m_line_index: Some(0),
            });
        }
        if self.nat.gathering_done() {
            s.gathering_pending = false;
            self.out.event(PeerEvent::GatheringComplete {
                peer_id: s.peer_id.clone(),
            });
        } else {
            self.gathering_owed = true;
        }
    }

    fn send_data(
        &mut self,
        now: Instant,
        peer_id: &str,
        data: Bytes,
        binary: bool,
    ) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(peer_id) else {
            return Err(PeerError::UnknownPeer(peer_id.to_string()));
        };
        if data.len() > MAX_DATA_MESSAGE {
            return Err(PeerError::DataTooLarge {
                peer_id: peer_id.to_string(),
                len: data.len(),
            });
        }
        if s.data_out.len() >= MAX_DATA_QUEUE {
            return Err(PeerError::DataQueueFull(peer_id.to_string()));
        }
        s.data_out.push_back((data, binary));
        service(s, now, &self.config, &mut self.out);
        Ok(())
    }

    fn close_session(&mut self, now: Instant, peer_id: &str) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(peer_id) else {
            return Err(PeerError::UnknownPeer(peer_id.to_string()));
        };
        info!(peer = %peer_id, "closing session");
        if s.rtc.is_alive() && s.rtc.close().is_err() {
            s.rtc.disconnect();
        }
        // Drain the close output (DTLS close_notify, RTCP BYE) once; then the session goes.
        service(s, now, &self.config, &mut self.out);
        s.rtc.disconnect();
        Ok(())
    }

    /// Remove sessions that are no longer alive, reporting why and their counters.
    fn reap(&mut self, now: Instant) {
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.is_live())
            .map(|(k, _)| k.clone())
            .collect();
        for id in dead {
            let Some(s) = self.sessions.remove(&id) else {
                continue;
            };
            self.addr_cache.retain(|_, v| *v != id);
            if let Some(reason) = s.failure.clone() {
                self.out.event(PeerEvent::Failed {
                    peer_id: id.clone(),
                    reason,
                });
            }
            if self.out.receiving.remove(&id) {
                // Never dropped: the recording is finalized on it (bounded by sessions).
                self.out.received.push_back(RxItem::Ended {
                    peer_id: id.clone(),
                });
            }
            let stats = s.final_stats(now);
            info!(peer = %id, ?stats, "session closed");
            self.out.event(PeerEvent::Closed { peer_id: id, stats });
        }
        self.nat.set_sessions(now, self.sessions.len());
    }
}

/// How long a new session keeps the viewer's candidates from ICE at most: until the viewer's
/// first datagram shows it has our answer, or this long after the answer. Our checks go by UDP
/// and overtake the answer, which goes through signaling; an agent that gets a check before the
/// answer queues it, and str0m's then handles one queued check per 50 ms tick before it checks
/// itself: two early checks (a host and a relayed candidate of ours) cost a viewer ~50 ms. A
/// viewer that can reach us releases the hold at once; one that cannot (our NAT needs our
/// packet first) waits at most this long.
pub const REMOTE_CANDIDATE_HOLD: Duration = Duration::from_millis(100);
/// Candidates held per session at most (a viewer sends a handful).
const MAX_HELD_REMOTE: usize = 64;

/// See [`Session::held_remote`].
struct HeldRemote {
    until: Instant,
    candidates: Vec<str0m::Candidate>,
}

/// Keep `c` from ICE while the session holds the viewer's candidates; false when it does not.
fn hold_remote(s: &mut Session, c: &str0m::Candidate) -> bool {
    let Some(h) = &mut s.held_remote else {
        return false;
    };
    if h.candidates.len() < MAX_HELD_REMOTE {
        h.candidates.push(c.clone());
    }
    true
}

/// Give the held candidates to ICE and start checking them.
fn release_remote(s: &mut Session, now: Instant) {
    let Some(h) = s.held_remote.take() else {
        return;
    };
    debug!(peer = %s.peer_id, n = h.candidates.len(), "releasing the viewer's candidates to ICE");
    for c in h.candidates {
        s.rtc.add_remote_candidate(c);
    }
    start_checks(s, now);
}

/// An offer's SDP without its candidate lines, and those candidates (usable ones).
fn split_sdp_candidates(sdp: &str) -> (String, Vec<str0m::Candidate>) {
    let mut rest = String::with_capacity(sdp.len());
    let mut candidates = Vec::new();
    for line in sdp.split_inclusive('\n') {
        let Some(c) = candidate_attribute(line) else {
            rest.push_str(line);
            continue;
        };
        if let Ok(ParsedCandidate::Candidate(c)) = parse_candidate(c) {
            if candidates.len() < MAX_HELD_REMOTE {
                candidates.push(c);
            }
        }
    }
    (rest, candidates)
}

/// Give a freshly negotiated session its first timeout. str0m's ICE agent starts checking
/// (and keeping time) only on a timeout input; until then it reports no timer of its own, so
/// without this the session would stay silent until the viewer's first check arrives, and
/// could never connect through a candidate only this side can reach.
fn start_checks(s: &mut Session, now: Instant) {
    if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
        s.fail(format!("timeout handling failed: {e}"));
    }
}

/// How sessions are drained: a timeout already due is handled here and now rather than on
/// the driver's next turn: str0m asks for one after every RTP write (it stamps queued packets
/// on a timeout), so this sends a frame's packets in the same pass that wrote them.
const SESSION_DRAIN: DrainPolicy = DrainPolicy {
    rounds: 4,
    due_timeouts: 4,
};

/// One session as the drain loop sees it, with what its event handling needs.
struct Serviced<'a> {
    s: &'a mut Session,
    now: Instant,
    config: &'a PeerConfig,
    out: &'a mut Outputs,
}

impl DrainTarget for Serviced<'_> {
    fn rtc(&mut self) -> &mut Rtc {
        &mut self.s.rtc
    }

    fn before_round(&mut self) {
        flush_data(self.s);
    }

    fn transmit(&mut self, datagram: Datagram) {
        note_path(self.s, &datagram, self.out);
        if self
            .out
            .relay_addrs
            .iter()
            .any(|(a, _)| *a == datagram.source)
        {
            self.out.relayed.push_back(datagram);
        } else {
            self.out.transmits.push_back(datagram);
        }
    }

    fn event(&mut self, event: Event) -> bool {
        on_event(self.s, event, self.now, self.config, self.out)
    }
}

/// After any change to a session: flush queued data, then drain the `Rtc` until it only has
/// a timeout left (see [`crate::drain`]).
fn service(s: &mut Session, now: Instant, config: &PeerConfig, out: &mut Outputs) {
    let mut target = Serviced {
        s,
        now,
        config,
        out,
    };
    match drain(&mut target, now, SESSION_DRAIN) {
        Ok(Some(t)) => target.s.next_timeout = t,
        // Not alive: reaped by the caller.
        Ok(None) => {}
        Err(e) => target.s.fail(e.to_string()),
    }
}

/// Handle one str0m event; returns true when the session should be serviced again
/// (data can be flushed, or media sent).
fn on_event(
    s: &mut Session,
    e: Event,
    now: Instant,
    config: &PeerConfig,
    out: &mut Outputs,
) -> bool {
    let peer_id = s.peer_id.clone();
    tracing::trace!(peer = %peer_id, "str0m event {e:?}");
    let since = now.saturating_duration_since(s.started);
    match e {
        Event::IceConnectionStateChange(state) => {
            debug!(peer = %peer_id, ?state, "ICE state");
            match state {
                IceConnectionState::Checking => out.event(PeerEvent::Connecting { peer_id }),
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    s.timing.ice_connected.get_or_insert(since);
                    s.disconnected_since = None;
                }
                IceConnectionState::Disconnected => {
                    s.disconnected_since.get_or_insert(now);
                    out.event(PeerEvent::Disconnected { peer_id });
                }
                _ => {}
            }
            false
        }
        Event::Connected => {
            s.timing.dtls_connected.get_or_insert(since);
            s.connected = true;
            info!(peer = %peer_id, after = ?since, "session connected");
            out.event(PeerEvent::Connected { peer_id });
            s.audio.transport_ready();
            if s.video.transport_ready() {
                s.video.take_keyframe_needed();
                s.keyframe_request_pending = true;
                request_keyframe(s, now, config, out);
            }
            true
        }
        Event::MediaAdded(m) => {
            match m.kind {
                MediaKind::Video if s.video_mid.is_none() => {
                    s.video_mid = Some(m.mid);
                    // str0m announces an answerer's media only after `Connected`: the request
                    // made there waits for the video mid, and goes out now rather than with
                    // the next frame.
                    if s.keyframe_request_pending {
                        request_keyframe(s, now, config, out);
                    }
                }
                MediaKind::Audio if s.audio_mid.is_none() => s.audio_mid = Some(m.mid),
                _ => {}
            }
            false
        }
        Event::ChannelOpen(id, label) => {
            if !config.data_channel {
                debug!(peer = %peer_id, %label, "data channels disabled; ignoring channel");
                return false;
            }
            if s.channel.is_none() {
                s.channel = Some(id);
                out.event(PeerEvent::DataChannelOpen { peer_id });
            }
            true
        }
        Event::ChannelData(d) => {
            if Some(d.id) == s.channel {
                s.stats.data_messages_received += 1;
                out.event(PeerEvent::DataMessage {
                    peer_id,
                    data: Bytes::from(d.data),
                    binary: d.binary,
                });
            }
            false
        }
        Event::ChannelClose(id) => {
            if Some(id) == s.channel {
                s.channel = None;
            }
            false
        }
        Event::ChannelBufferedAmountLow(_) => true,
        Event::KeyframeRequest(req) => {
            debug!(peer = %peer_id, kind = ?req.kind, "keyframe request from viewer");
            s.keyframe_request_pending = true;
            request_keyframe(s, now, config, out);
            false
        }
        Event::Closed => {
            info!(peer = %peer_id, "remote closed the session");
            false
        }
        Event::RtpPacket(p) if config.talkback || config.receive_media => {
            let spec = s
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|c| c.pt() == p.header.payload_type)
                .map(|c| c.spec().codec);
            let codec = spec.and_then(audio_codec_of);
            // Copied out of str0m's packet once, shared by the recorder and talk-back.
            let mut copied: Option<Bytes> = None;
            let mut payload = || {
                copied
                    .get_or_insert_with(|| Bytes::copy_from_slice(&p.payload))
                    .clone()
            };
            if config.receive_media {
                let media = match (spec, codec) {
                    (Some(Codec::H264), _) => Some(RxMedia::Video),
                    (_, Some(c)) => Some(RxMedia::Audio(c)),
                    _ => None,
                };
                if let Some(media) = media {
                    out.receive(RxPacket {
                        peer_id: peer_id.clone(),
                        media,
                        seq: *p.seq_no,
                        rtp_time: p.time.numer(),
                        marker: p.header.marker,
                        payload: payload(),
                        arrival: now,
                    });
                }
            }
            if let (Some(codec), true) = (codec, config.talkback) {
                if out.talk.len() >= MAX_TALK_PACKETS {
                    out.talk.pop_front();
                    out.talk_dropped += 1;
                }
                out.talk.push_back(TalkPacket {
                    peer_id,
                    codec,
                    seq: *p.seq_no,
                    rtp_time: p.time.numer(),
                    audio_level: p.header.ext_vals.audio_level,
                    payload: payload(),
                    arrival: now,
                });
            }
            false
        }
        Event::EgressBitrateEstimate(kind) => {
            if let Some(bps) = s.estimates.pass(&kind, now) {
                out.event(PeerEvent::BitrateEstimate { peer_id, bps });
            }
            false
        }
        _ => false,
    }
}

/// Emit `KeyframeRequested`, at most once per `keyframe_request_min_interval`; a request
/// inside the interval stays pending and goes out when it ends.
fn request_keyframe(s: &mut Session, now: Instant, config: &PeerConfig, out: &mut Outputs) {
    if !s.connected || s.video_mid.is_none() {
        return;
    }
    if let Some(last) = s.last_keyframe_request {
        if now.saturating_duration_since(last) < config.keyframe_request_min_interval {
            return;
        }
    }
    s.keyframe_request_pending = false;
    s.last_keyframe_request = Some(now);
    s.stats.keyframe_requests += 1;
    out.event(PeerEvent::KeyframeRequested {
        peer_id: s.peer_id.clone(),
    });
}

/// Write whatever the fan-out queues let through: each frame's shared payloads, as RTP
/// packets of this session's streams.
fn send_queued_media(s: &mut Session, now: Instant, config: &PeerConfig, out: &mut Outputs) {
    if !s.connected {
        return;
    }
    while let Some(frame) = s.video.pop() {
        let codec = config.video.unwrap_or(VideoCodec::H264);
        let (Some(mid), Some(pt)) = (s.video_mid, video_pt(s, codec)) else {
            s.video.record_dropped();
            break;
        };
        if !s.video_rtx_sized {
            size_resend_buffer(s, mid, config);
        }
        if !write_frame(s, now, mid, pt, &frame, Clock::Video) {
            s.video.record_dropped();
            break;
        }
        if frame.kind == kvs_platform::FrameKind::Key && !s.first_keyframe_sent {
            s.first_keyframe_sent = true;
            s.timing.first_keyframe_sent = Some(now.saturating_duration_since(s.started));
            info!(peer = %s.peer_id, timing = ?s.timing, "first keyframe sent");
            out.event(PeerEvent::FirstKeyframeSent {
                peer_id: s.peer_id.clone(),
            });
            out.event(PeerEvent::SessionTiming {
                peer_id: s.peer_id.clone(),
                timing: s.timing,
            });
        }
    }
    let preference = config.send_audio_codecs();
    while let Some(frame) = s.audio.pop() {
        let (Some(mid), Some(pt)) = (s.audio_mid, audio_pt(s, &preference)) else {
            s.audio.record_dropped();
            break;
        };
        let clock = s.audio_codec.map_or(48_000, AudioCodec::clock_rate);
        if !write_frame(s, now, mid, pt, &frame, Clock::Audio(clock)) {
            s.audio.record_dropped();
            break;
        }
    }
}

/// The payload types the viewer accepted on `mid`, with their parameters.
fn accepted_params(rtc: &Rtc, mid: Mid) -> Vec<str0m::format::PayloadParams> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| media.remote_pts().contains(&p.pt()))
        .copied()
        .collect()
}

/// The video payload type to send: the source's codec among those the viewer accepted (for
/// H.264 packetization-mode 1, our preferred profile first).
fn video_pt(s: &mut Session, codec: VideoCodec) -> Option<Pt> {
    if s.video_pt.is_none() {
        let params = accepted_params(&s.rtc, s.video_mid?);
        let pick = crate::codecs::pick_video_pt(&params, codec);
        if pick.is_none() {
            warn!(peer = %s.peer_id, %codec, "viewer negotiated no usable payload type for our video");
        }
        s.video_pt = pick;
    }
    s.video_pt
}

/// The audio payload type to send: the first codec of `preference` the viewer accepted.
fn audio_pt(s: &mut Session, preference: &[AudioCodec]) -> Option<Pt> {
    if s.audio_pt.is_none() {
        let params = accepted_params(&s.rtc, s.audio_mid?);
        let pick = preference.iter().find_map(|c| {
            params
                .iter()
                .find(|p| p.spec().codec == str0m_codec(*c))
                .map(|p| (*c, p.pt()))
        });
        if let Some((codec, pt)) = pick {
            debug!(peer = %s.peer_id, %codec, "audio codec chosen");
            s.audio_codec = Some(codec);
            s.audio_pt = Some(pt);
        }
    }
    s.audio_pt
}

/// The RTP clock of a stream.
#[derive(Clone, Copy)]
enum Clock {
    /// 90 kHz.
    Video,
    /// The codec's rate (48 kHz Opus, 8 kHz G.711).
    Audio(u32),
}

/// Replace str0m's resend buffer (3 s, sized by packet count) with one that keeps
/// `resend_window` of packets.
fn size_resend_buffer(s: &mut Session, mid: Mid, config: &PeerConfig) {
    let (packets, window) = (config.send_buffer_video_packets(), config.resend_window);
    if let Some(tx) = s.rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.set_rtx_cache(packets, window, Some(RTX_RATIO_CAP));
        s.video_rtx_sized = true;
    }
}

/// Write one frame's payloads as RTP packets; false when the stream is gone or the frame
/// has no payload.
fn write_frame(
    s: &mut Session,
    now: Instant,
    mid: Mid,
    pt: Pt,
    frame: &PacketizedFrame,
    clock: Clock,
) -> bool {
    // RTP timestamps on the codec clock: 90 kHz video, 48 kHz Opus, 8 kHz G.711.
    let (rtp_time, video) = match clock {
        Clock::Video => (frame.timestamp_us.wrapping_mul(9) / 100, true),
        Clock::Audio(hz) => (
            frame.timestamp_us.wrapping_mul(u64::from(hz / 1000)) / 1000,
            false,
        ),
    };
    let rtp_time = rtp_time as u32;
    let seq = if video {
        &mut s.video_seq
    } else {
        &mut s.audio_seq
    };
    if frame.payloads.is_empty() {
        // Nothing a decoder could use (e.g. an access unit of delimiters only): a drop.
        return false;
    }
    let mut api = s.rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    for payload in &frame.payloads {
        tx.write_rtp(
            RtpWrite::new(pt, (*seq).into(), rtp_time, now, payload.data.clone())
                .marker(payload.marker)
                .nackable(video),
        );
        *seq += 1;
    }
    true
}

/// Write queued data channel messages until the channel refuses one (buffer full: it stays
/// first in the queue and is retried on the next service).
fn flush_data(s: &mut Session) {
    let Some(id) = s.channel else { return };
    while let Some((data, binary)) = s.data_out.front() {
        let Some(mut ch) = s.rtc.channel(id) else {
            return;
        };
        if ch.buffered_amount() >= DATA_SOFT_BUFFERED {
            // Woken by ChannelBufferedAmountLow when SCTP has caught up.
            ch.set_buffered_amount_low_threshold(DATA_SOFT_BUFFERED / 2);
            return;
        }
        match ch.write(*binary, data) {
            Ok(true) => {
                s.data_out.pop_front();
                s.stats.data_messages_sent += 1;
            }
            Ok(false) => {
                // Too large to ever fit, or the buffer is full for now.
                ch.set_buffered_amount_low_threshold(MAX_DATA_MESSAGE / 2);
                return;
            }
            Err(e) => {
                warn!(peer = %s.peer_id, "data channel write failed: {e}");
                s.data_out.pop_front();
                s.stats.data_messages_dropped += 1;
            }
        }
    }
}

fn kind_name(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Host => "host",
        CandidateKind::ServerReflexive => "srflx",
        CandidateKind::PeerReflexive => "prflx",
        CandidateKind::Relayed => "relay",
    }
}

/// The `a=ice-ufrag` of an SDP (the session-level one, or the first media's).
fn sdp_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}

/// Remember the types of the candidates an SDP carries (for [`PeerEvent::PathSelected`]).
fn remember_sdp_candidates(s: &mut Session, sdp: &str) {
    for c in sdp.lines().filter_map(candidate_attribute) {
        if let Ok(ParsedCandidate::Candidate(c)) = parse_candidate(c) {
            s.remember_remote(&c);
        }
    }
}

/// The `candidate:…` attribute of an SDP line `a=candidate:…`; `None` for any other line.
fn candidate_attribute(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("a=")
        .filter(|c| c.starts_with("candidate:"))
}

/// Let every remote address the session knows of reach our relayed addresses (TURN
/// permissions ahead of data; see [`NatCore::permit`]).
fn permit_remotes(nat: &mut NatCore, now: Instant, s: &Session) {
    for (addr, _) in &s.remote_kinds {
        nat.permit(now, addr.ip());
    }
}

/// Note the candidate pair media goes out on; a change is reported. STUN (first byte 0..=3)
/// is left out: ICE checks go on every pair, media only on the selected one.
fn note_path(s: &mut Session, d: &Datagram, out: &mut Outputs) {
    let media = matches!(d.data.first(), Some(20..=63 | 128..=191));
    if !media || s.path == Some((d.source, d.destination)) {
        return;
    }
    s.path = Some((d.source, d.destination));
    let relay = out
        .relay_addrs
        .iter()
        .find(|(a, _)| *a == d.source)
        .map(|(_, t)| *t);
    let remote_kind = s
        .remote_kinds
        .iter()
        .find(|(a, _)| *a == d.destination)
        .map_or("prflx", |(_, k)| *k);
    let path = SelectedPath {
        local_kind: if relay.is_some() { "relay" } else { "host" },
        relay_transport: relay.map(|t| t.to_string()),
        remote_kind,
        local: d.source,
        remote: d.destination,
    };
    info!(peer = %s.peer_id, %path, "media path");
    out.event(PeerEvent::PathSelected {
        peer_id: s.peer_id.clone(),
        path,
    });
}

/// Since when the session's path counts as lost: ICE said so, or nothing has come from the
/// viewer (a browser sends RTCP receiver reports about every second while it receives
/// video, and consent checks besides), whichever is earlier.
fn lost_since(s: &Session) -> Instant {
    match s.disconnected_since {
        Some(d) => d.min(s.last_received),
        None => s.last_received,
    }
}

/// A restart offer that got no answer (signaling was down, the viewer ignored it) is made
/// again after this long while the path stays lost.
const RESTART_RETRY: Duration = Duration::from_secs(4);

/// When the device should (again) restart ICE for a session whose path is lost.
fn restart_due(s: &Session, after: Duration) -> Instant {
    let first = lost_since(s) + after;
    match s.restart_at {
        Some(t) => first.max(t + RESTART_RETRY),
        None => first,
    }
}

/// The device restarts ICE itself: an offer with new credentials, keeping its candidates
/// (gathering again adds any new public address); the viewer's answer completes it.
fn restart_ice(s: &mut Session, now: Instant, out: &mut Outputs) {
    let mut api = s.rtc.sdp_api();
    api.ice_restart(true);
    let Some((offer, pending)) = api.apply() else {
        return;
    };
    s.pending_offer = Some(pending);
    s.restart_at = Some(now);
    let lost = now.saturating_duration_since(lost_since(s));
    info!(peer = %s.peer_id, ?lost, "restarting ICE");
    out.event(PeerEvent::IceRestart {
        peer_id: s.peer_id.clone(),
        reason: format!(
            "no connectivity for {} ms; offering new ICE credentials",
            lost.as_millis()
        ),
    });
    out.event(PeerEvent::LocalOffer {
        peer_id: s.peer_id.clone(),
        sdp: offer.to_sdp_string(),
    });
}

#[cfg(test)]
mod tests;
