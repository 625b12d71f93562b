//! Fuzz the RTP → H.264 depacketizer (RFC 6184 single NAL / STAP-A / FU-A, the reorder window,
//! loss handling) with packets cut from the input, and the Annex-B → MP4 sample conversion of
//! what comes out. Invariants: no panic, frames within the size bound, keyframes have an IDR.
#![no_main]

use bytes::Bytes;
use kvs_media::h264::AccessUnitInfo;
use kvs_media::receive::depay::{DepayConfig, H264Depacketizer};
use kvs_media::receive::record::to_length_prefixed;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const MAX_AU: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut d = H264Depacketizer::new(DepayConfig {
        max_reorder_packets: 8,
        max_reorder_delay: Duration::from_millis(50),
        max_access_unit_bytes: MAX_AU,
        keyframe_request_interval: Duration::from_millis(10),
    });
    let t0 = Instant::now();
    let (mut seq, mut ts, mut ms) = (1_000u64, 90_000u64, 0u64);
    let mut rest = data;
    // Each packet: seq step (signed), timestamp step, flags (marker, time step), length, payload.
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let len = usize::from(head[3]).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        seq = seq.saturating_add_signed(i64::from(head[0] as i8));
        ts += u64::from(head[1]) * 100;
        ms += u64::from(head[2] >> 1);
        let now = t0 + Duration::from_millis(ms);
        d.push(now, seq, ts, head[2] & 1 != 0, Bytes::copy_from_slice(payload));
        d.tick(now);
        let _ = d.take_keyframe_request(now);
        while let Some(f) = d.poll_frame() {
            // A kept SPS/PPS access unit may go in front of an IDR.
            assert!(f.data.len() <= 2 * MAX_AU, "frame of {} bytes", f.data.len());
            if f.keyframe {
                assert!(AccessUnitInfo::scan(&f.data).has_idr);
            }
            let sample = to_length_prefixed(&f.data);
            assert!(sample.len() <= f.data.len() + 4 * f.data.len() / 3 + 4);
        }
    }
    let _ = d.poll_timeout();
    let _ = to_length_prefixed(data);
});
