//! Rules and alerts on real workloads: a server whose answers slow past
//! 500 ms and then 1 s, and a busy host; plus the configuration commands
//! and replay of recorded lines.

use std::{io::Write as _, process::Command, time::Duration};

use probe_tests::{Agent, Workload, agent_bin, require_bpf, tempdir};
use serde_json::Value;

/// A config with fast alerts: hold 2 intervals, repeat every 10 minutes.
fn fast_config(dir: &std::path::Path) -> std::path::PathBuf {
    probe_tests::config_file(dir, &[("repeat_every = \"30m\"", "repeat_every = \"10m\"")])
}

fn levels(alerts: &[&Value]) -> Vec<String> {
    alerts.iter().map(|a| a["level"].as_str().unwrap().to_string()).collect()
}

#[test]
fn slow_answers_raise_investigate_then_escalate_and_resolve() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let delay = dir.join("delay");
    std::fs::write(&delay, "100").unwrap();
    let server = Workload::start(&[
        "tcp-server",
        "--name",
        "pw-api",
        "--delay-file",
        delay.to_str().unwrap(),
    ])
    .unwrap();
    let port = server.ready[0].clone();
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--config",
        config.to_str().unwrap(),
        "--pid",
        &server.pid.to_string(),
    ])
    .unwrap();
    let mut clients: Vec<Workload> = (0..4)
        .map(|_| {
            Workload::start(&["tcp-client", "--port", &port, "--requests", "100000", "--keepalive"])
                .unwrap()
        })
        .collect();
    for c in &mut clients {
        c.go().unwrap();
    }
    let is_alert = |level: &'static str| {
        move |r: &Value| {
            r["type"] == "alert"
                && r["rule"] == "request-latency"
                && r["scope"] == "endpoint"
                && r["level"] == level
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&delay, "650").unwrap();
    agent.wait_for(is_alert("investigate"), Duration::from_secs(15)).expect("investigate fires");
    std::fs::write(&delay, "1300").unwrap();
    agent.wait_for(is_alert("escalate"), Duration::from_secs(20)).expect("escalate fires");
    std::fs::write(&delay, "20").unwrap();
    agent.wait_for(is_alert("ok"), Duration::from_secs(20)).expect("it resolves");
    drop(clients);
    let records = agent.stop().unwrap();

    let alerts: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["type"] == "alert" && r["rule"] == "request-latency" && r["scope"] == "endpoint"
        })
        .collect();
    let seq = levels(&alerts);
    let pos = |l: &str| seq.iter().position(|x| x == l).unwrap_or(usize::MAX);
    assert!(pos("investigate") < pos("escalate") && pos("escalate") < pos("ok"), "{seq:?}");
    let inv = alerts.iter().find(|a| a["level"] == "investigate").unwrap();
    let msg = inv["message"].as_str().unwrap();
    eprintln!("{msg}");
    assert!(
        msg.contains(&format!("on port {port} (pw-api)"))
            && msg.ends_with("above 500 ms: investigate now"),
        "{msg}"
    );
    assert_eq!(inv["previous_level"], "ok");
    assert_eq!(inv["threshold"], 500.0);
    assert!(inv["value"].as_f64().unwrap() > 500.0);
    assert_eq!(inv["pid"], server.pid);
    let esc = alerts.iter().find(|a| a["level"] == "escalate").unwrap();
    assert!(
        esc["message"].as_str().unwrap().ends_with("above 1000 ms: escalate to the team lead"),
        "{}",
        esc["message"]
    );
    let ok = alerts.iter().find(|a| a["level"] == "ok").unwrap();
    assert!(ok["message"].as_str().unwrap().ends_with("resolved"), "{}", ok["message"]);
    assert!(ok["since"].is_string());
}

