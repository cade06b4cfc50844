//! The configuration file (TOML, `--config`): rules and their thresholds,
//! the alert lifecycle, prices for the cost KPI, and outputs.
//!
//! It is parsed strictly into [`RawConfig`] (an unknown key is an error
//! naming the key and its line) and validated once into [`Config`], the
//! only type the agent uses: durations parsed, outputs parsed, each rule's
//! KPI resolved in the catalogue. The documented default configuration is
//! [`default_text`] (its rules come from the catalogue's escalation guide),
//! so `probe-agent config --default` prints exactly what the agent runs with.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    catalogue::{self, Kpi, Stat},
    records::Kind,
    sink::OutputSpec,
    timefmt::parse_duration,
};

/// The default configuration's header: everything but the rules.
const HEADER: &str = include_str!("default-config.toml");

/// The default configuration, commented: the header and the escalation
/// guide's rules from the catalogue. Printed by `config --default`.
pub fn default_text() -> String {
    let by_profile: String = [Profile::None, Profile::Ecommerce, Profile::Fintech]
        .iter()
        .map(|p| format!("#   {}: {}\n", p.name(), p.focus().join(", ")))
        .collect();
    let mut out = HEADER.replace("# {focus by profile}\n", &by_profile);
    for k in catalogue::KPIS {
        let Some(r) = k.rule else { continue };
        let scopes: Vec<String> = r.scopes.iter().map(|s| format!("\"{}\"", s.name())).collect();
        out += &format!(
            "\n[[rule]]\nname = \"{}\"\nkpi = \"{}\"\nscopes = [{}]\ninvestigate = {:?}\nescalate = {:?}\n",
            r.name,
            catalogue::path_of(k, r.stat),
            scopes.join(", "),
            r.investigate,
            r.escalate
        );
    }
    out
}

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

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// An industry profile applied over the rules: "none", "ecommerce", "fintech".
    #[serde(default = "none")]
    profile: String,
    /// Where records go (optional; `--output` replaces it): the same specs
    /// as `--output`. Read at start; SIGHUP does not change sinks.
    #[serde(default)]
    outputs: Vec<String>,
    /// The 3-5 KPIs that lead the report and the console (optional; by
    /// default the profile's, [`Profile::focus`]).
    #[serde(default)]
    focus: Option<Vec<String>>,
    alerts: RawAlerts,
    cost: Cost,
    /// How requests count (optional).
    #[serde(default)]
    requests: RawRequests,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequests {
    /// Count client errors (HTTP 4xx) as errors too (default: beside them).
    #[serde(default)]
    client_errors_are_errors: bool,
    /// Route patterns that take precedence over the automatic ones:
    /// `{name}` matches one path segment, e.g. "/api/users/{user}".
    #[serde(default)]
    routes: Vec<String>,
    /// Read HTTPS and other TLS through the uprobes on the libssl.so.3
    /// processes map (default: off, for their cost per call).
    #[serde(default)]
    tls_uprobes: bool,
}

fn none() -> String {
    "none".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    hold_intervals: u32,
    clear_margin_pct: f64,
    repeat_every: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    kpi: String,
    scopes: Vec<String>,
    investigate: f64,
    escalate: f64,
    #[serde(default = "yes")]
    enabled: bool,
    /// Fires when the value falls below the thresholds (a success rate).
    #[serde(default)]
    below: bool,
    /// Route records only: globs (`*` matches anything) on the route.
    #[serde(default)]
    routes: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub profile: Profile,
    pub outputs: Vec<OutputSpec>,
    /// The KPIs that matter most, in order: they lead the report, the
    /// console view and the default stream.
    pub focus: Vec<Focus>,
    pub alerts: AlertSettings,
    pub cost: Cost,
    pub rules: Vec<Rule>,
    /// How requests' outcomes count.
    pub outcomes: crate::aggregate::tcp::Outcomes,
    /// Route patterns (`[requests] routes`), in order.
    pub route_patterns: Vec<String>,
    /// Whether to attach the OpenSSL uprobes (`[requests] tls_uprobes`).
    pub tls_uprobes: bool,
}

