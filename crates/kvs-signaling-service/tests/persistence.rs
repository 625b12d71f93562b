//! Channels survive restarts: creates that race are all kept, and a service holding its full
//! default channel limit (10,000) restarts.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::post;
use kvs_signaling_service::{spawn_router, ServiceConfig, ServiceState};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let n: u64 = rand::random();
    TempDir(std::env::temp_dir().join(format!("kvs-persist-{tag}-{}-{n:x}", std::process::id())))
}

fn config(dir: &TempDir) -> ServiceConfig {
    ServiceConfig {
        state_dir: Some(dir.0.clone()),
        ..ServiceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_are_all_kept_across_a_restart() {
    let dir = temp_dir("race");
    let state = ServiceState::open(config(&dir)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = spawn_router(
        listener,
        kvs_signaling_service::router(state.clone()),
        state,
    );
    let addr = service.local_addr().unwrap();
    let creates: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let body = format!(r#"{{"ChannelName":"race-{i}"}}"#);
                post(addr, "/createSignalingChannel", &body).await.status
            })
        })
        .collect();
    for c in creates {
        assert_eq!(c.await.unwrap(), 200);
    }
    service.shutdown().await;

    let restarted = ServiceState::open(config(&dir)).unwrap();
    let mut names: Vec<String> = restarted.channels().into_iter().map(|c| c.name).collect();
    names.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("race-{i}")).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "every acknowledged create survives the restart"
    );
}

#[test]
fn a_service_at_its_channel_limit_restarts_with_every_channel() {
    let dir = temp_dir("full");
    let state = ServiceState::open(config(&dir)).unwrap();
    // Long names make the records as large as they get.
    let name = |i: usize| format!("{i:05}-{}", "n".repeat(250));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..16 {
            let state = &state;
            s.spawn(move || {
                for i in (t..10_000).step_by(16) {
                    state.create_channel(&name(i)).unwrap();
                }
            });
        }
    });
    let took = started.elapsed();
    eprintln!("10,000 creates from 16 threads: {took:?}");
    // The limit holds.
    assert!(state.create_channel("one-too-many").is_err());
    drop(state);

    let started = Instant::now();
    let restarted = ServiceState::open(config(&dir)).unwrap();
    eprintln!("restart with 10,000 channels: {:?}", started.elapsed());
    let channels = restarted.channels();
    assert_eq!(channels.len(), 10_000);
    assert!(restarted.channel_by_name(&name(9_999)).is_some());
    assert!(started.elapsed() < Duration::from_secs(30));
}
