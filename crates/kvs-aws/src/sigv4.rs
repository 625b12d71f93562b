//! Client-side SigV4: signing REST requests and presigning WebSocket URLs.
//!
//! Owns: turning a request description plus [`Credentials`] into the headers to add
//! ([`sign_request`]) or into a presigned URL ([`presign_url`]), both through the `aws-sigv4`
//! crate. Time is always passed in, so callers can apply a clock-skew correction
//! ([`crate::skew`]).
//!
//! Must not touch: the network, credential refresh, or verification (see [`crate::verify`]).
//!
//! Presigned URLs are laid out like the KVS JavaScript SDK's: every query parameter, the
//! signature included, sorted by name. The signature does not depend on that order (the
//! canonical query is always sorted), so `aws-sigv4` computes it and we only lay out the URL.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::credentials::Credentials;

/// The SigV4 service name of the KVS control plane and of the signaling WebSocket.
pub const KVS_SERVICE: &str = "kinesisvideo";

/// `X-Amz-Expires` the KVS JavaScript SDK uses for signaling URLs.
pub const DEFAULT_PRESIGN_EXPIRES: Duration = Duration::from_secs(299);

/// Longest `X-Amz-Expires` SigV4 allows (7 days).
pub const MAX_PRESIGN_EXPIRES: Duration = Duration::from_secs(604_800);

/// Errors from signing.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The URL could not be parsed or has an unsupported form.
    #[error("invalid URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// `X-Amz-Expires` out of range (1 s to 7 days).
    #[error("presign expiry must be between 1 s and 7 days, got {0:?}")]
    InvalidExpiry(Duration),
    /// The underlying signer failed.
    #[error("signing failed: {0}")]
    Signer(String),
}

/// A request to sign with an `Authorization` header.
#[derive(Debug, Clone, Copy)]
pub struct RequestToSign<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// Full URL, e.g. `https://kinesisvideo.us-west-2.amazonaws.com/describeSignalingChannel`
    /// (path and query already percent-encoded as they will be sent).
    pub url: &'a str,
    /// Headers that will be sent and should be signed (e.g. `content-type`). `host` is
    /// derived from the URL when absent. `user-agent` is never signed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The exact body bytes.
    pub body: &'a [u8],
}

/// Signs `request` (header-based SigV4) and returns the headers to add to it, lower-case:
/// `x-amz-date`, `authorization` and, for temporary credentials, `x-amz-security-token`.
pub fn sign_request(
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    request: &RequestToSign<'_>,
) -> Result<Vec<(String, String)>, SigningError> {
    let uri: http::Uri =
        request
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| SigningError::InvalidUrl {
                url: request.url.to_string(),
                reason: e.to_string(),
            })?;
    // aws-sigv4 needs a host from either the URL or a header.
    let has_host_header = request
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if uri.authority().is_none() && !has_host_header {
        return Err(SigningError::InvalidUrl {
            url: request.url.to_string(),
            reason: "no host in the URL and no host header".into(),
        });
    }
    let identity = to_identity(credentials);
    let settings = SigningSettings::default();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SigningError::Signer(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| SigningError::InvalidUrl {
        url: request.url.to_string(),
        reason: e.to_string(),
    })?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SigningError::Signer(e.to_string()))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name().to_ascii_lowercase(), h.value().to_string()))
        .collect())
}

