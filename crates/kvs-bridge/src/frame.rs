//! # Framing: messages over any byte stream, with checksums, resynchronisation and chunking.
//!
//! This module owns the byte layout of a *frame* (one chunk of one message) and the two ends
//! that use it: [`Framer`] cuts a message into frames, [`Deframer`] finds frames in a stream
//! of arbitrary byte slices, checks them, and reassembles messages. It knows nothing of what a
//! message means (that is [`crate::message`]) and does no I/O and reads no clock: time is
//! passed in.
//!
//! Layout (all integers little-endian; `docs/LINK.md` has the full description):
//!
//! ```text
//! off len field
//!   0   4 magic B7 4B 56 53 ("\xB7KVS")
//!   4   1 frame version (1)
//!   5   1 flags: bit 0 FIRST, bit 1 LAST, bits 2..7 zero
//!   6   2 message id (wraps)
//!   8   4 message total length
//!  12   4 offset of this chunk in the message
//!  16   2 chunk payload length n (<= 8192)
//!  18   2 header check: CRC-16/IBM-3740 over bytes 0..18
//!  20   n payload
//! 20+n  4 CRC-32C (Castagnoli) over bytes 0..20+n
//! ```
//!
//! Why two checks: the CRC-32C protects everything, but it can only be verified once the whole
//! frame is in. If a corrupted length were trusted, the receiver would wait for up to 8 KiB of
//! bytes that belong to the *next* frames before noticing, and on a quiet serial line (one
//! heartbeat every 5 s) that stalls delivery for a long time. The header check makes a bad
//! header visible after 20 bytes.
//!
//! Resynchronisation: whenever a candidate frame fails a check, the receiver drops exactly one
//! byte (the first magic byte) and scans for the next magic. A frame that lost bytes therefore
//! never swallows the intact frame that follows it.

use std::time::{Duration, Instant};

use crc::{Crc, CRC_16_IBM_3740, CRC_32_ISCSI};
use thiserror::Error;

/// The four bytes every frame starts with. The first byte is not ASCII, so text (logs, a
/// boot console sharing the UART) never looks like the start of a frame.
pub const MAGIC: [u8; 4] = [0xB7, 0x4B, 0x56, 0x53];
/// The only frame version this crate speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 20;
/// Bytes after the payload (the CRC-32C).
pub const TRAILER_LEN: usize = 4;
/// Largest payload of one frame (one chunk).
pub const MAX_CHUNK_PAYLOAD: usize = 8192;
/// Largest frame on the wire.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_CHUNK_PAYLOAD + TRAILER_LEN;
/// Default bound on a reassembled message.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;
/// Default time a partial message may go without a new chunk.
pub const DEFAULT_REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Flag: this chunk starts its message (its offset is 0).
pub const FLAG_FIRST: u8 = 0x01;
/// Flag: this chunk ends its message (offset + length = total).
pub const FLAG_LAST: u8 = 0x02;
const FLAGS_RESERVED: u8 = !(FLAG_FIRST | FLAG_LAST);

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    pub const MESSAGE_ID: Range<usize> = 6..8;
    pub const TOTAL_LEN: Range<usize> = 8..12;
    pub const OFFSET: Range<usize> = 12..16;
    pub const CHUNK_LEN: Range<usize> = 16..18;
    pub const HEADER_CHECK: Range<usize> = 18..20;
}

/// Why a frame or a message could not be framed or accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("buffer of {len} bytes is too short for a frame")]
    Truncated { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("header check failed")]
    HeaderCheck,
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    #[error("inconsistent header: {0}")]
    BadHeader(&'static str),
    #[error("frame checksum failed")]
    Checksum,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
}

