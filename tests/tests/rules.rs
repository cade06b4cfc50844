//! Rules and alerts on real workloads: a server whose answers slow past
//! 500 ms and then 1 s, and a busy host; plus the configuration commands
//! and replay of recorded lines.

use std::{io::Write as _, process::Command, time::Duration};

use probe_tests::{Agent, Workload, agent_bin, require_bpf};
use serde_json::Value;

/// A config with fast alerts: hold 2 intervals, repeat every 10 minutes.
fn fast_config(dir: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new(agent_bin()).args(["config", "--default"]).output().unwrap();
    let text = String::from_utf8(out.stdout)
        .unwrap()
        .replace("repeat_every = \"30m\"", "repeat_every = \"10m\"");
    let path = dir.join("probe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn levels(alerts: &[&Value]) -> Vec<String> {
    alerts.iter().map(|a| a["level"].as_str().unwrap().to_string()).collect()
}

#[test]
fn slow_answers_raise_investigate_then_escalate_and_resolve() {
    require_bpf!();
    let dir = tempdir();
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
    let dir = tempdir();
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
    let dir = tempdir();
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
    assert!(err.contains("hold_intervalz") && err.contains("line 12"), "{err}");
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
    let dir = tempdir();
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

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "probe-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
