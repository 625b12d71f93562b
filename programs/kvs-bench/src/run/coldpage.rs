//! Scenario 9, cold-page first frame: the first frame as a person meets it. The main program
//! runs on its embedded default exactly as the README starts it (`kvs-webrtc --listen
//! 127.0.0.1:0`: local signaling, test pattern, tone, viewer page; its state in a directory
//! of the run's own), and Debian's Chromium opens the page it prints, a fresh browser context
//! per run (`bench/peers/chromium.js page`). The figure is the page's own: offer sent → first
//! frame presented (`requestVideoFrameCallback`), `window.kvsViewer.timeToFirstFrameMs`.
//!
//! Beside it, per run: the page's clock from navigation start (HTML, `/config.json`, the
//! signaling WebSocket open, the offer sent; after the offer: answer received, ICE connected,
//! ICE+DTLS connected), and the device's own breakdown, its `FirstFrameSent [<client id>]`
//! line on stdout (offer received → answer sent, ICE connected, DTLS connected, first
//! keyframe sent), matched by the page's client id. Each run ends as a person closes a tab
//! (the page's `beforeunload` closes its session); the next starts once the device printed
//! that viewer's `PeerDisconnected`.
//!
//! Scenario 1 measures the same span in a warm harness (one browser context, a synthesised
//! page that joins at once); this is the cold one. The aiortc and GStreamer senders cannot
//! serve this page: it is served by `kvs-webrtc` and talks to its embedded service.

use super::Ctx;
use crate::child::LineChild;
use crate::device::timing_field;
use crate::report::{num, Figure, Goal};
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SCENARIO: &str = "9 cold page";
/// The page's figure against the targets: median and 90th percentile.
const TARGET_MEDIAN_MS: f64 = 60.0;
const TARGET_P90_MS: f64 = 120.0;
/// How long the device gets to print a run's `FirstFrameSent` and `PeerDisconnected`.
const DEVICE_LINES_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause after the device saw the viewer leave, before the next page opens.
const BETWEEN_RUNS: Duration = Duration::from_millis(300);

/// The device's breakdown, since the offer reached it (ms).
const DEVICE_PHASES: [(&str, &str); 4] = [
    ("answer sent", "answer sent"),
    ("ICE connected", "ICE connected"),
    ("DTLS connected", "DTLS connected"),
    ("first keyframe sent", "first keyframe sent"),
];

/// What the device printed about one viewer.
#[derive(Debug, Default, Clone)]
struct DeviceRun {
    /// answer sent, ICE connected, DTLS connected, first keyframe sent (ms since the offer
    /// reached the device).
    phases: Option<[f64; 4]>,
    /// The selected pair, as `IcePairSelected` describes it.
    pair: Option<String>,
    left: bool,
}

/// `Kind [peer]…` → (kind, peer, the rest after `]`).
fn event_line(line: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = line.split_once(" [")?;
    let (peer, rest) = rest.split_once(']')?;
    (!kind.contains(' ')).then_some((kind, peer, rest))
}

/// Read the device's stdout into `seen` until `client_id` has left (or the time is up).
async fn follow_device(
    dev: &mut LineChild,
    seen: &mut BTreeMap<String, DeviceRun>,
    client_id: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !seen.get(client_id).is_some_and(|r| r.left) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let line = match dev.line(left, |l| Some(l.to_string())).await {
            Ok(l) => l,
            Err(e) if e.to_string().contains("nothing expected") => break,
            Err(e) => return Err(e),
        };
        let Some((kind, peer, rest)) = event_line(&line) else {
            continue;
        };
        let run = seen.entry(peer.to_string()).or_default();
        match kind {
            "FirstFrameSent" => {
                run.phases = Some(
                    DEVICE_PHASES.map(|(_, label)| timing_field(rest, label).unwrap_or(f64::NAN)),
                )
            }
            "IcePairSelected" => {
                run.pair = Some(rest.trim_start_matches(':').trim().to_string());
            }
            "PeerDisconnected" | "PeerFailed" => run.left = true,
            _ => {}
        }
    }
    Ok(())
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

