//! `cargo xtask stream`: how many bytes the agent's default stream writes
//! per interval, on this host near idle and busy, at the defaults (10 s
//! intervals, `--top 50`, `--syscalls top`), as a log pipeline priced by
//! volume would receive it. `--readme` writes the table into the README.
//!
//! Near idle: the intervals in which the host's CPU was under 10% busy
//! (this machine is shared: others' builds come and go; those intervals
//! are skipped and counted). Busy: nginx (two workers) under wrk (two
//! threads, 32 connections, flat out: both CPUs busy), a TCP server of the
//! workload answering keep-alive clients, and a shell starting 20
//! short-lived processes a second. The streams are kept in target/stream/.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The targets of issue #18: at most 50 MB a day near idle, 500 MB busy.
const IDLE_MB_DAY: f64 = 50.0;
const BUSY_MB_DAY: f64 = 500.0;
const INTERVALS_PER_DAY: f64 = 8640.0;
const PORT: u16 = 18_419;

/// Bytes and records per record type over the full intervals measured.
#[derive(Default)]
struct Sizes {
    intervals: u64,
    bytes: BTreeMap<String, u64>,
    records: BTreeMap<String, u64>,
    /// Intervals left out: the host was busier than the case asks.
    skipped: u64,
    /// The agent's own CPU, percent of one core, summed over intervals.
    agent_cpu_pct: f64,
    /// From the agent records: syscall records cut, processes cut as idle
    /// and by --top, processes active.
    syscalls_cut: u64,
    cut_idle: u64,
    cut_top: u64,
    active: u64,
}

impl Sizes {
    fn per_interval(&self) -> f64 {
        self.bytes.values().sum::<u64>() as f64 / self.intervals.max(1) as f64
    }
}

/// Runs the agent at its defaults for `intervals` full intervals after the
/// first (with `max_cpu_pct`, only those in which the host's CPU was less
/// busy, for at most `patience`), adds up what it writes, and keeps the
/// stream in `keep`.
fn measure(
    agent: &Path,
    extra: &[&str],
    intervals: u64,
    max_cpu_pct: Option<f64>,
    patience: Duration,
    keep: &Path,
) -> Result<Sizes> {
    use std::io::Write as _;
    let mut kept = std::io::BufWriter::new(std::fs::File::create(keep)?);
    let deadline = std::time::Instant::now() + patience;
    let mut child = Command::new(agent)
        .args(["run", "--interval", "10s"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut sizes = Sizes::default();
    // Records of the interval being read, until its agent record.
    let mut pending: Vec<(String, usize, f64)> = Vec::new();
    let mut seen = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(kept, "{line}")?;
        let rec: Value = serde_json::from_str(&line)?;
        let kind = rec["type"].as_str().unwrap_or("?").to_string();
        if kind == "status" {
            continue;
        }
        let host_cpu = rec["cpu"]["utilization_pct"].as_f64().unwrap_or(0.0);
        pending.push((kind.clone(), line.len() + 1, host_cpu));
        if kind != "agent" {
            continue;
        }
        seen += 1;
        let host_cpu = pending.iter().find(|p| p.0 == "host").map_or(0.0, |p| p.2);
        let quiet = max_cpu_pct.is_none_or(|max| host_cpu < max);
        if !quiet {
            sizes.skipped += 1;
            eprintln!("  (host CPU {host_cpu:.0}%: not near idle, skipped)");
        }
        // The first interval includes start-up: not counted.
        if seen > 1 && quiet {
            sizes.intervals += 1;
            for (k, n, _) in pending.drain(..) {
                *sizes.bytes.entry(k.clone()).or_default() += n as u64;
                *sizes.records.entry(k).or_default() += 1;
            }
            let n = |k: &str| rec[k].as_u64().unwrap_or(0);
            sizes.syscalls_cut += n("syscalls_cut");
            sizes.cut_idle += n("processes_cut_idle");
            sizes.cut_top += n("processes_cut_by_top");
            sizes.active += n("processes_active");
            sizes.agent_cpu_pct += rec["cpu_pct"].as_f64().unwrap_or(0.0);
            eprintln!(
                "  interval {}: {} bytes so far per interval",
                sizes.intervals,
                sizes.per_interval() as u64
            );
        }
        pending.clear();
        if sizes.intervals >= intervals || std::time::Instant::now() > deadline {
            break;
        }
    }
    crate::kill(child.id(), libc::SIGINT);
    let _ = child.wait();
    if sizes.intervals == 0 {
        bail!("no interval measured ({} skipped as too busy)", sizes.skipped);
    }
    Ok(sizes)
}

/// Children, each leading its own process group, killed with their
/// groups on drop (nginx's workers, the shell loops' children).
struct Load(Vec<Child>);

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) takes two integers and touches no memory of ours.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// A command in a process group of its own.
fn grouped(program: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    c.process_group(0);
    c
}

