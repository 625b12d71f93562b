//! The IVF container (VP8/VP9/AV1 elementary frames with timestamps), as `ffmpeg -f ivf` and
//! libvpx write it.
//!
//! Layout (little-endian): a 32-byte file header — `DKIF`, version 0, header length, FourCC,
//! width, height, timebase denominator (rate) and numerator (scale), frame count, unused —
//! then frames, each a 12-byte header (size u32, pts u64 in timebase units) and its bytes.
//!
//! Owns: zero-copy views over IVF bytes in the smoltcp style ([`IvfHeader::parse`],
//! [`IvfFile`] and its frame iterator borrowing the buffer), the frame-header parser a stream
//! reader uses ([`FrameHeader::parse`]), timebase arithmetic, and the bound on one frame's
//! size. It does not interpret the frames ([`crate::vp8`] does) nor read files or pipes (the
//! sources do). Untrusted input: every malformed file gives an [`IvfError`], never a panic.

/// Length of the file header as written by every muxer (and the least accepted).
pub const FILE_HEADER_LEN: usize = 32;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest header length accepted (a longer one is not IVF as anyone writes it).
pub const MAX_FILE_HEADER_LEN: usize = 1024;
/// Default bound on one frame: 4 MiB (as for an H.264 access unit).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Errors from IVF parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IvfError {
    /// Fewer bytes than the file header.
    #[error("IVF file header truncated ({0} bytes)")]
    ShortHeader(usize),
    /// The file does not start with `DKIF`.
    #[error("not an IVF file (no DKIF signature)")]
    BadSignature,
    /// A version other than 0.
    #[error("unsupported IVF version {0}")]
    UnsupportedVersion(u16),
    /// A header length below 32 or above [`MAX_FILE_HEADER_LEN`].
    #[error("invalid IVF header length {0}")]
    BadHeaderLength(u16),
    /// A timebase with a zero numerator or denominator.
    #[error("invalid IVF timebase {num}/{den}")]
    BadTimebase { num: u32, den: u32 },
    /// A frame larger than the bound.
    #[error("IVF frame {index} is {size} bytes, more than the {limit}-byte limit")]
    FrameTooLarge {
        index: u64,
        size: usize,
        limit: usize,
    },
    /// The file ends inside a frame header or frame.
    #[error("IVF file truncated in frame {index}")]
    Truncated { index: u64 },
}

/// The IVF file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec FourCC, e.g. `VP80`.
    pub fourcc: [u8; 4],
    pub width: u16,
    pub height: u16,
    /// Timebase: one pts unit is `timebase_num / timebase_den` seconds.
    pub timebase_den: u32,
    pub timebase_num: u32,
    /// Frame count as written (0 or wrong for a stream; not trusted).
    pub frame_count: u32,
    /// Where the first frame header starts.
    pub header_len: usize,
}

impl IvfHeader {
    /// Parse the header at the start of `data` (only its first 32 bytes are read).
    pub fn parse(data: &[u8]) -> Result<Self, IvfError> {
        // The signature first: a short file of something else is "not IVF", not "truncated".
        if !data.starts_with(b"DKIF") {
            return Err(IvfError::BadSignature);
        }
        let Some(h) = data.get(..FILE_HEADER_LEN) else {
            return Err(IvfError::ShortHeader(data.len()));
        };
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let version = u16_at(4);
        if version != 0 {
            return Err(IvfError::UnsupportedVersion(version));
        }
        let header_len = u16_at(6);
        if !(FILE_HEADER_LEN..=MAX_FILE_HEADER_LEN).contains(&usize::from(header_len)) {
            return Err(IvfError::BadHeaderLength(header_len));
        }
        let (den, num) = (u32_at(16), u32_at(20));
        if den == 0 || num == 0 {
            return Err(IvfError::BadTimebase { num, den });
        }
        Ok(Self {
            fourcc: [h[8], h[9], h[10], h[11]],
            width: u16_at(12),
            height: u16_at(14),
            timebase_den: den,
            timebase_num: num,
            frame_count: u32_at(24),
            header_len: usize::from(header_len),
        })
    }

