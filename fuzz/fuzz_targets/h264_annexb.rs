//! Fuzz the H.264 Annex-B parsers: NAL iteration, NAL headers, the streaming access-unit
//! assembler (fed in input-chosen chunk sizes), slice headers and the SPS parser.
#![no_main]

use kvs_media::h264::{
    first_mb_in_slice, nal_units, AccessUnitAssembler, AccessUnitInfo, NalHeader, Sps,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_byte, stream)) = data.split_first() else {
        return;
    };
    for nal in nal_units(stream) {
        if let Ok(h) = NalHeader::parse(nal) {
            if h.is_vcl() {
                let _ = first_mb_in_slice(nal);
            }
        }
        let _ = Sps::parse(nal);
    }
    let _ = AccessUnitInfo::scan(stream);

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
