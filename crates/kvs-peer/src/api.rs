//! The engine's vocabulary: configuration, commands in, events out, timings, stats, errors.
//!
//! Shared by the sans-IO core ([`crate::core`]) and the tokio driver ([`crate::engine`]).

use bytes::Bytes;
use kvs_media::rtp::DEFAULT_MAX_PAYLOAD;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use kvs_platform::{AudioCodec, VideoCodec};

/// A STUN/TURN server as given by signaling (or configured): `stun:` URIs give
/// server-reflexive candidates, `turn:`/`turns:` URIs relayed ones (see [`crate::nat`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// Configuration of the peer engine.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Most concurrent sessions; offers beyond it get [`PeerEvent::OfferRefused`].
    pub max_sessions: usize,
    /// Addresses to bind one UDP socket each; empty = every usable interface (loopback
    /// included, IPv6 link-local skipped).
    pub bind_addrs: Vec<IpAddr>,
    /// UDP port for every socket; 0 = an ephemeral port per socket.
    pub udp_port: u16,
    /// Take each socket's port from this inclusive range instead (the first free one), as a
    /// split-mode media side that shares one IP with its signaling side does.
    pub udp_port_range: Option<(u16, u16)>,
    /// Video sent to viewers, or none: the camera's codec, the only one declared in SDP (a
    /// viewer whose offer lacks it is refused, see [`crate::codecs`]).
    pub video: Option<VideoCodec>,
    /// Audio sent to viewers, or none: the audio source's codec (its first, when it gives
    /// several).
    pub audio: Option<AudioCodec>,
    /// Every codec the audio source gives, in preference order (see
    /// `kvs_platform::AudioCapture::codecs`); empty = just [`audio`](Self::audio). Each viewer
    /// is sent the first of these it accepts.
    pub audio_codecs: Vec<AudioCodec>,
    /// Take viewers' audio (talk-back): their packets come out of
    /// [`PeerCore::poll_talk_packet`](crate::PeerCore::poll_talk_packet) (and the engine's
    /// [`PeerHandle::take_talkback`](crate::PeerHandle::take_talkback)). Off: ignored.
    pub talkback: bool,
    /// Codecs accepted from viewers when [`talkback`](Self::talkback) is on, beside the ones
    /// sent (one list per m-line in SDP: a codec offered here can also be chosen to send).
    pub talkback_codecs: Vec<AudioCodec>,
    /// Take viewers' video (H.264) and audio for recording or display: their packets come out
    /// of [`PeerCore::poll_received`](crate::PeerCore::poll_received) (and the engine's
    /// [`PeerHandle::take_received`](crate::PeerHandle::take_received)). Offers we create then
    /// have sendrecv video (recvonly without a camera). Off: viewers' video is ignored.
    pub receive_media: bool,
    /// Accept data channels opened by viewers, and open one in offers we create.
    pub data_channel: bool,
    /// How long sent packets stay available for NACK resends. The send buffers are sized
    /// from it, see [`PeerConfig::send_buffer_video_packets`].
    pub resend_window: Duration,
    /// Expected video bitrate, for sizing the resend buffer.
    pub video_bitrate_bps: u32,
    /// STUN/TURN servers to gather candidates from (see [`crate::nat`]).
    pub ice_servers: Vec<IceServer>,
    /// What to do about NAT: srflx/relay gathering, relay-only, ICE restarts.
    pub nat: crate::nat::NatPolicy,
    /// Least time between two [`PeerEvent::KeyframeRequested`] for one session.
    pub keyframe_request_min_interval: Duration,
    /// Per-session queue lengths of the fan-out (frames).
    pub video_queue_frames: usize,
    pub audio_queue_frames: usize,
    /// How long remote candidates that arrive before their offer are held.
    pub pending_candidate_ttl: Duration,
    /// A session not connected this long after its offer/answer fails.
    pub connect_timeout: Duration,
    /// A session whose ICE stays disconnected this long fails.
    pub disconnected_timeout: Duration,
    /// Capacity of the event channel to the application.
    pub event_capacity: usize,
    /// Capacity of each frame sink (frames waiting for the engine).
    pub video_sink_frames: usize,
    pub audio_sink_frames: usize,
    /// Label of the data channel in offers we create.
    pub data_channel_label: String,
    /// Transport-wide congestion control (TWCC feedback, str0m's estimator and pacer) on every
    /// session, reported as [`PeerEvent::BitrateEstimate`]; `None` (the default): not
    /// negotiated (see [`crate::congestion`] for its memory cost).
    pub congestion_control: Option<crate::congestion::CongestionControl>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 10,
            bind_addrs: Vec::new(),
            udp_port: 0,
            udp_port_range: None,
            video: Some(VideoCodec::H264),
            audio: Some(AudioCodec::Opus),
            audio_codecs: Vec::new(),
            talkback: false,
            talkback_codecs: vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma],
            receive_media: false,
            data_channel: true,
            resend_window: Duration::from_millis(250),
            video_bitrate_bps: 2_000_000,
            ice_servers: Vec::new(),
            nat: crate::nat::NatPolicy::default(),
            keyframe_request_min_interval: Duration::from_millis(500),
            video_queue_frames: kvs_media::fanout::DEFAULT_VIDEO_QUEUE,
            audio_queue_frames: kvs_media::fanout::DEFAULT_AUDIO_QUEUE,
            pending_candidate_ttl: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(30),
            disconnected_timeout: Duration::from_secs(15),
            event_capacity: 256,
            video_sink_frames: 8,
            audio_sink_frames: 32,
            data_channel_label: "kvsDataChannel".to_string(),
            congestion_control: None,
        }
    }
}

