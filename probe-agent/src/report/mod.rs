//! `report` and `compare`: for the people around a service, from recorded
//! KPI lines. The focus KPIs lead: each against its target over time (a
//! chart in the HTML), the stakeholder script filled in with the targets
//! and the measured baseline, then the quiet red flags (alerts repeated
//! without resolution, KPIs unavailable, intervals that lost or dropped
//! records, the agent's own alerts), every rule's targets and actuals, the
//! alerts, cost against budget and the top offenders.
//!
//! Both commands stream the recording an interval at a time into what they
//! print ([`Report`], [`Comparison`]), then render it as Markdown
//! (`markdown.rs`) or as one self-contained HTML file with inline SVG
//! charts (`html.rs`, `svg.rs`). Memory is bounded by the number of scopes
//! (at most [`MAX_SCOPES`] per KPI, the rest counted and said) and by the
//! points kept per chart line ([`MAX_POINTS`]), not by the recording's
//! length.

mod html;
mod markdown;
mod svg;
mod words;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub use self::{
    html::{compare_html, html},
    markdown::{compare_markdown, markdown},
};
use crate::{
    catalogue::{self, Unit},
    commands::CommandError,
    config::{Config, Focus},
    recording::Recording,
    records::{Kind, Record},
    rules::{Engine, lifecycle::Level},
    timefmt::parse_rfc3339,
};

/// Most scopes (processes, ports, ...) followed per KPI.
const MAX_SCOPES: usize = 100_000;
/// Most alert rows listed; the rest are counted.
const MAX_ALERT_ROWS: usize = 1000;
/// Most scopes per KPI whose series is kept for a chart (the first seen).
const MAX_CHARTED: usize = 64;
/// Points kept per chart line; past it, neighbours merge (keeping the
/// highest), so a week of 10 s intervals still draws in bounded memory.
pub const MAX_POINTS: usize = 512;
/// Lines per chart besides the hosts'.
const CHART_SCOPES: usize = 4;
/// Most alert periods kept per focus KPI for shading.
const MAX_PERIODS: usize = 10_000;

/// A KPI's figures for one scope over the intervals it had data in.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub n: u64,
    pub sum: f64,
    pub worst: f64,
}

impl Default for Stat {
    fn default() -> Self {
        Stat { n: 0, sum: 0.0, worst: f64::NEG_INFINITY }
    }
}

impl Stat {
    pub fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum / self.n as f64 }
    }

    fn add(&mut self, v: f64) {
        self.n += 1;
        self.sum += v;
        self.worst = self.worst.max(v);
    }

    fn merge(&mut self, o: &Stat) {
        self.n += o.n;
        self.sum += o.sum;
        self.worst = self.worst.max(o.worst);
    }
}

/// A chart line: (seconds since the recording's start, value), at most
/// [`MAX_POINTS`] of them; once full, each point stands for `2^merged`
/// intervals and holds the highest of them.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub points: Vec<(f32, f32)>,
    pub merged: u32,
    pending: Option<(f32, f32, u32)>,
}

impl Series {
    fn push(&mut self, t: f32, v: f32) {
        let p = self.pending.get_or_insert((t, v, 0));
        p.1 = p.1.max(v);
        p.2 += 1;
        if p.2 >= 1 << self.merged {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some((t, v, _)) = self.pending.take() {
            self.points.push((t, v));
        }
        if self.points.len() >= MAX_POINTS {
            self.points = self
                .points
                .chunks(2)
                .map(|c| (c[0].0, c.iter().map(|p| p.1).fold(f32::MIN, f32::max)))
                .collect();
            self.merged += 1;
        }
    }

    /// Points in time order (a recording of several runs may go back).
    fn finish(&mut self) {
        self.flush();
        self.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// One scope of a followed KPI.
#[derive(Clone, Debug, Default)]
struct Track {
    stat: Stat,
    /// Whether the scope ever had what the KPI measures (requests served,
    /// connects made): rows only for scopes with data.
    active: bool,
    series: Option<Series>,
}

#[derive(Default)]
struct Followed {
    scopes: BTreeMap<String, Track>,
    charted: bool,
}

/// What a KPI needs to mean anything in a record: a request KPI needs
/// requests (an error rate of nothing is not 0%), a connect KPI connects.
fn gate(kpi: &str) -> Option<&'static str> {
    if kpi.starts_with("requests.") {
        Some("requests.count")
    } else if kpi.starts_with("tcp.connect_") {
        Some("tcp.connects")
    } else {
        None
    }
}

/// A count or rate: zero in an interval without activity is a value.
fn is_volume(kpi: &str) -> bool {
    kpi.ends_with(".count") || kpi.ends_with("rate_per_s") || kpi.ends_with("errors")
}

fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |cur, p| cur.get(p))?.as_f64()
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
        "route" => {
            let method = r["method"].as_str().map(|m| format!("{m} ")).unwrap_or_default();
            let side = if r["role"] == "server" { "on port" } else { "calling port" };
            format!(
                "{method}{} {side} {} ({})",
                r["route"].as_str().unwrap_or("?"),
                r["port"],
                r["comm"].as_str().unwrap_or("?")
            )
        }
        other => other.to_string(),
    }
}

