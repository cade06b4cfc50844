//! CPU KPIs against ground truth: a process burning one core, the host's
//! utilization against /proc/stat, and run-queue latency under contention.

use std::time::Duration;

use probe_tests::{Agent, Workload, of, require_bpf};
use serde_json::Value;

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn proc_stat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let idle = cpu[3] + cpu[4];
    let total: u64 = cpu[..8].iter().sum();
    (total - idle, total)
}

/// Collects the host records of full intervals, each with /proc/stat's
/// utilization over the same window (read as the record arrives).
fn host_intervals(agent: &mut Agent, n: usize) -> Vec<(Value, f64)> {
    let mut out = Vec::new();
    agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    let mut before = proc_stat();
    for _ in 0..n {
        let host = agent.wait_for(|r| r["type"] == "host", Duration::from_secs(10)).unwrap();
        let after = proc_stat();
        let pct = (after.0 - before.0) as f64 * 100.0 / (after.1 - before.1) as f64;
        before = after;
        out.push((host, pct));
    }
    out
}

#[test]
fn busy_process_is_one_core_and_host_agrees_with_proc_stat() {
    require_bpf!();
    let mut w =
        Workload::start(&["spin", "--name", "pw-spin", "--ms", "7000", "--threads", "1"]).unwrap();
    let pid = w.pid;
    let mut agent = Agent::start(&["--interval", "2s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    let hosts = host_intervals(&mut agent, 2);
    let truth = w.finish().unwrap();
    let records = agent.stop().unwrap();

    // Whole intervals while it spun: the second and third process records.
    let procs: Vec<&Value> = of(&records, "process", pid).collect();
    assert!(procs.len() >= 3, "{procs:?}");
    for p in &procs[1..3] {
        let cores = p["cpu"]["cores"].as_f64().unwrap();
        eprintln!("pw-spin: {cores} cores");
        assert!((cores - 1.0).abs() <= 0.05, "busy process at {cores} cores, want 1.00 +- 0.05");
        assert_eq!(p["comm"], "pw-spin");
        assert!(p["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    }
    // Over the whole run, the agent's CPU time matches the kernel's rusage.
    let total_ns: f64 = procs
        .iter()
        .map(|p| p["cpu"]["cores"].as_f64().unwrap() * p["interval_s"].as_f64().unwrap() * 1e9)
        .sum();
    let truth_ns = truth["cpu_ns"].as_f64().unwrap();
    assert!(
        (total_ns - truth_ns).abs() / truth_ns < 0.03,
        "agent {total_ns} ns vs rusage {truth_ns} ns"
    );

    for (host, stat_pct) in &hosts {
        let got = host["cpu"]["utilization_pct"].as_f64().unwrap();
        eprintln!("host: agent {got}% vs /proc/stat {stat_pct:.2}%");
        assert!((got - stat_pct).abs() <= 3.0, "host utilization {got}% vs /proc/stat {stat_pct}%");
        assert_eq!(
            host["cpus"].as_u64().unwrap(),
            std::thread::available_parallelism().unwrap().get() as u64
        );
        let cores = host["cpu"]["cores"].as_f64().unwrap();
        assert!(cores >= 0.95, "one core spins, the host shows {cores} busy cores");
    }
}

#[test]
fn oversubscribed_cpus_show_run_queue_latency() {
    require_bpf!();
    let cpus = std::thread::available_parallelism().unwrap().get();
    // Idle: a sleeper's wakeups find an idle CPU.
    let mut idle = Workload::start(&[
        "sleep",
        "--name",
        "pw-idle",
        "--short-ms",
        "2",
        "--long-ms",
        "2",
        "--count",
        "300",
    ])
    .unwrap();
    let agent = Agent::start(&["--interval", "60s", "--pid", &idle.pid.to_string()]).unwrap();
    idle.go().unwrap();
    let idle_pid = idle.pid;
    idle.finish().unwrap();
    let records = agent.stop().unwrap();
    let idle_p50 =
        of(&records, "process", idle_pid).next().unwrap()["cpu"]["runq_latency_ms"]["p50"]
            .as_f64()
            .unwrap();

    // Busy: twice as many spinning threads as CPUs, so each waits its turn.
    let threads = (2 * cpus).to_string();
    let mut busy =
        Workload::start(&["spin", "--name", "pw-crowd", "--ms", "3000", "--threads", &threads])
            .unwrap();
    let agent = Agent::start(&["--interval", "60s", "--pid", &busy.pid.to_string()]).unwrap();
    busy.go().unwrap();
    let busy_pid = busy.pid;
    busy.finish().unwrap();
    let records = agent.stop().unwrap();
    let p = of(&records, "process", busy_pid).next().unwrap();
    let runq = &p["cpu"]["runq_latency_ms"];
    let (p50, avg) = (runq["p50"].as_f64().unwrap(), runq["avg"].as_f64().unwrap());
    eprintln!("run-queue latency: idle p50 {idle_p50} ms; crowded p50 {p50} ms, avg {avg} ms");
    assert!(p50 > 10.0 * idle_p50 && avg > 0.5, "crowded p50 {p50} ms vs idle {idle_p50} ms");
    let cores = p["cpu"]["cores"].as_f64().unwrap();
    assert!(cores > cpus as f64 * 0.9, "{threads} spinning threads use {cores} cores of {cpus}");
}
