//! The one str0m drain loop: after every change to an `Rtc`, poll its output until only a
//! timeout is left, handing datagrams and events to the owner.
//!
//! Owns: the order of `poll_output` calls, the `is_alive` check before each of them, the
//! bound on re-runs, and (optionally) handling timeouts that are already due in the same pass.
//! Must not touch: what events mean, session state, or outputs beyond handing them over — the
//! owner ([`crate::core`]'s sessions, [`crate::viewer::ViewerCore`]) decides through
//! [`DrainTarget`].
//!
//! This is the per-packet hot path: [`drain`] is generic over its target (no dynamic dispatch)
//! and allocates nothing besides what str0m hands out.

use crate::api::Datagram;
use std::time::Instant;
use str0m::{Event, Input, Output, Rtc, RtcError};

/// The owner of one `Rtc`, told about what [`drain`] polls out of it.
pub(crate) trait DrainTarget {
    fn rtc(&mut self) -> &mut Rtc;

    /// Before each round: write what the owner queued (data channel messages), so the same
    /// drain sends it.
    fn before_round(&mut self);

    fn transmit(&mut self, datagram: Datagram);

    /// One str0m event; true when the owner wants another round (data can be flushed, or
    /// media sent).
    fn event(&mut self, event: Event) -> bool;
}

/// How a drain goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainPolicy {
    /// Most rounds (a round = `before_round` + poll until a timeout) when events keep asking
    /// for another.
    pub rounds: u8,
    /// Timeouts at or before `now` handled in the same pass (at most this many), instead of
    /// being returned for the driver's next turn.
    pub due_timeouts: u8,
}

/// Why a drain stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DrainError {
    #[error("timeout handling failed: {0}")]
    Timeout(RtcError),
    #[error("poll_output failed: {0}")]
    Poll(RtcError),
}

/// Drain `target`'s `Rtc`: `Ok(Some(t))` when only a timeout at `t` is left, `Ok(None)` when
/// the `Rtc` is not alive any more (closed, remotely or here), `Err` when str0m failed.
pub(crate) fn drain<T: DrainTarget>(
    target: &mut T,
    now: Instant,
    policy: DrainPolicy,
) -> Result<Option<Instant>, DrainError> {
    let mut due_timeouts = policy.due_timeouts;
    let mut next = None;
    for _round in 0..policy.rounds.max(1) {
        target.before_round();
        let mut again = false;
        loop {
            let rtc = target.rtc();
            // A remote close shows only here.
            if !rtc.is_alive() {
                return Ok(None);
            }
            match rtc.poll_output().map_err(DrainError::Poll)? {
                Output::Timeout(t) if t <= now && due_timeouts > 0 => {
                    due_timeouts -= 1;
                    rtc.handle_input(Input::Timeout(now))
                        .map_err(DrainError::Timeout)?;
                }
                Output::Timeout(t) => {
                    next = Some(t);
                    break;
                }
                Output::Transmit(t) => target.transmit(Datagram {
                    source: t.source,
                    destination: t.destination,
                    data: t.contents.into(),
                }),
                Output::Event(e) => again |= target.event(e),
            }
        }
        if !again {
            break;
        }
    }
    Ok(next)
}
