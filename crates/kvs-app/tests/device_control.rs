//! Changing a running device (`DeviceHandle::controller`, the `DeviceControl` interface remote
//! control drives) with Rust viewers watching over the real embedded default: resolution and
//! bitrate change live, the viewer limit is lowered without dropping anyone, streaming off tells
//! viewers why and refuses new ones, audio stops and resumes.

use kvs_app::{Control, ControlError, DeviceConfig, DeviceControl, SignalingConfig};
use kvs_peer::viewer::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerEvent};
use openh264::formats::YUVSource;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

fn config() -> DeviceConfig {
    let mut config = DeviceConfig {
        signaling: SignalingConfig::Embedded {
            channel: "device-control-test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: Some(
                std::env::temp_dir().join(format!("kvs-device-control-{}", std::process::id())),
            ),
        },
        ..DeviceConfig::default()
    };
    config.session.max_viewers = 2;
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    config
}

struct Watcher {
    viewer: SignaledViewer,
    decoder: openh264::decoder::Decoder,
    audio_packets: usize,
    closed: bool,
}

enum Seen {
    Picture(usize, usize),
    Refused(String),
    Closed,
}

impl Watcher {
    async fn join(url: &str, arn: &str, id: &str) -> Watcher {
        let client = viewer_signaling_client(url, arn, id).unwrap();
        let viewer = SignaledViewer::join(&client, Some(format!("{id}-offer")))
            .await
            .expect("viewer connects to signaling");
        Watcher {
            viewer,
            decoder: openh264::decoder::Decoder::new().unwrap(),
            audio_packets: 0,
            closed: false,
        }
    }

    /// The next decoded picture's size, or a refusal.
    async fn next(&mut self, deadline: Instant) -> Option<Seen> {
        loop {
            match self.viewer.next(deadline).await {
                Ok(Some(JoinEvent::Viewer(ViewerEvent::Video(m)))) => {
                    if let Ok(Some(pic)) = self.decoder.decode(&m.data) {
                        let (w, h) = pic.dimensions();
                        return Some(Seen::Picture(w, h));
                    }
                }
                Ok(Some(JoinEvent::Viewer(ViewerEvent::Audio(_)))) => self.audio_packets += 1,
                Ok(Some(JoinEvent::Refused { code, .. })) => return Some(Seen::Refused(code)),
                Ok(Some(JoinEvent::Viewer(ViewerEvent::Closed))) => {
                    self.closed = true;
                    return Some(Seen::Closed);
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Waits for a decoded picture of this size (pictures of another size may come first).
    async fn wait_picture(&mut self, size: (usize, usize), what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Some(Seen::Picture(w, h)) if (w, h) == size => return,
                Some(Seen::Picture(..)) => {}
                Some(Seen::Refused(code)) => panic!("{what}: refused ({code})"),
                Some(Seen::Closed) => panic!("{what}: the session closed"),
                None => panic!("{what}: no {size:?} picture within {WAIT:?}"),
            }
        }
    }

    async fn wait_refusal(&mut self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Some(Seen::Refused(code)) => return code,
                Some(Seen::Picture(..)) | Some(Seen::Closed) => {}
                None => panic!("{what}: no refusal within {WAIT:?}"),
            }
        }
    }

    /// Audio packets received during `d` (video is consumed meanwhile).
    async fn audio_during(&mut self, d: Duration) -> usize {
        let before = self.audio_packets;
        let deadline = Instant::now() + d;
        while let Some(seen) = self.next(deadline).await {
            assert!(!matches!(seen, Seen::Closed), "the session closed");
        }
        self.audio_packets - before
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_bitrate_limit_streaming_and_audio_change_on_a_live_device() {
    let running = kvs_app::embedded::start(config(), None).await.unwrap();
    let (url, arn) = (running.signaling_url.clone(), running.channel_arn.clone());
    let control = running.device.controller();
    let mut viewers = control.viewers();

    let mut a = Watcher::join(&url, &arn, "control-a").await;
    a.wait_picture((640, 480), "first viewer").await;

    // Resolution: the same session decodes the new size.
    let asked = Instant::now();
    control
        .apply(Control::Resolution {
            width: 320,
            height: 240,
        })
        .await
        .unwrap();
    a.wait_picture((320, 240), "after the resolution change")
        .await;
    eprintln!(
        "# resolution change → first 320x240 picture: {:?}",
        asked.elapsed()
    );
    assert!(matches!(
        control
            .apply(Control::Resolution {
                width: 321,
                height: 240
            })
            .await,
        Err(ControlError::Invalid(_))
    ));

    // Bitrate: accepted live; nonsense refused.
    control.apply(Control::BitrateKbps(300)).await.unwrap();
    assert!(matches!(
        control.apply(Control::BitrateKbps(1)).await,
        Err(ControlError::Invalid(_))
    ));
    a.wait_picture((320, 240), "after the bitrate change").await;

    // The limit lowered to 1 with one viewer live: it stays, a second is refused.
    control.apply(Control::MaxViewers(1)).await.unwrap();
    let mut b = Watcher::join(&url, &arn, "control-b").await;
    assert_eq!(b.wait_refusal("second viewer").await, "SESSION_LIMIT");
    a.wait_picture((320, 240), "first viewer after the limit")
        .await;
    drop(b);

    // Audio off: no more audio packets (after what was in flight); on: they come back.
    control.apply(Control::Audio(false)).await.unwrap();
    a.audio_during(Duration::from_millis(500)).await;
    let silent = a.audio_during(Duration::from_secs(1)).await;
    assert_eq!(silent, 0, "audio packets while audio is off");
    control.apply(Control::Audio(true)).await.unwrap();
    let resumed = a.audio_during(Duration::from_secs(1)).await;
    assert!(resumed >= 20, "audio resumed: {resumed} packets in 1 s");

    // Streaming off: the live viewer is told why, new ones are refused.
    let asked = Instant::now();
    control.apply(Control::Streaming(false)).await.unwrap();
    assert_eq!(a.wait_refusal("live viewer").await, "STREAM_OFF");
    eprintln!("# streaming off → live viewer told: {:?}", asked.elapsed());
    let deadline = Instant::now() + WAIT;
    while !a.closed && a.next(deadline).await.is_some() {}
    assert!(a.closed, "the live session closed after the reason");
    eprintln!("# streaming off → session closed: {:?}", asked.elapsed());
    tokio::time::timeout(WAIT, viewers.wait_for(|n| *n == 0))
        .await
        .expect("the session closes")
        .unwrap();
    let mut c = Watcher::join(&url, &arn, "control-c").await;
    assert_eq!(c.wait_refusal("viewer while off").await, "STREAM_OFF");
    drop(c);
    drop(a);

    // On again: a new viewer decodes (at the size set earlier).
    control.apply(Control::Streaming(true)).await.unwrap();
    let mut d = Watcher::join(&url, &arn, "control-d").await;
    d.wait_picture((320, 240), "viewer after streaming on")
        .await;
    running.shutdown().await;
}
