//! Between the two vocabularies of split mode: KVS signaling messages (what the signaling
//! client and the classic device speak) and the link's typed messages (`kvs_bridge`).
//!
//! Pure functions; every conversion of remote input returns `None` (with the reason logged by
//! the caller) rather than panicking: ids longer than the link allows, or messages the other
//! side has no use for, are dropped here.

use crate::control::{Control, ControlError};
use kvs_bridge::{
    CandidateMessage, ControlSetting, CorrelationId, IceCandidate, PeerId, SdpMessage, Status,
    ViewerMessage,
};
use kvs_signaling::{
    IceCandidateInit, IceServer, MessageKind, MessagePayload, PeerRefusal, SignalingMessage,
};
use std::time::Duration;

/// The refusal code a KVS viewer sees for a link status (the `code` of the refusal payload).
pub fn refusal_code(status: Status) -> &'static str {
    match status {
        Status::BUSY => "SESSION_LIMIT",
        Status::SLEEPING => "CAMERA_SLEEPING",
        Status::NOT_READY => "CAMERA_STARTING",
        Status::UNAVAILABLE => "CAMERA_UNAVAILABLE",
        Status::TOO_LARGE => "TOO_LARGE",
        Status::TIMEOUT => "CAMERA_TIMEOUT",
        _ => "REFUSED",
    }
}

/// The link status for a refusal code the classic device put in its answer.
pub fn refusal_status(code: &str) -> Status {
    match code {
        "SESSION_LIMIT" => Status::BUSY,
        "CAMERA_SLEEPING" => Status::SLEEPING,
        "CAMERA_STARTING" => Status::NOT_READY,
        "CAMERA_UNAVAILABLE" => Status::UNAVAILABLE,
        "TOO_LARGE" => Status::TOO_LARGE,
        "CAMERA_TIMEOUT" => Status::TIMEOUT,
        _ => Status::REJECTED,
    }
}

fn ids(msg: &SignalingMessage) -> Option<(PeerId, CorrelationId)> {
    let peer = PeerId::new(msg.peer_client_id.clone()?).ok()?;
    let correlation = match &msg.correlation_id {
        Some(c) => CorrelationId::new(c.clone()).ok()?,
        None => CorrelationId::none(),
    };
    Some((peer, correlation))
}

fn correlation(id: &CorrelationId) -> Option<String> {
    (!id.as_str().is_empty()).then(|| id.as_str().to_owned())
}

/// A message a master received from a viewer, for the link. `None` for what is not a
/// viewer's message (GO_AWAY, STATUS_RESPONSE… are the signaling side's own business) or has
/// ids the link cannot carry.
pub fn viewer_message(msg: &SignalingMessage) -> Option<ViewerMessage> {
    match device_message(msg)? {
        DeviceMessage::Offer(m) => Some(ViewerMessage::Offer(m)),
        DeviceMessage::Answer(m) => Some(ViewerMessage::Answer(m)),
        DeviceMessage::Candidate(m) => Some(ViewerMessage::IceCandidate(m)),
        DeviceMessage::Refusal { .. } => None,
    }
}

/// An answer or offer from the link, for KVS.
pub fn sdp_to_kvs(kind: MessageKind, m: &SdpMessage) -> SignalingMessage {
    let msg = match kind {
        MessageKind::Offer => SignalingMessage::offer(m.peer.as_str(), m.sdp.clone()),
        _ => SignalingMessage::answer(m.peer.as_str(), m.sdp.clone()),
    };
    with_correlation(msg, &m.correlation_id)
}

/// A candidate from the link, for KVS (or for the device, seen as coming from the viewer).
pub fn candidate_to_kvs(m: &CandidateMessage) -> SignalingMessage {
    let msg = SignalingMessage::ice_candidate(
        m.peer.as_str(),
        IceCandidateInit {
            candidate: m.candidate.candidate.clone(),
            sdp_mid: m.candidate.sdp_mid.clone(),
            sdp_m_line_index: m.candidate.sdp_mline_index,
            username_fragment: None,
        },
    );
    with_correlation(msg, &m.correlation_id)
}

