//! Rules: thresholds on KPIs, with the alert lifecycle, turned into
//! `type: "alert"` records a person can act on.
//!
//! The engine reads the KPI records as JSON (the product's interface), so
//! the agent and `probe-agent replay` of recorded lines run the same code.

pub mod lifecycle;

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::{
    config::{AlertSettings, Config, Rule},
    timefmt::rfc3339_from_secs,
};
use lifecycle::{Level, Lifecycle, Transition};

/// Most (rule, scope) pairs tracked; past it new scopes are not evaluated
/// and counted in [`Engine::cut`].
const MAX_STATES: usize = 100_000;

pub struct Engine {
    rules: Vec<Rule>,
    settings: AlertSettings,
    /// (rule name, scope) -> its lifecycle.
    states: HashMap<(String, String), Tracked>,
    /// Evaluations so far.
    evals: u64,
    /// Evaluations skipped because `MAX_STATES` was reached (cumulative).
    pub cut: u64,
}

/// One KPI value found in a record, with the labels of its scope.
struct Observation {
    scope: &'static str,
    key: String,
    labels: Map<String, Value>,
    value: f64,
}

impl Engine {
    pub fn new(cfg: &Config) -> Self {
        Engine {
            rules: cfg.rules.iter().filter(|r| r.enabled).cloned().collect(),
            settings: cfg.alert_settings(),
            states: HashMap::new(),
            evals: 0,
            cut: 0,
        }
    }

    /// A new configuration (SIGHUP): rules that stay keep their levels, so
    /// a raised alert is resolved (or repeated) under the new thresholds
    /// rather than forgotten.
    pub fn reconfigure(&mut self, cfg: &Config) {
        let fresh = Engine::new(cfg);
        self.states.retain(|(rule, _), _| fresh.rules.iter().any(|r| &r.name == rule));
        self.rules = fresh.rules;
        self.settings = fresh.settings;
    }

    /// Evaluates one interval's records (observed at `now_s`, seconds since
    /// the epoch); returns the alert records to write.
    pub fn evaluate(&mut self, records: &[Value], now_s: f64) -> Vec<Value> {
        self.evals += 1;
        let mut alerts = Vec::new();
        for rule in &self.rules {
            for rec in records {
                let Some(kind) = rec["type"].as_str() else { continue };
                if !rule.scopes.iter().any(|s| s == kind) {
                    continue;
                }
                for obs in observations(rec, kind, &rule.kpi) {
                    let state_key = (rule.name.clone(), format!("{}/{}", obs.scope, obs.key));
                    if !self.states.contains_key(&state_key) && self.states.len() >= MAX_STATES {
                        self.cut += 1;
                        continue;
                    }
                    let tracked = self.states.entry(state_key).or_insert_with(|| Tracked {
                        lifecycle: Lifecycle::default(),
                        last_seen: 0,
                        last_alert: None,
                    });
                    tracked.last_seen = self.evals;
                    let Some(t) = tracked.lifecycle.observe(
                        obs.value,
                        now_s,
                        rule.investigate,
                        rule.escalate,
                        &self.settings,
                    ) else {
                        continue;
                    };
                    let a = alert(rec, rule, &obs, t);
                    tracked.last_alert = Some(a.clone());
                    alerts.push(a);
                }
            }
        }
        // Scopes that stopped reporting (an exited process, an idle port)
        // are forgotten after a while; a raised alert is resolved first.
        let evals = self.evals;
        self.states.retain(|_, t| {
            if evals - t.last_seen < STALE_EVALUATIONS {
                return true;
            }
            if let Some(mut a) = t.last_alert.take().filter(|a| a["level"] != "ok") {
                a["previous_level"] = a["level"].clone();
                a["level"] = Value::from("ok");
                a["repeat"] = Value::from(false);
                a["ts"] = Value::from(rfc3339_from_secs(now_s));
                let msg = a["message"]
                    .as_str()
                    .unwrap_or("")
                    .split(" is ")
                    .next()
                    .unwrap_or("")
                    .to_string();
                a["message"] = Value::from(format!("{msg} is no longer reported: resolved"));
                alerts.push(a);
            }
            false
        });
        alerts
    }
}

/// Evaluations a scope may go unseen before its state is dropped.
const STALE_EVALUATIONS: u64 = 30;

/// One (rule, scope) with its lifecycle and when it was last seen.
struct Tracked {
    lifecycle: Lifecycle,
    last_seen: u64,
    /// The last alert said, to resolve it if the scope goes away.
    last_alert: Option<Value>,
}

