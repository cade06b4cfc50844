//! Charts as inline SVG: a KPI over time against its investigate and
//! escalate lines, with the periods its alerts held shaded. Plain SVG
//! elements with stable ids (the tests find them in a real browser's
//! DOM), no script, no font and nothing fetched from anywhere.

use std::fmt::Write as _;

use super::{Line, Period};
use crate::{catalogue::Unit, rules::lifecycle::Level, timefmt::rfc3339_from_secs};

pub const WIDTH: f64 = 860.0;
pub const HEIGHT: f64 = 250.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// The colours people see: thresholds and alert shading, and the lines'.
pub const INVESTIGATE: &str = "#d97706";
pub const ESCALATE: &str = "#dc2626";
pub const BUDGET: &str = "#6b7280";
const PALETTE: [&str; 7] =
    ["#111827", "#2563eb", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

/// The colour of the `i`th line of a chart.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A horizontal line across the chart: a threshold or the budget.
pub struct Mark {
    /// Its id is the chart's id, a dash, and this (`investigate`, ...).
    pub id: &'static str,
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

/// One chart.
pub struct Chart<'a> {
    /// The `svg` element's id; marks and shading take it as a prefix.
    pub id: String,
    pub title: String,
    pub unit: Unit,
    pub lines: Vec<&'a Line>,
    /// Each line's colour (the palette's past the end).
    pub colors: &'a [&'static str],
    pub marks: Vec<Mark>,
    pub periods: &'a [Period],
    /// The x axis, in seconds since `t0`.
    pub span: (f64, f64),
    /// A typical interval (s): farther apart than a few, a line breaks.
    pub step: f64,
    /// The start (seconds since the epoch) for clock labels, or None for
    /// labels counting from the start (a comparison of two recordings).
    pub t0: Option<f64>,
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice(x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * p).find(|&v| v >= x * 0.999).unwrap_or(p)
}

/// A value with its unit, short, for an axis.
pub fn short(v: f64, unit: Unit) -> String {
    let n = if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        crate::rules::number(v)
    };
    let n = n.trim_end_matches(".0").to_string();
    match unit {
        Unit::Ms => format!("{n} ms"),
        Unit::Pct => format!("{n}%"),
        Unit::PerS => format!("{n}/s"),
        Unit::UsdMonth => format!("${n}"),
        _ => n,
    }
}

/// A duration for people: "45s", "12 min", "3 h 10 min", "2 d 4 h".
pub fn duration(s: f64) -> String {
    let s = s.max(0.0);
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{} h {} min", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    } else {
        format!("{} d {} h", (s / 86400.0) as u64, (s % 86400.0 / 3600.0) as u64)
    }
}

fn tick_label(t: f64, span: f64, t0: Option<f64>) -> String {
    match t0 {
        Some(t0) => {
            let ts = rfc3339_from_secs(t0 + t);
            if span < 86_400.0 {
                ts[11..19].to_string()
            } else {
                format!("{} {}", &ts[5..10], &ts[11..16])
            }
        }
        None => format!("+{}", duration(t)),
    }
}

/// The periods of each level merged where they overlap: investigate
/// first, then escalate, each in time order.
fn union(periods: &[Period]) -> Vec<Period> {
    let mut out = Vec::new();
    for level in [Level::Investigate, Level::Escalate] {
        let mut ps: Vec<&Period> = periods.iter().filter(|p| p.level == level).collect();
        ps.sort_by(|a, b| a.from.total_cmp(&b.from));
        let mut cur: Option<Period> = None;
        for p in ps {
            match &mut cur {
                Some(c) if p.from <= c.to => c.to = c.to.max(p.to),
                _ => out.extend(cur.replace(*p)),
            }
        }
        out.extend(cur);
    }
    out
}

