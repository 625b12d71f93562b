//! Fuzzes the signaling service's routing core with raw WebSocket frames from connected
//! clients: a channel with a master and two viewers, and a stream of arbitrary frames from any
//! of them at arbitrary (increasing) times, with the edge writing queued frames at arbitrary
//! moments. Nothing may panic; every input yields a bounded number of outputs (at most a
//! forward, a status response and a close); every frame sent is a valid service frame; and no
//! connection ever has more frames queued than its queue holds.
#![no_main]

use std::time::{Duration, Instant};

use kvs_signaling_codec::ServiceFrame;
use kvs_signaling_service::{ConnectRole, ConnectionId, Output, RoutingCore, ServiceConfig};
use libfuzzer_sys::fuzz_target;

/// At most this many outputs per frame handled.
const MAX_OUTPUTS_PER_FRAME: usize = 3;

fuzz_target!(|data: &[u8]| {
    let config = ServiceConfig {
        connection_queue: 8,
        max_queued_per_sender: 3,
        ..ServiceConfig::default()
    };
    let queue = config.connection_queue;
    let mut core = RoutingCore::new(config);
    let start = Instant::now();
    let arn = core
        .create_channel(
            "fuzz",
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .expect("valid name")
        .arn;
    let mut conns: Vec<ConnectionId> = Vec::new();
    for role in [
        ConnectRole::Master,
        ConnectRole::Viewer {
            client_id: "v1".into(),
        },
        ConnectRole::Viewer {
            client_id: "v2".into(),
        },
    ] {
        conns.push(core.connect(&arn, role, start).expect("connects"));
    }
    while core.poll_output().is_some() {}

    let mut now = start;
    // Frames are separated by 0xFF (never part of valid UTF-8 JSON, so any frame may
    // still be anything). Each starts with a control byte: sender, time step, writes.
    for chunk in data.split(|&b| b == 0xff).take(256) {
        let Some((&control, frame)) = chunk.split_first() else {
            continue;
        };
        let sender = conns[usize::from(control % 3)];
        now += Duration::from_millis(u64::from(control >> 2) * 7);
        // Sometimes the edge writes queued frames first.
        if control & 0x40 != 0 {
            for &c in &conns {
                core.frame_sent(c);
            }
        }
        core.handle_frame(sender, frame, now);
        let mut outputs = 0;
        while let Some(out) = core.poll_output() {
            outputs += 1;
            if let Output::Send { text, .. } = &out {
                ServiceFrame::parse(text.as_bytes()).expect("the core sends valid frames");
            }
        }
        assert!(
            outputs <= MAX_OUTPUTS_PER_FRAME,
            "{outputs} outputs for one frame"
        );
        for &c in &conns {
            assert!(core.queued_frames(c) <= queue);
        }
    }
});
