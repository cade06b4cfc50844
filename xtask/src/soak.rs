//! `cargo xtask soak`: the agent under a mixed load for a while (default 10
//! minutes), sampling its CPU, RSS, map fill and losses every interval, and
//! printing their trend: does anything grow with time?

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

pub fn run(root: &Path, minutes: f64, interval_s: u64) -> Result<()> {
    let (agent_bin, workload) = crate::bench::build_release(root, "soak")?;
    let mut agent = Command::new(&agent_bin)
        .args(["run", "--interval", &format!("{interval_s}s"), "--top", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = agent.stdout.take().context("stdout")?;

    // The mixed load, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut loads = Vec::new();
    let w = workload.clone();
    let s = stop.clone();
    loads.push(std::thread::spawn(move || {
        // Process churn and exact-count calls.
        while !s.load(Ordering::Relaxed) {
            let _ = Command::new(&w)
                .args(["churn", "--procs", "200", "--threads", "100"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write as _;
                    let mut stdin = c.stdin.take().unwrap();
                    let mut out = BufReader::new(c.stdout.take().unwrap());
                    let mut line = String::new();
                    out.read_line(&mut line)?;
                    stdin.write_all(b"go\n")?;
                    drop(stdin);
                    c.wait()
                });
            std::thread::sleep(Duration::from_millis(500));
        }
    }));
    let w = workload.clone();
    let s = stop.clone();
    loads.push(std::thread::spawn(move || {
        // Short syscall storms.
        while !s.load(Ordering::Relaxed) {
            let _ = Command::new(&w).args(["storm", "--seconds", "1"]).output();
            std::thread::sleep(Duration::from_secs(4));
        }
    }));
    // A TCP server with keep-alive clients, restarted every cycle.
    let w = workload.clone();
    let s = stop.clone();
    loads.push(std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let Ok(mut server) = Command::new(&w)
                .args(["tcp-server", "--delay-ms", "2"])
                .stdout(Stdio::piped())
                .spawn()
            else {
                return;
            };
            let mut out = BufReader::new(server.stdout.take().unwrap());
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let port = line.split_whitespace().nth(2).unwrap_or("0").to_string();
            for _ in 0..5 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let _ = Command::new(&w)
                    .args(["tcp-client", "--port", &port, "--requests", "500", "--keepalive"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write as _;
                        let mut out = BufReader::new(c.stdout.take().unwrap());
                        let mut l = String::new();
                        out.read_line(&mut l)?;
                        c.stdin.take().unwrap().write_all(b"go\n")?;
                        c.wait()
                    });
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }));

    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let start = Instant::now();
    let mut samples: Vec<Value> = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let Ok(rec) = serde_json::from_str::<Value>(&line) else { continue };
        if rec["type"] != "agent" {
            continue;
        }
        // syscall_no_start is not a loss: it counts every new thread's first
        // return from clone, which has no entry to match.
        let lost: u64 = rec["lost"].as_object().map_or(0, |m| {
            m.iter().filter(|(k, _)| *k != "syscall_no_start").filter_map(|(_, v)| v.as_u64()).sum()
        });
        let fill = rec["maps"]
            .as_array()
            .map_or(0.0, |m| m.iter().filter_map(|x| x["fill_pct"].as_f64()).fold(0.0, f64::max));
        let t = start.elapsed().as_secs_f64();
        eprintln!(
            "{:6.0}s  cpu {:6.2}% of a core  rss {:5.1} MiB  max map fill {:5.2}%  lost {lost}",
            t,
            rec["cpu_pct"].as_f64().unwrap_or(0.0),
            rec["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            fill
        );
        let dropped: u64 = rec["output"]["sinks"].as_array().map_or(0, |s| {
            s.iter()
                .filter_map(|k| k["dropped_records"].as_object())
                .flat_map(|d| d.values().filter_map(Value::as_u64))
                .sum()
        });
        samples.push(json!({"t_s": t, "cpu_pct": rec["cpu_pct"], "rss_bytes": rec["rss_bytes"], "max_fill_pct": fill, "lost": lost, "dropped": dropped}));
    }
    stop.store(true, Ordering::Relaxed);
    crate::kill(agent.id(), libc::SIGTERM);
    let _ = agent.wait();
    for l in loads {
        let _ = l.join();
    }
    // Skip the first sample (start-up) for the trend.
    let s = if samples.len() > 2 { &samples[1..] } else { &samples[..] };
    let col = |k: &str| s.iter().map(|v| v[k].as_f64().unwrap_or(0.0)).collect::<Vec<f64>>();
    let (t, cpu, rss, fill, lost) =
        (col("t_s"), col("cpu_pct"), col("rss_bytes"), col("max_fill_pct"), col("lost"));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let rss_slope_mib_h = slope(&t, &rss) * 3600.0 / 1048576.0;
    let fill_slope_h = slope(&t, &fill) * 3600.0;
    println!("| soak ({minutes} min, {interval_s} s intervals, {} samples) | value |", s.len());
    println!("|---|---:|");
    println!("| agent CPU, mean | {:.2}% of one core |", mean(&cpu));
    println!(
        "| agent CPU, max interval | {:.2}% of one core |",
        cpu.iter().copied().fold(0.0, f64::max)
    );
    println!("| RSS, peak | {:.1} MiB |", rss.iter().copied().fold(0.0, f64::max) / 1048576.0);
    println!("| RSS trend | {rss_slope_mib_h:+.2} MiB/hour |");
    println!("| largest map fill, max | {:.2}% |", fill.iter().copied().fold(0.0, f64::max));
    println!("| map fill trend | {fill_slope_h:+.2} points/hour |");
    println!("| events lost | {} |", lost.iter().sum::<f64>());
    println!("| records dropped by sinks | {} |", col("dropped").iter().sum::<f64>());
    // Flat or growing: the RSS of each third of the run.
    let third = rss.len() / 3;
    if third > 0 {
        let m: Vec<f64> =
            (0..3).map(|i| mean(&rss[i * third..(i + 1) * third]) / 1048576.0).collect();
        println!(
            "| RSS mean, first / second / last third | {:.1} / {:.1} / {:.1} MiB |",
            m[0], m[1], m[2]
        );
    }
    let out = json!({"minutes": minutes, "interval_s": interval_s, "samples": samples,
        "rss_slope_mib_per_hour": rss_slope_mib_h, "fill_slope_points_per_hour": fill_slope_h});
    std::fs::create_dir_all(root.join("target/bench"))?;
    std::fs::write(root.join("target/bench/soak.json"), serde_json::to_string_pretty(&out)?)?;
    Ok(())
}
