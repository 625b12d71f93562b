//! Virtual-time test harness (tests only): the device's [`PeerCore`] and any number of
//! [`ViewerCore`]s, both sans-IO, with a clock the harness advances and a modelled network
//! between them. No sockets, no sleeping: a test of 30 s of session life runs in milliseconds
//! and can assert the exact virtual instant of every event.
//!
//! Owns: the virtual clock (`now`), the links (one per direction per viewer, each with its
//! own [`Rule`] and delay), a camera that pushes synthetic frames on schedule, and logs of
//! what happened when (device events, viewer events, device timer turns, delivered datagrams).
//! Must not touch: the cores' internals — it drives them only through their public inputs,
//! the way [`crate::engine`] and the viewer driver do (tests may inspect internals).
//!
//! Stepping: everything due at `now` is processed (deliveries, camera, timers) until nothing
//! is left, then `now` jumps to the earliest wake-up of any party, the next delivery or the
//! next camera frame. Each core is woken the way its real driver ([`crate::engine`], the
//! viewer task) wakes it: the driver asks `poll_timeout` again after each input it handled,
//! and sleeps until then; a deadline is not re-asked because *another* party did something.
//! So a timer that input keeps pushing out is never reached here either. A core whose timer
//! stays due at the same instant (a busy loop in a real driver) makes the harness panic
//! rather than spin.

use crate::api::{Datagram, PeerCommand, PeerConfig, PeerError, PeerEvent};
use crate::core::PeerCore;
use crate::viewer::{ViewerCore, ViewerEvent};
use kvs_media::fanout::FanoutKind;
use kvs_platform::{EncodedFrame, FrameKind};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use str0m::config::DtlsCert;

/// The device's one host address.
pub(crate) const DEVICE_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000));

/// Most passes over one instant before the harness calls it a busy loop.
const MAX_PASSES_PER_INSTANT: usize = 10_000;

/// DTLS certificates for the device and the viewers: made once per test binary (slow).
fn certs() -> &'static (DtlsCert, DtlsCert) {
    static CERTS: OnceLock<(DtlsCert, DtlsCert)> = OnceLock::new();
    CERTS.get_or_init(|| {
        let make = || crate::engine::generate_certificate().expect("DTLS certificate");
        (make(), make())
    })
}

pub(crate) use crate::synthetic::{idr, non_idr, opus, strip_candidates};

/// A STUN Binding success response (type 0x0101).
pub(crate) fn is_stun_success(d: &[u8]) -> bool {
    d.len() >= 2 && d[0] == 0x01 && d[1] == 0x01
}

/// A DTLS handshake record carrying a ClientHello (content type 22, handshake type 1 after
/// the 13-byte record header).
pub(crate) fn is_client_hello(d: &[u8]) -> bool {
    d.len() > 13 && d[0] == 22 && d[13] == 1
}

/// What a link does with the datagrams handed to it.
#[derive(Clone, Copy)]
pub(crate) enum Rule {
    /// Deliver everything, after the link's delay.
    Pass,
    /// The link is cut.
    DropAll,
    /// Lose the datagrams the predicate picks.
    DropIf(fn(&[u8]) -> bool),
    /// Reorder: hold the datagrams `hold` picks until `after` has passed since the first
    /// datagram `release` picks was delivered; then deliver the held ones (in their order),
    /// and hold nothing more.
    HoldUntil {
        hold: fn(&[u8]) -> bool,
        release: fn(&[u8]) -> bool,
        after: Duration,
    },
}

/// One delivered datagram, as the log keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub at: Instant,
    /// The first bytes (enough to tell STUN, DTLS handshake types, RTP/RTCP apart).
    pub head: Vec<u8>,
}

/// One direction of one viewer's path.
pub(crate) struct Link {
    pub rule: Rule,
    pub delay: Duration,
    /// Scheduled datagrams, by delivery instant (equal instants in send order).
    in_flight: VecDeque<(Instant, Datagram)>,
    held: Vec<Datagram>,
    /// Set when the `HoldUntil` release datagram was delivered.
    release_at: Option<Instant>,
    pub delivered: Vec<Delivered>,
    pub dropped: usize,
}

