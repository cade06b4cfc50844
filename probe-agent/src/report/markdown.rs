//! The report and the comparison in Markdown (the default output).

use std::fmt::Write as _;

use super::{
    Comparison, Report,
    svg::duration,
    unit_of,
    words::{self, val},
};
use crate::{rules::number as num, timefmt::rfc3339_from_secs};

/// `report FILE`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# probe KPI report\n");
    let _ = writeln!(
        md,
        "{} intervals from {} to {} on {} (profile {}).\n",
        r.intervals,
        rfc3339_from_secs(r.first),
        rfc3339_from_secs(r.last),
        r.hosts.join(", "),
        r.profile
    );
    if r.long_lines > 0 {
        let _ = writeln!(md, "{} line(s) too long to be records were skipped.\n", r.long_lines);
    }

    let _ = writeln!(md, "## Focus\n");
    let _ = writeln!(
        md,
        "The KPIs that matter most, over the host records (charts: `report --html FILE`).\n"
    );
    let _ = writeln!(
        md,
        "| KPI | target (investigate above) | escalate above | baseline (average) | worst interval | status | alerts raised |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---:|");
    for f in &r.focus {
        let (t, e) = f.rule.as_ref().map_or(("-".into(), "-".into()), |rule| {
            (val(rule.investigate, f.unit), val(rule.escalate, f.unit))
        });
        let (avg, worst) = f
            .baseline
            .map_or(("-".into(), "-".into()), |b| (val(b.mean(), f.unit), val(b.worst, f.unit)));
        let _ = writeln!(
            md,
            "| {} (`{}`) | {t} | {e} | {avg} | {worst} | {} | {} |",
            f.words,
            f.path,
            words::status(f),
            f.raised.0 + f.raised.1
        );
    }
    for f in r.focus.iter().filter(|f| f.empty.is_some()) {
        let _ = writeln!(md, "\n{}: {}.", f.words, f.empty.as_deref().unwrap_or(""));
    }

    let _ = writeln!(md, "\n## Stakeholder script\n");
    let script: Vec<String> = words::script(r).iter().map(|p| format!("> {p}")).collect();
    let _ = writeln!(md, "{}", script.join("\n>\n"));

    let _ = writeln!(md, "\n## Quiet red flags\n");
    let flags = words::red_flags(r);
    if flags.is_empty() {
        let _ = writeln!(md, "{}", words::no_red_flags(r));
    }
    for f in flags {
        let _ = writeln!(md, "- {f}");
    }

    let _ = writeln!(md, "\n## Targets and actuals\n");
    let _ = writeln!(
        md,
        "| KPI | where | target (investigate at) | average | worst interval | status |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---|");
    for t in &r.targets {
        let u = unit_of(&t.path).suffix();
        let _ = writeln!(
            md,
            "| {} | {} | {}{u} | {}{u} | {}{u} | {} |",
            t.path,
            t.who,
            num(t.rule.investigate),
            num(t.stat.mean()),
            num(t.stat.worst),
            t.rule.level(t.stat.worst).name()
        );
    }

    let _ = writeln!(md, "\n## Alerts\n");
    if r.alerts.is_empty() {
        let _ = writeln!(md, "No alerts.");
    } else {
        let _ = writeln!(md, "| raised | level | lasted | message | repeats |");
        let _ = writeln!(md, "|---|---|---:|---|---:|");
        for a in &r.alerts {
            let lasted = a.lasted.map_or("still open".to_string(), duration);
            let _ = writeln!(
                md,
                "| {} | {} | {lasted} | {} | {} |",
                rfc3339_from_secs(a.raised),
                a.level.name(),
                a.message.replace('|', "/"),
                a.repeats
            );
        }
        if r.more_alerts > 0 {
            let _ = writeln!(md, "\nAnd {} more alerts, not listed.", r.more_alerts);
        }
    }

    let _ = writeln!(md, "\n## Cost against budget\n");
    match (r.cost.lines.is_empty(), r.cost.budget) {
        (true, _) => {
            let _ = writeln!(
                md,
                "Not measured: set prices ([cost] host_usd_month, or core_hour_usd and \
                 gib_hour_usd) and budget_usd_month."
            );
        }
        (false, budget) => {
            for l in &r.cost.lines {
                let _ = writeln!(
                    md,
                    "- {}: projected {} USD/month on average, {} at the most{}.",
                    l.label,
                    num(l.stat.mean()),
                    num(l.stat.worst),
                    budget.map_or(String::new(), |b| format!(
                        ", against a budget of {} USD/month ({:+.1}% on average)",
                        num(b),
                        (l.stat.mean() - b) / b.max(1e-9) * 100.0
                    ))
                );
            }
            for (who, s) in &r.cost.containers {
                let _ = writeln!(md, "- {who}: {} USD/month on average.", num(s.mean()));
            }
        }
    }

    let _ = writeln!(md, "\n## Top offenders\n");
    for o in &r.offenders {
        let _ = writeln!(md, "### {}\n", o.title);
        if o.rows.is_empty() {
            let _ = writeln!(md, "None recorded.\n");
            continue;
        }
        let u = unit_of(o.kpi).suffix();
        let _ = writeln!(md, "| | average | worst interval |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (who, st) in &o.rows {
            let _ = writeln!(md, "| {who} | {}{u} | {}{u} |", num(st.mean()), num(st.worst));
        }
        let _ = writeln!(md);
    }
    if r.cut > 0 {
        let _ = writeln!(
            md,
            "{} values of scopes past {} per KPI were not followed.",
            r.cut,
            super::MAX_SCOPES
        );
    }
    md
}

/// `compare BASELINE CURRENT`.
pub fn compare_markdown(c: &Comparison) -> String {
    let mut md = String::from("# probe comparison\n\n");
    let _ = writeln!(
        md,
        "Baseline: {} ({} intervals). Current: {} ({} intervals).\n",
        c.baseline.source, c.baseline.intervals, c.current.source, c.current.intervals,
    );
    let _ = writeln!(md, "## Focus\n");
    for f in &c.focus {
        if f.sentences.is_empty() {
            let _ = writeln!(md, "- {}: not in both recordings.", f.words);
        }
        for s in &f.sentences {
            let _ = writeln!(md, "- {s}.");
        }
    }
    let _ = writeln!(md, "\n| KPI | where | baseline | current | change |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    for row in &c.rows {
        let u = unit_of(&row.path).suffix();
        let _ = writeln!(
            md,
            "| {} | {} | {}{u} | {}{u} | {:+.1}% |",
            row.path,
            row.who,
            num(row.before),
            num(row.after),
            row.change_pct
        );
    }
    let _ = writeln!(md, "\n## In words\n");
    for s in &c.sentences {
        let _ = writeln!(md, "- {s}.");
    }
    md
}
