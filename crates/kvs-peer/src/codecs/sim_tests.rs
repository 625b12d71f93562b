//! The device's [`PeerCore`](crate::PeerCore) and Rust viewers in virtual time
//! ([`crate::sim`]) with VP8 and H.265 sources: what the viewer depacketizes (with str0m's
//! depacketizers) is what the source produced, byte for byte, and a viewer that cannot receive
//! the source's codec is refused with the reason.

use crate::api::{PeerConfig, PeerEvent, VideoCodec, REFUSED_CODEC};
use crate::sim::Sim;
use kvs_media::fanout::FanoutKind;
use kvs_platform::VideoCapture;
use std::time::Duration;

/// x265 output (testsrc 160x120, 15 fps, 30 frames, keyint 10, repeat-headers) with every
/// start code written as 4 bytes: RTP carries no start codes and a receiver writes 4-byte
/// ones, so this file is what a receiver can rebuild exactly.
const H265_FIXTURE: &[u8] = include_bytes!("../../tests/data/testsrc-160x120.h265");

fn config(codec: VideoCodec) -> PeerConfig {
    PeerConfig {
        video: Some(codec),
        audio: None,
        ..PeerConfig::default()
    }
}

/// Connect viewer `v`, push `frames` one per 66 ms, and return what it received.
fn stream(sim: &mut Sim, v: usize, frames: Vec<kvs_platform::EncodedFrame>) -> Vec<Vec<u8>> {
    sim.signal(v);
    let peer = sim.viewers[v].peer_id.clone();
    assert!(
        sim.run_until(Duration::from_secs(5), |s| s
            .device_event(|e| matches!(e, PeerEvent::Connected { peer_id } if *peer_id == peer))
            .is_some()),
        "connected; saw\n{}",
        sim.dump()
    );
    sim.run_for(Duration::from_millis(100));
    let n = frames.len();
    for f in frames {
        sim.push(FanoutKind::Video, f);
        sim.run_for(Duration::from_millis(66));
    }
    sim.run_until(Duration::from_secs(1), |s| s.viewers[v].video().len() >= n);
    sim.viewers[v]
        .video()
        .iter()
        .map(|(_, f)| f.data.to_vec())
        .collect()
}

#[test]
fn a_rust_viewer_receives_h265_access_units_byte_identical_to_the_file() {
    let mut cam = kvs_media::sources::H265FileCamera::from_bytes(
        bytes::Bytes::from_static(H265_FIXTURE),
        kvs_media::sources::H265FileConfig {
            fps: 15,
            paced: false,
            ..Default::default()
        },
    )
    .unwrap();
    let n = cam.frame_count();
    assert_eq!(n, 30);
    let frames: Vec<_> = (0..n).map(|_| cam.next_frame().unwrap().unwrap()).collect();
    let sent: Vec<Vec<u8>> = frames.iter().map(|f| f.data.to_vec()).collect();
    let keys = frames.iter().filter(|f| f.is_key()).count();
    assert_eq!(keys, 3, "an IRAP with VPS/SPS/PPS every 10 frames");

    let mut sim = Sim::new(config(VideoCodec::H265));
    let v = sim.add_video_viewer("hevc", VideoCodec::H265);
    let got = stream(&mut sim, v, frames);
    assert_eq!(got.len(), n, "every access unit arrived");
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(g, s, "access unit {i} differs");
    }
    assert_eq!(got.concat(), H265_FIXTURE, "the file, byte for byte");
    let received = sim.viewers[v].video();
    assert!(received[0].1.keyframe && received[10].1.keyframe && !received[1].1.keyframe);
    // The answer declared H.265 only.
    let answer = answer_of(&sim, "hevc");
    let video = answer.split("m=video").nth(1).unwrap();
    assert!(
        video.contains("H265/90000") && !video.contains("H264"),
        "{video}"
    );
}

#[test]
fn a_rust_viewer_receives_vp8_frames_byte_identical_to_the_source() {
    // VP8 frames from an IVF file (the frames' bodies are not decoded on this path).
    let mut frames_in = Vec::new();
    for i in 0..20u32 {
        let key = i.is_multiple_of(10);
        let tag = u32::from(!key) | (1 << 4) | (100 << 5);
        let mut f = tag.to_le_bytes()[..3].to_vec();
        if key {
            f.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x60, 0x01, 0x20, 0x01]);
        }
        f.extend((0..(300 + i * 211)).map(|k| (k as u8).wrapping_mul(7) ^ i as u8));
        frames_in.push((u64::from(i), f));
    }
    let mut ivf =
        b"DKIF\0\0\x20\0VP80\x60\x01\x20\x01\x0f\0\0\0\x01\0\0\0\x14\0\0\0\0\0\0\0".to_vec();
    for (pts, f) in &frames_in {
        ivf.extend_from_slice(&(f.len() as u32).to_le_bytes());
        ivf.extend_from_slice(&pts.to_le_bytes());
        ivf.extend_from_slice(f);
    }
    let mut cam = kvs_media::sources::Vp8FileCamera::from_bytes(
        ivf.into(),
        kvs_media::sources::Vp8FileConfig {
            paced: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((cam.format().width, cam.format().height), (352, 288));
    let frames: Vec<_> = (0..20)
        .map(|_| cam.next_frame().unwrap().unwrap())
        .collect();

    let mut sim = Sim::new(config(VideoCodec::Vp8));
    let v = sim.add_video_viewer("vp8", VideoCodec::Vp8);
    let got = stream(&mut sim, v, frames);
    let sent: Vec<Vec<u8>> = frames_in.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, sent);
    let received = sim.viewers[v].video();
    assert!(received[0].1.keyframe && received[10].1.keyframe && !received[5].1.keyframe);
}

fn answer_of(sim: &Sim, peer: &str) -> String {
    sim.device_events
        .iter()
        .find_map(|(_, e)| match e {
            PeerEvent::LocalAnswer { peer_id, sdp } if peer_id == peer => Some(sdp.clone()),
            _ => None,
        })
        .expect("answered")
}

#[test]
fn a_viewer_that_cannot_receive_the_source_codec_is_refused_with_the_reason() {
    for (source, viewer) in [
        (VideoCodec::H265, VideoCodec::H264),
        (VideoCodec::Vp8, VideoCodec::H265),
        (VideoCodec::H264, VideoCodec::Vp8),
    ] {
        let mut sim = Sim::new(config(source));
        let v = sim.add_video_viewer("v", viewer);
        sim.send_offer(v, false).expect("an offer is no error");
        let refusal = sim.device_event(|e| matches!(e, PeerEvent::OfferRefused { .. }));
        match refusal {
            Some((_, PeerEvent::OfferRefused { reason, code, .. })) => {
                assert_eq!(*code, REFUSED_CODEC);
                assert!(
                    reason.contains(&format!("sends {source} video"))
                        && reason.contains(viewer.name()),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal for {viewer} → {source}, got {other:?}"),
        }
        assert!(sim
            .device_event(|e| matches!(e, PeerEvent::LocalAnswer { .. }))
            .is_none());
        assert_eq!(sim.with_device(|d, _| d.session_count()), 0);
    }
}
