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
//! - `rezolus`: the Rezolus agent with only its system-call samplers
//!   (`syscall_counts`, `syscall_latency`: host-wide counts and latency
//!   histograms per call family), when a `rezolus` binary is on the PATH
//!   or in `$REZOLUS` (`cargo install rezolus --locked` builds it, with
//!   Debian's clang and libelf-dev). The nginx rows run it with every
//!   sampler it has.
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

pub(crate) struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// What stops it: SIGINT, or SIGTERM for a tracer that ignores SIGINT.
    stop_signal: i32,
}

/// The port the bench's Rezolus listens on.
const REZOLUS_PORT: u16 = 14241;

/// The Rezolus binary, if one runs here.
pub(crate) fn rezolus() -> Option<PathBuf> {
    let bin = std::env::var_os("REZOLUS").map_or_else(|| PathBuf::from("rezolus"), PathBuf::from);
    Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success()).then_some(bin)
}

/// Starts Rezolus with only its system-call samplers (`all`: every
/// sampler), and checks that they run: its metrics name system calls.
pub(crate) fn start_rezolus(bin: &Path, dir: &Path, all: bool) -> Result<Tracer> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join(if all { "rezolus-all.toml" } else { "rezolus-syscalls.toml" });
    let samplers = if all {
        "[defaults]\nenabled = true\n".to_string()
    } else {
        "[defaults]\nenabled = false\n[samplers.syscall_counts]\nenabled = true\n\
         [samplers.syscall_latency]\nenabled = true\n"
            .to_string()
    };
    std::fs::write(
        &conf,
        format!(
            "[general]\nlisten = \"127.0.0.1:{REZOLUS_PORT}\"\n[log]\nlevel = \"info\"\n{samplers}"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg(&conf);
    let mut t = Tracer::start_listening(cmd, REZOLUS_PORT)?;
    // Rezolus 5 ignores SIGINT.
    t.stop_signal = libc::SIGTERM;
    let metrics = http_get(REZOLUS_PORT, "/metrics/json")?;
    if !metrics.contains("syscall_latency") {
        bail!("Rezolus runs but reports no system-call metric: its samplers did not load");
    }
    Ok(t)
}

/// The body of an HTTP GET on loopback.
fn http_get(port: u16, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    Ok(ureq::get(&url).call().with_context(|| url.clone())?.body_mut().read_to_string()?)
}

impl Tracer {
    /// Starts `cmd` and waits until a line of its stdout or stderr contains `ready`.
    pub(crate) fn start(mut cmd: Command, ready: &str) -> Result<Self> {
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
        let t = Tracer { child, lines, stop_signal: libc::SIGINT };
        if ready.is_empty() {
            return Ok(t);
        }
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

    /// Starts `cmd` and waits until it accepts connections on `port`
    /// (a tracer that prints nothing when its programs are attached).
    pub(crate) fn start_listening(cmd: Command, port: u16) -> Result<Self> {
        let what = format!("{cmd:?}");
        let mut t = Self::start(cmd, "")?;
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(300));
                return Ok(t);
            }
            if let Some(status) = t.child.try_wait()? {
                let said: Vec<String> = t.lines.try_iter().collect();
                bail!("{what} exited ({status}): {}", said.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{what} did not listen on port {port} within 60 s")
    }

    /// Stops it with SIGINT; returns every JSON record it wrote.
    fn stop_all(mut self) -> Vec<Value> {
        crate::kill(self.child.id(), self.stop_signal);
        let _ = self.child.wait();
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                out.push(v);
            }
        }
        out
    }

    /// Stops it with SIGINT; returns the agent record of the last whole
    /// interval (the one written at the stop covers a part only), if any.
    fn stop(mut self) -> Option<Value> {
        crate::kill(self.child.id(), self.stop_signal);
        let _ = self.child.wait();
        let mut agent = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["type"] == "agent"
            {
                agent.push(v);
            }
        }
        let whole = agent.len().saturating_sub(2);
        agent.into_iter().nth(whole)
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

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Checks for root and builds the release agent and workload; returns
/// their paths.
pub(crate) fn build_release(root: &Path, what: &str) -> Result<(PathBuf, PathBuf)> {
    if !crate::is_root() {
        bail!("the {what} loads eBPF programs: run it as root");
    }
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "probe-agent", "-p", "probe-tests"])
        .status()?;
    if !status.success() {
        bail!("build failed");
    }
    let bin = |name: &str| -> PathBuf { root.join("target/release").join(name) };
    Ok((bin("probe-agent"), bin("probe-workload")))
}

