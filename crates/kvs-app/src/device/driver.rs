//! The tokio driver of [`DeviceCore`]: performs its outputs (connect attempts and ICE fetches
//! as tasks, sends on the signaling link, peer-engine commands, keyframe requests, events,
//! state) and feeds back what happened, with the time it happened.
//!
//! No policy here: every decision (when, how often, what to answer) is the core's.

use super::core::{CoreConfig, DeviceCore, DeviceInput, DeviceOutput, DeviceState};
use crate::capture::{CameraChange, CaptureThread};
use crate::control::{Control, ControlError};
use crate::events::{AppEvent, EventBus, EventKind};
use kvs_peer::{PeerCommand, PeerEvent, PeerHandle};
use kvs_signaling::{IceServer, SignalingClient, SignalingEvent, SignalingLink, SignalingMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Peer events taken in one turn (a session's start comes as a burst: answer, candidates,
/// connected, keyframe request).
const PEER_EVENT_BATCH: usize = 64;

/// How long a send waits for room on a full signaling queue before the message is dropped:
/// long enough not to lose an answer to a burst, never forever.
const SEND_WAIT: Duration = Duration::from_secs(2);

type ConnectTask = JoinHandle<Result<SignalingLink, String>>;
/// A [`Control`] for the running device and where its result goes.
pub(super) type ControlRequest = (
    Control,
    tokio::sync::oneshot::Sender<Result<(), ControlError>>,
);
/// How long a camera change may take before it is reported as failed.
const CHANGE_WAIT: Duration = Duration::from_secs(2);
type IceTask = JoinHandle<Result<Vec<IceServer>, String>>;

pub(super) struct Driver {
    pub events: EventBus,
    pub signaling: Arc<dyn SignalingClient>,
    pub peer: PeerHandle,
    pub state: watch::Sender<DeviceState>,
    pub link: Option<SignalingLink>,
    /// The connect attempt under way, with its number.
    pub connecting: Option<(u64, ConnectTask)>,
    pub ice_fetch: Option<IceTask>,
    pub video_thread: Option<CaptureThread>,
    pub audio_thread: Option<CaptureThread>,
    pub talkback_thread: Option<crate::talkback::TalkbackThread>,
    /// Viewers' video and audio to recordings and the video player.
    pub receive_thread: Option<crate::receive::ReceiveThread>,
    /// Live sessions, for [`crate::DeviceControl::viewers`].
    pub viewers: watch::Sender<usize>,
    /// Adaptive bitrate (`[adaptive_bitrate]` on): the viewers' estimates → the camera.
    pub abr: Option<crate::abr::BitrateController>,
}

impl Driver {
    pub async fn run(
        mut self,
        config: CoreConfig,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        mut controls: mpsc::Receiver<ControlRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut core = DeviceCore::new(config, Instant::now());
        loop {
            while let Some(output) = core.poll_output() {
                self.perform(&mut core, output).await;
            }
            let live = self.peer.session_count();
            self.viewers
                .send_if_modified(|v| std::mem::replace(v, live) != live);
            let wake = core.poll_timeout();
            let input = tokio::select! {
                _ = shutdown.changed() => break,
                result = join_connect(&mut self.connecting) => {
                    let (attempt, result) = result;
                    self.connecting = None;
                    match result {
                        Ok(link) => {
                            self.link = Some(link);
                            DeviceInput::Connected { attempt }
                        }
                        Err(reason) => DeviceInput::ConnectFailed { attempt, reason },
                    }
                }
                result = join_ice(&mut self.ice_fetch) => {
                    self.ice_fetch = None;
                    DeviceInput::IceServers(result)
                }
                event = recv_link(&mut self.link) => {
                    if matches!(event, SignalingEvent::Disconnected { .. }) {
                        self.link = None;
                    }
                    DeviceInput::Signaling(event)
                }
                event = peer_events.recv() => match event {
                    Some(event) => self.take_peer_events(&mut core, event, &mut peer_events).await,
                    None => {
                        self.events.publish(AppEvent::new(EventKind::Error, "peer engine stopped").with_status(1));
                        break;
                    }
                },
                _ = sleep_until_opt(wake) => {
                    core.handle_timeout(Instant::now());
                    continue;
                }
                Some((control, reply)) = controls.recv() => {
                    self.control(&mut core, control, reply).await;
                    continue;
                }
            };
            core.handle_input(Instant::now(), input);
        }
        if let Some((_, task)) = self.connecting.take() {
            task.abort();
        }
        if let Some(task) = self.ice_fetch.take() {
            task.abort();
        }
        self.stop().await;
    }

    async fn perform(&mut self, core: &mut DeviceCore, output: DeviceOutput) {
        match output {
            DeviceOutput::Connect { attempt } => {
                let client = self.signaling.clone();
                let task = tokio::spawn(async move {
                    client
                        .connect()
                        .await
                        .map_err(|e| format!("signaling connect failed: {e}"))
                });
                if let Some((_, old)) = self.connecting.replace((attempt, task)) {
                    old.abort();
                }
            }
            DeviceOutput::AbortConnect { attempt } => {
                if let Some((a, task)) = self.connecting.take() {
                    if a == attempt {
                        task.abort();
                    } else {
                        self.connecting = Some((a, task));
                    }
                }
            }
            DeviceOutput::CloseLink => self.link = None,
            DeviceOutput::FetchIceServers { bypass_cache } => {
                let client = self.signaling.clone();
                self.ice_fetch = Some(tokio::spawn(async move {
                    let fetched = if bypass_cache {
                        client.refresh_ice_servers().await
                    } else {
                        client.ice_servers().await
                    };
                    fetched.map_err(|e| e.to_string())
                }));
            }
            DeviceOutput::Send { message, then } => {
                if self.send(message).await {
                    if let Some(event) = then {
                        self.events.publish(event);
                    }
                }
            }
            DeviceOutput::Peer(command) => {
                let peer_id = command_peer(&command);
                if let Err(e) = self.peer.command(command).await {
                    core.handle_input(
                        Instant::now(),
                        DeviceInput::PeerCommandFailed {
                            peer_id,
                            error: e.to_string(),
                        },
                    );
                }
            }
            DeviceOutput::RequestKeyframe => {
                // Already passed to the camera when its `KeyframeRequested` arrived (see the
                // event loop). Asking again here made one request two keyframes whenever the
                // camera had encoded the first before this output was performed.
            }
            DeviceOutput::PauseCapture(paused) => {
                for thread in [&self.video_thread, &self.audio_thread]
                    .into_iter()
                    .flatten()
                {
                    thread.control().set_paused(paused);
                }
            }
            DeviceOutput::Event(event) => self.events.publish(event),
            DeviceOutput::State(state) => {
                let _ = self.state.send(state);
            }
        }
    }

    /// Carry out one [`Control`]; the answer goes to `reply` (camera changes answer from a
    /// task, once the capture thread applied them).
    async fn control(
        &mut self,
        core: &mut DeviceCore,
        control: Control,
        reply: tokio::sync::oneshot::Sender<Result<(), ControlError>>,
    ) {
        let camera_change = |thread: &Option<CaptureThread>, change: CameraChange| {
            let Some(thread) = thread else {
                return Err(ControlError::Unsupported(
                    "this device has no camera".into(),
                ));
            };
            thread
                .control()
                .change(change)
                .map_err(|e| ControlError::Unsupported(e.to_string()))
        };
        let answer = match control {
            Control::Streaming(on) => {
                core.handle_input(Instant::now(), DeviceInput::SetStreaming(on));
                Ok(())
            }
            Control::MaxViewers(max) => {
                if !(1..=100).contains(&max) {
                    Err(ControlError::Invalid(format!(
                        "max viewers must be 1..=100, got {max}"
                    )))
                } else {
                    self.peer
                        .command(PeerCommand::SetMaxSessions { max })
                        .await
                        .map_err(|e| ControlError::Unsupported(e.to_string()))
                }
            }
            Control::Audio(on) => match &self.audio_thread {
                Some(t) => {
                    // While streaming is off the capture stays paused either way.
                    t.control().set_paused(!on || !core.is_streaming());
                    Ok(())
                }
                None => Err(ControlError::Unsupported(
                    "this device has no microphone".into(),
                )),
            },
            Control::BitrateKbps(kbps) => {
                match camera_change(
                    &self.video_thread,
                    CameraChange::BitrateBps(kbps.saturating_mul(1000)),
                ) {
                    Ok(answer) => return forward_change(answer, reply),
                    Err(e) => Err(e),
                }
            }
            Control::Resolution { width, height } => {
                match camera_change(
                    &self.video_thread,
                    CameraChange::Resolution { width, height },
                ) {
                    Ok(answer) => return forward_change(answer, reply),
                    Err(e) => Err(e),
                }
            }
        };
        let _ = reply.send(answer);
    }

    /// Take `first` and the peer events queued behind it (at most [`PEER_EVENT_BATCH`]): keyframe
    /// requests go to the camera at once — they must not wait behind the events before them
    /// (answers and candidates to send, each awaiting signaling) —, adaptive bitrate sees every
    /// event, and the core handles them in order; the last is returned for the loop to handle.
    async fn take_peer_events(
        &mut self,
        core: &mut DeviceCore,
        first: PeerEvent,
        queued: &mut mpsc::Receiver<PeerEvent>,
    ) -> DeviceInput {
        let mut batch = vec![first];
        while batch.len() < PEER_EVENT_BATCH {
            match queued.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if let Some(video) = &self.video_thread {
            for _ in batch
                .iter()
                .filter(|e| matches!(e, PeerEvent::KeyframeRequested { .. }))
            {
                video.control().request_keyframe();
            }
        }
        for e in &batch {
            self.adapt_bitrate(e).await;
        }
        let last = batch.pop().expect("one event at least");
        for e in batch {
            core.handle_input(Instant::now(), DeviceInput::Peer(e));
            while let Some(output) = core.poll_output() {
                self.perform(core, output).await;
            }
        }
        DeviceInput::Peer(last)
    }

    /// Feed adaptive bitrate with an engine event; a new target goes to the camera (between
    /// two frames, like a `Control::BitrateKbps`) and out as `BitrateChanged`.
    async fn adapt_bitrate(&mut self, event: &PeerEvent) {
        let Some(abr) = &mut self.abr else {
            return;
        };
        let now = Instant::now();
        let change = match event {
            PeerEvent::BitrateEstimate { peer_id, bps } => abr.estimate(peer_id, *bps, now),
            PeerEvent::Closed { peer_id, .. } | PeerEvent::Failed { peer_id, .. } => {
                abr.remove(peer_id, now)
            }
            _ => None,
        };
        let Some(change) = change else {
            return;
        };
        let probe = abr.probe_bps();
        // The estimators probe only as far as the next step needs.
        if let Err(e) = self
            .peer
            .command(PeerCommand::SetDesiredBitrate { bps: probe })
            .await
        {
            tracing::warn!("adaptive bitrate: {e}");
        }
        let bps = u32::try_from(change.bps).unwrap_or(u32::MAX);
        if let Some(video) = &self.video_thread {
            // The answer is not awaited: the next change supersedes this one anyway.
            if let Err(e) = video.control().change(CameraChange::BitrateBps(bps)) {
                tracing::warn!("adaptive bitrate: camera change refused: {e}");
            }
        }
        let mut message = format!(
            "kbps={} reason={} lowest_estimate_kbps={}",
            change.bps / 1000,
            change.reason.as_str(),
            change.lowest_estimate_bps / 1000
        );
        if !change.constrained.is_empty() {
            message.push_str(&format!(" constrained={}", change.constrained.join(",")));
        }
        self.events
            .publish(AppEvent::new(EventKind::BitrateChanged, message));
    }

    /// Hand a message to the signaling link; false when it could not be.
    async fn send(&mut self, message: SignalingMessage) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        match link.outgoing.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(message)) => {
                let sent = tokio::time::timeout(SEND_WAIT, link.outgoing.send(message)).await;
                matches!(sent, Ok(Ok(())))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
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
        if let Some(t) = self.talkback_thread.take() {
            tokio::task::spawn_blocking(move || t.stop()).await.ok();
        }
        self.link = None;
        self.peer.shutdown().await;
        // After the engine: what it still handed over is recorded, then the files finished.
        if let Some(t) = self.receive_thread.take() {
            tokio::task::spawn_blocking(move || t.stop()).await.ok();
        }
        let _ = self.state.send(DeviceState::Stopped);
    }
}

/// Waits (off the driver's loop) for the capture thread's answer to a camera change.
fn forward_change(
    answer: tokio::sync::oneshot::Receiver<crate::capture::ChangeResult>,
    reply: tokio::sync::oneshot::Sender<Result<(), ControlError>>,
) {
    tokio::spawn(async move {
        let result = match tokio::time::timeout(CHANGE_WAIT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(kvs_platform::CaptureError::InvalidInput(m)))) => {
                Err(ControlError::Invalid(m))
            }
            Ok(Ok(Err(e))) => Err(ControlError::Unsupported(e.to_string())),
            Ok(Err(_)) => Err(ControlError::Stopped),
            Err(_) => Err(ControlError::Unsupported(format!(
                "the camera did not apply the change within {CHANGE_WAIT:?}"
            ))),
        };
        let _ = reply.send(result);
    });
}

