//! One configuration with smart defaults — the seed's "four lines of configuration".
//!
//! `DeviceConfig::default()` is the embedded default: a local KVS-compatible signaling service
//! on loopback, a 640x480 30 fps H.264 test pattern, a 48 kHz Opus tone, up to 10 viewers.
//! A TOML file changes what it names and nothing else; environment variables override the
//! file: `KVS_WEBRTC_<SECTION>__<KEY>=<value>` (for example `KVS_WEBRTC_SESSION__MAX_VIEWERS=3`
//! or `KVS_WEBRTC_VIDEO__SOURCE=h264-stdin`; nested tables take one more part, as in
//! `KVS_WEBRTC_SIGNALING__CREDENTIALS__SOURCE=env`), the value read as a TOML value when it
//! parses as one and as a string otherwise.

use crate::backoff::BackoffConfig;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of environment variables that override the configuration.
pub const ENV_PREFIX: &str = "KVS_WEBRTC_";

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("invalid environment override {name}: {message}")]
    Env { name: String, message: String },
}

/// Everything the device needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    pub signaling: SignalingConfig,
    pub video: VideoSourceConfig,
    pub audio: AudioSourceConfig,
    pub session: SessionConfig,
    pub nat: NatConfig,
    /// `[speaker]`: where viewers' talk-back audio is played.
    pub speaker: SpeakerConfig,
    /// `[codecs]`: which codecs the device sends.
    pub codecs: CodecsConfig,
    /// `[adaptive_bitrate]`: the encoder's target follows the viewers' congestion feedback.
    pub adaptive_bitrate: crate::abr::AdaptiveBitrateConfig,
    /// `[receive]`: viewers' camera (and microphone) recorded and/or shown.
    pub receive: ReceiveConfig,
    pub reconnect: BackoffConfig,
    /// Remote control as a RainMaker-compatible node (`[rainmaker]`; run by
    /// `kvs_app::rainmaker` with the `rainmaker` feature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rainmaker: Option<RainmakerConfig>,
}

/// The role alias RainMaker camera nodes use for KVS credentials.
pub const DEFAULT_ROLE_ALIAS: &str = "esp-videostream-v1-NodeRole";

/// `[rainmaker]`: the device as a RainMaker-compatible node over MQTT with mutual TLS
/// (docs/RAINMAKER.md).
///
/// With `credentials_endpoint` set and `signaling.mode = "kvs"`, KVS credentials come from the
/// AWS IoT credentials provider with this node's certificate and key, thing name = `node_id`,
/// role alias `role_alias` — `[signaling.credentials]` must then be left out (or `default`);
/// it is filled in as `source = "iot"` when the configuration is loaded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RainmakerConfig {
    /// `mqtts://host[:port]` (port 8883 when absent; 443 adds AWS IoT's `x-amzn-mqtt-ca` ALPN).
    pub broker: String,
    /// Node id: MQTT client id, topic part (`node/<node_id>/…`), IoT thing name.
    pub node_id: String,
    /// Device certificate (PEM, may hold a chain).
    pub cert_file: PathBuf,
    /// Device private key (PEM).
    pub key_file: PathBuf,
    /// CA to trust for the broker (PEM); the public web roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// AWS IoT basic ingest: `$aws/rules/<rule>` put in front of every published topic.
    #[serde(default)]
    pub basic_ingest_prefix: Option<String>,
    /// `Channel`'s value; `esp-v1-<node_id>` when absent.
    #[serde(default)]
    pub channel: Option<String>,
    /// `Name`'s value before any write; `Camera` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive", with = "duration_secs")]
    pub keep_alive: Duration,
    /// Reconnection to the broker: first delay, cap, connect timeout (seconds).
    #[serde(default = "default_mqtt_backoff")]
    pub reconnect: BackoffConfig,
    /// AWS IoT credentials endpoint for KVS credentials, e.g.
    /// `c1abcdef.credentials.iot.us-west-2.amazonaws.com`.
    #[serde(default)]
    pub credentials_endpoint: Option<String>,
    /// IoT role alias for KVS credentials.
    #[serde(default = "default_role_alias")]
    pub role_alias: String,
    /// CA to trust for the credentials endpoint; the public roots when absent.
    #[serde(default)]
    pub credentials_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RainmakerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: nothing here is secret, but keep the shape of CredentialsConfig's.
        f.debug_struct("RainmakerConfig")
            .field("broker", &self.broker)
            .field("node_id", &self.node_id)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("ca_file", &self.ca_file)
            .field("basic_ingest_prefix", &self.basic_ingest_prefix)
            .field("channel", &self.channel)
            .field("credentials_endpoint", &self.credentials_endpoint)
            .field("role_alias", &self.role_alias)
            .finish_non_exhaustive()
    }
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_mqtt_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(15),
    }
}

fn default_role_alias() -> String {
    DEFAULT_ROLE_ALIAS.to_owned()
}

