//! The tokio driver: owns the UDP sockets and one task that runs [`PeerCore`].
//!
//! One UDP socket per bind address is shared by every session; a small receive task per
//! socket forwards datagrams to the engine task (bounded channel: when the engine falls
//! behind, the kernel's socket buffer absorbs and then drops, as UDP does). Sends never wait:
//! a full socket buffer drops the packet (logged). Both directions move several datagrams
//! per system call (see [`crate::udp`]).
//!
//! Events go to the application through a bounded channel without ever blocking the engine:
//! they wait in a backlog while the channel is full. When the backlog exceeds
//! [`EVENT_BACKLOG_LIMIT`], *droppable* events ([`PeerEvent::DataMessage`] and
//! [`PeerEvent::SessionTiming`]) are dropped and logged; all others (they are a few per
//! session) are kept.
//!
//! Frames come in through [`FrameSink`]s: bounded channels fed with `try_send` from capture
//! threads (never blocking them; a full sink drops the frame and counts it).

use crate::api::{Datagram, IceServer, PeerCommand, PeerConfig, PeerError, PeerEvent};
use crate::core::PeerCore;
use crate::nat::{NatServer, StreamIo};
use crate::udp::{RecvBatch, SendBatcher, UdpIo};
use kvs_media::fanout::FanoutKind;
use kvs_media::receive::RxItem;
use kvs_media::talkback::TalkPacket;
use kvs_platform::EncodedFrame;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Events held while the application's channel is full before droppable ones are dropped.
pub const EVENT_BACKLOG_LIMIT: usize = 1024;
/// Received datagrams waiting for the engine task.
const NET_QUEUE: usize = 1024;
const COMMAND_QUEUE: usize = 64;
/// Received datagrams handled before what they produced is sent, when several are waiting.
/// Fewer, larger (segmented) sends: on a loopback data-channel echo the device's system time
/// fell by about a third against flushing after each datagram (with the Rust viewer reading
/// bursts too); a reply waits a few microseconds more.
const FLUSH_EVERY_DATAGRAMS: usize = 16;
/// Results of name lookups and TURN connections waiting for the engine task.
const NAT_QUEUE: usize = 256;
/// Viewers' audio packets waiting for the application's talk-back thread (~1.3 s of three
/// talkers at 20 ms); a full queue drops the newest packet (counted), never waits.
pub const TALK_QUEUE: usize = 192;
/// Viewers' media packets waiting for the application's receive thread (~2 s of a 3 Mbit/s
/// camera and its audio); a full queue drops the newest packet (counted), never waits.
pub const RX_QUEUE: usize = 1024;
/// Session ends held for a receive thread that is behind (one that never reads loses them).
const MAX_HELD_ENDS: usize = 256;
/// Writes queued per TURN connection; a connection that falls this far behind is closed
/// (its relay fails over to the others) rather than buffering without bound.
const STREAM_WRITE_QUEUE: usize = 512;
const TCP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the engine's helper tasks report (name lookups, TURN connections).
enum NatInput {
    Resolved {
        generation: u64,
        servers: Vec<NatServer>,
    },
    StreamConnected {
        conn: u64,
        local: SocketAddr,
    },
    StreamData {
        conn: u64,
        data: Vec<u8>,
    },
    StreamClosed {
        conn: u64,
        why: String,
    },
}

enum EngineMsg {
    Command(PeerCommand, oneshot::Sender<Result<(), PeerError>>),
    Shutdown(oneshot::Sender<()>),
}

