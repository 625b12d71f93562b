//! Server-side SigV4 verification (for the local KVS-compatible service).
//!
//! Owns: checking an incoming request signed either with an `Authorization` header or with a
//! presigned query, against secrets looked up by access key id, with the clock passed in.
//! It follows whatever `SignedHeaders` the client sent (the C SDK signs only
//! `host;user-agent;x-amz-date` and sends the token unsigned; AWS SDKs sign more) and, where
//! clients legitimately disagree (single vs double path encoding, normalised or raw paths,
//! session token inside or outside the presigned canonical query), accepts each form.
//! Errors are typed and carry the wording the real service uses ([`VerifyError::error_code`],
//! [`VerifyError::http_status`]), so the service can answer like KVS.
//!
//! Must not touch: sockets or HTTP framing (the caller hands in method, raw path, raw query,
//! headers and body), credentials providers. The HMAC/signing-key primitives come from
//! `aws-sigv4`; that crate has no verifier, so the canonical request is built here.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::sigv4::{uri_encode, MAX_PRESIGN_EXPIRES};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Bound on parameters/headers we look at: remote input must not make us do unbounded work.
const MAX_QUERY_PARAMS: usize = 256;
const MAX_SIGNED_HEADERS: usize = 64;

/// An incoming request as the HTTP layer saw it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path exactly as on the wire (still percent-encoded), without the query.
    pub path: &'a str,
    /// Query exactly as on the wire, without the leading `?` (empty when none).
    pub query: &'a str,
    /// All headers in the order received; repeated names allowed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body bytes (empty for GET / WebSocket upgrade).
    pub body: &'a [u8],
}

/// What the service knows about an access key.
#[derive(Clone, PartialEq, Eq)]
pub struct KnownKey {
    /// The secret that signatures are checked with.
    pub secret_access_key: String,
    /// Session tokens accepted with this key. Empty: a long-term key, and a request carrying
    /// any token is refused. Non-empty: the request must carry one of them.
    pub session_tokens: Vec<String>,
}

impl std::fmt::Debug for KnownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownKey")
            .field("session_tokens", &self.session_tokens.len())
            .finish_non_exhaustive()
    }
}

/// Looks up an access key id. Implemented for closures `Fn(&str) -> Option<KnownKey>`.
pub trait KeyLookup: Send + Sync {
    /// The key's secret and accepted tokens, or `None` when unknown.
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey>;
}

impl<F> KeyLookup for F
where
    F: Fn(&str) -> Option<KnownKey> + Send + Sync,
{
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey> {
        self(access_key_id)
    }
}

/// A fixed in-memory key table.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    keys: HashMap<String, KnownKey>,
}

impl StaticKeys {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a key.
    pub fn insert(
        &mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_tokens: Vec<String>,
    ) -> &mut Self {
        self.keys.insert(
            access_key_id.into(),
            KnownKey {
                secret_access_key: secret_access_key.into(),
                session_tokens,
            },
        );
        self
    }
}

impl KeyLookup for StaticKeys {
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey> {
        self.keys.get(access_key_id).cloned()
    }
}

/// Verifier settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Allowed clock difference between signer and verifier (AWS: 5 minutes).
    pub max_skew: Duration,
    /// Required service in the credential scope (`kinesisvideo`), or any when `None`.
    pub service: Option<String>,
    /// Required region in the credential scope, or any when `None`.
    pub region: Option<String>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            max_skew: Duration::from_secs(300),
            service: None,
            region: None,
        }
    }
}

/// A successfully verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Access key id that signed it.
    pub access_key_id: String,
    /// Region from the credential scope.
    pub region: String,
    /// Service from the credential scope.
    pub service: String,
    /// Session token the request carried.
    pub session_token: Option<String>,
    /// Signing time (`X-Amz-Date`).
    pub signed_at: SystemTime,
    /// For a presigned URL: when it stops being valid.
    pub expires_at: Option<SystemTime>,
    /// Lower-case signed header names.
    pub signed_headers: Vec<String>,
    /// True for a presigned (query-string) request.
    pub presigned: bool,
}

