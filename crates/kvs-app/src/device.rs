//! The device runtime: the state machine that ties one signaling client, the peer engine and
//! the capture threads together.
//!
//! One task owns the loop. Signaling comes and goes (connect with a timeout, back off, GO_AWAY
//! reconnects at once) while live peer sessions keep streaming: the peer engine and the
//! captures are never restarted by a signaling loss.

use crate::backoff::Backoff;
use crate::capture::{self, CaptureThread, FrameDelivery};
use crate::config::{DeviceConfig, SessionConfig};
use crate::events::{AppEvent, EventBus, EventKind};
use kvs_peer::{
    FrameSink, PeerCommand, PeerConfig, PeerEngine, PeerEvent, PeerHandle, SessionStats,
    SessionTiming,
};
use kvs_platform::{AudioCapture, AudioCodec, EncodedFrame, VideoCapture, VideoCodec};
use kvs_signaling::{
    IceServer, MessageKind, Payload, SignalingClient, SignalingEvent, SignalingLink,
    SignalingMessage,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Errors starting the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("peer engine failed to start: {0}")]
    Peer(#[from] kvs_peer::PeerError),
    #[error("cannot start a capture thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Where the device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Connecting to signaling (first time or again).
    SignalingConnecting,
    /// Waiting before the next signaling attempt.
    SignalingBackoff,
    /// Connected to signaling; `viewers` sessions are live.
    Ready { viewers: usize },
    /// Shut down.
    Stopped,
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
            camera.is_some(),
            microphone.is_some(),
        );
        let (peer, peer_events) = PeerEngine::start(peer_config).await?;

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
        events.publish(AppEvent::new(EventKind::Initialized, "device started"));

        let runtime = Runtime {
            config,
            events: events.clone(),
            signaling,
            peer: peer.clone(),
            state: state_tx,
            backoff: Backoff::new(Default::default()),
            link: None,
            viewers: HashMap::new(),
            video_thread,
            audio_thread,
            ice: IceRefresh::default(),
        };
        let task = tokio::spawn(runtime.run(peer_events, shutdown_rx));
        Ok(DeviceHandle {
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
    video: bool,
    audio: bool,
) -> PeerConfig {
    PeerConfig {
        max_sessions: session.max_viewers,
        bind_addrs: session.media_bind.clone(),
        video: video.then_some(VideoCodec::H264),
        audio: audio.then_some(AudioCodec::Opus),
        data_channel: true,
        resend_window: session.resend_window,
        video_bitrate_bps: config.video.nominal_bitrate_bps(),
        ..PeerConfig::default()
    }
}

/// Per-viewer bookkeeping the runtime needs (the engine owns the sessions themselves).
#[derive(Debug, Default)]
struct ViewerInfo {
    /// The correlation id of the viewer's last offer, to answer refusals against.
    offer_correlation: Option<String>,
}

struct Runtime {
    config: DeviceConfig,
    events: EventBus,
    signaling: Arc<dyn SignalingClient>,
    peer: PeerHandle,
    state: watch::Sender<DeviceState>,
    backoff: Backoff,
    link: Option<SignalingLink>,
    viewers: HashMap<String, ViewerInfo>,
    video_thread: Option<CaptureThread>,
    audio_thread: Option<CaptureThread>,
    ice: IceRefresh,
}

/// How a connect attempt ended.
type ConnectResult = Result<SignalingLink, String>;
/// How an ICE server fetch ended.
type IceResult = Result<Vec<IceServer>, String>;

/// Background refresh of the ICE servers (their TURN credentials expire): fetched once
/// signaling is up, again when 80% of the shortest TTL has passed or when the service sends
/// RECONNECT_ICE_SERVER, retried with backoff on failure. Never blocks signaling or media.
#[derive(Default)]
struct IceRefresh {
    task: Option<JoinHandle<IceResult>>,
    /// When to fetch next; `None` while a fetch runs or when nothing expires.
    next: Option<Instant>,
    /// The next fetch must bypass the client's cache.
    force: bool,
    failures: u32,
    /// A list was handed to the peer engine at least once.
    fetched: bool,
}

/// Refresh at this share of the shortest TTL.
const ICE_REFRESH_AT_PERCENT: u32 = 80;
const ICE_RETRY_MIN: Duration = Duration::from_secs(5);
const ICE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Runtime {
    async fn run(
        mut self,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.backoff = Backoff::new(self.config.reconnect.clone());
        let mut next_attempt: Option<Instant> = Some(Instant::now());
        let mut connecting: Option<JoinHandle<ConnectResult>> = None;

        loop {
            if self.link.is_none()
                && connecting.is_none()
                && next_attempt.is_some_and(|at| at <= Instant::now())
            {
                next_attempt = None;
                connecting = Some(self.spawn_connect());
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                result = join_opt(&mut connecting) => {
                    connecting = None;
                    match result {
                        Ok(link) => {
                            self.backoff.reset();
                            self.link = Some(link);
                            self.events.publish(AppEvent::new(EventKind::SignalingConnected, "signaling connected"));
                            self.set_ready();
                            if !self.ice.fetched && self.ice.task.is_none() {
                                self.ice.next = Some(Instant::now());
                            }
                        }
                        Err(reason) => {
                            self.events.publish(AppEvent::new(EventKind::SignalingError, reason).with_status(1));
                            next_attempt = Some(self.schedule_retry());
                        }
                    }
                }
                _ = sleep_until_opt(next_attempt), if self.link.is_none() && connecting.is_none() => {}
                _ = sleep_until_opt(self.ice.next), if self.ice.task.is_none() => {
                    self.spawn_ice_fetch();
                }
                result = join_ice(&mut self.ice.task) => {
                    self.ice.task = None;
                    self.on_ice_result(result).await;
                }
                event = recv_link(&mut self.link) => match event {
                    SignalingEvent::Message(msg) => {
                        if self.on_signaling_message(msg).await == LinkAction::ReconnectNow {
                            self.link = None;
                            next_attempt = Some(Instant::now());
                        }
                    }
                    SignalingEvent::Renewed { reason } => {
                        self.events.publish(AppEvent::new(EventKind::SignalingRenewed, reason));
                    }
                    SignalingEvent::Disconnected { reason } => {
                        self.link = None;
                        self.events.publish(AppEvent::new(EventKind::SignalingDisconnected, reason));
                        next_attempt = Some(self.schedule_retry());
                    }
                },
                event = peer_events.recv() => match event {
                    Some(event) => self.on_peer_event(event).await,
                    None => {
                        self.events.publish(AppEvent::new(EventKind::Error, "peer engine stopped").with_status(1));
                        break;
                    }
                },
            }
        }
        if let Some(task) = connecting {
            task.abort();
        }
        if let Some(task) = self.ice.task.take() {
            task.abort();
        }
        self.stop().await;
    }

    fn spawn_connect(&self) -> JoinHandle<ConnectResult> {
        self.events.publish(AppEvent::new(
            EventKind::SignalingConnecting,
            "connecting to signaling",
        ));
        let _ = self.state.send(DeviceState::SignalingConnecting);
        let client = self.signaling.clone();
        let timeout = self.backoff.attempt_timeout();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, client.connect()).await {
                Ok(Ok(link)) => Ok(link),
                Ok(Err(e)) => Err(format!("signaling connect failed: {e}")),
                Err(_) => Err(format!(
                    "signaling connect timed out after {} s",
                    timeout.as_secs()
                )),
            }
        })
    }

    fn spawn_ice_fetch(&mut self) {
        self.ice.next = None;
        let force = std::mem::take(&mut self.ice.force) || self.ice.fetched;
        let client = self.signaling.clone();
        self.ice.task = Some(tokio::spawn(async move {
            let fetched = if force {
                client.refresh_ice_servers().await
            } else {
                client.ice_servers().await
            };
            fetched.map_err(|e| e.to_string())
        }));
    }

    async fn on_ice_result(&mut self, result: IceResult) {
        match result {
            Ok(servers) => {
                self.ice.failures = 0;
                self.ice.fetched = true;
                let shortest_ttl = servers.iter().filter_map(|s| s.ttl).min();
                self.ice.next = shortest_ttl.map(|ttl| {
                    Instant::now() + (ttl * ICE_REFRESH_AT_PERCENT / 100).max(ICE_RETRY_MIN)
                });
                let turn = servers
                    .iter()
                    .filter(|s| s.urls.iter().any(|u| u.starts_with("turn")))
                    .count();
                let message = match shortest_ttl {
                    Some(ttl) => format!(
                        "{} ICE servers ({turn} TURN), valid {} s",
                        servers.len(),
                        ttl.as_secs()
                    ),
                    None => format!("{} ICE servers ({turn} TURN)", servers.len()),
                };
                let servers = servers
                    .into_iter()
                    .map(|s| kvs_peer::IceServer {
                        urls: s.urls,
                        username: s.username,
                        credential: s.credential,
                    })
                    .collect();
                if let Err(e) = self
                    .peer
                    .command(PeerCommand::SetIceServers { servers })
                    .await
                {
                    tracing::warn!(error = %e, "peer engine did not take the ICE servers");
                }
                self.events
                    .publish(AppEvent::new(EventKind::SignalingGetIce, message));
            }
            Err(reason) => {
                self.ice.failures += 1;
                let delay = ICE_RETRY_MIN
                    .saturating_mul(1 << self.ice.failures.min(4).saturating_sub(1))
                    .min(ICE_RETRY_MAX);
                self.ice.force = true;
                self.ice.next = Some(Instant::now() + delay);
                self.events.publish(
                    AppEvent::new(
                        EventKind::SignalingError,
                        format!(
                            "fetching ICE servers failed ({reason}); retrying in {} s",
                            delay.as_secs()
                        ),
                    )
                    .with_status(1),
                );
            }
        }
    }

    fn schedule_retry(&mut self) -> Instant {
        let delay = self.backoff.next_delay();
        let _ = self.state.send(DeviceState::SignalingBackoff);
        self.events.publish(AppEvent::new(
            EventKind::SignalingReconnectScheduled,
            format!(
                "retrying signaling in {} s (attempt {})",
                delay.as_secs_f32(),
                self.backoff.failures() + 1
            ),
        ));
        Instant::now() + delay
    }

    fn set_ready(&self) {
        if self.link.is_some() {
            let _ = self.state.send(DeviceState::Ready {
                viewers: self.peer.session_count(),
            });
        }
    }

    /// Send to signaling if connected. While reconnecting, messages are dropped: trickled
    /// candidates then reach the viewer as peer-reflexive ones, and offers are re-sent by
    /// viewers that time out.
    async fn send(&mut self, message: SignalingMessage) -> bool {
        let Some(link) = &self.link else {
            tracing::debug!(kind = ?message.kind, "signaling down; message dropped");
            return false;
        };
        match link.outgoing.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(message)) => {
                // Bounded: wait briefly rather than lose an answer, but never forever.
                let sent =
                    tokio::time::timeout(Duration::from_secs(2), link.outgoing.send(message)).await;
                matches!(sent, Ok(Ok(())))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    async fn on_signaling_message(&mut self, msg: SignalingMessage) -> LinkAction {
        let peer_id = msg.peer_client_id.clone().unwrap_or_default();
        let command = match (msg.kind, msg.payload) {
            (MessageKind::Offer, Payload::Sdp(sdp)) => {
                if peer_id.is_empty() {
                    self.events.publish(
                        AppEvent::new(EventKind::Error, "offer without a sender client id ignored")
                            .with_status(1),
                    );
                    return LinkAction::Keep;
                }
                self.events
                    .publish(AppEvent::peer(EventKind::ReceivedOffer, &peer_id, ""));
                self.events.publish(AppEvent::peer(
                    EventKind::PeerConnectionRequested,
                    &peer_id,
                    "",
                ));
                self.viewers
                    .entry(peer_id.clone())
                    .or_default()
                    .offer_correlation = msg.correlation_id;
                PeerCommand::RemoteOffer { peer_id, sdp }
            }
            (MessageKind::Answer, Payload::Sdp(sdp)) => {
                self.events
                    .publish(AppEvent::peer(EventKind::ReceivedAnswer, &peer_id, ""));
                PeerCommand::RemoteAnswer { peer_id, sdp }
            }
            (MessageKind::IceCandidate, Payload::Candidate(c)) => {
                self.events.publish(AppEvent::peer(
                    EventKind::ReceivedIceCandidate,
                    &peer_id,
                    c.candidate.clone(),
                ));
                PeerCommand::RemoteCandidate {
                    peer_id,
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_m_line_index: c.sdp_m_line_index,
                }
            }
            (MessageKind::GoAway, _) => {
                self.events.publish(AppEvent::new(
                    EventKind::SignalingDisconnected,
                    "GO_AWAY from signaling; reconnecting now",
                ));
                return LinkAction::ReconnectNow;
            }
            (MessageKind::ReconnectIceServer, _) => {
                self.events.publish(AppEvent::new(
                    EventKind::SignalingGetIce,
                    "signaling asked for an ICE server refresh",
                ));
                self.ice.force = true;
                if self.ice.task.is_none() {
                    self.ice.next = Some(Instant::now());
                }
                return LinkAction::Keep;
            }
            (MessageKind::StatusResponse, Payload::Status(status)) => {
                self.events.publish(
                    AppEvent::new(
                        EventKind::SignalingStatus,
                        format!(
                            "delivery failed (correlation id {:?}): {} {}",
                            status.correlation_id,
                            status.error_type,
                            status.description.unwrap_or_default()
                        ),
                    )
                    .with_status(status.status_code.parse().unwrap_or(1)),
                );
                return LinkAction::Keep;
            }
            (kind, _) => {
                self.events.publish(
                    AppEvent::new(
                        EventKind::Error,
                        format!("unexpected {kind:?} message ignored"),
                    )
                    .with_status(1),
                );
                return LinkAction::Keep;
            }
        };
        if let Err(e) = self.peer.command(command).await {
            self.events.publish(
                AppEvent::new(
                    EventKind::Error,
                    format!("peer engine refused a command: {e}"),
                )
                .with_status(1),
            );
        }
        LinkAction::Keep
    }

    async fn on_peer_event(&mut self, event: PeerEvent) {
        use EventKind as K;
        match event {
            PeerEvent::LocalAnswer { peer_id, sdp } => {
                let msg = SignalingMessage::answer(&peer_id, sdp);
                if self.send(msg).await {
                    self.events
                        .publish(AppEvent::peer(K::SentAnswer, &peer_id, ""));
                }
            }
            PeerEvent::LocalOffer { peer_id, sdp } => {
                if self.send(SignalingMessage::offer(&peer_id, sdp)).await {
                    self.events
                        .publish(AppEvent::peer(K::SentOffer, &peer_id, ""));
                }
            }
            PeerEvent::LocalCandidate {
                peer_id,
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let msg = SignalingMessage::candidate(
                    &peer_id,
                    candidate.clone(),
                    sdp_mid,
                    sdp_m_line_index,
                );
                if self.send(msg).await {
                    self.events
                        .publish(AppEvent::peer(K::SentIceCandidate, &peer_id, candidate));
                }
            }
            PeerEvent::GatheringComplete { peer_id } => {
                self.events
                    .publish(AppEvent::peer(K::IceGatheringComplete, &peer_id, ""));
            }
            PeerEvent::OfferRefused { peer_id, reason } => {
                self.events.publish(
                    AppEvent::peer(K::PeerRefused, &peer_id, reason.clone()).with_status(1),
                );
                // KVS has no client-to-client error message: the refusal travels as an answer
                // whose payload carries the reason (see docs/PROTOCOL.md); viewers show it.
                let correlation = self
                    .viewers
                    .remove(&peer_id)
                    .and_then(|v| v.offer_correlation);
                let refusal = SignalingMessage::refusal_with_code(
                    &peer_id,
                    "SESSION_LIMIT",
                    reason,
                    correlation,
                );
                let _ = self.send(refusal).await;
            }
            PeerEvent::Requested { peer_id } => {
                tracing::debug!(peer = %peer_id, "session created");
            }
            PeerEvent::Connecting { peer_id } => {
                self.events
                    .publish(AppEvent::peer(K::PeerConnecting, &peer_id, ""))
            }
            PeerEvent::Connected { peer_id } => {
                self.events
                    .publish(AppEvent::peer(K::PeerConnected, &peer_id, ""));
                self.set_ready();
            }
            PeerEvent::Disconnected { peer_id } => {
                self.events
                    .publish(AppEvent::peer(K::PeerDisconnected, &peer_id, ""));
            }
            PeerEvent::Failed { peer_id, reason } => {
                self.events
                    .publish(AppEvent::peer(K::PeerFailed, &peer_id, reason).with_status(1));
            }
            PeerEvent::DataChannelOpen { peer_id } => {
                self.events
                    .publish(AppEvent::peer(K::DataChannelOpen, &peer_id, ""));
            }
            PeerEvent::DataMessage {
                peer_id,
                data,
                binary,
            } => {
                self.events.publish(AppEvent::peer(
                    K::DataChannelMessage,
                    &peer_id,
                    format!("{} bytes", data.len()),
                ));
                if self.config.session.data_channel_echo {
                    let _ = self
                        .peer
                        .command(PeerCommand::SendData {
                            peer_id,
                            data,
                            binary,
                        })
                        .await;
                }
            }
            PeerEvent::KeyframeRequested { .. } => {
                if let Some(video) = &self.video_thread {
                    video.control().request_keyframe();
                }
            }
            PeerEvent::FirstKeyframeSent { peer_id } => {
                if self.peer.session_count() >= 1 {
                    self.events.publish(AppEvent::peer(
                        K::StreamingStarted,
                        &peer_id,
                        "first keyframe sent",
                    ));
                }
            }
            PeerEvent::SessionTiming { peer_id, timing } => {
                self.events.publish(AppEvent::peer(
                    K::FirstFrameSent,
                    &peer_id,
                    describe_timing(&timing),
                ));
            }
            PeerEvent::Closed { peer_id, stats } => {
                self.viewers.remove(&peer_id);
                self.events.publish(AppEvent::peer(
                    K::PeerDisconnected,
                    &peer_id,
                    describe_stats(&stats),
                ));
                if self.peer.session_count() == 0 {
                    self.events
                        .publish(AppEvent::new(K::StreamingStopped, "no viewers left"));
                }
                self.set_ready();
            }
        }
    }

    async fn stop(mut self) {
        // Stop the cameras first so nothing is fed into a closing engine.
        if let Some(t) = self.video_thread.take() {
            tokio::task::spawn_blocking(move || t.stop()).await.ok();
        }
        if let Some(t) = self.audio_thread.take() {
            tokio::task::spawn_blocking(move || t.stop()).await.ok();
        }
        self.link = None;
        self.peer.shutdown().await;
        let _ = self.state.send(DeviceState::Stopped);
    }
}