impl Link {
    fn new() -> Self {
        Self {
            rule: Rule::Pass,
            delay: Duration::ZERO,
            in_flight: VecDeque::new(),
            held: Vec::new(),
            release_at: None,
            delivered: Vec::new(),
            dropped: 0,
        }
    }

    fn send(&mut self, now: Instant, d: Datagram) {
        match self.rule {
            Rule::DropAll => self.dropped += 1,
            Rule::DropIf(lose) if lose(&d.data) => self.dropped += 1,
            Rule::HoldUntil { hold, .. }
                if self.release_at.is_none_or(|r| now < r) && hold(&d.data) =>
            {
                self.held.push(d)
            }
            _ => self.schedule(now + self.delay, d),
        }
    }

    fn schedule(&mut self, at: Instant, d: Datagram) {
        let i = self.in_flight.partition_point(|(t, _)| *t <= at);
        self.in_flight.insert(i, (at, d));
    }

    /// The next datagram due at `now`, logged as delivered.
    fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if let Some(r) = self.release_at {
            if r <= now && !self.held.is_empty() {
                for d in std::mem::take(&mut self.held) {
                    self.schedule(now, d);
                }
            }
        }
        if self.in_flight.front().is_none_or(|(t, _)| *t > now) {
            return None;
        }
        let (_, d) = self.in_flight.pop_front()?;
        if let Rule::HoldUntil { release, after, .. } = self.rule {
            if self.release_at.is_none() && release(&d.data) {
                self.release_at = Some(now + after);
            }
        }
        self.delivered.push(Delivered {
            at: now,
            head: d.data[..d.data.len().min(32)].to_vec(),
        });
        Some(d)
    }

    fn next_instant(&self) -> Option<Instant> {
        let release = self.release_at.filter(|_| !self.held.is_empty());
        match (self.in_flight.front().map(|(t, _)| *t), release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Datagrams held by a `HoldUntil` rule right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Delivery instants of the datagrams `pick` selects.
    pub fn delivered_at(&self, pick: fn(&[u8]) -> bool) -> Vec<Instant> {
        self.delivered
            .iter()
            .filter(|d| pick(&d.head))
            .map(|d| d.at)
            .collect()
    }
}

/// A viewer in the simulation.
pub(crate) struct SimViewer {
    pub peer_id: String,
    pub addr: SocketAddr,
    pub core: ViewerCore,
    /// When its driver next runs its timer (asked after its last input).
    wake: Instant,
    pub events: Vec<(Instant, ViewerEvent)>,
    /// Viewer → device.
    pub up: Link,
    /// Device → viewer.
    pub down: Link,
}

impl SimViewer {
    /// Video frames received, in order.
    pub fn video(&self) -> Vec<(Instant, &crate::viewer::ReceivedFrame)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                ViewerEvent::Video(f) => Some((*t, f)),
                _ => None,
            })
            .collect()
    }

    pub fn audio_count(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, ViewerEvent::Audio(_)))
            .count()
    }

    pub fn connected_at(&self) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, ViewerEvent::Connected))
            .map(|(t, _)| *t)
    }
}

/// One frame the camera pushed.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub at: Instant,
    pub kind: FanoutKind,
    pub frame: EncodedFrame,
}

/// A camera (and microphone) pushing frames on a fixed schedule; like the application, it
/// makes the next video frame an IDR after [`PeerEvent::KeyframeRequested`].
pub(crate) struct Camera {
    pub video_interval: Duration,
    pub audio_interval: Option<Duration>,
    next_video: Instant,
    next_audio: Instant,
    frames: u64,
    keyframe_requested: bool,
    pub pushed: Vec<Pushed>,
}

/// The device, its viewers, the network and the clock.
pub(crate) struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub device: PeerCore,
    /// When the device's driver next runs its timer (asked after its last input).
    device_wake: Instant,
    pub device_events: Vec<(Instant, PeerEvent)>,
    /// Instants the device's timer ran ([`PeerCore::handle_timeout`]).
    pub device_turns: Vec<Instant>,
    pub viewers: Vec<SimViewer>,
    pub camera: Option<Camera>,
    /// Device datagrams to no viewer's address.
    pub unroutable: usize,
}

