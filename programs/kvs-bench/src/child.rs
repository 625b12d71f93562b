//! Child processes that speak in lines (the local service, our device, the peers): stdout
//! read line by line, stderr kept in a log file under the output directory.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub struct LineChild {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// JSON lines read while waiting for something else.
    pub backlog: Vec<Value>,
    log: std::path::PathBuf,
}

impl LineChild {
    /// Start `program args…`; its stderr goes to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log_dir)
    }

    /// [`LineChild::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", name, program.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.into(),
            child,
            stdin,
            lines,
            backlog: Vec::new(),
            log,
        })
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        anyhow!(
            "{}: {what}; stderr tail ({}):\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// The next stdout line for which `pick` returns something.
    pub async fn line<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::select! {
                l = self.lines.recv() => l,
                _ = tokio::time::sleep_until(deadline) => return Err(self.failure(&format!("nothing expected within {timeout:?}"))),
            };
            let Some(line) = line else {
                return Err(self.failure("exited"));
            };
            if let Some(v) = pick(&line) {
                return Ok(v);
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.backlog.push(v);
            }
        }
    }

    /// The next JSON line whose `type` is `kind` (others are kept in `backlog`). A line of
    /// type `error` fails.
    pub async fn json(&mut self, kind: &str, timeout: Duration) -> Result<Value> {
        let mut error = None;
        let v = self
            .line(timeout, |l| {
                let v: Value = serde_json::from_str(l).ok()?;
                if v["type"] == "error" {
                    error = Some(v["message"].as_str().unwrap_or("error").to_string());
                    return Some(v);
                }
                (v["type"] == kind).then_some(v)
            })
            .await?;
        if let Some(e) = error {
            bail!("{}: {e}", self.name);
        }
        Ok(v)
    }

    /// The child's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Take the backlogged JSON lines of type `kind`.
    pub fn take(&mut self, kind: &str) -> Vec<Value> {
        let (take, keep) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|v| v["type"] == kind);
        self.backlog = keep;
        take
    }

    /// Read whatever stdout already has, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.backlog.push(v);
            }
        }
    }

    pub async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", self.name))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Send a command and wait for the JSON reply of type `kind`.
    pub async fn ask(&mut self, command: &str, kind: &str) -> Result<Value> {
        self.send(command).await?;
        self.json(kind, Duration::from_secs(30)).await
    }

    /// SIGTERM at once (for programs that do not read stdin), then SIGKILL after 5 s.
    pub async fn terminate(mut self) {
        self.stdin = None;
        kvs_app::split::wake::terminate(self.child, Duration::from_secs(5)).await;
    }

    /// Close stdin (our children stop on that or on `quit`), then SIGTERM, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = self.send("quit").await;
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_ok()
        {
            return;
        }
        self.terminate().await;
    }
}