/// The escalation guide's industry profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    None,
    /// Latency first: tighter request latency, and p95 as well as the average.
    Ecommerce,
    /// Errors first: tighter request and connect error rates.
    Fintech,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Ecommerce => "ecommerce",
            Profile::Fintech => "fintech",
        }
    }

    /// The profile's focus: the guide's headline KPIs in its order of
    /// emphasis (how slow, how often failing, how much served, how hot,
    /// what it costs). E-commerce leads with latency, its average and its
    /// p95 (checkout and catalog latency drive conversion); fintech with
    /// errors, of requests and of connections (transaction success).
    pub fn focus(self) -> &'static [&'static str] {
        match self {
            Profile::None => &[
                "requests.latency_ms.avg",
                "requests.error_rate_pct",
                "requests.rate_per_s",
                "cpu.utilization_pct",
                "cost.over_budget_pct",
            ],
            Profile::Ecommerce => &[
                "requests.latency_ms.avg",
                "requests.latency_ms.p95",
                "requests.error_rate_pct",
                "requests.rate_per_s",
                "cpu.utilization_pct",
            ],
            Profile::Fintech => &[
                "requests.error_rate_pct",
                "tcp.connect_error_rate_pct",
                "requests.latency_ms.avg",
                "requests.rate_per_s",
                "cost.over_budget_pct",
            ],
        }
    }
}

/// A focus KPI, resolved in the catalogue.
#[derive(Clone, Copy)]
pub struct Focus {
    pub kpi: &'static Kpi,
    /// The statistic of a latency group.
    pub stat: Option<Stat>,
}

impl Focus {
    /// Its path in the records, e.g. "requests.latency_ms.avg".
    pub fn path(&self) -> String {
        catalogue::path_of(self.kpi, self.stat)
    }

    /// How people call it: "average request latency".
    pub fn words(&self) -> String {
        match self.stat {
            Some(s) => format!("{} {}", s.words(), self.kpi.name),
            None => self.kpi.name.to_string(),
        }
    }
}

impl std::fmt::Debug for Focus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Focus({})", self.path())
    }
}

impl PartialEq for Focus {
    fn eq(&self, o: &Self) -> bool {
        self.path() == o.path()
    }
}

/// Fewest and most focus KPIs: the guide's "3-5 KPIs with the biggest
/// impact, not everything".
pub const FOCUS_MIN: usize = 3;
pub const FOCUS_MAX: usize = 5;

/// Resolves a focus list: each path a catalogue KPI (a latency group with
/// its statistic), none twice, 3 to 5 of them.
fn focus(paths: &[impl AsRef<str>]) -> Result<Vec<Focus>, String> {
    if !(FOCUS_MIN..=FOCUS_MAX).contains(&paths.len()) {
        return Err(format!(
            "focus must list {FOCUS_MIN} to {FOCUS_MAX} KPIs (the guide: the few with the biggest \
             impact, not everything), got {}",
            paths.len()
        ));
    }
    let mut out: Vec<Focus> = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let (kpi, stat) = catalogue::resolve(p).ok_or_else(|| {
            format!(
                "focus: {p:?} is not a KPI of the catalogue (`probe-agent kpis` lists them; a \
                 latency group takes a statistic: .avg, .p50, .p95, .p99 or .max)"
            )
        })?;
        let f = Focus { kpi, stat };
        if out.contains(&f) {
            return Err(format!("focus: {p:?} is listed twice"));
        }
        out.push(f);
    }
    Ok(out)
}

/// The alert lifecycle's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSettings {
    /// Intervals a new level must hold before it fires (and before it clears).
    pub hold_intervals: u32,
    /// A level clears only once the value is this fraction below its threshold.
    pub clear_margin: f64,
    /// While a level holds, the alert is repeated this often.
    pub repeat_every: Duration,
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

/// A rule with its KPI resolved in the catalogue.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub kpi: &'static Kpi,
    /// The statistic of a latency group.
    pub stat: Option<Stat>,
    /// Record types it applies to.
    pub scopes: Vec<Kind>,
    pub investigate: f64,
    pub escalate: f64,
    pub enabled: bool,
    /// Fires below the thresholds instead of above (`_pct` KPIs only).
    pub below: bool,
    /// For route records: the globs a route must match (empty: any).
    pub routes: Vec<String>,
}

impl Rule {
    /// Whether the rule watches a route of this name.
    pub fn wants_route(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|g| glob(g, route))
    }
    /// The KPI's path in the records, e.g. "requests.latency_ms.avg".
    pub fn path(&self) -> String {
        catalogue::path_of(self.kpi, self.stat)
    }
}

impl PartialEq for Rule {
    fn eq(&self, o: &Self) -> bool {
        (&self.name, self.path(), &self.scopes, self.investigate, self.escalate, self.enabled)
            == (&o.name, o.path(), &o.scopes, o.investigate, o.escalate, o.enabled)
            && (self.below, &self.routes) == (o.below, &o.routes)
    }
}

