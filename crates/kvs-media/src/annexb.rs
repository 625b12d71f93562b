//! Annex-B byte streams (H.264 and H.265 share the format): NAL units and a streaming
//! access-unit assembler whose boundary rules come from the codec.
//!
//! Owns the start-code scanning ([`nal_units`], zero-copy) and the bounded, zero-copy
//! [`AccessUnitAssembler`]; the codec modules ([`crate::h264`], [`crate::h265`]) own their NAL
//! headers and say where an access unit begins ([`AccessUnitRules`]). It must not parse
//! anything inside a NAL unit itself. Every function here takes untrusted input: malformed
//! data gives the codec's error, never a panic.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Default bound on one access unit (and on bytes buffered while assembling one): 4 MiB.
pub const DEFAULT_MAX_ACCESS_UNIT_BYTES: usize = 4 * 1024 * 1024;

/// A codec's access-unit boundary rules, implemented by what it records about the access unit
/// being assembled (e.g. [`crate::h264::AccessUnitInfo`]).
pub trait AccessUnitRules: Default + Copy + std::fmt::Debug {
    /// The codec's error type.
    type Error;
    /// The codec's name, for logs.
    const CODEC: &'static str;
    /// Whether the complete NAL unit `nal` begins a new access unit, given what the current one
    /// holds (`self`); `None` when its header is malformed (its bytes stay where they are).
    fn starts_new(&self, nal: &[u8]) -> Option<bool>;
    /// Record `nal` (whose header parsed) as part of this access unit.
    fn note_nal(&mut self, nal: &[u8]);
    /// The access unit holds a coded picture (only those are emitted).
    fn has_picture(&self) -> bool;
    /// The error for an access unit over `limit` bytes.
    fn too_large(limit: usize) -> Self::Error;
}

/// One complete access unit from an [`AccessUnitAssembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit<R> {
    /// The Annex-B bytes of the access unit, start codes included, as they arrived.
    pub data: Bytes,
    /// What the access unit contains.
    pub info: R,
}

/// Iterator over the NAL units of an Annex-B buffer; see [`nal_units`].
#[derive(Debug, Clone)]
pub struct NalUnits<'a> {
    buf: &'a [u8],
    /// Start of the next NAL's payload (just after its start code), or `None` when done.
    next: Option<usize>,
}

/// Iterate the NAL units (without start codes and trailing zero bytes) of an Annex-B buffer.
///
/// Zero-copy: each item borrows `buf`. Bytes before the first start code are skipped; empty NAL
/// units (two start codes in a row) are not yielded.
pub fn nal_units(buf: &[u8]) -> NalUnits<'_> {
    NalUnits {
        buf,
        next: find_start_code(buf, 0).map(|(_, payload)| payload),
    }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let start = self.next?;
            let (end, next) = match find_start_code(self.buf, start) {
                Some((sc, payload)) => (sc, Some(payload)),
                None => (self.buf.len(), None),
            };
            self.next = next;
            let nal = trim_trailing_zeros(&self.buf[start..end]);
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    }
}

/// Find the next `00 00 01` at or after `from`: returns (index of its first zero, index just
/// after the `01`).
pub(crate) fn find_start_code(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= buf.len() {
        // Skip quickly: the third byte of a start code is 1; if buf[i+2] > 1, no start code can
        // begin at i, i+1 or i+2.
        let b2 = buf[i + 2];
        if b2 > 1 {
            i += 3;
            continue;
        }
        if b2 == 1 && buf[i] == 0 && buf[i + 1] == 0 {
            return Some((i, i + 3));
        }
        i += 1;
    }
    None
}

pub(crate) fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    &nal[..end]
}

/// Groups an Annex-B byte stream arriving in arbitrary chunks into access units.
///
/// Feed bytes with [`push`](Self::push), take complete access units with
/// [`pop`](Self::pop), and call [`finish`](Self::finish) at end of stream (then `pop` again). An
/// access unit is known to be complete only when the first NAL unit of the *next* one has fully
/// arrived, so a live stream is delayed by about one frame (less with AUDs).
///
/// Bounded: when the bytes of one access unit (including the partial NAL being received)
/// exceed the limit, [`push`](Self::push) returns the codec's "too large" error, discards
/// that access unit and resynchronises at the next start code.
#[derive(Debug)]
pub struct AccessUnitAssembler<R: AccessUnitRules> {
    /// Bytes of the current access unit followed by the NAL being received. Index 0 is the
    /// start of the current access unit (or of not-yet-synchronised input).
    buf: BytesMut,
    /// Offset of the current NAL's payload, once a start code was seen.
    nal_start: Option<usize>,
    /// Offset where the current NAL's start code (with its zero_byte, if any) begins.
    nal_sc_start: usize,
    /// Where to continue scanning for start codes.
    scan_pos: usize,
    /// What the NAL units already assigned to the current access unit contain.
    au: R,
    /// Number of NAL units already assigned to the current access unit.
    au_nals: usize,
    ready: VecDeque<AccessUnit<R>>,
    max_bytes: usize,
}

