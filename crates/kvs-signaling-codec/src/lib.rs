//! Core layer: the KVS signaling wire types and their codec, sans-IO.
//!
//! Owns: the two frame shapes of the KVS data plane (client→service [`ClientFrame`],
//! service→client [`ServiceFrame`]), the base64-of-JSON message payloads ([`SdpPayload`],
//! [`IceCandidateInit`]), the one unified [`SignalingMessage`] the application layer works with,
//! the limits the service enforces (frame size, payload size via [`base64_decoded_len`]), the
//! client-id rule ([`validate_client_id`]) and the [`IceServer`] value handed from signaling to
//! the peer connections ([`ice`]).
//!
//! Must not touch: sockets, tasks, clocks, request signing or any other I/O. Everything here is
//! a pure function of its input, so the same code serves the device-side clients
//! (`kvs-signaling`), the local service (`kvs-signaling-service`) and the fuzzers, and the
//! service can use it without pulling in the clients. Remote input never panics: every
//! malformed frame becomes a [`CodecError`].
//!
//! Parsing follows what real clients send (see `docs/KVS-SIGNALING.md` §2): keys are
//! matched case-insensitively (the C SDK sends `RecipientClientId`, `MessagePayload`, …),
//! unknown keys (such as the C SDK's `IceServerList`) are ignored, and empty strings in optional
//! fields count as absent.

pub mod ice;

pub use ice::IceServer;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Largest WebSocket text frame accepted by the parsers, in bytes. A 10 KiB payload is about
/// 13.7 KiB in base64; the rest leaves room for the C SDK's extra keys (`IceServerList`).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Largest decoded message payload, in bytes (the service limit).
pub const MAX_PAYLOAD_BYTES: usize = 10 * 1024;

/// Longest client id the service accepts.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Base64 as browsers (`btoa`) and the C SDK write it; padding is optional on input.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Every way a frame or payload can be rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    #[error("unknown message type `{0}`")]
    UnknownMessageType(String),
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("payload is not valid base64: {0}")]
    InvalidBase64(String),
    #[error("payload is not the expected JSON: {0}")]
    InvalidPayload(String),
    #[error("invalid client id: {0}")]
    InvalidClientId(&'static str),
    #[error("a {kind:?} message needs {expected}")]
    PayloadMismatch {
        kind: MessageKind,
        expected: &'static str,
    },
    #[error("a {0:?} message cannot be sent by a client")]
    NotSendableByClient(MessageKind),
}

/// Checks a client id against the service's rules: 1–256 characters of `[a-zA-Z0-9_.-]`, not
/// starting with `AWS_`.
pub fn validate_client_id(id: &str) -> Result<(), CodecError> {
    if id.is_empty() {
        return Err(CodecError::InvalidClientId("empty"));
    }
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(CodecError::InvalidClientId("longer than 256 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(CodecError::InvalidClientId(
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    if id.starts_with("AWS_") {
        return Err(CodecError::InvalidClientId("must not start with AWS_"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// Whether an SDP is an offer or an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
}

/// The payload of SDP_OFFER / SDP_ANSWER: `{"type":"offer"|"answer","sdp":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdpPayload {
    #[serde(rename = "type")]
    pub sdp_type: SdpType,
    pub sdp: String,
    /// This project's refusal extension (docs/PROTOCOL.md): an answer with an empty SDP and
    /// this object tells a viewer why its offer was refused. Real KVS relays it untouched.
    #[serde(
        rename = "kvsWebrtcError",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error: Option<PeerRefusal>,
}

/// Why a master refused a viewer's offer (`{"code","reason"}` inside an answer payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRefusal {
    pub code: String,
    pub reason: String,
}

/// The payload of ICE_CANDIDATE, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidateInit {
    /// The `candidate:` attribute line; empty means end of candidates.
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_index"
    )]
    pub sdp_m_line_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// Accepts `sdpMLineIndex` as a number, a numeric string or null (clients differ).
fn lenient_index<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("sdpMLineIndex out of range")),
        Some(Value::String(s)) => s
            .parse::<u16>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("sdpMLineIndex is not a number")),
        Some(_) => Err(serde::de::Error::custom("sdpMLineIndex is not a number")),
    }
}