pub fn run(root: &Path, rounds: usize, calls: u64, server_only: bool) -> Result<()> {
    let (agent, workload) = build_release(root, "benchmark")?;
    if !Path::new("/sys/kernel/tracing/events").exists() {
        // bpftrace attaches classic tracepoints, whose ids live in tracefs.
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    if server_only {
        let v = server::run(root, &agent, rezolus().as_deref(), rounds)?;
        std::fs::create_dir_all(root.join("target/bench"))?;
        std::fs::write(root.join("target/bench/server.json"), serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let has_bpftrace =
        Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success());

    let rezolus = rezolus();
    if rezolus.is_none() {
        eprintln!("no rezolus on the PATH (nor $REZOLUS): its rows are left out");
    }
    let configs: Vec<&str> =
        ["none", "floor", "floor-clock", "agent", "agent-nostats", "bpftrace", "rezolus"]
            .into_iter()
            .filter(|c| *c != "bpftrace" || has_bpftrace)
            .filter(|c| *c != "rezolus" || rezolus.is_some())
            .collect();
    let rezolus_dir = root.join("target/bench/rezolus");
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
                "rezolus" => Some(start_rezolus(
                    rezolus.as_deref().context("rezolus")?,
                    &rezolus_dir,
                    false,
                )?),
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
    let rezolus_added = get("rezolus").map(|v| v - base);

    let mut rows = Vec::new();
    println!(
        "| configuration | ns per getppid | ns added | vs floor | vs floor-clock | vs bpftrace | vs rezolus |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, cfg) in configs.iter().enumerate() {
        let added = med[i] - base;
        let vs = |d: Option<f64>| d.filter(|d| *d > 0.0 && *cfg != "none").map(|d| added / d);
        let fmt = |r: Option<f64>| r.map_or("".into(), |r| format!("{r:.2}x"));
        println!(
            "| {cfg} | {:.1} | {added:.1} | {} | {} | {} | {} |",
            med[i],
            fmt(vs(floor_added)),
            fmt(vs(clock_added)),
            fmt(vs(bpftrace_added)),
            fmt(vs(rezolus_added))
        );
        rows.push(json!({"config": cfg, "ns_per_call": med[i], "ns_added": added,
            "added_vs_floor": vs(floor_added), "added_vs_floor_clock": vs(clock_added),
            "added_vs_bpftrace": vs(bpftrace_added), "added_vs_rezolus": vs(rezolus_added),
            "samples": samples[i]}));
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
            "agent during the loop (its last whole 1 s interval): {}% of one core, RSS {:.1} MiB; kernel programs: {}",
            a["cpu_pct"],
            a["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            a["programs"]
                .as_array()
                .map(|ps| ps
                    .iter()
                    .filter(|p| p["runs"].as_u64().unwrap_or(0) > 0)
                    .map(|p| {
                        // Measured in the stats window if sampled, else priced.
                        let ns = p["avg_ns"].as_f64().or(p["cost_per_run_ns"].as_f64());
                        format!(
                            "{} {} runs, {:.0} ns/run",
                            p["name"].as_str().unwrap_or(""),
                            p["runs"],
                            ns.unwrap_or(0.0)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    let nginx = server::run(root, &agent, rezolus.as_deref(), rounds.min(5))?;
    let out = json!({"benchmark": "syscall overhead", "calls_per_sample": calls, "rounds": rounds,
        "rows": rows, "context_switches": switches, "agent": agent_summary, "nginx": nginx});
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("syscalls.json"), serde_json::to_string_pretty(&out)?)?;
    eprintln!("wrote {}", dir.join("syscalls.json").display());
    Ok(())
}

/// nginx and wrk on loopback, with and without the agent: requests per
/// second lost, and the agent's request figures against wrk's own.
pub mod server {
    use std::{
        path::Path,
        process::{Child, Command, Stdio},
        time::Duration,
    };

    use anyhow::{Context as _, Result, bail};
    use serde_json::{Value, json};

    use super::{Tracer, median, start_rezolus};

    const PORT: u16 = 18080;

    struct Nginx(Child);

    impl Drop for Nginx {
        fn drop(&mut self) {
            crate::kill(self.0.id(), libc::SIGQUIT);
            let _ = self.0.wait();
        }
    }

    fn start_nginx(dir: &Path) -> Result<Nginx> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;\n\
               uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc; keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{PORT}; root {d}/www;\n                 location = / {{ return 200 \"ok\\n\"; }}\n                 location /page {{ gzip on; gzip_comp_level 6; gzip_min_length 0; default_type text/html; }} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        // A 4 KiB page of varied text (an API answer), compressed afresh for
        // every request.
        std::fs::create_dir_all(dir.join("www"))?;
        let page: String = (0..2000u32)
            .map(|i| format!("<p>item {i} {:x}</p>\n", i.wrapping_mul(2654435761)))
            .collect::<String>()
            .chars()
            .take(4 << 10)
            .collect();
        std::fs::write(dir.join("www/page"), page)?;
        let child = Command::new("taskset")
            .args(["-c", "0", "nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Nginx(child))
    }

    /// The two requests measured: (label, path, extra wrk arguments).
    pub const CASES: [(&str, &str, &[&str]); 2] = [
        ("constant (2 bytes)", "/", &[]),
        ("4 KiB page, gzip", "/page", &["-H", "Accept-Encoding: gzip"]),
    ];

    /// (requests, seconds, requests/s, average latency ms) from wrk's output.
    fn wrk(secs: u32, path: &str, extra: &[&str]) -> Result<(f64, f64, f64, f64)> {
        let out = Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c16"])
            .args(extra)
            .arg(format!("-d{secs}s"))
            .arg(format!("http://127.0.0.1:{PORT}{path}"))
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("wrk failed: {text}");
        }
        let mut reqs = None;
        let mut rps = None;
        let mut lat = None;
        for line in text.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"Latency") {
                let v = words.get(1).context("latency")?;
                let (num, unit) =
                    v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
                let ms = num.parse::<f64>()?
                    * match unit {
                        "us" => 1e-3,
                        "ms" => 1.0,
                        "s" => 1e3,
                        _ => 1.0,
                    };
                lat = Some(ms);
            } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
                reqs = Some(words[0].parse::<f64>()?);
                let secs = words[3].trim_end_matches(',').trim_end_matches('s').parse::<f64>()?;
                rps = rps.or(Some(reqs.unwrap_or(0.0) / secs));
            } else if words.first() == Some(&"Requests/sec:") {
                rps = Some(words[1].parse::<f64>()?);
            }
        }
        let reqs = reqs.context("no request count in wrk's output")?;
        let rps = rps.context("no Requests/sec")?;
        Ok((reqs, reqs / rps, rps, lat.context("no latency")?))
    }

    /// The median of `v` and its range, as "median (lo..hi)", the median
    /// followed by `unit`.
    fn with_range_in(v: &[f64], digits: usize, unit: &str) -> (f64, String) {
        let mut sorted = v.to_vec();
        let m = median(&mut sorted);
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        (m, format!("{m:.digits$}{unit} ({lo:.digits$}..{hi:.digits$})"))
    }

    fn with_range(v: &[f64], digits: usize) -> (f64, String) {
        with_range_in(v, digits, "")
    }

    /// A share with its range: "25.2% (23.5..26.3)".
    fn pct_range(v: &[f64]) -> (f64, String) {
        with_range_in(v, 1, "%")
    }

    /// Microseconds each request took longer, and the share of requests
    /// per second lost, pair by pair (a round's run without a tracer
    /// against its run under one: the machine's speed drifts between
    /// rounds).
    fn added(none: &[f64], with: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let us = none.iter().zip(with).map(|(a, b)| 1e6 / b - 1e6 / a).collect();
        let lost = none.iter().zip(with).map(|(a, b)| (a - b) / a * 100.0).collect();
        (us, lost)
    }

    pub fn run(root: &Path, agent: &Path, rezolus: Option<&Path>, rounds: usize) -> Result<Value> {
        let dir = root.join("target/bench/nginx");
        let _nginx = start_nginx(&dir)?;
        let mut out = Vec::new();
        let mut rows = Vec::new();
        let mut agreement = Vec::new();
        let mut profiles = Vec::new();
        for (label, path, extra) in CASES {
            wrk(1, path, extra)?; // warm up
            let (mut none, mut with, mut floor, mut rez) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());

            let (mut count_err, mut rate_err, mut lat_err, mut client_lat_err) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let (_, _, rps0, lat0) = wrk(5, path, extra)?;
                none.push(rps0);
                let mut c = Command::new(agent);
                c.args(["run", "--interval", "60s", "--comm", "nginx", "--comm", "wrk"]);
                let t = Tracer::start(c, "\"type\":\"status\"")?;
                let (reqs, secs, rps1, lat1) = wrk(5, path, extra)?;
                with.push(rps1);
                let records = t.stop_all();
                let endpoint = |role: &str| {
                    records
                        .iter()
                        .find(|r| r["type"] == "endpoint" && r["role"] == role && r["port"] == PORT)
                };
                let (Some(s), Some(cl)) = (endpoint("server"), endpoint("client")) else {
                    bail!("the agent wrote no endpoint records for port {PORT}");
                };
                let answered = s["requests"]["count"].as_f64().unwrap_or(0.0)
                    - s["requests"]["errors"].as_f64().unwrap_or(0.0);
                let avg = s["requests"]["latency_ms"]["avg"].as_f64().unwrap_or(0.0);
                let client_avg = cl["requests"]["latency_ms"]["avg"].as_f64().unwrap_or(0.0);
                count_err.push((answered - reqs) / reqs * 100.0);
                rate_err.push((answered / secs - rps1) / rps1 * 100.0);
                lat_err.push((avg - lat1) / lat1 * 100.0);
                client_lat_err.push((client_avg - lat1) / lat1 * 100.0);
                // The same agent at its cost floor: everything but requests
                // shed, as the overhead budget leaves it under heavy load.
                let mut c = Command::new(agent);
                c.args(["run", "--interval", "60s", "--comm", "nginx", "--comm", "wrk"]);
                c.args(["--start-at-floor", "--overhead-budget-pct", "0"]);
                let t = Tracer::start(c, "\"type\":\"status\"")?;
                let (_, _, rps2, _) = wrk(5, path, extra)?;
                floor.push(rps2);
                let records = t.stop_all();
                let served: f64 = records
                    .iter()
                    .filter(|r| {
                        r["type"] == "endpoint" && r["role"] == "server" && r["port"] == PORT
                    })
                    .filter_map(|r| r["requests"]["count"].as_f64())
                    .sum();
                if served == 0.0 {
                    bail!("at the floor the agent counted no request on port {PORT}");
                }
                // Rezolus with every sampler it has, on the same load.
                if let Some(bin) = rezolus {
                    let t = start_rezolus(bin, &root.join("target/bench/rezolus"), true)?;
                    let (_, _, rps3, _) = wrk(5, path, extra)?;
                    rez.push(rps3);
                    t.stop_all();
                }
                eprintln!(
                    "round {}/{rounds} nginx {label}: none {rps0:.0} req/s ({lat0:.3} ms), agent {rps1:.0} req/s ({lat1:.3} ms); \
                     agent saw {answered:.0} of wrk's {reqs:.0} requests, server avg {avg:.3} ms, client avg {client_avg:.3} ms",
                    round + 1
                );
            }
            let n = median(&mut none.clone());
            let (us, lost) = added(&none, &with);
            let ((us_added, us_txt), (loss, loss_txt)) = (with_range(&us, 2), pct_range(&lost));
            let (fus, flost) = added(&none, &floor);
            let ((floor_us_added, fus_txt), (floor_loss, floor_loss_txt)) =
                (with_range(&fus, 2), pct_range(&flost));
            let rez_row = if rez.is_empty() {
                " | ".to_string()
            } else {
                let (rus, rlost) = added(&none, &rez);
                format!("{} | {}", pct_range(&rlost).1, with_range(&rus, 2).1)
            };
            let (ce, re, le, cle) = (
                median(&mut count_err),
                median(&mut rate_err),
                median(&mut lat_err),
                median(&mut client_lat_err),
            );
            rows.push(format!(
                "| {label} | {n:.0} | {:.1} | {loss_txt} | {us_txt} | {floor_loss_txt} | {fus_txt} | {rez_row} |",
                1e6 / n
            ));
            for at_floor in [false, true] {
                profiles.push((
                    label,
                    at_floor,
                    where_the_time_goes(agent, path, extra, at_floor)?,
                ));
            }
            agreement.push(format!("| {label} | {ce:+.2}% | {re:+.2}% | {le:+.1}% | {cle:+.1}% |"));
            out.push(
                json!({"case": label, "rps_none": none, "rps_agent": with, "rps_lost_pct": loss,
                "us_added_per_request": us_added, "rps_floor": floor,
                "us_added_per_request_floor": floor_us_added, "rps_lost_pct_floor": floor_loss,
                "rps_rezolus": rez, "count_error_pct": ce, "rate_error_pct": re,
                "latency_error_pct": le, "client_latency_error_pct": cle}),
            );
        }
        println!();
        println!(
            "| nginx + wrk (loopback, 16 connections, 5 s; median of {rounds}, range over rounds) | requests/s, none | us per request | agent: lost | agent: us added per request | agent at its floor: lost | at its floor: us added | rezolus: lost | rezolus: us added |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!("{r}");
        }
        println!();
        println!(
            "| agreement with wrk (median of {rounds}) | requests answered | requests/s | avg latency, server side | avg latency, client side |"
        );
        println!("|---|---:|---:|---:|---:|");
        for r in &agreement {
            println!("{r}");
        }
        for (label, at_floor, profile) in &profiles {
            let agent = if *at_floor { "agent at its floor" } else { "agent with every KPI" };
            println!();
            println!(
                "| where the time goes: {label}, {agent} (one more run, with BPF run-time statistics on) | runs per request | ns per run | ns per request |"
            );
            println!("|---|---:|---:|---:|");
            let total: f64 = profile.iter().map(|(_, _, _, t)| t).sum();
            for (name, runs, ns, per_req) in profile {
                println!("| {name} | {runs:.2} | {ns:.0} | {per_req:.0} |");
            }
            println!("| all programs | | | {total:.0} |");
        }
        Ok(json!(out))
    }

    /// Each program's share of a request: one more run of the agent with
    /// every KPI (or at its floor), with the kernel's BPF run-time
    /// statistics on (which add their own clock reads to every run, so this
    /// run is not one of the rounds): per program, runs per request, ns per
    /// run, ns per request, dearest first.
    fn where_the_time_goes(
        agent: &Path,
        path: &str,
        extra: &[&str],
        at_floor: bool,
    ) -> Result<Vec<(String, f64, f64, f64)>> {
        let programs = || -> Result<Vec<Value>> {
            let out = Command::new("bpftool").args(["prog", "show", "--json"]).output()?;
            Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout)?)
        };
        let stats = |on: bool| {
            std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        };
        let mut c = Command::new(agent);
        c.args(["run", "--interval", "60s", "--comm", "nginx", "--comm", "wrk"]);
        if at_floor {
            c.args(["--start-at-floor", "--overhead-budget-pct", "0"]);
        }
        let t = Tracer::start(c, "\"type\":\"status\"")?;
        stats(true)?;
        let before = programs()?;
        let run = wrk(5, path, extra);
        let after = programs();
        stats(false)?;
        t.stop_all();
        let (reqs, _, _, _) = run?;
        let after = after?;
        let key = |p: &Value| p["id"].as_u64();
        let mut rows: Vec<(String, f64, f64, f64)> = after
            .iter()
            .filter_map(|p| {
                let b = before.iter().find(|b| key(b) == key(p));
                let field = |v: &Value, f: &str| v[f].as_f64().unwrap_or(0.0);
                let runs = field(p, "run_cnt") - b.map_or(0.0, |b| field(b, "run_cnt"));
                let ns = field(p, "run_time_ns") - b.map_or(0.0, |b| field(b, "run_time_ns"));
                let name = p["name"].as_str()?.to_string();
                (runs / reqs >= 0.01).then_some((name, runs / reqs, ns / runs, ns / reqs))
            })
            .collect();
        rows.sort_by(|a, b| b.3.total_cmp(&a.3));
        Ok(rows)
    }
}
