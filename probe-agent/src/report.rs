//! `report` and `compare`: Markdown for the people around a service, from
//! recorded KPI lines.
//!
//! Both stream the recording an interval at a time and keep, per KPI and
//! scope, only what they print (count, sum and worst), so their memory is
//! bounded by the number of scopes (at most [`MAX_SCOPES`] per KPI, the
//! rest counted and said), not by the length of the recording.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::Value;

use crate::{
    commands::CommandError,
    config::Config,
    recording::Recording,
    records::{Kind, Record},
    rules::{Engine, number as num},
    timefmt::rfc3339_from_secs,
};

/// Most scopes (processes, ports, ...) followed per KPI.
const MAX_SCOPES: usize = 100_000;
/// Most alert rows listed; the rest are counted.
const MAX_ALERT_ROWS: usize = 1000;

/// A KPI's figures for one scope over the intervals it appeared in.
#[derive(Clone, Copy, Debug)]
struct Stat {
    n: u64,
    sum: f64,
    worst: f64,
}

impl Stat {
    fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum / self.n as f64 }
    }
}

/// Scope label -> its figures, for one (record type, KPI).
type Series = BTreeMap<String, Stat>;

fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |cur, p| cur.get(p))?.as_f64()
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

/// The series a command follows, filled an interval at a time.
#[derive(Default)]
struct Collector {
    /// (record type, KPI path) -> series. Disk KPIs (`disk.*`) are read per
    /// mount from the host's `disk` array.
    series: BTreeMap<(String, String), Series>,
    /// Values not followed because a KPI had [`MAX_SCOPES`] scopes.
    cut: u64,
}

impl Collector {
    fn want(&mut self, kind: &str, kpi: &str) {
        self.series.entry((kind.to_string(), kpi.to_string())).or_default();
    }

    fn observe(&mut self, records: &[Value]) {
        for ((kind, kpi), series) in &mut self.series {
            for r in records.iter().filter(|r| r["type"] == kind.as_str()) {
                let mut put = |who: String, v: f64| {
                    if !series.contains_key(&who) && series.len() >= MAX_SCOPES {
                        self.cut += 1;
                        return;
                    }
                    let s = series.entry(who).or_insert(Stat { n: 0, sum: 0.0, worst: f64::MIN });
                    s.n += 1;
                    s.sum += v;
                    s.worst = s.worst.max(v);
                };
                if let Some(rest) = kpi.strip_prefix("disk.") {
                    for d in r["disk"].as_array().into_iter().flatten() {
                        if let Some(v) = get(d, rest) {
                            put(format!("{} {}", label(r), d["mount"].as_str().unwrap_or("?")), v);
                        }
                    }
                } else if let Some(v) = get(r, kpi) {
                    put(label(r), v);
                }
            }
        }
    }

    fn get(&self, kind: &str, kpi: &str) -> Series {
        self.series.get(&(kind.to_string(), kpi.to_string())).cloned().unwrap_or_default()
    }
}

/// The top offender tables: (title, record type, KPI).
const OFFENDERS: [(&str, &str, &str); 4] = [
    ("Processes by CPU (busy cores)", "process", "cpu.cores"),
    ("Containers by CPU (busy cores)", "container", "cpu.cores"),
    ("Ports by average request latency", "endpoint", "requests.latency_ms.avg"),
    ("Ports by request error rate", "endpoint", "requests.error_rate_pct"),
];

