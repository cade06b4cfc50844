//! The report and the comparison as one self-contained HTML file: inline
//! CSS and SVG only, no script, and no font, image or style fetched from
//! anywhere, so it can be mailed, attached to a ticket or opened offline.

use std::fmt::Write as _;

use super::{
    Comparison, FocusView, Line, Report,
    svg::{self, Chart, Mark, duration, esc},
    unit_of,
    words::{self, val},
};
use crate::{catalogue::Unit, rules::number as num, timefmt::rfc3339_from_secs};

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#111827;
 margin:0 auto;max-width:900px;padding:24px;line-height:1.45;background:#f9fafb}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 10px;border-bottom:1px solid #e5e7eb;
 padding-bottom:4px}h3{font-size:16px;margin:0 0 4px}
.meta{color:#4b5563;margin:0}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.n{text-align:right;white-space:nowrap}
figure{background:#fff;border:1px solid #e5e7eb;border-radius:6px;margin:14px 0;padding:12px}
figcaption{margin-bottom:6px}.target{color:#374151;font-size:13px}
.legend{list-style:none;padding:0;margin:6px 0 0;font-size:12px;color:#374151}
.legend li{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
.empty{color:#6b7280;font-style:italic;margin:8px 0}
blockquote{background:#fff;border-left:4px solid #2563eb;margin:8px 0;padding:8px 16px}
.lvl{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;font-weight:600}
.lvl.ok{background:#d1fae5;color:#065f46}.lvl.investigate{background:#fef3c7;color:#92400e}
.lvl.escalate{background:#fee2e2;color:#991b1b}.lvl.none{background:#e5e7eb;color:#374151}
.flags li{margin:4px 0}.bar{background:#93c5fd;height:10px;display:inline-block}
footer{color:#6b7280;font-size:12px;margin-top:32px}
";

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(title)
    );
}

/// An id from a KPI path: `requests.latency_ms.avg` -> `requests-latency_ms-avg`.
pub fn slug(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect()
}

fn badge(level: &str) -> String {
    let cls = match level {
        "ok" | "investigate" | "escalate" => level,
        _ => "none",
    };
    format!("<span class=\"lvl {cls}\">{}</span>", esc(level))
}

/// The investigate and escalate lines of a rule on a KPI.
fn threshold_marks(rule: Option<&super::RuleView>, unit: Unit) -> Vec<Mark> {
    rule.map_or_else(Vec::new, |r| {
        vec![
            Mark {
                id: "investigate",
                label: format!("investigate {}", svg::short(r.investigate, unit)),
                value: r.investigate,
                color: svg::INVESTIGATE,
            },
            Mark {
                id: "escalate",
                label: format!("escalate {}", svg::short(r.escalate, unit)),
                value: r.escalate,
                color: svg::ESCALATE,
            },
        ]
    })
}

fn legend(
    out: &mut String,
    lines: &[&Line],
    colors: &[&str],
    unit: Unit,
    marks: &[Mark],
    shaded: bool,
) {
    out.push_str("<ul class=\"legend\">");
    for (i, l) in lines.iter().enumerate() {
        let color = colors.get(i).copied().unwrap_or_else(|| svg::color(i));
        let _ = write!(
            out,
            "<li><span class=\"sw\" style=\"background:{color}\"></span>{}: average {}, worst {}</li>",
            esc(&l.label),
            esc(&val(l.stat.mean(), unit)),
            esc(&val(l.stat.worst, unit)),
        );
    }
    for m in marks {
        let _ = write!(
            out,
            "<li><span class=\"sw\" style=\"background:{}\"></span>{}</li>",
            m.color,
            esc(&m.label)
        );
    }
    if shaded {
        out.push_str(
            "<li><span class=\"sw\" style=\"background:rgba(217,119,6,0.35);height:10px\"></span>\
             investigate alert held</li><li><span class=\"sw\" \
             style=\"background:rgba(220,38,38,0.35);height:10px\"></span>escalate alert held</li>",
        );
    }
    out.push_str("</ul>");
}

fn focus_figure(out: &mut String, r: &Report, f: &FocusView) {
    let id = format!("chart-{}", slug(&f.path));
    let _ = write!(
        out,
        "<figure id=\"focus-{}\"><figcaption><h3>{}</h3>",
        slug(&f.path),
        esc(&f.words)
    );
    let target = match (&f.rule, f.baseline) {
        (Some(rule), _) => format!(
            "Target: below {} (investigate above it), escalate above {} ({}; rule {}). ",
            val(rule.investigate, f.unit),
            val(rule.escalate, f.unit),
            rule.actions[1],
            rule.name
        ),
        (None, _) => "No target: its trend. ".to_string(),
    };
    let base = f.baseline.map_or(String::new(), |b| {
        format!(
            "Baseline {} on average, worst interval {}. ",
            val(b.mean(), f.unit),
            val(b.worst, f.unit)
        )
    });
    let _ = write!(
        out,
        "<div class=\"target\">{}{}Status: {} &middot; <code>{}</code></div></figcaption>",
        esc(&target),
        esc(&base),
        badge(words::status(f)),
        esc(&f.path)
    );
    if let Some(why) = &f.empty {
        let _ =
            write!(out, "<p class=\"empty\" id=\"{id}-empty\">No data: {}.</p></figure>", esc(why));
        return;
    }
    let marks = threshold_marks(f.rule.as_ref(), f.unit);
    let lines: Vec<&Line> = f.lines.iter().collect();
    out.push_str(&svg::render(&Chart {
        id,
        title: format!("{} over time", f.words),
        unit: f.unit,
        lines: lines.clone(),
        colors: &[],
        marks,
        periods: &f.periods,
        span: (r.first - r.t0, r.last - r.t0),
        step: r.step,
        t0: Some(r.t0),
    }));
    let marks = threshold_marks(f.rule.as_ref(), f.unit);
    legend(out, &lines, &[], f.unit, &marks, !f.periods.is_empty());
    if lines.iter().any(|l| l.series.merged > 0) {
        out.push_str(
            "<p class=\"target\">Long recording: each point is the highest of the intervals it \
             stands for.</p>",
        );
    }
    out.push_str("</figure>\n");
}

/// `report FILE --html OUT`.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    head(&mut out, &format!("probe KPI report: {}", r.hosts.join(", ")));
    let _ = writeln!(
        out,
        "<header><h1>probe KPI report</h1><p class=\"meta\">{} intervals over {} ({} to {}) on \
         {} &middot; profile {}</p></header>",
        r.intervals,
        esc(&duration(r.last - r.first)),
        esc(&rfc3339_from_secs(r.first)),
        esc(&rfc3339_from_secs(r.last)),
        esc(&r.hosts.join(", ")),
        esc(r.profile),
    );

    out.push_str("<section id=\"focus\"><h2>The KPIs that matter most</h2>");
    out.push_str(
        "<table id=\"focus-table\"><tr><th>KPI</th><th>target</th><th>escalate above</th>\
         <th>baseline (average)</th><th>worst interval</th><th>status</th><th>alerts raised</th></tr>",
    );
    for f in &r.focus {
        let (t, e) = f.rule.as_ref().map_or(("-".into(), "-".into()), |rule| {
            (format!("below {}", val(rule.investigate, f.unit)), val(rule.escalate, f.unit))
        });
        let (avg, worst) = f
            .baseline
            .map_or(("-".into(), "-".into()), |b| (val(b.mean(), f.unit), val(b.worst, f.unit)));
        let _ = write!(
            out,
            "<tr><td><a href=\"#focus-{}\">{}</a></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            slug(&f.path),
            esc(&f.words),
            esc(&t),
            esc(&e),
            esc(&avg),
            esc(&worst),
            badge(words::status(f)),
            f.raised.0 + f.raised.1,
        );
    }
    out.push_str("</table>\n");
    for f in &r.focus {
        focus_figure(&mut out, r, f);
    }
    out.push_str("</section>\n");

    out.push_str("<section id=\"script\"><h2>Stakeholder script</h2><blockquote>");
    for p in words::script(r) {
        let _ = write!(out, "<p>{}</p>", esc(&p));
    }
    out.push_str("</blockquote></section>\n");

    out.push_str("<section id=\"red-flags\"><h2>Quiet red flags</h2>");
    let flags = words::red_flags(r);
    if flags.is_empty() {
        let _ = write!(out, "<p>{}</p>", esc(words::no_red_flags(r)));
    } else {
        out.push_str("<ul class=\"flags\">");
        for f in flags {
            let _ = write!(out, "<li>{}</li>", esc(&f));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");

    out.push_str("<section id=\"cost\"><h2>Cost against budget</h2>");
    if r.cost.lines.is_empty() {
        out.push_str(
            "<p class=\"empty\" id=\"chart-cost-empty\">Not measured: set prices ([cost] \
             host_usd_month, or core_hour_usd and gib_hour_usd) and budget_usd_month.</p>",
        );
    } else {
        let mut marks = Vec::new();
        if let Some(b) = r.cost.budget {
            marks.push(Mark {
                id: "budget",
                label: format!("budget {}", svg::short(b, Unit::UsdMonth)),
                value: b,
                color: svg::BUDGET,
            });
            if let Some(rule) = &r.cost.rule {
                for (id, pct, color) in [
                    ("investigate", rule.investigate, svg::INVESTIGATE),
                    ("escalate", rule.escalate, svg::ESCALATE),
                ] {
                    let v = b * (1.0 + pct / 100.0);
                    marks.push(Mark {
                        id,
                        label: format!("{id} {} (+{}%)", svg::short(v, Unit::UsdMonth), num(pct)),
                        value: v,
                        color,
                    });
                }
            }
        }
        let lines: Vec<&Line> = r.cost.lines.iter().collect();
        out.push_str("<figure>");
        out.push_str(&svg::render(&Chart {
            id: "chart-cost".into(),
            title: "projected cost against budget".into(),
            unit: Unit::UsdMonth,
            lines: lines.clone(),
            colors: &[],
            marks,
            periods: &[],
            span: (r.first - r.t0, r.last - r.t0),
            step: r.step,
            t0: Some(r.t0),
        }));
        let marks: Vec<Mark> = r
            .cost
            .budget
            .map(|b| Mark {
                id: "budget",
                label: format!("budget {}", svg::short(b, Unit::UsdMonth)),
                value: b,
                color: svg::BUDGET,
            })
            .into_iter()
            .collect();
        legend(&mut out, &lines, &[], Unit::UsdMonth, &marks, false);
        out.push_str("</figure>");
        if !r.cost.containers.is_empty() {
            out.push_str("<table><tr><th>container</th><th>projected (average)</th></tr>");
            for (who, s) in &r.cost.containers {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                    esc(who),
                    esc(&val(s.mean(), Unit::UsdMonth))
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("</section>\n");

    out.push_str("<section id=\"alerts\"><h2>Alerts</h2>");
    if r.alerts.is_empty() {
        out.push_str("<p>No alerts.</p>");
    } else {
        out.push_str(
            "<table id=\"alerts-table\"><tr><th>raised</th><th>level</th><th>lasted</th>\
             <th>repeats</th><th>message</th></tr>",
        );
        for a in &r.alerts {
            let lasted = a.lasted.map_or("still open".to_string(), duration);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}{}</td></tr>",
                esc(&rfc3339_from_secs(a.raised)),
                badge(a.level.name()),
                esc(&lasted),
                a.repeats,
                if a.agent { "<b>agent:</b> " } else { "" },
                esc(&a.message),
            );
        }
        out.push_str("</table>");
        if r.more_alerts > 0 {
            let _ = write!(out, "<p>And {} more alerts, not listed.</p>", r.more_alerts);
        }
    }
    out.push_str("</section>\n");

    out.push_str("<section id=\"offenders\"><h2>Top offenders</h2>");
    for o in &r.offenders {
        let _ = write!(out, "<h3>{}</h3>", esc(o.title));
        if o.rows.is_empty() {
            out.push_str("<p class=\"empty\">None recorded.</p>");
            continue;
        }
        let unit = unit_of(o.kpi);
        let top = o.rows.iter().map(|(_, s)| s.mean()).fold(0.0f64, f64::max).max(1e-12);
        out.push_str("<table><tr><th></th><th>average</th><th></th><th>worst interval</th></tr>");
        for (who, s) in &o.rows {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td style=\"width:35%\"><span class=\"bar\" \
                 style=\"width:{:.0}%\"></span></td><td class=\"n\">{}</td></tr>",
                esc(who),
                esc(&val(s.mean(), unit)),
                (s.mean() / top * 100.0).clamp(0.0, 100.0),
                esc(&val(s.worst, unit)),
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>\n");

    out.push_str(
        "<section id=\"targets\"><h2>Targets and actuals</h2><table><tr><th>KPI</th><th>where</th>\
         <th>target</th><th>average</th><th>worst interval</th><th>status</th></tr>",
    );
    for t in &r.targets {
        let unit = unit_of(&t.path);
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&t.path),
            esc(&t.who),
            esc(&val(t.rule.investigate, unit)),
            esc(&val(t.stat.mean(), unit)),
            esc(&val(t.stat.worst, unit)),
            badge(t.rule.level(t.stat.worst).name()),
        );
    }
    out.push_str("</table></section>\n");
    let _ = writeln!(
        out,
        "<footer>Made by <code>probe-agent report --html</code> from {}. One file: no script, and \
         no font, image or style from anywhere else.</footer></body></html>",
        esc(&r.source)
    );
    out
}

/// `compare BASELINE CURRENT --html OUT`: each focus KPI before and after.
pub fn compare_html(c: &Comparison) -> String {
    let mut out = String::new();
    head(&mut out, "probe comparison");
    let _ = write!(
        out,
        "<header><h1>probe comparison</h1><p class=\"meta\">Baseline: {} ({} intervals over {}). \
         Current: {} ({} intervals over {}).</p></header>\n<section id=\"focus\"><h2>The KPIs that \
         matter most, before and after</h2>",
        esc(&c.baseline.source),
        c.baseline.intervals,
        esc(&duration(c.baseline.last - c.baseline.first)),
        esc(&c.current.source),
        c.current.intervals,
        esc(&duration(c.current.last - c.current.first)),
    );
    let span = (c.baseline.last - c.baseline.first).max(c.current.last - c.current.first);
    let step = [&c.baseline, &c.current]
        .iter()
        .filter(|s| s.intervals > 1)
        .map(|s| (s.last - s.first) / (s.intervals - 1) as f64)
        .fold(f64::INFINITY, f64::min);
    for f in &c.focus {
        let id = format!("compare-{}", slug(&f.path));
        let _ = write!(
            out,
            "<figure id=\"focus-{}\"><figcaption><h3>{}</h3>",
            slug(&f.path),
            esc(&f.words)
        );
        for s in &f.sentences {
            let _ = write!(out, "<div class=\"target\"><b>{}.</b></div>", esc(s));
        }
        out.push_str("</figcaption>");
        let before: Vec<Line> = f
            .before
            .iter()
            .map(|l| Line { label: format!("baseline, {}", l.label), host: false, ..l.clone() })
            .collect();
        let after: Vec<Line> = f
            .after
            .iter()
            .map(|l| Line { label: format!("current, {}", l.label), host: true, ..l.clone() })
            .collect();
        let lines: Vec<&Line> = before.iter().chain(&after).collect();
        if lines.is_empty() {
            let _ = write!(
                out,
                "<p class=\"empty\" id=\"{id}-empty\">No host data in either recording.</p></figure>"
            );
            continue;
        }
        let colors: Vec<&'static str> =
            before.iter().map(|_| "#9ca3af").chain(after.iter().map(|_| "#2563eb")).collect();
        out.push_str(&svg::render(&Chart {
            id,
            title: format!("{} before and after", f.words),
            unit: f.unit,
            lines: lines.clone(),
            colors: &colors,
            marks: threshold_marks(f.rule.as_ref(), f.unit),
            periods: &[],
            span: (0.0, span),
            step: if step.is_finite() { step.max(0.001) } else { 1.0 },
            t0: None,
        }));
        legend(&mut out, &lines, &colors, f.unit, &threshold_marks(f.rule.as_ref(), f.unit), false);
        out.push_str("</figure>\n");
    }
    out.push_str("</section><section id=\"in-words\"><h2>In words</h2><ul>");
    for s in &c.sentences {
        let _ = write!(out, "<li>{}.</li>", esc(s));
    }
    out.push_str(
        "</ul></section><section id=\"table\"><h2>Every KPI</h2><table><tr><th>KPI</th>\
                   <th>where</th><th>baseline</th><th>current</th><th>change</th></tr>",
    );
    for row in &c.rows {
        let unit = unit_of(&row.path);
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{:+.1}%</td></tr>",
            esc(&row.path),
            esc(&row.who),
            esc(&val(row.before, unit)),
            esc(&val(row.after, unit)),
            row.change_pct
        );
    }
    out.push_str("</table></section><footer>Made by <code>probe-agent compare --html</code>. One \
                  file: no script, and no font, image or style from anywhere else.</footer></body></html>\n");
    out
}
