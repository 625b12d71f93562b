//! `kvs-bench device`: our device, in classic mode, as its own process so that its heap, RSS
//! and CPU time are its own.
//!
//! It is the SDK as an integrator builds it: [`kvs_app::Device`] with the plain WebSocket
//! signaling client pointed at the local service, the test-pattern camera and the Opus tone.
//! The software encoders run inside their own allocator buckets (see [`crate::alloc`]) and
//! hand the SDK a copy of each frame, as a hardware encoder would hand it a buffer.
//!
//! Protocol: one JSON object per line on stdout (`ready`, `timing`, `peer`, `stats`, and with
//! `--nat-events` also `nat`); commands one per line on stdin (`stats`, `quit`). Logs go to
//! stderr.
//!
//! NAT traversal: `--ice-servers-from` asks a local service's GetIceServerConfig for the
//! channel's ICE servers (the TURN credentials it mints), as a KVS master does, and hands them
//! to the signaling client; `--relay-only`, `--no-turn` and `--stun-uri` are the `[nat]`
//! settings `kvs-webrtc` takes under the same names.

use crate::alloc::{self, Bucket};
use crate::procfs;
use anyhow::{Context, Result};
use bytes::Bytes;
use kvs_app::{AudioSourceConfig, Device, DeviceConfig, DeviceParts, EventKind, VideoSourceConfig};
use kvs_platform::{
    AudioCapture, AudioFormat, CaptureError, EncodedFrame, VideoCapture, VideoFormat,
};
use kvs_signaling::{data_plane_url, Role, WsClientConfig, WsSignalingClient};
use serde_json::json;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// `ws://…` data plane of the local service.
    #[arg(long)]
    pub signaling_url: String,
    #[arg(long)]
    pub channel_arn: String,
    #[arg(long, default_value_t = 100)]
    pub max_viewers: usize,
    /// Test-pattern bitrate (bit/s).
    #[arg(long, default_value_t = 2_000_000)]
    pub bitrate: u32,
    #[arg(long)]
    pub no_video: bool,
    #[arg(long)]
    pub no_audio: bool,
    /// Replay a pre-encoded noise loop at `--bitrate` instead of encoding the test pattern
    /// live (see [`crate::loop_camera`]).
    #[arg(long)]
    pub loop_video: bool,
    /// A local service's control plane (`http://…`, unsigned: `--no-auth`): fetch the
    /// channel's ICE servers (GetIceServerConfig, TURN credentials included) before starting.
    #[arg(long)]
    pub ice_servers_from: Option<String>,
    /// Offer relayed candidates only (`nat.relay_only`).
    #[arg(long, conflicts_with = "no_turn")]
    pub relay_only: bool,
    /// Make no TURN allocation (`nat.use_turn = false`).
    #[arg(long)]
    pub no_turn: bool,
    /// A STUN server of our own, `stun:host[:port]` (`nat.stun_urls`; repeatable).
    #[arg(long = "stun-uri")]
    pub stun_uris: Vec<String>,
    /// Report offers received, candidates gathered, pairs selected and TURN errors as `nat`
    /// lines, each with its time on `CLOCK_MONOTONIC`.
    #[arg(long)]
    pub nat_events: bool,
    /// Adaptive bitrate on (`[adaptive_bitrate] enabled`): TWCC and str0m's estimator on every
    /// session, the camera's target following the estimates.
    #[arg(long)]
    pub adaptive_bitrate: bool,
}

/// The channel's ICE servers from a local service's GetIceServerConfig (plain HTTP, unsigned).
async fn fetch_ice_servers(
    control_plane: &str,
    channel_arn: &str,
) -> Result<Vec<kvs_signaling::IceServer>> {
    use kvs_signaling::kvs::api;
    let url = format!(
        "{}{}",
        control_plane.trim_end_matches('/'),
        api::GET_ICE_PATH
    );
    let body = api::ice_request(channel_arn, None);
    let answer = kvs_aws::https::send(
        None,
        &kvs_aws::https::Request {
            method: "POST",
            url: &url,
            headers: &[("content-type", "application/json")],
            body: body.as_bytes(),
        },
        api::MAX_ANSWER_BYTES,
        std::time::Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("GetIceServerConfig at {url}"))?;
    if answer.status != 200 {
        anyhow::bail!(
            "GetIceServerConfig at {url}: HTTP {}: {}",
            answer.status,
            answer.body_text()
        );
    }
    Ok(api::parse_ice_servers(&answer.body, api::MAX_ICE_SERVERS)?)
}

/// Runs a capture's calls inside an allocator bucket and copies each frame out of it.
struct Isolated<T: ?Sized> {
    bucket: Bucket,
    inner: Box<T>,
}

