//! Process figures from the kernel: resident set size and CPU time per thread.

use std::collections::BTreeMap;
use std::time::Duration;

/// Resident set size of this process in bytes (`VmRSS`).
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident set size of process `pid` ("self" for this one) in bytes; 0 when unknown.
pub fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user + system) of the whole process.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time per thread name, summed over threads of the same name (nanoseconds, from
/// `schedstat` or the scheduler's `sum_exec_runtime` in `sched`, falling back to clock ticks
/// from `stat` — 10 ms steps, too coarse for windows of a few seconds).
pub fn thread_cpu_by_name() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    for entry in dir.flatten() {
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .or_else(|| {
                // "se.sum_exec_runtime   :   1234.567890" (milliseconds).
                let sched = std::fs::read_to_string(path.join("sched")).ok()?;
                let ms = sched
                    .lines()
                    .find(|l| l.starts_with("se.sum_exec_runtime"))?
                    .split(':')
                    .nth(1)?
                    .trim()
                    .parse::<f64>()
                    .ok()?;
                Some((ms * 1e6) as u64)
            })
            .or_else(|| {
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = &stat[stat.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(t * 1_000_000_000 / ticks)
            })
            .unwrap_or(0);
        *out.entry(name).or_insert(0) += ns;
    }
    out
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime fills the struct we pass; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
