//! Fuzz the H.265 Annex-B parsers: NAL headers, first_slice_segment_in_pic_flag, the streaming
//! access-unit assembler (fed in input-chosen chunk sizes, bounded), and the RFC 7798
//! packetizer (payloads within the input-chosen limit, one marker).
#![no_main]

use kvs_media::h265::{
    first_slice_segment_in_pic, nal_units, AccessUnitAssembler, AccessUnitInfo, NalHeader,
};
use kvs_media::rtp::{packetize_h265, MIN_MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_byte, stream)) = data.split_first() else {
        return;
    };
    for nal in nal_units(stream) {
        if let Ok(h) = NalHeader::parse(nal) {
            assert_eq!(NalHeader::parse(&h.to_bytes()), Ok(h));
        }
        let _ = first_slice_segment_in_pic(nal);
    }
    let _ = AccessUnitInfo::scan(stream).kind();

    let limit = (usize::from(chunk_byte) * 8).max(MIN_MAX_PAYLOAD);
    let mut payloads = Vec::new();
    packetize_h265(stream, limit, &mut payloads);
    assert!(payloads
        .iter()
        .all(|p| p.data.len() >= 2 && p.data.len() <= limit));
    assert!(payloads.iter().filter(|p| p.marker).count() <= 1);

    let chunk = usize::from(chunk_byte).max(1);
    let mut asm = AccessUnitAssembler::new(4096);
    let mut total = 0;
    for c in stream.chunks(chunk) {
        let _ = asm.push(c);
        assert!(asm.buffered() <= 4096 + 4, "assembler exceeded its bound");
        while let Some(au) = asm.pop() {
            total += au.data.len();
        }
    }
    asm.finish();
    while let Some(au) = asm.pop() {
        total += au.data.len();
    }
    assert!(total <= stream.len());
});
