//! A Rust WebRTC viewer on str0m: the receiving end of a device's stream, for tests,
//! benchmarks and tools (a headless "browser").
//!
//! It creates the offer a browser viewer would (receive-only video and audio, plus a data
//! channel), takes the answer and trickled candidates, and yields what arrives: depacketised
//! H.264 access units (Annex-B) and Opus packets with their arrival times, and data-channel
//! messages. One UDP socket on one address (loopback by default) and one task.
//!
//! Events go through a bounded channel; when the consumer falls behind, *media* events are
//! dropped (and counted in [`ViewerStats`]) so the task never stalls; other events wait.

use crate::api::PeerError;
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Events waiting for the consumer.
const EVENT_QUEUE: usize = 1024;

/// What the viewer asks for.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// Address of the viewer's one UDP socket (its only host candidate).
    pub bind: IpAddr,
    pub video: bool,
    pub audio: bool,
    /// Label of the data channel the viewer opens, or none.
    pub data_channel: Option<String>,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            video: true,
            audio: true,
            data_channel: Some("kvsDataChannel".to_owned()),
        }
    }
}

/// Which track a received frame came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One depacketised frame.
#[derive(Debug, Clone)]
pub struct ReceivedMedia {
    pub kind: TrackKind,
    /// An H.264 access unit in Annex-B form, or one Opus packet.
    pub data: Arc<[u8]>,
    /// RTP timestamp (90 kHz video, 48 kHz audio).
    pub rtp_time: u64,
    /// When its first packet arrived.
    pub arrived: Instant,
    /// False after a gap in RTP sequence numbers.
    pub contiguous: bool,
}

/// What happens on the viewer's side.
#[derive(Debug, Clone)]
pub enum ViewerEvent {
    /// ICE and DTLS are up.
    Connected,
    DataChannelOpen,
    Media(ReceivedMedia),
    Data { data: Bytes, binary: bool },
    /// The session ended (remote close, failure or [`Viewer::close`]).
    Closed { reason: String },
}

/// Counters of a viewer.
#[derive(Debug, Default)]
pub struct ViewerStats {
    /// Media events dropped because the consumer was behind.
    pub media_events_dropped: AtomicU64,
}

enum Command {
    Answer(String, oneshot::Sender<Result<(), PeerError>>),
    Candidate(String, oneshot::Sender<Result<(), PeerError>>),
    Send(Bytes, bool, oneshot::Sender<Result<(), PeerError>>),
    Close,
}

/// A running viewer.
pub struct Viewer {
    offer: String,
    local_candidates: Vec<String>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<ViewerEvent>,
    stats: Arc<ViewerStats>,
}

impl Viewer {
    /// Bind the socket, build the offer and start the task.
    pub async fn start(config: ViewerConfig) -> Result<Self, PeerError> {
        let cert = tokio::task::spawn_blocking(crate::engine::generate_certificate)
            .await
            .map_err(|_| PeerError::Certificate)??;
        let socket = UdpSocket::bind(SocketAddr::new(config.bind, 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = RtcConfig::new().set_dtls_cert(cert).build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(|e| PeerError::Rtc {
            peer_id: "viewer".into(),
            reason: e.to_string(),
        })?;
        let local_candidates = vec![candidate.to_sdp_string()];
        rtc.add_local_candidate(candidate);

        let mut api = rtc.sdp_api();
        let video_mid = config.video.then(|| api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None));
        let audio_mid = config.audio.then(|| api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None));
        if let Some(label) = &config.data_channel {
            api.add_channel(label.clone());
        }
        let (offer, pending) = api.apply().ok_or_else(|| PeerError::Rtc {
            peer_id: "viewer".into(),
            reason: "nothing to offer".into(),
        })?;
        let offer_sdp = offer.to_sdp_string();

        let (cmd_tx, cmd_rx) = mpsc::channel(32);
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let stats = Arc::new(ViewerStats::default());
        let task = ViewerTask {
            rtc,
            socket,
            local,
            pending: Some(pending),
            video_mid,
            audio_mid,
            channel: None,
            events: event_tx,
            stats: stats.clone(),
        };
        tokio::spawn(task.run(cmd_rx));
        Ok(Self { offer: offer_sdp, local_candidates, commands: cmd_tx, events: event_rx, stats })
    }

    /// The offer to send to the device.
    pub fn offer_sdp(&self) -> &str {
        &self.offer
    }

    /// Our candidates (`candidate:…`), to trickle to the device.
    pub fn local_candidates(&self) -> &[String] {
        &self.local_candidates
    }

    /// Apply the device's answer.
    pub async fn apply_answer(&self, sdp: impl Into<String>) -> Result<(), PeerError> {
        self.request(|tx| Command::Answer(sdp.into(), tx)).await
    }

