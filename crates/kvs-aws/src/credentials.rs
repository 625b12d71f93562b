//! AWS credentials and the providers that produce them.
//!
//! Owns: the [`Credentials`] value (whose `Debug`/`Display` never reveal the secret or the
//! session token), the object-safe [`CredentialsProvider`] trait and the simple providers
//! (static keys, environment, shared profile files, application callback) plus the
//! [`CachingProvider`] and [`ChainProvider`] combinators. The AWS IoT provider lives in
//! [`crate::iot`].
//!
//! Must not touch: signing (see [`crate::sigv4`]) or any network other than what a provider
//! itself needs.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

/// A boxed, sendable future: keeps [`CredentialsProvider`] object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of "now" for expiry decisions; injectable so tests control time.
pub type TimeSource = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock as a [`TimeSource`].
pub fn system_time_source() -> TimeSource {
    Arc::new(SystemTime::now)
}

/// A set of AWS credentials.
///
/// `Debug` and `Display` print only the access key id; the secret and the token are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id (`AKIA...` or `ASIA...`).
    pub access_key_id: String,
    /// Secret access key. Never logged.
    pub secret_access_key: String,
    /// Session token for temporary credentials. Never logged.
    pub session_token: Option<String>,
    /// When temporary credentials stop working; `None` for long-term keys.
    pub expiry: Option<SystemTime>,
}

impl Credentials {
    /// Builds credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        expiry: Option<SystemTime>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            expiry,
        }
    }

    /// True when the credentials have an expiry at or before `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials(access_key_id={}", self.access_key_id)?;
        if self.session_token.is_some() {
            f.write_str(", temporary")?;
        }
        f.write_str(")")
    }
}

/// Errors from credential providers.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The provider has nothing configured (a chain moves on to the next provider).
    #[error("credentials not configured: {0}")]
    NotConfigured(String),
    /// A profile file exists but is unusable.
    #[error("invalid profile configuration in {path}: {reason}")]
    InvalidProfile {
        /// File that was read.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading a local file (profile, certificate, key) failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File that was read.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up failed (bad certificate or key, no usable CA).
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// Connecting to or talking HTTP with the credentials endpoint failed.
    #[error("credentials endpoint request failed: {0}")]
    Transport(String),
    /// The IoT credentials provider answered 400.
    #[error("IoT credentials provider rejected the request (400): {message}")]
    IotBadRequest {
        /// The `message` from the answer body.
        message: String,
    },
    /// The IoT credentials provider answered 401/403 (certificate not allowed, thing name
    /// mismatch, role alias not permitted).
    #[error("IoT credentials provider denied access ({status}): {message}")]
    IotForbidden {
        /// HTTP status (401 or 403).
        status: u16,
        /// The `message` from the answer body.
        message: String,
    },
    /// The IoT credentials provider answered 404 (unknown role alias).
    #[error("IoT credentials provider: role alias not found (404): {message}")]
    IotNotFound {
        /// The `message` from the answer body.
        message: String,
    },
    /// Any other non-success status.
    #[error("IoT credentials provider answered HTTP {status}: {message}")]
    IotUnexpectedStatus {
        /// HTTP status.
        status: u16,
        /// The `message` from the body, or the body itself (truncated).
        message: String,
    },
    /// A response body could not be understood.
    #[error("invalid credentials response: {0}")]
    InvalidResponse(String),
    /// The application callback failed.
    #[error("credentials callback failed: {0}")]
    Callback(String),
    /// Every provider of a chain failed.
    #[error("no credentials provider in the chain succeeded: {}", .0.join("; "))]
    ChainExhausted(Vec<String>),
}

/// Something that yields AWS credentials. Object-safe: use as `Arc<dyn CredentialsProvider>`.
pub trait CredentialsProvider: Send + Sync {
    /// Fetches (or returns cached) credentials.
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>>;

    /// Short name for logs.
    fn name(&self) -> &'static str;
}

// ---------------------------------------------------------------------------------------------
// Static keys

/// Always returns the same credentials.
#[derive(Debug, Clone)]
pub struct StaticProvider {
    credentials: Credentials,
}