/// 1–128 characters of `[A-Za-z0-9_.-]` (no MQTT wildcard or level separator).
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `$aws/rules/<rule>` with a rule name of 1–128 characters of `[A-Za-z0-9_]`.
pub fn is_valid_ingest_prefix(prefix: &str) -> bool {
    prefix.strip_prefix("$aws/rules/").is_some_and(|rule| {
        !rule.is_empty()
            && rule.len() <= 128
            && rule.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

impl RainmakerConfig {
    /// A node with the defaults for everything optional.
    pub fn new(
        broker: impl Into<String>,
        node_id: impl Into<String>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            broker: broker.into(),
            node_id: node_id.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            ca_file: None,
            basic_ingest_prefix: None,
            channel: None,
            name: None,
            keep_alive: default_keep_alive(),
            reconnect: default_mqtt_backoff(),
            credentials_endpoint: None,
            role_alias: default_role_alias(),
            credentials_ca_file: None,
        }
    }

    /// Host and port of `broker` (`mqtts://host[:port]`, IPv6 in brackets).
    pub fn broker_address(&self) -> Result<(String, u16), String> {
        let bad = || {
            format!(
                "rainmaker.broker must be mqtts://host[:port], got {:?}",
                self.broker
            )
        };
        let rest = self.broker.strip_prefix("mqtts://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad()),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(bad()),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => 8883,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host.to_owned(), port))
    }

    /// `Channel`'s value.
    pub fn channel_name(&self) -> String {
        self.channel
            .clone()
            .unwrap_or_else(|| format!("esp-v1-{}", self.node_id))
    }

    /// The IoT credentials provider settings for KVS (thing name = node id), when
    /// `credentials_endpoint` is set.
    pub fn iot_credentials(&self) -> Option<CredentialsConfig> {
        Some(CredentialsConfig::Iot {
            endpoint: self.credentials_endpoint.clone()?,
            role_alias: self.role_alias.clone(),
            thing_name: self.node_id.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ca_file: self.credentials_ca_file.clone(),
        })
    }

    fn validate(&self) -> Result<(), String> {
        self.broker_address()?;
        if !is_valid_node_id(&self.node_id) {
            return Err(format!(
                "rainmaker.node_id must be 1-128 characters of [A-Za-z0-9_.-], got {:?}",
                self.node_id
            ));
        }
        if let Some(prefix) = &self.basic_ingest_prefix {
            if !is_valid_ingest_prefix(prefix) {
                return Err(format!(
                    "rainmaker.basic_ingest_prefix must be $aws/rules/<rule name>, got {prefix:?}"
                ));
            }
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(format!("rainmaker.name must be 1-64 bytes, got {name:?}"));
            }
        }
        if let Some(channel) = &self.channel {
            if channel.is_empty() || channel.len() > 256 {
                return Err(format!(
                    "rainmaker.channel must be 1-256 bytes, got {channel:?}"
                ));
            }
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(1200)).contains(&self.keep_alive) {
            return Err(format!(
                "rainmaker.keep_alive must be 5..=1200 s, got {}",
                self.keep_alive.as_secs()
            ));
        }
        if self.reconnect.initial.is_zero() || self.reconnect.max < self.reconnect.initial {
            return Err("rainmaker.reconnect needs 1 <= initial <= max".into());
        }
        if self.role_alias.is_empty() || self.role_alias.contains(['/', '?', '#']) {
            return Err(format!(
                "rainmaker.role_alias is invalid: {:?}",
                self.role_alias
            ));
        }
        Ok(())
    }
}

/// Which signaling service the device uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SignalingConfig {
    /// Run a local KVS-compatible signaling service in this process (no AWS account needed).
    /// The device reaches it the way it reaches real KVS — REST control plane and WSS over
    /// TLS, every call SigV4-signed with a key made up at start-up — while the viewer page
    /// uses plain WebSocket on `listen` (loopback, no credentials in the page).
    Embedded {
        /// Signaling channel name.
        #[serde(default = "default_channel")]
        channel: String,
        /// Where the viewer page and its plain WebSocket listen. Port 0 picks a free port.
        #[serde(default = "default_listen")]
        listen: SocketAddr,
        /// Where the TLS endpoint (HTTPS control plane, WSS data plane) listens.
        #[serde(default = "default_tls_listen")]
        tls_listen: SocketAddr,
        /// Where the local CA and the channel list are kept; default
        /// `$XDG_DATA_HOME/kvs-webrtc/embedded` (or `~/.local/share/kvs-webrtc/embedded`).
        #[serde(default)]
        state_dir: Option<PathBuf>,
    },
    /// Amazon Kinesis Video Streams (or a service with its API, via `endpoint`).
    Kvs {
        /// Channel name, or its ARN (`arn:aws:kinesisvideo:…`).
        channel: String,
        /// AWS region, e.g. `us-west-2`.
        region: String,
        /// Control-plane endpoint override, e.g. `https://127.0.0.1:8443`.
        #[serde(default)]
        endpoint: Option<String>,
        /// Create the channel (by name) if it does not exist.
        #[serde(default = "yes")]
        create_channel: bool,
        /// Use the FIPS endpoints.
        #[serde(default)]
        fips: bool,
        /// Use the dual-stack (IPv4 + IPv6) endpoints.
        #[serde(default)]
        dual_stack: bool,
        /// Extra CA certificate(s) (PEM) to trust for the endpoints, e.g. a local service's.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Ask for TURN servers (GetIceServerConfig); off: STUN only.
        #[serde(default = "yes")]
        use_turn: bool,
        /// Where AWS credentials come from.
        #[serde(default)]
        credentials: CredentialsConfig,
    },
    /// Connect to a KVS-protocol WebSocket endpoint that needs no signing (e.g. a local
    /// service started on its own).
    Url {
        /// `ws://host:port/` of the data plane.
        url: String,
        /// The channel's ARN, sent as `X-Amz-ChannelARN`.
        channel_arn: String,
    },
}

fn default_channel() -> String {
    "kvs-webrtc-demo".to_owned()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn yes() -> bool {
    true
}

impl SignalingConfig {
    /// The embedded default on `listen`, other settings at their defaults.
    pub fn embedded(channel: impl Into<String>, listen: SocketAddr) -> Self {
        Self::Embedded {
            channel: channel.into(),
            listen,
            tls_listen: default_tls_listen(),
            state_dir: None,
        }
    }

    /// Amazon KVS in `region`, creating the channel when missing, credentials from the
    /// environment or profile files.
    pub fn kvs(channel: impl Into<String>, region: impl Into<String>) -> Self {
        Self::Kvs {
            channel: channel.into(),
            region: region.into(),
            endpoint: None,
            create_channel: true,
            fips: false,
            dual_stack: false,
            ca_file: None,
            use_turn: true,
            credentials: CredentialsConfig::Default,
        }
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self::Embedded {
            channel: default_channel(),
            listen: default_listen(),
            tls_listen: default_tls_listen(),
            state_dir: None,
        }
    }
}

/// Where AWS credentials come from (`[signaling.credentials]`, key `source`).
///
/// Prefer `default`, `env`, `profile` or `iot` to writing keys into a file; `static` exists
/// for tests and for keys handed over by other means (environment overrides such as
/// `KVS_WEBRTC_SIGNALING__CREDENTIALS__SECRET_ACCESS_KEY`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialsConfig {
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, then the shared
    /// `~/.aws/credentials` and `~/.aws/config` files (`AWS_PROFILE`).
    #[default]
    Default,
    /// Only the `AWS_*` environment variables.
    Env,
    /// Only the shared profile files.
    Profile {
        /// Profile name; `AWS_PROFILE` or `default` when absent.
        #[serde(default)]
        profile: Option<String>,
    },
    /// Fixed keys.
    Static {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        session_token: Option<String>,
    },
    /// The AWS IoT credentials provider (mutual TLS with the device certificate).
    Iot {
        /// e.g. `c1abcdef.credentials.iot.us-west-2.amazonaws.com`.
        endpoint: String,
        role_alias: String,
        thing_name: String,
        cert_file: PathBuf,
        key_file: PathBuf,
        /// CA to trust for the credentials endpoint; the public roots when absent.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("Default"),
            Self::Env => f.write_str("Env"),
            Self::Profile { profile } => {
                f.debug_struct("Profile").field("profile", profile).finish()
            }
            Self::Static {
                access_key_id,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            Self::Iot {
                endpoint,
                role_alias,
                thing_name,
                cert_file,
                key_file,
                ca_file,
            } => f
                .debug_struct("Iot")
                .field("endpoint", endpoint)
                .field("role_alias", role_alias)
                .field("thing_name", thing_name)
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .field("ca_file", ca_file)
                .finish(),
        }
    }
}

/// Where video comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VideoSourceConfig {
    /// A moving test pattern with a frame counter and clock, encoded with openh264.
    TestPattern {
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        #[serde(default = "default_video_bitrate")]
        bitrate_bps: u32,
        /// Frames between IDRs.
        #[serde(default = "default_gop")]
        gop: u32,
    },
    /// An Annex-B H.264 file, looped, paced at `fps`.
    H264File {
        path: PathBuf,
        #[serde(default = "default_fps")]
        fps: u32,
    },
    /// Annex-B H.264 read from standard input (`ffmpeg ... -f h264 - | kvs-webrtc ...`),
    /// sent as frames arrive. Timestamps come from arrival time unless `fps` is given (for
    /// producers that stamp nothing but write at a known rate).
    H264Stdin {
        #[serde(default)]
        fps: Option<u32>,
    },
    /// Raw I420 pictures of `width` x `height` from a shell command's stdout (any camera:
    /// `ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -`), taken at `fps` and
    /// encoded live like the test pattern (keyframes on request, bitrate changes).
    RawCommand {
        command: String,
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        #[serde(default = "default_video_bitrate")]
        bitrate_bps: u32,
        #[serde(default = "default_gop")]
        gop: u32,
        /// No complete picture/period for this long (ms) is an error (a stalled command).
        #[serde(default = "default_stall_timeout", with = "duration_millis")]
        stall_timeout: Duration,
        /// Start the command again when it exits or stalls (after `restart_delay` ms, doubled
        /// after each failure in a row up to `restart_max_delay` ms) instead of failing.
        #[serde(default)]
        restart: bool,
        #[serde(default = "default_restart_delay", with = "duration_millis")]
        restart_delay: Duration,
        #[serde(default = "default_restart_max_delay", with = "duration_millis")]
        restart_max_delay: Duration,
    },
    /// A VP8 IVF file, looped, paced by its own timestamps (IVF has a timebase).
    Vp8File { path: PathBuf },
    /// VP8 in IVF read from standard input (`ffmpeg ... -c:v libvpx -f ivf - | ...`), sent as
    /// frames arrive, stamped with their IVF timestamps.
    Vp8Stdin,
    /// An Annex-B H.265 file, looped, paced at `fps`.
    H265File {
        path: PathBuf,
        #[serde(default = "default_fps")]
        fps: u32,
    },
    /// Annex-B H.265 read from standard input, as `h264-stdin`.
    H265Stdin {
        #[serde(default)]
        fps: Option<u32>,
    },
    /// No video.
    None,
}

