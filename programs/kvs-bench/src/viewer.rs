//! Rust viewers (kvs-peer's str0m viewer) joined through the local signaling service, the way
//! a browser joins: WebSocket with `X-Amz-ClientId`, offer, trickled candidates.

use anyhow::{bail, Result};
use bytes::Bytes;
use kvs_peer::viewer::{
    viewer_signaling_client, JoinEvent, ReceivedFrame, SignaledViewer, ViewerEvent,
};
use std::time::{Duration, Instant};

/// A viewer joined through signaling (see [`SignaledViewer`]), with the benchmark's view of
/// it: a refusal is an error, other signaling is not its business.
pub struct Joined(SignaledViewer);

impl Joined {
    /// Connect to signaling as `client_id`, send the offer and our candidate.
    pub async fn join(signaling_url: &str, channel_arn: &str, client_id: &str) -> Result<Self> {
        let client = viewer_signaling_client(signaling_url, channel_arn, client_id)?;
        Ok(Self(
            SignaledViewer::join(&client, Some(client_id.to_string())).await?,
        ))
    }

    /// When the offer was handed to the signaling connection.
    pub fn offer_sent(&self) -> Instant {
        self.0.offer_sent()
    }

    /// The next viewer event (signaling applied on the way); `None` at the deadline.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Option<ViewerEvent>> {
        loop {
            match self.0.next(deadline).await? {
                None => return Ok(None),
                Some(JoinEvent::Viewer(e)) => return Ok(Some(e)),
                Some(JoinEvent::Refused { code, reason }) => bail!("refused: {code} {reason}"),
                Some(JoinEvent::CandidateRejected { error, .. }) => {
                    tracing::debug!("candidate not applied: {error}")
                }
                Some(JoinEvent::Signaling(_)) => {}
            }
        }
    }

    async fn send_data(&self, data: Bytes, binary: bool) -> Result<(), kvs_peer::PeerError> {
        self.0.viewer().send_data(data, binary).await
    }

    pub async fn close(self) {
        self.0.close().await;
    }
}

/// Offer sent → first video frame decoded (openh264), and when the transport came up.
#[derive(Debug, Clone, Copy)]
pub struct FirstFrame {
    /// When the offer was handed to the signaling connection (the origin of the others).
    pub offer_sent: Instant,
    pub connected: Duration,
    pub first_packet: Duration,
    pub decoded: Duration,
}

/// Wait for the first decodable video frame.
pub async fn first_frame(j: &mut Joined, timeout: Duration) -> Result<FirstFrame> {
    let mut decoder = openh264::decoder::Decoder::new()?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut connected = None;
    let mut first_packet = None;
    loop {
        match j.next(deadline).await? {
            None => bail!("no decoded video within {timeout:?}"),
            Some(ViewerEvent::Connected) => connected = Some(j.offer_sent().elapsed()),
            Some(ViewerEvent::Video(f)) => {
                first_packet.get_or_insert(f.arrival.saturating_duration_since(j.offer_sent()));
                if let Ok(Some(_picture)) = decoder.decode(&f.data) {
                    let decoded = j.offer_sent().elapsed();
                    return Ok(FirstFrame {
                        offer_sent: j.offer_sent(),
                        connected: connected.unwrap_or(decoded),
                        first_packet: first_packet.unwrap_or(decoded),
                        decoded,
                    });
                }
            }
            Some(ViewerEvent::Closed) => bail!("viewer closed before the first frame"),
            Some(_) => {}
        }
    }
}

/// What a receiving viewer saw in a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reception {
    pub video_frames: u64,
    pub video_bytes: u64,
    /// RTP packets missing between received frames (sequence-number gaps).
    pub packets_lost: u64,
    /// Frames whose arrival lagged their RTP schedule by more than [`LATE_AFTER`] beyond
    /// the best-placed frame of the window.
    pub frames_late: u64,
}

/// A frame is late when it arrives this much behind its place on the RTP timeline.
pub const LATE_AFTER: Duration = Duration::from_millis(100);

