//! Accepting connections for the service's listeners.
//!
//! Owns: the accept loop, the caps on TCP connections (over every listener of one service, and
//! per client address), TLS handshakes (with a deadline), HTTP/1 serving with a deadline for
//! request headers (a client that sends half a request and stalls is closed), and the
//! graceful stop (the caller's stop hook first — GO_AWAY to WebSocket clients — then open HTTP
//! exchanges are finished).
//! A connection over a cap is closed at once, before TLS or HTTP: answering it would cost the
//! very resources the cap protects. When most of a large crowd of connections has left, the
//! memory they used is handed back to the operating system (glibc keeps it otherwise).
//!
//! Must not touch: what is served (the axum router from [`crate::server`]), routing, SigV4.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for HTTP exchanges in progress to finish.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// Counts open connections against the service's caps. Shared by all listeners of a service.
#[derive(Debug)]
pub(crate) struct ConnLimiter {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Refusals since the last warning, so a flood produces one log line a second, not one per
    /// connection.
    refused: u64,
    last_warning: Option<std::time::Instant>,
    /// Most connections open since memory was last released.
    peak: usize,
}

/// The unit a per-address cap counts: the IPv4 address, or the /64 an IPv6 address is in (one
/// host usually holds a whole /64, so counting single IPv6 addresses would be no cap at all).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ConnLimiter {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        ConnLimiter {
            max_total,
            max_per_source,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for one more connection from `ip`, or `None` when a cap is reached.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let source = source_of(ip);
        let mut c = self.counts();
        let from_source = c.by_source.get(&source).copied().unwrap_or(0);
        if c.total >= self.max_total || from_source >= self.max_per_source {
            c.refused += 1;
            let now = std::time::Instant::now();
            if c.last_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                warn!(
                    %source,
                    open = c.total,
                    from_source,
                    refused = c.refused,
                    "connection cap reached; closing new connections"
                );
                c.refused = 0;
                c.last_warning = Some(now);
            }
            return None;
        }
        c.total += 1;
        c.peak = c.peak.max(c.total);
        *c.by_source.entry(source).or_insert(0) += 1;
        Some(ConnPermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.counts().total
    }

    fn release(&self, source: IpAddr) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&source);
            }
        }
        // After a burst from many addresses the map keeps its largest capacity; give it back.
        let (len, cap) = (c.by_source.len(), c.by_source.capacity());
        if cap > 256 && len < cap / 8 {
            c.by_source.shrink_to(len * 2);
        }
        // After most of a large crowd has left, hand its memory back.
        if c.peak >= RELEASE_AFTER_PEAK && c.total * 4 <= c.peak {
            c.peak = c.total;
            drop(c);
            release_memory_soon();
        }
    }
}

/// A crowd of connections this large that mostly leaves is followed by a memory release.
pub(crate) const RELEASE_AFTER_PEAK: usize = 64;

/// Hands memory freed by closed connections back to the operating system, a second after the
/// request (so one release follows a whole burst of closes, and later closes of the same
/// burst are covered too).
///
/// glibc's malloc keeps freed memory in its arenas (one per thread that allocated: every
/// tokio worker) and returns only the top of each heap by itself; the thousands of small
/// per-connection allocations (buffers, channel blocks, map entries) leave free space
/// scattered below live data, so without this the process would stay at its peak size after
/// a flood. `malloc_trim(0)` releases the free pages of every arena.
pub(crate) fn release_memory_soon() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static SCHEDULED: AtomicBool = AtomicBool::new(false);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            SCHEDULED.store(false, Ordering::Release);
            // SAFETY: malloc_trim only walks glibc's own heaps under their locks; it has no
            // preconditions and may be called from any thread at any time.
            let released = unsafe { libc::malloc_trim(0) };
            debug!(
                released = released != 0,
                "freed memory returned to the system"
            );
        });
    }
}

/// One counted connection; released when dropped.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limiter.release(self.source);
    }
}

/// A connection's I/O carrying its permit, so the count lasts as long as the socket — through
/// an HTTP upgrade to WebSocket too.
struct Counted<T> {
    io: T,
    _permit: ConnPermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What one listener serves and how.
pub(crate) struct Listen {
    pub listener: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub app: Router,
    pub limiter: Arc<ConnLimiter>,
    pub header_read_timeout: Duration,
    /// Run every [`HOUSEKEEPING_INTERVAL`] while serving (the service's periodic sweep).
    pub housekeeping: Box<dyn Fn() + Send>,
}

/// How often [`Listen::housekeeping`] runs.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Serves until `stop` completes; then runs `on_stop`, lets open HTTP exchanges finish (for at
/// most [`STOP_GRACE`]) and returns.
pub(crate) async fn serve<F, S>(listen: Listen, stop: F, on_stop: S) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
    S: FnOnce() + Send + 'static,
{
    let Listen {
        listener,
        tls,
        app,
        limiter,
        header_read_timeout,
        housekeeping,
    } = listen;
    let mut ticks = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let acceptor = tls.map(TlsAcceptor::from);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                housekeeping();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically out of file descriptors: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(permit) = limiter.try_acquire(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let closing = closing_rx.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let io = Counted {
                        io: tcp,
                        _permit: permit,
                    };
                    serve_http(io, app, header_read_timeout, closing).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let io = Counted {
                                io: tls,
                                _permit: permit,
                            };
                            serve_http(io, app, header_read_timeout, closing).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    on_stop();
    let _ = closing_tx.send(true);
    drop(closing_rx);
    if tokio::time::timeout(STOP_GRACE, closing_tx.closed())
        .await
        .is_err()
    {
        info!("stopping with HTTP exchanges still open");
    }
    Ok(())
}

/// One HTTP/1 connection (upgradable to WebSocket).
async fn serve_http<I>(
    io: I,
    app: Router,
    header_read_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            changed = closing.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The address a listener is bound to, for logs and handles.
pub(crate) fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_source_and_in_total_and_release_on_drop() {
        let limiter = Arc::new(ConnLimiter::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limiter.try_acquire(a).unwrap();
        let _a2 = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none(), "per-source cap");
        let _b1 = limiter.try_acquire(b).unwrap();
        assert!(limiter.try_acquire(b).is_none(), "total cap");
        drop(a1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.try_acquire(a).is_some());
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = Arc::new(ConnLimiter::new(100, 1));
        let _p = limiter.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(limiter
            .try_acquire("2001:db8::ffff:2".parse().unwrap())
            .is_none());
        assert!(limiter
            .try_acquire("2001:db8:0:1::1".parse().unwrap())
            .is_some());
        let _q = limiter.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(limiter
            .try_acquire("::ffff:192.0.2.7".parse().unwrap())
            .is_none());
    }
}
