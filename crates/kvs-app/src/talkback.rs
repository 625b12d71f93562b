//! The talk-back thread: viewers' audio packets from the peer engine, through
//! [`kvs_media::talkback::TalkbackCore`] (floor, jitter buffer, decoding), to the speaker.
//!
//! Decoding runs here, on its own OS thread, never on the engine's task: the engine hands
//! packets over a bounded channel without waiting (`kvs_peer::engine::TALK_QUEUE`; a full
//! channel drops the packet and counts it), and a speaker that blocks (a pipe to `aplay`
//! fills at playback speed) only slows this thread. The thread plays one 20 ms frame per
//! 20 ms of wall-clock time, silence when nobody holds the floor, from the first talk-back
//! packet on. Decode cost is measured as it runs and logged when the thread stops.

use crate::events::{AppEvent, EventBus, EventKind};
use kvs_media::talkback::{FloorEvent, TalkPacket, TalkbackConfig, TalkbackCore, FRAME_DURATION};
use kvs_peer::queue::QueueReceiver as Receiver;
use kvs_platform::AudioPlayer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Ticks this far behind are skipped rather than played back to back (the speaker stalled).
const MAX_BEHIND: Duration = Duration::from_millis(200);

/// A running talk-back thread.
pub struct TalkbackThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl TalkbackThread {
    /// Start playing what `packets` brings on `player`.
    pub fn spawn(
        packets: Receiver<TalkPacket>,
        player: Box<dyn AudioPlayer>,
        config: TalkbackConfig,
        events: EventBus,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("talkback".into())
            .spawn(move || run(packets, player, config, events, &flag))?;
        Ok(Self {
            stop,
            join: Some(join),
        })
    }

    /// Stop the thread and close the speaker (a WAV file's header gets its final sizes).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Drop for TalkbackThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    packets: Receiver<TalkPacket>,
    mut player: Box<dyn AudioPlayer>,
    config: TalkbackConfig,
    events: EventBus,
    stop: &AtomicBool,
) {
    let mut core = TalkbackCore::new(config);
    let mut next_tick = Instant::now() + FRAME_DURATION;
    let mut busy = Duration::ZERO;
    let mut speaker_ok = true;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_tick {
            let started = Instant::now();
            let frame = core.tick(now);
            busy += started.elapsed();
            if let (Some(frame), true) = (frame, speaker_ok) {
                if let Err(e) = player.play(&frame) {
                    warn!("talk-back: speaker failed, nothing more is played: {e}");
                    events.publish(AppEvent::new(
                        EventKind::Error,
                        format!("talk-back speaker: {e}"),
                    ));
                    speaker_ok = false;
                }
            }
            while let Some(e) = core.poll_event() {
                let (kind, peer, what) = match &e {
                    FloorEvent::Taken { peer_id } => (EventKind::TalkbackStarted, peer_id, "talks"),
                    FloorEvent::Released { peer_id } => {
                        (EventKind::TalkbackStopped, peer_id, "stopped talking")
                    }
                };
                events.publish(AppEvent::peer(kind, peer, format!("viewer {what}")));
            }
            next_tick += FRAME_DURATION;
            if next_tick + MAX_BEHIND < Instant::now() {
                next_tick = Instant::now() + FRAME_DURATION;
            }
            continue;
        }
        // Wake at least every 100 ms to see the stop flag.
        let wait = (next_tick - now).min(Duration::from_millis(100));
        match packets.recv_timeout(wait) {
            Ok(p) => {
                let started = Instant::now();
                core.push(started, p);
                busy += started.elapsed();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(e) = player.close() {
        warn!("talk-back: closing the speaker: {e}");
    }
    let s = core.stats();
    let per_packet = busy
        .checked_div(s.packets_received.max(1) as u32)
        .unwrap_or_default();
    info!(
        received = s.packets_received,
        played = s.packets_played,
        not_floor = s.dropped_not_floor,
        overflow = s.dropped_overflow,
        late = s.dropped_late,
        decode_errors = s.decode_errors,
        underruns = s.underruns,
        cpu_per_packet_us = per_packet.as_micros() as u64,
        "talk-back stopped"
    );
}
