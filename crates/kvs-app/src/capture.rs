//! Capture threads: each media device runs on its own OS thread (device drivers block), pulls
//! encoded frames and hands them to the peer engine through a bounded, non-blocking sink.
//!
//! Drop policy at this hop: the sink never blocks the camera. When the engine is behind and
//! the sink is full the frame is dropped and counted; for video a keyframe is then requested,
//! because every viewer's decoder would otherwise be missing a reference until the next IDR.

use crate::events::{AppEvent, EventBus, EventKind};
use kvs_platform::{AudioCapture, EncodedFrame, VideoCapture};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Changes waiting for the capture thread; more are refused (a remote party must not grow
/// this).
const MAX_PENDING_CHANGES: usize = 8;
/// How often a paused capture thread looks for work.
const PAUSED_POLL: Duration = Duration::from_millis(100);

/// A change for the camera, applied by the capture thread between two frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraChange {
    BitrateBps(u32),
    Resolution { width: u32, height: u32 },
}

/// The camera's answer to a [`CameraChange`].
pub type ChangeResult = Result<(), kvs_platform::CaptureError>;
type ChangeReply = tokio::sync::oneshot::Sender<ChangeResult>;

/// Where a capture thread delivers frames. Implemented by the peer engine's frame sinks.
pub trait FrameDelivery: Send + 'static {
    /// Hand over a frame without blocking; false when it had to be dropped.
    fn deliver(&self, frame: EncodedFrame) -> bool;
}

/// Shared switches and counters of one capture thread.
#[derive(Debug, Default)]
pub struct CaptureControl {
    stop: AtomicBool,
    keyframe_requested: AtomicBool,
    frames_captured: AtomicU64,
    frames_dropped: AtomicU64,
    /// The camera's own keyframe flag, if it has one.
    camera_trigger: Option<Arc<AtomicBool>>,
    /// The capture thread, unparked after setting `camera_trigger`.
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Paused: the source is stopped and no frames flow until resumed.
    paused: AtomicBool,
    changes: Mutex<VecDeque<(CameraChange, ChangeReply)>>,
}

impl CaptureControl {
    /// Ask the camera for a keyframe before its next frame (coalesces repeated requests).
    /// A camera with a [`VideoCapture::keyframe_trigger`] gets it at once, so it applies to
    /// the frame the camera is waiting to encode, not the one after.
    pub fn request_keyframe(&self) {
        match &self.camera_trigger {
            Some(trigger) => {
                trigger.store(true, Ordering::Relaxed);
                if let Some(thread) = self.thread.get() {
                    thread.unpark();
                }
            }
            None => self.keyframe_requested.store(true, Ordering::Relaxed),
        }
    }

