//! RTP → H.264 access units (RFC 6184, packetization-mode 1: single NAL unit, STAP-A, FU-A).
//!
//! Owns the order of one viewer's video packets and the "decodable from here" state; it does
//! not decode, mux or talk to the network. Packets are put back in sequence order within a
//! window bounded in packets ([`DepayConfig::max_reorder_packets`]) and in time
//! ([`DepayConfig::max_reorder_delay`]): a packet still missing when the window is exceeded is
//! taken as lost. A loss (or a malformed payload) breaks the access unit being assembled, and
//! every following frame is dropped until the next IDR — a P-frame decoded against a missing
//! reference shows garbage until then anyway — and a keyframe is asked for
//! ([`H264Depacketizer::take_keyframe_request`], rate-limited; the caller sends the PLI).
//! The stream also starts at an IDR, and at the first packet received (one reordered before
//! it counts as late). Access units are bounded in bytes.

use crate::h264::AccessUnitInfo;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Limits of an [`H264Depacketizer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepayConfig {
    /// Most packets held out of order; one more and the oldest gap counts as lost.
    pub max_reorder_packets: usize,
    /// Longest a packet waits for an earlier one; past it the gap counts as lost.
    pub max_reorder_delay: Duration,
    /// Largest access unit assembled (Annex-B bytes); a larger one is dropped.
    pub max_access_unit_bytes: usize,
    /// Least time between two keyframe requests.
    pub keyframe_request_interval: Duration,
}

impl Default for DepayConfig {
    fn default() -> Self {
        Self {
            // ~100 ms of a 2.5 Mbit/s stream of 1200-byte packets.
            max_reorder_packets: 64,
            max_reorder_delay: Duration::from_millis(100),
            max_access_unit_bytes: 2 * 1024 * 1024,
            keyframe_request_interval: Duration::from_millis(500),
        }
    }
}

/// One complete access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepacketizedFrame {
    /// Annex-B bytes (4-byte start codes).
    pub data: Bytes,
    /// RTP timestamp (90 kHz, extended).
    pub rtp_time: u64,
    /// Has an IDR slice.
    pub keyframe: bool,
    /// Arrival of its last packet.
    pub arrival: Instant,
}

/// Counters of a depacketizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DepayStats {
    pub packets: u64,
    /// Packets that came after their turn had passed, or twice.
    pub late_or_duplicate: u64,
    /// Gaps in the sequence numbers taken as loss.
    pub losses: u64,
    /// Payloads that are not valid RFC 6184 mode-1 (or an FU-A continuation without start).
    pub malformed: u64,
    pub frames: u64,
    /// Frames dropped (broken, too large, or while waiting for an IDR).
    pub frames_dropped: u64,
    pub keyframe_requests: u64,
}

#[derive(Debug)]
struct Held {
    rtp_time: u64,
    marker: bool,
    payload: Bytes,
    arrival: Instant,
}

/// One viewer's H.264 depacketizer; see the module doc.
#[derive(Debug)]
pub struct H264Depacketizer {
    config: DepayConfig,
    held: BTreeMap<u64, Held>,
    next_seq: Option<u64>,
    au: Vec<u8>,
    au_time: Option<u64>,
    au_broken: bool,
    au_arrival: Option<Instant>,
    fu_open: bool,
    /// Parameter sets that came as an access unit of their own, kept for the next IDR.
    params: Option<Vec<u8>>,
    waiting_idr: bool,
    keyframe_wanted: bool,
    last_request: Option<Instant>,
    out: std::collections::VecDeque<DepacketizedFrame>,
    stats: DepayStats,
}

/// Frames ready but not yet taken; more are dropped (the caller polls after every push).
const MAX_READY: usize = 64;

impl H264Depacketizer {
    pub fn new(config: DepayConfig) -> Self {
        Self {
            config,
            held: BTreeMap::new(),
            next_seq: None,
            au: Vec::new(),
            au_time: None,
            au_broken: false,
            au_arrival: None,
            fu_open: false,
            params: None,
            waiting_idr: true,
            keyframe_wanted: false,
            last_request: None,
            out: Default::default(),
            stats: DepayStats::default(),
        }
    }

    pub fn stats(&self) -> DepayStats {
        self.stats
    }

    /// Take one packet (extended sequence number and RTP timestamp).
    pub fn push(&mut self, now: Instant, seq: u64, rtp_time: u64, marker: bool, payload: Bytes) {
        self.stats.packets += 1;
        if self.next_seq.is_some_and(|n| seq < n) || self.held.contains_key(&seq) {
            self.stats.late_or_duplicate += 1;
            return;
        }
        if self.next_seq.is_none() {
            self.next_seq = Some(seq);
        }
        self.held.insert(
            seq,
            Held {
                rtp_time,
                marker,
                payload,
                arrival: now,
            },
        );
        self.drain(now);
    }

    /// Let the time bound of the reorder window act (call when no packet came for a while).
    pub fn tick(&mut self, now: Instant) {
        self.drain(now);
    }

    /// When [`tick`](Self::tick) has something to do (a held packet's wait ends).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.arrival + self.config.max_reorder_delay)
            .min()
    }

    /// The next complete access unit, in order.
    pub fn poll_frame(&mut self) -> Option<DepacketizedFrame> {
        self.out.pop_front()
    }

    /// True when a keyframe should be asked for now: frames are being dropped for want of an
    /// IDR, at most once per [`DepayConfig::keyframe_request_interval`] (again while the wait
    /// lasts, in case a request or the keyframe was lost).
    pub fn take_keyframe_request(&mut self, now: Instant) -> bool {
        if !self.keyframe_wanted {
            return false;
        }
        if let Some(last) = self.last_request {
            if now.saturating_duration_since(last) < self.config.keyframe_request_interval {
                return false;
            }
        }
        self.last_request = Some(now);
        self.keyframe_wanted = false;
        self.stats.keyframe_requests += 1;
        true
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let Some(next) = self.next_seq else { return };
            if let Some(h) = self.held.remove(&next) {
                self.next_seq = Some(next + 1);
                self.process(h);
                continue;
            }
            let Some(&first) = self.held.keys().next() else {
                return;
            };
            let waited_out = self
                .held
                .values()
                .any(|h| now.saturating_duration_since(h.arrival) >= self.config.max_reorder_delay);
            if self.held.len() > self.config.max_reorder_packets || waited_out {
                // `next..first` never came.
                self.stats.losses += 1;
                self.on_loss();
                self.next_seq = Some(first);
                continue;
            }
            return;
        }
    }

    fn on_loss(&mut self) {
        // The frame being assembled lost a part; one not begun yet is judged by its own
        // packets (an FU-A continuation without its start is malformed) and by the wait for
        // an IDR.
        if self.au_time.is_some() {
            self.au_broken = true;
        }
        self.fu_open = false;
        self.waiting_idr = true;
        self.keyframe_wanted = true;
    }

    fn process(&mut self, h: Held) {
        if self.au_time.is_some_and(|t| t != h.rtp_time) {
            // A new timestamp without the previous frame's marker: that frame ended anyway.
            self.finish();
        }
        if self.au_time.is_none() {
            self.au_time = Some(h.rtp_time);
        }
        self.au_arrival = Some(h.arrival);
        if !h.payload.is_empty() {
            if let Err(()) = self.depay(&h.payload) {
                self.stats.malformed += 1;
                self.on_loss();
            }
        }
        if h.marker {
            self.finish();
        }
    }

    fn append_nal(&mut self, nal: &[u8]) -> Result<(), ()> {
        if self.au.len() + START_CODE.len() + nal.len() > self.config.max_access_unit_bytes {
            self.au_broken = true;
            return Ok(());
        }
        self.au.extend_from_slice(&START_CODE);
        self.au.extend_from_slice(nal);
        Ok(())
    }

    /// One RTP payload into the access unit; `Err` for a malformed payload.
    fn depay(&mut self, p: &[u8]) -> Result<(), ()> {
        let header = p[0];
        if header & 0x80 != 0 {
            return Err(());
        }
        match header & 0x1f {
            1..=23 => {
                self.fu_open = false;
                self.append_nal(p)
            }
            STAP_A => {
                self.fu_open = false;
                let mut rest = &p[1..];
                if rest.is_empty() {
                    return Err(());
                }
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(());
                    }
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    rest = &rest[2..];
                    if size == 0 || size > rest.len() {
                        return Err(());
                    }
                    let (nal, tail) = rest.split_at(size);
                    if nal[0] & 0x80 != 0 {
                        return Err(());
                    }
                    self.append_nal(nal)?;
                    rest = tail;
                }
                Ok(())
            }
            FU_A => {
                if p.len() < 3 {
                    return Err(());
                }
                let fu = p[1];
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                let nal_header = (header & 0xe0) | (fu & 0x1f);
                if start && end {
                    return Err(());
                }
                if start {
                    if self.au.len() + START_CODE.len() + 1 + p.len() - 2
                        > self.config.max_access_unit_bytes
                    {
                        self.au_broken = true;
                        self.fu_open = false;
                        return Ok(());
                    }
                    self.au.extend_from_slice(&START_CODE);
                    self.au.push(nal_header);
                    self.au.extend_from_slice(&p[2..]);
                    self.fu_open = true;
                } else {
                    if !self.fu_open {
                        return Err(());
                    }
                    if self.au.len() + p.len() - 2 > self.config.max_access_unit_bytes {
                        self.au_broken = true;
                        self.fu_open = false;
                        return Ok(());
                    }
                    self.au.extend_from_slice(&p[2..]);
                }
                if end {
                    self.fu_open = false;
                }
                Ok(())
            }
            // STAP-B, MTAP16/24, FU-B (interleaved mode) and the reserved types 0, 30, 31.
            _ => Err(()),
        }
    }

    fn keep_params(&mut self, data: Vec<u8>) {
        // Bounded: only the latest set is kept.
        self.params = Some(data);
    }

    fn finish(&mut self) {
        let data = std::mem::take(&mut self.au);
        let broken = std::mem::replace(&mut self.au_broken, false) || self.fu_open;
        self.fu_open = false;
        let Some(rtp_time) = self.au_time.take() else {
            return;
        };
        let arrival = self.au_arrival.take().unwrap_or_else(Instant::now);
        if broken {
            self.stats.frames_dropped += 1;
            self.waiting_idr = true;
            self.keyframe_wanted = true;
            return;
        }
        let info = AccessUnitInfo::scan(&data);
        if data.is_empty() || !info.has_vcl {
            // Parameter sets alone (or nothing): nothing to show; kept for the next IDR.
            if info.has_sps {
                self.keep_params(data);
            }
            return;
        }
        if self.waiting_idr {
            if !info.has_idr {
                self.stats.frames_dropped += 1;
                self.keyframe_wanted = true;
                return;
            }
            self.waiting_idr = false;
            self.keyframe_wanted = false;
        }
        if self.out.len() >= MAX_READY {
            self.stats.frames_dropped += 1;
            return;
        }
        self.stats.frames += 1;
        let data = match self.params.take() {
            // Parameter sets sent in a packet of their own (other timestamp) go with the frame.
            Some(mut p) if info.has_idr && !info.has_sps => {
                p.extend_from_slice(&data);
                p
            }
            _ => data,
        };
        self.out.push_back(DepacketizedFrame {
            data: Bytes::from(data),
            rtp_time,
            keyframe: info.has_idr,
            arrival,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::packetize_h264;
    use crate::sources::{TestPatternCamera, TestPatternConfig};
    use kvs_platform::{FrameKind, VideoCapture};

    /// Real H.264 from the test-pattern encoder: `n` access units, an IDR every `gop`.
    fn frames(n: usize, gop: u32) -> Vec<kvs_platform::EncodedFrame> {
        let mut cam = TestPatternCamera::new(TestPatternConfig {
            width: 160,
            height: 120,
            keyframe_interval: gop,
            paced: false,
            ..Default::default()
        })
        .unwrap();
        cam.start().unwrap();
        (0..n).map(|_| cam.next_frame().unwrap().unwrap()).collect()
    }

    /// (seq, rtp_time, marker, payload) for every packet of `frames`, small payloads so that
    /// FU-A and STAP-A both occur.
    fn packets(frames: &[kvs_platform::EncodedFrame]) -> Vec<(u64, u64, bool, Bytes)> {
        let mut out = Vec::new();
        let mut seq = 1000;
        for (i, f) in frames.iter().enumerate() {
            let mut p = Vec::new();
            packetize_h264(&f.data, 300, &mut p);
            for pl in p {
                out.push((
                    seq,
                    3000 * i as u64,
                    pl.marker,
                    Bytes::from(pl.data.to_vec()),
                ));
                seq += 1;
            }
        }
        out
    }

    fn run(
        d: &mut H264Depacketizer,
        pkts: &[(u64, u64, bool, Bytes)],
        t: Instant,
    ) -> Vec<DepacketizedFrame> {
        let mut got = Vec::new();
        for (s, ts, m, p) in pkts {
            d.push(t, *s, *ts, *m, p.clone());
            while let Some(f) = d.poll_frame() {
                got.push(f);
            }
        }
        got
    }

    #[test]
    fn in_order_packets_give_back_the_access_units_byte_for_byte() {
        let fr = frames(10, 5);
        let pk = packets(&fr);
        assert!(pk.iter().any(|p| p.3[0] & 0x1f == FU_A), "FU-A used");
        assert!(pk.iter().any(|p| p.3[0] & 0x1f == STAP_A), "STAP-A used");
        let mut d = H264Depacketizer::new(DepayConfig::default());
        let got = run(&mut d, &pk, Instant::now());
        assert_eq!(got.len(), 10);
        for (g, f) in got.iter().zip(&fr) {
            assert_eq!(g.data, f.data, "same Annex-B bytes");
            assert_eq!(g.keyframe, f.kind == FrameKind::Key);
        }
        assert!(!d.take_keyframe_request(Instant::now()));
    }

    #[test]
    fn reordered_packets_within_the_window_are_put_back_in_order() {
        let fr = frames(6, 3);
        let mut pk = packets(&fr);
        // Swap neighbours all along (but the very first packet: it sets where the stream
        // starts, and one reordered before it is late).
        for i in (1..pk.len() - 1).step_by(2) {
            pk.swap(i, i + 1);
        }
        let mut d = H264Depacketizer::new(DepayConfig::default());
        let got = run(&mut d, &pk, Instant::now());
        assert_eq!(got.len(), 6);
        for (g, f) in got.iter().zip(&fr) {
            assert_eq!(g.data, f.data);
        }
        assert_eq!(d.stats().losses, 0);
    }

    #[test]
    fn loss_drops_frames_until_the_next_idr_and_asks_for_a_keyframe() {
        let fr = frames(9, 3); // IDRs at 0, 3, 6
        let pk = packets(&fr);
        // Lose the first packet of frame 1 (a P-frame).
        let first_of_1 = pk.iter().position(|p| p.1 == 3000).unwrap();
        let mut lossy = pk.clone();
        lossy.remove(first_of_1);
        let cfg = DepayConfig {
            max_reorder_packets: 4,
            ..Default::default()
        };
        let mut d = H264Depacketizer::new(cfg);
        let t = Instant::now();
        let mut got = Vec::new();
        let mut requests = 0;
        for (s, ts, m, p) in &lossy {
            d.push(t, *s, *ts, *m, p.clone());
            while let Some(f) = d.poll_frame() {
                got.push(f);
            }
            // Asked every time, at one instant: the rate limit lets one through.
            requests += u32::from(d.take_keyframe_request(t));
        }
        let times: Vec<u64> = got.iter().map(|f| f.rtp_time / 3000).collect();
        assert_eq!(
            times,
            vec![0, 3, 4, 5, 6, 7, 8],
            "frames 1 and 2 dropped, resumed at the IDR"
        );
        assert!(got[1].keyframe);
        assert_eq!(d.stats().losses, 1);
        assert!(d.stats().frames_dropped >= 1);
        assert_eq!(requests, 1, "a keyframe asked for once");
        assert!(
            !d.take_keyframe_request(t + Duration::from_secs(1)),
            "not after the IDR came"
        );
    }

    #[test]
    fn a_gap_waits_for_the_time_bound_then_counts_as_lost() {
        let fr = frames(3, 1); // every frame an IDR
        let pk = packets(&fr);
        let f0_last = pk.iter().rposition(|p| p.1 == 0).unwrap();
        // Frame 1 loses its second packet (its IDR slice's first fragment).
        let mut lossy = pk.clone();
        let lost = lossy.remove(f0_last + 2);
        assert_eq!(lost.3[0] & 0x1f, FU_A);
        let mut d = H264Depacketizer::new(DepayConfig::default());
        let t = Instant::now();
        let mut got = run(&mut d, &lossy, t);
        assert_eq!(got.len(), 1, "held while the gap may still fill");
        let deadline = d.poll_timeout().expect("a wake-up is due");
        assert_eq!(deadline, t + DepayConfig::default().max_reorder_delay);
        d.tick(deadline - Duration::from_millis(1));
        assert!(d.poll_frame().is_none(), "not before the deadline");
        d.tick(deadline);
        while let Some(f) = d.poll_frame() {
            got.push(f);
        }
        let times: Vec<u64> = got.iter().map(|f| f.rtp_time / 3000).collect();
        assert_eq!(times, vec![0, 2], "frame 1 lost, frame 2 (an IDR) shown");
        assert_eq!(
            got[1].data,
            pk.iter()
                .find(|p| p.1 == 6000)
                .map(|_| fr[2].data.clone())
                .unwrap()
        );
    }

    #[test]
    fn late_and_duplicate_packets_are_ignored() {
        let fr = frames(2, 1);
        let pk = packets(&fr);
        let mut d = H264Depacketizer::new(DepayConfig::default());
        let mut doubled = Vec::new();
        for p in &pk {
            doubled.push(p.clone());
            doubled.push(p.clone());
        }
        let got = run(&mut d, &doubled, Instant::now());
        assert_eq!(got.len(), 2);
        assert_eq!(d.stats().late_or_duplicate, pk.len() as u64);
    }

    #[test]
    fn malformed_payloads_are_counted_and_never_panic() {
        let bad: [&[u8]; 9] = [
            &[0x80],           // forbidden bit
            &[24],             // STAP-A with nothing
            &[24, 0, 5, 0x67], // STAP-A size past the end
            &[24, 0, 0],       // STAP-A zero size
            &[28, 0x85],       // FU-A too short
            &[28, 0xc5, 1, 2], // FU-A start and end
            &[28, 0x05, 1, 2], // FU-A continuation without a start
            &[25, 1, 2, 3],    // STAP-B
            &[0, 1, 2],        // reserved type 0
        ];
        let mut d = H264Depacketizer::new(DepayConfig::default());
        let t = Instant::now();
        for (i, b) in bad.iter().enumerate() {
            d.push(t, i as u64, i as u64, true, Bytes::copy_from_slice(b));
        }
        assert!(d.poll_frame().is_none());
        assert_eq!(d.stats().malformed, bad.len() as u64);
        // Then a good stream starting at an IDR plays.
        let fr = frames(2, 1);
        let pk: Vec<_> = packets(&fr)
            .into_iter()
            .map(|(s, ts, m, p)| (s + 100, ts + 100, m, p))
            .collect();
        let mut got = run(&mut d, &pk, t);
        d.tick(t + Duration::from_secs(1));
        while let Some(f) = d.poll_frame() {
            got.push(f);
        }
        assert_eq!(
            got.len(),
            2,
            "the same depacketizer recovers at the next IDR"
        );
    }

    #[test]
    fn oversized_access_units_are_dropped() {
        let fr = frames(2, 1);
        let pk = packets(&fr);
        let mut d = H264Depacketizer::new(DepayConfig {
            max_access_unit_bytes: 64,
            ..Default::default()
        });
        assert!(run(&mut d, &pk, Instant::now()).is_empty());
        assert!(d.stats().frames_dropped >= 2);
    }
}
