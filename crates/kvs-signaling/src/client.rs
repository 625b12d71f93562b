//! WebSocket signaling clients (tokio edge) and the pluggable [`SignalingClient`] interface.
//!
//! Owns: opening one WebSocket connection to a KVS(-compatible) data-plane endpoint as a master
//! or a viewer, turning outgoing [`SignalingMessage`]s into client frames and incoming service
//! frames into [`SignalingEvent`]s, keep-alive pings, and reporting the end of a connection.
//!
//! Must not touch: reconnection and backoff (the application layer calls
//! [`SignalingClient::connect`] again after [`SignalingEvent::Disconnected`]), peer
//! connections, or the wire format itself (that is [`crate::codec`]).
//!
//! `wss://` URLs are opened with rustls ([`WsClientConfig::tls`], the public web roots by
//! default); a [`UrlPresigner`] can turn the plain URL into a signed one on every connect.
//! A link can renew its connection before a service-side age limit (KVS closes connections
//! after an hour): it opens the new connection first, switches to it, and lets the old one
//! drain, so the application sees [`SignalingEvent::Renewed`] instead of a disconnection.
//! When and how is [`crate::link::LinkCore`]'s (sans-IO) decision; the link task here only
//! carries it out.
//! The real KVS client, with the control plane and SigV4, is [`crate::kvs`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::info;

use crate::codec::{validate_client_id, CodecError, SignalingMessage};
use crate::ice::IceServer;
use crate::link::{ConnId, LinkCore, LinkInput, LinkOutput, LinkPolicy};

/// Which side of a channel a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The device: talks to any number of viewers, names the recipient of each message.
    Master,
    /// A viewer: talks only to the master; identified by its client id.
    Viewer { client_id: String },
}

/// Everything that can go wrong connecting or sending.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error("invalid signaling URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("TLS with the signaling service failed: {0}")]
    Tls(String),
    #[error("connecting to the signaling service failed: {0}")]
    Connect(String),
    #[error("connecting to the signaling service timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("the service refused the connection with HTTP {status}: {body}")]
    Refused {
        status: u16,
        body: String,
        /// The answer's `Date` header (clock-skew correction reads it).
        date: Option<String>,
    },
    #[error("a master must name the recipient of every message")]
    MissingRecipient,
    #[error("message cannot be encoded: {0}")]
    Codec(#[from] CodecError),
    #[error("the signaling connection is closed")]
    Closed,
    #[error("presigning the URL failed: {0}")]
    Presign(String),
    #[error("no credentials: {0}")]
    Credentials(String),
    #[error("control plane: {0}")]
    Api(#[from] crate::kvs::api::ApiError),
    #[error("control plane: {0}")]
    ApiShape(#[from] crate::kvs::api::ShapeError),
    #[error("control plane: {0}")]
    Http(String),
    #[error("invalid signaling configuration: {0}")]
    Config(String),
    /// The channel exists but cannot be used (being created or deleted).
    #[error("{0}")]
    ChannelState(String),
}

/// What a connected link reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    Message(SignalingMessage),
    /// The link moved to a fresh connection (before the service's connection age limit);
    /// nothing was lost and the link stays usable.
    Renewed {
        reason: String,
    },
    /// The connection ended; no more events follow.
    Disconnected {
        reason: String,
    },
}

/// Checks a message against the sender's role and encodes it as a client frame: a master
/// must name the recipient; a viewer's recipient is left out (the service ignores it).
/// The link does this for every queued message; call it first to get the error yourself.
pub fn encode_outgoing(role: &Role, msg: &SignalingMessage) -> Result<String, SignalingError> {
    match role {
        Role::Master if msg.peer_client_id.is_none() => Err(SignalingError::MissingRecipient),
        Role::Master => Ok(msg.to_client_frame()?.emit()),
        Role::Viewer { .. } => {
            let mut frame = msg.to_client_frame()?;
            frame.recipient_client_id = None;
            Ok(frame.emit())
        }
    }
}

/// One live signaling connection. Drop it (both halves) to close the connection.
///
/// Messages queued on `outgoing` that cannot be sent (a master message without a recipient,
/// an oversized payload — see [`encode_outgoing`]) are logged as errors and skipped.
#[derive(Debug)]
pub struct SignalingLink {
    pub outgoing: mpsc::Sender<SignalingMessage>,
    pub incoming: mpsc::Receiver<SignalingEvent>,
}

/// The pluggable signaling interface the application layer holds as `Arc<dyn SignalingClient>`.
pub trait SignalingClient: Send + Sync {
    /// Opens a new connection. Each call is a fresh connection (reconnecting is calling again).
    fn connect(&self) -> BoxFuture<'_, Result<SignalingLink, SignalingError>>;
    /// The ICE servers peers should use (cached while their credentials are valid).
    fn ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>>;
    /// Fetches the ICE servers anew (their TTL is running out, or the service sent
    /// RECONNECT_ICE_SERVER). Clients with a fixed list return it.
    fn refresh_ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        self.ice_servers()
    }
}