/// Encodes a payload as base64 of its JSON.
pub fn encode_payload<T: Serialize>(payload: &T) -> String {
    // Serialising these plain structs to a string cannot fail.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    BASE64.encode(json)
}

/// How many bytes the base64 text `b64` decodes to, counted without decoding or allocating:
/// the one payload-size rule, shared by the parsers, the encoder and the service's routing.
///
/// Surrounding whitespace is not counted and `=` padding is optional, as in
/// [`decode_payload_bytes`]. The count is exact for every text the decoder accepts; for any
/// other text it is what text of that length would carry (the decoder refuses it anyway).
pub fn base64_decoded_len(b64: &str) -> usize {
    let b64 = b64.trim();
    // Padding carries no data, and a valid group ends in at most two `=`.
    let data = b64
        .strip_suffix("==")
        .or_else(|| b64.strip_suffix('='))
        .unwrap_or(b64);
    // Four characters carry three bytes; a final partial group of 2 or 3 characters carries
    // one or two (a lone character carries none, and only invalid text has one).
    data.len() / 4 * 3 + (data.len() % 4).saturating_sub(1)
}

/// Decodes base64 into bytes, refusing anything that would exceed [`MAX_PAYLOAD_BYTES`].
pub fn decode_payload_bytes(b64: &str) -> Result<Vec<u8>, CodecError> {
    let b64 = b64.trim();
    // Sized before decoding, so an oversized payload is never allocated.
    let len = base64_decoded_len(b64);
    if len > MAX_PAYLOAD_BYTES {
        return Err(CodecError::PayloadTooLarge {
            len,
            max: MAX_PAYLOAD_BYTES,
        });
    }
    BASE64
        .decode(b64)
        .map_err(|e| CodecError::InvalidBase64(e.to_string()))
}

/// Decodes a base64-of-JSON payload into `T`.
pub fn decode_payload<T: DeserializeOwned>(b64: &str) -> Result<T, CodecError> {
    let bytes = decode_payload_bytes(b64)?;
    serde_json::from_slice(&bytes).map_err(|e| CodecError::InvalidPayload(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// The `action` of a client→service frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    SdpOffer,
    SdpAnswer,
    IceCandidate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SdpOffer => "SDP_OFFER",
            Action::SdpAnswer => "SDP_ANSWER",
            Action::IceCandidate => "ICE_CANDIDATE",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CodecError> {
        match s {
            "SDP_OFFER" => Ok(Action::SdpOffer),
            "SDP_ANSWER" => Ok(Action::SdpAnswer),
            "ICE_CANDIDATE" => Ok(Action::IceCandidate),
            other => Err(CodecError::UnknownAction(truncate(other))),
        }
    }

    /// The service message type that carries this action to its recipient.
    pub fn message_type(self) -> ServiceMessageType {
        match self {
            Action::SdpOffer => ServiceMessageType::SdpOffer,
            Action::SdpAnswer => ServiceMessageType::SdpAnswer,
            Action::IceCandidate => ServiceMessageType::IceCandidate,
        }
    }
}

/// The `messageType` of a service→client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceMessageType {
    SdpOffer,
    SdpAnswer,
    IceCandidate,
    GoAway,
    ReconnectIceServer,
    StatusResponse,
}

impl ServiceMessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMessageType::SdpOffer => "SDP_OFFER",
            ServiceMessageType::SdpAnswer => "SDP_ANSWER",
            ServiceMessageType::IceCandidate => "ICE_CANDIDATE",
            ServiceMessageType::GoAway => "GO_AWAY",
            ServiceMessageType::ReconnectIceServer => "RECONNECT_ICE_SERVER",
            ServiceMessageType::StatusResponse => "STATUS_RESPONSE",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CodecError> {
        match s {
            "SDP_OFFER" => Ok(ServiceMessageType::SdpOffer),
            "SDP_ANSWER" => Ok(ServiceMessageType::SdpAnswer),
            "ICE_CANDIDATE" => Ok(ServiceMessageType::IceCandidate),
            "GO_AWAY" => Ok(ServiceMessageType::GoAway),
            "RECONNECT_ICE_SERVER" => Ok(ServiceMessageType::ReconnectIceServer),
            "STATUS_RESPONSE" => Ok(ServiceMessageType::StatusResponse),
            other => Err(CodecError::UnknownMessageType(truncate(other))),
        }
    }
}

