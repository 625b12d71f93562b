//! Helpers shared by the service's socket-level tests: raw HTTP on loopback and a plain
//! WebSocket client (no signaling client library: these tests see exactly what goes on the
//! wire).
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kvs_signaling_codec::{encode_payload, Action, ClientFrame, SdpPayload, SdpType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the rest-json error shape: `x-amzn-ErrorType`, a JSON content type and a
    /// `{"message": …}` body.
    pub fn assert_rest_json_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "{self:#?}");
        assert_eq!(
            self.header("x-amzn-ErrorType"),
            Some(error_type),
            "{self:#?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self:#?}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:#?}"));
        assert!(json["message"].is_string(), "{self:#?}");
    }
}

/// Parses a whole HTTP/1.1 response (Content-Length or close-delimited).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Sends raw request bytes on a new connection (the request should say `Connection: close`)
/// and reads the response until the server closes.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    parse_response(&raw)
}

/// A POST with a body, `Connection: close`.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request(addr, request.as_bytes()).await
}

/// Opens a WebSocket to the data plane; on refusal returns the HTTP response.
pub async fn ws_connect(url: &str) -> Result<Ws, HttpResponse> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let status = r.status().as_u16();
            let headers = r
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(HttpResponse {
                status,
                headers,
                body,
            })
        }
        Err(e) => panic!("WebSocket connect to {url} failed: {e}"),
    }
}

/// Like [`ws_connect`] over a socket with a small receive buffer: a client on a slow link (or
/// a busy device), whose unread frames back up towards the service quickly.
pub async fn ws_connect_small_buffer(url: &str, addr: SocketAddr) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    ws
}

/// The data-plane URL for a role (`None`: master).
pub fn data_plane(addr: SocketAddr, arn: &str, client_id: Option<&str>) -> String {
    let enc = |s: &str| kvs_aws::sigv4::uri_encode(s, true);
    match client_id {
        Some(id) => format!(
            "ws://{addr}/?X-Amz-ChannelARN={}&X-Amz-ClientId={}",
            enc(arn),
            enc(id)
        ),
        None => format!("ws://{addr}/?X-Amz-ChannelARN={}", enc(arn)),
    }
}

/// An SDP_OFFER client frame with an SDP of about `sdp_len` bytes.
pub fn offer(correlation_id: Option<&str>, sdp_len: usize) -> String {
    ClientFrame {
        action: Action::SdpOffer,
        recipient_client_id: None,
        message_payload: encode_payload(&SdpPayload {
            sdp_type: SdpType::Offer,
            sdp: format!("v=0\r\n{}", "a=x\r\n".repeat(sdp_len / 5)),
            error: None,
        }),
        correlation_id: correlation_id.map(Into::into),
    }
    .emit()
}

/// A master's SDP_ANSWER for `recipient`.
pub fn answer(recipient: &str) -> String {
    ClientFrame {
        action: Action::SdpAnswer,
        recipient_client_id: Some(recipient.into()),
        message_payload: encode_payload(&SdpPayload {
            sdp_type: SdpType::Answer,
            sdp: "v=0\r\n".into(),
            error: None,
        }),
        correlation_id: None,
    }
    .emit()
}

pub async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// What a WebSocket client saw next.
#[derive(Debug)]
pub enum Seen {
    Text(serde_json::Value),
    Closed(String),
    Nothing,
}

/// The next text frame (as JSON) or the close, within `within`.
pub async fn next_seen(ws: &mut Ws, within: Duration) -> Seen {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Seen::Nothing,
            Ok(n) => n,
        };
        match next {
            None => return Seen::Closed("stream ended".into()),
            Some(Err(e)) => return Seen::Closed(format!("error: {e}")),
            Some(Ok(Message::Text(t))) => {
                return Seen::Text(serde_json::from_str(t.as_str()).expect("service sends JSON"))
            }
            Some(Ok(Message::Close(f))) => {
                return Seen::Closed(f.map(|f| f.reason.to_string()).unwrap_or_default())
            }
            Some(Ok(_)) => continue,
        }
    }
}
