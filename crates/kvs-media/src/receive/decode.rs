//! The decoding stage between a viewer's access units and a `kvs_platform::VideoPlayer`:
//! a bounded queue with the upstream SDK's drop policy, and an openh264 decoder.
//!
//! Owns the queue policy and the decoder state; it neither depacketizes nor shows frames (the
//! application's player thread pops, decodes and hands the picture to the player).
//!
//! - [`DecodeQueue`]: at most `capacity` frames wait. When it is full (the player is behind)
//!   a non-keyframe is dropped — and so is every frame after it until the next keyframe, since
//!   they reference what was dropped; a keyframe replaces everything queued (it needs nothing
//!   before it).
//! - [`VideoDecoder`]: openh264; after a decode error (or a decoder panic: remote input must
//!   not take the thread down) the decoder is made anew and frames are skipped until the next
//!   IDR. The caller asks the viewer for one ([`VideoDecoder::take_keyframe_request`]).

use super::depay::DepacketizedFrame;
use kvs_platform::I420Frame;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Frames waiting for the decoder by default (~130 ms at 30 fps).
pub const DEFAULT_QUEUE: usize = 4;

/// Counters of the decoding stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub queued: u64,
    /// Dropped because the queue was full, or while waiting for a keyframe after that.
    pub dropped_backpressure: u64,
    /// Queued frames a keyframe replaced.
    pub replaced: u64,
    pub decoded: u64,
    pub decode_errors: u64,
    /// Skipped after an error, until the next IDR.
    pub skipped_until_idr: u64,
}

/// The bounded queue in front of the decoder; see the module doc.
#[derive(Debug)]
pub struct DecodeQueue {
    capacity: usize,
    frames: VecDeque<DepacketizedFrame>,
    /// A frame was dropped: later non-keyframes are useless until a keyframe.
    broken: bool,
    stats: DecodeStats,
}

impl DecodeQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            frames: VecDeque::new(),
            broken: false,
            stats: DecodeStats::default(),
        }
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queue a frame; returns false when it was dropped (the caller may ask for a keyframe).
    pub fn push(&mut self, frame: DepacketizedFrame) -> bool {
        if frame.keyframe {
            if self.frames.len() >= self.capacity {
                self.stats.replaced += self.frames.len() as u64;
                self.frames.clear();
            }
            self.broken = false;
        } else if self.broken || self.frames.len() >= self.capacity {
            self.broken = true;
            self.stats.dropped_backpressure += 1;
            return false;
        }
        self.stats.queued += 1;
        self.frames.push_back(frame);
        true
    }

    pub fn pop(&mut self) -> Option<DepacketizedFrame> {
        self.frames.pop_front()
    }
}

/// Errors from decoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot create the H.264 decoder: {0}")]
    Init(String),
}

/// openh264 with "await the next IDR after an error"; see the module doc.
pub struct VideoDecoder {
    decoder: Option<Decoder>,
    waiting_idr: bool,
    keyframe_wanted: bool,
    first_rtp_time: Option<u64>,
    stats: DecodeStats,
}