/// A client→service frame: `{"action","recipientClientId","messagePayload","correlationId"}`.
/// `message_payload` stays base64 here: the service routes it without decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub action: Action,
    pub recipient_client_id: Option<String>,
    pub message_payload: String,
    pub correlation_id: Option<String>,
}

/// The `statusResponse` of a STATUS_RESPONSE frame (sent only on failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusResponse {
    pub correlation_id: Option<String>,
    pub error_type: String,
    /// An HTTP-like status code, e.g. "400" (a string on the wire; numbers are accepted too).
    pub status_code: String,
    pub description: Option<String>,
    pub success: bool,
}

/// A service→client frame: `{"senderClientId","messageType","messagePayload","statusResponse"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFrame {
    pub message_type: ServiceMessageType,
    pub sender_client_id: Option<String>,
    /// Base64 payload; absent for GO_AWAY, RECONNECT_ICE_SERVER and STATUS_RESPONSE.
    pub message_payload: Option<String>,
    pub status_response: Option<StatusResponse>,
}

/// Parses raw frame bytes into a JSON object, enforcing the frame size limit.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::FrameTooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CodecError::NotAnObject),
        Err(e) => Err(CodecError::InvalidJson(e.to_string())),
    }
}

/// Finds a key case-insensitively.
fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// An optional string field: absent, null and "" are all `None`.
fn opt_string(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, CodecError> {
    match get_ci(map, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(CodecError::WrongType {
            field: key,
            expected: "a string",
        }),
    }
}

fn req_string(map: &Map<String, Value>, key: &'static str) -> Result<String, CodecError> {
    opt_string(map, key)?.ok_or(CodecError::MissingField(key))
}

/// Best-effort extraction of a `correlationId` from a frame that failed to parse, so the
/// service can still answer it with a STATUS_RESPONSE.
pub fn salvage_correlation_id(bytes: &[u8]) -> Option<String> {
    let map = parse_object(bytes).ok()?;
    opt_string(&map, "correlationId").ok().flatten()
}

impl ClientFrame {
    /// Parses a client→service frame. The payload is checked for size and base64 syntax but
    /// not decoded further (the service forwards it as is).
    pub fn parse(bytes: &[u8]) -> Result<Self, CodecError> {
        let map = parse_object(bytes)?;
        let action = Action::parse(&req_string(&map, "action")?)?;
        let message_payload = req_string(&map, "messagePayload")?;
        decode_payload_bytes(&message_payload)?;
        Ok(ClientFrame {
            action,
            recipient_client_id: opt_string(&map, "recipientClientId")?,
            message_payload,
            correlation_id: opt_string(&map, "correlationId")?,
        })
    }

    /// Emits the frame as JSON text with the canonical (camelCase) keys.
    pub fn emit(&self) -> String {
        let mut map = Map::new();
        map.insert("action".into(), self.action.as_str().into());
        if let Some(r) = &self.recipient_client_id {
            map.insert("recipientClientId".into(), r.clone().into());
        }
        map.insert("messagePayload".into(), self.message_payload.clone().into());
        if let Some(c) = &self.correlation_id {
            map.insert("correlationId".into(), c.clone().into());
        }
        Value::Object(map).to_string()
    }
}

impl StatusResponse {
    /// A failure status answering `correlation_id`.
    pub fn failure(
        correlation_id: impl Into<String>,
        error_type: impl Into<String>,
        status_code: u16,
        description: impl Into<String>,
    ) -> Self {
        StatusResponse {
            correlation_id: Some(correlation_id.into()),
            error_type: error_type.into(),
            status_code: status_code.to_string(),
            description: Some(description.into()),
            success: false,
        }
    }

    fn from_value(value: &Value) -> Result<Self, CodecError> {
        let Value::Object(map) = value else {
            return Err(CodecError::WrongType {
                field: "statusResponse",
                expected: "an object",
            });
        };
        let status_code = match get_ci(map, "statusCode") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(CodecError::WrongType {
                    field: "statusCode",
                    expected: "a string or number",
                })
            }
        };
        let success = match get_ci(map, "success") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(CodecError::WrongType {
                    field: "success",
                    expected: "a boolean",
                })
            }
        };
        Ok(StatusResponse {
            correlation_id: opt_string(map, "correlationId")?,
            error_type: opt_string(map, "errorType")?.unwrap_or_default(),
            status_code,
            description: opt_string(map, "description")?,
            success,
        })
    }

    fn to_value(&self) -> Value {
        let mut map = Map::new();
        if let Some(c) = &self.correlation_id {
            map.insert("correlationId".into(), c.clone().into());
        }
        map.insert("errorType".into(), self.error_type.clone().into());
        map.insert("statusCode".into(), self.status_code.clone().into());
        if let Some(d) = &self.description {
            map.insert("description".into(), d.clone().into());
        }
        map.insert("success".into(), self.success.into());
        Value::Object(map)
    }
}

