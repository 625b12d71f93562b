//! The device's credentials expire while a viewer watches: the device reconnects to signaling
//! with fresh credentials, and the live media session does not notice.
//!
//! Real parts: the local signaling service (TLS + SigV4 edge for the device, plain viewer
//! edge for the viewer, one state — what the embedded default runs), the real device
//! ([`Device`] with the same [`KvsSignalingClient`] it uses against KVS, test-pattern camera)
//! and a Rust viewer joined through signaling, over loopback. Only the credentials provider
//! is the test's: it plays an STS-like source that hands out key A, valid for
//! [`A_LIFETIME`], and key B once A has expired. The service accepts both keys until the test
//! revokes A at its expiry ([`ServiceState::revoke_access_key`]): from then on A is refused,
//! and the device's connection signed with A gets GO_AWAY.
//!
//! Asserts: the device's first connect was signed with A; after GO_AWAY it reconnects, the
//! service holds a master connection signed with B and none with A, and no connect attempt
//! failed (the device did not try the expired key first); the viewer keeps receiving frames
//! across the reconnect (30 more after it), on the same session: no new offer, no closed
//! event, the device's session count stays 1 and it reports no peer disconnection.

use kvs_app::{
    AppEvent, AudioSourceConfig, Device, DeviceConfig, DeviceParts, EventBus, EventKind,
    VideoSourceConfig,
};
use kvs_aws::{Credentials, CredentialsError, CredentialsProvider};
use kvs_peer::viewer::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerEvent};
use kvs_signaling::{ChannelRef, KvsClientConfig, KvsSignalingClient, Role};
use kvs_signaling_service::{AccessKey, ServiceConfig, ServiceState};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

const REGION: &str = "us-west-2";
const CHANNEL: &str = "credential-expiry-test";
/// How long key A is valid from the start of the test.
const A_LIFETIME: Duration = Duration::from_secs(12);
const WAIT: Duration = Duration::from_secs(30);
/// Frames the viewer must receive after the device's reconnect.
const FRAMES_AFTER: usize = 30;
/// The test looks at the service and the device's events between viewer steps this long.
const STEP: Duration = Duration::from_millis(100);

fn key(id: &str) -> AccessKey {
    AccessKey {
        access_key_id: id.into(),
        secret_access_key: format!("{id}-secret-0123456789abcdefghijklmnopqrstuvw"),
        session_token: None,
    }
}

/// Key A until it expires, then key B — and which it handed out, when.
struct Rotating {
    a: AccessKey,
    b: AccessKey,
    a_expiry: SystemTime,
    handed_out: Mutex<Vec<(Instant, String)>>,
}

impl CredentialsProvider for Rotating {
    fn provide_credentials(
        &self,
    ) -> futures_util::future::BoxFuture<'_, Result<Credentials, CredentialsError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let (key, expiry) = if now < self.a_expiry {
                (&self.a, self.a_expiry)
            } else {
                (&self.b, now + Duration::from_secs(3600))
            };
            self.handed_out
                .lock()
                .unwrap()
                .push((Instant::now(), key.access_key_id.clone()));
            Ok(Credentials::new(
                key.access_key_id.clone(),
                key.secret_access_key.clone(),
                None,
                Some(expiry),
            ))
        })
    }

    fn name(&self) -> &'static str {
        "rotating-test"
    }
}

