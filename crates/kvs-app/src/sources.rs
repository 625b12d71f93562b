//! Opens the configured camera and microphone from the host sources in `kvs-media`.

use crate::config::{AudioSourceConfig, VideoSourceConfig};
use kvs_media::sources::{
    H264FileCamera, H264FileConfig, OggOpusFileConfig, OggOpusMicrophone, StdinH264Camera,
    StdinH264Config, TestPatternCamera, TestPatternConfig, ToneConfig, ToneMicrophone,
};
use kvs_platform::{AudioCapture, CaptureError, VideoCapture};

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
        VideoSourceConfig::None => None,
    })
}

/// Open the microphone the configuration names (`None` for no audio).
pub fn open_microphone(
    config: &AudioSourceConfig,
) -> Result<Option<Box<dyn AudioCapture>>, SourceError> {
    Ok(match config {
        AudioSourceConfig::Tone => Some(Box::new(opening(
            || "the tone microphone".into(),
            ToneMicrophone::new(ToneConfig::default()),
        )?)),
        AudioSourceConfig::OggOpus { path } => {
            let mic = OggOpusMicrophone::open(path, OggOpusFileConfig::default());
            Some(Box::new(opening(
                || format!("audio file {}", path.display()),
                mic,
            )?))
        }
        AudioSourceConfig::None => None,
    })
}
