//! Fuzzes the SigV4 verifier (every signaling REST call and WebSocket connect the local
//! service receives goes through it) and the IoT credentials answer parser. Arbitrary bytes are
//! split into method, path, query, headers and body; verification must return an error or a
//! result, never panic.
#![no_main]

use kvs_aws::verify::{IncomingRequest, StaticKeys, Verifier};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let query = parts.next().unwrap_or("");
    let header_block = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("").as_bytes();
    let headers: Vec<(&str, &str)> = header_block
        .split('\r')
        .filter_map(|line| line.split_once(':'))
        .collect();
    let mut keys = StaticKeys::new();
    keys.insert("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", Vec::new());
    let request = IncomingRequest { method, path, query, headers: &headers, body };
    let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
    let _ = Verifier::default().verify(&request, &keys, now);
    let _ = kvs_aws::iot::parse_answer(200, data);
});