#[test]
fn a_busy_host_raises_the_cpu_alert() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let cpus = std::thread::available_parallelism().unwrap().get().to_string();
    let mut busy =
        Workload::start(&["spin", "--name", "pw-hot", "--ms", "6000", "--threads", &cpus]).unwrap();
    let mut agent =
        Agent::start(&["--interval", "1s", "--config", config.to_str().unwrap(), "--top", "5"])
            .unwrap();
    busy.go().unwrap();
    let alert = agent
        .wait_for(
            |r| {
                r["type"] == "alert"
                    && r["rule"] == "cpu"
                    && r["scope"] == "host"
                    && r["level"] != "ok"
            },
            Duration::from_secs(10),
        )
        .expect("the CPU alert fires");
    busy.finish().unwrap();
    let resolved = agent.wait_for(
        |r| r["type"] == "alert" && r["rule"] == "cpu" && r["level"] == "ok",
        Duration::from_secs(10),
    );
    agent.stop().unwrap();
    let msg = alert["message"].as_str().unwrap();
    eprintln!("{msg}");
    assert!(
        msg.starts_with("CPU utilization ")
            && (msg.ends_with("optimize or scale") || msg.ends_with("escalate")),
        "{msg}"
    );
    assert!(alert["value"].as_f64().unwrap() > 80.0);
    resolved.expect("the CPU alert resolves when the load stops");
}

#[test]
fn default_config_round_trips_and_bad_config_exits_2() {
    let out = Command::new(agent_bin()).args(["config", "--default"]).output().unwrap();
    assert!(out.status.success());
    let dir = tempdir("rules");
    let good = dir.join("good.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let check = Command::new(agent_bin()).arg("check-config").arg(&good).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{check:?}");

    let text = String::from_utf8(out.stdout).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        text.replacen("hold_intervals = 2", "hold_intervals = 2\nhold_intervalz = 9", 1),
    )
    .unwrap();
    let check = Command::new(agent_bin()).arg("check-config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{err}");
    let line = text.lines().position(|l| l.starts_with("hold_intervals")).unwrap() + 2;
    assert!(err.contains("hold_intervalz") && err.contains(&format!("line {line}:")), "{err}");
    // The same file refused by run, with exit 2, before any probe loads.
    let run = Command::new(agent_bin())
        .args(["--duration", "1s", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let run =
        Command::new(agent_bin()).args(["--config", "/nonexistent/probe.toml"]).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
}

#[test]
fn replay_raises_the_alerts_of_recorded_lines() {
    let dir = tempdir("rules");
    let file = dir.join("recorded.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for (i, avg) in [100.0, 600.0, 620.0, 1200.0, 1300.0, 90.0, 80.0].iter().enumerate() {
        writeln!(
            f,
            r#"{{"v":1,"type":"endpoint","ts":"2026-11-29T10:00:{:02}.000Z","host":"web-1","interval_s":10.0,"pid":7,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,"requests":{{"count":50,"rate_per_s":5.0,"errors":0,"error_rate_pct":0.0,"latency_ms":{{"avg":{avg},"p50":{avg},"p95":{avg},"p99":{avg},"max":{avg}}}}}}}"#,
            i * 10
        )
        .unwrap();
    }
    drop(f);
    let out = Command::new(agent_bin()).arg("replay").arg(&file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let alerts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refs: Vec<&Value> = alerts.iter().collect();
    assert_eq!(levels(&refs), ["investigate", "escalate", "ok"], "{alerts:?}");
    assert_eq!(alerts[0]["ts"], "2026-11-29T10:00:20.000Z", "fires after holding 2 intervals");
    assert_eq!(
        alerts[0]["message"],
        "average request latency 620 ms on port 8080 (api) is above 500 ms: investigate now"
    );

    let report = Command::new(agent_bin()).arg("report").arg(&file).output().unwrap();
    let md = String::from_utf8(report.stdout).unwrap();
    assert!(
        report.status.success()
            && md.contains("# probe KPI report")
            && md.contains("| investigate |"),
        "{md}"
    );
    let cmp = Command::new(agent_bin()).arg("compare").arg(&file).arg(&file).output().unwrap();
    let md = String::from_utf8(cmp.stdout).unwrap();
    assert!(cmp.status.success() && md.contains("was unchanged (570 ms)"), "{md}");
    let kpis = Command::new(agent_bin()).arg("kpis").output().unwrap();
    assert!(String::from_utf8(kpis.stdout).unwrap().contains("`requests.latency_ms`"));

    std::fs::write(&file, "{not json\n").unwrap();
    let out = Command::new(agent_bin()).arg("replay").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1:"));
}

/// Alerts of `rule` in order, as (level, message).
fn alerts_of(records: &[Value], rule: &str) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r["type"] == "alert" && r["rule"] == rule && r["repeat"] == false)
        .map(|r| {
            (r["level"].as_str().unwrap().to_string(), r["message"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The rule fired (investigate or escalate) and later resolved (ok).
fn fired_and_resolved(records: &[Value], rule: &str) -> (String, String) {
    let a = alerts_of(records, rule);
    let fired = a
        .iter()
        .position(|(l, _)| l != "ok")
        .unwrap_or_else(|| panic!("{rule} never fired: {a:?}"));
    let resolved = a
        .iter()
        .rposition(|(l, _)| l == "ok")
        .unwrap_or_else(|| panic!("{rule} never resolved: {a:?}"));
    assert!(fired < resolved, "{rule}: {a:?}");
    eprintln!("{rule}: {} / {}", a[fired].1, a[resolved].1);
    (a[fired].1.clone(), a[resolved].1.clone())
}

#[test]
fn request_and_connect_errors_fire_and_resolve() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let server = Workload::start(&["tcp-server", "--name", "pw-shop", "--delay-ms", "30"]).unwrap();
    let port = server.ready[0].clone();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--config",
        config.to_str().unwrap(),
        "--pid",
        &server.pid.to_string(),
    ])
    .unwrap();
    let mut good =
        Workload::start(&["tcp-client", "--port", &port, "--requests", "100000", "--keepalive"])
            .unwrap();
    good.go().unwrap();
    // Four seconds of trouble: requests reset mid-way, connects refused.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        let mut rst = Workload::start(&["tcp-reset", "--port", &port, "--after-ms", "10"]).unwrap();
        rst.go().unwrap();
        rst.finish().unwrap();
        let mut refused =
            Workload::start(&["tcp-refused", "--port", &closed, "--count", "3"]).unwrap();
        refused.go().unwrap();
        refused.finish().unwrap();
    }
    // Then only good traffic, until both alerts resolve.
    let resolved = |rule: &'static str| {
        move |r: &Value| r["type"] == "alert" && r["rule"] == rule && r["level"] == "ok"
    };
    let _ = agent.wait_for(resolved("request-errors"), Duration::from_secs(15));
    let _ = agent.wait_for(resolved("connect-errors"), Duration::from_secs(15));
    drop(good);
    let records = agent.stop().unwrap();
    let (fired, _) = fired_and_resolved(&records, "request-errors");
    assert!(
        fired.starts_with("request error rate ")
            && (fired.ends_with(": investigate") || fired.ends_with(": escalate")),
        "{fired}"
    );
    let (fired, _) = fired_and_resolved(&records, "connect-errors");
    assert!(fired.starts_with("connect error rate ") && fired.contains("on host"), "{fired}");
}