/// Why a request was refused. Display gives the message the real service would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `Authorization` header and no presigned query.
    #[error("Missing Authentication Token")]
    MissingAuthentication,
    /// The authorization data is present but malformed or incomplete.
    #[error("{0}")]
    Malformed(String),
    /// The access key id is not known.
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey {
        /// The access key id given.
        access_key_id: String,
    },
    /// Missing, unexpected or unknown session token.
    #[error("The security token included in the request is invalid.")]
    InvalidSessionToken,
    /// Signature does not match. Carries our canonical request and string to sign for logs.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    SignatureMismatch {
        /// Canonical request the verifier computed (first variant tried).
        canonical_request: String,
        /// String to sign the verifier computed.
        string_to_sign: String,
    },
    /// Signed too long ago (beyond the allowed skew).
    #[error("Signature expired: {signed_at} is now earlier than {earliest} ({now} - {skew_minutes} min.)")]
    SignatureExpired {
        /// `X-Amz-Date` of the request.
        signed_at: String,
        /// Earliest acceptable signing time.
        earliest: String,
        /// Verifier's now.
        now: String,
        /// Allowed skew in minutes.
        skew_minutes: u64,
    },
    /// Signed in the future (beyond the allowed skew).
    #[error("Signature not yet current: {signed_at} is still later than {latest} ({now} + {skew_minutes} min.)")]
    SignatureNotYetCurrent {
        /// `X-Amz-Date` of the request.
        signed_at: String,
        /// Latest acceptable signing time.
        latest: String,
        /// Verifier's now.
        now: String,
        /// Allowed skew in minutes.
        skew_minutes: u64,
    },
    /// A presigned URL used after `X-Amz-Date + X-Amz-Expires`.
    #[error("Signature expired: {expired_at} is now earlier than {now} (X-Amz-Date {signed_at} + X-Amz-Expires {expires_secs} s)")]
    PresignedUrlExpired {
        /// `X-Amz-Date`.
        signed_at: String,
        /// `X-Amz-Expires` in seconds.
        expires_secs: u64,
        /// When it expired.
        expired_at: String,
        /// Verifier's now.
        now: String,
    },
    /// Credential scope names another region or service than this endpoint serves.
    #[error("Credential should be scoped to a valid {what}, not '{got}'.")]
    WrongScope {
        /// `region` or `service`.
        what: &'static str,
        /// The value in the request.
        got: String,
    },
    /// `x-amz-content-sha256` does not match the body.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    ContentHashMismatch,
}

impl VerifyError {
    /// The AWS error type name a rest-json service puts in `x-amzn-ErrorType`.
    pub fn error_code(&self) -> &'static str {
        match self {
            VerifyError::MissingAuthentication => "MissingAuthenticationTokenException",
            VerifyError::Malformed(_) => "IncompleteSignatureException",
            VerifyError::UnknownAccessKey { .. } | VerifyError::InvalidSessionToken => {
                "UnrecognizedClientException"
            }
            VerifyError::SignatureMismatch { .. }
            | VerifyError::SignatureExpired { .. }
            | VerifyError::SignatureNotYetCurrent { .. }
            | VerifyError::PresignedUrlExpired { .. }
            | VerifyError::WrongScope { .. } => "InvalidSignatureException",
            VerifyError::ContentHashMismatch => "XAmzContentSHA256Mismatch",
        }
    }

    /// The HTTP status the real service answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            VerifyError::Malformed(_) | VerifyError::ContentHashMismatch => 400,
            _ => 403,
        }
    }
}

/// Formats a time as SigV4's `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Parses SigV4's `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|p| p.assume_utc().into())
}

/// Checks SigV4 on requests. Cheap to build; holds only settings.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    config: VerifierConfig,
}

struct Auth {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    signed_at: SystemTime,
    expires: Option<Duration>,
    token: Option<String>,
    /// Query pairs (decoded) that enter the canonical query.
    canonical_query_pairs: Vec<(String, String)>,
    /// For presigned requests: the token pair may have been appended after signing.
    token_in_query: bool,
}

impl Verifier {
    /// A verifier with the given settings.
    pub fn new(config: VerifierConfig) -> Self {
        Self { config }
    }

