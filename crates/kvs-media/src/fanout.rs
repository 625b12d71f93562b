//! Fan-out of encoded frames to sessions: encode once, deliver to every viewer.
//!
//! One capture produces one [`EncodedFrame`]; [`Fanout::push`] hands it to every subscriber
//! (one per peer session) without copying the bytes — [`EncodedFrame::data`] is a
//! reference-counted `Bytes`, so N subscribers hold N handles to one buffer.
//!
//! Each [`Subscriber`] has a gate and a small bounded queue:
//!
//! ```text
//!  WaitingForTransport ──transport_ready()──▶ WaitingForKeyframe ──key frame──▶ Streaming
//!     (drop everything)                        (video: drop deltas)
//!         ▲                                          ▲                            │
//!         └──────────── transport_lost() ────────────┴──── video queue overflow ──┘
//! ```
//!
//! Audio skips `WaitingForKeyframe`: every audio frame decodes on its own.
//!
//! # Drop policy (bounded per subscriber; a slow subscriber never affects the others)
//! - **Video**: when a frame arrives and the queue is full, the queued frames *and* the new
//!   one are dropped (a delta frame after a gap would only decode to garbage), the subscriber
//!   goes back to `WaitingForKeyframe` and reports that it needs a keyframe
//!   ([`PushOutcome::KeyframeNeeded`], also latched for [`Subscriber::take_keyframe_needed`]).
//!   A keyframe that arrives while the queue is full replaces the queue instead: it is a
//!   clean restart point.
//! - **Audio**: the oldest queued frame is dropped (late audio is worthless; fresh audio
//!   plays).
//!
//! Every dropped frame is counted in [`SubscriberStats::frames_dropped`]; every frame taken
//! with [`Subscriber::pop`] counts as sent.
//!
//! This module is pure and synchronous: no clocks, no I/O, no transport knowledge. The peer
//! engine owns one subscriber per session and media kind, tells it when SRTP is ready, and
//! drains it into the RTP packetizer.

use kvs_platform::EncodedFrame;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// What a subscriber queues: anything that says whether a decoder can start from it.
/// Implemented for [`EncodedFrame`] and for frames already cut into RTP payloads
/// ([`crate::rtp::PacketizedFrame`]); an `Arc` of either is queued without copying.
pub trait GatedFrame: Clone {
    /// True for frames a decoder can start from (every audio frame).
    fn is_key(&self) -> bool;
}

impl GatedFrame for EncodedFrame {
    fn is_key(&self) -> bool {
        EncodedFrame::is_key(self)
    }
}

impl<F: GatedFrame> GatedFrame for std::sync::Arc<F> {
    fn is_key(&self) -> bool {
        F::is_key(self)
    }
}

/// Which kind of media a subscriber carries; decides the gate and the drop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FanoutKind {
    Video,
    Audio,
}

/// Default queue length for video subscribers (frames), as in the seed SDK.
pub const DEFAULT_VIDEO_QUEUE: usize = 3;
/// Default queue length for audio subscribers (frames), as in the seed SDK.
pub const DEFAULT_AUDIO_QUEUE: usize = 10;

/// The subscriber's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The transport (SRTP) is not ready: every frame is dropped.
    WaitingForTransport,
    /// Video only: waiting for a keyframe; delta frames are dropped.
    WaitingForKeyframe,
    /// Frames are queued for sending.
    Streaming,
}

/// What happened to one pushed frame at one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The frame was queued.
    Queued,
    /// The frame was queued and the oldest queued frame was dropped (audio overflow).
    QueuedDroppedOldest,
    /// The frame was dropped because the gate is closed (no transport, or waiting for a
    /// keyframe).
    Gated,
    /// Video overflow: the queue and this frame were dropped and the subscriber now waits for
    /// a keyframe. The caller should ask the encoder for one.
    KeyframeNeeded,
}

/// Per-subscriber counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Frames handed out by [`Subscriber::pop`].
    pub frames_sent: u64,
    /// Frames dropped: gated, overflowed, or reported with [`Subscriber::record_dropped`].
    pub frames_dropped: u64,
}

/// One session's view of one media stream: gate, bounded queue and counters.
#[derive(Debug)]
pub struct Subscriber<F = EncodedFrame> {
    kind: FanoutKind,
    gate: Gate,
    queue: VecDeque<F>,
    capacity: usize,
    keyframe_needed: bool,
    stats: SubscriberStats,
}

