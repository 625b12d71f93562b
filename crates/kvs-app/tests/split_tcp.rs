//! Split mode in one process over a TCP link: the local service, the signaling side
//! (`SignalingSide`) and the media side (`media_side::run`, resident), with Rust viewers.
//!
//! Asserts what a user gets: a viewer's offer wakes the sleeping media side and its video
//! decodes at 640x480; the media side sleeps again after the last viewer left; a viewer beyond
//! the device's limit gets the device's refusal through the link; a snapshot comes back as a
//! JPEG of the camera's size.

use kvs_app::split::media_side::{self, MediaSideExit};
use kvs_app::split::{
    LinkAddr, MediaConfig, MediaSideConfig, RelayConfig, SignalingSide, SignalingSideConfig,
    SleepMode, WakeMethod,
};
use kvs_app::{BackoffConfig, DeviceConfig, EventBus, SignalingConfig};
use kvs_bridge::{Command, CommandValue, MediaPresence};
use kvs_peer::viewer::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerEvent};
use openh264::formats::YUVSource;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn device_config(max_viewers: usize) -> DeviceConfig {
    let mut config = DeviceConfig {
        signaling: SignalingConfig::Embedded {
            channel: "split-tcp-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: Some(
                std::env::temp_dir().join(format!("kvs-split-tcp-{}", std::process::id())),
            ),
        },
        ..DeviceConfig::default()
    };
    config.session.max_viewers = max_viewers;
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    config
}

/// Joins, and waits until a 640x480 picture decodes (or the device refuses: `Err`).
async fn watch(url: &str, arn: &str, id: &str) -> Result<SignaledViewer, (String, String)> {
    watch_size(url, arn, id, (640, 480)).await
}

/// Joins, and waits until a picture of `size` decodes (or the device refuses: `Err`). For
/// another size than the configured one, pictures of the configured size may come first.
async fn watch_size(
    url: &str,
    arn: &str,
    id: &str,
    size: (usize, usize),
) -> Result<SignaledViewer, (String, String)> {
    let client = viewer_signaling_client(url, arn, id).unwrap();
    let mut viewer = SignaledViewer::join(&client, Some(format!("{id}-offer")))
        .await
        .expect("viewer connects to signaling");
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match viewer.next(deadline).await {
            Ok(Some(JoinEvent::Viewer(ViewerEvent::Video(m)))) => {
                if let Ok(Some(pic)) = decoder.decode(&m.data) {
                    if pic.dimensions() == size {
                        return Ok(viewer);
                    }
                    assert_eq!(pic.dimensions(), (640, 480), "decoded picture size");
                }
            }
            Ok(Some(JoinEvent::Refused { code, reason })) => return Err((code, reason)),
            Ok(Some(JoinEvent::Viewer(ViewerEvent::Closed))) => panic!("{id}: session closed"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("{id}: no decoded picture within {WAIT:?}"),
            Err(e) => panic!("{id}: {e}"),
        }
    }
}

/// A resident media side on TCP `port` that sleeps 1 s after waking or its last viewer; stop
/// it by sending `true`.
fn resident_media_side(
    port: u16,
    config: &DeviceConfig,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<MediaSideExit, kvs_app::split::MediaSideError>>,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let media = tokio::spawn(media_side::run(
        MediaSideConfig {
            link: LinkAddr::Tcp(format!("127.0.0.1:{port}")),
            device: config.clone(),
            media: MediaConfig {
                idle_after_wake: Duration::from_secs(1),
                idle_after_last_viewer: Duration::from_secs(1),
                ..MediaConfig::default()
            },
            sleep: SleepMode::Resident,
            fallback_ice: Vec::new(),
        },
        EventBus::new(),
        stop,
    ));
    (stop_tx, media)
}

