//! A Rust viewer peer on str0m, for tests and benchmarks: offers recvonly video + audio and
//! a data channel, accepts the answer and trickled candidates, and yields received media as
//! complete frames (H.264/H.265 access units in Annex-B, VP8 frames, Opus packets) with
//! arrival times. It offers one video codec (H.264 unless [`ViewerCore::with_codecs`] says
//! otherwise) and depacketizes with str0m's depacketizers.
//!
//! [`ViewerCore`] is sans-IO; [`Viewer::start`] is a small tokio driver bound to 127.0.0.1;
//! [`SignaledViewer`] joins one to a device through any signaling client.

use crate::api::{Datagram, PeerError};
use crate::candidate::{parse_candidate, ParsedCandidate};
use crate::drain::{drain, DrainPolicy, DrainTarget};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

mod join;
pub use join::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerJoinError};

const PEER: &str = "viewer";
const MAX_DATA_QUEUE: usize = 64;
/// Longest wait between two timer turns.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// H.265: how long a received part of an access unit waits for the rest (see
/// [`ViewerCore::with_codecs`]); a frame's packets arrive in one burst, well within it.
const H265_JOIN_WAIT: Duration = Duration::from_millis(20);
/// H.265: the most bytes one joined access unit may grow to (a sender repeating one RTP
/// timestamp must not grow it without end).
const H265_JOIN_MAX: usize = 8 * 1024 * 1024;

/// One received media frame.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    /// H.264/H.265 access unit (Annex-B, 4-byte start codes), VP8 frame, or Opus packet.
    pub data: Bytes,
    /// RTP time in the codec's clock (90 kHz video, 48 kHz audio).
    pub rtp_time: u64,
    /// When the first packet of the frame arrived.
    pub arrival: Instant,
    /// Video: a keyframe (str0m's detection for the codec).
    pub keyframe: bool,
    /// False after a gap in RTP sequence numbers.
    pub contiguous: bool,
    /// RTP sequence numbers of the frame's first and last packet (extended to 64 bits), so
    /// a receiver can count lost packets between frames.
    pub seq_first: u64,
    pub seq_last: u64,
}

/// What the viewer observes.
#[derive(Debug, Clone)]
pub enum ViewerEvent {
    Connected,
    Video(ReceivedFrame),
    Audio(ReceivedFrame),
    ChannelOpen,
    Data { data: Bytes, binary: bool },
    Closed,
}

/// The sans-IO viewer.
pub struct ViewerCore {
    rtc: Rtc,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    channel: Option<ChannelId>,
    data_out: VecDeque<(Bytes, bool)>,
    transmits: VecDeque<Datagram>,
    events: VecDeque<ViewerEvent>,
    next_timeout: Instant,
    closed_reported: bool,
    /// Offer audio sendrecv (talk-back) instead of recvonly.
    talk: bool,
    /// H.265: join str0m's parts of one access unit (see [`ViewerCore::with_codecs`]).
    join_video: bool,
    /// H.265: the access unit being joined.
    held_video: Option<ReceivedFrame>,
}

impl ViewerCore {
    /// A viewer whose one host candidate is `local`.
    pub fn new(now: Instant, local: SocketAddr, cert: Option<str0m::config::DtlsCert>) -> Self {
        Self::with_audio(now, local, cert, crate::api::AudioCodec::Opus, false)
    }

    /// A viewer offering only `codec` for audio, sendrecv when `talk` (then
    /// [`send_audio`](Self::send_audio) talks back to the device).
    pub fn with_audio(
        now: Instant,
        local: SocketAddr,
        cert: Option<str0m::config::DtlsCert>,
        codec: crate::api::AudioCodec,
        talk: bool,
    ) -> Self {
        Self::with_codecs(now, local, cert, crate::api::VideoCodec::H264, codec, talk)
    }

