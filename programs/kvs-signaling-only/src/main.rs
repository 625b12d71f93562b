//! `kvs-signaling-only` — split mode's always-on side on its own, as on a signaling chip.
//!
//! Holds the KVS master connection and relays viewers over the link to a streaming-only
//! process (`kvs-webrtc streaming-only`), waking it when an offer comes. Built without the
//! `media` feature of `kvs-app`: no peer engine, no capture, no codecs are linked, so the
//! binary and its heap stay small. `kvs-webrtc signaling-only` is the same side inside the
//! full program (with a snapshot HTTP endpoint).
//!
//! Signaling is configured as for the device: a TOML file (`--config`) and
//! `KVS_WEBRTC_<SECTION>__<KEY>` environment overrides, e.g.
//! `KVS_WEBRTC_SIGNALING__MODE=kvs KVS_WEBRTC_SIGNALING__CHANNEL=cam KVS_WEBRTC_SIGNALING__REGION=us-west-2`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvs_app::split::{LinkAddr, SignalingSide, SignalingSideConfig, WakeMethod};
use kvs_app::{DeviceConfig, SignalingConfig};
use kvs_signaling::Role;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "kvs-signaling-only",
    version,
    about = "Split mode's always-on signaling side."
)]
struct Cli {
    /// TOML configuration file (its [signaling] section); KVS_WEBRTC_* variables override it.
    #[arg(short, long, env = "KVS_WEBRTC_CONFIG")]
    config: Option<PathBuf>,
    /// The link to the streaming side: unix:<path>, tcp-listen:<host:port>, tcp:<host:port>
    /// or serial:<device>[,<baud>].
    #[arg(long)]
    link: LinkAddr,
    /// How to wake the streaming side: exec:<command>, signal:<pidfile> or none.
    #[arg(long, default_value = "none")]
    wake: WakeMethod,
    /// How long the streaming side has to say Ready after a wake.
    #[arg(long, default_value_t = 2000, value_name = "MILLISECONDS")]
    wake_budget_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| kvs_aws::redact::RedactingWriter::new(std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = DeviceConfig::load(cli.config.as_deref(), std::env::vars())?;
    if matches!(config.signaling, SignalingConfig::Embedded { .. }) {
        bail!("configure real signaling (signaling.mode = \"kvs\" or \"url\"); the embedded default in split mode is `kvs-webrtc split`");
    }
    let client = kvs_app::signaling::build_client(&config.signaling, Role::Master, None)
        .context("setting up signaling")?;
    let side = SignalingSide::start(
        SignalingSideConfig {
            link: cli.link.clone(),
            wake: cli.wake,
            relay: kvs_bridge_relay(cli.wake_budget_ms),
            reconnect: config.reconnect.clone(),
            fallback_ice: kvs_app::split::signaling_side::stun_fallback(&config.signaling),
        },
        client,
    )
    .await?;
    println!("Signaling only: relaying viewers over {}", cli.link);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    side.shutdown().await;
    Ok(())
}

fn kvs_bridge_relay(wake_budget_ms: u64) -> kvs_app::split::RelayConfig {
    kvs_app::split::RelayConfig {
        wake_budget: Duration::from_millis(wake_budget_ms.max(100)),
        ..Default::default()
    }
}
