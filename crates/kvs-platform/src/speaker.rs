//! The speaker contract: where decoded talk-back audio goes (a doorbell's loudspeaker), with
//! two host implementations: a WAV file ([`WavFilePlayer`]) and a command fed raw PCM on its
//! standard input ([`CommandPlayer`], e.g. `aplay -f S16_LE -r 48000`).
//!
//! A player takes signed 16-bit PCM in its [`PcmFormat`] (48 kHz mono for both host players)
//! and blocks while the device drains it (a pipe to `aplay` fills at playback speed). It is
//! called from the application's talk-back thread, never from the network task, so a slow
//! player only drops talk-back packets, never delays video. A sound card is
//! `crate::sound_card::SoundCardPlayer`, behind the cargo feature `sound-card` (`cpal`).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The PCM a player takes: signed 16-bit little-endian samples, interleaved by channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

impl PcmFormat {
    /// 48 kHz mono, what the talk-back path produces.
    pub const MONO_48K: Self = Self {
        sample_rate: 48_000,
        channels: 1,
    };
}

/// Errors from a player.
#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    /// Writing the file or pipe failed.
    #[error("speaker I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The command could not be started, or has exited.
    #[error("speaker command: {0}")]
    Command(String),
    /// The sound card could not be opened, or stopped (feature `sound-card`).
    #[error("sound card: {0}")]
    Device(String),
    /// The WAV file reached the format's 4 GiB limit; further audio is not written.
    #[error("WAV file full (4 GiB limit of RIFF)")]
    Full,
}

/// A loudspeaker: plays PCM in [`format`](Self::format).
pub trait AudioPlayer: Send {
    /// What [`play`](Self::play) takes.
    fn format(&self) -> PcmFormat;
    /// Play `samples` (interleaved by channel); blocks while the device is busy.
    fn play(&mut self, samples: &[i16]) -> Result<(), PlaybackError>;
    /// Finish: flush what is buffered, close the file or the command's input.
    fn close(&mut self) -> Result<(), PlaybackError> {
        Ok(())
    }
}

/// RIFF/WAVE header length (RIFF chunk, `fmt ` chunk of 16 bytes, `data` chunk header).
const WAV_HEADER: u64 = 44;
/// Rewrite the header's sizes at least every this many data bytes (one second at 48 kHz
/// mono), so a file copied while it grows, or left by a crash, is readable up to then.
const FIXUP_EVERY: u64 = 96_000;

/// A WAV file (PCM, 16-bit) whose header sizes are fixed up as it grows (every second of
/// audio) and on [`close`](AudioPlayer::close) or drop.
pub struct WavFilePlayer {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    format: PcmFormat,
    data_bytes: u64,
    fixed_at: u64,
}

impl std::fmt::Debug for WavFilePlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavFilePlayer")
            .field("path", &self.path)
            .field("data_bytes", &self.data_bytes)
            .finish()
    }
}

/// The 44-byte header of a PCM WAV file with `data_bytes` of samples.
pub fn wav_header(format: PcmFormat, data_bytes: u32) -> [u8; 44] {
    let block_align = format.channels * 2;
    let byte_rate = format.sample_rate * u32::from(block_align);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36u32.saturating_add(data_bytes)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&format.channels.to_le_bytes());
    h[24..28].copy_from_slice(&format.sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

impl WavFilePlayer {
    /// Create (or truncate) `path` with an empty 48 kHz mono WAV.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, PlaybackError> {
        Self::create_with(path, PcmFormat::MONO_48K)
    }

    pub fn create_with(path: impl AsRef<Path>, format: PcmFormat) -> Result<Self, PlaybackError> {
        let path = path.as_ref().to_path_buf();
        let mut file = BufWriter::new(File::create(&path)?);
        file.write_all(&wav_header(format, 0))?;
        file.flush()?;
        Ok(Self {
            path,
            file: Some(file),
            format,
            data_bytes: 0,
            fixed_at: 0,
        })
    }

    /// Bytes of samples written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn fix_header(&mut self) -> Result<(), PlaybackError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.flush()?;
        let f = file.get_mut();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&wav_header(self.format, self.data_bytes as u32))?;
        f.seek(SeekFrom::Start(WAV_HEADER + self.data_bytes))?;
        f.flush()?;
        self.fixed_at = self.data_bytes;
        Ok(())
    }
}

impl AudioPlayer for WavFilePlayer {
    fn format(&self) -> PcmFormat {
        self.format
    }

    fn play(&mut self, samples: &[i16]) -> Result<(), PlaybackError> {
        let Some(file) = self.file.as_mut() else {
            return Err(PlaybackError::Io(std::io::Error::other("WAV file closed")));
        };
        let bytes = samples.len() as u64 * 2;
        // RIFF sizes are 32-bit; the RIFF size adds 36 to the data size.
        if self.data_bytes + bytes > u64::from(u32::MAX) - 36 {
            return Err(PlaybackError::Full);
        }
        let mut buf = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        file.write_all(&buf)?;
        self.data_bytes += bytes;
        if self.data_bytes - self.fixed_at >= FIXUP_EVERY {
            self.fix_header()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PlaybackError> {
        let r = self.fix_header();
        self.file = None;
        r
    }
}

impl Drop for WavFilePlayer {
    fn drop(&mut self) {
        let _ = self.fix_header();
    }
}

/// A command run by `sh -c` and fed S16LE PCM on its standard input (its output goes to the
/// device's own stdout/stderr as is). If the command exits, [`play`](AudioPlayer::play)
/// returns [`PlaybackError::Command`] from then on.
pub struct CommandPlayer {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    format: PcmFormat,
}

impl std::fmt::Debug for CommandPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandPlayer")
            .field("command", &self.command)
            .finish()
    }
}

