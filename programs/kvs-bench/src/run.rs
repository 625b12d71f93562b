//! `kvs-bench run`: every scenario, with repeats, ours and the peers in the same run; prints
//! the table and writes the JSON.
//!
//! Processes: one local signaling service (`kvs-webrtc service --plain --no-auth`) with a
//! channel per scenario; our device as `kvs-bench device` (its own process, so heap, RSS and
//! CPU are its own); Rust viewers in this process; peers as scripts under `bench/peers/`
//! that print one JSON object per line. The relay scenario adds its own coturn and a second
//! service that hands out TURN credentials (see [`relay`]). The cold-page scenario runs the
//! main program on its embedded default and opens its viewer page (see [`coldpage`]).

use crate::child::LineChild;
use crate::fleet::{self, Member};
use crate::report::{Figure, Goal, Report};
use crate::viewer::{self, Joined, Reception};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod coldpage;
mod relay;
mod split;
mod talkback;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The short version CI runs: every scenario, fewer repeats and viewers.
    #[arg(long)]
    pub smoke: bool,
    /// Where results.json, results.md and the logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Run only these scenarios (ttff, memory, churn, fanout, datachannel, split, relay,
    /// size, coldpage, talkback).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The `kvs-webrtc` program (the local service); default: next to this program.
    #[arg(long)]
    pub kvs_webrtc: Option<PathBuf>,
    /// The peers' folder (scripts, node_modules, .venv).
    #[arg(long, default_value = "bench/peers")]
    pub peers: PathBuf,
    /// Leave out the peers (ours only).
    #[arg(long)]
    pub no_peers: bool,
    /// Override the number of churn cycles.
    #[arg(long)]
    pub churn_cycles: Option<usize>,
    /// Override the fan-out viewer counts (e.g. `1,10,50,100`).
    #[arg(long, value_delimiter = ',')]
    pub fanout_viewers: Vec<usize>,
    /// Override the fan-out measuring window, in seconds.
    #[arg(long)]
    pub fanout_window: Option<u64>,
    /// Override the number of sequential viewers of the split scenario (each wakes a
    /// sleeping media side).
    #[arg(long)]
    pub split_viewers: Option<usize>,
    /// Override the number of offer → first frame runs of the relay scenario (per mode).
    #[arg(long)]
    pub relay_runs: Option<usize>,
    /// Override the number of cold-page runs (a fresh browser context each).
    #[arg(long)]
    pub coldpage_runs: Option<usize>,
    /// Override the number of data channel echo runs (Rust peer and the node-datachannel
    /// reference each).
    #[arg(long)]
    pub dc_runs: Option<usize>,
    /// Override the bytes each data channel echo run moves, in MiB.
    #[arg(long)]
    pub dc_mib: Option<usize>,
    /// Data channel: of the peers, only the node-datachannel reference (no Chromium, no
    /// aiortc), for quick A/B runs of the Rust peer against it.
    #[arg(long)]
    pub dc_reference_only: bool,
}

/// How much of everything a run does.
struct Plan {
    ttff_runs: usize,
    memory_repeats: usize,
    memory_viewers: Vec<usize>,
    churn_cycles: usize,
    fanout_viewers: Vec<usize>,
    fanout_window: Duration,
    fanout_windows: usize,
    dc_bytes: usize,
    dc_repeats: usize,
    dc_pings: usize,
    split_ttff_runs: usize,
    split_viewers: usize,
    /// The longest the sequential viewers may take; fewer viewers when it runs out.
    split_viewers_budget: Duration,
    /// Relay scenario, per mode (direct, relay-only): Rust and Chromium first-frame runs,
    /// viewer levels for heap and CPU, the wait after joining them, CPU windows.
    relay_ttff_runs: usize,
    relay_chromium_runs: usize,
    relay_viewers: Vec<usize>,
    relay_settle: Duration,
    relay_window: Duration,
    relay_windows: usize,
    /// Cold page: runs, each a fresh browser context opening the viewer page.
    coldpage_runs: usize,
    /// Data channel: the node-datachannel reference only, no other peers.
    dc_reference_only: bool,
}

impl Plan {
    fn new(args: &RunArgs) -> Plan {
        let mut p = if args.smoke {
            Plan {
                ttff_runs: 3,
                memory_repeats: 1,
                memory_viewers: vec![1, 10],
                churn_cycles: 30,
                fanout_viewers: vec![1, 10],
                fanout_window: Duration::from_secs(3),
                fanout_windows: 1,
                dc_bytes: 8 << 20,
                dc_repeats: 1,
                dc_pings: 20,
                split_ttff_runs: 2,
                split_viewers: 5,
                split_viewers_budget: Duration::from_secs(60),
                relay_ttff_runs: 3,
                relay_chromium_runs: 2,
                relay_viewers: vec![1, 5],
                relay_settle: Duration::from_secs(2),
                relay_window: Duration::from_secs(3),
                relay_windows: 1,
                coldpage_runs: 5,
                dc_reference_only: false,
            }
        } else {
            Plan {
                ttff_runs: 15,
                memory_repeats: 3,
                memory_viewers: vec![1, 10, 50],
                churn_cycles: 1000,
                fanout_viewers: vec![1, 10, 50, 100],
                fanout_window: Duration::from_secs(10),
                fanout_windows: 3,
                dc_bytes: 64 << 20,
                dc_repeats: 3,
                dc_pings: 200,
                split_ttff_runs: 5,
                split_viewers: 100,
                split_viewers_budget: Duration::from_secs(270),
                relay_ttff_runs: 15,
                relay_chromium_runs: 10,
                relay_viewers: vec![1, 5],
                relay_settle: Duration::from_secs(3),
                relay_window: Duration::from_secs(10),
                relay_windows: 3,
                coldpage_runs: 10,
                dc_reference_only: false,
            }
        };
        if let Some(c) = args.churn_cycles {
            p.churn_cycles = c;
        }
        if !args.fanout_viewers.is_empty() {
            p.fanout_viewers = args.fanout_viewers.clone();
        }
        if let Some(n) = args.split_viewers {
            p.split_viewers = n;
        }
        if let Some(n) = args.relay_runs {
            p.relay_ttff_runs = n.max(1);
        }
        if let Some(n) = args.coldpage_runs {
            p.coldpage_runs = n.max(1);
        }
        if let Some(n) = args.dc_runs {
            p.dc_repeats = n.max(1);
        }
        if let Some(n) = args.dc_mib {
            p.dc_bytes = n.max(1) << 20;
        }
        p.dc_reference_only = args.dc_reference_only;
        if let Some(w) = args.fanout_window {
            p.fanout_window = Duration::from_secs(w.max(1));
        }
        p
    }
}

