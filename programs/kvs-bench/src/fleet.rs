//! Many Rust viewers at once, each in its own task, counting what it receives in windows the
//! orchestrator opens and closes.

use crate::viewer::{Joined, Reception, Tracker};
use anyhow::{anyhow, Result};
use kvs_peer::viewer::ViewerEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

enum Cmd {
    StartWindow,
    EndWindow(oneshot::Sender<Reception>),
}

/// One running viewer.
pub struct Member {
    cmds: mpsc::Sender<Cmd>,
    stop: Option<oneshot::Sender<()>>,
    pub receiving: Arc<AtomicBool>,
    task: JoinHandle<Result<()>>,
}

impl Member {
    pub async fn join(url: &str, arn: &str, client_id: &str) -> Result<Member> {
        let mut joined = Joined::join(url, arn, client_id).await?;
        let (cmds, mut cmd_rx) = mpsc::channel(4);
        let (stop, mut stop_rx) = oneshot::channel();
        let receiving = Arc::new(AtomicBool::new(false));
        let flag = receiving.clone();
        let task = tokio::spawn(async move {
            let mut video = Tracker::default();
            loop {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                tokio::select! {
                    _ = &mut stop_rx => break,
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Cmd::StartWindow) => video.start_window(),
                        Some(Cmd::EndWindow(reply)) => {
                            let _ = reply.send(video.finish());
                        }
                        None => break,
                    },
                    ev = joined.next(deadline) => match ev? {
                        Some(ViewerEvent::Video(f)) => { flag.store(true, Ordering::Relaxed); video.video(&f); }
                        Some(ViewerEvent::Closed) => return Err(anyhow!("viewer closed")),
                        _ => {}
                    },
                }
            }
            joined.close().await;
            Ok(())
        });
        Ok(Member {
            cmds,
            stop: Some(stop),
            receiving,
            task,
        })
    }

    pub async fn start_window(&self) {
        let _ = self.cmds.send(Cmd::StartWindow).await;
    }

    pub async fn end_window(&self) -> Option<Reception> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::EndWindow(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await?
    }
}

/// Join `n` viewers (a few at a time) and wait until every one receives video.
pub async fn join_many(
    url: &str,
    arn: &str,
    prefix: &str,
    first_index: usize,
    n: usize,
) -> Result<Vec<Member>> {
    let mut members = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(5) {
        let mut joins = Vec::new();
        for i in chunk_start..(chunk_start + 5).min(n) {
            let id = format!("{prefix}-{}", first_index + i);
            let (url, arn) = (url.to_string(), arn.to_string());
            joins.push(tokio::spawn(
                async move { Member::join(&url, &arn, &id).await },
            ));
        }
        for j in joins {
            members.push(j.await??);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members.iter().any(|m| !m.receiving.load(Ordering::Relaxed)) {
        if tokio::time::Instant::now() > deadline {
            let waiting = members
                .iter()
                .filter(|m| !m.receiving.load(Ordering::Relaxed))
                .count();
            anyhow::bail!("{waiting} of {n} viewers received no video within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(members)
}

pub async fn stop_all(members: Vec<Member>) {
    for m in members {
        if let Err(e) = m.stop().await {
            tracing::debug!("viewer ended with: {e}");
        }
    }
}
