//! How the signaling side wakes a sleeping media side on a host.
//!
//! Owns the three wake methods of `--wake`: `exec:<command>` starts the streaming process
//! (asleep = no process; at most one is running at a time), `signal:<pidfile>` sends SIGUSR1
//! to a resident one (asleep = idle in its own process), `none` leaves waking to something
//! else (a GPIO on two chips, or a wake byte on the link: the media side also wakes on the
//! link's ReadyQuery). It must not decide *when* to wake: that is `kvs_bridge`'s relay.

use std::path::PathBuf;
use std::str::FromStr;
use tokio::process::{Child, Command};

/// A `--wake` method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeMethod {
    /// Run this shell command (`sh -c`) to start the streaming process.
    Exec(String),
    /// Send SIGUSR1 to the pid in this file.
    Signal(PathBuf),
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("wake `{0}`: expected exec:<command>, signal:<pidfile> or none")]
    Syntax(String),
    #[error("starting the streaming process `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("reading the streaming process's pid from {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
    #[error("signalling pid {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
}

impl FromStr for WakeMethod {
    type Err = WakeError;
    fn from_str(s: &str) -> Result<Self, WakeError> {
        if s == "none" {
            return Ok(WakeMethod::None);
        }
        match s.split_once(':') {
            Some(("exec", c)) if !c.trim().is_empty() => Ok(WakeMethod::Exec(c.to_owned())),
            Some(("signal", p)) if !p.is_empty() => Ok(WakeMethod::Signal(p.into())),
            _ => Err(WakeError::Syntax(s.to_owned())),
        }
    }
}

/// What a wake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A streaming process was started (exec).
    Started { pid: u32 },
    /// The one started earlier is still running: not started twice.
    AlreadyRunning,
    /// SIGUSR1 sent.
    Signalled { pid: i32 },
    /// Nothing to do (`none`).
    Nothing,
}

/// Carries out wakes; owns the streaming child in exec mode.
#[derive(Debug)]
pub struct Waker {
    method: WakeMethod,
    child: Option<Child>,
}

impl Waker {
    pub fn new(method: WakeMethod) -> Self {
        Waker {
            method,
            child: None,
        }
    }

    pub fn method(&self) -> &WakeMethod {
        &self.method
    }

    /// Whether an exec-started streaming process is running now.
    pub fn child_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn wake(&mut self) -> Result<Woke, WakeError> {
        match self.method.clone() {
            WakeMethod::Exec(command) => {
                if self.child_running() {
                    return Ok(Woke::AlreadyRunning);
                }
                let child = Command::new("sh")
                    .arg("-c")
                    // `exec` so the pid we hold is the streaming process itself, and a signal
                    // to it reaches it rather than a shell.
                    .arg(format!("exec {command}"))
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| WakeError::Spawn {
                        command: command.clone(),
                        source,
                    })?;
                let pid = child.id().unwrap_or(0);
                self.child = Some(child);
                Ok(Woke::Started { pid })
            }
            WakeMethod::Signal(path) => {
                let pid = read_pid(&path)?;
                send_signal(pid, libc::SIGUSR1)?;
                Ok(Woke::Signalled { pid })
            }
            WakeMethod::None => Ok(Woke::Nothing),
        }
    }

    /// Resolves when the exec-started streaming process exits (never, when there is none).
    pub async fn child_exited(&mut self) -> std::process::ExitStatus {
        match &mut self.child {
            Some(c) => {
                let status = c.wait().await;
                self.child = None;
                match status {
                    Ok(s) => s,
                    Err(_) => std::future::pending().await,
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Asks a running exec-started child to stop (SIGTERM), waiting at most `grace` before
    /// killing it.
    pub async fn stop_child(&mut self, grace: std::time::Duration) {
        if let Some(child) = self.child.take() {
            terminate(child, grace).await;
        }
    }
}

/// Asks a child process to stop (SIGTERM) and waits at most `grace` before killing it.
pub async fn terminate(mut child: Child, grace: std::time::Duration) {
    if let Some(pid) = child.id() {
        let _ = send_signal(pid as i32, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn read_pid(path: &PathBuf) -> Result<i32, WakeError> {
    let err = |reason: String| WakeError::PidFile {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| err(format!("not a process id: {:?}", text.trim())))
}

fn send_signal(pid: i32, signal: libc::c_int) -> Result<(), WakeError> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid > 1` (checked
    // by every caller's source) keeps it from addressing a process group or every process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(WakeError::Signal {
            pid,
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse() {
        assert_eq!(
            "exec:kvs-webrtc streaming-only"
                .parse::<WakeMethod>()
                .unwrap(),
            WakeMethod::Exec("kvs-webrtc streaming-only".into())
        );
        assert_eq!(
            "signal:/run/m.pid".parse::<WakeMethod>().unwrap(),
            WakeMethod::Signal("/run/m.pid".into())
        );
        assert_eq!("none".parse::<WakeMethod>().unwrap(), WakeMethod::None);
        for bad in ["", "exec:", "exec: ", "signal:", "gpio:4", "nonsense"] {
            assert!(bad.parse::<WakeMethod>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn exec_starts_one_process_at_a_time_and_sees_it_exit() {
        let mut w = Waker::new(WakeMethod::Exec("sleep 0.3".into()));
        assert!(matches!(w.wake().unwrap(), Woke::Started { .. }));
        assert_eq!(w.wake().unwrap(), Woke::AlreadyRunning);
        assert!(w.child_exited().await.success());
        assert!(!w.child_running());
        assert!(matches!(w.wake().unwrap(), Woke::Started { .. }));
        w.stop_child(std::time::Duration::from_secs(1)).await;
        assert!(!w.child_running());
    }

    #[test]
    fn a_bad_pid_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("kvs-wake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("m.pid");
        let mut w = Waker::new(WakeMethod::Signal(pidfile.clone()));
        assert!(matches!(w.wake(), Err(WakeError::PidFile { .. })));
        std::fs::write(&pidfile, "1\n").unwrap();
        assert!(matches!(w.wake(), Err(WakeError::PidFile { .. })));
        std::fs::write(&pidfile, "banana").unwrap();
        assert!(matches!(w.wake(), Err(WakeError::PidFile { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