    /// Add a candidate the device trickled.
    pub async fn add_remote_candidate(&self, candidate: impl Into<String>) -> Result<(), PeerError> {
        self.request(|tx| Command::Candidate(candidate.into(), tx)).await
    }

    /// Send on the data channel (it must be open).
    pub async fn send_data(&self, data: impl Into<Bytes>, binary: bool) -> Result<(), PeerError> {
        self.request(|tx| Command::Send(data.into(), binary, tx)).await
    }

    /// The next event; `None` once the task has ended and every event was read.
    pub async fn next_event(&mut self) -> Option<ViewerEvent> {
        self.events.recv().await
    }

    pub fn stats(&self) -> &ViewerStats {
        &self.stats
    }

    /// Close the session.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
    }

    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), PeerError>>) -> Command,
    ) -> Result<(), PeerError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| PeerError::EngineStopped)?;
        rx.await.map_err(|_| PeerError::EngineStopped)?
    }
}

fn viewer_error(reason: impl ToString) -> PeerError {
    PeerError::Rtc { peer_id: "viewer".into(), reason: reason.to_string() }
}

struct ViewerTask {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    channel: Option<ChannelId>,
    events: mpsc::Sender<ViewerEvent>,
    stats: Arc<ViewerStats>,
}

impl ViewerTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2048];
        let reason = loop {
            let timeout = match self.drain().await {
                Ok(t) => t,
                Err(reason) => break reason,
            };
            if !self.rtc.is_alive() {
                break "session closed by the remote peer".to_owned();
            }
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Answer(sdp, reply)) => { let r = self.apply_answer(&sdp); let _ = reply.send(r); }
                    Some(Command::Candidate(c, reply)) => { let r = self.add_candidate(&c); let _ = reply.send(r); }
                    Some(Command::Send(data, binary, reply)) => { let r = self.send(&data, binary); let _ = reply.send(r); }
                    Some(Command::Close) | None => {
                        self.rtc.disconnect();
                        let _ = self.drain().await;
                        break "closed by the viewer".to_owned();
                    }
                },
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = received else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: self.local, contents });
                    if let Err(e) = self.rtc.handle_input(input) {
                        break format!("input rejected: {e}");
                    }
                }
                _ = tokio::time::sleep_until(timeout.into()) => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        break format!("timeout handling failed: {e}");
                    }
                }
            }
        };
        let _ = self.events.send(ViewerEvent::Closed { reason }).await;
    }

    /// Drain str0m's output until it asks for a timeout.
    async fn drain(&mut self) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => self.on_event(e).await,
                Err(e) => return Err(format!("poll failed: {e}")),
            }
        }
    }

    async fn on_event(&mut self, event: Event) {
        let out = match event {
            Event::Connected => ViewerEvent::Connected,
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                ViewerEvent::DataChannelOpen
            }
            Event::ChannelData(d) => ViewerEvent::Data { data: Bytes::from(d.data), binary: d.binary },
            Event::MediaData(d) => {
                let kind = if Some(d.mid) == self.video_mid {
                    TrackKind::Video
                } else if Some(d.mid) == self.audio_mid {
                    TrackKind::Audio
                } else {
                    return;
                };
                let media = ReceivedMedia {
                    kind,
                    data: d.data,
                    rtp_time: d.time.numer() as u64,
                    arrived: d.network_time,
                    contiguous: d.contiguous,
                };
                if self.events.try_send(ViewerEvent::Media(media)).is_err() {
                    self.stats.media_events_dropped.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ => return,
        };
        let _ = self.events.send(out).await;
    }

    fn apply_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| viewer_error(e))?;
        let pending = self.pending.take().ok_or_else(|| viewer_error("no offer pending"))?;
        self.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| viewer_error(e))
    }

    fn add_candidate(&mut self, candidate: &str) -> Result<(), PeerError> {
        match crate::candidate::parse_candidate(candidate) {
            Ok(crate::candidate::ParsedCandidate::Candidate(c)) => {
                self.rtc.add_remote_candidate(c);
                Ok(())
            }
            Ok(crate::candidate::ParsedCandidate::Ignored(_)) => Ok(()),
            Err(reason) => Err(PeerError::InvalidCandidate { peer_id: "viewer".into(), reason }),
        }
    }

    fn send(&mut self, data: &[u8], binary: bool) -> Result<(), PeerError> {
        let id = self.channel.ok_or_else(|| viewer_error("data channel not open"))?;
        let mut channel = self.rtc.channel(id).ok_or_else(|| viewer_error("data channel gone"))?;
        match channel.write(binary, data) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PeerError::DataQueueFull("viewer".into())),
            Err(e) => Err(viewer_error(e)),
        }
    }
}