/// Presigns a URL (query-string SigV4, `SignedHeaders=host`, empty-payload hash), the way
/// KVS signaling clients connect their WebSocket.
///
/// `url` is `wss://host[:port][/path]` (any scheme is accepted; the port, if written, is part
/// of the signed host, as in the JS SDK) without a query. `query` holds the extra parameters
/// (e.g. `X-Amz-ChannelARN`, `X-Amz-ClientId`), unencoded. The session token, if any, goes
/// inside the canonical query as `X-Amz-Security-Token`. Parameters in the returned URL are
/// sorted by name, signature included, exactly like the KVS JS SDK's output.
pub fn presign_url(
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    url: &str,
    query: &[(&str, &str)],
    expires: Duration,
) -> Result<String, SigningError> {
    if expires < Duration::from_secs(1) || expires > MAX_PRESIGN_EXPIRES {
        return Err(SigningError::InvalidExpiry(expires));
    }
    let invalid = |reason: &str| SigningError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.contains('?') || url.contains('#') {
        return Err(invalid("must not contain a query or fragment"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    let mut canonical_query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    canonical_query.sort();
    let query_string = join_query(&canonical_query);
    let target = if query_string.is_empty() {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}{path}?{query_string}")
    };

    let identity = to_identity(credentials);
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    settings.session_token_mode = SessionTokenMode::Include;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SigningError::Signer(e.to_string()))?
        .into();
    // The JS SDK signs the host exactly as written in the endpoint (port included).
    let headers = [("host", host)];
    let signable = SignableRequest::new(
        "GET",
        target.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| invalid(&e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SigningError::Signer(e.to_string()))?
        .into_parts();
    let (_, params) = instructions.into_parts();
    for (k, v) in params {
        canonical_query.push((uri_encode(k, true), uri_encode(&v, true)));
    }
    canonical_query.sort();
    Ok(format!(
        "{scheme}://{host}{path}?{}",
        join_query(&canonical_query)
    ))
}

fn to_identity(c: &Credentials) -> aws_smithy_runtime_api::client::identity::Identity {
    aws_credential_types::Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
        c.session_token.clone(),
        c.expiry,
        "kvs-aws",
    )
    .into()
}

fn join_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// What SigV4 percent-encodes: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` (bytes
/// outside ASCII, i.e. all of a multi-byte UTF-8 character, are always encoded).
const SIGV4_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same for a URI path, whose `/` separators stay as they are.
const SIGV4_ENCODED_IN_PATH: &AsciiSet = &SIGV4_ENCODED.remove(b'/');

/// SigV4 URI encoding: every byte except `A-Z a-z 0-9 - _ . ~` becomes `%XX` (upper-case hex);
/// `/` too unless `encode_slash` is false.
pub fn uri_encode(input: &str, encode_slash: bool) -> String {
    let set = if encode_slash {
        SIGV4_ENCODED
    } else {
        SIGV4_ENCODED_IN_PATH
    };
    utf8_percent_encode(input, set).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encode_follows_sigv4() {
        assert_eq!(uri_encode("a b/c~", true), "a%20b%2Fc~");
        assert_eq!(uri_encode("a b/c", false), "a%20b/c");
        assert_eq!(
            uri_encode(
                "arn:aws:kinesisvideo:us-west-2:123456789012:channel/x/1",
                true
            ),
            "arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A123456789012%3Achannel%2Fx%2F1"
        );
        assert_eq!(uri_encode("ሴ", true), "%E1%88%B4");
    }

    #[test]
    fn uri_encode_covers_every_ascii_character_and_non_ascii_utf8() {
        for b in 0u8..=0x7f {
            let c = char::from(b).to_string();
            let unreserved = b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
            let escaped = format!("%{b:02X}");
            let expect = |keep: bool| if keep { c.clone() } else { escaped.clone() };
            assert_eq!(uri_encode(&c, true), expect(unreserved), "byte {b:#04x}");
            assert_eq!(
                uri_encode(&c, false),
                expect(unreserved || b == b'/'),
                "byte {b:#04x}"
            );
        }
        // Two-, three- and four-byte UTF-8, each byte encoded, path or not.
        for slash in [true, false] {
            assert_eq!(uri_encode("é", slash), "%C3%A9");
            assert_eq!(uri_encode("a/€", slash).replace("%2F", "/"), "a/%E2%82%AC");
            assert_eq!(uri_encode("😀~", slash), "%F0%9F%98%80~");
        }
    }

    #[test]
    fn presign_rejects_bad_input() {
        let c = Credentials::new("AKID", "S", None, None);
        let t = SystemTime::UNIX_EPOCH;
        assert!(matches!(
            presign_url(
                &c,
                "r",
                "s",
                t,
                "wss://h/?a=b",
                &[],
                DEFAULT_PRESIGN_EXPIRES
            ),
            Err(SigningError::InvalidUrl { .. })
        ));
        assert!(matches!(
            presign_url(&c, "r", "s", t, "no-scheme", &[], DEFAULT_PRESIGN_EXPIRES),
            Err(SigningError::InvalidUrl { .. })
        ));
        assert!(matches!(
            presign_url(
                &c,
                "r",
                "s",
                t,
                "wss://h",
                &[],
                Duration::from_secs(604_801)
            ),
            Err(SigningError::InvalidExpiry(_))
        ));
    }
}
