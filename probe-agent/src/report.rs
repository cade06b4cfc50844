//! `report` and `compare`: Markdown for the people around a service, from
//! recorded KPI lines.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::Value;

use crate::{
    commands::{CommandError, read_intervals},
    config::Config,
    rules::{Engine, number as num},
    timefmt::rfc3339_from_secs,
};

/// A KPI series: label -> values, one per interval it appeared in.
type Series = BTreeMap<String, Vec<f64>>;

fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |cur, p| cur.get(p))?.as_f64()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn unit(kpi: &str) -> &'static str {
    if kpi.ends_with("_pct") {
        "%"
    } else if kpi.contains("_ms") {
        " ms"
    } else if kpi.ends_with("_per_s") {
        "/s"
    } else {
        ""
    }
}

/// Who a record is about, in words.
fn label(r: &Value) -> String {
    match r["type"].as_str().unwrap_or("") {
        "host" => format!("host {}", r["host"].as_str().unwrap_or("?")),
        "container" => {
            let id = r["container_id"].as_str().unwrap_or("?");
            format!("container {}", id.chars().take(12).collect::<String>())
        }
        "process" => format!("{} (pid {})", r["comm"].as_str().unwrap_or("?"), r["pid"]),
        "endpoint" if r["role"] == "server" => {
            format!("port {} ({})", r["port"], r["comm"].as_str().unwrap_or("?"))
        }
        "endpoint" => format!(
            "{} calling {}:{}",
            r["comm"].as_str().unwrap_or("?"),
            r["peer"].as_str().unwrap_or("?"),
            r["port"]
        ),
        other => other.to_string(),
    }
}

/// Every value of `kpi` in records of `kind`, by who they are about.
fn series(intervals: &[(f64, Vec<Value>)], kind: &str, kpi: &str) -> Series {
    let mut out = Series::new();
    for (_, recs) in intervals {
        for r in recs.iter().filter(|r| r["type"] == kind) {
            if let Some(v) = get(r, kpi) {
                out.entry(label(r)).or_default().push(v);
            }
        }
    }
    out
}