/// Floor of the video resend buffer, so a low bitrate still keeps a keyframe's packets.
const MIN_VIDEO_PACKETS: usize = 32;
/// Opus frames are 20 ms: 50 packets a second.
const AUDIO_PACKETS_PER_SECOND: u64 = 50;
const MIN_AUDIO_PACKETS: usize = 16;

impl PeerConfig {
    /// The codecs sent, in preference order.
    pub fn send_audio_codecs(&self) -> Vec<AudioCodec> {
        match (self.audio, self.audio_codecs.is_empty()) {
            (None, _) => Vec::new(),
            (Some(c), true) => vec![c],
            (Some(_), false) => self.audio_codecs.clone(),
        }
    }

    /// The codecs enabled in SDP: those sent, then those only received.
    pub fn negotiable_audio_codecs(&self) -> Vec<AudioCodec> {
        let mut all = self.send_audio_codecs();
        if self.talkback || self.receive_media {
            for c in &self.talkback_codecs {
                if !all.contains(c) {
                    all.push(*c);
                }
            }
        }
        all
    }

    /// Most packets the video resend buffer keeps:
    /// `max(32, ceil(resend_window_s × video_bitrate_bps / 8 / 1100))`, instead of str0m's
    /// 1000, where 1100 is the payload size frames are cut to
    /// ([`kvs_media::rtp::DEFAULT_MAX_PAYLOAD`]). The payloads are shared by every viewer
    /// (see `kvs_media::rtp`); per viewer the buffer costs str0m's packet record (~430 bytes)
    /// per packet kept.
    pub fn send_buffer_video_packets(&self) -> usize {
        let bytes =
            self.resend_window.as_micros() as u64 * self.video_bitrate_bps as u64 / 8 / 1_000_000;
        let packets = bytes.div_ceil(DEFAULT_MAX_PAYLOAD as u64) as usize;
        packets.max(MIN_VIDEO_PACKETS)
    }

    /// Audio send buffer in packets: `max(16, resend_window_s × 50)`.
    pub fn send_buffer_audio_packets(&self) -> usize {
        let packets =
            (self.resend_window.as_millis() as u64 * AUDIO_PACKETS_PER_SECOND).div_ceil(1000);
        (packets as usize).max(MIN_AUDIO_PACKETS)
    }
}

/// [`PeerEvent::OfferRefused`] code: the session limit is reached.
pub const REFUSED_SESSION_LIMIT: &str = "SESSION_LIMIT";
/// [`PeerEvent::OfferRefused`] code: the viewer cannot receive the source's video codec.
pub const REFUSED_CODEC: &str = "CODEC_UNSUPPORTED";