/// Turns a plain data-plane URL into a signed one (SigV4 query signing for real KVS).
pub trait UrlPresigner: Send + Sync {
    fn presign(&self, url: &str) -> Result<String, SignalingError>;
}

/// Settings of a [`WsSignalingClient`].
#[derive(Clone)]
pub struct WsClientConfig {
    /// The full data-plane URL including the query (see [`data_plane_url`]).
    pub url: String,
    pub role: Role,
    /// Returned by [`SignalingClient::ice_servers`].
    pub ice_servers: Vec<IceServer>,
    /// Keep-alive ping interval (the C SDK uses 10 s).
    pub ping_interval: Duration,
    /// A connect attempt counts as failed after this long (the seed uses 15 s).
    pub connect_timeout: Duration,
    /// Capacity of the outgoing and incoming queues.
    pub queue_capacity: usize,
    pub presigner: Option<Arc<dyn UrlPresigner>>,
    /// Trust for `wss://` URLs; `None` trusts the public web roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Renew the connection after this long (see the module doc); `None` never renews.
    pub max_connection_age: Option<Duration>,
}

impl WsClientConfig {
    pub fn new(url: impl Into<String>, role: Role) -> Self {
        WsClientConfig {
            url: url.into(),
            role,
            ice_servers: Vec::new(),
            ping_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            queue_capacity: 64,
            presigner: None,
            tls: None,
            max_connection_age: None,
        }
    }
}

impl std::fmt::Debug for WsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClientConfig")
            .field("url", &self.url)
            .field("role", &self.role)
            .field("ice_servers", &self.ice_servers)
            .field("ping_interval", &self.ping_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("presigner", &self.presigner.is_some())
            .field("tls", &self.tls.is_some())
            .field("max_connection_age", &self.max_connection_age)
            .finish()
    }
}

/// Builds the data-plane URL: `endpoint?X-Amz-ChannelARN=<arn>[&X-Amz-ClientId=<id>]`.
/// Viewer client ids are validated here.
pub fn data_plane_url(
    endpoint: &str,
    channel_arn: &str,
    role: &Role,
) -> Result<String, SignalingError> {
    let mut url = with_root_path(endpoint.trim_end_matches('?'))?;
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("X-Amz-ChannelARN=");
    url.push_str(&kvs_aws::sigv4::uri_encode(channel_arn, true));
    if let Role::Viewer { client_id } = role {
        validate_client_id(client_id)?;
        url.push_str("&X-Amz-ClientId=");
        url.push_str(&kvs_aws::sigv4::uri_encode(client_id, true));
    }
    Ok(url)
}

