//! Framing: round trips at every chunk boundary, any split, garbage, corruption, loss,
//! reassembly bounds in size and time.

mod common;

use std::time::{Duration, Instant};

use common::Rng;
use kvs_bridge::frame::{
    framed_len, Deframer, DeframerConfig, Frame, FrameError, Framer, DEFAULT_MAX_MESSAGE,
    HEADER_LEN, MAGIC, MAX_CHUNK_PAYLOAD, TRAILER_LEN,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn frame_all(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
    let mut out = Vec::new();
    for m in messages {
        framer.emit(m, &mut out).unwrap();
    }
    out
}

fn collect(deframer: &mut Deframer, data: &[u8], now: Instant) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    deframer.feed(data, now, |m| got.push(m.to_vec()));
    got
}

#[test]
fn round_trip_at_every_chunk_boundary() {
    let now = Instant::now();
    for len in [
        0,
        1,
        8191,
        8192,
        8193,
        16383,
        16384,
        16385,
        DEFAULT_MAX_MESSAGE,
    ] {
        let message = pattern(len, 7);
        let mut wire = Vec::new();
        Framer::new(DEFAULT_MAX_MESSAGE)
            .emit(&message, &mut wire)
            .unwrap();
        let chunks = len.div_ceil(MAX_CHUNK_PAYLOAD).max(1);
        assert_eq!(
            wire.len(),
            len + chunks * (HEADER_LEN + TRAILER_LEN),
            "len {len}"
        );
        assert_eq!(wire.len(), framed_len(len));
        let mut d = Deframer::new(DeframerConfig::default());
        let got = collect(&mut d, &wire, now);
        assert_eq!(got, vec![message], "len {len}");
        assert_eq!(d.stats().frames, chunks as u64);
        assert_eq!(d.stats().errors(), 0);
        assert_eq!(d.stats().bytes_skipped, 0);
    }
}

#[test]
fn one_megabyte_is_refused_at_both_ends() {
    let big = pattern(1 << 20, 1);
    let mut out = Vec::new();
    assert_eq!(
        Framer::new(DEFAULT_MAX_MESSAGE).emit(&big, &mut out),
        Err(FrameError::MessageTooLarge {
            len: 1 << 20,
            max: DEFAULT_MAX_MESSAGE
        })
    );
    assert!(out.is_empty(), "nothing written for a refused message");

    // A sender with a bigger limit: the receiver drops it (counted) and stays in step.
    let mut wire = Vec::new();
    Framer::new(4 << 20).emit(&big, &mut wire).unwrap();
    Framer::new(4 << 20).emit(b"after", &mut wire).unwrap();
    let mut d = Deframer::new(DeframerConfig::default());
    let got = collect(&mut d, &wire, Instant::now());
    assert_eq!(got, vec![b"after".to_vec()]);
    assert_eq!(d.stats().oversize, 1);
    assert_eq!(d.stats().orphan_chunks, 127, "its other chunks are orphans");
    assert_eq!(d.stats().crc_errors + d.stats().header_errors, 0);
}

#[test]
fn size_bound_is_configurable() {
    let config = DeframerConfig {
        max_message: 10_000,
        ..DeframerConfig::default()
    };
    let wire = frame_all(&[pattern(10_000, 1), pattern(10_001, 2), pattern(5, 3)]);
    let mut d = Deframer::new(config);
    let got = collect(&mut d, &wire, Instant::now());
    assert_eq!(got, vec![pattern(10_000, 1), pattern(5, 3)]);
    assert_eq!(d.stats().oversize, 1);
}

#[test]
fn byte_at_a_time() {
    let messages: Vec<Vec<u8>> = vec![
        pattern(0, 0),
        pattern(3, 1),
        pattern(9000, 2),
        pattern(1, 3),
    ];
    let wire = frame_all(&messages);
    let mut d = Deframer::new(DeframerConfig::default());
    let now = Instant::now();
    let mut got = Vec::new();
    for b in &wire {
        d.feed(std::slice::from_ref(b), now, |m| got.push(m.to_vec()));
    }
    assert_eq!(got, messages);
    assert_eq!(d.stats().errors(), 0);
}

