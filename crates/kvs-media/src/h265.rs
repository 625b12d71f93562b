//! H.265/HEVC Annex-B byte streams: the two-byte NAL header, access-unit boundaries and
//! keyframes.
//!
//! Owns what the pipeline needs to know about H.265 to carry it, and nothing more:
//! - [`NalHeader`]: `forbidden_zero_bit`, `nal_unit_type` (6 bits), `nuh_layer_id`,
//!   `nuh_temporal_id_plus1` (H.265 §7.3.1.2).
//! - [`AccessUnitAssembler`]: the shared streaming assembler ([`crate::annexb`]) with the
//!   boundary rules of H.265 §7.4.2.4.4: an access unit begins at an AUD, a VPS/SPS/PPS, a
//!   prefix SEI, NAL types 41..=44 and 48..=55, or a slice segment whose
//!   `first_slice_segment_in_pic_flag` is set — once the current one holds a picture.
//! - [`AccessUnitInfo`]: what an access unit holds; it is a keyframe when it has an IRAP
//!   picture (BLA, IDR or CRA, types 16..=23) *and* its VPS, SPS and PPS, so a decoder can
//!   start there. (An IRAP without parameter sets only helps a decoder that already has them:
//!   encoders should repeat them, e.g. x265's `repeat-headers=1`.)
//!
//! It does not decode pictures (no SPS parsing: the picture size is the receiver's business)
//! and does not packetize RTP ([`crate::rtp`] does). Every function takes untrusted input:
//! malformed data gives an [`H265Error`] or is ignored, never a panic.

use kvs_platform::FrameKind;

pub use crate::annexb::{nal_units, NalUnits, DEFAULT_MAX_ACCESS_UNIT_BYTES};

/// NAL unit type numbers (H.265 Table 7-1) used here.
pub mod nal_type {
    /// First IRAP type (BLA_W_LP).
    pub const BLA_W_LP: u8 = 16;
    /// IDR with leading pictures.
    pub const IDR_W_RADL: u8 = 19;
    /// IDR without leading pictures.
    pub const IDR_N_LP: u8 = 20;
    /// Clean random access.
    pub const CRA_NUT: u8 = 21;
    /// Last IRAP type (reserved IRAP 23).
    pub const RSV_IRAP_23: u8 = 23;
    /// Video parameter set.
    pub const VPS: u8 = 32;
    /// Sequence parameter set.
    pub const SPS: u8 = 33;
    /// Picture parameter set.
    pub const PPS: u8 = 34;
    /// Access unit delimiter.
    pub const AUD: u8 = 35;
    /// End of sequence.
    pub const EOS: u8 = 36;
    /// End of bitstream.
    pub const EOB: u8 = 37;
    /// Filler data.
    pub const FD: u8 = 38;
    /// Prefix SEI.
    pub const PREFIX_SEI: u8 = 39;
    /// Suffix SEI.
    pub const SUFFIX_SEI: u8 = 40;
}

/// Errors from H.265 parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H265Error {
    /// A NAL unit shorter than its two-byte header.
    #[error("H.265 NAL unit shorter than its 2-byte header ({0} bytes)")]
    ShortNal(usize),
    /// The header's forbidden_zero_bit was set.
    #[error("H.265 NAL header has forbidden_zero_bit set (byte {0:#04x})")]
    ForbiddenBit(u8),
    /// `nuh_temporal_id_plus1` was 0, which the standard forbids.
    #[error("H.265 NAL header has nuh_temporal_id_plus1 = 0")]
    ZeroTemporalId,
    /// An access unit (or the data buffered while assembling one) exceeded the limit.
    #[error("H.265 access unit larger than {limit} bytes")]
    AccessUnitTooLarge { limit: usize },
}

/// The two-byte H.265 NAL unit header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NalHeader {
    /// `nal_unit_type` (0..=63), see [`nal_type`].
    pub nal_type: u8,
    /// `nuh_layer_id` (0..=63).
    pub layer_id: u8,
    /// `nuh_temporal_id_plus1` (1..=7).
    pub tid: u8,
}

impl NalHeader {
    /// Parse the first two bytes of a NAL unit.
    pub fn parse(nal: &[u8]) -> Result<Self, H265Error> {
        let [b0, b1, ..] = *nal else {
            return Err(H265Error::ShortNal(nal.len()));
        };
        if b0 & 0x80 != 0 {
            return Err(H265Error::ForbiddenBit(b0));
        }
        let tid = b1 & 0x07;
        if tid == 0 {
            return Err(H265Error::ZeroTemporalId);
        }
        Ok(Self {
            nal_type: (b0 >> 1) & 0x3f,
            layer_id: ((b0 & 1) << 5) | (b1 >> 3),
            tid,
        })
    }

    /// The header as two bytes.
    pub fn to_bytes(self) -> [u8; 2] {
        [
            (self.nal_type << 1) | (self.layer_id >> 5),
            ((self.layer_id & 0x1f) << 3) | self.tid,
        ]
    }

    /// A coded slice segment (types 0..=31).
    pub fn is_vcl(&self) -> bool {
        self.nal_type < 32
    }