impl VideoDecoder {
    pub fn new() -> Result<Self, DecodeError> {
        Ok(Self {
            decoder: Some(Decoder::new().map_err(|e| DecodeError::Init(e.to_string()))?),
            waiting_idr: true,
            keyframe_wanted: false,
            first_rtp_time: None,
            stats: DecodeStats::default(),
        })
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// True once after the decoder started waiting for an IDR.
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// Decode one access unit: `Some(picture)` when one comes out.
    pub fn decode(&mut self, frame: &DepacketizedFrame) -> Option<I420Frame> {
        if self.waiting_idr {
            if !frame.keyframe {
                self.stats.skipped_until_idr += 1;
                return None;
            }
            self.waiting_idr = false;
        }
        if self.decoder.is_none() {
            match Decoder::new() {
                Ok(d) => self.decoder = Some(d),
                Err(_) => return None,
            }
        }
        let decoder = self.decoder.as_mut()?;
        let origin = *self.first_rtp_time.get_or_insert(frame.rtp_time);
        let timestamp_us = frame.rtp_time.saturating_sub(origin) * 100 / 9;
        let result = catch_unwind(AssertUnwindSafe(|| match decoder.decode(&frame.data) {
            Ok(Some(pic)) => Ok(Some(to_i420(&pic, timestamp_us))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }));
        match result {
            Ok(Ok(Some(pic))) => {
                self.stats.decoded += 1;
                Some(pic)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::debug!("viewer video: decode error, waiting for the next IDR: {e}");
                self.failed();
                None
            }
            Err(_) => {
                tracing::warn!("viewer video: the decoder panicked; made anew");
                self.failed();
                None
            }
        }
    }

    fn failed(&mut self) {
        self.stats.decode_errors += 1;
        self.decoder = None;
        self.waiting_idr = true;
        self.keyframe_wanted = true;
    }
}

/// Copy a decoded picture into a tight I420 buffer (the decoder's rows are padded).
fn to_i420(pic: &impl YUVSource, timestamp_us: u64) -> I420Frame {
    let (w, h) = pic.dimensions();
    let (sy, su, sv) = pic.strides();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
    for row in 0..h {
        data.extend_from_slice(&pic.y()[row * sy..row * sy + w]);
    }
    for row in 0..ch {
        data.extend_from_slice(&pic.u()[row * su..row * su + cw]);
    }
    for row in 0..ch {
        data.extend_from_slice(&pic.v()[row * sv..row * sv + cw]);
    }
    I420Frame {
        width: w as u32,
        height: h as u32,
        timestamp_us,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{TestPatternCamera, TestPatternConfig};
    use bytes::Bytes;
    use kvs_platform::{FrameKind, VideoCapture};
    use std::time::Instant;

    fn frames(n: usize, gop: u32) -> Vec<DepacketizedFrame> {
        let mut cam = TestPatternCamera::new(TestPatternConfig {
            width: 160,
            height: 96,
            keyframe_interval: gop,
            paced: false,
            ..Default::default()
        })
        .unwrap();
        cam.start().unwrap();
        (0..n)
            .map(|i| {
                let f = cam.next_frame().unwrap().unwrap();
                DepacketizedFrame {
                    keyframe: f.kind == FrameKind::Key,
                    data: f.data,
                    rtp_time: 3000 * i as u64,
                    arrival: Instant::now(),
                }
            })
            .collect()
    }

    #[test]
    fn decodes_to_tight_i420_of_the_picture_size() {
        let mut d = VideoDecoder::new().unwrap();
        let mut n = 0;
        for f in frames(5, 5) {
            if let Some(p) = d.decode(&f) {
                assert_eq!((p.width, p.height), (160, 96));
                assert_eq!(p.data.len(), 160 * 96 * 3 / 2);
                n += 1;
            }
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn full_queue_drops_deltas_until_a_keyframe_which_replaces_the_queue() {
        let fr = frames(8, 4); // keys at 0 and 4
        let mut q = DecodeQueue::new(2);
        let pushed: Vec<bool> = fr.iter().map(|f| q.push(f.clone())).collect();
        // 0,1 queued; 2,3 dropped (full, then broken); 4 (key) replaces; 5 queued; 6 dropped.
        assert_eq!(
            pushed,
            vec![true, true, false, false, true, true, false, false]
        );
        assert_eq!(q.pop().unwrap().rtp_time, 4 * 3000);
        assert_eq!(q.stats().replaced, 2);
        assert_eq!(q.stats().dropped_backpressure, 4);
    }

    #[test]
    fn after_a_decode_error_frames_wait_for_the_next_idr() {
        let fr = frames(8, 4);
        let mut d = VideoDecoder::new().unwrap();
        assert!(d.decode(&fr[0]).is_some());
        // Where frame 1 should be, a P slice naming PPS 200, which was never sent.
        let junk = DepacketizedFrame {
            data: Bytes::from_static(&[0, 0, 0, 1, 0x41, 0xc0, 0x64, 0x80, 0x12, 0x34]),
            ..fr[1].clone()
        };
        assert!(d.decode(&junk).is_none());
        assert_eq!(d.stats().decode_errors, 1, "openh264 refuses it");
        assert!(d.take_keyframe_request(), "a keyframe is asked for");
        assert!(!d.take_keyframe_request(), "once");
        assert!(
            d.decode(&fr[2]).is_none(),
            "a delta after an error is skipped"
        );
        assert!(d.decode(&fr[3]).is_none());
        assert_eq!(d.stats().skipped_until_idr, 2);
        // The next IDR decodes.
        assert!(d.decode(&fr[4]).is_some());
    }
}