/// The viewer a command is about, to report its failure against.
fn command_peer(command: &PeerCommand) -> Option<String> {
    match command {
        PeerCommand::RemoteOffer { peer_id, .. }
        | PeerCommand::RemoteAnswer { peer_id, .. }
        | PeerCommand::RemoteCandidate { peer_id, .. }
        | PeerCommand::CreateOffer { peer_id }
        | PeerCommand::SendData { peer_id, .. }
        | PeerCommand::CloseSession { peer_id }
        | PeerCommand::RequestViewerKeyframe { peer_id } => Some(peer_id.clone()),
        PeerCommand::SetIceServers { .. }
        | PeerCommand::SetMaxSessions { .. }
        | PeerCommand::SetDesiredBitrate { .. }
        | PeerCommand::SignalingRestored => None,
    }
}

async fn join_connect(
    task: &mut Option<(u64, ConnectTask)>,
) -> (u64, Result<SignalingLink, String>) {
    match task.as_mut() {
        Some((attempt, t)) => {
            let result = t
                .await
                .unwrap_or_else(|e| Err(format!("signaling connect task failed: {e}")));
            (*attempt, result)
        }
        None => std::future::pending().await,
    }
}

async fn join_ice(task: &mut Option<IceTask>) -> Result<Vec<IceServer>, String> {
    match task.as_mut() {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(format!("ICE server task failed: {e}"))),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
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
