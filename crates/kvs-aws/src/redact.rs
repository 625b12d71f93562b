//! Keeping secrets out of logs, in one place.
//!
//! Owns: [`redact`], which masks every secret shape this SDK and its dependencies can print —
//! session tokens (`X-Amz-Security-Token=` in presigned URLs, `x-amz-security-token:` in
//! canonical requests and headers), signatures (a presigned URL or an `Authorization` header
//! is a bearer credential until it expires), secret keys and TURN passwords in JSON answers
//! and in credential files — and [`RedactingWriter`], an `io::Write` that applies it to every
//! line, for a logger's output (`tracing_subscriber::fmt().with_writer(...)`). The programs log
//! through it, so a dependency logging at trace level cannot leak what our own `Debug`
//! implementations already hide.
//!
//! Must not touch: what gets logged (callers decide) or how (the subscriber does).

use std::borrow::Cow;
use std::io::{self, Write};

/// What a masked value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Query parameters and header names (case-insensitive) whose value is secret. Each is matched
/// as `name=value` (query) and `name:value` (header / canonical request line).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-credential-token",
];

/// JSON keys (case-insensitive) whose string value is secret: AWS credentials in STS/IoT
/// answers, TURN passwords in GetIceServerConfig answers.
const SECRET_JSON_KEYS: &[&str] = &[
    "secretaccesskey",
    "sessiontoken",
    "password",
    "credential",
    "secret_access_key",
    "session_token",
    "securitytoken",
];

/// Keys of AWS credential files (`key = value` lines).
const SECRET_INI_KEYS: &[&str] = &["aws_secret_access_key", "aws_session_token"];

