//! A capture command: a shell command (`sh -c`) whose standard output is read in fixed-size
//! chunks (one raw picture, one 20 ms period of PCM) — what the raw-capture camera and
//! microphone read from, e.g. `ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -`.
//!
//! It owns the child process (in its own process group, so a pipeline is stopped whole), a
//! reader thread handing over complete chunks through a one-slot channel (so a producer that
//! writes faster than the camera reads is held back by the pipe), the bounded tail of the
//! command's stderr, and the restart policy. An exit, a chunk cut short at the end of the
//! output, or no complete chunk for the stall timeout is a [`RawCommandError`] naming the
//! command, its exit status and its last stderr lines; with a restart policy the command is
//! started again after a growing delay instead. It must not decode or pace what it reads.

use kvs_platform::CaptureError;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the command's stderr kept for error messages (the newest).
pub const STDERR_TAIL_BYTES: usize = 4096;
/// Lines of that tail quoted in an error.
const STDERR_LINES_QUOTED: usize = 6;
/// How long an ended command is given to exit (and its stderr to drain) before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// When a failed command is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart; doubled after each failure in a row.
    pub first_delay: Duration,
    /// The delay grows to this at most.
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// How a capture command is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOptions {
    /// The shell command (run with `sh -c`).
    pub command: String,
    /// No complete chunk for this long is an error (a stalled camera).
    pub stall_timeout: Duration,
    /// Start the command again when it fails (`None`: a failure is the source's error).
    pub restart: Option<RestartPolicy>,
}

impl CommandOptions {
    /// `command` with the default stall timeout (5 s) and no restarts.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            stall_timeout: Duration::from_secs(5),
            restart: None,
        }
    }
}

/// Why a capture command stopped delivering. Carried inside [`CaptureError::Io`] (its
/// `get_ref()` downcasts to this type).
#[derive(Debug, thiserror::Error)]
pub enum RawCommandError {
    /// `sh` could not be started.
    #[error("cannot start capture command `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The command closed its output at a chunk boundary (it exited, or is about to).
    #[error("capture command `{command}` ended ({status}){}", quote(stderr))]
    Exited {
        command: String,
        /// "exit status: 1", "signal: 9 (SIGKILL)", …
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// The output ended in the middle of a chunk: the size or format does not match.
    #[error("capture command `{command}` ended in the middle of a {what}: {got} of {expected} bytes (does its output match the configured size and format?) ({status}){}", quote(stderr))]
    ShortRead {
        command: String,
        what: &'static str,
        got: usize,
        expected: usize,
        status: String,
        stderr: String,
    },
    /// No complete chunk for the stall timeout.
    #[error("capture command `{command}` stalled: no complete {what} for {} ms{}", waited.as_millis(), quote(stderr))]
    Stalled {
        command: String,
        what: &'static str,
        waited: Duration,
        stderr: String,
    },
    /// Reading its output failed.
    #[error("reading the output of capture command `{command}`: {source}")]
    Read {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

fn quote(stderr: &str) -> String {
    if stderr.is_empty() {
        "; no stderr output".into()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl From<RawCommandError> for CaptureError {
    fn from(e: RawCommandError) -> Self {
        let kind = match &e {
            RawCommandError::Spawn { source, .. } | RawCommandError::Read { source, .. } => {
                source.kind()
            }
            RawCommandError::Exited { .. } | RawCommandError::ShortRead { .. } => {
                ErrorKind::UnexpectedEof
            }
            RawCommandError::Stalled { .. } => ErrorKind::TimedOut,
        };
        CaptureError::Io(std::io::Error::new(kind, e))
    }
}

/// The newest bytes of a stream, at most [`STDERR_TAIL_BYTES`].
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl Tail {
    /// The last few lines, progress lines (`\r`) split too, lossily decoded.
    fn lines(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).replace('\r', "\n");
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(STDERR_LINES_QUOTED)..].join(" | ")
    }
}

/// What the reader thread hands over.
enum Chunk {
    Data(Vec<u8>),
    /// End of output after `partial` bytes of an unfinished chunk.
    End {
        partial: usize,
    },
    Failed(std::io::Error),
}

/// One run of the command.
struct Running {
    child: Child,
    chunks: Receiver<Chunk>,
    stderr: Arc<Mutex<Tail>>,
}

impl Running {
    fn spawn(command: &str, chunk_bytes: usize) -> Result<Self, RawCommandError> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: stopping it stops every process of a pipeline.
            .process_group(0)
            .spawn()
            .map_err(|source| RawCommandError::Spawn {
                command: command.into(),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr_pipe = child.stderr.take().expect("piped");
        // One slot: the reader holds at most one chunk in the channel and one being read, and
        // otherwise leaves the bytes in the pipe, where they hold the producer back.
        let (tx, chunks) = sync_channel(1);
        // From here on, dropping `running` (an error below) kills the command.
        let running = Self {
            child,
            chunks,
            stderr: Arc::new(Mutex::new(Tail::default())),
        };
        let spawn_failed = |source| RawCommandError::Spawn {
            command: command.into(),
            source,
        };
        std::thread::Builder::new()
            .name("kvs-capture-cmd".into())
            .spawn(move || read_chunks(stdout, chunk_bytes, &tx))
            .map_err(spawn_failed)?;
        let tail = running.stderr.clone();
        std::thread::Builder::new()
            .name("kvs-capture-cmd-err".into())
            .spawn(move || keep_tail(stderr_pipe, &tail))
            .map_err(spawn_failed)?;
        tracing::info!(command, pid = running.child.id(), "capture command started");
        Ok(running)
    }

    /// The command's exit status once its output has ended, waiting [`EXIT_GRACE`] at most
    /// (then it is killed), and its stderr tail once that has drained too.
    fn finish(&mut self) -> (String, String) {
        let deadline = Instant::now() + EXIT_GRACE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    self.kill();
                    break "closed its output but did not exit; killed".into();
                }
                Err(e) => break format!("status unknown: {e}"),
            }
        };
        while Instant::now() < deadline {
            if self.stderr.lock().map(|t| t.closed).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (status, self.stderr_lines())
    }

    fn stderr_lines(&self) -> String {
        self.stderr.lock().map(|t| t.lines()).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; it has no memory
            // effects. The group is the child's own (process_group(0)), not ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The reader thread: whole chunks of `size` bytes until the end of the output.
fn read_chunks(mut out: impl Read, size: usize, tx: &std::sync::mpsc::SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match out.read(&mut buf[filled..]) {
                Ok(0) => {
                    let _ = tx.send(Chunk::End { partial: filled });
                    return;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Chunk::Failed(e));
                    return;
                }
            }
        }
        if tx.send(Chunk::Data(buf)).is_err() {
            return; // the source stopped this run
        }
    }
}

/// The stderr thread: keep the newest bytes.
fn keep_tail(mut err: impl Read, tail: &Mutex<Tail>) {
    let mut buf = [0u8; 1024];
    loop {
        let n = match err.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(mut t) = tail.lock() else { return };
        t.bytes.extend(&buf[..n]);
        let excess = t.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        t.bytes.drain(..excess);
    }
    if let Ok(mut t) = tail.lock() {
        t.closed = true;
    }
}

/// A capture command read chunk by chunk, restarted per its policy. See the [module
/// docs](self).
pub(crate) struct CommandSource {
    options: CommandOptions,
    chunk_bytes: usize,
    /// "picture", "audio period": what a chunk is, for messages.
    what: &'static str,
    running: Option<Running>,
    /// The delay before the next restart (reset by a delivered chunk).
    delay: Duration,
    restarts: u64,
}

impl std::fmt::Debug for CommandSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSource")
            .field("options", &self.options)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("running", &self.running.as_ref().map(|r| r.child.id()))
            .field("restarts", &self.restarts)
            .finish()
    }
}

