//! The embedded default: everything on one machine, no AWS account.
//!
//! Starts the local KVS-compatible signaling service (from `kvs-signaling-service`) in this
//! process, creates the channel, and starts the device as the channel's master connected to
//! it. The caller may add HTTP routes (the program adds the viewer web page) that are served on
//! the same port as signaling.

use crate::config::{DeviceConfig, SignalingConfig};
use crate::device::{Device, DeviceError, DeviceHandle, DeviceParts};
use crate::events::EventBus;
use kvs_signaling::{Role, WsSignalingClient};
use kvs_signaling_service::{ServiceConfig, ServiceHandle};
use std::net::SocketAddr;
use std::sync::Arc;

/// Errors starting the embedded default.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the embedded default needs `signaling.mode = \"embedded\"`")]
    NotEmbedded,
    #[error("cannot create the signaling channel: {0}")]
    Channel(#[from] kvs_signaling_service::ChannelError),
}

/// A running embedded setup.
pub struct Embedded {
    pub device: DeviceHandle,
    pub service: ServiceHandle,
    /// `ws://…/` of the signaling data plane.
    pub signaling_url: String,
    pub channel_name: String,
    pub channel_arn: String,
    pub addr: SocketAddr,
}

impl Embedded {
    /// The viewer page's URL (served only if the caller added the page routes).
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stop the device, then the service (which sends GO_AWAY to whoever is still connected).
    pub async fn shutdown(self) {
        self.device.shutdown().await;
        self.service.shutdown().await;
    }
}

/// Start the local service and the device. `extra_routes` are served beside signaling.
pub async fn start(
    config: DeviceConfig,
    extra_routes: Option<axum::Router>,
) -> Result<Embedded, EmbeddedError> {
    start_with_events(config, extra_routes, EventBus::new()).await
}

/// Like [`start`], publishing the device's events on `events` (subscribe first to see all).
pub async fn start_with_events(
    config: DeviceConfig,
    extra_routes: Option<axum::Router>,
    events: EventBus,
) -> Result<Embedded, EmbeddedError> {
    let SignalingConfig::Embedded { channel, listen } = config.signaling.clone() else {
        return Err(EmbeddedError::NotEmbedded);
    };
    // Open sources first: a bad file is reported before anything listens.
    let camera = crate::sources::open_camera(&config.video)?;
    let microphone = crate::sources::open_microphone(&config.audio)?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| EmbeddedError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmbeddedError::Listen {
            addr: listen,
            source,
        })?;
    // The device enforces its own viewer limit with a clear refusal; the service allows a few
    // more connections so refused viewers can still hear why.
    let service_config = ServiceConfig {
        max_viewers_per_channel: config.session.max_viewers.max(1) + 5,
        landing_page: extra_routes.as_ref().map(|_| "/index.html".to_owned()),
        ..ServiceConfig::default()
    };
    let service = kvs_signaling_service::spawn(listener, service_config, extra_routes);
    let info = service.state().ensure_channel(&channel)?;
    let signaling_url = format!("ws://{addr}/");
    let client = WsSignalingClient::new(
        format!("{signaling_url}?X-Amz-ChannelARN={}", urlencode(&info.arn)),
        Role::Master,
    );
    tracing::info!(channel = %info.arn, "embedded signaling service on {signaling_url}");
    let parts = DeviceParts {
        config,
        signaling: Arc::new(client),
        camera,
        microphone,
    };
    let device = Device::start_with_events(parts, events).await?;
    Ok(Embedded {
        device,
        service,
        signaling_url,
        channel_name: channel,
        channel_arn: info.arn,
        addr,
    })
}

/// Percent-encode a query value (ARNs contain ':' and '/').
pub fn urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