impl ServiceFrame {
    /// Parses a service→client frame. A STATUS_RESPONSE must carry its `statusResponse`.
    pub fn parse(bytes: &[u8]) -> Result<Self, CodecError> {
        let map = parse_object(bytes)?;
        let message_type = ServiceMessageType::parse(&req_string(&map, "messageType")?)?;
        let message_payload = opt_string(&map, "messagePayload")?;
        if let Some(p) = &message_payload {
            decode_payload_bytes(p)?;
        }
        let status_response = match get_ci(&map, "statusResponse") {
            None | Some(Value::Null) => None,
            Some(v) => Some(StatusResponse::from_value(v)?),
        };
        if message_type == ServiceMessageType::StatusResponse && status_response.is_none() {
            return Err(CodecError::MissingField("statusResponse"));
        }
        Ok(ServiceFrame {
            message_type,
            sender_client_id: opt_string(&map, "senderClientId")?,
            message_payload,
            status_response,
        })
    }

    /// Emits the frame as JSON text; absent fields are left out.
    pub fn emit(&self) -> String {
        let mut map = Map::new();
        if let Some(s) = &self.sender_client_id {
            map.insert("senderClientId".into(), s.clone().into());
        }
        map.insert("messageType".into(), self.message_type.as_str().into());
        if let Some(p) = &self.message_payload {
            map.insert("messagePayload".into(), p.clone().into());
        }
        if let Some(s) = &self.status_response {
            map.insert("statusResponse".into(), s.to_value());
        }
        Value::Object(map).to_string()
    }

    /// A GO_AWAY frame.
    pub fn go_away() -> Self {
        ServiceFrame {
            message_type: ServiceMessageType::GoAway,
            sender_client_id: None,
            message_payload: None,
            status_response: None,
        }
    }

