//! A RainMaker node's device certificate gets KVS credentials from the AWS IoT credentials
//! provider, and the device then streams through the local KVS-compatible service with them.
//!
//! Real parts, over loopback:
//! - a local HTTPS server playing the IoT credentials provider: mutual TLS (hyper over
//!   tokio-rustls, client certificates checked against the test CA made with rcgen), answering
//!   `GET /role-aliases/esp-videostream-v1-NodeRole/credentials` for the thing name of the
//!   provisioned node with temporary credentials valid for an hour, 403 for any other;
//! - the local signaling service (TLS + SigV4 edge for the device, accepting exactly those
//!   temporary credentials including the session token; a plain viewer-only edge for the
//!   viewer, one state);
//! - the device as the device program builds it against KVS: its configuration from TOML text
//!   (`[signaling]` mode kvs with the service as endpoint, `[rainmaker]` naming the node's
//!   certificate, key and the credentials endpoint), `kvs_app::signaling::build_client`, the
//!   test-pattern camera, [`Device::start_with_events`];
//! - a Rust viewer joined through signaling, decoding H.264 with openh264.
//!
//! Asserts: the IoT server served requests for the provisioned node's thing name; the service
//! holds the device's master connection signed with the IoT-issued access key id; the viewer
//! decodes 640x480 pictures. With a node id the IoT server does not know, the device gets 403,
//! reports it as a signaling error naming the refusal, schedules a retry and never connects
//! (no connection, no channel at the service); no thread panics in either case.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kvs_app::{
    AppEvent, CredentialsConfig, Device, DeviceConfig, DeviceHandle, DeviceParts, EventBus,
    EventKind, SignalingConfig,
};
use kvs_peer::viewer::{viewer_signaling_client, JoinEvent, SignaledViewer, ViewerEvent};
use kvs_signaling::Role;
use kvs_signaling_service::{AccessKey, ServiceConfig, ServiceHandle, ServiceState};
use openh264::formats::YUVSource;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::broadcast;

const REGION: &str = "us-west-2";
const ROLE_ALIAS: &str = "esp-videostream-v1-NodeRole";
/// The node the IoT server knows (thing name = node id).
const NODE_ID: &str = "node-iot-stream-1";
const WAIT: Duration = Duration::from_secs(30);
/// Pictures the viewer must decode.
const PICTURES: usize = 5;

/// The temporary credentials the IoT server hands to the provisioned node — the only key the
/// signaling service accepts.
fn issued_key() -> AccessKey {
    AccessKey {
        access_key_id: "ASIAIOTSTREAMTEST001".into(),
        secret_access_key: "iotStreamSecret0123456789abcdefghijklmnop".into(),
        session_token: Some("iot-session-token-for-node-iot-stream-1".into()),
    }
}

/// The test CA, the IoT server's certificate (127.0.0.1) and the node's certificate and key,
/// written into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "IoT test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_der = ca_cert.der().clone();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let mut node_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        node_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, NODE_ID);
        let node_key = KeyPair::generate().unwrap();
        let node_cert = node_params.signed_by(&node_key, &issuer).unwrap();
        std::fs::write(dir.path().join("node.pem"), node_cert.pem()).unwrap();
        std::fs::write(dir.path().join("node.key"), node_key.serialize_pem()).unwrap();

        Pki {
            ca_cert: ca_der,
            server_cert: server_cert.der().clone(),
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One request the IoT server answered: path, thing name header, status.
#[derive(Debug, Clone)]
struct Served {
    path: String,
    thing: Option<String>,
    status: u16,
}

/// The local IoT credentials provider; stops when dropped.
struct IotServer {
    addr: SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IotServer {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet: aborted with it.
        self.task.abort();
    }
}

impl IotServer {
    async fn start(pki: &Pki) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_cert.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = served.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                connections.spawn(async move {
                    // A client without a certificate from the test CA fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &log)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                // Reap finished connections.
                while connections.try_join_next().is_some() {}
            }
        });
        IotServer { addr, served, task }
    }

    fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }
}

