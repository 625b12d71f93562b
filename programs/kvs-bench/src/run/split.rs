//! Scenario 7, split mode, beside the classic device in the same run: the signaling-only
//! side's heap and RSS (`kvs-bench signaling-side`, its own process), offer → first frame
//! through the link with a resident awake media side and from a cold start, and viewers one
//! after another, each waking a media side that went to sleep.
//!
//! The media side is `kvs-webrtc streaming-only` on a Unix link (the signaling side listens):
//! resident (`--resident`, woken by SIGUSR1; kept awake here) or started per wake
//! (`--wake exec:`, exiting when it sleeps). Times taken in different processes are compared
//! on `CLOCK_MONOTONIC` (see [`crate::signaling_side::monotonic_ns`]).

use super::{chromium_ttff, column, exact_malloc_accounting, sample, Ctx, MemSample};
use crate::child::LineChild;
use crate::device::timing_field;
use crate::fleet::Member;
use crate::report::{num, Figure, Goal};
use crate::signaling_side::monotonic_ns_of;
use crate::viewer::{self, Joined};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const CLASSIC_CHANNEL: &str = "bench-split-classic";
pub const RESIDENT_CHANNEL: &str = "bench-split-resident";
pub const COLD_CHANNEL: &str = "bench-split-cold";

const SCENARIO: &str = "7 split";
/// A viewer gets this long for its first frame (a cold start included).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(20);
/// The media side gets this long to go to sleep after its last viewer left (it does within
/// ~2.3 s: the 1–2 s idle timers, its 250 ms look at the viewer count, its shutdown); then it
/// is stopped with SIGTERM, and counted. A Rust viewer's close is sometimes not seen by the
/// device, whose session then lasts until ICE gives up (~20 s and more): not worth waiting.
const SLEEP_TIMEOUT: Duration = Duration::from_secs(6);
/// The exec-started media side sleeps this long after its last viewer left.
const IDLE_AFTER_LAST_VIEWER_S: u64 = 1;
/// … and this long after a wake (or its last offer or answer) with no viewer; short, so a
/// viewer who left does not keep it awake past the one above.
const IDLE_AFTER_WAKE_S: u64 = 2;

/// The device's breakdown, since the offer reached it: answer sent, ICE connected, DTLS
/// connected, first keyframe sent (ms).
type DevicePhases = [f64; 4];
const PHASES: [(&str, &str); 4] = [
    ("answer sent", "answer_sent_ms"),
    ("ICE connected", "ice_connected_ms"),
    ("DTLS connected", "dtls_connected_ms"),
    ("first keyframe sent", "first_keyframe_sent_ms"),
];

/// `FirstFrameSent [peer]: since offer: answer sent 0 ms, …` (a `kvs-webrtc` event line).
fn first_frame_sent(line: &str) -> Option<(String, DevicePhases)> {
    let rest = line.split_once("FirstFrameSent [")?.1;
    let (peer, message) = rest.split_once(']')?;
    let phases = PHASES.map(|(label, _)| timing_field(message, label).unwrap_or(f64::NAN));
    Some((peer.to_string(), phases))
}

/// Words for `sh -c`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The signaling-only side (`kvs-bench signaling-side`) and what it reported.
struct SigSide {
    child: LineChild,
    /// Its `status` lines so far.
    history: Vec<Value>,
}

impl SigSide {
    async fn start(ctx: &mut Ctx, channel: &str, link: &Path, wake: &str) -> Result<SigSide> {
        let args = vec![
            "signaling-side".to_string(),
            "--signaling-url".into(),
            ctx.url.clone(),
            "--channel-arn".into(),
            ctx.arn(channel),
            "--link".into(),
            format!("unix:{}", link.display()),
            "--wake".into(),
            wake.into(),
        ];
        let name = ctx.name(&format!("signaling-side-{channel}"));
        // KVS_BENCH_SIGNALING_WRAPPER="heaptrack -o /tmp/ht": as KVS_BENCH_DEVICE_WRAPPER.
        let (program, args) = super::wrapped("KVS_BENCH_SIGNALING_WRAPPER", &ctx.me, args);
        let mut child = LineChild::spawn_with_env(
            &name,
            &program,
            &args,
            &exact_malloc_accounting(),
            &ctx.logs,
        )?;
        child.json("ready", Duration::from_secs(60)).await?;
        let mut side = SigSide {
            child,
            history: Vec::new(),
        };
        side.refresh();
        Ok(side)
    }

