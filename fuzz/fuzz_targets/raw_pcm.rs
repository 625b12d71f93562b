//! Fuzz the raw-capture microphone's conversion of a command's S16LE output (any rate and
//! channel count) into 48 kHz mono periods: the first bytes choose the format, the rest is
//! cut into periods. Whatever the bytes, a period converts to samples within -1..=1, and a
//! piece of the wrong length is an error, never a panic.
#![no_main]

use kvs_media::sources::PcmConverter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Mostly valid formats (rates that are multiples of 50), some invalid ones.
    let rate = u32::from(u16::from_le_bytes([data[0], data[1]])) * 50;
    let channels = u16::from(data[2] % 10);
    let Ok(mut conv) = PcmConverter::new(rate, channels) else {
        return;
    };
    let mut out = [0f32; 960];
    let body = &data[3..];
    for period in body.chunks(conv.period_bytes()).take(64) {
        match conv.convert(period, &mut out) {
            Ok(()) => assert!(
                out.iter().all(|s| s.is_finite() && (-1.0..=1.0).contains(s)),
                "samples out of range"
            ),
            Err(_) => assert_ne!(period.len(), conv.period_bytes(), "a whole period refused"),
        }
    }
});