impl Sim {
    pub fn new(config: PeerConfig) -> Self {
        // RUST_LOG=debug shows the cores' (and str0m's) logs of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let start = Instant::now();
        let cert = certs().0.clone();
        let device = PeerCore::new(config, vec![DEVICE_ADDR], Some(cert));
        Self {
            start,
            now: start,
            device_wake: device.poll_timeout(start),
            device,
            device_events: Vec::new(),
            device_turns: Vec::new(),
            viewers: Vec::new(),
            camera: None,
            unroutable: 0,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// A viewer at 10.0.0.(2 + index):6000; returns its index.
    pub fn add_viewer(&mut self, peer_id: &str) -> usize {
        self.add_audio_viewer(peer_id, crate::api::AudioCodec::Opus, false)
    }

    /// A viewer offering only `video` for video (Opus audio); returns its index.
    pub fn add_video_viewer(&mut self, peer_id: &str, video: crate::api::VideoCodec) -> usize {
        self.add_viewer_with(peer_id, video, crate::api::AudioCodec::Opus, false)
    }

    /// A viewer offering only `codec` for audio, sendrecv when `talk`; returns its index.
    pub fn add_audio_viewer(
        &mut self,
        peer_id: &str,
        codec: crate::api::AudioCodec,
        talk: bool,
    ) -> usize {
        self.add_viewer_with(peer_id, crate::api::VideoCodec::H264, codec, talk)
    }

    fn add_viewer_with(
        &mut self,
        peer_id: &str,
        video: crate::api::VideoCodec,
        codec: crate::api::AudioCodec,
        talk: bool,
    ) -> usize {
        let i = self.viewers.len();
        let addr = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 0, 2 + i as u8),
            6000,
        ));
        let core =
            ViewerCore::with_codecs(self.now, addr, Some(certs().1.clone()), video, codec, talk);
        self.viewers.push(SimViewer {
            peer_id: peer_id.to_string(),
            addr,
            wake: core.poll_timeout(self.now),
            core,
            events: Vec::new(),
            up: Link::new(),
            down: Link::new(),
        });
        i
    }

    /// Start pushing video every `video_interval` (an IDR first and after each keyframe
    /// request, deltas otherwise) and, when given, Opus every `audio_interval`.
    pub fn start_camera(&mut self, video_interval: Duration, audio_interval: Option<Duration>) {
        self.camera = Some(Camera {
            video_interval,
            audio_interval,
            next_video: self.now,
            next_audio: self.now,
            frames: 0,
            keyframe_requested: true,
            pushed: Vec::new(),
        });
    }

    pub fn command(&mut self, cmd: PeerCommand) -> Result<(), PeerError> {
        self.with_device(|device, now| device.handle_command(now, cmd))
    }

    /// Give the device an input now (its driver then asks for its next timeout).
    pub fn with_device<R>(&mut self, input: impl FnOnce(&mut PeerCore, Instant) -> R) -> R {
        let r = input(&mut self.device, self.now);
        self.device_wake = self.device.poll_timeout(self.now);
        self.collect();
        r
    }

    /// Give viewer `i` an input now.
    pub fn with_viewer<R>(
        &mut self,
        i: usize,
        input: impl FnOnce(&mut ViewerCore, Instant) -> R,
    ) -> R {
        let v = &mut self.viewers[i];
        let r = input(&mut v.core, self.now);
        v.wake = v.core.poll_timeout(self.now);
        self.collect();
        r
    }

    /// Viewer `i` creates its offer and it reaches the device (signaling takes no time).
    /// `strip` leaves the SDP's candidates out (they then only come by trickle).
    pub fn send_offer(&mut self, i: usize, strip: bool) -> Result<(), PeerError> {
        let sdp = self.with_viewer(i, |core, now| core.create_offer(now))?;
        let sdp = if strip { strip_candidates(&sdp) } else { sdp };
        let peer_id = self.viewers[i].peer_id.clone();
        self.command(PeerCommand::RemoteOffer { peer_id, sdp })
    }

    /// Viewer `i`'s host candidate reaches the device.
    pub fn send_viewer_candidate(&mut self, i: usize) -> Result<(), PeerError> {
        let v = &self.viewers[i];
        let cmd = PeerCommand::RemoteCandidate {
            peer_id: v.peer_id.clone(),
            candidate: v.core.local_candidate(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        };
        self.command(cmd)
    }

    /// The device's answer to viewer `i` reaches it (candidates stripped when `strip`).
    pub fn deliver_answer(&mut self, i: usize, strip: bool) {
        let peer_id = self.viewers[i].peer_id.clone();
        let sdp = self
            .device_events
            .iter()
            .find_map(|(_, e)| match e {
                PeerEvent::LocalAnswer { peer_id: p, sdp } if *p == peer_id => Some(sdp.clone()),
                _ => None,
            })
            .expect("the device answered");
        let sdp = if strip { strip_candidates(&sdp) } else { sdp };
        self.with_viewer(i, |core, now| core.accept_answer(now, &sdp))
            .expect("the viewer accepts the answer");
    }

    /// The device's trickled candidates for viewer `i` reach it.
    pub fn deliver_device_candidates(&mut self, i: usize) {
        let peer_id = self.viewers[i].peer_id.clone();
        let candidates: Vec<String> = self
            .device_events
            .iter()
            .filter_map(|(_, e)| match e {
                PeerEvent::LocalCandidate {
                    peer_id: p,
                    candidate,
                    ..
                } if *p == peer_id => Some(candidate.clone()),
                _ => None,
            })
            .collect();
        assert!(!candidates.is_empty(), "the device trickled candidates");
        for c in candidates {
            self.with_viewer(i, |core, now| core.add_remote_candidate(now, &c))
                .expect("the viewer takes the device's candidate");
        }
    }

    /// The usual exchange, all at `now`: offer, the viewer's candidate, the answer, the
    /// device's candidates.
    pub fn signal(&mut self, i: usize) {
        self.send_offer(i, false).expect("offer accepted");
        self.send_viewer_candidate(i).expect("candidate accepted");
        self.deliver_answer(i, false);
        self.deliver_device_candidates(i);
    }

    /// Push one frame to the device now.
    pub fn push(&mut self, kind: FanoutKind, frame: EncodedFrame) {
        self.with_device(|device, now| device.push_frame(now, kind, &frame));
        if let Some(cam) = &mut self.camera {
            cam.pushed.push(Pushed {
                at: self.now,
                kind,
                frame,
            });
        }
        self.collect();
    }

    /// Run until `done` holds (true) or `limit` of virtual time has passed (false).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            let next = self.next_instant();
            if next > deadline {
                self.now = deadline;
                self.pump();
                return done(self);
            }
            self.now = next;
        }
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    /// Run up to the instant `t` (not before now).
    pub fn run_to(&mut self, t: Instant) {
        self.run_for(t.saturating_duration_since(self.now));
    }

    /// The first device event `pick` selects, with its instant.
    pub fn device_event(&self, pick: impl Fn(&PeerEvent) -> bool) -> Option<(Instant, &PeerEvent)> {
        self.device_events
            .iter()
            .find(|(_, e)| pick(e))
            .map(|(t, e)| (*t, e))
    }

    /// Instants of the device events `pick` selects.
    pub fn device_event_times(&self, pick: impl Fn(&PeerEvent) -> bool) -> Vec<Instant> {
        self.device_events
            .iter()
            .filter(|(_, e)| pick(e))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The logs, one line per event with its virtual instant (for failing tests).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (t, e) in &self.device_events {
            out += &format!("{:>12?} device {e:?}\n", *t - self.start);
        }
        for v in &self.viewers {
            out += &format!(
                "{}: {} datagrams up (first {:?}), {} down (first {:?})\n",
                v.peer_id,
                v.up.delivered.len(),
                v.up.delivered.first().map(|d| d.at - self.start),
                v.down.delivered.len(),
                v.down.delivered.first().map(|d| d.at - self.start),
            );
            for (t, e) in &v.events {
                if !matches!(e, ViewerEvent::Video(_) | ViewerEvent::Audio(_)) {
                    out += &format!("{:>12?} {} {e:?}\n", *t - self.start, v.peer_id);
                }
            }
        }
        out
    }

    /// Everything due at `now`, until nothing is.
    fn pump(&mut self) {
        let now = self.now;
        for pass in 0.. {
            if pass >= MAX_PASSES_PER_INSTANT {
                let device = self.device_wake <= now;
                let viewers: Vec<bool> = self.viewers.iter().map(|v| v.wake <= now).collect();
                panic!(
                    "busy loop at {:?}: a timer stays due (device {device}, viewers {viewers:?})",
                    self.elapsed()
                );
            }
            let mut busy = false;
            let mut device_input = false;
            for v in &mut self.viewers {
                while let Some(d) = v.up.pop_due(now) {
                    self.device
                        .handle_datagram(now, d.source, d.destination, &d.data);
                    device_input = true;
                }
                while let Some(d) = v.down.pop_due(now) {
                    v.core.handle_datagram(now, d.source, &d.data);
                    v.wake = v.core.poll_timeout(now);
                    busy = true;
                }
            }
            if device_input {
                self.device_wake = self.device.poll_timeout(now);
            }
            busy |= device_input | self.camera_turn();
            if self.device_wake <= now {
                self.device.handle_timeout(now);
                self.device_turns.push(now);
                self.device_wake = self.device.poll_timeout(now);
                busy = true;
            }
            for v in &mut self.viewers {
                if v.wake <= now {
                    v.core.handle_timeout(now);
                    v.wake = v.core.poll_timeout(now);
                    busy = true;
                }
            }
            self.collect();
            if !busy {
                return;
            }
        }
    }

    /// Push the camera's frames that are due; true when it pushed any.
    fn camera_turn(&mut self) -> bool {
        let now = self.now;
        let Some(cam) = &mut self.camera else {
            return false;
        };
        let mut frames = Vec::new();
        if cam.next_video <= now {
            let n = cam.frames as u8;
            let (data, kind) = if std::mem::take(&mut cam.keyframe_requested) {
                (idr(n), FrameKind::Key)
            } else {
                (non_idr(n), FrameKind::Delta)
            };
            let ts = (now - self.start).as_micros() as u64;
            frames.push((FanoutKind::Video, EncodedFrame::new(data, ts, kind)));
            cam.frames += 1;
            cam.next_video += cam.video_interval;
        }
        if let Some(interval) = cam.audio_interval {
            if cam.next_audio <= now {
                let ts = (now - self.start).as_micros() as u64;
                let n = (ts / 1000) as u8;
                frames.push((
                    FanoutKind::Audio,
                    EncodedFrame::new(opus(n), ts, FrameKind::Key),
                ));
                cam.next_audio += interval;
            }
        }
        let pushed = !frames.is_empty();
        for (kind, frame) in frames {
            self.push(kind, frame);
        }
        pushed
    }

    fn next_instant(&self) -> Instant {
        let mut t = self.device_wake;
        for v in &self.viewers {
            t = t.min(v.wake);
            for link in [&v.up, &v.down] {
                if let Some(d) = link.next_instant() {
                    t = t.min(d);
                }
            }
        }
        if let Some(cam) = &self.camera {
            t = t.min(cam.next_video);
            if cam.audio_interval.is_some() {
                t = t.min(cam.next_audio);
            }
        }
        t.max(self.now)
    }

    /// Move every core's output: datagrams onto the links, events into the logs.
    fn collect(&mut self) {
        let now = self.now;
        while let Some(d) = self.device.poll_transmit() {
            match self.viewers.iter_mut().find(|v| v.addr == d.destination) {
                Some(v) => v.down.send(now, d),
                None => self.unroutable += 1,
            }
        }
        while let Some(e) = self.device.poll_event() {
            if matches!(e, PeerEvent::KeyframeRequested { .. }) {
                if let Some(cam) = &mut self.camera {
                    cam.keyframe_requested = true;
                }
            }
            self.device_events.push((now, e));
        }
        for v in &mut self.viewers {
            while let Some(d) = v.core.poll_transmit() {
                v.up.send(now, d);
            }
            while let Some(e) = v.core.poll_event() {
                v.events.push((now, e));
            }
        }
    }
}
