//! # Messages: the typed content of the link, with an explicit byte layout.
//!
//! This module owns what one reassembled link message means: the envelope every message has
//! (version, type, status, request id, correlation id, peer client id, payload) and each
//! type's payload. [`Message::parse`] and [`Message::emit`] are exact inverses on the wire
//! format; nothing here depends on the machine's architecture (upstream copied a C struct,
//! pointer included). It must not know about framing (bytes arrive here already reassembled
//! and checked, see [`crate::frame`]), state, time or I/O.
//!
//! Envelope (little-endian; `docs/LINK.md` describes every type's payload):
//!
//! ```text
//! off len field
//!   0   1 message version (1)
//!   1   1 type code
//!   2   2 status (0 = ok)
//!   4   4 request id (0 = none)
//!   8   2 correlation id length c (<= 256)
//!  10   2 peer client id length p (<= 256)
//!  12   4 payload length n
//!  16   c correlation id (UTF-8)
//! 16+c  p peer client id (UTF-8)
//! 16+c+p n payload
//! ```
//!
//! Versioning rule: bytes 0..8 (version, type, status, request id) keep this meaning in every
//! version, so a receiver can answer any message it does not understand with an
//! [`Message::Error`] that carries the request id. Fields a type does not use are sent as zero
//! or empty and ignored on receipt. An `Error` is never answered, so two peers cannot loop.

use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

/// The message version this crate speaks.
pub const MESSAGE_VERSION: u8 = 1;
/// Bytes of the envelope before the correlation id.
pub const ENVELOPE_LEN: usize = 16;
/// Bytes at the start of every message whose meaning never changes between versions.
pub const FROZEN_PREFIX_LEN: usize = 8;
/// Longest correlation id and peer client id, in bytes (KVS's own limit).
pub const MAX_ID_LEN: usize = 256;
/// Longest refusal reason, in bytes; a longer one is cut (at a character boundary) on emit.
pub const MAX_REASON_LEN: usize = 256;
/// Longest SDP media id of a candidate.
pub const MAX_MID_LEN: usize = 256;
/// Most ICE servers in one list (upstream's limits were 16 and 5; the larger one here).
pub const MAX_ICE_SERVERS: usize = 16;
/// Most URLs of one ICE server.
pub const MAX_URLS_PER_SERVER: usize = 8;
/// Longest URL, username or credential of an ICE server.
pub const MAX_ICE_STRING: usize = 1024;
/// Snapshot quality used when a request says 0.
pub const DEFAULT_SNAPSHOT_QUALITY: u8 = 80;
/// 2024-07-01T00:00:00Z in µs: a time before this is certainly a clock that was never set.
pub const MIN_PLAUSIBLE_UNIX_MICROS: u64 = 1_719_792_000_000_000;

/// Type codes. Directions: S = signaling side, M = media side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// S→M: a viewer's SDP offer (M→S: the device's offer after a trigger).
    Offer = 0x01,
    /// M→S: the SDP answer for a viewer (S→M: a viewer's answer to the device's offer).
    Answer = 0x02,
    /// Both: a trickled ICE candidate of a viewer (S→M) or of the device (M→S).
    IceCandidate = 0x03,
    /// S→M: the complete ICE server list (pushed, or the reply to `IceServersRequest`).
    IceServers = 0x04,
    /// M→S: asks for the ICE server list.
    IceServersRequest = 0x05,
    /// S→M: create an offer for this viewer.
    TriggerOffer = 0x06,
    /// S→M: "can you take messages?"
    ReadyQuery = 0x07,
    /// M→S: "my message handler is registered; send".
    Ready = 0x08,
    /// Both: liveness, every 5 s.
    Heartbeat = 0x09,
    /// M→S: awake or going to sleep, and how many viewers.
    MediaStatus = 0x0A,
    /// M→S: this viewer is refused (code in the status field, reason in the payload).
    Refusal = 0x0B,
    /// Request / response pairs (either direction; in practice snapshot and resolution are
    /// asked by the signaling side, time by the media side).
    GetResolutionRequest = 0x10,
    GetResolutionResponse = 0x11,
    GetSnapshotRequest = 0x12,
    GetSnapshotResponse = 0x13,
    GetTimeRequest = 0x14,
    GetTimeResponse = 0x15,
    /// Remote control of the running media side (S→M in practice): one [`ControlSetting`].
    SetControlRequest = 0x16,
    SetControlResponse = 0x17,
    /// Both: the answer to a message that could not be handled. Never answered itself.
    Error = 0x7F,
}

impl MessageType {
    pub const ALL: [MessageType; 20] = [
        MessageType::Offer,
        MessageType::Answer,
        MessageType::IceCandidate,
        MessageType::IceServers,
        MessageType::IceServersRequest,
        MessageType::TriggerOffer,
        MessageType::ReadyQuery,
        MessageType::Ready,
        MessageType::Heartbeat,
        MessageType::MediaStatus,
        MessageType::Refusal,
        MessageType::GetResolutionRequest,
        MessageType::GetResolutionResponse,
        MessageType::GetSnapshotRequest,
        MessageType::GetSnapshotResponse,
        MessageType::GetTimeRequest,
        MessageType::GetTimeResponse,
        MessageType::SetControlRequest,
        MessageType::SetControlResponse,
        MessageType::Error,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.code() == code)
    }
}

