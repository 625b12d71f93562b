//! One viewer's media recorded to a file: fragmented MP4 (H.264 as received + Opus), written
//! by the `muxide` crate.
//!
//! Owns one file and its byte budget; it does not depacketize (it takes whole access units
//! from [`super::depay`]) nor pick names or directories (the application does).
//!
//! Why fragmented MP4 through `muxide`: MP4 is what every standard player opens; `muxide` is a
//! maintained pure-Rust muxer that holds H.264 *and Opus* (the `mp4` crate has no Opus; WebM
//! writers take no H.264), and its fragmented mode writes a header first and then one
//! `moof`+`mdat` fragment at a time, so memory stays bounded by one fragment (its plain mode
//! keeps every sample in memory until the end) and a file cut short — the process killed,
//! the disk budget reached — is readable up to its last whole fragment.
//!
//! Timeline: the file starts at the first IDR (the depacketizer drops what comes before);
//! video times are its RTP timestamps from there (90 kHz), audio its RTP timestamps (48 kHz)
//! from its first packet after that IDR. Audio is recorded only in Opus (G.711 has no MP4
//! sample entry in the muxer), and only if the viewer sent some before the first IDR (the
//! file's header names its tracks once; a viewer page sends camera and microphone together).
//! A fragment is written every [`RecorderConfig::fragment`] (1 s) or
//! [`MAX_PENDING_BYTES`]; past [`RecorderConfig::max_bytes`] nothing more is written and the
//! file ends at its last fragment.

use crate::h264::{find_sps, nal_type, nal_units, NalHeader};
use muxide::api::AudioCodec as MuxAudio;
use muxide::fragmented::{FragmentAudioConfig, FragmentConfig, FragmentedMuxer};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Samples buffered in one fragment before it is written regardless of its duration.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// RTP clocks: H.264 and Opus.
const VIDEO_CLOCK: u32 = 90_000;
const OPUS_CLOCK: u32 = 48_000;

/// Settings of a [`Recorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Largest file; past it the recording stops (the file stays valid).
    pub max_bytes: u64,
    /// Media per fragment: what a killed process loses at most.
    pub fragment: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            fragment: Duration::from_secs(1),
        }
    }
}

/// Errors of a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The first keyframe has no usable SPS/PPS (the file cannot get its header).
    #[error("the viewer's keyframe has no usable SPS/PPS: {0}")]
    NoParameterSets(String),
    #[error("muxer: {0}")]
    Mux(String),
}

/// Counters of a recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordStats {
    pub video_frames: u64,
    pub audio_packets: u64,
    /// Media not written: before the first IDR, past the byte budget, audio in a codec or
    /// time the file cannot hold.
    pub dropped: u64,
    pub bytes: u64,
    pub fragments: u64,
    pub width: u32,
    pub height: u32,
}

struct Open {
    file: BufWriter<File>,
    muxer: FragmentedMuxer,
    has_audio: bool,
    video_origin: u64,
    last_video_dts: Option<u64>,
    audio_origin: Option<u64>,
    last_audio_dts: Option<u64>,
    pending_bytes: usize,
    last_flush: Instant,
}

/// One session's recording; see the module doc.
pub struct Recorder {
    path: PathBuf,
    config: RecorderConfig,
    open: Option<Open>,
    /// Opus arrived before the first IDR: the file gets an audio track.
    audio_seen: bool,
    /// The byte budget is spent, or writing failed: nothing more is written.
    stopped: bool,
    stats: RecordStats,
}

