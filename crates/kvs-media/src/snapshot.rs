//! JPEG snapshots: turning an I420 picture into a baseline JPEG.
//!
//! This module owns the conversion of a planar I420 picture (BT.601 limited range, what the
//! test pattern draws and H.264 decoders produce) into a baseline (sequential, standard
//! Huffman tables) JFIF JPEG with 4:2:0 chroma, and [`test_pattern_snapshot`], which draws the
//! test-pattern camera's picture for the current wall-clock moment and encodes it.
//!
//! It must not touch capture threads or I/O: callers hand it planes and get bytes back (the
//! split-mode media side answers `GetSnapshot` with them). Every input is checked first —
//! zero, odd or oversized pictures and short planes return a [`SnapshotError`], never a panic.

use crate::sources::{check_size, Overlay, Picture};
use jpeg_encoder::{Encoder, ImageBuffer, JpegColorType, SamplingFactor};
use kvs_platform::{Clock, SystemClock};
use thiserror::Error;

/// The quality used when a request asks for quality 0 ("the default").
pub const DEFAULT_QUALITY: u8 = 75;

/// Why a snapshot could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The picture size cannot be encoded: zero, odd, larger than JPEG allows (65535), or
    /// outside what the test pattern draws.
    #[error("invalid snapshot size {width}x{height}: {reason}")]
    InvalidSize {
        width: u32,
        height: u32,
        reason: &'static str,
    },
    /// A plane holds fewer bytes than the picture size needs.
    #[error("{plane} plane has {len} bytes, a {width}x{height} I420 picture needs {needed}")]
    ShortPlane {
        /// `'Y'`, `'U'` or `'V'`.
        plane: char,
        len: usize,
        needed: usize,
        width: u32,
        height: u32,
    },
    /// The JPEG encoder refused the picture.
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

/// The quality actually used for a requested `quality`: 0 means [`DEFAULT_QUALITY`], anything
/// else is clamped to 1..=100.
pub fn effective_quality(quality: u8) -> u8 {
    match quality {
        0 => DEFAULT_QUALITY,
        q => q.min(100),
    }
}

/// Encode an I420 picture (planes `y` of `width * height` bytes, `u` and `v` of
/// `width/2 * height/2` bytes each, no row padding; longer planes are fine, the rest is
/// ignored) as a baseline JPEG at `quality` (see [`effective_quality`]).
///
/// The samples are BT.601 limited range (Y 16..=235, chroma 16..=240) and are expanded to the
/// full range JFIF expects. `width` and `height` must be even and 2..=65535.
pub fn encode_i420_jpeg(
    width: u32,
    height: u32,
    y: &[u8],
    u: &[u8],
    v: &[u8],
    quality: u8,
) -> Result<Vec<u8>, SnapshotError> {
    let bad = |reason| SnapshotError::InvalidSize {
        width,
        height,
        reason,
    };
    if width == 0 || height == 0 {
        return Err(bad("must not be zero"));
    }
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(bad("must be even (I420)"));
    }
    let (Ok(w16), Ok(h16)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(bad("larger than JPEG allows (65535)"));
    };
    let (w, h) = (usize::from(w16), usize::from(h16));
    let luma_len = w * h;
    let chroma_len = (w / 2) * (h / 2);
    for (plane, data, needed) in [
        ('Y', y, luma_len),
        ('U', u, chroma_len),
        ('V', v, chroma_len),
    ] {
        if data.len() < needed {
            return Err(SnapshotError::ShortPlane {
                plane,
                len: data.len(),
                needed,
                width,
                height,
            });
        }
    }
    let image = I420Image {
        width: w16,
        height: h16,
        y: &y[..luma_len],
        u: &u[..chroma_len],
        v: &v[..chroma_len],
    };
    // The 640x480 test pattern is ~12 KB at the default quality: room for that and more.
    let mut out = Vec::with_capacity(luma_len / 16);
    let mut encoder = Encoder::new(&mut out, effective_quality(quality));
    // The source chroma is 4:2:0 already; keep it so at every quality (the encoder would
    // otherwise switch to 4:4:4 from quality 90, doubling the bytes for no detail). The
    // encoder takes the top-left sample of each 2x2 block, which is the source sample.
    encoder.set_sampling_factor(SamplingFactor::R_4_2_0);
    encoder
        .encode_image(image)
        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(out)
}

/// Draw the test-pattern camera's picture at `width` x `height` for the current wall-clock
/// moment — the colour bars in their first-frame position, the bouncing box, the noise patch,
/// counter `000000` and the UTC time of day — and encode it with [`encode_i420_jpeg`].
///
/// The size must be what the camera accepts: even, 16..=3840 x 16..=2160.
pub fn test_pattern_snapshot(
    width: u32,
    height: u32,
    quality: u8,
) -> Result<Vec<u8>, SnapshotError> {
    check_size(width, height).map_err(|reason| SnapshotError::InvalidSize {
        width,
        height,
        reason,
    })?;
    let mut picture = Picture::new(width as usize, height as usize);
    let mut overlay = Overlay::default();
    overlay.render(0, SystemClock.unix_time());
    picture.draw(0, &overlay.counter, &overlay.clock);
    encode_i420_jpeg(width, height, &picture.y, &picture.u, &picture.v, quality)
}