/// A status or reason code (u16 on the wire). Unknown values are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const OK: Status = Status(0);
    /// The message's version is not spoken here.
    pub const UNSUPPORTED_VERSION: Status = Status(1);
    /// The message's type is not known here.
    pub const UNKNOWN_TYPE: Status = Status(2);
    /// The message could not be parsed (lengths, UTF-8, ranges, oversized ids).
    pub const MALFORMED: Status = Status(3);
    /// Too many outstanding requests, or too many viewers.
    pub const BUSY: Status = Status(4);
    /// The handler is not registered yet.
    pub const NOT_READY: Status = Status(5);
    /// What was asked for is not available (no camera, no media side).
    pub const UNAVAILABLE: Status = Status(6);
    pub const INVALID_ARGUMENT: Status = Status(7);
    pub const INTERNAL: Status = Status(8);
    pub const TIMEOUT: Status = Status(9);
    /// A valid message that this side does not take (wrong direction or state).
    pub const UNEXPECTED: Status = Status(10);
    /// The media side is going to sleep.
    pub const SLEEPING: Status = Status(11);
    /// The application refused (a viewer, a request).
    pub const REJECTED: Status = Status(12);
    /// The answer would exceed the link's message limit.
    pub const TOO_LARGE: Status = Status(13);

    pub fn is_ok(self) -> bool {
        self.0 == 0
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "ok",
            1 => "unsupported version",
            2 => "unknown type",
            3 => "malformed",
            4 => "busy",
            5 => "not ready",
            6 => "unavailable",
            7 => "invalid argument",
            8 => "internal error",
            9 => "timeout",
            10 => "unexpected",
            11 => "sleeping",
            12 => "rejected",
            13 => "too large",
            _ => "unknown status",
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({} {})", self.0, self.name())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Why an id or list could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field}: {count} entries, the limit is {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

/// A viewer's KVS client id: non-empty, at most [`MAX_ID_LEN`] bytes (checked when built, so a
/// [`Message`] can always be emitted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    pub fn new(id: impl Into<String>) -> Result<Self, ValueError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ValueError::Empty {
                field: "peer client id",
            });
        }
        check_len("peer client id", &id, MAX_ID_LEN)?;
        Ok(PeerId(id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A KVS correlation id: at most [`MAX_ID_LEN`] bytes; empty means none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CorrelationId(String);

impl CorrelationId {
    pub fn new(id: impl Into<String>) -> Result<Self, ValueError> {
        let id = id.into();
        check_len("correlation id", &id, MAX_ID_LEN)?;
        Ok(CorrelationId(id))
    }
    pub fn none() -> Self {
        CorrelationId(String::new())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ValueError> {
    if s.len() > max {
        return Err(ValueError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// An SDP offer or answer for one viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpMessage {
    pub peer: PeerId,
    pub correlation_id: CorrelationId,
    pub sdp: String,
}

/// One trickled candidate, as the browser's `RTCIceCandidateInit` has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceCandidate {
    /// The `candidate:` attribute; empty means end of candidates.
    pub candidate: String,
    /// At most [`MAX_MID_LEN`] bytes (a longer one does not parse).
    pub sdp_mid: Option<String>,
    pub sdp_mline_index: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateMessage {
    pub peer: PeerId,
    pub correlation_id: CorrelationId,
    pub candidate: IceCandidate,
}

/// A message about one viewer with nothing else in it (trigger offer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRef {
    pub peer: PeerId,
    pub correlation_id: CorrelationId,
}

/// The media side refuses a viewer; the signaling side turns it into a KVS refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub peer: PeerId,
    pub correlation_id: CorrelationId,
    /// Non-zero (sent in the envelope's status field).
    pub code: Status,
    /// Human-readable; cut to [`MAX_REASON_LEN`] bytes on emit.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaState {
    Sleeping,
    Awake,
}

/// The media side's report: awake or going to sleep, and its viewer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaStatus {
    pub state: MediaState,
    pub viewers: u16,
}

/// One ICE (STUN/TURN) server. The credential is never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
    /// How long the credentials stay valid, from when the list was fetched.
    pub ttl_secs: Option<u32>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// A complete ICE server list within the wire limits (checked when built).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServerList(Vec<IceServer>);

impl IceServerList {
    pub fn new(servers: Vec<IceServer>) -> Result<Self, ValueError> {
        if servers.len() > MAX_ICE_SERVERS {
            return Err(ValueError::TooMany {
                field: "ICE servers",
                count: servers.len(),
                max: MAX_ICE_SERVERS,
            });
        }
        for s in &servers {
            if s.urls.len() > MAX_URLS_PER_SERVER {
                return Err(ValueError::TooMany {
                    field: "ICE server URLs",
                    count: s.urls.len(),
                    max: MAX_URLS_PER_SERVER,
                });
            }
            for u in &s.urls {
                check_len("ICE server URL", u, MAX_ICE_STRING)?;
            }
            check_len(
                "ICE username",
                s.username.as_deref().unwrap_or(""),
                MAX_ICE_STRING,
            )?;
            check_len(
                "ICE credential",
                s.credential.as_deref().unwrap_or(""),
                MAX_ICE_STRING,
            )?;
        }
        Ok(IceServerList(servers))
    }
    pub fn servers(&self) -> &[IceServer] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<IceServer> {
        self.0
    }
}

/// A command one side asks of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    GetResolution,
    /// `quality` 1..=100; 0 means [`DEFAULT_SNAPSHOT_QUALITY`].
    GetSnapshot {
        quality: u8,
    },
    GetTime,
    /// Change a setting of the running media side (remote control).
    SetControl(ControlSetting),
}

impl Command {
    /// The type code of the request carrying this command.
    pub fn request_type(&self) -> MessageType {
        match self {
            Command::GetResolution => MessageType::GetResolutionRequest,
            Command::GetSnapshot { .. } => MessageType::GetSnapshotRequest,
            Command::GetTime => MessageType::GetTimeRequest,
            Command::SetControl(_) => MessageType::SetControlRequest,
        }
    }

    pub fn kind(&self) -> CommandKind {
        match self {
            Command::GetResolution => CommandKind::GetResolution,
            Command::GetSnapshot { .. } => CommandKind::GetSnapshot,
            Command::GetTime => CommandKind::GetTime,
            Command::SetControl(_) => CommandKind::SetControl,
        }
    }
}

/// One remote-control change of the running media side (the device's control parameters).
/// On the wire: a tag byte, then the value (`docs/LINK.md`). The codec carries every value;
/// whether a value can be applied (a width of 0, a bitrate the encoder cannot do) is the media
/// application's decision, answered with [`CommandResponse::Applied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlSetting {
    /// Streaming on or off. Tag 0x01, `u8` 0/1.
    Streaming(bool),
    /// Capture / encode resolution in pixels. Tag 0x02, `u16 width`, `u16 height`.
    Resolution { width: u16, height: u16 },
    /// Target video bitrate in kbit/s. Tag 0x03, `u32`.
    BitrateKbps(u32),
    /// Audio on or off. Tag 0x04, `u8` 0/1.
    Audio(bool),
    /// Most viewers at once. Tag 0x05, `u8`.
    MaxViewers(u8),
}

impl ControlSetting {
    pub const TAG_STREAMING: u8 = 0x01;
    pub const TAG_RESOLUTION: u8 = 0x02;
    pub const TAG_BITRATE_KBPS: u8 = 0x03;
    pub const TAG_AUDIO: u8 = 0x04;
    pub const TAG_MAX_VIEWERS: u8 = 0x05;

    /// The tag byte that starts this setting's payload.
    pub fn tag(&self) -> u8 {
        match self {
            ControlSetting::Streaming(_) => Self::TAG_STREAMING,
            ControlSetting::Resolution { .. } => Self::TAG_RESOLUTION,
            ControlSetting::BitrateKbps(_) => Self::TAG_BITRATE_KBPS,
            ControlSetting::Audio(_) => Self::TAG_AUDIO,
            ControlSetting::MaxViewers(_) => Self::TAG_MAX_VIEWERS,
        }
    }
}

/// A snapshot request's quality with 0 resolved to the default.
pub fn effective_quality(quality: u8) -> u8 {
    if quality == 0 {
        DEFAULT_SNAPSHOT_QUALITY
    } else {
        quality.min(100)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    GetResolution,
    GetSnapshot,
    GetTime,
    SetControl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

/// The answer to a [`Command`]: a value, or a non-zero status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResponse {
    Resolution(Result<Resolution, Status>),
    /// JPEG bytes.
    Snapshot(Result<Vec<u8>, Status>),
    /// Unix time in µs when the answer was made.
    Time(Result<u64, Status>),
    /// The answer to [`Command::SetControl`]: applied, or why not (e.g. `INVALID_ARGUMENT`
    /// for a value the device cannot take, `UNAVAILABLE` for a setting it does not have).
    Applied(Result<(), Status>),
}

impl CommandResponse {
    pub fn kind(&self) -> CommandKind {
        match self {
            CommandResponse::Resolution(_) => CommandKind::GetResolution,
            CommandResponse::Snapshot(_) => CommandKind::GetSnapshot,
            CommandResponse::Time(_) => CommandKind::GetTime,
            CommandResponse::Applied(_) => CommandKind::SetControl,
        }
    }

    /// The failed response of this kind.
    pub fn failed(kind: CommandKind, status: Status) -> Self {
        match kind {
            CommandKind::GetResolution => CommandResponse::Resolution(Err(status)),
            CommandKind::GetSnapshot => CommandResponse::Snapshot(Err(status)),
            CommandKind::GetTime => CommandResponse::Time(Err(status)),
            CommandKind::SetControl => CommandResponse::Applied(Err(status)),
        }
    }

    /// The status on the wire (an `Err(Status::OK)` is sent as `INTERNAL`: a failure must
    /// never read as success).
    pub fn status(&self) -> Status {
        let status = match self {
            CommandResponse::Resolution(r) => r.as_ref().err().copied(),
            CommandResponse::Snapshot(r) => r.as_ref().err().copied(),
            CommandResponse::Time(r) => r.as_ref().err().copied(),
            CommandResponse::Applied(r) => r.as_ref().err().copied(),
        };
        match status {
            None => Status::OK,
            Some(Status::OK) => Status::INTERNAL,
            Some(s) => s,
        }
    }
}

/// The answer to a message that could not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply {
    /// The offending message's request id (0 if it had none).
    pub request_id: u32,
    pub status: Status,
    /// The offending message's version and type code, for diagnostics.
    pub version: u8,
    pub msg_type: u8,
}

impl ErrorReply {
    /// The reply refusing a valid message of type `msg_type` with `status`.
    pub fn refusing(request_id: u32, msg_type: MessageType, status: Status) -> Self {
        ErrorReply {
            request_id,
            status,
            version: MESSAGE_VERSION,
            msg_type: msg_type.code(),
        }
    }
}

/// One link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Offer(SdpMessage),
    Answer(SdpMessage),
    IceCandidate(CandidateMessage),
    /// `request_id` is 0 for a push, or the id of the `IceServersRequest` it answers.
    IceServers {
        request_id: u32,
        servers: IceServerList,
    },
    IceServersRequest {
        request_id: u32,
    },
    TriggerOffer(PeerRef),
    ReadyQuery,
    Ready,
    Heartbeat,
    MediaStatus(MediaStatus),
    Refusal(Refusal),
    /// `request_id` must be non-zero (a zero one does not parse).
    Request {
        request_id: u32,
        command: Command,
    },
    Response {
        request_id: u32,
        response: CommandResponse,
    },
    Error(ErrorReply),
}