impl<T: ?Sized> Isolated<T> {
    fn scoped<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = alloc::enter(self.bucket);
        f(&mut self.inner)
    }

    fn copy_out(
        &mut self,
        frame: Result<Option<EncodedFrame>, CaptureError>,
    ) -> Result<Option<EncodedFrame>, CaptureError> {
        // Allocated in the SDK's bucket: from here on the frame is the SDK's memory.
        frame.map(|f| {
            f.map(|f| EncodedFrame::new(Bytes::copy_from_slice(&f.data), f.timestamp_us, f.kind))
        })
    }
}

impl VideoCapture for Isolated<dyn VideoCapture> {
    fn format(&self) -> VideoFormat {
        self.inner.format()
    }
    fn start(&mut self) -> Result<(), CaptureError> {
        self.scoped(|c| c.start())
    }
    fn stop(&mut self) {
        self.scoped(|c| c.stop())
    }
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        let frame = self.scoped(|c| c.next_frame());
        self.copy_out(frame)
    }
    fn request_keyframe(&mut self) -> bool {
        self.scoped(|c| c.request_keyframe())
    }
    fn set_bitrate(&mut self, bps: u32) -> Result<(), CaptureError> {
        self.scoped(|c| c.set_bitrate(bps))
    }
    fn bitrate(&self) -> Option<u32> {
        self.inner.bitrate()
    }
    fn keyframe_trigger(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        self.inner.keyframe_trigger()
    }
}

impl AudioCapture for Isolated<dyn AudioCapture> {
    fn format(&self) -> AudioFormat {
        self.inner.format()
    }
    fn start(&mut self) -> Result<(), CaptureError> {
        self.scoped(|c| c.start())
    }
    fn stop(&mut self) {
        self.scoped(|c| c.stop())
    }
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        let frame = self.scoped(|c| c.next_frame());
        self.copy_out(frame)
    }
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Milliseconds from "… answer sent 0 ms, ICE connected 29 ms, …" (the device's timing
/// event, see `kvs_app::device::describe_timing`).
pub(crate) fn timing_field(message: &str, label: &str) -> Option<f64> {
    let rest = &message[message.find(label)? + label.len()..];
    rest.trim_start().split(' ').next()?.parse().ok()
}

pub async fn run(args: DeviceArgs) -> Result<()> {
    let mut config = DeviceConfig::default();
    config.session.max_viewers = args.max_viewers;
    config.adaptive_bitrate.enabled = args.adaptive_bitrate;
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    config.video = if args.no_video {
        VideoSourceConfig::None
    } else {
        VideoSourceConfig::TestPattern {
            width: 640,
            height: 480,
            fps: 30,
            bitrate_bps: args.bitrate,
            gop: 30,
        }
    };
    config.audio = if args.no_audio {
        AudioSourceConfig::None
    } else {
        AudioSourceConfig::Tone
    };
    config.nat.relay_only = args.relay_only;
    config.nat.use_turn = !args.no_turn;
    config.nat.stun_urls.extend(args.stun_uris.iter().cloned());
    let ice_servers = match &args.ice_servers_from {
        Some(control_plane) => fetch_ice_servers(control_plane, &args.channel_arn).await?,
        None => Vec::new(),
    };

    // The encoders are created (and the video encoder run once, which is when openh264 sets
    // itself up) with nothing else running, so glibc's figures before and after are theirs.
    let c_before = alloc::malloc_in_use();
    let rust_before = alloc::stats();
    let camera = {
        let _g = alloc::enter(Bucket::VideoEncoder);
        let mut camera = if args.loop_video && !args.no_video {
            let cam = crate::loop_camera::LoopCamera::new(args.bitrate)?;
            tracing::info!(bitrate = cam.measured_bitrate(), "video loop encoded");
            Some(Box::new(cam) as Box<dyn VideoCapture>)
        } else {
            kvs_app::sources::open_camera(&config.video).context("opening the camera")?
        };
        if let Some(c) = camera.as_mut() {
            c.start().context("starting the camera")?;
            let _ = c.next_frame().context("encoding a first frame")?;
        }
        camera
    };
    let microphone = {
        let _g = alloc::enter(Bucket::AudioEncoder);
        kvs_app::sources::open_microphone(&config.audio).context("opening the microphone")?
    };
    let rust_after = alloc::stats();
    let rust_encoders = (rust_after.video_encoder.live_bytes + rust_after.audio_encoder.live_bytes
        - rust_before.video_encoder.live_bytes
        - rust_before.audio_encoder.live_bytes)
        + (rust_after.header_bytes - rust_before.header_bytes);
    let encoder_c_bytes = alloc::malloc_in_use() - c_before - rust_encoders;

    let camera = camera.map(|inner| {
        Box::new(Isolated {
            bucket: Bucket::VideoEncoder,
            inner,
        }) as Box<dyn VideoCapture>
    });
    let microphone = microphone.map(|inner| {
        Box::new(Isolated {
            bucket: Bucket::AudioEncoder,
            inner,
        }) as Box<dyn AudioCapture>
    });

    let role = Role::Master;
    let url = data_plane_url(&args.signaling_url, &args.channel_arn, &role)
        .context("building the data plane URL")?;
    let mut ws_config = WsClientConfig::new(url, role);
    ws_config.ice_servers = ice_servers;
    let signaling = Arc::new(WsSignalingClient::with_config(ws_config));
    // Subscribed before the start, so no early event (signaling connected) is missed.
    let bus = kvs_app::EventBus::new();
    let mut events = bus.subscribe();
    let device = Device::start_with_events(
        DeviceParts {
            config,
            signaling,
            camera,
            microphone,
        },
        bus,
    )
    .await
    .context("starting the device")?;
    let started = Instant::now();
    let started_ns = crate::signaling_side::monotonic_ns_of(started);

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Ok(ev) = ev else { continue };
                match ev.kind {
                    EventKind::SignalingConnected => emit(json!({
                        "type": "ready",
                        "t_ns": crate::signaling_side::monotonic_ns(),
                        "started_t_ns": started_ns,
                    })),
                    EventKind::ReceivedOffer
                    | EventKind::IceCandidateGathered
                    | EventKind::IcePairSelected
                    | EventKind::IceRestart
                    | EventKind::TurnError
                        if args.nat_events =>
                    {
                        emit(json!({
                            "type": "nat",
                            "event": format!("{:?}", ev.kind),
                            "peer": ev.peer_id,
                            "message": ev.message,
                            "t_ns": crate::signaling_side::monotonic_ns(),
                            "since_start_ms": started.elapsed().as_secs_f64() * 1000.0,
                        }))
                    }
                    EventKind::FirstFrameSent => emit(json!({
                        "type": "timing",
                        "peer": ev.peer_id,
                        "answer_sent_ms": timing_field(&ev.message, "answer sent"),
                        "ice_connected_ms": timing_field(&ev.message, "ICE connected"),
                        "dtls_connected_ms": timing_field(&ev.message, "DTLS connected"),
                        "first_keyframe_sent_ms": timing_field(&ev.message, "first keyframe sent"),
                    })),
                    EventKind::PeerDisconnected | EventKind::PeerFailed | EventKind::PeerRefused => emit(json!({
                        "type": "peer",
                        "event": format!("{:?}", ev.kind),
                        "peer": ev.peer_id,
                        "message": ev.message,
                    })),
                    _ => {}
                }
            }
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { break };
                match line.trim() {
                    "stats" => emit(stats_json(&device, encoder_c_bytes, started)),
                    // With KVS_BENCH_EXIT_WITHOUT_CLEANUP set, leave without dropping anything,
                    // so a heap profiler (see KVS_BENCH_DEVICE_WRAPPER) reports everything
                    // still held: two runs of different lengths show what grows.
                    "quit" if std::env::var_os("KVS_BENCH_EXIT_WITHOUT_CLEANUP").is_some() => {
                        std::process::exit(0)
                    }
                    "quit" => break,
                    other => emit(json!({"type": "error", "message": format!("unknown command {other:?}")})),
                }
            }
        }
    }
    device.shutdown().await;
    Ok(())
}

