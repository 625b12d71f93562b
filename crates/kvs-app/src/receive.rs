//! The receive threads: viewers' camera and microphone, from the peer engine to recordings
//! (`[receive] record_dir`) and to a video player (`[receive] video_player_cmd`).
//!
//! Owns the per-session receive state (a depacketizer and a recorder per viewer that sends),
//! which viewer is shown, and the hand-over to the player thread; the media work itself is
//! `kvs_media::receive`'s. It must not touch sessions or signaling: it only reads what
//! `kvs_peer::PeerHandle::take_received` hands over and asks for keyframes
//! (`PeerHandle::request_viewer_keyframe`, a PLI) when a stream lost packets or a decode failed.
//!
//! Two OS threads, never the engine's task: the receive thread depacketizes and writes the
//! files (a slow disk slows only it; the engine's channel to it is bounded and drops); the
//! player thread decodes (openh264) and blocks on the player. Between them a
//! [`DecodeQueue`] of [`kvs_media::receive::decode::DEFAULT_QUEUE`] frames: a player that
//! falls behind makes the queue drop non-keyframes until the next keyframe. One viewer is
//! shown at a time: the first that sends video, until its session ends.

use crate::config::ReceiveConfig;
use crate::events::{AppEvent, EventBus, EventKind};
use kvs_media::receive::decode::{DecodeQueue, VideoDecoder, DEFAULT_QUEUE};
use kvs_media::receive::depay::{DepayConfig, H264Depacketizer};
use kvs_media::receive::record::{Recorder, RecorderConfig};
use kvs_media::receive::{RxItem, RxMedia, RxPacket};
use kvs_peer::queue::QueueReceiver as Receiver;
use kvs_peer::PeerHandle;
use kvs_platform::{AudioCodec, VideoPlayer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// A viewer whose packets stopped this long is finished even without its session's end.
const IDLE_END: Duration = Duration::from_secs(30);
/// Viewers with receive state at once (the engine's sessions are fewer: a bound for safety).
const MAX_SENDERS: usize = 128;
/// Longest wait for a packet before the reorder windows' time bounds are checked.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// What is shared with the player thread.
struct Shown {
    queue: DecodeQueue,
    /// The viewer shown; a change resets the decoder.
    peer: Option<String>,
    generation: u64,
    stop: bool,
}

type SharedShown = Arc<(Mutex<Shown>, Condvar)>;

/// The running receive (and player) threads.
pub struct ReceiveThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    player: Option<(SharedShown, JoinHandle<()>)>,
}

impl ReceiveThread {
    /// Start taking `items` (from [`PeerHandle::take_received`]): recordings per `config`,
    /// video on `player` when given.
    pub fn spawn(
        items: Receiver<RxItem>,
        peer: PeerHandle,
        config: &ReceiveConfig,
        player: Option<Box<dyn VideoPlayer>>,
        events: EventBus,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let player = match player {
            Some(p) => {
                let shown: SharedShown = Arc::new((
                    Mutex::new(Shown {
                        queue: DecodeQueue::new(DEFAULT_QUEUE),
                        peer: None,
                        generation: 0,
                        stop: false,
                    }),
                    Condvar::new(),
                ));
                let (s, pe, ev) = (shown.clone(), peer.clone(), events.clone());
                let join = std::thread::Builder::new()
                    .name("video-player".into())
                    .spawn(move || play(s, p, pe, ev))?;
                Some((shown, join))
            }
            None => None,
        };
        let mut rx = Receiving {
            peer,
            record_dir: config.record_dir.clone(),
            record: RecorderConfig {
                max_bytes: config.record_max_bytes,
                ..Default::default()
            },
            shown: player.as_ref().map(|(s, _)| s.clone()),
            senders: HashMap::new(),
            events,
        };
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("receive".into())
            .spawn(move || rx.run(items, &flag))?;
        Ok(Self {
            stop,
            join: Some(join),
            player,
        })
    }

    /// Stop: every recording is finalized, the player closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
        if let Some((shown, j)) = self.player.take() {
            if let Ok(mut s) = shown.0.lock() {
                s.stop = true;
            }
            shown.1.notify_all();
            let _ = j.join();
        }
    }
}

impl Drop for ReceiveThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One viewer that sends.
struct Sender {
    depay: H264Depacketizer,
    recorder: Option<Recorder>,
    last_packet: Instant,
    warned_audio: bool,
}

struct Receiving {
    peer: PeerHandle,
    record_dir: Option<PathBuf>,
    record: RecorderConfig,
    shown: Option<SharedShown>,
    senders: HashMap<String, Sender>,
    events: EventBus,
}