/// Why bytes are not a message. Every case that got past the frozen prefix knows the request
/// id, so [`MessageError::reply`] can answer it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    #[error("{len} bytes is shorter than a message envelope")]
    Truncated { len: usize },
    #[error("unsupported message version {version} (type {msg_type:#04x})")]
    UnsupportedVersion {
        version: u8,
        msg_type: u8,
        request_id: u32,
    },
    #[error("unknown message type {msg_type:#04x}")]
    UnknownType { msg_type: u8, request_id: u32 },
    #[error("{field} is {len} bytes, the limit is {max}")]
    IdTooLong {
        field: &'static str,
        len: usize,
        max: usize,
        msg_type: u8,
        request_id: u32,
    },
    #[error("malformed message of type {msg_type:#04x}: {what}")]
    Malformed {
        msg_type: u8,
        request_id: u32,
        what: &'static str,
    },
}

impl MessageError {
    /// The status an error reply carries.
    pub fn status(&self) -> Status {
        match self {
            MessageError::UnsupportedVersion { .. } => Status::UNSUPPORTED_VERSION,
            MessageError::UnknownType { .. } => Status::UNKNOWN_TYPE,
            _ => Status::MALFORMED,
        }
    }

    /// The [`Message::Error`] to answer with: `None` for input too short to name a request,
    /// and for an `Error` message (of any version) — errors are never answered, so no loop.
    pub fn reply(&self) -> Option<Message> {
        let (version, msg_type, request_id) = match *self {
            MessageError::Truncated { .. } => return None,
            MessageError::UnsupportedVersion {
                version,
                msg_type,
                request_id,
            } => (version, msg_type, request_id),
            MessageError::UnknownType {
                msg_type,
                request_id,
            } => (MESSAGE_VERSION, msg_type, request_id),
            MessageError::IdTooLong {
                msg_type,
                request_id,
                ..
            }
            | MessageError::Malformed {
                msg_type,
                request_id,
                ..
            } => (MESSAGE_VERSION, msg_type, request_id),
        };
        if msg_type == MessageType::Error.code() {
            return None;
        }
        Some(Message::Error(ErrorReply {
            request_id,
            status: self.status(),
            version,
            msg_type,
        }))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        out
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Context for payload errors: which message they are about.
#[derive(Clone, Copy)]
struct Ctx {
    msg_type: u8,
    request_id: u32,
}

impl Ctx {
    fn malformed(self, what: &'static str) -> MessageError {
        MessageError::Malformed {
            msg_type: self.msg_type,
            request_id: self.request_id,
            what,
        }
    }
    fn utf8(self, bytes: &[u8], what: &'static str) -> Result<String, MessageError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.malformed(what))
    }
}

impl Message {
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Offer(_) => MessageType::Offer,
            Message::Answer(_) => MessageType::Answer,
            Message::IceCandidate(_) => MessageType::IceCandidate,
            Message::IceServers { .. } => MessageType::IceServers,
            Message::IceServersRequest { .. } => MessageType::IceServersRequest,
            Message::TriggerOffer(_) => MessageType::TriggerOffer,
            Message::ReadyQuery => MessageType::ReadyQuery,
            Message::Ready => MessageType::Ready,
            Message::Heartbeat => MessageType::Heartbeat,
            Message::MediaStatus(_) => MessageType::MediaStatus,
            Message::Refusal(_) => MessageType::Refusal,
            Message::Request { command, .. } => command.request_type(),
            Message::Response { response, .. } => match response {
                CommandResponse::Resolution(_) => MessageType::GetResolutionResponse,
                CommandResponse::Snapshot(_) => MessageType::GetSnapshotResponse,
                CommandResponse::Time(_) => MessageType::GetTimeResponse,
                CommandResponse::Applied(_) => MessageType::SetControlResponse,
            },
            Message::Error(_) => MessageType::Error,
        }
    }