/// A signaling side listening on TCP `port`.
async fn signaling_side(
    port: u16,
    wake: WakeMethod,
    wake_budget: Duration,
    client: std::sync::Arc<dyn kvs_signaling::SignalingClient>,
) -> SignalingSide {
    SignalingSide::start(
        SignalingSideConfig {
            link: LinkAddr::TcpListen(format!("127.0.0.1:{port}").parse().unwrap()),
            wake,
            relay: RelayConfig {
                wake_budget,
                ..RelayConfig::default()
            },
            reconnect: BackoffConfig::default(),
            fallback_ice: Vec::new(),
        },
        client,
    )
    .await
    .expect("signaling side")
}

async fn wait_presence(
    status: &mut tokio::sync::watch::Receiver<kvs_app::split::SignalingSideStatus>,
    want: impl Fn(Option<MediaPresence>) -> bool,
    what: &str,
) {
    tokio::time::timeout(WAIT, status.wait_for(|s| want(s.media)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the media side to be {what}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_wake_a_resident_media_side_over_tcp_and_it_sleeps_after_the_last_viewer() {
    let config = device_config(1);
    let (local, client) = kvs_app::embedded::start_service(&config, None)
        .await
        .expect("local service");
    let port = free_port();
    // Waking is the ReadyQuery on the link itself (the media side is resident).
    let side = signaling_side(port, WakeMethod::None, Duration::from_secs(10), client).await;
    let mut status = side.status();

    let (stop_tx, media) = resident_media_side(port, &config);

    // It starts awake, finds no viewer, and sleeps.
    wait_presence(
        &mut status,
        |p| p == Some(MediaPresence::Sleeping),
        "asleep",
    )
    .await;

    // A viewer's offer wakes it (the link's ReadyQuery), and video decodes.
    let url = local.signaling_url.clone();
    let arn = local.channel_arn.clone();
    let first = watch(&url, &arn, "split-first").await.expect("not refused");
    wait_presence(
        &mut status,
        |p| matches!(p, Some(MediaPresence::Awake { viewers: 1 })),
        "awake with one viewer",
    )
    .await;

    // Beyond the device's limit (1): the device's own refusal comes back through the link.
    let (code, reason) = match watch(&url, &arn, "split-second").await {
        Err(refusal) => refusal,
        Ok(_) => panic!("a second viewer was admitted beyond max_viewers = 1"),
    };
    assert_eq!(code, "SESSION_LIMIT", "refusal code ({reason})");

    // A snapshot while awake: a JPEG of the camera's size (SOF0 carries height, width).
    let jpeg = match side
        .request(Command::GetSnapshot { quality: 60 })
        .await
        .expect("snapshot")
    {
        CommandValue::Snapshot(b) => b,
        other => panic!("not a snapshot: {other:?}"),
    };
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG start of image");
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    let height = u16::from_be_bytes([jpeg[sof + 5], jpeg[sof + 6]]);
    let width = u16::from_be_bytes([jpeg[sof + 7], jpeg[sof + 8]]);
    assert_eq!((width, height), (640, 480));

    // The viewer leaves: the media side sleeps 1 s later.
    first.close().await;
    wait_presence(
        &mut status,
        |p| p == Some(MediaPresence::Sleeping),
        "asleep again",
    )
    .await;
    let wakes_before = status.borrow().wakes;

    // And a new viewer wakes it again.
    let third = watch(&url, &arn, "split-third").await.expect("not refused");
    assert!(
        status.borrow().viewers_refused >= 1,
        "the refusal was counted"
    );
    assert_eq!(
        status.borrow().wakes,
        wakes_before,
        "WakeMethod::None carries out no wake of its own"
    );
    third.close().await;

    let _ = stop_tx.send(true);
    let exit = tokio::time::timeout(WAIT, media).await.unwrap().unwrap();
    assert_eq!(exit.unwrap(), MediaSideExit::Stopped);
    side.shutdown().await;
    local.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_side_that_never_wakes_gets_the_viewer_refused_with_a_reason() {
    let mut config = device_config(1);
    if let SignalingConfig::Embedded { channel, .. } = &mut config.signaling {
        *channel = "split-no-wake-test".into();
    }
    let (local, client) = kvs_app::embedded::start_service(&config, None)
        .await
        .expect("local service");
    // The "streaming process" exits at once: nothing ever says Ready.
    let wake = WakeMethod::Exec("true".into());
    let side = signaling_side(free_port(), wake, Duration::from_millis(500), client).await;
    let status = side.status();
    for attempt in 0..2 {
        let (code, reason) = match watch(
            &local.signaling_url,
            &local.channel_arn,
            &format!("never-{attempt}"),
        )
        .await
        {
            Err(refusal) => refusal,
            Ok(_) => panic!("video from a media side that never woke"),
        };
        assert_eq!(code, "CAMERA_UNAVAILABLE", "attempt {attempt}: {reason}");
        assert!(reason.contains("did not wake up"), "{reason}");
    }
    // Each offer tried again: two wakes carried out.
    assert_eq!(status.borrow().wakes, 2);
    side.shutdown().await;
    local.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_settings_cross_the_link_wait_for_a_sleeping_camera_and_streaming_off_refuses_without_waking(
) {
    use kvs_app::{Control, DeviceControl};
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,str0m=warn,dimpl=warn")
        .try_init();
    let mut config = device_config(2);
    if let SignalingConfig::Embedded { channel, .. } = &mut config.signaling {
        *channel = "split-control-test".into();
    }
    let (local, client) = kvs_app::embedded::start_service(&config, None)
        .await
        .expect("local service");
    let port = free_port();
    let side = signaling_side(port, WakeMethod::None, Duration::from_secs(10), client).await;
    let mut status = side.status();
    let control = side.controller();
    let (stop_tx, media) = resident_media_side(port, &config);
    wait_presence(
        &mut status,
        |p| p == Some(MediaPresence::Sleeping),
        "asleep",
    )
    .await;
    let (url, arn) = (local.signaling_url.clone(), local.channel_arn.clone());

    // Asked while the camera sleeps: kept (answered at once), not a reason to wake it.
    control
        .apply(Control::Resolution {
            width: 320,
            height: 240,
        })
        .await
        .expect("kept for the next wake");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status.borrow().media, Some(MediaPresence::Sleeping));

    // The next viewer wakes it, and the camera comes up with the setting applied.
    let viewer = watch_size(&url, &arn, "ctl-1", (320, 240))
        .await
        .expect("not refused");
    // Asked while awake: the camera's own answer comes back (an odd size is refused there).
    assert!(control
        .apply(Control::Resolution {
            width: 321,
            height: 240
        })
        .await
        .is_err());
    control
        .apply(Control::BitrateKbps(400))
        .await
        .expect("bitrate applied");
    let mut viewers = control.viewers();
    tokio::time::timeout(WAIT, viewers.wait_for(|n| *n == 1))
        .await
        .expect("one viewer reported")
        .unwrap();

    // Streaming off: the live viewer is told why; the camera then sleeps; new viewers are
    // refused by the signaling side without waking it.
    control.apply(Control::Streaming(false)).await.unwrap();
    drop(viewer);
    wait_presence(
        &mut status,
        |p| p == Some(MediaPresence::Sleeping),
        "asleep after off",
    )
    .await;
    let (code, _) = match watch(&url, &arn, "ctl-2").await {
        Err(r) => r,
        Ok(_) => panic!("video while streaming is off"),
    };
    assert_eq!(code, "STREAM_OFF");
    assert_eq!(
        status.borrow().media,
        Some(MediaPresence::Sleeping),
        "not woken"
    );

    // On again: the next viewer wakes it.
    control.apply(Control::Streaming(true)).await.unwrap();
    let viewer = watch_size(&url, &arn, "ctl-3", (320, 240))
        .await
        .expect("not refused");
    viewer.close().await;

    let _ = stop_tx.send(true);
    tokio::time::timeout(WAIT, media)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    side.shutdown().await;
    local.shutdown().await;
}
