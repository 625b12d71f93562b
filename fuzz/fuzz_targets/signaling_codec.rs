//! Fuzzes every parser of remote signaling input: both frame parsers, the unified-message
//! conversions and the payload decoders. None of them may panic; whatever parses must
//! re-emit to something that parses to the same value.
#![no_main]

use kvs_signaling_codec::{
    decode_payload, decode_payload_bytes, salvage_correlation_id, validate_client_id, ClientFrame,
    IceCandidateInit, SdpPayload, ServiceFrame, SignalingMessage,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::parse(data) {
        let again =
            ClientFrame::parse(frame.emit().as_bytes()).expect("emitted client frame parses");
        assert_eq!(again, frame);
        let _ = SignalingMessage::from_client_frame(&frame);
    }
    if let Ok(frame) = ServiceFrame::parse(data) {
        let again =
            ServiceFrame::parse(frame.emit().as_bytes()).expect("emitted service frame parses");
        assert_eq!(again, frame);
        if let Ok(msg) = SignalingMessage::from_service_frame(&frame) {
            let _ = msg.to_client_frame();
            let _ = msg.to_service_frame();
        }
    }
    let _ = salvage_correlation_id(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_payload_bytes(text);
        let _ = decode_payload::<SdpPayload>(text);
        let _ = decode_payload::<IceCandidateInit>(text);
        let _ = validate_client_id(text);
    }
});
