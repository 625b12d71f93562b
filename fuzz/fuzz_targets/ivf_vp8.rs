//! Fuzz the IVF reader and the VP8 frame tag: the zero-copy file view and its frame iterator
//! (bounded frame size, one error then the end), the frame-header parser, the pipe camera
//! reading the same bytes as a stream, and the VP8 RTP packetizer (payloads within the
//! input-chosen limit, the frame rebuilt from them).
#![no_main]

use kvs_media::ivf::{FrameHeader, IvfFile, IvfHeader, FRAME_HEADER_LEN};
use kvs_media::rtp::{packetize_vp8, MIN_MAX_PAYLOAD};
use kvs_media::sources::{StdinVp8Camera, StdinVp8Config};
use kvs_media::vp8::FrameTag;
use kvs_platform::VideoCapture;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&limit_byte, data)) = data.split_first() else {
        return;
    };
    if let Ok(h) = IvfHeader::parse(data) {
        let _ = h.pts_to_us(u64::MAX);
    }
    if let Some(h) = data.first_chunk::<FRAME_HEADER_LEN>() {
        let _ = FrameHeader::parse(h, 0, MAX_FRAME);
    }
    let limit = (usize::from(limit_byte) * 8).max(MIN_MAX_PAYLOAD);
    if let Ok(file) = IvfFile::parse(data, MAX_FRAME) {
        let mut errors = 0;
        for frame in file.frames() {
            match frame {
                Ok(f) => {
                    assert!(f.data.len() <= MAX_FRAME);
                    assert_eq!(&data[f.offset..f.offset + f.data.len()], f.data);
                    let _ = FrameTag::parse(f.data);
                    let mut out = Vec::new();
                    packetize_vp8(f.data, limit, &mut out);
                    assert!(out.iter().all(|p| p.data.len() <= limit));
                    let rebuilt: Vec<u8> = out.iter().flat_map(|p| p.data[1..].to_vec()).collect();
                    assert_eq!(rebuilt, f.data);
                }
                Err(_) => errors += 1,
            }
        }
        assert!(errors <= 1, "the iterator stops after an error");
    }
    let mut cam = StdinVp8Camera::new(data, StdinVp8Config { max_frame_bytes: MAX_FRAME });
    let mut total = 0;
    while let Ok(Some(f)) = cam.next_frame() {
        total += f.data.len();
    }
    assert!(total <= data.len());
});
