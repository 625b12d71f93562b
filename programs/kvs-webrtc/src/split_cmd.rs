//! `kvs-webrtc split`, `signaling-only` and `streaming-only`: split mode from the command line.
//!
//! `split` is the embedded default in split mode: the local service and the viewer page, the
//! signaling-only side in this process, and a streaming-only process on a link — started on
//! the first viewer's offer (`--wake exec`, the default) or resident and idle between viewers
//! (`--wake signal`). The two halves also run on their own, as on two chips.

use crate::{report_events, wait_for_stop, web, DeviceArgs};
use anyhow::{bail, Context, Result};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kvs_app::split::{
    media_side, Commander, LinkAddr, MediaSideConfig, SignalingSide, SignalingSideConfig,
    SleepMode, WakeMethod,
};
use kvs_app::{EventBus, SignalingConfig};
use kvs_bridge::{Command, CommandError, CommandValue, MediaConfig, RelayConfig, Status};
use kvs_signaling::Role;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn parse_link(s: &str) -> Result<LinkAddr, String> {
    s.parse()
        .map_err(|e: kvs_app::split::LinkError| e.to_string())
}

fn parse_wake(s: &str) -> Result<WakeMethod, String> {
    s.parse()
        .map_err(|e: kvs_app::split::wake::WakeError| e.to_string())
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected FIRST-LAST, got {s:?}"))?;
    let first: u16 = a.parse().map_err(|_| format!("bad port {a:?}"))?;
    let last: u16 = b.parse().map_err(|_| format!("bad port {b:?}"))?;
    if first == 0 || first > last {
        return Err(format!("need 1 <= FIRST <= LAST, got {first}-{last}"));
    }
    Ok((first, last))
}

/// Timers of the wake handshake and the sleep policy, shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SleepArgs {
    /// The media side sleeps this long after its last viewer left.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    idle_after_last_viewer: u64,
    /// The media side sleeps this long after waking (or its last offer) with no viewer.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    idle_after_wake: u64,
}

