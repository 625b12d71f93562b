//! The signaling-only process: holds the KVS master connection around the clock and relays
//! viewers to the media side over the link, waking it when an offer comes.
//!
//! Owns the tokio driver of [`SignalingSideCore`]: the KVS connection (reconnect with the
//! seed's backoff, GO_AWAY), the ICE server list (fetched on connect, refreshed before its
//! TTL, pushed to the media side), the link carrier, the wake method, and commands the
//! application asks of the media side (snapshots). Every decision about waking, queueing and
//! refusing is the core's. It must not link WebRTC or media code paths: this process stays
//! small (no peer engine, no capture, no codec).

use super::convert;
use super::link::{Link, LinkAddr, LinkEvent, LinkSide};
use super::wake::{WakeMethod, Waker, Woke};
use crate::backoff::{Backoff, BackoffConfig};
use crate::control::{
    Control, ControlError, ControlFuture, DeviceControl, STREAM_OFF, STREAM_OFF_REASON,
};
use kvs_bridge::{
    Command, CommandError, CommandResponse, CommandValue, ControlSetting, MediaPresence,
    RelayConfig, RelayOutput, SignalingSideCore, Status,
};
use kvs_signaling::{
    IceServer, MessageKind, SignalingClient, SignalingError, SignalingEvent, SignalingLink,
    SignalingMessage,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a send to KVS waits for room before the message is dropped.
const SEND_WAIT: Duration = Duration::from_secs(2);
/// Refresh the ICE servers at this fraction of their TTL (as the classic device).
const ICE_REFRESH_AT: f64 = 0.8;
/// Commands the application may have waiting at once.
const MAX_APP_COMMANDS: usize = 16;

/// Settings of the signaling side.
#[derive(Debug, Clone)]
pub struct SignalingSideConfig {
    pub link: LinkAddr,
    pub wake: WakeMethod,
    pub relay: RelayConfig,
    pub reconnect: BackoffConfig,
    /// Handed to the media side while no list could be fetched (e.g. the regional STUN
    /// server); fetching keeps being retried.
    pub fallback_ice: Vec<IceServer>,
}

/// The STUN server to fall back on for `signaling` (KVS's regional one; none otherwise).
pub fn stun_fallback(signaling: &crate::config::SignalingConfig) -> Vec<IceServer> {
    match signaling {
        crate::config::SignalingConfig::Kvs { region, .. } => vec![IceServer::stun(
            kvs_signaling::kvs::api::stun_url(region, Default::default()),
        )],
        _ => Vec::new(),
    }
}

/// What the signaling side is doing, for status displays and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalingSideStatus {
    pub kvs_connected: bool,
    /// `None` until the media side was heard of.
    pub media: Option<MediaPresence>,
    /// Wakes carried out (process starts, signals).
    pub wakes: u64,
    pub viewers_refused: u64,
}

type CommandReply = oneshot::Sender<Result<CommandValue, CommandError>>;
type ControlReply = oneshot::Sender<Result<(), ControlError>>;

/// What the application asks of the running signaling side.
enum Request {
    /// A command for the media side (a snapshot wakes it).
    Command(Command, CommandReply),
    /// A change to the camera: kept, and applied when the media side is awake (see
    /// [`SplitControl`]).
    Control(Control, ControlReply),
}

/// The camera settings asked for so far; the core re-sends them every time the media side
/// wakes (a new process, or a device restarted in place, starts from its configuration).
#[derive(Debug, Clone, Default)]
struct Desired {
    streaming_off: bool,
    settings: Vec<ControlSetting>,
}

impl Desired {
    fn record(&mut self, setting: ControlSetting) {
        if let ControlSetting::Streaming(on) = setting {
            self.streaming_off = !on;
        }
        // One entry per kind: the latest wins.
        self.settings
            .retain(|s| std::mem::discriminant(s) != std::mem::discriminant(&setting));
        self.settings.push(setting);
    }
}

