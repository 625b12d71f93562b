//! # Commands: request ids, timeouts and results, shared by both sides.
//!
//! Owns the bookkeeping of request/response commands (GetResolution, GetSnapshot, GetTime,
//! SetControl):
//! the bounded table of requests this side has asked (with deadlines), the bounded table of
//! requests the other side has asked and the application has not yet answered, and the
//! result types the application sees. It must not touch the link or decide about waking:
//! the state machines do that.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::message::{Command, CommandKind, CommandResponse, Resolution, Status, TimeSample};

/// Why a command did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("too many outstanding requests (limit {limit})")]
    TooManyOutstanding { limit: usize },
    #[error("no answer in time")]
    Timeout,
    #[error("the other side is not available (asleep and did not wake, or gone)")]
    Unavailable,
    #[error("the other side answered {0}")]
    Remote(Status),
    #[error("the answer does not match the request")]
    Mismatch,
}

/// A successful command result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandValue {
    Resolution(Resolution),
    /// JPEG bytes.
    Snapshot(Vec<u8>),
    /// The other side's clock, with the instants needed to correct it by half the round trip.
    Time(TimeSample),
    /// The other side applied a [`Command::SetControl`].
    Applied,
}

/// A command this side asked has finished (answered, failed or timed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandDone {
    pub request_id: u32,
    pub command: Command,
    pub result: Result<CommandValue, CommandError>,
}

/// Why the application's answer to an incoming request was not sent as given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RespondError {
    #[error("no outstanding request {0} (answered already, or never asked)")]
    UnknownRequest(u32),
    #[error("the response is for {got:?}, the request was {expected:?}")]
    KindMismatch {
        expected: CommandKind,
        got: CommandKind,
    },
    #[error("the response exceeds the link's message limit; the requester was told TOO_LARGE")]
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbound {
    pub(crate) request_id: u32,
    pub(crate) command: Command,
    pub(crate) deadline: Instant,
    /// When the request went on the link (None while held for a wake-up).
    pub(crate) sent_at: Option<Instant>,
}

/// Requests this side has asked; bounded.
#[derive(Debug)]
pub(crate) struct Outstanding {
    next_id: u32,
    limit: usize,
    items: Vec<Outbound>,
}

impl Outstanding {
    pub(crate) fn new(limit: usize) -> Self {
        Outstanding {
            next_id: 1,
            limit,
            items: Vec::new(),
        }
    }

    /// A fresh non-zero request id (0 means "none" on the wire).
    pub(crate) fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    pub(crate) fn start(
        &mut self,
        now: Instant,
        command: Command,
        timeout: Duration,
    ) -> Result<u32, CommandError> {
        if self.items.len() >= self.limit {
            return Err(CommandError::TooManyOutstanding { limit: self.limit });
        }
        let request_id = self.next_id();
        self.items.push(Outbound {
            request_id,
            command,
            deadline: now + timeout,
            sent_at: None,
        });
        Ok(request_id)
    }

    pub(crate) fn take(&mut self, request_id: u32) -> Option<Outbound> {
        let i = self.items.iter().position(|o| o.request_id == request_id)?;
        Some(self.items.remove(i))
    }

    /// Marks every held request as sent now and returns them, for sending.
    pub(crate) fn send_held(&mut self, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        for o in self.items.iter_mut().filter(|o| o.sent_at.is_none()) {
            o.sent_at = Some(now);
            out.push(*o);
        }
        out
    }

    /// Removes and returns the requests matching `pred`.
    pub(crate) fn remove_where(&mut self, pred: impl Fn(&Outbound) -> bool) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.items.retain(|o| {
            if pred(o) {
                out.push(*o);
                false
            } else {
                true
            }
        });
        out
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.items.iter().map(|o| o.deadline).min()
    }
}