    /// An intra random access point picture: BLA, IDR or CRA (types 16..=23).
    pub fn is_irap(&self) -> bool {
        (nal_type::BLA_W_LP..=nal_type::RSV_IRAP_23).contains(&self.nal_type)
    }
}

/// `first_slice_segment_in_pic_flag` of a slice segment NAL unit (the first bit after the
/// header); `None` when `nal` is not a slice segment or has no byte after its header.
pub fn first_slice_segment_in_pic(nal: &[u8]) -> Option<bool> {
    let header = NalHeader::parse(nal).ok()?;
    if !header.is_vcl() {
        return None;
    }
    nal.get(2).map(|b| b & 0x80 != 0)
}

/// What an Annex-B buffer (typically one access unit) contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessUnitInfo {
    /// Contains a slice segment of an IRAP picture.
    pub has_irap: bool,
    /// Contains at least one slice segment.
    pub has_vcl: bool,
    pub has_vps: bool,
    pub has_sps: bool,
    pub has_pps: bool,
}

impl AccessUnitInfo {
    /// Scan the NAL headers of `annexb` (malformed headers are ignored).
    pub fn scan(annexb: &[u8]) -> Self {
        let mut info = Self::default();
        for nal in nal_units(annexb) {
            if let Ok(h) = NalHeader::parse(nal) {
                info.note(h);
            }
        }
        info
    }

    fn note(&mut self, h: NalHeader) {
        match h.nal_type {
            nal_type::VPS => self.has_vps = true,
            nal_type::SPS => self.has_sps = true,
            nal_type::PPS => self.has_pps = true,
            _ if h.is_vcl() => {
                self.has_vcl = true;
                self.has_irap |= h.is_irap();
            }
            _ => {}
        }
    }

    /// Has its VPS, SPS and PPS.
    pub fn has_parameter_sets(&self) -> bool {
        self.has_vps && self.has_sps && self.has_pps
    }

    /// Key for an IRAP picture with its parameter sets (a decoder can start here), else Delta.
    pub fn kind(&self) -> FrameKind {
        if self.has_irap && self.has_parameter_sets() {
            FrameKind::Key
        } else {
            FrameKind::Delta
        }
    }
}

/// The kind of an Annex-B access unit; see [`AccessUnitInfo::kind`].
pub fn frame_kind(annexb: &[u8]) -> FrameKind {
    AccessUnitInfo::scan(annexb).kind()
}

impl crate::annexb::AccessUnitRules for AccessUnitInfo {
    type Error = H265Error;
    const CODEC: &'static str = "H.265";

    fn starts_new(&self, nal: &[u8]) -> Option<bool> {
        let header = NalHeader::parse(nal).ok()?;
        Some(
            self.has_vcl
                && match header.nal_type {
                    nal_type::VPS
                    | nal_type::SPS
                    | nal_type::PPS
                    | nal_type::AUD
                    | nal_type::PREFIX_SEI
                    | 41..=44
                    | 48..=55 => true,
                    // A slice segment without its first byte is treated as a new picture:
                    // safer to split.
                    t if t < 32 => first_slice_segment_in_pic(nal).unwrap_or(true),
                    _ => false,
                },
        )
    }

    fn note_nal(&mut self, nal: &[u8]) {
        if let Ok(h) = NalHeader::parse(nal) {
            self.note(h);
        }
    }

    fn has_picture(&self) -> bool {
        self.has_vcl
    }

    fn too_large(limit: usize) -> H265Error {
        H265Error::AccessUnitTooLarge { limit }
    }
}

/// One complete H.265 access unit from an [`AccessUnitAssembler`].
pub type AccessUnit = crate::annexb::AccessUnit<AccessUnitInfo>;

impl AccessUnit {
    /// Key for an IRAP picture with its parameter sets.
    pub fn kind(&self) -> FrameKind {
        self.info.kind()
    }
}

/// Groups an H.265 Annex-B byte stream arriving in arbitrary chunks into access units; see
/// [`crate::annexb::AccessUnitAssembler`] (bounded, zero-copy).
pub type AccessUnitAssembler = crate::annexb::AccessUnitAssembler<AccessUnitInfo>;

