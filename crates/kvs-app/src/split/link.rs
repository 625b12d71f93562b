//! The byte carrier under the split-mode link: a Unix socket, TCP, or a serial line.
//!
//! Owns opening, re-opening and accepting the carrier, and moving bytes both ways through
//! bounded channels. It must not look into the bytes: framing, checksums and resynchronisation
//! are `kvs_bridge`'s (a serial line drops and corrupts bytes; a reconnect loses whatever was
//! in flight, and the bridge's state machines are told with [`LinkEvent::Up`]).
//!
//! Who listens: `tcp-listen:` listens and `tcp:` connects, whichever side uses them; for
//! `unix:` the signaling side (always on) listens and the media side connects. A listener
//! takes a newer connection over an older one (a media process that restarted). Writes while
//! the carrier is down are dropped: the link protocol retries what matters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Default serial speed.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Bytes read at once.
const READ_CHUNK: usize = 4096;
/// Write and event queue depths: the bridge cores emit a bounded burst per input.
const QUEUE: usize = 256;
/// Pause before re-opening a carrier that failed.
const RETRY: Duration = Duration::from_millis(200);

/// Where the link runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddr {
    /// `unix:<path>`.
    Unix(PathBuf),
    /// `tcp-listen:<host:port>`.
    TcpListen(SocketAddr),
    /// `tcp:<host:port>`.
    Tcp(String),
    /// `serial:<device>[,<baud>]`.
    Serial { path: PathBuf, baud: u32 },
}

/// Why a link address or carrier is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link `{0}`: expected unix:<path>, tcp-listen:<host:port>, tcp:<host:port> or serial:<device>[,<baud>]")]
    Syntax(String),
    #[error("link `{addr}`: {reason}")]
    Invalid { addr: String, reason: String },
    #[error("link {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
}

impl FromStr for LinkAddr {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, LinkError> {
        let invalid = |reason: &str| LinkError::Invalid {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| LinkError::Syntax(s.into()))?;
        if rest.is_empty() {
            return Err(LinkError::Syntax(s.into()));
        }
        match scheme {
            "unix" => Ok(LinkAddr::Unix(rest.into())),
            "tcp-listen" => rest
                .parse()
                .map(LinkAddr::TcpListen)
                .map_err(|_| invalid("not a host:port socket address")),
            "tcp" => {
                if !rest.contains(':') {
                    return Err(invalid("no port"));
                }
                Ok(LinkAddr::Tcp(rest.into()))
            }
            "serial" => {
                let (path, baud) = match rest.split_once(',') {
                    Some((p, b)) => (
                        p,
                        b.parse::<u32>()
                            .ok()
                            .filter(|b| (50..=4_000_000).contains(b))
                            .ok_or_else(|| invalid("baud rate is not a number in 50..=4000000"))?,
                    ),
                    None => (rest, DEFAULT_BAUD),
                };
                Ok(LinkAddr::Serial {
                    path: path.into(),
                    baud,
                })
            }
            _ => Err(LinkError::Syntax(s.into())),
        }
    }
}

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            LinkAddr::TcpListen(a) => write!(f, "tcp-listen:{a}"),
            LinkAddr::Tcp(a) => write!(f, "tcp:{a}"),
            LinkAddr::Serial { path, baud } => write!(f, "serial:{},{baud}", path.display()),
        }
    }
}

/// Which end of the link this process is (decides who listens on a Unix socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    Signaling,
    Media,
}

/// What the carrier reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// A (new) connection is up: whatever was half-received before is gone.
    Up,
    Bytes(Vec<u8>),
    /// The connection ended; a new one is being made.
    Down(String),
}

