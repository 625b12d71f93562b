//! `kvs-webrtc` — the device program.
//!
//! With no configuration it runs the embedded default: a local KVS-compatible signaling
//! service, the device streaming a live test pattern and tone, and a viewer web page, all on one
//! loopback port. Options and a TOML file (`--config`, with `KVS_WEBRTC_*` environment
//! overrides) choose other sources, limits and signaling.

mod service_cmd;
mod split_cmd;
mod web;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kvs_app::{
    AudioSourceConfig, Device, DeviceConfig, DeviceParts, EventBus, EventKind, SignalingConfig,
    VideoSourceConfig,
};
use kvs_signaling::Role;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kvs-webrtc",
    version,
    about = "Stream live video and audio to WebRTC viewers (KVS signaling)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    device: DeviceArgs,
}

/// The device's options: where signaling is, the sources, the limits.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DeviceArgs {
    /// TOML configuration file; KVS_WEBRTC_<SECTION>__<KEY> variables override it.
    #[arg(short, long, env = "KVS_WEBRTC_CONFIG")]
    config: Option<PathBuf>,

    /// Address of the embedded signaling service and viewer page (port 0 = any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,

    /// Signaling channel name (or ARN, with --region).
    #[arg(long)]
    channel: Option<String>,

    /// Stream through Amazon KVS in this region (credentials: AWS_* variables or
    /// ~/.aws/credentials; see the README) instead of the embedded service.
    #[arg(long, conflicts_with = "signaling_url")]
    region: Option<String>,

    /// KVS control-plane endpoint override (e.g. https://127.0.0.1:8443 for
    /// `kvs-webrtc service`); implies --region us-west-2 when no region is given.
    #[arg(long, conflicts_with = "signaling_url")]
    endpoint: Option<String>,

    /// Extra CA certificate (PEM) to trust for --endpoint.
    #[arg(long)]
    ca_file: Option<PathBuf>,

    /// Use an external KVS-protocol signaling endpoint (ws://…) that needs no signing.
    #[arg(long, requires = "channel_arn")]
    signaling_url: Option<String>,

    /// Channel ARN for --signaling-url.
    #[arg(long)]
    channel_arn: Option<String>,

    /// Maximum concurrent viewers; further offers are refused with a reason.
    #[arg(long)]
    max_viewers: Option<usize>,

    /// Address to offer ICE host candidates on (repeatable); default: every usable interface.
    #[arg(long = "media-bind")]
    media_bind: Vec<IpAddr>,

    /// A STUN server of our own for server-reflexive candidates, e.g. stun:203.0.113.1:3478
    /// (repeatable; KVS's regional one and the UDP TURN servers are asked anyway).
    #[arg(long = "stun-uri", value_name = "URI")]
    stun_uris: Vec<String>,

    /// Do not allocate relayed candidates on the TURN servers signaling hands out.
    #[arg(long, conflicts_with = "relay_only")]
    no_turn: bool,

    /// Offer relayed (TURN) candidates only: viewers never learn the device's addresses.
    #[arg(long)]
    relay_only: bool,

    /// Extra CA certificate (PEM) to trust for turns: (TLS) servers.
    #[arg(long, value_name = "FILE")]
    turn_ca_file: Option<PathBuf>,

    /// Restart ICE from the device when nothing has come from a viewer for this many
    /// milliseconds (0: never; default 2000).
    #[arg(long, value_name = "MS")]
    ice_restart_after_ms: Option<u64>,

    /// Stream an Annex-B H.264 file (looped) instead of the test pattern.
    #[arg(long, conflicts_with = "h264_stdin")]
    h264_file: Option<PathBuf>,

    /// Read Annex-B H.264 from standard input (e.g. `ffmpeg … -f h264 - | kvs-webrtc --h264-stdin`).
    #[arg(long)]
    h264_stdin: bool,

    /// Stream VP8 from an IVF file (looped, at the file's own timing).
    #[arg(long, conflicts_with_all = ["h264_file", "h264_stdin"])]
    vp8_file: Option<PathBuf>,

    /// Read VP8 in IVF from standard input (e.g. `ffmpeg … -c:v libvpx -f ivf - | kvs-webrtc --vp8-stdin`).
    #[arg(long, conflicts_with_all = ["h264_file", "h264_stdin", "vp8_file"])]
    vp8_stdin: bool,

    /// Stream an Annex-B H.265 file (looped, at --fps).
    #[arg(long, conflicts_with_all = ["h264_file", "h264_stdin", "vp8_file", "vp8_stdin"])]
    h265_file: Option<PathBuf>,

    /// Read Annex-B H.265 from standard input (e.g. `ffmpeg … -c:v libx265 -f hevc - | kvs-webrtc --h265-stdin`).
    #[arg(long, conflicts_with_all = ["h264_file", "h264_stdin", "vp8_file", "vp8_stdin", "h265_file"])]
    h265_stdin: bool,

    /// Frame rate for --h264-file / --h264-stdin / --h265-file / --h265-stdin /
    /// --raw-video-cmd, or of the test pattern.
    #[arg(long)]
    fps: Option<u32>,

    /// Live capture from any camera: raw I420 pictures (--size) read from this shell
    /// command's stdout and encoded here, e.g.
    /// "ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -".
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["h264_file", "h264_stdin", "vp8_file", "vp8_stdin", "h265_file", "h265_stdin", "no_video"])]
    raw_video_cmd: Option<String>,

    /// Picture size WxH of --raw-video-cmd's output (or of the test pattern).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Option<(u32, u32)>,

    /// Live capture from any microphone: S16LE PCM read from this shell command's stdout
    /// (--raw-audio-rate, --raw-audio-channels), encoded to the negotiated codec, e.g.
    /// "arecord -f S16_LE -r 48000 -c 1 -t raw".
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["ogg_file", "no_audio"])]
    raw_audio_cmd: Option<String>,

    /// Sample rate of --raw-audio-cmd's PCM (default 48000).
    #[arg(long, value_name = "HZ")]
    raw_audio_rate: Option<u32>,

    /// Channels of --raw-audio-cmd's PCM, interleaved (default 1).
    #[arg(long, value_name = "N")]
    raw_audio_channels: Option<u16>,

    /// Start a raw capture command again (with backoff) when it exits or stalls, instead of
    /// stopping that source with an error.
    #[arg(long)]
    raw_restart: bool,

    /// A raw capture command that sends no complete picture/period for this long has stalled
    /// (default 5000).
    #[arg(long, value_name = "MS")]
    raw_stall_timeout_ms: Option<u64>,

    /// Stream an Ogg/Opus file (looped) instead of the tone.
    #[arg(long, conflicts_with = "no_audio")]
    ogg_file: Option<PathBuf>,

    /// Send no audio.
    #[arg(long)]
    no_audio: bool,

    /// Send no video.
    #[arg(long, conflicts_with_all = ["h264_file", "h264_stdin", "vp8_file", "vp8_stdin", "h265_file", "h265_stdin"])]
    no_video: bool,

    /// Audio codec: `auto` (Opus, PCMU or PCMA, whichever the viewer offers first), or one
    /// of `opus`, `pcmu`, `pcma` for both directions.
    #[arg(long, value_name = "CODEC")]
    audio_codec: Option<kvs_app::AudioCodecChoice>,

    /// Talk-back: write viewers' audio to this WAV file (48 kHz mono S16LE).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["speaker_cmd", "speaker_device"])]
    speaker_wav: Option<PathBuf>,

    /// Talk-back: feed viewers' audio (48 kHz mono S16LE) to this shell command's stdin,
    /// e.g. "aplay -f S16_LE -r 48000".
    #[arg(long, value_name = "COMMAND", conflicts_with = "speaker_device")]
    speaker_cmd: Option<String>,

    /// Talk-back: play viewers' audio on this sound card output device ("default", or a name
    /// as the host lists it). Needs a build with the `sound-card` feature
    /// (`cargo build --release --features sound-card`, libasound2-dev installed).
    #[arg(long, value_name = "DEVICE")]
    speaker_device: Option<String>,

    /// Receive viewers' camera: record each session that sends video to an MP4 file
    /// (H.264 + Opus) in this directory.
    #[arg(long, value_name = "DIR")]
    record_dir: Option<PathBuf>,

    /// Largest recording file in bytes (default 1 GiB); the rest of a session is not recorded.
    #[arg(long, value_name = "BYTES")]
    record_max_bytes: Option<u64>,

    /// Receive viewers' camera: decode it and feed raw I420 frames to this shell command's
    /// stdin ({width} and {height} are replaced by the picture size), e.g.
    /// "ffplay -f rawvideo -pixel_format yuv420p -video_size {width}x{height} -".
    #[arg(long, value_name = "COMMAND")]
    video_player_cmd: Option<String>,

    /// Remote control as a RainMaker-compatible node: a TOML file with a [rainmaker] section
    /// (docs/RAINMAKER.md); the same section in --config works too.
    #[arg(long, value_name = "FILE")]
    rainmaker_config: Option<PathBuf>,

    /// Adaptive bitrate: negotiate congestion feedback (TWCC) and make the encoder's target
    /// follow the lowest viewer's estimate (`[adaptive_bitrate] enabled`).
    #[arg(long)]
    adaptive_bitrate: bool,

    /// Adaptive bitrate's floor in kbit/s (`adaptive_bitrate.min_kbps`, default 150).
    #[arg(long, value_name = "KBPS")]
    min_kbps: Option<u32>,

    /// Adaptive bitrate's ceiling in kbit/s (`adaptive_bitrate.max_kbps`, default 2500).
    #[arg(long, value_name = "KBPS")]
    max_kbps: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local KVS-compatible signaling service on its own (REST control plane,
    /// WebSocket data plane, SigV4, TLS).
    Service(service_cmd::ServiceArgs),
    /// Split mode on one machine, no AWS account: the local service and page, an always-on
    /// signaling-only side, and a streaming-only process woken when a viewer comes.
    Split(split_cmd::SplitArgs),
    /// The always-on half of split mode: holds the KVS signaling connection and wakes the
    /// streaming side over the link when a viewer's offer arrives.
    SignalingOnly(split_cmd::SignalingOnlyArgs),
    /// The streaming half of split mode: streams to the viewers the link brings, and sleeps
    /// when none is left.
    StreamingOnly(split_cmd::StreamingOnlyArgs),
}

