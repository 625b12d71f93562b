//! The tokio/axum edge of the service: HTTP upgrade, WebSocket connection tasks, shutdown.
//!
//! Owns: turning a WebSocket upgrade request into a [`RoutingCore::connect`] (or an HTTP
//! refusal), running one task per connection that feeds received frames to the core and sends
//! what the core outputs, idle timeouts, and serving the router.
//!
//! Also: the REST control plane's HTTP side (body limit, CORS, request ids, rest-json error
//! responses) around the sans-IO [`crate::control`] core, SigV4 verification (via
//! `kvs_aws::Verifier`) of every REST call and every WebSocket connect when access keys are
//! configured, and saving the channel list after changes.
//!
//! Must not touch: routing decisions (the core makes them) or the wire format (the codec).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use kvs_aws::{IncomingRequest, StaticKeys, Verifier, VerifierConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::control::{self, ControlContext, ControlResponse, Endpoints, Operation};
use crate::routing::{
    ChannelError, ChannelInfo, ConnectError, ConnectRole, ConnectionId, Output, RoutingCore,
};
use crate::store::{ChannelStore, StoreError};
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
}

/// The shared state of a running service; cheap to clone.
#[derive(Clone)]
pub struct ServiceState {
    shared: Arc<Mutex<Shared>>,
    config: Arc<ServiceConfig>,
    auth: Option<Arc<Auth>>,
    store: Option<ChannelStore>,
    /// How clients reach this edge (one listener): shared by the clones a router holds.
    edge: Arc<Edge>,
}

/// What one listener is: TLS or plain, authenticated or not. One service can have several
/// (the embedded default: TLS + SigV4 for the device, plain loopback for the viewer page).
#[derive(Debug)]
struct Edge {
    /// Clients reach us over TLS (endpoints handed out are then `wss://` / `https://`).
    tls: std::sync::atomic::AtomicBool,
    /// Check SigV4 signatures (when access keys are configured).
    authenticate: bool,
}

