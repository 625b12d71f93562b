//! The tokio/axum edge of the service: HTTP upgrade, WebSocket connection tasks, shutdown.
//!
//! Owns: turning a WebSocket upgrade request into a [`RoutingCore::connect`] (or an HTTP
//! refusal), running one task per connection that feeds received frames to the core and sends
//! what the core outputs (telling the core when each frame is written), idle, age and send
//! timeouts, and serving the router (through the `listen` module).
//!
//! Also: the REST control plane's HTTP side (body size and read-time limits, CORS, request
//! ids, rest-json errors for everything — unknown paths and methods included) around the
//! sans-IO [`crate::control`] core, SigV4 verification (via `kvs_aws::Verifier`) of every REST
//! call and every WebSocket connect when access keys are configured (and revoking a key at
//! run time: GO_AWAY to the connections it signed), what each edge may
//! serve ([`ServiceState::edge`]: everything; [`ServiceState::viewer_edge`]: viewer connects to
//! one channel only), and recording channel changes in the [`ChannelStore`] in the order they
//! happen.
//!
//! Must not touch: routing decisions (the core makes them) or the wire format (the codec).
//! Never logs secrets: signatures, session tokens and canonical requests stay out of its logs.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use kvs_aws::{IncomingRequest, StaticKeys, Verifier, VerifierConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::control::{self, ControlContext, ControlResponse, Endpoints, Operation};
use crate::listen::{ConnLimiter, Listen};
use crate::routing::{
    ChannelError, ChannelInfo, ConnectError, ConnectRole, ConnectionId, Output, RoutingCore,
};
use crate::store::{ChannelStore, Record, StoreError, Ticket};
use crate::ServiceConfig;

/// What the core asks a connection task to do.
#[derive(Debug)]
enum ConnCommand {
    Text(String),
    Close(String),
}

struct Shared {
    core: RoutingCore,
    senders: HashMap<ConnectionId, mpsc::Sender<ConnCommand>>,
    /// The access key that signed each connection opened with a signature.
    signed_with: HashMap<ConnectionId, String>,
}

/// The shared state of a running service; cheap to clone.
#[derive(Clone)]
pub struct ServiceState {
    shared: Arc<Mutex<Shared>>,
    config: Arc<ServiceConfig>,
    auth: Option<Arc<Auth>>,
    store: Option<ChannelStore>,
    /// Connection caps, shared by every listener of the service.
    limiter: Arc<ConnLimiter>,
    /// How clients reach this edge (one listener): shared by the clones a router holds.
    edge: Arc<Edge>,
    /// WebSocket connection tasks still running, so a shutdown can wait for the GO_AWAY and
    /// close frames it queued to be written before the process goes away.
    live_connections: Arc<std::sync::atomic::AtomicUsize>,
}

/// What one listener is: TLS or plain, and what it lets clients do. One service can have
/// several (the embedded default: TLS + SigV4 for the device, a viewer-only edge for the page).
#[derive(Debug)]
struct Edge {
    /// Clients reach us over TLS (endpoints handed out are then `wss://` / `https://`).
    tls: std::sync::atomic::AtomicBool,
    access: Access,
}

/// What an edge serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// The whole service: REST control plane and data plane, both roles.
    Full {
        /// Check SigV4 signatures (when access keys are configured).
        authenticate: bool,
    },
    /// Viewer connects to one channel, and nothing else: REST calls and master connects are
    /// refused with 403.
    Viewer {
        /// The one channel, by name (its ARN may not exist yet when the edge starts).
        channel: String,
        /// Every connect must carry a valid presigned URL. Without it, unsigned connects are
        /// accepted, but a signature that is present must still be valid.
        require_signature: bool,
    },
}

struct Auth {
    verifier: Verifier,
    keys: StaticKeys,
    /// Keys no longer accepted ([`ServiceState::revoke_access_key`]).
    revoked: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("config", &self.config)
            .field("edge", &self.edge)
            .finish()
    }
}

