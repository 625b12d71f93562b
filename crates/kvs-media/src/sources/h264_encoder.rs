//! The live H.264 encoder the drawing and raw-capture cameras share: OpenH264 set up for
//! Constrained Baseline (profile 66 with constraint_set0/1, what `42e01f` viewers decode), one
//! thread, one slice, keyframes on the GOP or on request, bitrate changed in place.
//!
//! [`LiveH264`] adds what a live camera does around it: pacing at the frame rate and the
//! keyframe decision (requests and the cross-thread trigger). They own the encoder, its
//! parameter sets and that schedule; they must not know where pictures come from (the camera
//! hands over any [`YUVSource`]).

use crate::h264::{nal_type, nal_units, NalHeader};
use crate::pacer::{LatePolicy, Pacer, PacerConfig};
use crate::rate_hold::RateHold;
use bytes::Bytes;
use kvs_platform::{CaptureError, EncodedFrame, FrameKind};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the encoder is set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct H264EncoderConfig {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) fps: u32,
    pub(crate) bitrate_bps: u32,
    /// Frames between IDR frames; 0 = only the first frame and requested ones.
    pub(crate) keyframe_interval: u32,
}

/// An OpenH264 encoder producing one [`EncodedFrame`] per picture. See the [module docs](self).
pub(crate) struct H264Encoder {
    config: H264EncoderConfig,
    encoder: Encoder,
    /// Pictures the encoder has seen (0 means it is not initialised yet).
    encoded: u64,
    /// The latest SPS and PPS, re-sent if an IDR ever comes without them.
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

/// Level 3.1 (what `42e01f` viewers negotiate) up to 720p, higher levels for larger pictures.
fn level_for(width: u32, height: u32) -> Level {
    let mbs = width.div_ceil(16) * height.div_ceil(16);
    if mbs <= 3_600 {
        Level::Level_3_1
    } else if mbs <= 8_192 {
        Level::Level_4_0
    } else {
        Level::Level_5_1
    }
}

fn codec_err(e: openh264::Error) -> CaptureError {
    CaptureError::Codec(format!("OpenH264: {e}"))
}

/// The lowest bitrate accepted, here and in `set_bitrate`.
pub(crate) const MIN_BITRATE_BPS: u32 = 10_000;

impl H264Encoder {
    pub(crate) fn new(config: H264EncoderConfig) -> Result<Self, CaptureError> {
        if config.bitrate_bps < MIN_BITRATE_BPS {
            return Err(CaptureError::InvalidInput(format!(
                "bitrate {} bit/s too low",
                config.bitrate_bps
            )));
        }
        Ok(Self {
            encoder: Self::make(&config)?,
            config,
            encoded: 0,
            sps: None,
            pps: None,
        })
    }