/// Checks the scheme and makes sure the URL has a path: KVS endpoints come without one
/// (`wss://m-xxxx.kinesisvideo…`), and `GET ?query` is not a valid request line.
fn with_root_path(url: &str) -> Result<String, SignalingError> {
    let Some(rest) = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
    else {
        return Err(SignalingError::InvalidUrl {
            url: url.to_string(),
            reason: "must start with ws:// or wss://".into(),
        });
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if authority_end == 0 {
        return Err(SignalingError::InvalidUrl {
            url: url.to_string(),
            reason: "has no host".into(),
        });
    }
    let insert_at = url.len() - rest.len() + authority_end;
    if url[insert_at..].starts_with('/') {
        Ok(url.to_string())
    } else {
        Ok(format!("{}/{}", &url[..insert_at], &url[insert_at..]))
    }
}

/// A KVS WebSocket signaling client for either role.
#[derive(Debug, Clone)]
pub struct WsSignalingClient {
    config: WsClientConfig,
}

impl WsSignalingClient {
    /// A client for `url` (see [`data_plane_url`]) with default settings.
    pub fn new(url: impl Into<String>, role: Role) -> Self {
        Self::with_config(WsClientConfig::new(url, role))
    }

    pub fn with_config(config: WsClientConfig) -> Self {
        WsSignalingClient { config }
    }

    pub fn config(&self) -> &WsClientConfig {
        &self.config
    }

    /// Opens one WebSocket to the (presigned) URL.
    async fn open_stream(config: &WsClientConfig) -> Result<WsStream, SignalingError> {
        let url = match &config.presigner {
            Some(p) => p.presign(&config.url)?,
            None => config.url.clone(),
        };
        let tls = match (&config.tls, url.starts_with("wss://")) {
            (Some(t), _) => Some(t.clone()),
            (None, true) => Some(
                kvs_aws::https::client_tls_config(None, false)
                    .map_err(|e| SignalingError::Tls(e.to_string()))?,
            ),
            (None, false) => None,
        };
        open_websocket(&url, tls.as_ref(), config.connect_timeout).await
    }

    async fn open(&self) -> Result<SignalingLink, SignalingError> {
        let ws = Self::open_stream(&self.config).await?;
        info!(role = ?self.config.role, "signaling connected");
        let renewal = self.config.max_connection_age.map(|after| {
            let config = self.config.clone();
            Renewal {
                after,
                open: Arc::new(move || {
                    let config = config.clone();
                    Box::pin(async move { Self::open_stream(&config).await })
                }),
            }
        });
        Ok(spawn_link(
            ws,
            self.config.role.clone(),
            self.config.queue_capacity,
            self.config.ping_interval,
            renewal,
        ))
    }
}

/// The byte stream under a signaling WebSocket: plain TCP, or TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open signaling WebSocket.
pub type WsStream = WebSocketStream<Transport>;

/// Opens a WebSocket to `url` (`ws://` or `wss://`, which needs `tls`) within `timeout`.
/// A refusal carries the service's status, body and `Date` header.
pub async fn open_websocket(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<WsStream, SignalingError> {
    let url = with_root_path(url)?;
    let invalid = |reason: &str| SignalingError::InvalidUrl {
        url: url.split('?').next().unwrap_or_default().to_string(),
        reason: reason.to_string(),
    };
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid(&e.to_string()))?;
    let uri = request.uri().clone();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| invalid("has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let connecting = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| SignalingError::Connect(format!("{host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let transport = if secure {
            let tls = tls.ok_or_else(|| SignalingError::Tls("no TLS configuration".into()))?;
            let stream = kvs_aws::https::tls_connect(tls, &host, tcp)
                .await
                .map_err(|e| SignalingError::Tls(e.to_string()))?;
            Transport::Tls(Box::new(stream))
        } else {
            Transport::Plain(tcp)
        };
        let max = crate::codec::MAX_FRAME_BYTES;
        // Signaling is a few small messages a minute: tungstenite's default 128 KiB read
        // buffer (allocated up front) and write batching buy nothing here. The write buffer is
        // bounded so a service that stops reading makes sends fail instead of memory grow.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(4 * max)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        match tokio_tungstenite::client_async_with_config(request, transport, Some(ws_config)).await
        {
            Ok((ws, _response)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).chars().take(512).collect())
                    .unwrap_or_default();
                let date = resp
                    .headers()
                    .get("date")
                    .and_then(|d| d.to_str().ok())
                    .map(str::to_string);
                Err(SignalingError::Refused {
                    status: resp.status().as_u16(),
                    body,
                    date,
                })
            }
            Err(e) => Err(SignalingError::Connect(e.to_string())),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(SignalingError::ConnectTimeout(timeout)),
    }
}

/// Opens a replacement connection for a renewing link.
pub type OpenFn =
    Arc<dyn Fn() -> BoxFuture<'static, Result<WsStream, SignalingError>> + Send + Sync>;

/// When and how a link renews its connection.
pub struct Renewal {
    /// Age of a connection at which it is replaced.
    pub after: Duration,
    pub open: OpenFn,
}

/// Starts the task that pumps `ws` both ways and returns the application's end of it.
pub fn spawn_link(
    ws: WsStream,
    role: Role,
    queue_capacity: usize,
    ping_interval: Duration,
    renewal: Option<Renewal>,
) -> SignalingLink {
    let capacity = queue_capacity.max(1);
    let (outgoing_tx, outgoing_rx) = mpsc::channel(capacity);
    let (events_tx, events_rx) = mpsc::channel(capacity);
    let policy = LinkPolicy {
        ping_interval: ping_interval.max(Duration::from_millis(10)),
        renew_after: renewal.as_ref().map(|r| r.after),
        ..LinkPolicy::default()
    };
    let core = LinkCore::new(role, policy, Instant::now());
    let driver = LinkDriver {
        conns: vec![(core.current(), ws)],
        core,
        open: renewal.map(|r| r.open),
        renewing: None,
    };
    tokio::spawn(driver.run(outgoing_rx, events_tx));
    SignalingLink {
        outgoing: outgoing_tx,
        incoming: events_rx,
    }
}

impl SignalingClient for WsSignalingClient {
    fn connect(&self) -> BoxFuture<'_, Result<SignalingLink, SignalingError>> {
        Box::pin(self.open())
    }

    fn ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        let servers = self.config.ice_servers.clone();
        Box::pin(async move { Ok(servers) })
    }
}