impl Receiving {
    fn run(&mut self, items: Receiver<RxItem>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .senders
                .values()
                .filter_map(|s| s.depay.poll_timeout())
                .min()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            match items.recv_timeout(wait) {
                Ok(RxItem::Packet(p)) => self.packet(p),
                Ok(RxItem::Ended { peer_id }) => self.end(&peer_id, "session ended"),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.tick(Instant::now());
        }
        let ids: Vec<String> = self.senders.keys().cloned().collect();
        for id in ids {
            self.end(&id, "device stopping");
        }
    }

    fn packet(&mut self, p: RxPacket) {
        let now = Instant::now();
        if !self.senders.contains_key(&p.peer_id) {
            if self.senders.len() >= MAX_SENDERS {
                return;
            }
            let recorder = self.record_dir.as_deref().map(|dir| {
                let path = recording_path(dir, &p.peer_id, SystemTime::now());
                Recorder::new(path, self.record)
            });
            info!(peer = %p.peer_id, "a viewer sends media");
            self.senders.insert(
                p.peer_id.clone(),
                Sender {
                    depay: H264Depacketizer::new(DepayConfig::default()),
                    recorder,
                    last_packet: now,
                    warned_audio: false,
                },
            );
        }
        let Some(s) = self.senders.get_mut(&p.peer_id) else {
            return;
        };
        s.last_packet = now;
        match p.media {
            RxMedia::Video => {
                s.depay
                    .push(p.arrival, p.seq, p.rtp_time, p.marker, p.payload.clone());
                self.frames(&p.peer_id, now);
            }
            RxMedia::Audio(AudioCodec::Opus) => {
                if let Some(r) = s.recorder.as_mut() {
                    if let Err(e) = r.opus(now, &p.payload, p.rtp_time) {
                        warn!(peer = %p.peer_id, "recording stopped: {e}");
                        s.recorder = None;
                    }
                }
            }
            RxMedia::Audio(codec) => {
                if let Some(r) = s.recorder.as_mut() {
                    r.unsupported_audio();
                    if !s.warned_audio {
                        s.warned_audio = true;
                        info!(peer = %p.peer_id, ?codec, "viewer audio not recorded: MP4 recordings hold Opus only");
                    }
                }
            }
        }
    }

    /// Take the access units `peer_id`'s depacketizer has ready: record them, show them.
    fn frames(&mut self, peer_id: &str, now: Instant) {
        let Some(s) = self.senders.get_mut(peer_id) else {
            return;
        };
        let mut want_keyframe = false;
        while let Some(f) = s.depay.poll_frame() {
            if let Some(r) = s.recorder.as_mut() {
                let was_started = r.started();
                let result = r.video(now, &f.data, f.rtp_time, f.keyframe);
                if !was_started && r.started() {
                    let st = r.stats();
                    self.events.publish(AppEvent::peer(
                        EventKind::RecordingStarted,
                        peer_id,
                        format!(
                            "recording {} ({}x{})",
                            r.path().display(),
                            st.width,
                            st.height
                        ),
                    ));
                }
                if let Err(e) = result {
                    match e {
                        kvs_media::receive::record::RecordError::NoParameterSets(_) => {
                            debug!(peer = %peer_id, "recording waits for a keyframe with SPS/PPS: {e}");
                            want_keyframe = true;
                        }
                        _ => {
                            warn!(peer = %peer_id, "recording stopped: {e}");
                            self.events.publish(AppEvent::peer(
                                EventKind::Error,
                                peer_id,
                                format!("recording: {e}"),
                            ));
                            s.recorder = None;
                        }
                    }
                }
            }
            if let Some(shown) = &self.shown {
                let (lock, cv) = &**shown;
                if let Ok(mut st) = lock.lock() {
                    if st.peer.is_none() {
                        info!(peer = %peer_id, "showing this viewer's video");
                        st.peer = Some(peer_id.to_string());
                        st.generation += 1;
                    }
                    if st.peer.as_deref() == Some(peer_id) && !st.queue.push(f) {
                        want_keyframe = true;
                    }
                }
                cv.notify_one();
            }
        }
        if s.depay.take_keyframe_request(now) || want_keyframe {
            self.peer.request_viewer_keyframe(peer_id);
        }
    }

    fn tick(&mut self, now: Instant) {
        let ids: Vec<String> = self.senders.keys().cloned().collect();
        for id in ids {
            let Some(s) = self.senders.get_mut(&id) else {
                continue;
            };
            if s.depay.poll_timeout().is_some_and(|t| t <= now) {
                s.depay.tick(now);
                self.frames(&id, now);
            }
            if self
                .senders
                .get(&id)
                .is_some_and(|s| now.saturating_duration_since(s.last_packet) >= IDLE_END)
            {
                self.end(&id, "no media for 30 s");
            }
        }
    }

