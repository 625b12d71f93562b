//! Scenario 8, NAT traversal: the device streaming straight to its viewers (its normal
//! configuration: host candidates first, a TURN allocation beside them) against the same
//! device with `--relay-only` (every packet through the TURN server), in the same run.
//!
//! The bench starts coturn on loopback (UDP only; `turnserver` from Debian's coturn, with a
//! fresh shared secret in a config file) and a second local service (`kvs-webrtc service
//! --turn-uri … --turn-secret …`) that mints TURN credentials for it; each device asks that
//! service's GetIceServerConfig for its channel's ICE servers, as a KVS master does. Both
//! are stopped, and coturn's files removed, at the end of the scenario.
//!
//! Measured per mode, each on its own device process and channel: offer sent → first frame
//! decoded (Rust viewers, and Chromium where the peers run), the device's heap idle and with
//! 1 and 5 Rust viewers, its CPU per viewer-second (from `/proc`, capture threads excluded,
//! as in the fan-out), and how long the relayed candidate took (from the device's start, and
//! from the first offer: allocations are made when the first session starts). Times from the
//! device process and from this one are compared on `CLOCK_MONOTONIC`.

use super::{
    chromium_ttff, column, cpu_excl_capture, exact_malloc_accounting, sample, wait_no_viewers, Ctx,
    MemSample, FANOUT_BITRATE,
};
use crate::child::LineChild;
use crate::fleet::{self, Member};
use crate::report::{num, Figure};
use crate::signaling_side::monotonic_ns_of;
use crate::viewer::{self, Joined, Reception};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const DIRECT_CHANNEL: &str = "bench-relay-direct";
pub const RELAYED_CHANNEL: &str = "bench-relay-relayed";
const SCENARIO: &str = "8 relay";
/// coturn's relay ports (the browser tests use 49160–49400).
const RELAY_PORTS: (u16, u16) = (49500, 49999);
/// A viewer gets this long for its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// coturn, started by the bench.
struct Coturn {
    child: tokio::process::Child,
    /// `turn:127.0.0.1:PORT?transport=udp`
    uri: String,
    dir: PathBuf,
}