    fn make(config: &H264EncoderConfig) -> Result<Encoder, CaptureError> {
        let cfg = EncoderConfig::new()
            .bitrate(BitRate::from_bps(config.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(config.fps as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            // A real-time stream must not silently drop frames; the rate controller adapts QP.
            .skip_frames(false)
            // Baseline + constraint_set1 (set by OpenH264 for profile 66) = Constrained
            // Baseline, which every WebRTC H.264 decoder accepts.
            .profile(Profile::Baseline)
            // A level with headroom, so the bitrate can be raised later without re-initialising.
            .level(level_for(config.width, config.height))
            .usage_type(UsageType::CameraVideoRealTime)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .intra_frame_period(IntraFramePeriod::from_num_frames(config.keyframe_interval))
            // Keyframes exactly on the GOP or on request, not on "scene changes".
            .scene_change_detect(false)
            // One thread and one slice per picture: deterministic and light on a shared CPU.
            .num_threads(1);
        Encoder::with_api_config(OpenH264API::from_source(), cfg).map_err(codec_err)
    }

    /// A new encoder for another picture size: its first frame is an IDR with the new SPS/PPS.
    pub(crate) fn resize(&mut self, width: u32, height: u32) -> Result<(), CaptureError> {
        let config = H264EncoderConfig {
            width,
            height,
            ..self.config
        };
        self.encoder = Self::make(&config)?;
        self.config = config;
        self.encoded = 0;
        self.sps = None;
        self.pps = None;
        Ok(())
    }

    /// Encode `picture` (of the configured size) at `ts_us`; an IDR when `force_keyframe`.
    /// `None` if the encoder produced no output.
    pub(crate) fn encode(
        &mut self,
        picture: &impl YUVSource,
        ts_us: u64,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, CaptureError> {
        // The first picture is an IDR anyway (and forcing before initialisation is refused).
        if force_keyframe && self.encoded > 0 {
            self.encoder.force_intra_frame();
        }
        let bitstream = self
            .encoder
            .encode_at(picture, Timestamp::from_millis(ts_us / 1000))
            .map_err(codec_err)?;
        self.encoded += 1;
        let kind = match bitstream.frame_type() {
            FrameType::IDR => FrameKind::Key,
            FrameType::Skip | FrameType::Invalid => return Ok(None),
            _ => FrameKind::Delta,
        };
        // One allocation per frame, sized exactly.
        let mut len = 0;
        for l in 0..bitstream.num_layers() {
            if let Some(layer) = bitstream.layer(l) {
                for n in 0..layer.nal_count() {
                    len += layer.nal_unit(n).map_or(0, <[u8]>::len);
                }
            }
        }
        if len == 0 {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(len);
        bitstream.write_vec(&mut data);
        let mut data = Bytes::from(data);
        if kind == FrameKind::Key {
            data = self.ensure_parameter_sets(data);
        }
        Ok(Some(EncodedFrame::new(data, ts_us, kind)))
    }

    /// Remember the parameter sets of a keyframe, or prepend the remembered ones if the
    /// encoder left them out, so every keyframe is decodable on its own.
    fn ensure_parameter_sets(&mut self, au: Bytes) -> Bytes {
        let (mut has_sps, mut has_pps) = (false, false);
        for nal in nal_units(&au) {
            match NalHeader::parse(nal).map(|h| h.nal_type) {
                Ok(nal_type::SPS) => {
                    has_sps = true;
                    self.sps = Some(Bytes::copy_from_slice(nal));
                }
                Ok(nal_type::PPS) => {
                    has_pps = true;
                    self.pps = Some(Bytes::copy_from_slice(nal));
                }
                _ => {}
            }
        }
        if has_sps && has_pps {
            return au;
        }
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return au;
        };
        let mut v = Vec::with_capacity(au.len() + sps.len() + pps.len() + 8);
        for ps in [sps, pps] {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(ps);
        }
        v.extend_from_slice(&au);
        v.into()
    }

    /// Change the target bitrate in place (before the first picture: a new encoder).
    pub(crate) fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), CaptureError> {
        if bits_per_second < MIN_BITRATE_BPS {
            return Err(CaptureError::InvalidInput(format!(
                "bitrate {bits_per_second} bit/s too low"
            )));
        }
        let previous = self.config.bitrate_bps;
        self.config.bitrate_bps = bits_per_second;
        if self.encoded == 0 {
            // Not initialised yet: the new configuration applies from the first frame.
            self.encoder = Self::make(&self.config)?;
            return Ok(());
        }
        use openh264_sys2::{
            ENCODER_OPTION_BITRATE as TARGET, ENCODER_OPTION_MAX_BITRATE as MAX,
            SPATIAL_LAYER_0 as LAYER0, SPATIAL_LAYER_ALL as ALL,
        };
        // OpenH264 rejects a layer target above the layer maximum: raise the maximum first
        // when going up, lower the target first when going down.
        let raise = [(MAX, LAYER0), (MAX, ALL), (TARGET, ALL)];
        let lower = [(TARGET, ALL), (MAX, LAYER0), (MAX, ALL)];
        let steps = if bits_per_second >= previous {
            raise
        } else {
            lower
        };
        let rate = i32::try_from(bits_per_second).unwrap_or(i32::MAX);
        for (option, layer) in steps {
            let mut info = openh264_sys2::SBitrateInfo {
                iLayer: layer,
                iBitrate: rate,
            };
            // SAFETY: the encoder is initialised (it has encoded a frame); the option ids take
            // an `SBitrateInfo` as OpenH264's SetOption documents, and `info` outlives the call.
            // Bitrate is a rate-control parameter the wrapper does not cache.
            let rc = unsafe {
                self.encoder
                    .raw_api()
                    .set_option(option, (&raw mut info).cast())
            };
            if rc != 0 {
                self.config.bitrate_bps = previous;
                return Err(CaptureError::Codec(format!(
                    "OpenH264 refused bitrate {bits_per_second} (option {option}, code {rc})"
                )));
            }
        }
        tracing::debug!(bits_per_second, "H.264 encoder bitrate changed");
        Ok(())
    }
}

/// What a live camera does around its encoder, shared by the drawing and raw-capture cameras:
/// pictures paced at `fps` (or as fast as asked), the keyframe decision — a request through
/// [`request_keyframe`](Self::request_keyframe) or the cross-thread trigger applies to the very
/// next picture encoded, and the trigger also ends the wait for the slot — and the checks on
/// size and rate. The camera supplies the pictures.
pub(crate) struct LiveH264 {
    encoder: H264Encoder,
    paced: bool,
    pacer: Pacer,
    force_keyframe: bool,
    /// Skips pictures while the encoder runs ahead of its target (see [`crate::rate_hold`]).
    rate_hold: RateHold,
    /// Set from other threads (see [`kvs_platform::VideoCapture::keyframe_trigger`]).
    trigger: Arc<AtomicBool>,
}

impl LiveH264 {
    /// `what` names the camera in errors ("test pattern", "raw video").
    pub(crate) fn new(
        config: H264EncoderConfig,
        paced: bool,
        what: &str,
    ) -> Result<Self, CaptureError> {
        if let Err(reason) = super::check_size(config.width, config.height) {
            return Err(CaptureError::InvalidInput(format!(
                "{what} size {}x{} {reason}",
                config.width, config.height
            )));
        }
        if !(1..=120).contains(&config.fps) {
            return Err(CaptureError::InvalidInput(format!(
                "{what} fps {} out of range 1..=120",
                config.fps
            )));
        }
        Ok(Self {
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Reanchor,
                default_frame_interval_us: 1_000_000 / u64::from(config.fps),
                ..PacerConfig::default()
            }),
            rate_hold: RateHold::new(u64::from(config.bitrate_bps), config.fps),
            encoder: H264Encoder::new(config)?,
            paced,
            force_keyframe: false,
            trigger: Arc::default(),
        })
    }

    pub(crate) fn config(&self) -> &H264EncoderConfig {
        &self.encoder.config
    }

    /// Block until picture `index`'s slot (or a keyframe trigger); its timestamp (µs). A
    /// keyframe request ends the wait: a new viewer's first frame is encoded now rather than
    /// at the next slot (it keeps the slot's timestamp, so a viewer already watching just
    /// buffers it a little longer).
    pub(crate) fn wait_for_slot(&mut self, index: u64) -> u64 {
        let nominal = index * 1_000_000 / u64::from(self.encoder.config.fps);
        if !self.paced {
            return nominal;
        }
        let paced = self.pacer.pace(nominal, Instant::now());
        super::sleep_until_or(paced.due, &self.trigger);
        paced.output_ts_us
    }

    /// Encode the next picture; a keyframe if one was asked for since the last. `None` when
    /// the picture is skipped to hold the target bitrate (never a forced keyframe).
    pub(crate) fn encode(
        &mut self,
        picture: &impl YUVSource,
        ts_us: u64,
    ) -> Result<Option<EncodedFrame>, CaptureError> {
        if self.trigger.swap(false, Ordering::Relaxed) {
            self.force_keyframe = true;
        }
        let force = std::mem::take(&mut self.force_keyframe);
        if force {
            self.rate_hold.advance(ts_us);
        } else if self.rate_hold.should_skip(ts_us) {
            return Ok(None);
        }
        let frame = self.encoder.encode(picture, ts_us, force)?;
        if let Some(f) = &frame {
            self.rate_hold
                .encoded(f.data.len(), f.kind == FrameKind::Key);
        }
        Ok(frame)
    }

    /// (Re)started: the schedule begins again and a viewer joining now needs a keyframe first.
    pub(crate) fn start(&mut self) {
        self.pacer.reset();
        self.rate_hold.reset();
        self.force_keyframe = true;
    }

    pub(crate) fn stop(&mut self) {
        self.pacer.reset();
    }

    pub(crate) fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    pub(crate) fn trigger(&self) -> Arc<AtomicBool> {
        self.trigger.clone()
    }

    /// A new picture size: the next frame is an IDR with the new SPS/PPS.
    pub(crate) fn resize(&mut self, width: u32, height: u32) -> Result<(), CaptureError> {
        self.encoder.resize(width, height)?;
        self.force_keyframe = true;
        Ok(())
    }

    pub(crate) fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), CaptureError> {
        self.encoder.set_bitrate(bits_per_second)?;
        self.rate_hold.set_target(u64::from(bits_per_second));
        Ok(())
    }

    /// The format frames have.
    pub(crate) fn format(&self) -> kvs_platform::VideoFormat {
        let c = &self.encoder.config;
        kvs_platform::VideoFormat {
            codec: kvs_platform::VideoCodec::H264,
            width: c.width,
            height: c.height,
            fps: c.fps,
        }
    }
}
