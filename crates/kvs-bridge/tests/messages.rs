//! Messages: round trips of every type, the pinned byte layout, unknown versions and types as
//! error values (with the reply they get), oversized ids, malformed input, time correction.

mod common;

use std::time::{Duration, Instant};

use common::Rng;
use kvs_bridge::message::{
    corrected_unix_micros, effective_quality, CandidateMessage, Command, CommandResponse,
    ControlSetting, CorrelationId, ErrorReply, IceCandidate, IceServer, IceServerList, MediaState,
    MediaStatus, Message, MessageError, MessageType, PeerId, PeerRef, Refusal, Resolution,
    SdpMessage, Status, TimeSample, ValueError, MAX_ID_LEN, MESSAGE_VERSION,
    MIN_PLAUSIBLE_UNIX_MICROS,
};

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn corr(s: &str) -> CorrelationId {
    CorrelationId::new(s).unwrap()
}

fn servers() -> IceServerList {
    IceServerList::new(vec![
        IceServer {
            urls: vec!["stun:stun.kinesisvideo.eu-west-1.amazonaws.com:443".into()],
            ..IceServer::default()
        },
        IceServer {
            urls: vec![
                "turn:1.2.3.4:443?transport=udp".into(),
                "turns:1.2.3.4:443?transport=tcp".into(),
            ],
            username: Some("user".into()),
            credential: Some("secret".into()),
            ttl_secs: Some(300),
        },
        IceServer {
            urls: vec![],
            username: Some(String::new()),
            credential: None,
            ttl_secs: Some(0),
        },
    ])
    .unwrap()
}