#[test]
fn container_memory_near_its_limit_fires_and_resolves() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let id = "feedfacecafebeef0123456789abcdef0123456789abcdef0123456789abcdef";
    let rel = format!("system.slice/docker-{id}.scope");
    let cg = probe_tests::TestCgroup::create(&rel).unwrap();
    cg.limit_memory(128 << 20).unwrap();
    let mut w = Workload::start(&[
        "alloc",
        "--name",
        "pw-mem",
        "--mib",
        "112",
        "--hold-ms",
        "4000",
        "--then-free-ms",
        "5000",
    ])
    .unwrap();
    cg.enter(w.pid).unwrap();
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--config",
        config.to_str().unwrap(),
        "--pid",
        &w.pid.to_string(),
    ])
    .unwrap();
    w.go().unwrap();
    let _ = agent.wait_for(
        |r| r["type"] == "alert" && r["rule"] == "memory" && r["level"] == "ok",
        Duration::from_secs(15),
    );
    w.finish().unwrap();
    let records = agent.stop().unwrap();
    drop(cg);
    let (fired, resolved) = fired_and_resolved(&records, "memory");
    assert!(
        fired.starts_with("memory utilization ")
            && fired.contains(&format!("in container {}", &id[..12])),
        "{fired}"
    );
    assert!(fired.ends_with("optimize or scale") || fired.ends_with("escalate"), "{fired}");
    assert!(resolved.ends_with("resolved"));
    let c = records.iter().find(|r| r["type"] == "container" && r["container_id"] == id).unwrap();
    assert_eq!(c["memory"]["limit_bytes"], 128u64 << 20);
}

