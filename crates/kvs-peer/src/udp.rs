//! UDP I/O for the peer engine: several datagrams per system call each way.
//!
//! - **Send**: consecutive datagrams to one destination that have one size (the RTP packets
//!   of a frame, cut to equal sizes by [`kvs_media::rtp`]; SCTP DATA packets) go out as one
//!   segmented send (Linux UDP GSO, through `quinn-udp`), the kernel cutting them apart.
//!   [`SendBatcher`] (sans-IO) decides the groups. When the system refuses segmentation, the
//!   group is sent datagram by datagram and segmentation is not tried again.
//! - **Receive**: `recvmmsg` fills up to [`RECV_BATCH`] datagrams per call.
//!
//! `quinn-udp` switches on UDP GRO (the kernel joining received datagrams into one buffer of
//! up to 64); we switch it off again, so each receive buffer holds one datagram and stays 2 KiB
//! instead of ~96 KiB.

use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams read per receive call.
pub(crate) const RECV_BATCH: usize = 8;
/// Room for one datagram (WebRTC keeps them under ~1200 bytes; STUN/DTLS well under 2 KiB).
pub(crate) const RECV_BUFFER_BYTES: usize = 2048;
/// Bytes in one segmented send: under the 64 KiB a UDP send can carry.
const MAX_BATCH_BYTES: usize = 60 * 1024;

/// A bound UDP socket with its `quinn-udp` state.
pub(crate) struct UdpIo {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl UdpIo {
    /// Wrap a bound socket (see [`crate::engine::bind_udp`]).
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        disable_gro(&socket);
        Ok(Self { socket, state })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Most datagrams one send may carry (1 when segmentation is unavailable).
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Wait for datagrams and read up to [`RECV_BATCH`] of them: returns how many, with their
    /// sources and lengths in `batch`.
    pub(crate) async fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            let mut slices = batch.bufs.each_mut().map(|b| IoSliceMut::new(&mut b[..]));
            let result = self.socket.try_io(Interest::READABLE, || {
                self.state
                    .recv((&self.socket).into(), &mut slices, &mut batch.meta)
            });
            match result {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Send one datagram, or several of `segment_size` bytes (the last may be shorter)
    /// back to back in `contents`. Never waits: a full socket buffer drops them (UDP).
    pub(crate) fn send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let result = self.socket.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), &transmit)
        });
        match (result, segment_size) {
            (Err(e), Some(size)) if e.kind() != io::ErrorKind::WouldBlock => {
                // Segmentation refused (quinn-udp stops offering it): send them one by one.
                debug!(%destination, "segmented send failed ({e}); sending one by one");
                for segment in contents.chunks(size.max(1)) {
                    self.send(destination, segment, None)?;
                }
                Ok(())
            }
            (result, _) => result,
        }
    }
}

/// Receive buffers and what the last receive put in them.
pub(crate) struct RecvBatch {
    bufs: Box<[[u8; RECV_BUFFER_BYTES]; RECV_BATCH]>,
    meta: [quinn_udp::RecvMeta; RECV_BATCH],
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        Self {
            bufs: Box::new([[0u8; RECV_BUFFER_BYTES]; RECV_BATCH]),
            meta: [quinn_udp::RecvMeta::default(); RECV_BATCH],
        }
    }

    /// Datagram `i` of the last receive: its source and bytes.
    pub(crate) fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let meta = &self.meta[i];
        (meta.addr, &self.bufs[i][..meta.len.min(RECV_BUFFER_BYTES)])
    }
}

/// quinn-udp turns UDP GRO on; with GRO the kernel may join datagrams into one buffer of up
/// to 64 of them, which our 2 KiB buffers could not hold.
fn disable_gro(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off: libc::c_int = 0;
        // SAFETY: setsockopt on our own open socket, with a pointer to a c_int that lives for
        // the call and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            debug!("cannot turn UDP GRO off: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// One group of datagrams that leaves in one send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SendGroup {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The datagrams back to back.
    pub contents: Vec<u8>,
    /// `Some(size)` when `contents` holds several datagrams of `size` bytes (the last may be
    /// shorter).
    pub segment_size: Option<usize>,
}