impl ServiceState {
    /// A service with no channels. `config.state_dir` is not read (see [`ServiceState::open`]).
    pub fn new(config: ServiceConfig) -> Self {
        let auth = (!config.access_keys.is_empty()).then(|| {
            let mut keys = StaticKeys::new();
            for k in &config.access_keys {
                keys.insert(
                    k.access_key_id.clone(),
                    k.secret_access_key.clone(),
                    k.session_token.iter().cloned().collect(),
                );
            }
            Arc::new(Auth {
                verifier: Verifier::new(VerifierConfig {
                    max_skew: config.max_clock_skew,
                    service: Some("kinesisvideo".into()),
                    region: Some(config.region.clone()),
                }),
                keys,
                revoked: Mutex::default(),
            })
        });
        ServiceState {
            shared: Arc::new(Mutex::new(Shared {
                core: RoutingCore::new(config.clone()),
                senders: HashMap::new(),
                signed_with: HashMap::new(),
            })),
            limiter: Arc::new(ConnLimiter::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
            config: Arc::new(config),
            auth,
            store: None,
            edge: Arc::new(Edge {
                tls: false.into(),
                access: Access::Full { authenticate: true },
            }),
            live_connections: Arc::default(),
        }
    }

    /// Waits (at most `within`) until every WebSocket connection task has ended — after
    /// [`ServiceState::shutdown`], until each has written its GO_AWAY and close frame.
    pub async fn connections_closed(&self, within: Duration) {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + within;
        while self.live_connections.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A view of the same service (channels, connections, keys, connection caps) for another
    /// listener serving everything: `tls` sets the endpoints' schemes, `authenticate` whether
    /// SigV4 is checked there. An unauthenticated edge is meant for loopback only.
    pub fn edge(&self, tls: bool, authenticate: bool) -> ServiceState {
        self.with_edge(tls, Access::Full { authenticate })
    }

    /// A view of the same service for a listener that serves only viewer connects to the
    /// channel named `channel` (the embedded default's page edge). REST calls and master
    /// connects are refused with a rest-json 403. With `require_signature`, every connect
    /// must carry a presigned URL signed with one of the service's access keys (what a page
    /// server hands out); without, unsigned connects are accepted (loopback only).
    pub fn viewer_edge(&self, tls: bool, channel: &str, require_signature: bool) -> ServiceState {
        self.with_edge(
            tls,
            Access::Viewer {
                channel: channel.to_string(),
                require_signature,
            },
        )
    }

    fn with_edge(&self, tls: bool, access: Access) -> ServiceState {
        ServiceState {
            edge: Arc::new(Edge {
                tls: tls.into(),
                access,
            }),
            ..self.clone()
        }
    }

    fn is_tls(&self) -> bool {
        self.edge.tls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A service that keeps its channels in `config.state_dir` (when set): the saved channels
    /// are loaded now and every create and delete is recorded (see [`crate::store`]).
    pub fn open(config: ServiceConfig) -> Result<Self, StoreError> {
        let store = config.state_dir.as_deref().map(ChannelStore::new);
        let mut state = ServiceState::new(config);
        if let Some(store) = store {
            let channels = store.load()?;
            let mut shared = state.lock();
            for info in channels {
                if let Err(e) = shared.core.restore_channel(info.clone()) {
                    warn!(channel = %info.name, error = %e, "skipping a saved channel");
                }
            }
            let count = shared.core.channels().len();
            drop(shared);
            if count > state.config.max_channels {
                warn!(
                    count,
                    limit = state.config.max_channels,
                    "more saved channels than the channel limit; no new ones can be created"
                );
            }
            info!(path = %store.path().display(), count, "channels loaded");
            // Start from a fresh snapshot so the journal only holds this run's changes.
            if let Err(e) = store.compact() {
                warn!(error = %e, "cannot compact the channel journal; changes are still recorded");
            }
            state.store = Some(store);
        }
        Ok(state)
    }

    /// Marks the service as reached over TLS: endpoints handed out become `wss://`/`https://`.
    pub fn set_tls(&self, tls: bool) {
        self.edge
            .tls
            .store(tls, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a change while the state lock is held (so records keep the order of changes).
    fn record(&self, change: control::Change) -> Option<Ticket> {
        let store = self.store.as_ref()?;
        let record = match change {
            control::Change::None => return None,
            control::Change::Created(info) => Record::Created(info),
            control::Change::Deleted(info) => Record::Deleted(info),
        };
        Some(store.record(record))
    }

    /// Writes recorded changes up to `ticket` (blocking file I/O; not under the state lock).
    fn commit(&self, ticket: Ticket) {
        if let Some(store) = &self.store {
            if let Err(e) = store.commit(ticket) {
                warn!(error = %e, "cannot save the channel list; the change will be lost on restart");
            }
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the service would, so keep going with the data.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a channel (error if the name is invalid or taken, or at the channel limit).
    /// Returns once the channel is saved (when the service keeps state).
    pub fn create_channel(&self, name: &str) -> Result<ChannelInfo, ChannelError> {
        let mut shared = self.lock();
        let info = shared.core.create_channel(name, SystemTime::now())?;
        let ticket = self.record(control::Change::Created(info.clone()));
        drop(shared);
        if let Some(t) = ticket {
            self.commit(t);
        }
        Ok(info)
    }

    /// Returns the channel of that name, creating it if needed.
    pub fn ensure_channel(&self, name: &str) -> Result<ChannelInfo, ChannelError> {
        match self.create_channel(name) {
            Err(ChannelError::AlreadyExists(info)) => Ok(*info),
            other => other,
        }
    }

    pub fn channel_by_name(&self, name: &str) -> Option<ChannelInfo> {
        self.lock().core.channel_by_name(name)
    }

    pub fn channel_by_arn(&self, arn: &str) -> Option<ChannelInfo> {
        self.lock().core.channel_by_arn(arn)
    }

    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.lock().core.channels()
    }

    /// Number of viewers connected to the channel.
    pub fn viewer_count(&self, arn: &str) -> usize {
        self.lock().core.viewer_count(arn)
    }

    /// Whether a master is connected to the channel.
    pub fn has_master(&self, arn: &str) -> bool {
        self.lock().core.has_master(arn)
    }

    /// Number of stored, undelivered messages in the channel.
    pub fn pending_count(&self, arn: &str) -> usize {
        self.lock().core.pending_count(arn)
    }

    /// TCP connections open now, over every listener of the service.
    pub fn open_connections(&self) -> usize {
        self.limiter.open()
    }

    /// WebSocket connections registered with the routing core now.
    pub fn signaling_connections(&self) -> usize {
        self.lock().senders.len()
    }

    /// The periodic sweep: expired stored messages and viewers no longer remembered are
    /// dropped even when no traffic comes; after a large crowd of viewers is forgotten, their
    /// memory is handed back to the system.
    fn housekeeping(&self) {
        let dropped = self.lock().core.purge(Instant::now());
        if dropped >= crate::listen::RELEASE_AFTER_PEAK {
            debug!(dropped, "forgot many stored messages and viewers");
            crate::listen::release_memory_soon();
        }
    }

    /// Stops accepting `access_key_id`, on every edge, from now on: REST calls and connects
    /// signed with it are refused with 403 (as AWS refuses a deactivated or expired key), and
    /// every WebSocket connection that was opened with it gets GO_AWAY and is closed, so its
    /// client reconnects at once — with fresh credentials. For key rotation (a key that has
    /// expired or leaked) and for tests of credential expiry. Returns how many connections
    /// were sent away. Unknown keys are remembered too (and refused anyway).
    pub fn revoke_access_key(&self, access_key_id: &str) -> usize {
        if let Some(auth) = &self.auth {
            auth.revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(access_key_id.to_owned());
        }
        let mut shared = self.lock();
        let mut conns: Vec<ConnectionId> = shared
            .signed_with
            .iter()
            .filter(|(_, key)| key.as_str() == access_key_id)
            .map(|(conn, _)| *conn)
            .collect();
        conns.sort();
        let now = Instant::now();
        for conn in &conns {
            shared.signed_with.remove(conn);
            shared.core.go_away(*conn, "access key revoked", now);
        }
        dispatch(&mut shared);
        info!(
            key = access_key_id,
            connections = conns.len(),
            "access key revoked"
        );
        conns.len()
    }

    /// WebSocket connections open now that were signed with `access_key_id`.
    pub fn connections_signed_with(&self, access_key_id: &str) -> usize {
        self.lock()
            .signed_with
            .values()
            .filter(|key| key.as_str() == access_key_id)
            .count()
    }

    /// Sends GO_AWAY to every client, closes every connection and refuses new ones.
    pub fn shutdown(&self) {
        info!("signaling service shutting down: sending GO_AWAY to all clients");
        let mut shared = self.lock();
        shared.core.shutdown();
        dispatch(&mut shared);
    }

    fn connect(
        &self,
        arn: &str,
        role: ConnectRole,
        signed_with: Option<String>,
    ) -> Result<(ConnectionId, mpsc::Receiver<ConnCommand>), ConnectError> {
        let mut shared = self.lock();
        let conn = shared.core.connect(arn, role, Instant::now())?;
        if let Some(key) = signed_with {
            shared.signed_with.insert(conn, key);
        }
        // The core never hands out more than `connection_queue` frames for a connection;
        // one more slot for the close.
        let (tx, rx) = mpsc::channel(self.config.connection_queue.max(1) + 1);
        shared.senders.insert(conn, tx);
        dispatch(&mut shared);
        Ok((conn, rx))
    }

    fn handle_frame(&self, conn: ConnectionId, bytes: &[u8]) {
        let mut shared = self.lock();
        shared.core.handle_frame(conn, bytes, Instant::now());
        dispatch(&mut shared);
    }

    /// Runs one control-plane call under the state lock; the change it made is recorded
    /// under the same lock, so concurrent changes reach the journal in the order they were
    /// made. The caller commits the ticket after the lock is released.
    fn control_call(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (ControlResponse, Option<Ticket>) {
        let endpoints = endpoints(self, headers);
        let ctx = ControlContext {
            now: SystemTime::now(),
            endpoints: &endpoints,
            ice: &self.config.ice_servers,
        };
        let mut shared = self.lock();
        let (response, change) = control::route(&mut shared.core, method, path, body, &ctx);
        // A deleted channel's connections are closed by the core's outputs.
        dispatch(&mut shared);
        let ticket = self.record(change);
        (response, ticket)
    }

    fn frame_sent(&self, conn: ConnectionId) {
        self.lock().core.frame_sent(conn);
    }

    fn disconnect(&self, conn: ConnectionId) {
        let mut shared = self.lock();
        shared.core.disconnect(conn, Instant::now());
        shared.senders.remove(&conn);
        shared.signed_with.remove(&conn);
        let (len, cap) = (shared.senders.len(), shared.senders.capacity());
        // Like the core's maps: give back what a burst of connections left behind.
        if cap > 256 && len < cap / 8 {
            shared.senders.shrink_to(len * 2);
        }
        dispatch(&mut shared);
    }
}

/// Carries out the core's outputs without waiting. The core keeps each connection's queue
/// within its capacity, so a full channel here means the connection task is gone.
fn dispatch(shared: &mut Shared) {
    while let Some(output) = shared.core.poll_output() {
        match output {
            Output::Send { to, text } => {
                let Some(tx) = shared.senders.get(&to) else {
                    continue;
                };
                if tx.try_send(ConnCommand::Text(text)).is_err() {
                    debug!(conn = to.0, "connection task gone; dropping it");
                    shared.senders.remove(&to);
                }
            }
            Output::Close { conn, reason } => {
                if let Some(tx) = shared.senders.remove(&conn) {
                    let _ = tx.try_send(ConnCommand::Close(reason));
                }
            }
        }
    }
}

/// Deregisters a connection when dropped: covers failed upgrades and ended tasks alike.
struct ConnGuard {
    state: ServiceState,
    conn: ConnectionId,
}

impl ConnGuard {
    fn new(state: ServiceState, conn: ConnectionId) -> Self {
        state
            .live_connections
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ConnGuard { state, conn }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.disconnect(self.conn);
        self.state
            .live_connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The service's router: the WebSocket data plane at `/` and the REST control plane at its
/// operation paths, with CORS for browser callers; every other path or method answers with a
/// rest-json error. Merge further routes into it (without a fallback of their own).
/// On a viewer-only edge ([`ServiceState::viewer_edge`]) the control-plane paths answer 403.
pub fn router(state: ServiceState) -> Router {
    let viewer_only = matches!(state.edge.access, Access::Viewer { .. });
    let mut app = Router::new().route("/", any(data_plane));
    for path in Operation::PATHS {
        app = if viewer_only {
            app.route(path, any(control_plane_denied))
        } else {
            app.route(path, post(control_plane).options(preflight))
        };
    }
    app.fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(add_cors_headers))
        .with_state(state)
}

/// CORS: any origin may call (requests are authenticated by signature, not by origin).
async fn add_cors_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-amzn-ErrorType, x-amzn-RequestId, Date"),
    );
    response
}

async fn preflight() -> Response {
    (
        StatusCode::OK,
        [
            ("access-control-allow-methods", "POST, GET, OPTIONS"),
            ("access-control-allow-headers", "*"),
            ("access-control-max-age", "86400"),
        ],
    )
        .into_response()
}

async fn unknown_path(uri: Uri) -> Response {
    debug!(path = uri.path(), "unknown path");
    control_response(control::unknown_operation())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    control_response(control::method_not_allowed(method.as_str(), uri.path()))
}

async fn control_plane_denied() -> Response {
    control_response(ControlResponse::error(
        403,
        "AccessDeniedException",
        "this endpoint serves only viewer connections for its channel; \
         the control plane is not available here",
    ))
}

/// A request id in the shape AWS uses (a random UUID).
fn request_id() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn control_response(r: ControlResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(r.body)).into_response();
    let h = response.headers_mut();
    if let Some(t) = r.error_type {
        h.insert("x-amzn-ErrorType", HeaderValue::from_static(t));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id()) {
        h.insert("x-amzn-RequestId", v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert("date", v);
    }
    response
}

/// Checks the request's SigV4 signature when this edge authenticates and keys are configured;
/// the access key that signed it, if one was checked.
fn authenticate(
    state: &ServiceState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, ControlResponse> {
    match state.edge.access {
        Access::Full { authenticate: true } if state.auth.is_some() => {
            verify_signature(state, method, uri, headers, body).map(Some)
        }
        _ => Ok(None),
    }
}

/// Verifies the request's SigV4 signature against the service's keys (a revoked key is
/// refused like an unknown one); without keys nothing can be verified, so everything is
/// refused. Returns the access key that signed it.
fn verify_signature(
    state: &ServiceState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ControlResponse> {
    let Some(auth) = state.auth.as_ref() else {
        return Err(ControlResponse::error(
            403,
            "AccessDeniedException",
            "this endpoint requires a signed request, and no keys are configured",
        ));
    };
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let Ok(value) = value.to_str() else {
            return Err(ControlResponse::error(
                400,
                "InvalidArgumentException",
                format!("header {name} is not valid text"),
            ));
        };
        pairs.push((name.as_str(), value));
    }
    let req = IncomingRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &pairs,
        body,
    };
    let verified = auth
        .verifier
        .verify(&req, &auth.keys, SystemTime::now())
        .map_err(|e| {
            // The error's Display is the service's wording; never the canonical request,
            // which can hold a session token.
            debug!(error = %e, "SigV4 verification failed");
            ControlResponse::error(e.http_status(), e.error_code(), e.to_string())
        })?;
    let revoked = auth
        .revoked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&verified.access_key_id);
    if revoked {
        debug!(key = %verified.access_key_id, "request signed with a revoked key");
        return Err(ControlResponse::error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid (the access key was revoked)",
        ));
    }
    Ok(verified.access_key_id)
}

/// Where clients reach us, from the `Host` they used.
fn endpoints(state: &ServiceState, headers: &HeaderMap) -> Endpoints {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .unwrap_or("localhost");
    let (ws, http) = if state.is_tls() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    Endpoints {
        wss: format!("{ws}://{host}"),
        https: format!("{http}://{host}"),
    }
}

/// Reads a request body within the size and time limits; the error is the response to send.
async fn read_body(
    state: &ServiceState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let limit = control::MAX_CONTROL_BODY_BYTES;
    let too_large = || {
        let mut r = control_response(control::body_too_large());
        // The rest of the body is not read, so the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        state.config.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over_limit {
                Err(too_large())
            } else {
                debug!(error = %e, "cannot read a request body");
                Err(control_response(ControlResponse::error(
                    400,
                    "SerializationException",
                    "the request body could not be read",
                )))
            }
        }
        Err(_) => {
            debug!("request body not received in time");
            let mut r = control_response(ControlResponse::error(
                408,
                "RequestTimeoutException",
                format!(
                    "the request body was not received within {} s",
                    state.config.body_read_timeout.as_secs_f32()
                ),
            ));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

async fn control_plane(
    State(state): State<ServiceState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if let Err(e) = authenticate(&state, &method, &uri, &headers, &body) {
        return control_response(e);
    }
    let (response, ticket) = state.control_call(method.as_str(), uri.path(), &headers, &body);
    if let Some(ticket) = ticket {
        let writer = state.clone();
        // File I/O (with an fsync) off the async workers; the answer waits for it, so a
        // channel the client was told exists survives a restart.
        if let Err(e) = tokio::task::spawn_blocking(move || writer.commit(ticket)).await {
            warn!(error = %e, "saving the channel list failed");
        }
    }
    debug!(
        path = uri.path(),
        status = response.status,
        "control-plane call"
    );
    control_response(response)
}

/// An error response in the rest-json convention: `x-amzn-ErrorType` and `{"message":…}`.
fn error_response(status: StatusCode, error_type: &'static str, message: String) -> Response {
    control_response(ControlResponse::error(status.as_u16(), error_type, message))
}

/// Looks a query parameter up case-insensitively.
fn query_param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Whether the query carries a SigV4 presigned signature.
fn has_signature(params: &[(String, String)]) -> bool {
    query_param(params, "X-Amz-Signature").is_some()
        || query_param(params, "X-Amz-Algorithm").is_some()
}

/// What a viewer-only edge checks before a connect reaches the core: a valid signature (when
/// required, or when one is given), the viewer role, and its one channel. Returns the access
/// key that signed the connect, if it was signed.
fn check_viewer_edge(
    state: &ServiceState,
    (channel, require_signature): (&str, bool),
    (method, uri, headers): (&Method, &Uri, &HeaderMap),
    params: &[(String, String)],
    arn: &str,
    role: &ConnectRole,
) -> Result<Option<String>, ControlResponse> {
    let mut signed_with = None;
    if require_signature || has_signature(params) {
        signed_with = Some(verify_signature(state, method, uri, headers, &[])?);
    }
    let denied = |message: &str| ControlResponse::error(403, "AccessDeniedException", message);
    if !matches!(role, ConnectRole::Viewer { .. }) {
        return Err(denied("this endpoint accepts viewer connections only"));
    }
    // Unknown and other channels get the same answer: this edge does not say which exist.
    if state.channel_by_arn(arn).is_none_or(|c| c.name != channel) {
        return Err(denied(
            "this endpoint serves one channel only, not this one",
        ));
    }
    Ok(signed_with)
}

async fn data_plane(
    State(state): State<ServiceState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentException",
            "malformed query string".into(),
        );
    };
    let Ok(ws) = ws else {
        if query_param(&params, "X-Amz-ChannelARN").is_none() {
            if let Some(page) = &state.config.landing_page {
                // The page's own query (e.g. its access token) goes along.
                let target = match uri.query().filter(|q| !q.is_empty()) {
                    Some(q) if !page.contains('?') => format!("{page}?{q}"),
                    _ => page.clone(),
                };
                return axum::response::Redirect::temporary(&target).into_response();
            }
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentException",
            "expected a WebSocket upgrade".into(),
        );
    };
    let mut signed_with = match authenticate(&state, &method, &uri, &headers, &[]) {
        Ok(key) => key,
        Err(e) => {
            warn!(status = e.status, error = ?e.error_type, "refusing an unauthenticated signaling connection");
            return control_response(e);
        }
    };
    let Some(arn) = query_param(&params, "X-Amz-ChannelARN") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentException",
            "X-Amz-ChannelARN is required".into(),
        );
    };
    let role = match query_param(&params, "X-Amz-ClientId") {
        Some(id) => ConnectRole::Viewer {
            client_id: id.to_string(),
        },
        None => ConnectRole::Master,
    };
    if let Access::Viewer {
        channel,
        require_signature,
    } = &state.edge.access
    {
        match check_viewer_edge(
            &state,
            (channel, *require_signature),
            (&method, &uri, &headers),
            &params,
            arn,
            &role,
        ) {
            Ok(key) => signed_with = signed_with.or(key),
            Err(e) => {
                warn!(status = e.status, error = ?e.error_type, ?role, "refusing a connection on the viewer edge");
                return control_response(e);
            }
        }
    }
    let key = signed_with.clone();
    let (conn, commands) = match state.connect(arn, role.clone(), signed_with) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(arn, ?role, error = %e, "refusing signaling connection");
            let (status, error_type) = match &e {
                ConnectError::UnknownChannel(_) => {
                    (StatusCode::NOT_FOUND, "ResourceNotFoundException")
                }
                ConnectError::InvalidClientId(_) => {
                    (StatusCode::BAD_REQUEST, "InvalidArgumentException")
                }
                ConnectError::ViewerLimit { .. } | ConnectError::RateLimited { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "ClientLimitExceededException",
                ),
                ConnectError::ShuttingDown => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableException",
                ),
            };
            return error_response(status, error_type, e.to_string());
        }
    };
    info!(conn = conn.0, arn, ?role, key = ?key, "signaling connection accepted");
    let guard = ConnGuard::new(state.clone(), conn);
    let limits = ConnLimits {
        idle: state.config.idle_timeout,
        max_age: state.config.max_connection_age,
        send: state.config.send_timeout,
    };
    let max_frame = kvs_signaling_codec::MAX_FRAME_BYTES;
    // Small per-connection buffers (the defaults allocate 128 KiB per connection for reading);
    // a client that stops reading fills at most `max_write_buffer_size`, then its sends fail.
    ws.protocols(["wss"])
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max_frame)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| run_connection(socket, guard, commands, limits))
}