/// Message sizes and window of the data-channel echo test, the same for every pairing.
const DC_MESSAGE: usize = 16 * 1024;
const DC_WINDOW: usize = 512 * 1024;
const FANOUT_BITRATE: u32 = 2_000_000;

const CHANNELS: [&str; 10] = [
    "bench-ours",
    "bench-gstreamer",
    "bench-aiortc",
    "bench-memory",
    "bench-churn",
    "bench-fanout",
    "bench-datachannel",
    split::CLASSIC_CHANNEL,
    split::RESIDENT_CHANNEL,
    split::COLD_CHANNEL,
];

struct Ctx {
    plan: Plan,
    out: PathBuf,
    logs: PathBuf,
    me: PathBuf,
    /// The `kvs-webrtc` program (the local service; split mode's streaming side).
    kvs_webrtc: PathBuf,
    peers: Option<PathBuf>,
    url: String,
    arns: BTreeMap<String, String>,
    report: Report,
    child_seq: usize,
    /// Environment of the device processes started next.
    device_env: Vec<(String, String)>,
    /// Environment of the peer scripts started next.
    peer_env: Vec<(String, String)>,
}

/// For heap figures: glibc's per-thread caches keep freed blocks counted as in use by
/// `mallinfo2`, which would blur the C heap figure by up to hundreds of KB; without them
/// every free is seen at once.
fn exact_malloc_accounting() -> Vec<(String, String)> {
    vec![(
        "GLIBC_TUNABLES".to_string(),
        "glibc.malloc.tcache_count=0".to_string(),
    )]
}

impl Ctx {
    fn arn(&self, channel: &str) -> String {
        self.arns.get(channel).cloned().unwrap_or_default()
    }

    fn name(&mut self, base: &str) -> String {
        self.child_seq += 1;
        format!("{:02}-{base}", self.child_seq)
    }

    async fn device(&mut self, channel: &str, extra: &[&str]) -> Result<LineChild> {
        let mut args = vec![
            "device".to_string(),
            "--signaling-url".into(),
            self.url.clone(),
            "--channel-arn".into(),
            self.arn(channel),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let name = self.name(&format!("device-{channel}"));
        // KVS_BENCH_DEVICE_WRAPPER="heaptrack -o /tmp/ht" (or perf, valgrind …) runs the device
        // under a profiler, to see where a figure comes from.
        let (program, args) = wrapped("KVS_BENCH_DEVICE_WRAPPER", &self.me, args);
        let mut dev =
            LineChild::spawn_with_env(&name, &program, &args, &self.device_env, &self.logs)?;
        dev.json("ready", Duration::from_secs(60)).await?;
        Ok(dev)
    }

    /// A peer script: `node <script>` or `<venv python> <script>`.
    fn peer(&mut self, base: &str, script: &str, args: Vec<String>) -> Result<LineChild> {
        let dir = self
            .peers
            .clone()
            .ok_or_else(|| anyhow!("peers disabled"))?;
        let script_path = dir.join(script);
        let (program, mut all) = if script.ends_with(".js") {
            (
                PathBuf::from("node"),
                vec![script_path.display().to_string()],
            )
        } else {
            (
                dir.join(".venv/bin/python"),
                vec![script_path.display().to_string()],
            )
        };
        all.extend(args);
        let name = self.name(base);
        LineChild::spawn_with_env(&name, &program, &all, &self.peer_env, &self.logs)
    }
}

/// `program args…`, or under the command in environment variable `var` (a profiler).
fn wrapped(var: &str, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
    match std::env::var(var) {
        Ok(w) if !w.trim().is_empty() => {
            let mut words = w.split_whitespace().map(str::to_string);
            let wrapper = PathBuf::from(words.next().unwrap_or_default());
            let mut all: Vec<String> = words.collect();
            all.push(program.display().to_string());
            all.extend(args);
            (wrapper, all)
        }
        _ => (program.to_path_buf(), args),
    }
}

fn wants(args: &RunArgs, scenario: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|s| s == scenario)
}