    /// The viewer this message is about, if any.
    pub fn peer(&self) -> Option<&PeerId> {
        match self {
            Message::Offer(m) | Message::Answer(m) => Some(&m.peer),
            Message::IceCandidate(m) => Some(&m.peer),
            Message::TriggerOffer(m) => Some(&m.peer),
            Message::Refusal(m) => Some(&m.peer),
            _ => None,
        }
    }

    /// Parses one reassembled message. Never panics; allocates at most about the input's size.
    pub fn parse(input: &[u8]) -> Result<Message, MessageError> {
        if input.len() < FROZEN_PREFIX_LEN {
            return Err(MessageError::Truncated { len: input.len() });
        }
        let mut r = Reader::new(input);
        let version = r.u8().unwrap_or_default();
        let msg_type = r.u8().unwrap_or_default();
        let status = Status(r.u16().unwrap_or_default());
        let request_id = r.u32().unwrap_or_default();
        if version != MESSAGE_VERSION {
            return Err(MessageError::UnsupportedVersion {
                version,
                msg_type,
                request_id,
            });
        }
        let Some(ty) = MessageType::from_code(msg_type) else {
            return Err(MessageError::UnknownType {
                msg_type,
                request_id,
            });
        };
        let ctx = Ctx {
            msg_type,
            request_id,
        };
        let (Some(corr_len), Some(peer_len), Some(payload_len)) = (r.u16(), r.u16(), r.u32())
        else {
            return Err(ctx.malformed("shorter than the 16-byte envelope"));
        };
        for (field, len) in [("correlation id", corr_len), ("peer client id", peer_len)] {
            if usize::from(len) > MAX_ID_LEN {
                return Err(MessageError::IdTooLong {
                    field,
                    len: usize::from(len),
                    max: MAX_ID_LEN,
                    msg_type,
                    request_id,
                });
            }
        }
        let declared = ENVELOPE_LEN as u64
            + u64::from(corr_len)
            + u64::from(peer_len)
            + u64::from(payload_len);
        if declared != input.len() as u64 {
            return Err(ctx.malformed("lengths disagree with the message size"));
        }
        // The lengths were checked against the input: these reads cannot fail.
        let corr = r.bytes(usize::from(corr_len)).unwrap_or_default();
        let peer = r.bytes(usize::from(peer_len)).unwrap_or_default();
        let payload = r.rest();
        let correlation_id = CorrelationId(ctx.utf8(corr, "correlation id is not UTF-8")?);
        let peer = ctx.utf8(peer, "peer client id is not UTF-8")?;
        let need_peer = || {
            if peer.is_empty() {
                Err(ctx.malformed("peer client id missing"))
            } else {
                Ok(PeerId(peer.clone()))
            }
        };
        let need_request_id = || {
            if request_id == 0 {
                Err(ctx.malformed("request id 0"))
            } else {
                Ok(request_id)
            }
        };
        let mut p = Reader::new(payload);
        let message = match ty {
            MessageType::Offer | MessageType::Answer => {
                let m = SdpMessage {
                    peer: need_peer()?,
                    correlation_id,
                    sdp: ctx.utf8(p.rest(), "SDP is not UTF-8")?,
                };
                if ty == MessageType::Offer {
                    Message::Offer(m)
                } else {
                    Message::Answer(m)
                }
            }
            MessageType::IceCandidate => Message::IceCandidate(CandidateMessage {
                peer: need_peer()?,
                correlation_id,
                candidate: parse_candidate(&mut p, ctx)?,
            }),
            MessageType::IceServers => Message::IceServers {
                request_id,
                servers: parse_ice_servers(&mut p, ctx)?,
            },
            MessageType::IceServersRequest => Message::IceServersRequest { request_id },
            MessageType::TriggerOffer => Message::TriggerOffer(PeerRef {
                peer: need_peer()?,
                correlation_id,
            }),
            MessageType::ReadyQuery => Message::ReadyQuery,
            MessageType::Ready => Message::Ready,
            MessageType::Heartbeat => Message::Heartbeat,
            MessageType::MediaStatus => {
                let (Some(state), Some(viewers)) = (p.u8(), p.u16()) else {
                    return Err(ctx.malformed("media status too short"));
                };
                let state = match state {
                    0 => MediaState::Sleeping,
                    1 => MediaState::Awake,
                    _ => return Err(ctx.malformed("media state not 0 or 1")),
                };
                Message::MediaStatus(MediaStatus { state, viewers })
            }
            MessageType::Refusal => {
                if status.is_ok() {
                    return Err(ctx.malformed("refusal with status 0"));
                }
                let reason = p.rest();
                if reason.len() > MAX_REASON_LEN {
                    return Err(ctx.malformed("refusal reason longer than 256 bytes"));
                }
                Message::Refusal(Refusal {
                    peer: need_peer()?,
                    correlation_id,
                    code: status,
                    reason: ctx.utf8(reason, "refusal reason is not UTF-8")?,
                })
            }
            MessageType::GetResolutionRequest => Message::Request {
                request_id: need_request_id()?,
                command: Command::GetResolution,
            },
            MessageType::GetSnapshotRequest => {
                let quality = p
                    .u8()
                    .ok_or_else(|| ctx.malformed("snapshot request without quality"))?;
                if quality > 100 {
                    return Err(ctx.malformed("snapshot quality above 100"));
                }
                Message::Request {
                    request_id: need_request_id()?,
                    command: Command::GetSnapshot { quality },
                }
            }
            MessageType::GetTimeRequest => Message::Request {
                request_id: need_request_id()?,
                command: Command::GetTime,
            },
            MessageType::SetControlRequest => Message::Request {
                request_id: need_request_id()?,
                command: Command::SetControl(parse_control(&mut p, ctx)?),
            },
            MessageType::GetResolutionResponse
            | MessageType::GetSnapshotResponse
            | MessageType::GetTimeResponse
            | MessageType::SetControlResponse => {
                let request_id = need_request_id()?;
                let response = if !status.is_ok() {
                    if !payload.is_empty() {
                        return Err(ctx.malformed("failed response with a payload"));
                    }
                    let kind = match ty {
                        MessageType::GetResolutionResponse => CommandKind::GetResolution,
                        MessageType::GetSnapshotResponse => CommandKind::GetSnapshot,
                        MessageType::SetControlResponse => CommandKind::SetControl,
                        _ => CommandKind::GetTime,
                    };
                    CommandResponse::failed(kind, status)
                } else {
                    match ty {
                        MessageType::GetResolutionResponse => {
                            let (Some(width), Some(height)) = (p.u32(), p.u32()) else {
                                return Err(ctx.malformed("resolution too short"));
                            };
                            CommandResponse::Resolution(Ok(Resolution { width, height }))
                        }
                        MessageType::GetSnapshotResponse => {
                            CommandResponse::Snapshot(Ok(p.rest().to_vec()))
                        }
                        // Nothing follows a success; a payload is refused as trailing bytes.
                        MessageType::SetControlResponse => CommandResponse::Applied(Ok(())),
                        _ => {
                            let t = p.u64().ok_or_else(|| ctx.malformed("time too short"))?;
                            CommandResponse::Time(Ok(t))
                        }
                    }
                };
                Message::Response {
                    request_id,
                    response,
                }
            }
            MessageType::Error => {
                let (Some(version), Some(msg_type)) = (p.u8(), p.u8()) else {
                    return Err(ctx.malformed("error reply too short"));
                };
                Message::Error(ErrorReply {
                    request_id,
                    status,
                    version,
                    msg_type,
                })
            }
        };
        if !p.is_empty() {
            return Err(ctx.malformed("trailing bytes after the payload"));
        }
        Ok(message)
    }