    /// The settings in use.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Verifies `req` at time `now` with keys from `keys`.
    pub fn verify(
        &self,
        req: &IncomingRequest<'_>,
        keys: &dyn KeyLookup,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let query_pairs = parse_query(req.query)?;
        let auth = match header(req.headers, "authorization") {
            Some(value) => parse_authorization_header(value, req, &query_pairs)?,
            None if query_pairs
                .iter()
                .any(|(k, _)| k == "X-Amz-Signature" || k == "X-Amz-Algorithm") =>
            {
                parse_presigned_query(&query_pairs)?
            }
            None => return Err(VerifyError::MissingAuthentication),
        };

        if let Some(s) = &self.config.service {
            if *s != auth.service {
                return Err(VerifyError::WrongScope {
                    what: "service",
                    got: auth.service.clone(),
                });
            }
        }
        if let Some(r) = &self.config.region {
            if *r != auth.region {
                return Err(VerifyError::WrongScope {
                    what: "region",
                    got: auth.region.clone(),
                });
            }
        }

        let key =
            keys.lookup(&auth.access_key_id)
                .ok_or_else(|| VerifyError::UnknownAccessKey {
                    access_key_id: auth.access_key_id.clone(),
                })?;
        match (&auth.token, key.session_tokens.is_empty()) {
            (None, true) => {}
            (Some(t), false) if key.session_tokens.iter().any(|k| ct_eq(k, t)) => {}
            _ => return Err(VerifyError::InvalidSessionToken),
        }

        self.check_time(&auth, now)?;

        let expected_hash = payload_hash(req, auth.expires.is_some())?;
        let signing_key = generate_signing_key(
            &key.secret_access_key,
            auth.signed_at,
            &auth.region,
            &auth.service,
        );
        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let canonical_headers = canonical_headers(req.headers, &auth.signed_headers)?;
        let signed_headers = auth.signed_headers.join(";");

        let mut query_variants = vec![canonical_query(&auth.canonical_query_pairs)];
        if auth.token_in_query {
            let without: Vec<_> = auth
                .canonical_query_pairs
                .iter()
                .filter(|(k, _)| k != "X-Amz-Security-Token")
                .cloned()
                .collect();
            query_variants.push(canonical_query(&without));
        }
        let mut path_variants = Vec::with_capacity(4);
        for normalize in [true, false] {
            for double in [true, false] {
                let p = canonical_uri(req.path, normalize, double);
                if !path_variants.contains(&p) {
                    path_variants.push(p);
                }
            }
        }

        let mut first: Option<(String, String)> = None;
        for hash in &expected_hash {
            for path in &path_variants {
                for query in &query_variants {
                    let canonical_request = format!(
                        "{}\n{}\n{}\n{}\n{}\n{}",
                        req.method, path, query, canonical_headers, signed_headers, hash
                    );
                    let string_to_sign = format!(
                        "{ALGORITHM}\n{}\n{scope}\n{}",
                        auth.amz_date,
                        hex::encode(Sha256::digest(canonical_request.as_bytes()))
                    );
                    let sig = calculate_signature(signing_key.as_ref(), string_to_sign.as_bytes());
                    if ct_eq(&sig, &auth.signature) {
                        return Ok(Verified {
                            access_key_id: auth.access_key_id,
                            region: auth.region,
                            service: auth.service,
                            session_token: auth.token,
                            signed_at: auth.signed_at,
                            expires_at: auth.expires.map(|e| auth.signed_at + e),
                            signed_headers: auth.signed_headers,
                            presigned: auth.expires.is_some(),
                        });
                    }
                    if first.is_none() {
                        first = Some((canonical_request, string_to_sign));
                    }
                }
            }
        }
        let (canonical_request, string_to_sign) = first.unwrap_or_default();
        debug!(access_key_id = %auth.access_key_id, canonical_request = %crate::redact::redact(&canonical_request), "SigV4 signature mismatch");
        Err(VerifyError::SignatureMismatch {
            canonical_request,
            string_to_sign,
        })
    }

