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
//! Extension points kept open for later: a [`UrlPresigner`] turns the plain URL into a
//! SigV4-presigned one on every connect (presigned URLs expire, so signing happens per
//! connect), and `wss://` URLs are refused with [`SignalingError::TlsNotSupported`] until a
//! TLS connector is plugged into [`WsSignalingClient::connect`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use crate::codec::{validate_client_id, CodecError, SignalingMessage};
use crate::ice::IceServer;

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
    #[error("wss:// needs a TLS connector, which this build does not have yet")]
    TlsNotSupported,
    #[error("connecting to the signaling service failed: {0}")]
    Connect(String),
    #[error("connecting to the signaling service timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("the service refused the connection with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("a master must name the recipient of every message")]
    MissingRecipient,
    #[error("message cannot be encoded: {0}")]
    Codec(#[from] CodecError),
    #[error("the signaling connection is closed")]
    Closed,
    #[error("presigning the URL failed: {0}")]
    Presign(String),
}

/// What a connected link reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    Message(SignalingMessage),
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
    /// The ICE servers peers should use.
    fn ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>>;
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
    url.push_str(&percent_encode(channel_arn));
    if let Role::Viewer { client_id } = role {
        validate_client_id(client_id)?;
        url.push_str("&X-Amz-ClientId=");
        url.push_str(&percent_encode(client_id));
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

/// RFC 3986 encoding of everything but unreserved characters (what SigV4 expects).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    async fn open(&self) -> Result<SignalingLink, SignalingError> {
        let cfg = &self.config;
        let url = match &cfg.presigner {
            Some(p) => p.presign(&cfg.url)?,
            None => cfg.url.clone(),
        };
        let url = with_root_path(&url)?;
        if url.starts_with("wss://") {
            return Err(SignalingError::TlsNotSupported);
        }
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let (ws, _response) = match tokio::time::timeout(cfg.connect_timeout, connecting).await {
            Err(_) => return Err(SignalingError::ConnectTimeout(cfg.connect_timeout)),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).chars().take(512).collect())
                    .unwrap_or_default();
                return Err(SignalingError::Refused {
                    status: resp.status().as_u16(),
                    body,
                });
            }
            Ok(Err(e)) => return Err(SignalingError::Connect(e.to_string())),
            Ok(Ok(pair)) => pair,
        };
        info!(role = ?cfg.role, "signaling connected");
        let capacity = cfg.queue_capacity.max(1);
        let (outgoing_tx, outgoing_rx) = mpsc::channel(capacity);
        let (events_tx, events_rx) = mpsc::channel(capacity);
        tokio::spawn(run_connection(
            ws,
            cfg.role.clone(),
            outgoing_rx,
            events_tx,
            cfg.ping_interval,
        ));
        Ok(SignalingLink {
            outgoing: outgoing_tx,
            incoming: events_rx,
        })
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

/// The connection task: pumps frames both ways until either side ends.
async fn run_connection<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    role: Role,
    mut outgoing: mpsc::Receiver<SignalingMessage>,
    events: mpsc::Sender<SignalingEvent>,
    ping_interval: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(ping_interval.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is immediate
    let reason: String = loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                None => break "connection closed".into(),
                Some(Err(e)) => break format!("connection error: {e}"),
                Some(Ok(Message::Text(text))) => {
                    if !deliver(&events, text.as_bytes()).await {
                        let _ = ws.close(None).await;
                        break "event receiver dropped".into();
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if !deliver(&events, &bytes).await {
                        let _ = ws.close(None).await;
                        break "event receiver dropped".into();
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => format!("closed by service: {} {}", u16::from(f.code), f.reason),
                        None => "closed by service".into(),
                    };
                }
                // tungstenite answers pings itself; pongs need nothing.
                Some(Ok(_)) => {}
            },
            next = outgoing.recv() => match next {
                Some(msg) => match encode_outgoing(&role, &msg) {
                    Ok(text) => {
                        if let Err(e) = ws.send(Message::Text(text.into())).await {
                            break format!("send failed: {e}");
                        }
                    }
                    Err(e) => {
                        error!(kind = ?msg.kind, peer = ?msg.peer_client_id, error = %e, "signaling message not sent");
                    }
                },
                None => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "client closed".into() })).await;
                    break "closed by client".into();
                }
            },
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                    break format!("keep-alive ping failed: {e}");
                }
            }
        }
    };
    info!(%reason, "signaling disconnected");
    let _ = events.send(SignalingEvent::Disconnected { reason }).await;
}

/// Decodes one service frame and hands it on. Malformed frames are logged and skipped.
/// Returns false when nobody listens any more.
async fn deliver(events: &mpsc::Sender<SignalingEvent>, bytes: &[u8]) -> bool {
    match SignalingMessage::parse_service_frame(bytes) {
        Ok(msg) => {
            debug!(kind = ?msg.kind, peer = ?msg.peer_client_id, "signaling message received");
            events.send(SignalingEvent::Message(msg)).await.is_ok()
        }
        Err(e) => {
            warn!(error = %e, "ignoring malformed signaling frame from the service");
            true
        }
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
    async fn wss_without_tls_and_refused_connections_are_errors() {
        let client = WsSignalingClient::new("wss://127.0.0.1:1/", Role::Master);
        assert!(matches!(
            client.connect().await,
            Err(SignalingError::TlsNotSupported)
        ));
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