/// Everything the test observed from the device's events since the last call.
fn drain_events(rx: &mut broadcast::Receiver<AppEvent>, into: &mut Vec<AppEvent>) {
    loop {
        match rx.try_recv() {
            Ok(e) => into.push(e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                panic!("lost {n} device events")
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credentials_are_replaced_on_reconnect_and_the_viewer_keeps_watching() {
    let started = Instant::now();
    let state_dir = std::env::temp_dir().join(format!("kvs-cred-expiry-{}", std::process::id()));
    let (a, b) = (key("AKIDTESTKEYAAAAAAAAA"), key("AKIDTESTKEYBBBBBBBBB"));

    // The service: both keys accepted; a TLS + SigV4 edge for the device, a plain
    // viewer-only edge for the viewer.
    let tls = kvs_signaling_service::tls::load_or_create(&state_dir, &[]).unwrap();
    let state = ServiceState::new(ServiceConfig {
        region: REGION.into(),
        access_keys: vec![a.clone(), b.clone()],
        ..ServiceConfig::default()
    });
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let tls_state = state.edge(true, true);
    let tls_service = kvs_signaling_service::spawn_tls(
        tls_listener,
        kvs_signaling_service::router(tls_state.clone()),
        tls_state,
        &tls,
    )
    .unwrap();
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = page_listener.local_addr().unwrap();
    let page_state = state.viewer_edge(false, CHANNEL, false);
    let page_service = kvs_signaling_service::spawn_router(
        page_listener,
        kvs_signaling_service::router(page_state.clone()),
        page_state,
    );

    // The device, with the rotating provider behind its usual credentials cache.
    let provider = Arc::new(Rotating {
        a: a.clone(),
        b: b.clone(),
        a_expiry: SystemTime::now() + A_LIFETIME,
        handed_out: Mutex::default(),
    });
    let mut kvs = KvsClientConfig::new(
        REGION,
        ChannelRef::Name(CHANNEL.into()),
        Role::Master,
        provider.clone(),
    )
    .unwrap();
    kvs.control_endpoint = Some(format!("https://{tls_addr}"));
    kvs.create_channel = true;
    kvs.stun_url = None;
    kvs.tls = kvs_aws::https::client_tls_config(Some(tls.ca_pem.as_bytes()), true).unwrap();
    let client = KvsSignalingClient::new(kvs).unwrap();
    let (arn, _) = client.channel().await.expect("the channel is created");
    let mut config = DeviceConfig {
        video: VideoSourceConfig::default(),
        audio: AudioSourceConfig::None,
        ..DeviceConfig::default()
    };
    config.session.max_viewers = 2;
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let camera = kvs_app::sources::open_camera(&config.video).unwrap();
    let events = EventBus::new();
    let mut event_rx = events.subscribe();
    let device = Device::start_with_events(
        DeviceParts {
            config,
            signaling: Arc::new(client),
            camera,
            microphone: None,
        },
        events,
    )
    .await
    .expect("device starts");

    // The device connects, signed with A.
    let deadline = Instant::now() + WAIT;
    while !(state.has_master(&arn) && state.connections_signed_with(&a.access_key_id) == 1) {
        assert!(
            Instant::now() < deadline,
            "the device never connected with A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "# device connected, signed with {} ({:.1} s after start)",
        a.access_key_id,
        started.elapsed().as_secs_f64()
    );

    // A viewer joins and watches.
    let signaling_url = format!("ws://{page_addr}/");
    let viewer_client = viewer_signaling_client(&signaling_url, &arn, "expiry-viewer").unwrap();
    let mut viewer = SignaledViewer::join(&viewer_client, Some("expiry-offer".into()))
        .await
        .expect("viewer connects to signaling");
    let mut watch = Watch::default();
    let until = tokio::time::Instant::now() + WAIT;
    while watch.frames < 10 {
        assert!(
            tokio::time::Instant::now() < until,
            "the viewer gets no frames"
        );
        watch
            .step(&mut viewer, tokio::time::Instant::now() + STEP)
            .await;
    }
    assert_eq!(device.viewer_count(), 1);

    // Keep watching until A has expired.
    let a_expired = tokio::time::Instant::from_std(
        Instant::now()
            + provider
                .a_expiry
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
    );
    let frames_before_expiry = watch.frames;
    while tokio::time::Instant::now() < a_expired {
        let step_until = (tokio::time::Instant::now() + STEP).min(a_expired);
        watch.step(&mut viewer, step_until).await;
        assert_eq!(device.viewer_count(), 1);
    }
    assert!(
        watch.frames > frames_before_expiry,
        "frames arrive while A is valid"
    );

    // The service stops accepting A and sends the device's connection away.
    let mut seen = Vec::new();
    drain_events(&mut event_rx, &mut seen);
    let sent_away = state.revoke_access_key(&a.access_key_id);
    let revoked_at = Instant::now();
    eprintln!(
        "# {} expired and revoked {:.1} s after start; {sent_away} connection(s) sent away",
        a.access_key_id,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sent_away, 1, "the device's connection was signed with A");

    // The device reconnects with B while the viewer keeps watching.
    let mut after = Vec::new();
    let mut reconnected: Option<(Instant, usize)> = None;
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let step_until = (tokio::time::Instant::now() + STEP).min(until);
        watch.step(&mut viewer, step_until).await;
        drain_events(&mut event_rx, &mut after);
        assert_eq!(
            device.viewer_count(),
            1,
            "the session stays up across the reconnect"
        );
        if reconnected.is_none()
            && state.has_master(&arn)
            && state.connections_signed_with(&b.access_key_id) == 1
        {
            reconnected = Some((Instant::now(), watch.frames));
            eprintln!(
                "# device reconnected, signed with {}, {:.2} s after the revocation",
                b.access_key_id,
                revoked_at.elapsed().as_secs_f64()
            );
        }
        if let Some((_, frames)) = reconnected {
            if watch.frames >= frames + FRAMES_AFTER {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out: reconnected={reconnected:?} frames={} events={after:?}",
            watch.frames
        );
    }
    assert_eq!(
        state.connections_signed_with(&a.access_key_id),
        0,
        "nothing is connected with the revoked key"
    );
    let kinds: Vec<EventKind> = after.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EventKind::SignalingConnected),
        "the device reports its reconnect: {after:?}"
    );
    // The first attempt after GO_AWAY used fresh credentials: nothing was refused.
    for bad in [
        EventKind::SignalingError,
        EventKind::SignalingReconnectScheduled,
        EventKind::PeerDisconnected,
        EventKind::PeerFailed,
        EventKind::ReceivedOffer,
    ] {
        assert!(
            !kinds.contains(&bad),
            "unexpected {bad:?} after the revocation: {after:?}"
        );
    }
    // Same session: the viewer never closed or reconnected, and made no new offer (the
    // device would report ReceivedOffer above).
    assert_eq!(watch.connected, 1, "the viewer's peer connected once");
    assert!(
        watch.frames_since_revocation(revoked_at) >= FRAMES_AFTER,
        "frames kept arriving"
    );

    let handed: Vec<String> = provider
        .handed_out
        .lock()
        .unwrap()
        .iter()
        .map(|(at, k)| {
            format!(
                "{k}@{:.1}s",
                at.saturating_duration_since(started).as_secs_f64()
            )
        })
        .collect();
    eprintln!("# credentials handed out: {}", handed.join(", "));
    eprintln!(
        "# viewer frames: {} in all, {} after the revocation, largest gap {} ms",
        watch.frames,
        watch.frames_since_revocation(revoked_at),
        watch.largest_gap.as_millis()
    );

    viewer.close().await;
    device.shutdown().await;
    page_service.shutdown().await;
    tls_service.shutdown().await;
    std::fs::remove_dir_all(state_dir).ok();
}

/// What the viewer saw.
#[derive(Default)]
struct Watch {
    frames: usize,
    connected: usize,
    arrivals: Vec<Instant>,
    largest_gap: Duration,
}

impl Watch {
    /// Relays signaling and counts video frames until `until`. The viewer's session must not
    /// close, and only the answer and candidates are expected from signaling.
    async fn step(&mut self, viewer: &mut SignaledViewer, until: tokio::time::Instant) {
        loop {
            let event = match viewer.next(until).await {
                Ok(Some(e)) => e,
                Ok(None) => return,
                Err(e) => panic!("viewer: {e}"),
            };
            match event {
                JoinEvent::Viewer(ViewerEvent::Video(_)) => {
                    let now = Instant::now();
                    if let Some(last) = self.arrivals.last() {
                        self.largest_gap = self.largest_gap.max(now - *last);
                    }
                    self.arrivals.push(now);
                    self.frames += 1;
                }
                JoinEvent::Viewer(ViewerEvent::Connected) => self.connected += 1,
                JoinEvent::Viewer(ViewerEvent::Closed) => panic!("the viewer's session closed"),
                JoinEvent::Viewer(_) => {}
                JoinEvent::Refused { code, reason } => panic!("refused: {code} {reason}"),
                JoinEvent::CandidateRejected { candidate, error } => {
                    panic!("candidate {candidate} rejected: {error}")
                }
                JoinEvent::Signaling(m) => panic!("unexpected signaling {:?}", m.kind),
            }
        }
    }

    fn frames_since_revocation(&self, at: Instant) -> usize {
        self.arrivals.iter().filter(|t| **t >= at).count()
    }
}