#[test]
fn push_poll_lends_single_chunk_messages_without_copying() {
    let wire = frame_all(&[b"one".to_vec(), b"two".to_vec()]);
    let mut d = Deframer::new(DeframerConfig::default());
    let now = Instant::now();
    assert_eq!(d.push(&wire), wire.len());
    assert_eq!(d.poll(now), Some(&b"one"[..]));
    assert_eq!(d.poll(now), Some(&b"two"[..]));
    assert_eq!(d.poll(now), None);
}

#[test]
fn random_splits_property() {
    let mut rng = Rng::new(0x5EED_0001);
    for round in 0..200 {
        let count = 1 + rng.below(6);
        let messages: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = match rng.below(4) {
                    0 => rng.below(16),
                    1 => rng.below(MAX_CHUNK_PAYLOAD + 2),
                    2 => MAX_CHUNK_PAYLOAD - 1 + rng.below(3),
                    _ => rng.below(3 * MAX_CHUNK_PAYLOAD),
                };
                rng.bytes(len)
            })
            .collect();
        let wire = frame_all(&messages);
        let mut d = Deframer::new(DeframerConfig::default());
        let mut got = Vec::new();
        let max_piece = 1 + rng.below(20_000);
        for piece in rng.split(&wire, max_piece) {
            d.feed(piece, Instant::now(), |m| got.push(m.to_vec()));
        }
        assert_eq!(got, messages, "round {round}");
        assert_eq!(d.stats().errors(), 0);
    }
}

#[test]
fn garbage_between_frames_is_skipped() {
    let mut rng = Rng::new(42);
    let messages: Vec<Vec<u8>> = (0..40).map(|i| pattern(rng.below(12_000), i)).collect();
    let mut wire = Vec::new();
    let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
    let mut garbage = 0;
    for m in &messages {
        let mut junk = rng.junk(100);
        // Garbage that looks like the start of a frame is the hard case.
        if rng.below(2) == 0 {
            junk.extend_from_slice(&MAGIC[..1 + rng.below(4)]);
            junk.extend(rng.junk(30));
        }
        garbage += junk.len();
        wire.extend_from_slice(&junk);
        framer.emit(m, &mut wire).unwrap();
    }
    let mut d = Deframer::new(DeframerConfig::default());
    let mut got = Vec::new();
    for piece in rng.split(&wire, 777) {
        d.feed(piece, Instant::now(), |m| got.push(m.to_vec()));
    }
    assert_eq!(got, messages);
    assert_eq!(d.stats().bytes_skipped, garbage as u64);
}

#[test]
fn bit_flips_lose_only_the_hit_message() {
    let mut rng = Rng::new(7);
    for round in 0..300 {
        let messages: Vec<Vec<u8>> = (0..3).map(|i| pattern(1 + rng.below(300), i)).collect();
        let mut wire = frame_all(&messages);
        let first_len = framed_len(messages[0].len());
        // Flip one bit anywhere in the middle frame.
        let second_len = framed_len(messages[1].len());
        let at = first_len + rng.below(second_len);
        wire[at] ^= 1 << rng.below(8);
        let mut d = Deframer::new(DeframerConfig::default());
        let got = collect(&mut d, &wire, Instant::now());
        assert_eq!(
            got,
            vec![messages[0].clone(), messages[2].clone()],
            "round {round}"
        );
        assert!(
            d.stats().errors() >= 1,
            "round {round}: the damage is counted"
        );
    }
}

#[test]
fn dropped_bytes_do_not_swallow_the_next_message() {
    let mut rng = Rng::new(99);
    for round in 0..300 {
        let messages: Vec<Vec<u8>> = (0..3).map(|i| pattern(1 + rng.below(300), i)).collect();
        let mut wire = frame_all(&messages);
        let first_len = framed_len(messages[0].len());
        let second_len = framed_len(messages[1].len());
        let at = first_len + rng.below(second_len);
        let n = 1 + rng.below(3.min(second_len - (at - first_len)));
        wire.drain(at..at + n);
        let mut d = Deframer::new(DeframerConfig::default());
        let mut got = Vec::new();
        for piece in rng.split(&wire, 50) {
            d.feed(piece, Instant::now(), |m| got.push(m.to_vec()));
        }
        assert_eq!(
            got,
            vec![messages[0].clone(), messages[2].clone()],
            "round {round}"
        );
        assert!(d.stats().errors() >= 1);
    }
}

