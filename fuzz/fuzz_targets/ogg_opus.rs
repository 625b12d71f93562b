//! Fuzz the Ogg page parser and the Ogg/Opus reader (headers, packets across pages,
//! granule/TOC timestamps), and round-trip packets made from the input through the page writer.
#![no_main]

use kvs_media::ogg::{
    opus_packet_samples, write_page, OggOpusReader, PacketReader, Page, FLAG_BOS, FLAG_EOS,
};
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

    round_trip(data);
});

/// Each pair of input bytes makes one packet: `len * 600` bytes of `fill`, so a small input
/// still gives packets that span pages, end on exact multiples of 255, or are empty. Written
/// as one call (pages split at 255 segments), they must read back unchanged.
fn round_trip(data: &[u8]) {
    let mut made: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    for pair in data.chunks_exact(2).take(16) {
        let len = usize::from(pair[0]) * 600;
        if total + len > 400_000 {
            break;
        }
        total += len;
        made.push(vec![pair[1]; len]);
    }
    if made.is_empty() {
        return;
    }
    let refs: Vec<&[u8]> = made.iter().map(|p| &p[..]).collect();
    let mut file = Vec::new();
    write_page(&mut file, FLAG_BOS | FLAG_EOS, 1234, 5, 0, &refs).expect("writing to a Vec");
    let mut reader = PacketReader::new(file);
    for want in &made {
        let got = reader
            .next_packet()
            .expect("a written stream reads back")
            .expect("as many packets as were written");
        assert_eq!(&got.data[..], &want[..]);
    }
    assert!(reader.next_packet().expect("clean end").is_none());
}
