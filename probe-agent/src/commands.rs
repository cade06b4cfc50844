//! Commands that need no probes: configuration, replay of recorded lines,
//! and the KPI definitions.

use std::{io::Write as _, path::Path};

use serde_json::Value;

use crate::{
    config::{self, Config},
    rules::Engine,
};

/// Errors of the offline commands: all are bad input (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Record { path: String, line: usize, message: String },
}

/// Writes a command's output to stdout; a reader that went away (`| head`)
/// is a normal end, not a failure (print! would panic).
fn out(text: &str) -> Result<(), CommandError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CommandError::Read { path: "stdout".into(), source: e })
        }
        _ => Ok(()),
    }
}

/// `config --default`: the commented default configuration.
pub fn print_default_config() -> Result<(), CommandError> {
    out(config::DEFAULT)
}

/// `check-config FILE`.
pub fn check_config(path: &Path) -> Result<(), CommandError> {
    let cfg = config::load(path)?;
    let enabled = cfg.rules.iter().filter(|r| r.enabled).count();
    out(&format!(
        "{}: valid ({} rules, {enabled} enabled, profile {})\n",
        path.display(),
        cfg.rules.len(),
        cfg.profile
    ))
}

/// `replay FILE`: the alerts the rules would raise over recorded lines.
pub fn replay(path: &Path, config: Option<&Path>) -> Result<(), CommandError> {
    let cfg = match config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    let mut engine = Engine::new(&cfg);
    let mut out = std::io::stdout().lock();
    let mut rec = crate::recording::Recording::open(path)?;
    while let Some((secs, records)) = rec.next_interval()? {
        // Alerts recorded by the agent itself are not KPI records.
        let kpis: Vec<Value> = records.into_iter().filter(|r| r["type"] != "alert").collect();
        for alert in engine.evaluate(&kpis, secs) {
            if writeln!(out, "{alert}").is_err() {
                return Ok(()); // closed pipe: a normal end
            }
        }
    }
    rec.finish();
    Ok(())
}

/// `report FILE`.
pub fn report(path: &Path, config: Option<&Path>) -> Result<(), CommandError> {
    let cfg = match config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    out(&crate::report::report(path, &cfg)?)
}

/// `compare BASELINE CURRENT`.
pub fn compare(baseline: &Path, current: &Path) -> Result<(), CommandError> {
    out(&crate::report::compare(baseline, current)?)
}

/// `kpis`: every KPI the agent emits, as a Markdown table.
pub fn print_kpis() -> Result<(), CommandError> {
    const ROWS: &[[&str; 6]] = &[
        [
            "syscalls.count",
            "calls",
            "calls that returned in the interval",
            "raw_syscalls sys_exit",
            "host, container, process, syscall",
            "-",
        ],
        [
            "syscalls.error_rate_pct",
            "%",
            "calls returning -1..-4095 / calls x 100",
            "raw_syscalls sys_exit",
            "host, container, process, syscall",
            "-",
        ],
        [
            "syscalls.rate_per_s",
            "calls/s",
            "count / interval_s",
            "raw_syscalls sys_exit",
            "host, container, process, syscall",
            "-",
        ],
        [
            "syscalls.latency_ms",
            "ms",
            "sys_exit time - sys_enter time of the same thread (avg, p50, p95, p99, max)",
            "raw_syscalls sys_enter, sys_exit, sched_switch",
            "host, container, process, syscall",
            "-",
        ],
        [
            "cpu.cores",
            "cores",
            "on-CPU ns / interval ns",
            "sched_switch",
            "host, container, process",
            "-",
        ],
        [
            "cpu.utilization_pct",
            "%",
            "on-CPU ns / (CPUs x interval ns) x 100",
            "sched_switch",
            "host, container, process",
            "80 / 95 (host, container)",
        ],
        [
            "cpu.runq_latency_ms",
            "ms",
            "switch-in time - time it became runnable",
            "sched_wakeup, sched_wakeup_new, sched_switch",
            "host, container, process",
            "-",
        ],
        [
            "memory.utilization_pct",
            "%",
            "host: (MemTotal - MemAvailable) / MemTotal x 100; container: cgroup usage / limit x 100",
            "/proc/meminfo, cgroup memory files",
            "host, container",
            "80 / 95",
        ],
        ["memory.rss_bytes", "bytes", "resident set size", "/proc/<pid>/statm", "process", "-"],
        [
            "disk.utilization_pct",
            "%",
            "used / (used + available) x 100, per filesystem",
            "statvfs",
            "host",
            "80 / 95",
        ],
        [
            "tcp.connect_error_rate_pct",
            "%",
            "failed connects / connects x 100",
            "sock:inet_sock_set_state",
            "host, container, process",
            "1 / 5",
        ],
        [
            "tcp.connect_latency_ms",
            "ms",
            "SYN sent to established",
            "sock:inet_sock_set_state",
            "host, container, process",
            "-",
        ],
        [
            "tcp.rtt_ms",
            "ms",
            "smoothed RTT, sampled on data segments received",
            "tcp:tcp_probe",
            "host, container, process",
            "-",
        ],
        [
            "tcp.retransmits, resets_sent, resets_received",
            "count",
            "events in the interval",
            "tcp:tcp_retransmit_skb, tcp_send_reset, tcp_receive_reset",
            "host, container, process",
            "-",
        ],
        [
            "tcp.bytes_sent, bytes_received",
            "bytes",
            "payload through send and receive calls",
            "sock:sock_send_length, sock_recv_length",
            "host, container, process",
            "-",
        ],
        [
            "requests.count, rate_per_s",
            "requests, /s",
            "requests answered or failed in the interval",
            "tcp:tcp_probe, sock:sock_send_length, sock_recv_length",
            "host, container, process, endpoint",
            "-",
        ],
        [
            "requests.error_rate_pct",
            "%",
            "requests on connections reset or closed before the answer / requests x 100",
            "tcp:tcp_send_reset, tcp_receive_reset, sock:inet_sock_set_state",
            "host, container, process, endpoint",
            "1 / 5",
        ],
        [
            "requests.latency_ms",
            "ms",
            "server: first request byte arrives -> answer sent; client: request sent -> answer read",
            "tcp:tcp_probe, sock:sock_send_length, sock_recv_length",
            "host, container, process, endpoint",
            "avg: 500 / 1000",
        ],
        [
            "cost.projected_usd_month",
            "USD/month",
            "host price, or (busy cores x core-hour price + used GiB x GiB-hour price) x 730",
            "cpu, memory",
            "host, container",
            "-",
        ],
        [
            "cost.over_budget_pct",
            "%",
            "(projected - budget) / budget x 100",
            "cpu, memory, configuration",
            "host",
            "10 / 20",
        ],
    ];
    let mut text = String::from(
        "| KPI | unit | formula | kernel events / source | records | default thresholds (investigate / escalate) |\n|---|---|---|---|---|---|\n",
    );
    for r in ROWS {
        text += &format!("| `{}` | {} | {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3], r[4], r[5]);
    }
    out(&text)
}