/// A running carrier: events in, bytes out. Dropping it stops the carrier.
pub struct Link {
    pub events: mpsc::Receiver<LinkEvent>,
    pub writer: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

enum Opener {
    TcpListener(tokio::net::TcpListener),
    UnixListener(tokio::net::UnixListener, PathBuf),
    TcpConnect(String),
    UnixConnect(PathBuf),
    Serial(PathBuf, u32),
}

impl Drop for Opener {
    fn drop(&mut self) {
        if let Opener::UnixListener(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Opener {
    fn is_listener(&self) -> bool {
        matches!(self, Opener::TcpListener(_) | Opener::UnixListener(..))
    }

    async fn open(&self) -> std::io::Result<Box<dyn Duplex>> {
        match self {
            Opener::TcpListener(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                tracing::debug!(%peer, "link connection accepted");
                Ok(Box::new(s))
            }
            Opener::UnixListener(l, _) => Ok(Box::new(l.accept().await?.0)),
            Opener::TcpConnect(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Opener::UnixConnect(p) => Ok(Box::new(tokio::net::UnixStream::connect(p).await?)),
            Opener::Serial(path, baud) => {
                use tokio_serial::SerialPortBuilderExt;
                // Raw mode, 8N1, no flow control: what the link's framing expects.
                let port = tokio_serial::new(path.to_string_lossy(), *baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One)
                    .flow_control(tokio_serial::FlowControl::None)
                    .open_native_async()
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(port))
            }
        }
    }
}

impl Link {
    /// Opens the carrier for `side` (listening sockets are bound now, so a bad address fails
    /// here) and runs it until dropped.
    pub async fn start(addr: &LinkAddr, side: LinkSide) -> Result<Link, LinkError> {
        let io = |source| LinkError::Io {
            addr: addr.to_string(),
            source,
        };
        let opener = match (addr, side) {
            (LinkAddr::TcpListen(a), _) => {
                Opener::TcpListener(tokio::net::TcpListener::bind(a).await.map_err(io)?)
            }
            (LinkAddr::Tcp(a), _) => Opener::TcpConnect(a.clone()),
            (LinkAddr::Unix(p), LinkSide::Signaling) => {
                // A socket file left by an earlier run would make bind fail.
                if std::fs::symlink_metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(p);
                }
                Opener::UnixListener(tokio::net::UnixListener::bind(p).map_err(io)?, p.clone())
            }
            (LinkAddr::Unix(p), LinkSide::Media) => Opener::UnixConnect(p.clone()),
            (LinkAddr::Serial { path, baud }, _) => {
                let opener = Opener::Serial(path.clone(), *baud);
                // Open once now so a wrong device name is reported at start-up.
                drop(opener.open().await.map_err(io)?);
                opener
            }
        };
        let (event_tx, events) = mpsc::channel(QUEUE);
        let (writer, write_rx) = mpsc::channel(QUEUE);
        let name = addr.to_string();
        let task = tokio::spawn(run(opener, name, event_tx, write_rx));
        Ok(Link {
            events,
            writer,
            task,
        })
    }
}

async fn run(
    opener: Opener,
    name: String,
    events: mpsc::Sender<LinkEvent>,
    mut writes: mpsc::Receiver<Vec<u8>>,
) {
    let mut next: Option<Box<dyn Duplex>> = None;
    loop {
        let stream = match next.take() {
            Some(s) => s,
            None => {
                // Not connected: writes are dropped until a connection is up.
                let opened = tokio::select! {
                    r = opener.open() => r,
                    w = writes.recv() => match w {
                        Some(_) => continue,
                        None => return,
                    },
                };
                match opened {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(link = %name, "link not up: {e}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
        };
        tracing::info!(link = %name, "link up");
        if events.send(LinkEvent::Up).await.is_err() {
            return;
        }
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = vec![0u8; READ_CHUNK];
        let reason = loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => break "closed by the other side".to_owned(),
                    Ok(n) => {
                        if events.send(LinkEvent::Bytes(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break e.to_string(),
                },
                w = writes.recv() => match w {
                    Some(data) => {
                        let written = async {
                            wr.write_all(&data).await?;
                            wr.flush().await
                        };
                        if let Err(e) = written.await {
                            break e.to_string();
                        }
                    }
                    None => return,
                },
                accepted = opener.open(), if opener.is_listener() => {
                    if let Ok(s) = accepted {
                        next = Some(s);
                        break "replaced by a newer connection".to_owned();
                    }
                }
            }
        };
        tracing::info!(link = %name, "link down: {reason}");
        if events.send(LinkEvent::Down(reason)).await.is_err() {
            return;
        }
        if next.is_none() && !opener.is_listener() {
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for s in [
            "unix:/tmp/kvs.sock",
            "tcp-listen:127.0.0.1:7000",
            "tcp:localhost:7000",
            "serial:/dev/ttyUSB0,921600",
        ] {
            let a: LinkAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "serial:/dev/ttyS1".parse::<LinkAddr>().unwrap(),
            LinkAddr::Serial {
                path: "/dev/ttyS1".into(),
                baud: DEFAULT_BAUD
            }
        );
        for bad in [
            "",
            "unix:",
            "pipe:/x",
            "tcp:nohost",
            "tcp-listen:localhost",
            "serial:/dev/x,fast",
            "serial:/dev/x,0",
        ] {
            assert!(bad.parse::<LinkAddr>().is_err(), "{bad} parsed");
        }
    }

    #[tokio::test]
    async fn bytes_cross_a_unix_socket_and_a_restarted_peer_reconnects() {
        let dir = std::env::temp_dir().join(format!("kvs-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = LinkAddr::Unix(dir.join("l.sock"));
        let mut sig = Link::start(&addr, LinkSide::Signaling).await.unwrap();
        for round in 0..2u8 {
            let mut media = Link::start(&addr, LinkSide::Media).await.unwrap();
            assert!(matches!(media.events.recv().await, Some(LinkEvent::Up)));
            loop {
                match sig.events.recv().await.unwrap() {
                    LinkEvent::Up => break,
                    LinkEvent::Down(_) => continue,
                    LinkEvent::Bytes(b) => panic!("stale bytes {b:?}"),
                }
            }
            media.writer.send(vec![round, 1, 2]).await.unwrap();
            let mut got = Vec::new();
            while got.len() < 3 {
                match sig.events.recv().await.unwrap() {
                    LinkEvent::Bytes(b) => got.extend(b),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, vec![round, 1, 2]);
            sig.writer.send(vec![9]).await.unwrap();
            assert!(matches!(media.events.recv().await, Some(LinkEvent::Bytes(b)) if b == vec![9]));
            drop(media); // the media process exits; the next round is a new one
        }
        drop(sig);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