/// Turns a response into what the application sees.
pub(crate) fn complete(o: &Outbound, response: CommandResponse, now: Instant) -> CommandDone {
    let result = match (o.command, response) {
        (Command::GetResolution, CommandResponse::Resolution(r)) => r
            .map(CommandValue::Resolution)
            .map_err(CommandError::Remote),
        (Command::GetSnapshot { .. }, CommandResponse::Snapshot(r)) => {
            r.map(CommandValue::Snapshot).map_err(CommandError::Remote)
        }
        (Command::GetTime, CommandResponse::Time(r)) => r
            .map(|t| {
                CommandValue::Time(TimeSample {
                    remote_unix_micros: t,
                    sent: o.sent_at.unwrap_or(now),
                    received: now,
                })
            })
            .map_err(CommandError::Remote),
        (Command::SetControl(_), CommandResponse::Applied(r)) => r
            .map(|()| CommandValue::Applied)
            .map_err(CommandError::Remote),
        _ => Err(CommandError::Mismatch),
    };
    CommandDone {
        request_id: o.request_id,
        command: o.command,
        result,
    }
}

pub(crate) fn failed(o: &Outbound, error: CommandError) -> CommandDone {
    CommandDone {
        request_id: o.request_id,
        command: o.command,
        result: Err(error),
    }
}

/// Requests the other side asked that the application has not answered; bounded. An
/// application that never answers cannot pin the table: entries older than `stale_after` make
/// room for new ones.
#[derive(Debug)]
pub(crate) struct Incoming {
    limit: usize,
    stale_after: Duration,
    items: Vec<(u32, CommandKind, Instant)>,
}

impl Incoming {
    pub(crate) fn new(limit: usize, stale_after: Duration) -> Self {
        Incoming {
            limit,
            stale_after,
            items: Vec::new(),
        }
    }

    /// Records a request; false when the table is full (the caller answers BUSY).
    pub(crate) fn admit(&mut self, now: Instant, request_id: u32, kind: CommandKind) -> bool {
        let stale = self.stale_after;
        self.items
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < stale);
        // A repeated id replaces the old entry (the requester restarted its counter).
        self.items.retain(|(id, _, _)| *id != request_id);
        if self.items.len() >= self.limit {
            return false;
        }
        self.items.push((request_id, kind, now));
        true
    }

    pub(crate) fn take(&mut self, request_id: u32) -> Option<CommandKind> {
        let i = self.items.iter().position(|(id, _, _)| *id == request_id)?;
        Some(self.items.remove(i).1)
    }

    /// Until when an unanswered request keeps this side busy (the media side does not sleep
    /// under a request it is still expected to answer).
    pub(crate) fn busy_until(&self) -> Option<Instant> {
        self.items
            .iter()
            .map(|(_, _, at)| *at + self.stale_after)
            .max()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

/// Sends the application's answer to an incoming request: the request must be pending and the
/// answer of its kind; an answer of the wrong kind or too large for the link still tells the
/// requester (INTERNAL, TOO_LARGE) so it does not wait for its timeout.
pub(crate) fn respond<E>(
    incoming: &mut Incoming,
    out: &mut crate::link::Outbox<E>,
    request_id: u32,
    response: CommandResponse,
) -> Result<(), RespondError> {
    use crate::message::Message;
    let kind = incoming
        .take(request_id)
        .ok_or(RespondError::UnknownRequest(request_id))?;
    let failed = |status| Message::Response {
        request_id,
        response: CommandResponse::failed(kind, status),
    };
    if kind != response.kind() {
        let got = response.kind();
        // A failure response is small: it always fits the link.
        let _ = out.send(&failed(Status::INTERNAL));
        return Err(RespondError::KindMismatch {
            expected: kind,
            got,
        });
    }
    if out
        .send(&Message::Response {
            request_id,
            response,
        })
        .is_err()
    {
        let _ = out.send(&failed(Status::TOO_LARGE));
        return Err(RespondError::TooLarge);
    }
    Ok(())
}
