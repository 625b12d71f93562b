//! End to end in one process: the embedded default (local signaling service + device streaming
//! the test pattern and tone) and a Rust viewer (str0m) that joins through the real signaling
//! service over WebSocket, like a browser would, then decodes what it receives.
//!
//! Asserts what a user cares about: video decodes at 640x480 starting with a keyframe, the
//! picture moves, audio packets decode to sound, the data channel echoes bytes intact, and an
//! offer beyond the viewer limit is refused with a reason while the first viewer keeps going.

use kvs_app::{AudioSourceConfig, DeviceConfig, SignalingConfig, VideoSourceConfig};
use kvs_peer::viewer::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerEvent};
use openh264::formats::YUVSource;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn config(max_viewers: usize) -> DeviceConfig {
    config_with_sources(
        max_viewers,
        VideoSourceConfig::default(),
        AudioSourceConfig::default(),
    )
}

fn config_with_sources(
    max_viewers: usize,
    video: VideoSourceConfig,
    audio: AudioSourceConfig,
) -> DeviceConfig {
    let mut config = DeviceConfig {
        signaling: SignalingConfig::Embedded {
            channel: "rust-viewer-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: Some(
                std::env::temp_dir().join(format!("kvs-rust-viewer-{}", std::process::id())),
            ),
        },
        video,
        audio,
        ..DeviceConfig::default()
    };
    config.session.max_viewers = max_viewers;
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    config
}

/// Connect to signaling as `client_id`, send the offer and our candidates.
async fn join(signaling_url: &str, channel_arn: &str, client_id: &str) -> SignaledViewer {
    let client = viewer_signaling_client(signaling_url, channel_arn, client_id).unwrap();
    SignaledViewer::join(&client, Some(format!("{client_id}-offer")))
        .await
        .expect("viewer connects to signaling")
}

/// What the test observed, step by step.
#[derive(Default)]
struct Observed {
    connected: bool,
    channel_open: bool,
    video_frames: Vec<Vec<u8>>,
    decoded_lumas: Vec<Vec<u8>>,
    first_video_decoded: Option<bool>,
    audio_packets: usize,
    audio_peak: f32,
    echoes: Vec<(Vec<u8>, bool)>,
    refusal: Option<(String, String)>,
}

