//! The device runtime: one signaling client, the peer engine and the capture threads tied
//! together.
//!
//! Split the sans-IO way: [`core`] holds the policy (reconnection with backoff and a connect
//! timeout, GO_AWAY, ICE-server refresh, viewer bookkeeping, refusals, turning engine events
//! into signaling messages and app events) with time passed in; [`driver`] is the tokio task
//! that performs what the core asks (connects, fetches, sends, engine commands) and feeds the
//! results back. Signaling comes and goes while live peer sessions keep streaming: the peer
//! engine and the captures are never restarted by a signaling loss.

pub mod core;
mod driver;

use crate::capture::{self, FrameDelivery};
use crate::config::{DeviceConfig, SessionConfig};
use crate::events::{AppEvent, EventBus, EventKind};
use kvs_peer::{FrameSink, PeerConfig, PeerEngine, PeerHandle};
use kvs_platform::{AudioCapture, AudioCodec, AudioPlayer, EncodedFrame, VideoCapture, VideoCodec};
use kvs_signaling::SignalingClient;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use self::core::{describe_timing, DeviceState, STREAM_OFF};

/// Errors starting the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("peer engine failed to start: {0}")]
    Peer(#[from] kvs_peer::PeerError),
    #[error("cannot start a capture thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the speaker: {0}")]
    Speaker(#[from] kvs_platform::PlaybackError),
}

/// What the device is made of: a configuration and the pluggable parts.
pub struct DeviceParts {
    pub config: DeviceConfig,
    pub signaling: Arc<dyn SignalingClient>,
    pub camera: Option<Box<dyn VideoCapture>>,
    pub microphone: Option<Box<dyn AudioCapture>>,
}

/// A running device. Dropping it does not stop it; call [`DeviceHandle::shutdown`].
pub struct DeviceHandle {
    controls: mpsc::Sender<driver::ControlRequest>,
    viewers: watch::Receiver<usize>,
    events: EventBus,
    state: watch::Receiver<DeviceState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    peer: PeerHandle,
}

impl DeviceHandle {
    /// Subscribe to the device's events.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The current state, and changes to it.
    pub fn state(&self) -> watch::Receiver<DeviceState> {
        self.state.clone()
    }

    /// A handle that changes the running device ([`crate::DeviceControl`]): streaming on/off,
    /// resolution, bitrate, audio, the viewer limit.
    pub fn controller(&self) -> DeviceController {
        DeviceController {
            controls: self.controls.clone(),
            viewers: self.viewers.clone(),
        }
    }

    /// Number of live viewer sessions.
    pub fn viewer_count(&self) -> usize {
        self.peer.session_count()
    }

    /// Stop streaming, close every session and signaling, and wait for it.
    pub async fn shutdown(self) {
        self.events
            .publish(AppEvent::new(EventKind::Deinitializing, "shutting down"));
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Changes a running device; cheap to clone. See [`DeviceHandle::controller`].
#[derive(Clone)]
pub struct DeviceController {
    controls: mpsc::Sender<driver::ControlRequest>,
    viewers: watch::Receiver<usize>,
}

/// Controls waiting for the device's task; more are refused at once.
const MAX_PENDING_CONTROLS: usize = 16;

impl crate::control::DeviceControl for DeviceController {
    fn apply(&self, control: crate::control::Control) -> crate::control::ControlFuture<'_> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.controls
                .try_send((control, reply))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => {
                        crate::control::ControlError::Unsupported("too many changes waiting".into())
                    }
                    mpsc::error::TrySendError::Closed(_) => crate::control::ControlError::Stopped,
                })?;
            answer
                .await
                .unwrap_or(Err(crate::control::ControlError::Stopped))
        })
    }

    fn viewers(&self) -> watch::Receiver<usize> {
        self.viewers.clone()
    }
}

/// Delivers capture frames into the peer engine.
struct EngineSink(FrameSink);