/// Zero-copy view of one frame in a byte buffer (smoltcp style): accessors read the fields in
/// place; nothing is validated until [`Frame::new_checked`] or [`Frame::check`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer, so only use
    /// this on buffers known to hold a whole frame (e.g. while emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps a buffer after checking that it holds a complete, valid frame (magic, header
    /// check, version, consistent fields, CRC-32C).
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let frame = Frame { buffer };
        frame.check()?;
        Ok(frame)
    }

    /// Checks only the header (the first [`HEADER_LEN`] bytes): what a receiver can decide
    /// before the payload has arrived.
    pub fn check_header(&self) -> Result<(), FrameError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(FrameError::Truncated { len: data.len() });
        }
        if data[field::MAGIC] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if CRC16.checksum(&data[..field::HEADER_CHECK.start]) != self.header_check() {
            return Err(FrameError::HeaderCheck);
        }
        if self.version() != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(self.version()));
        }
        ChunkHeader::validate_fields(
            self.flags(),
            self.total_len(),
            self.offset(),
            self.chunk_len(),
        )
    }

    /// Checks the whole frame: header, then length, then CRC-32C.
    pub fn check(&self) -> Result<(), FrameError> {
        self.check_header()?;
        let data = self.buffer.as_ref();
        let frame_len = self.frame_len();
        if data.len() < frame_len {
            return Err(FrameError::Truncated { len: data.len() });
        }
        let body = &data[..frame_len - TRAILER_LEN];
        let stored = u32::from_le_bytes(read4(&data[frame_len - TRAILER_LEN..frame_len]));
        if CRC32C.checksum(body) != stored {
            return Err(FrameError::Checksum);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn message_id(&self) -> u16 {
        u16::from_le_bytes(read2(&self.buffer.as_ref()[field::MESSAGE_ID]))
    }
    pub fn total_len(&self) -> u32 {
        u32::from_le_bytes(read4(&self.buffer.as_ref()[field::TOTAL_LEN]))
    }
    pub fn offset(&self) -> u32 {
        u32::from_le_bytes(read4(&self.buffer.as_ref()[field::OFFSET]))
    }
    pub fn chunk_len(&self) -> u16 {
        u16::from_le_bytes(read2(&self.buffer.as_ref()[field::CHUNK_LEN]))
    }
    pub fn header_check(&self) -> u16 {
        u16::from_le_bytes(read2(&self.buffer.as_ref()[field::HEADER_CHECK]))
    }
    /// Length of the whole frame as its header declares it.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.chunk_len()) + TRAILER_LEN
    }
    /// The chunk's payload; the frame must have passed [`Frame::check`].
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.chunk_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// The payload area to fill before [`Frame::fill_checks`].
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.chunk_len());
        &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + len]
    }

    /// Computes and stores the header check and the CRC-32C (after header and payload are in).
    pub fn fill_checks(&mut self) {
        let frame_len = self.frame_len();
        let data = self.buffer.as_mut();
        let hc = CRC16.checksum(&data[..field::HEADER_CHECK.start]);
        data[field::HEADER_CHECK].copy_from_slice(&hc.to_le_bytes());
        let crc = CRC32C.checksum(&data[..frame_len - TRAILER_LEN]);
        data[frame_len - TRAILER_LEN..frame_len].copy_from_slice(&crc.to_le_bytes());
    }
}

/// High-level representation of a frame header (smoltcp's `Repr`): parse from a checked
/// [`Frame`], emit into a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u8,
    pub message_id: u16,
    pub total_len: u32,
    pub offset: u32,
    pub chunk_len: u16,
}

impl ChunkHeader {
    /// Reads the header of a frame whose header passed [`Frame::check_header`].
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Self, FrameError> {
        frame.check_header()?;
        Ok(ChunkHeader {
            flags: frame.flags(),
            message_id: frame.message_id(),
            total_len: frame.total_len(),
            offset: frame.offset(),
            chunk_len: frame.chunk_len(),
        })
    }