#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    idle: Duration,
    max_age: Duration,
    send: Duration,
}

/// Sends one message, giving up after `limit`: a client that does not take it in that time
/// has stopped reading.
async fn send_within(
    socket: &mut WebSocket,
    message: Message,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err("connection cannot keep up: it stopped reading".into()),
    }
}

/// One connection: core outputs go out, received frames go into the core.
async fn run_connection(
    mut socket: WebSocket,
    guard: ConnGuard,
    mut commands: mpsc::Receiver<ConnCommand>,
    limits: ConnLimits,
) {
    let conn = guard.conn;
    let idle_timeout = limits.idle;
    let end_of_life = tokio::time::Instant::now() + limits.max_age;
    let mut deadline = tokio::time::Instant::now() + idle_timeout;
    let close = |reason: &str| {
        Message::Close(Some(CloseFrame {
            code: 1000,
            reason: reason.to_string().into(),
        }))
    };
    let reason: String = loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(ConnCommand::Text(text)) => {
                    if let Err(e) = send_within(&mut socket, Message::Text(text.into()), limits.send).await {
                        if e.contains("keep up") {
                            warn!(conn = conn.0, "signaling connection stopped reading; dropping it");
                        }
                        break e;
                    }
                    guard.state.frame_sent(conn);
                }
                Some(ConnCommand::Close(reason)) => {
                    let _ = send_within(&mut socket, close(&reason), limits.send).await;
                    break reason;
                }
                None => {
                    let _ = send_within(&mut socket, Message::Close(None), limits.send).await;
                    break "dropped by the service".into();
                }
            },
            msg = socket.recv() => {
                deadline = tokio::time::Instant::now() + idle_timeout;
                match msg {
                    None => break "client went away".into(),
                    Some(Err(e)) => break format!("receive failed: {e}"),
                    Some(Ok(Message::Text(text))) => guard.state.handle_frame(conn, text.as_bytes()),
                    Some(Ok(Message::Binary(bytes))) => guard.state.handle_frame(conn, &bytes),
                    Some(Ok(Message::Close(_))) => break "closed by client".into(),
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let _ = send_within(&mut socket, close("idle timeout"), limits.send).await;
                break "idle timeout".into();
            }
            _ = tokio::time::sleep_until(end_of_life) => {
                let reason = "maximum connection duration reached";
                let _ = send_within(&mut socket, close(reason), limits.send).await;
                break reason.into();
            }
        }
    };
    debug!(conn = conn.0, %reason, "signaling connection ended");
    drop(guard);
}