impl FrameDelivery for EngineSink {
    fn deliver(&self, frame: EncodedFrame) -> bool {
        self.0.send(frame)
    }
}

/// The device.
pub struct Device;

impl Device {
    /// Start the device: the peer engine (DTLS certificate generated now, not at the first
    /// viewer), the capture threads and the signaling loop.
    pub async fn start(parts: DeviceParts) -> Result<DeviceHandle, DeviceError> {
        Self::start_with_events(parts, EventBus::new()).await
    }

    /// Like [`Device::start`], publishing on `events` — subscribe before calling to see every
    /// event from the first.
    pub async fn start_with_events(
        parts: DeviceParts,
        events: EventBus,
    ) -> Result<DeviceHandle, DeviceError> {
        parts.config.validate().map_err(DeviceError::Config)?;
        let speaker = crate::sources::open_speaker(&parts.config.speaker)?;
        Self::start_with_speaker(parts, events, speaker).await
    }

    /// Like [`Device::start_with_events`], playing viewers' talk-back audio on `speaker`
    /// (instead of the one `[speaker]` names; `None`: viewers' audio is ignored).
    pub async fn start_with_speaker(
        parts: DeviceParts,
        events: EventBus,
        speaker: Option<Box<dyn AudioPlayer>>,
    ) -> Result<DeviceHandle, DeviceError> {
        let DeviceParts {
            config,
            signaling,
            camera,
            microphone,
        } = parts;
        config.validate().map_err(DeviceError::Config)?;

        let peer_config = peer_config(
            &config.session,
            &config,
            camera.as_ref().map(|c| c.format().codec),
            microphone.as_ref().map(|m| m.codecs()).unwrap_or_default(),
            speaker.is_some(),
        );
        let (peer, peer_events) = PeerEngine::start(peer_config).await?;
        let talkback_thread = match (speaker, peer.take_talkback()) {
            (Some(player), Some(packets)) => Some(crate::talkback::TalkbackThread::spawn(
                packets,
                player,
                kvs_media::talkback::TalkbackConfig {
                    floor_hold: config.speaker.floor_hold,
                    max_buffer: config.speaker.max_buffer,
                    ..Default::default()
                },
                events.clone(),
            )?),
            _ => None,
        };
        let receive_thread = match (config.receive.enabled(), peer.take_received()) {
            (true, Some(items)) => {
                let player = config
                    .receive
                    .video_player_cmd
                    .as_deref()
                    .map(|c| Box::new(kvs_platform::CommandVideoPlayer::new(c)) as _);
                Some(crate::receive::ReceiveThread::spawn(
                    items,
                    peer.clone(),
                    &config.receive,
                    player,
                    events.clone(),
                )?)
            }
            _ => None,
        };

        let camera_present = camera.is_some();
        let microphone_present = microphone.is_some();
        let video_thread = match camera {
            Some(camera) => Some(capture::spawn_video(
                camera,
                EngineSink(peer.video_sink()),
                events.clone(),
            )?),
            None => None,
        };
        let audio_thread = match microphone {
            Some(mic) => Some(capture::spawn_audio(
                mic,
                EngineSink(peer.audio_sink()),
                events.clone(),
            )?),
            None => None,
        };

        let (state_tx, state_rx) = watch::channel(DeviceState::SignalingConnecting);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (controls, control_rx) = mpsc::channel(MAX_PENDING_CONTROLS);
        let (viewers_tx, viewers) = watch::channel(0usize);
        events.publish(AppEvent::new(EventKind::Initialized, "device started"));

        let core_config = self::core::CoreConfig {
            reconnect: config.reconnect.clone(),
            data_channel_echo: config.session.data_channel_echo,
        };
        let driver = driver::Driver {
            events: events.clone(),
            signaling,
            peer: peer.clone(),
            state: state_tx,
            link: None,
            connecting: None,
            ice_fetch: None,
            video_thread,
            audio_thread,
            talkback_thread,
            receive_thread,
            viewers: viewers_tx,
            abr: (config.adaptive_bitrate.enabled && camera_present).then(|| {
                crate::abr::BitrateController::new(config.adaptive_bitrate.bounds(
                    u64::from(config.video.nominal_bitrate_bps()),
                    microphone_present,
                ))
            }),
        };
        let task = tokio::spawn(driver.run(core_config, peer_events, control_rx, shutdown_rx));
        Ok(DeviceHandle {
            controls,
            viewers,
            events,
            state: state_rx,
            shutdown: shutdown_tx,
            task,
            peer,
        })
    }
}