impl StaticProvider {
    /// Wraps fixed credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }
}

impl CredentialsProvider for StaticProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let c = self.credentials.clone();
        Box::pin(async move { Ok(c) })
    }
    fn name(&self) -> &'static str {
        "static"
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional `AWS_SESSION_TOKEN`.
///
/// The variable lookup is injectable ([`EnvProvider::with_lookup`]) so tests need not touch
/// the process environment.
#[derive(Clone)]
pub struct EnvProvider {
    lookup: Arc<EnvLookup>,
}

impl fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvProvider")
    }
}

impl Default for EnvProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvProvider {
    /// Reads the process environment.
    pub fn new() -> Self {
        Self::with_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `lookup`.
    pub fn with_lookup(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            lookup: Arc::new(lookup),
        }
    }

    /// Synchronous form of [`CredentialsProvider::provide_credentials`].
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let get = |k: &str| (self.lookup)(k).filter(|v| !v.trim().is_empty());
        let Some(akid) = get("AWS_ACCESS_KEY_ID") else {
            return Err(CredentialsError::NotConfigured(
                "AWS_ACCESS_KEY_ID is not set".into(),
            ));
        };
        let Some(secret) = get("AWS_SECRET_ACCESS_KEY") else {
            return Err(CredentialsError::NotConfigured(
                "AWS_SECRET_ACCESS_KEY is not set".into(),
            ));
        };
        Ok(Credentials::new(
            akid.trim(),
            secret.trim(),
            get("AWS_SESSION_TOKEN").map(|t| t.trim().to_string()),
            None,
        ))
    }
}

impl CredentialsProvider for EnvProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let r = self.load();
        Box::pin(async move { r })
    }
    fn name(&self) -> &'static str {
        "environment"
    }
}

// ---------------------------------------------------------------------------------------------
// Shared profile files

/// Reads static keys from the shared files `~/.aws/credentials` and `~/.aws/config`.
///
/// Profile: explicit, else `AWS_PROFILE`, else `default`. Paths: explicit, else
/// `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`, else under `$HOME/.aws/`. A key found in
/// the credentials file wins over the config file. Only static keys (`aws_access_key_id`,
/// `aws_secret_access_key`, `aws_session_token`) are supported; SSO, `credential_process` and
/// role assumption are not.
#[derive(Debug, Clone)]
pub struct ProfileProvider {
    profile: String,
    credentials_file: Option<PathBuf>,
    config_file: Option<PathBuf>,
}

impl ProfileProvider {
    /// Uses the environment (`AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`,
    /// `HOME`) to find the profile and files.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map(PathBuf::from);
        Self {
            profile: env("AWS_PROFILE").unwrap_or_else(|| "default".into()),
            credentials_file: env("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join("credentials"))),
            config_file: env("AWS_CONFIG_FILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join("config"))),
        }
    }

    /// Explicit profile name and file paths (either file may be absent).
    pub fn new(
        profile: impl Into<String>,
        credentials_file: Option<PathBuf>,
        config_file: Option<PathBuf>,
    ) -> Self {
        Self {
            profile: profile.into(),
            credentials_file,
            config_file,
        }
    }

    /// The profile this provider reads.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Synchronous load (file reads are small and local).
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let mut props: HashMap<String, String> = HashMap::new();
        let mut found_section = false;
        // Config file first, then the credentials file overrides.
        let sources = [
            (self.config_file.as_deref(), true),
            (self.credentials_file.as_deref(), false),
        ];
        for (path, is_config) in sources {
            let Some(path) = path else { continue };
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CredentialsError::Io {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            };
            let sections = parse_ini(&text).map_err(|reason| CredentialsError::InvalidProfile {
                path: path.to_path_buf(),
                reason,
            })?;
            for (name, section) in sections {
                if section_matches(&name, &self.profile, is_config) {
                    found_section = true;
                    props.extend(section);
                }
            }
        }
        if !found_section {
            return Err(CredentialsError::NotConfigured(format!(
                "profile '{}' not found in the shared AWS files",
                self.profile
            )));
        }
        let path = self
            .credentials_file
            .clone()
            .or_else(|| self.config_file.clone())
            .unwrap_or_default();
        let akid = props.get("aws_access_key_id").filter(|v| !v.is_empty());
        let secret = props.get("aws_secret_access_key").filter(|v| !v.is_empty());
        match (akid, secret) {
            (Some(a), Some(s)) => Ok(Credentials::new(
                a.clone(),
                s.clone(),
                props
                    .get("aws_session_token")
                    .filter(|v| !v.is_empty())
                    .cloned(),
                None,
            )),
            (None, None) => Err(CredentialsError::NotConfigured(format!(
                "profile '{}' has no static keys",
                self.profile
            ))),
            _ => Err(CredentialsError::InvalidProfile {
                path,
                reason: format!(
                    "profile '{}' needs both aws_access_key_id and aws_secret_access_key",
                    self.profile
                ),
            }),
        }
    }
}