struct Auth {
    verifier: Verifier,
    keys: StaticKeys,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("config", &self.config)
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
            })
        });
        ServiceState {
            shared: Arc::new(Mutex::new(Shared {
                core: RoutingCore::new(config.clone()),
                senders: HashMap::new(),
            })),
            config: Arc::new(config),
            auth,
            store: None,
            edge: Arc::new(Edge {
                tls: false.into(),
                authenticate: true,
            }),
        }
    }

    /// A view of the same service (channels, connections, keys) for another listener:
    /// `tls` sets the endpoints' schemes, `authenticate` whether SigV4 is checked there.
    /// An unauthenticated edge is meant for loopback only.
    pub fn edge(&self, tls: bool, authenticate: bool) -> ServiceState {
        ServiceState {
            edge: Arc::new(Edge {
                tls: tls.into(),
                authenticate,
            }),
            ..self.clone()
        }
    }

    fn is_tls(&self) -> bool {
        self.edge.tls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A service that keeps its channels in `config.state_dir` (when set): the saved channels
    /// are loaded now and the list is saved after every create and delete.
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
            info!(path = %store.path().display(), count = shared.core.channels().len(), "channels loaded");
            drop(shared);
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

    fn save_channels(&self, channels: &[ChannelInfo]) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save(channels) {
                warn!(error = %e, "cannot save the channel list; it will be lost on restart");
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

    /// Creates a channel (error if the name is invalid or taken).
    pub fn create_channel(&self, name: &str) -> Result<ChannelInfo, ChannelError> {
        let mut shared = self.lock();
        let info = shared.core.create_channel(name, SystemTime::now())?;
        let all = shared.core.channels();
        drop(shared);
        self.save_channels(&all);
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
    ) -> Result<(ConnectionId, mpsc::Receiver<ConnCommand>), ConnectError> {
        let mut shared = self.lock();
        let conn = shared.core.connect(arn, role, Instant::now())?;
        let (tx, rx) = mpsc::channel(self.config.connection_queue.max(1));
        shared.senders.insert(conn, tx);
        dispatch(&mut shared);
        Ok((conn, rx))
    }

    fn handle_frame(&self, conn: ConnectionId, bytes: &[u8]) {
        let mut shared = self.lock();
        shared.core.handle_frame(conn, bytes, Instant::now());
        dispatch(&mut shared);
    }

    fn disconnect(&self, conn: ConnectionId) {
        let mut shared = self.lock();
        shared.core.disconnect(conn, Instant::now());
        shared.senders.remove(&conn);
        dispatch(&mut shared);
    }
}

/// Carries out the core's outputs without waiting: a connection whose queue is full is
/// dropped (its sender removed, so its task ends) rather than letting it grow.
fn dispatch(shared: &mut Shared) {
    while let Some(output) = shared.core.poll_output() {
        match output {
            Output::Send { to, text } => {
                let Some(tx) = shared.senders.get(&to) else {
                    continue;
                };
                if tx.try_send(ConnCommand::Text(text)).is_err() {
                    warn!(conn = to.0, "connection cannot keep up; dropping it");
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

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.disconnect(self.conn);
    }
}

/// The service's router: the WebSocket data plane at `/` and the REST control plane at its
/// operation paths, with CORS for browser callers. Merge further routes into it.
pub fn router(state: ServiceState) -> Router {
    let mut app = Router::new().route("/", any(data_plane));
    for path in Operation::PATHS {
        app = app.route(path, post(control_plane).options(preflight));
    }
    app.layer(DefaultBodyLimit::max(control::MAX_CONTROL_BODY_BYTES))
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

/// Checks the request's SigV4 signature when access keys are configured.
fn authenticate(
    state: &ServiceState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ControlResponse> {
    let Some(auth) = state.auth.as_ref().filter(|_| state.edge.authenticate) else {
        return Ok(());
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
    auth.verifier
        .verify(&req, &auth.keys, SystemTime::now())
        .map(|_| ())
        .map_err(|e| {
            debug!(error = ?e, "SigV4 verification failed");
            ControlResponse::error(e.http_status(), e.error_code(), e.to_string())
        })
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

async fn control_plane(
    State(state): State<ServiceState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(op) = Operation::from_path(uri.path()) else {
        return control_response(ControlResponse::error(
            404,
            "UnknownOperationException",
            "unknown operation",
        ));
    };
    if let Err(e) = authenticate(&state, &method, &uri, &headers, &body) {
        return control_response(e);
    }
    let endpoints = endpoints(&state, &headers);
    let ctx = ControlContext {
        now: SystemTime::now(),
        endpoints: &endpoints,
        ice: &state.config.ice_servers,
    };
    let mut shared = state.lock();
    let (response, change) = control::handle(&mut shared.core, op, &body, &ctx);
    // A deleted channel's connections are closed by the core's outputs.
    dispatch(&mut shared);
    let channels = (change == control::Change::ChannelsChanged).then(|| shared.core.channels());
    drop(shared);
    if let Some(all) = channels {
        state.save_channels(&all);
    }
    debug!(?op, status = response.status, "control-plane call");
    control_response(response)
}

/// An error response in the rest-json convention: `x-amzn-ErrorType` and `{"message":…}`.
fn error_response(status: StatusCode, error_type: &'static str, message: String) -> Response {
    (
        status,
        [("x-amzn-ErrorType", error_type)],
        Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

/// Looks a query parameter up case-insensitively.
fn query_param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
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
                return axum::response::Redirect::temporary(page).into_response();
            }
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentException",
            "expected a WebSocket upgrade".into(),
        );
    };
    if let Err(e) = authenticate(&state, &method, &uri, &headers, &[]) {
        warn!(status = e.status, error = ?e.error_type, "refusing an unauthenticated signaling connection");
        return control_response(e);
    }
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
    let (conn, commands) = match state.connect(arn, role.clone()) {
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
                ConnectError::ViewerLimit { .. } => (
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
    info!(conn = conn.0, arn, ?role, "signaling connection accepted");
    let guard = ConnGuard {
        state: state.clone(),
        conn,
    };
    let limits = ConnLimits {
        idle: state.config.idle_timeout,
        max_age: state.config.max_connection_age,
    };
    let max_frame = kvs_signaling_codec::MAX_FRAME_BYTES;
    // Small per-connection buffers (the defaults allocate 128 KiB per connection for reading);
    // a client that stops reading fills at most `max_write_buffer_size`, then its sends fail.
    ws.protocols(["wss"])
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max_frame)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| run_connection(socket, guard, commands, limits))
}

#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    idle: std::time::Duration,
    max_age: std::time::Duration,
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
    let reason: String = loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(ConnCommand::Text(text)) => {
                    if let Err(e) = socket.send(Message::Text(text.into())).await {
                        break format!("send failed: {e}");
                    }
                }
                Some(ConnCommand::Close(reason)) => {
                    let frame = CloseFrame { code: 1000, reason: reason.clone().into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break reason;
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
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
                let frame = CloseFrame { code: 1000, reason: "idle timeout".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break "idle timeout".into();
            }
            _ = tokio::time::sleep_until(end_of_life) => {
                let frame = CloseFrame { code: 1000, reason: "maximum connection duration reached".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break "maximum connection duration reached".into();
            }
        }
    };
    debug!(conn = conn.0, %reason, "signaling connection ended");
    drop(guard);
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
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.shutdown();
        })
        .await
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
    let listener = crate::tls::TlsListener::new(listener, tls.server_config.clone())?;
    let local_addr = axum::serve::Listener::local_addr(&listener).ok();
    state.set_tls(true);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown_state = state.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                shutdown_state.shutdown();
            })
            .await
    });
    info!(?local_addr, "signaling service listening (TLS)");
    Ok(ServiceHandle {
        state,
        local_addr,
        stop,
        task,
    })
}

/// Like [`spawn`] but serves a router the caller built from [`router`]`(state)`.
pub fn spawn_router(listener: TcpListener, app: Router, state: ServiceState) -> ServiceHandle {
    let local_addr = listener.local_addr().ok();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, state.clone(), async move {
        let _ = stopped.await;
    }));
    info!(?local_addr, "signaling service listening");
    ServiceHandle {
        state,
        local_addr,
        stop,
        task,
    }
}