/// A raw-capture camera running `command`, everything else at its default.
pub fn raw_video_command(command: String) -> VideoSourceConfig {
    VideoSourceConfig::RawCommand {
        command,
        width: default_width(),
        height: default_height(),
        fps: default_fps(),
        bitrate_bps: default_video_bitrate(),
        gop: default_gop(),
        stall_timeout: default_stall_timeout(),
        restart: false,
        restart_delay: default_restart_delay(),
        restart_max_delay: default_restart_max_delay(),
    }
}

/// A raw-capture microphone running `command` (48 kHz mono), everything else at its default.
pub fn raw_audio_command(command: String) -> AudioSourceConfig {
    AudioSourceConfig::RawCommand {
        command,
        sample_rate: default_raw_audio_rate(),
        channels: default_raw_audio_channels(),
        stall_timeout: default_stall_timeout(),
        restart: false,
        restart_delay: default_restart_delay(),
        restart_max_delay: default_restart_max_delay(),
    }
}

impl DeviceConfig {
    /// The `restart` and `stall_timeout` fields of the raw-capture sources configured (for
    /// options that apply to both).
    pub fn raw_command_runs(&mut self) -> Vec<(&mut bool, &mut Duration)> {
        let mut runs = Vec::new();
        if let VideoSourceConfig::RawCommand {
            restart,
            stall_timeout,
            ..
        } = &mut self.video
        {
            runs.push((restart, stall_timeout));
        }
        if let AudioSourceConfig::RawCommand {
            restart,
            stall_timeout,
            ..
        } = &mut self.audio
        {
            runs.push((restart, stall_timeout));
        }
        runs
    }
}

/// The checks on a live encoder's rate, bitrate and GOP (`[video]`).
fn validate_encoding(fps: u32, bitrate_bps: u32, gop: u32) -> Result<(), String> {
    if !(1..=120).contains(&fps) {
        return Err(format!("video.fps must be 1..=120, got {fps}"));
    }
    if !(50_000..=50_000_000).contains(&bitrate_bps) {
        return Err(format!(
            "video.bitrate_bps must be 50000..=50000000, got {bitrate_bps}"
        ));
    }
    if gop == 0 {
        return Err("video.gop must be at least 1".into());
    }
    Ok(())
}

/// The checks on a raw-capture command's stall timeout and restart delays.
fn validate_raw_run(
    section: &str,
    stall_timeout: Duration,
    restart_delay: Duration,
    restart_max_delay: Duration,
) -> Result<(), String> {
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&stall_timeout) {
        return Err(format!("{section}.stall_timeout must be 100..=600000 ms"));
    }
    if restart_delay.is_zero() || restart_max_delay < restart_delay {
        return Err(format!(
            "{section}.restart_delay must be above 0 and at most {section}.restart_max_delay"
        ));
    }
    if restart_max_delay > Duration::from_secs(3600) {
        return Err(format!(
            "{section}.restart_max_delay must be at most 3600000 ms"
        ));
    }
    Ok(())
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_restart_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_restart_max_delay() -> Duration {
    Duration::from_secs(10)
}
fn default_raw_audio_rate() -> u32 {
    48_000
}
fn default_raw_audio_channels() -> u16 {
    1
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    30
}
fn default_video_bitrate() -> u32 {
    1_000_000
}
fn default_gop() -> u32 {
    30
}

