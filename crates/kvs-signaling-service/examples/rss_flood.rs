//! Measures the service's resident memory around a burst of idle WebSocket connections.
//!
//! `cargo run --release -p kvs-signaling-service --example rss_flood [-- <connections>]`
//!
//! The service runs in a child process (this program started with `--serve`), so the
//! clients' own memory does not count; the parent opens the connections (default 2,000,
//! 10 viewers per channel), closes them and asks the child for its RSS (`VmRSS` from
//! `/proc/self/status`) at each step. At the end the child calls `malloc_trim(0)` itself and
//! measures again: what that still frees is memory glibc was holding, not the service.
//! Finally (unless `RSS_FLOOD_QUICK` is set) it waits 75 s, past the 60 s for which channels
//! remember departed viewers, and measures once more. `RSS_FLOOD_STATS=1` prints glibc's
//! per-arena figures and the largest mappings at each step.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvs_signaling_service::{spawn, ServiceConfig};

const VIEWERS_PER_CHANNEL: usize = 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The child: serves, prints `ready <addr> <arn>…`, then answers `rss <label>` lines.
fn serve(connections: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = ServiceConfig {
            max_connections: connections + 100,
            max_connections_per_ip: connections + 100,
            ..ServiceConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = spawn(listener, config, None);
        let channels = connections.div_ceil(VIEWERS_PER_CHANNEL);
        let arns: Vec<String> = (0..channels)
            .map(|i| {
                service
                    .state()
                    .create_channel(&format!("rss-{i}"))
                    .unwrap()
                    .arn
            })
            .collect();
        println!("ready {} {}", service.local_addr().unwrap(), arns.join(" "));
        let mut lines = std::io::stdin().lock().lines();
        while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
            if let Some(label) = line.strip_prefix("rss ") {
                if label == "after-malloc-trim" {
                    // SAFETY: no preconditions; see the service's own use.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
                // glibc's own count of live heap bytes, to tell retained-but-free memory
                // from memory still in use.
                // SAFETY: mallinfo2 only reads glibc's counters.
                let in_use = unsafe { libc::mallinfo2() }.uordblks / 1024;
                eprintln!("  [{label}] heap in use: {in_use} KiB");
                if std::env::var_os("RSS_FLOOD_STATS").is_some() {
                    unsafe { libc::malloc_stats() };
                    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
                    let mut cur = String::new();
                    for l in smaps.lines() {
                        if l.contains('-') && !l.starts_with(|c: char| c.is_ascii_uppercase()) {
                            cur = l.to_string();
                        } else if let Some(v) = l.strip_prefix("Rss:") {
                            let kb: u64 =
                                v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                            if kb >= 256 {
                                eprintln!("    {kb:>6} kB  {cur}");
                            }
                        }
                    }
                }
                println!("rss {label} {}", rss_kib());
            } else if line == "quit" {
                break;
            }
        }
        service.shutdown().await;
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--serve") {
        let n = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
        return serve(n);
    }
    let connections: usize = first.and_then(|a| a.parse().ok()).unwrap_or(2000);
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new(me)
        .args(["--serve", &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = from_child.next().unwrap().unwrap();
    let mut parts = ready.split_whitespace().skip(1);
    let addr = parts.next().unwrap().to_string();
    let arns: Vec<String> = parts.map(String::from).collect();
    let mut measure = |label: &str| -> u64 {
        writeln!(to_child, "rss {label}").unwrap();
        let line = from_child.next().unwrap().unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let baseline = measure("baseline");
    let sockets = runtime.block_on(async {
        let mut sockets = Vec::with_capacity(connections);
        for batch in (0..connections).collect::<Vec<_>>().chunks(100) {
            let opens = batch.iter().map(|&i| {
                let arn = kvs_aws::sigv4::uri_encode(&arns[i / VIEWERS_PER_CHANNEL], true);
                let url = format!("ws://{addr}/?X-Amz-ChannelARN={arn}&X-Amz-ClientId=v{i}");
                async move { tokio_tungstenite::connect_async(url).await }
            });
            // Each batch of 100 fills 10 channels with their 10 viewers: within the channels'
            // connect burst.
            for r in futures_util::future::join_all(opens).await {
                sockets.push(r.expect("connect").0);
            }
        }
        sockets
    });
    std::thread::sleep(Duration::from_millis(500));
    let peak = measure("with-connections-open");
    runtime.block_on(async {
        for mut ws in sockets {
            let _ = ws.close(None).await;
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = measure("after-close");
    let trimmed = measure("after-malloc-trim");
    // Channels remember departed viewers for the message TTL (60 s), so the master can still
    // address them; the service's periodic sweep then forgets them and releases the memory.
    let late = std::env::var_os("RSS_FLOOD_QUICK").is_none().then(|| {
        std::thread::sleep(Duration::from_secs(75));
        measure("75-s-later")
    });
    writeln!(to_child, "quit").unwrap();
    let _ = child.wait();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("connections:            {connections}");
    println!("baseline:               {:7.1} MiB", mib(baseline));
    println!(
        "with connections open:  {:7.1} MiB (+{:.1})",
        mib(peak),
        mib(peak.saturating_sub(baseline))
    );
    println!(
        "3 s after closing:      {:7.1} MiB (+{:.1})",
        mib(after),
        mib(after.saturating_sub(baseline))
    );
    println!(
        "then malloc_trim(0):    {:7.1} MiB (+{:.1})",
        mib(trimmed),
        mib(trimmed.saturating_sub(baseline))
    );
    if let Some(late) = late {
        println!(
            "75 s after closing:     {:7.1} MiB (+{:.1})",
            mib(late),
            mib(late.saturating_sub(baseline))
        );
    }
}