fn stats_json(
    device: &kvs_app::DeviceHandle,
    encoder_c_bytes: i64,
    started: Instant,
) -> serde_json::Value {
    let heap = alloc::stats();
    let threads = procfs::thread_cpu_by_name();
    let capture_ns: u64 = threads
        .iter()
        .filter(|(name, _)| name.starts_with("kvs-capture"))
        .map(|(_, ns)| *ns)
        .sum();
    let malloc = alloc::malloc_in_use();
    // What glibc holds for Rust blocks: their bytes, headers, and about 16 bytes of chunk
    // overhead and rounding each.
    let blocks =
        heap.sdk.live_blocks + heap.video_encoder.live_blocks + heap.audio_encoder.live_blocks;
    let rust_in_malloc = heap.sdk.live_bytes
        + heap.video_encoder.live_bytes
        + heap.audio_encoder.live_bytes
        + heap.header_bytes
        + 16 * blocks;
    let c_heap = malloc - rust_in_malloc;
    json!({
        "type": "stats",
        "uptime_s": started.elapsed().as_secs_f64(),
        "viewers": device.viewer_count(),
        "heap": heap,
        "malloc_in_use": malloc,
        "c_heap_estimate": c_heap,
        "c_heap_sdk_estimate": c_heap - encoder_c_bytes,
        "encoder_c_bytes": encoder_c_bytes,
        "rss": procfs::rss_bytes(),
        "cpu_total_ns": procfs::process_cpu().as_nanos() as u64,
        "cpu_capture_ns": capture_ns,
        "threads": threads,
    })
}
