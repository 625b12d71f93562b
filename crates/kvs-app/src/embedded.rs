//! The embedded default: everything on one machine, no AWS account.
//!
//! Starts the local KVS-compatible signaling service (from `kvs-signaling-service`) in this
//! process with two listeners on one shared state:
//! - a TLS endpoint (HTTPS control plane + WSS data plane) that checks SigV4 against a key
//!   made up at start-up, with a CA kept in the state directory — the device reaches it with
//!   the same [`KvsSignalingClient`] it uses for real KVS (Describe/Create channel, endpoints,
//!   ICE servers, presigned WSS), so the embedded default exercises the real path;
//! - a plain endpoint for the viewer page, confined to what the page needs: viewer
//!   connections to this one channel (REST calls and master connects are refused with 403)
//!   plus the routes the caller adds (the program adds the page itself). No long-term secret
//!   reaches a browser: the page server hands each page a short-lived presigned viewer URL
//!   ([`ViewerUrlSigner`]), signed with this run's key. Listening beyond loopback, every
//!   viewer connect must carry such a URL; on loopback, unsigned viewer connects are accepted
//!   too (local tools and tests), but a signature that is present must be valid.

use crate::config::{DeviceConfig, SignalingConfig};
use crate::device::{Device, DeviceError, DeviceHandle, DeviceParts};
use crate::events::EventBus;
use kvs_aws::{Credentials, StaticProvider};
use kvs_signaling::{ChannelRef, KvsClientConfig, KvsSignalingClient, Role};
use kvs_signaling_service::{AccessKey, ServiceConfig, ServiceHandle, ServiceState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The region written into the local service's ARNs and signatures.
pub const EMBEDDED_REGION: &str = "us-west-2";

/// How long a presigned viewer URL stays valid: a page connects right after fetching it, and
/// fetches a new one to reconnect.
pub const VIEWER_URL_LIFETIME: Duration = Duration::from_secs(60);

/// Why a viewer URL could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum ViewerUrlError {
    #[error("not a usable host for the page's signaling URL: {0:?}")]
    BadHost(String),
    #[error("cannot presign the viewer URL: {0}")]
    Signing(#[from] kvs_aws::SigningError),
}

/// A presigned viewer connect URL and the client id it was signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerUrl {
    /// `ws://<host>/?X-Amz-ChannelARN=…&X-Amz-ClientId=…&X-Amz-Signature=…`.
    pub url: String,
    pub client_id: String,
}

/// Presigns viewer connect URLs for the page's edge with this run's key. Holds the key: never
/// hand it (or its Debug output, which hides the secret) to a page.
#[derive(Clone)]
pub struct ViewerUrlSigner {
    credentials: Credentials,
    channel_arn: String,
    tls: bool,
}

impl std::fmt::Debug for ViewerUrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerUrlSigner")
            .field("channel_arn", &self.channel_arn)
            .finish_non_exhaustive()
    }
}

impl ViewerUrlSigner {
    /// A URL for a new viewer (a fresh random client id) reaching the page's edge at `host`
    /// (the `Host` the page was fetched from, so the signature covers the host the browser
    /// connects to), valid for [`VIEWER_URL_LIFETIME`].
    pub fn presign(&self, host: &str) -> Result<ViewerUrl, ViewerUrlError> {
        self.presign_at(host, SystemTime::now())
    }

    /// [`Self::presign`] at a given time (tests use a stale one).
    pub fn presign_at(&self, host: &str, now: SystemTime) -> Result<ViewerUrl, ViewerUrlError> {
        let plausible = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
        if !plausible {
            return Err(ViewerUrlError::BadHost(host.chars().take(64).collect()));
        }
        let client_id = {
            let n: u64 = rand::random();
            format!("viewer-{n:016x}")
        };
        let scheme = if self.tls { "wss" } else { "ws" };
        let url = kvs_aws::sigv4::presign_url(
            &self.credentials,
            EMBEDDED_REGION,
            "kinesisvideo",
            now,
            &format!("{scheme}://{host}/"),
            &[
                ("X-Amz-ChannelARN", self.channel_arn.as_str()),
                ("X-Amz-ClientId", client_id.as_str()),
            ],
            VIEWER_URL_LIFETIME,
        )?;
        Ok(ViewerUrl { url, client_id })
    }
}

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
    #[error("no state directory: set signaling.state_dir, XDG_DATA_HOME or HOME")]
    NoStateDir,
    #[error("local signaling state in {dir}: {reason}")]
    State { dir: PathBuf, reason: String },
    #[error("the device cannot reach the local signaling service: {0}")]
    Signaling(#[from] kvs_signaling::SignalingError),
}