/// Groups outgoing datagrams for segmented sends (sans-IO): feed datagrams in order with
/// [`SendBatcher::push`]; it hands back each group that is complete.
pub(crate) struct SendBatcher {
    max_segments: usize,
    open: Option<Open>,
}

struct Open {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

impl SendBatcher {
    /// At most `max_segments` datagrams per group (1: no grouping).
    pub(crate) fn new(max_segments: usize) -> Self {
        Self {
            max_segments: max_segments.max(1),
            open: None,
        }
    }

    /// Add the next datagram; returns the group it closed, if any.
    pub(crate) fn push(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        data: Vec<u8>,
    ) -> Option<SendGroup> {
        if let Some(open) = &mut self.open {
            let fits = open.source == source
                && open.destination == destination
                && !open.closed
                && open.count < self.max_segments
                && data.len() <= open.segment
                && open.contents.len() + data.len() <= MAX_BATCH_BYTES;
            if fits {
                open.closed = data.len() < open.segment;
                open.contents.extend_from_slice(&data);
                open.count += 1;
                return None;
            }
        }
        let done = self.finish();
        self.open = Some(Open {
            source,
            destination,
            segment: data.len(),
            contents: data,
            count: 1,
            closed: false,
        });
        done
    }

    /// Close the open group (call when no datagram is left).
    pub(crate) fn finish(&mut self) -> Option<SendGroup> {
        let open = self.open.take()?;
        Some(SendGroup {
            source: open.source,
            destination: open.destination,
            segment_size: (open.count > 1).then_some(open.segment),
            contents: open.contents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn run(max: usize, datagrams: &[(u16, u16, usize)]) -> Vec<(u16, Option<usize>, usize)> {
        let mut b = SendBatcher::new(max);
        let mut out = Vec::new();
        for (i, &(src, dst, len)) in datagrams.iter().enumerate() {
            if let Some(g) = b.push(addr(src), addr(dst), vec![i as u8; len]) {
                out.push(g);
            }
        }
        out.extend(b.finish());
        out.into_iter()
            .map(|g| (g.destination.port(), g.segment_size, g.contents.len()))
            .collect()
    }

    #[test]
    fn a_frame_to_one_viewer_is_one_send_with_a_short_last_segment() {
        let frame = [(1, 9, 1100), (1, 9, 1100), (1, 9, 1100), (1, 9, 700)];
        assert_eq!(run(64, &frame), vec![(9, Some(1100), 4000)]);
    }

    #[test]
    fn groups_break_on_another_destination_size_or_source() {
        let d = [
            (1, 9, 500),
            (1, 9, 500),
            (1, 8, 500), // other viewer
            (1, 8, 600), // larger than the group's segments
            (2, 8, 600), // other local socket
            (2, 8, 100),
            (2, 8, 100), // after a short one: new group
        ];
        assert_eq!(
            run(64, &d),
            vec![
                (9, Some(500), 1000),
                (8, None, 500),
                (8, None, 600),
                (8, Some(600), 700),
                (8, None, 100),
            ]
        );
    }

    #[test]
    fn the_segment_limit_and_the_byte_limit_hold() {
        let d: Vec<_> = (0..10).map(|_| (1, 9, 1000)).collect();
        assert_eq!(
            run(4, &d),
            vec![
                (9, Some(1000), 4000),
                (9, Some(1000), 4000),
                (9, Some(1000), 2000)
            ]
        );
        let big: Vec<_> = (0..100).map(|_| (1, 9, 1200)).collect();
        let groups = run(64, &big);
        assert!(groups.iter().all(|g| g.2 <= MAX_BATCH_BYTES));
        assert_eq!(groups.iter().map(|g| g.2).sum::<usize>(), 120_000);
        assert_eq!(run(1, &d[..2]), vec![(9, None, 1000), (9, None, 1000)]);
    }

    #[test]
    fn datagram_bytes_stay_in_order() {
        let mut b = SendBatcher::new(64);
        assert!(b.push(addr(1), addr(9), vec![1, 1]).is_none());
        assert!(b.push(addr(1), addr(9), vec![2, 2]).is_none());
        assert!(b.push(addr(1), addr(9), vec![3]).is_none());
        let g = b.finish().unwrap();
        assert_eq!(g.contents, vec![1, 1, 2, 2, 3]);
        assert_eq!(g.segment_size, Some(2));
        assert!(b.finish().is_none());
    }
}