#[test]
fn a_filling_disk_fires_and_resolves() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let image = dir.join("disk.img");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("truncate").args(["-s", "64M"]).arg(&image));
    ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut agent =
        Agent::start(&["--interval", "1s", "--config", config.to_str().unwrap(), "--top", "1"])
            .unwrap();
    // Fill it past 95%, hold, then empty it.
    // Fill all but 256 KiB of what is available: above 95%.
    let (frsize, _, _, bavail) = probe_tests::statvfs(&mnt).unwrap();
    let avail = bavail * frsize;
    let fill = mnt.join("fill");
    ok(Command::new("fallocate").args(["-l", &(avail - (256 << 10)).to_string()]).arg(&fill));
    let mount = mnt.to_str().unwrap().to_string();
    let m2 = mount.clone();
    agent
        .wait_for(
            move |r| {
                r["type"] == "alert"
                    && r["rule"] == "disk"
                    && r["mount"] == m2.as_str()
                    && r["level"] != "ok"
            },
            Duration::from_secs(10),
        )
        .expect("the disk alert fires");
    std::fs::remove_file(&fill).unwrap();
    let m3 = mount.clone();
    agent
        .wait_for(
            move |r| {
                r["type"] == "alert"
                    && r["rule"] == "disk"
                    && r["mount"] == m3.as_str()
                    && r["level"] == "ok"
            },
            Duration::from_secs(10),
        )
        .expect("the disk alert resolves");
    // This mount's alerts (the host's own disks may be near a threshold).
    let records: Vec<Value> = agent
        .stop()
        .unwrap()
        .into_iter()
        .filter(|r| r["type"] != "alert" || r["mount"] == mount.as_str())
        .collect();
    let (fired, _) = fired_and_resolved(&records, "disk");
    assert!(
        fired.starts_with("disk utilization ") && fired.contains(&format!("on {mount} of host")),
        "{fired}"
    );
}

#[test]
fn cost_over_budget_fires_and_resolves_when_the_budget_grows() {
    require_bpf!();
    let dir = tempdir("rules");
    let config = fast_config(&dir);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("host_usd_month = 0.0", "host_usd_month = 150.0")
            .replace("budget_usd_month = 0.0", "budget_usd_month = 100.0"),
    )
    .unwrap();
    let mut agent =
        Agent::start(&["--interval", "1s", "--config", config.to_str().unwrap(), "--top", "1"])
            .unwrap();
    let fired = agent
        .wait_for(
            |r| r["type"] == "alert" && r["rule"] == "cost" && r["level"] == "escalate",
            Duration::from_secs(10),
        )
        .expect("50% over budget escalates");
    let host = agent.records.iter().find(|r| r["type"] == "host").unwrap().clone();
    assert_eq!(host["cost"]["projected_usd_month"], 150.0);
    assert_eq!(host["cost"]["over_budget_pct"], 50.0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("budget_usd_month = 100.0", "budget_usd_month = 200.0"))
        .unwrap();
    probe_tests::kill(agent.pid(), libc::SIGHUP);
    // The rule keeps its level across the reload, so it resolves.
    let resolved = agent
        .wait_for(
            |r| r["type"] == "alert" && r["rule"] == "cost" && r["level"] == "ok",
            Duration::from_secs(10),
        )
        .expect("under budget resolves");
    assert!(resolved["message"].as_str().unwrap().ends_with("resolved"));
    let host = agent.records.iter().rev().find(|r| r["type"] == "host").unwrap();
    assert_eq!(host["cost"]["budget_usd_month"], 200.0);
    assert_eq!(host["cost"]["over_budget_pct"], -25.0);
    agent.stop().unwrap();
    let msg = fired["message"].as_str().unwrap();
    assert!(
        msg.starts_with("projected cost over budget 50.0% on host")
            && msg.ends_with("escalate to management"),
        "{msg}"
    );
}
