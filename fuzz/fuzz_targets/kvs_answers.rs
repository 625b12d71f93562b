//! Fuzzes the device-side parsers of what a KVS control plane answers (remote input from the
//! network): DescribeSignalingChannel, CreateSignalingChannel, GetSignalingChannelEndpoint,
//! GetIceServerConfig and rest-json error bodies. Nothing may panic, and what parses must keep
//! the C SDK's limits on ICE server lists.
#![no_main]

use kvs_signaling::kvs::api::{
    parse_create, parse_describe, parse_endpoints, parse_ice_servers, ApiError,
    MAX_ICE_CREDENTIAL_LEN, MAX_ICE_URI_LEN, MAX_URIS_PER_SERVER,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            let _ = parse_describe(body);
        }
        1 => {
            let _ = parse_create(body);
        }
        2 => {
            if let Ok(e) = parse_endpoints(body) {
                assert!(e.wss.starts_with("ws"));
                assert!(e.https.starts_with("http"));
            }
        }
        3 => {
            let max = usize::from(selector / 5 % 6);
            if let Ok(servers) = parse_ice_servers(body, max) {
                assert!(servers.len() <= max);
                for s in servers {
                    assert!(!s.urls.is_empty() && s.urls.len() <= MAX_URIS_PER_SERVER);
                    assert!(s.urls.iter().all(|u| u.len() <= MAX_ICE_URI_LEN));
                    assert!(s.username.iter().all(|u| u.len() <= MAX_ICE_CREDENTIAL_LEN));
                }
            }
        }
        _ => {
            // At most 200 bytes of header, cut on a character boundary.
            let header = std::str::from_utf8(body).ok().map(|s| {
                let mut end = s.len().min(200);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                &s[..end]
            });
            let e = ApiError::from_answer("Fuzz", 400, header, body);
            assert!(e.error_type.chars().count() <= 128);
            assert!(e.message.chars().count() <= 512);
        }
    }
});
