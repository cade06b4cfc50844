//! Rules: thresholds on KPIs, evaluated each interval over the typed
//! records, with the alert lifecycle (hold, clear margin, repeat) per
//! (rule, scope). The agent and `replay` of recorded lines run the same code.

pub mod lifecycle;

use std::collections::HashMap;

use crate::{
    catalogue::{Read, Stat},
    config::{AlertSettings, Config, Rule},
    records::{AlertRecord, Header, Kind, Place, Record, VERSION},
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

/// One KPI value found in a record, where it was found.
struct Observation {
    /// Identifies the scope across intervals.
    key: String,
    place: Place,
    value: f64,
}

impl Engine {
    pub fn new(cfg: &Config) -> Self {
        Engine {
            rules: cfg.rules.iter().filter(|r| r.enabled).cloned().collect(),
            settings: cfg.alerts.clone(),
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
    /// the epoch); returns the alerts to write.
    pub fn evaluate(&mut self, records: &[Record], now_s: f64) -> Vec<AlertRecord> {
        self.evals += 1;
        let mut alerts = Vec::new();
        for rule in &self.rules {
            for rec in records {
                if !rule.scopes.contains(&rec.kind()) {
                    continue;
                }
                if let Record::Route(r) = rec
                    && !rule.wants_route(&r.route)
                {
                    continue;
                }
                for obs in observations(rec, rule) {
                    let state_key =
                        (rule.name.clone(), format!("{}/{}", rec.kind().name(), obs.key));
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
                    // A rule that fires below its thresholds (a success
                    // rate) watches the complement: 100 - value above
                    // 100 - threshold, margin and all.
                    let (v, inv, esc) = if rule.below {
                        (100.0 - obs.value, 100.0 - rule.investigate, 100.0 - rule.escalate)
                    } else {
                        (obs.value, rule.investigate, rule.escalate)
                    };
                    let Some(t) = tracked.lifecycle.observe(v, now_s, inv, esc, &self.settings)
                    else {
                        continue;
                    };
                    let a = alert(rec, rule, obs, t);
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
            if let Some(mut a) = t.last_alert.take().filter(|a| a.level != Level::Ok) {
                a.previous_level = a.level;
                a.level = Level::Ok;
                a.repeat = false;
                a.header.ts = rfc3339_from_secs(now_s);
                let what = a.message.split(" is ").next().unwrap_or("").to_string();
                a.message = format!("{what} is no longer reported: resolved");
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
    last_alert: Option<AlertRecord>,
}

/// What identifies a record's scope across intervals.
fn scope_key(rec: &Record) -> String {
    match rec {
        Record::Host(_) => "host".into(),
        // The id and the cgroup: a lookalike is a scope of its own.
        Record::Container(r) => format!("{}/{}", r.container_id, r.cgroup),
        Record::Process(r) => r.pid.to_string(),
        Record::Endpoint(r) => format!(
            "{}/{}/{}/{}",
            r.pid,
            r.role.name(),
            r.port,
            r.peer.as_deref().unwrap_or("null")
        ),
        Record::Route(r) => format!(
            "{}/{}/{}/{}/{}/{}",
            r.pid,
            r.role.name(),
            r.port,
            r.peer.as_deref().unwrap_or("null"),
            r.method.as_deref().unwrap_or(""),
            r.route
        ),
        _ => String::new(),
    }
}

/// The values of a rule's KPI in a record: one, or one per filesystem.
fn observations(rec: &Record, rule: &Rule) -> Vec<Observation> {
    let Some(place) = rec.place() else { return Vec::new() };
    let key = scope_key(rec);
    let groups = rec.groups();
    let one = |value: Option<f64>| {
        value.map(|value| Observation { key: key.clone(), place: place.clone(), value })
    };
    match rule.kpi.read {
        Read::Value(read) => one(read(&groups)).into_iter().collect(),
        Read::Latency(read) => {
            one(read(&groups).map(|l| rule.stat.unwrap_or(Stat::Avg).of(l))).into_iter().collect()
        }
        Read::Classes(_) => Vec::new(),
        Read::Disk(read) => groups
            .disk
            .iter()
            .map(|d| Observation {
                key: format!("{key}/{}", d.mount),
                place: Place::Host { mount: Some(d.mount.clone()) },
                value: read(d),
            })
            .collect(),
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
fn place_words(rec: &Record, place: &Place) -> String {
    let host = &rec.header().host;
    match place {
        Place::Host { mount: Some(m) } => format!("on {m} of host {host}"),
        Place::Host { mount: None } => format!("on host {host}"),
        Place::Container { container_id } => {
            format!("in container {}", container_id.chars().take(12).collect::<String>())
        }
        Place::Process { pid, comm, .. } => format!("in {comm} (pid {pid})"),
        Place::Endpoint { comm, role: crate::records::Role::Client, peer, port, .. } => {
            format!("of {comm} calling {}:{port}", peer.as_deref().unwrap_or("?"))
        }
        Place::Endpoint { comm, port, .. } => format!("on port {port} ({comm})"),
        Place::Route { comm, port, method, route, .. } => match method {
            Some(m) => format!("on {m} {route} at port {port} ({comm})"),
            None => format!("on {route} at port {port} ({comm})"),
        },
        Place::Agent { .. } => "in probe-agent".into(),
    }
}

fn alert(rec: &Record, rule: &Rule, obs: Observation, t: Transition) -> AlertRecord {
    let (level, previous, since_s, repeated) = match t {
        Transition::Changed { from, to, since_s } => (to, from, since_s, false),
        Transition::Repeated { level, since_s } => (level, level, since_s, true),
    };
    let threshold = if level == Level::Escalate { rule.escalate } else { rule.investigate };
    // Resolving from escalate to investigate: below the escalate threshold.
    let threshold = if level < previous && level != Level::Ok { rule.escalate } else { threshold };
    let what = match rule.stat {
        Some(s) => format!("{} {}", s.words(), rule.kpi.name),
        None => rule.kpi.name.to_string(),
    };
    let unit = rule.kpi.unit.suffix();
    let action = |l: Level| rule.kpi.actions[usize::from(l == Level::Escalate)];
    let v = obs.value;
    let place = place_words(rec, &obs.place);
    let (worse, better) = if rule.below { ("below", "above") } else { ("above", "below") };
    let message = match level {
        Level::Ok => format!(
            "{what} {}{unit} {place} is back {better} {}{unit}: resolved",
            number(v),
            number(threshold)
        ),
        _ if level < previous => format!(
            "{what} {}{unit} {place} is back {better} {}{unit} but still {worse} {}{unit}: {}",
            number(v),
            number(rule.escalate),
            number(rule.investigate),
            action(level)
        ),
        _ => format!(
            "{what} {}{unit} {place} is {}{worse} {}{unit}: {}",
            number(v),
            if repeated { "still " } else { "" },
            number(threshold),
            action(level)
        ),
    };
    let h = rec.header();
    AlertRecord {
        header: Header {
            v: VERSION,
            kind: Kind::Alert,
            ts: h.ts.clone(),
            host: h.host.clone(),
            interval_s: h.interval_s,
        },
        rule: rule.name.clone(),
        kpi: rule.path(),
        level,
        previous_level: previous,
        repeat: repeated,
        value: v,
        threshold,
        scope: rec.kind(),
        place: obs.place,
        since: rfc3339_from_secs(since_s),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EndpointRecord, HostRecord, Role};

    fn header(kind: Kind) -> Header {
        Header {
            v: 1,
            kind,
            ts: "2026-11-29T10:00:00.000Z".into(),
            host: "web-1".into(),
            interval_s: 10.0,
        }
    }

    fn endpoint(avg: f64) -> Record {
        let v = serde_json::json!({"v":1,"type":"endpoint","ts":"2026-11-29T10:00:00.000Z","host":"web-1","interval_s":10.0,
               "pid":42,"comm":"nginx","container_id":null,"role":"server","port":8080,"peer":null,
               "requests":{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":0.0,
                           "latency_ms":{"avg":avg,"p50":avg,"p95":avg,"p99":avg,"max":avg}}});
        let r: EndpointRecord = serde_json::from_value(v).unwrap();
        assert_eq!((r.role, r.header.kind), (Role::Server, Kind::Endpoint));
        Record::Endpoint(r)
    }

    fn fast() -> Config {
        let mut cfg = Config::default();
        cfg.alerts.hold_intervals = 1;
        cfg
    }

    #[test]
    fn guide_message_for_slow_endpoint() {
        let mut e = Engine::new(&fast());
        let a = e.evaluate(&[endpoint(612.0)], 1_000.0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].level, Level::Investigate);
        assert_eq!(a[0].previous_level, Level::Ok);
        assert_eq!(a[0].rule, "request-latency");
        assert_eq!(a[0].kpi, "requests.latency_ms.avg");
        assert!(matches!(a[0].place, Place::Endpoint { port: 8080, .. }));
        assert_eq!(
            a[0].message,
            "average request latency 612 ms on port 8080 (nginx) is above 500 ms: investigate now"
        );
        let a = e.evaluate(&[endpoint(1500.0)], 1_010.0);
        assert_eq!(
            a[0].message,
            "average request latency 1500 ms on port 8080 (nginx) is above 1000 ms: escalate to the team lead"
        );
        let a = e.evaluate(&[endpoint(20.0)], 1_020.0);
        assert_eq!(a[0].level, Level::Ok);
        assert!(a[0].message.ends_with("resolved"), "{}", a[0].message);
    }

    #[test]
    fn disk_rule_runs_per_mount() {
        let mut e = Engine::new(&fast());
        let v = serde_json::json!({"v":1,"type":"host","ts":"t","host":"h","interval_s":1.0,
            "syscalls":{"count":0,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.0,"latency_ms":null},
            "cpus":2,"cpu":{"cores":0.0,"utilization_pct":0.0,"runq_latency_ms":null},
            "memory":{"used_bytes":1,"total_bytes":100,"utilization_pct":1.0},
            "disk":[{"mount":"/","fstype":"ext4","used_bytes":97,"size_bytes":100,"utilization_pct":97.0},
                    {"mount":"/data","fstype":"ext4","used_bytes":1,"size_bytes":100,"utilization_pct":10.0}],
            "tcp":{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,
                   "accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,
                   "bytes_sent":0,"bytes_received":0},
            "requests":{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null},
            "cost":{"projected_usd_month":null,"budget_usd_month":null,"over_budget_pct":null}});
        let host: HostRecord = serde_json::from_value(v).unwrap();
        let a = e.evaluate(&[Record::Host(host)], 5.0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].place, Place::Host { mount: Some("/".into()) });
        assert_eq!(a[0].level, Level::Escalate);
        assert_eq!(a[0].message, "disk utilization 97.0% on / of host h is above 95.0%: escalate");
        let _ = header(Kind::Host);
    }

    #[test]
    fn a_scope_that_goes_away_is_resolved_and_forgotten() {
        let mut e = Engine::new(&fast());
        assert_eq!(e.evaluate(&[endpoint(700.0)], 0.0).len(), 1);
        let mut resolved = Vec::new();
        for i in 1..=STALE_EVALUATIONS {
            resolved.extend(e.evaluate(&[], i as f64));
        }
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].level, Level::Ok);
        assert_eq!(
            resolved[0].message,
            "average request latency 700 ms on port 8080 (nginx) is no longer reported: resolved"
        );
        assert!(e.states.is_empty());
    }

    fn route(name: &str, count: u64, errors: u64) -> Record {
        let rate = errors as f64 * 100.0 / count as f64;
        let v = serde_json::json!({"v":1,"type":"route","ts":"2026-11-29T10:00:00.000Z","host":"h","interval_s":10.0,
               "pid":42,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,
               "protocol":"http1","method":"POST","route":name,
               "requests":{"count":count,"rate_per_s":1.0,"errors":errors,"error_rate_pct":rate,
                           "latency_ms":null,"client_errors":0,"success_rate_pct":100.0 - rate,
                           "status":null}});
        Record::Route(serde_json::from_value(v).unwrap())
    }

    /// The fintech profile's transaction success rate fires below its
    /// thresholds, per route, in words that say so.
    #[test]
    fn success_rate_fires_below_and_resolves_above() {
        let text = crate::config::default_text()
            .replace("profile = \"none\"", "profile = \"fintech\"")
            .replace("hold_intervals = 2", "hold_intervals = 1");
        let cfg = crate::config::parse(&text, "f").unwrap();
        let mut e = Engine::new(&cfg);
        let a: Vec<_> = e
            .evaluate(&[route("/api/pay", 1000, 20)], 0.0)
            .into_iter()
            .filter(|a| a.rule == "transaction-success")
            .collect();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].level, Level::Escalate);
        assert_eq!(
            a[0].message,
            "transaction success rate 98.0% on POST /api/pay at port 8080 (api) is below 99.0%: escalate"
        );
        let a: Vec<_> = e
            .evaluate(&[route("/api/pay", 1000, 0)], 10.0)
            .into_iter()
            .filter(|a| a.rule == "transaction-success")
            .collect();
        assert_eq!(a[0].level, Level::Ok, "{a:?}");
        assert!(a[0].message.contains("is back above 99.9%"), "{}", a[0].message);
    }

    /// Route rules watch only the routes their globs match.
    #[test]
    fn route_globs_choose_the_routes() {
        let text = crate::config::default_text()
            .replace("profile = \"none\"", "profile = \"ecommerce\"")
            .replace("hold_intervals = 2", "hold_intervals = 1");
        let cfg = crate::config::parse(&text, "f").unwrap();
        let checkout = cfg.rules.iter().find(|r| r.name == "checkout-latency").unwrap();
        assert!(checkout.wants_route("/api/checkout/{id}"));
        assert!(!checkout.wants_route("/api/health"));
    }

    #[test]
    fn disabled_rules_are_silent() {
        let mut cfg = fast();
        cfg.rules.iter_mut().for_each(|r| r.enabled = false);
        assert!(Engine::new(&cfg).evaluate(&[endpoint(5000.0)], 1.0).is_empty());
    }

    /// A recorded run replayed as typed records raises exactly the alerts
    /// the rules raised from JSON before (kept in tests/fixtures).
    #[test]
    fn a_recorded_run_raises_the_same_alerts_as_before() {
        use std::io::Read as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut lines = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(dir.join("recorded.jsonl.gz")).unwrap())
            .read_to_string(&mut lines)
            .unwrap();
        let cfg = crate::config::load(&dir.join("recorded.config.toml")).unwrap();
        let want: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.join("recorded.alerts.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let mut rec = crate::recording::Recording::from_reader(
            Box::new(std::io::Cursor::new(lines.into_bytes())),
            "fixture".into(),
        );
        let mut e = Engine::new(&cfg);
        let mut got = Vec::new();
        while let Some((secs, values)) = rec.next_interval().unwrap() {
            let records: Vec<Record> = values
                .into_iter()
                .filter_map(|v| Record::from_value(v).unwrap())
                .filter(|r| r.kind() != Kind::Alert)
                .collect();
            for a in e.evaluate(&records, secs) {
                got.push(serde_json::to_value(&a).unwrap());
            }
        }
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }
}