    /// A viewer offering only `video` for video and `codec` for audio (sendrecv when `talk`).
    ///
    /// H.265: str0m's depacketizer ends a "frame" at the end of every fragmented NAL unit, so
    /// an access unit whose fragmented NAL unit is not its last (an SEI or a slice before
    /// others) comes out in parts with one RTP timestamp; the viewer joins them, emitting the
    /// access unit when data with another timestamp arrives or [`H265_JOIN_WAIT`] after.
    pub fn with_codecs(
        now: Instant,
        local: SocketAddr,
        cert: Option<str0m::config::DtlsCert>,
        video: crate::api::VideoCodec,
        codec: crate::api::AudioCodec,
        talk: bool,
    ) -> Self {
        let config = RtcConfig::new().clear_codecs();
        let config = match video {
            crate::api::VideoCodec::H264 => config.enable_h264(true),
            crate::api::VideoCodec::Vp8 => config.enable_vp8(true),
            crate::api::VideoCodec::H265 => config.enable_h265(true),
        };
        let mut config = match codec {
            crate::api::AudioCodec::Opus => config.enable_opus(true, false),
            crate::api::AudioCodec::Pcmu => config.enable_pcmu(true, false),
            crate::api::AudioCodec::Pcma => config.enable_pcma(true, false),
        };
        if let Some(cert) = cert {
            config = config.set_dtls_cert(cert);
        }
        let mut rtc = config.build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        Self {
            rtc,
            local,
            pending: None,
            video_mid: None,
            audio_mid: None,
            channel: None,
            data_out: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_timeout: now,
            closed_reported: false,
            talk,
            join_video: video == crate::api::VideoCodec::H265,
            held_video: None,
        }
    }

    /// Send one audio frame (one packet) to the device, at `rtp_time` on the codec's clock.
    pub fn send_audio(
        &mut self,
        now: Instant,
        rtp_time: u64,
        data: &[u8],
    ) -> Result<(), PeerError> {
        let mid = self
            .audio_mid
            .ok_or_else(|| rtc_err("no audio negotiated"))?;
        let writer = self
            .rtc
            .writer(mid)
            .ok_or_else(|| rtc_err("no audio stream (not sendrecv?)"))?;
        let params = *writer
            .payload_params()
            .next()
            .ok_or_else(|| rtc_err("no audio codec"))?;
        let time = str0m::media::MediaTime::new(rtp_time, params.spec().clock_rate);
        writer
            .write(params.pt(), now, time, data.to_vec())
            .map_err(|e| rtc_err(&e.to_string()))?;
        self.service(now);
        Ok(())
    }

    /// Our host candidate line (`candidate:...`).
    pub fn local_candidate(&self) -> String {
        Candidate::host(self.local, "udp")
            .map(|c| c.to_sdp_string())
            .unwrap_or_default()
    }

