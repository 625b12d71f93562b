//! Our KVS client (`KvsSignalingClient`) against the local service over TLS with SigV4, the
//! way a device reaches real KVS: Describe/Create channel, endpoints, GetIceServerConfig with
//! minted TURN credentials, presigned WSS, clock-skew correction, connection renewal before the
//! service's age limit, session tokens, and refusals of bad credentials.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvs_aws::{Credentials, StaticProvider};
use kvs_signaling::kvs::api::ApiError;
use kvs_signaling::{
    ChannelRef, IceCandidateInit, KvsClientConfig, KvsSignalingClient, MessageKind, MessagePayload,
    Role, SignalingClient, SignalingError, SignalingEvent, SignalingLink, SignalingMessage,
};
use kvs_signaling_service::turn::{turn_password, IceServerSettings, TurnServer};
use kvs_signaling_service::{AccessKey, ServiceConfig, ServiceHandle, ServiceState};

const KEY_ID: &str = "AKIDKVSCLIENTTEST01";
const SECRET: &str = "kvs/client+test/secret0123456789abcdef";
const TURN_SECRET: &str = "turn-shared-secret";

struct Local {
    service: ServiceHandle,
    ca_pem: String,
    control_plane: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("kvs-client-{tag}-{}-{n:x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// The service on TLS with SigV4 for KEY_ID (and `session_token` if given).
async fn start(
    tag: &str,
    session_token: Option<&str>,
    tweak: impl FnOnce(&mut ServiceConfig),
) -> Local {
    let dir = temp_dir(tag);
    let mut config = ServiceConfig {
        access_keys: vec![AccessKey {
            access_key_id: KEY_ID.into(),
            secret_access_key: SECRET.into(),
            session_token: session_token.map(str::to_string),
        }],
        ice_servers: IceServerSettings {
            turn_servers: vec![TurnServer {
                uris: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                shared_secret: TURN_SECRET.into(),
            }],
            credential_ttl: Duration::from_secs(300),
        },
        state_dir: Some(dir.0.clone()),
        ..ServiceConfig::default()
    };
    tweak(&mut config);
    let tls = kvs_signaling_service::tls::load_or_create(&dir.0, &[]).unwrap();
    let state = ServiceState::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = kvs_signaling_service::spawn_tls(
        listener,
        kvs_signaling_service::router(state.clone()),
        state,
        &tls,
    )
    .unwrap();
    let control_plane = service.http_endpoint().unwrap();
    Local {
        service,
        ca_pem: tls.ca_pem.clone(),
        control_plane,
        _dir: dir,
    }
}

fn credentials(secret: &str, token: Option<&str>) -> Arc<StaticProvider> {
    Arc::new(StaticProvider::new(Credentials::new(
        KEY_ID,
        secret,
        token.map(str::to_string),
        None,
    )))
}

fn client_config(local: &Local, channel: &str, role: Role) -> KvsClientConfig {
    let mut c = KvsClientConfig::new(
        "us-west-2",
        ChannelRef::Name(channel.into()),
        role,
        credentials(SECRET, None),
    )
    .unwrap();
    c.control_endpoint = Some(local.control_plane.clone());
    c.tls = kvs_aws::https::client_tls_config(Some(local.ca_pem.as_bytes()), true).unwrap();
    c
}

fn viewer(id: &str) -> Role {
    Role::Viewer {
        client_id: id.into(),
    }
}

async fn next_message(link: &mut SignalingLink) -> SignalingMessage {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), link.incoming.recv())
            .await
            .expect("no signaling event within 10 s")
            .expect("event channel closed");
        match event {
            SignalingEvent::Message(m) => return m,
            SignalingEvent::Renewed { .. } => continue,
            SignalingEvent::Disconnected { reason } => panic!("disconnected: {reason}"),
        }
    }
}