/// Drive one viewer: relay signaling to it, decode its media, until `done` says so.
async fn drive(j: &mut SignaledViewer, obs: &mut Observed, done: impl Fn(&Observed) -> bool) {
    let mut h264 = openh264::decoder::Decoder::new().unwrap();
    let mut opus = opus_rs::OpusDecoder::new(48_000, 1).unwrap();
    let mut pcm = vec![0f32; 5760];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(obs) {
        // The join helper applies answers and candidates; a lost link, a rejected answer or
        // a dead viewer task is an error here.
        let event = match j.next(deadline).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!(
                "timed out: connected={} channel_open={} video={} decoded={} audio={} echoes={}",
                obs.connected,
                obs.channel_open,
                obs.video_frames.len(),
                obs.decoded_lumas.len(),
                obs.audio_packets,
                obs.echoes.len()
            ),
            Err(e) => panic!("{e}"),
        };
        let event = match event {
            JoinEvent::Viewer(v) => v,
            JoinEvent::Refused { code, reason } => {
                obs.refusal = Some((code, reason));
                continue;
            }
            JoinEvent::CandidateRejected { candidate, error } => {
                panic!("device candidate {candidate:?} rejected: {error}")
            }
            JoinEvent::Signaling(msg) => {
                panic!(
                    "unexpected signaling message {:?} {:?}",
                    msg.kind, msg.payload
                )
            }
        };
        match event {
            ViewerEvent::Connected => obs.connected = true,
            ViewerEvent::ChannelOpen => obs.channel_open = true,
            ViewerEvent::Data { data, binary } => obs.echoes.push((data.to_vec(), binary)),
            ViewerEvent::Video(m) => {
                let decoded = h264.decode(&m.data).ok().flatten().map(|pic| {
                    let (w, h) = pic.dimensions();
                    assert_eq!((w, h), (640, 480), "decoded picture size");
                    let stride = pic.strides().0;
                    (0..h)
                        .flat_map(|row| pic.y()[row * stride..row * stride + w].to_vec())
                        .collect::<Vec<u8>>()
                });
                obs.first_video_decoded.get_or_insert(decoded.is_some());
                obs.video_frames.push(m.data.to_vec());
                obs.decoded_lumas.extend(decoded);
            }
            ViewerEvent::Audio(m) => {
                let n = opus
                    .decode(&m.data, 5760, &mut pcm)
                    .expect("Opus packet decodes");
                obs.audio_peak = pcm[..n].iter().fold(obs.audio_peak, |p, s| p.max(s.abs()));
                obs.audio_packets += 1;
            }
            ViewerEvent::Closed => panic!("viewer closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_viewer_decodes_moving_video_and_audio_and_a_second_viewer_is_refused() {
    let running = kvs_app::embedded::start(config(1), None)
        .await
        .expect("embedded default starts");
    let (url, arn) = (running.signaling_url.clone(), running.channel_arn.clone());

    let mut first = join(&url, &arn, "rust-viewer-1").await;
    let mut obs = Observed::default();
    drive(&mut first, &mut obs, |o| {
        o.decoded_lumas.len() >= 20 && o.audio_packets >= 20 && o.channel_open
    })
    .await;

    assert!(obs.connected);
    assert_eq!(
        obs.first_video_decoded,
        Some(true),
        "the first video frame a viewer gets is a keyframe"
    );
    let key = kvs_media::h264::frame_kind(&obs.video_frames[0]);
    assert_eq!(key, kvs_platform::FrameKind::Key);
    // The pattern moves: the first and the latest picture differ in many pixels.
    let (a, b) = (&obs.decoded_lumas[0], obs.decoded_lumas.last().unwrap());
    let changed = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.abs_diff(**y) > 20)
        .count();
    assert!(
        changed > a.len() / 100,
        "only {changed} pixels changed between frames"
    );
    assert!(
        obs.audio_peak > 0.1,
        "audio decodes to an audible tone (peak {})",
        obs.audio_peak
    );

    // The device echoes the data channel, text and binary, bytes intact.
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    first
        .viewer()
        .send_data(binary.clone().into(), true)
        .await
        .unwrap();
    first
        .viewer()
        .send_data("héllo device".into(), false)
        .await
        .unwrap();
    drive(&mut first, &mut obs, |o| o.echoes.len() >= 2).await;
    assert_eq!(obs.echoes[0], (binary, true));
    assert_eq!(obs.echoes[1], ("héllo device".as_bytes().to_vec(), false));

    // A second viewer is over the limit of 1: refused with a reason.
    let mut second = join(&url, &arn, "rust-viewer-2").await;
    let mut obs2 = Observed::default();
    drive(&mut second, &mut obs2, |o| o.refusal.is_some()).await;
    let (code, reason) = obs2.refusal.unwrap();
    assert_eq!(code, "SESSION_LIMIT");
    assert!(reason.contains('1'), "the reason names the limit: {reason}");
    assert!(obs2.video_frames.is_empty());

    // …and the first viewer is unaffected: it keeps decoding.
    let before = obs.decoded_lumas.len();
    drive(&mut first, &mut obs, |o| {
        o.decoded_lumas.len() >= before + 15
    })
    .await;

    // Closing the viewer frees its session on the device.
    // The peer only: the signaling link stays up, so the session is freed by the peer close.
    first.viewer().close().await;
    let freed = timeout(WAIT, async {
        while running.device.viewer_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "session count returns to 0 after the viewer closes"
    );
    running.shutdown().await;
}

/// Writes a 2 s Annex-B H.264 clip of the test pattern and a 2 s Ogg/Opus tone into `dir`.
fn write_fixture_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use kvs_media::ogg::{OggOpusWriter, OpusHead};
    use kvs_media::sources::{TestPatternCamera, TestPatternConfig, ToneConfig, ToneMicrophone};
    use kvs_platform::{AudioCapture, VideoCapture};

    std::fs::create_dir_all(dir).unwrap();
    let mut camera = TestPatternCamera::new(TestPatternConfig {
        paced: false,
        ..Default::default()
    })
    .unwrap();
    camera.start().unwrap();
    let mut h264 = Vec::new();
    for _ in 0..60 {
        h264.extend_from_slice(&camera.next_frame().unwrap().unwrap().data);
    }
    let video = dir.join("clip.h264");
    std::fs::write(&video, h264).unwrap();

    let mut mic = ToneMicrophone::new(ToneConfig {
        paced: false,
        ..Default::default()
    })
    .unwrap();
    mic.start().unwrap();
    let head = OpusHead {
        version: 1,
        channels: 1,
        pre_skip: 312,
        input_sample_rate: 48_000,
        output_gain: 0,
        mapping_family: 0,
    };
    let mut writer = OggOpusWriter::new(Vec::new(), 0x6b7673, &head).unwrap();
    for i in 0..100 {
        writer
            .write_packet(&mic.next_frame().unwrap().unwrap().data, i == 99)
            .unwrap();
    }
    let audio = dir.join("tone.opus");
    std::fs::write(&audio, writer.into_inner()).unwrap();
    (video, audio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sources_stream_looped_to_a_rust_viewer() {
    let dir = std::env::temp_dir().join(format!("kvs-file-sources-{}", std::process::id()));
    let (video, audio) = write_fixture_files(&dir);
    let config = config_with_sources(
        2,
        VideoSourceConfig::H264File {
            path: video,
            fps: 30,
        },
        AudioSourceConfig::OggOpus { path: audio },
    );
    let running = kvs_app::embedded::start(config, None)
        .await
        .expect("starts with file sources");
    let mut viewer = join(&running.signaling_url, &running.channel_arn, "file-viewer").await;
    let mut obs = Observed::default();
    // 70 frames > the 60-frame clip: the file loops and keeps decoding.
    drive(&mut viewer, &mut obs, |o| {
        o.decoded_lumas.len() >= 70 && o.audio_packets >= 110
    })
    .await;
    assert_eq!(
        obs.first_video_decoded,
        Some(true),
        "the first frame from a file is its keyframe"
    );
    assert!(
        obs.audio_peak > 0.1,
        "the Ogg/Opus tone decodes (peak {})",
        obs.audio_peak
    );
    running.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn bad_source_files_fail_at_start_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("kvs-bad-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_h264 = dir.join("not.h264");
    std::fs::write(&not_h264, b"\x89PNG\r\n\x1a\n definitely not video").unwrap();
    let (_, good_audio) = write_fixture_files(&dir);
    let bytes = std::fs::read(&good_audio).unwrap();
    let truncated_ogg = dir.join("truncated.opus");
    std::fs::write(&truncated_ogg, &bytes[..bytes.len() / 2 - 7]).unwrap();

    let cases = [
        (
            VideoSourceConfig::H264File {
                path: dir.join("missing.h264"),
                fps: 30,
            },
            AudioSourceConfig::None,
            "missing.h264",
        ),
        (
            VideoSourceConfig::H264File {
                path: not_h264,
                fps: 30,
            },
            AudioSourceConfig::None,
            "invalid media input",
        ),
        (
            VideoSourceConfig::None,
            AudioSourceConfig::OggOpus {
                path: truncated_ogg,
            },
            "invalid media input",
        ),
    ];
    for (video, audio, expected) in cases {
        let err = match kvs_app::embedded::start(config_with_sources(1, video, audio), None).await {
            Ok(_) => panic!("a bad source file must not start"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "error {err:?} should mention {expected:?}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