    fn check_time(&self, auth: &Auth, now: SystemTime) -> Result<(), VerifyError> {
        let skew = self.config.max_skew;
        let skew_minutes = skew.as_secs() / 60;
        if auth.signed_at > now + skew {
            return Err(VerifyError::SignatureNotYetCurrent {
                signed_at: auth.amz_date.clone(),
                latest: format_amz_date(now + skew),
                now: format_amz_date(now),
                skew_minutes,
            });
        }
        match auth.expires {
            Some(expires) => {
                let expired_at = auth.signed_at + expires;
                if now > expired_at {
                    return Err(VerifyError::PresignedUrlExpired {
                        signed_at: auth.amz_date.clone(),
                        expires_secs: expires.as_secs(),
                        expired_at: format_amz_date(expired_at),
                        now: format_amz_date(now),
                    });
                }
            }
            None => {
                let earliest = now.checked_sub(skew).unwrap_or(SystemTime::UNIX_EPOCH);
                if auth.signed_at < earliest {
                    return Err(VerifyError::SignatureExpired {
                        signed_at: auth.amz_date.clone(),
                        earliest: format_amz_date(earliest),
                        now: format_amz_date(now),
                        skew_minutes,
                    });
                }
            }
        }
        Ok(())
    }
}

fn malformed(msg: impl Into<String>) -> VerifyError {
    VerifyError::Malformed(msg.into())
}

fn header<'a>(headers: &'a [(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, VerifyError> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if out.len() >= MAX_QUERY_PARAMS {
            return Err(malformed("too many query parameters"));
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k), percent_decode(v)));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_credential(cred: &str) -> Result<(String, String, String, String), VerifyError> {
    let parts: Vec<&str> = cred.rsplitn(5, '/').collect();
    if parts.len() != 5 {
        return Err(malformed(format!(
            "Credential should have 5 parts separated by '/', got '{cred}'."
        )));
    }
    // rsplitn gives them reversed: terminator, service, region, date, akid.
    let (term, service, region, date, akid) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    if term != "aws4_request" {
        return Err(malformed(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{term}'."
        )));
    }
    if akid.is_empty() || region.is_empty() || service.is_empty() || date.len() != 8 {
        return Err(malformed(format!("Credential '{cred}' is incomplete.")));
    }
    Ok((akid.into(), date.into(), region.into(), service.into()))
}

fn parse_signed_headers(s: &str) -> Result<Vec<String>, VerifyError> {
    let names: Vec<String> = s
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if names.len() > MAX_SIGNED_HEADERS || names.iter().any(|h| h.is_empty()) {
        return Err(malformed("SignedHeaders is malformed."));
    }
    if !names.iter().any(|h| h == "host") {
        return Err(malformed(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    // The canonical form lists them sorted; a client sending them unsorted signed the sorted list.
    let mut sorted = names;
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

fn check_date(amz_date: &str, scope_date: &str) -> Result<SystemTime, VerifyError> {
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| malformed(format!("Invalid X-Amz-Date '{amz_date}'.")))?;
    if !amz_date.starts_with(scope_date) {
        return Err(malformed(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope_date}' != '{}'.",
            &amz_date[..8]
        )));
    }
    Ok(signed_at)
}

fn parse_authorization_header(
    value: &str,
    req: &IncomingRequest<'_>,
    query_pairs: &[(String, String)],
) -> Result<Auth, VerifyError> {
    let rest = value.trim().strip_prefix(ALGORITHM).ok_or_else(|| {
        malformed("Authorization header requires the AWS4-HMAC-SHA256 algorithm.")
    })?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v.trim());
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.trim());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v.trim());
        }
    }
    let need = |what: &str| malformed(format!("Authorization header requires '{what}' parameter."));
    let (akid, date, region, service) =
        parse_credential(credential.ok_or_else(|| need("Credential"))?)?;
    let signed_headers = parse_signed_headers(signed.ok_or_else(|| need("SignedHeaders"))?)?;
    let signature = signature
        .ok_or_else(|| need("Signature"))?
        .to_ascii_lowercase();

    let amz_date = match header(req.headers, "x-amz-date") {
        Some(d) => d.trim().to_string(),
        None => {
            let d = header(req.headers, "date").ok_or_else(|| {
                malformed("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
            })?;
            let t = httpdate::parse_http_date(d.trim())
                .map_err(|_| malformed(format!("Invalid Date header '{d}'.")))?;
            format_amz_date(t)
        }
    };
    let signed_at = check_date(&amz_date, &date)?;
    Ok(Auth {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature,
        amz_date,
        signed_at,
        expires: None,
        token: header(req.headers, "x-amz-security-token").map(|t| t.trim().to_string()),
        canonical_query_pairs: query_pairs.to_vec(),
        token_in_query: false,
    })
}