    /// A STATUS_RESPONSE frame carrying `status`.
    pub fn status(status: StatusResponse) -> Self {
        ServiceFrame {
            message_type: ServiceMessageType::StatusResponse,
            sender_client_id: None,
            message_payload: None,
            status_response: Some(status),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The unified message
// ---------------------------------------------------------------------------------------------

/// What a [`SignalingMessage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Offer,
    Answer,
    IceCandidate,
    /// The service asks the client to reconnect now.
    GoAway,
    /// The service asks the client to refresh its ICE servers.
    ReconnectIceServer,
    /// The service reports that an earlier message failed.
    StatusResponse,
}

/// The decoded payload of a [`SignalingMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagePayload {
    None,
    Sdp(String),
    Candidate(IceCandidateInit),
    Status(StatusResponse),
    /// An answer that refuses the offer (the project's payload extension, see [`PeerRefusal`]).
    Refusal(PeerRefusal),
}

/// Anything that names (or does not name) the peer of a message: `"id"`, `&String`,
/// `String`, `Some(id)` or `None`. An empty id counts as none.
pub trait IntoPeerId {
    fn into_peer_id(self) -> Option<String>;
}

impl IntoPeerId for &str {
    fn into_peer_id(self) -> Option<String> {
        (!self.is_empty()).then(|| self.to_string())
    }
}

impl IntoPeerId for &String {
    fn into_peer_id(self) -> Option<String> {
        self.as_str().into_peer_id()
    }
}

impl IntoPeerId for String {
    fn into_peer_id(self) -> Option<String> {
        (!self.is_empty()).then_some(self)
    }
}

impl IntoPeerId for Option<String> {
    fn into_peer_id(self) -> Option<String> {
        self.and_then(IntoPeerId::into_peer_id)
    }
}

/// The one signaling message the application layer sees, whichever direction it travels.
///
/// `peer_client_id` is the other party: the recipient when sent by a master, the sender when
/// received by a master; `None` for messages to/from the master seen from a viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalingMessage {
    pub kind: MessageKind,
    pub peer_client_id: Option<String>,
    pub correlation_id: Option<String>,
    pub payload: MessagePayload,
}

impl SignalingMessage {
    pub fn offer(peer: impl IntoPeerId, sdp: impl Into<String>) -> Self {
        Self::new(
            MessageKind::Offer,
            peer.into_peer_id(),
            MessagePayload::Sdp(sdp.into()),
        )
    }

    pub fn answer(peer: impl IntoPeerId, sdp: impl Into<String>) -> Self {
        Self::new(
            MessageKind::Answer,
            peer.into_peer_id(),
            MessagePayload::Sdp(sdp.into()),
        )
    }

    pub fn ice_candidate(peer: impl IntoPeerId, candidate: IceCandidateInit) -> Self {
        Self::new(
            MessageKind::IceCandidate,
            peer.into_peer_id(),
            MessagePayload::Candidate(candidate),
        )
    }

    /// An ICE candidate from its parts (no username fragment).
    pub fn candidate(
        peer: impl IntoPeerId,
        candidate: impl Into<String>,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    ) -> Self {
        Self::ice_candidate(
            peer,
            IceCandidateInit {
                candidate: candidate.into(),
                sdp_mid,
                sdp_m_line_index,
                username_fragment: None,
            },
        )
    }

    /// An answer refusing `peer`'s offer with code `REFUSED` (see [`PeerRefusal`]).
    pub fn refusal(
        peer: impl IntoPeerId,
        reason: impl Into<String>,
        correlation_id: Option<String>,
    ) -> Self {
        Self::refusal_with_code(peer, "REFUSED", reason, correlation_id)
    }

    /// An answer refusing `peer`'s offer with a machine-readable code (e.g. `SESSION_LIMIT`).
    pub fn refusal_with_code(
        peer: impl IntoPeerId,
        code: impl Into<String>,
        reason: impl Into<String>,
        correlation_id: Option<String>,
    ) -> Self {
        SignalingMessage {
            kind: MessageKind::Answer,
            peer_client_id: peer.into_peer_id(),
            correlation_id,
            payload: MessagePayload::Refusal(PeerRefusal {
                code: code.into(),
                reason: reason.into(),
            }),
        }
    }