impl<F: GatedFrame> Subscriber<F> {
    /// A subscriber with the seed's default queue length for `kind`.
    pub fn new(kind: FanoutKind) -> Self {
        let capacity = match kind {
            FanoutKind::Video => DEFAULT_VIDEO_QUEUE,
            FanoutKind::Audio => DEFAULT_AUDIO_QUEUE,
        };
        Self::with_capacity(kind, capacity)
    }

    /// A subscriber holding at most `capacity` frames (at least 1).
    pub fn with_capacity(kind: FanoutKind, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            kind,
            gate: Gate::WaitingForTransport,
            queue: VecDeque::with_capacity(capacity),
            capacity,
            keyframe_needed: false,
            stats: SubscriberStats::default(),
        }
    }

    pub fn kind(&self) -> FanoutKind {
        self.kind
    }

    pub fn gate(&self) -> Gate {
        self.gate
    }

    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// Frames waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// SRTP is ready. Video now waits for a keyframe (and reports that it needs one: returns
    /// true); audio streams at once (returns false). Calling it again is harmless.
    pub fn transport_ready(&mut self) -> bool {
        if self.gate != Gate::WaitingForTransport {
            return false;
        }
        match self.kind {
            FanoutKind::Video => {
                self.gate = Gate::WaitingForKeyframe;
                self.keyframe_needed = true;
                true
            }
            FanoutKind::Audio => {
                self.gate = Gate::Streaming;
                false
            }
        }
    }

    /// The transport went away: drop the queue (counted) and close the gate.
    pub fn transport_lost(&mut self) {
        self.drop_queue();
        self.gate = Gate::WaitingForTransport;
        self.keyframe_needed = false;
    }

    /// Offer one frame to this subscriber. Never blocks; cloning the frame only bumps the
    /// reference count of its bytes.
    pub fn push(&mut self, frame: &F) -> PushOutcome {
        match self.gate {
            Gate::WaitingForTransport => {
                self.stats.frames_dropped += 1;
                return PushOutcome::Gated;
            }
            Gate::WaitingForKeyframe => {
                if !frame.is_key() {
                    self.stats.frames_dropped += 1;
                    return PushOutcome::Gated;
                }
                self.gate = Gate::Streaming;
                self.keyframe_needed = false;
            }
            Gate::Streaming => {}
        }

        if self.queue.len() < self.capacity {
            self.queue.push_back(frame.clone());
            return PushOutcome::Queued;
        }

        match self.kind {
            FanoutKind::Audio => {
                self.queue.pop_front();
                self.stats.frames_dropped += 1;
                self.queue.push_back(frame.clone());
                PushOutcome::QueuedDroppedOldest
            }
            FanoutKind::Video if frame.is_key() => {
                // A keyframe is a clean restart: everything before it can go.
                self.drop_queue();
                self.queue.push_back(frame.clone());
                PushOutcome::Queued
            }
            FanoutKind::Video => {
                self.drop_queue();
                self.stats.frames_dropped += 1;
                self.gate = Gate::WaitingForKeyframe;
                self.keyframe_needed = true;
                PushOutcome::KeyframeNeeded
            }
        }
    }

    /// Take the next frame to send; it counts as sent.
    pub fn pop(&mut self) -> Option<F> {
        let frame = self.queue.pop_front()?;
        self.stats.frames_sent += 1;
        Some(frame)
    }

    /// Put back a frame taken with [`pop`](Self::pop) that could not be sent yet (it goes to
    /// the front and no longer counts as sent).
    pub fn unpop(&mut self, frame: F) {
        self.stats.frames_sent = self.stats.frames_sent.saturating_sub(1);
        self.queue.push_front(frame);
        if self.queue.len() > self.capacity {
            self.queue.pop_back();
            self.stats.frames_dropped += 1;
        }
    }

    /// Count a frame taken with [`pop`](Self::pop) that the transport then refused, moving
    /// it from sent to dropped. For video the subscriber then waits for a keyframe again.
    pub fn record_dropped(&mut self) {
        self.stats.frames_sent = self.stats.frames_sent.saturating_sub(1);
        self.stats.frames_dropped += 1;
        if self.kind == FanoutKind::Video && self.gate == Gate::Streaming {
            self.drop_queue();
            self.gate = Gate::WaitingForKeyframe;
            self.keyframe_needed = true;
        }
    }

    /// True once after the subscriber started waiting for a keyframe (transport ready or video
    /// overflow); the caller turns it into one keyframe request.
    pub fn take_keyframe_needed(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_needed)
    }

    fn drop_queue(&mut self) {
        self.stats.frames_dropped += self.queue.len() as u64;
        self.queue.clear();
    }
}