struct Received {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

/// A bounded, non-blocking way to hand encoded frames to the engine; usable from any thread.
#[derive(Clone)]
pub struct FrameSink {
    tx: mpsc::Sender<EncodedFrame>,
    dropped: Arc<AtomicU64>,
}

impl FrameSink {
    /// Hand over one frame. Never blocks: returns false (and counts the drop) when the engine
    /// is behind or gone.
    pub fn send(&self, frame: EncodedFrame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Frames dropped because the sink was full or the engine stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The application's handle on the engine.
#[derive(Clone)]
pub struct PeerHandle {
    commands: mpsc::Sender<EngineMsg>,
    video: FrameSink,
    audio: FrameSink,
    sessions: Arc<AtomicUsize>,
    local_addrs: Arc<Vec<SocketAddr>>,
    talkback: Arc<Mutex<Option<crate::queue::QueueReceiver<TalkPacket>>>>,
    talk_dropped: Arc<AtomicU64>,
    received: Arc<Mutex<Option<crate::queue::QueueReceiver<RxItem>>>>,
    rx_dropped: Arc<AtomicU64>,
}

impl PeerHandle {
    /// Viewers' media packets and session ends (with [`PeerConfig::receive_media`]), for a
    /// thread that records or decodes them (`kvs_media::receive`). The first call takes it.
    pub fn take_received(&self) -> Option<crate::queue::QueueReceiver<RxItem>> {
        self.received.lock().ok()?.take()
    }

    /// Received packets dropped because the receive thread was behind.
    pub fn received_packets_dropped(&self) -> u64 {
        self.rx_dropped.load(Ordering::Relaxed)
    }

    /// Ask `peer_id` for a keyframe of the video it sends, without waiting (from any thread);
    /// false when the engine's command queue is full or the engine stopped.
    pub fn request_viewer_keyframe(&self, peer_id: &str) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.commands
            .try_send(EngineMsg::Command(
                PeerCommand::RequestViewerKeyframe {
                    peer_id: peer_id.to_string(),
                },
                tx,
            ))
            .is_ok()
    }

    /// Apply a command; the outcome also shows as events.
    pub async fn command(&self, cmd: PeerCommand) -> Result<(), PeerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(EngineMsg::Command(cmd, tx))
            .await
            .map_err(|_| PeerError::EngineStopped)?;
        rx.await.map_err(|_| PeerError::EngineStopped)?
    }

    pub fn video_sink(&self) -> FrameSink {
        self.video.clone()
    }

    pub fn audio_sink(&self) -> FrameSink {
        self.audio.clone()
    }

    /// Viewers' audio packets (with [`PeerConfig::talkback`]), for a thread that decodes and
    /// plays them (`kvs_media::talkback`). A std channel, so that thread can wait with a
    /// timeout; the first call takes it, later ones get `None`.
    pub fn take_talkback(&self) -> Option<crate::queue::QueueReceiver<TalkPacket>> {
        self.talkback.lock().ok()?.take()
    }

    /// Talk-back packets dropped because the talk-back thread was behind.
    pub fn talk_packets_dropped(&self) -> u64 {
        self.talk_dropped.load(Ordering::Relaxed)
    }

