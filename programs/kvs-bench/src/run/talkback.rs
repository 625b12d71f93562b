//! Scenario 10, talk-back decoding: the CPU the device spends turning viewers' microphone
//! audio into speaker PCM, per talking viewer.
//!
//! The work measured is exactly the device's talk-back thread's (`kvs_media::talkback::
//! TalkbackCore`: the floor, the jitter buffer, decoding, 48 kHz output), fed with packets as
//! a browser sends them: 20 ms of a 400 Hz voice-level tone per packet, the RFC 6464 audio
//! level set (Chromium sets it), encoded here beforehand (Opus by `opus-rs` at 32 kbit/s —
//! Chromium's default for mono voice —, PCMU and PCMA by `kvs_media::g711`). Time is virtual:
//! the thread pushes one packet per talker and takes one 20 ms tick per period as fast as it
//! can, and the figure is that thread's own CPU time (CLOCK_THREAD_CPUTIME_ID) per second of
//! audio, i.e. milliseconds of CPU per talker-second (10 ms/s = 1 % of one core).
//!
//! Two policies show: one talker (it holds the floor, every packet is decoded and played),
//! and four talking at once (the first holds the floor; the floor policy drops the other
//! three's packets before decoding, so they should cost almost nothing).
//!
//! No peer is measured: the KVS SDKs hand talk-back frames to the application undecoded.

use super::Ctx;
use crate::procfs::thread_cpu;
use crate::report::Figure;
use anyhow::{anyhow, Result};
use bytes::Bytes;
use kvs_media::g711;
use kvs_media::talkback::{
    TalkPacket, TalkbackConfig, TalkbackCore, FRAME_DURATION, FRAME_SAMPLES,
};
use kvs_platform::AudioCodec;
use opus_rs::{Application, OpusEncoder};
use std::time::{Duration, Instant};

const SCENARIO: &str = "10 talk-back";
/// Seconds of audio per measurement.
const AUDIO_SECONDS: usize = 20;
const SMOKE_AUDIO_SECONDS: usize = 4;
/// Chromium's Opus bitrate for a mono microphone.
const OPUS_BPS: i32 = 32_000;

/// One period of a 400 Hz tone at −12 dBFS, packet by packet, in `codec`.
fn encode_tone(codec: AudioCodec, packets: usize) -> Result<Vec<Bytes>> {
    let mut opus = match codec {
        AudioCodec::Opus => {
            let mut e = OpusEncoder::new(48_000, 1, Application::Voip)
                .map_err(|e| anyhow!("Opus encoder: {e}"))?;
            e.bitrate_bps = OPUS_BPS;
            Some(e)
        }
        _ => None,
    };
    let mut pcm = [0f32; FRAME_SAMPLES];
    let mut out = vec![0u8; 1275];
    let mut low = Vec::with_capacity(FRAME_SAMPLES / 6);
    let mut phase = 0f64;
    let mut encoded = Vec::with_capacity(packets);
    for _ in 0..packets {
        for s in pcm.iter_mut() {
            *s = (0.25 * (phase * std::f64::consts::TAU).sin()) as f32;
            phase = (phase + 400.0 / 48_000.0).fract();
        }
        let data = match (&mut opus, codec) {
            (Some(e), _) => {
                let n = e
                    .encode(&pcm, FRAME_SAMPLES, &mut out)
                    .map_err(|e| anyhow!("Opus encode: {e}"))?;
                Bytes::copy_from_slice(&out[..n])
            }
            (None, c) => {
                low.clear();
                g711::downsample_48k_to_8k(&pcm, &mut low);
                let encode = if c == AudioCodec::Pcmu {
                    g711::ulaw_encode
                } else {
                    g711::alaw_encode
                };
                low.iter().map(|s| encode(*s)).collect()
            }
        };
        encoded.push(data);
    }
    Ok(encoded)
}

/// Play `packets` from `talkers` viewers at once through a fresh `TalkbackCore`; returns the
/// thread's CPU time, and how many packets were played.
fn play(codec: AudioCodec, packets: &[Bytes], talkers: usize) -> (Duration, u64) {
    let mut core = TalkbackCore::new(TalkbackConfig::default());
    let names: Vec<String> = (0..talkers).map(|i| format!("viewer-{i}")).collect();
    let samples_per_packet = u64::from(codec.clock_rate()) / 50;
    let start = Instant::now();
    let cpu = thread_cpu();
    let mut played = 0usize;
    for (i, payload) in packets.iter().enumerate() {
        let now = start + FRAME_DURATION * i as u32;
        for name in &names {
            core.push(
                now,
                TalkPacket {
                    peer_id: name.clone(),
                    codec,
                    seq: i as u64,
                    rtp_time: i as u64 * samples_per_packet,
                    audio_level: Some(-12),
                    payload: payload.clone(),
                    arrival: now,
                },
            );
        }
        if let Some(frame) = core.tick(now) {
            played += usize::from(frame.iter().any(|s| *s != 0));
        }
    }
    let spent = thread_cpu().saturating_sub(cpu);
    std::hint::black_box(played);
    (spent, core.stats().packets_played)
}

pub(super) async fn talkback(ctx: &mut Ctx) -> Result<()> {
    let seconds = if ctx.report.mode == "smoke" {
        SMOKE_AUDIO_SECONDS
    } else {
        AUDIO_SECONDS
    };
    let repeats = if ctx.report.mode == "smoke" { 2 } else { 5 };
    let packets_n = seconds * 50;
    for codec in [AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma] {
        let packets = encode_tone(codec, packets_n)?;
        for talkers in [1usize, 4] {
            let packets = packets.clone();
            let (per_second, played) = tokio::task::spawn_blocking(move || {
                let mut runs = Vec::new();
                let mut played = 0;
                for _ in 0..repeats {
                    let (cpu, p) = play(codec, &packets, talkers);
                    played = p;
                    runs.push(cpu.as_secs_f64() * 1e3 / seconds as f64);
                }
                (runs, played)
            })
            .await?;
            let row = ctx.report.row(
                SCENARIO,
                &format!(
                    "decode + play {codec}, {talkers} viewer{} talking",
                    if talkers == 1 { "" } else { "s" }
                ),
                "ms CPU/s",
                Figure::of(&per_second),
                None,
                vec![],
            );
            row.note = Some(format!(
                "{seconds} s of audio per run, {played} of {packets_n} packets played (the floor holder's){}",
                if talkers > 1 {
                    "; the others' packets are dropped by the floor policy before decoding"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}
