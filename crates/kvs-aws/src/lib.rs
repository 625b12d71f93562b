//! AWS plumbing for kvs-webrtc: SigV4 signing and verification, credential providers.
//!
//! Used by both sides: the device (client) signs KVS REST calls and presigns the signaling
//! WebSocket URL; the local KVS-compatible service verifies them. It therefore depends on no
//! other `kvs-*` crate.
//!
//! - [`credentials`]: [`Credentials`] and providers (static, environment, shared profile files,
//!   application callback, caching, chain); [`iot`]: the AWS IoT credentials provider (mutual TLS).
//! - [`sigv4`]: signing REST requests and presigning URLs (through the `aws-sigv4` crate).
//! - [`verify`]: server-side verification with typed errors worded like the real service.
//! - [`https`]: the small HTTP/1.1 + rustls client used for the control plane and IoT calls.
//! - [`skew`]: clock-offset correction from "Signature expired" answers.
//! - [`redact`]: masking secrets (tokens, signatures, secret keys, TURN passwords) in logs.

pub mod credentials;
pub mod https;
pub mod iot;
pub mod redact;
pub mod sigv4;
pub mod skew;
pub mod verify;

pub use credentials::{
    BoxFuture, CacheConfig, CachingProvider, CallbackCredentials, CallbackProvider, ChainProvider,
    Credentials, CredentialsError, CredentialsProvider, EnvProvider, ProfileProvider,
    StaticProvider, TimeSource,
};
pub use iot::{IotCredentialsConfig, IotCredentialsProvider};
pub use sigv4::{
    presign_url, sign_request, RequestToSign, SigningError, DEFAULT_PRESIGN_EXPIRES, KVS_SERVICE,
};
pub use skew::{clock_offset_from_response, ClockOffset};
pub use verify::{
    IncomingRequest, KeyLookup, KnownKey, StaticKeys, Verified, Verifier, VerifierConfig,
    VerifyError,
};