/// The values of `kpi` in a record: one, or one per element when the path
/// goes through an array (the host's `disk`, labelled by mount).
fn observations(rec: &Value, kind: &str, kpi: &str) -> Vec<Observation> {
    let mut labels = Map::new();
    let key = match kind {
        "host" => "host".to_string(),
        "container" => {
            labels.insert("container_id".into(), rec["container_id"].clone());
            // The id and the cgroup: a lookalike is a scope of its own.
            format!(
                "{}/{}",
                rec["container_id"].as_str().unwrap_or(""),
                rec["cgroup"].as_str().unwrap_or("")
            )
        }
        "process" => {
            for k in ["pid", "comm", "container_id"] {
                labels.insert(k.into(), rec[k].clone());
            }
            rec["pid"].to_string()
        }
        "endpoint" => {
            for k in ["pid", "comm", "container_id", "role", "port", "peer"] {
                labels.insert(k.into(), rec[k].clone());
            }
            format!("{}/{}/{}/{}", rec["pid"], rec["role"], rec["port"], rec["peer"])
        }
        _ => return Vec::new(),
    };
    let scope = match kind {
        "host" => "host",
        "container" => "container",
        "process" => "process",
        _ => "endpoint",
    };
    let (first, rest) = kpi.split_once('.').unwrap_or((kpi, ""));
    match &rec[first] {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                let value = lookup(item, rest)?;
                let mut labels = labels.clone();
                let mount = item["mount"].clone();
                labels.insert("mount".into(), mount.clone());
                Some(Observation { scope, key: format!("{key}/{mount}"), labels, value })
            })
            .collect(),
        _ => lookup(rec, kpi)
            .map(|value| Observation { scope, key, labels, value })
            .into_iter()
            .collect(),
    }
}

fn lookup(v: &Value, path: &str) -> Option<f64> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part)?;
    }
    cur.as_f64()
}

/// What a KPI is called in a message, and its unit.
fn describe(kpi: &str) -> (String, &'static str) {
    let unit = if kpi.ends_with("_pct") {
        "%"
    } else if kpi.contains("_ms") {
        " ms"
    } else {
        ""
    };
    let name = match kpi {
        "requests.latency_ms.avg" => "average request latency",
        "requests.latency_ms.p50" => "median request latency",
        "requests.latency_ms.p95" => "p95 request latency",
        "requests.latency_ms.p99" => "p99 request latency",
        "requests.error_rate_pct" => "request error rate",
        "tcp.connect_error_rate_pct" => "connect error rate",
        "syscalls.error_rate_pct" => "system call error rate",
        "cpu.utilization_pct" => "CPU utilization",
        "memory.utilization_pct" => "memory utilization",
        "disk.utilization_pct" => "disk utilization",
        "cost.over_budget_pct" => "projected cost over budget",
        other => other,
    };
    (name.to_string(), unit)
}

/// The escalation guide's action for a KPI at a level.
fn action(kpi: &str, level: Level) -> &'static str {
    let escalate = level == Level::Escalate;
    if kpi.contains("latency") {
        if escalate { "escalate to the team lead" } else { "investigate now" }
    } else if kpi.contains("error") {
        if escalate { "escalate" } else { "investigate" }
    } else if kpi.starts_with("cost") {
        if escalate { "escalate to management" } else { "identify savings" }
    } else if escalate {
        "escalate"
    } else {
        "optimize or scale"
    }
}

/// A value for people: no decimals from 100, one from 1, three below.
pub fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Where, in words: "on port 8080 (nginx)", "in container 0123456789ab", ...
fn place(rec: &Value, obs: &Observation) -> String {
    let comm = rec["comm"].as_str().unwrap_or("?");
    match obs.scope {
        "host" => match obs.labels.get("mount").and_then(Value::as_str) {
            Some(m) => format!("on {m} of host {}", rec["host"].as_str().unwrap_or("?")),
            None => format!("on host {}", rec["host"].as_str().unwrap_or("?")),
        },
        "container" => {
            let id = rec["container_id"].as_str().unwrap_or("?");
            format!("in container {}", id.chars().take(12).collect::<String>())
        }
        "process" => format!("in {comm} (pid {})", rec["pid"]),
        _ if rec["role"] == "client" => {
            format!("of {comm} calling {}:{}", rec["peer"].as_str().unwrap_or("?"), rec["port"])
        }
        _ => format!("on port {} ({comm})", rec["port"]),
    }
}