/// A running signaling side.
pub struct SignalingSide {
    commands: mpsc::Sender<Request>,
    status: watch::Receiver<SignalingSideStatus>,
    /// Live viewers of an awake media side (0 while it sleeps), for [`SplitControl`].
    viewers: watch::Receiver<usize>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalingSideError {
    #[error(transparent)]
    Link(#[from] super::link::LinkError),
}

impl SignalingSide {
    /// Opens the link (a bad address fails here) and starts relaying.
    pub async fn start(
        config: SignalingSideConfig,
        client: Arc<dyn SignalingClient>,
    ) -> Result<SignalingSide, SignalingSideError> {
        let link = Link::start(&config.link, LinkSide::Signaling).await?;
        let (commands, command_rx) = mpsc::channel(MAX_APP_COMMANDS);
        let (status_tx, status) = watch::channel(SignalingSideStatus::default());
        let (viewers_tx, viewers) = watch::channel(0usize);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver = Driver {
            core: SignalingSideCore::new(config.relay.clone(), Instant::now()),
            waker: Waker::new(config.wake.clone()),
            backoff: Backoff::new(config.reconnect.clone()),
            client,
            link,
            kvs: None,
            connecting: None,
            reconnect_at: Some(Instant::now()),
            ice_fetch: None,
            ice_refresh_at: None,
            ice_known: false,
            fallback_ice: config.fallback_ice.clone(),
            replies: HashMap::new(),
            control_replies: HashMap::new(),
            desired: Desired::default(),
            pending_sends: Vec::new(),
            status: status_tx,
            viewers: viewers_tx,
        };
        let task = tokio::spawn(driver.run(command_rx, shutdown_rx));
        Ok(SignalingSide {
            commands,
            status,
            viewers,
            shutdown,
            task,
        })
    }

    /// Asks the media side something (a snapshot wakes it if it sleeps).
    pub async fn request(&self, command: Command) -> Result<CommandValue, CommandError> {
        self.commander().request(command).await
    }

    /// A cheap handle for asking commands from other tasks (an HTTP server).
    pub fn commander(&self) -> Commander {
        Commander(self.commands.clone())
    }

    /// Remote control of the camera behind the link ([`DeviceControl`]): settings are kept and
    /// sent to the media side when it is awake — a sleeping one is not woken for them (it gets
    /// them when it next wakes); while streaming is off, viewers' offers are refused here,
    /// without waking it.
    pub fn controller(&self) -> SplitControl {
        SplitControl {
            requests: self.commands.clone(),
            viewers: self.viewers.clone(),
        }
    }

    pub fn status(&self) -> watch::Receiver<SignalingSideStatus> {
        self.status.clone()
    }

    /// Stops relaying, closes the KVS connection and stops an exec-started streaming process.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Changes the camera behind the link. See [`SignalingSide::controller`].
#[derive(Clone)]
pub struct SplitControl {
    requests: mpsc::Sender<Request>,
    viewers: watch::Receiver<usize>,
}

impl DeviceControl for SplitControl {
    fn apply(&self, control: Control) -> ControlFuture<'_> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.requests
                .try_send(Request::Control(control, tx))
                .map_err(|_| ControlError::Unsupported("too many changes waiting".into()))?;
            rx.await.unwrap_or(Err(ControlError::Stopped))
        })
    }

    fn viewers(&self) -> watch::Receiver<usize> {
        self.viewers.clone()
    }
}

/// Asks commands of the media side through a running [`SignalingSide`].
#[derive(Clone)]
pub struct Commander(mpsc::Sender<Request>);

impl Commander {
    pub async fn request(&self, command: Command) -> Result<CommandValue, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .try_send(Request::Command(command, tx))
            .map_err(|_| CommandError::TooManyOutstanding {
                limit: MAX_APP_COMMANDS,
            })?;
        rx.await.unwrap_or(Err(CommandError::Unavailable))
    }
}

struct Driver {
    core: SignalingSideCore,
    waker: Waker,
    backoff: Backoff,
    client: Arc<dyn SignalingClient>,
    link: Link,
    kvs: Option<SignalingLink>,
    connecting: Option<JoinHandle<Result<SignalingLink, SignalingError>>>,
    reconnect_at: Option<Instant>,
    ice_fetch: Option<JoinHandle<Result<Vec<IceServer>, SignalingError>>>,
    ice_refresh_at: Option<Instant>,
    /// A list was fetched (or the fallback handed over) at least once.
    ice_known: bool,
    fallback_ice: Vec<IceServer>,
    replies: HashMap<u32, CommandReply>,
    /// Settings sent to an awake camera, kept (for its next wake) only once it applied them.
    control_replies: HashMap<u32, (ControlSetting, ControlReply)>,
    desired: Desired,
    /// Messages to viewers decided outside the core (refusals while streaming is off).
    pending_sends: Vec<SignalingMessage>,
    status: watch::Sender<SignalingSideStatus>,
    viewers: watch::Sender<usize>,
}