    /// Stop (true) or resume (false) the source. A resumed video source starts with a
    /// keyframe.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        self.unpark();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Queue a change for the camera; the answer comes once the capture thread applied it
    /// (within one frame interval). Refused at once when too many are waiting.
    pub fn change(
        &self,
        change: CameraChange,
    ) -> Result<tokio::sync::oneshot::Receiver<ChangeResult>, kvs_platform::CaptureError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut changes = self
                .changes
                .lock()
                .map_err(|_| kvs_platform::CaptureError::Unsupported("capture thread failed"))?;
            if changes.len() >= MAX_PENDING_CHANGES {
                return Err(kvs_platform::CaptureError::Unsupported(
                    "too many camera changes waiting",
                ));
            }
            changes.push_back((change, reply));
        }
        self.unpark();
        Ok(answer)
    }

    fn unpark(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn take_changes(&self) -> Vec<(CameraChange, ChangeReply)> {
        match self.changes.lock() {
            Ok(mut c) => c.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn frames_captured(&self) -> u64 {
        self.frames_captured.load(Ordering::Relaxed)
    }

    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped.load(Ordering::Relaxed)
    }
}

/// A running capture thread; stops and joins when dropped.
#[derive(Debug)]
pub struct CaptureThread {
    control: Arc<CaptureControl>,
    join: Option<JoinHandle<()>>,
}

impl CaptureThread {
    pub fn control(&self) -> &Arc<CaptureControl> {
        &self.control
    }

    /// Stop the thread and wait for it (at most one frame interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The two capture kinds behind one loop.
enum Source {
    Video(Box<dyn VideoCapture>),
    Audio(Box<dyn AudioCapture>),
}

impl Source {
    fn start(&mut self) -> Result<(), kvs_platform::CaptureError> {
        match self {
            Source::Video(v) => v.start(),
            Source::Audio(a) => a.start(),
        }
    }
    fn stop(&mut self) {
        match self {
            Source::Video(v) => v.stop(),
            Source::Audio(a) => a.stop(),
        }
    }
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, kvs_platform::CaptureError> {
        match self {
            Source::Video(v) => v.next_frame(),
            Source::Audio(a) => a.next_frame(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Source::Video(_) => "video",
            Source::Audio(_) => "audio",
        }
    }
}

/// Run a camera on its own thread.
pub fn spawn_video(
    camera: Box<dyn VideoCapture>,
    sink: impl FrameDelivery,
    events: EventBus,
) -> std::io::Result<CaptureThread> {
    spawn(Source::Video(camera), sink, events)
}

/// Run a microphone on its own thread.
pub fn spawn_audio(
    microphone: Box<dyn AudioCapture>,
    sink: impl FrameDelivery,
    events: EventBus,
) -> std::io::Result<CaptureThread> {
    spawn(Source::Audio(microphone), sink, events)
}

fn spawn(
    mut source: Source,
    sink: impl FrameDelivery,
    events: EventBus,
) -> std::io::Result<CaptureThread> {
    let camera_trigger = match &source {
        Source::Video(camera) => camera.keyframe_trigger(),
        Source::Audio(_) => None,
    };
    let control = Arc::new(CaptureControl {
        camera_trigger,
        ..CaptureControl::default()
    });
    let thread_control = control.clone();
    let name = format!("kvs-capture-{}", source.name());
    let join = std::thread::Builder::new().name(name).spawn(move || {
        run_capture(&mut source, &sink, &thread_control, &events);
        source.stop();
        // Whoever still waits for a change hears that it was not applied.
        drop(thread_control.take_changes());
    })?;
    let _ = control.thread.set(join.thread().clone());
    Ok(CaptureThread {
        control,
        join: Some(join),
    })
}

fn run_capture(
    source: &mut Source,
    sink: &impl FrameDelivery,
    control: &CaptureControl,
    events: &EventBus,
) {
    let kind = source.name();
    if let Err(e) = source.start() {
        events.publish(
            AppEvent::new(
                EventKind::Error,
                format!("{kind} source failed to start: {e}"),
            )
            .with_status(1),
        );
        return;
    }
    let mut running = true;
    while !control.stop.load(Ordering::Relaxed) {
        for (change, reply) in control.take_changes() {
            let result = match (&mut *source, change) {
                (Source::Video(camera), CameraChange::BitrateBps(bps)) => camera.set_bitrate(bps),
                (Source::Video(camera), CameraChange::Resolution { width, height }) => {
                    camera.set_resolution(width, height)
                }
                (Source::Audio(_), _) => Err(kvs_platform::CaptureError::Unsupported(
                    "camera changes on an audio source",
                )),
            };
            let _ = reply.send(result);
        }
        if control.paused.load(Ordering::Relaxed) {
            if running {
                source.stop();
                running = false;
                events.publish(AppEvent::new(
                    EventKind::StreamingStopped,
                    format!("{kind} capture paused"),
                ));
            }
            std::thread::park_timeout(PAUSED_POLL);
            continue;
        }
        if !running {
            if let Err(e) = source.start() {
                events.publish(
                    AppEvent::new(
                        EventKind::Error,
                        format!("{kind} source failed to restart: {e}"),
                    )
                    .with_status(1),
                );
                return;
            }
            running = true;
            if matches!(source, Source::Video(_)) {
                control.request_keyframe();
            }
        }
        if let Source::Video(camera) = source {
            if control.keyframe_requested.swap(false, Ordering::Relaxed)
                && !camera.request_keyframe()
            {
                tracing::debug!(
                    "video source cannot force a keyframe; viewers wait for the next one"
                );
            }
        }
        match source.next_frame() {
            Ok(Some(frame)) => {
                control.frames_captured.fetch_add(1, Ordering::Relaxed);
                if !sink.deliver(frame) {
                    control.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    if matches!(source, Source::Video(_)) {
                        control.request_keyframe();
                    }
                }
            }
            Ok(None) => {
                events.publish(AppEvent::new(
                    EventKind::StreamingStopped,
                    format!("{kind} source ended"),
                ));
                return;
            }
            Err(e) => {
                events.publish(
                    AppEvent::new(EventKind::Error, format!("{kind} source failed: {e}"))
                        .with_status(1),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_platform::{CaptureError, FrameKind, VideoCodec, VideoFormat};
    use std::sync::Mutex;

    /// A camera that yields `total` frames then ends, recording keyframe requests.
    struct CountingCamera {
        left: u32,
        forced: Arc<Mutex<Vec<u32>>>,
        force_next: bool,
    }

    impl VideoCapture for CountingCamera {
        fn format(&self) -> VideoFormat {
            VideoFormat {
                codec: VideoCodec::H264,
                width: 2,
                height: 2,
                fps: 1000,
            }
        }
        fn start(&mut self) -> Result<(), CaptureError> {
            Ok(())
        }
        fn stop(&mut self) {}
        fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            let kind = if std::mem::take(&mut self.force_next) {
                self.forced.lock().unwrap().push(self.left);
                FrameKind::Key
            } else {
                FrameKind::Delta
            };
            Ok(Some(EncodedFrame::new(
                vec![0u8; 4],
                u64::from(self.left),
                kind,
            )))
        }
        fn request_keyframe(&mut self) -> bool {
            self.force_next = true;
            true
        }
    }

    /// A sink that accepts only every other frame.
    struct HalfFullSink(Arc<Mutex<Vec<EncodedFrame>>>, Arc<AtomicU64>);
    impl FrameDelivery for HalfFullSink {
        fn deliver(&self, frame: EncodedFrame) -> bool {
            let n = self.1.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(2) {
                self.0.lock().unwrap().push(frame);
                true
            } else {
                false
            }
        }
    }

    #[test]
    fn drops_are_counted_and_trigger_keyframes_and_end_is_reported() {
        let forced = Arc::new(Mutex::new(Vec::new()));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let bus = EventBus::new();
        let mut events = bus.subscribe();
        let camera = CountingCamera {
            left: 10,
            forced: forced.clone(),
            force_next: false,
        };
        let thread = spawn_video(
            Box::new(camera),
            HalfFullSink(delivered.clone(), Arc::new(AtomicU64::new(0))),
            bus,
        )
        .unwrap();
        // The source ends by itself after 10 frames.
        let ended = loop {
            match events.blocking_recv() {
                Ok(e) if e.kind == EventKind::StreamingStopped => break e,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(ended.message.contains("video source ended"));
        let control = thread.control().clone();
        thread.stop();
        assert_eq!(control.frames_captured(), 10);
        assert_eq!(control.frames_dropped(), 5);
        assert_eq!(delivered.lock().unwrap().len(), 5);
        // Every dropped frame asked for a keyframe on the following frame.
        assert!(
            forced.lock().unwrap().len() >= 4,
            "{:?}",
            forced.lock().unwrap()
        );
    }
}