    fn new(kind: MessageKind, peer_client_id: Option<String>, payload: MessagePayload) -> Self {
        SignalingMessage {
            kind,
            peer_client_id,
            correlation_id: None,
            payload,
        }
    }

    /// Sets the correlation id (the service answers failures of such messages).
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Encodes the kind's payload as base64 JSON (offer/answer/candidate only).
    fn encode_payload(&self) -> Result<String, CodecError> {
        match (self.kind, &self.payload) {
            (MessageKind::Offer, MessagePayload::Sdp(sdp)) => Ok(encode_payload(&SdpPayload {
                sdp_type: SdpType::Offer,
                sdp: sdp.clone(),
                error: None,
            })),
            (MessageKind::Answer, MessagePayload::Sdp(sdp)) => Ok(encode_payload(&SdpPayload {
                sdp_type: SdpType::Answer,
                sdp: sdp.clone(),
                error: None,
            })),
            (MessageKind::Answer, MessagePayload::Refusal(refusal)) => {
                Ok(encode_payload(&SdpPayload {
                    sdp_type: SdpType::Answer,
                    sdp: String::new(),
                    error: Some(refusal.clone()),
                }))
            }
            (MessageKind::IceCandidate, MessagePayload::Candidate(c)) => Ok(encode_payload(c)),
            (kind @ (MessageKind::Offer | MessageKind::Answer), _) => {
                Err(CodecError::PayloadMismatch {
                    kind,
                    expected: "an SDP payload",
                })
            }
            (MessageKind::IceCandidate, _) => Err(CodecError::PayloadMismatch {
                kind: MessageKind::IceCandidate,
                expected: "a candidate payload",
            }),
            (kind, _) => Err(CodecError::NotSendableByClient(kind)),
        }
    }