/// "answer 3 ms, ICE 20 ms, DTLS 35 ms, first keyframe 41 ms" — each since the offer arrived.
pub fn describe_timing(t: &SessionTiming) -> String {
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "since offer: answer sent {}, ICE connected {}, DTLS connected {}, first keyframe sent {}",
        ms(t.answer_sent),
        ms(t.ice_connected),
        ms(t.dtls_connected),
        ms(t.first_keyframe_sent)
    )
}

fn describe_stats(s: &SessionStats) -> String {
    format!(
        "session closed after {:.1} s: video frames sent {} dropped {}, audio frames sent {} dropped {}, data messages in {} out {}",
        s.duration.as_secs_f32(),
        s.video_frames_sent,
        s.video_frames_dropped,
        s.audio_frames_sent,
        s.audio_frames_dropped,
        s.data_messages_received,
        s.data_messages_sent
    )
}

#[derive(Debug, PartialEq, Eq)]
enum LinkAction {
    Keep,
    ReconnectNow,
}

async fn join_opt(task: &mut Option<JoinHandle<ConnectResult>>) -> ConnectResult {
    match task.as_mut() {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(format!("signaling connect task failed: {e}"))),
        None => std::future::pending().await,
    }
}

async fn join_ice(task: &mut Option<JoinHandle<IceResult>>) -> IceResult {
    match task.as_mut() {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(format!("ICE server task failed: {e}"))),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Next event from the signaling link; pending forever while there is none.
async fn recv_link(link: &mut Option<SignalingLink>) -> SignalingEvent {
    match link.as_mut() {
        Some(l) => l
            .incoming
            .recv()
            .await
            .unwrap_or(SignalingEvent::Disconnected {
                reason: "signaling link closed".into(),
            }),
        None => std::future::pending().await,
    }
}
