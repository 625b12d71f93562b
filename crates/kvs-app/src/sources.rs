//! Opens the configured camera and microphone from the host sources in `kvs-media`.

use crate::config::{AudioSourceConfig, VideoSourceConfig};
use kvs_media::sources::{
    H264FileCamera, H264FileConfig, OggOpusFileConfig, OggOpusMicrophone, StdinH264Camera,
    StdinH264Config, TestPatternCamera, TestPatternConfig, ToneConfig, ToneMicrophone,
};
use kvs_platform::{AudioCapture, CaptureError, VideoCapture};

/// Open the camera the configuration names (`None` for no video). File sources are validated
/// here, so a bad file fails at start-up with a clear error.
pub fn open_camera(
    config: &VideoSourceConfig,
) -> Result<Option<Box<dyn VideoCapture>>, CaptureError> {
    Ok(match config {
        VideoSourceConfig::TestPattern {
            width,
            height,
            fps,
            bitrate_bps,
            gop,
        } => Some(Box::new(TestPatternCamera::new(TestPatternConfig {
            width: *width,
            height: *height,
            fps: *fps,
            bitrate_bps: *bitrate_bps,
            keyframe_interval: *gop,
            ..TestPatternConfig::default()
        })?)),
        VideoSourceConfig::H264File { path, fps } => Some(Box::new(H264FileCamera::open(
            path,
            H264FileConfig {
                fps: *fps,
                ..H264FileConfig::default()
            },
        )?)),
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
) -> Result<Option<Box<dyn AudioCapture>>, CaptureError> {
    Ok(match config {
        AudioSourceConfig::Tone => Some(Box::new(ToneMicrophone::new(ToneConfig::default())?)),
        AudioSourceConfig::OggOpus { path } => Some(Box::new(OggOpusMicrophone::open(
            path,
            OggOpusFileConfig::default(),
        )?)),
        AudioSourceConfig::None => None,
    })
}
