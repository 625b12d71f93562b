//! RTP payload formats: a frame is cut into RTP payloads *once*, and every session sends the
//! same reference-counted payloads.
//!
//! - H.264 per RFC 6184, packetization-mode 1: NAL units that fit are sent whole, or several
//!   small ones (SPS, PPS, SEI) aggregated in one STAP-A; a NAL unit larger than the payload
//!   limit is cut into FU-A fragments of equal size (equal sizes let a sender batch them, and
//!   no fragment is a runt). The marker bit is set on the last payload of the access unit.
//! - H.265 per RFC 7798 (no DONL: `sprop-max-don-diff` 0): NAL units that fit go whole,
//!   small neighbours (VPS, SPS, PPS, SEI) share an aggregation packet (type 48), larger ones
//!   are cut into equal fragmentation units (type 49). Filler data is left out; everything
//!   else (AUDs included) is carried, so a receiver rebuilds the access unit as sent.
//! - VP8 per RFC 7741: a one-byte payload descriptor (S set on the frame's first packet,
//!   partition index 0, no picture ID), the frame cut into equal parts.
//! - Opus per RFC 7587: one Opus packet is one RTP payload.
//!
//! Why here and not in the WebRTC stack: a per-session packetizer cuts and copies each frame
//! once per viewer and keeps a private copy of every packet in each viewer's resend buffer.
//! Cut once, the payloads are shared: N viewers' resend buffers hold N handles to one copy.
//!
//! Pure and synchronous; any input (a file or pipe can hold anything) yields payloads within
//! the limit or none, never a panic.

use crate::fanout::GatedFrame;
use crate::h264::nal_units;
use kvs_platform::{EncodedFrame, FrameKind, VideoCodec};
use std::sync::Arc;

/// The largest RTP payload we cut by default: with the RTP header, header extensions and the
/// SRTP tag the datagram stays under ~1200 bytes, which every path WebRTC uses carries.
/// The one figure for the RTP payload size: the peer engine also sizes its resend buffers
/// (packets per second of video) from it.
pub const DEFAULT_MAX_PAYLOAD: usize = 1100;
/// The smallest payload limit the packetizer accepts (smaller limits are raised to it).
pub const MIN_MAX_PAYLOAD: usize = 16;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;

/// One RTP payload, shared by every session that sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPayload {
    pub data: Arc<[u8]>,
    /// The RTP marker bit: the last packet of a video access unit.
    pub marker: bool,
}

/// A frame cut into RTP payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketizedFrame {
    /// Presentation time in microseconds (the frame's).
    pub timestamp_us: u64,
    pub kind: FrameKind,
    pub payloads: Vec<RtpPayload>,
}

impl PacketizedFrame {
    /// An H.264 access unit (Annex-B), cut to payloads of at most `max_payload` bytes.
    pub fn h264(frame: &EncodedFrame, max_payload: usize) -> Self {
        let mut payloads = Vec::new();
        packetize_h264(&frame.data, max_payload, &mut payloads);
        Self {
            timestamp_us: frame.timestamp_us,
            kind: frame.kind,
            payloads,
        }
    }

    /// A video frame of `codec`, cut to payloads of at most `max_payload` bytes.
    pub fn video(codec: VideoCodec, frame: &EncodedFrame, max_payload: usize) -> Self {
        let mut payloads = Vec::new();
        match codec {
            VideoCodec::H264 => packetize_h264(&frame.data, max_payload, &mut payloads),
            VideoCodec::H265 => packetize_h265(&frame.data, max_payload, &mut payloads),
            VideoCodec::Vp8 => packetize_vp8(&frame.data, max_payload, &mut payloads),
        }
        Self {
            timestamp_us: frame.timestamp_us,
            kind: frame.kind,
            payloads,
        }
    }

