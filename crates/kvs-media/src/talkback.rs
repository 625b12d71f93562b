//! Talk-back playout, sans-IO: viewers' audio packets in, 20 ms frames of 48 kHz mono PCM out.
//!
//! [`TalkbackCore`] owns three policies:
//!
//! - **The floor**: one viewer is heard at a time. The first viewer whose packet carries voice
//!   takes the floor and holds it until it has been silent for [`TalkbackConfig::floor_hold`]
//!   (1 s); packets of other viewers are dropped meanwhile. A viewer whose push-to-talk is off
//!   sends silence (or nothing) and so lets the floor go after that second. Voice is the RTP
//!   audio-level extension (RFC 6464) when the packet has it (louder than
//!   [`VOICE_DBOV`]), otherwise the decoded samples' RMS (above [`VOICE_RMS`]).
//! - **The jitter buffer**: the holder's packets wait, ordered by sequence number, at most
//!   [`TalkbackConfig::max_buffer`] (200 ms) of audio, decoded or not; past it the oldest are
//!   dropped. Playout starts once [`TalkbackConfig::prefetch`] (40 ms) is buffered or the first
//!   packet has waited that long, and starts again that way after an underrun.
//! - **Silence**: from the first talk-back packet on, every [`tick`](TalkbackCore::tick) (one
//!   per 20 ms, by the caller's clock) yields a frame; silence when nobody holds the floor.
//!   So a recording's timeline is wall-clock time, with silence where nobody talked.
//!
//! Decoding: Opus with `opus-rs` (a decoder per viewer, made on its first packet), G.711 with
//! [`crate::g711`] and upsampled to 48 kHz. A packet a decoder refuses (or panics on: the
//! decoder is a port, and remote input must not take the thread down) is dropped and counted,
//! and that viewer's decoder is made again.

use crate::g711;
use bytes::Bytes;
use kvs_platform::AudioCodec;
use opus_rs::OpusDecoder;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Samples in one output frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Output frame duration.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
/// Audio-level extension values (−dBov) at or above this count as voice.
pub const VOICE_DBOV: i8 = -60;
/// Decoded RMS (16-bit scale) above this counts as voice (≈ −60 dBFS).
pub const VOICE_RMS: f32 = 33.0;
/// Largest Opus frame: 120 ms at 48 kHz.
const MAX_OPUS_SAMPLES: usize = 5_760;
/// Largest G.711 payload we take (120 ms at 8 kHz).
const MAX_G711_BYTES: usize = 960;

/// One audio packet a viewer sent (from the peer engine).
#[derive(Debug, Clone, PartialEq)]
pub struct TalkPacket {
    /// The viewer (signaling client id).
    pub peer_id: String,
    pub codec: AudioCodec,
    /// Extended RTP sequence number.
    pub seq: u64,
    /// Extended RTP timestamp, on the codec's clock.
    pub rtp_time: u64,
    /// RFC 6464 audio level in −dBov (0 loudest, −127 silence), when the packet had it.
    pub audio_level: Option<i8>,
    pub payload: Bytes,
    /// When the packet arrived.
    pub arrival: Instant,
}

/// Settings of [`TalkbackCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TalkbackConfig {
    /// The floor is released after its holder has been silent this long.
    pub floor_hold: Duration,
    /// Most audio held in the jitter buffer (packets and decoded samples together).
    pub max_buffer: Duration,
    /// Audio buffered before playout starts.
    pub prefetch: Duration,
    /// Viewers whose decoder state is kept (the least recently heard are forgotten).
    pub max_talkers: usize,
}

