//! `cargo xtask bench`: what the agent adds to a system call, measured in
//! one run against the floor every syscall tracer pays and against bpftrace.
//!
//! Each round runs the same tight loop of `getppid` (a ~100 ns call) under
//! each configuration in turn; the table reports the median over rounds:
//!
//! - `none`: no program attached.
//! - `floor`: empty programs on raw `sys_enter`/`sys_exit` (`probe-agent floor`).
//!   Attaching anything there moves every call onto the kernel's slow path.
//! - `floor-clock`: programs that only read the clock at entry and exit
//!   (`probe-agent floor --clock`): the floor of any syscall *latency* tracer.
//! - `agent`: `probe-agent run` as deployed (BPF run-time statistics
//!   sampled 10% of the time).
//! - `agent-nostats`: the agent with `--bpf-stats-pct 0`.
//! - `bpftrace`: bpftrace keeping the same per-process, per-syscall latency
//!   histogram and error count.
//!
//! Prints a Markdown table and writes it as JSON to target/bench/syscalls.json.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

const BPFTRACE: &str = r#"
tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /@start[tid]/ {
  @lat[pid, args->id] = hist(nsecs - @start[tid]);
  if (args->ret < 0) { @err[pid, args->id] = count(); }
  delete(@start[tid]);
}
"#;

struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tracer {
    /// Starts `cmd` and waits until a line of its stdout or stderr contains `ready`.
    fn start(mut cmd: Command, ready: &str) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let t = Tracer { child, lines };
        loop {
            let line = t
                .lines
                .recv_timeout(Duration::from_secs(60))
                .context("tracer did not become ready")?;
            if line.contains(ready) {
                break;
            }
        }
        // Let attachment settle.
        std::thread::sleep(Duration::from_millis(300));
        Ok(t)
    }

    /// Stops it with SIGINT; returns the last agent record seen, if any.
    fn stop(mut self) -> Option<Value> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let mut last = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["type"] == "agent"
            {
                last = Some(v);
            }
        }
        last
    }
}

fn ns_per_call(workload: &Path, count: u64) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(workload)
        .args(["loop", "--count", &count.to_string()])
        .output()
        .context("running the loop workload")?;
    if !out.status.success() {
        bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_call"].as_f64().context("no ns_per_call")
}