    /// Converts to a client→service frame. A recipient, if given, must be a valid client id;
    /// the encoded payload must fit the service limit.
    pub fn to_client_frame(&self) -> Result<ClientFrame, CodecError> {
        let action = match self.kind {
            MessageKind::Offer => Action::SdpOffer,
            MessageKind::Answer => Action::SdpAnswer,
            MessageKind::IceCandidate => Action::IceCandidate,
            other => return Err(CodecError::NotSendableByClient(other)),
        };
        if let Some(r) = &self.peer_client_id {
            validate_client_id(r)?;
        }
        let message_payload = self.encode_payload()?;
        let decoded_len = base64_decoded_len(&message_payload);
        if decoded_len > MAX_PAYLOAD_BYTES {
            return Err(CodecError::PayloadTooLarge {
                len: decoded_len,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(ClientFrame {
            action,
            recipient_client_id: self.peer_client_id.clone(),
            message_payload,
            correlation_id: self.correlation_id.clone(),
        })
    }

    /// Converts a received client frame (service side, or tests) into a message; the peer is
    /// the frame's recipient.
    pub fn from_client_frame(frame: &ClientFrame) -> Result<Self, CodecError> {
        let (kind, payload) =
            decode_message_payload(frame.action.message_type(), Some(&frame.message_payload))?;
        Ok(SignalingMessage {
            kind,
            peer_client_id: frame.recipient_client_id.clone(),
            correlation_id: frame.correlation_id.clone(),
            payload,
        })
    }

    /// Converts to a service→client frame; the peer becomes `senderClientId`.
    pub fn to_service_frame(&self) -> Result<ServiceFrame, CodecError> {
        let (message_type, message_payload, status_response) = match (self.kind, &self.payload) {
            (MessageKind::GoAway, _) => (ServiceMessageType::GoAway, None, None),
            (MessageKind::ReconnectIceServer, _) => {
                (ServiceMessageType::ReconnectIceServer, None, None)
            }
            (MessageKind::StatusResponse, MessagePayload::Status(s)) => {
                (ServiceMessageType::StatusResponse, None, Some(s.clone()))
            }
            (MessageKind::StatusResponse, _) => {
                return Err(CodecError::PayloadMismatch {
                    kind: MessageKind::StatusResponse,
                    expected: "a status payload",
                })
            }
            (MessageKind::Offer, _) => (
                ServiceMessageType::SdpOffer,
                Some(self.encode_payload()?),
                None,
            ),
            (MessageKind::Answer, _) => (
                ServiceMessageType::SdpAnswer,
                Some(self.encode_payload()?),
                None,
            ),
            (MessageKind::IceCandidate, _) => (
                ServiceMessageType::IceCandidate,
                Some(self.encode_payload()?),
                None,
            ),
        };
        Ok(ServiceFrame {
            message_type,
            sender_client_id: self.peer_client_id.clone(),
            message_payload,
            status_response,
        })
    }

    /// Converts a received service frame into a message, decoding its payload. For a
    /// STATUS_RESPONSE the correlation id is taken from the status.
    pub fn from_service_frame(frame: &ServiceFrame) -> Result<Self, CodecError> {
        if frame.message_type == ServiceMessageType::StatusResponse {
            let status = frame
                .status_response
                .clone()
                .ok_or(CodecError::MissingField("statusResponse"))?;
            return Ok(SignalingMessage {
                kind: MessageKind::StatusResponse,
                peer_client_id: frame.sender_client_id.clone(),
                correlation_id: status.correlation_id.clone(),
                payload: MessagePayload::Status(status),
            });
        }
        let (kind, payload) =
            decode_message_payload(frame.message_type, frame.message_payload.as_deref())?;
        Ok(SignalingMessage {
            kind,
            peer_client_id: frame.sender_client_id.clone(),
            correlation_id: None,
            payload,
        })
    }

    /// Parses service→client frame bytes straight into a message.
    pub fn parse_service_frame(bytes: &[u8]) -> Result<Self, CodecError> {
        Self::from_service_frame(&ServiceFrame::parse(bytes)?)
    }

    /// Parses client→service frame bytes straight into a message.
    pub fn parse_client_frame(bytes: &[u8]) -> Result<Self, CodecError> {
        Self::from_client_frame(&ClientFrame::parse(bytes)?)
    }
}

fn decode_message_payload(
    message_type: ServiceMessageType,
    payload: Option<&str>,
) -> Result<(MessageKind, MessagePayload), CodecError> {
    let required = || payload.ok_or(CodecError::MissingField("messagePayload"));
    let decode_sdp = |kind: MessageKind, want: SdpType| -> Result<_, CodecError> {
        let sdp: SdpPayload = decode_payload(required()?)?;
        if sdp.sdp_type != want {
            return Err(CodecError::PayloadMismatch {
                kind,
                expected: if want == SdpType::Offer {
                    "an SDP of type \"offer\""
                } else {
                    "an SDP of type \"answer\""
                },
            });
        }
        match sdp.error {
            Some(refusal) if kind == MessageKind::Answer => {
                Ok((kind, MessagePayload::Refusal(refusal)))
            }
            _ => Ok((kind, MessagePayload::Sdp(sdp.sdp))),
        }
    };
    match message_type {
        ServiceMessageType::SdpOffer => decode_sdp(MessageKind::Offer, SdpType::Offer),
        ServiceMessageType::SdpAnswer => decode_sdp(MessageKind::Answer, SdpType::Answer),
        ServiceMessageType::IceCandidate => Ok((
            MessageKind::IceCandidate,
            MessagePayload::Candidate(decode_payload(required()?)?),
        )),
        ServiceMessageType::GoAway => Ok((MessageKind::GoAway, MessagePayload::None)),
        ServiceMessageType::ReconnectIceServer => {
            Ok((MessageKind::ReconnectIceServer, MessagePayload::None))
        }
        ServiceMessageType::StatusResponse => Err(CodecError::MissingField("statusResponse")),
    }
}

/// Keeps remote strings short inside error messages and logs.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests;