fn parse_presigned_query(pairs: &[(String, String)]) -> Result<Auth, VerifyError> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let need = |name: &str| {
        malformed(format!(
            "AWS query-string parameters must include '{name}'."
        ))
    };
    let algorithm = get("X-Amz-Algorithm").ok_or_else(|| need("X-Amz-Algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!(
            "X-Amz-Algorithm only supports 'AWS4-HMAC-SHA256', not '{algorithm}'."
        )));
    }
    let (akid, date, region, service) =
        parse_credential(get("X-Amz-Credential").ok_or_else(|| need("X-Amz-Credential"))?)?;
    let amz_date = get("X-Amz-Date")
        .ok_or_else(|| need("X-Amz-Date"))?
        .to_string();
    let signed_at = check_date(&amz_date, &date)?;
    let signed_headers = parse_signed_headers(
        get("X-Amz-SignedHeaders").ok_or_else(|| need("X-Amz-SignedHeaders"))?,
    )?;
    let signature = get("X-Amz-Signature")
        .ok_or_else(|| need("X-Amz-Signature"))?
        .to_ascii_lowercase();
    let expires_raw = get("X-Amz-Expires").ok_or_else(|| need("X-Amz-Expires"))?;
    let expires = expires_raw
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .filter(|e| *e <= MAX_PRESIGN_EXPIRES)
        .ok_or_else(|| {
            malformed(format!(
                "X-Amz-Expires must be a number of seconds up to 604800, not '{expires_raw}'."
            ))
        })?;
    let token = get("X-Amz-Security-Token").map(str::to_string);
    Ok(Auth {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature,
        amz_date,
        signed_at,
        expires: Some(expires),
        token_in_query: token.is_some(),
        token,
        canonical_query_pairs: pairs
            .iter()
            .filter(|(k, _)| k != "X-Amz-Signature")
            .cloned()
            .collect(),
    })
}

fn payload_hash(req: &IncomingRequest<'_>, presigned: bool) -> Result<Vec<String>, VerifyError> {
    let computed = if req.body.is_empty() {
        EMPTY_SHA256.to_string()
    } else {
        hex::encode(Sha256::digest(req.body))
    };
    match header(req.headers, "x-amz-content-sha256").map(str::trim) {
        Some(v) if v == UNSIGNED_PAYLOAD || v.starts_with("STREAMING-") => Ok(vec![v.to_string()]),
        Some(v) if !v.eq_ignore_ascii_case(&computed) => Err(VerifyError::ContentHashMismatch),
        _ if presigned => Ok(vec![computed, UNSIGNED_PAYLOAD.to_string()]),
        _ => Ok(vec![computed]),
    }
}