enum Input {
    Link(Option<LinkEvent>),
    Kvs(SignalingEvent),
    Connected(Result<Result<SignalingLink, SignalingError>, tokio::task::JoinError>),
    Ice(Result<Result<Vec<IceServer>, SignalingError>, tokio::task::JoinError>),
    ChildExited(std::process::ExitStatus),
    Request(Option<Request>),
    Timer,
    Stop,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            while let Some(out) = self.core.poll_output() {
                self.perform(out).await;
            }
            for msg in std::mem::take(&mut self.pending_sends) {
                self.send_to_viewer(msg).await;
            }
            let now = Instant::now();
            if self.reconnect_at.is_some_and(|t| now >= t) && self.connecting.is_none() {
                self.reconnect_at = None;
                let client = self.client.clone();
                let timeout = self.backoff.attempt_timeout();
                self.connecting = Some(tokio::spawn(async move {
                    match tokio::time::timeout(timeout, client.connect()).await {
                        Ok(r) => r,
                        Err(_) => Err(SignalingError::ConnectTimeout(timeout)),
                    }
                }));
            }
            if self.ice_refresh_at.is_some_and(|t| now >= t) {
                self.ice_refresh_at = None;
                self.fetch_ice(true);
            }
            let deadline = [
                self.core.poll_timeout(),
                self.reconnect_at,
                self.ice_refresh_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let input = tokio::select! {
                _ = shutdown.changed() => Input::Stop,
                ev = self.link.events.recv() => Input::Link(ev),
                ev = recv_kvs(&mut self.kvs) => Input::Kvs(ev),
                r = join(&mut self.connecting) => Input::Connected(r),
                r = join(&mut self.ice_fetch) => Input::Ice(r),
                status = self.waker.child_exited() => Input::ChildExited(status),
                c = commands.recv() => Input::Request(c),
                _ = sleep_until(deadline) => Input::Timer,
            };
            let now = Instant::now();
            match input {
                Input::Stop => break,
                Input::Link(None) => break,
                Input::Link(Some(LinkEvent::Up)) | Input::Link(Some(LinkEvent::Down(_))) => {
                    self.core.handle_link_reset(now)
                }
                Input::Link(Some(LinkEvent::Bytes(b))) => self.core.handle_link_bytes(now, &b),
                Input::Kvs(ev) => self.on_kvs(now, ev),
                Input::Connected(r) => {
                    self.connecting = None;
                    match r.map_err(|e| SignalingError::Connect(e.to_string())) {
                        Ok(Ok(link)) => {
                            tracing::info!("connected to signaling as master");
                            self.kvs = Some(link);
                            self.backoff.reset();
                            self.status.send_modify(|s| s.kvs_connected = true);
                            self.fetch_ice(false);
                        }
                        Ok(Err(e)) | Err(e) => self.schedule_reconnect(now, &e.to_string()),
                    }
                }
                Input::Ice(r) => {
                    self.ice_fetch = None;
                    match r.map_err(|e| SignalingError::Connect(e.to_string())) {
                        Ok(Ok(servers)) => self.set_ice(now, servers),
                        Ok(Err(e)) | Err(e) => {
                            tracing::warn!("fetching ICE servers failed: {e}; retrying in 5 s");
                            if !self.ice_known && !self.fallback_ice.is_empty() {
                                self.set_ice(now, self.fallback_ice.clone());
                            }
                            self.ice_refresh_at = Some(now + Duration::from_secs(5));
                        }
                    }
                }
                Input::ChildExited(status) => {
                    tracing::info!("streaming process exited ({status})");
                    // Whatever it had half-said is gone; it must say Ready again.
                    self.core.handle_link_reset(now);
                }
                Input::Request(None) => {}
                Input::Request(Some(Request::Command(command, reply))) => {
                    match self.core.request(now, command) {
                        Ok(id) => {
                            self.replies.insert(id, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Input::Request(Some(Request::Control(control, reply))) => {
                    self.control(now, control, reply)
                }
                Input::Timer => {
                    if self.core.poll_timeout().is_some_and(|t| now >= t) {
                        self.core.handle_timeout(now);
                    }
                }
            }
        }
        // Leave nothing behind: the KVS connection closes when dropped, an exec-started
        // streaming process is asked to stop.
        self.kvs = None;
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        self.waker.stop_child(Duration::from_secs(3)).await;
    }

    /// A camera setting: kept; sent now if the media side is awake (its answer is the
    /// caller's), else applied when it wakes (answered Ok now).
    fn control(&mut self, now: Instant, control: Control, reply: ControlReply) {
        let setting = match convert::control_setting(&control) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let awake = matches!(
            self.status.borrow().media,
            Some(MediaPresence::Awake { .. })
        );
        if !awake {
            // Kept; a camera that wakes later gets every setting first thing.
            self.remember(setting);
            let _ = reply.send(Ok(()));
            return;
        }
        if let ControlSetting::Streaming(false) = setting {
            // Refuse new viewers here at once, whatever the camera answers.
            self.desired.streaming_off = true;
        }
        match self.core.request(now, Command::SetControl(setting)) {
            Ok(id) => {
                self.control_replies.insert(id, (setting, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(ControlError::Unsupported(e.to_string())));
            }
        }
    }

    fn remember(&mut self, setting: ControlSetting) {
        self.desired.record(setting);
        self.core.set_wake_settings(self.desired.settings.clone());
    }

    fn schedule_reconnect(&mut self, now: Instant, reason: &str) {
        self.kvs = None;
        self.status.send_modify(|s| s.kvs_connected = false);
        let delay = self.backoff.next_delay();
        tracing::warn!("signaling connection failed: {reason}; retrying in {delay:?}");
        self.reconnect_at = Some(now + delay);
    }

    fn on_kvs(&mut self, now: Instant, event: SignalingEvent) {
        match event {
            SignalingEvent::Message(m) => match m.kind {
                MessageKind::GoAway => {
                    tracing::info!("GO_AWAY: reconnecting now");
                    self.kvs = None;
                    self.status.send_modify(|s| s.kvs_connected = false);
                    self.reconnect_at = Some(now);
                }
                MessageKind::ReconnectIceServer => self.fetch_ice(true),
                MessageKind::StatusResponse => {
                    tracing::warn!(?m.payload, "the signaling service reported a failed message")
                }
                MessageKind::Offer if self.desired.streaming_off => {
                    // Refused here: no reason to wake the camera.
                    if let Some(peer) = &m.peer_client_id {
                        tracing::info!(%peer, "viewer refused: streaming is off");
                        self.status.send_modify(|s| s.viewers_refused += 1);
                        self.pending_sends.push(SignalingMessage::refusal_with_code(
                            peer,
                            STREAM_OFF,
                            STREAM_OFF_REASON,
                            m.correlation_id.clone(),
                        ));
                    }
                }
                _ => match convert::viewer_message(&m) {
                    Some(v) => self.core.handle_viewer(now, v),
                    None => tracing::warn!(
                        kind = ?m.kind,
                        peer = ?m.peer_client_id,
                        "viewer message not relayed (no usable viewer id, or ids too long)"
                    ),
                },
            },
            SignalingEvent::Renewed { reason } => tracing::info!("signaling renewed: {reason}"),
            SignalingEvent::Disconnected { reason } => {
                self.schedule_reconnect(now, &format!("disconnected: {reason}"))
            }
        }
    }

    fn fetch_ice(&mut self, refresh: bool) {
        if self.ice_fetch.is_some() {
            return;
        }
        let client = self.client.clone();
        self.ice_fetch = Some(tokio::spawn(async move {
            if refresh {
                client.refresh_ice_servers().await
            } else {
                client.ice_servers().await
            }
        }));
    }

    fn set_ice(&mut self, now: Instant, servers: Vec<IceServer>) {
        self.ice_known = true;
        let min_ttl = servers.iter().filter_map(|s| s.ttl).min();
        self.ice_refresh_at =
            min_ttl.map(|ttl| now + ttl.mul_f64(ICE_REFRESH_AT).max(Duration::from_millis(100)));
        if let Err(e) = self
            .core
            .set_ice_servers(now, convert::ice_to_link(&servers))
        {
            tracing::warn!("ICE servers cannot cross the link: {e}");
        }
    }

    async fn send_to_viewer(&mut self, msg: SignalingMessage) {
        let Some(kvs) = &self.kvs else {
            tracing::warn!(kind = ?msg.kind, peer = ?msg.peer_client_id, "not connected to signaling: message to the viewer dropped");
            return;
        };
        if tokio::time::timeout(SEND_WAIT, kvs.outgoing.send(msg))
            .await
            .is_err()
        {
            tracing::warn!("signaling queue full: message to the viewer dropped");
        }
    }

    async fn perform(&mut self, out: RelayOutput) {
        let now = Instant::now();
        match out {
            RelayOutput::Transmit(bytes) => {
                // The carrier drops writes while it is down; a closed one ends the run below.
                let _ = self.link.writer.send(bytes).await;
            }
            RelayOutput::Wake => match self.waker.wake() {
                Ok(woke) => {
                    if woke != Woke::AlreadyRunning && woke != Woke::Nothing {
                        self.status.send_modify(|s| s.wakes += 1);
                    }
                    tracing::info!(?woke, "waking the media side");
                }
                Err(e) => tracing::error!("waking the media side failed: {e}"),
            },
            RelayOutput::Answer(m) => {
                self.send_to_viewer(convert::sdp_to_kvs(MessageKind::Answer, &m))
                    .await
            }
            RelayOutput::Offer(m) => {
                self.send_to_viewer(convert::sdp_to_kvs(MessageKind::Offer, &m))
                    .await
            }
            RelayOutput::IceCandidate(m) => {
                self.send_to_viewer(convert::candidate_to_kvs(&m)).await
            }
            RelayOutput::Refuse(r) => {
                tracing::info!(peer = %r.peer.as_str(), "viewer refused: {}", r.reason);
                self.status.send_modify(|s| s.viewers_refused += 1);
                let msg = convert::refusal_to_kvs(
                    &r.peer,
                    &r.correlation_id,
                    r.reason.status(),
                    &r.reason.to_string(),
                );
                self.send_to_viewer(msg).await;
            }
            RelayOutput::MediaStatus(p) => {
                tracing::info!(presence = ?p, "media side");
                self.status.send_modify(|s| s.media = Some(p));
                let n = match p {
                    MediaPresence::Awake { viewers } => usize::from(viewers),
                    _ => 0,
                };
                self.viewers
                    .send_if_modified(|v| std::mem::replace(v, n) != n);
            }
            RelayOutput::StateChanged(state) => tracing::debug!(?state, "relay state"),
            RelayOutput::IceServersNeeded => self.fetch_ice(false),
            RelayOutput::CommandRequest {
                request_id,
                command,
            } => {
                let response = match command {
                    Command::GetTime => CommandResponse::Time(Ok(unix_micros())),
                    Command::GetResolution => CommandResponse::Resolution(Err(Status::UNAVAILABLE)),
                    Command::GetSnapshot { .. } => {
                        CommandResponse::Snapshot(Err(Status::UNAVAILABLE))
                    }
                    // The media side does not control the signaling side.
                    Command::SetControl(_) => CommandResponse::Applied(Err(Status::UNEXPECTED)),
                };
                if let Err(e) = self.core.respond(now, request_id, response) {
                    tracing::warn!("answering the media side failed: {e}");
                }
            }
            RelayOutput::CommandDone(done) => {
                if let Some(reply) = self.replies.remove(&done.request_id) {
                    let _ = reply.send(done.result);
                } else if let Some((setting, reply)) = self.control_replies.remove(&done.request_id)
                {
                    if done.result.is_ok() {
                        self.remember(setting);
                    }
                    let _ = reply.send(match done.result {
                        Ok(_) => Ok(()),
                        Err(CommandError::Remote(Status::INVALID_ARGUMENT)) => {
                            Err(ControlError::Invalid("the camera refused the value".into()))
                        }
                        Err(e) => Err(ControlError::Unsupported(e.to_string())),
                    });
                } else if let Err(e) = done.result {
                    tracing::warn!(command = ?done.command, "camera command failed: {e}");
                }
            }
        }
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn recv_kvs(link: &mut Option<SignalingLink>) -> SignalingEvent {
    match link {
        Some(l) => l
            .incoming
            .recv()
            .await
            .unwrap_or(SignalingEvent::Disconnected {
                reason: "signaling link task ended".into(),
            }),
        None => std::future::pending().await,
    }
}

async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