#[test]
fn truncated_chunk_then_new_message() {
    let big = pattern(20_000, 5);
    let mut chunked = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&big, &mut chunked)
        .unwrap();
    // The first chunk whole, the second cut in the middle (the sender died), then a new
    // message from a restarted sender (its message ids start over).
    let first = HEADER_LEN + MAX_CHUNK_PAYLOAD + TRAILER_LEN;
    let mut wire = chunked[..first + 4000].to_vec();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(b"fresh", &mut wire)
        .unwrap();
    let mut d = Deframer::new(DeframerConfig::default());
    let got = collect(&mut d, &wire, Instant::now());
    // The cut frame's header claims 8192 more bytes: it is only dismissed once enough bytes
    // arrived to check its CRC. A later message on the link brings them.
    let mut wire2 = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&pattern(9000, 9), &mut wire2)
        .unwrap();
    let mut all = got;
    all.extend(collect(&mut d, &wire2, Instant::now()));
    assert_eq!(all, vec![b"fresh".to_vec(), pattern(9000, 9)]);
    assert_eq!(
        d.stats().partials_discarded,
        1,
        "the new first chunk discarded the partial"
    );
    assert!(d.stats().crc_errors >= 1);
}

#[test]
fn new_first_chunk_and_foreign_chunk_discard_a_partial() {
    let a = pattern(10_000, 1);
    let b = pattern(10_000, 2);
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE).emit(&a, &mut fa).unwrap();
    let mut framer_b = Framer::new(DEFAULT_MAX_MESSAGE);
    framer_b.emit(b"x", &mut Vec::new()).unwrap(); // message id 1, not 0
    framer_b.emit(&b, &mut fb).unwrap();
    let first = HEADER_LEN + MAX_CHUNK_PAYLOAD + TRAILER_LEN;

    // a's first chunk, then b's last chunk (another message id): partial dropped.
    let mut wire = fa[..first].to_vec();
    wire.extend_from_slice(&fb[first..]);
    wire.extend_from_slice(&fa); // a again, whole
    let mut d = Deframer::new(DeframerConfig::default());
    assert_eq!(collect(&mut d, &wire, Instant::now()), vec![a.clone()]);
    assert_eq!(d.stats().partials_discarded, 1);
    assert_eq!(d.stats().orphan_chunks, 1);

    // a's first chunk, then b's first chunk: a is superseded, b completes.
    let mut wire = fa[..first].to_vec();
    wire.extend_from_slice(&fb);
    let mut d = Deframer::new(DeframerConfig::default());
    assert_eq!(collect(&mut d, &wire, Instant::now()), vec![b]);
    assert_eq!(d.stats().partials_discarded, 1);
}

#[test]
fn a_gap_never_glues_chunks() {
    let big = pattern(3 * MAX_CHUNK_PAYLOAD, 4);
    let mut wire = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&big, &mut wire)
        .unwrap();
    let frame = HEADER_LEN + MAX_CHUNK_PAYLOAD + TRAILER_LEN;
    // Drop the whole middle chunk: offsets no longer line up.
    wire.drain(frame..2 * frame);
    let mut d = Deframer::new(DeframerConfig::default());
    assert!(collect(&mut d, &wire, Instant::now()).is_empty());
    assert_eq!(d.stats().partials_discarded, 1);
}

#[test]
fn reassembly_times_out_without_a_next_chunk() {
    let big = pattern(12_000, 3);
    let mut wire = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&big, &mut wire)
        .unwrap();
    let first = HEADER_LEN + MAX_CHUNK_PAYLOAD + TRAILER_LEN;
    let t0 = Instant::now();
    let timeout = DeframerConfig::default().reassembly_timeout;

    let mut d = Deframer::new(DeframerConfig::default());
    assert!(collect(&mut d, &wire[..first], t0).is_empty());
    assert_eq!(d.poll_timeout(), Some(t0 + timeout));
    let just_in_time = collect(
        &mut d,
        &wire[first..],
        t0 + timeout - Duration::from_millis(1),
    );
    assert_eq!(just_in_time, vec![big.clone()]);

    let mut d = Deframer::new(DeframerConfig::default());
    assert!(collect(&mut d, &wire[..first], t0).is_empty());
    assert!(collect(&mut d, &wire[first..], t0 + timeout).is_empty());
    assert_eq!(d.stats().partials_expired, 1);
    assert_eq!(d.stats().orphan_chunks, 1);
    assert_eq!(d.poll_timeout(), None);

    // Expiry also happens on a timer, without input.
    let mut d = Deframer::new(DeframerConfig::default());
    collect(&mut d, &wire[..first], t0);
    d.expire(t0 + timeout);
    assert_eq!(d.stats().partials_expired, 1);
}