/// Subscribers of one media stream keyed by session id.
#[derive(Debug)]
pub struct Fanout<K> {
    kind: FanoutKind,
    capacity: usize,
    subscribers: HashMap<K, Subscriber>,
}

impl<K: Eq + Hash + Clone> Fanout<K> {
    /// A fan-out whose subscribers hold at most `capacity` frames each.
    pub fn new(kind: FanoutKind, capacity: usize) -> Self {
        Self {
            kind,
            capacity,
            subscribers: HashMap::new(),
        }
    }

    /// Add a subscriber (gate closed until [`Subscriber::transport_ready`]). Replaces an
    /// existing subscriber with the same key.
    pub fn subscribe(&mut self, key: K) -> &mut Subscriber {
        self.subscribers.insert(
            key.clone(),
            Subscriber::with_capacity(self.kind, self.capacity),
        );
        self.subscribers.get_mut(&key).expect("just inserted")
    }

    /// Remove a subscriber, returning its final counters.
    pub fn unsubscribe(&mut self, key: &K) -> Option<SubscriberStats> {
        self.subscribers.remove(key).map(|s| s.stats())
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut Subscriber> {
        self.subscribers.get_mut(key)
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Offer `frame` to every subscriber. Returns the keys of subscribers that now need a
    /// keyframe because of a video overflow.
    pub fn push(&mut self, frame: &EncodedFrame) -> Vec<K> {
        let mut need = Vec::new();
        for (key, sub) in self.subscribers.iter_mut() {
            if sub.push(frame) == PushOutcome::KeyframeNeeded {
                need.push(key.clone());
            }
        }
        need
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_platform::FrameKind;

    fn key(ts: u64) -> EncodedFrame {
        EncodedFrame::new(vec![0, 0, 0, 1, 0x65, ts as u8], ts, FrameKind::Key)
    }
    fn delta(ts: u64) -> EncodedFrame {
        EncodedFrame::new(vec![0, 0, 0, 1, 0x41, ts as u8], ts, FrameKind::Delta)
    }
    fn audio(ts: u64) -> EncodedFrame {
        EncodedFrame::new(vec![0xfc, ts as u8], ts, FrameKind::Key)
    }

    #[test]
    fn drops_everything_before_transport_is_ready() {
        let mut s = Subscriber::new(FanoutKind::Video);
        assert_eq!(s.push(&key(0)), PushOutcome::Gated);
        assert_eq!(s.push(&delta(1)), PushOutcome::Gated);
        assert_eq!(s.queued(), 0);
        assert_eq!(
            s.stats(),
            SubscriberStats {
                frames_sent: 0,
                frames_dropped: 2
            }
        );
        let mut a = Subscriber::new(FanoutKind::Audio);
        assert_eq!(a.push(&audio(0)), PushOutcome::Gated);
        assert_eq!(a.pop(), None);
    }

    #[test]
    fn video_waits_for_keyframe_after_transport_ready() {
        let mut s = Subscriber::new(FanoutKind::Video);
        assert!(s.transport_ready());
        assert!(s.take_keyframe_needed());
        assert!(!s.take_keyframe_needed(), "latched once");
        assert_eq!(s.gate(), Gate::WaitingForKeyframe);
        assert_eq!(s.push(&delta(1)), PushOutcome::Gated);
        assert_eq!(s.push(&key(2)), PushOutcome::Queued);
        assert_eq!(s.gate(), Gate::Streaming);
        assert_eq!(s.push(&delta(3)), PushOutcome::Queued);
        let first = s.pop().unwrap();
        assert!(first.is_key());
        assert_eq!(first.timestamp_us, 2);
        assert_eq!(s.pop().unwrap().timestamp_us, 3);
        assert_eq!(
            s.stats(),
            SubscriberStats {
                frames_sent: 2,
                frames_dropped: 1
            }
        );
    }

    #[test]
    fn audio_streams_at_once_when_transport_ready() {
        let mut a = Subscriber::new(FanoutKind::Audio);
        assert!(!a.transport_ready());
        assert!(!a.take_keyframe_needed());
        assert_eq!(a.push(&audio(1)), PushOutcome::Queued);
        assert_eq!(a.pop().unwrap().timestamp_us, 1);
    }

    #[test]
    fn video_overflow_drops_queue_and_asks_for_keyframe() {
        let mut s = Subscriber::with_capacity(FanoutKind::Video, 3);
        s.transport_ready();
        s.take_keyframe_needed();
        s.push(&key(0));
        s.push(&delta(1));
        s.push(&delta(2));
        assert_eq!(s.push(&delta(3)), PushOutcome::KeyframeNeeded);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.gate(), Gate::WaitingForKeyframe);
        assert!(s.take_keyframe_needed());
        assert_eq!(s.stats().frames_dropped, 4);
        // Deltas stay gated until the next keyframe.
        assert_eq!(s.push(&delta(4)), PushOutcome::Gated);
        assert_eq!(s.push(&key(5)), PushOutcome::Queued);
        assert_eq!(s.pop().unwrap().timestamp_us, 5);
    }

    #[test]
    fn video_keyframe_on_full_queue_replaces_it() {
        let mut s = Subscriber::with_capacity(FanoutKind::Video, 2);
        s.transport_ready();
        s.push(&key(0));
        s.push(&delta(1));
        assert_eq!(s.push(&key(2)), PushOutcome::Queued);
        assert_eq!(s.queued(), 1);
        assert_eq!(s.gate(), Gate::Streaming);
        assert_eq!(s.pop().unwrap().timestamp_us, 2);
        assert_eq!(s.stats().frames_dropped, 2);
    }

    #[test]
    fn audio_overflow_drops_oldest() {
        let mut a = Subscriber::with_capacity(FanoutKind::Audio, 10);
        a.transport_ready();
        for ts in 0..12 {
            a.push(&audio(ts));
        }
        assert_eq!(a.queued(), 10);
        assert_eq!(a.stats().frames_dropped, 2);
        let got: Vec<u64> = std::iter::from_fn(|| a.pop())
            .map(|f| f.timestamp_us)
            .collect();
        assert_eq!(got, (2..12).collect::<Vec<_>>());
        assert_eq!(a.stats().frames_sent, 10);
    }

    #[test]
    fn transport_lost_closes_gate_and_counts_queue() {
        let mut s = Subscriber::new(FanoutKind::Video);
        s.transport_ready();
        s.push(&key(0));
        s.push(&delta(1));
        s.transport_lost();
        assert_eq!(s.gate(), Gate::WaitingForTransport);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.stats().frames_dropped, 2);
    }

    #[test]
    fn record_dropped_moves_counter_and_regates_video() {
        let mut s = Subscriber::new(FanoutKind::Video);
        s.transport_ready();
        s.take_keyframe_needed();
        s.push(&key(0));
        s.push(&delta(1));
        let _ = s.pop().unwrap();
        s.record_dropped();
        assert_eq!(
            s.stats(),
            SubscriberStats {
                frames_sent: 0,
                frames_dropped: 2
            }
        );
        assert_eq!(s.gate(), Gate::WaitingForKeyframe);
        assert!(s.take_keyframe_needed());
    }

    #[test]
    fn unpop_puts_frame_back_in_front() {
        let mut a = Subscriber::new(FanoutKind::Audio);
        a.transport_ready();
        a.push(&audio(1));
        a.push(&audio(2));
        let f = a.pop().unwrap();
        a.unpop(f);
        assert_eq!(a.stats().frames_sent, 0);
        assert_eq!(a.pop().unwrap().timestamp_us, 1);
    }

    #[test]
    fn fanout_shares_bytes_and_isolates_slow_subscriber() {
        let mut f: Fanout<u32> = Fanout::new(FanoutKind::Video, 3);
        f.subscribe(1).transport_ready();
        f.subscribe(2).transport_ready();
        f.subscribe(3); // never ready
        let k = key(0);
        assert!(f.push(&k).is_empty());
        // Subscriber 1 drains, subscriber 2 never does.
        let got = f.get_mut(&1).unwrap().pop().unwrap();
        assert_eq!(got.data.as_ptr(), k.data.as_ptr(), "no copy of the bytes");
        let mut need_total = Vec::new();
        for ts in 1..=3 {
            let d = delta(ts);
            need_total.extend(f.push(&d));
            let s1 = f.get_mut(&1).unwrap();
            assert_eq!(s1.pop().unwrap().timestamp_us, ts);
        }
        assert_eq!(need_total, vec![2], "only the slow subscriber overflowed");
        let s1 = f.get_mut(&1).unwrap().stats();
        assert_eq!(
            s1,
            SubscriberStats {
                frames_sent: 4,
                frames_dropped: 0
            }
        );
        assert_eq!(f.get_mut(&3).unwrap().stats().frames_dropped, 4);
        assert_eq!(f.unsubscribe(&2).unwrap().frames_dropped, 4);
        assert_eq!(f.len(), 2);
    }
}