/// Limited-range (16..=235) luma to full range (0..=255), rounded.
const LUMA_FULL: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let d = if i < 16 {
            0
        } else if i > 235 {
            219
        } else {
            i - 16
        };
        table[i] = ((d * 255 + 109) / 219) as u8;
        i += 1;
    }
    table
};

/// Limited-range (16..=240, centred on 128) chroma to full range (0..=255), rounded.
const CHROMA_FULL: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let d = if i < 16 {
            0
        } else if i > 240 {
            224
        } else {
            i - 16
        };
        table[i] = ((d * 255 + 112) / 224) as u8;
        i += 1;
    }
    table
};

/// Validated I420 planes, fed to the encoder one row at a time (no interleaved copy).
///
/// Invariant (checked by [`encode_i420_jpeg`]): even, non-zero size; `y` holds exactly
/// `width * height` bytes and `u`, `v` exactly `width/2 * height/2`.
struct I420Image<'a> {
    width: u16,
    height: u16,
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
}

impl ImageBuffer for I420Image<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        self.height
    }

    fn fill_buffers(&self, row: u16, buffers: &mut [Vec<u8>; 4]) {
        let w = usize::from(self.width);
        let cw = w / 2;
        let row = usize::from(row);
        let crow = row / 2;
        // `get` rather than indexing: a row past the picture (the encoder never asks for one)
        // adds nothing instead of panicking.
        let (Some(ys), Some(us), Some(vs)) = (
            self.y.get(row * w..(row + 1) * w),
            self.u.get(crow * cw..(crow + 1) * cw),
            self.v.get(crow * cw..(crow + 1) * cw),
        ) else {
            return;
        };
        for (pair, (&cb, &cr)) in ys.chunks_exact(2).zip(us.iter().zip(vs)) {
            let (cb, cr) = (CHROMA_FULL[usize::from(cb)], CHROMA_FULL[usize::from(cr)]);
            for &luma in pair {
                buffers[0].push(LUMA_FULL[usize::from(luma)]);
                buffers[1].push(cb);
                buffers[2].push(cr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpeg_decoder::{Decoder, PixelFormat};

    /// Decode to (width, height, RGB24 pixels).
    fn decode(jpeg: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut decoder = Decoder::new(jpeg);
        let pixels = decoder.decode().expect("decodable JPEG");
        let info = decoder.info().unwrap();
        assert_eq!(info.pixel_format, PixelFormat::RGB24);
        (u32::from(info.width), u32::from(info.height), pixels)
    }

    fn rgb_at(pixels: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * width + x) * 3) as usize;
        [pixels[i], pixels[i + 1], pixels[i + 2]]
    }

    /// The 75 % bars in full-range RGB: white, yellow, cyan, green, magenta, red, blue, black.
    const BARS_RGB: [[u8; 3]; 8] = [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
        [0, 0, 0],
    ];

    #[test]
    fn test_pattern_snapshots_decode_to_the_asked_size_with_the_colour_bars() {
        // 320x180 and 330x202 are not multiples of the 16x16 JPEG block.
        for (w, h) in [(640, 480), (320, 240), (320, 180), (330, 202)] {
            let jpeg = test_pattern_snapshot(w, h, 0).unwrap();
            assert_eq!(&jpeg[..2], &[0xff, 0xd8], "SOI");
            assert_eq!(&jpeg[jpeg.len() - 2..], &[0xff, 0xd9], "EOI");
            let (dw, dh, pixels) = decode(&jpeg);
            assert_eq!((dw, dh), (w, h));
            assert_eq!(pixels.len(), (w * h * 3) as usize);
            // Mid-height, away from the box, the text and the noise patch: the bars of the
            // first frame, each an eighth of the width, at their BT.601 colours.
            let row = h / 2;
            let mut seen = Vec::new();
            for (i, expected) in BARS_RGB.iter().enumerate() {
                let x = (2 * i as u32 + 1) * w / 16;
                let got = rgb_at(&pixels, w, x, row);
                for c in 0..3 {
                    assert!(
                        got[c].abs_diff(expected[c]) <= 24,
                        "{w}x{h} bar {i} at x={x}: {got:?}, expected about {expected:?}"
                    );
                }
                seen.push(got);
            }
            // Eight distinct colours: no two bars within 60 of each other in every channel.
            for a in 0..seen.len() {
                for b in a + 1..seen.len() {
                    assert!(
                        (0..3).any(|c| seen[a][c].abs_diff(seen[b][c]) > 60),
                        "bars {a} and {b} look alike: {:?} {:?}",
                        seen[a],
                        seen[b]
                    );
                }
            }
            // Not uniform as a whole either: the luma-ish variance is large.
            let grey: Vec<f64> = pixels
                .chunks_exact(3)
                .map(|p| f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2]))
                .collect();
            let mean = grey.iter().sum::<f64>() / grey.len() as f64;
            let var = grey.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / grey.len() as f64;
            assert!(var > 1000.0, "{w}x{h}: variance {var}");
        }
    }

    #[test]
    fn lower_quality_gives_fewer_bytes() {
        let sizes: Vec<usize> = [10, 75, 95]
            .into_iter()
            .map(|q| test_pattern_snapshot(640, 480, q).unwrap().len())
            .collect();
        eprintln!("640x480 test pattern JPEG bytes at quality 10/75/95: {sizes:?}");
        assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
        // Quality 10 still decodes to the full picture.
        let (w, h, _) = decode(&test_pattern_snapshot(640, 480, 10).unwrap());
        assert_eq!((w, h), (640, 480));
    }

    /// A fixed I420 picture: left half black, right half white, neutral chroma.
    fn black_white(w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let y = (0..w * h)
            .map(|i| if i % w < w / 2 { 16 } else { 235 })
            .collect();
        (y, vec![128; w * h / 4], vec![128; w * h / 4])
    }

    #[test]
    fn limited_range_is_expanded_and_quality_is_defaulted_and_clamped() {
        let (y, u, v) = black_white(64, 48);
        let jpeg = encode_i420_jpeg(64, 48, &y, &u, &v, 90).unwrap();
        let (w, h, pixels) = decode(&jpeg);
        assert_eq!((w, h), (64, 48));
        // Video black (16) and white (235) become JPEG's 0 and 255, not a washed-out grey.
        for c in rgb_at(&pixels, w, 8, 24) {
            assert!(c <= 6, "black: {c}");
        }
        for c in rgb_at(&pixels, w, 56, 24) {
            assert!(c >= 249, "white: {c}");
        }
        let at = |q| encode_i420_jpeg(64, 48, &y, &u, &v, q).unwrap();
        assert_eq!(at(0), at(DEFAULT_QUALITY));
        assert_eq!(at(200), at(100));
        assert_eq!(effective_quality(0), 75);
        assert_eq!(effective_quality(1), 1);
        assert_eq!(effective_quality(255), 100);
        // Longer planes are fine: the rest is ignored.
        let mut long_y = y.clone();
        long_y.extend_from_slice(&[1, 2, 3]);
        assert_eq!(encode_i420_jpeg(64, 48, &long_y, &u, &v, 90).unwrap(), jpeg);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (y, u, v) = black_white(64, 48);
        let size_err = |r: Result<Vec<u8>, SnapshotError>| {
            assert!(matches!(r, Err(SnapshotError::InvalidSize { .. })), "{r:?}");
        };
        size_err(encode_i420_jpeg(0, 0, &[], &[], &[], 75));
        size_err(encode_i420_jpeg(0, 48, &y, &u, &v, 75));
        size_err(encode_i420_jpeg(63, 48, &y, &u, &v, 75));
        size_err(encode_i420_jpeg(64, 47, &y, &u, &v, 75));
        size_err(encode_i420_jpeg(70_000, 2, &y, &u, &v, 75));
        let short = encode_i420_jpeg(64, 48, &y[..64 * 48 - 1], &u, &v, 75).unwrap_err();
        assert_eq!(
            short,
            SnapshotError::ShortPlane {
                plane: 'Y',
                len: 64 * 48 - 1,
                needed: 64 * 48,
                width: 64,
                height: 48
            }
        );
        assert!(
            short.to_string().contains("Y plane has 3071 bytes"),
            "{short}"
        );
        assert!(matches!(
            encode_i420_jpeg(64, 48, &y, &u[..10], &v, 75),
            Err(SnapshotError::ShortPlane { plane: 'U', .. })
        ));
        assert!(matches!(
            encode_i420_jpeg(64, 48, &y, &u, &[], 75),
            Err(SnapshotError::ShortPlane { plane: 'V', .. })
        ));
        // The test pattern's own limits, as the camera checks them.
        for (w, h) in [
            (0, 0),
            (641, 480),
            (640, 481),
            (8, 8),
            (3842, 480),
            (640, 2162),
        ] {
            size_err(test_pattern_snapshot(w, h, 75));
        }
        assert!(test_pattern_snapshot(16, 16, 75).is_ok());
    }

    #[test]
    fn no_input_panics() {
        // Every small size with planes from empty to more than enough, at odd qualities.
        let data = [128u8; 64];
        for w in 0..=7u32 {
            for h in 0..=7u32 {
                for len in [0, 1, 3, 4, 12, 16, 48, 64] {
                    for q in [0, 1, 100, 255] {
                        let r = encode_i420_jpeg(w, h, &data[..len], &data[..len], &data, q);
                        let fits = w > 0
                            && h > 0
                            && w % 2 == 0
                            && h % 2 == 0
                            && (w * h) as usize <= len
                            && (w * h / 4) as usize <= len;
                        assert_eq!(r.is_ok(), fits, "{w}x{h} planes {len}: {r:?}");
                        if let Ok(jpeg) = r {
                            assert_eq!(decode(&jpeg).0, w);
                        }
                    }
                }
            }
        }
    }
}
