//! Fuzz the Ogg page parser and the Ogg/Opus reader (headers, packets across pages,
//! granule/TOC timestamps).
#![no_main]

use kvs_media::ogg::{opus_packet_samples, OggOpusReader, PacketReader, Page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Page::parse(data, 0);
    let _ = opus_packet_samples(data);

    let mut packets = PacketReader::new(data.to_vec());
    for _ in 0..10_000 {
        match packets.next_packet() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }

    if let Ok(mut reader) = OggOpusReader::new(data.to_vec()) {
        let mut last = 0;
        for _ in 0..10_000 {
            match reader.next_packet() {
                Ok(Some(p)) => {
                    assert!(p.timestamp_us >= last, "timestamps went backwards");
                    last = p.timestamp_us;
                }
                _ => break,
            }
        }
    }
});