/// The credentials provider's answer: credentials valid for an hour for the known thing name,
/// 403 for another, 404 for another path.
fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Served>>,
) -> hyper::Response<Full<Bytes>> {
    let thing = req
        .headers()
        .get("x-amzn-iot-thingname")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = if req.method() != hyper::Method::GET
        || req.uri().path() != format!("/role-aliases/{ROLE_ALIAS}/credentials")
    {
        (404, r#"{"message":"Role alias does not exist"}"#.to_owned())
    } else if thing.as_deref() != Some(NODE_ID) {
        (403, r#"{"message":"Access Denied"}"#.to_owned())
    } else {
        let key = issued_key();
        let expiration = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
            .replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let body = format!(
            r#"{{"credentials":{{"accessKeyId":"{}","secretAccessKey":"{}","sessionToken":"{}","expiration":"{expiration}"}}}}"#,
            key.access_key_id,
            key.secret_access_key,
            key.session_token.unwrap()
        );
        (200, body)
    };
    log.lock().unwrap().push(Served {
        path: req.uri().path().to_owned(),
        thing,
        status,
    });
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The local signaling service: a TLS + SigV4 edge that accepts only the IoT-issued key (with
/// its session token), and a plain viewer-only edge for `channel`.
struct Service {
    state: ServiceState,
    tls_service: ServiceHandle,
    viewer_service: ServiceHandle,
    control_plane: String,
    ca_path: PathBuf,
    viewer_url: String,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(channel: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = kvs_signaling_service::tls::load_or_create(dir.path(), &[]).unwrap();
        let state = ServiceState::new(ServiceConfig {
            region: REGION.into(),
            access_keys: vec![issued_key()],
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
        let viewer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let viewer_addr = viewer_listener.local_addr().unwrap();
        let viewer_state = state.viewer_edge(false, channel, false);
        let viewer_service = kvs_signaling_service::spawn_router(
            viewer_listener,
            kvs_signaling_service::router(viewer_state.clone()),
            viewer_state,
        );
        Service {
            state,
            tls_service,
            viewer_service,
            control_plane: format!("https://{tls_addr}"),
            ca_path: tls.ca_path,
            viewer_url: format!("ws://{viewer_addr}/"),
            _dir: dir,
        }
    }

    async fn shutdown(self) {
        self.viewer_service.shutdown().await;
        self.tls_service.shutdown().await;
    }
}

/// The device's configuration file, as a user would write it.
fn device_toml(pki: &Pki, iot: &IotServer, service: &Service, channel: &str, node: &str) -> String {
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    format!(
        r#"
[signaling]
mode = "kvs"
channel = "{channel}"
region = "{REGION}"
endpoint = "{endpoint}"
ca_file = {service_ca}

[video]
source = "test-pattern"

[audio]
source = "none"

[session]
max_viewers = 2
media_bind = ["127.0.0.1"]

[rainmaker]
broker = "mqtts://127.0.0.1:1"
node_id = "{node}"
cert_file = {cert}
key_file = {key}
credentials_endpoint = "{iot}"
credentials_ca_file = {iot_ca}
"#,
        endpoint = service.control_plane,
        service_ca = path(&service.ca_path),
        cert = path(&pki.path("node.pem")),
        key = path(&pki.path("node.key")),
        iot = iot.addr,
        iot_ca = path(&pki.path("ca.pem")),
    )
}

/// Loads the configuration and starts the device the way the device program does against KVS
/// (`run_external`), publishing events on a bus subscribed first.
async fn start_device(
    toml: &str,
    node: &str,
    iot: &IotServer,
    pki: &Pki,
) -> (DeviceHandle, broadcast::Receiver<AppEvent>) {
    let mut config = DeviceConfig::from_toml_str(toml).expect("the configuration loads");
    // Loading already points KVS credentials at the IoT provider (thing name = node id);
    // calling it again, as code that builds a configuration would, changes nothing.
    let loaded = config.clone();
    config.use_rainmaker_credentials().unwrap();
    assert_eq!(config, loaded);
    let SignalingConfig::Kvs { credentials, .. } = &config.signaling else {
        panic!("signaling.mode is kvs");
    };
    assert_eq!(
        *credentials,
        CredentialsConfig::Iot {
            endpoint: iot.addr.to_string(),
            role_alias: ROLE_ALIAS.into(),
            thing_name: node.into(),
            cert_file: pki.path("node.pem"),
            key_file: pki.path("node.key"),
            ca_file: Some(pki.path("ca.pem")),
        }
    );

    let camera = kvs_app::sources::open_camera(&config.video).expect("test pattern camera");
    let microphone = kvs_app::sources::open_microphone(&config.audio).unwrap();
    let client = kvs_app::signaling::build_client(&config.signaling, Role::Master, None)
        .expect("signaling client");
    let bus = EventBus::new();
    let events = bus.subscribe();
    let device = Device::start_with_events(
        DeviceParts {
            config,
            signaling: client,
            camera,
            microphone,
        },
        bus,
    )
    .await
    .expect("device starts");
    (device, events)
}

/// Panics on any thread but a test's own (device tasks, capture threads, servers).
static BACKGROUND_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics outside the test threads from now on (once per process).
fn count_background_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            let test_thread = name == "main"
                || name.starts_with("node_certificate_")
                || name.starts_with("a_node_");
            if !test_thread {
                BACKGROUND_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info)
        }));
    });
}

