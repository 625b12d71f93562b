//! Fuzzes the RainMaker node's `params/remote` handling: arbitrary payloads into a connected
//! `NodeCore` must never panic; whatever it asks to apply is within the advertised bounds and
//! valid strings; every publish is JSON on one of the node's topics; confirming the applies
//! yields at most one report, and the confirmed state stays within bounds.
#![no_main]

use kvs_app::control::Control;
use kvs_app::rainmaker::{Change, NodeCore, NodeSettings, Output};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let settings = NodeSettings::new("fuzznode");
    let bounds = settings.bitrate_bounds;
    let resolutions = settings.resolutions.clone();
    let mut core = NodeCore::new(settings).expect("valid settings");
    let now = Instant::now();
    core.on_connected(now);
    while core.poll_output().is_some() {}
    core.handle_remote(now, data);
    let mut ids = Vec::new();
    while let Some(out) = core.poll_output() {
        match out {
            Output::Publish(p) => {
                assert!(p.topic.starts_with("node/fuzznode/"), "{}", p.topic);
                serde_json::from_slice::<serde_json::Value>(&p.payload).expect("JSON publish");
            }
            Output::Apply { id, change } => {
                match change {
                    Change::Control(Control::BitrateKbps(k)) => {
                        let k = i64::from(k);
                        assert!(
                            k >= bounds.min
                                && k <= bounds.max
                                && (k - bounds.min) % bounds.step == 0
                        );
                    }
                    Change::Control(Control::MaxViewers(n)) => assert!((1..=10).contains(&n)),
                    Change::Control(Control::Resolution { width, height }) => assert!(resolutions
                        .iter()
                        .any(|r| r.width == width && r.height == height)),
                    Change::Name(name) => assert!(!name.is_empty() && name.len() <= 64),
                    _ => {}
                }
                ids.push(id);
            }
        }
    }
    for id in ids {
        core.on_applied(now, id, Ok(()));
    }
    let reports = std::iter::from_fn(|| core.poll_output()).count();
    assert!(reports <= 1);
    assert!((1..=10).contains(&core.state().max_viewers));
});