pub async fn run(args: RunArgs) -> Result<()> {
    let plan = Plan::new(&args);
    let me = std::env::current_exe()?;
    let kvs_webrtc = match &args.kvs_webrtc {
        Some(p) => p.clone(),
        None => me
            .parent()
            .map(|d| d.join("kvs-webrtc"))
            .ok_or_else(|| anyhow!("no directory for kvs-webrtc"))?,
    };
    std::fs::create_dir_all(&args.out)?;
    let logs = args.out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let state = args.out.join("service-state");
    let _ = std::fs::remove_dir_all(&state);

    let mut service_args = vec![
        "service".to_string(),
        "--plain".into(),
        "--no-auth".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--max-viewers".into(),
        "200".into(),
        // Churn and fan-out join viewers faster than KVS's 3 connects/s per channel, and the
        // device answers them faster than KVS's 5 SDP/s (20 candidates/s) per connection:
        // the local service's KVS limits would refuse the 11th answer of a churn.
        "--connects-per-second".into(),
        "0".into(),
        "--sdp-per-second".into(),
        "0".into(),
        "--ice-per-second".into(),
        "0".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    for c in CHANNELS {
        service_args.push("--channel".into());
        service_args.push(c.into());
    }
    let mut service = LineChild::spawn("00-service", &kvs_webrtc, &service_args, &logs)?;
    let mut arns = BTreeMap::new();
    let url = loop {
        let line = service
            .line(Duration::from_secs(30), |l| Some(l.to_string()))
            .await?;
        if let Some(rest) = line.strip_prefix("Channel:") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(arn)) = (parts.next(), parts.next()) {
                arns.insert(name.to_string(), arn.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("Data plane:") {
            break rest.trim().to_string();
        }
    };
    if arns.len() < CHANNELS.len() {
        bail!(
            "the service created {} of {} channels",
            arns.len(),
            CHANNELS.len()
        );
    }
    eprintln!("[bench] local signaling service: {url}");

    let peers = (!args.no_peers).then(|| args.peers.clone());
    let mut ctx = Ctx {
        plan,
        out: args.out.clone(),
        logs,
        me,
        kvs_webrtc: kvs_webrtc.clone(),
        peers,
        url,
        arns,
        report: Report::default(),
        child_seq: 0,
        device_env: Vec::new(),
        peer_env: Vec::new(),
    };
    ctx.report.mode = if args.smoke { "smoke" } else { "full" }.into();
    ctx.report.machine = machine();

    type Scenario = for<'a> fn(
        &'a mut Ctx,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<()>> + 'a>,
    >;
    let scenarios: [(&str, Scenario); 10] = [
        ("ttff", |c| Box::pin(ttff(c))),
        ("memory", |c| Box::pin(memory(c))),
        ("churn", |c| Box::pin(churn(c))),
        ("fanout", |c| Box::pin(fanout(c))),
        ("datachannel", |c| Box::pin(datachannel(c))),
        ("split", |c| Box::pin(split::split(c))),
        ("relay", |c| Box::pin(relay::relay(c))),
        ("size", |c| Box::pin(size(c))),
        ("coldpage", |c| Box::pin(coldpage::coldpage(c))),
        ("talkback", |c| Box::pin(talkback::talkback(c))),
    ];
    for (name, f) in scenarios {
        if !wants(&args, name) {
            continue;
        }
        eprintln!("[bench] scenario {name}");
        let started = Instant::now();
        if let Err(e) = f(&mut ctx).await {
            ctx.report.skip(format!("scenario {name} failed: {e:#}"));
        }
        eprintln!(
            "[bench] scenario {name} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    service.stop().await;

    let table = ctx.report.table();
    println!("{table}");
    std::fs::write(ctx.out.join("results.md"), &table)?;
    std::fs::write(
        ctx.out.join("results.json"),
        serde_json::to_string_pretty(&ctx.report)?,
    )?;
    eprintln!(
        "[bench] wrote {} and {}",
        ctx.out.join("results.json").display(),
        ctx.out.join("results.md").display()
    );
    Ok(())
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    m.insert("memory".into(), mem);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    m.insert("os".into(), os);
    m.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    m
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Samples of `key` from JSON lines.
fn column(lines: &[Value], key: &str) -> Vec<f64> {
    lines.iter().map(|v| f64_of(v, key)).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Time to first frame

async fn rust_ttff_runs(ctx: &mut Ctx, channel: &str, label: &str) -> Vec<viewer::FirstFrame> {
    let mut out = Vec::new();
    let arn = ctx.arn(channel);
    for i in 0..ctx.plan.ttff_runs {
        let id = format!("ttff-{label}-{i}-{}", std::process::id());
        let result = async {
            let mut j = Joined::join(&ctx.url, &arn, &id).await?;
            let r = viewer::first_frame(&mut j, Duration::from_secs(20)).await;
            j.close().await;
            r
        }
        .await;
        match result {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("[bench] Rust viewer ← {label}, run {i}: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    out
}

async fn chromium_ttff(
    ctx: &mut Ctx,
    channel: &str,
    label: &str,
    runs: usize,
) -> Result<Vec<Value>> {
    let args = vec![
        "ttff".into(),
        "--signaling".into(),
        ctx.url.clone(),
        "--arn".into(),
        ctx.arn(channel),
        "--runs".into(),
        runs.to_string(),
        "--label".into(),
        label.into(),
    ];
    let mut c = ctx.peer(&format!("chromium-ttff-{label}"), "chromium.js", args)?;
    let done = c.json("done", Duration::from_secs(300)).await;
    let runs = c.take("ttff");
    c.stop().await;
    done?;
    if runs.is_empty() {
        bail!("no run decoded a frame (see logs/*chromium-ttff-{label}*.log)");
    }
    Ok(runs)
}

/// The peers that stream as a channel's master: (name, channel, script).
const PEER_SENDERS: [(&str, &str, &str); 2] = [
    ("gstreamer", "bench-gstreamer", "gst_sender.py"),
    ("aiortc", "bench-aiortc", "aiortc_peer.py"),
];

/// Start a peer sender on its channel and wait until it is connected; `None` (reported as
/// skipped) when it cannot start.
async fn start_sender(
    ctx: &mut Ctx,
    name: &str,
    channel: &str,
    script: &str,
    purpose: &str,
) -> Option<LineChild> {
    let mut args = vec![];
    if script == "aiortc_peer.py" {
        args.push("sender".to_string());
    }
    args.extend([
        "--signaling".to_string(),
        ctx.url.clone(),
        "--arn".into(),
        ctx.arn(channel),
    ]);
    let mut sender = match ctx.peer(&format!("{name}-{purpose}"), script, args) {
        Ok(s) => s,
        Err(e) => {
            ctx.report.skip(format!("{name} {purpose}: {e:#}"));
            return None;
        }
    };
    if let Err(e) = sender.json("ready", Duration::from_secs(60)).await {
        ctx.report
            .skip(format!("{name} {purpose}: the sender did not start: {e:#}"));
        sender.stop().await;
        return None;
    }
    Some(sender)
}

async fn ttff(ctx: &mut Ctx) -> Result<()> {
    let mut dev = ctx.device("bench-ours", &["--bitrate", "1000000"]).await?;
    let ours_rust = rust_ttff_runs(ctx, "bench-ours", "ours").await;
    let ours_chromium = match chromium_ttff(ctx, "bench-ours", "ours", ctx.plan.ttff_runs).await {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.report.skip(format!("Chromium ← our device: {e:#}"));
            None
        }
    };
    dev.drain();
    let timings = dev.take("timing");
    dev.stop().await;

    // The peers as senders, on their own channels, through the same service.
    let mut peer_rust: Vec<(&str, Vec<viewer::FirstFrame>)> = Vec::new();
    let mut peer_chromium: Vec<(&str, Vec<Value>)> = Vec::new();
    if ctx.peers.is_some() {
        for (name, channel, script) in PEER_SENDERS {
            let Some(sender) = start_sender(ctx, name, channel, script, "sender").await else {
                continue;
            };
            let r = rust_ttff_runs(ctx, channel, name).await;
            if r.is_empty() {
                ctx.report
                    .skip(format!("Rust viewer ← {name}: no run decoded a frame"));
            }
            peer_rust.push((name, r));
            match chromium_ttff(ctx, channel, name, ctx.plan.ttff_runs).await {
                Ok(v) => peer_chromium.push((name, v)),
                Err(e) => ctx.report.skip(format!("Chromium ← {name}: {e:#}")),
            }
            sender.stop().await;
        }
    }

    let ms = |v: &[viewer::FirstFrame], f: fn(&viewer::FirstFrame) -> Duration| {
        Figure::of(
            &v.iter()
                .map(|r| f(r).as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    };
    let peers_rust = |f: fn(&viewer::FirstFrame) -> Duration| {
        peer_rust
            .iter()
            .map(|(n, v)| (*n, ms(v, f)))
            .collect::<Vec<_>>()
    };
    ctx.report.row(
        "1 first frame",
        "Rust viewer: offer sent → first frame decoded",
        "ms",
        ms(&ours_rust, |r| r.decoded),
        None,
        peers_rust(|r| r.decoded),
    );
    ctx.report.row(
        "1 first frame",
        "Rust viewer: offer sent → first video packet",
        "ms",
        ms(&ours_rust, |r| r.first_packet),
        None,
        peers_rust(|r| r.first_packet),
    );
    ctx.report.row(
        "1 first frame",
        "Rust viewer: offer sent → transport connected",
        "ms",
        ms(&ours_rust, |r| r.connected),
        None,
        peers_rust(|r| r.connected),
    );
    let chromium_fig =
        |v: &Option<Vec<Value>>, key: &str| v.as_ref().and_then(|v| Figure::of(&column(v, key)));
    for (key, metric, target) in [
        (
            "presented_ms",
            "Chromium: offer sent → first frame decoded and presented (requestVideoFrameCallback)",
            Some((Goal::AtMost, 60.0)),
        ),
        (
            "decoded_ms",
            "Chromium: offer sent → getStats shows framesDecoded > 0 (stats lag)",
            None,
        ),
        (
            "connected_ms",
            "Chromium: offer sent → ICE+DTLS connected",
            None,
        ),
    ] {
        let peers = peer_chromium
            .iter()
            .map(|(n, v)| (*n, Figure::of(&column(v, key))))
            .collect();
        ctx.report.row(
            "1 first frame",
            metric,
            "ms",
            chromium_fig(&ours_chromium, key),
            target,
            peers,
        );
    }
    for (key, metric) in [
        ("answer_sent_ms", "device: offer received → answer sent"),
        ("ice_connected_ms", "device: offer received → ICE connected"),
        (
            "dtls_connected_ms",
            "device: offer received → DTLS connected",
        ),
        (
            "first_keyframe_sent_ms",
            "device: offer received → first keyframe sent",
        ),
    ] {
        ctx.report.row(
            "1 first frame",
            metric,
            "ms",
            Figure::of(&column(&timings, key)),
            None,
            vec![],
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Memory

#[derive(Debug, Clone, Copy, Default)]
struct MemSample {
    sdk_rust: f64,
    sdk_c: f64,
    rss: f64,
    rss_less_headers: f64,
    video_encoder_rust: f64,
    audio_encoder_rust: f64,
    encoder_c: f64,
}

impl MemSample {
    fn of(v: &Value) -> MemSample {
        let heap = &v["heap"];
        let g = |p: &Value| p.as_f64().unwrap_or(f64::NAN);
        MemSample {
            sdk_rust: g(&heap["sdk"]["live_bytes"]),
            sdk_c: g(&v["c_heap_sdk_estimate"]),
            rss: g(&v["rss"]),
            rss_less_headers: g(&v["rss"]) - g(&heap["header_bytes"]),
            video_encoder_rust: g(&heap["video_encoder"]["live_bytes"]),
            audio_encoder_rust: g(&heap["audio_encoder"]["live_bytes"]),
            encoder_c: g(&v["encoder_c_bytes"]),
        }
    }
}

/// The median of five readings 200 ms apart (frames in flight make single readings jumpy).
async fn sample(dev: &mut LineChild) -> Result<MemSample> {
    let mut s = Vec::new();
    for _ in 0..5 {
        s.push(MemSample::of(&dev.ask("stats", "stats").await?));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let med = |f: fn(&MemSample) -> f64| {
        Figure::of(&s.iter().map(f).collect::<Vec<_>>()).map_or(f64::NAN, |f| f.median)
    };
    Ok(MemSample {
        sdk_rust: med(|m| m.sdk_rust),
        sdk_c: med(|m| m.sdk_c),
        rss: med(|m| m.rss),
        rss_less_headers: med(|m| m.rss_less_headers),
        video_encoder_rust: med(|m| m.video_encoder_rust),
        audio_encoder_rust: med(|m| m.audio_encoder_rust),
        encoder_c: med(|m| m.encoder_c),
    })
}

async fn wait_no_viewers(dev: &mut LineChild) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = dev.ask("stats", "stats").await?;
        if s["viewers"].as_u64() == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "device still has {} viewers 40 s after they left",
                s["viewers"]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Peers encode once per viewer (GStreamer: a pipeline per viewer; aiortc: an encoder per
/// track), so on two cores they are measured up to this many viewers.
const PEER_MEMORY_MAX_VIEWERS: usize = 10;

/// The peer senders' RSS (bytes) at idle and at each viewer level up to
/// [`PEER_MEMORY_MAX_VIEWERS`]: `name → [idle, level 1, …]`, `None` where it did not get there.
async fn peer_memory(ctx: &mut Ctx, levels: &[usize]) -> BTreeMap<&'static str, Vec<Option<f64>>> {
    let mut out = BTreeMap::new();
    for (name, channel, script) in PEER_SENDERS {
        let Some(sender) = start_sender(ctx, name, channel, script, "memory").await else {
            continue;
        };
        let pid = sender.pid().map(|p| p.to_string()).unwrap_or_default();
        let rss = |pid: &str| crate::procfs::rss_of(pid) as f64;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut by_level = vec![Some(rss(&pid))];
        let arn = ctx.arn(channel);
        let mut members: Vec<Member> = Vec::new();
        for &n in levels {
            if n > PEER_MEMORY_MAX_VIEWERS {
                by_level.push(None);
                continue;
            }
            let more = n - members.len();
            let prefix = format!("mem-{name}-{}", std::process::id());
            match fleet::join_many(&ctx.url, &arn, &prefix, members.len(), more).await {
                Ok(m) => members.extend(m),
                Err(e) => {
                    ctx.report
                        .skip(format!("{name} memory with {n} viewers: {e:#}"));
                    by_level.push(None);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            by_level.push(Some(rss(&pid)));
        }
        by_level.resize(levels.len() + 1, None);
        fleet::stop_all(members).await;
        sender.stop().await;
        out.insert(name, by_level);
    }
    out
}

/// The memory scenario's samples: `[level index][repeat]`, level 0 = idle, the last = after
/// all left. `adaptive`: the device runs with adaptive bitrate (congestion control) on.
async fn memory_runs(
    ctx: &mut Ctx,
    levels: &[usize],
    adaptive: bool,
) -> Result<Vec<Vec<MemSample>>> {
    let mut runs: Vec<Vec<MemSample>> = vec![Vec::new(); levels.len() + 2];
    let bitrate = FANOUT_BITRATE.to_string();
    let mut args = vec!["--bitrate", bitrate.as_str()];
    if adaptive {
        args.push("--adaptive-bitrate");
    }
    for rep in 0..ctx.plan.memory_repeats {
        ctx.device_env = exact_malloc_accounting();
        let dev = ctx.device("bench-memory", &args).await;
        ctx.device_env.clear();
        let mut dev = dev?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        runs[0].push(sample(&mut dev).await?);
        let arn = ctx.arn("bench-memory");
        let mut members: Vec<Member> = Vec::new();
        for (li, &n) in levels.iter().enumerate() {
            let more = n - members.len();
            let prefix = format!("mem-{rep}-{}", std::process::id());
            members.extend(fleet::join_many(&ctx.url, &arn, &prefix, members.len(), more).await?);
            tokio::time::sleep(Duration::from_secs(3)).await;
            runs[li + 1].push(sample(&mut dev).await?);
            // Profiling aid (docs/BENCHMARKS.md, "Profiling a figure"): with
            // KVS_BENCH_EXIT_WITHOUT_CLEANUP too, the device leaves here with `n` viewers
            // connected, so a heap profiler lists what `n` sessions hold.
            if std::env::var("KVS_BENCH_MEMORY_QUIT_AT").ok() == Some(n.to_string()) {
                dev.stop().await;
                fleet::stop_all(members).await;
                bail!("KVS_BENCH_MEMORY_QUIT_AT={n}: the device was stopped with {n} viewers");
            }
        }
        fleet::stop_all(members).await;
        wait_no_viewers(&mut dev).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        runs[levels.len() + 1].push(sample(&mut dev).await?);
        dev.stop().await;
    }
    Ok(runs)
}

/// SDK heap added per viewer (idle → the most viewers), KB, per repeat.
fn heap_per_viewer(runs: &[Vec<MemSample>], levels: &[usize]) -> Option<Figure> {
    let last = levels.len();
    let n = levels[last - 1] as f64;
    Figure::of(
        &runs[0]
            .iter()
            .zip(&runs[last])
            .map(|(x, y)| (y.sdk_rust + y.sdk_c - x.sdk_rust - x.sdk_c) / n / 1024.0)
            .collect::<Vec<_>>(),
    )
}

async fn memory(ctx: &mut Ctx) -> Result<()> {
    let levels = ctx.plan.memory_viewers.clone();
    let runs = memory_runs(ctx, &levels, false).await?;
    // The same with adaptive bitrate on: what congestion control costs per viewer.
    let adaptive = memory_runs(ctx, &levels, true).await?;
    let (off, on) = (
        heap_per_viewer(&runs, &levels),
        heap_per_viewer(&adaptive, &levels),
    );
    let note = match (&on, &off) {
        (Some(on), Some(off)) => Some(format!(
            "{:.2}× the {} KB per viewer with it off (same run); on by default only within 1.5×",
            on.median / off.median,
            crate::report::num(off.median)
        )),
        _ => None,
    };
    let peer_rss = if ctx.peers.is_some() {
        peer_memory(ctx, &levels).await
    } else {
        BTreeMap::new()
    };
    let kb = 1024.0;
    let fig = |v: &[MemSample], f: fn(&MemSample) -> f64| {
        Figure::of(&v.iter().map(|m| f(m) / kb).collect::<Vec<_>>())
    };
    // The peers' RSS at level `li`, for the row's peer columns.
    let peers_at = |li: usize| -> Vec<(&str, Option<Figure>)> {
        peer_rss
            .iter()
            .map(|(name, by_level)| {
                let v = by_level.get(li).copied().flatten();
                (*name, v.and_then(|b| Figure::of(&[b / kb])))
            })
            .collect()
    };
    let label = |li: usize| match li {
        0 => "idle".to_string(),
        i if i <= levels.len() => format!(
            "{} viewer{}",
            levels[i - 1],
            if levels[i - 1] == 1 { "" } else { "s" }
        ),
        _ => "after all left".to_string(),
    };
    for (li, samples) in runs.iter().enumerate() {
        let target = (li == 1 && levels[0] == 1).then_some((Goal::AtMost, 400.0));
        let row = ctx.report.row(
            "2 memory",
            &format!("SDK heap, Rust + C, encoders excluded: {}", label(li)),
            "KB",
            fig(samples, |m| m.sdk_rust + m.sdk_c),
            target,
            vec![],
        );
        if let (Some(r), Some(c)) = (
            Figure::of(&samples.iter().map(|m| m.sdk_rust / kb).collect::<Vec<_>>()),
            Figure::of(&samples.iter().map(|m| m.sdk_c / kb).collect::<Vec<_>>()),
        ) {
            row.note = Some(format!(
                "Rust {} KB + C (aws-lc, libc) {} KB",
                crate::report::num(r.median),
                crate::report::num(c.median)
            ));
        }
        ctx.report.row(
            "2 memory",
            &format!("RSS: {}", label(li)),
            "KB",
            fig(samples, |m| m.rss),
            None,
            peers_at(li),
        );
    }
    // Per-viewer increments.
    let per_viewer = |from: usize, to: usize, f: fn(&MemSample) -> f64| {
        let (a, b) = (&runs[from], &runs[to]);
        let n_from = if from == 0 { 0 } else { levels[from - 1] };
        let n = (levels[to - 1] - n_from) as f64;
        Figure::of(
            &a.iter()
                .zip(b)
                .map(|(x, y)| (f(y) - f(x)) / n / kb)
                .collect::<Vec<_>>(),
        )
    };
    let last = levels.len();
    ctx.report.row(
        "2 memory",
        &format!("SDK heap added per viewer (idle → {})", levels[last - 1]),
        "KB",
        per_viewer(0, last, |m| m.sdk_rust + m.sdk_c),
        Some((Goal::AtMost, 64.0)),
        vec![],
    );
    if last >= 2 {
        ctx.report.row(
            "2 memory",
            &format!(
                "SDK heap added per viewer ({} → {})",
                levels[last - 2],
                levels[last - 1]
            ),
            "KB",
            per_viewer(last - 1, last, |m| m.sdk_rust + m.sdk_c),
            Some((Goal::AtMost, 64.0)),
            vec![],
        );
    }
    // The peers' increment over the levels they ran (the highest they reached).
    let peer_increments: Vec<(&str, Option<Figure>)> = peer_rss
        .iter()
        .map(|(name, by_level)| {
            let top = (1..by_level.len())
                .rev()
                .find(|&li| by_level[li].is_some() && by_level[0].is_some());
            let inc = top.and_then(|li| {
                let n = levels[li - 1] as f64;
                Figure::of(&[(by_level[li]? - by_level[0]?) / n / kb])
            });
            (*name, inc)
        })
        .collect();
    let row = ctx.report.row(
        "2 memory",
        &format!("RSS added per viewer (idle → {})", levels[last - 1]),
        "KB",
        per_viewer(0, last, |m| m.rss_less_headers),
        None,
        peer_increments,
    );
    if !peer_rss.is_empty() {
        row.note = Some(format!(
            "peers: idle → the most viewers they reached (at most {PEER_MEMORY_MAX_VIEWERS}); each encodes per viewer"
        ));
    }
    ctx.report.row(
        "2 memory",
        "video encoder (openh264 + picture buffers), 640x480",
        "KB",
        fig(&runs[0], |m| m.video_encoder_rust + m.encoder_c),
        None,
        vec![],
    );
    ctx.report.row(
        "2 memory",
        "audio encoder (Opus, Rust)",
        "KB",
        fig(&runs[0], |m| m.audio_encoder_rust),
        None,
        vec![],
    );
    let row = ctx.report.row(
        "2 memory",
        &format!(
            "SDK heap added per viewer with adaptive bitrate (TWCC) on (idle → {})",
            levels[levels.len() - 1]
        ),
        "KB",
        on,
        None,
        vec![],
    );
    row.note = note;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Churn

const CHURN_SETTLE: Duration = Duration::from_secs(12);

async fn churn(ctx: &mut Ctx) -> Result<()> {
    ctx.device_env = exact_malloc_accounting();
    let dev = ctx.device("bench-churn", &["--max-viewers", "10"]).await;
    ctx.device_env.clear();
    let mut dev = dev?;
    let arn = ctx.arn("bench-churn");
    let cycle = |i: usize| {
        let (url, arn) = (ctx.url.clone(), arn.clone());
        async move {
            let id = format!("churn-{i}-{}", std::process::id());
            let mut j = Joined::join(&url, &arn, &id).await?;
            let r = viewer::first_frame(&mut j, Duration::from_secs(20)).await;
            j.close().await;
            r
        }
    };
    // Enough cycles to fill what is bounded but grows at first (the 256-event ring of the
    // application bus, maps reaching their working capacity), so what follows is growth.
    const WARMUP: usize = 50;
    for i in 0..WARMUP {
        cycle(i).await?;
    }
    wait_no_viewers(&mut dev).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(&mut dev).await?;
    let started = Instant::now();
    let mut failed = 0;
    for i in 0..ctx.plan.churn_cycles {
        if let Err(e) = cycle(WARMUP + i).await {
            failed += 1;
            eprintln!("[bench] churn cycle {i}: {e:#}");
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "[bench] churn: {} cycles in {:.0} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    wait_no_viewers(&mut dev).await?;
    // Longer than tokio keeps an idle blocking thread (10 s): what such a thread holds for
    // itself goes with it, and is not memory the cycles kept.
    tokio::time::sleep(CHURN_SETTLE).await;
    let after = sample(&mut dev).await?;
    dev.stop().await;
    let n = ctx.plan.churn_cycles;
    let kb = 1024.0;
    let row = ctx.report.row(
        "3 churn",
        &format!("SDK heap after − before {n} connect/disconnect cycles"),
        "KB",
        Figure::of(&[(after.sdk_rust + after.sdk_c - before.sdk_rust - before.sdk_c) / kb]),
        Some((Goal::AtMost, 1.0)),
        vec![],
    );
    row.note = Some(format!(
        "Rust heap {:+.2} KB, C heap {:+.2} KB; {failed} cycles failed; before = after {WARMUP} warm-up cycles, after = {} s after the last",
        (after.sdk_rust - before.sdk_rust) / kb,
        (after.sdk_c - before.sdk_c) / kb,
        CHURN_SETTLE.as_secs()
    ));
    ctx.report.row(
        "3 churn",
        &format!("Rust heap after − before {n} cycles"),
        "KB",
        Figure::of(&[(after.sdk_rust - before.sdk_rust) / kb]),
        Some((Goal::AtMost, 1.0)),
        vec![],
    );
    ctx.report.row(
        "3 churn",
        &format!("RSS after − before {n} cycles"),
        "KB",
        Figure::of(&[(after.rss - before.rss) / kb]),
        None,
        vec![],
    );
    ctx.report.row(
        "3 churn",
        "cycle time (join → first frame decoded → close)",
        "ms",
        Figure::of(&[started.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64]),
        None,
        vec![],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. Fan-out

/// One measurement window over a fleet of viewers: the device's stats before and after it,
/// and what the members received in between, summed.
pub(crate) async fn fleet_window(
    dev: &mut LineChild,
    members: &[fleet::Member],
    window: Duration,
) -> Result<(Value, Value, Reception)> {
    for m in members {
        m.start_window().await;
    }
    let a = dev.ask("stats", "stats").await?;
    tokio::time::sleep(window).await;
    let b = dev.ask("stats", "stats").await?;
    let mut total = Reception::default();
    for m in members {
        if let Some(r) = m.end_window().await {
            total.video_frames += r.video_frames;
            total.video_bytes += r.video_bytes;
            total.packets_lost += r.packets_lost;
            total.frames_late += r.frames_late;
        }
    }
    Ok((a, b, total))
}

fn cpu_excl_capture(a: &Value, b: &Value) -> f64 {
    let total = f64_of(b, "cpu_total_ns") - f64_of(a, "cpu_total_ns");
    let capture = f64_of(b, "cpu_capture_ns") - f64_of(a, "cpu_capture_ns");
    (total - capture) / 1e6
}

async fn fanout(ctx: &mut Ctx) -> Result<()> {
    let mut dev = ctx
        .device(
            "bench-fanout",
            &[
                "--bitrate",
                &FANOUT_BITRATE.to_string(),
                "--loop-video",
                "--max-viewers",
                "100",
            ],
        )
        .await?;
    let arn = ctx.arn("bench-fanout");
    let window = ctx.plan.fanout_window;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s0 = dev.ask("stats", "stats").await?;
    tokio::time::sleep(window).await;
    let s1 = dev.ask("stats", "stats").await?;
    let idle_ms_per_s = cpu_excl_capture(&s0, &s1) / window.as_secs_f64();
    ctx.report.row(
        "4 fan-out",
        "device CPU with no viewer (encoder threads excluded)",
        "ms/s",
        Figure::of(&[idle_ms_per_s]),
        None,
        vec![],
    );
    for n in ctx.plan.fanout_viewers.clone() {
        let prefix = format!("fan-{n}-{}", std::process::id());
        let members = match fleet::join_many(&ctx.url, &arn, &prefix, 0, n).await {
            Ok(m) => m,
            Err(e) => {
                ctx.report.skip(format!("fan-out with {n} viewers: {e:#}"));
                wait_no_viewers(&mut dev).await.ok();
                continue;
            }
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mut cpu, mut marginal, mut lost, mut late, mut fps, mut mbps) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..ctx.plan.fanout_windows {
            let (a, b, total) = fleet_window(&mut dev, &members, window).await?;
            let secs = window.as_secs_f64();
            let ms = cpu_excl_capture(&a, &b);
            cpu.push(ms / (n as f64 * secs));
            marginal.push((ms / secs - idle_ms_per_s) / n as f64);
            lost.push(total.packets_lost as f64);
            late.push(total.frames_late as f64);
            fps.push(total.video_frames as f64 / n as f64 / secs);
            mbps.push(total.video_bytes as f64 * 8.0 / n as f64 / secs / 1e6);
        }
        fleet::stop_all(members).await;
        wait_no_viewers(&mut dev).await.ok();
        let s = format!("{n} viewer{}", if n == 1 { "" } else { "s" });
        ctx.report.row(
            "4 fan-out",
            &format!("device CPU per viewer-second, {s}"),
            "ms",
            Figure::of(&cpu),
            Some((Goal::AtMost, 1.0)),
            vec![],
        );
        ctx.report.row(
            "4 fan-out",
            &format!("  of which above the idle device, {s}"),
            "ms",
            Figure::of(&marginal),
            None,
            vec![],
        );
        ctx.report.row(
            "4 fan-out",
            &format!(
                "  packets lost (all viewers, per window of {} s), {s}",
                window.as_secs()
            ),
            "packets",
            Figure::of(&lost),
            None,
            vec![],
        );
        ctx.report.row(
            "4 fan-out",
            &format!(
                "  frames late > {} ms (all viewers, per window), {s}",
                viewer::LATE_AFTER.as_millis()
            ),
            "frames",
            Figure::of(&late),
            None,
            vec![],
        );
        ctx.report.row(
            "4 fan-out",
            &format!("  received per viewer, {s}"),
            "frames/s",
            Figure::of(&fps),
            None,
            vec![],
        );
        ctx.report.row(
            "4 fan-out",
            &format!("  received per viewer (video payload), {s}"),
            "Mbit/s",
            Figure::of(&mbps),
            None,
            vec![],
        );
    }
    dev.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. Data channel

async fn peer_dc(
    ctx: &mut Ctx,
    base: &str,
    script: &str,
    mut args: Vec<String>,
) -> Result<Vec<Value>> {
    args.extend([
        "--bytes".to_string(),
        ctx.plan.dc_bytes.to_string(),
        "--message-size".into(),
        DC_MESSAGE.to_string(),
        "--window".into(),
        DC_WINDOW.to_string(),
        "--pings".into(),
        ctx.plan.dc_pings.to_string(),
        "--runs".into(),
        ctx.plan.dc_repeats.to_string(),
    ]);
    let mut c = ctx.peer(base, script, args)?;
    let done = c.json("done", Duration::from_secs(600)).await;
    let runs = c.take("dc");
    c.stop().await;
    done?;
    if runs.is_empty() {
        bail!("{base}: no run finished");
    }
    Ok(runs)
}

async fn datachannel(ctx: &mut Ctx) -> Result<()> {
    let dev = ctx
        .device("bench-datachannel", &["--no-video", "--no-audio"])
        .await?;
    let arn = ctx.arn("bench-datachannel");
    let (mut rust_tp, mut rust_rtt) = (vec![], vec![]);
    for i in 0..ctx.plan.dc_repeats {
        let id = format!("dc-rust-{i}-{}", std::process::id());
        let r = async {
            let mut j = Joined::join(&ctx.url, &arn, &id).await?;
            let r = viewer::data_channel(
                &mut j,
                ctx.plan.dc_bytes,
                DC_MESSAGE,
                DC_WINDOW,
                ctx.plan.dc_pings,
            )
            .await;
            j.close().await;
            r
        }
        .await;
        match r {
            Ok(r) => {
                rust_tp.push(r.throughput_mbps);
                rust_rtt.push(r.rtt_ms);
            }
            Err(e) => eprintln!("[bench] data channel, Rust peer, run {i}: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut others: Vec<(&str, Vec<Value>)> = Vec::new();
    if ctx.peers.is_some() && !ctx.plan.dc_reference_only {
        let common = vec![
            "--signaling".to_string(),
            ctx.url.clone(),
            "--arn".into(),
            arn.clone(),
        ];
        let mut chromium_args = vec!["dc".to_string()];
        chromium_args.extend(common.clone());
        match peer_dc(ctx, "chromium-dc", "chromium.js", chromium_args).await {
            Ok(v) => others.push(("Chromium", v)),
            Err(e) => ctx
                .report
                .skip(format!("data channel device ↔ Chromium: {e:#}")),
        }
        let mut aiortc_args = vec!["dc".to_string()];
        aiortc_args.extend(common);
        match peer_dc(ctx, "aiortc-dc", "aiortc_peer.py", aiortc_args).await {
            Ok(v) => others.push(("aiortc", v)),
            Err(e) => ctx
                .report
                .skip(format!("data channel device ↔ aiortc: {e:#}")),
        }
    }
    dev.stop().await;
    let reference = if ctx.peers.is_some() {
        match peer_dc(ctx, "node-datachannel", "ndc_reference.js", vec![]).await {
            Ok(v) => Some(v),
            Err(e) => {
                ctx.report
                    .skip(format!("node-datachannel reference: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let ref_fig = |key: &str| reference.as_ref().and_then(|v| Figure::of(&column(v, key)));
    ctx.report.row(
        "5 data channel",
        "echo throughput, device ↔ Rust peer (str0m)",
        "Mbit/s",
        Figure::of(&rust_tp),
        Some((Goal::AtLeast, 500.0)),
        vec![(
            "node-datachannel ↔ node-datachannel",
            ref_fig("throughput_mbps"),
        )],
    );
    ctx.report.row(
        "5 data channel",
        "round trip, device ↔ Rust peer",
        "ms",
        Figure::of(&rust_rtt),
        None,
        vec![("node-datachannel ↔ node-datachannel", ref_fig("rtt_ms"))],
    );
    for (name, v) in &others {
        ctx.report.row(
            "5 data channel",
            &format!("echo throughput, device ↔ {name}"),
            "Mbit/s",
            Figure::of(&column(v, "throughput_mbps")),
            None,
            vec![(
                "node-datachannel ↔ node-datachannel",
                ref_fig("throughput_mbps"),
            )],
        );
        ctx.report.row(
            "5 data channel",
            &format!("round trip, device ↔ {name}"),
            "ms",
            Figure::of(&column(v, "rtt_ms")),
            None,
            vec![("node-datachannel ↔ node-datachannel", ref_fig("rtt_ms"))],
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 6. Size

async fn size(ctx: &mut Ctx) -> Result<()> {
    let target = ctx
        .me
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("no target directory")?;
    for (profile, note) in [
        ("release", "the release profile, stripped"),
        (
            "release-small",
            "opt-level s, LTO, 1 codegen unit, panic=abort, stripped",
        ),
    ] {
        let bin = target.join(profile).join("kvs-webrtc");
        if !bin.exists() {
            ctx.report.skip(format!(
                "size of the {profile} build: {} not built (scripts/bench.sh builds it outside --smoke)",
                bin.display()
            ));
            continue;
        }
        let bytes = stripped_size(ctx, &bin, &format!("kvs-webrtc.{profile}.stripped")).await?;
        let row = ctx.report.row(
            "6 size",
            &format!("kvs-webrtc device program ({profile})"),
            "MB",
            Figure::of(&[bytes / 1e6]),
            None,
            vec![],
        );
        row.note = Some(format!(
            "{note}; includes the local signaling service and viewer page"
        ));
    }
    // Split mode's always-on side as its own small program, where the tree has it.
    let bin = target.join("release-small").join("kvs-signaling-only");
    if bin.exists() {
        let bytes = stripped_size(ctx, &bin, "kvs-signaling-only.release-small").await?;
        let row = ctx.report.row(
            "6 size",
            "kvs-signaling-only, split mode's always-on side (release-small)",
            "MB",
            Figure::of(&[bytes / 1e6]),
            None,
            vec![],
        );
        row.note = Some("stripped; no peer engine, capture or codec".into());
    } else {
        ctx.report.skip(format!(
            "size of kvs-signaling-only: {} not built (no kvs-signaling-only package in this tree, or scripts/bench.sh did not build it)",
            bin.display()
        ));
    }
    Ok(())
}

/// Size in bytes of a stripped copy of `bin` (kept in the output directory as `name`).
async fn stripped_size(ctx: &Ctx, bin: &Path, name: &str) -> Result<f64> {
    let stripped = ctx.out.join(name);
    std::fs::copy(bin, &stripped)?;
    let status = tokio::process::Command::new("strip")
        .arg(&stripped)
        .status()
        .await
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip failed on {}", stripped.display());
    }
    Ok(std::fs::metadata(&stripped)?.len() as f64)
}