    /// Sessions currently open (negotiating or connected).
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The UDP addresses the engine listens on (its host candidates).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Close every session and stop the engine.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(EngineMsg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the engine task.
pub struct PeerEngine;

impl PeerEngine {
    /// Install the crypto provider, create the DTLS certificate (once: it is slow), bind the
    /// sockets and start the engine. Must be called inside a tokio runtime.
    pub async fn start(
        config: PeerConfig,
    ) -> Result<(PeerHandle, mpsc::Receiver<PeerEvent>), PeerError> {
        let cert = tokio::task::spawn_blocking(generate_certificate)
            .await
            .map_err(|_| PeerError::Certificate)??;

        let ips = if config.bind_addrs.is_empty() {
            usable_addresses()?
        } else {
            config.bind_addrs.clone()
        };
        let mut sockets: HashMap<SocketAddr, Arc<UdpIo>> = HashMap::new();
        for ip in ips {
            match bind_in(ip, &config).and_then(UdpIo::new) {
                Ok(io) => {
                    let addr = io.local_addr()?;
                    info!(%addr, segments = io.max_segments(), "peer engine listening");
                    sockets.insert(addr, Arc::new(io));
                }
                Err(e) => warn!(%ip, "cannot bind UDP socket: {e}"),
            }
        }
        if sockets.is_empty() {
            return Err(PeerError::NoAddress);
        }
        let mut local_addrs: Vec<SocketAddr> = sockets.keys().copied().collect();
        // Host candidates in a fixed order (str0m ranks candidates of one kind by the order
        // they are added, and a viewer checks the best first): IPv4 before IPv6 (more often
        // reachable), loopback last (useless to a viewer on another machine).
        local_addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (video_tx, video_rx) = mpsc::channel(config.video_sink_frames.max(1));
        let (audio_tx, audio_rx) = mpsc::channel(config.audio_sink_frames.max(1));
        let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
        let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
        // Queues that allocate as they fill (a std bounded channel allocates every slot up
        // front: ~20 KB for TALK_QUEUE, ~100 KB for RX_QUEUE); a path that is off gets bound 0.
        let bound = |on: bool, cap: usize| if on { cap } else { 0 };
        let (talk_tx, talk_rx) = crate::queue::bounded(bound(config.talkback, TALK_QUEUE));
        let talk_dropped = Arc::new(AtomicU64::new(0));
        let (rx_tx, rx_rx) = crate::queue::bounded(bound(config.receive_media, RX_QUEUE));
        let rx_dropped = Arc::new(AtomicU64::new(0));

        let mut recv_tasks = Vec::new();
        for (addr, sock) in &sockets {
            recv_tasks.push(tokio::spawn(receive_loop(
                *addr,
                sock.clone(),
                net_tx.clone(),
            )));
        }
        drop(net_tx);

        let sessions = Arc::new(AtomicUsize::new(0));
        let initial_servers = config.ice_servers.clone();
        let core = PeerCore::new(config, local_addrs.clone(), Some(cert));
        let (nat_tx, nat_rx) = mpsc::channel(NAT_QUEUE);
        let mut driver = Driver {
            core,
            sockets,
            events: event_tx,
            backlog: VecDeque::new(),
            sessions: sessions.clone(),
            nat_tx,
            streams: HashMap::new(),
            lookup_generation: 0,
            talk: talk_tx,
            talk_dropped: talk_dropped.clone(),
            received: rx_tx,
            rx_dropped: rx_dropped.clone(),
            rx_ended: Vec::new(),
        };
        // The configured servers, as if signaling had just handed them out.
        let all = driver.core.with_own_servers(&initial_servers);
        driver.resolve(&all);
        let _ = driver.core.handle_command(
            Instant::now(),
            PeerCommand::SetIceServers {
                servers: initial_servers,
            },
        );
        tokio::spawn(async move {
            driver.run(cmd_rx, video_rx, audio_rx, net_rx, nat_rx).await;
            for t in recv_tasks {
                t.abort();
            }
        });

        let handle = PeerHandle {
            commands: cmd_tx,
            video: FrameSink {
                tx: video_tx,
                dropped: Arc::default(),
            },
            audio: FrameSink {
                tx: audio_tx,
                dropped: Arc::default(),
            },
            sessions,
            local_addrs: Arc::new(local_addrs),
            talkback: Arc::new(Mutex::new(Some(talk_rx))),
            talk_dropped,
            received: Arc::new(Mutex::new(Some(rx_rx))),
            rx_dropped,
        };
        Ok((handle, event_rx))
    }
}

/// Install str0m's crypto provider (idempotent) and create a DTLS certificate.
pub(crate) fn generate_certificate() -> Result<str0m::config::DtlsCert, PeerError> {
    str0m::crypto::from_feature_flags().install_process_default();
    let provider = str0m::config::CryptoProvider::get_default().ok_or(PeerError::Certificate)?;
    provider
        .dtls_provider
        .generate_certificate()
        .ok_or(PeerError::Certificate)
}

/// Socket buffer sizes asked of the kernel (it caps them at `net.core.{r,w}mem_max`). The
/// 200 KiB default overflows under a data-channel burst from a fast peer; every datagram
/// dropped there costs an SCTP retransmission and a halved congestion window.
pub(crate) const SOCKET_BUFFER_BYTES: usize = 2 << 20;

/// A non-blocking UDP socket bound to `addr`, with [`SOCKET_BUFFER_BYTES`] buffers.
/// Binds `ip` on the configured port, or on the first free port of the configured range.
fn bind_in(ip: IpAddr, config: &PeerConfig) -> std::io::Result<UdpSocket> {
    let Some((first, last)) = config.udp_port_range else {
        return bind_udp(SocketAddr::new(ip, config.udp_port));
    };
    let mut last_error = None;
    for port in first..=last {
        match bind_udp(SocketAddr::new(ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("empty UDP port range {first}-{last}"),
        )
    }))
}

pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer still works, only less well.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!(%addr, "cannot raise the UDP receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!(%addr, "cannot raise the UDP send buffer: {e}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Every usable interface address: loopback included, IPv6 link-local skipped.
fn usable_addresses() -> Result<Vec<IpAddr>, PeerError> {
    let ips: Vec<IpAddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_unspecified(),
            IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    if ips.is_empty() {
        return Err(PeerError::NoAddress);
    }
    Ok(ips)
}

async fn receive_loop(local: SocketAddr, io: Arc<UdpIo>, tx: mpsc::Sender<Received>) {
    let mut batch = RecvBatch::new();
    loop {
        match io.recv(&mut batch).await {
            Ok(n) => {
                let at = Instant::now();
                for i in 0..n {
                    let (source, data) = batch.datagram(i);
                    let msg = Received {
                        at,
                        source,
                        destination: local,
                        data: data.to_vec(),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // ICMP errors surface here on some systems; they do not end the socket.
                debug!(%local, "UDP receive error: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}

struct Driver {
    core: PeerCore,
    sockets: HashMap<SocketAddr, Arc<UdpIo>>,
    events: mpsc::Sender<PeerEvent>,
    backlog: VecDeque<PeerEvent>,
    sessions: Arc<AtomicUsize>,
    nat_tx: mpsc::Sender<NatInput>,
    /// TURN connections: the writer queue of each.
    streams: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    /// Lookups of an older server list are ignored when they finish.
    lookup_generation: u64,
    /// Viewers' audio to the talk-back thread.
    talk: crate::queue::QueueSender<TalkPacket>,
    talk_dropped: Arc<AtomicU64>,
    /// Viewers' media to the receive thread.
    received: crate::queue::QueueSender<RxItem>,
    rx_dropped: Arc<AtomicU64>,
    /// Session ends the full channel did not take yet: retried (a recording is finalized on
    /// them), at most [`MAX_HELD_ENDS`].
    rx_ended: Vec<RxItem>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<EngineMsg>,
        mut video: mpsc::Receiver<EncodedFrame>,
        mut audio: mpsc::Receiver<EncodedFrame>,
        mut net: mpsc::Receiver<Received>,
        mut nat: mpsc::Receiver<NatInput>,
    ) {
        let mut shutdown_reply = None;
        let mut orphaned = false;
        loop {
            let deadline = self.core.poll_timeout(Instant::now());
            let events = self.events.clone();
            let has_backlog = !self.backlog.is_empty();
            tokio::select! {
                msg = commands.recv() => match msg {
                    Some(EngineMsg::Command(cmd, reply)) => {
                        if let PeerCommand::SetIceServers { servers } = &cmd {
                            let all = self.core.with_own_servers(servers);
                            self.resolve(&all);
                        }
                        let r = self.core.handle_command(Instant::now(), cmd);
                        self.sessions.store(self.core.session_count(), Ordering::Relaxed);
                        let _ = reply.send(r);
                    }
                    Some(EngineMsg::Shutdown(reply)) => {
                        shutdown_reply = Some(reply);
                    }
                    // Every handle was dropped: nobody can command the engine any more.
                    None => orphaned = true,
                },
                Some(f) = video.recv() => self.core.push_frame(Instant::now(), FanoutKind::Video, &f),
                Some(f) = audio.recv() => self.core.push_frame(Instant::now(), FanoutKind::Audio, &f),
                Some(d) = net.recv() => {
                    self.core.handle_datagram(d.at, d.source, d.destination, &d.data);
                    // Take whatever else already arrived before servicing timers.
                    // Send what they produced every few datagrams, not after each: the
                    // replies (SACKs, echoed data) then leave in fewer, segmented sends.
                    let mut n = 0usize;
                    while let Ok(d) = net.try_recv() {
                        self.core.handle_datagram(d.at, d.source, d.destination, &d.data);
                        n += 1;
                        if n.is_multiple_of(FLUSH_EVERY_DATAGRAMS) {
                            self.flush_transmits();
                        }
                    }
                }
                Some(input) = nat.recv() => self.on_nat_input(input),
                permit = events.reserve(), if has_backlog => {
                    if let (Ok(permit), Some(e)) = (permit, self.backlog.pop_front()) {
                        permit.send(e);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.core.handle_timeout(Instant::now());
                }
            }
            self.flush_transmits();
            self.flush_streams();
            self.flush_talk();
            self.flush_received();
            // Count first: an application that sees `Closed` must see the new count.
            self.sessions
                .store(self.core.session_count(), Ordering::Relaxed);
            self.flush_events();
            if shutdown_reply.is_some() || orphaned {
                break;
            }
        }
        info!("peer engine stopping");
        self.core.close_all(Instant::now());
        self.flush_transmits();
        self.flush_events();
        self.sessions.store(0, Ordering::Relaxed);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    /// Look up the servers' names in the background; the core gets the whole list when done
    /// (literal addresses it has already taken from the command itself).
    fn resolve(&mut self, servers: &[IceServer]) {
        self.lookup_generation += 1;
        let generation = self.lookup_generation;
        let (parsed, bad) = crate::nat::parse_ice_servers(servers);
        for e in bad {
            warn!("ICE server ignored: {e}");
        }
        if parsed.is_empty() || parsed.iter().all(|s| s.literal().is_some()) {
            return;
        }
        let tx = self.nat_tx.clone();
        tokio::spawn(async move {
            // All lookups at once: one name that does not resolve (the regional STUN server
            // seen from an offline network) must not hold up the others.
            let mut lookups = tokio::task::JoinSet::new();
            for (index, server) in parsed.into_iter().enumerate() {
                lookups.spawn(async move {
                    if let Some(s) = server.literal() {
                        return (index, Some(s));
                    }
                    let host = (server.parsed.host.as_str(), server.parsed.port);
                    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(host)).await
                    {
                        Ok(Ok(addrs)) => {
                            let addrs: Vec<SocketAddr> = addrs.collect();
                            // IPv4 first: that is where NATs (and so the need for these) are.
                            let pick = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
                            (index, pick.map(|a| server.at(*a)))
                        }
                        Ok(Err(e)) => {
                            warn!(uri = %server.uri, "cannot resolve ICE server: {e}");
                            (index, None)
                        }
                        Err(_) => {
                            warn!(uri = %server.uri, "ICE server lookup timed out");
                            (index, None)
                        }
                    }
                });
            }
            let mut resolved: Vec<(usize, NatServer)> = Vec::new();
            while let Some(done) = lookups.join_next().await {
                if let Ok((index, Some(server))) = done {
                    resolved.push((index, server));
                }
            }
            resolved.sort_by_key(|(i, _)| *i);
            let _ = tx
                .send(NatInput::Resolved {
                    generation,
                    servers: resolved.into_iter().map(|(_, s)| s).collect(),
                })
                .await;
        });
    }

    fn on_nat_input(&mut self, input: NatInput) {
        let now = Instant::now();
        match input {
            NatInput::Resolved {
                generation,
                servers,
            } => {
                if generation == self.lookup_generation {
                    self.core.set_nat_servers(now, servers);
                }
            }
            NatInput::StreamConnected { conn, local } => {
                self.core.stream_connected(now, conn, local)
            }
            NatInput::StreamData { conn, data } => self.core.stream_data(now, conn, &data),
            NatInput::StreamClosed { conn, why } => {
                if self.streams.remove(&conn).is_some() {
                    self.core.stream_closed(now, conn, &why);
                }
            }
        }
    }

    /// Open, write and close the TURN connections the core asks for.
    fn flush_streams(&mut self) {
        while let Some(io) = self.core.poll_stream_io() {
            match io {
                StreamIo::Connect { conn, server } => {
                    let (wtx, wrx) = mpsc::channel(STREAM_WRITE_QUEUE);
                    self.streams.insert(conn, wtx);
                    tokio::spawn(run_stream(conn, server, wrx, self.nat_tx.clone()));
                }
                StreamIo::Write { conn, data } => {
                    let Some(w) = self.streams.get(&conn) else {
                        continue;
                    };
                    if w.try_send(data).is_err() {
                        warn!(conn, "TURN connection not keeping up; closing it");
                        self.streams.remove(&conn);
                        self.core
                            .stream_closed(Instant::now(), conn, "write queue full");
                    }
                }
                StreamIo::Close { conn } => {
                    // Dropping the writer ends the connection's task.
                    self.streams.remove(&conn);
                }
            }
        }
        self.flush_transmits();
    }

    fn flush_transmits(&mut self) {
        let max_segments = self
            .sockets
            .values()
            .map(|io| io.max_segments())
            .min()
            .unwrap_or(1);
        let mut batcher = SendBatcher::new(max_segments);
        while let Some(Datagram {
            source,
            destination,
            data,
        }) = self.core.poll_transmit()
        {
            if let Some(group) = batcher.push(source, destination, data) {
                self.send(group);
            }
        }
        if let Some(group) = batcher.finish() {
            self.send(group);
        }
    }

    fn send(&self, group: crate::udp::SendGroup) {
        let Some(io) = self.sockets.get(&group.source) else {
            debug!(source = %group.source, "no socket for transmit source");
            return;
        };
        if let Err(e) = io.send(group.destination, &group.contents, group.segment_size) {
            debug!(destination = %group.destination, "UDP send dropped: {e}");
        }
    }

    /// Hand viewers' audio to the talk-back thread without waiting: decoding is its work.
    fn flush_talk(&mut self) {
        while let Some(p) = self.core.poll_talk_packet() {
            if self.talk.try_send(p).is_err() {
                self.talk_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hand viewers' media to the receive thread without waiting.
    fn flush_received(&mut self) {
        let mut ended = std::mem::take(&mut self.rx_ended).into_iter();
        for item in ended.by_ref() {
            if let Err(std::sync::mpsc::TrySendError::Full(item)) = self.received.try_send(item) {
                self.rx_ended.push(item);
            }
        }
        while let Some(item) = self.core.poll_received() {
            match self.received.try_send(item) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(item @ RxItem::Ended { .. }))
                    if self.rx_ended.len() < MAX_HELD_ENDS =>
                {
                    self.rx_ended.push(item)
                }
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.rx_dropped.fetch_add(1, Ordering::Relaxed);
                }
                // Nobody takes viewers' media (no receive thread): nothing to do.
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
            }
        }
    }

    fn flush_events(&mut self) {
        while let Some(e) = self.core.poll_event() {
            if self.backlog.len() >= EVENT_BACKLOG_LIMIT && e.is_droppable() {
                warn!(
                    peer = e.peer_id(),
                    "application not reading events; dropped one"
                );
                continue;
            }
            self.backlog.push_back(e);
        }
        while !self.backlog.is_empty() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    if let Some(e) = self.backlog.pop_front() {
                        permit.send(e);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
    }
}

/// One TCP connection to a TURN server: connect, then copy bytes both ways until either
/// side ends; every outcome is reported to the engine.
async fn run_stream(
    conn: u64,
    server: SocketAddr,
    mut writes: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<NatInput>,
) {
    let stream = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(server)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx
                .send(NatInput::StreamClosed {
                    conn,
                    why: e.to_string(),
                })
                .await;
            return;
        }
        Err(_) => {
            let _ = tx
                .send(NatInput::StreamClosed {
                    conn,
                    why: format!("no connection within {TCP_CONNECT_TIMEOUT:?}"),
                })
                .await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = tx
                .send(NatInput::StreamClosed {
                    conn,
                    why: e.to_string(),
                })
                .await;
            return;
        }
    };
    if tx
        .send(NatInput::StreamConnected { conn, local })
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return "closed by the server".to_string(),
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    if tx.send(NatInput::StreamData { conn, data }).await.is_err() {
                        return "engine gone".to_string();
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let writer = async {
        while let Some(d) = writes.recv().await {
            if let Err(e) = wr.write_all(&d).await {
                return e.to_string();
            }
        }
        "closed by us".to_string()
    };
    let why = tokio::select! {
        w = reader => w,
        w = writer => w,
    };
    debug!(conn, %server, %why, "TURN connection ended");
    let _ = tx.send(NatInput::StreamClosed { conn, why }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_port_range_takes_the_first_free_port_and_reports_a_full_range() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Find two adjacent free ports, then occupy the first.
        let (taken, first) = (0..50)
            .find_map(|_| {
                let a = std::net::UdpSocket::bind((ip, 0)).ok()?;
                let port = a.local_addr().ok()?.port();
                let next = port.checked_add(1)?;
                std::net::UdpSocket::bind((ip, next)).ok().map(drop)?;
                Some((a, port))
            })
            .expect("two adjacent free UDP ports");
        let config = PeerConfig {
            udp_port_range: Some((first, first + 1)),
            ..PeerConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let socket = bind_in(ip, &config).expect("the second port of the range");
        assert_eq!(socket.local_addr().unwrap().port(), first + 1);
        let full = bind_in(ip, &config).expect_err("both ports taken");
        assert_eq!(full.kind(), std::io::ErrorKind::AddrInUse);
        drop(taken);
    }
}
