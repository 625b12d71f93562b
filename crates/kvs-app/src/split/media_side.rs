//! The streaming-only process: the classic device, with the link in place of KVS signaling,
//! that sleeps when no viewer needs it.
//!
//! Owns the tokio driver of [`MediaSideCore`]: the link carrier, a [`SignalingClient`] that
//! hands the device its viewers' messages from the link (so the device runs unchanged: same
//! peer engine, refusals, limits), viewer counting for the sleep policy, commands
//! (resolution, JPEG snapshot, time), and what sleeping means on a host:
//! [`SleepMode::Exit`] ends the process (the signaling side starts a new one), and
//! [`SleepMode::Resident`] stops the device (sockets closed, capture stopped, its memory
//! freed) and waits in this process for SIGUSR1 or a ReadyQuery on the link.
//! It must not hold KVS credentials or talk to KVS: the signaling side does.

use super::convert::{self, DeviceMessage};
use super::link::{Link, LinkAddr, LinkEvent, LinkSide};
use crate::config::{DeviceConfig, VideoSourceConfig};
use crate::control::{Control, DeviceControl};
use crate::device::{Device, DeviceController, DeviceError, DeviceHandle, DeviceParts};
use crate::events::EventBus;
use kvs_bridge::{
    Command, CommandResponse, MediaConfig, MediaOutput, MediaPhase, MediaSideCore, Resolution,
    Status,
};
use kvs_signaling::{
    IceServer, MessageKind, MessagePayload, SignalingClient, SignalingError, SignalingEvent,
    SignalingLink, SignalingMessage,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

/// How often the device's session count is looked at (viewer joined / left).
const VIEWER_POLL: Duration = Duration::from_millis(250);
/// Depth of the queues between the link driver and the device.
const DEVICE_QUEUE: usize = 64;

/// What sleeping means for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    /// Exit the process (woken again by `--wake exec:`).
    Exit,
    /// Stay resident and idle; wake on SIGUSR1 or a ReadyQuery on the link.
    Resident,
}

