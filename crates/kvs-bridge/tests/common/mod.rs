//! Test support: a seeded PRNG (no flakiness: every run sees the same bytes) and a
//! virtual-time harness that wires both state machines back to back through the real framing.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use kvs_bridge::{
    MediaConfig, MediaOutput, MediaSideCore, RelayConfig, RelayOutput, SignalingSideCore,
};

/// xorshift64*: small, deterministic, good enough to pick split points and garbage.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    /// Between 0 and `max - 1` random bytes.
    pub fn junk(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
    /// Splits `data` into random pieces (including empty ones).
    pub fn split<'a>(&mut self, data: &'a [u8], max_piece: usize) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.below(max_piece + 1).min(rest.len());
            pieces.push(&rest[..n]);
            rest = &rest[n..];
        }
        pieces
    }
}

pub const MS: Duration = Duration::from_millis(1);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Both cores, zero-latency link, virtual time. Bytes sent while the other end is absent
/// (media powered down) or while `link_up` is false are lost, as on a real wire.
pub struct Harness {
    pub t0: Instant,
    pub now: Instant,
    pub relay: SignalingSideCore,
    pub media: Option<MediaSideCore>,
    pub media_config: MediaConfig,
    pub link_up: bool,
    /// When set, random garbage is written onto the link before every transmit.
    pub garbage: Option<Rng>,
    pub relay_events: Vec<(Duration, RelayOutput)>,
    pub media_events: Vec<(Duration, MediaOutput)>,
    /// Bytes the signaling side wrote towards a running media side.
    pub bytes_to_media: usize,
}

impl Harness {
    pub fn new(relay_config: RelayConfig, media_config: MediaConfig) -> Self {
        let t0 = Instant::now();
        let mut h = Harness {
            t0,
            now: t0,
            relay: SignalingSideCore::new(relay_config, t0),
            media: None,
            media_config,
            link_up: true,
            garbage: None,
            relay_events: Vec::new(),
            media_events: Vec::new(),
            bytes_to_media: 0,
        };
        h.pump();
        h
    }

    pub fn default_config() -> Self {
        Harness::new(RelayConfig::default(), MediaConfig::default())
    }

    /// Virtual time since the start.
    pub fn at(&self) -> Duration {
        self.now - self.t0
    }

    /// The media process starts (woken) now.
    pub fn boot_media(&mut self) {
        self.media = Some(MediaSideCore::new(self.media_config.clone(), self.now));
        self.pump();
    }

    pub fn media(&mut self) -> &mut MediaSideCore {
        self.media.as_mut().expect("media side is running")
    }

    pub fn set_handler_ready(&mut self) {
        let now = self.now;
        self.media().set_handler_ready(now);
        self.pump();
    }

    /// Moves every output to where it goes until both cores are quiet.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(out) = self.relay.poll_output() {
                progressed = true;
                match out {
                    RelayOutput::Transmit(bytes) => {
                        if self.link_up {
                            if let Some(media) = self.media.as_mut() {
                                self.bytes_to_media += bytes.len();
                                if let Some(rng) = self.garbage.as_mut() {
                                    let junk = rng.junk(64);
                                    media.handle_link_bytes(self.now, &junk);
                                }
                                media.handle_link_bytes(self.now, &bytes);
                            }
                        }
                    }
                    other => self.relay_events.push((self.now - self.t0, other)),
                }
            }
            let mut sleep = false;
            if let Some(media) = self.media.as_mut() {
                while let Some(out) = media.poll_output() {
                    progressed = true;
                    match out {
                        MediaOutput::Transmit(bytes) => {
                            if self.link_up {
                                if let Some(rng) = self.garbage.as_mut() {
                                    let junk = rng.junk(64);
                                    self.relay.handle_link_bytes(self.now, &junk);
                                }
                                self.relay.handle_link_bytes(self.now, &bytes);
                            }
                        }
                        other => {
                            sleep |= other == MediaOutput::Sleep;
                            self.media_events.push((self.now - self.t0, other));
                        }
                    }
                }
            }
            if sleep {
                // The process powers down after writing what it had to say.
                self.media = None;
            }
            if !progressed {
                return;
            }
        }
        panic!("outputs never settled");
    }

    fn next_timer(&self) -> Option<Instant> {
        let r = self.relay.poll_timeout();
        let m = self.media.as_ref().and_then(|m| m.poll_timeout());
        match (r, m) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire(&mut self) {
        let now = self.now;
        self.relay.handle_timeout(now);
        if let Some(m) = self.media.as_mut() {
            m.handle_timeout(now);
        }
        self.pump();
    }

    /// Runs every timer due up to `at` (virtual time since start), in order.
    pub fn advance_to(&mut self, at: Duration) {
        let target = self.t0 + at;
        assert!(target >= self.now, "time goes forward");
        for _ in 0..100_000 {
            match self.next_timer() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.fire();
                }
                _ => {
                    self.now = target;
                    self.fire();
                    return;
                }
            }
        }
        panic!("timers never settled");
    }

    pub fn advance(&mut self, d: Duration) {
        let at = self.at() + d;
        self.advance_to(at);
    }

    pub fn take_relay_events(&mut self) -> Vec<RelayOutput> {
        std::mem::take(&mut self.relay_events)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    pub fn take_media_events(&mut self) -> Vec<MediaOutput> {
        std::mem::take(&mut self.media_events)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }
}