    pub fn is_first(&self) -> bool {
        self.flags & FLAG_FIRST != 0
    }
    pub fn is_last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }

    /// Writes the header fields (not the checks: see [`Frame::fill_checks`]) into the first
    /// [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::MAGIC].copy_from_slice(&MAGIC);
        buf[field::VERSION] = FRAME_VERSION;
        buf[field::FLAGS] = self.flags;
        buf[field::MESSAGE_ID].copy_from_slice(&self.message_id.to_le_bytes());
        buf[field::TOTAL_LEN].copy_from_slice(&self.total_len.to_le_bytes());
        buf[field::OFFSET].copy_from_slice(&self.offset.to_le_bytes());
        buf[field::CHUNK_LEN].copy_from_slice(&self.chunk_len.to_le_bytes());
    }

    /// The flags are redundant with offset/length/total on purpose: a header whose fields
    /// disagree is rejected, which catches corruption the header check happened to miss.
    fn validate_fields(flags: u8, total: u32, offset: u32, len: u16) -> Result<(), FrameError> {
        if flags & FLAGS_RESERVED != 0 {
            return Err(FrameError::BadHeader("reserved flag bits set"));
        }
        if usize::from(len) > MAX_CHUNK_PAYLOAD {
            return Err(FrameError::BadHeader("chunk longer than 8192 bytes"));
        }
        let end = u64::from(offset) + u64::from(len);
        if end > u64::from(total) {
            return Err(FrameError::BadHeader("chunk ends past the message"));
        }
        if (flags & FLAG_FIRST != 0) != (offset == 0) {
            return Err(FrameError::BadHeader(
                "FIRST flag disagrees with the offset",
            ));
        }
        if (flags & FLAG_LAST != 0) != (end == u64::from(total)) {
            return Err(FrameError::BadHeader("LAST flag disagrees with the length"));
        }
        if len == 0 && total != 0 {
            // Only the empty message has an empty chunk; anything else could loop forever.
            return Err(FrameError::BadHeader("empty chunk of a non-empty message"));
        }
        Ok(())
    }
}

fn read2(b: &[u8]) -> [u8; 2] {
    let mut out = [0; 2];
    out.copy_from_slice(&b[..2]);
    out
}

fn read4(b: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(&b[..4]);
    out
}

/// Bytes a message of `message_len` bytes takes on the wire.
pub fn framed_len(message_len: usize) -> usize {
    let chunks = message_len.div_ceil(MAX_CHUNK_PAYLOAD).max(1);
    message_len + chunks * (HEADER_LEN + TRAILER_LEN)
}

/// The sending end: cuts messages into frames of at most [`MAX_CHUNK_PAYLOAD`] payload bytes.
#[derive(Debug, Clone)]
pub struct Framer {
    next_id: u16,
    max_message: usize,
}

impl Framer {
    /// `max_message` is the largest message it will frame (clamped to `u32::MAX`).
    pub fn new(max_message: usize) -> Self {
        Framer {
            next_id: 0,
            max_message: max_message.min(u32::MAX as usize),
        }
    }

    /// Appends the frames of `message` to `out` and returns the message id used. A message
    /// over the limit is refused before anything is written.
    pub fn emit(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<u16, FrameError> {
        if message.len() > self.max_message {
            return Err(FrameError::MessageTooLarge {
                len: message.len(),
                max: self.max_message,
            });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let total = message.len() as u32; // fits: max_message <= u32::MAX
        out.reserve(framed_len(message.len()));
        let mut offset = 0usize;
        loop {
            let len = (message.len() - offset).min(MAX_CHUNK_PAYLOAD);
            let mut flags = 0;
            if offset == 0 {
                flags |= FLAG_FIRST;
            }
            if offset + len == message.len() {
                flags |= FLAG_LAST;
            }
            let header = ChunkHeader {
                flags,
                message_id: id,
                total_len: total,
                offset: offset as u32,
                chunk_len: len as u16,
            };
            let start = out.len();
            out.resize(start + HEADER_LEN + len + TRAILER_LEN, 0);
            header.emit(&mut out[start..]);
            let mut frame = Frame::new_unchecked(&mut out[start..]);
            frame
                .payload_mut()
                .copy_from_slice(&message[offset..offset + len]);
            frame.fill_checks();
            offset += len;
            if offset == message.len() {
                return Ok(id);
            }
        }
    }
}

/// Limits of the receiving end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeframerConfig {
    /// Largest message reassembled; bigger ones are dropped (counted) without allocating.
    pub max_message: usize,
    /// A partial message that gets no new chunk for this long is discarded. Measured from the
    /// last chunk rather than the first: a 256 KiB message legitimately takes ~23 s at
    /// 115200 baud, while silence in the middle of a message means its tail was lost.
    pub reassembly_timeout: Duration,
}

impl Default for DeframerConfig {
    fn default() -> Self {
        DeframerConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            reassembly_timeout: DEFAULT_REASSEMBLY_TIMEOUT,
        }
    }
}