impl<R: AccessUnitRules> Default for AccessUnitAssembler<R> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ACCESS_UNIT_BYTES)
    }
}

impl<R: AccessUnitRules> AccessUnitAssembler<R> {
    /// An assembler that rejects access units larger than `max_access_unit_bytes`.
    pub fn new(max_access_unit_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            nal_start: None,
            nal_sc_start: 0,
            scan_pos: 0,
            au: R::default(),
            au_nals: 0,
            ready: VecDeque::new(),
            max_bytes: max_access_unit_bytes.max(16),
        }
    }

    /// Bytes buffered for the access unit being assembled.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Add bytes from the stream. Complete access units become available from
    /// [`pop`](Self::pop).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), R::Error> {
        let mut chunk = chunk;
        let mut too_large = false;
        while !chunk.is_empty() {
            // Feed at most what still fits, so the buffer never grows beyond the bound.
            let room = (self.max_bytes + 4).saturating_sub(self.buf.len()).max(1);
            let take = room.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            self.scan();
            if self.buf.len() > self.max_bytes {
                tracing::warn!(
                    limit = self.max_bytes,
                    codec = R::CODEC,
                    "access unit too large; discarding it"
                );
                self.reset();
                too_large = true;
                // Skip the rest of the oversized NAL; resynchronise at the next start code.
                chunk = match find_start_code(chunk, 0) {
                    Some((sc, _)) => &chunk[sc..],
                    None => &[],
                };
            }
        }
        if too_large {
            Err(R::too_large(self.max_bytes))
        } else {
            Ok(())
        }
    }

    /// The next complete access unit, if one is ready.
    pub fn pop(&mut self) -> Option<AccessUnit<R>> {
        self.ready.pop_front()
    }

    /// End of stream: complete the last NAL unit and access unit and make it available from
    /// [`pop`](Self::pop) if it contains a coded slice (trailing parameter sets without a
    /// picture are dropped). The assembler can then take a new stream.
    pub fn finish(&mut self) {
        if let Some(start) = self.nal_start {
            let end = self.buf.len();
            self.complete_nal(start, end);
        }
        if self.au.has_picture() && self.au_nals > 0 {
            let data = self.buf.split().freeze();
            self.ready.push_back(AccessUnit {
                data,
                info: self.au,
            });
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.nal_start = None;
        self.nal_sc_start = 0;
        self.scan_pos = 0;
        self.au = R::default();
        self.au_nals = 0;
    }

    fn scan(&mut self) {
        while let Some((sc, payload)) = find_start_code(&self.buf, self.scan_pos) {
            // Include a preceding zero_byte (4-byte start code) when it is not part of the
            // previous NAL's payload.
            let sc_start = match self.nal_start {
                Some(start) if sc > start && self.buf[sc - 1] == 0 => sc - 1,
                None if sc > 0 && self.buf[sc - 1] == 0 => sc - 1,
                _ => sc,
            };
            match self.nal_start {
                Some(start) => {
                    // `complete_nal` may split off an access unit: offsets shift by `shift`.
                    let shift = self.complete_nal(start, sc);
                    self.nal_sc_start = sc_start - shift;
                    self.nal_start = Some(payload - shift);
                    self.scan_pos = payload - shift;
                }
                None => {
                    // First start code: drop any leading garbage.
                    let _ = self.buf.split_to(sc_start);
                    self.nal_sc_start = 0;
                    self.nal_start = Some(payload - sc_start);
                    self.scan_pos = payload - sc_start;
                }
            }
        }
        // Re-examine the last two bytes next time: a start code may straddle chunks.
        let floor = self.nal_start.unwrap_or(0);
        self.scan_pos = self
            .scan_pos
            .max(self.buf.len().saturating_sub(2))
            .max(floor);
        if self.nal_start.is_none() && self.buf.len() > 3 {
            // Not synchronised yet: keep only what could begin a (4-byte) start code.
            let drop = self.buf.len() - 3;
            let _ = self.buf.split_to(drop);
            self.scan_pos = 0;
        }
    }

    /// The NAL at `buf[start..end]` is complete. Returns how many bytes were split off the
    /// front of the buffer (a finished access unit), so callers can adjust offsets.
    fn complete_nal(&mut self, start: usize, end: usize) -> usize {
        let nal = trim_trailing_zeros(&self.buf[start..end]);
        let Some(starts_new_au) = self.au.starts_new(nal) else {
            // Empty or malformed header: keep the bytes with the current access unit.
            return 0;
        };
        let mut shift = 0;
        if starts_new_au && self.au_nals > 0 {
            shift = self.nal_sc_start;
            let data = self.buf.split_to(shift).freeze();
            self.ready.push_back(AccessUnit {
                data,
                info: self.au,
            });
            self.au = R::default();
            self.au_nals = 0;
        }
        let nal = trim_trailing_zeros(&self.buf[start - shift..end - shift]);
        self.au.note_nal(nal);
        self.au_nals += 1;
        shift
    }
}