/// One sample of every message type (and of every response outcome).
pub fn samples() -> Vec<Message> {
    let sdp = SdpMessage {
        peer: peer("viewer-1"),
        correlation_id: corr("corr-1"),
        sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
    };
    vec![
        Message::Offer(sdp.clone()),
        Message::Answer(SdpMessage {
            correlation_id: CorrelationId::none(),
            ..sdp
        }),
        Message::IceCandidate(CandidateMessage {
            peer: peer("viewer-1"),
            correlation_id: CorrelationId::none(),
            candidate: IceCandidate {
                candidate: "candidate:1 1 udp 2122260223 192.168.1.2 50000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        }),
        Message::IceCandidate(CandidateMessage {
            peer: peer("v"),
            correlation_id: corr("c"),
            candidate: IceCandidate::default(), // end of candidates
        }),
        Message::IceServers {
            request_id: 0,
            servers: servers(),
        },
        Message::IceServers {
            request_id: 9,
            servers: IceServerList::default(),
        },
        Message::IceServersRequest { request_id: 9 },
        Message::TriggerOffer(PeerRef {
            peer: peer("viewer-2"),
            correlation_id: CorrelationId::none(),
        }),
        Message::ReadyQuery,
        Message::Ready,
        Message::Heartbeat,
        Message::MediaStatus(MediaStatus {
            state: MediaState::Awake,
            viewers: 3,
        }),
        Message::MediaStatus(MediaStatus {
            state: MediaState::Sleeping,
            viewers: 0,
        }),
        Message::Refusal(Refusal {
            peer: peer("viewer-3"),
            correlation_id: corr("x"),
            code: Status::BUSY,
            reason: "too many viewers ✓".into(),
        }),
        Message::Request {
            request_id: 1,
            command: Command::GetResolution,
        },
        Message::Request {
            request_id: 2,
            command: Command::GetSnapshot { quality: 0 },
        },
        Message::Request {
            request_id: 3,
            command: Command::GetSnapshot { quality: 100 },
        },
        Message::Request {
            request_id: u32::MAX,
            command: Command::GetTime,
        },
        Message::Response {
            request_id: 1,
            response: CommandResponse::Resolution(Ok(Resolution {
                width: 1920,
                height: 1080,
            })),
        },
        Message::Response {
            request_id: 2,
            response: CommandResponse::Snapshot(Ok(vec![0xFF, 0xD8, 0xFF, 0xD9])),
        },
        Message::Response {
            request_id: 2,
            response: CommandResponse::Snapshot(Err(Status::UNAVAILABLE)),
        },
        Message::Response {
            request_id: 4,
            response: CommandResponse::Time(Ok(1_750_000_000_123_456)),
        },
        Message::Response {
            request_id: 4,
            response: CommandResponse::Time(Err(Status::INTERNAL)),
        },
        Message::Response {
            request_id: 5,
            response: CommandResponse::Resolution(Err(Status::BUSY)),
        },
        Message::Request {
            request_id: 10,
            command: Command::SetControl(ControlSetting::Streaming(false)),
        },
        Message::Request {
            request_id: 11,
            command: Command::SetControl(ControlSetting::Resolution {
                width: 1280,
                height: 720,
            }),
        },
        Message::Response {
            request_id: 10,
            response: CommandResponse::Applied(Ok(())),
        },
        Message::Response {
            request_id: 11,
            response: CommandResponse::Applied(Err(Status::INVALID_ARGUMENT)),
        },
        Message::Error(ErrorReply {
            request_id: 77,
            status: Status::UNKNOWN_TYPE,
            version: 1,
            msg_type: 0x42,
        }),
    ]
}

/// Every control setting, with the edge values of its field.
fn control_settings() -> Vec<ControlSetting> {
    vec![
        ControlSetting::Streaming(false),
        ControlSetting::Streaming(true),
        ControlSetting::Resolution {
            width: 0,
            height: 0,
        },
        ControlSetting::Resolution {
            width: 1920,
            height: 1080,
        },
        ControlSetting::Resolution {
            width: u16::MAX,
            height: 1,
        },
        ControlSetting::BitrateKbps(0),
        ControlSetting::BitrateKbps(2_500),
        ControlSetting::BitrateKbps(u32::MAX),
        ControlSetting::Audio(false),
        ControlSetting::Audio(true),
        ControlSetting::MaxViewers(0),
        ControlSetting::MaxViewers(3),
        ControlSetting::MaxViewers(u8::MAX),
    ]
}

#[test]
fn set_control_every_setting_round_trips() {
    for (i, setting) in control_settings().into_iter().enumerate() {
        let m = Message::Request {
            request_id: 100 + i as u32,
            command: Command::SetControl(setting),
        };
        let bytes = m.to_bytes();
        assert_eq!(bytes[1], MessageType::SetControlRequest.code());
        assert_eq!(bytes[16], setting.tag());
        assert_eq!(Message::parse(&bytes), Ok(m.clone()), "{setting:?}");
        assert_eq!(Message::parse(&bytes).unwrap().to_bytes(), bytes);
    }
    for response in [
        CommandResponse::Applied(Ok(())),
        CommandResponse::Applied(Err(Status::INVALID_ARGUMENT)),
        CommandResponse::Applied(Err(Status::UNAVAILABLE)),
        CommandResponse::Applied(Err(Status(0x1234))),
    ] {
        let m = Message::Response {
            request_id: 9,
            response,
        };
        let bytes = m.to_bytes();
        assert_eq!(bytes[1], MessageType::SetControlResponse.code());
        assert_eq!(&bytes[12..16], &[0, 0, 0, 0], "no payload either way");
        assert_eq!(Message::parse(&bytes), Ok(m));
    }
    // A failure must never read as success.
    let m = Message::Response {
        request_id: 9,
        response: CommandResponse::Applied(Err(Status::OK)),
    };
    assert_eq!(
        Message::parse(&m.to_bytes()),
        Ok(Message::Response {
            request_id: 9,
            response: CommandResponse::Applied(Err(Status::INTERNAL)),
        })
    );
}

#[test]
fn set_control_layout_is_pinned() {
    let payload = |setting: ControlSetting| {
        let bytes = Message::Request {
            request_id: 0x0102_0304,
            command: Command::SetControl(setting),
        }
        .to_bytes();
        // Envelope: version, type 0x16, status 0, request id LE, no ids, payload length LE.
        assert_eq!(&bytes[..12], &[1, 0x16, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0]);
        let n = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 16 + n);
        bytes[16..].to_vec()
    };
    assert_eq!(payload(ControlSetting::Streaming(true)), [0x01, 1]);
    assert_eq!(payload(ControlSetting::Streaming(false)), [0x01, 0]);
    assert_eq!(
        payload(ControlSetting::Resolution {
            width: 1280,
            height: 720
        }),
        [0x02, 0x00, 0x05, 0xD0, 0x02]
    );
    assert_eq!(
        payload(ControlSetting::BitrateKbps(0x0001_86A0)),
        [0x03, 0xA0, 0x86, 0x01, 0x00]
    );
    assert_eq!(payload(ControlSetting::Audio(true)), [0x04, 1]);
    assert_eq!(payload(ControlSetting::MaxViewers(7)), [0x05, 7]);
    let ok = Message::Response {
        request_id: 5,
        response: CommandResponse::Applied(Ok(())),
    }
    .to_bytes();
    assert_eq!(ok, [1, 0x17, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let refused = Message::Response {
        request_id: 5,
        response: CommandResponse::Applied(Err(Status::INVALID_ARGUMENT)),
    }
    .to_bytes();
    assert_eq!(refused, [1, 0x17, 7, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// A SetControlRequest with this raw payload and request id.
fn raw_set_control(request_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![1, MessageType::SetControlRequest.code(), 0, 0];
    b.extend_from_slice(&request_id.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn set_control_malformed_payloads_are_refused_with_their_request_id() {
    let check = |payload: &[u8], what: &str| {
        let request_id = 0xA000_0000 | payload.len() as u32;
        let err = Message::parse(&raw_set_control(request_id, payload)).unwrap_err();
        match &err {
            MessageError::Malformed {
                msg_type,
                request_id: rid,
                what: got,
            } => {
                assert_eq!(*msg_type, 0x16);
                assert_eq!(*rid, request_id);
                assert_eq!(*got, what, "payload {payload:02x?}");
            }
            other => panic!("payload {payload:02x?}: {other:?}"),
        }
        assert_eq!(
            err.reply(),
            Some(Message::Error(ErrorReply {
                request_id,
                status: Status::MALFORMED,
                version: MESSAGE_VERSION,
                msg_type: 0x16,
            }))
        );
    };
    // Sanity: the raw builder makes what emit makes.
    assert_eq!(
        raw_set_control(3, &[0x04, 1]),
        Message::Request {
            request_id: 3,
            command: Command::SetControl(ControlSetting::Audio(true)),
        }
        .to_bytes()
    );
    let bad_bool = "control on/off value not 0 or 1";
    let short = "control value too short";
    let unknown = "unknown control setting tag";
    let trailing = "trailing bytes after the payload";
    for tag in [0x01, 0x04] {
        for b in [2, 0x80, 0xFF] {
            check(&[tag, b], bad_bool);
        }
        check(&[tag], short);
        check(&[tag, 1, 0], trailing);
    }
    for tag in [0x00, 0x06, 0x16, 0x7F, 0xFF] {
        check(&[tag], unknown);
        check(&[tag, 1, 2, 3, 4], unknown);
    }
    check(&[], "control request without a setting");
    check(&[0x02], short);
    check(&[0x02, 0x00, 0x05, 0xD0], short);
    check(&[0x02, 0x00, 0x05, 0xD0, 0x02, 0x00], trailing);
    check(&[0x03, 1, 2, 3], short);
    check(&[0x03, 1, 2, 3, 4, 5], trailing);
    check(&[0x05], short);
    check(&[0x05, 1, 1], trailing);
    // Request id 0 on a request (answered with id 0).
    let err = Message::parse(&raw_set_control(0, &[0x01, 1])).unwrap_err();
    assert_eq!(err.status(), Status::MALFORMED);
    assert!(matches!(
        err.reply(),
        Some(Message::Error(ErrorReply { request_id: 0, .. }))
    ));
    // A successful response has no payload; a failed one neither.
    for status in [0u8, 7] {
        let mut b = Message::Response {
            request_id: 12,
            response: CommandResponse::Applied(Ok(())),
        }
        .to_bytes();
        b[2] = status;
        b.push(1);
        b[12] = 1;
        let err = Message::parse(&b).unwrap_err();
        assert_eq!(err.status(), Status::MALFORMED, "{err}");
        assert!(matches!(
            err.reply(),
            Some(Message::Error(ErrorReply {
                request_id: 12,
                msg_type: 0x17,
                ..
            }))
        ));
    }
    // Every single-byte change of a valid request either parses to something that re-emits
    // identically or is refused with the request id; never a panic.
    let base = raw_set_control(0x55, &[0x02, 0x00, 0x05, 0xD0, 0x02]);
    for i in 16..base.len() {
        for v in 0..=255u8 {
            let mut b = base.clone();
            b[i] = v;
            match Message::parse(&b) {
                Ok(m) => assert_eq!(m.to_bytes(), b),
                Err(e) => assert!(matches!(
                    e.reply(),
                    Some(Message::Error(ErrorReply {
                        request_id: 0x55,
                        ..
                    }))
                )),
            }
        }
    }
}

#[test]
fn an_older_receiver_answers_set_control_with_unknown_type() {
    // What a receiver without 0x16/0x17 makes of the request: UnknownType, with a reply that
    // carries the request id, so the requester fails at once instead of timing out.
    let bytes = Message::Request {
        request_id: 42,
        command: Command::SetControl(ControlSetting::MaxViewers(2)),
    }
    .to_bytes();
    let older = MessageError::UnknownType {
        msg_type: bytes[1],
        request_id: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
    };
    assert_eq!(
        older.reply(),
        Some(Message::Error(ErrorReply {
            request_id: 42,
            status: Status::UNKNOWN_TYPE,
            version: MESSAGE_VERSION,
            msg_type: 0x16,
        }))
    );
}

#[test]
fn every_type_round_trips() {
    let samples = samples();
    let mut seen = std::collections::HashSet::new();
    for m in &samples {
        let bytes = m.to_bytes();
        assert_eq!(Message::parse(&bytes).as_ref(), Ok(m), "{m:?}");
        assert_eq!(bytes[1], m.msg_type().code());
        seen.insert(m.msg_type());
    }
    for t in MessageType::ALL {
        assert!(seen.contains(&t), "no sample of {t:?}");
        assert_eq!(MessageType::from_code(t.code()), Some(t));
    }
}

#[test]
fn offer_layout_is_pinned() {
    let m = Message::Offer(SdpMessage {
        peer: peer("P"),
        correlation_id: corr("CC"),
        sdp: "v=0".into(),
    });
    assert_eq!(
        m.to_bytes(),
        [
            1, 0x01, // version, type
            0, 0, // status
            0, 0, 0, 0, // request id
            2, 0, // correlation id length
            1, 0, // peer id length
            3, 0, 0, 0, // payload length
            b'C', b'C', b'P', b'v', b'=', b'0',
        ]
    );
    let r = Message::Response {
        request_id: 0x0102_0304,
        response: CommandResponse::Resolution(Ok(Resolution {
            width: 640,
            height: 480,
        })),
    };
    assert_eq!(
        r.to_bytes(),
        [
            1, 0x11, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 8, 0, 0, 0, //
            0x80, 0x02, 0, 0, 0xE0, 0x01, 0, 0,
        ]
    );
}

#[test]
fn unknown_version_is_an_error_value_with_a_reply() {
    let mut bytes = Message::Request {
        request_id: 0xABCD,
        command: Command::GetTime,
    }
    .to_bytes();
    bytes[0] = 2;
    let err = Message::parse(&bytes).unwrap_err();
    assert_eq!(
        err,
        MessageError::UnsupportedVersion {
            version: 2,
            msg_type: MessageType::GetTimeRequest.code(),
            request_id: 0xABCD,
        }
    );
    assert_eq!(
        err.reply(),
        Some(Message::Error(ErrorReply {
            request_id: 0xABCD,
            status: Status::UNSUPPORTED_VERSION,
            version: 2,
            msg_type: MessageType::GetTimeRequest.code(),
        }))
    );
    // A future version may be shorter than today's envelope: the frozen 8 bytes suffice.
    let err = Message::parse(&[9, 0x33, 0, 0, 5, 0, 0, 0]).unwrap_err();
    assert_eq!(
        err,
        MessageError::UnsupportedVersion {
            version: 9,
            msg_type: 0x33,
            request_id: 5
        }
    );
}

#[test]
fn unknown_type_is_an_error_value_with_a_reply() {
    let mut bytes = Message::Heartbeat.to_bytes();
    bytes[1] = 0x42;
    bytes[4] = 7;
    let err = Message::parse(&bytes).unwrap_err();
    assert_eq!(
        err,
        MessageError::UnknownType {
            msg_type: 0x42,
            request_id: 7
        }
    );
    assert_eq!(err.status(), Status::UNKNOWN_TYPE);
    let Some(Message::Error(reply)) = err.reply() else {
        panic!("an unknown type is answered");
    };
    assert_eq!((reply.request_id, reply.msg_type), (7, 0x42));
}

#[test]
fn errors_are_never_answered() {
    let mut bytes = Message::Error(ErrorReply {
        request_id: 1,
        status: Status::BUSY,
        version: 1,
        msg_type: 1,
    })
    .to_bytes();
    bytes[0] = 3; // even an Error of an unknown version
    assert_eq!(Message::parse(&bytes).unwrap_err().reply(), None);
    bytes[0] = 1;
    bytes.truncate(bytes.len() - 1); // a malformed Error
    bytes[12] = 1;
    assert!(matches!(
        Message::parse(&bytes),
        Err(MessageError::Malformed { .. })
    ));
    assert_eq!(Message::parse(&bytes).unwrap_err().reply(), None);
    assert_eq!(MessageError::Truncated { len: 3 }.reply(), None);
}

#[test]
fn oversized_ids_are_refused() {
    assert!(PeerId::new("p".repeat(MAX_ID_LEN)).is_ok());
    assert_eq!(
        PeerId::new("p".repeat(MAX_ID_LEN + 1)),
        Err(ValueError::TooLong {
            field: "peer client id",
            len: 257,
            max: 256
        })
    );
    assert!(PeerId::new("").is_err());
    assert!(CorrelationId::new("c".repeat(MAX_ID_LEN + 1)).is_err());
    assert!(CorrelationId::new("").is_ok());

    // On the wire: a declared length over 256 is refused before anything is read.
    let mut bytes = Message::Offer(SdpMessage {
        peer: peer(&"p".repeat(256)),
        correlation_id: corr(&"c".repeat(256)),
        sdp: String::new(),
    })
    .to_bytes();
    assert!(Message::parse(&bytes).is_ok());
    bytes[10] = 1;
    bytes[11] = 1; // peer length 257
    bytes.push(b'p');
    assert!(matches!(
        Message::parse(&bytes),
        Err(MessageError::IdTooLong {
            field: "peer client id",
            len: 257,
            ..
        })
    ));
    bytes[8] = 0xFF;
    bytes[9] = 0xFF;
    assert!(matches!(
        Message::parse(&bytes),
        Err(MessageError::IdTooLong {
            field: "correlation id",
            ..
        })
    ));
}

#[test]
fn ice_server_list_limits() {
    let many = vec![IceServer::default(); 17];
    assert!(IceServerList::new(many).is_err());
    let urls = IceServer {
        urls: vec!["stun:x".into(); 9],
        ..IceServer::default()
    };
    assert!(IceServerList::new(vec![urls]).is_err());
    let long = IceServer {
        urls: vec!["x".repeat(1025)],
        ..IceServer::default()
    };
    assert!(IceServerList::new(vec![long]).is_err());
    // The credential never shows in logs.
    let s = format!("{:?}", servers());
    assert!(!s.contains("secret"), "{s}");
}

#[test]
fn malformed_messages_are_refused_with_their_request_id() {
    let check = |bytes: &[u8], request_id: u32| {
        let err = Message::parse(bytes).unwrap_err();
        assert_eq!(err.status(), Status::MALFORMED, "{err}");
        let Some(Message::Error(reply)) = err.reply() else {
            panic!("malformed input is answered: {err}");
        };
        assert_eq!(reply.request_id, request_id);
    };
    // Payload length disagreeing with the size.
    let mut b = Message::Heartbeat.to_bytes();
    b.push(0);
    check(&b, 0);
    // Trailing bytes inside the payload.
    let mut b = Message::Request {
        request_id: 3,
        command: Command::GetSnapshot { quality: 50 },
    }
    .to_bytes();
    b.push(0);
    b[12] = 2;
    check(&b, 3);
    // Quality out of range.
    let mut b = Message::Request {
        request_id: 4,
        command: Command::GetSnapshot { quality: 50 },
    }
    .to_bytes();
    *b.last_mut().unwrap() = 101;
    check(&b, 4);
    // Request id 0 on a request.
    let b = Message::Request {
        request_id: 0,
        command: Command::GetTime,
    }
    .to_bytes();
    check(&b, 0);
    // An offer without a peer.
    let mut b = Message::Offer(SdpMessage {
        peer: peer("p"),
        correlation_id: CorrelationId::none(),
        sdp: "x".into(),
    })
    .to_bytes();
    b.remove(16);
    b[10] = 0;
    check(&b, 0);
    // Not UTF-8.
    let mut b = Message::Offer(SdpMessage {
        peer: peer("p"),
        correlation_id: CorrelationId::none(),
        sdp: "x".into(),
    })
    .to_bytes();
    *b.last_mut().unwrap() = 0xFF;
    check(&b, 0);
    // A failed response with a payload.
    let mut b = Message::Response {
        request_id: 6,
        response: CommandResponse::Time(Ok(1)),
    }
    .to_bytes();
    b[2] = 9;
    check(&b, 6);
    // Too short for the envelope.
    assert_eq!(
        Message::parse(&[1, 2, 3]),
        Err(MessageError::Truncated { len: 3 })
    );
    check(&[1, 0x09, 0, 0, 8, 0, 0, 0, 0], 8);
}

#[test]
fn refusal_reason_is_cut_on_a_character_boundary() {
    let m = Message::Refusal(Refusal {
        peer: peer("p"),
        correlation_id: CorrelationId::none(),
        code: Status::REJECTED,
        reason: "é".repeat(200), // 400 bytes
    });
    let Ok(Message::Refusal(r)) = Message::parse(&m.to_bytes()) else {
        panic!("parses");
    };
    assert_eq!(r.reason, "é".repeat(128));
}

#[test]
fn mutated_messages_never_panic_and_reparse_equal() {
    let mut rng = Rng::new(0xFEED);
    let samples = samples();
    for _ in 0..20_000 {
        let mut bytes = samples[rng.below(samples.len())].to_bytes();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
                0 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next_u64() as u8;
                }
                1 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes.truncate(at);
                }
                _ => bytes.extend(rng.junk(8)),
            }
        }
        if let Ok(m) = Message::parse(&bytes) {
            assert_eq!(Message::parse(&m.to_bytes()), Ok(m));
        }
    }
}

#[test]
fn snapshot_quality_zero_means_eighty() {
    assert_eq!(effective_quality(0), 80);
    assert_eq!(effective_quality(1), 1);
    assert_eq!(effective_quality(100), 100);
}

#[test]
fn get_time_is_corrected_by_half_the_round_trip() {
    let sent = Instant::now();
    let received = sent + Duration::from_millis(40);
    let remote = 1_760_000_000_000_000;
    assert_eq!(
        corrected_unix_micros(remote, sent, received),
        remote + 20_000
    );
    // A clock going backwards (never, with Instant, but the helper must not underflow).
    assert_eq!(corrected_unix_micros(remote, received, sent), remote);
    assert_eq!(corrected_unix_micros(u64::MAX, sent, received), u64::MAX);
    let sample = TimeSample {
        remote_unix_micros: remote,
        sent,
        received,
    };
    assert_eq!(sample.round_trip(), Duration::from_millis(40));
    assert_eq!(sample.corrected_unix_micros(), remote + 20_000);
    assert_eq!(
        sample.unix_micros_at(received + Duration::from_secs(1)),
        remote + 20_000 + 1_000_000
    );
    assert!(sample.is_plausible());
    assert!(!TimeSample {
        remote_unix_micros: MIN_PLAUSIBLE_UNIX_MICROS - 1,
        ..sample
    }
    .is_plausible());
    assert_eq!(MESSAGE_VERSION, 1);
}