fn busy(root: &Path, workload: &Path) -> Result<Load> {
    let dir = root.join("target/stream/nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; worker_processes 2; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px; \
             fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
             server {{ listen 127.0.0.1:{PORT}; location = / {{ return 200 \"ok\\n\"; }} }} }}\n"
        ),
    )?;
    let mut load = Load(Vec::new());
    load.0.push(
        grouped("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nginx (scripts/setup.sh installs it)")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    load.0.push(
        grouped("wrk")
            .args(["-t2", "-c32", "-d1h", &format!("http://127.0.0.1:{PORT}/")])
            .stdout(Stdio::null())
            .spawn()
            .context("wrk")?,
    );
    // The workload's own server and keep-alive clients (endpoints with a
    // known answer time), restarted by a shell loop.
    let (w, ready) = (workload.display(), root.join("target/stream/server.ready"));
    let script = format!(
        "{w} tcp-server --name pw-stream --delay-ms 5 > {r} & sleep 0.5; \
         port=$(cut -d' ' -f3 {r}); \
         while true; do echo go | {w} tcp-client --port $port --requests 2000 --keepalive \
         >/dev/null; done",
        r = ready.display()
    );
    load.0.push(grouped("sh").args(["-c", &script]).stdout(Stdio::null()).spawn()?);
    // 20 short-lived processes a second, as scripts and cron jobs make.
    load.0.push(
        grouped("sh")
            .args(["-c", "while true; do for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do ls /proc >/dev/null; done; sleep 1; done"])
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(2));
    Ok(load)
}

fn row(name: &str, s: &Sizes) -> String {
    let per = s.per_interval();
    let of = |k: &str| {
        let n = s.records.get(k).copied().unwrap_or(0) as f64 / s.intervals.max(1) as f64;
        let b = s.bytes.get(k).copied().unwrap_or(0) as f64 / s.intervals.max(1) as f64;
        format!("{n:.1} ({:.1} KB)", b / 1000.0)
    };
    format!(
        "| {name} | {} | {:.1} KB | {:.0} MB | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.2}% |",
        s.intervals,
        per / 1000.0,
        per * INTERVALS_PER_DAY / 1e6,
        of("host"),
        of("process"),
        of("endpoint"),
        of("syscall"),
        of("agent"),
        s.active as f64 / s.intervals.max(1) as f64,
        s.cut_idle as f64 / s.intervals.max(1) as f64,
        s.syscalls_cut as f64 / s.intervals.max(1) as f64,
        s.agent_cpu_pct / s.intervals.max(1) as f64,
    )
}

pub fn run(root: &Path, intervals: u64, readme: bool) -> Result<()> {
    let (agent, workload) = crate::bench::build_release(root, "stream measurement")?;
    let out = root.join("target/stream");
    std::fs::create_dir_all(&out)?;
    eprintln!("near idle: {intervals} intervals of 10 s with the host's CPU under 10%");
    let _ = std::fs::remove_file(out.join("server.ready"));
    let wait = Duration::from_secs(900);
    let idle = measure(&agent, &[], intervals, Some(10.0), wait, &out.join("idle.jsonl"))?;
    eprintln!("busy: {intervals} intervals of 10 s, then as many with every record");
    let load = busy(root, &workload)?;
    let hot = measure(&agent, &[], intervals, None, wait, &out.join("busy.jsonl"))?;
    let everything = ["--syscalls", "all", "--min-cpu-pct", "0"];
    let all = measure(&agent, &everything, intervals, None, wait, &out.join("busy-all.jsonl"))?;
    drop(load);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut table = String::from(
        "| host | intervals | bytes per interval | per day (10 s) | host records | process records | endpoint records | syscall records | agent records | processes active / cut as idle / syscall records cut, per interval | agent CPU (of a core) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    table += &row("near idle", &idle);
    table.push('\n');
    table += &row("busy", &hot);
    table.push('\n');
    table += &row("busy, every record (`--syscalls all --min-cpu-pct 0`)", &all);
    table.push('\n');
    if idle.skipped > 0 {
        table += &format!(
            "\nNear idle: {} interval(s) skipped while the host's CPU was 10% busy or more (a \
             shared machine).\n",
            idle.skipped
        );
    }
    table += &format!(
        "\nRecords per interval (their bytes). Measured by `cargo xtask stream` on this {cpus}-CPU \
         host at the defaults (`--interval 10s --top 50 --syscalls top --min-cpu-pct 1`); busy is \
         nginx under wrk flat out, a keep-alive TCP server and 20 short-lived processes a second. \
         Targets: at most {IDLE_MB_DAY:.0} MB a day near idle, {BUSY_MB_DAY:.0} MB busy.\n"
    );
    println!("{table}");
    for (name, s, max) in [("near idle", &idle, IDLE_MB_DAY), ("busy", &hot, BUSY_MB_DAY)] {
        let mb = s.per_interval() * INTERVALS_PER_DAY / 1e6;
        if mb > max {
            eprintln!("{name}: {mb:.0} MB a day, above the {max:.0} MB target");
        }
    }
    if readme {
        let path = root.join("README.md");
        let text = std::fs::read_to_string(&path)?;
        let (begin, end) = (
            "<!-- stream:begin (generated by `cargo xtask stream --readme`) -->\n",
            "<!-- stream:end -->",
        );
        let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
            bail!("README.md has no stream markers");
        };
        let new = format!("{}{begin}{table}{}", &text[..a], &text[b..]);
        std::fs::write(&path, new)?;
        eprintln!("README.md updated");
    }
    Ok(())
}
