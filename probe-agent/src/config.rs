//! The configuration file (TOML, `--config`): rules and their thresholds,
//! the alert lifecycle, and prices for the cost KPI.
//!
//! Parsing is strict (an unknown key is an error naming the key and its
//! line), and the documented default configuration is the parse of
//! [`DEFAULT`], so `probe-agent config --default` prints exactly what the
//! agent runs with.

use std::time::Duration;

use serde::Deserialize;

use crate::cli::parse_duration;

/// The default configuration, commented. Printed by `config --default`.
pub const DEFAULT: &str = include_str!("default-config.toml");

/// Errors reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An industry profile applied over the rules: "none", "ecommerce", "fintech".
    #[serde(default = "none")]
    pub profile: String,
    /// Where records go (optional; `--output` replaces it): the same
    /// specs as `--output`. Read at start; SIGHUP does not change sinks.
    #[serde(default)]
    pub outputs: Vec<String>,
    pub alerts: Alerts,
    pub cost: Cost,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

fn none() -> String {
    "none".into()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// Intervals a new level must hold before it fires (and before it clears).
    pub hold_intervals: u32,
    /// A level clears only once the value is this many percent below its threshold.
    pub clear_margin_pct: f64,
    /// While a level holds, the alert is repeated this often.
    pub repeat_every: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// The host's price per month (USD); 0 = price by use instead.
    pub host_usd_month: f64,
    /// Price per busy core-hour (USD), when host_usd_month is 0.
    pub core_hour_usd: f64,
    /// Price per GiB-hour of used memory (USD), when host_usd_month is 0.
    pub gib_hour_usd: f64,
    /// Monthly budget (USD); 0 = no budget, no over-budget figure.
    pub budget_usd_month: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Path of the KPI in the records, e.g. "requests.latency_ms.avg".
    pub kpi: String,
    /// Record types it applies to: host, container, process, endpoint.
    pub scopes: Vec<String>,
    pub investigate: f64,
    pub escalate: f64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The validated alert settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSettings {
    pub hold_intervals: u32,
    pub clear_margin: f64,
    pub repeat_every: Duration,
}

const SCOPES: [&str; 4] = ["host", "container", "process", "endpoint"];

impl Default for Config {
    fn default() -> Self {
        parse(DEFAULT, "default configuration").expect("the default configuration parses")
    }
}

/// Largest configuration file read.
const MAX_BYTES: u64 = 1 << 20;

/// Reads, parses and validates a configuration file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text =
        read_bounded(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    parse(&text, &shown)
}

/// Reads a regular file of at most [`MAX_BYTES`]. A FIFO, a device or a
/// directory is refused before anything is read from it (`/dev/zero`
/// would never end; a FIFO would block until someone writes), and a file
/// that grows while read stops at the bound.
pub fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(bad("larger than 1 MiB".into()));
    }
    String::from_utf8(buf).map_err(|_| bad("not UTF-8 text".into()))
}

/// Parses and validates a configuration text; `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    if text.len() > 1 << 20 {
        return Err(ConfigError::Parse { path: path.into(), message: "larger than 1 MiB".into() });
    }
    let mut cfg: Config = toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: path.into(), message: describe(text, &e) })?;
    let bad = |message: String| ConfigError::Invalid { path: path.into(), message };
    for o in &cfg.outputs {
        o.parse::<crate::sink::OutputSpec>().map_err(|e| bad(format!("outputs: {e}")))?;
    }
    match cfg.profile.as_str() {
        "none" => {}
        "ecommerce" | "fintech" => cfg.rules = apply_profile(&cfg.profile, cfg.rules),
        other => return Err(bad(format!("profile {other:?}: use none, ecommerce or fintech"))),
    }
    let a = &cfg.alerts;
    if a.hold_intervals == 0 || a.hold_intervals > 1000 {
        return Err(bad(format!(
            "alerts.hold_intervals must be 1 to 1000, got {}",
            a.hold_intervals
        )));
    }
    if !(0.0..=50.0).contains(&a.clear_margin_pct) {
        return Err(bad(format!(
            "alerts.clear_margin_pct must be 0 to 50, got {}",
            a.clear_margin_pct
        )));
    }
    parse_duration(&a.repeat_every).map_err(|e| bad(format!("alerts.repeat_every: {e}")))?;
    let c = &cfg.cost;
    for (k, v) in [
        ("host_usd_month", c.host_usd_month),
        ("core_hour_usd", c.core_hour_usd),
        ("gib_hour_usd", c.gib_hour_usd),
        ("budget_usd_month", c.budget_usd_month),
    ] {
        if !v.is_finite() || !(0.0..=1e12).contains(&v) {
            return Err(bad(format!("cost.{k} must be a non-negative number, got {v}")));
        }
    }
    let mut names = std::collections::HashSet::new();
    for r in &cfg.rules {
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            return Err(bad(format!("rule name {:?} is empty or used twice", r.name)));
        }
        if r.kpi.is_empty() || r.kpi.split('.').any(str::is_empty) {
            return Err(bad(format!("rule {}: kpi {:?} is not a dotted path", r.name, r.kpi)));
        }
        if r.scopes.is_empty() || r.scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
            return Err(bad(format!(
                "rule {}: scopes must be among {SCOPES:?}, got {:?}",
                r.name, r.scopes
            )));
        }
        if !r.investigate.is_finite() || !r.escalate.is_finite() || r.investigate >= r.escalate {
            return Err(bad(format!(
                "rule {}: investigate ({}) must be below escalate ({})",
                r.name, r.investigate, r.escalate
            )));
        }
        if r.kpi.ends_with("_pct") && (r.investigate < 0.0 || r.escalate > 1e6) {
            return Err(bad(format!("rule {}: a percentage threshold must be from 0", r.name)));
        }
    }
    Ok(cfg)
}