/// The link's tokio driver: owns the WebSocket connections (the current one and any draining
/// after a renewal), performs what [`LinkCore`] asks, and reports back. No policy here.
struct LinkDriver {
    core: LinkCore,
    conns: Vec<(ConnId, WsStream)>,
    open: Option<OpenFn>,
    renewing: Option<(ConnId, JoinHandle<Result<WsStream, SignalingError>>)>,
}

impl LinkDriver {
    async fn run(
        mut self,
        mut outgoing: mpsc::Receiver<SignalingMessage>,
        events: mpsc::Sender<SignalingEvent>,
    ) {
        loop {
            while let Some(output) = self.core.poll_output() {
                if !self.perform(output, &events).await {
                    self.core.handle_input(
                        Instant::now(),
                        LinkInput::AppClosed {
                            reason: "event receiver dropped".into(),
                        },
                    );
                }
            }
            if self.core.is_ended() {
                break;
            }
            let wake = self.core.poll_timeout();
            tokio::select! {
                (conn, incoming) = next_frame(&mut self.conns) => {
                    let now = Instant::now();
                    match incoming {
                        None => self.core.handle_input(now, LinkInput::Lost { conn, reason: "connection closed".into() }),
                        Some(Err(e)) => self.core.handle_input(now, LinkInput::Lost { conn, reason: format!("connection error: {e}") }),
                        Some(Ok(Message::Text(text))) => self.core.handle_input(now, LinkInput::Frame { conn, bytes: text.as_bytes() }),
                        Some(Ok(Message::Binary(bytes))) => self.core.handle_input(now, LinkInput::Frame { conn, bytes: &bytes }),
                        Some(Ok(Message::Close(frame))) => {
                            let reason = match frame {
                                Some(f) => format!("closed by service: {} {}", u16::from(f.code), f.reason),
                                None => "closed by service".into(),
                            };
                            self.core.handle_input(now, LinkInput::Lost { conn, reason });
                        }
                        // tungstenite answers pings itself; pongs need nothing.
                        Some(Ok(_)) => {}
                    }
                }
                (conn, opened) = join_renewal(&mut self.renewing) => {
                    self.renewing = None;
                    let now = Instant::now();
                    match opened {
                        Ok(ws) => {
                            self.conns.push((conn, ws));
                            self.core.handle_input(now, LinkInput::RenewalOpened { conn });
                        }
                        Err(e) => self.core.handle_input(now, LinkInput::RenewalFailed { conn, reason: e.to_string() }),
                    }
                }
                next = outgoing.recv() => {
                    let input = match next {
                        Some(msg) => LinkInput::Send(msg),
                        None => LinkInput::AppClosed { reason: "closed by client".into() },
                    };
                    self.core.handle_input(Instant::now(), input);
                }
                _ = sleep_until_opt(wake) => self.core.handle_timeout(Instant::now()),
            }
        }
        if let Some((_, task)) = self.renewing.take() {
            task.abort();
        }
    }

