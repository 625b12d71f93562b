//! ICE servers handed out by GetIceServerConfig, with TURN credentials minted per request.
//!
//! Owns: the time-limited TURN credential scheme that coturn checks with `use-auth-secret`
//! (the TURN REST API draft): username `<unix-expiry>:<name>`, password
//! `base64(HMAC-SHA1(shared secret, username))`. A local coturn started with the same
//! `static-auth-secret` accepts what we mint without any per-user state.
//!
//! Must not touch: networking (we never talk to the TURN server), the control-plane shapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// The C SDK refuses lists longer than this, and more than 4 URIs per server.
pub const MAX_ICE_SERVERS: usize = 5;
pub const MAX_URIS_PER_SERVER: usize = 4;
/// KVS clients refuse a TTL of 30 s or less.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// One TURN server (coturn) and the secret it shares with us.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// `turn:` / `turns:` URIs (at most 4 are handed out).
    pub uris: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub shared_secret: String,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("uris", &self.uris)
            .field("shared_secret", &"<redacted>")
            .finish()
    }
}

/// What GetIceServerConfig hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServerSettings {
    /// TURN servers (at most [`MAX_ICE_SERVERS`] are handed out). Empty: the list is empty,
    /// which tells clients to use STUN only.
    pub turn_servers: Vec<TurnServer>,
    /// Lifetime of minted credentials (KVS: 300 s).
    pub credential_ttl: Duration,
}

impl Default for IceServerSettings {
    fn default() -> Self {
        IceServerSettings {
            turn_servers: Vec::new(),
            credential_ttl: Duration::from_secs(300),
        }
    }
}

/// One entry of `IceServerList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedIceServer {
    pub uris: Vec<String>,
    pub username: String,
    pub password: String,
    pub ttl: Duration,
}

/// Mints credentials for `name` valid from `now` for the configured TTL.
pub fn mint_turn_credentials(
    settings: &IceServerSettings,
    name: &str,
    now: SystemTime,
) -> Vec<MintedIceServer> {
    let ttl = settings.credential_ttl.max(MIN_TTL);
    let expiry = (now + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let username = format!("{expiry}:{name}");
    settings
        .turn_servers
        .iter()
        .filter(|s| !s.uris.is_empty())
        .take(MAX_ICE_SERVERS)
        .map(|s| MintedIceServer {
            uris: s.uris.iter().take(MAX_URIS_PER_SERVER).cloned().collect(),
            password: turn_password(&s.shared_secret, &username),
            username: username.clone(),
            ttl,
        })
        .collect()
}

/// `base64(HMAC-SHA1(secret, username))`, coturn's `use-auth-secret` password.
pub fn turn_password(shared_secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(shared_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_the_rfc2202_hmac_sha1_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = base64::engine::general_purpose::STANDARD
            .encode(hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
        assert_eq!(
            turn_password("Jefe", "what do ya want for nothing?"),
            expected
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn username_carries_the_expiry_and_limits_are_applied() {
        let settings = IceServerSettings {
            turn_servers: (0..7)
                .map(|i| TurnServer {
                    uris: (0..6)
                        .map(|u| format!("turn:10.0.0.{i}:{}", 3478 + u))
                        .collect(),
                    shared_secret: format!("s{i}"),
                })
                .collect(),
            credential_ttl: Duration::from_secs(300),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let list = mint_turn_credentials(&settings, "viewer-1", now);
        assert_eq!(list.len(), MAX_ICE_SERVERS);
        assert!(list.iter().all(|s| s.uris.len() == MAX_URIS_PER_SERVER));
        assert_eq!(list[0].username, "1700000300:viewer-1");
        assert_eq!(list[0].password, turn_password("s0", "1700000300:viewer-1"));
        assert_ne!(list[0].password, list[1].password);
        assert!(format!("{:?}", settings).contains("<redacted>"));
        assert!(!format!("{:?}", settings).contains("s0\""));
    }
}
