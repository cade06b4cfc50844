//! What the report says in sentences, the same in Markdown and HTML: the
//! stakeholder script and the quiet red flags.

use super::{FocusView, Report, svg::duration};
use crate::{catalogue::Unit, rules::number as num, timefmt::rfc3339_from_secs};

/// A value with its unit: "612 ms", "1.0%".
pub fn val(v: f64, u: Unit) -> String {
    if v == 0.0 {
        return format!("0{}", u.suffix());
    }
    format!("{}{}", num(v), u.suffix())
}

/// "a", "a and b", "a, b and c".
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Where a focus KPI stands against its target over the recording:
/// `ok`, `investigate`, `escalate`, or `no target` / `no data`.
pub fn status(f: &FocusView) -> &'static str {
    match (&f.rule, f.baseline) {
        (_, None) => "no data",
        (None, _) => "no target",
        (Some(r), Some(b)) => r.level(b.worst).name(),
    }
}

/// The guide's stakeholder alignment script, filled in: what we track,
/// the targets, the measured baseline, how we escalate, and the next step.
pub fn script(r: &Report) -> Vec<String> {
    let names: Vec<String> = r.focus.iter().map(|f| f.words.clone()).collect();
    let hosts = if r.hosts.is_empty() { "this service".to_string() } else { list(&r.hosts) };
    let mut out = vec![format!("We track {} KPIs on {hosts}: {}.", names.len(), list(&names))];
    let targets: Vec<String> = r
        .focus
        .iter()
        .filter_map(|f| {
            let rule = f.rule.as_ref()?;
            Some(format!("{} below {}", f.words, val(rule.investigate, f.unit)))
        })
        .collect();
    let untargeted: Vec<String> =
        r.focus.iter().filter(|f| f.rule.is_none()).map(|f| f.words.clone()).collect();
    let mut t = if targets.is_empty() {
        "No focus KPI has a target yet.".to_string()
    } else {
        format!("Our targets: {}.", list(&targets))
    };
    if !untargeted.is_empty() {
        t += &format!(" We follow the trend of {}.", list(&untargeted));
    }
    out.push(t);
    let base: Vec<String> = r
        .focus
        .iter()
        .map(|f| match f.baseline {
            Some(b) => format!(
                "{} {} on average, {} in the worst interval",
                f.words,
                val(b.mean(), f.unit),
                val(b.worst, f.unit)
            ),
            None => {
                format!("{} not measured ({})", f.words, f.empty.as_deref().unwrap_or("no data"))
            }
        })
        .collect();
    out.push(format!(
        "Our baseline, measured over {} ({} to {}): {}.",
        duration(r.last - r.first),
        rfc3339_from_secs(r.first),
        rfc3339_from_secs(r.last),
        base.join("; ")
    ));
    let escalate: Vec<String> = r
        .focus
        .iter()
        .filter_map(|f| {
            let rule = f.rule.as_ref()?;
            Some(format!("{} above {}: {}", f.words, val(rule.escalate, f.unit), rule.actions[1]))
        })
        .collect();
    if !escalate.is_empty() {
        out.push(format!(
            "We investigate any deviation from these targets, and escalate: {}.",
            escalate.join("; ")
        ));
    }
    let (inv, esc) = r.focus.iter().fold((0, 0), |(i, e), f| (i + f.raised.0, e + f.raised.1));
    let open = r.alerts.iter().filter(|a| a.lasted.is_none() && !a.agent).count();
    out.push(format!(
        "In this period the rules raised {inv} investigate and {esc} escalate alert(s) on these \
         KPIs{}.",
        if open > 0 {
            format!("; {open} alert(s) were still open at the end")
        } else {
            String::new()
        }
    ));
    out.push(
        "Next: make one change, record again within a week, and quantify its impact with \
         `probe-agent compare` (this recording as the baseline)."
            .into(),
    );
    out
}