    /// Appends the message's bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let empty = CorrelationId::none();
        let (corr, peer): (&CorrelationId, &str) = match self {
            Message::Offer(m) | Message::Answer(m) => (&m.correlation_id, m.peer.as_str()),
            Message::IceCandidate(m) => (&m.correlation_id, m.peer.as_str()),
            Message::TriggerOffer(m) => (&m.correlation_id, m.peer.as_str()),
            Message::Refusal(m) => (&m.correlation_id, m.peer.as_str()),
            _ => (&empty, ""),
        };
        let (status, request_id) = match self {
            Message::IceServers { request_id, .. }
            | Message::IceServersRequest { request_id }
            | Message::Request { request_id, .. } => (Status::OK, *request_id),
            Message::Response {
                request_id,
                response,
            } => (response.status(), *request_id),
            Message::Refusal(r) => (
                if r.code.is_ok() {
                    Status::REJECTED
                } else {
                    r.code
                },
                0,
            ),
            Message::Error(e) => (e.status, e.request_id),
            _ => (Status::OK, 0),
        };
        let start = out.len();
        out.push(MESSAGE_VERSION);
        out.push(self.msg_type().code());
        out.extend_from_slice(&status.0.to_le_bytes());
        out.extend_from_slice(&request_id.to_le_bytes());
        // Ids are bounded by construction (PeerId/CorrelationId), so these fit in u16.
        out.extend_from_slice(&(corr.as_str().len() as u16).to_le_bytes());
        out.extend_from_slice(&(peer.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 4]); // payload length, patched below
        out.extend_from_slice(corr.as_str().as_bytes());
        out.extend_from_slice(peer.as_bytes());
        let payload_start = out.len();
        match self {
            Message::Offer(m) | Message::Answer(m) => out.extend_from_slice(m.sdp.as_bytes()),
            Message::IceCandidate(m) => emit_candidate(&m.candidate, out),
            Message::IceServers { servers, .. } => emit_ice_servers(servers, out),
            Message::MediaStatus(s) => {
                out.push(match s.state {
                    MediaState::Sleeping => 0,
                    MediaState::Awake => 1,
                });
                out.extend_from_slice(&s.viewers.to_le_bytes());
            }
            Message::Refusal(r) => out.extend_from_slice(cut(&r.reason, MAX_REASON_LEN).as_bytes()),
            Message::Request {
                command: Command::GetSnapshot { quality },
                ..
            } => out.push((*quality).min(100)),
            Message::Request {
                command: Command::SetControl(setting),
                ..
            } => emit_control(setting, out),
            Message::Response { response, .. } => match response {
                CommandResponse::Resolution(Ok(r)) => {
                    out.extend_from_slice(&r.width.to_le_bytes());
                    out.extend_from_slice(&r.height.to_le_bytes());
                }
                CommandResponse::Snapshot(Ok(jpeg)) => out.extend_from_slice(jpeg),
                CommandResponse::Time(Ok(t)) => out.extend_from_slice(&t.to_le_bytes()),
                _ => {}
            },
            Message::Error(e) => {
                out.push(e.version);
                out.push(e.msg_type);
            }
            _ => {}
        }
        let payload_len = (out.len() - payload_start) as u32;
        out[start + 12..start + 16].copy_from_slice(&payload_len.to_le_bytes());
    }

    /// The message as a new byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.emit(&mut out);
        out
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse_control(p: &mut Reader<'_>, ctx: Ctx) -> Result<ControlSetting, MessageError> {
    let tag = p
        .u8()
        .ok_or_else(|| ctx.malformed("control request without a setting"))?;
    let short = || ctx.malformed("control value too short");
    let flag = |b: u8| match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ctx.malformed("control on/off value not 0 or 1")),
    };
    Ok(match tag {
        ControlSetting::TAG_STREAMING => {
            ControlSetting::Streaming(flag(p.u8().ok_or_else(short)?)?)
        }
        ControlSetting::TAG_RESOLUTION => {
            let (Some(width), Some(height)) = (p.u16(), p.u16()) else {
                return Err(short());
            };
            ControlSetting::Resolution { width, height }
        }
        ControlSetting::TAG_BITRATE_KBPS => ControlSetting::BitrateKbps(p.u32().ok_or_else(short)?),
        ControlSetting::TAG_AUDIO => ControlSetting::Audio(flag(p.u8().ok_or_else(short)?)?),
        ControlSetting::TAG_MAX_VIEWERS => ControlSetting::MaxViewers(p.u8().ok_or_else(short)?),
        _ => return Err(ctx.malformed("unknown control setting tag")),
    })
}