impl Default for TalkbackConfig {
    fn default() -> Self {
        Self {
            floor_hold: Duration::from_secs(1),
            max_buffer: Duration::from_millis(200),
            prefetch: Duration::from_millis(40),
            max_talkers: 16,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TalkbackStats {
    pub packets_received: u64,
    pub packets_played: u64,
    /// From viewers who did not hold the floor.
    pub dropped_not_floor: u64,
    /// Oldest packets dropped to keep the buffer within `max_buffer`.
    pub dropped_overflow: u64,
    /// Late (already played past) or duplicate packets.
    pub dropped_late: u64,
    /// Packets a decoder refused.
    pub decode_errors: u64,
    /// Frames played with too few samples (the rest silence).
    pub underruns: u64,
    /// Times a viewer took the floor.
    pub floor_changes: u64,
}

/// A packet in the buffer: its payload, or its samples once decoded (to test for voice).
struct Buffered {
    packet: TalkPacket,
    pcm: Option<Vec<i16>>,
}

struct Talker {
    decoder: Option<(AudioCodec, Decoder)>,
    last_heard: Instant,
}

enum Decoder {
    Opus(Box<OpusDecoder>, Vec<f32>),
    /// The last 8 kHz sample, for interpolation across packets.
    G711(i16),
}

struct Floor {
    peer_id: String,
    last_voice: Instant,
    first_arrival: Instant,
    playing: bool,
    next_seq: Option<u64>,
    buffer: BTreeMap<u64, Buffered>,
    pcm: VecDeque<i16>,
}

/// What a [`TalkbackCore`] reports as it goes (for logs and application events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorEvent {
    Taken { peer_id: String },
    Released { peer_id: String },
}

/// See the [module docs](self).
pub struct TalkbackCore {
    config: TalkbackConfig,
    talkers: HashMap<String, Talker>,
    floor: Option<Floor>,
    active: bool,
    stats: TalkbackStats,
    events: VecDeque<FloorEvent>,
}

impl std::fmt::Debug for TalkbackCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalkbackCore")
            .field("floor", &self.floor_holder())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TalkbackCore {
    pub fn new(config: TalkbackConfig) -> Self {
        Self {
            config,
            talkers: HashMap::new(),
            floor: None,
            active: false,
            stats: TalkbackStats::default(),
            events: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> TalkbackStats {
        self.stats
    }

    /// Who holds the floor.
    pub fn floor_holder(&self) -> Option<&str> {
        self.floor.as_ref().map(|f| f.peer_id.as_str())
    }

    /// Floor changes since the last call.
    pub fn poll_event(&mut self) -> Option<FloorEvent> {
        self.events.pop_front()
    }

    /// Audio buffered for the holder (packets by their nominal duration, plus decoded samples).
    pub fn buffered(&self) -> Duration {
        self.floor.as_ref().map_or(Duration::ZERO, buffered)
    }

    /// A viewer's packet.
    pub fn push(&mut self, now: Instant, packet: TalkPacket) {
        self.stats.packets_received += 1;
        self.active = true;
        self.remember(now, &packet.peer_id);
        self.expire_floor(now);
        if let Some(f) = &self.floor {
            if f.peer_id != packet.peer_id {
                self.stats.dropped_not_floor += 1;
                return;
            }
        }
        let mut item = Buffered { packet, pcm: None };
        let voiced = match item.packet.audio_level {
            Some(level) => level >= VOICE_DBOV,
            None => {
                let pcm = self.decode(&item.packet);
                let v = pcm.as_deref().is_some_and(is_voice);
                if pcm.is_none() {
                    return;
                }
                item.pcm = pcm;
                v
            }
        };
        if self.floor.is_none() {
            if !voiced {
                return;
            }
            info!(peer = %item.packet.peer_id, "talk-back: viewer takes the floor");
            self.stats.floor_changes += 1;
            self.events.push_back(FloorEvent::Taken {
                peer_id: item.packet.peer_id.clone(),
            });
            self.floor = Some(Floor {
                peer_id: item.packet.peer_id.clone(),
                last_voice: now,
                first_arrival: now,
                playing: false,
                next_seq: None,
                buffer: BTreeMap::new(),
                pcm: VecDeque::new(),
            });
        }
        let max = self.config.max_buffer;
        let Some(f) = self.floor.as_mut() else { return };
        if voiced {
            f.last_voice = now;
        }
        let seq = item.packet.seq;
        if f.next_seq.is_some_and(|n| seq < n) || f.buffer.contains_key(&seq) {
            self.stats.dropped_late += 1;
            return;
        }
        if !f.playing && f.buffer.is_empty() && f.pcm.is_empty() {
            f.first_arrival = now;
        }
        f.buffer.insert(seq, item);
        while buffered(f) > max {
            // Oldest first: decoded samples, then packets.
            if !f.pcm.is_empty() {
                let n = f.pcm.len().min(FRAME_SAMPLES);
                f.pcm.drain(..n);
            } else if let Some((s, _)) = f.buffer.pop_first() {
                f.next_seq = Some(s + 1);
            } else {
                break;
            }
            self.stats.dropped_overflow += 1;
        }
    }

    /// The next 20 ms of the speaker: `None` until the first talk-back packet has arrived,
    /// then always a frame (silence when nobody holds the floor). Call once per 20 ms.
    pub fn tick(&mut self, now: Instant) -> Option<[i16; FRAME_SAMPLES]> {
        if !self.active {
            return None;
        }
        self.expire_floor(now);
        let mut out = [0i16; FRAME_SAMPLES];
        let prefetch = self.config.prefetch;
        let Some(f) = self.floor.as_mut() else {
            return Some(out);
        };
        if !f.playing {
            if buffered(f) >= prefetch || now.saturating_duration_since(f.first_arrival) >= prefetch
            {
                f.playing = !f.buffer.is_empty() || !f.pcm.is_empty();
            }
            if !f.playing {
                return Some(out);
            }
        }
        // Decode packets in sequence order until a frame's worth is ready.
        while self
            .floor
            .as_ref()
            .is_some_and(|f| f.pcm.len() < FRAME_SAMPLES)
        {
            let Some(f) = self.floor.as_mut() else { break };
            let Some((seq, item)) = f.buffer.pop_first() else {
                break;
            };
            f.next_seq = Some(seq + 1);
            let Buffered { packet, pcm } = item;
            let (pcm, measured) = match pcm {
                Some(p) => (Some(p), false),
                None => (self.decode(&packet), true),
            };
            let Some(pcm) = pcm else { continue };
            let voiced = measured && packet.audio_level.is_none() && is_voice(&pcm);
            self.stats.packets_played += 1;
            if let Some(f) = self.floor.as_mut() {
                if voiced {
                    f.last_voice = f.last_voice.max(packet.arrival);
                }
                f.pcm.extend(pcm);
            }
        }
        let f = self.floor.as_mut()?;
        let n = f.pcm.len().min(FRAME_SAMPLES);
        for (o, s) in out.iter_mut().zip(f.pcm.drain(..n)) {
            *o = s;
        }
        if n < FRAME_SAMPLES {
            // Ran dry: build up the prefetch again before playing on.
            self.stats.underruns += 1;
            f.playing = false;
            f.first_arrival = now;
        }
        Some(out)
    }

    fn expire_floor(&mut self, now: Instant) {
        let hold = self.config.floor_hold;
        if let Some(f) = &self.floor {
            if now.saturating_duration_since(f.last_voice) >= hold {
                info!(peer = %f.peer_id, "talk-back: floor released after {hold:?} of silence");
                self.events.push_back(FloorEvent::Released {
                    peer_id: f.peer_id.clone(),
                });
                self.floor = None;
            }
        }
    }

    fn remember(&mut self, now: Instant, peer_id: &str) {
        if let Some(t) = self.talkers.get_mut(peer_id) {
            t.last_heard = now;
            return;
        }
        if self.talkers.len() >= self.config.max_talkers.max(1) {
            let holder = self.floor.as_ref().map(|f| f.peer_id.clone());
            let oldest = self
                .talkers
                .iter()
                .filter(|(id, _)| Some(id.as_str()) != holder.as_deref())
                .min_by_key(|(_, t)| t.last_heard)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                debug!(peer = %id, "talk-back: forgetting the least recently heard viewer");
                self.talkers.remove(&id);
            }
        }
        self.talkers.insert(
            peer_id.to_string(),
            Talker {
                decoder: None,
                last_heard: now,
            },
        );
    }

    /// Decode one packet to 48 kHz mono; `None` (counted) when the decoder refuses it.
    fn decode(&mut self, p: &TalkPacket) -> Option<Vec<i16>> {
        let talker = self.talkers.get_mut(&p.peer_id)?;
        if talker.decoder.as_ref().map(|(c, _)| *c) != Some(p.codec) {
            let d = match p.codec {
                AudioCodec::Opus => match OpusDecoder::new(48_000, 1) {
                    Ok(d) => Decoder::Opus(Box::new(d), vec![0.0; MAX_OPUS_SAMPLES]),
                    Err(e) => {
                        warn!("talk-back: cannot make an Opus decoder: {e}");
                        return None;
                    }
                },
                AudioCodec::Pcmu | AudioCodec::Pcma => Decoder::G711(0),
            };
            talker.decoder = Some((p.codec, d));
        }
        let (_, decoder) = talker.decoder.as_mut()?;
        let result = catch_unwind(AssertUnwindSafe(|| decode_with(decoder, p)));
        match result {
            Ok(Ok(pcm)) => Some(pcm),
            Ok(Err(e)) => {
                self.stats.decode_errors += 1;
                debug!(peer = %p.peer_id, codec = %p.codec, "talk-back: packet not decoded: {e}");
                None
            }
            Err(_) => {
                self.stats.decode_errors += 1;
                warn!(peer = %p.peer_id, codec = %p.codec, "talk-back: decoder failed on a packet; making a new one");
                talker.decoder = None;
                None
            }
        }
    }
}

fn decode_with(decoder: &mut Decoder, p: &TalkPacket) -> Result<Vec<i16>, String> {
    match decoder {
        Decoder::Opus(d, buf) => {
            let n = d
                .decode(&p.payload, MAX_OPUS_SAMPLES, buf)
                .map_err(|e| e.to_string())?;
            Ok(buf[..n.min(buf.len())]
                .iter()
                .map(|s| (s.clamp(-1.0, 1.0) * 32_767.0) as i16)
                .collect())
        }
        Decoder::G711(prev) => {
            if p.payload.len() > MAX_G711_BYTES {
                return Err(format!("G.711 payload of {} bytes", p.payload.len()));
            }
            let linear: Vec<i16> = p
                .payload
                .iter()
                .map(|b| match p.codec {
                    AudioCodec::Pcma => g711::alaw_decode(*b),
                    _ => g711::ulaw_decode(*b),
                })
                .collect();
            let mut out = Vec::with_capacity(linear.len() * 6);
            *prev = g711::upsample_8k_to_48k(&linear, *prev, &mut out);
            Ok(out)
        }
    }
}

fn is_voice(pcm: &[i16]) -> bool {
    if pcm.is_empty() {
        return false;
    }
    let energy: f64 = pcm.iter().map(|s| f64::from(*s) * f64::from(*s)).sum();
    (energy / pcm.len() as f64).sqrt() as f32 > VOICE_RMS
}

/// Nominal duration of a packet not yet decoded: G.711 by its length, Opus from its TOC.
fn packet_duration(item: &Buffered) -> Duration {
    let samples_48k = match &item.pcm {
        Some(pcm) => pcm.len() as u64,
        None => match item.packet.codec {
            AudioCodec::Opus => crate::ogg::opus_packet_samples(&item.packet.payload)
                .map(u64::from)
                .unwrap_or(960),
            AudioCodec::Pcmu | AudioCodec::Pcma => item.packet.payload.len() as u64 * 6,
        },
    };
    Duration::from_micros(samples_48k * 1_000_000 / 48_000)
}

fn buffered(f: &Floor) -> Duration {
    let packets: Duration = f.buffer.values().map(packet_duration).sum();
    packets + Duration::from_micros(f.pcm.len() as u64 * 1_000_000 / 48_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g711_packet(peer: &str, seq: u64, at: Instant, level: Option<i8>, amp: f32) -> TalkPacket {
        let mut pcm = Vec::new();
        let tone: Vec<f32> = (0..960)
            .map(|i| (i as f32 * 500.0 / 48_000.0 * std::f32::consts::TAU).sin() * amp)
            .collect();
        g711::downsample_48k_to_8k(&tone, &mut pcm);
        TalkPacket {
            peer_id: peer.to_string(),
            codec: AudioCodec::Pcmu,
            seq,
            rtp_time: seq * 160,
            audio_level: level,
            payload: pcm.iter().map(|s| g711::ulaw_encode(*s)).collect(),
            arrival: at,
        }
    }

    fn rms(frame: &[i16]) -> f32 {
        let e: f64 = frame.iter().map(|s| f64::from(*s).powi(2)).sum();
        (e / frame.len() as f64).sqrt() as f32
    }

    #[test]
    fn silent_until_first_packet_then_plays_after_prefetch() {
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        assert_eq!(c.tick(t0), None, "the speaker is idle before anyone talks");
        c.push(t0, g711_packet("a", 1, t0, None, 0.5));
        // 20 ms buffered < 40 ms prefetch, and it has not waited 40 ms: silence.
        assert_eq!(rms(&c.tick(t0).unwrap()), 0.0);
        let t1 = t0 + Duration::from_millis(20);
        c.push(t1, g711_packet("a", 2, t1, None, 0.5));
        let f = c.tick(t1).unwrap();
        assert!(rms(&f) > 5_000.0, "tone played: rms {}", rms(&f));
        assert_eq!(c.floor_holder(), Some("a"));
        assert!(rms(&c.tick(t1 + FRAME_DURATION).unwrap()) > 5_000.0);
        // Ran dry: silence, then the floor goes 1 s after the last voice.
        assert_eq!(rms(&c.tick(t1 + 2 * FRAME_DURATION).unwrap()), 0.0);
        assert_eq!(c.stats().underruns, 1);
        assert_eq!(
            c.tick(t1 + Duration::from_millis(999)).map(|f| rms(&f)),
            Some(0.0)
        );
        assert_eq!(c.floor_holder(), Some("a"));
        c.tick(t1 + Duration::from_secs(1));
        assert_eq!(c.floor_holder(), None);
        assert_eq!(
            c.poll_event(),
            Some(FloorEvent::Taken {
                peer_id: "a".into()
            })
        );
        assert_eq!(
            c.poll_event(),
            Some(FloorEvent::Released {
                peer_id: "a".into()
            })
        );
    }

    #[test]
    fn first_talker_holds_the_floor_until_silent_for_a_second() {
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // a talks for 500 ms; b talks from 100 ms on; b's packets are dropped.
        for i in 0..25u64 {
            c.push(ms(i * 20), g711_packet("a", i, ms(i * 20), Some(-20), 0.5));
            if i >= 5 {
                c.push(ms(i * 20), g711_packet("b", i, ms(i * 20), Some(-20), 0.5));
            }
            c.tick(ms(i * 20));
        }
        assert_eq!(c.floor_holder(), Some("a"));
        assert_eq!(c.stats().dropped_not_floor, 20);
        // a goes quiet (push-to-talk released: silence packets at −127 dBov); b keeps talking.
        let mut i = 25u64;
        while ms(i * 20) < ms(480 + 1000) {
            c.push(ms(i * 20), g711_packet("a", i, ms(i * 20), Some(-127), 0.0));
            c.push(ms(i * 20), g711_packet("b", i, ms(i * 20), Some(-20), 0.5));
            c.tick(ms(i * 20));
            assert_eq!(c.floor_holder(), Some("a"), "at {} ms", i * 20);
            i += 1;
        }
        // One second after a's last voice (at 480 ms), b's next packet takes the floor.
        c.push(ms(i * 20), g711_packet("b", i, ms(i * 20), Some(-20), 0.5));
        assert_eq!(c.floor_holder(), Some("b"));
        assert_eq!(c.stats().floor_changes, 2);
        // And b is heard once its prefetch has built up.
        c.push(
            ms(i * 20 + 20),
            g711_packet("b", i + 1, ms(i * 20 + 20), Some(-20), 0.5),
        );
        let f = c.tick(ms(i * 20 + 20)).unwrap();
        assert!(rms(&f) > 5_000.0);
    }

    #[test]
    fn silence_does_not_take_a_free_floor() {
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        for i in 0..10u64 {
            let at = t0 + Duration::from_millis(i * 20);
            // With the level extension, and without it (decoded and measured).
            c.push(at, g711_packet("quiet", i, at, Some(-127), 0.0));
            c.push(at, g711_packet("quiet2", i, at, None, 0.0));
            assert_eq!(rms(&c.tick(at).unwrap()), 0.0);
        }
        assert_eq!(c.floor_holder(), None);
    }

    #[test]
    fn jitter_buffer_is_bounded_in_time_and_reorders() {
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        // A burst of 1 s of audio arriving at once: only 200 ms is kept.
        for i in 0..50u64 {
            c.push(t0, g711_packet("a", 100 + i, t0, Some(-20), 0.5));
            assert!(
                c.buffered() <= Duration::from_millis(200),
                "{:?}",
                c.buffered()
            );
        }
        assert_eq!(c.buffered(), Duration::from_millis(200));
        assert_eq!(c.stats().dropped_overflow, 40);
        // The newest 10 are played, in order; older ones arriving now are late.
        c.push(t0, g711_packet("a", 120, t0, Some(-20), 0.5));
        assert_eq!(c.stats().dropped_late, 1);
        let mut played = 0;
        for k in 0..10 {
            let f = c.tick(t0 + Duration::from_millis(20 * k)).unwrap();
            if rms(&f) > 5_000.0 {
                played += 1;
            }
        }
        assert_eq!(played, 10);
        // Out of order within the buffer: played by sequence number.
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        for seq in [3u64, 1, 2] {
            c.push(t0, g711_packet("a", seq, t0, Some(-20), 0.1 * seq as f32));
        }
        let levels: Vec<f32> = (0..3)
            .map(|k| rms(&c.tick(t0 + Duration::from_millis(20 * k)).unwrap()))
            .collect();
        assert!(levels[0] < levels[1] && levels[1] < levels[2], "{levels:?}");
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        let mut x: u32 = 12345;
        for i in 0..2_000u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (x >> 16) as usize % 1_400;
            let payload: Vec<u8> = (0..len)
                .map(|k| (x.wrapping_mul(k as u32 + 7) >> 11) as u8)
                .collect();
            let codec = [AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma][i as usize % 3];
            let at = t0 + Duration::from_millis(i);
            c.push(
                at,
                TalkPacket {
                    peer_id: format!("p{}", i % 20),
                    codec,
                    seq: i / 20,
                    rtp_time: 0,
                    audio_level: None,
                    payload: Bytes::from(payload),
                    arrival: at,
                },
            );
            c.tick(at);
            assert!(c.buffered() <= Duration::from_millis(200) + Duration::from_millis(120));
        }
        assert!(c.talkers.len() <= 16);
    }

    #[test]
    fn opus_is_decoded() {
        let mut enc = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Audio).unwrap();
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        let mut out = vec![0u8; 1275];
        let mut phase = 0f32;
        let mut played = Vec::new();
        for i in 0..20u64 {
            let pcm: Vec<f32> = (0..960)
                .map(|_| {
                    phase += 600.0 / 48_000.0;
                    (phase * std::f32::consts::TAU).sin() * 0.4
                })
                .collect();
            let n = enc.encode(&pcm, 960, &mut out).unwrap();
            let at = t0 + Duration::from_millis(20 * i);
            c.push(
                at,
                TalkPacket {
                    peer_id: "a".into(),
                    codec: AudioCodec::Opus,
                    seq: i,
                    rtp_time: i * 960,
                    audio_level: None,
                    payload: Bytes::copy_from_slice(&out[..n]),
                    arrival: at,
                },
            );
            played.extend(c.tick(at).unwrap());
        }
        assert_eq!(c.floor_holder(), Some("a"));
        // The tone is heard: zero crossings of the last 200 ms ≈ 600 Hz.
        let tail = &played[played.len() - 9_600..];
        let crossings = tail.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        let hz = crossings as f32 * 5.0;
        assert!((hz - 600.0).abs() < 40.0, "decoded {hz} Hz");
    }

    /// Prints what decoding costs (measured, not asserted: timing belongs to benchmarks).
    #[test]
    fn decode_cost_is_printed() {
        let mut enc = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Audio).unwrap();
        let mut out = vec![0u8; 1275];
        let pcm: Vec<f32> = (0..960)
            .map(|i| (i as f32 * 440.0 / 48_000.0 * std::f32::consts::TAU).sin() * 0.4)
            .collect();
        let t0 = Instant::now();
        let mut c = TalkbackCore::new(TalkbackConfig::default());
        let packets: Vec<TalkPacket> = (0..250u64)
            .map(|i| {
                let n = enc.encode(&pcm, 960, &mut out).unwrap();
                TalkPacket {
                    peer_id: "a".into(),
                    codec: AudioCodec::Opus,
                    seq: i,
                    rtp_time: i * 960,
                    audio_level: Some(-20),
                    payload: Bytes::copy_from_slice(&out[..n]),
                    arrival: t0,
                }
            })
            .collect();
        let started = Instant::now();
        for (i, p) in packets.into_iter().enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64);
            c.push(at, TalkPacket { arrival: at, ..p });
            c.tick(at);
        }
        let per = started.elapsed() / 250;
        println!("talk-back: {per:?} per 20 ms Opus packet (push, decode, tick)");
        // All but the last prefetch are played by the last tick.
        assert!(c.stats().packets_played >= 247, "{:?}", c.stats());
    }
}