impl std::fmt::Debug for Kpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kpi({})", self.path)
    }
}

impl Default for Config {
    fn default() -> Self {
        parse(&default_text(), "default configuration").expect("the default configuration parses")
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
    if text.len() as u64 > MAX_BYTES {
        return Err(ConfigError::Parse { path: path.into(), message: "larger than 1 MiB".into() });
    }
    let raw: RawConfig = toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: path.into(), message: describe(text, &e) })?;
    validate(raw).map_err(|message| ConfigError::Invalid { path: path.into(), message })
}

/// The one validation step: a raw configuration into the checked one.
fn validate(raw: RawConfig) -> Result<Config, String> {
    let outputs = raw
        .outputs
        .iter()
        .map(|o| o.parse::<OutputSpec>().map_err(|e| format!("outputs: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let profile = match raw.profile.as_str() {
        "none" => Profile::None,
        "ecommerce" => Profile::Ecommerce,
        "fintech" => Profile::Fintech,
        other => return Err(format!("profile {other:?}: use none, ecommerce or fintech")),
    };
    let a = &raw.alerts;
    if a.hold_intervals == 0 || a.hold_intervals > 1000 {
        return Err(format!("alerts.hold_intervals must be 1 to 1000, got {}", a.hold_intervals));
    }
    if !(0.0..=50.0).contains(&a.clear_margin_pct) {
        return Err(format!("alerts.clear_margin_pct must be 0 to 50, got {}", a.clear_margin_pct));
    }
    let repeat_every =
        parse_duration(&a.repeat_every).map_err(|e| format!("alerts.repeat_every: {e}"))?;
    let c = &raw.cost;
    for (k, v) in [
        ("host_usd_month", c.host_usd_month),
        ("core_hour_usd", c.core_hour_usd),
        ("gib_hour_usd", c.gib_hour_usd),
        ("budget_usd_month", c.budget_usd_month),
    ] {
        if !v.is_finite() || !(0.0..=1e12).contains(&v) {
            return Err(format!("cost.{k} must be a non-negative number, got {v}"));
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut rules = Vec::new();
    for r in raw.rules {
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            return Err(format!("rule name {:?} is empty or used twice", r.name));
        }
        let (kpi, stat) = catalogue::resolve(&r.kpi).ok_or_else(|| {
            format!(
                "rule {}: kpi {:?} is not a KPI of the catalogue (`probe-agent kpis` lists them; \
                 a latency group takes a statistic: .avg, .p50, .p95, .p99 or .max)",
                r.name, r.kpi
            )
        })?;
        let mut scopes = Vec::new();
        for s in &r.scopes {
            match Kind::parse(s).filter(|k| Kind::RULED.contains(k) && kpi.scopes.contains(k)) {
                Some(k) => scopes.push(k),
                None => {
                    let allowed: Vec<&str> = kpi
                        .scopes
                        .iter()
                        .filter(|k| Kind::RULED.contains(k))
                        .map(|k| k.name())
                        .collect();
                    return Err(format!(
                        "rule {}: scopes must be among {allowed:?} for {}, got {s:?}",
                        r.name, r.kpi
                    ));
                }
            }
        }
        if scopes.is_empty() {
            return Err(format!("rule {}: scopes must not be empty", r.name));
        }
        let ordered = if r.below { r.investigate > r.escalate } else { r.investigate < r.escalate };
        if !r.investigate.is_finite() || !r.escalate.is_finite() || !ordered {
            return Err(format!(
                "rule {}: investigate ({}) must be {} escalate ({})",
                r.name,
                r.investigate,
                if r.below { "above" } else { "below" },
                r.escalate
            ));
        }
        if r.below && !r.kpi.ends_with("_pct") {
            return Err(format!("rule {}: `below` applies to percentages (_pct) only", r.name));
        }
        if !r.routes.is_empty() && !scopes.contains(&Kind::Route) {
            return Err(format!("rule {}: `routes` needs the scope \"route\"", r.name));
        }
        if r.kpi.ends_with("_pct") && (r.investigate < 0.0 || r.escalate > 1e6) {
            return Err(format!("rule {}: a percentage threshold must be from 0", r.name));
        }
        rules.push(Rule {
            name: r.name,
            kpi,
            stat,
            scopes,
            investigate: r.investigate,
            escalate: r.escalate,
            enabled: r.enabled,
            below: r.below,
            routes: r.routes,
        });
    }
    apply_profile(profile, &mut rules);
    let route_patterns = raw.requests.routes.clone();
    if let Some(p) = route_patterns.iter().find(|p| !p.starts_with('/') || p.len() > 256) {
        return Err(format!(
            "requests.routes: {p:?} must be a path starting with / (at most 256 bytes)"
        ));
    }
    if route_patterns.len() > 1000 {
        return Err("requests.routes: at most 1000 patterns".into());
    }
    let focus = match &raw.focus {
        Some(list) => focus(list)?,
        None => focus(profile.focus())?,
    };
    Ok(Config {
        profile,
        outputs,
        focus,
        alerts: AlertSettings {
            hold_intervals: a.hold_intervals,
            clear_margin: a.clear_margin_pct / 100.0,
            repeat_every,
        },
        cost: raw.cost,
        rules,
        outcomes: crate::aggregate::tcp::Outcomes {
            client_errors_are_errors: raw.requests.client_errors_are_errors,
        },
        route_patterns,
        tls_uprobes: raw.requests.tls_uprobes,
    })
}

/// Adds a profile's rule unless the configuration has one of that name.
fn add<'a>(
    rules: &'a mut Vec<Rule>,
    name: &str,
    kpi: &str,
    scopes: &[Kind],
    (investigate, escalate): (f64, f64),
    routes: &[&str],
) -> Option<&'a mut Rule> {
    if rules.iter().any(|r| r.name == name) {
        return None;
    }
    let (kpi, stat) = catalogue::resolve(kpi)?;
    rules.push(Rule {
        name: name.into(),
        kpi,
        stat,
        scopes: scopes.to_vec(),
        investigate,
        escalate,
        enabled: true,
        below: false,
        routes: routes.iter().map(|r| r.to_string()).collect(),
    });
    rules.last_mut()
}

/// Whether a route matches a pattern: segment by segment, a `{name}`
/// segment matching any one segment (the automatic `{id}` included).
pub fn route_matches(pattern: &str, route: &str) -> bool {
    let (p, r): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), route.split('/').collect());
    p.len() == r.len()
        && p.iter().zip(&r).all(|(p, r)| (p.starts_with('{') && p.ends_with('}')) || p == r)
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (case-sensitive).
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
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
fn apply_profile(profile: Profile, rules: &mut Vec<Rule>) {
    let set = |rules: &mut Vec<Rule>, name: &str, inv: f64, esc: f64| {
        if let Some(r) = rules.iter_mut().find(|r| r.name == name) {
            r.investigate = inv;
            r.escalate = esc;
        }
    };
    match profile {
        Profile::Ecommerce => {
            set(rules, "request-latency", 300.0, 800.0);
            add(
                rules,
                "request-latency-p95",
                "requests.latency_ms.p95",
                &[Kind::Endpoint, Kind::Process],
                (800.0, 1500.0),
                &[],
            );
            // The flows that drive conversion: checkout, and the catalogue.
            add(
                rules,
                "checkout-latency",
                "requests.latency_ms.p95",
                &[Kind::Route],
                (300.0, 800.0),
                &["*checkout*", "*cart*", "*payment*", "*order*"],
            );
            add(
                rules,
                "catalog-latency",
                "requests.latency_ms.avg",
                &[Kind::Route],
                (300.0, 800.0),
                &["*product*", "*catalog*", "*search*"],
            );
        }
        Profile::Fintech => {
            set(rules, "request-errors", 0.1, 1.0);
            set(rules, "connect-errors", 0.5, 2.0);
            // Transaction success rate per route: below 99.9% investigate,
            // below 99% escalate (the error thresholds, seen from the other side).
            if let Some(r) = add(
                rules,
                "transaction-success",
                "requests.success_rate_pct",
                &[Kind::Route],
                (99.9, 99.0),
                &[],
            ) {
                r.below = true;
            }
        }
        Profile::None => {}
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_and_has_the_guide() {
        let c = Config::default();
        let DEFAULT = &default_text();
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
        assert_eq!(c.alerts.repeat_every, Duration::from_secs(1800));
        assert_eq!(rule("request-latency").path(), "requests.latency_ms.avg");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let DEFAULT = &default_text();
        let text = DEFAULT.replace("hold_intervals = 2", "hold_intervals = 2\nhold_intervalz = 3");
        let err = parse(&text, "f.toml").unwrap_err().to_string();
        assert!(err.contains("hold_intervalz") && err.contains("line "), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let DEFAULT = &default_text();
        for (from, to) in [
            ("investigate = 500.0", "investigate = 5000.0"),
            ("hold_intervals = 2", "hold_intervals = 0"),
            ("clear_margin_pct = 10.0", "clear_margin_pct = 90.0"),
            ("repeat_every = \"30m\"", "repeat_every = \"soon\""),
            ("profile = \"none\"", "profile = \"retail\""),
            ("budget_usd_month = 0.0", "budget_usd_month = -5.0"),
            ("scopes = [\"host\", \"container\"]", "scopes = [\"galaxy\"]"),
            ("scopes = [\"host\"]", "scopes = [\"endpoint\"]"),
            ("kpi = \"cpu.utilization_pct\"", "kpi = \"cpu.utilisation_pct\""),
            ("kpi = \"requests.latency_ms.avg\"", "kpi = \"requests.latency_ms\""),
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
        let text = default_text();
        let base = text.as_bytes();
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
    fn tls_uprobes_default_off_and_switch_on() {
        assert!(!Config::default().tls_uprobes);
        let section = default_text().replace("# [requests]\n", "[requests]\n");
        assert!(!parse(&section, "x").unwrap().tls_uprobes, "a [requests] section without the key");
        let on = section.replace("# tls_uprobes = false\n", "tls_uprobes = true\n");
        assert_ne!(on, section);
        assert!(parse(&on, "x").unwrap().tls_uprobes);
    }

    #[test]
    fn route_patterns() {
        assert!(route_matches("/api/users/{user}", "/api/users/alice"));
        assert!(route_matches("/api/orders/{id}", "/api/orders/{id}"));
        assert!(!route_matches("/api/users/{user}", "/api/users/alice/cart"));
        assert!(!route_matches("/api/users", "/api/items"));
    }

    #[test]
    fn globs() {
        assert!(glob("*checkout*", "/api/checkout/{id}"));
        assert!(glob("/api/*", "/api/x"));
        assert!(glob("/api/*/items", "/api/7/items"));
        assert!(!glob("/api/*/items", "/api/7/item"));
        assert!(glob("GET", "GET") && !glob("GET", "GETS"));
        assert!(glob("*", ""));
    }

    #[test]
    fn focus_comes_from_the_profile_or_the_file_and_is_checked() {
        let DEFAULT = &default_text();
        let paths = |c: &Config| c.focus.iter().map(Focus::path).collect::<Vec<_>>();
        let c = Config::default();
        assert_eq!(paths(&c), Profile::None.focus());
        assert_eq!(c.focus[0].words(), "average request latency");
        let e =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"ecommerce\""), "f").unwrap();
        assert_eq!(paths(&e)[..2], ["requests.latency_ms.avg", "requests.latency_ms.p95"]);
        let f =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"fintech\""), "f").unwrap();
        assert_eq!(paths(&f)[0], "requests.error_rate_pct");
        let own = DEFAULT.replace(
            "profile = \"none\"",
            "profile = \"none\"\nfocus = [\"cpu.utilization_pct\", \"memory.utilization_pct\", \
             \"disk.utilization_pct\"]",
        );
        assert_eq!(
            paths(&parse(&own, "f").unwrap()),
            ["cpu.utilization_pct", "memory.utilization_pct", "disk.utilization_pct"]
        );
        for bad in [
            "[\"cpu.utilization_pct\", \"memory.utilization_pct\"]",
            "[\"cpu.utilization_pct\", \"cpu.utilization_pct\", \"memory.utilization_pct\"]",
            "[\"cpu.utilisation_pct\", \"memory.utilization_pct\", \"disk.utilization_pct\"]",
            "[\"requests.latency_ms\", \"memory.utilization_pct\", \"disk.utilization_pct\"]",
            "[\"a\", \"b\", \"c\", \"d\", \"e\", \"f\"]",
        ] {
            let text = DEFAULT
                .replace("profile = \"none\"", &format!("profile = \"none\"\nfocus = {bad}"));
            let err = parse(&text, "f").unwrap_err().to_string();
            assert!(err.contains("focus"), "{bad}: {err}");
        }
    }

    #[test]
    fn profiles_tighten_the_guide() {
        let DEFAULT = &default_text();
        let e =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"ecommerce\""), "f").unwrap();
        assert!(e.rules.iter().any(|r| r.path() == "requests.latency_ms.p95"));
        assert_eq!(
            e.rules.iter().find(|r| r.name == "request-latency").unwrap().investigate,
            300.0
        );
        let f =
            parse(&DEFAULT.replace("profile = \"none\"", "profile = \"fintech\""), "f").unwrap();
        assert_eq!(f.rules.iter().find(|r| r.name == "request-errors").unwrap().investigate, 0.1);
    }
}