/// The values of `kpi` in a record, with their scope's label and whether
/// the scope was active: one, or one per filesystem for a disk KPI.
fn values(r: &Value, kpi: &str) -> Vec<(String, f64, bool)> {
    if let Some(rest) = kpi.strip_prefix("disk.") {
        let who = label(r);
        return r["disk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((format!("{who} {}", d["mount"].as_str().unwrap_or("?")), get(d, rest)?, true))
            })
            .collect();
    }
    let Some(v) = get(r, kpi) else { return Vec::new() };
    let active = gate(kpi).is_none_or(|g| get(r, g).is_some_and(|n| n > 0.0));
    if !active && !is_volume(kpi) {
        return Vec::new();
    }
    vec![(label(r), v, active)]
}

/// The series a command follows, filled an interval at a time.
#[derive(Default)]
struct Collector {
    /// (record type, KPI path) -> its scopes.
    follow: BTreeMap<(Kind, String), Followed>,
    /// Values not followed because a KPI had [`MAX_SCOPES`] scopes.
    cut: u64,
    t0: Option<f64>,
}

impl Collector {
    fn want(&mut self, kind: Kind, kpi: &str, charted: bool) {
        self.follow.entry((kind, kpi.to_string())).or_default().charted |= charted;
    }

    fn observe(&mut self, t: f64, records: &[Value]) {
        let t0 = *self.t0.get_or_insert(t);
        let rel = (t - t0) as f32;
        for ((kind, kpi), f) in &mut self.follow {
            for r in records.iter().filter(|r| r["type"] == kind.name()) {
                for (who, v, active) in values(r, kpi) {
                    if !f.scopes.contains_key(&who) && f.scopes.len() >= MAX_SCOPES {
                        self.cut += 1;
                        continue;
                    }
                    let n = f.scopes.len();
                    let track = f.scopes.entry(who).or_insert_with(|| Track {
                        series: (f.charted && n < MAX_CHARTED).then(Series::default),
                        ..Track::default()
                    });
                    track.active |= active;
                    track.stat.add(v);
                    if let Some(s) = &mut track.series {
                        s.push(rel, v as f32);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        for f in self.follow.values_mut() {
            f.scopes.retain(|_, t| t.active);
            for t in f.scopes.values_mut() {
                if let Some(s) = &mut t.series {
                    s.finish();
                }
            }
        }
    }

    /// The scopes with data of (kind, kpi).
    fn get(&self, kind: Kind, kpi: &str) -> Vec<(&String, &Track)> {
        self.follow
            .get(&(kind, kpi.to_string()))
            .map(|f| f.scopes.iter().collect())
            .unwrap_or_default()
    }

    fn stats(&self, kind: Kind, kpi: &str) -> Vec<(String, Stat)> {
        self.get(kind, kpi).into_iter().map(|(w, t)| (w.clone(), t.stat)).collect()
    }
}

/// A KPI's unit, from the catalogue.
pub fn unit_of(path: &str) -> Unit {
    catalogue::resolve(path).map_or(Unit::Count, |(k, _)| k.unit)
}

/// A KPI's name in words, from the catalogue ("average request latency").
pub fn words_of(path: &str) -> String {
    match catalogue::resolve(path) {
        Some((k, s)) => Focus { kpi: k, stat: s }.words(),
        None => path.to_string(),
    }
}

/// A rule, as the report shows it.
#[derive(Clone, Debug)]
pub struct RuleView {
    pub name: String,
    pub investigate: f64,
    pub escalate: f64,
    /// The guide's action at investigate and at escalate.
    pub actions: [&'static str; 2],
}

impl RuleView {
    /// The level a value calls for.
    pub fn level(&self, v: f64) -> Level {
        if v > self.escalate {
            Level::Escalate
        } else if v > self.investigate {
            Level::Investigate
        } else {
            Level::Ok
        }
    }
}

/// The enabled rule on a KPI path (the one watching hosts first).
fn rule_on(cfg: &Config, path: &str) -> Option<RuleView> {
    let mut on: Vec<_> = cfg.rules.iter().filter(|r| r.enabled && r.path() == path).collect();
    on.sort_by_key(|r| !r.scopes.contains(&Kind::Host));
    on.first().map(|r| RuleView {
        name: r.name.clone(),
        investigate: r.investigate,
        escalate: r.escalate,
        actions: r.kpi.actions,
    })
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    /// A host's line (drawn first and heavier).
    pub host: bool,
    pub series: Series,
    pub stat: Stat,
}

/// A time during which an alert on the KPI held, somewhere.
#[derive(Clone, Copy, Debug)]
pub struct Period {
    /// Seconds since the recording's start.
    pub from: f64,
    pub to: f64,
    pub level: Level,
}

/// A focus KPI: its target, its measured baseline, its chart.
#[derive(Clone, Debug)]
pub struct FocusView {
    pub path: String,
    pub words: String,
    pub unit: Unit,
    pub rule: Option<RuleView>,
    /// Over the host records (every host): the baseline.
    pub baseline: Option<Stat>,
    pub lines: Vec<Line>,
    pub periods: Vec<Period>,
    /// Alerts raised on it: (investigate, escalate).
    pub raised: (u64, u64),
    /// Why there is nothing to show, when there is nothing.
    pub empty: Option<String>,
}

/// A row of the targets table.
#[derive(Clone, Debug)]
pub struct TargetRow {
    pub path: String,
    pub who: String,
    pub rule: RuleView,
    pub stat: Stat,
}

/// An alert from the moment it fired to the next change of its level.
#[derive(Clone, Debug)]
pub struct AlertRow {
    /// When it fired (seconds since the epoch).
    pub raised: f64,
    pub level: Level,
    pub rule: String,
    pub message: String,
    /// How long it held (None: still open at the end of the recording).
    pub lasted: Option<f64>,
    /// Times it was said again while it held (`repeat_every`).
    pub repeats: u64,
    /// Raised by the agent about itself (overhead, memory).
    pub agent: bool,
}

/// The quiet red flags an agent's records carry.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub agent_intervals: u64,
    /// KPI family -> (intervals unavailable, the reasons given).
    pub unavailable: BTreeMap<String, (u64, BTreeSet<String>)>,
    /// Intervals of which some sink dropped records, and the drops by reason.
    pub drop_intervals: u64,
    pub dropped: BTreeMap<String, u64>,
    /// Records missing from the recording: gaps in `seq`.
    pub seq_missing: u64,
    /// Intervals in which the kernel side lost events, and the counts.
    pub lost_intervals: u64,
    pub lost: BTreeMap<String, u64>,
    /// Intervals with latency timed for only 1 in N calls, the largest N.
    pub sampled_intervals: u64,
    pub sample_every_max: u64,
    /// Optional probes switched off by the budget: intervals off.
    pub probes_off: BTreeMap<String, u64>,
    /// Intervals each family's detail was shed (`syscalls`, `tcp`).
    pub detail_off: BTreeMap<String, u64>,
    /// Intervals at the cost floor (everything but requests shed, still
    /// over budget), and the highest residual cost then.
    pub floor_intervals: u64,
    pub residual_max_pct: f64,
    /// Configuration reloads refused.
    pub config_errors: BTreeSet<String>,
}

/// Projected cost against the budget.
#[derive(Clone, Debug, Default)]
pub struct CostView {
    pub lines: Vec<Line>,
    pub budget: Option<f64>,
    /// The rule on cost over budget (percent over).
    pub rule: Option<RuleView>,
    pub containers: Vec<(String, Stat)>,
}

/// Top offenders: the scopes with the highest average of a KPI.
#[derive(Clone, Debug)]
pub struct Offenders {
    pub title: &'static str,
    pub kpi: &'static str,
    pub rows: Vec<(String, Stat)>,
}

/// Everything `report` says.
pub struct Report {
    pub source: String,
    pub intervals: u64,
    /// First and last interval (seconds since the epoch).
    pub first: f64,
    pub last: f64,
    /// The first interval read: chart times count from it.
    pub t0: f64,
    /// A typical interval's length (s), for where a line has gaps.
    pub step: f64,
    pub hosts: Vec<String>,
    pub long_lines: u64,
    pub profile: &'static str,
    pub focus: Vec<FocusView>,
    pub targets: Vec<TargetRow>,
    pub alerts: Vec<AlertRow>,
    pub more_alerts: u64,
    pub flags: Flags,
    pub cost: CostView,
    pub offenders: Vec<Offenders>,
    /// Values not followed past [`MAX_SCOPES`] scopes.
    pub cut: u64,
}

impl Report {
    /// Alerts said again while they held: the ones being ignored.
    pub fn repeated(&self) -> impl Iterator<Item = &AlertRow> {
        self.alerts.iter().filter(|a| a.repeats > 0)
    }
}

/// The top offender tables: (title, record type, KPI).
const OFFENDERS: [(&str, Kind, &str); 6] = [
    ("Processes by CPU (busy cores)", Kind::Process, "cpu.cores"),
    ("Containers by CPU (busy cores)", Kind::Container, "cpu.cores"),
    ("Ports by average request latency", Kind::Endpoint, "requests.latency_ms.avg"),
    ("Ports by request error rate", Kind::Endpoint, "requests.error_rate_pct"),
    ("Routes by average request latency", Kind::Route, "requests.latency_ms.avg"),
    ("Routes by request error rate", Kind::Route, "requests.error_rate_pct"),
];

/// The scopes charted for a KPI besides the host, in order of preference.
const CHART_KINDS: [Kind; 3] = [Kind::Endpoint, Kind::Container, Kind::Process];

/// The kinds of record a focus KPI is followed in.
fn focus_kinds(f: &Focus) -> impl Iterator<Item = Kind> + '_ {
    std::iter::once(Kind::Host).chain(CHART_KINDS).filter(|k| f.kpi.scopes.contains(k))
}

/// An alert whose level holds: its row, level, since when (seconds since
/// the epoch) and KPI path.
struct Held {
    row: Option<usize>,
    level: Level,
    since: f64,
    kpi: String,
}

/// Held alerts by (rule, scope).
type Open = BTreeMap<String, Held>;

/// What the alerts of one interval do to the rows and periods.
struct Alerts {
    rows: Vec<AlertRow>,
    more: u64,
    open: Open,
    /// KPI path -> periods.
    periods: BTreeMap<String, Vec<Period>>,
    raised: BTreeMap<String, (u64, u64)>,
}

impl Alerts {
    /// One alert: a change of level (closing the open row, opening a new
    /// one unless resolved) or a repeat.
    #[allow(clippy::too_many_arguments)]
    fn said(
        &mut self,
        key: String,
        kpi: &str,
        (level, repeat): (Level, bool),
        at: f64,
        since: f64,
        t0: f64,
        (rule, message, agent): (&str, &str, bool),
    ) {
        if repeat {
            if let Some(Held { row: Some(i), .. }) = self.open.get(&key) {
                self.rows[*i].repeats += 1;
            }
            return;
        }
        if let Some(held) = self.open.remove(&key) {
            if let Some(i) = held.row {
                self.rows[i].lasted = Some(at - self.rows[i].raised);
            }
            let p = self.periods.entry(held.kpi).or_default();
            if p.len() < MAX_PERIODS {
                p.push(Period { from: held.since - t0, to: at - t0, level: held.level });
            }
        }
        if level == Level::Ok {
            return;
        }
        let r = self.raised.entry(kpi.to_string()).or_default();
        if level == Level::Escalate {
            r.1 += 1;
        } else {
            r.0 += 1;
        }
        let row = if self.rows.len() < MAX_ALERT_ROWS {
            self.rows.push(AlertRow {
                raised: at,
                level,
                rule: rule.to_string(),
                message: message.to_string(),
                lasted: None,
                repeats: 0,
                agent,
            });
            Some(self.rows.len() - 1)
        } else {
            self.more += 1;
            None
        };
        self.open.insert(key, Held { row, level, since: since.min(at), kpi: kpi.to_string() });
    }
}

/// What an `agent` record says that a person should know.
fn flag(flags: &mut Flags, a: &Value) {
    flags.agent_intervals += 1;
    for (family, s) in a["kpis"].as_object().into_iter().flatten() {
        if s["available"] == false {
            let e = flags.unavailable.entry(family.clone()).or_default();
            e.0 += 1;
            if e.1.len() < 5 {
                e.1.insert(s["reason"].as_str().unwrap_or("no reason given").to_string());
            }
        }
    }
    let out = &a["output"];
    let mut dropped = 0;
    for s in out["sinks"].as_array().into_iter().flatten() {
        for (reason, n) in s["dropped_records"].as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                *flags.dropped.entry(reason.clone()).or_default() += n;
                dropped += n;
            }
        }
    }
    if dropped > 0 || out["dropped_intervals"].as_u64().unwrap_or(0) > 0 {
        flags.drop_intervals += 1;
    }
    let mut lost = 0;
    for (k, n) in a["lost"].as_object().into_iter().flatten() {
        // Not losses: the first grows with the fork rate (see the README);
        // the second counts calls while their detail is shed (said below).
        if k == "syscall_no_start" || k == "syscalls_shed" {
            continue;
        }
        let n = n.as_u64().unwrap_or(0);
        if n > 0 {
            *flags.lost.entry(k.clone()).or_default() += n;
            lost += n;
        }
    }
    if lost > 0 {
        flags.lost_intervals += 1;
    }
    let every = a["shedding"]["latency_sample_every"].as_u64().unwrap_or(1);
    if every > 1 {
        flags.sampled_intervals += 1;
        flags.sample_every_max = flags.sample_every_max.max(every);
    }
    for p in a["shedding"]["probes_off"].as_array().into_iter().flatten() {
        *flags.probes_off.entry(p.as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    for d in a["shedding"]["detail_off"].as_array().into_iter().flatten() {
        *flags.detail_off.entry(d.as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    if let Some(r) = a["shedding"]["residual_pct"].as_f64() {
        flags.floor_intervals += 1;
        flags.residual_max_pct = flags.residual_max_pct.max(r);
    }
    if let Some(e) = a["config"]["last_error"].as_str()
        && flags.config_errors.len() < 5
    {
        flags.config_errors.insert(e.to_string());
    }
}

/// Which kernel-side family a KPI comes from (the `kpis` maps' names).
fn family_of(path: &str) -> &'static str {
    match path.split('.').next().unwrap_or("") {
        "requests" | "tcp" => "tcp",
        "cpu" if path.starts_with("cpu.runq") => "runq_latency",
        "cpu" | "cost" => "cpu",
        "memory" => "memory",
        "disk" => "disk",
        _ => "syscalls",
    }
}

/// Why a focus KPI has no data.
fn why_empty(path: &str, flags: &Flags) -> String {
    let family = family_of(path);
    if let Some((n, reasons)) = flags.unavailable.get(family) {
        let reasons: Vec<&str> = reasons.iter().map(String::as_str).collect();
        return format!(
            "the {family} KPIs were unavailable in {n} interval(s): {}",
            reasons.join("; ")
        );
    }
    if path.starts_with("requests.") {
        "no requests were served in this recording".into()
    } else if path.starts_with("tcp.connect_") {
        "no outbound connections were made in this recording".into()
    } else if path.starts_with("cost.") {
        "cost is not configured: set prices ([cost] host_usd_month, or core_hour_usd and \
         gib_hour_usd) and budget_usd_month"
            .into()
    } else {
        "no host record carried it".into()
    }
}

/// Tracks `seq` per host: records missing between two that are there.
#[derive(Default)]
struct Seqs {
    last: BTreeMap<String, u64>,
}

impl Seqs {
    fn see(&mut self, r: &Value) -> u64 {
        let (Some(seq), Some(host)) = (r["seq"].as_u64(), r["host"].as_str()) else { return 0 };
        let gap = match self.last.get(host) {
            // seq 0 is a new run's status record.
            Some(&last) if seq > last + 1 && seq != 0 => seq - last - 1,
            _ => 0,
        };
        if self.last.len() < 1000 || self.last.contains_key(host) {
            self.last.insert(host.to_string(), seq);
        }
        gap
    }
}

/// `report FILE`: streams the recording into the [`Report`].
pub fn collect(path: &std::path::Path, config: &Config) -> Result<Report, CommandError> {
    let rules: Vec<_> = config.rules.iter().filter(|r| r.enabled).collect();
    let mut c = Collector::default();
    for rule in &rules {
        for &kind in &rule.scopes {
            c.want(kind, &rule.path(), false);
        }
    }
    for f in &config.focus {
        for kind in focus_kinds(f) {
            c.want(kind, &f.path(), true);
        }
    }
    for k in ["cost.projected_usd_month", "cost.budget_usd_month"] {
        c.want(Kind::Host, k, true);
    }
    c.want(Kind::Container, "cost.projected_usd_month", false);
    for (_, kind, kpi) in OFFENDERS {
        c.want(kind, kpi, false);
    }
    let mut engine = Engine::new(config);
    let mut alerts = Alerts {
        rows: Vec::new(),
        more: 0,
        open: Open::new(),
        periods: BTreeMap::new(),
        raised: BTreeMap::new(),
    };
    let mut flags = Flags::default();
    let mut seqs = Seqs::default();
    let (mut first, mut last, mut intervals) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
    let mut t0 = None;
    let mut hosts = BTreeSet::new();
    let mut rec = Recording::open(path)?;
    while let Some((secs, recs)) = rec.next_interval()? {
        let start = *t0.get_or_insert(secs);
        first = first.min(secs);
        last = last.max(secs);
        intervals += 1;
        for r in &recs {
            if let Some(h) = r["host"].as_str()
                && hosts.len() < 100
            {
                hosts.insert(h.to_string());
            }
            flags.seq_missing += seqs.see(r);
            match r["type"].as_str() {
                Some("agent") => flag(&mut flags, r),
                // The agent's alerts about itself: no rule raises them again.
                Some("alert") if r["scope"] == "agent" => {
                    let level = serde_json::from_value(r["level"].clone()).unwrap_or(Level::Ok);
                    let rule = r["rule"].as_str().unwrap_or("?");
                    let since = r["since"].as_str().and_then(parse_rfc3339).unwrap_or(secs);
                    alerts.said(
                        format!("agent|{rule}|{}", r["host"]),
                        r["kpi"].as_str().unwrap_or(""),
                        (level, r["repeat"] == true),
                        secs,
                        since,
                        start,
                        (rule, r["message"].as_str().unwrap_or(""), true),
                    );
                }
                _ => {}
            }
        }
        c.observe(secs, &recs);
        let kpis: Vec<Record> = crate::commands::typed(recs, path)?
            .into_iter()
            .filter(|r| r.kind() != Kind::Alert)
            .collect();
        for a in engine.evaluate(&kpis, secs) {
            let key = format!("{}|{}|{:?}|{}", a.rule, a.scope.name(), a.place, a.header.host);
            let since = parse_rfc3339(&a.since).unwrap_or(secs);
            alerts.said(
                key,
                &a.kpi,
                (a.level, a.repeat),
                secs,
                since,
                start,
                (&a.rule, &a.message, false),
            );
        }
    }
    rec.finish();
    c.finish();
    let t0 = t0.unwrap_or(0.0);
    if intervals == 0 {
        (first, last) = (0.0, 0.0);
    }
    let step = if intervals > 1 { (last - first) / (intervals - 1) as f64 } else { 1.0 };

    let focus = config
        .focus
        .iter()
        .map(|f| focus_view(f, config, &c, &alerts, &flags, (t0, last)))
        .collect();
    let targets = targets(&rules, &c);
    let cost = cost_view(config, &c);
    let offenders = OFFENDERS
        .iter()
        .map(|&(title, kind, kpi)| {
            let mut rows = c.stats(kind, kpi);
            rows.sort_by(|a, b| b.1.mean().total_cmp(&a.1.mean()));
            rows.truncate(5);
            Offenders { title, kpi, rows }
        })
        .collect();
    let mut rows = alerts.rows;
    rows.sort_by(|a, b| a.raised.total_cmp(&b.raised));
    Ok(Report {
        source: path.display().to_string(),
        intervals,
        first,
        last,
        t0,
        step: step.max(0.001),
        hosts: hosts.into_iter().collect(),
        long_lines: rec.long_lines,
        profile: config.profile.name(),
        focus,
        targets,
        alerts: rows,
        more_alerts: alerts.more,
        flags,
        cost,
        offenders,
        cut: c.cut,
    })
}

/// A chart's lines: every host's (up to five), then the worst scopes of
/// the first other kind with data.
fn lines_of(c: &Collector, kinds: &[Kind], kpi: &str) -> Vec<Line> {
    let line = |(who, t): (&String, &Track), host: bool| {
        t.series.clone().map(|series| Line { label: who.clone(), host, series, stat: t.stat })
    };
    let mut out: Vec<Line> =
        c.get(Kind::Host, kpi).into_iter().take(5).filter_map(|s| line(s, true)).collect();
    for &kind in kinds.iter().filter(|&&k| k != Kind::Host) {
        let mut scopes = c.get(kind, kpi);
        if scopes.is_empty() {
            continue;
        }
        scopes.sort_by(|a, b| b.1.stat.worst.total_cmp(&a.1.stat.worst));
        out.extend(scopes.into_iter().filter_map(|s| line(s, false)).take(CHART_SCOPES));
        break;
    }
    out
}

fn focus_view(
    f: &Focus,
    cfg: &Config,
    c: &Collector,
    alerts: &Alerts,
    flags: &Flags,
    (t0, last): (f64, f64),
) -> FocusView {
    let path = f.path();
    let kinds: Vec<Kind> = focus_kinds(f).collect();
    let lines = lines_of(c, &kinds, &path);
    let mut baseline: Option<Stat> = None;
    for (_, t) in c.get(Kind::Host, &path) {
        baseline.get_or_insert_with(Stat::default).merge(&t.stat);
    }
    let mut periods = alerts.periods.get(&path).cloned().unwrap_or_default();
    // Alerts still open at the end hold until then.
    for held in alerts.open.values().filter(|h| h.kpi == path) {
        periods.push(Period { from: held.since - t0, to: last - t0, level: held.level });
    }
    let empty = lines.is_empty().then(|| why_empty(&path, flags));
    FocusView {
        words: f.words(),
        unit: f.kpi.unit,
        rule: rule_on(cfg, &path),
        baseline,
        lines,
        periods,
        raised: alerts.raised.get(&path).copied().unwrap_or_default(),
        empty,
        path,
    }
}

/// Each rule's KPI against its target: every host, and the five worst of
/// each other scope, only where the KPI had data.
fn targets(rules: &[&crate::config::Rule], c: &Collector) -> Vec<TargetRow> {
    let mut out = Vec::new();
    for rule in rules {
        let path = rule.path();
        let view = RuleView {
            name: rule.name.clone(),
            investigate: rule.investigate,
            escalate: rule.escalate,
            actions: rule.kpi.actions,
        };
        for &kind in &rule.scopes {
            let mut rows = c.stats(kind, &path);
            rows.sort_by(|a, b| b.1.worst.total_cmp(&a.1.worst));
            for (who, stat) in
                rows.into_iter().take(if kind == Kind::Host { usize::MAX } else { 5 })
            {
                out.push(TargetRow { path: path.clone(), who, rule: view.clone(), stat });
            }
        }
    }
    out
}

fn cost_view(cfg: &Config, c: &Collector) -> CostView {
    let lines = lines_of(c, &[Kind::Host], "cost.projected_usd_month");
    let budget = c
        .get(Kind::Host, "cost.budget_usd_month")
        .into_iter()
        .map(|(_, t)| t.stat.worst)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let mut containers = c.stats(Kind::Container, "cost.projected_usd_month");
    containers.sort_by(|a, b| b.1.mean().total_cmp(&a.1.mean()));
    containers.truncate(5);
    CostView { lines, budget, rule: rule_on(cfg, "cost.over_budget_pct"), containers }
}

/// One recording, as `compare` reads it.
pub struct Side {
    pub source: String,
    pub intervals: u64,
    pub first: f64,
    pub last: f64,
    collector: Collector,
}

/// A focus KPI before and after.
pub struct FocusCompare {
    pub path: String,
    pub words: String,
    pub unit: Unit,
    pub rule: Option<RuleView>,
    /// The host lines of each recording (time since its start).
    pub before: Vec<Line>,
    pub after: Vec<Line>,
    /// Its sentences (per host, and per port for request KPIs).
    pub sentences: Vec<String>,
}

/// A row of the comparison.
pub struct CompareRow {
    pub path: String,
    pub who: String,
    pub before: f64,
    pub after: f64,
    pub change_pct: f64,
}

/// Everything `compare` says.
pub struct Comparison {
    pub baseline: Side,
    pub current: Side,
    pub focus: Vec<FocusCompare>,
    pub rows: Vec<CompareRow>,
    /// The quantified sentences, the focus KPIs' first.
    pub sentences: Vec<String>,
}

/// The KPIs `compare` looks at besides the focus: (record type, path).
const COMPARED: &[(Kind, &str)] = &[
    (Kind::Endpoint, "requests.latency_ms.avg"),
    (Kind::Endpoint, "requests.latency_ms.p99"),
    (Kind::Endpoint, "requests.error_rate_pct"),
    (Kind::Endpoint, "requests.rate_per_s"),
    (Kind::Host, "requests.latency_ms.avg"),
    (Kind::Host, "cpu.utilization_pct"),
    (Kind::Host, "memory.utilization_pct"),
    (Kind::Host, "syscalls.error_rate_pct"),
    (Kind::Host, "tcp.connect_error_rate_pct"),
    (Kind::Process, "cpu.cores"),
];

/// What `compare` follows, the focus KPIs first (host, then per port for
/// request KPIs), then [`COMPARED`].
fn compared(cfg: &Config) -> Vec<(Kind, String)> {
    let mut out: Vec<(Kind, String)> = Vec::new();
    for f in &cfg.focus {
        let path = f.path();
        out.push((Kind::Host, path.clone()));
        if f.kpi.scopes.contains(&Kind::Endpoint) {
            out.push((Kind::Endpoint, path.clone()));
        }
        if f.kpi.scopes.contains(&Kind::Route) {
            out.push((Kind::Route, path));
        }
    }
    for &(kind, kpi) in COMPARED {
        if !out.iter().any(|(k, p)| *k == kind && p == kpi) {
            out.push((kind, kpi.to_string()));
        }
    }
    out
}

/// Streams one recording into the series `compare` follows.
fn side(path: &std::path::Path, cfg: &Config) -> Result<Side, CommandError> {
    let mut c = Collector::default();
    for (kind, kpi) in compared(cfg) {
        c.want(kind, &kpi, kind == Kind::Host);
    }
    let mut rec = Recording::open(path)?;
    let (mut n, mut first, mut last) = (0, f64::INFINITY, f64::NEG_INFINITY);
    while let Some((secs, recs)) = rec.next_interval()? {
        n += 1;
        first = first.min(secs);
        last = last.max(secs);
        c.observe(secs, &recs);
    }
    rec.finish();
    c.finish();
    if n == 0 {
        (first, last) = (0.0, 0.0);
    }
    Ok(Side { source: path.display().to_string(), intervals: n, first, last, collector: c })
}

/// A change in words: "average request latency on port 8080 (api) fell
/// 21% (612 ms to 483 ms)"; None when both are zero.
fn sentence(name: &str, who: &str, a: f64, b: f64, u: &str) -> Option<String> {
    use crate::rules::number as num;
    if a == 0.0 && b == 0.0 {
        return None;
    }
    let change = if a != 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    if (b - a).abs() < 1e-9 || (a != 0.0 && change.abs() < 0.5) {
        return Some(format!("{name} on {who} was unchanged ({}{u})", num(a)));
    }
    let verb = if b < a { "fell" } else { "rose" };
    let by = if a != 0.0 { format!(" {:.0}%", change.abs()) } else { String::new() };
    Some(format!("{name} on {who} {verb}{by} ({}{u} to {}{u})", num(a), num(b)))
}

/// `compare BASELINE CURRENT`: each KPI's change, the focus KPIs first.
pub fn compare(
    baseline: &std::path::Path,
    current: &std::path::Path,
    cfg: &Config,
) -> Result<Comparison, CommandError> {
    let (a, b) = (side(baseline, cfg)?, side(current, cfg)?);
    let mut rows = Vec::new();
    let mut sentences = Vec::new();
    let mut by_path: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, kpi) in compared(cfg) {
        let (sa, sb) = (a.collector.stats(kind, &kpi), b.collector.stats(kind, &kpi));
        let sb: BTreeMap<String, Stat> = sb.into_iter().collect();
        let u = unit_of(&kpi).suffix();
        for (who, va) in &sa {
            let Some(vb) = sb.get(who) else { continue };
            let (ma, mb) = (va.mean(), vb.mean());
            let change_pct = if ma != 0.0 { (mb - ma) / ma * 100.0 } else { 0.0 };
            rows.push(CompareRow {
                path: kpi.clone(),
                who: who.clone(),
                before: ma,
                after: mb,
                change_pct,
            });
            if let Some(s) = sentence(&words_of(&kpi), who, ma, mb, u) {
                by_path.entry(kpi.clone()).or_default().push(s.clone());
                sentences.push(s);
            }
        }
    }
    let focus = cfg
        .focus
        .iter()
        .map(|f| {
            let path = f.path();
            FocusCompare {
                words: f.words(),
                unit: f.kpi.unit,
                rule: rule_on(cfg, &path),
                before: lines_of(&a.collector, &[Kind::Host], &path),
                after: lines_of(&b.collector, &[Kind::Host], &path),
                sentences: by_path.get(&path).cloned().unwrap_or_default(),
                path,
            }
        })
        .collect();
    Ok(Comparison { baseline: a, current: b, focus, rows, sentences })
}

#[cfg(test)]
mod tests;
