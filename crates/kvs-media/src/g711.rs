//! G.711 (ITU-T G.711, 1988): µ-law (PCMU) and A-law (PCMA) companding of 16-bit linear PCM,
//! computed (no tables), and the simple 6:1 rate changes between 48 kHz and G.711's 8 kHz.
//!
//! The rate changes are deliberately plain: 48 → 8 kHz averages each run of six samples (a
//! boxcar low-pass, ~−4 dB at 3 kHz, enough to keep a tone or a voice free of aliasing that
//! matters), 8 → 48 kHz interpolates linearly. Good enough for a doorbell's voice band.

/// µ-law bias (0x84 = 132) added before finding the segment.
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law encodes (larger ones clip).
const ULAW_CLIP: i32 = 32_635;

/// Encode one sample to µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment is the position of the highest set bit among bits 7..=14.
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && pcm & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decode one µ-law byte.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Encode one sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits.
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    // Segment ends: 0x1f, 0x3f, 0x7f, … 0xfff.
    let segment = (0..8).find(|s| pcm < (0x20 << s)).unwrap_or(8);
    let code = if segment >= 8 {
        0x7f
    } else {
        let shift = if segment < 2 { 1 } else { segment };
        (segment << 4) | ((pcm >> shift) & 0x0f)
    };
    (code ^ mask) as u8
}

/// Decode one A-law byte.
pub fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = i32::from(a & 0x0f) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        s => t = (t + 0x108) << (s - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// 48 kHz samples (−1.0..=1.0) to 8 kHz 16-bit ones: the mean of each run of six.
/// A trailing partial run is left out.
pub fn downsample_48k_to_8k(input: &[f32], out: &mut Vec<i16>) {
    for run in input.chunks_exact(6) {
        let mean = run.iter().sum::<f32>() / 6.0;
        out.push((mean.clamp(-1.0, 1.0) * 32_767.0).round() as i16);
    }
}

/// 8 kHz samples to 48 kHz by linear interpolation from `previous` (the last sample of the
/// preceding block, for continuity) through each input sample; returns the new `previous`.
pub fn upsample_8k_to_48k(input: &[i16], previous: i16, out: &mut Vec<i16>) -> i16 {
    let mut prev = i32::from(previous);
    for &s in input {
        let s = i32::from(s);
        for k in 1..=6 {
            out.push((prev + (s - prev) * k / 6) as i16);
        }
        prev = s;
    }
    prev as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        // Values from the reference implementation (Sun's g711.c) and G.711 tables.
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(-1), 0x7f);
        assert_eq!(ulaw_encode(32_767), 0x80);
        assert_eq!(ulaw_encode(-32_768), 0x00);
        assert_eq!(ulaw_encode(1000), 0xce);
        assert_eq!(ulaw_encode(-1000), 0x4e);
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_decode(0xce), 988);
        assert_eq!(ulaw_decode(0x4e), -988);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(32_767), 0xaa);
        assert_eq!(alaw_encode(-32_768), 0x2a);
        assert_eq!(alaw_encode(1000), 0xfa);
        assert_eq!(alaw_encode(-1000), 0x7a);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xaa), 32_256);
        assert_eq!(alaw_decode(0x2a), -32_256);
        assert_eq!(alaw_decode(0xfa), 1008);
        assert_eq!(alaw_decode(0x7a), -1008);
    }

    #[test]
    fn every_code_round_trips_and_error_is_within_the_segment_step() {
        for code in 0..=255u8 {
            assert_eq!(
                ulaw_encode(ulaw_decode(code)),
                code | if code == 0x7f { 0x80 } else { 0 }
            );
            assert_eq!(alaw_encode(alaw_decode(code)), code);
        }
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let m = i32::from(s).abs().max(1);
            // Logarithmic companding: error at most ~1/32 of the magnitude (plus the
            // smallest step near zero).
            let eu = (i32::from(ulaw_decode(ulaw_encode(s))) - i32::from(s)).abs();
            let ea = (i32::from(alaw_decode(alaw_encode(s))) - i32::from(s)).abs();
            assert!(
                eu <= m / 16 + 8 || s.unsigned_abs() > 32_000,
                "µ-law {s}: {eu}"
            );
            assert!(ea <= m / 16 + 16, "A-law {s}: {ea}");
        }
    }

    #[test]
    fn rate_changes_keep_a_tone() {
        let tone: Vec<f32> = (0..960)
            .map(|i| (i as f32 * 440.0 / 48_000.0 * std::f32::consts::TAU).sin() * 0.5)
            .collect();
        let mut low = Vec::new();
        downsample_48k_to_8k(&tone, &mut low);
        assert_eq!(low.len(), 160);
        let mut high = Vec::new();
        let last = upsample_8k_to_48k(&low, 0, &mut high);
        assert_eq!(high.len(), 960);
        assert_eq!(last, low[159]);
        // Same waveform, delayed by the averaging (2.5 samples at 48 kHz) and interpolation;
        // the first run starts from 0.
        let err = high[15..]
            .iter()
            .zip(&tone[12..957])
            .map(|(h, t)| (f32::from(*h) / 32_767.0 - t).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.06, "max error {err}");
    }
}