/// What the receiving end has seen; every error is counted, none is fatal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeframerStats {
    /// Frames that passed every check.
    pub frames: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Bytes thrown away while searching for a frame (garbage, or bytes of bad frames).
    pub bytes_skipped: u64,
    /// Times the receiver lost step with the sender: a run of bytes before a magic that did
    /// not follow a good frame (counted once per run, not per byte; a run right after a
    /// header or CRC error is part of that error).
    pub resyncs: u64,
    /// Candidate frames whose header check, or header fields, were wrong.
    pub header_errors: u64,
    /// Frames whose CRC-32C was wrong.
    pub crc_errors: u64,
    /// Valid frames of a frame version this receiver does not speak (skipped whole).
    pub unknown_version: u64,
    /// Messages refused for exceeding `max_message` (counted once, at their first chunk).
    pub oversize: u64,
    /// Partial messages discarded: superseded by a new first chunk, interrupted by a chunk of
    /// another message, or broken by a gap.
    pub partials_discarded: u64,
    /// Partial messages discarded because their next chunk did not come in time.
    pub partials_expired: u64,
    /// Non-first chunks with no partial message to continue (e.g. after a discard).
    pub orphan_chunks: u64,
}

impl DeframerStats {
    /// Every kind of error together: what a health counter wants.
    pub fn errors(&self) -> u64 {
        self.resyncs
            + self.header_errors
            + self.crc_errors
            + self.unknown_version
            + self.oversize
            + self.partials_discarded
            + self.partials_expired
            + self.orphan_chunks
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Nothing,
    /// A single-chunk message lent out of `buf`: release the frame's bytes next time.
    Frame {
        frame_len: usize,
    },
    /// A reassembled message lent out of `reasm`: clear it next time.
    Reassembled,
}

#[derive(Debug, Clone, Copy)]
struct Partial {
    message_id: u16,
    total: usize,
    last_chunk: Instant,
}

/// The receiving end: feed it byte slices split anywhere, take complete messages out.
///
/// Memory is bounded: one frame buffer of [`MAX_FRAME_LEN`] bytes, and one reassembly buffer
/// of at most `max_message` bytes, sized from the declared total only after the total has been
/// checked against the limit.
///
/// Two ways to use it: [`Deframer::feed`] with a closure, or the pull pair
/// [`Deframer::push`] / [`Deframer::poll`] (messages are lent out zero-copy; single-chunk
/// messages are never copied).
#[derive(Debug)]
pub struct Deframer {
    config: DeframerConfig,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes still to throw away without looking (the rest of a frame of unknown version).
    skip: usize,
    held: Held,
    partial: Option<Partial>,
    reasm: Vec<u8>,
    /// False from a skipped byte until the next good frame (so a garbage run counts once).
    synced: bool,
    stats: DeframerStats,
}

impl Deframer {
    pub fn new(config: DeframerConfig) -> Self {
        Deframer {
            config,
            buf: vec![0; MAX_FRAME_LEN],
            start: 0,
            end: 0,
            skip: 0,
            held: Held::Nothing,
            partial: None,
            reasm: Vec::new(),
            synced: true,
            stats: DeframerStats::default(),
        }
    }

    pub fn config(&self) -> &DeframerConfig {
        &self.config
    }

    pub fn stats(&self) -> &DeframerStats {
        &self.stats
    }

    /// Forgets buffered bytes and any partial message (the link was re-established).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.skip = 0;
        self.held = Held::Nothing;
        self.partial = None;
        self.reasm = Vec::new();
        self.synced = true;
    }

    /// Feeds `data` (any split) and calls `deliver` with every complete message, in order.
    pub fn feed(&mut self, mut data: &[u8], now: Instant, mut deliver: impl FnMut(&[u8])) {
        loop {
            let taken = self.push(data);
            data = &data[taken..];
            while let Some(message) = self.poll(now) {
                deliver(message);
            }
            if data.is_empty() {
                return;
            }
        }
    }

