use super::*;

fn b64(json: &str) -> String {
    BASE64.encode(json.as_bytes())
}

fn candidate() -> IceCandidateInit {
    IceCandidateInit {
        candidate: "candidate:1 1 udp 2122260223 192.168.1.2 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

#[test]
fn client_frame_round_trips() {
    let frame = ClientFrame {
        action: Action::SdpOffer,
        recipient_client_id: Some("viewer-1".into()),
        message_payload: b64(r#"{"type":"offer","sdp":"v=0"}"#),
        correlation_id: Some("c-1".into()),
    };
    let text = frame.emit();
    assert_eq!(ClientFrame::parse(text.as_bytes()).unwrap(), frame);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["action"], "SDP_OFFER");
    assert_eq!(value["recipientClientId"], "viewer-1");
    assert_eq!(value["correlationId"], "c-1");
}

#[test]
fn service_frame_round_trips_and_omits_absent_fields() {
    let frame = ServiceFrame {
        message_type: ServiceMessageType::IceCandidate,
        sender_client_id: None,
        message_payload: Some(encode_payload(&candidate())),
        status_response: None,
    };
    let text = frame.emit();
    assert!(!text.contains("senderClientId"), "{text}");
    assert!(!text.contains("statusResponse"), "{text}");
    assert_eq!(ServiceFrame::parse(text.as_bytes()).unwrap(), frame);

    let status = ServiceFrame::status(StatusResponse::failure(
        "c-9",
        "InvalidArgumentException",
        400,
        "bad",
    ));
    let text = status.emit();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["statusResponse"]["statusCode"], "400");
    assert_eq!(value["statusResponse"]["success"], false);
    assert_eq!(ServiceFrame::parse(text.as_bytes()).unwrap(), status);
}

#[test]
fn c_sdk_style_client_frame_with_capitalised_and_unknown_keys() {
    let text = format!(
        r#"{{"action":"SDP_OFFER","RecipientClientId":"ProducerMaster","MessagePayload":"{}","CorrelationId":"42","IceServerList":[{{"urls":"stun:x"}}]}}"#,
        b64(r#"{"type":"offer","sdp":"v=0\r\n"}"#)
    );
    let frame = ClientFrame::parse(text.as_bytes()).unwrap();
    assert_eq!(frame.action, Action::SdpOffer);
    assert_eq!(frame.recipient_client_id.as_deref(), Some("ProducerMaster"));
    assert_eq!(frame.correlation_id.as_deref(), Some("42"));
    let msg = SignalingMessage::from_client_frame(&frame).unwrap();
    assert_eq!(msg.kind, MessageKind::Offer);
    assert_eq!(msg.payload, MessagePayload::Sdp("v=0\r\n".into()));
}

#[test]
fn service_keys_are_case_insensitive_and_empty_sender_is_none() {
    let text = format!(
        r#"{{"SenderClientId":"","MessageType":"SDP_ANSWER","MessagePayload":"{}"}}"#,
        b64(r#"{"type":"answer","sdp":"v=0"}"#)
    );
    let msg = SignalingMessage::parse_service_frame(text.as_bytes()).unwrap();
    assert_eq!(msg.kind, MessageKind::Answer);
    assert_eq!(msg.peer_client_id, None);
    assert_eq!(msg.payload, MessagePayload::Sdp("v=0".into()));
}

#[test]
fn signaling_message_round_trips_both_directions() {
    let messages = [
        SignalingMessage::offer(Some("v1".into()), "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n")
            .with_correlation_id("c1"),
        SignalingMessage::answer(Some("v1".into()), "v=0\r\n"),
        SignalingMessage::ice_candidate(None, candidate()),
        SignalingMessage::ice_candidate(
            Some("v1".into()),
            IceCandidateInit {
                candidate: String::new(),
                sdp_mid: None,
                sdp_m_line_index: None,
                username_fragment: Some("abcd".into()),
            },
        ),
    ];
    for msg in messages {
        let client = msg.to_client_frame().unwrap();
        let parsed = ClientFrame::parse(client.emit().as_bytes()).unwrap();
        assert_eq!(SignalingMessage::from_client_frame(&parsed).unwrap(), msg);

        let service = msg.to_service_frame().unwrap();
        let back = SignalingMessage::parse_service_frame(service.emit().as_bytes()).unwrap();
        // Service frames carry no correlation id except in status responses.
        assert_eq!(
            back,
            SignalingMessage {
                correlation_id: None,
                ..msg.clone()
            }
        );
    }
    for kind in [MessageKind::GoAway, MessageKind::ReconnectIceServer] {
        let msg = SignalingMessage {
            kind,
            peer_client_id: None,
            correlation_id: None,
            payload: MessagePayload::None,
        };
        let text = msg.to_service_frame().unwrap().emit();
        assert_eq!(
            SignalingMessage::parse_service_frame(text.as_bytes()).unwrap(),
            msg
        );
        assert_eq!(
            msg.to_client_frame(),
            Err(CodecError::NotSendableByClient(kind))
        );
    }
}

#[test]
fn status_response_message_takes_correlation_id_from_status() {
    let text = r#"{"messageType":"STATUS_RESPONSE","statusResponse":{"correlationId":"abc","errorType":"InvalidArgumentException","statusCode":400,"success":false}}"#;
    let msg = SignalingMessage::parse_service_frame(text.as_bytes()).unwrap();
    assert_eq!(msg.kind, MessageKind::StatusResponse);
    assert_eq!(msg.correlation_id.as_deref(), Some("abc"));
    match msg.payload {
        MessagePayload::Status(s) => {
            assert_eq!(s.status_code, "400");
            assert_eq!(s.error_type, "InvalidArgumentException");
            assert!(!s.success);
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

#[test]
fn candidate_index_accepts_numeric_strings() {
    let c: IceCandidateInit = decode_payload(&b64(
        r#"{"candidate":"candidate:x","sdpMid":"audio","sdpMLineIndex":"1"}"#,
    ))
    .unwrap();
    assert_eq!(c.sdp_m_line_index, Some(1));
    let err =
        decode_payload::<IceCandidateInit>(&b64(r#"{"candidate":"c","sdpMLineIndex":70000}"#))
            .unwrap_err();
    assert!(matches!(err, CodecError::InvalidPayload(_)), "{err:?}");
}

#[test]
fn unpadded_base64_is_accepted() {
    let padded = b64(r#"{"type":"offer","sdp":"v"}"#);
    let unpadded = padded.trim_end_matches('=');
    assert_ne!(padded.len(), unpadded.len());
    let p: SdpPayload = decode_payload(unpadded).unwrap();
    assert_eq!(p.sdp, "v");
}

#[test]
fn errors_for_bad_frames() {
    let payload = b64(r#"{"type":"offer","sdp":"v"}"#);
    let cases: Vec<(String, CodecError)> = vec![
        ("not json".into(), CodecError::InvalidJson(String::new())),
        ("[1,2]".into(), CodecError::NotAnObject),
        (
            format!(r#"{{"messagePayload":"{payload}"}}"#),
            CodecError::MissingField("action"),
        ),
        (
            r#"{"action":"SDP_OFFER"}"#.into(),
            CodecError::MissingField("messagePayload"),
        ),
        (
            format!(r#"{{"action":"HELLO","messagePayload":"{payload}"}}"#),
            CodecError::UnknownAction("HELLO".into()),
        ),
        (
            format!(r#"{{"action":7,"messagePayload":"{payload}"}}"#),
            CodecError::WrongType {
                field: "action",
                expected: "a string",
            },
        ),
        (
            r#"{"action":"SDP_OFFER","messagePayload":"!!!notbase64"}"#.into(),
            CodecError::InvalidBase64(String::new()),
        ),
        (
            format!(
                r#"{{"action":"SDP_OFFER","messagePayload":"{payload}","recipientClientId":["x"]}}"#
            ),
            CodecError::WrongType {
                field: "recipientClientId",
                expected: "a string",
            },
        ),
    ];
    for (text, expected) in cases {
        let err = ClientFrame::parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(&expected),
            "{text}: got {err:?}"
        );
        if !matches!(
            expected,
            CodecError::InvalidJson(_) | CodecError::InvalidBase64(_)
        ) {
            assert_eq!(err, expected, "{text}");
        }
    }
}

#[test]
fn errors_for_bad_service_frames() {
    assert_eq!(
        ServiceFrame::parse(br#"{"messageType":"STATUS_RESPONSE"}"#),
        Err(CodecError::MissingField("statusResponse"))
    );
    assert_eq!(
        ServiceFrame::parse(br#"{"messageType":"NOPE"}"#),
        Err(CodecError::UnknownMessageType("NOPE".into()))
    );
    assert!(matches!(
        ServiceFrame::parse(br#"{"messageType":"STATUS_RESPONSE","statusResponse":"x"}"#),
        Err(CodecError::WrongType {
            field: "statusResponse",
            ..
        })
    ));
    // An offer whose payload is missing, or is an answer, is refused when decoded.
    assert_eq!(
        SignalingMessage::parse_service_frame(br#"{"messageType":"SDP_OFFER"}"#),
        Err(CodecError::MissingField("messagePayload"))
    );
    let text = format!(
        r#"{{"messageType":"SDP_OFFER","messagePayload":"{}"}}"#,
        b64(r#"{"type":"answer","sdp":"v"}"#)
    );
    assert!(matches!(
        SignalingMessage::parse_service_frame(text.as_bytes()),
        Err(CodecError::PayloadMismatch {
            kind: MessageKind::Offer,
            ..
        })
    ));
    let text = format!(
        r#"{{"messageType":"ICE_CANDIDATE","messagePayload":"{}"}}"#,
        b64(r#"{"sdp":"v"}"#)
    );
    assert!(matches!(
        SignalingMessage::parse_service_frame(text.as_bytes()),
        Err(CodecError::InvalidPayload(_))
    ));
}

#[test]
fn frame_and_payload_size_limits() {
    let big = vec![b' '; MAX_FRAME_BYTES + 1];
    assert_eq!(
        ClientFrame::parse(&big),
        Err(CodecError::FrameTooLarge {
            len: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES
        })
    );
    assert!(matches!(
        ServiceFrame::parse(&big),
        Err(CodecError::FrameTooLarge { .. })
    ));

    // A payload just over 10 KiB decoded is refused by the parser and by the encoder.
    let sdp = "a".repeat(MAX_PAYLOAD_BYTES);
    let msg = SignalingMessage::offer(Some("v".into()), sdp.clone());
    assert!(matches!(
        msg.to_client_frame(),
        Err(CodecError::PayloadTooLarge { .. })
    ));
    let text = format!(
        r#"{{"action":"SDP_OFFER","messagePayload":"{}"}}"#,
        encode_payload(&SdpPayload {
            sdp_type: SdpType::Offer,
            sdp,
            error: None,
        })
    );
    assert!(matches!(
        ClientFrame::parse(text.as_bytes()),
        Err(CodecError::PayloadTooLarge { .. })
    ));
    // Exactly at the limit is fine.
    let exact = BASE64.encode(vec![b'x'; MAX_PAYLOAD_BYTES]);
    assert_eq!(
        decode_payload_bytes(&exact).unwrap().len(),
        MAX_PAYLOAD_BYTES
    );
}

#[test]
fn payload_kind_mismatch_is_refused_on_encode() {
    let msg = SignalingMessage {
        kind: MessageKind::Offer,
        peer_client_id: Some("v".into()),
        correlation_id: None,
        payload: MessagePayload::Candidate(candidate()),
    };
    assert!(matches!(
        msg.to_client_frame(),
        Err(CodecError::PayloadMismatch { .. })
    ));
    let msg = SignalingMessage {
        kind: MessageKind::StatusResponse,
        peer_client_id: None,
        correlation_id: None,
        payload: MessagePayload::None,
    };
    assert!(matches!(
        msg.to_service_frame(),
        Err(CodecError::PayloadMismatch { .. })
    ));
}

#[test]
fn client_id_rules() {
    assert!(validate_client_id("viewer-1_a.b").is_ok());
    assert!(validate_client_id(&"a".repeat(256)).is_ok());
    for bad in ["", "AWS_viewer", "has space", "ümlaut", "a/b"] {
        assert!(validate_client_id(bad).is_err(), "{bad:?}");
    }
    assert!(validate_client_id(&"a".repeat(257)).is_err());
    // A message naming an invalid recipient cannot be encoded.
    let msg = SignalingMessage::answer(Some("AWS_x".into()), "v=0");
    assert!(matches!(
        msg.to_client_frame(),
        Err(CodecError::InvalidClientId(_))
    ));
}

#[test]
fn correlation_id_is_salvaged_from_bad_frames() {
    assert_eq!(
        salvage_correlation_id(br#"{"action":"BOGUS","CorrelationId":"x1"}"#).as_deref(),
        Some("x1")
    );
    assert_eq!(salvage_correlation_id(b"nope"), None);
}

#[test]
fn long_unknown_values_are_truncated_in_errors() {
    let text = format!(r#"{{"messageType":"{}"}}"#, "X".repeat(10_000));
    match ServiceFrame::parse(text.as_bytes()) {
        Err(CodecError::UnknownMessageType(s)) => assert_eq!(s.len(), 64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refusal_answer_round_trips_and_matches_the_documented_payload() {
    let msg = SignalingMessage::refusal_with_code(
        "v1",
        "SESSION_LIMIT",
        "too many viewers",
        Some("c".into()),
    );
    let frame = msg.to_client_frame().unwrap();
    let json: Value =
        serde_json::from_slice(&decode_payload_bytes(&frame.message_payload).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type":"answer","sdp":"","kvsWebrtcError":{"code":"SESSION_LIMIT","reason":"too many viewers"}})
    );
    let back = SignalingMessage::from_client_frame(&frame).unwrap();
    assert_eq!(back, msg);
    assert_eq!(
        SignalingMessage::refusal("v1", "no", None).payload,
        MessagePayload::Refusal(PeerRefusal {
            code: "REFUSED".into(),
            reason: "no".into()
        })
    );
}

#[test]
fn peer_ids_from_any_string_form() {
    let id = String::from("v1");
    assert_eq!(
        SignalingMessage::answer(&id, "x").peer_client_id.as_deref(),
        Some("v1")
    );
    assert_eq!(
        SignalingMessage::answer("v1", "x")
            .peer_client_id
            .as_deref(),
        Some("v1")
    );
    assert_eq!(SignalingMessage::answer(None, "x").peer_client_id, None);
    assert_eq!(SignalingMessage::answer("", "x").peer_client_id, None);
    let c = SignalingMessage::candidate(&id, "candidate:1", Some("0".into()), Some(0));
    assert_eq!(
        c.payload,
        MessagePayload::Candidate(IceCandidateInit {
            candidate: "candidate:1".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        })
    );
}

#[test]
fn base64_decoded_len_matches_the_decoder() {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    for n in 0..=64usize {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        for text in [STANDARD.encode(&bytes), STANDARD_NO_PAD.encode(&bytes)] {
            assert_eq!(BASE64.decode(&text).unwrap().len(), n, "{text:?}");
            assert_eq!(base64_decoded_len(&text), n, "{text:?}");
            assert_eq!(base64_decoded_len(&format!(" {text}\r\n")), n, "{text:?}");
        }
    }
}

/// Base64 of `n` bytes, with or without `=` padding.
fn b64_of_len(n: usize, padded: bool) -> String {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let bytes = vec![b'x'; n];
    if padded {
        STANDARD.encode(bytes)
    } else {
        STANDARD_NO_PAD.encode(bytes)
    }
}

#[test]
fn payload_of_exactly_the_limit_is_accepted_padded_or_not() {
    // 10 240 = 3 × 3413 + 1: the last group carries one byte, so the padded text ends in "==",
    // which an estimate from the text length alone counts as two more bytes.
    for padded in [true, false] {
        let exact = b64_of_len(MAX_PAYLOAD_BYTES, padded);
        assert_eq!(exact.ends_with("=="), padded);
        assert_eq!(
            decode_payload_bytes(&exact).unwrap().len(),
            MAX_PAYLOAD_BYTES
        );
        let frame = ClientFrame {
            action: Action::SdpOffer,
            recipient_client_id: None,
            message_payload: exact,
            correlation_id: None,
        };
        assert_eq!(ClientFrame::parse(frame.emit().as_bytes()).unwrap(), frame);

        let over = b64_of_len(MAX_PAYLOAD_BYTES + 1, padded);
        assert_eq!(
            decode_payload_bytes(&over),
            Err(CodecError::PayloadTooLarge {
                len: MAX_PAYLOAD_BYTES + 1,
                max: MAX_PAYLOAD_BYTES
            })
        );
        let frame = ClientFrame {
            message_payload: over,
            ..frame
        };
        assert!(matches!(
            ClientFrame::parse(frame.emit().as_bytes()),
            Err(CodecError::PayloadTooLarge { .. })
        ));
    }
}

#[test]
fn encoder_accepts_a_payload_of_exactly_the_limit() {
    // The SDP payload's JSON around an empty SDP; the SDP fills the rest of the limit.
    let overhead = serde_json::to_vec(&SdpPayload {
        sdp_type: SdpType::Offer,
        sdp: String::new(),
        error: None,
    })
    .unwrap()
    .len();
    let exact = SignalingMessage::offer("v", "a".repeat(MAX_PAYLOAD_BYTES - overhead));
    let frame = exact.to_client_frame().unwrap();
    // The encoder always pads; this payload needs it.
    assert!(frame.message_payload.ends_with("=="));
    assert_eq!(
        decode_payload_bytes(&frame.message_payload).unwrap().len(),
        MAX_PAYLOAD_BYTES
    );
    assert_eq!(SignalingMessage::from_client_frame(&frame).unwrap(), exact);

    let over = SignalingMessage::offer("v", "a".repeat(MAX_PAYLOAD_BYTES - overhead + 1));
    assert_eq!(
        over.to_client_frame(),
        Err(CodecError::PayloadTooLarge {
            len: MAX_PAYLOAD_BYTES + 1,
            max: MAX_PAYLOAD_BYTES
        })
    );
}