/// A refusal for KVS (an answer carrying the reason, as the classic device refuses).
pub fn refusal_to_kvs(
    peer: &PeerId,
    correlation_id: &CorrelationId,
    status: Status,
    reason: &str,
) -> SignalingMessage {
    SignalingMessage::refusal_with_code(
        peer.as_str(),
        refusal_code(status),
        reason,
        correlation(correlation_id),
    )
}

fn with_correlation(msg: SignalingMessage, id: &CorrelationId) -> SignalingMessage {
    match correlation(id) {
        Some(c) => msg.with_correlation_id(c),
        None => msg,
    }
}

/// A peer-to-peer signaling message in the link's terms: what the device (on the media side)
/// sends, or (without refusals) what a viewer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMessage {
    Answer(SdpMessage),
    Offer(SdpMessage),
    Candidate(CandidateMessage),
    Refusal {
        peer: PeerId,
        correlation_id: CorrelationId,
        status: Status,
        reason: String,
    },
}

/// A message between the device and a viewer, for the link; `None` when it names no viewer
/// the link can carry or is not one the link takes.
pub fn device_message(msg: &SignalingMessage) -> Option<DeviceMessage> {
    let (peer, correlation_id) = ids(msg)?;
    match (&msg.kind, &msg.payload) {
        (MessageKind::Answer, MessagePayload::Sdp(sdp)) => {
            Some(DeviceMessage::Answer(SdpMessage {
                peer,
                correlation_id,
                sdp: sdp.clone(),
            }))
        }
        (MessageKind::Answer, MessagePayload::Refusal(PeerRefusal { code, reason })) => {
            Some(DeviceMessage::Refusal {
                peer,
                correlation_id,
                status: refusal_status(code),
                reason: reason.clone(),
            })
        }
        (MessageKind::Offer, MessagePayload::Sdp(sdp)) => Some(DeviceMessage::Offer(SdpMessage {
            peer,
            correlation_id,
            sdp: sdp.clone(),
        })),
        (MessageKind::IceCandidate, MessagePayload::Candidate(c)) => {
            Some(DeviceMessage::Candidate(CandidateMessage {
                peer,
                correlation_id,
                candidate: IceCandidate {
                    candidate: c.candidate.clone(),
                    sdp_mid: c.sdp_mid.clone(),
                    sdp_mline_index: c.sdp_m_line_index,
                },
            }))
        }
        _ => None,
    }
}

/// A device control for the link (values the link cannot carry are invalid).
pub fn control_setting(control: &Control) -> Result<ControlSetting, ControlError> {
    let too_big = |what: &str| ControlError::Invalid(format!("{what} out of range"));
    Ok(match *control {
        Control::Streaming(on) => ControlSetting::Streaming(on),
        Control::Resolution { width, height } => ControlSetting::Resolution {
            width: u16::try_from(width).map_err(|_| too_big("width"))?,
            height: u16::try_from(height).map_err(|_| too_big("height"))?,
        },
        Control::BitrateKbps(kbps) => ControlSetting::BitrateKbps(kbps),
        Control::Audio(on) => ControlSetting::Audio(on),
        Control::MaxViewers(n) => {
            ControlSetting::MaxViewers(u8::try_from(n).map_err(|_| too_big("max viewers"))?)
        }
    })
}

/// A control that came over the link, for the device.
pub fn control_from_setting(setting: ControlSetting) -> Control {
    match setting {
        ControlSetting::Streaming(on) => Control::Streaming(on),
        ControlSetting::Resolution { width, height } => Control::Resolution {
            width: width.into(),
            height: height.into(),
        },
        ControlSetting::BitrateKbps(kbps) => Control::BitrateKbps(kbps),
        ControlSetting::Audio(on) => Control::Audio(on),
        ControlSetting::MaxViewers(n) => Control::MaxViewers(n.into()),
    }
}