    /// Takes as many bytes of `data` as fit in the frame buffer and returns how many. After
    /// [`Deframer::poll`] has returned `None`, at least one byte always fits, so a loop of
    /// push/poll always progresses.
    pub fn push(&mut self, data: &[u8]) -> usize {
        self.release_held();
        let mut taken = 0;
        if self.skip > 0 {
            // Skip straight from the input: no need to copy bytes that will be dropped.
            let n = self.skip.min(data.len());
            self.skip -= n;
            self.stats.bytes_skipped += n as u64;
            taken = n;
            if self.skip > 0 {
                return taken;
            }
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = (self.buf.len() - self.end).min(data.len() - taken);
        self.buf[self.end..self.end + n].copy_from_slice(&data[taken..taken + n]);
        self.end += n;
        taken + n
    }

    /// The next complete message from the bytes pushed so far, lent until the next call.
    pub fn poll(&mut self, now: Instant) -> Option<&[u8]> {
        self.release_held();
        self.expire(now);
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.skip -= n;
                self.start += n;
                self.stats.bytes_skipped += n as u64;
                if self.skip > 0 {
                    return None;
                }
            }
            if !self.find_magic() {
                return None;
            }
            let avail = &self.buf[self.start..self.end];
            if avail.len() < HEADER_LEN {
                return None;
            }
            let frame = Frame::new_unchecked(avail);
            match frame.check_header() {
                Ok(()) => {}
                Err(FrameError::UnsupportedVersion(_)) => {
                    // A newer sender: bytes 0..20 keep their meaning in every version, so the
                    // declared length can be trusted (the header check passed) and the whole
                    // frame skipped rather than scanned.
                    self.stats.unknown_version += 1;
                    self.skip = frame.frame_len();
                    continue;
                }
                Err(_) => {
                    self.stats.header_errors += 1;
                    self.drop_one();
                    continue;
                }
            }
            let frame_len = frame.frame_len();
            if avail.len() < frame_len {
                return None;
            }
            if frame.check().is_err() {
                self.stats.crc_errors += 1;
                self.drop_one();
                continue;
            }
            self.stats.frames += 1;
            self.synced = true;
            let header = ChunkHeader {
                flags: frame.flags(),
                message_id: frame.message_id(),
                total_len: frame.total_len(),
                offset: frame.offset(),
                chunk_len: frame.chunk_len(),
            };
            match self.accept_chunk(header, now) {
                Accept::Deliver => {
                    self.held = Held::Frame { frame_len };
                    self.stats.messages += 1;
                    let payload_start = self.start + HEADER_LEN;
                    return Some(
                        &self.buf[payload_start..payload_start + usize::from(header.chunk_len)],
                    );
                }
                Accept::Completed => {
                    self.start += frame_len;
                    self.held = Held::Reassembled;
                    self.stats.messages += 1;
                    return Some(&self.reasm);
                }
                Accept::Consumed => {
                    self.start += frame_len;
                }
            }
        }
    }

    /// When a partial message will be discarded if no chunk comes: for a driver that wants to
    /// free the reassembly buffer on time (discarding also happens on the next input anyway).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partial
            .map(|p| p.last_chunk + self.config.reassembly_timeout)
    }

    /// Discards a partial message whose next chunk is overdue.
    pub fn expire(&mut self, now: Instant) {
        if let Some(p) = self.partial {
            if now.saturating_duration_since(p.last_chunk) >= self.config.reassembly_timeout {
                self.stats.partials_expired += 1;
                self.drop_partial();
            }
        }
    }

    fn release_held(&mut self) {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing => {}
            Held::Frame { frame_len } => self.start += frame_len,
            Held::Reassembled => self.drop_partial(),
        }
    }

    fn drop_partial(&mut self) {
        self.partial = None;
        self.reasm.clear();
        // Give a big buffer back rather than keep the largest message ever seen resident.
        if self.reasm.capacity() > 64 * 1024 {
            self.reasm = Vec::new();
        }
    }

    fn drop_one(&mut self) {
        self.start += 1;
        self.stats.bytes_skipped += 1;
        self.synced = false;
    }

    /// Moves `start` to the next magic. Returns false when no complete magic is buffered
    /// (keeping a tail that may be the beginning of one).
    fn find_magic(&mut self) -> bool {
        let avail = &self.buf[self.start..self.end];
        let found = avail.windows(MAGIC.len()).position(|w| w == MAGIC);
        let drop = match found {
            Some(p) => p,
            None => {
                // Keep the longest tail that is a prefix of the magic.
                let keep = (1..MAGIC.len())
                    .rev()
                    .find(|&k| k <= avail.len() && avail[avail.len() - k..] == MAGIC[..k])
                    .unwrap_or(0);
                avail.len() - keep
            }
        };
        self.start += drop;
        self.stats.bytes_skipped += drop as u64;
        if drop > 0 && self.synced {
            self.stats.resyncs += 1;
            self.synced = false;
        }
        found.is_some()
    }

    fn accept_chunk(&mut self, h: ChunkHeader, now: Instant) -> Accept {
        let total = h.total_len as usize;
        let payload_start = self.start + HEADER_LEN;
        let payload = payload_start..payload_start + usize::from(h.chunk_len);
        if h.is_first() {
            if self.partial.is_some() {
                self.stats.partials_discarded += 1;
                self.drop_partial();
            }
            if total > self.config.max_message {
                // Counted once; its later chunks will count as orphans.
                self.stats.oversize += 1;
                return Accept::Consumed;
            }
            if h.is_last() {
                return Accept::Deliver;
            }
            // `total` has been checked against the limit: this allocation is bounded.
            self.reasm.clear();
            self.reasm.reserve_exact(total);
            self.reasm.extend_from_slice(&self.buf[payload]);
            self.partial = Some(Partial {
                message_id: h.message_id,
                total,
                last_chunk: now,
            });
            return Accept::Consumed;
        }
        let Some(partial) = self.partial else {
            self.stats.orphan_chunks += 1;
            return Accept::Consumed;
        };
        if partial.message_id != h.message_id
            || partial.total != total
            || self.reasm.len() != h.offset as usize
        {
            // Another message's chunk, or a gap (a lost chunk): the partial can never be
            // completed correctly, and gluing would deliver a corrupt message.
            self.stats.partials_discarded += 1;
            self.stats.orphan_chunks += 1;
            self.drop_partial();
            return Accept::Consumed;
        }
        self.partial = Some(Partial {
            last_chunk: now,
            ..partial
        });
        self.reasm.extend_from_slice(&self.buf[payload]);
        if h.is_last() {
            Accept::Completed
        } else {
            Accept::Consumed
        }
    }
}

