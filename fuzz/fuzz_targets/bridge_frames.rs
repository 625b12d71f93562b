//! Fuzzes the split-mode link's receiving end: arbitrary bytes, split at arbitrary points,
//! through the Deframer (every message it yields is parsed), and through both state machines
//! (which parse, answer errors and run their timers). Nothing may panic, no message may exceed
//! the configured bound, and the same bytes must give the same messages whatever the split.
#![no_main]

use std::time::{Duration, Instant};

use kvs_bridge::frame::{Deframer, DeframerConfig};
use kvs_bridge::{MediaConfig, MediaSideCore, Message, RelayConfig, SignalingSideCore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the split sizes (cycled); the rest is the link's bytes.
    let (control, stream) = data.split_at(data.len().min(8));
    let config = DeframerConfig {
        max_message: 20_000,
        reassembly_timeout: Duration::from_secs(5),
    };
    let t0 = Instant::now();

    let mut whole = Vec::new();
    Deframer::new(config).feed(stream, t0, |m| whole.push(m.to_vec()));

    let mut split = Vec::new();
    let mut deframer = Deframer::new(config);
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = control
            .get(i % control.len().max(1))
            .map_or(rest.len(), |&c| usize::from(c) + 1)
            .min(rest.len());
        deframer.feed(&rest[..n], t0, |m| {
            assert!(m.len() <= config.max_message);
            split.push(m.to_vec());
            let _ = Message::parse(m).map_err(|e| e.reply());
        });
        rest = &rest[n..];
        i += 1;
    }
    assert_eq!(whole, split, "the split changed what was delivered");

    // Both state machines on the same bytes, time moving on between pieces.
    let relay_config = RelayConfig {
        link: config,
        ..RelayConfig::default()
    };
    let media_config = MediaConfig {
        link: config,
        ..MediaConfig::default()
    };
    let mut relay = SignalingSideCore::new(relay_config, t0);
    let mut media = MediaSideCore::new(media_config, t0);
    media.set_handler_ready(t0);
    let mut now = t0;
    for (k, piece) in stream.chunks(97).enumerate() {
        now += Duration::from_millis(u64::from(control.get(k % 8).copied().unwrap_or(1)) * 40);
        relay.handle_link_bytes(now, piece);
        media.handle_link_bytes(now, piece);
        relay.handle_timeout(now);
        media.handle_timeout(now);
        while relay.poll_output().is_some() {}
        while media.poll_output().is_some() {}
    }
});
