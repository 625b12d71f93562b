//! A RainMaker node with a stand-in device: every applied change is printed on stdout as
//! `APPLIED <change>`; `viewers <n>` lines on stdin set the viewer count. Used by
//! `tests/rainmaker/` against mosquitto; the real device's `DeviceControl` is wired in by the
//! device program, not here.
//!
//! ```sh
//! cargo run -p kvs-app --no-default-features --features rainmaker --example rainmaker_node -- node.toml
//! ```
//! where `node.toml` has a `[rainmaker]` section (docs/RAINMAKER.md); `KVS_WEBRTC_RAINMAKER__*`
//! variables override it. SIGTERM or Ctrl-C stops the node cleanly (no last will).

use kvs_app::control::{Control, ControlFuture, DeviceControl};
use kvs_app::rainmaker::{camera_state_from, settings_from, RainmakerNode};
use kvs_app::DeviceConfig;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

struct RecordingControl {
    viewers: watch::Sender<usize>,
}

impl DeviceControl for RecordingControl {
    fn apply(&self, control: Control) -> ControlFuture<'_> {
        Box::pin(async move {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "APPLIED {control:?}");
            let _ = out.flush();
            Ok(())
        })
    }

    fn viewers(&self) -> watch::Receiver<usize> {
        self.viewers.subscribe()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = std::env::args_os().nth(1).map(PathBuf::from);
    let config = DeviceConfig::load(path.as_deref(), std::env::vars())?;
    let Some(rainmaker) = config.rainmaker.clone() else {
        return Err("the configuration has no [rainmaker] section".into());
    };
    let (viewers, _) = watch::channel(0usize);
    let control = Arc::new(RecordingControl {
        viewers: viewers.clone(),
    });
    let settings = settings_from(&rainmaker, camera_state_from(&config));
    let node = RainmakerNode::start(&rainmaker, settings, control)?;
    println!("STARTED {}", node.node_id());

    // A plain thread: tokio's stdin would hold the runtime's shutdown until stdin closes.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("viewers ") {
                if let Ok(n) = n.trim().parse() {
                    viewers.send_replace(n);
                }
            }
        }
        // Keep the sender (and so the watch) alive after stdin closes.
        loop {
            std::thread::park();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    node.stop().await;
    println!("STOPPED");
    Ok(())
}