/// The local signaling service of the embedded default, without a device (split mode runs
/// its signaling-only side against it).
pub struct LocalService {
    /// The plain loopback listener (viewer page and its WebSocket).
    pub service: ServiceHandle,
    /// The TLS listener the device uses (HTTPS + WSS, SigV4).
    pub tls_service: ServiceHandle,
    /// `ws://…/` of the page's data plane.
    pub signaling_url: String,
    /// `https://…` of the control plane (the device's way in).
    pub control_plane: String,
    /// The CA certificate that signs the TLS endpoint's certificate.
    pub ca_path: PathBuf,
    pub channel_name: String,
    pub channel_arn: String,
    /// The plain listener's address.
    pub addr: SocketAddr,
    /// Presigns viewer URLs for the page (see the module docs).
    pub viewer_signer: ViewerUrlSigner,
    /// Whether the page's edge refuses unsigned viewer connects (it listens beyond loopback).
    pub page_requires_signature: bool,
}

impl LocalService {
    /// The viewer page's URL (served only if the caller added the page routes).
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stop both listeners (GO_AWAY to whoever is still connected).
    pub async fn shutdown(self) {
        self.service.shutdown().await;
        self.tls_service.shutdown().await;
    }
}

/// A running embedded setup: the local service and the device. Reads like its
/// [`LocalService`] (`running.channel_arn`, `running.page_url()`).
pub struct Embedded {
    pub device: DeviceHandle,
    pub local: LocalService,
}

impl std::ops::Deref for Embedded {
    type Target = LocalService;
    fn deref(&self) -> &LocalService {
        &self.local
    }
}

impl Embedded {
    /// Stop the device, then the service (which sends GO_AWAY to whoever is still connected).
    pub async fn shutdown(self) {
        self.device.shutdown().await;
        self.local.shutdown().await;
    }
}

/// Start the local service and the device. `extra_routes` are served beside signaling.
pub async fn start(
    config: DeviceConfig,
    extra_routes: Option<axum::Router>,
) -> Result<Embedded, EmbeddedError> {
    start_with_events(config, extra_routes, EventBus::new()).await
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), EmbeddedError> {
    let listen_err = |source| EmbeddedError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(listen_err)?;
    let local = listener.local_addr().map_err(listen_err)?;
    Ok((listener, local))
}

/// A key nobody else knows, made up for this run: the TLS endpoint accepts only it.
fn run_key() -> AccessKey {
    use rand::distr::{Alphanumeric, SampleString};
    let mut rng = rand::rng();
    AccessKey {
        access_key_id: format!(
            "AKIDLOCAL{}",
            Alphanumeric.sample_string(&mut rng, 11).to_uppercase()
        ),
        secret_access_key: Alphanumeric.sample_string(&mut rng, 40),
        session_token: None,
    }
}

/// Where a client on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Like [`start`], publishing the device's events on `events` (subscribe first to see all).
pub async fn start_with_events(
    config: DeviceConfig,
    extra_routes: Option<axum::Router>,
    events: EventBus,
) -> Result<Embedded, EmbeddedError> {
    // Open sources first: a bad file is reported before anything listens.
    let camera = crate::sources::open_camera(&config.video)?;
    let microphone = crate::sources::open_microphone_with(&config.audio, config.codecs.audio)?;
    let (local, client) = start_service(&config, extra_routes).await?;
    let parts = DeviceParts {
        config,
        signaling: client,
        camera,
        microphone,
    };
    match Device::start_with_events(parts, events).await {
        Ok(device) => Ok(Embedded { device, local }),
        Err(e) => {
            local.shutdown().await;
            Err(e.into())
        }
    }
}