fn emit_control(setting: &ControlSetting, out: &mut Vec<u8>) {
    out.push(setting.tag());
    match *setting {
        ControlSetting::Streaming(on) | ControlSetting::Audio(on) => out.push(u8::from(on)),
        ControlSetting::Resolution { width, height } => {
            out.extend_from_slice(&width.to_le_bytes());
            out.extend_from_slice(&height.to_le_bytes());
        }
        ControlSetting::BitrateKbps(kbps) => out.extend_from_slice(&kbps.to_le_bytes()),
        ControlSetting::MaxViewers(n) => out.push(n),
    }
}

const CAND_HAS_MLINE: u8 = 0x01;
const CAND_HAS_MID: u8 = 0x02;

fn parse_candidate(p: &mut Reader<'_>, ctx: Ctx) -> Result<IceCandidate, MessageError> {
    let (Some(flags), Some(mline), Some(mid_len)) = (p.u8(), p.u16(), p.u16()) else {
        return Err(ctx.malformed("candidate header too short"));
    };
    if flags & !(CAND_HAS_MLINE | CAND_HAS_MID) != 0 {
        return Err(ctx.malformed("candidate flags reserved bits set"));
    }
    if flags & CAND_HAS_MLINE == 0 && mline != 0 {
        return Err(ctx.malformed("m-line index without its flag"));
    }
    if flags & CAND_HAS_MID == 0 && mid_len != 0 {
        return Err(ctx.malformed("mid without its flag"));
    }
    if usize::from(mid_len) > MAX_MID_LEN {
        return Err(ctx.malformed("mid longer than 256 bytes"));
    }
    let mid = p
        .bytes(usize::from(mid_len))
        .ok_or_else(|| ctx.malformed("mid past the payload"))?;
    let candidate = ctx.utf8(p.rest(), "candidate is not UTF-8")?;
    Ok(IceCandidate {
        candidate,
        sdp_mid: if flags & CAND_HAS_MID != 0 {
            Some(ctx.utf8(mid, "mid is not UTF-8")?)
        } else {
            None
        },
        sdp_mline_index: (flags & CAND_HAS_MLINE != 0).then_some(mline),
    })
}