/// Masks every secret in `text`. Returns the input unchanged (borrowed) when there is none,
/// which is the common case and costs one case-insensitive scan.
pub fn redact(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let suspicious = SECRET_PARAMS
        .iter()
        .chain(SECRET_JSON_KEYS)
        .chain(SECRET_INI_KEYS)
        .any(|k| lower.contains(k))
        || lower.contains("signature=");
    if !suspicious {
        return Cow::Borrowed(text);
    }
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for name in SECRET_PARAMS {
        for (at, _) in lower.match_indices(name) {
            let after = at + name.len();
            // `name=value` or `name: value` (headers, canonical requests).
            let Some(sep) = lower[after..].chars().next() else {
                continue;
            };
            if sep != '=' && sep != ':' {
                continue;
            }
            let start = skip_spaces(text, after + 1);
            spans.push((start, value_end(text, start, sep == ':')));
        }
    }
    // `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=<hex>`.
    for (at, _) in lower.match_indices("signature=") {
        if lower[..at].ends_with("x-amz-") {
            continue; // handled above
        }
        let start = at + "signature=".len();
        spans.push((start, value_end(text, start, false)));
    }
    for key in SECRET_JSON_KEYS {
        let quoted = format!("\"{key}\"");
        for (at, _) in lower.match_indices(&quoted) {
            let rest = &text[at + quoted.len()..];
            let trimmed = rest.trim_start();
            let Some(after_colon) = trimmed.strip_prefix(':') else {
                continue;
            };
            let value = after_colon.trim_start();
            let value_at = text.len() - value.len();
            // String values: mask what is inside the quotes (escaped quotes included).
            if let Some(inner) = value.strip_prefix('"') {
                let start = value_at + 1;
                let mut end = start;
                let mut escaped = false;
                for (i, c) in inner.char_indices() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = start + i;
                        break;
                    }
                    end = start + i + c.len_utf8();
                }
                spans.push((start, end));
            }
        }
        // Rust `Debug` of a struct field: `password: "…"` / `credential: Some("…")`.
        let field = format!("{key}: ");
        for (at, _) in lower.match_indices(&field) {
            let rest = &text[at + field.len()..];
            let rest_at = at + field.len();
            let (open, skip) = if rest.starts_with("Some(\"") {
                (true, 6)
            } else if rest.starts_with('"') {
                (true, 1)
            } else {
                (false, 0)
            };
            if open {
                let start = rest_at + skip;
                let end = text[start..].find('"').map_or(text.len(), |i| start + i);
                spans.push((start, end));
            }
        }
    }
    for key in SECRET_INI_KEYS {
        for (at, _) in lower.match_indices(key) {
            let rest = &text[at + key.len()..];
            let trimmed = rest.trim_start();
            if let Some(value) = trimmed.strip_prefix('=') {
                let start = skip_spaces(text, text.len() - value.len());
                spans.push((start, value_end(text, start, true)));
            }
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in spans {
        if end <= copied || start >= end {
            continue;
        }
        let start = start.max(copied);
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

fn skip_spaces(text: &str, mut at: usize) -> usize {
    while text[at..].starts_with(' ') {
        at += 1;
    }
    at
}

/// Where a secret value starting at `start` ends: at a query separator, whitespace, a quote or
/// a bracket; a header value (`to_line_end`) runs to the end of its line.
fn value_end(text: &str, start: usize, to_line_end: bool) -> usize {
    let stop = |c: char| {
        if to_line_end {
            matches!(c, '\n' | '\r' | '"' | '\\')
        } else {
            c.is_whitespace() || matches!(c, '&' | '"' | '\'' | '>' | ')' | ',' | ';' | '\\')
        }
    };
    text[start..]
        .char_indices()
        .find(|&(_, c)| stop(c))
        .map_or(text.len(), |(i, _)| start + i)
}

/// An `io::Write` that masks secrets ([`redact`]) in what passes through, line by line.
///
/// A logger writes one formatted event per call; a partial line is held (bounded) until its
/// end arrives, so a secret split across two writes is still seen whole.
#[derive(Debug)]
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

/// A partial line longer than this is written out redacted as it is.
const MAX_PENDING: usize = 64 * 1024;

impl<W: Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_redacted(&mut self, bytes: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(bytes);
        self.inner.write_all(redact(&text).as_bytes())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(last_newline + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.write_redacted(&lines)?;
        }
        if self.pending.len() > MAX_PENDING {
            let lines = std::mem::take(&mut self.pending);
            self.write_redacted(&lines)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let lines = std::mem::take(&mut self.pending);
            self.write_redacted(&lines)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLXdlc3QtMiJHMEUCIQDx%2Bsecret";

    #[test]
    fn masks_tokens_in_urls_and_canonical_requests() {
        let url = format!(
            "wss://m-1.kinesisvideo.us-west-2.amazonaws.com/?X-Amz-ChannelARN=arn&X-Amz-Security-Token={TOKEN}&X-Amz-Signature=abcdef0123&X-Amz-SignedHeaders=host"
        );
        let out = redact(&url);
        assert!(!out.contains(TOKEN), "{out}");
        assert!(!out.contains("abcdef0123"), "{out}");
        assert!(out.contains("X-Amz-ChannelARN=arn&"), "{out}");
        assert!(out.contains("&X-Amz-SignedHeaders=host"), "{out}");

        let canonical = format!(
            "POST\n/describeSignalingChannel\n\nhost:kinesisvideo.us-west-2.amazonaws.com\nx-amz-date:20261203T000000Z\nx-amz-security-token:{TOKEN}\n\nhost;x-amz-date;x-amz-security-token\ne3b0"
        );
        let out = redact(&canonical);
        assert!(!out.contains(TOKEN), "{out}");
        assert!(out.contains("x-amz-date:20261203T000000Z\n"), "{out}");
        assert!(out.contains("x-amz-security-token:<redacted>\n"), "{out}");
    }

    #[test]
    fn masks_authorization_signatures_json_secrets_and_credential_files() {
        let auth = "authorization: AWS4-HMAC-SHA256 Credential=AKID/20261203/us-west-2/kinesisvideo/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef";
        let out = redact(auth);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(out.contains("Credential=AKID/"), "{out}");

        let json = r#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"wJalr\"XUtn","sessionToken":"tok123","expiration":"2026"},"IceServerList":[{"Password":"turnpass=","Username":"1:u"}]}"#;
        let out = redact(json);
        for secret in ["wJalr", "XUtn", "tok123", "turnpass="] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains(r#""accessKeyId":"ASIAX""#), "{out}");
        assert!(out.contains(r#""Username":"1:u""#), "{out}");

        let ini = "[default]\naws_access_key_id = AKID\naws_secret_access_key = wJalrXUtnFEMI\naws_session_token=tok\n";
        let out = redact(ini);
        assert!(
            !out.contains("wJalrXUtnFEMI") && !out.contains("=tok\n"),
            "{out}"
        );
        assert!(out.contains("aws_access_key_id = AKID"), "{out}");

        let debug =
            r#"IceServer { urls: ["turn:h"], username: Some("1:u"), credential: Some("pw-9") }"#;
        assert!(!redact(debug).contains("pw-9"));
    }

    #[test]
    fn leaves_ordinary_text_alone_and_survives_odd_input() {
        let plain = "signaling connected to wss://example/ in 12 ms";
        assert!(matches!(redact(plain), Cow::Borrowed(_)));
        for odd in [
            "x-amz-security-token",
            "x-amz-security-token=",
            "\"password\"",
            "\"password\":",
            "\"password\": \"unterminated",
            "Signature=",
            "aws_session_token",
            "x-amz-security-tokenX",
            "é\"password\":\"é\"",
        ] {
            let out = redact(odd);
            assert!(!out.is_empty() || odd.is_empty());
        }
    }

    #[test]
    fn the_writer_redacts_lines_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out);
            w.write_all(b"GET /?X-Amz-Security-Token=abc").unwrap();
            w.write_all(b"def&x=1 HTTP/1.1\nnext line\n").unwrap();
            w.write_all(b"tail without newline").unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("abcdef"), "{text}");
        assert!(
            text.contains("X-Amz-Security-Token=<redacted>&x=1"),
            "{text}"
        );
        assert!(text.ends_with("tail without newline"), "{text}");
    }
}
