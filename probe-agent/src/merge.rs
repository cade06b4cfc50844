//! `probe-agent merge`: fleet-wide latency percentiles from many hosts'
//! recordings made with `--histograms`.
//!
//! Percentiles cannot be averaged; buckets can be added. Every latency
//! summary recorded with `--histograms` carries its non-empty buckets as
//! `[upper_bound_ms, count, sum_ms]` in one fixed layout (log-linear, 32
//! sub-buckets per power of two: `probe_common::hist`), so the buckets of
//! any number of records add up bucket by bucket, and the percentiles of
//! the sum are those of all the values together, within the layout's
//! bounded error (3.1% of the value; exact when a bucket's values are equal).
//!
//! Records merge when they measure the same thing: the same record type,
//! the same KPI path, and the same syscall (`syscall` records) or role and
//! port (`endpoint` records). Hosts, processes and intervals are summed.

use std::collections::BTreeMap;

use probe_common::hist::bucket_of;
use serde::Serialize;
use serde_json::Value;

use crate::{
    aggregate::latency::{Latency, LatencyMs},
    commands::CommandError,
    recording::Recording,
};

/// Most groups merged (record type, syscall, role, port, KPI); the rest
/// are counted and said.
const MAX_GROUPS: usize = 100_000;
/// Most distinct hosts remembered per group (`hosts` stops counting there).
const MAX_HOSTS: usize = 100_000;

/// One merged group.
#[derive(Serialize)]
struct Merged {
    #[serde(rename = "type")]
    kind: &'static str,
    /// The record type merged: host, process, container, endpoint, syscall.
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    syscall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u64>,
    /// The latency summary's path in the records, e.g. `requests.latency_ms`.
    kpi: String,
    hosts: usize,
    records: u64,
    count: u64,
    /// True when a total reached the largest count or sum a u64 holds
    /// and stopped there (the inputs were not real recordings): the
    /// figures are then not to be trusted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    saturated: bool,
    latency_ms: Option<LatencyMs>,
}

#[derive(Default)]
struct Group {
    latency: Latency,
    max_ns: u64,
    hosts: std::collections::BTreeSet<String>,
    records: u64,
    saturated: bool,
}

/// Finds every latency summary with buckets in `v`, with its path.
fn summaries<'a>(v: &'a Value, path: &mut Vec<&'a str>, out: &mut Vec<(String, &'a Value)>) {
    let Some(obj) = v.as_object() else { return };
    if obj.get("buckets").is_some_and(Value::is_array) {
        out.push((path.join("."), v));
        return;
    }
    for (k, child) in obj {
        path.push(k);
        summaries(child, path, out);
        path.pop();
    }
}

/// Adds one record's buckets to `g`. Returns a complaint about a malformed
/// bucket, if any.
fn add(g: &mut Group, summary: &Value) -> Result<(), String> {
    for b in summary["buckets"].as_array().into_iter().flatten() {
        let (Some(upper_ms), Some(count), Some(sum_ms)) =
            (b[0].as_f64(), b[1].as_u64(), b[2].as_f64())
        else {
            return Err(format!("bad bucket {b}: expected [upper_bound_ms, count, sum_ms]"));
        };
        if !(upper_ms >= 0.0 && sum_ms >= 0.0 && upper_ms.is_finite() && sum_ms.is_finite()) {
            return Err(format!("bad bucket {b}"));
        }
        let upper_ns = (upper_ms * 1e6).round() as u64;
        let sum_ns = (sum_ms * 1e6).round() as u64;
        g.saturated |= g.latency.count.checked_add(count).is_none()
            || g.latency.sum_ns.checked_add(sum_ns).is_none();
        g.latency.add(bucket_of(upper_ns), count, sum_ns, upper_ns);
    }
    if let Some(max_ms) = summary["max"].as_f64() {
        g.max_ns = g.max_ns.max((max_ms * 1e6).round() as u64);
    }
    Ok(())
}