    fn end(&mut self, peer_id: &str, why: &str) {
        let Some(mut s) = self.senders.remove(peer_id) else {
            return;
        };
        let d = s.depay.stats();
        info!(
            peer = %peer_id,
            why,
            packets = d.packets,
            frames = d.frames,
            losses = d.losses,
            dropped = d.frames_dropped,
            keyframe_requests = d.keyframe_requests,
            "viewer media ended"
        );
        if let Some(mut r) = s.recorder.take() {
            if r.started() {
                match r.finish() {
                    Ok(st) => self.events.publish(AppEvent::peer(
                        EventKind::RecordingFinished,
                        peer_id,
                        format!(
                            "recording {} finished: {}x{}, {} video frames, {} audio packets, {} bytes",
                            r.path().display(),
                            st.width,
                            st.height,
                            st.video_frames,
                            st.audio_packets,
                            st.bytes
                        ),
                    )),
                    Err(e) => warn!(peer = %peer_id, "finishing the recording: {e}"),
                }
            }
        }
        if let Some(shown) = &self.shown {
            if let Ok(mut st) = shown.0.lock() {
                if st.peer.as_deref() == Some(peer_id) {
                    st.peer = None;
                    st.generation += 1;
                    while st.queue.pop().is_some() {}
                }
            }
        }
    }
}

/// The player thread: decode what the queue holds, show it.
fn play(shown: SharedShown, mut player: Box<dyn VideoPlayer>, peer: PeerHandle, events: EventBus) {
    let (lock, cv) = &*shown;
    let mut decoder: Option<(u64, VideoDecoder)> = None;
    let mut player_ok = true;
    let mut shown_frames = 0u64;
    loop {
        let (frame, generation, peer_id) = {
            let Ok(mut st) = lock.lock() else { return };
            let frame = loop {
                if st.stop {
                    break None;
                }
                if let Some(f) = st.queue.pop() {
                    break Some(f);
                }
                st = match cv.wait_timeout(st, Duration::from_millis(200)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            };
            let Some(frame) = frame else { break };
            (frame, st.generation, st.peer.clone())
        };
        if decoder.as_ref().is_none_or(|(g, _)| *g != generation) {
            match VideoDecoder::new() {
                Ok(d) => decoder = Some((generation, d)),
                Err(e) => {
                    warn!("viewer video: {e}");
                    return;
                }
            }
        }
        let Some((_, d)) = decoder.as_mut() else {
            continue;
        };
        let picture = d.decode(&frame);
        if d.take_keyframe_request() {
            if let Some(p) = &peer_id {
                peer.request_viewer_keyframe(p);
            }
        }
        if let (Some(pic), true) = (picture, player_ok) {
            if let Err(e) = player.show(&pic) {
                warn!("video player failed, nothing more is shown: {e}");
                events.publish(AppEvent::new(
                    EventKind::Error,
                    format!("video player: {e}"),
                ));
                player_ok = false;
            } else {
                shown_frames += 1;
            }
        }
    }
    if let Err(e) = player.close() {
        warn!("closing the video player: {e}");
    }
    let q = lock.lock().map(|s| s.queue.stats()).unwrap_or_default();
    let d = decoder.map(|(_, d)| d.stats()).unwrap_or_default();
    info!(
        shown = shown_frames,
        queue_dropped = q.dropped_backpressure,
        queue_replaced = q.replaced,
        decode_errors = d.decode_errors,
        skipped_until_idr = d.skipped_until_idr,
        "video player stopped"
    );
}

/// `<dir>/<UTC time>-<peer id>.mp4`; the id keeps `[A-Za-z0-9_-]` (at most 64), and a name
/// already taken gets `-2`, `-3`….
pub fn recording_path(dir: &Path, peer_id: &str, at: SystemTime) -> PathBuf {
    let id: String = peer_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    let id = if id.is_empty() { "viewer".into() } else { id };
    let base = format!("{}-{id}", utc_stamp(at));
    let mut path = dir.join(format!("{base}.mp4"));
    let mut n = 2;
    while path.exists() && n < 1000 {
        path = dir.join(format!("{base}-{n}.mp4"));
        n += 1;
    }
    path
}

/// `YYYYMMDDTHHMMSSZ` (UTC).
pub fn utc_stamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_of_known_instants() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc_stamp(t), "20240229T123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31 23:59:59
        assert_eq!(utc_stamp(t), "20991231T235959Z");
    }

    #[test]
    fn recording_names_keep_safe_characters_and_do_not_overwrite() {
        let dir = std::env::temp_dir().join(format!("kvs-recname-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = UNIX_EPOCH;
        let p = recording_path(&dir, "../evil id/..", at);
        assert_eq!(p, dir.join("19700101T000000Z-evilid.mp4"));
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(
            recording_path(&dir, "../evil id/..", at),
            dir.join("19700101T000000Z-evilid-2.mp4")
        );
        assert_eq!(
            recording_path(&dir, "///", at),
            dir.join("19700101T000000Z-viewer.mp4")
        );
    }
}