fn section_matches(section: &str, profile: &str, is_config: bool) -> bool {
    if !is_config || section == "default" {
        return section == profile;
    }
    section
        .strip_prefix("profile")
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .is_some_and(|rest| rest.trim() == profile)
}

type IniSection = (String, HashMap<String, String>);

/// Parses the AWS flavour of INI: `[section]`, `key = value`, `#`/`;` comments, indented
/// continuation lines (sub-properties) ignored. Keys are lower-cased.
fn parse_ini(text: &str) -> Result<Vec<IniSection>, String> {
    let mut out: Vec<IniSection> = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(format!("line {}: unterminated section header", no + 1));
            };
            out.push((rest[..end].trim().to_string(), HashMap::new()));
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            // Continuation / nested property (e.g. under `s3 =`): not used for keys.
            continue;
        }
        let Some((k, v)) = trimmed.split_once('=') else {
            return Err(format!("line {}: expected 'key = value'", no + 1));
        };
        let Some((_, section)) = out.last_mut() else {
            return Err(format!("line {}: property outside of a section", no + 1));
        };
        let v = strip_inline_comment(v.trim());
        section.insert(k.trim().to_ascii_lowercase(), v.to_string());
    }
    Ok(out)
}

fn strip_inline_comment(v: &str) -> &str {
    // An inline comment needs whitespace before '#' or ';' (secrets may contain those chars).
    for (i, c) in v.char_indices() {
        if (c == '#' || c == ';') && i > 0 && v[..i].ends_with(char::is_whitespace) {
            return v[..i].trim_end();
        }
    }
    v
}

impl CredentialsProvider for ProfileProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        let r = self.load();
        Box::pin(async move { r })
    }
    fn name(&self) -> &'static str {
        "profile"
    }
}

// ---------------------------------------------------------------------------------------------
// Application callback

/// What an application callback returns (as in the seed's callback: key, secret, token and
/// expiry in seconds from now).
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Optional session token.
    pub session_token: Option<String>,
    /// Seconds from now until the credentials expire; `None` for no expiry.
    pub expires_in_secs: Option<u64>,
}

impl fmt::Debug for CallbackCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_in_secs", &self.expires_in_secs)
            .finish_non_exhaustive()
    }
}

type CallbackFn = dyn Fn() -> BoxFuture<'static, Result<CallbackCredentials, String>> + Send + Sync;

/// Calls an application closure (e.g. credentials delivered by RainMaker).
#[derive(Clone)]
pub struct CallbackProvider {
    callback: Arc<CallbackFn>,
    now: TimeSource,
}

impl fmt::Debug for CallbackProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackProvider")
    }
}

impl CallbackProvider {
    /// A synchronous callback.
    pub fn new(
        callback: impl Fn() -> Result<CallbackCredentials, String> + Send + Sync + 'static,
    ) -> Self {
        let callback = Arc::new(callback);
        Self::new_async(move || {
            let r = callback();
            Box::pin(async move { r })
        })
    }

    /// An asynchronous callback.
    pub fn new_async(
        callback: impl Fn() -> BoxFuture<'static, Result<CallbackCredentials, String>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            callback: Arc::new(callback),
            now: system_time_source(),
        }
    }

    /// Replaces the clock used to turn "seconds from now" into an instant.
    pub fn with_time_source(mut self, now: TimeSource) -> Self {
        self.now = now;
        self
    }
}