/// How a failed control travels over the link, and back.
pub fn control_status(error: &ControlError) -> Status {
    match error {
        ControlError::Invalid(_) => Status::INVALID_ARGUMENT,
        ControlError::Unsupported(_) | ControlError::Stopped => Status::UNAVAILABLE,
    }
}

/// ICE servers, KVS → link. Servers the link cannot carry are left out by the caller's
/// `IceServerList::new` error.
pub fn ice_to_link(servers: &[IceServer]) -> Vec<kvs_bridge::IceServer> {
    servers
        .iter()
        .map(|s| kvs_bridge::IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
            ttl_secs: s.ttl.map(|t| t.as_secs().min(u64::from(u32::MAX)) as u32),
        })
        .collect()
}

/// ICE servers, link → device.
pub fn ice_from_link(servers: &[kvs_bridge::IceServer]) -> Vec<IceServer> {
    servers
        .iter()
        .map(|s| IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
            ttl: s.ttl_secs.map(|t| Duration::from_secs(u64::from(t))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_crosses_both_ways_with_its_ids() {
        let kvs = SignalingMessage::offer("viewer-1", "v=0\r\n").with_correlation_id("c-7");
        let Some(ViewerMessage::Offer(m)) = viewer_message(&kvs) else {
            panic!("not an offer")
        };
        assert_eq!(m.peer.as_str(), "viewer-1");
        assert_eq!(m.correlation_id.as_str(), "c-7");
        let back = sdp_to_kvs(MessageKind::Offer, &m);
        assert_eq!(back, kvs);
    }

    #[test]
    fn a_device_refusal_keeps_its_meaning_across_the_link() {
        let refusal =
            SignalingMessage::refusal_with_code("v", "SESSION_LIMIT", "too many", Some("c".into()));
        let Some(DeviceMessage::Refusal {
            peer,
            correlation_id,
            status,
            reason,
        }) = device_message(&refusal)
        else {
            panic!("not a refusal")
        };
        assert_eq!(status, Status::BUSY);
        assert_eq!(
            refusal_to_kvs(&peer, &correlation_id, status, &reason),
            refusal
        );
    }

    #[test]
    fn candidates_and_ice_servers_round_trip() {
        let kvs = SignalingMessage::candidate(
            "v",
            "candidate:1 1 udp 1 192.0.2.1 5000 typ host",
            Some("0".into()),
            Some(0),
        );
        let Some(ViewerMessage::IceCandidate(c)) = viewer_message(&kvs) else {
            panic!("not a candidate")
        };
        assert_eq!(candidate_to_kvs(&c), kvs);
        let servers = vec![IceServer {
            urls: vec!["turn:192.0.2.1:3478".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
            ttl: Some(Duration::from_secs(300)),
        }];
        assert_eq!(ice_from_link(&ice_to_link(&servers)), servers);
    }

    #[test]
    fn controls_cross_the_link_and_what_does_not_fit_is_invalid() {
        for c in [
            Control::Streaming(false),
            Control::Resolution {
                width: 1280,
                height: 720,
            },
            Control::BitrateKbps(800),
            Control::Audio(true),
            Control::MaxViewers(3),
        ] {
            assert_eq!(control_from_setting(control_setting(&c).unwrap()), c);
        }
        assert!(matches!(
            control_setting(&Control::MaxViewers(300)),
            Err(ControlError::Invalid(_))
        ));
        assert!(matches!(
            control_setting(&Control::Resolution {
                width: 70_000,
                height: 2
            }),
            Err(ControlError::Invalid(_))
        ));
    }

    #[test]
    fn what_has_no_viewer_or_no_meaning_on_the_link_is_left_out() {
        let no_peer = SignalingMessage::offer(None, "v=0");
        assert!(viewer_message(&no_peer).is_none());
        let long_id = SignalingMessage::offer("x".repeat(1000), "v=0");
        assert!(viewer_message(&long_id).is_none());
        assert!(device_message(&long_id).is_none());
    }
}