fn emit_candidate(c: &IceCandidate, out: &mut Vec<u8>) {
    let mid = c.sdp_mid.as_deref().map(|m| cut(m, MAX_MID_LEN));
    let mut flags = 0;
    if c.sdp_mline_index.is_some() {
        flags |= CAND_HAS_MLINE;
    }
    if mid.is_some() {
        flags |= CAND_HAS_MID;
    }
    out.push(flags);
    out.extend_from_slice(&c.sdp_mline_index.unwrap_or(0).to_le_bytes());
    let mid = mid.unwrap_or("");
    out.extend_from_slice(&(mid.len() as u16).to_le_bytes());
    out.extend_from_slice(mid.as_bytes());
    out.extend_from_slice(c.candidate.as_bytes());
}

const ICE_HAS_USERNAME: u8 = 0x01;
const ICE_HAS_CREDENTIAL: u8 = 0x02;
const ICE_HAS_TTL: u8 = 0x04;

fn parse_ice_servers(p: &mut Reader<'_>, ctx: Ctx) -> Result<IceServerList, MessageError> {
    let count = p
        .u8()
        .ok_or_else(|| ctx.malformed("ICE server list without a count"))?;
    if usize::from(count) > MAX_ICE_SERVERS {
        return Err(ctx.malformed("more than 16 ICE servers"));
    }
    let mut servers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (Some(flags), Some(ttl), Some(url_count)) = (p.u8(), p.u32(), p.u8()) else {
            return Err(ctx.malformed("ICE server entry too short"));
        };
        if flags & !(ICE_HAS_USERNAME | ICE_HAS_CREDENTIAL | ICE_HAS_TTL) != 0 {
            return Err(ctx.malformed("ICE server flags reserved bits set"));
        }
        if flags & ICE_HAS_TTL == 0 && ttl != 0 {
            return Err(ctx.malformed("ICE server TTL without its flag"));
        }
        if usize::from(url_count) > MAX_URLS_PER_SERVER {
            return Err(ctx.malformed("more than 8 URLs for one ICE server"));
        }
        let mut urls = Vec::with_capacity(usize::from(url_count));
        for _ in 0..url_count {
            urls.push(ice_string(p, ctx)?);
        }
        let username = ice_string(p, ctx)?;
        let credential = ice_string(p, ctx)?;
        let optional = |flag: u8, s: String| {
            if flags & flag != 0 {
                Ok(Some(s))
            } else if s.is_empty() {
                Ok(None)
            } else {
                Err(ctx.malformed("ICE server string without its flag"))
            }
        };
        servers.push(IceServer {
            urls,
            username: optional(ICE_HAS_USERNAME, username)?,
            credential: optional(ICE_HAS_CREDENTIAL, credential)?,
            ttl_secs: (flags & ICE_HAS_TTL != 0).then_some(ttl),
        });
    }
    Ok(IceServerList(servers))
}