/// What the application asks of the engine.
#[derive(Debug, Clone)]
pub enum PeerCommand {
    /// A viewer's offer: answer it (or renegotiate the live session of the same peer, or
    /// replace a dead one).
    RemoteOffer { peer_id: String, sdp: String },
    /// The answer to an offer we created with [`PeerCommand::CreateOffer`].
    RemoteAnswer { peer_id: String, sdp: String },
    /// A trickled remote candidate (`RTCIceCandidate.candidate`, with or without the
    /// `candidate:` prefix). Empty = end of candidates. `.local` (mDNS) candidates are ignored.
    RemoteCandidate {
        peer_id: String,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    },
    /// Create a device-initiated session: an offer with sendonly video, audio (sendrecv with
    /// [`PeerConfig::talkback`], so the viewer may answer with its microphone) and a data
    /// channel. Answered by [`PeerEvent::LocalOffer`].
    CreateOffer { peer_id: String },
    /// Send a message on the peer's data channel (queued until the channel is open).
    SendData {
        peer_id: String,
        data: Bytes,
        binary: bool,
    },
    /// Close the peer's session; answered by [`PeerEvent::Closed`].
    CloseSession { peer_id: String },
    /// Replace the STUN/TURN servers (fresh TURN credentials from signaling): probes start
    /// again and new sessions allocate on the new servers; live sessions keep their relays.
    SetIceServers { servers: Vec<IceServer> },
    /// Signaling is back after an interruption: ICE restart offers made while it was down may
    /// have been lost, so sessions still without a path restart again at once.
    SignalingRestored,
    /// Ask the viewer for a keyframe of the video it sends (RTCP PLI), with
    /// [`PeerConfig::receive_media`]: its stream lost packets or its decoder failed.
    RequestViewerKeyframe { peer_id: String },
    /// Change the session limit. Lowering it closes no live session: it only refuses new
    /// offers until the count is below the new limit.
    SetMaxSessions { max: usize },
    /// With [`PeerConfig::congestion_control`]: the bitrate every session's estimator probes
    /// for (clamped to its bounds), e.g. what the encoder's next step needs; probing far above
    /// what is sent floods a narrow path. Ignored without congestion control.
    SetDesiredBitrate { bps: u64 },
}

/// Milestones of one session, as durations since the offer was received (or created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTiming {
    pub answer_sent: Option<Duration>,
    pub ice_connected: Option<Duration>,
    pub dtls_connected: Option<Duration>,
    pub first_keyframe_sent: Option<Duration>,
}

/// Counters of one session, reported when it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub video_frames_sent: u64,
    pub video_frames_dropped: u64,
    pub audio_frames_sent: u64,
    pub audio_frames_dropped: u64,
    pub data_messages_sent: u64,
    pub data_messages_received: u64,
    /// Messages still queued (channel never opened or buffer full) when the session closed.
    pub data_messages_dropped: u64,
    pub keyframe_requests: u64,
    /// How long the session lived.
    pub duration: Duration,
}

/// What the engine tells the application. Every event but the gathering ones names the
/// signaling peer (the viewer's client id).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A new viewer's offer was accepted for a session.
    Requested {
        peer_id: String,
    },
    LocalAnswer {
        peer_id: String,
        sdp: String,
    },
    LocalOffer {
        peer_id: String,
        sdp: String,
    },
    /// One of our candidates, `candidate:...` without `a=`.
    LocalCandidate {
        peer_id: String,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    },
    GatheringComplete {
        peer_id: String,
    },
    OfferRefused {
        peer_id: String,
        reason: String,
        /// Machine-readable: [`REFUSED_SESSION_LIMIT`] or [`REFUSED_CODEC`].
        code: &'static str,
    },
    Connecting {
        peer_id: String,
    },
    /// ICE and DTLS are up; SRTP is ready.
    Connected {
        peer_id: String,
    },
    /// ICE lost the path (it may come back).
    Disconnected {
        peer_id: String,
    },
    Failed {
        peer_id: String,
        reason: String,
    },
    DataChannelOpen {
        peer_id: String,
    },
    DataMessage {
        peer_id: String,
        data: Bytes,
        binary: bool,
    },
    /// Force an IDR: a session became ready, the viewer sent PLI/FIR, or its queue overflowed.
    /// Rate-limited per session.
    KeyframeRequested {
        peer_id: String,
    },
    FirstKeyframeSent {
        peer_id: String,
    },
    SessionTiming {
        peer_id: String,
        timing: SessionTiming,
    },
    Closed {
        peer_id: String,
        stats: SessionStats,
    },
    /// The path media takes changed (first media on a new candidate pair): local and remote
    /// candidate types (`host`, `srflx`, `prflx`, `relay`), and for a relay how it reaches its
    /// server (`udp`, `tcp`, `tls`).
    PathSelected {
        peer_id: String,
        path: SelectedPath,
    },
    /// An ICE restart: started by the device (its path was lost), or by the viewer's offer.
    IceRestart {
        peer_id: String,
        reason: String,
    },
    /// A server-reflexive or relayed candidate was gathered (for every session).
    CandidateGathered {
        kind: String,
        addr: SocketAddr,
        from: String,
    },
    /// A STUN/TURN server failed in a way worth telling (e.g. it refused our credentials).
    NatServerError {
        uri: String,
        reason: String,
    },
    /// The session's estimate of the bitrate its path carries, with
    /// [`PeerConfig::congestion_control`] on (a few a second at most, see
    /// [`crate::congestion::ESTIMATE_MIN_INTERVAL`]).
    BitrateEstimate {
        peer_id: String,
        bps: u64,
    },
}