    /// An Opus packet: one payload (empty packets give none).
    pub fn opus(frame: &EncodedFrame) -> Self {
        let payloads = if frame.data.is_empty() {
            Vec::new()
        } else {
            vec![RtpPayload {
                data: Arc::from(&frame.data[..]),
                marker: false,
            }]
        };
        Self {
            timestamp_us: frame.timestamp_us,
            kind: frame.kind,
            payloads,
        }
    }

    /// Payload bytes in all.
    pub fn payload_bytes(&self) -> usize {
        self.payloads.iter().map(|p| p.data.len()).sum()
    }
}

impl GatedFrame for PacketizedFrame {
    fn is_key(&self) -> bool {
        self.kind == FrameKind::Key
    }
}

/// Cut an Annex-B access unit into RFC 6184 packetization-mode-1 payloads of at most
/// `max_payload` bytes (at least [`MIN_MAX_PAYLOAD`]), appended to `out`. Access unit
/// delimiters and filler data are left out (they carry nothing a WebRTC receiver uses).
pub fn packetize_h264(annexb: &[u8], max_payload: usize, out: &mut Vec<RtpPayload>) {
    let max_payload = max_payload.max(MIN_MAX_PAYLOAD);
    let first = out.len();
    let mut aggregate = Aggregate::default();
    for nal in nal_units(annexb) {
        let nal_type = nal[0] & 0x1f;
        if nal_type == NAL_AUD || nal_type == NAL_FILLER {
            continue;
        }
        if nal.len() > max_payload {
            aggregate.flush(out);
            fragment(nal, max_payload, out);
        } else {
            if !aggregate.fits(nal, max_payload) {
                aggregate.flush(out);
            }
            aggregate.push(nal);
        }
    }
    aggregate.flush(out);
    if out.len() > first {
        if let Some(last) = out.last_mut() {
            last.marker = true;
        }
    }
}

/// NAL units waiting to go out as one payload: alone (a single NAL unit packet) or together
/// (a STAP-A).
#[derive(Default)]
struct Aggregate<'a> {
    nals: Vec<&'a [u8]>,
    /// Size as a STAP-A: its header byte plus a 2-byte length before each NAL unit.
    stap_size: usize,
}

impl<'a> Aggregate<'a> {
    fn fits(&self, nal: &[u8], max_payload: usize) -> bool {
        if self.nals.is_empty() {
            return true;
        }
        // Each NAL unit's length must also fit the STAP-A's 16-bit length field.
        self.stap_size + 2 + nal.len() <= max_payload && nal.len() <= usize::from(u16::MAX)
    }

    fn push(&mut self, nal: &'a [u8]) {
        if self.nals.is_empty() {
            self.stap_size = 1;
        }
        self.stap_size += 2 + nal.len();
        self.nals.push(nal);
    }

    fn flush(&mut self, out: &mut Vec<RtpPayload>) {
        match self.nals.len() {
            0 => return,
            1 => out.push(RtpPayload {
                data: Arc::from(self.nals[0]),
                marker: false,
            }),
            _ => {
                // F is the OR of the aggregated F bits, NRI their maximum (RFC 6184 §5.7.1).
                let f = self.nals.iter().fold(0, |a, n| a | (n[0] & 0x80));
                let nri = self.nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                let mut data = Vec::with_capacity(self.stap_size);
                data.push(f | nri | STAP_A);
                for nal in &self.nals {
                    data.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                    data.extend_from_slice(nal);
                }
                out.push(RtpPayload {
                    data: Arc::from(data),
                    marker: false,
                });
            }
        }
        self.nals.clear();
        self.stap_size = 0;
    }
}

/// FU-A fragments of one NAL unit larger than `max_payload`, all the same size but the last.
fn fragment(nal: &[u8], max_payload: usize, out: &mut Vec<RtpPayload>) {
    let header = nal[0];
    let indicator = (header & 0xe0) | FU_A;
    let nal_type = header & 0x1f;
    let body = &nal[1..];
    // Two bytes of each payload are the FU indicator and FU header.
    let room = max_payload - 2;
    let count = body.len().div_ceil(room);
    let chunk = body.len().div_ceil(count);
    for (i, part) in body.chunks(chunk).enumerate() {
        let start = if i == 0 { 0x80 } else { 0 };
        let end = if i + 1 == count { 0x40 } else { 0 };
        let mut data = Vec::with_capacity(2 + part.len());
        data.push(indicator);
        data.push(start | end | nal_type);
        data.extend_from_slice(part);
        out.push(RtpPayload {
            data: Arc::from(data),
            marker: false,
        });
    }
}