    /// Create the offer: recvonly video and audio, one data channel.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        let mut api = self.rtc.sdp_api();
        self.video_mid =
            Some(api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None));
        let audio = if self.talk {
            Direction::SendRecv
        } else {
            Direction::RecvOnly
        };
        self.audio_mid = Some(api.add_media(MediaKind::Audio, audio, None, None, None));
        api.add_channel("kvsDataChannel".to_string());
        let (offer, pending) = api.apply().ok_or_else(|| rtc_err("nothing to offer"))?;
        self.pending = Some(pending);
        self.service(now);
        Ok(offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::InvalidSdp {
            peer_id: PEER.into(),
            reason: e.to_string(),
        })?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| PeerError::NoPendingOffer(PEER.into()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| rtc_err(&e.to_string()))?;
        self.service(now);
        Ok(())
    }

    /// Answer an offer from the device on the live session (the device restarting ICE).
    pub fn accept_offer(&mut self, now: Instant, sdp: &str) -> Result<String, PeerError> {
        let offer =
            str0m::change::SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::InvalidSdp {
                peer_id: PEER.into(),
                reason: e.to_string(),
            })?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| rtc_err(&e.to_string()))?;
        self.service(now);
        Ok(answer.to_sdp_string())
    }

    pub fn add_remote_candidate(&mut self, now: Instant, candidate: &str) -> Result<(), PeerError> {
        match parse_candidate(candidate) {
            Ok(ParsedCandidate::Candidate(c)) => self.rtc.add_remote_candidate(c),
            Ok(ParsedCandidate::Ignored(_)) => {}
            Err(reason) => {
                return Err(PeerError::InvalidCandidate {
                    peer_id: PEER.into(),
                    reason,
                })
            }
        }
        self.service(now);
        Ok(())
    }

    /// Send a data channel message (queued until the channel opens).
    pub fn send_data(&mut self, now: Instant, data: Bytes, binary: bool) -> Result<(), PeerError> {
        if self.data_out.len() >= MAX_DATA_QUEUE {
            return Err(PeerError::DataQueueFull(PEER.into()));
        }
        self.data_out.push_back((data, binary));
        self.service(now);
        Ok(())
    }

    /// Ask the device for a keyframe: an RTCP PLI on the video stream, sent on the next
    /// timeout (str0m arms one for now).
    pub fn request_keyframe(&mut self, now: Instant) -> Result<(), PeerError> {
        let mid = self
            .video_mid
            .ok_or_else(|| rtc_err("no video negotiated"))?;
        let mut writer = self
            .rtc
            .writer(mid)
            .ok_or_else(|| rtc_err("no video stream"))?;
        writer
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .map_err(|e| rtc_err(&e.to_string()))?;
        self.service(now);
        Ok(())
    }

    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input) && self.rtc.handle_input(input).is_err() {
            self.rtc.disconnect();
        }
        self.service(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .held_video
            .as_ref()
            .is_some_and(|h| now >= h.arrival + H265_JOIN_WAIT)
        {
            self.flush_held_video();
        }
        if self.rtc.is_alive()
            && now >= self.next_timeout
            && self.rtc.handle_input(Input::Timeout(now)).is_err()
        {
            self.rtc.disconnect();
        }
        self.service(now);
    }

    pub fn close(&mut self, now: Instant) {
        self.flush_held_video();
        let _ = self.rtc.close();
        self.service(now);
    }

    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ViewerEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self, now: Instant) -> Instant {
        if self.closed_reported {
            // Nothing left to drive: the last timeout str0m gave is stale, and returning it
            // would wake the driver in a busy loop.
            return now + MAX_IDLE;
        }
        let due = self.next_timeout.clamp(now, now + MAX_IDLE);
        match &self.held_video {
            Some(h) => due.min((h.arrival + H265_JOIN_WAIT).max(now)),
            None => due,
        }
    }

    fn flush_held_video(&mut self) {
        if let Some(h) = self.held_video.take() {
            self.events.push_back(ViewerEvent::Video(h));
        }
    }

    /// H.265: add a part to the access unit being joined, or emit that one and start anew.
    fn join_video_part(&mut self, part: ReceivedFrame) {
        if let Some(h) = &mut self.held_video {
            if h.rtp_time == part.rtp_time
                && part.contiguous
                && h.data.len() + part.data.len() <= H265_JOIN_MAX
            {
                let mut data = Vec::with_capacity(h.data.len() + part.data.len());
                data.extend_from_slice(&h.data);
                data.extend_from_slice(&part.data);
                h.data = data.into();
                h.seq_last = part.seq_last;
                h.keyframe |= part.keyframe;
                return;
            }
        }
        self.flush_held_video();
        self.held_video = Some(part);
    }

    fn service(&mut self, now: Instant) {
        match drain(self, now, VIEWER_DRAIN) {
            Ok(Some(t)) => {
                self.next_timeout = t;
                return;
            }
            Ok(None) => {}
            Err(_) => self.rtc.disconnect(),
        }
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(ViewerEvent::Closed);
        }
    }

    fn on_event(&mut self, e: Event) -> bool {
        match e {
            Event::Connected => self.events.push_back(ViewerEvent::Connected),
            Event::MediaData(d) => {
                let frame = ReceivedFrame {
                    keyframe: d.is_keyframe(),
                    data: Bytes::copy_from_slice(&d.data),
                    rtp_time: d.time.numer(),
                    arrival: d.network_time,
                    contiguous: d.contiguous,
                    seq_first: **d.seq_range.start(),
                    seq_last: **d.seq_range.end(),
                };
                if Some(d.mid) == self.video_mid && self.join_video {
                    self.join_video_part(frame);
                } else if Some(d.mid) == self.video_mid {
                    self.events.push_back(ViewerEvent::Video(frame));
                } else if Some(d.mid) == self.audio_mid {
                    self.events.push_back(ViewerEvent::Audio(frame));
                }
            }
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                self.events.push_back(ViewerEvent::ChannelOpen);
                return true;
            }
            Event::ChannelData(d) => self.events.push_back(ViewerEvent::Data {
                data: Bytes::from(d.data),
                binary: d.binary,
            }),
            Event::ChannelBufferedAmountLow(_) => return true,
            _ => {}
        }
        false
    }

    fn flush_data(&mut self) {
        let Some(id) = self.channel else { return };
        while let Some((data, binary)) = self.data_out.front() {
            let Some(mut ch) = self.rtc.channel(id) else {
                return;
            };
            // The same soft limit as the device (see `DATA_SOFT_BUFFERED`).
            let low = crate::core::DATA_SOFT_BUFFERED / 2;
            if ch.buffered_amount() >= crate::core::DATA_SOFT_BUFFERED {
                ch.set_buffered_amount_low_threshold(low);
                return;
            }
            match ch.write(*binary, data) {
                Ok(true) => {
                    self.data_out.pop_front();
                }
                Ok(false) => {
                    ch.set_buffered_amount_low_threshold(low);
                    return;
                }
                Err(_) => {
                    self.data_out.pop_front();
                }
            }
        }
    }
}