/// A toml error with the line it is on.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let key = text.get(span.clone()).unwrap_or("").trim();
            format!("line {line}: {msg} (at `{key}`)")
        }
        None => msg,
    }
}

/// The industry profiles of the escalation guide: e-commerce puts latency
/// first (tighter request latency, and p95 as well as the average),
/// fintech puts errors first (tighter request and connect error rates).
fn apply_profile(profile: &str, mut rules: Vec<Rule>) -> Vec<Rule> {
    let set = |rules: &mut Vec<Rule>, name: &str, inv: f64, esc: f64| {
        if let Some(r) = rules.iter_mut().find(|r| r.name == name) {
            r.investigate = inv;
            r.escalate = esc;
        }
    };
    match profile {
        "ecommerce" => {
            set(&mut rules, "request-latency", 300.0, 800.0);
            if !rules.iter().any(|r| r.name == "request-latency-p95") {
                rules.push(Rule {
                    name: "request-latency-p95".into(),
                    kpi: "requests.latency_ms.p95".into(),
                    scopes: vec!["endpoint".into(), "process".into()],
                    investigate: 800.0,
                    escalate: 1500.0,
                    enabled: true,
                });
            }
        }
        "fintech" => {
            set(&mut rules, "request-errors", 0.1, 1.0);
            set(&mut rules, "connect-errors", 0.5, 2.0);
        }
        _ => {}
    }
    rules
}

impl Config {
    pub fn alert_settings(&self) -> AlertSettings {
        AlertSettings {
            hold_intervals: self.alerts.hold_intervals,
            clear_margin: self.alerts.clear_margin_pct / 100.0,
            repeat_every: parse_duration(&self.alerts.repeat_every)
                .unwrap_or(Duration::from_secs(1800)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_and_has_the_guide() {
        let c = Config::default();
        assert_eq!(parse(DEFAULT, "x").unwrap(), c);
        let rule = |n: &str| c.rules.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(
            (rule("request-latency").investigate, rule("request-latency").escalate),
            (500.0, 1000.0)
        );
        assert_eq!(
            (rule("request-errors").investigate, rule("request-errors").escalate),
            (1.0, 5.0)
        );
        assert_eq!((rule("cpu").investigate, rule("cpu").escalate), (80.0, 95.0));
        assert_eq!((rule("memory").investigate, rule("disk").escalate), (80.0, 95.0));
        assert_eq!((rule("cost").investigate, rule("cost").escalate), (10.0, 20.0));
        assert_eq!(c.alert_settings().repeat_every, Duration::from_secs(1800));
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let text = DEFAULT.replace("hold_intervals = 2", "hold_intervals = 2\nhold_intervalz = 3");
        let err = parse(&text, "f.toml").unwrap_err().to_string();
        assert!(err.contains("hold_intervalz") && err.contains("line "), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (from, to) in [
            ("investigate = 500.0", "investigate = 5000.0"),
            ("hold_intervals = 2", "hold_intervals = 0"),
            ("clear_margin_pct = 10.0", "clear_margin_pct = 90.0"),
            ("repeat_every = \"30m\"", "repeat_every = \"soon\""),
            ("profile = \"none\"", "profile = \"retail\""),
            ("budget_usd_month = 0.0", "budget_usd_month = -5.0"),
            ("scopes = [\"host\", \"container\"]", "scopes = [\"galaxy\"]"),
        ] {
            assert!(DEFAULT.contains(from), "{from}");
            let text = DEFAULT.replacen(from, to, 1);
            assert!(parse(&text, "f").is_err(), "{to} accepted");
        }
        assert!(parse("[alerts\n", "f").is_err());
        assert!(parse(&"x".repeat(2 << 20), "f").is_err());
    }

    /// Property: whatever the bytes, parsing returns Ok or Err, never
    /// panics. Inputs are the default file with random truncations, byte
    /// flips, duplicated and deleted spans, and random bytes (a small
    /// deterministic fuzzer: xorshift, fixed seed, 20000 cases).
    #[test]
    fn fuzz_parser_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let base = DEFAULT.as_bytes();
        let mut accepted = 0;
        for case in 0..20_000 {
            let mut b = base.to_vec();
            match case % 5 {
                0 => b.truncate(next(b.len())),
                1 => {
                    for _ in 0..1 + next(8) {
                        let i = next(b.len());
                        b[i] = next(256) as u8;
                    }
                }
                2 => {
                    let (i, j) = (next(b.len()), next(b.len()));
                    let (i, j) = (i.min(j), i.max(j));
                    let span = b[i..j].to_vec();
                    let at = next(b.len());
                    b.splice(at..at, span);
                }
                3 => {
                    let (i, j) = (next(b.len()), next(b.len()));
                    b.drain(i.min(j)..i.max(j));
                }
                _ => b = (0..next(400)).map(|_| next(256) as u8).collect(),
            }
            let text = String::from_utf8_lossy(&b);
            if parse(&text, "fuzz").is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 0, "some mutations stay valid (e.g. a changed comment)");
    }

    #[test]
    fn profiles_tighten_the_guide() {
        let e =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"ecommerce\""), "f").unwrap();
        assert!(e.rules.iter().any(|r| r.kpi == "requests.latency_ms.p95"));
        assert_eq!(
            e.rules.iter().find(|r| r.name == "request-latency").unwrap().investigate,
            300.0
        );
        let f =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"fintech\""), "f").unwrap();
        assert_eq!(f.rules.iter().find(|r| r.name == "request-errors").unwrap().investigate, 0.1);
    }
}