impl CommandSource {
    pub(crate) fn new(
        options: CommandOptions,
        chunk_bytes: usize,
        what: &'static str,
    ) -> Result<Self, CaptureError> {
        if options.command.trim().is_empty() {
            return Err(CaptureError::InvalidInput(
                "the capture command is empty".into(),
            ));
        }
        if options.stall_timeout.is_zero() {
            return Err(CaptureError::InvalidInput(
                "the capture command's stall timeout must not be zero".into(),
            ));
        }
        if let Some(r) = options.restart {
            if r.first_delay.is_zero() || r.max_delay < r.first_delay {
                return Err(CaptureError::InvalidInput(
                    "restart delays: the first must be above zero and at most the maximum".into(),
                ));
            }
        }
        Ok(Self {
            delay: options.restart.map(|r| r.first_delay).unwrap_or_default(),
            options,
            chunk_bytes,
            what,
            running: None,
            restarts: 0,
        })
    }

    /// Times the command was started again after a failure.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Start the command unless it runs.
    pub(crate) fn start(&mut self) -> Result<(), CaptureError> {
        if self.running.is_none() {
            self.running = Some(Running::spawn(&self.options.command, self.chunk_bytes)?);
        }
        Ok(())
    }

    /// Stop the command (killed with its process group).
    pub(crate) fn stop(&mut self) {
        self.running = None;
    }

    /// Block until the next complete chunk; on failure restart (after the policy's delay) or
    /// return the error.
    pub(crate) fn next_chunk(&mut self) -> Result<Vec<u8>, CaptureError> {
        loop {
            let error = match self.try_next() {
                Ok(chunk) => {
                    if let Some(r) = self.options.restart {
                        self.delay = r.first_delay;
                    }
                    return Ok(chunk);
                }
                Err(e) => e,
            };
            self.running = None;
            let Some(policy) = self.options.restart else {
                return Err(error.into());
            };
            tracing::warn!(error = %error, delay_ms = self.delay.as_millis() as u64, "capture command failed; restarting it");
            std::thread::sleep(self.delay);
            self.delay = (self.delay * 2).min(policy.max_delay);
            self.restarts += 1;
        }
    }

    fn try_next(&mut self) -> Result<Vec<u8>, RawCommandError> {
        let command = &self.options.command;
        let running = match &mut self.running {
            Some(r) => r,
            None => self
                .running
                .insert(Running::spawn(command, self.chunk_bytes)?),
        };
        let chunk = match running.chunks.recv_timeout(self.options.stall_timeout) {
            Ok(chunk) => chunk,
            Err(RecvTimeoutError::Timeout) => {
                return Err(RawCommandError::Stalled {
                    command: command.clone(),
                    what: self.what,
                    waited: self.options.stall_timeout,
                    stderr: running.stderr_lines(),
                })
            }
            // The reader thread always says why it ends; this is its panic.
            Err(RecvTimeoutError::Disconnected) => Chunk::Failed(std::io::Error::other(
                "the reader thread ended unexpectedly",
            )),
        };
        match chunk {
            Chunk::Data(data) => Ok(data),
            Chunk::End { partial: 0 } => {
                let (status, stderr) = running.finish();
                Err(RawCommandError::Exited {
                    command: command.clone(),
                    status,
                    stderr,
                })
            }
            Chunk::End { partial } => {
                let (status, stderr) = running.finish();
                Err(RawCommandError::ShortRead {
                    command: command.clone(),
                    what: self.what,
                    got: partial,
                    expected: self.chunk_bytes,
                    status,
                    stderr,
                })
            }
            Chunk::Failed(source) => Err(RawCommandError::Read {
                command: command.clone(),
                source,
            }),
        }
    }
}