impl DeviceArgs {
    /// The media options again, as arguments for a streaming-only process.
    pub(crate) fn media_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            args.push(flag.to_owned());
            args.extend(value);
        };
        if let Some(c) = &self.config {
            push("--config", Some(c.to_string_lossy().into_owned()));
        }
        if let Some(n) = self.max_viewers {
            push("--max-viewers", Some(n.to_string()));
        }
        if self.adaptive_bitrate {
            push("--adaptive-bitrate", None);
        }
        if let Some(k) = self.min_kbps {
            push("--min-kbps", Some(k.to_string()));
        }
        if let Some(k) = self.max_kbps {
            push("--max-kbps", Some(k.to_string()));
        }
        for ip in &self.media_bind {
            push("--media-bind", Some(ip.to_string()));
        }
        for uri in &self.stun_uris {
            push("--stun-uri", Some(uri.clone()));
        }
        if self.no_turn {
            push("--no-turn", None);
        }
        if self.relay_only {
            push("--relay-only", None);
        }
        if let Some(f) = &self.turn_ca_file {
            push("--turn-ca-file", Some(f.to_string_lossy().into_owned()));
        }
        if let Some(ms) = self.ice_restart_after_ms {
            push("--ice-restart-after-ms", Some(ms.to_string()));
        }
        if let Some(f) = &self.h264_file {
            push("--h264-file", Some(f.to_string_lossy().into_owned()));
        }
        if self.h264_stdin {
            push("--h264-stdin", None);
        }
        if let Some(f) = &self.vp8_file {
            push("--vp8-file", Some(f.to_string_lossy().into_owned()));
        }
        if self.vp8_stdin {
            push("--vp8-stdin", None);
        }
        if let Some(f) = &self.h265_file {
            push("--h265-file", Some(f.to_string_lossy().into_owned()));
        }
        if self.h265_stdin {
            push("--h265-stdin", None);
        }
        if let Some(fps) = self.fps {
            push("--fps", Some(fps.to_string()));
        }
        if let Some(c) = &self.raw_video_cmd {
            push("--raw-video-cmd", Some(c.clone()));
        }
        if let Some((w, h)) = self.size {
            push("--size", Some(format!("{w}x{h}")));
        }
        if let Some(c) = &self.raw_audio_cmd {
            push("--raw-audio-cmd", Some(c.clone()));
        }
        if let Some(r) = self.raw_audio_rate {
            push("--raw-audio-rate", Some(r.to_string()));
        }
        if let Some(c) = self.raw_audio_channels {
            push("--raw-audio-channels", Some(c.to_string()));
        }
        if self.raw_restart {
            push("--raw-restart", None);
        }
        if let Some(ms) = self.raw_stall_timeout_ms {
            push("--raw-stall-timeout-ms", Some(ms.to_string()));
        }
        if let Some(f) = &self.ogg_file {
            push("--ogg-file", Some(f.to_string_lossy().into_owned()));
        }
        if self.no_audio {
            push("--no-audio", None);
        }
        if self.no_video {
            push("--no-video", None);
        }
        if let Some(c) = self.audio_codec {
            push("--audio-codec", Some(format!("{c:?}").to_lowercase()));
        }
        if let Some(f) = &self.speaker_wav {
            push("--speaker-wav", Some(f.to_string_lossy().into_owned()));
        }
        if let Some(c) = &self.speaker_cmd {
            push("--speaker-cmd", Some(c.clone()));
        }
        if let Some(d) = &self.speaker_device {
            push("--speaker-device", Some(d.clone()));
        }
        if let Some(d) = &self.record_dir {
            push("--record-dir", Some(d.to_string_lossy().into_owned()));
        }
        if let Some(n) = self.record_max_bytes {
            push("--record-max-bytes", Some(n.to_string()));
        }
        if let Some(c) = &self.video_player_cmd {
            push("--video-player-cmd", Some(c.clone()));
        }
        args
    }

    /// The configuration: file + environment, then the command line on top.
    pub(crate) fn into_config(self) -> Result<DeviceConfig> {
        let mut config = DeviceConfig::load(self.config.as_deref(), std::env::vars())?;
        if let Some(path) = &self.rainmaker_config {
            let node = DeviceConfig::load(Some(path), std::iter::empty::<(String, String)>())
                .with_context(|| format!("reading {}", path.display()))?;
            config.rainmaker = Some(
                node.rainmaker
                    .with_context(|| format!("{} has no [rainmaker] section", path.display()))?,
            );
            config
                .use_rainmaker_credentials()
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
        }
        if let Some(url) = self.signaling_url {
            let channel_arn = self
                .channel_arn
                .context("--signaling-url needs --channel-arn")?;
            config.signaling = SignalingConfig::Url { url, channel_arn };
        }
        let wants_kvs = self.region.is_some() || self.endpoint.is_some();
        if wants_kvs && !matches!(config.signaling, SignalingConfig::Kvs { .. }) {
            config.signaling = SignalingConfig::kvs("kvs-webrtc-demo", "us-west-2");
        }
        match &mut config.signaling {
            SignalingConfig::Embedded {
                channel, listen, ..
            } => {
                if let Some(l) = self.listen {
                    *listen = l;
                }
                if let Some(c) = self.channel {
                    *channel = c;
                }
            }
            SignalingConfig::Kvs {
                channel,
                region,
                endpoint,
                ca_file,
                ..
            } => {
                if let Some(c) = self.channel {
                    *channel = c;
                }
                if let Some(r) = self.region {
                    *region = r;
                }
                if let Some(e) = self.endpoint {
                    *endpoint = Some(e);
                }
                if let Some(f) = self.ca_file {
                    *ca_file = Some(f);
                }
            }
            SignalingConfig::Url { .. } => {}
        }
        if let Some(n) = self.max_viewers {
            config.session.max_viewers = n;
        }
        if self.adaptive_bitrate {
            config.adaptive_bitrate.enabled = true;
        }
        if let Some(k) = self.min_kbps {
            config.adaptive_bitrate.min_kbps = k;
        }
        if let Some(k) = self.max_kbps {
            config.adaptive_bitrate.max_kbps = k;
        }
        if !self.media_bind.is_empty() {
            config.session.media_bind = self.media_bind;
        }
        config.nat.stun_urls.extend(self.stun_uris);
        if self.no_turn {
            config.nat.use_turn = false;
        }
        if self.relay_only {
            config.nat.relay_only = true;
            config.nat.use_turn = true;
        }
        if let Some(f) = self.turn_ca_file {
            config.nat.turn_ca_file = Some(f);
        }
        if let Some(ms) = self.ice_restart_after_ms {
            config.nat.ice_restart_after = std::time::Duration::from_millis(ms);
        }
        if let Some(command) = self.raw_video_cmd {
            let keep = std::mem::take(&mut config.video);
            config.video = match keep {
                VideoSourceConfig::RawCommand { .. } => keep,
                _ => kvs_app::config::raw_video_command(String::new()),
            };
            if let VideoSourceConfig::RawCommand { command: c, .. } = &mut config.video {
                *c = command;
            }
        }
        if let Some(path) = self.h264_file {
            config.video = VideoSourceConfig::H264File {
                path,
                fps: self.fps.unwrap_or(30),
            };
        } else if self.h264_stdin {
            config.video = VideoSourceConfig::H264Stdin { fps: self.fps };
        } else if let Some(path) = self.vp8_file {
            config.video = VideoSourceConfig::Vp8File { path };
        } else if self.vp8_stdin {
            config.video = VideoSourceConfig::Vp8Stdin;
        } else if let Some(path) = self.h265_file {
            config.video = VideoSourceConfig::H265File {
                path,
                fps: self.fps.unwrap_or(30),
            };
        } else if self.h265_stdin {
            config.video = VideoSourceConfig::H265Stdin { fps: self.fps };
        } else if self.no_video {
            config.video = VideoSourceConfig::None;
        }
        match &mut config.video {
            VideoSourceConfig::TestPattern {
                fps, width, height, ..
            }
            | VideoSourceConfig::RawCommand {
                fps, width, height, ..
            } => {
                if let Some(f) = self.fps {
                    *fps = f;
                }
                if let Some((w, h)) = self.size {
                    (*width, *height) = (w, h);
                }
            }
            _ => {}
        }
        if let Some(path) = self.ogg_file {
            config.audio = AudioSourceConfig::OggOpus { path };
        } else if self.no_audio {
            config.audio = AudioSourceConfig::None;
        } else if let Some(command) = self.raw_audio_cmd {
            if !matches!(config.audio, AudioSourceConfig::RawCommand { .. }) {
                config.audio = kvs_app::config::raw_audio_command(String::new());
            }
            if let AudioSourceConfig::RawCommand { command: c, .. } = &mut config.audio {
                *c = command;
            }
        }
        if let AudioSourceConfig::RawCommand {
            sample_rate,
            channels,
            ..
        } = &mut config.audio
        {
            if let Some(r) = self.raw_audio_rate {
                *sample_rate = r;
            }
            if let Some(c) = self.raw_audio_channels {
                *channels = c;
            }
        }
        for (restart, stall_timeout) in config.raw_command_runs() {
            if self.raw_restart {
                *restart = true;
            }
            if let Some(ms) = self.raw_stall_timeout_ms {
                *stall_timeout = std::time::Duration::from_millis(ms);
            }
        }
        if let Some(c) = self.audio_codec {
            config.codecs.audio = c;
        }
        if let Some(path) = self.speaker_wav {
            config.speaker.wav = Some(path);
            config.speaker.command = None;
            config.speaker.device = None;
        }
        if let Some(cmd) = self.speaker_cmd {
            config.speaker.command = Some(cmd);
            config.speaker.wav = None;
            config.speaker.device = None;
        }
        if let Some(device) = self.speaker_device {
            config.speaker.device = Some(device);
            config.speaker.wav = None;
            config.speaker.command = None;
        }
        if let Some(dir) = self.record_dir {
            config.receive.record_dir = Some(dir);
        }
        if let Some(n) = self.record_max_bytes {
            config.receive.record_max_bytes = n;
        }
        if let Some(cmd) = self.video_player_cmd {
            config.receive.video_player_cmd = Some(cmd);
        }
        config
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid configuration")?;
        Ok(config)
    }
}