impl Recorder {
    /// A recording into `path`; the file is created at the first keyframe.
    pub fn new(path: impl Into<PathBuf>, config: RecorderConfig) -> Self {
        Self {
            path: path.into(),
            config,
            open: None,
            audio_seen: false,
            stopped: false,
            stats: RecordStats::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> RecordStats {
        self.stats
    }

    /// True once the file exists.
    pub fn started(&self) -> bool {
        self.open.is_some()
    }

    /// One access unit (Annex-B) with its 90 kHz RTP time. The first must be an IDR with
    /// its SPS/PPS: it creates the file.
    pub fn video(
        &mut self,
        now: Instant,
        annexb: &[u8],
        rtp_time: u64,
        keyframe: bool,
    ) -> Result<(), RecordError> {
        if self.stopped {
            self.stats.dropped += 1;
            return Ok(());
        }
        if self.open.is_none() {
            if !keyframe {
                self.stats.dropped += 1;
                return Ok(());
            }
            self.create(now, annexb, rtp_time)?;
        }
        self.maybe_flush(now)?;
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        let mut dts = rtp_time.saturating_sub(o.video_origin);
        if let Some(last) = o.last_video_dts {
            if dts <= last {
                // Same or earlier timestamp (a sender's glitch): keep the track monotonic.
                dts = last + 1;
            }
        }
        o.last_video_dts = Some(dts);
        let sample = to_length_prefixed(annexb);
        o.pending_bytes += sample.len();
        o.muxer
            .write_video(dts, dts, &sample, keyframe)
            .map_err(|e| RecordError::Mux(e.to_string()))?;
        self.stats.video_frames += 1;
        Ok(())
    }

    /// One Opus packet with its 48 kHz RTP time.
    pub fn opus(&mut self, now: Instant, packet: &[u8], rtp_time: u64) -> Result<(), RecordError> {
        if self.stopped || packet.is_empty() {
            self.stats.dropped += 1;
            return Ok(());
        }
        let Some(o) = self.open.as_mut() else {
            self.audio_seen = true;
            self.stats.dropped += 1;
            return Ok(());
        };
        if !o.has_audio {
            self.stats.dropped += 1;
            return Ok(());
        }
        let origin = *o.audio_origin.get_or_insert(rtp_time);
        if rtp_time < origin || o.last_audio_dts.is_some_and(|l| rtp_time - origin <= l) {
            self.stats.dropped += 1;
            return Ok(());
        }
        let dts = rtp_time - origin;
        o.last_audio_dts = Some(dts);
        o.pending_bytes += packet.len();
        o.muxer
            .write_audio(dts, dts, packet)
            .map_err(|e| RecordError::Mux(e.to_string()))?;
        self.stats.audio_packets += 1;
        self.maybe_flush(now)
    }

    /// Audio in a codec the file cannot hold (counted).
    pub fn unsupported_audio(&mut self) {
        self.stats.dropped += 1;
    }

    /// Write what is pending and close the file.
    pub fn finish(&mut self) -> Result<RecordStats, RecordError> {
        self.flush()?;
        if let Some(mut o) = self.open.take() {
            o.file.flush().map_err(|e| self.io(e))?;
            info!(
                file = %self.path.display(),
                video_frames = self.stats.video_frames,
                audio_packets = self.stats.audio_packets,
                bytes = self.stats.bytes,
                "recording finished"
            );
        }
        self.stopped = true;
        Ok(self.stats)
    }

    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn create(&mut self, now: Instant, annexb: &[u8], rtp_time: u64) -> Result<(), RecordError> {
        let sps = find_sps(annexb)
            .ok_or_else(|| RecordError::NoParameterSets("no SPS".into()))?
            .map_err(|e| RecordError::NoParameterSets(e.to_string()))?;
        let nal_of = |t: u8| {
            nal_units(annexb)
                .find(|n| matches!(NalHeader::parse(n), Ok(h) if h.nal_type == t))
                .map(<[u8]>::to_vec)
        };
        let (Some(sps_nal), Some(pps_nal)) = (nal_of(nal_type::SPS), nal_of(nal_type::PPS)) else {
            return Err(RecordError::NoParameterSets("no PPS".into()));
        };
        let mut config = FragmentConfig::new(sps.width, sps.height, VIDEO_CLOCK)
            .with_fragment_duration_ms(self.config.fragment.as_millis().min(60_000) as u32);
        config.sps = sps_nal;
        config.pps = pps_nal;
        let muxer = if self.audio_seen {
            FragmentedMuxer::new_with_audio(
                config,
                FragmentAudioConfig {
                    codec: MuxAudio::Opus,
                    sample_rate: OPUS_CLOCK,
                    channels: 2,
                },
            )
        } else {
            FragmentedMuxer::new(config)
        };
        let mut muxer = muxer.map_err(|e| RecordError::Mux(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let file = File::create(&self.path).map_err(|e| self.io(e))?;
        let mut file = BufWriter::new(file);
        let init = muxer.init_segment();
        file.write_all(&init)
            .and_then(|_| file.flush())
            .map_err(|e| self.io(e))?;
        self.stats.bytes = init.len() as u64;
        self.stats.width = sps.width;
        self.stats.height = sps.height;
        info!(
            file = %self.path.display(),
            width = sps.width,
            height = sps.height,
            audio = self.audio_seen,
            "recording started"
        );
        self.open = Some(Open {
            file,
            muxer,
            has_audio: self.audio_seen,
            video_origin: rtp_time,
            last_video_dts: None,
            audio_origin: None,
            last_audio_dts: None,
            pending_bytes: 0,
            last_flush: now,
        });
        Ok(())
    }

    fn maybe_flush(&mut self, now: Instant) -> Result<(), RecordError> {
        let due = self.open.as_ref().is_some_and(|o| {
            now.saturating_duration_since(o.last_flush) >= self.config.fragment
                || o.pending_bytes >= MAX_PENDING_BYTES
        });
        if due {
            self.flush()?;
            if let Some(o) = self.open.as_mut() {
                o.last_flush = now;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        o.pending_bytes = 0;
        let Some(segment) = o.muxer.flush_segment() else {
            return Ok(());
        };
        if self.stats.bytes + segment.len() as u64 > self.config.max_bytes {
            warn!(
                file = %self.path.display(),
                max_bytes = self.config.max_bytes,
                "recording reached its size limit; the rest of the session is not recorded"
            );
            self.stats.dropped += 1;
            self.stopped = true;
            let mut o = self.open.take().expect("checked above");
            return o.file.flush().map_err(|e| self.io(e));
        }
        let written = o.file.write_all(&segment).and_then(|_| o.file.flush());
        if let Err(e) = written {
            self.stopped = true;
            self.open = None;
            return Err(self.io(e));
        }
        self.stats.bytes += segment.len() as u64;
        self.stats.fragments += 1;
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.open.is_some() {
            if let Err(e) = self.finish() {
                warn!("finishing a recording: {e}");
            }
        }
    }
}

/// Annex-B → MP4 samples: each NAL unit with a 4-byte big-endian length. Access unit
/// delimiters are left out (MP4 has no use for them).
pub fn to_length_prefixed(annexb: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(annexb.len() + 16);
    for nal in nal_units(annexb) {
        if nal.is_empty() || matches!(NalHeader::parse(nal), Ok(h) if h.nal_type == nal_type::AUD) {
            continue;
        }
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{TestPatternCamera, TestPatternConfig};
    use crate::sources::{ToneConfig, ToneMicrophone};
    use kvs_platform::{AudioCapture, FrameKind, VideoCapture};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvs-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// ffprobe's JSON of `path` (streams and format).
    fn ffprobe(path: &Path) -> String {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_streams",
                "-show_format",
                "-of",
                "json",
            ])
            .arg(path)
            .output()
            .expect("ffprobe (Debian ffmpeg) is installed");
        assert!(
            out.status.success(),
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn field<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
        let pat = format!("\"{key}\": ");
        json.match_indices(&pat)
            .map(|(i, _)| {
                let rest = &json[i + pat.len()..];
                let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
                rest[..end].trim().trim_matches('"')
            })
            .collect()
    }

    /// `secs` seconds of 30 fps test pattern (IDR every second) and 20 ms Opus, fed the way the
    /// receive thread does, with the RTP clocks of a real sender (random-looking origins).
    fn feed(r: &mut Recorder, secs: u32) {
        let mut cam = TestPatternCamera::new(TestPatternConfig {
            width: 320,
            height: 240,
            keyframe_interval: 30,
            paced: false,
            ..Default::default()
        })
        .unwrap();
        cam.start().unwrap();
        let mut mic = ToneMicrophone::new(ToneConfig {
            paced: false,
            ..Default::default()
        })
        .unwrap();
        mic.start().unwrap();
        let t0 = Instant::now();
        let (v0, a0) = (1_234_567u64, 987_654u64);
        // Audio comes first, as from a browser.
        let first = mic.next_frame().unwrap().unwrap();
        r.opus(t0, &first.data, a0).unwrap();
        let mut audio_n = 1u64;
        for i in 0..(30 * secs) as u64 {
            let now = t0 + Duration::from_millis(i * 1000 / 30);
            let f = cam.next_frame().unwrap().unwrap();
            r.video(now, &f.data, v0 + i * 3000, f.kind == FrameKind::Key)
                .unwrap();
            while audio_n * 20 <= i * 1000 / 30 {
                let a = mic.next_frame().unwrap().unwrap();
                r.opus(now, &a.data, a0 + audio_n * 960).unwrap();
                audio_n += 1;
            }
        }
    }

    fn record(path: &Path, secs: u32, config: RecorderConfig) -> RecordStats {
        let mut r = Recorder::new(path, config);
        feed(&mut r, secs);
        r.finish().unwrap()
    }

    #[test]
    fn a_recording_cut_off_without_finishing_is_readable_up_to_its_last_fragment() {
        // What a killed process leaves: the file as written so far, never finished.
        let path = temp("killed.mp4");
        let copy = temp("killed-copy.mp4");
        let mut r = Recorder::new(&path, RecorderConfig::default());
        feed(&mut r, 4);
        std::fs::copy(&path, &copy).unwrap();
        drop(r);
        let json = ffprobe(&copy);
        assert!(field(&json, "codec_name").contains(&"h264"), "{json}");
        let duration: f64 = field(&json, "duration").last().unwrap().parse().unwrap();
        // Fragments of 1 s: at most the last second is missing.
        assert!(
            (2.5..=4.0).contains(&duration),
            "duration {duration} s: {json}"
        );
    }

    #[test]
    fn the_recording_opens_in_ffprobe_with_h264_and_opus_of_the_right_size_and_length() {
        let path = temp("session.mp4");
        let stats = record(&path, 4, RecorderConfig::default());
        assert_eq!((stats.width, stats.height), (320, 240));
        assert_eq!(stats.video_frames, 120);
        assert!(stats.fragments >= 3, "one fragment a second: {stats:?}");
        let json = ffprobe(&path);
        let codecs = field(&json, "codec_name");
        assert!(codecs.contains(&"h264"), "{json}");
        assert!(codecs.contains(&"opus"), "{json}");
        assert_eq!(field(&json, "width"), vec!["320"]);
        assert_eq!(field(&json, "height"), vec!["240"]);
        let duration: f64 = field(&json, "duration").last().unwrap().parse().unwrap();
        assert!(
            (3.5..=4.5).contains(&duration),
            "duration {duration} s: {json}"
        );
        // Every frame decodes.
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "120");
    }

    #[test]
    fn a_file_cut_at_the_byte_budget_is_still_readable() {
        let path = temp("budget.mp4");
        let stats = record(
            &path,
            6,
            RecorderConfig {
                max_bytes: 150_000,
                ..Default::default()
            },
        );
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 150_000, "{len} bytes");
        assert!(stats.dropped > 0);
        let json = ffprobe(&path);
        let duration: f64 = field(&json, "duration").last().unwrap().parse().unwrap();
        assert!(duration > 0.5 && duration < 5.9, "cut short: {duration} s");
    }

    #[test]
    fn video_before_the_first_keyframe_is_dropped_and_no_file_is_made() {
        let path = temp("nokey.mp4");
        let _ = std::fs::remove_file(&path);
        let mut r = Recorder::new(&path, RecorderConfig::default());
        r.video(Instant::now(), &[0, 0, 0, 1, 0x41, 0x9a], 0, false)
            .unwrap();
        assert!(!r.started());
        assert!(!path.exists());
        // A "keyframe" without parameter sets is an error, not a panic.
        assert!(matches!(
            r.video(Instant::now(), &[0, 0, 0, 1, 0x65, 0x88], 0, true),
            Err(RecordError::NoParameterSets(_))
        ));
    }
}
