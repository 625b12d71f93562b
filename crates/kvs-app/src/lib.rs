//! # Application framework
//!
//! The layer an integrator programs against: one [`DeviceConfig`] with smart defaults, a
//! [`Device`] that runs the state machine (signaling with reconnection and backoff, peer
//! sessions, capture threads), and an [`EventBus`] carrying the seed system's events.
//!
//! ```no_run
//! # #[cfg(feature = "embedded")] // `kvs_app::embedded` needs the `embedded` feature
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kvs_app::{DeviceConfig, embedded};
//! let config = DeviceConfig::default();            // embedded default: local signaling,
//! let running = embedded::start(config, None).await?; // test pattern + tone, 10 viewers
//! println!("open {}", running.page_url());
//! # Ok(()) }
//! ```
//!
//! It owns composition and policy (when to reconnect, what to do with a refused offer, echoing
//! data channels); it must not implement protocols (signaling codec, WebRTC, media formats)
//! itself — those live in the core crates it wires together.

pub mod abr;
pub mod backoff;
#[cfg(feature = "media")]
pub mod capture;
pub mod config;
pub mod control;
#[cfg(feature = "media")]
pub mod device;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod events;
#[cfg(feature = "rainmaker")]
pub mod rainmaker;
#[cfg(feature = "media")]
pub mod receive;
pub mod signaling;
#[cfg(feature = "media")]
pub mod sources;
pub mod split;
#[cfg(feature = "media")]
pub mod talkback;

pub use backoff::{Backoff, BackoffConfig};
pub use config::{
    AudioCodecChoice, AudioSourceConfig, CodecsConfig, ConfigError, CredentialsConfig,
    DeviceConfig, RainmakerConfig, ReceiveConfig, SessionConfig, SignalingConfig, SpeakerConfig,
    VideoSourceConfig,
};
pub use control::{Control, ControlError, DeviceControl};
#[cfg(feature = "media")]
pub use device::{Device, DeviceError, DeviceHandle, DeviceParts, DeviceState};
pub use events::{AppEvent, EventBus, EventKind};