/// The viewer handles its timeouts only when the driver says they are due.
const VIEWER_DRAIN: DrainPolicy = DrainPolicy {
    rounds: 4,
    due_timeouts: 0,
};

impl DrainTarget for ViewerCore {
    fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    fn before_round(&mut self) {
        self.flush_data();
    }

    fn transmit(&mut self, datagram: Datagram) {
        self.transmits.push_back(datagram);
    }

    fn event(&mut self, event: Event) -> bool {
        self.on_event(event)
    }
}

fn rtc_err(reason: &str) -> PeerError {
    PeerError::Rtc {
        peer_id: PEER.into(),
        reason: reason.to_string(),
    }
}

enum ViewerMsg {
    CreateOffer(oneshot::Sender<Result<String, PeerError>>),
    Answer(String, oneshot::Sender<Result<(), PeerError>>),
    Candidate(String, oneshot::Sender<Result<(), PeerError>>),
    Send(Bytes, bool, oneshot::Sender<Result<(), PeerError>>),
    Close(oneshot::Sender<()>),
}

/// Handle on a running viewer.
#[derive(Clone)]
pub struct ViewerHandle {
    tx: mpsc::Sender<ViewerMsg>,
    local_candidate: String,
}

/// Starts viewers.
pub struct Viewer;