/// The quiet red flags: alerts repeated without resolution, KPIs
/// unavailable and why, intervals that lost or dropped records, the
/// agent's own alerts. Empty when there is none.
pub fn red_flags(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for a in r.repeated() {
        let held = match a.lasted {
            Some(d) => format!("held {} before it cleared", duration(d)),
            None => {
                format!("still held at the end, {} after it fired", duration(r.last - a.raised))
            }
        };
        out.push(format!(
            "Repeated without resolution: {} ({}, rule {}) was said again {} time(s); {held}.",
            a.message,
            a.level.name(),
            a.rule,
            a.repeats
        ));
    }
    let f = &r.flags;
    for (family, (n, reasons)) in &f.unavailable {
        let reasons: Vec<String> = reasons.iter().cloned().collect();
        out.push(format!(
            "KPIs unavailable: {family} in {n} of {} interval(s): {}.",
            f.agent_intervals,
            reasons.join("; ")
        ));
    }
    for (probe, n) in &f.probes_off {
        out.push(format!(
            "Switched off by the overhead budget: {probe} in {n} interval(s); its KPIs were not \
             measured meanwhile."
        ));
    }
    for (family, n) in &f.detail_off {
        let what = match family.as_str() {
            "syscalls" => "the per-(process, system call) detail (calls still counted in all)",
            "tcp" => "the connection RTT and byte counts (requests still measured)",
            other => other,
        };
        out.push(format!("Shed by the overhead budget: {what} in {n} interval(s)."));
    }
    if f.floor_intervals > 0 {
        out.push(format!(
            "Over budget at its floor: in {} interval(s) everything but requests was shed and \
             the agent still cost up to {:.2}% of host CPU at that load.",
            f.floor_intervals, f.residual_max_pct
        ));
    }
    if f.sampled_intervals > 0 {
        out.push(format!(
            "Latency sampled: in {} interval(s) the overhead budget had system calls timed 1 in \
             up to {} (every call still counted).",
            f.sampled_intervals, f.sample_every_max
        ));
    }
    if f.drop_intervals > 0 {
        let by: Vec<String> = f.dropped.iter().map(|(k, n)| format!("{n} {k}")).collect();
        out.push(format!(
            "Records dropped: {} interval(s) had records dropped by a sink ({}).",
            f.drop_intervals,
            if by.is_empty() { "see the agent records".into() } else { by.join(", ") }
        ));
    }
    if f.seq_missing > 0 {
        out.push(format!(
            "Records missing: {} record(s) are not in this recording (gaps in seq): dropped on \
             the way, or filtered out before it was saved.",
            f.seq_missing
        ));
    }
    if f.lost_intervals > 0 {
        let by: Vec<String> = f.lost.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!(
            "Events lost: in {} interval(s) the kernel side could not record everything ({}).",
            f.lost_intervals,
            by.join(", ")
        ));
    }
    for e in &f.config_errors {
        out.push(format!("Configuration reload refused (the previous one stayed): {e}."));
    }
    let own: Vec<&super::AlertRow> = r
        .alerts
        .iter()
        .filter(|a| a.agent && a.level != crate::rules::lifecycle::Level::Ok)
        .collect();
    if !own.is_empty() {
        let mut rules: Vec<&str> = own.iter().map(|a| a.rule.as_str()).collect();
        rules.sort_unstable();
        rules.dedup();
        out.push(format!(
            "The agent raised {} alert(s) about itself ({}): see Alerts.",
            own.len(),
            rules.join(", ")
        ));
    }
    out
}

/// Said when there is no red flag.
pub fn no_red_flags(r: &Report) -> &'static str {
    if r.flags.agent_intervals == 0 {
        "None seen, but the recording has no agent records: the agent's own health (KPIs \
         unavailable, losses, drops) cannot be checked."
    } else {
        "None: no alert was repeated without resolution, every KPI family was available, and no \
         interval lost or dropped records."
    }
}