/// I/O events the runtime takes per poll (tokio's default 1024 costs 12 KB of event array; a
/// device has a few sockets, and the peer engine batches its datagrams itself).
const IO_EVENTS_PER_TICK: usize = 128;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| {
                    "info,str0m=warn,dimpl=warn,turn_client_proto=warn,turn_client_rustls=warn,stun_proto=warn,turn_types=warn".into()
                }),
        )
        // Every line through the one redaction: no dependency can log a token or a key.
        .with_writer(|| kvs_aws::redact::RedactingWriter::new(std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Service(args)) => return service_cmd::run(args).await,
        Some(Command::Split(args)) => return split_cmd::run_split(args).await,
        Some(Command::SignalingOnly(args)) => return split_cmd::run_signaling_only(args).await,
        Some(Command::StreamingOnly(args)) => return split_cmd::run_streaming_only(args).await,
        None => {}
    }
    let config = cli.device.into_config()?;
    match config.signaling {
        SignalingConfig::Embedded { .. } => run_embedded(config).await,
        _ => run_external(config).await,
    }
}

async fn run_embedded(config: DeviceConfig) -> Result<()> {
    let config_for_node = config.clone();
    let page = web::PageConfig::new();
    let bus = EventBus::new();
    let report = tokio::spawn(report_events(bus.subscribe()));
    let running =
        kvs_app::embedded::start_with_events(config, Some(web::routes(page.clone())), bus)
            .await
            .context("starting the embedded default")?;
    page.publish(&running.local);
    let node = start_rainmaker(
        &config_for_node,
        std::sync::Arc::new(running.device.controller()),
    )?;
    println!(
        "Signaling:   {} (channel {})",
        running.signaling_url, running.channel_arn
    );
    println!(
        "Device path: {} (TLS, SigV4; CA {})",
        running.control_plane,
        running.ca_path.display()
    );
    wait_for_stop().await;
    println!("Stopping…");
    if let Some(node) = node {
        node.stop().await;
    }
    running.shutdown().await;
    report.abort();
    Ok(())
}