    /// Carries out one output; false when the application no longer listens.
    async fn perform(&mut self, output: LinkOutput, events: &mpsc::Sender<SignalingEvent>) -> bool {
        match output {
            LinkOutput::Transmit { conn, text } => {
                if let Some(ws) = self.conn(conn) {
                    if let Err(e) = ws.send(Message::Text(text.clone().into())).await {
                        let reason = e.to_string();
                        self.core.handle_input(
                            Instant::now(),
                            LinkInput::SendFailed { conn, text, reason },
                        );
                    }
                }
            }
            LinkOutput::Ping { conn } => {
                if let Some(ws) = self.conn(conn) {
                    if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                        let reason = format!("keep-alive ping failed: {e}");
                        self.core
                            .handle_input(Instant::now(), LinkInput::Lost { conn, reason });
                    }
                }
            }
            LinkOutput::OpenRenewal { conn } => match &self.open {
                Some(open) => self.renewing = Some((conn, tokio::spawn(open()))),
                None => self.core.handle_input(
                    Instant::now(),
                    LinkInput::RenewalFailed {
                        conn,
                        reason: "this link cannot renew".into(),
                    },
                ),
            },
            LinkOutput::CloseGracefully { conn } => {
                if let Some(ws) = self.conn(conn) {
                    let bye = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "renewed".into(),
                    };
                    let _ = ws.send(Message::Close(Some(bye))).await;
                }
            }
            LinkOutput::Drop { conn } => self.conns.retain(|(c, _)| *c != conn),
            LinkOutput::End { normal } => {
                let current = self.core.current();
                if let Some(ws) = self.conn(current) {
                    let frame = normal.then(|| CloseFrame {
                        code: CloseCode::Normal,
                        reason: "client closed".into(),
                    });
                    let _ = ws.close(frame).await;
                }
                self.conns.clear();
            }
            LinkOutput::Event(event) => return events.send(event).await.is_ok(),
        }
        true
    }

    fn conn(&mut self, conn: ConnId) -> Option<&mut WsStream> {
        self.conns
            .iter_mut()
            .find(|(c, _)| *c == conn)
            .map(|(_, ws)| ws)
    }
}