    fn refresh(&mut self) {
        self.child.drain();
        self.history.extend(self.child.take("status"));
    }

    fn media(&self) -> &str {
        self.history
            .last()
            .and_then(|v| v["media"].as_str())
            .unwrap_or("unknown")
    }

    async fn wait_media(&mut self, state: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            if self.media() == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the signaling side did not see the media side {state} within {timeout:?} (it is {})",
                    self.media()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first wake after status line `from` (`t_ns` of the wake, and of the Ready that
    /// followed, if it came).
    fn wake_after(&self, from: usize) -> Option<(u64, Option<u64>)> {
        let before = from
            .checked_sub(1)
            .and_then(|i| self.history.get(i))
            .and_then(|v| v["wakes"].as_u64())
            .unwrap_or(0);
        let lines = self.history.get(from..)?;
        let i = lines
            .iter()
            .position(|v| v["wakes"].as_u64().unwrap_or(0) > before)?;
        let t_wake = lines[i]["t_ns"].as_u64()?;
        let t_ready = lines[i..]
            .iter()
            .find(|v| v["media"] == "awake")
            .and_then(|v| v["t_ns"].as_u64());
        Some((t_wake, t_ready))
    }
}

/// The exec-started streaming process, seen through its pid file.
struct MediaProcess {
    pid_file: PathBuf,
    pid: Option<u32>,
    /// Times it did not sleep within [`SLEEP_TIMEOUT`] and was stopped.
    forced: usize,
}

impl MediaProcess {
    /// Whether a streaming process runs (or has not been reaped by the signaling side yet:
    /// until then a wake would find it "already running").
    fn running(&mut self) -> bool {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            self.pid = Some(pid);
            return true;
        }
        self.pid
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Wait until no streaming process is left and the signaling side knows it.
    async fn wait_asleep(&mut self, sig: &mut SigSide, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            sig.refresh();
            if !self.running() && sig.media() != "awake" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the media side did not go to sleep within {timeout:?} (signaling side sees it {})",
                    sig.media()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl MediaProcess {
    /// [`MediaProcess::wait_asleep`]; a media side still awake then is stopped (SIGTERM) so
    /// that the next viewer wakes a fresh one, and counted in `forced`.
    async fn ensure_asleep(&mut self, sig: &mut SigSide) -> Result<()> {
        let Err(e) = self.wait_asleep(sig, SLEEP_TIMEOUT).await else {
            return Ok(());
        };
        eprintln!("[bench] split: {e:#}; stopping the streaming process");
        self.forced += 1;
        if let Some(pid) = self.pid.filter(|_| self.running()) {
            // SAFETY: kill(2) on the streaming process's pid (read from its pid file).
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        self.wait_asleep(sig, Duration::from_secs(10)).await
    }
}

/// A fresh directory for one link and pid file (Unix socket paths must stay short).
fn run_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kvs-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One Rust viewer: join, wait for the first decoded frame, close.
async fn rust_run(url: &str, arn: &str, id: &str) -> Result<viewer::FirstFrame> {
    let attempt = async {
        let mut j = Joined::join(url, arn, id).await?;
        let r = viewer::first_frame(&mut j, FIRST_FRAME_TIMEOUT).await;
        j.close().await;
        r
    };
    tokio::time::timeout(FIRST_FRAME_TIMEOUT + Duration::from_secs(10), attempt)
        .await
        .map_err(|_| anyhow!("viewer {id}: no first frame, join included, in time"))?
}

/// What one way of streaming measured.
#[derive(Default)]
struct Variant {
    rust: Vec<viewer::FirstFrame>,
    /// The device's breakdown per Rust run (since the offer reached the device).
    device: Vec<DevicePhases>,
    chromium: Vec<Value>,
    /// Cold start only (ms): wake started at the signaling side → the streaming process's
    /// Ready; offer sent → wake started; wake started → first frame decoded.
    wake: Vec<f64>,
    to_wake: Vec<f64>,
    wake_to_frame: Vec<f64>,
    /// Cold start only: times the media side did not sleep in time and was stopped.
    forced: usize,
    /// Cold start only: the sequential viewers.
    sequential: Option<Sequential>,
}

impl Variant {
    fn decoded(&self) -> Option<Figure> {
        Figure::of(&self.rust.iter().map(|r| ms(r.decoded)).collect::<Vec<_>>())
    }
    fn chromium(&self) -> Option<Figure> {
        Figure::of(&column(&self.chromium, "presented_ms"))
    }
    fn phase(&self, i: usize) -> Option<Figure> {
        Figure::of(&self.device.iter().map(|p| p[i]).collect::<Vec<_>>())
    }

    /// Record the wake of a cold run (status lines from `mark` on).
    fn note_wake(&mut self, sig: &SigSide, mark: usize, r: &viewer::FirstFrame) {
        let Some((t_wake, t_ready)) = sig.wake_after(mark) else {
            eprintln!("[bench] split: no wake seen for a cold run");
            return;
        };
        let sent = monotonic_ns_of(r.offer_sent) as f64;
        let decoded = sent + r.decoded.as_nanos() as f64;
        if let Some(t) = t_ready {
            self.wake.push((t as f64 - t_wake as f64) / 1e6);
        }
        self.to_wake.push((t_wake as f64 - sent) / 1e6);
        self.wake_to_frame.push((decoded - t_wake as f64) / 1e6);
    }
}

/// Memory of the signaling side at one moment.
struct SigMemory {
    label: String,
    sample: MemSample,
}

pub async fn split(ctx: &mut Ctx) -> Result<()> {
    let runs = ctx.plan.split_ttff_runs;
    let mut memory: Vec<SigMemory> = Vec::new();

    // Classic, on its own channel, for the same figures in the same run.
    ctx.device_env = exact_malloc_accounting();
    let dev = ctx.device(CLASSIC_CHANNEL, &["--bitrate", "1000000"]).await;
    ctx.device_env.clear();
    let mut dev = dev?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let classic_idle = sample(&mut dev).await?;
    let mut classic = Variant::default();
    let arn = ctx.arn(CLASSIC_CHANNEL);
    for i in 0..runs {
        let id = format!("split-classic-{i}-{}", std::process::id());
        match rust_run(&ctx.url, &arn, &id).await {
            Ok(r) => classic.rust.push(r),
            Err(e) => eprintln!("[bench] split, classic run {i}: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if ctx.peers.is_some() {
        match chromium_ttff(ctx, CLASSIC_CHANNEL, "split-classic", runs).await {
            Ok(v) => classic.chromium = v,
            Err(e) => ctx.report.skip(format!("split: Chromium ← classic: {e:#}")),
        }
    }
    dev.drain();
    // The Rust runs' breakdowns only, as for the split variants.
    for t in dev.take("timing") {
        if t["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("split-classic-"))
        {
            classic
                .device
                .push(PHASES.map(|(_, key)| super::f64_of(&t, key)));
        }
    }
    dev.stop().await;

    let resident = match resident(ctx, runs).await {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.report
                .skip(format!("split, resident media side: {e:#}"));
            None
        }
    };
    let cold = match cold(ctx, runs, &mut memory).await {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.report.skip(format!("split, cold start: {e:#}"));
            None
        }
    };

    // Memory of the signaling side.
    let kb = 1024.0;
    let classic_heap = Figure::of(&[(classic_idle.sdk_rust + classic_idle.sdk_c) / kb]);
    for m in &memory {
        let row = ctx.report.row(
            SCENARIO,
            &format!("signaling-only heap, Rust + C: {}", m.label),
            "KB",
            Figure::of(&[(m.sample.sdk_rust + m.sample.sdk_c) / kb]),
            Some((Goal::AtMost, 100.0)),
            vec![("classic device, idle", classic_heap.clone())],
        );
        row.note = Some(format!(
            "Rust {} KB + C (libc) {} KB; peer column: the classic device's SDK heap, idle (encoders excluded), same run",
            num(m.sample.sdk_rust / kb),
            num(m.sample.sdk_c / kb)
        ));
        ctx.report.row(
            SCENARIO,
            &format!("signaling-only RSS: {}", m.label),
            "KB",
            Figure::of(&[m.sample.rss / kb]),
            None,
            vec![("classic device, idle", Figure::of(&[classic_idle.rss / kb]))],
        );
    }

    // Offer → first frame.
    let classic_fig = classic.decoded();
    ctx.report.row(
        SCENARIO,
        "Rust viewer: offer sent → first frame decoded, classic",
        "ms",
        classic_fig.clone(),
        None,
        vec![],
    );
    let variants: Vec<(&str, &Variant)> = [
        ("split, media side resident and awake", resident.as_ref()),
        (
            "split, cold start (no streaming process until the offer)",
            cold.as_ref(),
        ),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((n, v?)))
    .collect();
    for (name, v) in &variants {
        let row = ctx.report.row(
            SCENARIO,
            &format!("Rust viewer: offer sent → first frame decoded, {name}"),
            "ms",
            v.decoded(),
            None,
            vec![("classic", classic_fig.clone())],
        );
        if name.starts_with("split, cold") {
            row.note = Some(format!(
                "media side stopped by the bench after not sleeping within {} s of its last viewer leaving: {} times (all cold-start steps, sequential viewers included)",
                SLEEP_TIMEOUT.as_secs(),
                v.forced
            ));
        }
    }
    if ctx.peers.is_some() {
        let classic_chromium = classic.chromium();
        ctx.report.row(
            SCENARIO,
            "Chromium: offer sent → first frame presented, classic",
            "ms",
            classic_chromium.clone(),
            None,
            vec![],
        );
        for (name, v) in &variants {
            ctx.report.row(
                SCENARIO,
                &format!("Chromium: offer sent → first frame presented, {name}"),
                "ms",
                v.chromium(),
                None,
                vec![("classic", classic_chromium.clone())],
            );
        }
    }
    if let Some(c) = &cold {
        ctx.report.row(
            SCENARIO,
            "cold start: offer sent → wake started at the signaling side",
            "ms",
            Figure::of(&c.to_wake),
            None,
            vec![],
        );
        ctx.report.row(
            SCENARIO,
            "cold start: wake started → streaming process Ready (process start, link, device start)",
            "ms",
            Figure::of(&c.wake),
            None,
            vec![],
        );
        ctx.report.row(
            SCENARIO,
            "cold start: wake started → first frame decoded (Rust viewer)",
            "ms",
            Figure::of(&c.wake_to_frame),
            None,
            vec![],
        );
    }
    for (i, (label, _)) in PHASES.iter().enumerate() {
        let mut peers = vec![("classic", classic.phase(i))];
        if let Some(r) = &resident {
            peers.push(("split resident", r.phase(i)));
        }
        let row = ctx.report.row(
            SCENARIO,
            &format!("device: offer received → {label}, split cold start"),
            "ms",
            cold.as_ref().and_then(|c| c.phase(i)),
            None,
            peers,
        );
        row.note = Some(
            "Rust viewers' runs; each measured by the device from the offer reaching it".into(),
        );
    }
    if let Some(seq) = cold.as_ref().and_then(|c| c.sequential.as_ref()) {
        report_sequential(ctx, seq);
    }
    Ok(())
}

/// Split with a resident streaming process kept awake (the idle timers far away).
async fn resident(ctx: &mut Ctx, runs: usize) -> Result<Variant> {
    let dir = run_dir("split-resident")?;
    let link = dir.join("link.sock");
    let pid_file = dir.join("media.pid");
    let mut sig = SigSide::start(
        ctx,
        RESIDENT_CHANNEL,
        &link,
        &format!("signal:{}", pid_file.display()),
    )
    .await?;
    let args: Vec<String> = [
        "streaming-only",
        "--link",
        &format!("unix:{}", link.display()),
        "--resident",
        "--pid-file",
        &pid_file.display().to_string(),
        "--idle-after-last-viewer",
        "3600",
        "--idle-after-wake",
        "3600",
        "--media-bind",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let name = ctx.name("streaming-resident");
    let mut media = LineChild::spawn(&name, &ctx.kvs_webrtc, &args, &ctx.logs)?;
    let result = async {
        sig.wait_media("awake", Duration::from_secs(30)).await?;
        let mut v = Variant::default();
        let arn = ctx.arn(RESIDENT_CHANNEL);
        for i in 0..runs {
            let id = format!("split-resident-{i}-{}", std::process::id());
            match rust_run(&ctx.url, &arn, &id).await {
                Ok(r) => {
                    v.rust.push(r);
                    match media
                        .line(Duration::from_secs(2), |l| {
                            first_frame_sent(l).filter(|(peer, _)| *peer == id)
                        })
                        .await
                    {
                        Ok((_, phases)) => v.device.push(phases),
                        Err(e) => eprintln!("[bench] split, resident run {i}: {e:#}"),
                    }
                }
                Err(e) => eprintln!("[bench] split, resident run {i}: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if ctx.peers.is_some() {
            match chromium_ttff(ctx, RESIDENT_CHANNEL, "split-resident", runs).await {
                Ok(c) => v.chromium = c,
                Err(e) => ctx
                    .report
                    .skip(format!("split: Chromium ← resident media side: {e:#}")),
            }
        }
        Ok(v)
    }
    .await;
    media.terminate().await;
    sig.child.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Split with `--wake exec:`: no streaming process until an offer comes; it exits 1 s after
/// its last viewer left. Cold first frames, the signaling side's memory, and the sequential
/// viewers.
async fn cold(ctx: &mut Ctx, runs: usize, memory: &mut Vec<SigMemory>) -> Result<Variant> {
    let dir = run_dir("split-cold")?;
    let link = dir.join("link.sock");
    let pid_file = dir.join("media.pid");
    let log_name = ctx.name("streaming-cold");
    std::fs::create_dir_all(&ctx.logs)?;
    let log = std::fs::canonicalize(&ctx.logs)?.join(format!("{log_name}.log"));
    let command = [
        sh_quote(&ctx.kvs_webrtc.display().to_string()),
        "streaming-only".into(),
        "--link".into(),
        sh_quote(&format!("unix:{}", link.display())),
        "--pid-file".into(),
        sh_quote(&pid_file.display().to_string()),
        "--idle-after-last-viewer".into(),
        IDLE_AFTER_LAST_VIEWER_S.to_string(),
        "--idle-after-wake".into(),
        IDLE_AFTER_WAKE_S.to_string(),
        "--media-bind".into(),
        "127.0.0.1".into(),
        format!(">>{} 2>&1", sh_quote(&log.display().to_string())),
    ]
    .join(" ");
    let mut sig = SigSide::start(ctx, COLD_CHANNEL, &link, &format!("exec:{command}")).await?;
    let mut media = MediaProcess {
        pid_file: pid_file.clone(),
        pid: None,
        forced: 0,
    };
    let result = cold_runs(ctx, runs, memory, &mut sig, &mut media, &log).await;
    sig.child.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn cold_runs(
    ctx: &mut Ctx,
    runs: usize,
    memory: &mut Vec<SigMemory>,
    sig: &mut SigSide,
    media: &mut MediaProcess,
    log: &Path,
) -> Result<Variant> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    memory.push(SigMemory {
        label: "connected, media side asleep (never woken yet)".into(),
        sample: sample(&mut sig.child).await?,
    });
    let arn = ctx.arn(COLD_CHANNEL);
    let mut v = Variant::default();
    let mut ids = Vec::new();
    for i in 0..runs {
        media.ensure_asleep(sig).await?;
        sig.refresh();
        let mark = sig.history.len();
        let id = format!("split-cold-{i}-{}", std::process::id());
        match rust_run(&ctx.url, &arn, &id).await {
            Ok(r) => {
                media.running();
                sig.refresh();
                v.note_wake(sig, mark, &r);
                v.rust.push(r);
                ids.push(id);
            }
            Err(e) => eprintln!("[bench] split, cold run {i}: {e:#}"),
        }
    }
    if ctx.peers.is_some() {
        for i in 0..runs {
            media.ensure_asleep(sig).await?;
            match chromium_ttff(ctx, COLD_CHANNEL, &format!("split-cold-{i}"), 1).await {
                Ok(mut c) => v.chromium.append(&mut c),
                Err(e) => ctx
                    .report
                    .skip(format!("split: Chromium ← cold start, run {i}: {e:#}")),
            }
            // The browser's page is gone: the streaming process exits once it notices.
            tokio::time::sleep(Duration::from_millis(100)).await;
            media.running();
        }
    }

    // One viewer receiving through the link.
    media.ensure_asleep(sig).await?;
    let id = format!("split-relay-{}", std::process::id());
    let member = Member::join(&ctx.url, &arn, &id).await?;
    let deadline = Instant::now() + FIRST_FRAME_TIMEOUT;
    while !member.receiving.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            bail!("the relayed viewer received no video within {FIRST_FRAME_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    media.running();
    tokio::time::sleep(Duration::from_secs(3)).await;
    memory.push(SigMemory {
        label: "relaying 1 viewer (receiving frames)".into(),
        sample: sample(&mut sig.child).await?,
    });
    if let Err(e) = member.stop().await {
        tracing::debug!("relayed viewer ended with: {e}");
    }
    media.ensure_asleep(sig).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    memory.push(SigMemory {
        label: "media side asleep again, after the viewer left".into(),
        sample: sample(&mut sig.child).await?,
    });

    let seq = sequential(ctx, sig, media).await;
    if seq.tried > 0 {
        media.ensure_asleep(sig).await.ok();
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.push(SigMemory {
            label: format!("asleep, after {} more wake/sleep cycles", seq.tried),
            sample: sample(&mut sig.child).await?,
        });
    }

    // The streaming processes' own breakdowns, from their log.
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let by_peer: BTreeMap<String, DevicePhases> =
        text.lines().filter_map(first_frame_sent).collect();
    v.device = ids
        .iter()
        .filter_map(|id| by_peer.get(id).copied())
        .collect();
    v.forced = media.forced;
    v.sequential = Some(seq);
    Ok(v)
}

/// Viewers one after another, each while the media side sleeps.
#[derive(Default)]
struct Sequential {
    planned: usize,
    tried: usize,
    joined: usize,
    decoded: usize,
    /// Refused or closed before a frame.
    lost: usize,
    /// Joined, but no frame in time.
    stuck: usize,
    wake: Vec<f64>,
    wake_to_frame: Vec<f64>,
    offer_to_frame: Vec<f64>,
    cycle_s: Vec<f64>,
    /// Times the media side was still awake [`SLEEP_TIMEOUT`] after the last viewer left
    /// (and was stopped, so the next viewer still woke a sleeping one).
    sleep_timeouts: usize,
    budget_ran_out: bool,
}

async fn sequential(ctx: &mut Ctx, sig: &mut SigSide, media: &mut MediaProcess) -> Sequential {
    let mut s = Sequential {
        planned: ctx.plan.split_viewers,
        ..Sequential::default()
    };
    let arn = ctx.arn(COLD_CHANNEL);
    let started = Instant::now();
    for i in 0..s.planned {
        if started.elapsed() > ctx.plan.split_viewers_budget {
            s.budget_ran_out = true;
            break;
        }
        let cycle = Instant::now();
        let forced = media.forced;
        if let Err(e) = media.ensure_asleep(sig).await {
            // Not the next viewer's fault: it does not join while the media side is awake.
            eprintln!("[bench] split, before sequential viewer {i}: {e:#}");
            s.sleep_timeouts += 1;
            continue;
        }
        s.sleep_timeouts += media.forced - forced;
        s.tried += 1;
        sig.refresh();
        let mark = sig.history.len();
        let id = format!("split-seq-{i}-{}", std::process::id());
        let attempt = async {
            let mut j = Joined::join(&ctx.url, &arn, &id).await?;
            let r = viewer::first_frame(&mut j, FIRST_FRAME_TIMEOUT).await;
            j.close().await;
            Ok::<_, anyhow::Error>(r)
        };
        match tokio::time::timeout(FIRST_FRAME_TIMEOUT + Duration::from_secs(10), attempt).await {
            Err(_) => s.stuck += 1,
            Ok(Err(e)) => {
                eprintln!("[bench] split, sequential viewer {i} did not join: {e:#}");
                s.lost += 1;
            }
            Ok(Ok(Err(e))) => {
                s.joined += 1;
                eprintln!("[bench] split, sequential viewer {i}: {e:#}");
                if e.to_string().contains("no decoded video within") {
                    s.stuck += 1;
                } else {
                    s.lost += 1;
                }
            }
            Ok(Ok(Ok(r))) => {
                s.joined += 1;
                s.decoded += 1;
                media.running();
                sig.refresh();
                s.offer_to_frame.push(ms(r.decoded));
                let mut v = Variant::default();
                v.note_wake(sig, mark, &r);
                s.wake.extend(v.wake);
                s.wake_to_frame.extend(v.wake_to_frame);
            }
        }
        s.cycle_s.push(cycle.elapsed().as_secs_f64());
        if (i + 1) % 20 == 0 {
            eprintln!(
                "[bench] split: {} sequential viewers in {:.0} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    s
}

fn report_sequential(ctx: &mut Ctx, s: &Sequential) {
    let row = ctx.report.row(
        SCENARIO,
        "sequential viewers, each waking a sleeping media side: first frame decoded",
        "viewers",
        Figure::of(&[s.decoded as f64]),
        None,
        vec![],
    );
    row.note = Some(format!(
        "{} of {} planned tried{}: joined {}, decoded {}, lost {}, stuck {}; media side still awake {} s after its viewer left (then stopped): {}; exec wake, the media side exits {IDLE_AFTER_LAST_VIEWER_S} s after its last viewer and each viewer waits for that",
        s.tried,
        s.planned,
        if s.budget_ran_out {
            format!(
                " (time budget of {} s ran out)",
                ctx.plan.split_viewers_budget.as_secs()
            )
        } else {
            String::new()
        },
        s.joined,
        s.decoded,
        s.lost,
        s.stuck,
        SLEEP_TIMEOUT.as_secs(),
        s.sleep_timeouts
    ));
    ctx.report.row(
        SCENARIO,
        "sequential viewers: wake started → first frame decoded",
        "ms",
        Figure::of(&s.wake_to_frame),
        None,
        vec![],
    );
    ctx.report.row(
        SCENARIO,
        "sequential viewers: wake started → streaming process Ready",
        "ms",
        Figure::of(&s.wake),
        None,
        vec![],
    );
    ctx.report.row(
        SCENARIO,
        "sequential viewers: offer sent → first frame decoded",
        "ms",
        Figure::of(&s.offer_to_frame),
        None,
        vec![],
    );
    ctx.report.row(
        SCENARIO,
        "sequential viewers: cycle (wait for sleep, join, first frame, close)",
        "s",
        Figure::of(&s.cycle_s),
        None,
        vec![],
    );
}
