//! The events an application can subscribe to, as the seed system names them. Every event has
//! a kind, a status code, the peer it concerns (if any) and a human-readable message.
//!
//! Delivery is a bounded broadcast: a subscriber that falls more than [`EVENT_BUFFER`] events
//! behind loses the oldest ones (it is told how many through `RecvError::Lagged`) — a slow
//! listener never slows streaming down.

use std::fmt;
use tokio::sync::broadcast;

/// How many events a lagging subscriber may fall behind before losing the oldest.
pub const EVENT_BUFFER: usize = 64;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Initialized,
    Deinitializing,
    SignalingConnecting,
    SignalingConnected,
    SignalingDisconnected,
    /// The signaling connection was replaced by a fresh one before the service's connection
    /// age limit; nothing was interrupted.
    SignalingRenewed,
    SignalingDescribe,
    SignalingGetEndpoint,
    SignalingGetIce,
    SignalingError,
    /// Signaling will be retried after the delay given in the message.
    SignalingReconnectScheduled,
    PeerConnectionRequested,
    PeerConnecting,
    PeerConnected,
    PeerDisconnected,
    PeerFailed,
    /// An offer was refused (e.g. the session limit); the message says why.
    PeerRefused,
    StreamingStarted,
    StreamingStopped,
    ReceivedOffer,
    SentAnswer,
    SentOffer,
    ReceivedAnswer,
    ReceivedIceCandidate,
    SentIceCandidate,
    IceGatheringComplete,
    /// The first keyframe went out to a viewer; the message carries the timing breakdown.
    FirstFrameSent,
    DataChannelOpen,
    DataChannelMessage,
    /// The signaling service reported a failed delivery (STATUS_RESPONSE).
    SignalingStatus,
    /// A server-reflexive or relayed candidate was gathered (message: type, address, server).
    IceCandidateGathered,
    /// A viewer's media path changed (message: local and remote candidate types, addresses).
    IcePairSelected,
    /// An ICE restart, started by the device (path lost) or by the viewer's offer.
    IceRestart,
    /// A TURN server failed (message: the URI and why, e.g. it refused the credentials).
    TurnError,
    /// A viewer took the talk-back floor (its audio is played on the speaker).
    TalkbackStarted,
    /// The talk-back floor was released (its holder was silent for `speaker.floor_hold`).
    TalkbackStopped,
    /// The video encoder's target changed with the viewers' congestion feedback (adaptive
    /// bitrate); message: `kbps=<target> reason=<congestion|recovery|viewer-left>
    /// lowest_estimate_kbps=<n>` and `constrained=<peers>` when some are below the floor.
    BitrateChanged,
    /// A viewer's recording file was created (message: its path and picture size).
    RecordingStarted,
    /// A viewer's recording file was finished (message: path, size, frames, bytes).
    RecordingFinished,
    Error,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEvent {
    pub kind: EventKind,
    /// 0 for success; otherwise a code from the source (an HTTP-like status from signaling, 1
    /// for a local failure).
    pub status: i32,
    /// The signaling client id of the viewer concerned, if any.
    pub peer_id: Option<String>,
    pub message: String,
}

impl AppEvent {
    pub fn new(kind: EventKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: 0,
            peer_id: None,
            message: message.into(),
        }
    }

    pub fn peer(kind: EventKind, peer_id: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: 0,
            peer_id: Some(peer_id.to_owned()),
            message: message.into(),
        }
    }

    pub fn with_status(mut self, status: i32) -> Self {
        self.status = status;
        self
    }
}

impl fmt::Display for AppEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(peer) = &self.peer_id {
            write!(f, " [{peer}]")?;
        }
        if self.status != 0 {
            write!(f, " (status {})", self.status)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Publishes events to any number of subscribers.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<AppEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Self { tx }
    }

    /// A new subscription that sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AppEvent> {
        self.tx.subscribe()
    }

    /// Publish an event and log it. Having no subscriber is fine.
    pub fn publish(&self, event: AppEvent) {
        match event.kind {
            EventKind::Error | EventKind::SignalingError | EventKind::PeerFailed => {
                tracing::warn!(target: "kvs_app::events", "{event}")
            }
            EventKind::ReceivedIceCandidate
            | EventKind::SentIceCandidate
            | EventKind::DataChannelMessage => {
                tracing::debug!(target: "kvs_app::events", "{event}")
            }
            _ => tracing::info!(target: "kvs_app::events", "{event}"),
        }
        let _ = self.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_events_and_display_is_readable() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        bus.publish(
            AppEvent::peer(EventKind::PeerConnected, "viewer-1", "ice+dtls up").with_status(0),
        );
        let e = rx.try_recv().unwrap();
        assert_eq!(e.kind, EventKind::PeerConnected);
        assert_eq!(e.to_string(), "PeerConnected [viewer-1]: ice+dtls up");
    }

    #[test]
    fn a_lagging_subscriber_loses_only_the_oldest() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        for i in 0..(EVENT_BUFFER + 10) {
            bus.publish(AppEvent::new(EventKind::SentIceCandidate, i.to_string()));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("expected lag, got {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap().message, "10");
    }
}
