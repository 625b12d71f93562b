//! `kvs-bench signaling-side`: split mode's always-on half as its own measured process, so
//! its heap and RSS are its own.
//!
//! It is what `kvs-webrtc signaling-only --signaling-url …` runs: [`SignalingSide`] with the
//! plain WebSocket signaling client as master, pointed at the local service, and a link to a
//! `kvs-webrtc streaming-only` process (woken by `--wake`). No peer engine, capture or codec
//! runs here: the counting allocator sees only the relay's heap.
//!
//! Protocol: one JSON object per line on stdout (`ready` once signaling is connected,
//! `status` on every change of [`SignalingSideStatus`] with `t_ns` on `CLOCK_MONOTONIC`,
//! `stats`); commands one per line on stdin (`stats`, `quit`). Logs go to stderr.

use crate::{alloc, procfs};
use anyhow::{Context, Result};
use kvs_app::split::{LinkAddr, SignalingSide, SignalingSideConfig, SignalingSideStatus};
use kvs_bridge::{MediaPresence, RelayConfig};
use kvs_signaling::{data_plane_url, Role, WsSignalingClient};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, clap::Args)]
pub struct SignalingSideArgs {
    /// `ws://…` data plane of the local service.
    #[arg(long)]
    pub signaling_url: String,
    #[arg(long)]
    pub channel_arn: String,
    /// The link to the streaming side (`unix:<path>`: this side listens).
    #[arg(long)]
    pub link: String,
    /// `exec:<command>`, `signal:<pidfile>` or `none`.
    #[arg(long, default_value = "none")]
    pub wake: String,
    /// How long the streaming side has to say Ready after a wake (a cold start included).
    #[arg(long, default_value_t = 5000)]
    pub wake_budget_ms: u64,
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock every process on the machine shares (and the
/// one `std::time::Instant` reads on Linux), so times taken in different processes compare.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills the timespec we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// [`monotonic_ns`] of an earlier `Instant` of this process.
pub fn monotonic_ns_of(at: Instant) -> u64 {
    monotonic_ns().saturating_sub(at.elapsed().as_nanos() as u64)
}

fn status_json(s: &SignalingSideStatus) -> serde_json::Value {
    let (media, viewers) = match s.media {
        None => ("unknown", 0),
        Some(MediaPresence::Awake { viewers }) => ("awake", viewers),
        Some(MediaPresence::Sleeping) => ("sleeping", 0),
        Some(MediaPresence::Gone) => ("gone", 0),
    };
    json!({
        "type": "status",
        "t_ns": monotonic_ns(),
        "kvs_connected": s.kvs_connected,
        "media": media,
        "viewers": viewers,
        "wakes": s.wakes,
        "refused": s.viewers_refused,
    })
}

pub async fn run(args: SignalingSideArgs) -> Result<()> {
    let link: LinkAddr = args
        .link
        .parse()
        .map_err(|e| anyhow::anyhow!("--link: {e}"))?;
    let wake = args
        .wake
        .parse()
        .map_err(|e| anyhow::anyhow!("--wake: {e}"))?;
    let role = Role::Master;
    let url = data_plane_url(&args.signaling_url, &args.channel_arn, &role)
        .context("building the data plane URL")?;
    let client = Arc::new(WsSignalingClient::new(url, role));
    let side = SignalingSide::start(
        SignalingSideConfig {
            link,
            wake,
            relay: RelayConfig {
                wake_budget: Duration::from_millis(args.wake_budget_ms.max(100)),
                ..RelayConfig::default()
            },
            reconnect: kvs_app::DeviceConfig::default().reconnect,
            fallback_ice: Vec::new(),
        },
        client,
    )
    .await
    .context("starting the signaling side")?;
    let started = Instant::now();
    let mut status = side.status();
    let mut said_ready = false;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let s = status.borrow_and_update().clone();
                emit(status_json(&s));
                if s.kvs_connected && !said_ready {
                    said_ready = true;
                    emit(json!({"type": "ready"}));
                }
            }
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { break };
                match line.trim() {
                    "stats" => emit(stats_json(started)),
                    "status" => emit(status_json(&status.borrow().clone())),
                    // As in `kvs-bench device`: leave without freeing, for a heap profiler.
                    "quit" if std::env::var_os("KVS_BENCH_EXIT_WITHOUT_CLEANUP").is_some() => {
                        std::process::exit(0)
                    }
                    "quit" => break,
                    other => emit(json!({"type": "error", "message": format!("unknown command {other:?}")})),
                }
            }
        }
    }
    side.shutdown().await;
    Ok(())
}

fn stats_json(started: Instant) -> serde_json::Value {
    let heap = alloc::stats();
    let malloc = alloc::malloc_in_use();
    // As in `kvs-bench device`: what glibc holds for Rust blocks is their bytes, headers and
    // about 16 bytes of chunk overhead each; the rest of glibc's figure is C's.
    let rust_bytes =
        heap.sdk.live_bytes + heap.video_encoder.live_bytes + heap.audio_encoder.live_bytes;
    let blocks =
        heap.sdk.live_blocks + heap.video_encoder.live_blocks + heap.audio_encoder.live_blocks;
    let c_heap = malloc - (rust_bytes + heap.header_bytes + 16 * blocks);
    json!({
        "type": "stats",
        "uptime_s": started.elapsed().as_secs_f64(),
        "heap": heap,
        "rust_heap": rust_bytes,
        "malloc_in_use": malloc,
        "c_heap_estimate": c_heap,
        // No encoder runs here: all of the C heap is the relay's (named as the device's).
        "c_heap_sdk_estimate": c_heap,
        "encoder_c_bytes": 0,
        "rss": procfs::rss_bytes(),
        "cpu_total_ns": procfs::process_cpu().as_nanos() as u64,
    })
}
