//! Synthetic encoded frames for tests (this crate's virtual-time harness and its integration
//! tests): the NAL structure the packetizer and keyframe detection look at, not decodable
//! pictures. Not part of the SDK's API.

use bytes::Bytes;

/// An H.264 IDR access unit: SPS (7), PPS (8) and an IDR slice (5) of ~3 KB, so it is cut
/// into FU-A fragments.
pub fn idr(n: u8) -> Bytes {
    let mut v = vec![
        0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8,
    ];
    v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    v.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84, n]);
    // Never zero: zeros at the end of a NAL unit are Annex-B trailing bytes and not sent.
    v.extend(std::iter::repeat_n(n | 0x10, 3000));
    Bytes::from(v)
}

/// A non-IDR slice (NAL type 1) that fits one packet.
pub fn non_idr(n: u8) -> Bytes {
    let mut v = vec![0, 0, 0, 1, 0x41, 0x9a, 0x02, n];
    v.extend(std::iter::repeat_n(n | 0x10, 200));
    Bytes::from(v)
}

/// An Opus packet (TOC byte of a 20 ms CELT frame, then filler).
pub fn opus(n: u8) -> Bytes {
    Bytes::from(vec![0xfc, n, n.wrapping_mul(7), 0x55, n])
}

/// The SDP without its `a=candidate` lines (candidates then come by trickle only).
pub fn strip_candidates(sdp: &str) -> String {
    let out: String = sdp
        .split("\r\n")
        .filter(|l| !l.starts_with("a=candidate") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert_ne!(out.len(), sdp.len(), "the SDP carried candidates");
    out
}