fn alert(rec: &Value, rule: &Rule, obs: &Observation, t: Transition) -> Value {
    let (level, previous, since_s, repeated) = match t {
        Transition::Changed { from, to, since_s } => (to, from, since_s, false),
        Transition::Repeated { level, since_s } => (level, level, since_s, true),
    };
    let threshold = if level == Level::Escalate { rule.escalate } else { rule.investigate };
    // Resolving from escalate to investigate: below the escalate threshold.
    let threshold = if level < previous && level != Level::Ok { rule.escalate } else { threshold };
    let (what, unit) = describe(&rule.kpi);
    let v = obs.value;
    let place = place(rec, obs);
    let message = match level {
        Level::Ok => format!(
            "{what} {}{unit} {place} is back below {}{unit}: resolved",
            number(v),
            number(threshold)
        ),
        _ if level < previous => format!(
            "{what} {}{unit} {place} is back below {}{unit} but still above {}{unit}: {}",
            number(v),
            number(rule.escalate),
            number(rule.investigate),
            action(&rule.kpi, level)
        ),
        _ => format!(
            "{what} {}{unit} {place} is {}above {}{unit}: {}",
            number(v),
            if repeated { "still " } else { "" },
            number(threshold),
            action(&rule.kpi, level)
        ),
    };
    let mut out = Map::new();
    out.insert("v".into(), json!(crate::records::VERSION));
    out.insert("type".into(), json!("alert"));
    out.insert("ts".into(), rec["ts"].clone());
    out.insert("host".into(), rec["host"].clone());
    out.insert("interval_s".into(), rec["interval_s"].clone());
    out.insert("rule".into(), json!(rule.name));
    out.insert("kpi".into(), json!(rule.kpi));
    out.insert("level".into(), json!(level.name()));
    out.insert("previous_level".into(), json!(previous.name()));
    out.insert("repeat".into(), json!(repeated));
    out.insert("value".into(), json!(v));
    out.insert("threshold".into(), json!(threshold));
    out.insert("scope".into(), json!(obs.scope));
    for (k, val) in &obs.labels {
        out.insert(k.clone(), val.clone());
    }
    out.insert("since".into(), json!(rfc3339_from_secs(since_s)));
    out.insert("message".into(), json!(message));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(avg: f64) -> Value {
        json!({"v":1,"type":"endpoint","ts":"2026-11-29T10:00:00.000Z","host":"web-1","interval_s":10.0,
               "pid":42,"comm":"nginx","container_id":null,"role":"server","port":8080,"peer":null,
               "requests":{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":0.0,
                           "latency_ms":{"avg":avg,"p50":avg,"p95":avg,"p99":avg,"max":avg}}})
    }

    #[test]
    fn guide_message_for_slow_endpoint() {
        let mut cfg = Config::default();
        cfg.alerts.hold_intervals = 1;
        let mut e = Engine::new(&cfg);
        let a = e.evaluate(&[endpoint(612.0)], 1_000.0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["level"], "investigate");
        assert_eq!(a[0]["previous_level"], "ok");
        assert_eq!(a[0]["rule"], "request-latency");
        assert_eq!(a[0]["port"], 8080);
        assert_eq!(
            a[0]["message"],
            "average request latency 612 ms on port 8080 (nginx) is above 500 ms: investigate now"
        );
        let a = e.evaluate(&[endpoint(1500.0)], 1_010.0);
        assert_eq!(
            a[0]["message"],
            "average request latency 1500 ms on port 8080 (nginx) is above 1000 ms: escalate to the team lead"
        );
        let a = e.evaluate(&[endpoint(20.0)], 1_020.0);
        assert_eq!(a[0]["level"], "ok");
        assert!(a[0]["message"].as_str().unwrap().ends_with("resolved"), "{}", a[0]["message"]);
    }

    #[test]
    fn disk_rule_runs_per_mount() {
        let mut cfg = Config::default();
        cfg.alerts.hold_intervals = 1;
        let mut e = Engine::new(&cfg);
        let host = json!({"v":1,"type":"host","ts":"t","host":"h","interval_s":1.0,
            "disk":[{"mount":"/","utilization_pct":97.0},{"mount":"/data","utilization_pct":10.0}]});
        let a = e.evaluate(&[host], 5.0);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0]["mount"].as_str(), a[0]["level"].as_str()), (Some("/"), Some("escalate")));
        assert_eq!(
            a[0]["message"],
            "disk utilization 97.0% on / of host h is above 95.0%: escalate"
        );
    }

    #[test]
    fn a_scope_that_goes_away_is_resolved_and_forgotten() {
        let mut cfg = Config::default();
        cfg.alerts.hold_intervals = 1;
        let mut e = Engine::new(&cfg);
        assert_eq!(e.evaluate(&[endpoint(700.0)], 0.0).len(), 1);
        let mut resolved = Vec::new();
        for i in 1..=STALE_EVALUATIONS {
            resolved.extend(e.evaluate(&[], i as f64));
        }
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0]["level"], "ok");
        assert_eq!(
            resolved[0]["message"],
            "average request latency 700 ms on port 8080 (nginx) is no longer reported: resolved"
        );
        assert!(e.states.is_empty());
    }

    #[test]
    fn disabled_rules_are_silent() {
        let mut cfg = Config::default();
        cfg.alerts.hold_intervals = 1;
        cfg.rules.iter_mut().for_each(|r| r.enabled = false);
        assert!(Engine::new(&cfg).evaluate(&[endpoint(5000.0)], 1.0).is_empty());
    }
}