fn num_or_dash(x: Option<f64>) -> String {
    x.map_or("—".into(), num)
}

/// The kind of the remote side of a selected pair: `prflx [::1]:… -> …` → "IPv6 loopback".
fn pair_kind(pair: &str) -> &'static str {
    let remote = pair.split("remote=").nth(1).unwrap_or(pair);
    let addr = remote.split_whitespace().nth(1).unwrap_or("");
    if addr.starts_with("[::1]") {
        "IPv6 loopback"
    } else if addr.starts_with("127.") {
        "IPv4 loopback"
    } else if addr.starts_with('[') {
        "IPv6, another interface"
    } else {
        "IPv4, another interface"
    }
}

/// The main program on its embedded default; returns it and the viewer page's address.
async fn start_program(ctx: &mut Ctx) -> Result<(LineChild, String)> {
    // Its state (CA, channel) in a directory of this run's own, as on a fresh installation;
    // the default is under the user's home, shared with anything else run there.
    let state = ctx.out.join("coldpage-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let env = vec![(
        "XDG_DATA_HOME".to_string(),
        state.canonicalize()?.display().to_string(),
    )];
    let args = vec!["--listen".to_string(), "127.0.0.1:0".into()];
    let (program, args) = super::wrapped("KVS_BENCH_DEVICE_WRAPPER", &ctx.kvs_webrtc, args);
    let name = ctx.name("kvs-webrtc-coldpage");
    let mut dev = LineChild::spawn_with_env(&name, &program, &args, &env, &ctx.logs)?;
    // A person opens the page once it is printed; the device is connected to its signaling
    // by then (it prints that too): wait for both.
    let (mut url, mut connected) = (None, false);
    while url.is_none() || !connected {
        let line = dev
            .line(Duration::from_secs(60), |l| Some(l.to_string()))
            .await
            .context("waiting for the program's \"Viewer page:\" and \"SignalingConnected\"")?;
        if let Some(rest) = line.strip_prefix("Viewer page:") {
            url = Some(rest.trim().to_string());
        } else if line.starts_with("SignalingConnected") {
            connected = true;
        }
    }
    let url = url.ok_or_else(|| anyhow!("no viewer page printed"))?;
    Ok((dev, url))
}

/// One run's figures, from the page (`chromium.js page`) and the device.
struct Run {
    page: Value,
    device: DeviceRun,
}

pub async fn coldpage(ctx: &mut Ctx) -> Result<()> {
    let not_served = "cold page against the aiortc and GStreamer senders: not measured — the \
        page is served by kvs-webrtc and talks to its embedded signaling service, which those \
        senders cannot serve (their figures: scenario 1, warm harness)";
    if ctx.peers.is_none() {
        ctx.report
            .skip("cold page: needs Chromium (bench/peers/chromium.js), left out with --no-peers");
        return Ok(());
    }
    let runs = ctx.plan.coldpage_runs;
    let (mut dev, url) = start_program(ctx).await?;
    eprintln!("[bench] cold page: {url}, {runs} runs, a new browser context each");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let args = vec![
        "page".to_string(),
        "--url".into(),
        url.clone(),
        "--runs".into(),
        runs.to_string(),
        "--sync".into(),
        "1".into(),
    ];
    let mut chromium = match ctx.peer("chromium-coldpage", "chromium.js", args) {
        Ok(c) => c,
        Err(e) => {
            dev.terminate().await;
            return Err(e);
        }
    };
    let mut seen: BTreeMap<String, DeviceRun> = BTreeMap::new();
    let mut done: Vec<Run> = Vec::new();
    let (mut failed, mut not_left) = (Vec::new(), 0usize);
    let result: Result<()> = async {
        for i in 0..runs {
            let page = chromium.json("page", Duration::from_secs(90)).await?;
            if let Some(e) = page["error"].as_str() {
                eprintln!("[bench] cold page, run {i}: {e}");
                failed.push(format!("run {i}: {e}"));
            }
            let client_id = page["client_id"].as_str().unwrap_or("").to_string();
            if !client_id.is_empty() {
                follow_device(&mut dev, &mut seen, &client_id, DEVICE_LINES_TIMEOUT).await?;
                if !seen.get(&client_id).is_some_and(|r| r.left) {
                    not_left += 1;
                    eprintln!(
                        "[bench] cold page, run {i}: the device did not see {client_id} leave within {DEVICE_LINES_TIMEOUT:?}"
                    );
                }
            }
            if page["error"].is_null() {
                let device = seen.get(&client_id).cloned().unwrap_or_default();
                done.push(Run { page, device });
            }
            tokio::time::sleep(BETWEEN_RUNS).await;
            if i + 1 < runs {
                chromium.send("next").await?;
            }
        }
        chromium.json("done", Duration::from_secs(30)).await?;
        Ok(())
    }
    .await;
    chromium.stop().await;
    dev.terminate().await;
    result?;
    report(ctx, &done, runs, &failed, not_left);
    ctx.report.skip(not_served);
    Ok(())
}