impl Coturn {
    async fn stop(self) {
        kvs_app::split::wake::terminate(self.child, Duration::from_secs(5)).await;
        // Its database, pid file and config (the secret); its log stays with the others.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 16 random bytes, hex.
fn fresh_secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A UDP port free on loopback just now.
fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    Ok(s.local_addr()?.port())
}

async fn start_coturn(ctx: &mut Ctx, secret: &str) -> Result<Coturn> {
    let dir = ctx.out.join("relay-coturn");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The secret goes in a file only we can read, not on a command line anyone can list.
    let conf = dir.join("turnserver.conf");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&conf)?;
        writeln!(f, "use-auth-secret\nstatic-auth-secret={secret}")?;
    }
    let port = free_udp_port()?;
    let name = ctx.name("coturn");
    let log = ctx.logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let args: Vec<String> = vec![
        "-c".into(),
        conf.display().to_string(),
        "--listening-ip=127.0.0.1".into(),
        format!("--listening-port={port}"),
        "--relay-ip=127.0.0.1".into(),
        format!("--min-port={}", RELAY_PORTS.0),
        format!("--max-port={}", RELAY_PORTS.1),
        "--realm=kvs-webrtc.local".into(),
        // Our viewers and device are on loopback too.
        "--allow-loopback-peers".into(),
        // UDP only: no TCP, TLS or DTLS listeners, no TCP relays.
        "--no-tcp".into(),
        "--no-tls".into(),
        "--no-dtls".into(),
        "--no-tcp-relay".into(),
        "--no-cli".into(),
        "--fingerprint".into(),
        "--simple-log".into(),
        format!("--log-file={}", dir.join("turnserver.log").display()),
        format!("--pidfile={}", dir.join("turnserver.pid").display()),
        format!("--userdb={}", dir.join("turndb").display()),
    ];
    let child = tokio::process::Command::new("turnserver")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .context("starting turnserver (Debian package coturn)")?;
    let mut coturn = Coturn {
        child,
        uri: format!("turn:127.0.0.1:{port}?transport=udp"),
        dir: dir.clone(),
    };
    // Ready when it says how many servers it started (the line the browser tests wait for).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(dir.join("turnserver.log")).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Total General servers") {
            return Ok(coturn);
        }
        if let Ok(Some(status)) = coturn.child.try_wait() {
            let _ = std::fs::copy(
                dir.join("turnserver.log"),
                ctx.logs.join("coturn-start.log"),
            );
            coturn.stop().await;
            bail!(
                "turnserver exited at start ({status}); see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            let _ = std::fs::copy(
                dir.join("turnserver.log"),
                ctx.logs.join("coturn-start.log"),
            );
            coturn.stop().await;
            bail!(
                "turnserver did not start within 15 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The local service handing out coturn's URI with credentials minted from `secret`.
struct Service {
    child: LineChild,
    control: String,
    url: String,
    arns: BTreeMap<String, String>,
}

async fn start_service(ctx: &mut Ctx, turn_uri: &str, secret: &str) -> Result<Service> {
    let state = ctx.out.join("relay-service-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut args: Vec<String> = [
        "service",
        "--plain",
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--max-viewers",
        "50",
        "--connects-per-second",
        "0",
        "--sdp-per-second",
        "0",
        "--ice-per-second",
        "0",
        // Longer than any run: the devices fetch their credentials once.
        "--turn-ttl",
        "86400",
        "--turn-uri",
        turn_uri,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--state-dir".into(), state.display().to_string()]);
    for c in [DIRECT_CHANNEL, RELAYED_CHANNEL] {
        args.extend(["--channel".to_string(), c.to_string()]);
    }
    let env = [("KVS_SERVICE_TURN_SECRET".to_string(), secret.to_string())];
    let name = ctx.name("relay-service");
    let mut child = LineChild::spawn_with_env(&name, &ctx.kvs_webrtc, &args, &env, &ctx.logs)?;
    let mut arns = BTreeMap::new();
    let mut control = None;
    let url = loop {
        let line = child
            .line(Duration::from_secs(30), |l| Some(l.to_string()))
            .await?;
        if let Some(rest) = line.strip_prefix("Channel:") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(arn)) = (parts.next(), parts.next()) {
                arns.insert(name.to_string(), arn.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("Control plane:") {
            control = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("Data plane:") {
            break rest.trim().to_string();
        }
    };
    let Some(control) = control.filter(|c| !c.is_empty()) else {
        child.stop().await;
        bail!("the relay scenario's service printed no control plane");
    };
    if arns.len() < 2 {
        child.stop().await;
        bail!(
            "the relay scenario's service created {} of 2 channels",
            arns.len()
        );
    }
    Ok(Service {
        child,
        control,
        url,
        arns,
    })
}

/// What one mode (direct or relayed) measured.
#[derive(Default)]
struct Mode {
    /// Offer sent → first frame, Rust viewers, in order (the first made the allocation).
    ttff: Vec<viewer::FirstFrame>,
    /// The first run's offer → first frame decoded (ms), when it decoded one.
    first_run_decoded: Option<f64>,
    /// The first viewer's offer, on `CLOCK_MONOTONIC` (ns).
    first_offer_ns: Option<u64>,
    chromium: Option<Vec<Value>>,
    /// The device's own breakdown (`timing` lines).
    timings: Vec<Value>,
    /// The device's `nat` lines, in order.
    nat: Vec<Value>,
    /// Heap samples: idle, then one per viewer level.
    heap: Vec<MemSample>,
    /// Device CPU with no viewer, ms per second.
    cpu_idle: f64,
    /// Per viewer level: CPU per viewer-second (ms) of each window, and what the viewers got.
    cpu: Vec<Vec<f64>>,
    reception: Vec<Vec<Reception>>,
}

impl Mode {
    fn nat_lines<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.nat.iter().filter(move |v| v["event"] == event)
    }

    /// The first gathered candidate of `kind` (`relay`, `srflx`): its line.
    fn gathered(&self, kind: &str) -> Option<&Value> {
        self.nat_lines("IceCandidateGathered").find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{kind} ")))
        })
    }

    /// How often each local candidate type was selected (`relay/udp`, `host`, …).
    fn selected_pairs(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in self.nat_lines("IcePairSelected") {
            let local = v["message"]
                .as_str()
                .and_then(|m| m.split_once("local="))
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            *out.entry(local).or_insert(0) += 1;
        }
        out
    }

    fn describe_pairs(&self) -> String {
        let pairs = self.selected_pairs();
        if pairs.is_empty() {
            return "no pair reported".into();
        }
        pairs
            .iter()
            .map(|(k, n)| format!("local={k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Milliseconds from the device's start to the first `kind` candidate.
    fn since_start(&self, kind: &str) -> Option<f64> {
        self.gathered(kind)?["since_start_ms"].as_f64()
    }

    /// Milliseconds from `from_ns` (CLOCK_MONOTONIC) to the first `kind` candidate.
    fn since(&self, kind: &str, from_ns: Option<u64>) -> Option<f64> {
        let at = self.gathered(kind)?["t_ns"].as_f64()?;
        Some((at - from_ns? as f64) / 1e6)
    }

    fn first_offer_received_ns(&self) -> Option<u64> {
        self.nat_lines("ReceivedOffer")
            .next()
            .and_then(|v| v["t_ns"].as_u64())
    }
}

/// The 90th percentile (nearest rank) of finite samples.
fn p90(samples: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((s.len() as f64) * 0.9).ceil() as usize;
    s.get(rank.saturating_sub(1)).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Offer → first frame with Rust viewers, one after another.
async fn rust_runs(ctx: &mut Ctx, channel: &str, label: &str, m: &mut Mode) {
    let arn = ctx.arn(channel);
    for i in 0..ctx.plan.relay_ttff_runs {
        let id = format!("relay-{label}-{i}-{}", std::process::id());
        let result = async {
            let mut j = Joined::join(&ctx.url, &arn, &id).await?;
            if m.first_offer_ns.is_none() {
                m.first_offer_ns = Some(monotonic_ns_of(j.offer_sent()));
            }
            let r = viewer::first_frame(&mut j, FIRST_FRAME_TIMEOUT).await;
            j.close().await;
            r
        }
        .await;
        match result {
            Ok(r) => {
                if i == 0 {
                    m.first_run_decoded = Some(ms(r.decoded));
                }
                m.ttff.push(r);
            }
            Err(e) => {
                eprintln!("[bench] relay: Rust viewer ← {label} device, run {i}: {e:#}");
                // A relay that never works would cost the timeout on every run.
                if i >= 1 && m.ttff.is_empty() {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One mode, on its own channel: first frames and gathering on a device as the ttff scenario
/// starts it (test pattern at 1 Mbit/s), then heap and CPU on one as the fan-out starts it
/// (the pre-encoded 2 Mbit/s loop: no encoder competing for the CPU), with glibc's
/// per-thread caches off as for the memory figures.
async fn measure(ctx: &mut Ctx, control: &str, channel: &str, relayed: bool) -> Result<Mode> {
    let label = if relayed { "relayed" } else { "direct" };
    let mut nat_args = vec!["--ice-servers-from", control, "--nat-events"];
    if relayed {
        nat_args.push("--relay-only");
    }
    let mut m = Mode::default();

    let mut extra = vec!["--bitrate", "1000000"];
    extra.extend(&nat_args);
    let mut dev = ctx.device(channel, &extra).await?;
    let r = first_frames(ctx, channel, label, &mut m).await;
    dev.drain();
    m.nat = dev.take("nat");
    // The device's breakdown of the Rust viewers' sessions (not Chromium's).
    let prefix = format!("relay-{label}-");
    m.timings = dev
        .take("timing")
        .into_iter()
        .filter(|v| v["peer"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .collect();
    dev.stop().await;
    r?;

    let bitrate = FANOUT_BITRATE.to_string();
    let mut extra = vec!["--loop-video", "--bitrate", &bitrate, "--max-viewers", "20"];
    extra.extend(&nat_args);
    ctx.device_env = exact_malloc_accounting();
    let dev = ctx.device(channel, &extra).await;
    ctx.device_env.clear();
    let mut dev = dev?;
    let r = load(ctx, &mut dev, channel, label, &mut m).await;
    dev.drain();
    // The pairs the loaded viewers got, beside the first-frame runs'.
    m.nat.extend(
        dev.take("nat")
            .into_iter()
            .filter(|v| v["event"] == "IcePairSelected"),
    );
    dev.stop().await;
    r?;
    Ok(m)
}

/// Offer → first frame, Rust viewers then Chromium; the first offer starts the allocation.
async fn first_frames(ctx: &mut Ctx, channel: &str, label: &str, m: &mut Mode) -> Result<()> {
    rust_runs(ctx, channel, label, m).await;
    if m.ttff.is_empty() {
        bail!("{label}: no Rust viewer decoded a frame");
    }
    if ctx.peers.is_some() && ctx.plan.relay_chromium_runs > 0 {
        let wrapper = match chromium_without_mdns(ctx) {
            Ok(w) => w,
            Err(e) => {
                ctx.report
                    .skip(format!("relay: Chromium ← {label} device: {e:#}"));
                return Ok(());
            }
        };
        ctx.peer_env = vec![("CHROMIUM_BIN".into(), wrapper.display().to_string())];
        let runs = chromium_ttff(ctx, channel, label, ctx.plan.relay_chromium_runs).await;
        ctx.peer_env.clear();
        match runs {
            Ok(v) => m.chromium = Some(v),
            Err(e) => ctx
                .report
                .skip(format!("relay: Chromium ← {label} device: {e:#}")),
        }
    }
    Ok(())
}

/// A script that starts Chromium (`CHROMIUM_BIN`, else Debian's) with its host candidates as
/// addresses rather than mDNS names: a relay-only device can only give a TURN permission to an
/// address it knows, and `chromium.js` asks no STUN server that would tell it one. Used for
/// both modes, so they compare.
fn chromium_without_mdns(ctx: &Ctx) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let real = std::env::var("CHROMIUM_BIN")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".to_string());
    let script = format!(
        "#!/bin/sh\n\
         # kvs-bench relay scenario: Chromium without mDNS host candidates.\n\
         seen=\n\
         for a in \"$@\"; do\n\
         \x20 shift\n\
         \x20 case \"$a\" in --disable-features=*) a=\"$a,WebRtcHideLocalIpsWithMdns\"; seen=1 ;; esac\n\
         \x20 set -- \"$@\" \"$a\"\n\
         done\n\
         [ -n \"$seen\" ] || set -- \"$@\" --disable-features=WebRtcHideLocalIpsWithMdns\n\
         exec {} \"$@\"\n",
        sh_quote(&real)
    );
    let path = ctx.out.join("chromium-without-mdns.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Words for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Heap and CPU: idle (before any session, so no allocation yet), then with 1, 5 … Rust
/// viewers receiving.
async fn load(
    ctx: &mut Ctx,
    dev: &mut LineChild,
    channel: &str,
    label: &str,
    m: &mut Mode,
) -> Result<()> {
    let settle = ctx.plan.relay_settle;
    let window = ctx.plan.relay_window;
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.heap.push(sample(dev).await?);
    let s0 = dev.ask("stats", "stats").await?;
    tokio::time::sleep(window).await;
    let s1 = dev.ask("stats", "stats").await?;
    m.cpu_idle = cpu_excl_capture(&s0, &s1) / window.as_secs_f64();

    let arn = ctx.arn(channel);
    let mut members: Vec<Member> = Vec::new();
    let levels = ctx.plan.relay_viewers.clone();
    let result = async {
        for &n in &levels {
            let more = n.saturating_sub(members.len());
            let prefix = format!("relay-{label}-fan-{}", std::process::id());
            members.extend(fleet::join_many(&ctx.url, &arn, &prefix, members.len(), more).await?);
            tokio::time::sleep(settle).await;
            m.heap.push(sample(dev).await?);
            let (mut cpu, mut got) = (vec![], vec![]);
            for _ in 0..ctx.plan.relay_windows {
                let (a, b, total) = super::fleet_window(dev, &members, window).await?;
                cpu.push(cpu_excl_capture(&a, &b) / (n as f64 * window.as_secs_f64()));
                got.push(total);
            }
            m.cpu.push(cpu);
            m.reception.push(got);
        }
        anyhow::Ok(())
    }
    .await;
    fleet::stop_all(members).await;
    wait_no_viewers(dev).await.ok();
    result
}

pub async fn relay(ctx: &mut Ctx) -> Result<()> {
    let secret = fresh_secret()?;
    let coturn = start_coturn(ctx, &secret).await?;
    let service = match start_service(ctx, &coturn.uri, &secret).await {
        Ok(s) => s,
        Err(e) => {
            coturn.stop().await;
            return Err(e);
        }
    };
    // The scenario's devices and viewers use this service: the run's own is put back after.
    let saved_url = std::mem::replace(&mut ctx.url, service.url.clone());
    let saved_arns = std::mem::replace(&mut ctx.arns, service.arns.clone());
    let control = service.control.clone();
    let started = Instant::now();
    let direct = measure(ctx, &control, DIRECT_CHANNEL, false).await;
    eprintln!(
        "[bench] relay: direct device measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let relayed = measure(ctx, &control, RELAYED_CHANNEL, true).await;
    ctx.url = saved_url;
    ctx.arns = saved_arns;
    service.child.stop().await;
    // coturn's log, for the record (its directory goes).
    let _ = std::fs::copy(
        coturn.dir.join("turnserver.log"),
        ctx.logs.join("coturn-turnserver.log"),
    );
    coturn.stop().await;
    let relayed = relayed.context("relay-only device")?;
    let direct = match direct {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.report.skip(format!("relay: direct device: {e:#}"));
            None
        }
    };
    report(ctx, direct.as_ref(), &relayed);
    Ok(())
}

/// A row: ours = the relayed figure, the direct one beside it (ratio relayed / direct).
fn pair_row(
    ctx: &mut Ctx,
    metric: &str,
    unit: &str,
    relayed: Option<Figure>,
    direct: Option<Figure>,
    note: Option<String>,
) {
    let row = ctx.report.row(
        SCENARIO,
        metric,
        unit,
        relayed,
        None,
        vec![("direct", direct)],
    );
    row.note = note;
}

fn report(ctx: &mut Ctx, direct: Option<&Mode>, relayed: &Mode) {
    let levels = ctx.plan.relay_viewers.clone();
    let d = |f: &dyn Fn(&Mode) -> Option<Figure>| direct.and_then(f);
    let p90_note = |samples_r: &[f64], samples_d: Option<Vec<f64>>| {
        let fmt = |x: Option<f64>| x.map_or("—".to_string(), num);
        format!(
            "p90: relayed {} ms, direct {} ms",
            fmt(p90(samples_r)),
            fmt(samples_d.as_deref().and_then(p90))
        )
    };

    // 1. Offer → first frame.
    type Pick = fn(&viewer::FirstFrame) -> Duration;
    let rust_rows: [(&str, Pick); 2] = [
        ("Rust viewer: offer sent → first frame decoded", |r| {
            r.decoded
        }),
        ("Rust viewer: offer sent → transport connected", |r| {
            r.connected
        }),
    ];
    for (metric, pick) in rust_rows {
        let samples = |m: &Mode| m.ttff.iter().map(|r| ms(pick(r))).collect::<Vec<f64>>();
        let r = samples(relayed);
        let dd = direct.map(samples);
        let note = p90_note(&r, dd.clone());
        pair_row(
            ctx,
            &format!("{metric}, relay-only device (direct beside it)"),
            "ms",
            Figure::of(&r),
            dd.as_deref().and_then(Figure::of),
            Some(format!(
                "{note}; test pattern at 1 Mbit/s, as in scenario 1; the first run included (a relayed one waits for the allocation)"
            )),
        );
    }
    let first = |m: &Mode| m.first_run_decoded.and_then(|x| Figure::of(&[x]));
    pair_row(
        ctx,
        "Rust viewer: first frame decoded, the first viewer's run (the TURN allocation is made for it)",
        "ms",
        first(relayed),
        d(&first),
        None,
    );
    // Chromium's first frame, and beside it when its peer connection connected (ICE and
    // DTLS): a transport delay shows in both, a media one only in the first.
    for (field, metric) in [
        (
            "presented_ms",
            "Chromium: offer sent → first frame decoded and presented, relay-only device",
        ),
        (
            "connected_ms",
            "Chromium: offer sent → ICE+DTLS connected, relay-only device",
        ),
    ] {
        let chromium = |m: &Mode| m.chromium.as_ref().map(|v| column(v, field));
        if let Some(r) = chromium(relayed) {
            let dd = direct.and_then(chromium);
            let note = p90_note(&r, dd.clone());
            pair_row(
                ctx,
                metric,
                "ms",
                Figure::of(&r),
                dd.as_deref().and_then(Figure::of),
                Some(note),
            );
        }
    }
    let keyframe = |m: &Mode| Figure::of(&column(&m.timings, "first_keyframe_sent_ms"));
    let ice = |m: &Mode| Figure::of(&column(&m.timings, "ice_connected_ms"));
    pair_row(
        ctx,
        "device: offer received → ICE connected, relay-only device",
        "ms",
        ice(relayed),
        d(&ice),
        None,
    );
    pair_row(
        ctx,
        "device: offer received → first keyframe sent, relay-only device",
        "ms",
        keyframe(relayed),
        d(&keyframe),
        None,
    );

    // 2. Heap.
    let kb = 1024.0;
    let heap_at = |m: &Mode, li: usize| {
        m.heap
            .get(li)
            .and_then(|s| Figure::of(&[(s.sdk_rust + s.sdk_c) / kb]))
    };
    for li in 0..=levels.len() {
        let what = if li == 0 {
            "idle (before the first session: no allocation yet)".to_string()
        } else {
            let n = levels[li - 1];
            format!("{n} viewer{}", if n == 1 { "" } else { "s" })
        };
        pair_row(
            ctx,
            &format!("SDK heap, Rust + C, encoders excluded, relay-only device: {what}"),
            "KB",
            heap_at(relayed, li),
            d(&|m| heap_at(m, li)),
            None,
        );
    }
    let per_viewer = |m: &Mode, from: usize, to: usize| {
        let n_from = if from == 0 { 0 } else { levels[from - 1] };
        let n = levels.get(to.wrapping_sub(1)).copied()? as f64 - n_from as f64;
        let (a, b) = (m.heap.get(from)?, m.heap.get(to)?);
        (n > 0.0).then(|| Figure::of(&[(b.sdk_rust + b.sdk_c - a.sdk_rust - a.sdk_c) / n / kb]))?
    };
    if !levels.is_empty() {
        let last = levels.len();
        pair_row(
            ctx,
            &format!(
                "SDK heap added per viewer (idle → {}), relay-only device",
                levels[last - 1]
            ),
            "KB",
            per_viewer(relayed, 0, last),
            d(&|m| per_viewer(m, 0, last)),
            Some("includes the shared allocation's state, made with the first session".into()),
        );
        if last >= 2 {
            pair_row(
                ctx,
                &format!(
                    "SDK heap added per viewer ({} → {}), relay-only device",
                    levels[last - 2],
                    levels[last - 1]
                ),
                "KB",
                per_viewer(relayed, last - 1, last),
                d(&|m| per_viewer(m, last - 1, last)),
                None,
            );
        }
    }

    // 3. CPU.
    pair_row(
        ctx,
        "device CPU with no viewer (capture threads excluded), relay-only device",
        "ms/s",
        Figure::of(&[relayed.cpu_idle]),
        d(&|m| Figure::of(&[m.cpu_idle])),
        None,
    );
    let window = ctx.plan.relay_window.as_secs_f64();
    for (li, &n) in levels.iter().enumerate() {
        let cpu = |m: &Mode| m.cpu.get(li).and_then(|v| Figure::of(v));
        let got = |m: &Mode| {
            let v = m.reception.get(li)?;
            let fps = v
                .iter()
                .map(|r| r.video_frames as f64 / n as f64 / window)
                .collect::<Vec<_>>();
            let lost: u64 = v.iter().map(|r| r.packets_lost).sum();
            let late: u64 = v.iter().map(|r| r.frames_late).sum();
            Some(format!(
                "{} frames/s per viewer, {lost} packets lost, {late} frames late",
                num(Figure::of(&fps)?.median)
            ))
        };
        let note = format!(
            "received — relayed: {}; direct: {}",
            got(relayed).unwrap_or_else(|| "—".into()),
            direct.and_then(got).unwrap_or_else(|| "—".into())
        );
        pair_row(
            ctx,
            &format!(
                "device CPU per viewer-second, {n} viewer{}, relay-only device",
                if n == 1 { "" } else { "s" }
            ),
            "ms",
            cpu(relayed),
            d(&cpu),
            Some(note),
        );
    }

    // 4. Gathering.
    let srflx_note = |m: &Mode| match m.gathered("srflx") {
        Some(v) => format!("srflx gathered: {}", v["message"].as_str().unwrap_or("?")),
        None => "no srflx".to_string(),
    };
    let relay_addr = relayed
        .gathered("relay")
        .and_then(|v| v["message"].as_str())
        .unwrap_or("none")
        .to_string();
    let note = format!(
        "{relay_addr}; relayed device: {} (relay-only makes no STUN probes); direct device: {} \
         (on loopback the STUN mapping equals the socket's own address, so no srflx is offered); \
         selected pairs — relayed: {}; direct: {}",
        srflx_note(relayed),
        direct.map_or("—".into(), srflx_note),
        relayed.describe_pairs(),
        direct.map_or("—".into(), Mode::describe_pairs),
    );
    let since_start = |m: &Mode| {
        m.since_start("relay")
            .map_or("—".to_string(), |x| format!("{} ms", num(x)))
    };
    let since_offer = |m: &Mode| {
        m.since("relay", m.first_offer_ns)
            .and_then(|x| Figure::of(&[x]))
    };
    pair_row(
        ctx,
        "first offer sent → relayed candidate gathered, relay-only device",
        "ms",
        since_offer(relayed),
        d(&since_offer),
        Some(format!(
            "allocations are made when the first session starts (the first offer came right \
             after the device connected: device start → relayed candidate gathered {} relayed, \
             {} direct); {note}",
            since_start(relayed),
            direct.map_or("—".to_string(), since_start),
        )),
    );
    let since_received = |m: &Mode| {
        m.since("relay", m.first_offer_received_ns())
            .and_then(|x| Figure::of(&[x]))
    };
    pair_row(
        ctx,
        "first offer received by the device → relayed candidate gathered, relay-only device",
        "ms",
        since_received(relayed),
        d(&since_received),
        None,
    );
    if !relayed
        .selected_pairs()
        .keys()
        .all(|k| k.starts_with("relay"))
    {
        ctx.report.skip(format!(
            "relay: the relay-only device selected a pair that is not relayed ({})",
            relayed.describe_pairs()
        ));
    }
    if let Some(e) = relayed.nat_lines("TurnError").next() {
        ctx.report.skip(format!(
            "relay: TURN error: {}",
            e["message"].as_str().unwrap_or("?")
        ));
    }
}