enum Accept {
    /// A single-chunk message: lend the payload straight out of the frame buffer.
    Deliver,
    /// The last chunk completed the reassembly buffer.
    Completed,
    /// Nothing to deliver; drop the frame's bytes.
    Consumed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_as_documented() {
        let mut out = Vec::new();
        Framer::new(DEFAULT_MAX_MESSAGE)
            .emit(b"hi", &mut out)
            .unwrap();
        assert_eq!(out.len(), HEADER_LEN + 2 + TRAILER_LEN);
        assert_eq!(&out[0..4], &MAGIC);
        assert_eq!(out[4], 1);
        assert_eq!(out[5], FLAG_FIRST | FLAG_LAST);
        assert_eq!(&out[6..8], &[0, 0]);
        assert_eq!(&out[8..12], &[2, 0, 0, 0]);
        assert_eq!(&out[12..16], &[0, 0, 0, 0]);
        assert_eq!(&out[16..18], &[2, 0]);
        assert_eq!(&out[20..22], b"hi");
        let frame = Frame::new_checked(&out[..]).unwrap();
        assert_eq!(frame.payload(), b"hi");
        // Check values are the catalogued algorithms' (known check values of the crc crate).
        assert_eq!(CRC16.checksum(b"123456789"), 0x29B1);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn chunk_header_parse_emit_round_trip() {
        let h = ChunkHeader {
            flags: FLAG_FIRST,
            message_id: 7,
            total_len: 9000,
            offset: 0,
            chunk_len: 8192,
        };
        let mut buf = vec![0u8; HEADER_LEN + 8192 + TRAILER_LEN];
        h.emit(&mut buf);
        let mut frame = Frame::new_unchecked(&mut buf[..]);
        frame.fill_checks();
        let frame = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(ChunkHeader::parse(&frame).unwrap(), h);
    }

    #[test]
    fn inconsistent_flags_are_rejected() {
        assert!(ChunkHeader::validate_fields(0, 10, 0, 10).is_err());
        assert!(ChunkHeader::validate_fields(FLAG_FIRST | FLAG_LAST, 10, 0, 9).is_err());
        assert!(ChunkHeader::validate_fields(FLAG_LAST, 10, 5, 6).is_err());
        assert!(ChunkHeader::validate_fields(0x80 | FLAG_FIRST | FLAG_LAST, 1, 0, 1).is_err());
        assert!(ChunkHeader::validate_fields(FLAG_FIRST | FLAG_LAST, 0, 0, 0).is_ok());
        assert!(ChunkHeader::validate_fields(FLAG_FIRST, 5, 0, 0).is_err());
    }
}