impl Default for VideoSourceConfig {
    fn default() -> Self {
        Self::TestPattern {
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            bitrate_bps: default_video_bitrate(),
            gop: default_gop(),
        }
    }
}

impl VideoSourceConfig {
    /// The bitrate to size resend buffers for.
    pub fn nominal_bitrate_bps(&self) -> u32 {
        match self {
            Self::TestPattern { bitrate_bps, .. } | Self::RawCommand { bitrate_bps, .. } => {
                *bitrate_bps
            }
            // Unknown for files and pipes: assume the seed encoder's upper default.
            _ => 2_000_000,
        }
    }
}

/// Where audio comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AudioSourceConfig {
    /// A 48 kHz mono tone, Opus 64 kbit/s.
    #[default]
    Tone,
    /// An Ogg/Opus file, looped, paced by its timestamps.
    OggOpus { path: PathBuf },
    /// Interleaved S16LE PCM at `sample_rate` with `channels` from a shell command's stdout
    /// (`arecord -f S16_LE -r 48000 -c 1 -t raw`), mixed down to mono, brought to 48 kHz and
    /// encoded like the tone (`[codecs] audio`).
    RawCommand {
        command: String,
        #[serde(default = "default_raw_audio_rate")]
        sample_rate: u32,
        #[serde(default = "default_raw_audio_channels")]
        channels: u16,
        /// No complete picture/period for this long (ms) is an error (a stalled command).
        #[serde(default = "default_stall_timeout", with = "duration_millis")]
        stall_timeout: Duration,
        /// Start the command again when it exits or stalls (after `restart_delay` ms, doubled
        /// after each failure in a row up to `restart_max_delay` ms) instead of failing.
        #[serde(default)]
        restart: bool,
        #[serde(default = "default_restart_delay", with = "duration_millis")]
        restart_delay: Duration,
        #[serde(default = "default_restart_max_delay", with = "duration_millis")]
        restart_max_delay: Duration,
    },
    /// No audio.
    None,
}

/// Viewer sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Concurrent viewers; offers beyond are refused with a reason (KVS allows 10 per channel).
    pub max_viewers: usize,
    /// Addresses to offer host candidates on; empty means every usable interface.
    pub media_bind: Vec<IpAddr>,
    /// Open a data channel and echo what viewers send on it.
    pub data_channel_echo: bool,
    /// How much sent video to keep for retransmission (sized with the bitrate, not a count).
    /// 250 ms answers NACKs on paths with round trips up to ~200 ms; each viewer pays ~430
    /// bytes per packet kept (the payloads themselves are shared by all viewers).
    #[serde(with = "duration_millis")]
    pub resend_window: Duration,
    /// Take the media UDP port from this inclusive range (`[first, last]`); none = any free
    /// port. Split mode's media side uses it when it shares one IP with the signaling side.
    pub udp_port_range: Option<(u16, u16)>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_viewers: 10,
            media_bind: Vec::new(),
            data_channel_echo: true,
            resend_window: Duration::from_millis(250),
            udp_port_range: None,
        }
    }
}

/// `[speaker]`: talk-back. A viewer that sends audio (the viewer page's push-to-talk) is
/// decoded (Opus, PCMU, PCMA) and played here as 48 kHz mono S16LE. One viewer is heard at a
/// time: the first to talk holds the floor until silent for `floor_hold`. Neither set: viewers'
/// audio is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeakerConfig {
    /// Write a WAV file (created at start; from the first talk-back packet on it is a
    /// continuous wall-clock recording, silence when nobody talks).
    pub wav: Option<PathBuf>,
    /// Run this shell command and feed it PCM on stdin (`aplay -f S16_LE -r 48000`).
    pub command: Option<String>,
    /// Play on this sound card output device (`"default"` or a name as the host lists it);
    /// needs the `sound-card` cargo feature.
    pub device: Option<String>,
    /// The floor is released after its holder has been silent this long.
    #[serde(with = "duration_millis")]
    pub floor_hold: Duration,
    /// Most talk-back audio buffered (jitter buffer), in time.
    #[serde(with = "duration_millis")]
    pub max_buffer: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            wav: None,
            command: None,
            device: None,
            floor_hold: Duration::from_secs(1),
            max_buffer: Duration::from_millis(200),
        }
    }
}

impl SpeakerConfig {
    /// A speaker is configured.
    pub fn enabled(&self) -> bool {
        self.wav.is_some() || self.command.is_some()
    }
}

/// `[receive]`: video *from* viewers (the viewer page's "send my camera"). With either set,
/// the device takes viewers' video (H.264) and audio: `record_dir` writes one MP4 file per
/// session (H.264 as received + Opus), `video_player_cmd` decodes the video (one viewer at a
/// time: the first that sends) and feeds raw I420 to a command. Neither set: viewers' video is
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiveConfig {
    /// Directory for recordings, `<UTC time>-<peer id>.mp4` (created if missing).
    pub record_dir: Option<PathBuf>,
    /// Largest recording file; the rest of a longer session is not recorded.
    pub record_max_bytes: u64,
    /// Shell command fed decoded I420 frames on stdin; `{width}` and `{height}` are replaced
    /// by the picture size (it is started again when the size changes), e.g.
    /// `ffplay -f rawvideo -pixel_format yuv420p -video_size {width}x{height} -`.
    pub video_player_cmd: Option<String>,
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        Self {
            record_dir: None,
            record_max_bytes: 1 << 30,
            video_player_cmd: None,
        }
    }
}

impl ReceiveConfig {
    /// Viewers' media is taken (recorded or shown).
    pub fn enabled(&self) -> bool {
        self.record_dir.is_some() || self.video_player_cmd.is_some()
    }
}

/// `[codecs]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecsConfig {
    /// `auto` (the tone in Opus, PCMU and PCMA: each viewer gets the first of these it
    /// offers), or one codec for sending and receiving (`opus`, `pcmu`, `pcma`).
    pub audio: AudioCodecChoice,
}

/// See [`CodecsConfig::audio`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodecChoice {
    #[default]
    Auto,
    Opus,
    Pcmu,
    Pcma,
}

impl std::str::FromStr for AudioCodecChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "opus" => Ok(Self::Opus),
            "pcmu" => Ok(Self::Pcmu),
            "pcma" => Ok(Self::Pcma),
            _ => Err(format!(
                "unknown audio codec {s:?} (auto, opus, pcmu, pcma)"
            )),
        }
    }
}