/// `merge FILE...`: one `merged` line per group, on stdout.
pub fn merge(files: &[std::path::PathBuf]) -> Result<(), CommandError> {
    type Key = (String, Option<String>, Option<String>, Option<u64>, String);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    let mut without = 0u64;
    let mut cut = 0u64;
    for file in files {
        let mut rec = Recording::open(file)?;
        while let Some((_, records)) = rec.next_interval()? {
            for r in &records {
                let scope = r["type"].as_str().unwrap_or_default();
                if !matches!(scope, "host" | "process" | "container" | "endpoint" | "syscall") {
                    continue;
                }
                let mut found = Vec::new();
                summaries(r, &mut Vec::new(), &mut found);
                let has_summary = |g: &Value| g.is_object();
                if found.is_empty()
                    && (has_summary(&r["latency_ms"]) || has_summary(&r["requests"]["latency_ms"]))
                {
                    without += 1;
                }
                for (kpi, summary) in found {
                    let key = (
                        scope.to_string(),
                        r["syscall"].as_str().map(str::to_string),
                        r["role"].as_str().map(str::to_string),
                        r["port"].as_u64(),
                        kpi,
                    );
                    if !groups.contains_key(&key) && groups.len() >= MAX_GROUPS {
                        cut += 1;
                        continue;
                    }
                    let g = groups.entry(key).or_default();
                    add(g, summary).map_err(|message| CommandError::Record {
                        path: file.display().to_string(),
                        line: 0,
                        message,
                    })?;
                    if g.hosts.len() < MAX_HOSTS {
                        g.hosts.insert(r["host"].as_str().unwrap_or_default().to_string());
                    }
                    g.records = g.records.saturating_add(1);
                }
            }
        }
        rec.finish();
    }
    if cut > 0 {
        eprintln!("probe-agent: merge: {cut} summaries past {MAX_GROUPS} groups were not merged");
    }
    if groups.is_empty() {
        let why = if without > 0 { " (the records were written without --histograms)" } else { "" };
        return Err(CommandError::Record {
            path: files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" "),
            line: 0,
            message: format!("no latency buckets to merge{why}"),
        });
    }
    let mut out = std::io::stdout().lock();
    for ((scope, syscall, role, port, kpi), mut g) in groups {
        if g.max_ns > 0 {
            g.latency.max_ns = g.max_ns;
        }
        let m = Merged {
            kind: "merged",
            scope,
            syscall,
            role,
            port,
            kpi,
            hosts: g.hosts.len(),
            records: g.records,
            count: g.latency.count,
            saturated: g.saturated,
            latency_ms: g.latency.summary_ms(false),
        };
        let _ = serde_json::to_writer(&mut out, &m);
        let _ = std::io::Write::write_all(&mut out, b"\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three maximal counts saturate at the largest u64 and say so, where
    /// plain addition would wrap to a small number.
    #[test]
    fn maximal_counts_saturate_and_are_flagged() {
        let summary = serde_json::json!({"avg": 1.0, "max": 1.0,
            "buckets": [[0.001, u64::MAX, 1.0]]});
        let mut g = Group::default();
        for _ in 0..3 {
            add(&mut g, &summary).unwrap();
        }
        assert_eq!(g.latency.count, u64::MAX);
        assert!(g.saturated);
        let mut ok = Group::default();
        add(&mut ok, &serde_json::json!({"buckets": [[0.001, 5, 0.004]]})).unwrap();
        assert!(!ok.saturated);
    }

    /// Two hosts' summaries merged give the percentiles of all their
    /// values, where averaging their percentiles would not.
    #[test]
    fn merged_buckets_are_the_union() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for _ in 0..60 {
            a.add(bucket_of(5_000_000), 1, 5_000_000, 5_000_000);
        }
        for _ in 0..40 {
            b.add(bucket_of(20_000_000), 1, 20_000_000, 20_000_000);
        }
        let enc = |l: &Latency| serde_json::to_value(l.summary_ms(true)).unwrap();
        let mut g = Group::default();
        add(&mut g, &enc(&a)).unwrap();
        add(&mut g, &enc(&b)).unwrap();
        g.latency.max_ns = g.max_ns;
        let s = g.latency.summary_ms(false).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.avg, s.max), (5.0, 20.0, 20.0, 11.0, 20.0));
        assert_eq!(g.latency.count, 100);
    }
}
