//! A counting global allocator with buckets, for heap figures.
//!
//! Every allocation carries a small header naming the bucket that was current on the
//! allocating thread ([`enter`] switches it for a scope), so a block freed on another thread
//! is still taken off the right bucket. That is what lets the device benchmark keep the
//! software encoders' heap (on a real device: a hardware encoder) apart from the SDK's own,
//! even though encoded frames cross threads.
//!
//! Figures are *requested* bytes (what the program asked for), not what the system
//! allocator rounds them up to; the header adds [`HEADER_BYTES`] (or the alignment, if larger)
//! per live block to the process's RSS, reported as `header_bytes` so RSS can be read with it
//! taken off.
//!
//! Memory the C libraries allocate with `malloc` directly (the openh264 encoder, aws-lc) does
//! not pass through here: [`malloc_in_use`] (glibc `mallinfo2`) covers it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Where an allocation is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Bucket {
    /// Everything not in another bucket: the SDK (signaling client, peer engine, runtime).
    Sdk = 0,
    /// The software video encoder and its picture buffers (a hardware encoder on a device).
    VideoEncoder = 1,
    /// The software audio encoder.
    AudioEncoder = 2,
}

const BUCKETS: usize = 3;
/// Bytes in front of every block (keeps 16-byte alignment).
pub const HEADER_BYTES: usize = 16;

static LIVE_BYTES: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static LIVE_BLOCKS: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static TOTAL_ALLOCS: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];
static HEADER_LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static CURRENT: Cell<u8> = const { Cell::new(Bucket::Sdk as u8) };
}

fn current() -> u8 {
    CURRENT.try_with(Cell::get).unwrap_or(Bucket::Sdk as u8)
}

/// Count allocations of this thread in `bucket` until the guard is dropped.
pub fn enter(bucket: Bucket) -> BucketGuard {
    let previous = current();
    let _ = CURRENT.try_with(|c| c.set(bucket as u8));
    BucketGuard { previous }
}

/// Restores the previous bucket when dropped.
pub struct BucketGuard {
    previous: u8,
}

impl Drop for BucketGuard {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}

/// The allocator: the system allocator plus a header and counters.
pub struct Counting;

fn offset(layout: &Layout) -> usize {
    layout.align().max(HEADER_BYTES)
}

fn account(bucket: usize, bytes: i64, blocks: i64) {
    LIVE_BYTES[bucket].fetch_add(bytes, Ordering::Relaxed);
    LIVE_BLOCKS[bucket].fetch_add(blocks, Ordering::Relaxed);
}

// SAFETY: every block handed out is `offset` bytes into a system block of size + offset with
// the same (or larger) alignment; the header sits in those leading bytes and records the
// bucket. `dealloc`/`realloc` undo exactly that.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let off = offset(&layout);
        let Ok(full) = Layout::from_size_align(layout.size() + off, off) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(full);
        if base.is_null() {
            return base;
        }
        let bucket = current();
        let user = base.add(off);
        user.sub(HEADER_BYTES).write(bucket);
        account(bucket as usize, layout.size() as i64, 1);
        TOTAL_ALLOCS[bucket as usize].fetch_add(1, Ordering::Relaxed);
        HEADER_LIVE.fetch_add(off as i64, Ordering::Relaxed);
        user
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let off = offset(&layout);
        let bucket = ptr.sub(HEADER_BYTES).read() as usize;
        account(bucket.min(BUCKETS - 1), -(layout.size() as i64), -1);
        HEADER_LIVE.fetch_sub(off as i64, Ordering::Relaxed);
        let full = Layout::from_size_align_unchecked(layout.size() + off, off);
        System.dealloc(ptr.sub(off), full);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let off = offset(&layout);
        let bucket = ptr.sub(HEADER_BYTES).read() as usize;
        let full = Layout::from_size_align_unchecked(layout.size() + off, off);
        let base = System.realloc(ptr.sub(off), full, new_size + off);
        if base.is_null() {
            return base;
        }
        // The header moved with the block; the bucket stays the block's first one.
        account(
            bucket.min(BUCKETS - 1),
            new_size as i64 - layout.size() as i64,
            0,
        );
        base.add(off)
    }
}

/// Counters of one bucket.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BucketStats {
    pub live_bytes: i64,
    pub live_blocks: i64,
    pub total_allocs: u64,
}

/// All counters at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct HeapStats {
    pub sdk: BucketStats,
    pub video_encoder: BucketStats,
    pub audio_encoder: BucketStats,
    /// Bytes of headers of live blocks (allocator overhead inside RSS).
    pub header_bytes: i64,
}

fn bucket_stats(b: Bucket) -> BucketStats {
    let i = b as usize;
    BucketStats {
        live_bytes: LIVE_BYTES[i].load(Ordering::Relaxed),
        live_blocks: LIVE_BLOCKS[i].load(Ordering::Relaxed),
        total_allocs: TOTAL_ALLOCS[i].load(Ordering::Relaxed),
    }
}

pub fn stats() -> HeapStats {
    HeapStats {
        sdk: bucket_stats(Bucket::Sdk),
        video_encoder: bucket_stats(Bucket::VideoEncoder),
        audio_encoder: bucket_stats(Bucket::AudioEncoder),
        header_bytes: HEADER_LIVE.load(Ordering::Relaxed),
    }
}

/// Bytes glibc's malloc has handed out and not had back (all arenas, mmapped blocks
/// included): Rust blocks (with their headers) *and* C libraries' own `malloc`s.
pub fn malloc_in_use() -> i64 {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as i64
}