/// `[nat]`: how the device gets through NATs (README, "Behind NAT").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// STUN servers of our own (`stun:host[:port]`) for server-reflexive candidates, besides
    /// the ones signaling gives (KVS: the region's STUN server; the UDP TURN servers answer
    /// STUN too).
    pub stun_urls: Vec<String>,
    /// Allocate relayed candidates on the TURN servers KVS hands out (`signaling.use_turn`
    /// decides whether KVS is asked for them).
    pub use_turn: bool,
    /// Offer relayed candidates only (ICE transport policy "relay"): viewers never learn the
    /// device's own addresses, and media always crosses the TURN server.
    pub relay_only: bool,
    /// Most TURN allocations at once; they are shared by every viewer (one per TURN URI).
    pub max_turn_allocations: usize,
    /// Restart ICE from the device when nothing has come from a viewer for this long, or its
    /// ICE reports the path lost (a new offer with new ICE credentials, sent to the viewer);
    /// 0 = leave it to the viewer.
    #[serde(with = "duration_millis")]
    pub ice_restart_after: Duration,
    /// Extra CA certificate(s) (PEM) to trust for `turns:` servers, besides the public roots.
    pub turn_ca_file: Option<PathBuf>,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            use_turn: true,
            relay_only: false,
            max_turn_allocations: 6,
            ice_restart_after: Duration::from_millis(2000),
            turn_ca_file: None,
        }
    }
}

impl DeviceConfig {
    /// Parse a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: None,
                    message: e.to_string(),
                })?;
        Self::from_table(table, None)
    }

    /// Load the file if given (defaults otherwise), then apply `KVS_WEBRTC_*` overrides from
    /// `vars` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        path: Some(p.to_owned()),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut table, vars)?;
        Self::from_table(table, path.map(Path::to_owned))
    }

    fn from_table(table: toml::Table, path: Option<PathBuf>) -> Result<Self, ConfigError> {
        let mut config: Self =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        config
            .use_rainmaker_credentials()
            .and_then(|()| config.validate())
            .map_err(|message| ConfigError::Invalid { path, message })?;
        Ok(config)
    }

    /// With `[rainmaker].credentials_endpoint` and `signaling.mode = "kvs"`: KVS credentials
    /// from the IoT credentials provider with the node's certificate (thing name = node id).
    /// `[signaling.credentials]` must be left at `default` (or already name the same provider).
    /// Called when a configuration is loaded; call it after building one in code.
    pub fn use_rainmaker_credentials(&mut self) -> Result<(), String> {
        let Some(iot) = self
            .rainmaker
            .as_ref()
            .and_then(RainmakerConfig::iot_credentials)
        else {
            return Ok(());
        };
        match &mut self.signaling {
            SignalingConfig::Kvs { credentials, .. } => {
                if *credentials == CredentialsConfig::Default {
                    *credentials = iot;
                } else if *credentials != iot {
                    return Err("rainmaker.credentials_endpoint and signaling.credentials both name where KVS credentials come from: keep one".into());
                }
                Ok(())
            }
            _ => Err(
                "rainmaker.credentials_endpoint is for signaling.mode = \"kvs\" (KVS credentials)"
                    .into(),
            ),
        }
    }

    /// Reject values that cannot work, with a message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.session.max_viewers == 0 || self.session.max_viewers > 100 {
            return Err(format!(
                "session.max_viewers must be 1..=100, got {}",
                self.session.max_viewers
            ));
        }
        if self.receive.record_max_bytes < 64 * 1024 {
            return Err("receive.record_max_bytes must be at least 65536".into());
        }
        let speakers = [
            self.speaker.wav.is_some(),
            self.speaker.command.is_some(),
            self.speaker.device.is_some(),
        ];
        if speakers.iter().filter(|s| **s).count() > 1 {
            return Err(
                "speaker.wav, speaker.command and speaker.device: choose one speaker".into(),
            );
        }
        if self.speaker.floor_hold.is_zero() || self.speaker.floor_hold > Duration::from_secs(60) {
            return Err("speaker.floor_hold must be 1..=60000 ms".into());
        }
        if !(Duration::from_millis(40)..=Duration::from_secs(2)).contains(&self.speaker.max_buffer)
        {
            return Err("speaker.max_buffer must be 40..=2000 ms".into());
        }
        if matches!(self.audio, AudioSourceConfig::OggOpus { .. })
            && matches!(
                self.codecs.audio,
                AudioCodecChoice::Pcmu | AudioCodecChoice::Pcma
            )
        {
            return Err("codecs.audio: an Ogg/Opus file source sends Opus only".into());
        }
        if self.nat.relay_only && !self.nat.use_turn {
            return Err(
                "nat.relay_only needs nat.use_turn: relayed candidates come from TURN".into(),
            );
        }
        if !(1..=20).contains(&self.nat.max_turn_allocations) {
            return Err(format!(
                "nat.max_turn_allocations must be 1..=20, got {}",
                self.nat.max_turn_allocations
            ));
        }
        #[cfg(feature = "media")]
        for url in &self.nat.stun_urls {
            match kvs_peer::nat::IceUri::parse(url) {
                Ok(u) if u.kind == kvs_peer::nat::ServerKind::Stun => {}
                Ok(_) => return Err(format!("nat.stun_urls: {url} is not a stun: URI")),
                Err(e) => return Err(format!("nat.stun_urls: {e}")),
            }
        }
        if let Some((first, last)) = self.session.udp_port_range {
            if first == 0 || first > last {
                return Err(format!(
                    "session.udp_port_range must be [first, last] with 1 <= first <= last, got [{first}, {last}]"
                ));
            }
        }
        if let VideoSourceConfig::TestPattern {
            width,
            height,
            fps,
            bitrate_bps,
            gop,
        } = &self.video
        {
            if *width == 0
                || *height == 0
                || width % 2 != 0
                || height % 2 != 0
                || *width > 4096
                || *height > 4096
            {
                return Err(format!(
                    "video width/height must be even and 2..=4096, got {width}x{height}"
                ));
            }
            validate_encoding(*fps, *bitrate_bps, *gop)?;
        }
        if let VideoSourceConfig::RawCommand {
            command,
            width,
            height,
            fps,
            bitrate_bps,
            gop,
            stall_timeout,
            restart_delay,
            restart_max_delay,
            ..
        } = &self.video
        {
            if command.trim().is_empty() {
                return Err("video.command must not be empty".into());
            }
            if width % 2 != 0
                || height % 2 != 0
                || !(16..=3840).contains(width)
                || !(16..=2160).contains(height)
            {
                return Err(format!(
                    "video width/height of a raw command must be even and 16x16..=3840x2160, got {width}x{height}"
                ));
            }
            validate_encoding(*fps, *bitrate_bps, *gop)?;
            validate_raw_run("video", *stall_timeout, *restart_delay, *restart_max_delay)?;
        }
        if let AudioSourceConfig::RawCommand {
            command,
            sample_rate,
            channels,
            stall_timeout,
            restart_delay,
            restart_max_delay,
            ..
        } = &self.audio
        {
            if command.trim().is_empty() {
                return Err("audio.command must not be empty".into());
            }
            if !(8_000..=192_000).contains(sample_rate) || sample_rate % 50 != 0 {
                return Err(format!(
                    "audio.sample_rate must be 8000..=192000 and a multiple of 50, got {sample_rate}"
                ));
            }
            if !(1..=8).contains(channels) {
                return Err(format!("audio.channels must be 1..=8, got {channels}"));
            }
            validate_raw_run("audio", *stall_timeout, *restart_delay, *restart_max_delay)?;
        }
        let stream_fps = match &self.video {
            VideoSourceConfig::H264File { fps, .. } | VideoSourceConfig::H265File { fps, .. } => {
                Some(*fps)
            }
            VideoSourceConfig::H264Stdin { fps } | VideoSourceConfig::H265Stdin { fps } => *fps,
            _ => None,
        };
        if let Some(fps) = stream_fps {
            if !(1..=120).contains(&fps) {
                return Err(format!("video.fps must be 1..=120, got {fps}"));
            }
        }
        let channel_name = match &self.signaling {
            SignalingConfig::Embedded { channel, .. } => Some(channel),
            SignalingConfig::Kvs {
                channel, region, ..
            } => {
                if !kvs_signaling::kvs::api::is_valid_region(region) {
                    return Err(format!(
                        "signaling.region must be an AWS region such as us-west-2, got {region:?}"
                    ));
                }
                // An ARN is checked by the client; a name must be a valid channel name.
                (!channel.starts_with("arn:")).then_some(channel)
            }
            SignalingConfig::Url { .. } => None,
        };
        if let Some(channel) = channel_name {
            let ok = !channel.is_empty()
                && channel.len() <= 256
                && channel
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(format!(
                    "signaling.channel must be 1-256 characters of [a-zA-Z0-9_.-], got {channel:?}"
                ));
            }
        }
        self.adaptive_bitrate.validate()?;
        if self.session.resend_window > Duration::from_secs(10) {
            return Err("session.resend_window must be at most 10 s".into());
        }
        if let Some(rainmaker) = &self.rainmaker {
            rainmaker.validate()?;
        }
        Ok(())
    }
}