const H265_AP: u8 = 48;
const H265_FU: u8 = 49;
const H265_FILLER: u8 = 38;

/// Cut an H.265 Annex-B access unit into RFC 7798 payloads of at most `max_payload` bytes
/// (at least [`MIN_MAX_PAYLOAD`]), appended to `out`: single NAL unit packets, aggregation
/// packets of small neighbours, and equal-sized fragmentation units. NAL units without a
/// valid two-byte header (nothing could name them in a payload header) and filler data are
/// left out.
pub fn packetize_h265(annexb: &[u8], max_payload: usize, out: &mut Vec<RtpPayload>) {
    use crate::h265::NalHeader;
    let max_payload = max_payload.max(MIN_MAX_PAYLOAD);
    let first = out.len();
    let mut ap: Vec<(&[u8], NalHeader)> = Vec::new();
    // Size as an aggregation packet: the 2-byte payload header plus a 2-byte size per unit.
    let mut ap_size = 2;
    let flush =
        |ap: &mut Vec<(&[u8], NalHeader)>, ap_size: &mut usize, out: &mut Vec<RtpPayload>| {
            match ap.len() {
                0 => {}
                1 => out.push(RtpPayload {
                    data: Arc::from(ap[0].0),
                    marker: false,
                }),
                _ => {
                    // LayerId and TID are the lowest of the aggregated units (RFC 7798 §4.4.2).
                    let header = NalHeader {
                        nal_type: H265_AP,
                        layer_id: ap.iter().map(|(_, h)| h.layer_id).min().unwrap_or(0),
                        tid: ap.iter().map(|(_, h)| h.tid).min().unwrap_or(1),
                    };
                    let mut data = Vec::with_capacity(*ap_size);
                    data.extend_from_slice(&header.to_bytes());
                    for (nal, _) in ap.iter() {
                        data.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                        data.extend_from_slice(nal);
                    }
                    out.push(RtpPayload {
                        data: Arc::from(data),
                        marker: false,
                    });
                }
            }
            ap.clear();
            *ap_size = 2;
        };
    for nal in nal_units(annexb) {
        let Ok(header) = NalHeader::parse(nal) else {
            continue;
        };
        if header.nal_type == H265_FILLER {
            continue;
        }
        if nal.len() > max_payload {
            flush(&mut ap, &mut ap_size, out);
            fragment_h265(nal, header, max_payload, out);
            continue;
        }
        let fits = ap.is_empty()
            || (ap_size + 2 + nal.len() <= max_payload && nal.len() <= usize::from(u16::MAX));
        if !fits {
            flush(&mut ap, &mut ap_size, out);
        }
        ap_size += 2 + nal.len();
        ap.push((nal, header));
    }
    flush(&mut ap, &mut ap_size, out);
    if out.len() > first {
        if let Some(last) = out.last_mut() {
            last.marker = true;
        }
    }
}

/// Fragmentation units of one H.265 NAL unit larger than `max_payload`, equal in size but
/// the last: a 2-byte payload header (type 49, the NAL's layer and TID), a 1-byte FU header
/// (S, E, the NAL's type), then a part of the NAL's body.
fn fragment_h265(
    nal: &[u8],
    header: crate::h265::NalHeader,
    max_payload: usize,
    out: &mut Vec<RtpPayload>,
) {
    let payload_header = crate::h265::NalHeader {
        nal_type: H265_FU,
        ..header
    }
    .to_bytes();
    let body = &nal[2..];
    let room = max_payload - 3;
    let count = body.len().div_ceil(room).max(1);
    let chunk = body.len().div_ceil(count).max(1);
    for (i, part) in body.chunks(chunk).enumerate() {
        let start = if i == 0 { 0x80 } else { 0 };
        let end = if i + 1 == count { 0x40 } else { 0 };
        let mut data = Vec::with_capacity(3 + part.len());
        data.extend_from_slice(&payload_header);
        data.push(start | end | header.nal_type);
        data.extend_from_slice(part);
        out.push(RtpPayload {
            data: Arc::from(data),
            marker: false,
        });
    }
}

