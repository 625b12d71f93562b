//! # kvs-bench: benchmarks of the device against peers (not timed tests)
//!
//! - `kvs-bench run [--smoke]`: every scenario of `docs/BENCHMARKS.md` — time to first
//!   frame, memory per viewer, churn, fan-out cost, data channel, split mode, NAT traversal
//!   (direct vs relay-only through a coturn it starts), size, the first frame of the real
//!   viewer page opened cold in Chromium — with
//!   repeats, the peers measured in the same run; prints the table, writes `results.json` and
//!   `results.md`.
//!   `scripts/bench.sh` installs the peers, builds, and calls it.
//! - `kvs-bench device …`: our device in classic mode as its own measured process (used by
//!   `run`; see [`device`]).
//! - `kvs-bench signaling-side …`: split mode's signaling-only side as its own measured
//!   process (used by `run`'s split scenario; see [`signaling_side`]).
//!
//! The counting allocator ([`alloc`]) is this program's global allocator, so the device's
//! heap figures come from the SDK code running here. This program owns measuring; it must not
//! hold logic the SDK needs.

mod alloc;
mod child;
mod device;
mod fleet;
mod loop_camera;
mod procfs;
mod report;
mod run;
mod signaling_side;
mod viewer;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Debug, Parser)]
#[command(name = "kvs-bench", about = "Benchmarks of kvs-webrtc against peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every scenario (or `--only …`), print the table, write the JSON.
    Run(run::RunArgs),
    /// Our device as a measured process (driven by `run` over stdin/stdout).
    Device(device::DeviceArgs),
    /// Split mode's signaling-only side as a measured process (driven by `run`).
    SignalingSide(signaling_side::SignalingSideArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Every line through the one redaction: no dependency can log a token or a key.
        .with_writer(|| kvs_aws::redact::RedactingWriter::new(std::io::stderr()))
        .init();
    // The signaling side runs on one thread, as the `kvs-signaling-only` program does (a
    // multi-thread runtime alone costs it ~60 KB of heap).
    let runtime = match cli.command {
        Command::SignalingSide(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        // As the kvs-webrtc program builds its runtime.
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .max_io_events_per_tick(128)
            .build()?,
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Device(args) => device::run(args).await,
            Command::SignalingSide(args) => signaling_side::run(args).await,
        }
    })
}