#[test]
fn unknown_frame_version_is_skipped_whole() {
    let mut wire = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&pattern(100, 1), &mut wire)
        .unwrap();
    wire[4] = 2; // a future frame version, with valid checks
    let mut frame = Frame::new_unchecked(&mut wire[..]);
    frame.fill_checks();
    let skipped = wire.len();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(b"v1", &mut wire)
        .unwrap();
    let mut d = Deframer::new(DeframerConfig::default());
    let mut got = Vec::new();
    for b in &wire {
        d.feed(std::slice::from_ref(b), Instant::now(), |m| {
            got.push(m.to_vec())
        });
    }
    assert_eq!(got, vec![b"v1".to_vec()]);
    assert_eq!(d.stats().unknown_version, 1);
    assert_eq!(d.stats().bytes_skipped, skipped as u64);
}

#[test]
fn checked_view_rejects_damage() {
    let mut wire = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(b"abc", &mut wire)
        .unwrap();
    assert!(Frame::new_checked(&wire[..]).is_ok());
    assert_eq!(
        Frame::new_checked(&wire[..10]).unwrap_err(),
        FrameError::Truncated { len: 10 }
    );
    let mut bad = wire.clone();
    bad[21] ^= 0xFF;
    assert_eq!(
        Frame::new_checked(&bad[..]).unwrap_err(),
        FrameError::Checksum
    );
    let mut bad = wire.clone();
    bad[8] ^= 0x01;
    assert_eq!(
        Frame::new_checked(&bad[..]).unwrap_err(),
        FrameError::HeaderCheck
    );
    let mut bad = wire;
    bad[0] = 0;
    assert_eq!(
        Frame::new_checked(&bad[..]).unwrap_err(),
        FrameError::BadMagic
    );
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = Rng::new(0xBAD5EED);
    let mut d = Deframer::new(DeframerConfig {
        max_message: 40_000,
        ..DeframerConfig::default()
    });
    let t0 = Instant::now();
    let mut valid = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&pattern(20_000, 0), &mut valid)
        .unwrap();
    for i in 0..3000u64 {
        let mut input = rng.junk(600);
        if rng.below(3) == 0 {
            // Splice in pieces of real frames so the deep paths run too.
            let start = rng.below(valid.len());
            let end = (start + rng.below(9000)).min(valid.len());
            input.extend_from_slice(&valid[start..end]);
            if rng.below(2) == 0 {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
        }
        d.feed(&input, t0 + Duration::from_millis(i), |m| {
            assert!(m.len() <= 40_000);
        });
    }
}

#[test]
fn damaged_streams_deliver_the_same_whatever_the_split() {
    let mut rng = Rng::new(0xD1CE);
    for round in 0..300 {
        let mut wire = Vec::new();
        let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
        for _ in 0..1 + rng.below(5) {
            wire.extend(rng.junk(40));
            let len = rng.below(20_000);
            framer.emit(&rng.bytes(len), &mut wire).unwrap();
        }
        for _ in 0..rng.below(4) {
            let at = rng.below(wire.len());
            match rng.below(3) {
                0 => wire[at] ^= 1 << rng.below(8),
                1 => {
                    wire.remove(at);
                }
                _ => wire.insert(at, rng.next_u64() as u8),
            }
        }
        let now = Instant::now();
        let whole = collect(&mut Deframer::new(DeframerConfig::default()), &wire, now);
        let mut d = Deframer::new(DeframerConfig::default());
        let mut split = Vec::new();
        let max_piece = 1 + rng.below(3000);
        for piece in rng.split(&wire, max_piece) {
            d.feed(piece, now, |m| split.push(m.to_vec()));
        }
        assert_eq!(whole, split, "round {round}");
    }
}
