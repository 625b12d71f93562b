//! The VP8 frame tag (RFC 6386 §9.1): whether a frame is a keyframe and, for keyframes, the
//! picture size.
//!
//! Owns reading the first ten bytes of a VP8 frame; it does not decode, and does not know the
//! container ([`crate::ivf`]) or RTP ([`crate::rtp`]). Untrusted input: malformed data gives a
//! [`Vp8Error`], never a panic.

use kvs_platform::FrameKind;

/// The keyframe start code after the 3-byte tag.
const START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];

/// Errors from reading a VP8 frame tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Vp8Error {
    /// Fewer bytes than the tag (3, or 10 for a keyframe).
    #[error("VP8 frame of {len} bytes is shorter than its {need}-byte header")]
    Truncated { len: usize, need: usize },
    /// A keyframe without the 9d 01 2a start code.
    #[error("VP8 keyframe without its start code")]
    BadStartCode,
    /// A keyframe with a zero width or height.
    #[error("VP8 keyframe with an empty picture ({width}x{height})")]
    EmptyPicture { width: u16, height: u16 },
}

/// The frame tag, and for keyframes the picture size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTag {
    /// An intra frame: a decoder can start here.
    pub key: bool,
    /// The version (profile) number, 0..=7.
    pub version: u8,
    pub show_frame: bool,
    /// Size of the first data partition in bytes.
    pub first_partition_size: u32,
    /// For keyframes: width and height in pixels (scaling bits dropped).
    pub size: Option<(u16, u16)>,
}

impl FrameTag {
    /// Read the tag at the start of a VP8 frame.
    pub fn parse(frame: &[u8]) -> Result<Self, Vp8Error> {
        let [b0, b1, b2, ..] = *frame else {
            return Err(Vp8Error::Truncated {
                len: frame.len(),
                need: 3,
            });
        };
        let raw = u32::from(b0) | u32::from(b1) << 8 | u32::from(b2) << 16;
        let key = raw & 1 == 0;
        let mut tag = Self {
            key,
            version: ((raw >> 1) & 7) as u8,
            show_frame: (raw >> 4) & 1 == 1,
            first_partition_size: raw >> 5,
            size: None,
        };
        if key {
            let Some(k) = frame.get(3..10) else {
                return Err(Vp8Error::Truncated {
                    len: frame.len(),
                    need: 10,
                });
            };
            if k[..3] != START_CODE {
                return Err(Vp8Error::BadStartCode);
            }
            let width = u16::from_le_bytes([k[3], k[4]]) & 0x3fff;
            let height = u16::from_le_bytes([k[5], k[6]]) & 0x3fff;
            if width == 0 || height == 0 {
                return Err(Vp8Error::EmptyPicture { width, height });
            }
            tag.size = Some((width, height));
        }
        Ok(tag)
    }
}

/// Key for a well-formed keyframe, else Delta (a malformed frame is nothing to start from).
pub fn frame_kind(frame: &[u8]) -> FrameKind {
    match FrameTag::parse(frame) {
        Ok(t) if t.key => FrameKind::Key,
        _ => FrameKind::Delta,
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// A fake VP8 frame: a valid tag (and keyframe header), then `len` body bytes.
    pub fn frame(key: bool, width: u16, height: u16, len: usize, seed: u8) -> Vec<u8> {
        let part = 100u32;
        let raw = u32::from(!key) | (1 << 4) | (part << 5);
        let mut v = raw.to_le_bytes()[..3].to_vec();
        if key {
            v.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            v.extend_from_slice(&width.to_le_bytes());
            v.extend_from_slice(&height.to_le_bytes());
        }
        v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::frame;
    use super::*;

    #[test]
    fn keyframe_tag_and_size() {
        let t = FrameTag::parse(&frame(true, 352, 288, 10, 0)).unwrap();
        assert!(t.key && t.show_frame);
        assert_eq!((t.version, t.first_partition_size), (0, 100));
        assert_eq!(t.size, Some((352, 288)));
        let t = FrameTag::parse(&frame(false, 0, 0, 10, 0)).unwrap();
        assert!(!t.key);
        assert_eq!(t.size, None);
        assert_eq!(frame_kind(&frame(true, 16, 16, 0, 0)), FrameKind::Key);
        assert_eq!(frame_kind(&frame(false, 16, 16, 0, 0)), FrameKind::Delta);
    }

    #[test]
    fn malformed_tags_are_errors() {
        assert_eq!(
            FrameTag::parse(&[0x10]),
            Err(Vp8Error::Truncated { len: 1, need: 3 })
        );
        let key = frame(true, 352, 288, 0, 0);
        for len in 3..10 {
            assert!(
                matches!(
                    FrameTag::parse(&key[..len]),
                    Err(Vp8Error::Truncated { .. })
                ),
                "{len}"
            );
        }
        let mut bad = key.clone();
        bad[4] = 0;
        assert_eq!(FrameTag::parse(&bad), Err(Vp8Error::BadStartCode));
        assert_eq!(frame_kind(&bad), FrameKind::Delta);
        assert!(matches!(
            FrameTag::parse(&frame(true, 0, 288, 0, 0)),
            Err(Vp8Error::EmptyPicture { .. })
        ));
    }
}