fn canonical_headers(headers: &[(&str, &str)], signed: &[String]) -> Result<String, VerifyError> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| collapse_whitespace(v))
            .collect();
        if values.is_empty() {
            return Err(malformed(format!(
                "Header '{name}' is listed in SignedHeaders but missing from the request."
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn collapse_whitespace(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Canonical URI from the raw wire path. `double`: every non-unreserved byte (including `%`
/// of existing escapes) is encoded again, as AWS SDKs do for non-S3 services; otherwise existing
/// `%XX` escapes are kept. `normalize`: `.`/`..` segments resolved and empty segments removed.
fn canonical_uri(raw: &str, normalize: bool, double: bool) -> String {
    let path = if raw.is_empty() { "/" } else { raw };
    let path = if normalize {
        normalize_path(path)
    } else {
        path.to_string()
    };
    let mut out = String::with_capacity(path.len() + 8);
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let keep_escape = !double
            && b == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        if keep_escape {
            out.push('%');
            out.push(bytes[i + 1].to_ascii_uppercase() as char);
            out.push(bytes[i + 2].to_ascii_uppercase() as char);
            i += 3;
            continue;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    out
}

fn normalize_path(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(&segs.join("/"));
    if path.ends_with('/') && !segs.is_empty() {
        out.push('/');
    }
    out
}

/// Constant-time string comparison (signatures, tokens).
fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_variants() {
        assert_eq!(canonical_uri("", true, true), "/");
        assert_eq!(canonical_uri("//example//", true, true), "/example/");
        assert_eq!(canonical_uri("//example//", false, true), "//example//");
        assert_eq!(canonical_uri("/a/b/../..", true, true), "/");
        assert_eq!(canonical_uri("/a%20b", true, true), "/a%2520b");
        assert_eq!(canonical_uri("/a%20b", true, false), "/a%20b");
        assert_eq!(canonical_uri("/a b", true, false), "/a%20b");
        assert_eq!(canonical_uri("/%", true, false), "/%25");
    }

    #[test]
    fn amz_date_round_trip() {
        let t = parse_amz_date("20191201T000000Z").unwrap();
        assert_eq!(format_amz_date(t), "20191201T000000Z");
        assert!(parse_amz_date("2019-12-01").is_none());
    }

    #[test]
    fn malformed_authorization_is_typed() {
        let keys = StaticKeys::new();
        let v = Verifier::default();
        let now = SystemTime::now();
        for auth in [
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20191201/r/s/aws4_request, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/2019/r/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20191201/r/s/aws4_request, SignedHeaders=x-amz-date, Signature=00",
            "Basic abc",
        ] {
            let headers = [("Authorization", auth), ("X-Amz-Date", "20191201T000000Z")];
            let req = IncomingRequest {
                method: "GET",
                path: "/",
                query: "",
                headers: &headers,
                body: b"",
            };
            let e = v.verify(&req, &keys, now).unwrap_err();
            assert!(matches!(e, VerifyError::Malformed(_)), "{auth}: {e:?}");
            assert_eq!(e.http_status(), 400);
        }
        let req = IncomingRequest {
            method: "GET",
            path: "/",
            query: "a=b",
            headers: &[],
            body: b"",
        };
        assert_eq!(
            v.verify(&req, &keys, now),
            Err(VerifyError::MissingAuthentication)
        );
    }

    /// Deterministic mutation run: garbage in query, headers and path never panics.
    #[test]
    fn garbage_input_never_panics() {
        let mut keys = StaticKeys::new();
        keys.insert("AKID", "SECRET", vec![]);
        let base_query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20191201%2Fr%2Fs%2Faws4_request&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-SignedHeaders=host&X-Amz-Signature=00";
        let base_auth = "AWS4-HMAC-SHA256 Credential=AKID/20191201/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=00";
        let alphabet = b"%/=&;,: .\x00\xffaZ9-_~\xc3\xa9ABCDEFT";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let now = parse_amz_date("20191201T000000Z").unwrap();
        for _ in 0..5000 {
            let mut q = base_query.as_bytes().to_vec();
            let mut a = base_auth.as_bytes().to_vec();
            let mut p = b"/a/../b//c%2".to_vec();
            for buf in [&mut q, &mut a, &mut p] {
                for _ in 0..(next() % 4) {
                    let pos = (next() as usize) % (buf.len() + 1);
                    let c = alphabet[(next() as usize) % alphabet.len()];
                    match next() % 3 {
                        0 if pos < buf.len() => buf[pos] = c,
                        1 if pos < buf.len() => {
                            buf.remove(pos);
                        }
                        _ => buf.insert(pos, c),
                    }
                }
            }
            let q = String::from_utf8_lossy(&q).into_owned();
            let a = String::from_utf8_lossy(&a).into_owned();
            let p = String::from_utf8_lossy(&p).into_owned();
            let headers = [("host", "h"), ("x-amz-date", "20191201T000000Z")];
            let with_auth = [
                ("host", "h"),
                ("x-amz-date", "20191201T000000Z"),
                ("authorization", a.as_str()),
            ];
            for (query, hs) in [(q.as_str(), &headers[..]), ("", &with_auth[..])] {
                let req = IncomingRequest {
                    method: "GET",
                    path: &p,
                    query,
                    headers: hs,
                    body: b"",
                };
                let _ = Verifier::default().verify(&req, &keys, now);
            }
        }
    }
}