/// `report FILE`: targets against actuals, alerts and their durations, and
/// the top offenders.
pub fn report(path: &Path, config: &Config) -> Result<String, CommandError> {
    let rules: Vec<_> = config.rules.iter().filter(|r| r.enabled).collect();
    let mut c = Collector::default();
    for rule in &rules {
        for kind in &rule.scopes {
            c.want(kind.name(), &rule.path());
        }
    }
    for (_, kind, kpi) in OFFENDERS {
        c.want(kind, kpi);
    }
    let mut engine = Engine::new(config);
    let mut open: BTreeMap<String, (f64, String, String)> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut more_rows = 0u64;
    let (mut first, mut last, mut intervals) = (None, 0.0, 0u64);
    let mut hosts = std::collections::BTreeSet::new();
    let mut rec = Recording::open(path)?;
    while let Some((secs, recs)) = rec.next_interval()? {
        first.get_or_insert(secs);
        last = secs;
        intervals += 1;
        for h in recs.iter().filter_map(|r| r["host"].as_str()) {
            if hosts.len() < 100 {
                hosts.insert(h.to_string());
            }
        }
        c.observe(&recs);
        let kpis: Vec<Record> = crate::commands::typed(recs, path)?
            .into_iter()
            .filter(|r| r.kind() != Kind::Alert)
            .collect();
        for a in engine.evaluate(&kpis, secs) {
            let key = format!("{}|{}|{:?}", a.rule, a.scope.name(), a.place);
            let level = a.level.name().to_string();
            if a.repeat {
                continue;
            }
            if let Some((since, lvl, msg)) = open.remove(&key) {
                if rows.len() < MAX_ALERT_ROWS {
                    rows.push((since, lvl, msg, Some(secs - since)));
                } else {
                    more_rows += 1;
                }
            }
            if level != "ok" {
                open.insert(key, (secs, level, a.message.clone()));
            }
        }
    }
    rec.finish();
    let first = first.unwrap_or(0.0);

    let mut md = String::new();
    let _ = writeln!(md, "# probe KPI report\n");
    let _ = writeln!(
        md,
        "{intervals} intervals from {} to {} on {}.\n",
        rfc3339_from_secs(first),
        rfc3339_from_secs(last),
        hosts.into_iter().collect::<Vec<_>>().join(", ")
    );
    if rec.long_lines > 0 {
        let _ = writeln!(md, "{} line(s) too long to be records were skipped.\n", rec.long_lines);
    }

    let _ = writeln!(md, "## Targets and actuals\n");
    let _ = writeln!(
        md,
        "| KPI | where | target (investigate at) | average | worst interval | status |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|");
    for rule in &rules {
        let path = rule.path();
        let u = unit(&path);
        for kind in &rule.scopes {
            let kind = kind.name();
            // The host row, and the five worst of the others.
            let mut rows: Vec<(String, Stat)> = c.get(kind, &path).into_iter().collect();
            rows.sort_by(|a, b| b.1.worst.total_cmp(&a.1.worst));
            for (who, st) in rows.into_iter().take(if kind == "host" { usize::MAX } else { 5 }) {
                let status = if st.worst > rule.escalate {
                    "escalate"
                } else if st.worst > rule.investigate {
                    "investigate"
                } else {
                    "ok"
                };
                let _ = writeln!(
                    md,
                    "| {path} | {who} | {}{u} | {}{u} | {}{u} | {status} |",
                    num(rule.investigate),
                    num(st.mean()),
                    num(st.worst)
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Alerts\n");
    for (_, (since, lvl, msg)) in open {
        if rows.len() < MAX_ALERT_ROWS {
            rows.push((since, lvl, msg, None));
        } else {
            more_rows += 1;
        }
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
        if more_rows > 0 {
            let _ = writeln!(md, "\nAnd {more_rows} more alerts, not listed.");
        }
    }

    let _ = writeln!(md, "\n## Top offenders\n");
    for (title, kind, kpi) in OFFENDERS {
        let mut s: Vec<(String, Stat)> = c.get(kind, kpi).into_iter().collect();
        s.sort_by(|a, b| b.1.mean().total_cmp(&a.1.mean()));
        let _ = writeln!(md, "### {title}\n");
        if s.is_empty() {
            let _ = writeln!(md, "None recorded.\n");
            continue;
        }
        let _ = writeln!(md, "| | average | worst interval |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (who, st) in s.into_iter().take(5) {
            let u = unit(kpi);
            let _ = writeln!(md, "| {who} | {}{u} | {}{u} |", num(st.mean()), num(st.worst));
        }
        let _ = writeln!(md);
    }
    if c.cut > 0 {
        let _ =
            writeln!(md, "{} values of scopes past {MAX_SCOPES} per KPI were not followed.", c.cut);
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

/// Streams one recording into the series `compare` follows.
fn compared(path: &Path) -> Result<(u64, Collector), CommandError> {
    let mut c = Collector::default();
    for &(kind, kpi, _) in COMPARED {
        c.want(kind, kpi);
    }
    let mut rec = Recording::open(path)?;
    let mut n = 0;
    while let Some((_, recs)) = rec.next_interval()? {
        n += 1;
        c.observe(&recs);
    }
    rec.finish();
    Ok((n, c))
}

/// `compare BASELINE CURRENT`: each KPI's change, as numbers and sentences.
pub fn compare(baseline: &Path, current: &Path) -> Result<String, CommandError> {
    let ((na, a), (nb, b)) = (compared(baseline)?, compared(current)?);
    let mut md = String::from("# probe comparison\n\n");
    let _ = writeln!(
        md,
        "Baseline: {} ({na} intervals). Current: {} ({nb} intervals).\n",
        baseline.display(),
        current.display(),
    );
    let _ = writeln!(md, "| KPI | where | baseline | current | change |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    let mut sentences = Vec::new();
    for &(kind, kpi, name) in COMPARED {
        let (sa, sb) = (a.get(kind, kpi), b.get(kind, kpi));
        for (who, va) in &sa {
            let Some(vb) = sb.get(who) else { continue };
            let (ma, mb) = (va.mean(), vb.mean());
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