fn ice_string(p: &mut Reader<'_>, ctx: Ctx) -> Result<String, MessageError> {
    let len = p
        .u16()
        .ok_or_else(|| ctx.malformed("ICE string length missing"))?;
    if usize::from(len) > MAX_ICE_STRING {
        return Err(ctx.malformed("ICE string longer than 1024 bytes"));
    }
    let bytes = p
        .bytes(usize::from(len))
        .ok_or_else(|| ctx.malformed("ICE string past the payload"))?;
    ctx.utf8(bytes, "ICE string is not UTF-8")
}

fn emit_ice_servers(list: &IceServerList, out: &mut Vec<u8>) {
    // IceServerList is validated when built: counts and lengths fit their fields.
    out.push(list.0.len() as u8);
    for s in &list.0 {
        let mut flags = 0;
        if s.username.is_some() {
            flags |= ICE_HAS_USERNAME;
        }
        if s.credential.is_some() {
            flags |= ICE_HAS_CREDENTIAL;
        }
        if s.ttl_secs.is_some() {
            flags |= ICE_HAS_TTL;
        }
        out.push(flags);
        out.extend_from_slice(&s.ttl_secs.unwrap_or(0).to_le_bytes());
        out.push(s.urls.len() as u8);
        for u in &s.urls {
            put_str16(u, out);
        }
        put_str16(s.username.as_deref().unwrap_or(""), out);
        put_str16(s.credential.as_deref().unwrap_or(""), out);
    }
}

fn put_str16(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The other side's clock corrected by half the round trip: its best estimate of the remote
/// unix time (µs) at the instant `received`. The answer was made somewhere between `sent` and
/// `received`; assuming the middle bounds the error by half the round trip.
pub fn corrected_unix_micros(remote_unix_micros: u64, sent: Instant, received: Instant) -> u64 {
    let half = received.saturating_duration_since(sent) / 2;
    remote_unix_micros.saturating_add(u64::try_from(half.as_micros()).unwrap_or(u64::MAX))
}

/// One GetTime answer with the instants it was asked and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSample {
    pub remote_unix_micros: u64,
    pub sent: Instant,
    pub received: Instant,
}

impl TimeSample {
    pub fn round_trip(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }
    /// See [`corrected_unix_micros`]: the remote time at `received`.
    pub fn corrected_unix_micros(&self) -> u64 {
        corrected_unix_micros(self.remote_unix_micros, self.sent, self.received)
    }
    /// The remote unix time (µs) at `now`, extrapolated with the local monotonic clock.
    pub fn unix_micros_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.received).as_micros();
        self.corrected_unix_micros()
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
    /// False for a clock that was obviously never set (before mid-2024).
    pub fn is_plausible(&self) -> bool {
        self.remote_unix_micros >= MIN_PLAUSIBLE_UNIX_MICROS
    }
}