impl Viewer {
    /// Bind 127.0.0.1 and start the viewer task. Events are delivered through a bounded
    /// channel; the viewer waits (does not drop) when it is full.
    pub async fn start() -> Result<(ViewerHandle, mpsc::Receiver<ViewerEvent>), PeerError> {
        let cert = tokio::task::spawn_blocking(crate::engine::generate_certificate)
            .await
            .map_err(|_| PeerError::Certificate)??;
        let sock = crate::engine::bind_udp((Ipv4Addr::LOCALHOST, 0).into())?;
        let local = sock.local_addr()?;
        let mut core = ViewerCore::new(Instant::now(), local, Some(cert));
        let local_candidate = core.local_candidate();
        let (tx, mut rx) = mpsc::channel::<ViewerMsg>(16);
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let deadline = core.poll_timeout(Instant::now());
                tokio::select! {
                    msg = rx.recv() => {
                        let now = Instant::now();
                        match msg {
                            Some(ViewerMsg::CreateOffer(r)) => { let _ = r.send(core.create_offer(now)); }
                            Some(ViewerMsg::Answer(s, r)) => { let _ = r.send(core.accept_answer(now, &s)); }
                            Some(ViewerMsg::Candidate(s, r)) => { let _ = r.send(core.add_remote_candidate(now, &s)); }
                            Some(ViewerMsg::Send(d, b, r)) => { let _ = r.send(core.send_data(now, d, b)); }
                            Some(ViewerMsg::Close(r)) => {
                                core.close(now);
                                flush(&sock, &mut core);
                                // str0m drains its close (RTCP BYE, SCTP shutdown, DTLS
                                // close_notify) over the following polls: keep driving it,
                                // briefly, or the device never hears the goodbye and holds the
                                // session until its ICE timeout.
                                let until = Instant::now() + CLOSE_DRAIN;
                                while core.is_alive() && Instant::now() < until {
                                    let at = core.poll_timeout(Instant::now()).min(until);
                                    tokio::time::sleep_until(at.into()).await;
                                    core.handle_timeout(Instant::now());
                                    flush(&sock, &mut core);
                                }
                                let _ = r.send(());
                                return;
                            }
                            None => return,
                        }
                    }
                    res = sock.recv_from(&mut buf) => {
                        if let Ok((n, src)) = res {
                            core.handle_datagram(Instant::now(), src, &buf[..n]);
                        }
                        // Take what else already arrived before sending (one pass of the
                        // loop per burst rather than per datagram).
                        for _ in 1..RECV_BURST {
                            let Ok((n, src)) = sock.try_recv_from(&mut buf) else { break };
                            core.handle_datagram(Instant::now(), src, &buf[..n]);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
                }
                flush(&sock, &mut core);
                while let Some(e) = core.poll_event() {
                    if ev_tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok((
            ViewerHandle {
                tx,
                local_candidate,
            },
            ev_rx,
        ))
    }
}

/// Datagrams a viewer reads in one pass of its loop when they are already waiting (then it
/// sends what they produced): fewer wake-ups and sends per burst than one pass each.
const RECV_BURST: usize = 32;

/// How long a closing viewer keeps sending its goodbye at most.
const CLOSE_DRAIN: Duration = Duration::from_millis(200);

fn flush(sock: &UdpSocket, core: &mut ViewerCore) {
    while let Some(d) = core.poll_transmit() {
        let _ = sock.try_send_to(&d.data, d.destination);
    }
}

impl ViewerHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, PeerError>>) -> ViewerMsg,
    ) -> Result<T, PeerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| PeerError::EngineStopped)?;
        rx.await.map_err(|_| PeerError::EngineStopped)?
    }

    pub async fn create_offer(&self) -> Result<String, PeerError> {
        self.call(ViewerMsg::CreateOffer).await
    }

    pub async fn accept_answer(&self, sdp: String) -> Result<(), PeerError> {
        self.call(|r| ViewerMsg::Answer(sdp, r)).await
    }

    pub async fn add_candidate(&self, candidate: String) -> Result<(), PeerError> {
        self.call(|r| ViewerMsg::Candidate(candidate, r)).await
    }

    pub async fn send_data(&self, data: Bytes, binary: bool) -> Result<(), PeerError> {
        self.call(|r| ViewerMsg::Send(data, binary, r)).await
    }

    /// The viewer's host candidate, to trickle to the device.
    pub fn local_candidate(&self) -> &str {
        &self.local_candidate
    }

    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(ViewerMsg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
