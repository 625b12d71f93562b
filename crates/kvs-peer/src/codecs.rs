//! Video codec negotiation: the device declares only the codec its source produces, picks the
//! payload type to send from what the viewer accepted, and refuses (with a reason a person can
//! read) a viewer whose offer cannot receive that codec — instead of answering it and leaving
//! it with a black picture.
//!
//! Owns the mapping from [`VideoCodec`] to str0m's codec configuration and the reading of a
//! viewer's offered video codecs. It must not touch sessions or sending (that is
//! [`crate::core`]'s); it only answers questions about SDP and payload parameters.

use kvs_platform::VideoCodec;
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::Pt;

/// H.264 profiles we send, in preference order: constrained baseline, baseline (level 3.1).
pub(crate) const H264_PROFILES: [u32; 2] = [0x42e01f, 0x42001f];

/// Names of codecs an offer lists that are not a picture format of their own.
const NOT_VIDEO_FORMATS: [&str; 5] = ["RTX", "RED", "ULPFEC", "FLEXFEC-03", "FLEXFEC"];
/// Most distinct codec names kept from one offer (for the refusal's text).
const MAX_NAMES: usize = 16;

/// Declare `codec` (and nothing else) for video.
pub(crate) fn declare_video(codecs: &mut CodecConfig, codec: VideoCodec) {
    match codec {
        VideoCodec::H264 => {
            // packetization-mode=1 only: FU-A/STAP-A, needed for frames larger than one packet.
            codecs.add_h264(108.into(), Some(109.into()), true, H264_PROFILES[0]);
            codecs.add_h264(127.into(), Some(121.into()), true, H264_PROFILES[1]);
        }
        VideoCodec::Vp8 => codecs.enable_vp8(true),
        VideoCodec::H265 => codecs.enable_h265(true),
    }
}

/// str0m's name for `codec`.
pub fn str0m_video_codec(codec: VideoCodec) -> Codec {
    match codec {
        VideoCodec::H264 => Codec::H264,
        VideoCodec::Vp8 => Codec::Vp8,
        VideoCodec::H265 => Codec::H265,
    }
}

/// The payload type to send `codec` with, among the `accepted` ones. H.264 needs
/// packetization-mode 1 and prefers our profiles in order.
pub(crate) fn pick_video_pt(accepted: &[PayloadParams], codec: VideoCodec) -> Option<Pt> {
    let wanted = str0m_video_codec(codec);
    if codec != VideoCodec::H264 {
        return accepted
            .iter()
            .find(|p| p.spec().codec == wanted)
            .map(|p| p.pt());
    }
    let mode1 = |p: &&PayloadParams| {
        p.spec().codec == wanted && p.spec().format.packetization_mode == Some(1)
    };
    H264_PROFILES
        .iter()
        .find_map(|profile| {
            accepted
                .iter()
                .filter(mode1)
                .find(|p| p.spec().format.profile_level_id == Some(*profile))
        })
        .or_else(|| accepted.iter().find(mode1))
        .map(|p| p.pt())
}

/// The picture codecs an SDP offers in its video sections (upper case, in order, without
/// RTX/RED/FEC), or `None` when it has no video section (a viewer that wants no video).
pub fn offered_video_codecs(sdp: &str) -> Option<Vec<String>> {
    let mut in_video = false;
    let mut any_video = false;
    let mut names: Vec<String> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video ");
            any_video |= in_video;
            continue;
        }
        if !in_video {
            continue;
        }
        let Some(rest) = line.strip_prefix("a=rtpmap:") else {
            continue;
        };
        let Some(name) = rest
            .split_once(' ')
            .and_then(|(_, enc)| enc.split('/').next())
        else {
            continue;
        };
        let name = name.trim().to_ascii_uppercase();
        if name.is_empty() || NOT_VIDEO_FORMATS.contains(&name.as_str()) {
            continue;
        }
        if !names.contains(&name) && names.len() < MAX_NAMES {
            names.push(name);
        }
    }
    any_video.then_some(names)
}

/// Why a viewer with this offer must be refused when the source sends `codec`: its offer has
/// video but not `codec`. `None`: it can receive it (or wants no video).
pub fn offer_refusal(codec: VideoCodec, sdp: &str) -> Option<String> {
    let offered = offered_video_codecs(sdp)?;
    if offered.iter().any(|n| n == codec.name()) {
        return None;
    }
    let theirs = if offered.is_empty() {
        "none".to_string()
    } else {
        offered.join(", ")
    };
    Some(format!(
        "this camera sends {codec} video and the viewer cannot receive {codec} \
         (its offer has {theirs})"
    ))
}

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45 116 117\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
        a=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\na=rtpmap:45 AV1/90000\r\n\
        a=rtpmap:116 red/90000\r\na=rtpmap:117 ulpfec/90000\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn offered_codecs_are_read_from_video_sections_only() {
        assert_eq!(
            offered_video_codecs(CHROME_LIKE).unwrap(),
            vec!["VP8", "H264", "AV1"]
        );
        let audio_only = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(offered_video_codecs(audio_only), None);
        assert_eq!(offer_refusal(VideoCodec::H265, audio_only), None);
    }

    #[test]
    fn a_viewer_without_the_source_codec_is_refused_with_the_reason() {
        assert_eq!(offer_refusal(VideoCodec::Vp8, CHROME_LIKE), None);
        assert_eq!(offer_refusal(VideoCodec::H264, CHROME_LIKE), None);
        let r = offer_refusal(VideoCodec::H265, CHROME_LIKE).unwrap();
        assert_eq!(
            r,
            "this camera sends H265 video and the viewer cannot receive H265 \
             (its offer has VP8, H264, AV1)"
        );
        let none = "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:97 rtx/90000\r\n";
        assert!(offer_refusal(VideoCodec::Vp8, none)
            .unwrap()
            .ends_with("(its offer has none)"));
        // Junk never panics; the list stays bounded.
        let many: String = (0..100)
            .map(|i| format!("a=rtpmap:{i} C{i}/90000\r\na=rtpmap:x\r\na=rtpmap:1 \r\n"))
            .collect();
        let names = offered_video_codecs(&format!("m=video 9 RTP/AVP 0\r\n{many}")).unwrap();
        assert_eq!(names.len(), MAX_NAMES);
    }
}