/// Cut a VP8 frame into RFC 7741 payloads of at most `max_payload` bytes (at least
/// [`MIN_MAX_PAYLOAD`]), appended to `out`: each a one-byte payload descriptor (S on the
/// first, partition index 0, no extensions) and an equal part of the frame. An empty frame
/// gives none.
pub fn packetize_vp8(frame: &[u8], max_payload: usize, out: &mut Vec<RtpPayload>) {
    const S_BIT: u8 = 0x10;
    if frame.is_empty() {
        return;
    }
    let room = max_payload.max(MIN_MAX_PAYLOAD) - 1;
    let count = frame.len().div_ceil(room);
    let chunk = frame.len().div_ceil(count);
    for (i, part) in frame.chunks(chunk).enumerate() {
        let mut data = Vec::with_capacity(1 + part.len());
        data.push(if i == 0 { S_BIT } else { 0 });
        data.extend_from_slice(part);
        out.push(RtpPayload {
            data: Arc::from(data),
            marker: i + 1 == count,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h264::testutil::annexb;

    /// A receiver's view (RFC 6184 depacketization) for checking what we cut: the NAL units
    /// in order.
    fn depacketize(payloads: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            let d = &p.data[..];
            match d[0] & 0x1f {
                STAP_A => {
                    let mut rest = &d[1..];
                    while !rest.is_empty() {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        nals.push(rest[2..2 + len].to_vec());
                        rest = &rest[2 + len..];
                    }
                }
                FU_A => {
                    let (start, end) = (d[1] & 0x80 != 0, d[1] & 0x40 != 0);
                    if start {
                        fu = Some(vec![(d[0] & 0xe0) | (d[1] & 0x1f)]);
                    }
                    fu.as_mut()
                        .expect("FU-A start first")
                        .extend_from_slice(&d[2..]);
                    if end {
                        nals.push(fu.take().unwrap());
                    }
                }
                _ => nals.push(d.to_vec()),
            }
        }
        assert!(fu.is_none(), "unfinished FU-A");
        nals
    }

    fn nal(header: u8, len: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![header];
        // Bytes that never form a start code (no zeros).
        v.extend((0..len - 1).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1));
        v
    }

    #[test]
    fn small_parameter_sets_share_a_stap_a_and_the_slice_is_fragmented_evenly() {
        let sps = nal(0x67, 12, 1);
        let pps = nal(0x68, 4, 2);
        let idr = nal(0x65, 5000, 3);
        let au = annexb(&[&sps, &pps, &idr]);
        let mut out = Vec::new();
        packetize_h264(&au, 1100, &mut out);
        // STAP-A(SPS, PPS), then 5 FU-A fragments of 4999 body bytes.
        assert_eq!(out[0].data[0] & 0x1f, STAP_A);
        assert_eq!(out[0].data[0] & 0x60, 0x60, "NRI is the highest aggregated");
        assert_eq!(out.len(), 1 + 5);
        let sizes: Vec<usize> = out[1..].iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, vec![1002, 1002, 1002, 1002, 1001]);
        assert!(out.iter().all(|p| p.data.len() <= 1100));
        let markers: Vec<bool> = out.iter().map(|p| p.marker).collect();
        assert_eq!(markers, vec![false, false, false, false, false, true]);
        assert_eq!(depacketize(&out), vec![sps, pps, idr]);
    }

    #[test]
    fn a_nal_that_fits_goes_alone_and_delimiters_are_left_out() {
        let aud = vec![0x09, 0xf0];
        let slice = nal(0x41, 900, 4);
        let au = annexb(&[&aud, &slice]);
        let mut out = Vec::new();
        packetize_h264(&au, 1100, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &slice[..]);
        assert!(out[0].marker);
    }

    #[test]
    fn aggregation_stops_at_the_limit() {
        let a = nal(0x06, 500, 5);
        let b = nal(0x06, 500, 6);
        let c = nal(0x41, 300, 7);
        let au = annexb(&[&a, &b, &c]);
        let mut out = Vec::new();
        packetize_h264(&au, 1100, &mut out);
        // a + b = 1 + 502 + 502 = 1005 fits; adding c would not.
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data[0] & 0x1f, STAP_A);
        assert_eq!(&out[1].data[..], &c[..]);
        assert_eq!(depacketize(&out), vec![a, b, c]);
    }

    #[test]
    fn every_nal_survives_any_payload_limit() {
        let nals: Vec<Vec<u8>> = (0..12)
            .map(|i| {
                nal(
                    [0x67, 0x68, 0x06, 0x65, 0x41][i % 5],
                    1 + i * 373 % 4000,
                    i as u8,
                )
            })
            .collect();
        let refs: Vec<&[u8]> = nals.iter().map(|n| &n[..]).collect();
        let au = annexb(&refs);
        for limit in [0, 3, 16, 17, 100, 1100, 1200, 65_536] {
            let mut out = Vec::new();
            packetize_h264(&au, limit, &mut out);
            let max = limit.max(MIN_MAX_PAYLOAD);
            assert!(out.iter().all(|p| p.data.len() <= max), "limit {limit}");
            assert_eq!(depacketize(&out), nals, "limit {limit}");
            assert_eq!(out.iter().filter(|p| p.marker).count(), 1);
        }
    }

    #[test]
    fn garbage_never_panics_and_stays_within_the_limit() {
        let mut x: u32 = 0x1234_5678;
        for round in 0..300 {
            let len = (round * 37) % 3000;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    // Plenty of zeros and ones, so start codes appear.
                    match x % 5 {
                        0 | 1 => 0,
                        2 => 1,
                        _ => (x >> 8) as u8,
                    }
                })
                .collect();
            let mut out = Vec::new();
            packetize_h264(&data, 64 + round % 200, &mut out);
            assert!(out.iter().all(|p| p.data.len() <= 64 + round % 200));
        }
        let mut out = Vec::new();
        packetize_h264(&[], 1100, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn opus_is_one_payload() {
        let f = EncodedFrame::new(vec![0xfc, 1, 2, 3], 20_000, FrameKind::Key);
        let p = PacketizedFrame::opus(&f);
        assert_eq!(p.payloads.len(), 1);
        assert_eq!(&p.payloads[0].data[..], &[0xfc, 1, 2, 3]);
        assert_eq!(p.payload_bytes(), 4);
        assert!(
            PacketizedFrame::opus(&EncodedFrame::new(vec![], 0, FrameKind::Key))
                .payloads
                .is_empty()
        );
    }

    /// A receiver's view of RFC 7798 (no DONL): the NAL units in order.
    fn depacketize_h265(payloads: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            let d = &p.data[..];
            match (d[0] >> 1) & 0x3f {
                H265_AP => {
                    let mut rest = &d[2..];
                    while !rest.is_empty() {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        nals.push(rest[2..2 + len].to_vec());
                        rest = &rest[2 + len..];
                    }
                }
                H265_FU => {
                    let (start, end, t) = (d[2] & 0x80 != 0, d[2] & 0x40 != 0, d[2] & 0x3f);
                    if start {
                        fu = Some(vec![(d[0] & 0x81) | (t << 1), d[1]]);
                    }
                    fu.as_mut()
                        .expect("FU start first")
                        .extend_from_slice(&d[3..]);
                    if end {
                        nals.push(fu.take().unwrap());
                    }
                }
                _ => nals.push(d.to_vec()),
            }
        }
        assert!(fu.is_none(), "unfinished FU");
        nals
    }

    #[test]
    fn h265_parameter_sets_aggregate_and_large_slices_fragment_evenly() {
        use crate::h265::testutil::nal as h265_nal;
        let vps = h265_nal(32, false, 20, 1);
        let sps = h265_nal(33, false, 40, 2);
        let pps = h265_nal(34, false, 6, 3);
        let idr = h265_nal(19, true, 5000, 4);
        let filler = h265_nal(38, false, 9, 5);
        let au = annexb(&[&vps, &sps, &pps, &idr, &filler]);
        let mut out = Vec::new();
        packetize_h265(&au, 1100, &mut out);
        assert_eq!((out[0].data[0] >> 1) & 0x3f, H265_AP);
        assert_eq!(out[0].data.len(), 2 + 2 + 22 + 2 + 42 + 2 + 8);
        // 5000 body bytes in 5 FUs of 1000 (+3 header bytes).
        let sizes: Vec<usize> = out[1..].iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, vec![1003; 5]);
        assert_eq!(out.iter().filter(|p| p.marker).count(), 1);
        assert!(out.last().unwrap().marker);
        assert_eq!(
            depacketize_h265(&out),
            vec![vps, sps, pps, idr],
            "filler left out"
        );
    }

    #[test]
    fn h265_every_nal_survives_any_payload_limit() {
        use crate::h265::testutil::nal as h265_nal;
        let nals: Vec<Vec<u8>> = (0..14)
            .map(|i| {
                h265_nal(
                    [32, 33, 34, 39, 19, 1, 35, 40][i % 8],
                    i.is_multiple_of(3),
                    i * 311 % 3000,
                    i as u8,
                )
            })
            .collect();
        let refs: Vec<&[u8]> = nals.iter().map(|n| &n[..]).collect();
        let au = annexb(&refs);
        for limit in [0, 3, 16, 17, 100, 1100, 65_536, 200_000] {
            let mut out = Vec::new();
            packetize_h265(&au, limit, &mut out);
            let max = limit.max(MIN_MAX_PAYLOAD);
            assert!(out.iter().all(|p| p.data.len() <= max), "limit {limit}");
            assert_eq!(depacketize_h265(&out), nals, "limit {limit}");
            assert_eq!(out.iter().filter(|p| p.marker).count(), 1);
        }
    }

    #[test]
    fn vp8_frames_get_descriptors_and_equal_parts() {
        let frame = crate::vp8::testutil::frame(true, 352, 288, 4000, 9);
        let mut out = Vec::new();
        packetize_vp8(&frame, 1100, &mut out);
        // 4010 bytes in 4 parts of ≤ 1099: 1003, 1003, 1002, 1002 (+1 descriptor byte).
        let sizes: Vec<usize> = out.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, vec![1004, 1004, 1004, 1002]);
        assert_eq!(out[0].data[0], 0x10, "S bit, partition 0");
        assert!(out[1..].iter().all(|p| p.data[0] == 0));
        let markers: Vec<bool> = out.iter().map(|p| p.marker).collect();
        assert_eq!(markers, vec![false, false, false, true]);
        let joined: Vec<u8> = out.iter().flat_map(|p| p.data[1..].to_vec()).collect();
        assert_eq!(joined, frame);
        for limit in [0, 16, 17, 1200, 100_000] {
            let mut out = Vec::new();
            packetize_vp8(&frame, limit, &mut out);
            assert!(out
                .iter()
                .all(|p| p.data.len() <= limit.max(MIN_MAX_PAYLOAD)));
            let joined: Vec<u8> = out.iter().flat_map(|p| p.data[1..].to_vec()).collect();
            assert_eq!(joined, frame, "limit {limit}");
        }
        let mut out = Vec::new();
        packetize_vp8(&[], 1100, &mut out);
        assert!(out.is_empty());
    }
}
