//! Fuzzes the signaling service's control-plane router with raw HTTP method, path and body
//! bytes (the `control_plane` target covers the bodies of each known operation; this one
//! covers getting there). Nothing may panic; every answer is a success or a rest-json error
//! (4xx, an error type, a message); a path that is no operation never changes anything.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use kvs_signaling_service::control::{route, Change, ControlContext, Endpoints, Operation};
use kvs_signaling_service::turn::IceServerSettings;
use kvs_signaling_service::{RoutingCore, ServiceConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // method \n path \n body; the path may also be picked from the known ones so the body
    // reaches the operations.
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let raw_path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let path = match raw_path
        .strip_prefix('#')
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(i) => Operation::PATHS[i % Operation::PATHS.len()].to_string(),
        None => raw_path.into_owned(),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut core = RoutingCore::new(ServiceConfig {
        max_channels: 2,
        ..ServiceConfig::default()
    });
    core.create_channel("existing", now).expect("valid name");
    let endpoints = Endpoints {
        wss: "wss://127.0.0.1:1".into(),
        https: "https://127.0.0.1:1".into(),
    };
    let ice = IceServerSettings::default();
    let ctx = ControlContext {
        now,
        endpoints: &endpoints,
        ice: &ice,
    };
    let (response, change) = route(&mut core, &method, &path, body, &ctx);
    if response.status == 200 {
        assert!(response.error_type.is_none());
    } else {
        assert!((400..500).contains(&response.status), "{response:?}");
        assert!(response.error_type.is_some());
        assert!(response.body["message"].is_string());
        assert_eq!(change, Change::None);
    }
    if Operation::from_path(&path).is_none() {
        assert_eq!(response.status, 404);
    }
    assert!(core.channels().len() <= 2, "the channel limit holds");
});