fn report(ctx: &mut Ctx, runs: &[Run], planned: usize, failed: &[String], not_left: usize) {
    let page = |key: &str| -> Vec<f64> {
        runs.iter()
            .map(|r| r.page[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let span = |to: &str, from: &str| -> Vec<f64> {
        page(to)
            .iter()
            .zip(page(from))
            .map(|(a, b)| a - b)
            .collect()
    };
    let device = |k: usize| -> Vec<f64> {
        runs.iter()
            .map(|r| r.device.phases.map_or(f64::NAN, |p| p[k]))
            .collect()
    };
    let device_step = |to: usize, from: usize| -> Vec<f64> {
        device(to)
            .iter()
            .zip(device(from))
            .map(|(a, b)| a - b)
            .collect()
    };

    let ttff = page("ttff_ms");
    let fig = Figure::of(&ttff);
    let p = p90(&ttff);
    let first = ttff.first().copied();
    eprintln!(
        "[bench] cold page, offer sent → first frame presented: median {} ms (target ≤ {TARGET_MEDIAN_MS}), p90 {} ms (target ≤ {TARGET_P90_MS}), min {} ms, max {} ms, {} of {planned} runs",
        num_or_dash(fig.as_ref().map(|f| f.median)),
        num_or_dash(p),
        num_or_dash(fig.as_ref().map(|f| f.min)),
        num_or_dash(fig.as_ref().map(|f| f.max)),
        fig.as_ref().map_or(0, |f| f.n),
    );
    let vias = tally(
        runs.iter()
            .map(|r| r.page["via"].as_str().unwrap_or("?").to_string()),
    );
    let row = ctx.report.row(
        SCENARIO,
        "Chromium, the real viewer page in a fresh context per run: offer sent → first frame presented (the page's own figure; cold)",
        "ms",
        fig,
        Some((Goal::AtMost, TARGET_MEDIAN_MS)),
        vec![],
    );
    let mut note = format!(
        "p90 {} ms; the first run (the browser's first page) {} ms; measured via {vias}; the warm-harness figure is scenario 1's",
        num_or_dash(p),
        num_or_dash(first)
    );
    if !failed.is_empty() {
        note.push_str(&format!("; failed: {}", failed.join("; ")));
    }
    row.note = Some(note);
    ctx.report.row(
        SCENARIO,
        "  the same, 90th percentile",
        "ms",
        p.and_then(|p| Figure::of(&[p])),
        Some((Goal::AtMost, TARGET_P90_MS)),
        vec![],
    );

    let mut add = |metric: &str, samples: Vec<f64>, note: Option<String>| {
        let p = p90(&samples);
        let row = ctx
            .report
            .row(SCENARIO, metric, "ms", Figure::of(&samples), None, vec![]);
        let mut n = format!("p90 {}", num_or_dash(p));
        if let Some(extra) = note {
            n.push_str("; ");
            n.push_str(&extra);
        }
        row.note = Some(n);
    };
    // Before the offer, on the page's clock (0 = navigation start).
    add(
        "page: navigation start → offer sent (page load → offer)",
        page("offer_sent_at_ms"),
        None,
    );
    add(
        "  page: navigation start → HTML received",
        page("html_at_ms"),
        None,
    );
    add(
        "  page: navigation start → /config.json received",
        page("config_at_ms"),
        None,
    );
    add(
        "  page: /config.json received → signaling WebSocket open",
        span("ws_open_at_ms", "config_at_ms"),
        None,
    );
    add(
        "  page: signaling WebSocket open → offer sent (peer connection, createOffer, setLocalDescription)",
        span("offer_sent_at_ms", "ws_open_at_ms"),
        None,
    );
    add(
        "page: navigation start → first frame presented (what the person waits)",
        page("first_frame_at_ms"),
        None,
    );
    // After the offer, the page's view.
    add(
        "page: offer sent → answer received",
        page("answer_ms"),
        None,
    );
    add(
        "  page: offer sent → answer applied (setRemoteDescription resolved)",
        page("answer_applied_ms"),
        None,
    );
    add(
        "  page: offer sent → the page's first local ICE candidate",
        page("first_local_candidate_ms"),
        None,
    );
    add(
        "page: offer sent → ICE connected",
        page("ice_connected_ms"),
        None,
    );
    add(
        "page: offer sent → ICE+DTLS connected",
        page("connected_ms"),
        None,
    );
    add(
        "page: ICE+DTLS connected → first frame presented",
        ttff.iter()
            .zip(page("connected_ms"))
            .map(|(a, b)| a - b)
            .collect(),
        None,
    );
    // The device's view, since the offer reached it.
    let matched = runs.iter().filter(|r| r.device.phases.is_some()).count();
    for (k, (label, _)) in DEVICE_PHASES.iter().enumerate() {
        let note = (k == 0).then(|| {
            format!(
                "FirstFrameSent matched for {matched} of {} runs",
                runs.len()
            )
        });
        add(
            &format!("device: offer received → {label}"),
            device(k),
            note,
        );
    }
    add(
        "  device: answer sent → ICE connected",
        device_step(1, 0),
        None,
    );
    add(
        "  device: ICE connected → DTLS connected",
        device_step(2, 1),
        None,
    );
    add(
        "  device: DTLS connected → first keyframe sent",
        device_step(3, 2),
        None,
    );
    add(
        "page first frame − device first keyframe sent (the offer's trip, delivery, decode, presentation)",
        ttff.iter().zip(device(3)).map(|(a, b)| a - b).collect(),
        None,
    );
    let pairs = tally(
        runs.iter()
            .filter_map(|r| r.device.pair.as_ref())
            .map(|p| pair_kind(p).to_string()),
    );
    let row = ctx.report.row(
        SCENARIO,
        "runs whose close the device saw (PeerDisconnected) before the next page",
        "runs",
        Figure::of(&[(runs.len().saturating_sub(not_left)) as f64]),
        None,
        vec![],
    );
    row.note = Some(format!(
        "of {} runs with a first frame ({planned} planned); selected pairs (remote side): {pairs}",
        runs.len()
    ));
}

/// "a 3, b 1": how often each value occurs, in order.
fn tally(values: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let l = "FirstFrameSent [viewer-ab12]: since offer: answer sent 0 ms, ICE connected 215 ms, DTLS connected 258 ms, first keyframe sent 260 ms";
        let (kind, peer, rest) = event_line(l).unwrap();
        assert_eq!((kind, peer), ("FirstFrameSent", "viewer-ab12"));
        let phases = DEVICE_PHASES.map(|(_, label)| timing_field(rest, label).unwrap());
        assert_eq!(phases, [0.0, 215.0, 258.0, 260.0]);
        assert!(event_line("Viewer page: http://127.0.0.1:1/").is_none());
        let pair = "local=host/udp remote=prflx [::1]:47809 -> [::1]:53989";
        assert_eq!(pair_kind(pair), "IPv6 loopback");
        assert_eq!(
            pair_kind("local=host/udp remote=prflx 127.0.0.1:39044 -> 127.0.0.1:50372"),
            "IPv4 loopback"
        );
        assert_eq!(
            p90(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]),
            Some(9.0)
        );
    }
}