/// The chart as an `svg` element.
pub fn render(c: &Chart<'_>) -> String {
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let values = c.lines.iter().flat_map(|l| l.series.points.iter().map(|p| f64::from(p.1)));
    let marks = c.marks.iter().map(|m| m.value);
    let (lo, hi) = values
        .chain(marks)
        .filter(|v| v.is_finite())
        .fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let tick = nice((hi - lo).max(f64::MIN_POSITIVE) * 1.08 / 5.0);
    let (ymin, ymax) = ((lo / tick).floor() * tick, ((hi * 1.08) / tick).ceil().max(1.0) * tick);
    let ymax = if ymax <= ymin { ymin + tick } else { ymax };
    let (x0, x1) = c.span;
    let xw = (x1 - x0).max(c.step).max(1e-3);
    let x = |t: f64| LEFT + (t - x0) / xw * pw;
    let y = |v: f64| TOP + ph - (v - ymin) / (ymax - ymin) * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><title>{t}</title>"#,
        id = esc(&c.id),
        t = esc(&c.title),
    );
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#ffffff" stroke="#d1d5db"/>"##
    );
    // Alert periods first, under everything: where any scope's alert held,
    // investigate under escalate (overlaps merged, not stacked).
    for (i, p) in union(c.periods).iter().enumerate() {
        let (a, b) = (x(p.from.max(x0)), x(p.to.min(x1).max(p.from)));
        let (cls, fill) = match p.level {
            Level::Escalate => ("escalate", "rgba(220,38,38,0.16)"),
            _ => ("investigate", "rgba(217,119,6,0.14)"),
        };
        let _ = write!(
            s,
            r#"<rect id="{}-alert-{i}" class="alert {cls}" x="{a:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{fill}"><title>{cls}</title></rect>"#,
            esc(&c.id),
            (b - a).max(2.0),
        );
    }
    // Grid and the y axis.
    let mut v = ymin;
    while v <= ymax + tick * 0.01 {
        let yy = y(v).round();
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eef0f3"/><text x="{}" y="{}" text-anchor="end" font-size="11" fill="#4b5563">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            esc(&short(v, c.unit)),
        );
        v += tick;
    }
    for i in 0..=4 {
        let t = x0 + xw * f64::from(i) / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}" font-size="11" fill="#4b5563">{}</text>"##,
            x(t),
            HEIGHT - 10.0,
            esc(&tick_label(t, xw, c.t0)),
        );
    }
    // The lines, the hosts' last so they stay on top.
    let mut order: Vec<(usize, &&Line)> = c.lines.iter().enumerate().collect();
    order.sort_by_key(|(_, l)| l.host);
    for (i, l) in order {
        let color = c.colors.get(i).copied().unwrap_or_else(|| color(i));
        let width = if l.host { 2.4 } else { 1.4 };
        let gap = c.step * 3.0 * f64::from(1u32 << l.series.merged.min(20));
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut prev: Option<f64> = None;
        for &(t, v) in &l.series.points {
            let (t, v) = (f64::from(t), f64::from(v));
            if prev.is_none_or(|p| t - p > gap) {
                runs.push(Vec::new());
            }
            prev = Some(t);
            if let Some(r) = runs.last_mut() {
                r.push((x(t), y(v)));
            }
        }
        let _ = write!(s, r#"<g class="series" data-label="{}">"#, esc(&l.label));
        for r in runs {
            if let [(px, py)] = r[..] {
                let _ = write!(s, r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5" fill="{color}"/>"#);
            } else {
                let pts: Vec<String> =
                    r.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"/>"#,
                    pts.join(" ")
                );
            }
        }
        s.push_str("</g>");
    }
    // Thresholds on top, each labelled at its right end.
    for m in &c.marks {
        let yy = y(m.value).round();
        let dash = if m.id == "budget" { "" } else { r#" stroke-dasharray="10 4""# };
        let _ = write!(
            s,
            r#"<line id="{}-{}" class="mark {}" x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11" fill="{}">{}</text>"#,
            esc(&c.id),
            m.id,
            m.id,
            LEFT + pw,
            m.color,
            LEFT + pw + 6.0,
            yy + 4.0,
            m.color,
            esc(&m.label),
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Series, Stat};

    #[test]
    fn overlapping_alert_periods_merge_per_level() {
        let p = |from, to, level| Period { from, to, level };
        let u = union(&[
            p(10.0, 30.0, Level::Investigate),
            p(20.0, 40.0, Level::Investigate),
            p(50.0, 60.0, Level::Investigate),
            p(25.0, 35.0, Level::Escalate),
        ]);
        let got: Vec<(f64, f64, Level)> = u.iter().map(|p| (p.from, p.to, p.level)).collect();
        assert_eq!(
            got,
            [
                (10.0, 40.0, Level::Investigate),
                (50.0, 60.0, Level::Investigate),
                (25.0, 35.0, Level::Escalate)
            ]
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice(0.7), 1.0);
        assert_eq!(nice(130.0), 200.0);
        assert_eq!(nice(240.0), 250.0);
        assert_eq!(nice(0.0), 1.0);
    }

    #[test]
    fn a_chart_has_its_lines_marks_and_shading_by_id() {
        let line = Line {
            label: "port 80 <api>".into(),
            host: false,
            series: Series {
                points: vec![(0.0, 100.0), (10.0, 700.0), (100.0, 50.0)],
                ..Default::default()
            },
            stat: Stat::default(),
        };
        let periods = [Period { from: 10.0, to: 30.0, level: Level::Investigate }];
        let svg = render(&Chart {
            id: "chart-x".into(),
            title: "t".into(),
            unit: Unit::Ms,
            lines: vec![&line],
            colors: &[],
            marks: vec![
                Mark {
                    id: "investigate",
                    label: "500 ms".into(),
                    value: 500.0,
                    color: INVESTIGATE,
                },
                Mark { id: "escalate", label: "1000 ms".into(), value: 1000.0, color: ESCALATE },
            ],
            periods: &periods,
            span: (0.0, 100.0),
            step: 10.0,
            t0: Some(0.0),
        });
        for id in ["chart-x", "chart-x-investigate", "chart-x-escalate", "chart-x-alert-0"] {
            assert!(svg.contains(&format!(r#"id="{id}""#)), "{id}: {svg}");
        }
        // The gap from 10 s to 100 s breaks the line: one polyline, one dot.
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("port 80 &lt;api&gt;"));
        assert!(!svg.contains("<script"));
    }
}