/// The candidate pair a session's media uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPath {
    pub local_kind: &'static str,
    /// For a relayed local candidate: how we reach the TURN server.
    pub relay_transport: Option<String>,
    pub remote_kind: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl std::fmt::Display for SelectedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "local={}/{} remote={} {} -> {}",
            self.local_kind,
            self.relay_transport.as_deref().unwrap_or("udp"),
            self.remote_kind,
            self.local,
            self.remote
        )
    }
}

impl PeerEvent {
    /// The signaling peer this event is about.
    pub fn peer_id(&self) -> &str {
        match self {
            PeerEvent::Requested { peer_id }
            | PeerEvent::LocalAnswer { peer_id, .. }
            | PeerEvent::LocalOffer { peer_id, .. }
            | PeerEvent::LocalCandidate { peer_id, .. }
            | PeerEvent::GatheringComplete { peer_id }
            | PeerEvent::OfferRefused { peer_id, .. }
            | PeerEvent::Connecting { peer_id }
            | PeerEvent::Connected { peer_id }
            | PeerEvent::Disconnected { peer_id }
            | PeerEvent::Failed { peer_id, .. }
            | PeerEvent::DataChannelOpen { peer_id }
            | PeerEvent::DataMessage { peer_id, .. }
            | PeerEvent::KeyframeRequested { peer_id }
            | PeerEvent::FirstKeyframeSent { peer_id }
            | PeerEvent::SessionTiming { peer_id, .. }
            | PeerEvent::Closed { peer_id, .. }
            | PeerEvent::PathSelected { peer_id, .. }
            | PeerEvent::IceRestart { peer_id, .. }
            | PeerEvent::BitrateEstimate { peer_id, .. } => peer_id,
            PeerEvent::CandidateGathered { .. } | PeerEvent::NatServerError { .. } => "",
        }
    }

    /// Events the engine may drop when the application does not keep up (see
    /// [`crate::engine`]): everything else is kept.
    pub fn is_droppable(&self) -> bool {
        matches!(
            self,
            PeerEvent::DataMessage { .. }
                | PeerEvent::SessionTiming { .. }
                | PeerEvent::BitrateEstimate { .. }
        )
    }
}

/// A UDP datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

/// Errors of the peer engine and viewer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid SDP from peer {peer_id}: {reason}")]
    InvalidSdp { peer_id: String, reason: String },
    #[error("invalid ICE candidate from peer {peer_id}: {reason}")]
    InvalidCandidate { peer_id: String, reason: String },
    #[error("no session for peer {0}")]
    UnknownPeer(String),
    #[error("no offer pending for peer {0}")]
    NoPendingOffer(String),
    #[error("data queue of peer {0} is full")]
    DataQueueFull(String),
    #[error("data message of {len} bytes for peer {peer_id} is larger than the channel buffer")]
    DataTooLarge { peer_id: String, len: usize },
    #[error("WebRTC error for peer {peer_id}: {reason}")]
    Rtc { peer_id: String, reason: String },
    #[error("could not create the DTLS certificate")]
    Certificate,
    #[error("no usable network address to bind")]
    NoAddress,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer engine has stopped")]
    EngineStopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_buffers_scale_with_window_and_bitrate() {
        let mut c = PeerConfig {
            resend_window: Duration::from_millis(500),
            ..PeerConfig::default()
        };
        // 500 ms × 2 Mbit/s = 125 kB = 114 packets of 1100 bytes.
        assert_eq!(c.send_buffer_video_packets(), 114);
        c.video_bitrate_bps = 100_000;
        assert_eq!(c.send_buffer_video_packets(), 32, "floor");
        c.video_bitrate_bps = 8_000_000;
        c.resend_window = Duration::from_secs(1);
        // 1 s × 8 Mbit/s = 1 MB = 910 packets of 1100 bytes.
        assert_eq!(c.send_buffer_video_packets(), 910);
        assert_eq!(c.send_buffer_audio_packets(), 50);
        c.resend_window = Duration::from_millis(100);
        assert_eq!(c.send_buffer_audio_packets(), 16);
    }
}
