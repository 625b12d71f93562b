//! The video player contract: where decoded viewer video goes (a device's display), with
//! host implementations: a raw I420 file ([`RawFilePlayer`]) and a command fed raw I420 on its
//! standard input ([`CommandVideoPlayer`], e.g. `ffplay -f rawvideo -pixel_format yuv420p
//! -video_size {width}x{height} -`).
//!
//! A player takes planar I420 frames ([`I420Frame`]) and may block while the display drains
//! them; it is called from the application's video-player thread, never from the network task,
//! so a slow player only makes the decoding stage drop frames (see `kvs_media::receive::decode`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// One decoded picture: planar I420 (Y, then U, then V; no padding between rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420Frame {
    /// Even width in pixels.
    pub width: u32,
    /// Even height in pixels.
    pub height: u32,
    /// Presentation time in microseconds on the sender's timeline (from its first frame).
    pub timestamp_us: u64,
    /// `width * height * 3 / 2` bytes.
    pub data: Vec<u8>,
}

impl I420Frame {
    /// Bytes of an I420 picture of this size.
    pub fn size_for(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
    }
}

/// Errors from a video player.
#[derive(Debug, thiserror::Error)]
pub enum VideoPlayerError {
    #[error("video player I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The command could not be started, or has exited.
    #[error("video player command: {0}")]
    Command(String),
    /// A frame whose data does not match its size.
    #[error("I420 frame of {width}x{height} has {len} bytes, expected {expected}")]
    BadFrame {
        width: u32,
        height: u32,
        len: usize,
        expected: usize,
    },
}

/// A display: shows I420 frames.
pub trait VideoPlayer: Send {
    /// Show `frame`; may block while the display is busy.
    fn show(&mut self, frame: &I420Frame) -> Result<(), VideoPlayerError>;
    /// Finish: flush, close the file or the command's input.
    fn close(&mut self) -> Result<(), VideoPlayerError> {
        Ok(())
    }
}

fn check(frame: &I420Frame) -> Result<(), VideoPlayerError> {
    let expected = I420Frame::size_for(frame.width, frame.height);
    if frame.data.len() != expected {
        return Err(VideoPlayerError::BadFrame {
            width: frame.width,
            height: frame.height,
            len: frame.data.len(),
            expected,
        });
    }
    Ok(())
}

/// Appends every frame's raw I420 bytes to a file (created, or truncated, when opened).
pub struct RawFilePlayer {
    path: PathBuf,
    file: BufWriter<File>,
}

impl RawFilePlayer {
    pub fn create(path: impl AsRef<Path>) -> Result<Self, VideoPlayerError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl VideoPlayer for RawFilePlayer {
    fn show(&mut self, frame: &I420Frame) -> Result<(), VideoPlayerError> {
        check(frame)?;
        self.file.write_all(&frame.data)?;
        Ok(())
    }

    fn close(&mut self) -> Result<(), VideoPlayerError> {
        self.file.flush()?;
        Ok(())
    }
}

/// A command run by `sh -c`, fed raw I420 on its standard input. It is started at the first
/// frame, with `{width}` and `{height}` in the command line replaced by the picture size (and
/// `KVS_VIDEO_WIDTH`/`KVS_VIDEO_HEIGHT` in its environment); a frame of another size closes it
/// and starts it again for the new size. If the command exits, [`show`](VideoPlayer::show)
/// returns [`VideoPlayerError::Command`].
pub struct CommandVideoPlayer {
    command: String,
    running: Option<(Child, Option<ChildStdin>, (u32, u32))>,
}

impl std::fmt::Debug for CommandVideoPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandVideoPlayer")
            .field("command", &self.command)
            .finish()
    }
}