impl CredentialsProvider for CallbackProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move {
            let c = (self.callback)()
                .await
                .map_err(CredentialsError::Callback)?;
            if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
                return Err(CredentialsError::Callback(
                    "callback returned an empty access key id or secret".into(),
                ));
            }
            let expiry = c
                .expires_in_secs
                .map(|s| (self.now)() + Duration::from_secs(s));
            Ok(Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                c.session_token.filter(|t| !t.is_empty()),
                expiry,
            ))
        })
    }
    fn name(&self) -> &'static str {
        "callback"
    }
}

// ---------------------------------------------------------------------------------------------
// Caching

/// Settings for [`CachingProvider`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Refresh this long before the credentials' expiry (seed: about 38 s).
    pub refresh_margin: Duration,
    /// Never keep credentials longer than this, even without or with a far expiry (seed: 40 min).
    pub max_lifetime: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(38),
            max_lifetime: Duration::from_secs(40 * 60),
        }
    }
}

/// Caches another provider's credentials and refreshes them before they expire.
///
/// Concurrent callers during a refresh wait for the one fetch (single flight). If a refresh
/// fails while the cached credentials have not yet actually expired, those are returned and a
/// warning logged.
pub struct CachingProvider {
    inner: Arc<dyn CredentialsProvider>,
    config: CacheConfig,
    now: TimeSource,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    credentials: Credentials,
    refresh_at: SystemTime,
}

impl CachingProvider {
    /// Wraps `inner` with the default [`CacheConfig`] and the system clock.
    pub fn new(inner: Arc<dyn CredentialsProvider>) -> Self {
        Self::with_config(inner, CacheConfig::default(), system_time_source())
    }

    /// Wraps `inner` with explicit settings and clock.
    pub fn with_config(
        inner: Arc<dyn CredentialsProvider>,
        config: CacheConfig,
        now: TimeSource,
    ) -> Self {
        Self {
            inner,
            config,
            now,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Drops the cached credentials so that the next call fetches (e.g. after a 403).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    fn refresh_time(&self, creds: &Credentials, fetched_at: SystemTime) -> SystemTime {
        let cap = fetched_at + self.config.max_lifetime;
        match creds.expiry {
            Some(exp) => {
                let early = exp
                    .checked_sub(self.config.refresh_margin)
                    .unwrap_or(fetched_at);
                early.min(cap)
            }
            None => cap,
        }
    }
}

impl CredentialsProvider for CachingProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move {
            let mut guard = self.cached.lock().await;
            let now = (self.now)();
            if let Some(c) = guard.as_ref() {
                if now < c.refresh_at {
                    return Ok(c.credentials.clone());
                }
            }
            debug!(provider = self.inner.name(), "refreshing AWS credentials");
            match self.inner.provide_credentials().await {
                Ok(creds) => {
                    let refresh_at = self.refresh_time(&creds, now);
                    *guard = Some(Cached {
                        credentials: creds.clone(),
                        refresh_at,
                    });
                    Ok(creds)
                }
                Err(e) => match guard.as_ref() {
                    Some(c) if !c.credentials.is_expired_at(now) => {
                        warn!(error = %e, "credentials refresh failed; using cached ones until expiry");
                        Ok(c.credentials.clone())
                    }
                    _ => Err(e),
                },
            }
        })
    }
    fn name(&self) -> &'static str {
        "caching"
    }
}

// ---------------------------------------------------------------------------------------------
// Chain

/// Tries providers in order and returns the first credentials obtained.
pub struct ChainProvider {
    providers: Vec<Arc<dyn CredentialsProvider>>,
}

impl ChainProvider {
    /// A chain of the given providers, tried in order.
    pub fn new(providers: Vec<Arc<dyn CredentialsProvider>>) -> Self {
        Self { providers }
    }

    /// The usual order for a developer machine: environment, then shared profile files.
    pub fn default_chain() -> Self {
        Self::new(vec![
            Arc::new(EnvProvider::new()),
            Arc::new(ProfileProvider::from_env()),
        ])
    }
}