/// Starts the local service for `config` (which must be `signaling.mode = "embedded"`) and
/// returns it with a master client for its channel (created on the first run), signed with
/// this run's key. `extra_routes` are served beside the page's data plane.
pub async fn start_service(
    config: &DeviceConfig,
    extra_routes: Option<axum::Router>,
) -> Result<(LocalService, Arc<dyn kvs_signaling::SignalingClient>), EmbeddedError> {
    let SignalingConfig::Embedded {
        channel,
        listen,
        tls_listen,
        state_dir,
    } = config.signaling.clone()
    else {
        return Err(EmbeddedError::NotEmbedded);
    };
    let state_dir = match state_dir {
        Some(d) => d,
        None => kvs_signaling_service::store::default_state_dir("embedded")
            .ok_or(EmbeddedError::NoStateDir)?,
    };
    let state_err = |reason: String| EmbeddedError::State {
        dir: state_dir.clone(),
        reason,
    };
    let (page_listener, addr) = bind(listen).await?;
    let (tls_listener, tls_addr) = bind(tls_listen).await?;
    let tls = kvs_signaling_service::tls::load_or_create(&state_dir, &[])
        .map_err(|e| state_err(e.to_string()))?;

    let key = run_key();
    // The device enforces its own viewer limit with a clear refusal; the service allows a few
    // more connections so refused viewers can still hear why.
    let service_config = ServiceConfig {
        region: EMBEDDED_REGION.into(),
        max_viewers_per_channel: config.session.max_viewers.max(1) + 5,
        landing_page: extra_routes.as_ref().map(|_| "/index.html".to_owned()),
        access_keys: vec![key.clone()],
        state_dir: Some(state_dir.clone()),
        ..ServiceConfig::default()
    };
    let state = ServiceState::open(service_config).map_err(|e| state_err(e.to_string()))?;
    let tls_state = state.edge(true, true);
    let tls_service = kvs_signaling_service::spawn_tls(
        tls_listener,
        kvs_signaling_service::router(tls_state.clone()),
        tls_state,
        &tls,
    )
    .map_err(|source| EmbeddedError::Listen {
        addr: tls_addr,
        source,
    })?;
    // The page's edge: plain, viewers of this channel only; beyond loopback only with a
    // presigned URL from the page server.
    let page_requires_signature = !addr.ip().is_loopback();
    let page_state = state.viewer_edge(false, &channel, page_requires_signature);
    let mut page_app = kvs_signaling_service::router(page_state.clone());
    if let Some(extra) = extra_routes {
        page_app = page_app.merge(extra);
    }
    let service = kvs_signaling_service::spawn_router(page_listener, page_app, page_state);

    let control_plane = format!("https://{}", reachable(tls_addr));
    let run_credentials = Credentials::new(key.access_key_id, key.secret_access_key, None, None);
    let credentials = Arc::new(StaticProvider::new(run_credentials.clone()));
    let mut kvs = KvsClientConfig::new(
        EMBEDDED_REGION,
        ChannelRef::Name(channel.clone()),
        Role::Master,
        credentials,
    )?;
    kvs.control_endpoint = Some(control_plane.clone());
    kvs.create_channel = true;
    kvs.stun_url = None; // no STUN server on this machine; peers meet on host candidates
    kvs.tls = kvs_aws::https::client_tls_config(Some(tls.ca_pem.as_bytes()), true)
        .map_err(|e| state_err(e.to_string()))?;
    let started = async {
        let client = KvsSignalingClient::new(kvs)?;
        // Describe (create on first run) and get the endpoints now, so a broken set-up fails
        // here with a clear error rather than as a device that keeps retrying.
        let (channel_arn, _endpoints) = client.channel().await?;
        Ok::<_, EmbeddedError>((client, channel_arn))
    }
    .await;
    let (client, channel_arn) = match started {
        Ok(pair) => pair,
        Err(e) => {
            service.shutdown().await;
            tls_service.shutdown().await;
            return Err(e);
        }
    };
    let signaling_url = format!("ws://{}/", reachable(addr));
    let viewer_signer = ViewerUrlSigner {
        credentials: run_credentials,
        channel_arn: channel_arn.clone(),
        tls: false,
    };
    tracing::info!(channel = %channel_arn, %control_plane, "embedded signaling service; page data plane on {signaling_url}");
    let local = LocalService {
        service,
        tls_service,
        signaling_url,
        control_plane,
        ca_path: tls.ca_path,
        channel_name: channel,
        channel_arn,
        addr,
        viewer_signer,
        page_requires_signature,
    };
    Ok((local, Arc::new(client)))
}
