//! TLS for the service: a local certificate authority kept on disk, a server certificate it
//! signs, and an axum listener that serves HTTPS and WSS with rustls.
//!
//! Owns: `<state dir>/ca.pem` and `ca.key` (created on first run with `rcgen`, reused after,
//! each written atomically, the key readable by its owner only), the server certificate (issued anew at every start for
//! the configured host names, so adding a name needs no new trust), and the TLS handshakes
//! (each in its own task with a time limit, so a slow client never stalls accepting).
//! Clients trust the service by trusting `ca.pem` (`NODE_EXTRA_CA_CERTS`, boto3 `verify=`,
//! `--ca-file`).
//!
//! Must not touch: routing, HTTP semantics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvs_platform::fs::write_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the HTTP server to take them.
const ACCEPT_QUEUE: usize = 64;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable key or certificate: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The local CA and a server identity signed by it.
pub struct ServiceTls {
    /// Path of the CA certificate clients must trust.
    pub ca_path: PathBuf,
    /// The CA certificate in PEM.
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServiceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTls")
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

/// The CA's fixed parameters: a re-created issuer must match the saved certificate's subject.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kvs-webrtc local signaling CA");
    dn.push(DnType::OrganizationName, "kvs-webrtc");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the CA from `dir` (creating it on first run) and issues a server certificate for
/// `host_names` (DNS names or IP addresses).
pub fn load_or_create(dir: &Path, host_names: &[String]) -> Result<ServiceTls, TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Processes starting together (tests, a service and a device) must not both create a CA
    // and end up with one's key beside the other's certificate.
    let lock_path = dir.join(".ca.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let ca_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let (ca_key, ca_pem, ca_der) = if ca_path.exists() && key_path.exists() {
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadFile {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::BadFile {
                path: ca_path.clone(),
                reason: match e {
                    pem::Error::NoItemsFound => "no PEM certificate".into(),
                    e => format!("not a PEM certificate: {e}"),
                },
            })?;
        (key, ca_pem, ca_der)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        // The key first: a certificate without its key is regenerated at the next start.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), Some(0o600))
            .map_err(io_err(&key_path))?;
        write_atomic(&ca_path, cert.pem().as_bytes(), None).map_err(io_err(&ca_path))?;
        info!(path = %ca_path.display(), "created the local signaling CA");
        (key, cert.pem(), cert.der().clone())
    };
    let issuer = Issuer::new(ca_params(), &ca_key);

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in host_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kvs-webrtc local signaling");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let server_key = KeyPair::generate()?;
    let server_cert = params.signed_by(&server_key, &issuer)?;

    let chain = vec![CertificateDer::from(server_cert.der().to_vec()), ca_der];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServiceTls {
        ca_path,
        ca_pem,
        server_config: Arc::new(config),
    })
}

/// An axum listener that hands over connections once their TLS handshake is done.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` (in a background task of the current runtime).
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically out of file descriptors: wait rather than spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener {
            local_addr,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task only ends when it is aborted with the listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        let n: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("kvs-tls-{tag}-{}-{n:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    #[test]
    fn ca_is_created_once_with_a_private_key_and_reused() {
        let dir = temp_dir("reuse");
        let first = load_or_create(&dir.0, &["cam.local".into()]).unwrap();
        assert_eq!(first.ca_path, dir.0.join(CA_CERT_FILE));
        assert_eq!(
            std::fs::read_to_string(&first.ca_path).unwrap(),
            first.ca_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(dir.0.join(CA_KEY_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let again = load_or_create(&dir.0, &[]).unwrap();
        assert_eq!(again.ca_pem, first.ca_pem);
    }

    #[test]
    fn damaged_ca_certificate_is_a_clear_error() {
        let dir = temp_dir("damaged");
        load_or_create(&dir.0, &[]).unwrap();
        let ca_path = dir.0.join(CA_CERT_FILE);
        for (content, reason) in [
            ("not a certificate at all\n", "no PEM certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nMIIB\n",
                "not a PEM certificate",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "not a PEM certificate",
            ),
        ] {
            std::fs::write(&ca_path, content).unwrap();
            match load_or_create(&dir.0, &[]) {
                Err(TlsError::BadFile { path, reason: r }) => {
                    assert_eq!(path, ca_path);
                    assert!(r.starts_with(reason), "{content:?}: {r}");
                }
                other => panic!("{content:?}: expected BadFile, got {other:?}"),
            }
        }
    }
}
