//! The device as a RainMaker-compatible IoT node (feature `rainmaker`; `docs/RAINMAKER.md`).
//!
//! Owns: the node's MQTT conversation — node config, full state on `params/local/init`,
//! `params/remote` writes checked against the camera device's params (types, bounds, steps,
//! valid strings, read-only), reports of only what changed, alerts, the last will, topics with
//! an optional basic-ingest prefix — as a sans-IO [`NodeCore`] ([`core`]), and the tokio edge
//! that runs it over `rumqttc` with mutual TLS, keep-alive and reconnection ([`driver`]).
//!
//! Must not touch: how a change is carried out. Writes become [`crate::Control`]s handed to a
//! [`crate::DeviceControl`] (the classic device, split mode's signaling side, or a test double);
//! streaming never depends on the broker being reachable. KVS credentials are not fetched here
//! either: `[rainmaker]` only selects the IoT credentials provider (`kvs_aws::iot`) for
//! `[signaling.credentials]` (see `DeviceConfig`).

pub mod core;
pub mod driver;

pub use self::core::{
    Bounds, CameraState, Change, NodeCore, NodeInfo, NodeSettings, NodeStats, Output, Publish, Qos,
    Resolution,
};
pub use driver::{camera_state_from, settings_from, RainmakerNode};

/// Why a node could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RainmakerError {
    #[error("invalid node settings: {0}")]
    Settings(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}
