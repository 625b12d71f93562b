//! The AWS IoT Core credentials provider.
//!
//! Owns: fetching temporary credentials with
//! `GET https://<endpoint>/role-aliases/<alias>/credentials`, header
//! `x-amzn-iot-thingname: <thing>`, over mutual TLS with the device certificate and key (PEM
//! files, rustls with aws-lc-rs), trusting either a given CA file or the public web roots;
//! parsing the answer and mapping 400/401/403/404 `{"message"}` answers to typed errors.
//!
//! Must not touch: caching (wrap it in [`crate::CachingProvider`]), signing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use tracing::debug;

use crate::credentials::{BoxFuture, Credentials, CredentialsError, CredentialsProvider};

/// Largest answer body accepted from the endpoint.
const MAX_BODY: usize = 64 * 1024;

/// Settings of [`IotCredentialsProvider`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotCredentialsConfig {
    /// Credentials endpoint host, optionally with `:port` and an `https://` prefix, e.g.
    /// `c1abcdef.credentials.iot.us-west-2.amazonaws.com`.
    pub endpoint: String,
    /// IoT role alias, e.g. `esp-videostream-v1-NodeRole`.
    pub role_alias: String,
    /// Thing name sent in `x-amzn-iot-thingname`.
    pub thing_name: String,
    /// Device certificate (PEM, may hold a chain).
    pub cert_path: PathBuf,
    /// Device private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// CA to trust for the endpoint (PEM); the public web roots when `None`.
    pub ca_path: Option<PathBuf>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl IotCredentialsConfig {
    /// Settings with a 10 s timeout and the public roots.
    pub fn new(
        endpoint: impl Into<String>,
        role_alias: impl Into<String>,
        thing_name: impl Into<String>,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            role_alias: role_alias.into(),
            thing_name: thing_name.into(),
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            ca_path: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Fetches credentials from the AWS IoT credentials provider (no caching of its own).
#[derive(Clone)]
pub struct IotCredentialsProvider {
    config: IotCredentialsConfig,
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for IotCredentialsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotCredentialsProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct IotAnswer {
    credentials: IotCredentialsBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IotCredentialsBody {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(Deserialize)]
struct IotErrorBody {
    message: Option<String>,
}

impl IotCredentialsProvider {
    /// Loads the certificate, key and CA now, so that configuration mistakes show at start-up.
    pub fn new(config: IotCredentialsConfig) -> Result<Self, CredentialsError> {
        let (host, port) = split_endpoint(&config.endpoint)?;
        if config.role_alias.is_empty() || config.role_alias.contains(['/', '?', '#']) {
            return Err(CredentialsError::NotConfigured(format!(
                "invalid IoT role alias '{}'",
                config.role_alias
            )));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        match &config.ca_path {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| CredentialsError::Tls(format!("CA {}: {e}", ca.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let certs = read_certs(&config.cert_path)?;
        let key_pem = read_file(&config.key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            CredentialsError::Tls(format!("private key {}: {e}", config.key_path.display()))
        })?;
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CredentialsError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| CredentialsError::Tls(format!("device certificate/key: {e}")))?;
        Ok(Self {
            config,
            host,
            port,
            tls: Arc::new(tls),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &IotCredentialsConfig {
        &self.config
    }

    async fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let url = format!(
            "https://{host}:{}/role-aliases/{}/credentials",
            self.port, self.config.role_alias
        );
        let request = crate::https::Request {
            method: "GET",
            url: &url,
            headers: &[
                ("x-amzn-iot-thingname", &self.config.thing_name),
                ("accept", "application/json"),
            ],
            body: &[],
        };
        // The caller bounds the whole call with the configured timeout.
        let response = crate::https::send(Some(&self.tls), &request, MAX_BODY, self.config.timeout)
            .await
            .map_err(|e| match e {
                crate::https::HttpError::Tls { .. } => CredentialsError::Tls(e.to_string()),
                other => CredentialsError::Transport(other.to_string()),
            })?;
        debug!(
            status = response.status,
            "IoT credentials provider answered"
        );
        parse_answer(response.status, &response.body)
    }
}

impl CredentialsProvider for IotCredentialsProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.config.timeout, self.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(CredentialsError::Transport(format!(
                    "no answer from {} within {:?}",
                    self.config.endpoint, self.config.timeout
                ))),
            }
        })
    }
    fn name(&self) -> &'static str {
        "iot"
    }
}

/// Parses an IoT credentials provider answer (status and body).
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Credentials, CredentialsError> {
    if status != 200 {
        let message = serde_json::from_slice::<IotErrorBody>(body)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned());
        return Err(match status {
            400 => CredentialsError::IotBadRequest { message },
            401 | 403 => CredentialsError::IotForbidden { status, message },
            404 => CredentialsError::IotNotFound { message },
            _ => CredentialsError::IotUnexpectedStatus { status, message },
        });
    }
    let answer: IotAnswer = serde_json::from_slice(body)
        .map_err(|e| CredentialsError::InvalidResponse(e.to_string()))?;
    let c = answer.credentials;
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
        return Err(CredentialsError::InvalidResponse(
            "empty accessKeyId or secretAccessKey".into(),
        ));
    }
    let expiry = parse_iso8601(&c.expiration).ok_or_else(|| {
        CredentialsError::InvalidResponse(format!("invalid expiration '{}'", c.expiration))
    })?;
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token).filter(|t| !t.is_empty()),
        Some(expiry),
    ))
}

