//! The engine and the Rust viewer on loopback, SDP and candidates passed in-process.

use bytes::Bytes;
use kvs_peer::{
    PeerCommand, PeerConfig, PeerEngine, PeerEvent, PeerHandle, Viewer, ViewerEvent, ViewerHandle,
};
use kvs_platform::{EncodedFrame, FrameKind};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

fn config(max_sessions: usize) -> PeerConfig {
    PeerConfig {
        max_sessions,
        bind_addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ..PeerConfig::default()
    }
}

use kvs_peer::synthetic::{idr, non_idr, strip_candidates};

/// The engine's events, with the ones not yet asked for kept for later questions.
struct Events {
    rx: mpsc::Receiver<PeerEvent>,
    seen: Vec<PeerEvent>,
}

impl Events {
    async fn wait(&mut self, mut f: impl FnMut(&PeerEvent) -> bool) -> PeerEvent {
        if let Some(i) = self.seen.iter().position(&mut f) {
            return self.seen.remove(i);
        }
        timeout(WAIT, async {
            loop {
                let e = self.rx.recv().await.expect("engine events end");
                if f(&e) {
                    return e;
                }
                self.seen.push(e);
            }
        })
        .await
        .expect("timed out waiting for engine event")
    }
}

/// Connect a viewer as `peer_id`; the viewer's candidate is sent *before* the offer.
async fn connect(
    engine: &PeerHandle,
    events: &mut Events,
    peer_id: &str,
) -> (ViewerHandle, mpsc::Receiver<ViewerEvent>) {
    let (viewer, vrx) = Viewer::start().await.unwrap();
    let offer = viewer.create_offer().await.unwrap();
    // Early candidate: held by the engine until the offer arrives (the offer itself is stripped
    // of candidates). The engine (ICE-controlled) only learns addresses here; connectivity
    // would also come from the viewer's checks, so this exercises the hold path but does not
    // prove it on its own.
    engine
        .command(PeerCommand::RemoteCandidate {
            peer_id: peer_id.into(),
            candidate: viewer.local_candidate().to_string(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        })
        .await
        .unwrap();
    engine
        .command(PeerCommand::RemoteOffer {
            peer_id: peer_id.into(),
            sdp: strip_candidates(&offer),
        })
        .await
        .unwrap();
    let answer = match events
        .wait(|e| matches!(e, PeerEvent::LocalAnswer { .. }))
        .await
    {
        PeerEvent::LocalAnswer { sdp, .. } => sdp,
        _ => unreachable!(),
    };
    viewer
        .accept_answer(strip_candidates(&answer))
        .await
        .unwrap();
    // The engine's candidate reaches the viewer by trickle only.
    let cand = events
        .wait(|e| matches!(e, PeerEvent::LocalCandidate { .. }))
        .await;
    if let PeerEvent::LocalCandidate { candidate, .. } = cand {
        assert!(candidate.starts_with("candidate:") && candidate.contains("127.0.0.1"));
        viewer.add_candidate(candidate).await.unwrap();
    }
    (viewer, vrx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_streams_to_viewer_and_manages_sessions() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (engine, rx) = PeerEngine::start(config(1)).await.unwrap();
    let mut events = Events {
        rx,
        seen: Vec::new(),
    };
    let (viewer, mut vrx) = connect(&engine, &mut events, "viewer-1").await;

    events
        .wait(|e| matches!(e, PeerEvent::GatheringComplete { .. }))
        .await;
    events
        .wait(|e| matches!(e, PeerEvent::Connected { .. }))
        .await;
    // Ready session asks for a keyframe before anything is sent.
    events
        .wait(|e| matches!(e, PeerEvent::KeyframeRequested { .. }))
        .await;
    assert_eq!(engine.session_count(), 1);

    // A second viewer is past max_sessions = 1.
    let (v2, _v2rx) = Viewer::start().await.unwrap();
    let offer2 = v2.create_offer().await.unwrap();
    engine
        .command(PeerCommand::RemoteOffer {
            peer_id: "viewer-2".into(),
            sdp: offer2,
        })
        .await
        .unwrap();
    match events.wait(|e| e.peer_id() == "viewer-2").await {
        PeerEvent::OfferRefused { reason, .. } => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("expected OfferRefused, got {other:?}"),
    }

    // Wait for the data channel, then stream. Deltas before the first keyframe are gated.
    events
        .wait(|e| matches!(e, PeerEvent::DataChannelOpen { .. }))
        .await;
    let video = engine.video_sink();
    let audio = engine.audio_sink();
    let opus: Vec<Bytes> = (0..20u8)
        .map(|i| Bytes::from(vec![0xfc, i, i.wrapping_mul(7), 0x55, i]))
        .collect();
    let mut sent_video = Vec::new();
    let mut ts = 0u64;
    assert!(video.send(EncodedFrame::new(non_idr(99), ts, FrameKind::Delta)));
    for gop in 0..3u8 {
        for i in 0..5u8 {
            ts += 33_333;
            let (data, kind) = if i == 0 {
                (idr(gop), FrameKind::Key)
            } else {
                (non_idr(gop * 10 + i), FrameKind::Delta)
            };
            sent_video.push(data.clone());
            while !video.send(EncodedFrame::new(data.clone(), ts, kind)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let a = opus[(gop * 5 + i) as usize].clone();
            while !audio.send(EncodedFrame::new(a.clone(), ts, FrameKind::Key)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    viewer
        .send_data(Bytes::from_static(b"hello device"), false)
        .await
        .unwrap();

    let mut got_video: Vec<(Bytes, bool)> = Vec::new();
    let mut got_audio: Vec<Bytes> = Vec::new();
    let mut got_data = None;
    timeout(WAIT, async {
        while got_video.len() < sent_video.len() || got_audio.len() < 15 {
            match vrx.recv().await.expect("viewer events end") {
                ViewerEvent::Video(f) => got_video.push((f.data, f.keyframe)),
                ViewerEvent::Audio(f) => got_audio.push(f.data),
                _ => {}
            }
        }
    })
    .await
    .expect("viewer did not receive all frames");
    assert!(got_video[0].1, "first received access unit is a keyframe");
    // Access units arrive whole and byte-identical (str0m writes 4-byte start codes).
    assert_eq!(
        got_video.iter().map(|v| v.0.clone()).collect::<Vec<_>>(),
        sent_video
    );
    assert_eq!(
        got_audio,
        opus[..15].to_vec(),
        "Opus packets byte-identical"
    );

    // Data channel round trip.
    match events
        .wait(|e| matches!(e, PeerEvent::DataMessage { .. }))
        .await
    {
        PeerEvent::DataMessage { data, binary, .. } => {
            assert_eq!(&data[..], b"hello device");
            assert!(!binary);
        }
        _ => unreachable!(),
    }
    engine
        .command(PeerCommand::SendData {
            peer_id: "viewer-1".into(),
            data: Bytes::from_static(b"\x01\x02"),
            binary: true,
        })
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            if let ViewerEvent::Data { data, binary } = vrx.recv().await.unwrap() {
                got_data = Some((data, binary));
                return;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got_data, Some((Bytes::from_static(b"\x01\x02"), true)));

    // Close: stats reported, count back to 0.
    engine
        .command(PeerCommand::CloseSession {
            peer_id: "viewer-1".into(),
        })
        .await
        .unwrap();
    match events.wait(|e| matches!(e, PeerEvent::Closed { .. })).await {
        PeerEvent::Closed { stats, .. } => {
            assert_eq!(stats.video_frames_sent, 15);
            assert!(
                stats.video_frames_dropped >= 1,
                "the leading delta was gated"
            );
            assert_eq!(stats.audio_frames_sent, 15);
            assert_eq!(stats.data_messages_received, 1);
            assert_eq!(stats.data_messages_sent, 1);
        }
        _ => unreachable!(),
    }
    assert_eq!(engine.session_count(), 0);
    viewer.close().await;
    engine.shutdown().await;
}