async fn run_external(config: DeviceConfig) -> Result<()> {
    let camera =
        kvs_app::sources::open_camera(&config.video).context("opening the video source")?;
    let microphone = kvs_app::sources::open_microphone_with(&config.audio, config.codecs.audio)
        .context("opening the audio source")?;
    let client = kvs_app::signaling::build_client(&config.signaling, Role::Master, None)
        .context("setting up signaling")?;
    let what = match &config.signaling {
        SignalingConfig::Kvs {
            channel,
            region,
            endpoint,
            ..
        } => match endpoint {
            Some(e) => format!("channel {channel} via {e} ({region})"),
            None => format!("channel {channel} on Amazon KVS in {region}"),
        },
        SignalingConfig::Url { url, channel_arn } => format!("{channel_arn} via {url}"),
        SignalingConfig::Embedded { .. } => unreachable!("handled by run_embedded"),
    };
    let bus = EventBus::new();
    let report = tokio::spawn(report_events(bus.subscribe()));
    let config_for_node = config.clone();
    let parts = DeviceParts {
        config,
        signaling: client,
        camera,
        microphone,
    };
    let device = Device::start_with_events(parts, bus).await?;
    println!("Streaming as master of {what}");
    let node = start_rainmaker(&config_for_node, std::sync::Arc::new(device.controller()))?;
    wait_for_stop().await;
    if let Some(node) = node {
        node.stop().await;
    }
    device.shutdown().await;
    report.abort();
    Ok(())
}