/// Parses an ISO-8601 / RFC 3339 timestamp such as `2019-12-01T00:00:00Z`.
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn split_endpoint(endpoint: &str) -> Result<(String, u16), CredentialsError> {
    let bad = || CredentialsError::NotConfigured(format!("invalid IoT endpoint '{endpoint}'"));
    let e = endpoint.trim();
    let e = e.strip_prefix("https://").unwrap_or(e);
    let e = e.trim_end_matches('/');
    if e.is_empty() || e.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    // Bracketed IPv6 literal: [::1]:8443
    if let Some(rest) = e.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 443,
            None => return Err(bad()),
        };
        return Ok((h.to_string(), port));
    }
    match e.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None => Ok((e.to_string(), 443)),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialsError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(CredentialsError::Tls(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            split_endpoint("https://abc.credentials.iot.us-west-2.amazonaws.com/").unwrap(),
            ("abc.credentials.iot.us-west-2.amazonaws.com".into(), 443)
        );
        assert_eq!(
            split_endpoint("127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(split_endpoint("[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(split_endpoint("host/path").is_err());
        assert!(split_endpoint("host:notaport").is_err());
        assert!(split_endpoint("").is_err());
    }

    #[test]
    fn answers_map_to_typed_results() {
        let ok = br#"{"credentials":{"accessKeyId":"ASIAEXAMPLE","secretAccessKey":"sec","sessionToken":"tok","expiration":"2019-12-01T00:00:00Z"}}"#;
        let c = parse_answer(200, ok).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(
            c.expiry,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_575_158_400))
        );
        assert!(matches!(
            parse_answer(400, br#"{"message":"bad thing"}"#),
            Err(CredentialsError::IotBadRequest { message }) if message == "bad thing"
        ));
        assert!(matches!(
            parse_answer(404, br#"{"message":"Role alias does not exist"}"#),
            Err(CredentialsError::IotNotFound { .. })
        ));
        assert!(matches!(
            parse_answer(500, b"oops"),
            Err(CredentialsError::IotUnexpectedStatus { status: 500, message }) if message == "oops"
        ));
        assert!(matches!(
            parse_answer(200, b"{}"),
            Err(CredentialsError::InvalidResponse(_))
        ));
        let bad_exp = br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"s","sessionToken":"t","expiration":"tomorrow"}}"#;
        assert!(matches!(
            parse_answer(200, bad_exp),
            Err(CredentialsError::InvalidResponse(_))
        ));
    }
}