async fn wait_viewers(local: &Local, arn: &str, n: usize) {
    for _ in 0..500 {
        if local.service.state().viewer_count(arn) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("service never saw {n} viewers");
}

fn candidate() -> IceCandidateInit {
    IceCandidateInit {
        candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

/// Offer from the viewer, answer and a candidate from the master: both directions work.
async fn exchange(master: &mut SignalingLink, viewer: &mut SignalingLink, viewer_id: &str) {
    viewer
        .outgoing
        .send(SignalingMessage::offer(None, "v=0\r\nviewer-offer\r\n"))
        .await
        .unwrap();
    let offer = next_message(master).await;
    assert_eq!(offer.kind, MessageKind::Offer);
    assert_eq!(offer.peer_client_id.as_deref(), Some(viewer_id));
    master
        .outgoing
        .send(SignalingMessage::answer(
            viewer_id,
            "v=0\r\nmaster-answer\r\n",
        ))
        .await
        .unwrap();
    master
        .outgoing
        .send(SignalingMessage::ice_candidate(viewer_id, candidate()))
        .await
        .unwrap();
    let answer = next_message(viewer).await;
    assert!(
        matches!(&answer.payload, MessagePayload::Sdp(s) if s.contains("master-answer")),
        "{answer:?}"
    );
    let c = next_message(viewer).await;
    assert_eq!(c.kind, MessageKind::IceCandidate);
}

#[tokio::test]
async fn master_creates_the_channel_and_both_roles_talk_over_signed_wss() {
    let local = start("talk", None, |_| {}).await;
    let mut master_config = client_config(&local, "kvs-client-cam", Role::Master);
    master_config.create_channel = true;
    let master = KvsSignalingClient::new(master_config).unwrap();
    let (arn, endpoints) = master.channel().await.unwrap();
    assert!(
        arn.starts_with("arn:aws:kinesisvideo:us-west-2:000000000000:channel/kvs-client-cam/"),
        "{arn}"
    );
    assert!(endpoints.wss.starts_with("wss://"), "{endpoints:?}");
    assert!(endpoints.https.starts_with("https://"), "{endpoints:?}");
    assert!(local
        .service
        .state()
        .channel_by_name("kvs-client-cam")
        .is_some());

    let mut master_link = master.connect().await.unwrap();
    let viewer_client =
        KvsSignalingClient::new(client_config(&local, "kvs-client-cam", viewer("phone-1")))
            .unwrap();
    let mut viewer_link = viewer_client.connect().await.unwrap();
    wait_viewers(&local, &arn, 1).await;
    exchange(&mut master_link, &mut viewer_link, "phone-1").await;

    // ICE servers: the regional STUN first, then TURN with coturn-style minted credentials.
    let servers = viewer_client.ice_servers().await.unwrap();
    assert_eq!(
        servers[0].urls,
        vec!["stun:stun.kinesisvideo.us-west-2.amazonaws.com:443".to_string()]
    );
    let turn = &servers[1];
    assert_eq!(
        turn.urls,
        vec!["turn:127.0.0.1:3478?transport=udp".to_string()]
    );
    let username = turn.username.clone().unwrap();
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, "phone-1");
    let expiry: u64 = expiry.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 200 && expiry <= now + 301,
        "{expiry} vs {now}"
    );
    assert_eq!(
        turn.credential.as_deref(),
        Some(turn_password(TURN_SECRET, &username).as_str())
    );
    assert_eq!(turn.ttl, Some(Duration::from_secs(300)));
    // Cached while valid; a refresh mints new credentials.
    assert_eq!(viewer_client.ice_servers().await.unwrap(), servers);
    assert!(viewer_client.refresh_ice_servers().await.is_ok());
}

#[tokio::test]
async fn wrong_secret_missing_channel_and_missing_token_are_clear_errors() {
    let local = start("refuse", None, |_| {}).await;
    let mut bad = client_config(&local, "whatever", Role::Master);
    bad.credentials = credentials("not-the-secret", None);
    bad.create_channel = true;
    let err = KvsSignalingClient::new(bad)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    match err {
        SignalingError::Api(ApiError {
            status, error_type, ..
        }) => {
            assert_eq!(status, 403);
            assert_eq!(error_type, "InvalidSignatureException");
        }
        other => panic!("expected a signature refusal, got {other}"),
    }

    let absent = KvsSignalingClient::new(client_config(&local, "absent", Role::Master)).unwrap();
    let err = absent.connect().await.unwrap_err();
    assert!(
        matches!(&err, SignalingError::Config(m) if m.contains("does not exist")),
        "{err}"
    );
    assert!(local.service.state().channel_by_name("absent").is_none());

    // Temporary credentials: the service wants the token, signed into every call.
    let temp = start("token", Some("session-token-1"), |_| {}).await;
    let mut with_token = client_config(&temp, "tok-cam", Role::Master);
    with_token.create_channel = true;
    with_token.credentials = credentials(SECRET, Some("session-token-1"));
    let mut link = KvsSignalingClient::new(with_token)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut without = client_config(&temp, "tok-cam", Role::Master);
    without.credentials = credentials(SECRET, None);
    let err = KvsSignalingClient::new(without)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignalingError::Api(e) if e.error_type == "UnrecognizedClientException"),
        "{err}"
    );
    // The first link is unaffected.
    assert!(matches!(
        link.incoming.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Empty)
    ));
}

#[tokio::test]
async fn a_clock_half_an_hour_fast_is_corrected_from_the_date_header() {
    let local = start("skew", None, |_| {}).await;
    let mut config = client_config(&local, "skewed-cam", Role::Master);
    config.create_channel = true;
    let skew = Duration::from_secs(30 * 60);
    config.clock = Arc::new(move || SystemTime::now() + skew);
    let client = KvsSignalingClient::new(config).unwrap();
    let mut master = client.connect().await.unwrap();
    let offset = client.clock_offset();
    // The Date header has one-second precision.
    assert!(
        (offset.millis + skew.as_millis() as i64).abs() < 2_000,
        "offset {offset:?}"
    );
    // The presigned data-plane URL uses the corrected clock too: messages flow.
    let viewer_client =
        KvsSignalingClient::new(client_config(&local, "skewed-cam", viewer("v-skew"))).unwrap();
    let mut viewer = viewer_client.connect().await.unwrap();
    let (arn, _) = client.channel().await.unwrap();
    wait_viewers(&local, &arn, 1).await;
    exchange(&mut master, &mut viewer, "v-skew").await;
}