    /// A pts in microseconds (saturating; a pts can be any u64).
    pub fn pts_to_us(&self, pts: u64) -> u64 {
        let us = u128::from(pts) * u128::from(self.timebase_num) * 1_000_000
            / u128::from(self.timebase_den);
        u64::try_from(us).unwrap_or(u64::MAX)
    }

    /// The FourCC as text (for messages).
    pub fn fourcc_str(&self) -> String {
        String::from_utf8_lossy(&self.fourcc).into_owned()
    }
}

/// A frame header: the frame's size and pts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub size: usize,
    pub pts: u64,
}

impl FrameHeader {
    /// Parse a 12-byte frame header; frame `index` (for the message) larger than `max_frame`
    /// bytes is an error.
    pub fn parse(
        h: &[u8; FRAME_HEADER_LEN],
        index: u64,
        max_frame: usize,
    ) -> Result<Self, IvfError> {
        let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if size > max_frame {
            return Err(IvfError::FrameTooLarge {
                index,
                size,
                limit: max_frame,
            });
        }
        let mut pts = [0; 8];
        pts.copy_from_slice(&h[4..12]);
        Ok(Self {
            size,
            pts: u64::from_le_bytes(pts),
        })
    }
}

/// One frame, borrowed from the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfFrame<'a> {
    /// Presentation time in timebase units.
    pub pts: u64,
    /// The frame's bytes.
    pub data: &'a [u8],
    /// Where `data` starts in the file (to slice a shared buffer without copying).
    pub offset: usize,
}

/// A whole IVF file in memory, viewed without copying.
#[derive(Debug, Clone, Copy)]
pub struct IvfFile<'a> {
    pub header: IvfHeader,
    data: &'a [u8],
    max_frame: usize,
}

impl<'a> IvfFile<'a> {
    /// Check the header of `data`; frames over `max_frame` bytes will be errors.
    pub fn parse(data: &'a [u8], max_frame: usize) -> Result<Self, IvfError> {
        let header = IvfHeader::parse(data)?;
        if data.len() < header.header_len {
            return Err(IvfError::ShortHeader(data.len()));
        }
        Ok(Self {
            header,
            data,
            max_frame,
        })
    }

    /// The frames in order; the iterator yields one error (a truncated or oversized frame)
    /// and then stops.
    pub fn frames(&self) -> IvfFrames<'a> {
        IvfFrames {
            data: self.data,
            pos: self.header.header_len,
            index: 0,
            max_frame: self.max_frame,
            done: false,
        }
    }
}

/// Iterator over the frames of an [`IvfFile`].
#[derive(Debug, Clone)]
pub struct IvfFrames<'a> {
    data: &'a [u8],
    pos: usize,
    index: u64,
    max_frame: usize,
    done: bool,
}

impl<'a> Iterator for IvfFrames<'a> {
    type Item = Result<IvfFrame<'a>, IvfError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.data.len() {
            return None;
        }
        let index = self.index;
        let result = (|| {
            let h: &[u8; FRAME_HEADER_LEN] = self
                .data
                .get(self.pos..self.pos + FRAME_HEADER_LEN)
                .and_then(|h| h.try_into().ok())
                .ok_or(IvfError::Truncated { index })?;
            let fh = FrameHeader::parse(h, index, self.max_frame)?;
            let start = self.pos + FRAME_HEADER_LEN;
            let data = self
                .data
                .get(start..start + fh.size)
                .ok_or(IvfError::Truncated { index })?;
            self.pos = start + fh.size;
            Ok(IvfFrame {
                pts: fh.pts,
                data,
                offset: start,
            })
        })();
        self.index += 1;
        self.done = result.is_err();
        Some(result)
    }
}

