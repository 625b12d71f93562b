//! A sound card as the speaker (cargo feature `sound-card`): talk-back PCM played through the
//! host's audio API by `cpal` (ALSA on Linux).
//!
//! [`SoundCardPlayer`] takes 48 kHz mono like the other players and plays it on an output
//! device opened at 48 kHz (the device's other channels get the same samples). The audio
//! callback runs on the audio API's own thread; between it and [`play`](AudioPlayer::play)
//! sits a ring of at most [`RING`] of audio: `play` waits while the ring is full, so the
//! talk-back thread runs at the device's pace, as with a pipe to `aplay`. An underrun plays
//! silence. The stream lives on a thread of its own (a `cpal` stream need not be `Send`).
//!
//! Not tested against hardware: the machine this project is developed and tested on has no
//! sound device. What is tested is that a device that cannot be opened is a clear error.

use crate::speaker::{AudioPlayer, PcmFormat, PlaybackError};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Audio held between `play` and the device: 200 ms at 48 kHz.
pub const RING: Duration = Duration::from_millis(200);
const RATE: u32 = 48_000;
const RING_SAMPLES: usize = (RATE as usize / 1000) * RING.as_millis() as usize;

/// What `play` and the audio callback share.
#[derive(Default)]
struct Ring {
    samples: VecDeque<i16>,
    /// The stream's error, once it has failed.
    failed: Option<String>,
}

type Shared = Arc<(Mutex<Ring>, Condvar)>;

/// A sound card's output device (see the [module docs](self)).
pub struct SoundCardPlayer {
    shared: Shared,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    device: String,
}

impl std::fmt::Debug for SoundCardPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoundCardPlayer")
            .field("device", &self.device)
            .finish()
    }
}

fn device_error(what: impl std::fmt::Display) -> PlaybackError {
    PlaybackError::Device(what.to_string())
}

/// Open `name` (as the host lists it), or the default output device.
fn open_device(name: Option<&str>) -> Result<cpal::Device, PlaybackError> {
    let host = cpal::default_host();
    match name {
        None | Some("default") => host
            .default_output_device()
            .ok_or_else(|| device_error("no default audio output device")),
        Some(name) => host
            .output_devices()
            .map_err(|e| device_error(format!("listing audio output devices: {e}")))?
            .find(|d| d.to_string() == name)
            .ok_or_else(|| device_error(format!("no audio output device named {name:?}"))),
    }
}

/// A 48 kHz configuration of `device` in a sample format we can write.
fn stream_config(
    device: &cpal::Device,
) -> Result<(cpal::StreamConfig, cpal::SampleFormat), PlaybackError> {
    let configs = device
        .supported_output_configs()
        .map_err(|e| device_error(format!("{device}: {e}")))?;
    let usable =
        |f: cpal::SampleFormat| matches!(f, cpal::SampleFormat::I16 | cpal::SampleFormat::F32);
    let chosen = configs
        .filter(|c| usable(c.sample_format()))
        .filter_map(|c| c.try_with_sample_rate(RATE))
        .min_by_key(|c| c.channels())
        .ok_or_else(|| device_error(format!("{device} cannot play 48 kHz 16-bit or float PCM")))?;
    let format = chosen.sample_format();
    Ok((chosen.into(), format))
}

/// Fill `out` (interleaved, `channels` per frame) from the ring; silence where it runs dry.
fn fill<T: Copy>(shared: &Shared, out: &mut [T], channels: usize, convert: impl Fn(i16) -> T) {
    let (lock, wake) = &**shared;
    let mut ring = lock.lock().unwrap_or_else(|p| p.into_inner());
    for frame in out.chunks_mut(channels.max(1)) {
        let s = convert(ring.samples.pop_front().unwrap_or(0));
        frame.fill(s);
    }
    wake.notify_all();
}

fn build_stream(device: &cpal::Device, shared: &Shared) -> Result<cpal::Stream, PlaybackError> {
    let (config, format) = stream_config(device)?;
    let channels = usize::from(config.channels);
    let on_error = {
        let shared = shared.clone();
        move |e: cpal::Error| {
            let (lock, wake) = &*shared;
            lock.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(e.to_string());
            wake.notify_all();
        }
    };
    let data = shared.clone();
    let stream = match format {
        cpal::SampleFormat::I16 => device.build_output_stream(
            config,
            move |out: &mut [i16], _| fill(&data, out, channels, |s| s),
            on_error,
            None,
        ),
        _ => device.build_output_stream(
            config,
            move |out: &mut [f32], _| fill(&data, out, channels, |s| f32::from(s) / 32768.0),
            on_error,
            None,
        ),
    }
    .map_err(|e| device_error(format!("{device}: {e}")))?;
    stream
        .play()
        .map_err(|e| device_error(format!("{device}: {e}")))?;
    Ok(stream)
}

impl SoundCardPlayer {
    /// Open the output device named `device` (as the host lists it; `None` or `"default"`:
    /// the default one) at 48 kHz and start playing (silence until [`play`](AudioPlayer::play)).
    pub fn open(device: Option<&str>) -> Result<Self, PlaybackError> {
        let shared: Shared = Arc::default();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let name = device.map(str::to_owned);
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kvs-speaker".into())
            .spawn(move || {
                let opened = open_device(name.as_deref())
                    .and_then(|d| Ok((d.to_string(), build_stream(&d, &for_thread)?)));
                match opened {
                    Ok((label, stream)) => {
                        let _ = ready_tx.send(Ok(label));
                        // Until the player is closed or dropped (the sender goes away).
                        let _ = stop_rx.recv();
                        drop(stream);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let label = match ready_rx.recv() {
            Ok(Ok(label)) => label,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(device_error(
                    "the audio thread ended while opening the device",
                ));
            }
        };
        Ok(Self {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            device: label,
        })
    }

    /// The device's name, as the host lists it.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn shut(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AudioPlayer for SoundCardPlayer {
    fn format(&self) -> PcmFormat {
        PcmFormat::MONO_48K
    }

    fn play(&mut self, samples: &[i16]) -> Result<(), PlaybackError> {
        let (lock, wake) = &*self.shared;
        let mut ring = lock.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in samples.chunks(RING_SAMPLES) {
            // Wait for the device to make room (bounded: a stalled device is an error).
            let mut waited = Duration::ZERO;
            while ring.samples.len() + chunk.len() > RING_SAMPLES {
                if let Some(e) = &ring.failed {
                    return Err(device_error(format!("{}: {e}", self.device)));
                }
                if waited >= 4 * RING {
                    return Err(device_error(format!(
                        "{}: the device stopped taking audio",
                        self.device
                    )));
                }
                let step = RING / 4;
                ring = wake
                    .wait_timeout(ring, step)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                waited += step;
            }
            ring.samples.extend(chunk);
        }
        match &ring.failed {
            Some(e) => Err(device_error(format!("{}: {e}", self.device))),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<(), PlaybackError> {
        self.shut();
        Ok(())
    }
}

impl Drop for SoundCardPlayer {
    fn drop(&mut self) {
        self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that cannot be opened is a clear error naming it, not a panic. (This machine
    /// has no sound device at all, so nothing here plays sound.)
    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let e = SoundCardPlayer::open(Some("kvs-no-such-device")).unwrap_err();
        assert!(matches!(e, PlaybackError::Device(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("kvs-no-such-device") || text.contains("listing audio output devices"),
            "{text}"
        );
    }
}
