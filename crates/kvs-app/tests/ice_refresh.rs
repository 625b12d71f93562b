//! The device runtime's handling of ICE servers and signaling renewals, with a signaling
//! client written here whose far end the test holds: ICE servers are fetched once signaling is
//! up, fetched again before their TTL runs out and at once on RECONNECT_ICE_SERVER, failures
//! are reported and retried, and a renewed connection is reported without a disconnection.

use kvs_app::{AppEvent, Device, DeviceConfig, DeviceParts, EventKind};
use kvs_signaling::{
    IceServer, MessageKind, MessagePayload, SignalingClient, SignalingError, SignalingEvent,
    SignalingLink, SignalingMessage,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// The test's end of the device's signaling link.
struct FarEnd {
    to_device: mpsc::Sender<SignalingEvent>,
    _from_device: mpsc::Receiver<SignalingMessage>,
}

#[derive(Default)]
struct TestSignaling {
    connects: AtomicUsize,
    fetches: AtomicUsize,
    refreshes: AtomicUsize,
    ttl_secs: AtomicU64,
    failing: AtomicBool,
    far_end: Mutex<Option<FarEnd>>,
}

impl TestSignaling {
    fn list(&self) -> Result<Vec<IceServer>, SignalingError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SignalingError::Http(
                "GetIceServerConfig: service down".into(),
            ));
        }
        Ok(vec![
            IceServer::stun("stun:stun.example:443"),
            IceServer {
                urls: vec!["turn:turn.example:443".into()],
                username: Some("1:u".into()),
                credential: Some("p".into()),
                ttl: Some(Duration::from_secs(self.ttl_secs.load(Ordering::SeqCst))),
            },
        ])
    }
}

impl SignalingClient for TestSignaling {
    fn connect(
        &self,
    ) -> futures_util::future::BoxFuture<'_, Result<SignalingLink, SignalingError>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let (to_device, incoming) = mpsc::channel(16);
        let (outgoing, from_device) = mpsc::channel(16);
        *self.far_end.lock().unwrap() = Some(FarEnd {
            to_device,
            _from_device: from_device,
        });
        Box::pin(async move { Ok(SignalingLink { outgoing, incoming }) })
    }

    fn ice_servers(
        &self,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.list() })
    }

    fn refresh_ice_servers(
        &self,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.list() })
    }
}

async fn start(
    signaling: Arc<TestSignaling>,
) -> (kvs_app::DeviceHandle, broadcast::Receiver<AppEvent>) {
    let mut config = DeviceConfig::default();
    config.session.media_bind = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let bus = kvs_app::EventBus::new();
    let events = bus.subscribe();
    let device = Device::start_with_events(
        DeviceParts {
            config,
            signaling,
            camera: None,
            microphone: None,
        },
        bus,
    )
    .await
    .unwrap();
    (device, events)
}

/// The next event of `kind` (others are skipped), within 10 s.
async fn next_of(events: &mut broadcast::Receiver<AppEvent>, kind: EventKind) -> AppEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if e.kind == kind => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind:?} event within 10 s"))
}

async fn send_to_device(signaling: &TestSignaling, event: SignalingEvent) {
    let tx = signaling
        .far_end
        .lock()
        .unwrap()
        .as_ref()
        .expect("device connected")
        .to_device
        .clone();
    tx.send(event).await.unwrap();
}

#[tokio::test]
async fn ice_servers_are_refreshed_before_expiry_and_on_request() {
    let signaling = Arc::new(TestSignaling::default());
    signaling.ttl_secs.store(2, Ordering::SeqCst);
    let (device, mut events) = start(signaling.clone()).await;

    next_of(&mut events, EventKind::SignalingConnected).await;
    let first = next_of(&mut events, EventKind::SignalingGetIce).await;
    assert!(first.message.contains("2 ICE servers (1 TURN)"), "{first}");
    assert_eq!(signaling.fetches.load(Ordering::SeqCst), 1);
    // 80% of the 2 s TTL later, fetched again, bypassing the client's cache.
    next_of(&mut events, EventKind::SignalingGetIce).await;
    assert!(signaling.refreshes.load(Ordering::SeqCst) >= 1);

    // A long TTL now: nothing more for a while, unless the service asks.
    signaling.ttl_secs.store(3600, Ordering::SeqCst);
    next_of(&mut events, EventKind::SignalingGetIce).await;
    let before = signaling.refreshes.load(Ordering::SeqCst);
    let ask = SignalingMessage {
        kind: MessageKind::ReconnectIceServer,
        peer_client_id: None,
        correlation_id: None,
        payload: MessagePayload::None,
    };
    send_to_device(&signaling, SignalingEvent::Message(ask)).await;
    let asked = next_of(&mut events, EventKind::SignalingGetIce).await;
    assert!(
        asked.message.contains("asked for an ICE server refresh"),
        "{asked}"
    );
    let fetched = next_of(&mut events, EventKind::SignalingGetIce).await;
    assert!(fetched.message.contains("valid 3600 s"), "{fetched}");
    assert_eq!(signaling.refreshes.load(Ordering::SeqCst), before + 1);

    // A renewed link is reported; the device does not reconnect.
    send_to_device(
        &signaling,
        SignalingEvent::Renewed {
            reason: "connection renewed after 3000 s".into(),
        },
    )
    .await;
    let renewed = next_of(&mut events, EventKind::SignalingRenewed).await;
    assert!(renewed.message.contains("renewed"), "{renewed}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(signaling.connects.load(Ordering::SeqCst), 1);
    device.shutdown().await;
}

#[tokio::test]
async fn a_failing_ice_fetch_is_reported_and_retried() {
    let signaling = Arc::new(TestSignaling::default());
    signaling.ttl_secs.store(3600, Ordering::SeqCst);
    signaling.failing.store(true, Ordering::SeqCst);
    let (device, mut events) = start(signaling.clone()).await;
    let failed = next_of(&mut events, EventKind::SignalingError).await;
    assert!(
        failed.message.contains("fetching ICE servers failed")
            && failed.message.contains("service down"),
        "{failed}"
    );
    signaling.failing.store(false, Ordering::SeqCst);
    // Retried after the first backoff step (5 s).
    let ok = next_of(&mut events, EventKind::SignalingGetIce).await;
    assert!(ok.message.contains("valid 3600 s"), "{ok}");
    device.shutdown().await;
}