fn listen(
    listener: TcpListener,
    app: Router,
    state: &ServiceState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Listen {
    let sweeper = state.clone();
    Listen {
        listener,
        tls,
        app,
        limiter: state.limiter.clone(),
        header_read_timeout: state.config.header_read_timeout,
        housekeeping: Box::new(move || sweeper.housekeeping()),
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then sends GO_AWAY to every
/// client of `state`, closes their connections and returns.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    state: ServiceState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listen = listen(listener, router, &state, None);
    let waiter = state.clone();
    let served = crate::listen::serve(listen, shutdown, move || state.shutdown()).await;
    waiter.connections_closed(crate::listen::STOP_GRACE).await;
    served
}

/// A service running in a background task.
#[derive(Debug)]
pub struct ServiceHandle {
    state: ServiceState,
    local_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServiceHandle {
    pub fn state(&self) -> &ServiceState {
        &self.state
    }

    /// The address the service listens on (`None` only if the OS would not say).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The data-plane endpoint, `ws://<addr>/` (`wss://` when served over TLS).
    pub fn ws_endpoint(&self) -> Option<String> {
        let scheme = if self.state.is_tls() { "wss" } else { "ws" };
        self.local_addr.map(|a| format!("{scheme}://{a}/"))
    }

    /// The control-plane endpoint, `http://<addr>` (`https://` when served over TLS).
    pub fn http_endpoint(&self) -> Option<String> {
        let scheme = if self.state.is_tls() { "https" } else { "http" };
        self.local_addr.map(|a| format!("{scheme}://{a}"))
    }

    /// Sends GO_AWAY to all clients, stops serving and waits for the server task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => info!("signaling service stopped"),
            Ok(Err(e)) => warn!(error = %e, "signaling service ended with an error"),
            Err(e) => warn!(error = %e, "signaling service task failed"),
        }
    }
}

/// Starts the service on `listener` in a background task of the current runtime, with a new
/// [`ServiceState`] for `config`. `extra_routes` (e.g. the viewer web page) are merged in and
/// served on the same port; they must not claim `/`.
pub fn spawn(
    listener: TcpListener,
    config: ServiceConfig,
    extra_routes: Option<Router>,
) -> ServiceHandle {
    let state = ServiceState::new(config);
    let mut app = router(state.clone());
    if let Some(extra) = extra_routes {
        app = app.merge(extra);
    }
    spawn_router(listener, app, state)
}

/// Like [`spawn_router`] but over TLS (HTTPS and WSS) with `tls`; endpoints handed out by
/// GetSignalingChannelEndpoint become `wss://` / `https://`.
pub fn spawn_tls(
    listener: TcpListener,
    app: Router,
    state: ServiceState,
    tls: &crate::tls::ServiceTls,
) -> std::io::Result<ServiceHandle> {
    let local_addr = Some(listener.local_addr()?);
    state.set_tls(true);
    let listen = listen(listener, app, &state, Some(tls.server_config.clone()));
    Ok(start(listen, state, local_addr, "TLS"))
}

/// Like [`spawn`] but serves a router the caller built from [`router`]`(state)`.
pub fn spawn_router(listener: TcpListener, app: Router, state: ServiceState) -> ServiceHandle {
    let local_addr = crate::listen::local_addr(&listener);
    let listen = listen(listener, app, &state, None);
    start(listen, state, local_addr, "plain")
}

fn start(
    listen: Listen,
    state: ServiceState,
    local_addr: Option<SocketAddr>,
    what: &'static str,
) -> ServiceHandle {
    let (stop, stopped) = oneshot::channel::<()>();
    let stopping = state.clone();
    let waiter = state.clone();
    let task = tokio::spawn(async move {
        let served = crate::listen::serve(
            listen,
            async move {
                let _ = stopped.await;
            },
            move || stopping.shutdown(),
        )
        .await;
        waiter.connections_closed(crate::listen::STOP_GRACE).await;
        served
    });
    info!(?local_addr, what, "signaling service listening");
    ServiceHandle {
        state,
        local_addr,
        stop,
        task,
    }
}
