//! # Link plumbing shared by both state machines (crate-private).
//!
//! Owns the framer/deframer pair of one side and its ordered outbox: link bytes and
//! application events come out in the order they were caused, and consecutive link writes are
//! coalesced into one `Transmit`. It must not decide anything: what to send and when is the
//! state machines' business.

use std::collections::VecDeque;
use std::time::Instant;

use crate::frame::{Deframer, DeframerConfig, FrameError, Framer};
use crate::message::{Message, MessageError};

/// What an outbox yields: link bytes or one of the core's events.
#[derive(Debug)]
pub(crate) enum Out<E> {
    Bytes(Vec<u8>),
    Event(E),
}

#[derive(Debug)]
pub(crate) struct Outbox<E> {
    framer: Framer,
    deframer: Deframer,
    /// Bytes framed since the last event: coalesced into one write.
    tx: Vec<u8>,
    /// Scratch space for emitting one message before framing (reused, no per-message alloc).
    scratch: Vec<u8>,
    queue: VecDeque<Out<E>>,
    pub(crate) sent: u64,
}

impl<E> Outbox<E> {
    pub(crate) fn new(config: DeframerConfig) -> Self {
        Outbox {
            framer: Framer::new(config.max_message),
            deframer: Deframer::new(config),
            tx: Vec::new(),
            scratch: Vec::new(),
            queue: VecDeque::new(),
            sent: 0,
        }
    }

    pub(crate) fn deframer(&self) -> &Deframer {
        &self.deframer
    }

    /// Frames `message` for the link. Fails only when it exceeds the message limit.
    pub(crate) fn send(&mut self, message: &Message) -> Result<(), FrameError> {
        self.scratch.clear();
        message.emit(&mut self.scratch);
        let result = self.framer.emit(&self.scratch, &mut self.tx).map(|_| ());
        if self.scratch.capacity() > 64 * 1024 {
            // A snapshot went through: don't keep its size resident.
            self.scratch = Vec::new();
        }
        if result.is_ok() {
            self.sent += 1;
        }
        result
    }

    /// Queues an event after whatever was framed before it.
    pub(crate) fn event(&mut self, event: E) {
        self.flush_tx();
        self.queue.push_back(Out::Event(event));
    }

    pub(crate) fn poll(&mut self) -> Option<Out<E>> {
        if let Some(out) = self.queue.pop_front() {
            return Some(out);
        }
        if self.tx.is_empty() {
            None
        } else {
            Some(Out::Bytes(std::mem::take(&mut self.tx)))
        }
    }

    fn flush_tx(&mut self) {
        if !self.tx.is_empty() {
            self.queue
                .push_back(Out::Bytes(std::mem::take(&mut self.tx)));
        }
    }

    /// Feeds link bytes; `on_message` is called for every reassembled message, parsed.
    pub(crate) fn receive(
        &mut self,
        data: &[u8],
        now: Instant,
        mut on_message: impl FnMut(Result<Message, MessageError>),
    ) {
        let mut rest = data;
        loop {
            let taken = self.deframer.push(rest);
            rest = &rest[taken..];
            while let Some(bytes) = self.deframer.poll(now) {
                on_message(Message::parse(bytes));
            }
            if rest.is_empty() {
                return;
            }
        }
    }

    pub(crate) fn reset_receiver(&mut self) {
        self.deframer.reset();
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        self.deframer.expire(now);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deframer.poll_timeout()
    }
}