impl CommandVideoPlayer {
    /// A player that runs `command` (a shell command line) once the first frame comes.
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_string(),
            running: None,
        }
    }

    fn start(&mut self, width: u32, height: u32) -> Result<(), VideoPlayerError> {
        let line = self
            .command
            .replace("{width}", &width.to_string())
            .replace("{height}", &height.to_string());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .env("KVS_VIDEO_WIDTH", width.to_string())
            .env("KVS_VIDEO_HEIGHT", height.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| VideoPlayerError::Command(format!("cannot start `{line}`: {e}")))?;
        let stdin = child.stdin.take();
        self.running = Some((child, stdin, (width, height)));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), VideoPlayerError> {
        if let Some((mut child, stdin, _)) = self.running.take() {
            // Closing its input ends a player like ffplay; wait so it is not left a zombie.
            drop(stdin);
            child.wait()?;
        }
        Ok(())
    }
}

impl VideoPlayer for CommandVideoPlayer {
    fn show(&mut self, frame: &I420Frame) -> Result<(), VideoPlayerError> {
        check(frame)?;
        let size = (frame.width, frame.height);
        if self.running.as_ref().is_some_and(|r| r.2 != size) {
            self.stop()?;
        }
        if self.running.is_none() {
            self.start(frame.width, frame.height)?;
        }
        let Some((child, stdin, _)) = self.running.as_mut() else {
            return Ok(());
        };
        let Some(pipe) = stdin.as_mut() else {
            return Err(VideoPlayerError::Command(format!(
                "`{}` is not running",
                self.command
            )));
        };
        if let Err(e) = pipe.write_all(&frame.data) {
            *stdin = None;
            let status = child.try_wait().ok().flatten();
            return Err(VideoPlayerError::Command(format!(
                "`{}` stopped taking video ({e}; exit status {status:?})",
                self.command
            )));
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), VideoPlayerError> {
        self.stop()
    }
}

impl Drop for CommandVideoPlayer {
    fn drop(&mut self) {
        if let Some((mut child, stdin, _)) = self.running.take() {
            drop(stdin);
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvs-vplayer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn frame(w: u32, h: u32, v: u8) -> I420Frame {
        I420Frame {
            width: w,
            height: h,
            timestamp_us: 0,
            data: vec![v; I420Frame::size_for(w, h)],
        }
    }

    #[test]
    fn raw_file_holds_the_frames_bytes() {
        let path = temp("raw.yuv");
        let mut p = RawFilePlayer::create(&path).unwrap();
        p.show(&frame(16, 8, 1)).unwrap();
        p.show(&frame(16, 8, 2)).unwrap();
        p.close().unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(b.len(), 2 * 16 * 8 * 3 / 2);
        assert_eq!(b[0], 1);
        assert_eq!(b[b.len() - 1], 2);
    }

    #[test]
    fn a_frame_of_the_wrong_length_is_refused() {
        let mut p = RawFilePlayer::create(temp("bad.yuv")).unwrap();
        let mut f = frame(16, 8, 0);
        f.data.pop();
        assert!(matches!(p.show(&f), Err(VideoPlayerError::BadFrame { .. })));
    }

    #[test]
    fn command_gets_the_size_and_the_bytes_and_restarts_on_a_new_size() {
        let out = temp("cmd.txt");
        let cmd = format!(
            "echo {{width}}x{{height}} >> {0}; wc -c >> {0}",
            out.display()
        );
        let mut p = CommandVideoPlayer::new(&cmd);
        p.show(&frame(16, 8, 0)).unwrap();
        p.show(&frame(16, 8, 0)).unwrap();
        p.show(&frame(32, 16, 0)).unwrap();
        p.close().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines, vec!["16x8", "384", "32x16", "768"]);
    }

    #[test]
    fn a_command_that_exits_is_an_error_not_a_panic() {
        let mut p = CommandVideoPlayer::new("exit 0");
        let f = frame(640, 480, 0);
        let mut failed = false;
        for _ in 0..50 {
            if p.show(&f).is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(failed, "writing to an exited command fails");
    }
}