/// Apply `KVS_WEBRTC_<SECTION>__<KEY>` variables to a TOML table.
fn apply_env_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.len() < 2 || path.len() > 4 || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                name,
                message: "expected KVS_WEBRTC_<SECTION>__<KEY> (or <SECTION>__<TABLE>__<KEY>)"
                    .into(),
            });
        }
        // A value that parses as TOML keeps its type (numbers, booleans, arrays); anything else
        // is a string, so paths and URLs need no quoting.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let (key, tables) = path.split_last().expect("at least two parts");
        let mut current = &mut *table;
        for part in tables {
            let entry = current
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(next) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    name,
                    message: format!("{part} is not a section"),
                });
            };
            current = next;
        }
        current.insert(key.clone(), value);
    }
    Ok(())
}

/// Serde helper: a `Duration` as whole seconds.
pub mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Serde helper: a `Duration` as milliseconds.
pub mod duration_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_input_is_the_embedded_default() {
        let c = DeviceConfig::load(None, env(&[])).unwrap();
        assert_eq!(c, DeviceConfig::default());
        assert!(matches!(c.signaling, SignalingConfig::Embedded { .. }));
        assert!(matches!(
            c.video,
            VideoSourceConfig::TestPattern {
                width: 640,
                height: 480,
                fps: 30,
                ..
            }
        ));
        assert_eq!(c.session.max_viewers, 10);
    }

    #[test]
    fn toml_changes_only_what_it_names() {
        let c = DeviceConfig::from_toml_str(
            "[session]\nmax_viewers = 3\n[video]\nsource = \"h264-file\"\npath = \"/tmp/a.h264\"\n",
        )
        .unwrap();
        assert_eq!(c.session.max_viewers, 3);
        assert!(c.session.data_channel_echo);
        assert_eq!(
            c.video,
            VideoSourceConfig::H264File {
                path: "/tmp/a.h264".into(),
                fps: 30
            }
        );
        assert_eq!(c.audio, AudioSourceConfig::Tone);
    }

    #[test]
    fn env_overrides_file_values_with_types() {
        let dir = std::env::temp_dir().join(format!("kvs-app-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("device.toml");
        std::fs::write(&file, "[session]\nmax_viewers = 3\n").unwrap();
        let c = DeviceConfig::load(
            Some(&file),
            env(&[
                ("KVS_WEBRTC_SESSION__MAX_VIEWERS", "7"),
                ("KVS_WEBRTC_AUDIO__SOURCE", "none"),
                ("KVS_WEBRTC_SESSION__MEDIA_BIND", "[\"127.0.0.1\"]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.session.max_viewers, 7);
        assert_eq!(c.audio, AudioSourceConfig::None);
        assert_eq!(c.session.media_bind, vec![IpAddr::from([127, 0, 0, 1])]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        let e = DeviceConfig::from_toml_str("[session]\nmax_viewers = 0\n").unwrap_err();
        assert!(e.to_string().contains("max_viewers"), "{e}");
        let e = DeviceConfig::from_toml_str("[session]\nmax_viewer = 2\n").unwrap_err();
        assert!(e.to_string().contains("max_viewer"), "{e}");
        let e = DeviceConfig::from_toml_str("[video]\nsource = \"webcam\"\n").unwrap_err();
        assert!(e.to_string().contains("webcam"), "{e}");
        let e = DeviceConfig::from_toml_str("not toml [").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }));
        let e = DeviceConfig::load(None, env(&[("KVS_WEBRTC_MAX_VIEWERS", "2")])).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }), "{e}");
        let e = DeviceConfig::load(Some(Path::new("/nonexistent/kvs.toml")), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn kvs_mode_from_toml_and_nested_env_overrides_with_secrets_kept_out_of_debug() {
        let c = DeviceConfig::load(
            None,
            env(&[
                ("KVS_WEBRTC_SIGNALING__MODE", "kvs"),
                ("KVS_WEBRTC_SIGNALING__CHANNEL", "front-door"),
                ("KVS_WEBRTC_SIGNALING__REGION", "eu-west-1"),
                ("KVS_WEBRTC_SIGNALING__CREDENTIALS__SOURCE", "static"),
                (
                    "KVS_WEBRTC_SIGNALING__CREDENTIALS__ACCESS_KEY_ID",
                    "AKIDEXAMPLE",
                ),
                (
                    "KVS_WEBRTC_SIGNALING__CREDENTIALS__SECRET_ACCESS_KEY",
                    "wJalr-very-secret",
                ),
            ]),
        )
        .unwrap();
        let SignalingConfig::Kvs {
            channel,
            region,
            create_channel,
            use_turn,
            credentials,
            ..
        } = &c.signaling
        else {
            panic!("not kvs: {:?}", c.signaling);
        };
        assert_eq!(
            (channel.as_str(), region.as_str()),
            ("front-door", "eu-west-1")
        );
        assert!(*create_channel && *use_turn);
        assert!(matches!(credentials, CredentialsConfig::Static { .. }));
        let printed = format!("{c:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("wJalr-very-secret"), "{printed}");

        let c = DeviceConfig::from_toml_str(
            "[signaling]\nmode = \"kvs\"\nchannel = \"arn:aws:kinesisvideo:us-east-1:111122223333:channel/cam/1\"\nregion = \"us-east-1\"\nfips = true\n[signaling.credentials]\nsource = \"profile\"\nprofile = \"camera\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.signaling,
            SignalingConfig::Kvs { fips: true, credentials: CredentialsConfig::Profile { profile: Some(ref p) }, .. } if p == "camera"
        ));
        for bad in [
            "[signaling]\nmode = \"kvs\"\nchannel = \"cam\"\nregion = \"Mars 1\"\n",
            "[signaling]\nmode = \"kvs\"\nchannel = \"bad name!\"\nregion = \"us-east-1\"\n",
            "[signaling]\nmode = \"kvs\"\nregion = \"us-east-1\"\n",
            "[signaling]\nmode = \"kvs\"\nchannel = \"c\"\nregion = \"us-east-1\"\n[signaling.credentials]\nsource = \"iot\"\n",
        ] {
            let e = DeviceConfig::from_toml_str(bad).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn rainmaker_section_defaults_validation_and_iot_credentials() {
        let c = DeviceConfig::from_toml_str(
            "[rainmaker]\nbroker = \"mqtts://a1.iot.us-west-2.amazonaws.com\"\nnode_id = \"N1\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
        )
        .unwrap();
        let r = c.rainmaker.as_ref().unwrap();
        assert_eq!(
            r.broker_address().unwrap(),
            ("a1.iot.us-west-2.amazonaws.com".into(), 8883)
        );
        assert_eq!(r.keep_alive, Duration::from_secs(30));
        assert_eq!(r.reconnect.initial, Duration::from_secs(1));
        assert_eq!(r.role_alias, DEFAULT_ROLE_ALIAS);
        assert_eq!(r.channel_name(), "esp-v1-N1");
        assert_eq!(r.iot_credentials(), None);
        // The embedded default stays: no credentials endpoint, nothing rewired.
        assert!(matches!(c.signaling, SignalingConfig::Embedded { .. }));

        let mut r2 = r.clone();
        for (broker, expect) in [
            ("mqtts://127.0.0.1:18883", Some(("127.0.0.1", 18883))),
            ("mqtts://[::1]:1", Some(("::1", 1))),
            ("mqtts://h/", Some(("h", 8883))),
            ("mqtt://h:1883", None),
            ("mqtts://", None),
            ("mqtts://h:0", None),
            ("mqtts://h:x", None),
            ("mqtts://h/path", None),
            ("h:8883", None),
        ] {
            r2.broker = broker.into();
            assert_eq!(
                r2.broker_address().ok(),
                expect.map(|(h, p)| (h.to_owned(), p)),
                "{broker}"
            );
        }

        // With a credentials endpoint and KVS mode, KVS credentials come from the IoT provider.
        let kvs = "[signaling]\nmode = \"kvs\"\nchannel = \"esp-v1-N1\"\nregion = \"us-west-2\"\n";
        let rm = "[rainmaker]\nbroker = \"mqtts://b\"\nnode_id = \"N1\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\ncredentials_endpoint = \"c1.credentials.iot.us-west-2.amazonaws.com\"\n";
        let c = DeviceConfig::from_toml_str(&format!("{kvs}{rm}")).unwrap();
        let SignalingConfig::Kvs { credentials, .. } = &c.signaling else {
            panic!()
        };
        assert_eq!(
            credentials,
            &CredentialsConfig::Iot {
                endpoint: "c1.credentials.iot.us-west-2.amazonaws.com".into(),
                role_alias: DEFAULT_ROLE_ALIAS.into(),
                thing_name: "N1".into(),
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into(),
                ca_file: None,
            }
        );
        // Two sources named: an error; a credentials endpoint without KVS: an error.
        let both = format!("{kvs}[signaling.credentials]\nsource = \"env\"\n{rm}");
        let e = DeviceConfig::from_toml_str(&both).unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
        let e = DeviceConfig::from_toml_str(rm).unwrap_err();
        assert!(e.to_string().contains("credentials_endpoint"), "{e}");

        let base = "[rainmaker]\nbroker = \"mqtts://b\"\ncert_file = \"/c\"\nkey_file = \"/k\"\n";
        for (extra, field) in [
            ("node_id = \"a/b\"\n", "node_id"),
            ("node_id = \"\"\n", "node_id"),
            (
                "node_id = \"n\"\nbasic_ingest_prefix = \"rules/x\"\n",
                "basic_ingest_prefix",
            ),
            ("node_id = \"n\"\nkeep_alive = 1\n", "keep_alive"),
            ("node_id = \"n\"\nname = \"\"\n", "name"),
            ("node_id = \"n\"\nbogus = 1\n", "bogus"),
        ] {
            let e = DeviceConfig::from_toml_str(&format!("{base}{extra}")).unwrap_err();
            assert!(e.to_string().contains(field), "{extra}: {e}");
        }
        let c = DeviceConfig::from_toml_str(&format!(
            "{base}node_id = \"n\"\nbasic_ingest_prefix = \"$aws/rules/esp_node\"\n"
        ))
        .unwrap();
        assert!(c.rainmaker.is_some());
        // Environment overrides reach the section too.
        let c = DeviceConfig::load(
            None,
            env(&[
                ("KVS_WEBRTC_RAINMAKER__BROKER", "mqtts://127.0.0.1:8883"),
                ("KVS_WEBRTC_RAINMAKER__NODE_ID", "envnode"),
                ("KVS_WEBRTC_RAINMAKER__CERT_FILE", "/c"),
                ("KVS_WEBRTC_RAINMAKER__KEY_FILE", "/k"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rainmaker.unwrap().node_id, "envnode");
    }

    #[test]
    fn speaker_and_codecs_sections() {
        let c = DeviceConfig::default();
        assert!(!c.speaker.enabled());
        assert_eq!(c.codecs.audio, AudioCodecChoice::Auto);
        assert_eq!(c.speaker.floor_hold, Duration::from_secs(1));
        assert_eq!(c.speaker.max_buffer, Duration::from_millis(200));
        let c = DeviceConfig::from_toml_str(
            "[speaker]\nwav = \"talk.wav\"\nfloor_hold = 1500\n[codecs]\naudio = \"pcmu\"\n",
        )
        .unwrap();
        assert_eq!(c.speaker.wav.as_deref(), Some(Path::new("talk.wav")));
        assert_eq!(c.speaker.floor_hold, Duration::from_millis(1500));
        assert_eq!(c.codecs.audio, AudioCodecChoice::Pcmu);
        let c = DeviceConfig::load(None, env(&[("KVS_WEBRTC_CODECS__AUDIO", "pcma")])).unwrap();
        assert_eq!(c.codecs.audio, AudioCodecChoice::Pcma);
        for (bad, says) in [
            (
                "[speaker]\nwav = \"a.wav\"\ncommand = \"aplay\"\n",
                "choose one",
            ),
            ("[speaker]\nmax_buffer = 10\n", "max_buffer"),
            ("[codecs]\naudio = \"g729\"\n", "unknown variant"),
            (
                "[audio]\nsource = \"ogg-opus\"\npath = \"x.opus\"\n[codecs]\naudio = \"pcma\"\n",
                "Opus only",
            ),
        ] {
            let e = DeviceConfig::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            "PCMU".parse::<AudioCodecChoice>(),
            Ok(AudioCodecChoice::Pcmu)
        );
        assert!("g729".parse::<AudioCodecChoice>().is_err());
    }

    #[test]
    fn raw_command_sources_take_defaults_env_overrides_and_are_checked() {
        let toml = r#"
            [video]
            source = "raw-command"
            command = "ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -"
            width = 320
            height = 240
            fps = 15
            [audio]
            source = "raw-command"
            command = "arecord -f S16_LE -r 44100 -c 2 -t raw"
            sample_rate = 44100
            channels = 2
            restart = true
        "#;
        let path = std::env::temp_dir().join(format!("raw-config-{}.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        let c = DeviceConfig::load(
            Some(&path),
            env(&[
                ("KVS_WEBRTC_VIDEO__RESTART", "true"),
                ("KVS_WEBRTC_VIDEO__STALL_TIMEOUT", "2000"),
            ]),
        )
        .unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            c.video,
            VideoSourceConfig::RawCommand {
                command: "ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -".into(),
                width: 320,
                height: 240,
                fps: 15,
                bitrate_bps: 1_000_000,
                gop: 30,
                stall_timeout: Duration::from_secs(2),
                restart: true,
                restart_delay: Duration::from_millis(500),
                restart_max_delay: Duration::from_secs(10),
            }
        );
        assert_eq!(c.video.nominal_bitrate_bps(), 1_000_000);
        assert_eq!(
            c.audio,
            AudioSourceConfig::RawCommand {
                command: "arecord -f S16_LE -r 44100 -c 2 -t raw".into(),
                sample_rate: 44_100,
                channels: 2,
                stall_timeout: Duration::from_secs(5),
                restart: true,
                restart_delay: Duration::from_millis(500),
                restart_max_delay: Duration::from_secs(10),
            }
        );
        for (bad, field) in [
            (
                "[video]\nsource = \"raw-command\"\ncommand = \"x\"\nwidth = 321",
                "width",
            ),
            (
                "[video]\nsource = \"raw-command\"\ncommand = \" \"",
                "video.command",
            ),
            (
                "[video]\nsource = \"raw-command\"\ncommand = \"x\"\nstall_timeout = 0",
                "video.stall_timeout",
            ),
            (
                "[audio]\nsource = \"raw-command\"\ncommand = \"x\"\nsample_rate = 44110",
                "audio.sample_rate",
            ),
            (
                "[audio]\nsource = \"raw-command\"\ncommand = \"x\"\nchannels = 0",
                "audio.channels",
            ),
            (
                "[audio]\nsource = \"raw-command\"\ncommand = \"x\"\nrestart_delay = 20000",
                "audio.restart_delay",
            ),
            (
                "[video]\nsource = \"raw-command\"\ncommand = \"x\"\nrestrat = true",
                "unknown field",
            ),
        ] {
            let e = DeviceConfig::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        assert!(
            DeviceConfig::from_toml_str("[video]\nsource = \"raw-command\"").is_err(),
            "the command is required"
        );
    }

    #[test]
    fn vp8_and_h265_sources() {
        let video = |t: &str| {
            DeviceConfig::from_toml_str(&format!("[video]\n{t}\n"))
                .map(|c| c.video)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            video("source = \"vp8-file\"\npath = \"a.ivf\"").unwrap(),
            VideoSourceConfig::Vp8File {
                path: "a.ivf".into()
            }
        );
        assert_eq!(
            video("source = \"vp8-stdin\"").unwrap(),
            VideoSourceConfig::Vp8Stdin
        );
        assert_eq!(
            video("source = \"h265-file\"\npath = \"a.h265\"\nfps = 15").unwrap(),
            VideoSourceConfig::H265File {
                path: "a.h265".into(),
                fps: 15
            }
        );
        assert_eq!(
            video("source = \"h265-stdin\"").unwrap(),
            VideoSourceConfig::H265Stdin { fps: None }
        );
        // IVF has its own timing: no fps for a VP8 file.
        assert!(video("source = \"vp8-file\"\npath = \"a.ivf\"\nfps = 15").is_err());
        let e = video("source = \"h265-file\"\npath = \"a.h265\"\nfps = 0").unwrap_err();
        assert!(e.contains("video.fps"), "{e}");
    }
}