#[tokio::test]
async fn links_renew_before_the_service_age_limit_and_keep_working() {
    // The service drops connections after 3 s; the master renews every second, the viewer
    // does not.
    let local = start("renew", None, |c| {
        c.max_connection_age = Duration::from_secs(3)
    })
    .await;
    let mut master_config = client_config(&local, "renew-cam", Role::Master);
    master_config.create_channel = true;
    master_config.max_connection_age = Some(Duration::from_secs(1));
    let master = KvsSignalingClient::new(master_config).unwrap();
    let mut master_link = master.connect().await.unwrap();
    let mut viewer_config = client_config(&local, "renew-cam", viewer("v-renew"));
    viewer_config.max_connection_age = None;
    let mut viewer_link = KvsSignalingClient::new(viewer_config)
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut renewals = 0;
    let mut viewer_dropped = None;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(4500);
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            e = master_link.incoming.recv() => match e.expect("master link open") {
                SignalingEvent::Renewed { .. } => renewals += 1,
                SignalingEvent::Disconnected { reason } => panic!("master lost: {reason}"),
                SignalingEvent::Message(m) => panic!("unexpected {m:?}"),
            },
            e = viewer_link.incoming.recv(), if viewer_dropped.is_none() => {
                if let Some(SignalingEvent::Disconnected { reason }) = e {
                    viewer_dropped = Some(reason);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    assert!(renewals >= 3, "master renewed {renewals} times");
    assert!(
        viewer_dropped
            .as_deref()
            .is_some_and(|r| r.contains("maximum connection duration")),
        "{viewer_dropped:?}"
    );
    // After four renewals the master still talks to a fresh viewer.
    let mut viewer_link =
        KvsSignalingClient::new(client_config(&local, "renew-cam", viewer("v-renew-2")))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let (arn, _) = master.channel().await.unwrap();
    wait_viewers(&local, &arn, 1).await;
    exchange(&mut master_link, &mut viewer_link, "v-renew-2").await;
    assert!(local.service.state().has_master(&arn));
}

/// A log sink shared with the test: everything a subscriber writes lands in `bytes`.
#[derive(Clone, Default)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn nothing_secret_reaches_the_log_even_at_trace_level() {
    use tracing_subscriber::layer::SubscriberExt as _;
    const TOKEN: &str = "IQoJb3JpZ2luX2VjEJr-session-token-under-test";
    // Every target at trace, once through the programs' redacting writer and once raw.
    let (redacted, raw) = (LogSink::default(), LogSink::default());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with({
            let sink = redacted.clone();
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || kvs_aws::redact::RedactingWriter::new(sink.clone()))
        })
        .with({
            let sink = raw.clone();
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || sink.clone())
        });
    let _guard = tracing::subscriber::set_default(subscriber);

    // Temporary credentials everywhere: REST calls, GetIceServerConfig with minted TURN
    // passwords, presigned WSS, and a refused signature (whose canonical request the service
    // logs at debug level).
    let local = start("secrets", Some(TOKEN), |_| {}).await;
    let mut config = client_config(&local, "secret-cam", Role::Master);
    config.create_channel = true;
    config.credentials = credentials(SECRET, Some(TOKEN));
    let master = KvsSignalingClient::new(config).unwrap();
    let servers = master.ice_servers().await.unwrap();
    let turn_password = servers[1].credential.clone().expect("a TURN password");
    let mut link = master.connect().await.unwrap();
    let mut viewer_config = client_config(&local, "secret-cam", viewer("phone-1"));
    viewer_config.credentials = credentials(SECRET, Some(TOKEN));
    let mut viewer_link = KvsSignalingClient::new(viewer_config)
        .unwrap()
        .connect()
        .await
        .unwrap();
    exchange(&mut link, &mut viewer_link, "phone-1").await;
    let mut wrong = client_config(&local, "secret-cam", Role::Master);
    wrong.credentials = credentials("not-the-secret", Some(TOKEN));
    assert!(KvsSignalingClient::new(wrong)
        .unwrap()
        .connect()
        .await
        .is_err());
    drop(link);
    drop(viewer_link);

    let redacted = redacted.text();
    let raw = raw.text();
    assert!(
        redacted.lines().count() > 50,
        "too little was logged to prove anything"
    );
    // Without the redaction, something does log the token: the test can fail.
    assert!(
        raw.contains(TOKEN),
        "the raw trace no longer shows the token"
    );
    for (what, secret) in [
        ("session token", TOKEN),
        ("secret key", SECRET),
        ("TURN password", turn_password.as_str()),
        ("TURN shared secret", TURN_SECRET),
    ] {
        if let Some(line) = redacted.lines().find(|l| l.contains(secret)) {
            panic!("the {what} is in the log: {line}");
        }
    }
    assert!(redacted.contains(kvs_aws::redact::REDACTED));
}
