//! A small HTTP/1.1 client for the few AWS calls a device makes (KVS control plane, IoT
//! credentials): one request per connection, TLS through rustls (aws-lc-rs), bounded answers.
//!
//! Owns: parsing the endpoint URL, connecting (plain `http://` for local services, `https://`
//! with the [`rustls::ClientConfig`] given), sending one request, reading the status, headers and
//! a body of at most `max_body` bytes, all within one time limit. Also the trust set-up shared by
//! every TLS client of the SDK ([`client_tls_config`]).
//!
//! Must not touch: signing, retries, or what the bodies mean (the callers own those).
//!
//! A device talks to the control plane a handful of times per hour, so connections are not
//! pooled: the simplicity is worth more than the saved handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tracing::debug;

/// Errors of one HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("HTTP exchange with {authority} failed: {reason}")]
    Transport { authority: String, reason: String },
    #[error("the answer from {authority} is larger than {limit} bytes")]
    BodyTooLarge { authority: String, limit: usize },
    #[error("no answer from {authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("trust configuration: {0}")]
    Trust(String),
}

/// Where a request goes, parsed from a URL such as `https://host:8443/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl Target {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |reason: &str| HttpError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry user information"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".to_string());
        Ok(Target {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// `host[:port]` as the `Host` header carries it (the port only when not the default).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// Sent as given (`host` is added from the URL when absent).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, lossily (for error messages).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` and reads the answer, all within `timeout`. `tls` is required for
/// `https://` URLs.
pub async fn send(
    tls: Option<&Arc<ClientConfig>>,
    request: &Request<'_>,
    max_body: usize,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let target = Target::parse(request.url)?;
    let authority = target.authority();
    match tokio::time::timeout(timeout, exchange(tls, &target, request, max_body)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout { authority, timeout }),
    }
}

async fn exchange(
    tls: Option<&Arc<ClientConfig>>,
    target: &Target,
    request: &Request<'_>,
    max_body: usize,
) -> Result<Response, HttpError> {
    let authority = target.authority();
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| HttpError::Connect {
            authority: authority.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if target.tls {
        let config = tls.ok_or_else(|| HttpError::Tls {
            host: target.host.clone(),
            reason: "no TLS configuration given for an https:// URL".into(),
        })?;
        let stream = tls_connect(config, &target.host, tcp).await?;
        request_over(TokioIo::new(stream), target, request, max_body).await
    } else {
        request_over(TokioIo::new(tcp), target, request, max_body).await
    }
}

/// Runs the TLS handshake with `host` over `tcp`.
pub async fn tls_connect(
    config: &Arc<ClientConfig>,
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    let server_name = ServerName::try_from(host.to_string()).map_err(|e| HttpError::Tls {
        host: host.to_string(),
        reason: format!("invalid server name: {e}"),
    })?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| HttpError::Tls {
            host: host.to_string(),
            reason: e.to_string(),
        })
}

async fn request_over<T>(
    io: T,
    target: &Target,
    request: &Request<'_>,
    max_body: usize,
) -> Result<Response, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let authority = target.authority();
    let transport = |e: &dyn std::fmt::Display| HttpError::Transport {
        authority: authority.clone(),
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| transport(&e))?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "HTTP connection ended");
        }
    });
    let mut builder = http::Request::builder()
        .method(request.method)
        .uri(target.path_and_query.as_str());
    if !request
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        builder = builder.header(http::header::HOST, target.host_header());
    }
    for (k, v) in request.headers {
        builder = builder.header(*k, *v);
    }
    let http_request = builder
        .body(Full::new(Bytes::copy_from_slice(request.body)))
        .map_err(|e| transport(&e))?;
    let result = async {
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    HttpError::BodyTooLarge {
                        authority: authority.clone(),
                        limit: max_body,
                    }
                } else {
                    transport(&format!("reading the answer: {e}"))
                }
            })?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
    .await;
    conn_task.abort();
    result
}

/// TLS sessions remembered for resumption, per client configuration.
const RESUMABLE_SESSIONS: usize = 8;

/// A TLS client configuration trusting the public web roots, or only the CA certificates in
/// `extra_ca_pem` when `only_extra` is true (a local service with its own CA), or both.
pub fn client_tls_config(
    extra_ca_pem: Option<&[u8]>,
    only_extra: bool,
) -> Result<Arc<ClientConfig>, HttpError> {
    let mut roots = RootCertStore::empty();
    if !only_extra {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = extra_ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HttpError::Trust(format!("CA certificates: {e}")))?;
        if certs.is_empty() {
            return Err(HttpError::Trust("no PEM certificate found".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| HttpError::Trust(format!("CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(HttpError::Trust("no certificate authority to trust".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Trust(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // rustls keeps 256 resumable sessions by default (~14 KB of map even when empty); a device
    // talks to a handful of hosts (KVS control and data plane, STS, IoT credentials, TURN).
    config.resumption = Resumption::in_memory_sessions(RESUMABLE_SESSIONS);
    Ok(Arc::new(config))
}

/// Like [`client_tls_config`] with the CA certificates read from a PEM file.
pub fn client_tls_config_from_file(
    ca_file: &Path,
    only_extra: bool,
) -> Result<Arc<ClientConfig>, HttpError> {
    let pem = std::fs::read(ca_file)
        .map_err(|e| HttpError::Trust(format!("cannot read {}: {e}", ca_file.display())))?;
    client_tls_config(Some(&pem), only_extra)
        .map_err(|e| HttpError::Trust(format!("{}: {e}", ca_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_default_ports_and_paths() {
        let t = Target::parse("https://kinesisvideo.us-west-2.amazonaws.com").unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 443);
        assert_eq!(t.path_and_query, "/");
        assert_eq!(t.host_header(), "kinesisvideo.us-west-2.amazonaws.com");
        let t = Target::parse("http://127.0.0.1:8080/describeSignalingChannel?a=b").unwrap();
        assert!(!t.tls);
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/describeSignalingChannel?a=b");
        let t = Target::parse("https://[::1]:8443/x").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.host_header(), "[::1]:8443");
        for bad in ["ftp://h/", "https://", "h:1", "https://u:p@h/", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_needs_a_certificate() {
        assert!(client_tls_config(None, false).is_ok());
        assert!(matches!(
            client_tls_config(None, true),
            Err(HttpError::Trust(_))
        ));
        assert!(matches!(
            client_tls_config(Some(b"not pem"), true),
            Err(HttpError::Trust(_))
        ));
    }

    #[tokio::test]
    async fn refused_connections_and_timeouts_are_typed_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/");
        let req = Request {
            method: "POST",
            url: &url,
            headers: &[],
            body: b"{}",
        };
        let e = send(None, &req, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");

        // A server that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let req = Request { url: &url, ..req };
        let e = send(None, &req, 1024, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn answers_are_read_and_oversized_bodies_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            for body_len in [5usize, 5000] {
                let (mut s, _) = server.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                let body = "x".repeat(body_len);
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\nDate: Sun, 01 Dec 2019 00:00:00 GMT\r\nx-amzn-ErrorType: InvalidSignatureException\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/op");
        let req = Request {
            method: "POST",
            url: &url,
            headers: &[("content-type", "application/json")],
            body: b"{}",
        };
        let r = send(None, &req, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("X-Amzn-ErrorType"),
            Some("InvalidSignatureException")
        );
        assert_eq!(r.header("date"), Some("Sun, 01 Dec 2019 00:00:00 GMT"));
        assert_eq!(&r.body[..], b"xxxxx");
        let e = send(None, &req, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, HttpError::BodyTooLarge { limit: 1024, .. }),
            "{e}"
        );
    }
}