impl CommandPlayer {
    /// Start `command` (a shell command line) taking 48 kHz mono S16LE.
    pub fn spawn(command: &str) -> Result<Self, PlaybackError> {
        Self::spawn_with(command, PcmFormat::MONO_48K)
    }

    pub fn spawn_with(command: &str, format: PcmFormat) -> Result<Self, PlaybackError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| PlaybackError::Command(format!("cannot start `{command}`: {e}")))?;
        let stdin = child.stdin.take();
        Ok(Self {
            command: command.to_string(),
            child,
            stdin,
            format,
        })
    }
}

impl AudioPlayer for CommandPlayer {
    fn format(&self) -> PcmFormat {
        self.format
    }

    fn play(&mut self, samples: &[i16]) -> Result<(), PlaybackError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(PlaybackError::Command(format!(
                "`{}` is not running",
                self.command
            )));
        };
        let mut buf = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        if let Err(e) = stdin.write_all(&buf) {
            self.stdin = None;
            let status = self.child.try_wait().ok().flatten();
            return Err(PlaybackError::Command(format!(
                "`{}` stopped taking audio ({e}; exit status {status:?})",
                self.command
            )));
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PlaybackError> {
        // Closing its input ends a player like aplay; wait for it so it is not left a zombie.
        self.stdin = None;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for CommandPlayer {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvs-speaker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn wav_header_is_riff_pcm_48k_mono() {
        let h = wav_header(PcmFormat::MONO_48K, 1000);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32_at(&h, 4), 1036);
        assert_eq!(&h[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&h, 16), 16);
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 1, "PCM");
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 1, "mono");
        assert_eq!(u32_at(&h, 24), 48_000);
        assert_eq!(u32_at(&h, 28), 96_000, "byte rate");
        assert_eq!(u16::from_le_bytes([h[32], h[33]]), 2, "block align");
        assert_eq!(u16::from_le_bytes([h[34], h[35]]), 16, "bits");
        assert_eq!(&h[36..40], b"data");
        assert_eq!(u32_at(&h, 40), 1000);
    }

    #[test]
    fn wav_sizes_are_fixed_while_growing_and_on_close() {
        let path = temp("grow.wav");
        let mut p = WavFilePlayer::create(&path).unwrap();
        let empty = std::fs::read(&path).unwrap();
        assert_eq!(empty.len(), 44);
        assert_eq!(u32_at(&empty, 40), 0);
        // 1.5 s: the header is fixed up after the first second while the file is open.
        let frame: Vec<i16> = (0..960).map(|i| (i as i16) - 480).collect();
        for _ in 0..75 {
            p.play(&frame).unwrap();
        }
        let mid = std::fs::read(&path).unwrap();
        let data = u32_at(&mid, 40);
        assert!(data >= 96_000, "header fixed up while growing: {data}");
        assert_eq!(u32_at(&mid, 4), data + 36);
        p.close().unwrap();
        let done = std::fs::read(&path).unwrap();
        assert_eq!(done.len(), 44 + 75 * 960 * 2);
        assert_eq!(u32_at(&done, 40), 75 * 960 * 2);
        assert_eq!(u32_at(&done, 4), 75 * 960 * 2 + 36);
        // Samples are little-endian, in order.
        assert_eq!(i16::from_le_bytes([done[44], done[45]]), -480);
        assert_eq!(i16::from_le_bytes([done[46], done[47]]), -479);
    }

    #[test]
    fn wav_header_fixed_on_drop() {
        let path = temp("drop.wav");
        {
            let mut p = WavFilePlayer::create(&path).unwrap();
            p.play(&[1; 480]).unwrap();
        }
        let b = std::fs::read(&path).unwrap();
        assert_eq!(u32_at(&b, 40), 960);
        assert_eq!(b.len(), 44 + 960);
    }

    #[test]
    fn command_player_feeds_stdin_and_reports_exit() {
        let path = temp("cmd.raw");
        let mut p = CommandPlayer::spawn(&format!("cat > {}", path.display())).unwrap();
        p.play(&[0x0102, -2]).unwrap();
        p.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![2, 1, 0xfe, 0xff]);

        let mut gone = CommandPlayer::spawn("exit 3").unwrap();
        let _ = gone.child.wait();
        // A pipe whose reader is gone fails (after the kernel notices); keep writing.
        let mut failed = None;
        for _ in 0..64 {
            if let Err(e) = gone.play(&[0; 4800]) {
                failed = Some(e);
                break;
            }
        }
        assert!(
            matches!(failed, Some(PlaybackError::Command(_))),
            "{failed:?}"
        );
    }
}