impl SleepArgs {
    fn media_config(&self) -> MediaConfig {
        MediaConfig {
            idle_after_last_viewer: Duration::from_secs(self.idle_after_last_viewer),
            idle_after_wake: Duration::from_secs(self.idle_after_wake),
            ..MediaConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SignalingOnlyArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The link to the streaming side: unix:<path>, tcp-listen:<host:port>, tcp:<host:port>
    /// or serial:<device>[,<baud>].
    #[arg(long, value_parser = parse_link)]
    link: LinkAddr,
    /// How to wake the streaming side: exec:<command>, signal:<pidfile> or none.
    #[arg(long, value_parser = parse_wake, default_value = "none")]
    wake: WakeMethod,
    /// How long the streaming side has to say Ready after a wake.
    #[arg(long, default_value_t = 2000, value_name = "MILLISECONDS")]
    wake_budget_ms: u64,
    /// Serve GET /snapshot.jpg?quality=N here (wakes the streaming side if it sleeps).
    #[arg(long, value_name = "ADDR")]
    snapshot_http: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StreamingOnlyArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The link to the signaling side (see `signaling-only --link`).
    #[arg(long, value_parser = parse_link)]
    link: LinkAddr,
    /// Stay resident while asleep (woken by SIGUSR1 or the link) instead of exiting.
    #[arg(long)]
    resident: bool,
    /// Write this process's id here (for `signaling-only --wake signal:<pidfile>`).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Take the media UDP port from this range (both sides share one IP).
    #[arg(long, value_parser = parse_port_range, value_name = "FIRST-LAST")]
    port_range: Option<(u16, u16)>,
    #[command(flatten)]
    sleep: SleepArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SplitWake {
    /// No streaming process while asleep; one is started for a viewer.
    Exec,
    /// A resident streaming process, idle while asleep, woken with SIGUSR1.
    Signal,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SplitArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The signaling side's end of the link (default: a Unix socket in a fresh directory).
    #[arg(long, value_parser = parse_link)]
    link: Option<LinkAddr>,
    /// The streaming process's end, when it differs (the other end of a serial pair).
    #[arg(long, value_parser = parse_link)]
    media_link: Option<LinkAddr>,
    #[arg(long, value_enum, default_value = "exec")]
    wake: SplitWake,
    /// How long the streaming side has to say Ready after a wake (a cold start included).
    #[arg(long, default_value_t = 5000, value_name = "MILLISECONDS")]
    wake_budget_ms: u64,
    /// Serve GET /snapshot.jpg?quality=N here.
    #[arg(long, value_name = "ADDR")]
    snapshot_http: Option<SocketAddr>,
    #[command(flatten)]
    sleep: SleepArgs,
}

/// Starts the signaling side for `config`'s signaling and, if asked, its snapshot endpoint.
async fn start_side(
    config: &kvs_app::DeviceConfig,
    client: std::sync::Arc<dyn kvs_signaling::SignalingClient>,
    link: LinkAddr,
    wake: WakeMethod,
    wake_budget_ms: u64,
    snapshot_http: Option<SocketAddr>,
) -> Result<(SignalingSide, Option<tokio::task::JoinHandle<()>>)> {
    let side = SignalingSide::start(
        SignalingSideConfig {
            link,
            wake,
            relay: RelayConfig {
                wake_budget: Duration::from_millis(wake_budget_ms.max(100)),
                ..RelayConfig::default()
            },
            reconnect: config.reconnect.clone(),
            fallback_ice: kvs_app::split::signaling_side::stun_fallback(&config.signaling),
        },
        client,
    )
    .await?;
    let snapshot = match snapshot_http {
        Some(addr) => Some(serve_snapshots(addr, side.commander()).await?),
        None => None,
    };
    Ok((side, snapshot))
}

/// `kvs-webrtc signaling-only`.
pub(crate) async fn run_signaling_only(args: SignalingOnlyArgs) -> Result<()> {
    let config = args.device.into_config()?;
    if matches!(config.signaling, SignalingConfig::Embedded { .. }) {
        bail!(
            "signaling-only needs real signaling (--region/--endpoint or --signaling-url); \
             split mode on its embedded default is `kvs-webrtc split`"
        );
    }
    let client = kvs_app::signaling::build_client(&config.signaling, Role::Master, None)
        .context("setting up signaling")?;
    let (side, snapshot) = start_side(
        &config,
        client,
        args.link.clone(),
        args.wake,
        args.wake_budget_ms,
        args.snapshot_http,
    )
    .await?;
    println!("Signaling only: relaying viewers over {}", args.link);
    // In split mode the signaling side is the node: it commands the camera over the link.
    let node = crate::start_rainmaker(&config, std::sync::Arc::new(side.controller()))?;
    wait_for_stop().await;
    if let Some(node) = node {
        node.stop().await;
    }
    if let Some(s) = snapshot {
        s.abort();
    }
    side.shutdown().await;
    Ok(())
}

/// `kvs-webrtc streaming-only`.
pub(crate) async fn run_streaming_only(args: StreamingOnlyArgs) -> Result<()> {
    let mut config = args.device.into_config()?;
    if args.port_range.is_some() {
        config.session.udp_port_range = args.port_range;
    }
    if let Some(path) = &args.pid_file {
        kvs_platform::fs::write_atomic(path, format!("{}\n", std::process::id()).as_bytes(), None)
            .with_context(|| format!("writing the pid file {}", path.display()))?;
    }
    let bus = EventBus::new();
    let report = tokio::spawn(report_events(bus.subscribe()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop().await;
        let _ = stop_tx.send(true);
    });
    let media = MediaSideConfig {
        link: args.link.clone(),
        device: config,
        media: args.sleep.media_config(),
        sleep: if args.resident {
            SleepMode::Resident
        } else {
            SleepMode::Exit
        },
        fallback_ice: Vec::new(),
    };
    println!("Streaming only: viewers come over {}", args.link);
    let exit = media_side::run(media, bus, stop).await;
    if let Some(path) = &args.pid_file {
        let _ = std::fs::remove_file(path);
    }
    report.abort();
    match exit? {
        media_side::MediaSideExit::Slept => println!("No viewer left: sleeping (exiting)"),
        media_side::MediaSideExit::Stopped => println!("Stopped"),
    }
    Ok(())
}

/// Quotes one word for `sh`.
fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.,:=@%+".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `kvs-webrtc split`.
pub(crate) async fn run_split(args: SplitArgs) -> Result<()> {
    let media_args = args.device.media_args();
    let config = args.device.into_config()?;
    if !matches!(config.signaling, SignalingConfig::Embedded { .. }) {
        bail!(
            "`split` runs the embedded default; with real signaling run `signaling-only` and \
             `streaming-only`"
        );
    }
    let run_dir = tempdir("kvs-webrtc-split")?;
    let link = args
        .link
        .clone()
        .unwrap_or_else(|| LinkAddr::Unix(run_dir.join("link.sock")));
    let media_link = args.media_link.clone().unwrap_or_else(|| link.clone());

    let exe = std::env::current_exe().context("finding this program's path")?;
    let mut command: Vec<String> = vec![
        exe.to_string_lossy().into_owned(),
        "streaming-only".into(),
        "--link".into(),
        media_link.to_string(),
        "--idle-after-last-viewer".into(),
        args.sleep.idle_after_last_viewer.to_string(),
        "--idle-after-wake".into(),
        args.sleep.idle_after_wake.to_string(),
    ];
    command.extend(media_args);
    let pid_file = run_dir.join("streaming.pid");
    let mut resident = None;
    let wake = match args.wake {
        SplitWake::Exec => WakeMethod::Exec(
            command
                .iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        SplitWake::Signal => {
            command.push("--resident".into());
            command.push("--pid-file".into());
            command.push(pid_file.to_string_lossy().into_owned());
            let child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .kill_on_drop(true)
                .spawn()
                .context("starting the resident streaming process")?;
            resident = Some(child);
            WakeMethod::Signal(pid_file.clone())
        }
    };

    let page = web::PageConfig::new();
    let (local, client) =
        kvs_app::embedded::start_service(&config, Some(web::routes(page.clone())))
            .await
            .context("starting the local signaling service")?;
    let (side, snapshot) = start_side(
        &config,
        client,
        link.clone(),
        wake,
        args.wake_budget_ms,
        args.snapshot_http,
    )
    .await?;
    page.publish(&local);
    println!(
        "Split mode:  signaling-only here, streaming-only over {link} (wake: {})",
        match args.wake {
            SplitWake::Exec => "a process started per wake",
            SplitWake::Signal => "a resident process, SIGUSR1",
        }
    );
    let node = crate::start_rainmaker(&config, std::sync::Arc::new(side.controller()))?;
    wait_for_stop().await;
    println!("Stopping…");
    if let Some(node) = node {
        node.stop().await;
    }
    if let Some(s) = snapshot {
        s.abort();
    }
    side.shutdown().await;
    if let Some(child) = resident {
        kvs_app::split::wake::terminate(child, Duration::from_secs(3)).await;
    }
    local.shutdown().await;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Serves `GET /snapshot.jpg?quality=N` from the media side.
async fn serve_snapshots(
    addr: SocketAddr,
    commander: Commander,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for snapshots on {addr}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/snapshot.jpg", get(snapshot))
        .with_state(commander);
    println!("Snapshots:   http://{local}/snapshot.jpg?quality=75");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("snapshot server stopped: {e}");
        }
    }))
}

async fn snapshot(
    State(commander): State<Commander>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let quality = match query.get("quality").map(|q| q.parse::<u8>()) {
        None => 0,
        Some(Ok(q)) if q <= 100 => q,
        _ => {
            return (StatusCode::BAD_REQUEST, "quality must be 1..=100\n").into_response();
        }
    };
    match commander.request(Command::GetSnapshot { quality }).await {
        Ok(CommandValue::Snapshot(jpeg)) => {
            ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response()
        }
        Ok(_) => (StatusCode::BAD_GATEWAY, "unexpected answer\n").into_response(),
        Err(CommandError::Remote(Status::UNAVAILABLE)) => (
            StatusCode::NOT_IMPLEMENTED,
            "this video source cannot make snapshots\n",
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_words_whole() {
        assert_eq!(sh_quote("/usr/bin/kvs-webrtc"), "/usr/bin/kvs-webrtc");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("49152-61439"), Ok((49152, 61439)));
        for bad in ["", "5", "0-10", "10-5", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
