//! Measures how long creating one channel takes when the service already holds 0 or 9,999
//! (and 99,999 with `--large`) channels, with the channel list kept on disk.
//!
//! `cargo run --release -p kvs-signaling-service --example create_latency`
//!
//! For each size it writes a state directory holding that many channels, starts the service
//! on it, and times 20 creates, one after another, through `ServiceState::create_channel`
//! (what a CreateSignalingChannel call does after parsing). Figures include the sync to disk.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvs_signaling_service::store::ChannelStore;
use kvs_signaling_service::{ChannelInfo, ServiceConfig, ServiceState};

const CREATES: usize = 20;

fn existing(n: usize) -> Vec<ChannelInfo> {
    (0..n)
        .map(|i| {
            let name = format!("existing-{i:06}");
            ChannelInfo {
                arn: format!(
                    "arn:aws:kinesisvideo:us-west-2:000000000000:channel/{name}/1700000000000"
                ),
                name,
                created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                message_ttl: Duration::from_secs(60),
                version: format!("v{i}"),
            }
        })
        .collect()
}

fn main() {
    let large = std::env::args().any(|a| a == "--large");
    let mut sizes = vec![0, 9_999];
    if large {
        sizes.push(99_999);
    }
    for n in sizes {
        let dir = std::env::temp_dir().join(format!(
            "kvs-create-latency-{}-{n}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        ChannelStore::new(&dir).save(&existing(n)).unwrap();
        let state = ServiceState::open(ServiceConfig {
            state_dir: Some(dir.clone()),
            max_channels: usize::MAX,
            ..ServiceConfig::default()
        })
        .unwrap();
        let mut took: Vec<Duration> = (0..CREATES)
            .map(|i| {
                let started = Instant::now();
                state.create_channel(&format!("new-{i}")).unwrap();
                started.elapsed()
            })
            .collect();
        took.sort();
        let mean = took.iter().sum::<Duration>() / CREATES as u32;
        println!(
            "creating channel {:>6}: median {:>8.2} ms, mean {:>8.2} ms, max {:>8.2} ms",
            n + 1,
            took[CREATES / 2].as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e3,
            took[CREATES - 1].as_secs_f64() * 1e3,
        );
        drop(state);
        let _ = std::fs::remove_dir_all(dir);
    }
}
