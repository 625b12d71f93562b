//! Fuzzes the device's reading of signaled ICE candidate lines (remote input from any viewer):
//! it must never panic, and a candidate it accepts must print to a line it accepts again.
#![no_main]

use kvs_peer::candidate::{parse_candidate, ParsedCandidate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ParsedCandidate::Candidate(c)) = parse_candidate(text) {
        let line = c.to_sdp_string();
        assert!(
            matches!(parse_candidate(&line), Ok(ParsedCandidate::Candidate(_))),
            "printed candidate does not parse again: {line}"
        );
    }
});