/// Tracks one stream's frames in a window.
#[derive(Default)]
pub struct Tracker {
    pub r: Reception,
    last_seq: Option<u64>,
    /// (arrival, rtp_time) of frames in the window, for lateness.
    arrivals: Vec<(Instant, u64)>,
    counting: bool,
}

impl Tracker {
    pub fn start_window(&mut self) {
        self.r = Reception::default();
        self.arrivals.clear();
        self.counting = true;
    }

    pub fn video(&mut self, f: &ReceivedFrame) {
        if let Some(last) = self.last_seq {
            if self.counting && f.seq_first > last + 1 {
                self.r.packets_lost += f.seq_first - last - 1;
            }
        }
        self.last_seq = Some(f.seq_last.max(self.last_seq.unwrap_or(0)));
        if !self.counting {
            return;
        }
        self.r.video_frames += 1;
        self.r.video_bytes += f.data.len() as u64;
        self.arrivals.push((f.arrival, f.rtp_time));
    }

    /// Close the window: count late frames.
    pub fn finish(&mut self) -> Reception {
        self.counting = false;
        if let Some(&(t0, rtp0)) = self.arrivals.first() {
            // Lag of each frame relative to the first, on the 90 kHz timeline.
            let lags: Vec<f64> = self
                .arrivals
                .iter()
                .map(|&(t, rtp)| {
                    let wall = t.saturating_duration_since(t0).as_secs_f64();
                    let media = rtp.wrapping_sub(rtp0) as f64 / 90_000.0;
                    wall - media
                })
                .collect();
            let best = lags.iter().cloned().fold(f64::INFINITY, f64::min);
            self.r.frames_late = lags
                .iter()
                .filter(|&&l| l - best > LATE_AFTER.as_secs_f64())
                .count() as u64;
        }
        self.r
    }
}

/// Data channel figures against the device's echo.
#[derive(Debug, Clone, Copy)]
pub struct DataChannelResult {
    pub throughput_mbps: f64,
    pub rtt_ms: f64,
}

/// Echo benchmark over the data channel: `pings` round trips of a small message (median),
/// then `total` bytes in `message` sized messages with at most `window` bytes unanswered.
pub async fn data_channel(
    j: &mut Joined,
    total: usize,
    message: usize,
    window: usize,
    pings: usize,
) -> Result<DataChannelResult> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    // Wait for the channel.
    loop {
        match j.next(deadline).await? {
            Some(ViewerEvent::ChannelOpen) => break,
            Some(ViewerEvent::Closed) | None => bail!("data channel never opened"),
            _ => {}
        }
    }
    let mut rtts = Vec::with_capacity(pings);
    for i in 0..pings {
        let ping = Bytes::from(format!("ping {i:08}"));
        let sent = Instant::now();
        j.send_data(ping.clone(), false).await?;
        loop {
            match j.next(deadline).await? {
                Some(ViewerEvent::Data { data, .. }) if data == ping => break,
                Some(ViewerEvent::Closed) | None => bail!("no echo of ping {i}"),
                _ => {}
            }
        }
        rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let payload = Bytes::from(vec![0x5au8; message]);
    let (mut sent, mut echoed) = (0usize, 0usize);
    let start = Instant::now();
    while echoed < total {
        while sent < total && sent - echoed + message <= window {
            match j.send_data(payload.clone(), true).await {
                Ok(()) => sent += message,
                Err(kvs_peer::PeerError::DataQueueFull(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        match j.next(deadline).await? {
            Some(ViewerEvent::Data { data, binary: true }) => echoed += data.len(),
            Some(ViewerEvent::Closed) | None => {
                bail!("echo stopped after {echoed} of {total} bytes")
            }
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    rtts.sort_by(f64::total_cmp);
    Ok(DataChannelResult {
        throughput_mbps: echoed as f64 * 8.0 / secs / 1e6,
        rtt_ms: rtts.get(rtts.len() / 2).copied().unwrap_or(f64::NAN),
    })
}
