//! A Rust viewer joined to a device through signaling, the way a browser joins: connect as a
//! viewer, send the offer and our host candidate, then apply the answer and the device's
//! trickled candidates as they come.
//!
//! Owns: one viewer's signaling link and its [`Viewer`], and the relay between them.
//! Must not touch: how the link is opened or renewed (any [`SignalingClient`] does that), or
//! what the caller makes of media and refusals (they are handed over as [`JoinEvent`]s).

use super::{Viewer, ViewerEvent, ViewerHandle};
use crate::api::PeerError;
use kvs_signaling::{
    data_plane_url, IceCandidateInit, MessageKind, MessagePayload, Role, SignalingClient,
    SignalingError, SignalingEvent, SignalingLink, SignalingMessage, WsSignalingClient,
};
use std::time::Instant;
use tokio::sync::mpsc;

/// Why a joined viewer cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ViewerJoinError {
    #[error("viewer signaling: {0}")]
    Signaling(#[from] SignalingError),
    /// The link ended (the service closed it, or the network failed).
    #[error("viewer signaling lost: {0}")]
    SignalingLost(String),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the viewer task stopped")]
    ViewerStopped,
}

/// What [`SignaledViewer::next`] yields.
#[derive(Debug, Clone)]
pub enum JoinEvent {
    /// Something the viewer peer observed (connected, media, data, closed).
    Viewer(ViewerEvent),
    /// The device answered with a refusal instead of an SDP answer.
    Refused { code: String, reason: String },
    /// A device candidate the viewer could not use (remote input; the join goes on).
    CandidateRejected { candidate: String, error: String },
    /// A signaling message the relay does not consume (anything but an SDP answer, a
    /// refusal or a candidate): the caller decides whether it is unexpected.
    Signaling(SignalingMessage),
}

/// A signaling client for the viewer `client_id` of the channel at `signaling_url`
/// (a KVS data-plane endpoint or the local service).
pub fn viewer_signaling_client(
    signaling_url: &str,
    channel_arn: &str,
    client_id: &str,
) -> Result<WsSignalingClient, SignalingError> {
    let role = Role::Viewer {
        client_id: client_id.into(),
    };
    let url = data_plane_url(signaling_url, channel_arn, &role)?;
    Ok(WsSignalingClient::new(url, role))
}

/// A [`Viewer`] joined through signaling.
pub struct SignaledViewer {
    viewer: ViewerHandle,
    events: mpsc::Receiver<ViewerEvent>,
    link: SignalingLink,
    offer_sent: Instant,
}

impl SignaledViewer {
    /// Connect `client`'s link, start a viewer, send its offer (with `correlation_id`, if
    /// any) and its host candidate.
    pub async fn join(
        client: &dyn SignalingClient,
        correlation_id: Option<String>,
    ) -> Result<Self, ViewerJoinError> {
        let link = client.connect().await?;
        let (viewer, events) = Viewer::start().await?;
        let sdp = viewer.create_offer().await?;
        let mut offer = SignalingMessage::offer(None, sdp);
        if let Some(id) = correlation_id {
            offer = offer.with_correlation_id(id);
        }
        send(&link, offer).await?;
        let offer_sent = Instant::now();
        let candidate = IceCandidateInit {
            candidate: viewer.local_candidate().to_owned(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        send(&link, SignalingMessage::ice_candidate(None, candidate)).await?;
        Ok(Self {
            viewer,
            events,
            link,
            offer_sent,
        })
    }

    /// The viewer peer (send data, close it).
    pub fn viewer(&self) -> &ViewerHandle {
        &self.viewer
    }

    /// When the offer was handed to the signaling link.
    pub fn offer_sent(&self) -> Instant {
        self.offer_sent
    }

    /// The next event, applying the answer and candidates from signaling on the way;
    /// `None` at `deadline`. A lost link or a rejected answer is an error.
    pub async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Option<JoinEvent>, ViewerJoinError> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                s = self.link.incoming.recv() => match s {
                    Some(SignalingEvent::Message(msg)) => {
                        if let Some(e) = self.relay(msg).await? {
                            return Ok(Some(e));
                        }
                    }
                    Some(SignalingEvent::Disconnected { reason }) => {
                        return Err(ViewerJoinError::SignalingLost(reason))
                    }
                    // Moved to a fresh connection; nothing was lost.
                    Some(SignalingEvent::Renewed { .. }) => {}
                    None => return Err(ViewerJoinError::SignalingLost("link closed".into())),
                },
                v = self.events.recv() => {
                    return match v {
                        Some(e) => Ok(Some(JoinEvent::Viewer(e))),
                        None => Err(ViewerJoinError::ViewerStopped),
                    }
                }
            }
        }
    }

    /// Apply one signaling message; what the caller should see of it, if anything.
    async fn relay(&self, msg: SignalingMessage) -> Result<Option<JoinEvent>, ViewerJoinError> {
        match (msg.kind, msg.payload) {
            (MessageKind::Answer, MessagePayload::Sdp(sdp)) => {
                self.viewer.accept_answer(sdp).await?;
                Ok(None)
            }
            (MessageKind::Answer, MessagePayload::Refusal(r)) => Ok(Some(JoinEvent::Refused {
                code: r.code,
                reason: r.reason,
            })),
            (MessageKind::IceCandidate, MessagePayload::Candidate(c)) => {
                match self.viewer.add_candidate(c.candidate.clone()).await {
                    Ok(()) => Ok(None),
                    Err(PeerError::InvalidCandidate { reason, .. }) => {
                        Ok(Some(JoinEvent::CandidateRejected {
                            candidate: c.candidate,
                            error: reason,
                        }))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (kind, payload) => Ok(Some(JoinEvent::Signaling(SignalingMessage {
                kind,
                payload,
                ..msg
            }))),
        }
    }

    /// Close the viewer peer, then the signaling link.
    pub async fn close(self) {
        self.viewer.close().await;
        drop(self.link);
    }
}

async fn send(link: &SignalingLink, msg: SignalingMessage) -> Result<(), ViewerJoinError> {
    link.outgoing
        .send(msg)
        .await
        .map_err(|_| ViewerJoinError::SignalingLost("link closed".into()))
}
