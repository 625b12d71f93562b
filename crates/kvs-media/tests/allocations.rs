//! Counts heap allocations per produced frame of the live sources (the Rust-side ones: the
//! OpenH264 C library allocates through malloc and is not counted). A regression that, say,
//! reallocates the YUV picture or the Opus buffers every frame fails here.

use kvs_media::sources::{TestPatternCamera, TestPatternConfig, ToneConfig, ToneMicrophone};
use kvs_platform::{AudioCapture, VideoCapture};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Per thread, so tests running in parallel do not disturb each other's counts.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc`/`dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn test_pattern_allocates_about_one_block_per_frame() {
    let mut cam = TestPatternCamera::new(TestPatternConfig {
        paced: false,
        ..TestPatternConfig::default()
    })
    .unwrap();
    // Warm up (encoder initialisation, the first keyframe's parameter-set cache).
    for _ in 0..2 {
        cam.next_frame().unwrap().unwrap();
    }
    let frames = 20;
    let before = allocations();
    for _ in 0..frames {
        let f = cam.next_frame().unwrap().unwrap();
        drop(f);
    }
    let per_frame = (allocations() - before) as f64 / frames as f64;
    // The frame's own buffer plus the `Bytes` shared header at most.
    println!("test pattern: {per_frame} allocations per frame");
    assert!(
        per_frame >= 1.0,
        "the counter must see at least the frame buffer"
    );
    assert!(per_frame <= 1.5, "{per_frame} allocations per video frame");
}

#[test]
fn tone_allocates_about_one_block_per_frame() {
    let mut mic = ToneMicrophone::new(ToneConfig {
        paced: false,
        ..ToneConfig::default()
    })
    .unwrap();
    mic.next_frame().unwrap().unwrap();
    let frames = 50;
    let before = allocations();
    for _ in 0..frames {
        drop(mic.next_frame().unwrap().unwrap());
    }
    let per_frame = (allocations() - before) as f64 / frames as f64;
    println!("tone: {per_frame} allocations per frame");
    assert!(
        per_frame >= 1.0,
        "the counter must see at least the packet buffer"
    );
    assert!(per_frame <= 1.5, "{per_frame} allocations per audio frame");
}

/// The Ogg reader hands out packets as slices of the file and the writer reuses its page
/// buffer: neither allocates per packet (the reason `ogg.rs` keeps its own page layer).
#[test]
fn ogg_reader_and_writer_allocate_nothing_per_packet() {
    use bytes::Bytes;
    use kvs_media::ogg::{OggOpusReader, OggOpusWriter, OpusHead};
    let head = OpusHead {
        version: 1,
        channels: 2,
        pre_skip: 312,
        input_sample_rate: 48_000,
        output_gain: 0,
        mapping_family: 0,
    };
    let packets: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| {
            // A 20 ms CELT packet (config 31) of 120..220 bytes.
            let mut p = vec![31 << 3 | 4];
            p.resize(120 + (i as usize * 37) % 100, i as u8);
            p
        })
        .collect();
    let mut writer = OggOpusWriter::new(Vec::with_capacity(1 << 20), 7, &head).unwrap();
    writer.write_packet(&packets[0], false).unwrap();
    let before = allocations();
    for p in &packets[1..] {
        writer.write_packet(p, false).unwrap();
    }
    let written = allocations() - before;
    println!(
        "Ogg writer: {written} allocations for {} packets",
        packets.len() - 1
    );
    // At most the page buffer growing to the largest page.
    assert!(written <= 2, "{written} allocations writing 999 packets");

    let file = Bytes::from(writer.into_inner());
    let before = allocations();
    let mut reader = OggOpusReader::new(file).unwrap();
    let mut n = 0;
    while let Some(p) = reader.next_packet().unwrap() {
        assert_eq!(p.data, packets[n]);
        n += 1;
    }
    let read = allocations() - before;
    println!("Ogg reader: {read} allocations for {n} packets");
    assert_eq!(n, packets.len());
    // Set-up only: the reader's queues and the shared-buffer header of the file.
    assert!(read <= 20, "{read} allocations reading {n} packets");
}