/// Settings of the media side.
#[derive(Debug, Clone)]
pub struct MediaSideConfig {
    pub link: LinkAddr,
    pub device: DeviceConfig,
    pub media: MediaConfig,
    pub sleep: SleepMode,
    /// ICE servers to use before (or without) a list from the signaling side.
    pub fallback_ice: Vec<IceServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaSideError {
    #[error(transparent)]
    Link(#[from] super::link::LinkError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error("installing the SIGUSR1 handler: {0}")]
    Signal(std::io::Error),
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaSideExit {
    /// Slept in [`SleepMode::Exit`].
    Slept,
    /// Asked to stop.
    Stopped,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The device's signaling: each `connect` opens a fresh pair of queues to the link driver.
struct LinkClient {
    attach: mpsc::Sender<DeviceEnds>,
    ice: Arc<Mutex<Vec<IceServer>>>,
}

/// The driver's ends of one device connection.
struct DeviceEnds {
    to_device: mpsc::Sender<SignalingEvent>,
    from_device: mpsc::Receiver<SignalingMessage>,
}

impl SignalingClient for LinkClient {
    fn connect(&self) -> BoxFuture<'_, Result<kvs_signaling::SignalingLink, SignalingError>> {
        Box::pin(async move {
            let (outgoing, from_device) = mpsc::channel(DEVICE_QUEUE);
            let (to_device, incoming) = mpsc::channel(DEVICE_QUEUE);
            self.attach
                .send(DeviceEnds {
                    to_device,
                    from_device,
                })
                .await
                .map_err(|_| SignalingError::Closed)?;
            Ok(SignalingLink { outgoing, incoming })
        })
    }

    fn ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        let list = self.ice.lock().map(|l| l.clone()).unwrap_or_default();
        Box::pin(async move { Ok(list) })
    }
}

/// Runs the media side until it sleeps (in [`SleepMode::Exit`]) or `stop` turns true.
pub async fn run(
    config: MediaSideConfig,
    events: EventBus,
    mut stop: watch::Receiver<bool>,
) -> Result<MediaSideExit, MediaSideError> {
    let mut link = Link::start(&config.link, LinkSide::Media).await?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(MediaSideError::Signal)?;
    let ice = Arc::new(Mutex::new(config.fallback_ice.clone()));
    let (attach_tx, mut attach) = mpsc::channel(4);
    let client: Arc<dyn SignalingClient> = Arc::new(LinkClient {
        attach: attach_tx,
        ice: ice.clone(),
    });
    let (answers_tx, mut answers) = mpsc::channel::<Answer>(8);
    // The picture size now (a resolution control changes it), for snapshots.
    let mut picture_size = test_pattern_size(&config.device);

    let mut core = MediaSideCore::new(config.media.clone(), Instant::now());
    let mut device = Some(start_device(&config, client.clone(), &events).await?);
    let mut ends: Option<DeviceEnds> = None;
    let mut viewers = 0usize;
    let mut viewer_poll = tokio::time::interval(VIEWER_POLL);
    viewer_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let exit = loop {
        // Perform every output; Sleep comes after the bytes announcing it.
        let mut sleep_now = false;
        while let Some(out) = core.poll_output() {
            match out {
                MediaOutput::Transmit(bytes) => {
                    let _ = link.writer.send(bytes).await;
                }
                MediaOutput::Offer(m) => {
                    let msg = convert::sdp_to_kvs(MessageKind::Offer, &m);
                    to_device(&ends, SignalingEvent::Message(msg)).await;
                }
                MediaOutput::Answer(m) => {
                    let msg = convert::sdp_to_kvs(MessageKind::Answer, &m);
                    to_device(&ends, SignalingEvent::Message(msg)).await;
                }
                MediaOutput::IceCandidate(m) => {
                    let msg = convert::candidate_to_kvs(&m);
                    to_device(&ends, SignalingEvent::Message(msg)).await;
                }
                MediaOutput::TriggerOffer(m) => {
                    // The device answers offers; it does not make them (KVS viewers offer).
                    core.refuse_viewer(
                        Instant::now(),
                        m.peer,
                        m.correlation_id,
                        Status::REJECTED,
                        "this camera answers offers and does not make them",
                    );
                }
                MediaOutput::IceServers(list) => {
                    let servers = convert::ice_from_link(&list);
                    tracing::info!(count = servers.len(), "ICE servers from the signaling side");
                    if let Ok(mut shared) = ice.lock() {
                        *shared = servers;
                    }
                    // The device fetches anew when told to, as after RECONNECT_ICE_SERVER.
                    let refresh = SignalingMessage {
                        kind: MessageKind::ReconnectIceServer,
                        peer_client_id: None,
                        correlation_id: None,
                        payload: MessagePayload::None,
                    };
                    to_device(&ends, SignalingEvent::Message(refresh)).await;
                }
                MediaOutput::CommandRequest {
                    request_id,
                    command,
                } => answer_command(
                    picture_size,
                    device.as_ref().map(DeviceHandle::controller),
                    request_id,
                    command,
                    answers_tx.clone(),
                ),
                MediaOutput::CommandDone(done) => tracing::debug!(?done, "command done"),
                MediaOutput::Sleep => sleep_now = true,
                MediaOutput::SignalingLost => {
                    tracing::warn!("nothing heard from the signaling side: link lost?")
                }
                MediaOutput::SignalingBack => tracing::info!("signaling side heard again"),
            }
        }
        if sleep_now {
            tracing::info!("no viewer: going to sleep");
            ends = None;
            viewers = 0;
            if let Some(d) = device.take() {
                d.shutdown().await;
            }
            if config.sleep == SleepMode::Exit {
                // Let the carrier write the "sleeping" status before the process goes.
                drain_writes(&link).await;
                break MediaSideExit::Slept;
            }
        }

        let asleep = core.phase() == MediaPhase::Sleeping;
        let deadline = core.poll_timeout();
        tokio::select! {
            _ = stop.changed() => break MediaSideExit::Stopped,
            ev = link.events.recv() => {
                let now = Instant::now();
                match ev {
                    None => break MediaSideExit::Stopped,
                    Some(LinkEvent::Up) | Some(LinkEvent::Down(_)) => core.handle_link_reset(now),
                    Some(LinkEvent::Bytes(b)) => {
                        let queries = core.stats().ready_queries_unanswered;
                        core.handle_link_bytes(now, &b);
                        // A ReadyQuery while asleep is the link's wake byte.
                        if asleep && core.stats().ready_queries_unanswered > queries {
                            tracing::info!("woken by the link");
                            core = MediaSideCore::new(config.media.clone(), now);
                            device = Some(start_device(&config, client.clone(), &events).await?);
                        }
                    }
                }
            }
            _ = usr1.recv() => {
                if asleep {
                    tracing::info!("woken by SIGUSR1");
                    core = MediaSideCore::new(config.media.clone(), Instant::now());
                    device = Some(start_device(&config, client.clone(), &events).await?);
                }
            }
            Some(new_ends) = attach.recv() => {
                // The device's handler is registered: from now on messages can be delivered.
                ends = Some(new_ends);
                core.set_handler_ready(Instant::now());
            }
            msg = from_device(&mut ends) => {
                let now = Instant::now();
                match msg {
                    Some(m) => forward_from_device(&mut core, now, &m),
                    None => ends = None,
                }
            }
            Some((request_id, response, size)) = answers.recv() => {
                if let Some(size) = size.filter(|_| picture_size.is_some()) {
                    picture_size = Some(size);
                }
                if let Err(e) = core.respond(Instant::now(), request_id, response) {
                    tracing::warn!("answering the signaling side failed: {e}");
                }
            }
            _ = viewer_poll.tick() => {
                let now = Instant::now();
                let count = device.as_ref().map_or(0, DeviceHandle::viewer_count);
                while viewers < count {
                    viewers += 1;
                    core.viewer_joined(now);
                }
                while viewers > count {
                    viewers -= 1;
                    core.viewer_left(now);
                }
            }
            _ = sleep_until(deadline) => core.handle_timeout(Instant::now()),
        }
    };
    if let Some(d) = device.take() {
        d.shutdown().await;
    }
    Ok(exit)
}

async fn start_device(
    config: &MediaSideConfig,
    client: Arc<dyn SignalingClient>,
    events: &EventBus,
) -> Result<DeviceHandle, MediaSideError> {
    let camera = crate::sources::open_camera(&config.device.video)?;
    let microphone =
        crate::sources::open_microphone_with(&config.device.audio, config.device.codecs.audio)?;
    let parts = DeviceParts {
        config: config.device.clone(),
        signaling: client,
        camera,
        microphone,
    };
    Ok(Device::start_with_events(parts, events.clone()).await?)
}

async fn to_device(ends: &Option<DeviceEnds>, event: SignalingEvent) {
    match ends {
        Some(e) => {
            if tokio::time::timeout(Duration::from_secs(2), e.to_device.send(event))
                .await
                .is_err()
            {
                tracing::warn!("device busy: a viewer message was dropped");
            }
        }
        None => tracing::warn!("no device connected: a viewer message was dropped"),
    }
}

async fn from_device(ends: &mut Option<DeviceEnds>) -> Option<SignalingMessage> {
    match ends {
        Some(e) => e.from_device.recv().await,
        None => std::future::pending().await,
    }
}

fn forward_from_device(core: &mut MediaSideCore, now: Instant, msg: &SignalingMessage) {
    let Some(m) = convert::device_message(msg) else {
        tracing::warn!(kind = ?msg.kind, "device message not relayed (no viewer id the link can carry)");
        return;
    };
    let (peer, correlation_id, sent) = match m {
        DeviceMessage::Answer(a) => (
            a.peer.clone(),
            a.correlation_id.clone(),
            core.send_answer(now, a),
        ),
        DeviceMessage::Offer(o) => (
            o.peer.clone(),
            o.correlation_id.clone(),
            core.send_offer(now, o),
        ),
        DeviceMessage::Candidate(c) => (
            c.peer.clone(),
            c.correlation_id.clone(),
            core.send_candidate(now, c),
        ),
        DeviceMessage::Refusal {
            peer,
            correlation_id,
            status,
            reason,
        } => {
            core.refuse_viewer(now, peer, correlation_id, status, &reason);
            return;
        }
    };
    if let Err(e) = sent {
        tracing::warn!(peer = peer.as_str(), "message too large for the link: {e}");
        core.refuse_viewer(
            now,
            peer,
            correlation_id,
            Status::TOO_LARGE,
            "answer too large for the camera link",
        );
    }
}

/// An answer for the signaling side, and the picture size it changed (a resolution control).
type Answer = (u32, CommandResponse, Option<(u32, u32)>);

/// The test pattern's configured size, if the source is one (snapshots need it).
fn test_pattern_size(device: &DeviceConfig) -> Option<(u32, u32)> {
    match &device.video {
        VideoSourceConfig::TestPattern { width, height, .. } => Some((*width, *height)),
        _ => None,
    }
}

fn answer_command(
    test_pattern: Option<(u32, u32)>,
    controller: Option<DeviceController>,
    request_id: u32,
    command: Command,
    answers: mpsc::Sender<Answer>,
) {
    match command {
        Command::SetControl(setting) => {
            let control = convert::control_from_setting(setting);
            tokio::spawn(async move {
                let result = match controller {
                    Some(c) => c.apply(control.clone()).await,
                    None => Err(crate::control::ControlError::Stopped),
                };
                let size = match (&result, &control) {
                    (Ok(()), Control::Resolution { width, height }) => Some((*width, *height)),
                    _ => None,
                };
                let response =
                    CommandResponse::Applied(result.map_err(|e| convert::control_status(&e)));
                let _ = answers.send((request_id, response, size)).await;
            });
        }
        Command::GetTime => {
            let micros = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let _ = answers.try_send((request_id, CommandResponse::Time(Ok(micros)), None));
        }
        Command::GetResolution => {
            let r = test_pattern
                .map(|(width, height)| Resolution { width, height })
                .ok_or(Status::UNAVAILABLE);
            let _ = answers.try_send((request_id, CommandResponse::Resolution(r), None));
        }
        Command::GetSnapshot { quality } => {
            // Encoding takes a few milliseconds of CPU: off the driver's task.
            tokio::task::spawn_blocking(move || {
                let jpeg = match test_pattern {
                    Some((w, h)) => kvs_media::snapshot::test_pattern_snapshot(w, h, quality)
                        .map_err(|e| {
                            tracing::warn!("snapshot failed: {e}");
                            Status::INTERNAL
                        }),
                    // Snapshots of H.264 file or stdin sources would need a decoder here.
                    None => Err(Status::UNAVAILABLE),
                };
                let _ = answers.blocking_send((request_id, CommandResponse::Snapshot(jpeg), None));
            });
        }
    }
}

/// Gives the carrier a moment to write what is queued (the "sleeping" status).
async fn drain_writes(link: &Link) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while link.writer.capacity() < link.writer.max_capacity() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last chunk may still sit in the carrier's write call.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