/// The next message (or end) on any of the link's connections; pending while there is none.
async fn next_frame(
    conns: &mut [(ConnId, WsStream)],
) -> (
    ConnId,
    Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) {
    std::future::poll_fn(|cx| {
        for (conn, ws) in conns.iter_mut() {
            if let Poll::Ready(m) = ws.poll_next_unpin(cx) {
                return Poll::Ready((*conn, m));
            }
        }
        Poll::Pending
    })
    .await
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn join_renewal(
    task: &mut Option<(ConnId, JoinHandle<Result<WsStream, SignalingError>>)>,
) -> (ConnId, Result<WsStream, SignalingError>) {
    match task.as_mut() {
        Some((conn, t)) => {
            let opened = t.await.unwrap_or_else(|e| {
                Err(SignalingError::Connect(format!("renewal task failed: {e}")))
            });
            (*conn, opened)
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ClientFrame, MessageKind};

    #[test]
    fn url_carries_channel_and_viewer_id() {
        let arn = "arn:aws:kinesisvideo:us-west-2:000000000000:channel/demo/1700000000000";
        let url = data_plane_url("ws://127.0.0.1:9000", arn, &Role::Master).unwrap();
        assert_eq!(
            url,
            "ws://127.0.0.1:9000/?X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A000000000000%3Achannel%2Fdemo%2F1700000000000"
        );
        let viewer = Role::Viewer {
            client_id: "v-1".into(),
        };
        let url = data_plane_url("ws://h/", arn, &viewer).unwrap();
        assert!(url.ends_with("&X-Amz-ClientId=v-1"), "{url}");
        let bad = Role::Viewer {
            client_id: "AWS_x".into(),
        };
        assert!(matches!(
            data_plane_url("ws://h/", arn, &bad),
            Err(SignalingError::Codec(CodecError::InvalidClientId(_)))
        ));
        assert!(matches!(
            data_plane_url("http://h/", arn, &Role::Master),
            Err(SignalingError::InvalidUrl { .. })
        ));
        assert!(matches!(
            data_plane_url("ws://?x", arn, &Role::Master),
            Err(SignalingError::InvalidUrl { .. })
        ));
        assert_eq!(with_root_path("ws://h:1?a=b").unwrap(), "ws://h:1/?a=b");
        assert_eq!(with_root_path("wss://h").unwrap(), "wss://h/");
        assert_eq!(with_root_path("ws://h/p?a").unwrap(), "ws://h/p?a");
    }

    #[test]
    fn master_must_name_recipient_and_viewer_recipient_is_dropped() {
        let err =
            encode_outgoing(&Role::Master, &SignalingMessage::answer(None, "v=0")).unwrap_err();
        assert!(matches!(err, SignalingError::MissingRecipient));
        let text = encode_outgoing(&Role::Master, &SignalingMessage::answer("v1", "v=0")).unwrap();
        let frame = ClientFrame::parse(text.as_bytes()).unwrap();
        assert_eq!(frame.recipient_client_id.as_deref(), Some("v1"));

        let viewer = Role::Viewer {
            client_id: "v1".into(),
        };
        let text =
            encode_outgoing(&viewer, &SignalingMessage::offer("ProducerMaster", "v=0")).unwrap();
        let frame = ClientFrame::parse(text.as_bytes()).unwrap();
        assert_eq!(frame.recipient_client_id, None);
        let msg = SignalingMessage::from_client_frame(&frame).unwrap();
        assert_eq!(msg.kind, MessageKind::Offer);
        // Service-only kinds cannot be sent.
        let go_away = SignalingMessage {
            kind: MessageKind::GoAway,
            peer_client_id: Some("v1".into()),
            correlation_id: None,
            payload: crate::codec::MessagePayload::None,
        };
        assert!(matches!(
            encode_outgoing(&Role::Master, &go_away),
            Err(SignalingError::Codec(CodecError::NotSendableByClient(_)))
        ));
    }

    #[tokio::test]
    async fn refused_connections_are_errors() {
        // Nothing listens on this port: the connect fails cleanly.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = WsSignalingClient::new(format!("ws://127.0.0.1:{port}/"), Role::Master);
        assert!(matches!(
            client.connect().await,
            Err(SignalingError::Connect(_))
        ));
    }
}