impl CredentialsProvider for ChainProvider {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move {
            let mut failures = Vec::new();
            for p in &self.providers {
                match p.provide_credentials().await {
                    Ok(c) => {
                        debug!(provider = p.name(), "credentials obtained");
                        return Ok(c);
                    }
                    Err(e) => {
                        debug!(provider = p.name(), error = %e, "credentials provider failed");
                        failures.push(format!("{}: {e}", p.name()));
                    }
                }
            }
            Err(CredentialsError::ChainExhausted(failures))
        })
    }
    fn name(&self) -> &'static str {
        "chain"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_string),
            None,
        )
    }

    #[test]
    fn debug_and_display_hide_secret_and_token() {
        let c = creds(Some("SECRET-TOKEN-VALUE"));
        for s in [format!("{c:?}"), format!("{c}"), format!("{c:#?}")] {
            assert!(s.contains("AKIDEXAMPLE"), "{s}");
            assert!(!s.contains("wJalrXUtnFEMI"), "{s}");
            assert!(!s.contains("SECRET-TOKEN-VALUE"), "{s}");
        }
        let cb = CallbackCredentials {
            access_key_id: "A".into(),
            secret_access_key: "TOPSECRET".into(),
            session_token: Some("TOK".into()),
            expires_in_secs: None,
        };
        assert!(!format!("{cb:?}").contains("TOPSECRET"));
        assert!(!format!("{cb:?}").contains("TOK"));
    }

    #[tokio::test]
    async fn env_provider_reads_variables() {
        let vars: HashMap<&str, &str> = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ]
        .into();
        let p = EnvProvider::with_lookup(move |k| vars.get(k).map(|v| v.to_string()));
        let c = p.provide_credentials().await.unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key, "SECRET");
        assert_eq!(c.session_token.as_deref(), Some("TOKEN"));

        let empty = EnvProvider::with_lookup(|_| None);
        assert!(matches!(
            empty.provide_credentials().await,
            Err(CredentialsError::NotConfigured(_))
        ));
    }

    #[tokio::test]
    async fn profile_provider_reads_credentials_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let cred = dir.path().join("credentials");
        let conf = dir.path().join("config");
        std::fs::write(
            &cred,
            "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s3cr#t;x\n\n[dev]\naws_access_key_id=AKIDDEV\naws_secret_access_key=DEVSECRET ; inline comment\naws_session_token = DEVTOKEN\n",
        )
        .unwrap();
        std::fs::write(
            &conf,
            "[default]\nregion = us-west-2\n[profile cfgonly]\nregion=eu-west-1\naws_access_key_id = AKIDCFG\naws_secret_access_key = CFGSECRET\ns3 =\n  max_concurrent_requests = 10\n[profile half]\naws_access_key_id = AKIDHALF\n",
        )
        .unwrap();
        let p = |name: &str| ProfileProvider::new(name, Some(cred.clone()), Some(conf.clone()));

        let d = p("default").load().unwrap();
        assert_eq!(d.access_key_id, "AKIDDEFAULT");
        assert_eq!(d.secret_access_key, "s3cr#t;x");
        assert_eq!(d.session_token, None);

        let dev = p("dev").provide_credentials().await.unwrap();
        assert_eq!(dev.secret_access_key, "DEVSECRET");
        assert_eq!(dev.session_token.as_deref(), Some("DEVTOKEN"));

        let c = p("cfgonly").load().unwrap();
        assert_eq!(c.access_key_id, "AKIDCFG");

        assert!(matches!(
            p("half").load(),
            Err(CredentialsError::InvalidProfile { .. })
        ));
        assert!(matches!(
            p("missing").load(),
            Err(CredentialsError::NotConfigured(_))
        ));
        let none = ProfileProvider::new("default", Some(dir.path().join("nope")), None);
        assert!(matches!(
            none.load(),
            Err(CredentialsError::NotConfigured(_))
        ));
        std::fs::write(&cred, "[default\naws_access_key_id=x\n").unwrap();
        assert!(matches!(
            p("default").load(),
            Err(CredentialsError::InvalidProfile { .. })
        ));
    }

    fn fake_clock(start: SystemTime) -> (Arc<AtomicU64>, TimeSource) {
        let secs = Arc::new(AtomicU64::new(0));
        let s2 = secs.clone();
        (
            secs,
            Arc::new(move || start + Duration::from_secs(s2.load(Ordering::SeqCst))),
        )
    }

    #[tokio::test]
    async fn callback_provider_turns_seconds_into_expiry() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (_, clock) = fake_clock(start);
        let p = CallbackProvider::new(|| {
            Ok(CallbackCredentials {
                access_key_id: "AKID".into(),
                secret_access_key: "SECRET".into(),
                session_token: Some("TOKEN".into()),
                expires_in_secs: Some(3600),
            })
        })
        .with_time_source(clock);
        let c = p.provide_credentials().await.unwrap();
        assert_eq!(c.expiry, Some(start + Duration::from_secs(3600)));
        assert_eq!(c.session_token.as_deref(), Some("TOKEN"));

        let failing = CallbackProvider::new(|| Err("not provisioned".into()));
        match failing.provide_credentials().await {
            Err(CredentialsError::Callback(m)) => assert_eq!(m, "not provisioned"),
            other => panic!("unexpected {other:?}"),
        }
    }

    struct Counting {
        calls: AtomicUsize,
        lifetime: Option<Duration>,
        now: TimeSource,
        fail: std::sync::atomic::AtomicBool,
    }
    impl CredentialsProvider for Counting {
        fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, CredentialsError>> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) {
                    return Err(CredentialsError::Transport("down".into()));
                }
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "S",
                    None,
                    self.lifetime.map(|l| (self.now)() + l),
                ))
            })
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    #[tokio::test]
    async fn cache_refreshes_before_expiry_and_caps_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (secs, clock) = fake_clock(start);
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Some(Duration::from_secs(3600)),
            now: clock.clone(),
            fail: false.into(),
        });
        let cache = CachingProvider::with_config(inner.clone(), CacheConfig::default(), clock);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID0"
        );
        secs.store(39 * 60, Ordering::SeqCst);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID0"
        );
        // 40 min cap reached even though expiry is at 60 min.
        secs.store(40 * 60, Ordering::SeqCst);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID1"
        );

        // Short-lived credentials: refreshed 38 s before expiry.
        let (secs, clock) = fake_clock(start);
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Some(Duration::from_secs(300)),
            now: clock.clone(),
            fail: false.into(),
        });
        let cache = CachingProvider::with_config(inner.clone(), CacheConfig::default(), clock);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID0"
        );
        secs.store(300 - 39, Ordering::SeqCst);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID0"
        );
        secs.store(300 - 38, Ordering::SeqCst);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID1"
        );
        // Refresh failure while still valid: keep the cached ones; after expiry: error.
        inner.fail.store(true, Ordering::SeqCst);
        secs.store(300 - 38 + 270, Ordering::SeqCst);
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID1"
        );
        secs.store(300 - 38 + 300, Ordering::SeqCst);
        assert!(cache.provide_credentials().await.is_err());
        inner.fail.store(false, Ordering::SeqCst);
        cache.invalidate().await;
        assert_eq!(
            cache.provide_credentials().await.unwrap().access_key_id,
            "AKID2"
        );
    }

    #[tokio::test]
    async fn chain_returns_first_success_and_reports_all_failures() {
        let none: Arc<dyn CredentialsProvider> = Arc::new(EnvProvider::with_lookup(|_| None));
        let fixed: Arc<dyn CredentialsProvider> = Arc::new(StaticProvider::new(creds(None)));
        let other: Arc<dyn CredentialsProvider> = Arc::new(StaticProvider::new(Credentials::new(
            "OTHER", "X", None, None,
        )));
        let chain = ChainProvider::new(vec![none.clone(), fixed, other]);
        assert_eq!(
            chain.provide_credentials().await.unwrap().access_key_id,
            "AKIDEXAMPLE"
        );
        let chain = ChainProvider::new(vec![none.clone(), none]);
        match chain.provide_credentials().await {
            Err(CredentialsError::ChainExhausted(v)) => {
                assert_eq!(v.len(), 2);
                assert!(v[0].contains("AWS_ACCESS_KEY_ID"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
