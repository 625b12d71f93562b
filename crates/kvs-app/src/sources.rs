//! Opens the configured camera and microphone from the host sources in `kvs-media`.

use crate::config::{AudioCodecChoice, AudioSourceConfig, SpeakerConfig, VideoSourceConfig};
use kvs_media::sources::{
    CommandOptions, H264FileCamera, H264FileConfig, H265FileCamera, H265FileConfig,
    OggOpusFileConfig, OggOpusMicrophone, RawAudioConfig, RawCommandCamera, RawCommandMicrophone,
    RawVideoConfig, RestartPolicy, StdinH264Camera, StdinH264Config, StdinH265Camera,
    StdinH265Config, StdinVp8Camera, StdinVp8Config, TestPatternCamera, TestPatternConfig,
    ToneConfig, ToneMicrophone, Vp8FileCamera, Vp8FileConfig,
};
use kvs_platform::{
    AudioCapture, AudioCodec, AudioPlayer, CaptureError, CommandPlayer, VideoCapture, WavFilePlayer,
};
use std::time::Duration;

/// A source that could not be opened, and which one.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {what}: {source}")]
pub struct SourceError {
    /// "the test pattern camera", "video file /path/clip.h264", …
    pub what: String,
    #[source]
    pub source: CaptureError,
}

/// Attach a description of the source to its error.
fn opening<T>(
    what: impl FnOnce() -> String,
    result: Result<T, CaptureError>,
) -> Result<T, SourceError> {
    result.map_err(|source| SourceError {
        what: what(),
        source,
    })
}

/// Open the camera the configuration names (`None` for no video). File sources are validated
/// here, so a bad file fails at start-up with a clear error naming it.
pub fn open_camera(
    config: &VideoSourceConfig,
) -> Result<Option<Box<dyn VideoCapture>>, SourceError> {
    Ok(match config {
        VideoSourceConfig::TestPattern {
            width,
            height,
            fps,
            bitrate_bps,
            gop,
        } => {
            let camera = TestPatternCamera::new(TestPatternConfig {
                width: *width,
                height: *height,
                fps: *fps,
                bitrate_bps: *bitrate_bps,
                keyframe_interval: *gop,
                ..TestPatternConfig::default()
            });
            Some(Box::new(opening(
                || "the test pattern camera".into(),
                camera,
            )?))
        }
        VideoSourceConfig::H264File { path, fps } => {
            let camera = H264FileCamera::open(
                path,
                H264FileConfig {
                    fps: *fps,
                    ..H264FileConfig::default()
                },
            );
            Some(Box::new(opening(
                || format!("video file {}", path.display()),
                camera,
            )?))
        }
        VideoSourceConfig::H264Stdin { fps } => {
            Some(Box::new(StdinH264Camera::stdin(StdinH264Config {
                fps: *fps,
                ..StdinH264Config::default()
            })))
        }
        VideoSourceConfig::RawCommand {
            command,
            width,
            height,
            fps,
            bitrate_bps,
            gop,
            stall_timeout,
            restart,
            restart_delay,
            restart_max_delay,
        } => {
            let options = command_options(
                command,
                *stall_timeout,
                *restart,
                *restart_delay,
                *restart_max_delay,
            );
            let camera = RawCommandCamera::new(RawVideoConfig {
                bitrate_bps: *bitrate_bps,
                keyframe_interval: *gop,
                ..RawVideoConfig::new(options, *width, *height, *fps)
            });
            Some(Box::new(opening(
                || format!("raw video command `{command}`"),
                camera,
            )?))
        }
        VideoSourceConfig::Vp8File { path } => {
            let camera = Vp8FileCamera::open(path, Vp8FileConfig::default());
            Some(Box::new(opening(
                || format!("video file {}", path.display()),
                camera,
            )?))
        }
        VideoSourceConfig::Vp8Stdin => {
            Some(Box::new(StdinVp8Camera::stdin(StdinVp8Config::default())))
        }
        VideoSourceConfig::H265File { path, fps } => {
            let camera = H265FileCamera::open(
                path,
                H265FileConfig {
                    fps: *fps,
                    ..H265FileConfig::default()
                },
            );
            Some(Box::new(opening(
                || format!("video file {}", path.display()),
                camera,
            )?))
        }
        VideoSourceConfig::H265Stdin { fps } => {
            Some(Box::new(StdinH265Camera::stdin(StdinH265Config {
                fps: *fps,
                ..StdinH265Config::default()
            })))
        }
        VideoSourceConfig::None => None,
    })
}