/// Builders of H.265 syntax for tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::NalHeader;

    /// A NAL unit of `nal_type` (layer 0, tid 1) whose body is `len` bytes without zeros.
    /// For slice segments the first body byte carries `first_slice_segment_in_pic_flag`.
    pub fn nal(nal_type: u8, first_in_pic: bool, len: usize, seed: u8) -> Vec<u8> {
        let mut v = NalHeader {
            nal_type,
            layer_id: 0,
            tid: 1,
        }
        .to_bytes()
        .to_vec();
        for i in 0..len {
            v.push((i as u8).wrapping_mul(13).wrapping_add(seed) | 1);
        }
        if nal_type < 32 && len > 0 {
            v[2] = if first_in_pic {
                v[2] | 0x80
            } else {
                v[2] & 0x7f
            };
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::nal;
    use super::*;
    use crate::h264::testutil::annexb;

    #[test]
    fn header_fields_round_trip_and_bad_headers_are_errors() {
        let h = NalHeader::parse(&[0x40, 0x01]).unwrap();
        assert_eq!((h.nal_type, h.layer_id, h.tid), (nal_type::VPS, 0, 1));
        let h = NalHeader::parse(&[0x26, 0x01, 0xaf]).unwrap();
        assert_eq!(h.nal_type, nal_type::IDR_W_RADL);
        assert!(h.is_irap() && h.is_vcl());
        let odd = NalHeader {
            nal_type: 21,
            layer_id: 37,
            tid: 5,
        };
        assert_eq!(NalHeader::parse(&odd.to_bytes()).unwrap(), odd);
        assert_eq!(NalHeader::parse(&[0x40]), Err(H265Error::ShortNal(1)));
        assert_eq!(
            NalHeader::parse(&[0xc0, 1]),
            Err(H265Error::ForbiddenBit(0xc0))
        );
        assert_eq!(NalHeader::parse(&[0x40, 0]), Err(H265Error::ZeroTemporalId));
        assert!(
            !NalHeader::parse(&[0x02, 0x01]).unwrap().is_irap(),
            "TRAIL_R"
        );
    }

    /// AU1: VPS SPS PPS IDR(first) IDR(cont); AU2: TRAIL(first) TRAIL(cont) suffix-SEI;
    /// AU3: AUD TRAIL(first); AU4: prefix SEI TRAIL(first); AU5: CRA(first) without parameter
    /// sets; AU6: VPS SPS PPS CRA(first).
    pub(super) fn stream() -> (Vec<Vec<u8>>, Vec<u8>) {
        let (vps, sps, pps) = (
            nal(32, false, 20, 1),
            nal(33, false, 40, 2),
            nal(34, false, 6, 3),
        );
        let aus = vec![
            annexb(&[
                &vps,
                &sps,
                &pps,
                &nal(19, true, 3000, 4),
                &nal(19, false, 500, 5),
            ]),
            annexb(&[
                &nal(1, true, 700, 6),
                &nal(1, false, 90, 7),
                &nal(40, false, 5, 8),
            ]),
            annexb(&[&nal(35, false, 1, 9), &nal(1, true, 50, 10)]),
            annexb(&[&nal(39, false, 12, 11), &nal(0, true, 70, 12)]),
            annexb(&[&nal(21, true, 1500, 13)]),
            annexb(&[&vps, &sps, &pps, &nal(21, true, 1800, 14)]),
        ];
        let all = aus.concat();
        (aus, all)
    }

    #[test]
    fn assembler_splits_access_units_for_any_chunking() {
        use FrameKind::*;
        let (aus, all) = stream();
        for chunk in [1, 2, 3, 7, 100, all.len()] {
            let mut asm = AccessUnitAssembler::default();
            let mut got = Vec::new();
            for c in all.chunks(chunk) {
                asm.push(c).unwrap();
                got.extend(std::iter::from_fn(|| asm.pop()));
            }
            asm.finish();
            got.extend(std::iter::from_fn(|| asm.pop()));
            let bytes: Vec<&[u8]> = got.iter().map(|a| &a.data[..]).collect();
            let want: Vec<&[u8]> = aus.iter().map(|a| &a[..]).collect();
            assert_eq!(bytes, want, "chunk {chunk}");
            let kinds: Vec<FrameKind> = got.iter().map(|a| a.kind()).collect();
            assert_eq!(kinds, vec![Key, Delta, Delta, Delta, Delta, Key]);
            assert!(got[4].info.has_irap && !got[4].info.has_parameter_sets());
        }
    }

    #[test]
    fn assembler_is_bounded_and_resyncs() {
        let mut asm = AccessUnitAssembler::new(1000);
        let big = annexb(&[&nal(19, true, 2000, 1)]);
        let mut err = None;
        for c in big.chunks(64) {
            if let Err(e) = asm.push(c) {
                err = Some(e);
            }
            assert!(asm.buffered() <= 1004);
        }
        assert_eq!(err, Some(H265Error::AccessUnitTooLarge { limit: 1000 }));
        let mut asm = AccessUnitAssembler::default();
        asm.push(&[0x12; 64]).unwrap();
        asm.push(&annexb(&[&nal(32, false, 4, 1)])).unwrap();
        asm.finish();
        assert!(
            asm.pop().is_none(),
            "garbage and a picture-less tail give nothing"
        );
    }

    #[test]
    fn first_slice_flag_and_kind() {
        assert_eq!(first_slice_segment_in_pic(&nal(1, true, 3, 0)), Some(true));
        assert_eq!(
            first_slice_segment_in_pic(&nal(1, false, 3, 0)),
            Some(false)
        );
        assert_eq!(first_slice_segment_in_pic(&nal(33, false, 3, 0)), None);
        assert_eq!(first_slice_segment_in_pic(&[0x02, 0x01]), None);
        let (aus, _) = stream();
        assert_eq!(frame_kind(&aus[0]), FrameKind::Key);
        assert_eq!(frame_kind(&aus[4]), FrameKind::Delta);
        assert_eq!(frame_kind(b"not h265"), FrameKind::Delta);
    }
}
