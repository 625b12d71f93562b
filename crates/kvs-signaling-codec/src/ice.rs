//! ICE server descriptions (STUN/TURN) handed from signaling to the peer connections.
//!
//! Owns: the [`IceServer`] value type. Must not touch: fetching servers (the signaling clients
//! do that) or using them (the peer layer does).

use std::fmt;
use std::time::Duration;

/// One STUN or TURN server, as KVS `GetIceServerConfig` returns it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:…`.
    pub urls: Vec<String>,
    pub username: Option<String>,
    /// The TURN password; never printed by `Debug`.
    pub credential: Option<String>,
    /// How long the credentials stay valid.
    pub ttl: Option<Duration>,
}

impl IceServer {
    /// A credential-less STUN server.
    pub fn stun(url: impl Into<String>) -> Self {
        IceServer {
            urls: vec![url.into()],
            ..Default::default()
        }
    }
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_credential() {
        let server = IceServer {
            urls: vec!["turn:127.0.0.1:3478".into()],
            username: Some("1700000000:user".into()),
            credential: Some("s3cret-pass".into()),
            ttl: Some(Duration::from_secs(300)),
        };
        let printed = format!("{server:?}");
        assert!(!printed.contains("s3cret-pass"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert!(printed.contains("1700000000:user"));
    }
}