fn peer_config(
    session: &SessionConfig,
    config: &DeviceConfig,
    video: Option<VideoCodec>,
    audio_codecs: Vec<AudioCodec>,
    talkback: bool,
) -> PeerConfig {
    let forced = match config.codecs.audio {
        crate::config::AudioCodecChoice::Auto => None,
        crate::config::AudioCodecChoice::Opus => Some(AudioCodec::Opus),
        crate::config::AudioCodecChoice::Pcmu => Some(AudioCodec::Pcmu),
        crate::config::AudioCodecChoice::Pcma => Some(AudioCodec::Pcma),
    };
    let audio_present = !audio_codecs.is_empty();
    PeerConfig {
        max_sessions: session.max_viewers,
        bind_addrs: session.media_bind.clone(),
        udp_port_range: session.udp_port_range,
        // The one codec the camera produces: the only one declared to viewers.
        video,
        audio: audio_codecs.first().copied(),
        audio_codecs,
        talkback,
        receive_media: config.receive.enabled(),
        // A forced codec is the only one, both ways.
        talkback_codecs: match forced {
            Some(c) => vec![c],
            None => vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma],
        },
        data_channel: true,
        resend_window: session.resend_window,
        video_bitrate_bps: config.video.nominal_bitrate_bps(),
        nat: nat_policy(config),
        congestion_control: (config.adaptive_bitrate.enabled && video.is_some()).then(|| {
            let abr = config
                .adaptive_bitrate
                .bounds(u64::from(config.video.nominal_bitrate_bps()), audio_present);
            kvs_peer::congestion::CongestionControl {
                initial_bps: abr.initial_bps,
                min_bps: abr.min_bps,
                max_bps: abr.max_bps,
                desired_bps: None,
            }
        }),
        ..PeerConfig::default()
    }
}

/// `[nat]` as the engine takes it. TLS for `turns:` trusts the public roots, plus
/// `nat.turn_ca_file` and the signaling CA (`signaling.ca_file`, a local service's).
fn nat_policy(config: &DeviceConfig) -> kvs_peer::nat::NatPolicy {
    let nat = &config.nat;
    let mut pem = Vec::new();
    let signaling_ca = match &config.signaling {
        crate::config::SignalingConfig::Kvs { ca_file, .. } => ca_file.clone(),
        _ => None,
    };
    for file in nat.turn_ca_file.iter().chain(signaling_ca.iter()) {
        match std::fs::read(file) {
            Ok(bytes) => pem.extend_from_slice(&bytes),
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot read CA for turns: servers: {e}")
            }
        }
    }
    let extra = (!pem.is_empty()).then_some(pem.as_slice());
    let turn_tls = match kvs_aws::https::client_tls_config(extra, false) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("TLS for turns: servers unavailable: {e}");
            None
        }
    };
    kvs_peer::nat::NatPolicy {
        stun_urls: nat.stun_urls.clone(),
        use_stun: true,
        use_turn: nat.use_turn,
        relay_only: nat.relay_only,
        max_turn_allocations: nat.max_turn_allocations,
        ice_restart_after: (!nat.ice_restart_after.is_zero()).then_some(nat.ice_restart_after),
        turn_tls,
    }
}