fn drain(rx: &mut broadcast::Receiver<AppEvent>, into: &mut Vec<AppEvent>) {
    loop {
        match rx.try_recv() {
            Ok(e) => into.push(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_gets_kvs_credentials_from_iot_and_the_device_streams_with_them() {
    count_background_panics();
    let started = Instant::now();
    const CHANNEL: &str = "iot-stream-test";
    let key = issued_key();
    let pki = Pki::new();
    let iot = IotServer::start(&pki).await;
    let service = Service::start(CHANNEL).await;
    let toml = device_toml(&pki, &iot, &service, CHANNEL, NODE_ID);
    let (device, mut event_rx) = start_device(&toml, NODE_ID, &iot, &pki).await;

    // The device creates the channel and connects as master, signed with the IoT-issued key.
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    let arn = loop {
        drain(&mut event_rx, &mut events);
        if let Some(info) = service.state.channel_by_name(CHANNEL) {
            if service.state.has_master(&info.arn)
                && service.state.connections_signed_with(&key.access_key_id) == 1
            {
                break info.arn;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the device never connected with the IoT-issued key; IoT served {:?}; events {events:?}",
            iot.served()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "# device connected as master of {arn}, signed with {} ({:.1} s after start)",
        key.access_key_id,
        started.elapsed().as_secs_f64()
    );

    // The IoT server answered the node's requests, for its thing name and role alias.
    let served = iot.served();
    assert!(!served.is_empty(), "the IoT server served no request");
    for s in &served {
        assert_eq!(s.path, format!("/role-aliases/{ROLE_ALIAS}/credentials"));
        assert_eq!(s.thing.as_deref(), Some(NODE_ID));
        assert_eq!(s.status, 200);
    }
    assert_eq!(
        service.state.signaling_connections(),
        1,
        "only the device is connected"
    );

    // A viewer joins through the viewer edge of the same service and decodes the picture.
    let viewer_client =
        viewer_signaling_client(&service.viewer_url, &arn, "iot-stream-viewer").unwrap();
    let mut viewer = SignaledViewer::join(&viewer_client, Some("iot-stream-offer".into()))
        .await
        .expect("viewer connects to signaling");
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let mut pictures = 0usize;
    let mut frames = 0usize;
    let until = tokio::time::Instant::now() + WAIT;
    while pictures < PICTURES {
        let event = match viewer.next(until).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("timed out: {frames} video frames, {pictures} pictures decoded"),
            Err(e) => panic!("viewer: {e}"),
        };
        match event {
            JoinEvent::Viewer(ViewerEvent::Video(m)) => {
                frames += 1;
                if let Some(picture) = decoder.decode(&m.data).ok().flatten() {
                    assert_eq!(picture.dimensions(), (640, 480), "decoded picture size");
                    pictures += 1;
                }
            }
            JoinEvent::Viewer(ViewerEvent::Closed) => panic!("the viewer's session closed"),
            JoinEvent::Viewer(_) => {}
            JoinEvent::Refused { code, reason } => panic!("refused: {code} {reason}"),
            JoinEvent::CandidateRejected { candidate, error } => {
                panic!("device candidate {candidate} rejected: {error}")
            }
            JoinEvent::Signaling(m) => panic!("unexpected signaling {:?}", m.kind),
        }
    }
    eprintln!(
        "# viewer decoded {pictures} 640x480 pictures ({frames} frames), {:.1} s after start; IoT served {} request(s)",
        started.elapsed().as_secs_f64(),
        served.len()
    );
    assert_eq!(device.viewer_count(), 1);
    assert_eq!(
        service.state.connections_signed_with(&key.access_key_id),
        1,
        "the device's connection is still the one signed with the IoT-issued key"
    );
    drain(&mut event_rx, &mut events);
    assert!(
        !events.iter().any(|e| e.kind == EventKind::SignalingError),
        "no signaling error: {events:?}"
    );

    viewer.close().await;
    device.shutdown().await;
    service.shutdown().await;
    drop(iot);
    assert_eq!(
        BACKGROUND_PANICS.load(Ordering::SeqCst),
        0,
        "nothing panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_iot_provider_does_not_know_never_connects() {
    const CHANNEL: &str = "iot-stream-unknown-node";
    const UNKNOWN: &str = "node-not-provisioned";
    count_background_panics();
    let key = issued_key();
    let pki = Pki::new();
    let iot = IotServer::start(&pki).await;
    let service = Service::start(CHANNEL).await;
    let toml = device_toml(&pki, &iot, &service, CHANNEL, UNKNOWN);
    let (device, mut event_rx) = start_device(&toml, UNKNOWN, &iot, &pki).await;

    // The device reports the refusal as a signaling error naming it.
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    let error = loop {
        drain(&mut event_rx, &mut events);
        if let Some(e) = events.iter().find(|e| e.kind == EventKind::SignalingError) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no signaling error reported: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("# device reported: {error}");
    assert!(
        error.message.contains("credentials")
            && error.message.contains("403")
            && error.message.contains("Access Denied"),
        "the error names the IoT provider's refusal: {error}"
    );
    assert_eq!(error.status, 1);

    // …schedules a retry (it does not give up), and for a few seconds nothing reaches the
    // service.
    drain(&mut event_rx, &mut events);
    let deadline = Instant::now() + WAIT;
    while !events
        .iter()
        .any(|e| e.kind == EventKind::SignalingReconnectScheduled)
    {
        assert!(Instant::now() < deadline, "no retry scheduled: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drain(&mut event_rx, &mut events);
    }
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(service.state.connections_signed_with(&key.access_key_id), 0);
        assert_eq!(service.state.signaling_connections(), 0);
        assert!(
            service.state.channels().is_empty(),
            "no channel was created"
        );
        assert!(
            !matches!(*device.state().borrow(), kvs_app::DeviceState::Ready { .. }),
            "the device must not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain(&mut event_rx, &mut events);
    assert!(
        !events
            .iter()
            .any(|e| e.kind == EventKind::SignalingConnected),
        "the device never connects: {events:?}"
    );
    let served = iot.served();
    assert!(!served.is_empty(), "the device asked the IoT server");
    for s in &served {
        assert_eq!(s.thing.as_deref(), Some(UNKNOWN));
        assert_eq!(s.status, 403, "{s:?}");
    }
    eprintln!(
        "# {} request(s) refused with 403, {} signaling error event(s)",
        served.len(),
        events
            .iter()
            .filter(|e| e.kind == EventKind::SignalingError)
            .count()
    );

    device.shutdown().await;
    service.shutdown().await;
    drop(iot);
    assert_eq!(
        BACKGROUND_PANICS.load(Ordering::SeqCst),
        0,
        "nothing panicked"
    );
}