fn ns_per_round_trip(workload: &Path, count: u64) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(workload)
        .args(["pingpong", "--count", &count.to_string()])
        .output()
        .context("running the pingpong workload")?;
    if !out.status.success() {
        bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_round_trip"].as_f64().context("no ns_per_round_trip")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(root: &Path, rounds: usize, calls: u64) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "probe-agent", "-p", "probe-tests"])
        .status()?;
    if !status.success() {
        bail!("build failed");
    }
    let bin = |name: &str| -> PathBuf { root.join("target/release").join(name) };
    let (agent, workload) = (bin("probe-agent"), bin("probe-workload"));
    if !Path::new("/sys/kernel/tracing/events").exists() {
        // bpftrace attaches classic tracepoints, whose ids live in tracefs.
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    let has_bpftrace =
        Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success());

    let configs: Vec<&str> = ["none", "floor", "floor-clock", "agent", "agent-nostats", "bpftrace"]
        .into_iter()
        .filter(|c| *c != "bpftrace" || has_bpftrace)
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut agent_rec = None;
    for round in 0..rounds {
        for (i, cfg) in configs.iter().enumerate() {
            let tracer = match *cfg {
                "none" => None,
                "floor" | "floor-clock" => {
                    let mut c = Command::new(&agent);
                    c.arg("floor");
                    if *cfg == "floor-clock" {
                        c.arg("--clock");
                    }
                    Some(Tracer::start(c, "floor programs attached")?)
                }
                "agent" | "agent-nostats" => {
                    let mut c = Command::new(&agent);
                    c.args(["run", "--interval", "1s"]);
                    if *cfg == "agent-nostats" {
                        c.args(["--bpf-stats-pct", "0"]);
                    }
                    Some(Tracer::start(c, "\"type\":\"status\"")?)
                }
                "bpftrace" => {
                    let mut c = Command::new("bpftrace");
                    c.args(["-e", BPFTRACE]);
                    Some(Tracer::start(c, "Attaching")?)
                }
                _ => unreachable!(),
            };
            let ns = ns_per_call(&workload, calls)?;
            samples[i].push(ns);
            if let Some(t) = tracer {
                let rec = t.stop();
                if *cfg == "agent" && rec.is_some() {
                    agent_rec = rec;
                }
            }
            eprintln!("round {}/{rounds} {cfg:>14}: {ns:.1} ns/call", round + 1);
        }
    }
    // Context switches: two threads on one CPU pass a byte over pipes; each
    // round trip is two switches and four system calls (read, write each).
    let mut switch_none = Vec::new();
    let mut switch_agent = Vec::new();
    let round_trips = (calls / 20).max(10_000);
    for round in 0..rounds {
        switch_none.push(ns_per_round_trip(&workload, round_trips)?);
        let mut c = Command::new(&agent);
        c.args(["run", "--interval", "1s"]);
        let t = Tracer::start(c, "\"type\":\"status\"")?;
        switch_agent.push(ns_per_round_trip(&workload, round_trips)?);
        t.stop();
        eprintln!(
            "round {}/{rounds} pingpong: none {:.0} ns, agent {:.0} ns",
            round + 1,
            switch_none[round],
            switch_agent[round]
        );
    }
    let (sw_none, sw_agent) = (median(&mut switch_none), median(&mut switch_agent));

    let med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let get = |name: &str| configs.iter().position(|c| *c == name).map(|i| med[i]);
    let base = get("none").context("no baseline")?;
    let floor_added = get("floor").map(|v| v - base);
    let clock_added = get("floor-clock").map(|v| v - base);
    let bpftrace_added = get("bpftrace").map(|v| v - base);

    let mut rows = Vec::new();
    println!(
        "| configuration | ns per getppid | ns added | vs floor | vs floor-clock | vs bpftrace |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, cfg) in configs.iter().enumerate() {
        let added = med[i] - base;
        let vs = |d: Option<f64>| d.filter(|d| *d > 0.0 && *cfg != "none").map(|d| added / d);
        let fmt = |r: Option<f64>| r.map_or("".into(), |r| format!("{r:.2}x"));
        println!(
            "| {cfg} | {:.1} | {added:.1} | {} | {} | {} |",
            med[i],
            fmt(vs(floor_added)),
            fmt(vs(clock_added)),
            fmt(vs(bpftrace_added))
        );
        rows.push(json!({"config": cfg, "ns_per_call": med[i], "ns_added": added,
            "added_vs_floor": vs(floor_added), "added_vs_floor_clock": vs(clock_added),
            "added_vs_bpftrace": vs(bpftrace_added), "samples": samples[i]}));
    }
    let syscall_added = get("agent").map_or(0.0, |a| a - base);
    let per_switch = (sw_agent - sw_none) / 2.0;
    let sched_only = per_switch - 2.0 * syscall_added;
    println!();
    println!(
        "| context switches (pipe ping-pong, one CPU) | ns per round trip | ns added per switch | of which scheduler programs (est.) |"
    );
    println!("|---|---:|---:|---:|");
    println!("| none | {sw_none:.0} | | |");
    println!("| agent | {sw_agent:.0} | {per_switch:.0} | {sched_only:.0} |");
    let switches = json!({"ns_per_round_trip_none": sw_none, "ns_per_round_trip_agent": sw_agent,
        "ns_added_per_switch": per_switch, "ns_added_per_switch_sched_programs_est": sched_only,
        "samples_none": switch_none, "samples_agent": switch_agent});
    let agent_summary = agent_rec.as_ref().map(|a| {
        json!({"cpu_pct_of_one_core": a["cpu_pct"], "rss_bytes": a["rss_bytes"],
               "programs_cpu_pct": a["programs_cpu_pct"], "programs": a["programs"]})
    });
    if let Some(a) = &agent_rec {
        println!();
        println!(
            "agent during the loop: {}% of one core, RSS {:.1} MiB; kernel programs: {}",
            a["cpu_pct"],
            a["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            a["programs"]
                .as_array()
                .map(|ps| ps
                    .iter()
                    .filter(|p| p["run_count"].as_u64().unwrap_or(0) > 0)
                    .map(|p| format!("{} {} ns/run", p["name"].as_str().unwrap_or(""), p["avg_ns"]))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    let out = json!({"benchmark": "syscall overhead", "calls_per_sample": calls, "rounds": rounds,
        "rows": rows, "context_switches": switches, "agent": agent_summary});
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("syscalls.json"), serde_json::to_string_pretty(&out)?)?;
    eprintln!("wrote {}", dir.join("syscalls.json").display());
    Ok(())
}