/// Builders of IVF files for tests (and fixtures).
#[cfg(test)]
pub(crate) mod testutil {
    /// An IVF file with FourCC `fourcc`, timebase `num/den`, and `frames` as (pts, bytes).
    pub fn ivf(
        fourcc: &[u8; 4],
        w: u16,
        h: u16,
        num: u32,
        den: u32,
        frames: &[(u64, Vec<u8>)],
    ) -> Vec<u8> {
        let mut v = b"DKIF".to_vec();
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&32u16.to_le_bytes());
        v.extend_from_slice(fourcc);
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
        v.extend_from_slice(&den.to_le_bytes());
        v.extend_from_slice(&num.to_le_bytes());
        v.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        for (pts, f) in frames {
            v.extend_from_slice(&(f.len() as u32).to_le_bytes());
            v.extend_from_slice(&pts.to_le_bytes());
            v.extend_from_slice(f);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::ivf;
    use super::*;

    fn sample() -> Vec<u8> {
        ivf(
            b"VP80",
            352,
            288,
            1,
            15,
            &[(0, vec![1; 50]), (1, vec![2; 7]), (2, vec![])],
        )
    }

    #[test]
    fn header_and_frames_are_read_without_copying() {
        let data = sample();
        let file = IvfFile::parse(&data, 1000).unwrap();
        let h = file.header;
        assert_eq!(&h.fourcc, b"VP80");
        assert_eq!(
            (h.width, h.height, h.timebase_num, h.timebase_den),
            (352, 288, 1, 15)
        );
        assert_eq!(h.frame_count, 3);
        assert_eq!(h.pts_to_us(15), 1_000_000);
        assert_eq!(h.pts_to_us(1), 66_666);
        let frames: Vec<IvfFrame> = file.frames().map(Result::unwrap).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].data, &[1; 50][..]);
        assert_eq!(frames[1].pts, 1);
        assert_eq!(frames[1].offset, 32 + 12 + 50 + 12);
        assert!(std::ptr::eq(
            frames[1].data.as_ptr(),
            data[frames[1].offset..].as_ptr()
        ));
        assert!(frames[2].data.is_empty());
    }

    #[test]
    fn malformed_files_are_typed_errors() {
        let data = sample();
        assert_eq!(
            IvfHeader::parse(&data[..31]),
            Err(IvfError::ShortHeader(31))
        );
        let mut bad = data.clone();
        bad[0] = b'X';
        assert_eq!(IvfHeader::parse(&bad), Err(IvfError::BadSignature));
        let mut bad = data.clone();
        bad[4] = 1;
        assert_eq!(IvfHeader::parse(&bad), Err(IvfError::UnsupportedVersion(1)));
        let mut bad = data.clone();
        bad[6] = 8;
        assert_eq!(IvfHeader::parse(&bad), Err(IvfError::BadHeaderLength(8)));
        let mut bad = data.clone();
        bad[16..20].copy_from_slice(&[0; 4]);
        assert!(matches!(
            IvfHeader::parse(&bad),
            Err(IvfError::BadTimebase { .. })
        ));
        // Every truncation inside the frames gives one error, then the iterator stops.
        for cut in 33..data.len() {
            let file = IvfFile::parse(&data[..cut], 1000).unwrap();
            let results: Vec<_> = file.frames().collect();
            let ends_on_a_frame = [32 + 12 + 50, 32 + 12 + 50 + 12 + 7].contains(&cut);
            if ends_on_a_frame {
                assert!(results.iter().all(Result::is_ok), "cut {cut}");
            } else {
                assert!(
                    matches!(results.last(), Some(Err(IvfError::Truncated { .. }))),
                    "cut {cut}"
                );
            }
        }
        let file = IvfFile::parse(&data, 20).unwrap();
        assert_eq!(
            file.frames().next(),
            Some(Err(IvfError::FrameTooLarge {
                index: 0,
                size: 50,
                limit: 20
            }))
        );
        assert_eq!(file.frames().count(), 1);
        // A huge pts saturates instead of overflowing.
        assert_eq!(
            IvfFile::parse(&data, 100)
                .unwrap()
                .header
                .pts_to_us(u64::MAX),
            u64::MAX
        );
    }
}