/// Starts remote control (a RainMaker node) when the configuration has a `[rainmaker]` section.
pub(crate) fn start_rainmaker(
    config: &DeviceConfig,
    control: std::sync::Arc<dyn kvs_app::DeviceControl>,
) -> Result<Option<kvs_app::rainmaker::RainmakerNode>> {
    let Some(rainmaker) = &config.rainmaker else {
        return Ok(None);
    };
    let settings =
        kvs_app::rainmaker::settings_from(rainmaker, kvs_app::rainmaker::camera_state_from(config));
    let node = kvs_app::rainmaker::RainmakerNode::start(rainmaker, settings, control)
        .context("starting remote control (RainMaker node)")?;
    println!(
        "Remote control: RainMaker node {} via {}",
        node.node_id(),
        rainmaker.broker
    );
    Ok(Some(node))
}

/// Print what the device is doing, one line per milestone, to stdout.
pub(crate) async fn report_events(mut events: tokio::sync::broadcast::Receiver<kvs_app::AppEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(e) => {
                let show = matches!(
                    e.kind,
                    EventKind::SignalingConnected
                        | EventKind::SignalingDisconnected
                        | EventKind::SignalingReconnectScheduled
                        | EventKind::SignalingRenewed
                        | EventKind::SignalingError
                        | EventKind::PeerConnectionRequested
                        | EventKind::PeerConnected
                        | EventKind::PeerDisconnected
                        | EventKind::PeerFailed
                        | EventKind::PeerRefused
                        | EventKind::FirstFrameSent
                        | EventKind::StreamingStopped
                        | EventKind::IceCandidateGathered
                        | EventKind::IcePairSelected
                        | EventKind::IceRestart
                        | EventKind::TurnError
                        | EventKind::Error
                );
                if show {
                    println!("{e}");
                }
            }
            Err(RecvError::Lagged(n)) => println!("({n} events skipped)"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// `640x480` → (640, 480).
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 640x480"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{s:?}: {v:?} is not a size: {e}"))
    };
    Ok((n(w)?, n(h)?))
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_stop() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod raw_capture_cli_tests {
    use super::*;

    #[test]
    fn raw_capture_options_become_the_config_and_reach_split_mode() {
        let args = [
            "kvs-webrtc",
            "--raw-video-cmd",
            "ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -",
            "--size",
            "320x240",
            "--fps",
            "15",
            "--raw-audio-cmd",
            "arecord -t raw",
            "--raw-audio-rate",
            "16000",
            "--raw-restart",
            "--raw-stall-timeout-ms",
            "2000",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        // Split mode's streaming side gets the same options back.
        let again = Cli::try_parse_from(
            std::iter::once("kvs-webrtc".to_owned()).chain(cli.device.media_args()),
        )
        .unwrap();
        for device in [cli.device, again.device] {
            let config = device.into_config().unwrap();
            let VideoSourceConfig::RawCommand {
                command,
                width,
                height,
                fps,
                restart,
                stall_timeout,
                ..
            } = &config.video
            else {
                panic!("{:?}", config.video)
            };
            assert!(command.starts_with("ffmpeg -f v4l2"));
            assert_eq!((*width, *height, *fps, *restart), (320, 240, 15, true));
            assert_eq!(*stall_timeout, std::time::Duration::from_secs(2));
            let AudioSourceConfig::RawCommand {
                sample_rate,
                channels,
                restart,
                ..
            } = &config.audio
            else {
                panic!("{:?}", config.audio)
            };
            assert_eq!((*sample_rate, *channels, *restart), (16_000, 1, true));
        }
        assert!(parse_size("640x").is_err() && parse_size("640").is_err());
        assert_eq!(parse_size("1280X720"), Ok((1280, 720)));
        assert!(
            Cli::try_parse_from(["kvs-webrtc", "--raw-video-cmd", "x", "--h264-stdin"]).is_err()
        );
        // An odd size is refused by the configuration check, naming it.
        let odd = Cli::try_parse_from(["kvs-webrtc", "--raw-video-cmd", "x", "--size", "321x240"])
            .unwrap();
        let e = format!("{:#}", odd.device.into_config().unwrap_err());
        assert!(e.contains("321x240"), "{e}");
    }
}
