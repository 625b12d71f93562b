//! The IoT credentials provider against a real local HTTPS server that requires client
//! certificates (tokio-rustls + hyper), with a CA, server and client certificates from rcgen.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kvs_aws::{
    CredentialsError, CredentialsProvider, IotCredentialsConfig, IotCredentialsProvider,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

const THING: &str = "thing-1";
const ALIAS: &str = "esp-videostream-v1-NodeRole";

struct Pki {
    dir: tempfile::TempDir,
    ca_cert: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let k = KeyPair::generate().unwrap();
    let pem = p.self_signed(&k).unwrap().pem();
    (p, k, pem)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca_params, ca_key, ca_pem) = ca("test CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device");
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    // A client certificate from another CA: must be refused.
    let (rogue_params, rogue_key, _) = ca("rogue CA");
    let rogue_issuer = Issuer::new(rogue_params, rogue_key);
    let rogue_client_key = KeyPair::generate().unwrap();
    let rogue_client = client_params
        .signed_by(&rogue_client_key, &rogue_issuer)
        .unwrap();

    let w = |name: &str, s: String| std::fs::write(dir.path().join(name), s).unwrap();
    w("ca.pem", ca_pem);
    w("client.pem", client_cert.pem());
    w("client.key", client_key.serialize_pem());
    w("rogue.pem", rogue_client.pem());
    w("rogue.key", rogue_client_key.serialize_pem());

    let ca_der =
        rustls::pki_types::pem::PemObject::from_pem_file(dir.path().join("ca.pem")).unwrap();
    Pki {
        ca_cert: ca_der,
        server_cert: server_cert.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        dir,
    }
}

/// Starts the mTLS server; returns its port and a counter of HTTP requests it handled.
async fn start_server(pki: &Pki) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let served = served2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    served.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(answer(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, served)
}

fn answer(req: &hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if req.uri().path() != format!("/role-aliases/{ALIAS}/credentials") {
        return reply(404, r#"{"message":"Role alias does not exist"}"#.into());
    }
    let thing = req
        .headers()
        .get("x-amzn-iot-thingname")
        .and_then(|v| v.to_str().ok());
    if thing != Some(THING) {
        return reply(403, r#"{"message":"Access Denied"}"#.into());
    }
    reply(
        200,
        r#"{"credentials":{"accessKeyId":"ASIAIOTEXAMPLE","secretAccessKey":"iotSecret","sessionToken":"iotToken","expiration":"2030-01-02T03:04:05Z"}}"#.into(),
    )
}

fn config(dir: &Path, port: u16, thing: &str, alias: &str, client: &str) -> IotCredentialsConfig {
    let p = |n: &str| -> PathBuf { dir.join(n) };
    let mut c = IotCredentialsConfig::new(
        format!("127.0.0.1:{port}"),
        alias,
        thing,
        p(&format!("{client}.pem")),
        p(&format!("{client}.key")),
    );
    c.ca_path = Some(p("ca.pem"));
    c.timeout = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn iot_provider_over_mutual_tls() {
    let pki = pki();
    let (port, served) = start_server(&pki).await;
    let dir = pki.dir.path();

    // Success, with expiry parsed from the ISO-8601 expiration.
    let p = IotCredentialsProvider::new(config(dir, port, THING, ALIAS, "client")).unwrap();
    let c = p.provide_credentials().await.unwrap();
    assert_eq!(c.access_key_id, "ASIAIOTEXAMPLE");
    assert_eq!(c.secret_access_key, "iotSecret");
    assert_eq!(c.session_token.as_deref(), Some("iotToken"));
    // 2030-01-02T03:04:05Z
    assert_eq!(
        c.expiry,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445))
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // 403 with the service's message (thing name not allowed).
    let p = IotCredentialsProvider::new(config(dir, port, "other-thing", ALIAS, "client")).unwrap();
    match p.provide_credentials().await {
        Err(CredentialsError::IotForbidden {
            status: 403,
            message,
        }) => {
            assert_eq!(message, "Access Denied")
        }
        other => panic!("expected IotForbidden, got {other:?}"),
    }

    // 404 for an unknown role alias.
    let p = IotCredentialsProvider::new(config(dir, port, THING, "nope", "client")).unwrap();
    assert!(matches!(
        p.provide_credentials().await,
        Err(CredentialsError::IotNotFound { .. })
    ));
    assert_eq!(served.load(Ordering::SeqCst), 3);

    // A client certificate from another CA is refused during the handshake: no request served.
    let p = IotCredentialsProvider::new(config(dir, port, THING, ALIAS, "rogue")).unwrap();
    match p.provide_credentials().await {
        Err(CredentialsError::Tls(_)) | Err(CredentialsError::Transport(_)) => {}
        other => panic!("expected a TLS/transport failure, got {other:?}"),
    }
    assert_eq!(served.load(Ordering::SeqCst), 3);

    // Without the custom CA (public roots only) the server is not trusted.
    let mut c = config(dir, port, THING, ALIAS, "client");
    c.ca_path = None;
    let p = IotCredentialsProvider::new(c).unwrap();
    assert!(matches!(
        p.provide_credentials().await,
        Err(CredentialsError::Tls(_))
    ));
    assert_eq!(served.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn iot_provider_reports_bad_files_and_dead_endpoints() {
    let pki = pki();
    let dir = pki.dir.path();
    let mut c = config(dir, 1, THING, ALIAS, "client");
    c.key_path = dir.join("missing.key");
    assert!(matches!(
        IotCredentialsProvider::new(c),
        Err(CredentialsError::Io { .. })
    ));
    let mut c = config(dir, 1, THING, ALIAS, "client");
    c.cert_path = dir.join("client.key"); // a key where a certificate should be
    assert!(matches!(
        IotCredentialsProvider::new(c),
        Err(CredentialsError::Tls(_))
    ));
    // Nothing listens on the port: a transport error, not a hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let p = IotCredentialsProvider::new(config(dir, port, THING, ALIAS, "client")).unwrap();
    assert!(matches!(
        p.provide_credentials().await,
        Err(CredentialsError::Transport(_))
    ));
}