/// `report FILE`: targets against actuals, alerts and their durations, and
/// the top offenders.
pub fn report(path: &Path, config: &Config) -> Result<String, CommandError> {
    let intervals = read_intervals(path)?;
    let mut md = String::new();
    let (first, last) =
        (intervals.first().map_or(0.0, |i| i.0), intervals.last().map_or(0.0, |i| i.0));
    let hosts: std::collections::BTreeSet<&str> =
        intervals.iter().flat_map(|i| i.1.iter()).filter_map(|r| r["host"].as_str()).collect();
    let _ = writeln!(md, "# probe KPI report\n");
    let _ = writeln!(
        md,
        "{} intervals from {} to {} on {}.\n",
        intervals.len(),
        rfc3339_from_secs(first),
        rfc3339_from_secs(last),
        hosts.into_iter().collect::<Vec<_>>().join(", ")
    );

    let _ = writeln!(md, "## Targets and actuals\n");
    let _ = writeln!(
        md,
        "| KPI | where | target (investigate at) | average | worst interval | status |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|");
    for rule in config.rules.iter().filter(|r| r.enabled) {
        let u = unit(&rule.kpi);
        for kind in &rule.scopes {
            // Disk lives in an array of the host record: one row per mount.
            let rows: Series = if rule.kpi.starts_with("disk.") {
                let mut s = Series::new();
                for (_, recs) in &intervals {
                    for r in recs.iter().filter(|r| r["type"] == kind.as_str()) {
                        for d in r["disk"].as_array().into_iter().flatten() {
                            if let Some(v) = get(d, "utilization_pct") {
                                s.entry(format!(
                                    "{} {}",
                                    label(r),
                                    d["mount"].as_str().unwrap_or("?")
                                ))
                                .or_default()
                                .push(v);
                            }
                        }
                    }
                }
                s
            } else {
                series(&intervals, kind, &rule.kpi)
            };
            // The host row, and the five worst of the others.
            let mut rows: Vec<(String, Vec<f64>)> = rows.into_iter().collect();
            rows.sort_by(|a, b| {
                let worst = |v: &Vec<f64>| v.iter().copied().fold(f64::MIN, f64::max);
                worst(&b.1).total_cmp(&worst(&a.1))
            });
            for (who, values) in rows.into_iter().take(if kind == "host" { usize::MAX } else { 5 })
            {
                let worst = values.iter().copied().fold(f64::MIN, f64::max);
                let avg = mean(&values);
                let status = if worst > rule.escalate {
                    "escalate"
                } else if worst > rule.investigate {
                    "investigate"
                } else {
                    "ok"
                };
                let _ = writeln!(
                    md,
                    "| {} | {who} | {}{u} | {}{u} | {}{u} | {status} |",
                    rule.kpi,
                    num(rule.investigate),
                    num(avg),
                    num(worst)
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Alerts\n");
    let mut engine = Engine::new(config);
    let mut open: BTreeMap<String, (f64, String, String)> = BTreeMap::new();
    let mut rows = Vec::new();
    for (secs, recs) in &intervals {
        let kpis: Vec<Value> = recs.iter().filter(|r| r["type"] != "alert").cloned().collect();
        for a in engine.evaluate(&kpis, *secs) {
            let key = format!(
                "{}|{}|{}|{}|{}|{}",
                a["rule"], a["scope"], a["pid"], a["port"], a["container_id"], a["mount"]
            );
            let level = a["level"].as_str().unwrap_or("").to_string();
            if a["repeat"] == true {
                continue;
            }
            if let Some((since, lvl, msg)) = open.remove(&key) {
                rows.push((since, lvl, msg, Some(*secs - since)));
            }
            if level != "ok" {
                open.insert(key, (*secs, level, a["message"].as_str().unwrap_or("").to_string()));
            }
        }
    }
    for (_, (since, lvl, msg)) in open {
        rows.push((since, lvl, msg, None));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    if rows.is_empty() {
        let _ = writeln!(md, "No alerts.");
    } else {
        let _ = writeln!(md, "| raised | level | lasted | message |");
        let _ = writeln!(md, "|---|---|---:|---|");
        for (since, lvl, msg, dur) in rows {
            let lasted = dur.map_or("still open".to_string(), |d| format!("{d:.0}s"));
            let _ = writeln!(md, "| {} | {lvl} | {lasted} | {msg} |", rfc3339_from_secs(since));
        }
    }

    let _ = writeln!(md, "\n## Top offenders\n");
    for (title, kind, kpi) in [
        ("Processes by CPU (busy cores)", "process", "cpu.cores"),
        ("Containers by CPU (busy cores)", "container", "cpu.cores"),
        ("Ports by average request latency", "endpoint", "requests.latency_ms.avg"),
        ("Ports by request error rate", "endpoint", "requests.error_rate_pct"),
    ] {
        let mut s: Vec<(String, f64, f64)> = series(&intervals, kind, kpi)
            .into_iter()
            .map(|(k, v)| (k, mean(&v), v.iter().copied().fold(f64::MIN, f64::max)))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1));
        let _ = writeln!(md, "### {title}\n");
        if s.is_empty() {
            let _ = writeln!(md, "None recorded.\n");
            continue;
        }
        let _ = writeln!(md, "| | average | worst interval |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (who, avg, worst) in s.into_iter().take(5) {
            let u = unit(kpi);
            let _ = writeln!(md, "| {who} | {}{u} | {}{u} |", num(avg), num(worst));
        }
        let _ = writeln!(md);
    }
    Ok(md)
}

/// The KPIs `compare` looks at: (record type, path, what it is called).
const COMPARED: &[(&str, &str, &str)] = &[
    ("endpoint", "requests.latency_ms.avg", "average request latency"),
    ("endpoint", "requests.latency_ms.p99", "p99 request latency"),
    ("endpoint", "requests.error_rate_pct", "request error rate"),
    ("endpoint", "requests.rate_per_s", "request rate"),
    ("host", "requests.latency_ms.avg", "average request latency"),
    ("host", "cpu.utilization_pct", "CPU utilization"),
    ("host", "memory.utilization_pct", "memory utilization"),
    ("host", "syscalls.error_rate_pct", "system call error rate"),
    ("host", "tcp.connect_error_rate_pct", "connect error rate"),
    ("process", "cpu.cores", "CPU (busy cores)"),
];

/// `compare BASELINE CURRENT`: each KPI's change, as numbers and sentences.
pub fn compare(baseline: &Path, current: &Path) -> Result<String, CommandError> {
    let (a, b) = (read_intervals(baseline)?, read_intervals(current)?);
    let mut md = String::from("# probe comparison\n\n");
    let _ = writeln!(
        md,
        "Baseline: {} ({} intervals). Current: {} ({} intervals).\n",
        baseline.display(),
        a.len(),
        current.display(),
        b.len()
    );
    let _ = writeln!(md, "| KPI | where | baseline | current | change |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    let mut sentences = Vec::new();
    for &(kind, kpi, name) in COMPARED {
        let (sa, sb) = (series(&a, kind, kpi), series(&b, kind, kpi));
        for (who, va) in &sa {
            let Some(vb) = sb.get(who) else { continue };
            let (ma, mb) = (mean(va), mean(vb));
            let u = unit(kpi);
            let change = if ma != 0.0 { (mb - ma) / ma * 100.0 } else { 0.0 };
            let _ =
                writeln!(md, "| {kpi} | {who} | {}{u} | {}{u} | {change:+.1}% |", num(ma), num(mb));
            if ma == 0.0 && mb == 0.0 {
                continue;
            }
            let verb = if (mb - ma).abs() < 1e-9 || (ma != 0.0 && change.abs() < 0.5) {
                sentences.push(format!("{name} on {who} was unchanged ({}{u})", num(ma)));
                continue;
            } else if mb < ma {
                "fell"
            } else {
                "rose"
            };
            let by = if ma != 0.0 { format!(" {:.0}%", change.abs()) } else { String::new() };
            sentences.push(format!(
                "{name} on {who} {verb}{by} ({}{u} to {}{u})",
                num(ma),
                num(mb)
            ));
        }
    }
    let _ = writeln!(md, "\n## In words\n");
    for s in sentences {
        let _ = writeln!(md, "- {s}.");
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[String]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "probe-report-{}-{}.jsonl",
            std::process::id(),
            lines.len() ^ lines[0].len()
        ));
        std::fs::write(&p, lines.join("\n")).unwrap();
        p
    }

    fn endpoint(sec: u32, avg: f64, err: f64) -> String {
        format!(
            r#"{{"v":1,"type":"endpoint","ts":"2026-11-29T10:00:{sec:02}.000Z","host":"h","interval_s":10.0,"pid":7,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,"requests":{{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":{err},"latency_ms":{{"avg":{avg},"p50":{avg},"p95":{avg},"p99":{avg},"max":{avg}}}}}}}"#
        )
    }

    #[test]
    fn compare_says_how_much_latency_fell() {
        let base = write(&[endpoint(0, 600.0, 0.0), endpoint(10, 624.0, 0.0)]);
        let cur =
            write(&[endpoint(0, 480.0, 0.0), endpoint(10, 486.0, 0.0), endpoint(20, 483.0, 0.0)]);
        let md = compare(&base, &cur).unwrap();
        assert!(
            md.contains(
                "- average request latency on port 8080 (api) fell 21% (612 ms to 483 ms)."
            ),
            "{md}"
        );
        assert!(
            md.contains("| requests.latency_ms.avg | port 8080 (api) | 612 ms | 483 ms | -21.1% |"),
            "{md}"
        );
    }

    #[test]
    fn report_has_targets_alerts_and_offenders() {
        let lines: Vec<String> = [100.0, 600.0, 650.0, 700.0, 80.0, 70.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| endpoint(i as u32 * 10, v, if i == 3 { 7.5 } else { 0.0 }))
            .collect();
        let p = write(&lines);
        let md = report(&p, &Config::default()).unwrap();
        assert!(md.contains("| requests.latency_ms.avg | port 8080 (api) | 500 ms | 367 ms | 700 ms | investigate |"), "{md}");
        // Fired at 10:00:20 after holding two intervals, resolved at 10:00:50 after two more.
        assert!(md.contains("| 2026-11-29T10:00:20.000Z | investigate | 30s | average request latency 650 ms on port 8080 (api) is above 500 ms: investigate now |"), "{md}");
        assert!(md.contains("### Ports by average request latency"), "{md}");
    }
}
