//! Fuzzes the local service's REST control plane with arbitrary request bodies for every
//! operation, against a registry that already holds a channel. No body may panic; every
//! answer is either a success or a rest-json error with a 4xx status and a message.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use kvs_signaling_service::control::{handle, ControlContext, Endpoints, Operation};
use kvs_signaling_service::turn::{IceServerSettings, TurnServer};
use kvs_signaling_service::{RoutingCore, ServiceConfig};
use libfuzzer_sys::fuzz_target;

const OPS: [Operation; 6] = [
    Operation::CreateSignalingChannel,
    Operation::DescribeSignalingChannel,
    Operation::ListSignalingChannels,
    Operation::DeleteSignalingChannel,
    Operation::GetSignalingChannelEndpoint,
    Operation::GetIceServerConfig,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut core = RoutingCore::new(ServiceConfig::default());
    core.create_channel("existing", now).expect("valid name");
    let endpoints = Endpoints {
        wss: "wss://127.0.0.1:1".into(),
        https: "https://127.0.0.1:1".into(),
    };
    let ice = IceServerSettings {
        turn_servers: vec![TurnServer {
            uris: vec!["turn:127.0.0.1:3478".into()],
            shared_secret: "secret".into(),
        }],
        credential_ttl: Duration::from_secs(300),
    };
    let ctx = ControlContext {
        now,
        endpoints: &endpoints,
        ice: &ice,
    };
    let op = OPS[usize::from(selector) % OPS.len()];
    let (response, _) = handle(&mut core, op, body, &ctx);
    if response.status != 200 {
        assert!((400..500).contains(&response.status));
        assert!(response.error_type.is_some());
        assert!(response.body["message"].is_string());
    }
});