/// A raw-capture command's options from the configuration's fields.
fn command_options(
    command: &str,
    stall_timeout: Duration,
    restart: bool,
    restart_delay: Duration,
    restart_max_delay: Duration,
) -> CommandOptions {
    CommandOptions {
        stall_timeout,
        restart: restart.then_some(RestartPolicy {
            first_delay: restart_delay,
            max_delay: restart_max_delay,
        }),
        ..CommandOptions::new(command)
    }
}

/// Open the microphone the configuration names (`None` for no audio); the tone in Opus only.
pub fn open_microphone(
    config: &AudioSourceConfig,
) -> Result<Option<Box<dyn AudioCapture>>, SourceError> {
    open_microphone_with(config, AudioCodecChoice::Opus)
}

/// Open the microphone for `[codecs] audio`: the tone (or a raw command's PCM) in that codec,
/// or with `auto` in Opus, PCMU and PCMA (each viewer is sent the first of these it offers).
pub fn open_microphone_with(
    config: &AudioSourceConfig,
    codec: AudioCodecChoice,
) -> Result<Option<Box<dyn AudioCapture>>, SourceError> {
    const OPUS: &[AudioCodec] = &[AudioCodec::Opus];
    const PCMU: &[AudioCodec] = &[AudioCodec::Pcmu];
    const PCMA: &[AudioCodec] = &[AudioCodec::Pcma];
    let codecs = match codec {
        AudioCodecChoice::Auto => kvs_media::sources::ALL_TONE_CODECS,
        AudioCodecChoice::Opus => OPUS,
        AudioCodecChoice::Pcmu => PCMU,
        AudioCodecChoice::Pcma => PCMA,
    };
    Ok(match config {
        AudioSourceConfig::Tone => Some(Box::new(opening(
            || "the tone microphone".into(),
            ToneMicrophone::new(ToneConfig {
                codecs,
                ..ToneConfig::default()
            }),
        )?)),
        AudioSourceConfig::OggOpus { path } => {
            let mic = OggOpusMicrophone::open(path, OggOpusFileConfig::default());
            Some(Box::new(opening(
                || format!("audio file {}", path.display()),
                mic,
            )?))
        }
        AudioSourceConfig::RawCommand {
            command,
            sample_rate,
            channels,
            stall_timeout,
            restart,
            restart_delay,
            restart_max_delay,
        } => {
            let options = command_options(
                command,
                *stall_timeout,
                *restart,
                *restart_delay,
                *restart_max_delay,
            );
            let mic = RawCommandMicrophone::new(RawAudioConfig {
                sample_rate: *sample_rate,
                channels: *channels,
                codecs,
                ..RawAudioConfig::new(options)
            });
            Some(Box::new(opening(
                || format!("raw audio command `{command}`"),
                mic,
            )?))
        }
        AudioSourceConfig::None => None,
    })
}

/// Open the speaker `[speaker]` names (`None` when no WAV file, command or device is set).
pub fn open_speaker(
    config: &SpeakerConfig,
) -> Result<Option<Box<dyn AudioPlayer>>, kvs_platform::PlaybackError> {
    if let Some(path) = &config.wav {
        return Ok(Some(Box::new(WavFilePlayer::create(path)?)));
    }
    if let Some(command) = &config.command {
        return Ok(Some(Box::new(CommandPlayer::spawn(command)?)));
    }
    if let Some(device) = &config.device {
        #[cfg(feature = "sound-card")]
        return Ok(Some(Box::new(
            kvs_platform::sound_card::SoundCardPlayer::open(Some(device))?,
        )));
        #[cfg(not(feature = "sound-card"))]
        return Err(kvs_platform::PlaybackError::Device(format!(
            "speaker device {device:?}: this build has no sound-card support (cargo feature `sound-card`)"
        )));
    }
    Ok(None)
}
