//! The viewer web page, embedded in the binary (no CDN, no files on disk), and its
//! `/config.json` telling the page where signaling is.
//!
//! Each `/config.json` answer carries a fresh presigned viewer URL (a new client id, signed
//! with the run's key for the host the page was loaded from, valid for a minute), so the page
//! never holds a long-term secret and its data-plane edge can insist on a signature. When the
//! page is served beyond loopback, `/config.json` also wants the page token printed with the
//! page's address (`?token=…`), so only people given that address can watch.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kvs_app::embedded::ViewerUrlSigner;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const INDEX_HTML: &str = include_str!("../web/index.html");
const VIEWER_JS: &str = include_str!("../web/viewer.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// What `/config.json` is made from, filled in once the service is listening.
#[derive(Clone, Default)]
pub struct PageConfig(Arc<RwLock<Option<PageInfo>>>);

/// The page's settings: fixed fields, the signer for its signaling URL, and the token the
/// page must present (when it is served beyond loopback).
#[derive(Clone)]
pub struct PageInfo {
    /// Fixed fields of `/config.json` (channel, region, ICE servers).
    pub base: serde_json::Value,
    pub signer: ViewerUrlSigner,
    pub token: Option<String>,
}

impl PageConfig {
    /// Serves the page for `local`'s channel and prints its URL (stdout: scripts and tests
    /// find it there). Beyond loopback the page is reachable by others: only those given its
    /// address, with a token made up now, get a signaling URL.
    pub fn publish(&self, local: &kvs_app::embedded::LocalService) {
        let token = local.page_requires_signature.then(|| {
            use rand::distr::{Alphanumeric, SampleString};
            Alphanumeric.sample_string(&mut rand::rng(), 24)
        });
        self.set(PageInfo {
            base: serde_json::json!({
                "channelArn": local.channel_arn,
                "channelName": local.channel_name,
                "region": "us-west-2",
                "iceServers": [],
            }),
            signer: local.viewer_signer.clone(),
            token: token.clone(),
        });
        match &token {
            Some(t) => println!("Viewer page: {}?token={t}", local.page_url()),
            None => println!("Viewer page: {}", local.page_url()),
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, info: PageInfo) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    fn get(&self) -> Option<PageInfo> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix of
/// the token.
fn same_token(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "message": message }))).into_response()
}

/// `/config.json`: the fixed fields plus a fresh presigned `signalingUrl` and its `clientId`.
fn config_json(
    page: &PageConfig,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    let Some(info) = page.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the device is still starting",
        );
    };
    if let Some(expected) = &info.token {
        let given = query.get("token").map(String::as_str).unwrap_or("");
        if !same_token(given, expected) {
            return error(
                StatusCode::FORBIDDEN,
                "this page needs the address kvs-webrtc printed, including its ?token=…",
            );
        }
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return error(StatusCode::BAD_REQUEST, "the request names no Host");
    };
    let signed = match info.signer.presign(host) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot presign a viewer URL");
            return error(
                StatusCode::BAD_REQUEST,
                "cannot make a signaling URL for this host",
            );
        }
    };
    let mut body = info.base;
    body["signalingUrl"] = signed.url.into();
    body["clientId"] = signed.client_id.into();
    (
        // A presigned URL is single-viewer and short-lived: never cache it.
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// Routes for the page and its configuration.
pub fn routes(config: PageConfig) -> Router {
    Router::new()
        .route("/index.html", get(|| async { html() }))
        .route(
            "/viewer.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    VIEWER_JS,
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .route(
            "/config.json",
            get(
                move |headers: HeaderMap,
                      query: Result<Query<HashMap<String, String>>, QueryRejection>| async move {
                    // A query we cannot parse carries no token: answered like a missing one.
                    let query = query.map(|Query(q)| q).unwrap_or_default();
                    config_json(&config, &headers, &query)
                },
            ),
        )
}

/// The page itself; the signaling service serves it at `/` for plain GETs.
pub fn html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
    }
}

/// The page's edge as the program wires it, beyond loopback: `/config.json` wants the token
/// and hands out a presigned viewer URL; the data plane accepts only that.
#[cfg(test)]
mod edge_tests {
    use super::*;
    use futures_util::StreamExt;
    use kvs_app::{DeviceConfig, SignalingConfig};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::{Duration, SystemTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request; returns status and body.
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Status of a WebSocket connect (101 when accepted).
    async fn ws_status(url: &str) -> u16 {
        match tokio_tungstenite::connect_async(url).await {
            Ok((mut ws, r)) => {
                let _ = ws.close(None).await;
                while ws.next().await.is_some() {}
                r.status().as_u16()
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_loopback_the_page_edge_wants_the_token_and_a_fresh_presigned_url() {
        let dir = std::env::temp_dir().join(format!("kvs-web-edge-{}", std::process::id()));
        let mut config = DeviceConfig {
            signaling: SignalingConfig::Embedded {
                channel: "web-edge-test".into(),
                // Any address: beyond loopback.
                listen: "0.0.0.0:0".parse().unwrap(),
                tls_listen: "127.0.0.1:0".parse().unwrap(),
                state_dir: Some(dir.clone()),
            },
            ..DeviceConfig::default()
        };
        config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let page = PageConfig::new();
        let running = kvs_app::embedded::start(config, Some(routes(page.clone())))
            .await
            .unwrap();
        assert!(running.page_requires_signature);
        page.set(PageInfo {
            base: serde_json::json!({ "channelArn": running.channel_arn }),
            signer: running.viewer_signer.clone(),
            token: Some("page-token".into()),
        });
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, running.addr.port()));

        // The page's configuration needs the token.
        assert_eq!(http(addr, "GET", "/config.json", "").await.0, 403);
        assert_eq!(
            http(addr, "GET", "/config.json?token=wrong", "").await.0,
            403
        );
        let (status, body) = http(addr, "GET", "/config.json?token=page-token", "").await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let url = json["signalingUrl"].as_str().unwrap();
        assert!(url.starts_with(&format!("ws://{addr}/?")), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert_eq!(ws_status(url).await, 101, "the presigned URL connects");

        // Nothing else gets through on this edge.
        let arn = kvs_aws::sigv4::uri_encode(&running.channel_arn, true);
        let unsigned = format!("ws://{addr}/?X-Amz-ChannelARN={arn}&X-Amz-ClientId=v1");
        assert_eq!(ws_status(&unsigned).await, 403, "unsigned viewer");
        let master = format!("ws://{addr}/?X-Amz-ChannelARN={arn}");
        assert_eq!(ws_status(&master).await, 403, "master");
        let stale = running
            .viewer_signer
            .presign_at(
                &addr.to_string(),
                SystemTime::now() - Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(ws_status(&stale.url).await, 403, "stale presigned URL");
        let (status, body) = http(addr, "POST", "/listSignalingChannels", "{}").await;
        assert_eq!(status, 403, "{body}");
        let (status, _) = http(addr, "POST", "/deleteSignalingChannel", "{}").await;
        assert_eq!(status, 403);

        running.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
