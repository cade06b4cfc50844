//! `probe-agent top` (`run --console`): the focus KPIs live, for a person
//! on a terminal. Each interval redraws one screen: the host, the busiest
//! containers and the endpoints (server ports first), a column per focus
//! KPI coloured against its rule's thresholds, and the alert level each
//! holds; then the alerts that hold and the agent's own health.
//!
//! Plain ANSI escapes (home, clear to end of line, colours), no terminal
//! library: the view only draws, and Ctrl-C (SIGINT) ends it as it ends
//! `run`. It reads the same typed records the sinks get, after the rules.

use std::{collections::BTreeMap, io::Write as _};

use crate::{
    catalogue::Read,
    config::{Config, Focus},
    records::{Kind, Place, Record, Role},
    rules::{lifecycle::Level, number},
};

const RESET: &str = "\x1b[0m";

/// An alert that holds, for the screen.
struct Held {
    level: Level,
    /// The row it belongs to.
    row: String,
    since: String,
    message: String,
}

/// The console's state between intervals.
#[derive(Default)]
pub struct Console {
    /// (rule, scope, mount) -> the alert holding there.
    held: BTreeMap<String, Held>,
    started: bool,
}

/// One cell: its text and colour (an SGR code).
struct Cell {
    text: String,
    sgr: &'static str,
    width: usize,
    right: bool,
}

impl Cell {
    fn new(text: impl Into<String>, width: usize) -> Cell {
        Cell { text: text.into(), sgr: "", width, right: true }
    }
}

/// Which row a scope is drawn in.
fn row_key(place: &Place) -> String {
    match place {
        Place::Host { .. } => "host".into(),
        Place::Container { container_id } => format!("c/{container_id}"),
        Place::Process { pid, .. } => format!("p/{pid}"),
        // A route's alert shows on its endpoint's row.
        Place::Endpoint { pid, role, port, peer, .. }
        | Place::Route { pid, role, port, peer, .. } => {
            format!("e/{pid}/{}/{port}/{}", role.name(), peer.as_deref().unwrap_or("-"))
        }
        Place::Agent { .. } => "agent".into(),
    }
}

/// A short column title for a focus KPI.
fn title(f: &Focus) -> String {
    let path = f.path();
    let named = match path.as_str() {
        "requests.error_rate_pct" => "errors".to_string(),
        "requests.rate_per_s" => "requests/s".to_string(),
        "cpu.utilization_pct" => "CPU".to_string(),
        "memory.utilization_pct" => "memory".to_string(),
        "disk.utilization_pct" => "disk (max)".to_string(),
        "cost.over_budget_pct" => "over budget".to_string(),
        "cost.projected_usd_month" => "cost $/month".to_string(),
        "tcp.connect_error_rate_pct" => "connect errs".to_string(),
        _ => match f.stat {
            Some(s) => format!("{} {}", f.kpi.name.replace("request ", ""), s.name()),
            None => f.kpi.name.to_string(),
        },
    };
    named.chars().take(14).collect()
}

/// A focus KPI's value in a record, where it means something: request
/// KPIs only with requests, connect KPIs only with connects.
fn value(rec: &Record, f: &Focus) -> Option<f64> {
    if !f.kpi.scopes.contains(&rec.kind()) {
        return None;
    }
    let g = rec.groups();
    let path = f.path();
    let volume = path.ends_with("rate_per_s") || path.ends_with(".count");
    if path.starts_with("requests.") && !volume && g.requests.is_none_or(|r| r.count == 0) {
        return None;
    }
    if path.starts_with("tcp.connect_") && g.tcp.is_none_or(|t| t.connects == 0) {
        return None;
    }
    match f.kpi.read {
        Read::Value(read) => read(&g),
        Read::Latency(read) => Some(f.stat?.of(read(&g)?)),
        Read::Disk(read) => g.disk.iter().map(read).reduce(f64::max),
        // Counts by status class are no single figure (not a focus KPI).
        Read::Classes(_) => None,
    }
}

/// The level a value calls for under the rule on its KPI and scope.
fn level(cfg: &Config, f: &Focus, kind: Kind, v: f64) -> Level {
    let path = f.path();
    cfg.rules
        .iter()
        .filter(|r| r.enabled && r.path() == path && r.scopes.contains(&kind))
        .map(|r| {
            if v > r.escalate {
                Level::Escalate
            } else if v > r.investigate {
                Level::Investigate
            } else {
                Level::Ok
            }
        })
        .max()
        .unwrap_or(Level::Ok)
}

fn sgr(l: Level) -> &'static str {
    match l {
        Level::Ok => "",
        Level::Investigate => "\x1b[33m",
        Level::Escalate => "\x1b[1;31m",
    }
}

/// The alert cell: what holds in the row.
fn alert_cell(l: Option<Level>) -> Cell {
    let (text, sgr) = match l {
        None => ("-", ""),
        Some(Level::Ok) => ("ok", "\x1b[32m"),
        Some(Level::Investigate) => ("INVESTIGATE", "\x1b[30;43m"),
        Some(Level::Escalate) => ("ESCALATE", "\x1b[1;37;41m"),
    };
    Cell { text: text.into(), sgr, width: 12, right: false }
}

fn shown(v: f64, f: &Focus) -> String {
    format!("{}{}", number(v), f.kpi.unit.suffix())
}

/// Draws cells into one line of at most `cols` visible characters.
fn draw(out: &mut String, cells: &[Cell], cols: usize) {
    let mut used = 0;
    for c in cells {
        if used >= cols {
            break;
        }
        let text: String = c.text.chars().take(c.width).collect();
        let pad = c.width.saturating_sub(text.chars().count());
        let cell = if c.right {
            format!("{}{text}", " ".repeat(pad))
        } else {
            format!("{text}{}", " ".repeat(pad))
        };
        let room = cols - used;
        let cell: String = cell.chars().take(room).collect();
        used += cell.chars().count();
        if c.sgr.is_empty() {
            out.push_str(&cell);
        } else {
            out.push_str(c.sgr);
            out.push_str(&cell);
            out.push_str(RESET);
        }
        if used < cols {
            out.push(' ');
            used += 1;
        }
    }
    out.push_str("\x1b[K\n");
}

/// The terminal's size (columns, rows); 100 x 30 when not a terminal.
fn terminal_size() -> (usize, usize) {
    // SAFETY: winsize is plain C data (integers): all zeros is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes only into the winsize it is given, which
    // lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (100, 30)
    }
}

impl Console {
    /// Draws one interval's records (or, for the `status` record, says the
    /// probes are attached).
    pub fn show(&mut self, records: &[Record], cfg: &Config) {
        let (cols, rows) = terminal_size();
        let mut s = String::new();
        if !self.started {
            // Clear once, hide the cursor; later frames overwrite in place.
            s.push_str("\x1b[2J\x1b[?25l");
            self.started = true;
        }
        s.push_str("\x1b[H");
        for r in records {
            if let Record::Alert(a) = r {
                // The agent's own alerts change their labels with each
                // step (what is shed): one per rule.
                let key = match a.place {
                    Place::Agent { .. } => format!("{}|agent", a.rule),
                    _ => format!("{}|{}|{:?}", a.rule, row_key(&a.place), a.place),
                };
                if a.level == Level::Ok {
                    self.held.remove(&key);
                } else {
                    self.held.insert(
                        key,
                        Held {
                            level: a.level,
                            row: row_key(&a.place),
                            since: a.since.get(11..19).unwrap_or(&a.since).to_string(),
                            message: a.message.clone(),
                        },
                    );
                }
            }
        }
        let Some(host) = records.iter().find(|r| r.kind() == Kind::Host) else {
            if let Some(Record::Status(st)) = records.first() {
                s.push_str(&format!(
                    "probe-agent top: {} programs attached on {}; the first figures come after \
                     the first interval. Ctrl-C quits.\x1b[K\n\x1b[J",
                    st.programs.len(),
                    st.header.host
                ));
                print(&s);
            }
            return;
        };
        let h = host.header();
        let (esc, inv) = self.held.values().fold((0, 0), |(e, i), a| match a.level {
            Level::Escalate => (e + 1, i),
            _ => (e, i + 1),
        });
        s.push_str(&format!(
            "\x1b[1mprobe-agent top\x1b[0m  host {}  {}  every {:.1}s  alerts: {}\x1b[K\n\x1b[K\n",
            h.host,
            h.ts.get(11..19).unwrap_or(&h.ts),
            h.interval_s,
            match (esc, inv) {
                (0, 0) => "none".to_string(),
                (0, i) => format!("{i} investigate"),
                (e, 0) => format!("{e} escalate"),
                (e, i) => format!("{e} escalate, {i} investigate"),
            }
        ));
        let widths: Vec<usize> = cfg.focus.iter().map(|f| title(f).len().max(10)).collect();
        let mut head = vec![Cell { text: "where".into(), sgr: "\x1b[1m", width: 0, right: false }];
        for (f, &w) in cfg.focus.iter().zip(&widths) {
            head.push(Cell { text: title(f), sgr: "\x1b[1m", width: w, right: true });
        }
        head.push(Cell { text: "alert".into(), sgr: "\x1b[1m", width: 12, right: false });

        // The rows: the host, the busiest containers, then endpoints.
        let mut containers: Vec<&Record> =
            records.iter().filter(|r| r.kind() == Kind::Container).collect();
        containers.sort_by(|a, b| {
            let cores = |r: &Record| r.groups().cpu.map_or(0.0, |c| c.cores);
            cores(b).total_cmp(&cores(a))
        });
        let mut endpoints: Vec<&Record> =
            records.iter().filter(|r| r.kind() == Kind::Endpoint).collect();
        endpoints.sort_by_key(|r| match r {
            Record::Endpoint(e) => (e.role != Role::Server, std::cmp::Reverse(e.requests.count)),
            _ => (true, std::cmp::Reverse(0)),
        });
        let held_below = self.held.len().min(8);
        let room = rows.saturating_sub(9 + held_below).max(3);
        let mut shown_rows: Vec<&Record> = vec![host];
        shown_rows.extend(containers.iter().take(5));
        let left = room.saturating_sub(shown_rows.len());
        shown_rows.extend(endpoints.iter().take(left));
        let not_shown = 1 + containers.len() + endpoints.len() - shown_rows.len();
        // The first column as wide as its longest label, within reason.
        let label_w =
            shown_rows.iter().map(|r| label(r).chars().count()).max().unwrap_or(0).clamp(20, 44);
        head[0].width = label_w;
        draw(&mut s, &head, cols);
        for r in &shown_rows {
            let Some(place) = r.place() else { continue };
            let key = row_key(&place);
            let mut cells = vec![Cell { text: label(r), sgr: "", width: label_w, right: false }];
            for (f, &w) in cfg.focus.iter().zip(&widths) {
                cells.push(match value(r, f) {
                    Some(v) => Cell {
                        text: shown(v, f),
                        sgr: sgr(level(cfg, f, r.kind(), v)),
                        width: w,
                        right: true,
                    },
                    None => Cell::new("-", w),
                });
            }
            let held = self.held.values().filter(|a| a.row == key).map(|a| a.level).max();
            let applies = cfg.rules.iter().any(|x| x.enabled && x.scopes.contains(&r.kind()));
            cells.push(alert_cell(held.or(applies.then_some(Level::Ok))));
            draw(&mut s, &cells, cols);
        }
        if not_shown > 0 {
            s.push_str(&format!(
                "  ... and {not_shown} more (a taller terminal shows more)\x1b[K\n"
            ));
        }
        s.push_str("\x1b[K\n");
        if self.held.is_empty() {
            s.push_str("No alert holds.\x1b[K\n");
        } else {
            s.push_str("\x1b[1mAlerts holding\x1b[0m\x1b[K\n");
            let mut held: Vec<&Held> = self.held.values().collect();
            held.sort_by_key(|a| std::cmp::Reverse(a.level));
            for a in held.iter().take(held_below) {
                let cells = [
                    alert_cell(Some(a.level)),
                    Cell { text: format!("since {}", a.since), sgr: "", width: 14, right: false },
                    Cell { text: a.message.clone(), sgr: "", width: 400, right: false },
                ];
                draw(&mut s, &cells, cols);
            }
        }
        if let Some(Record::Agent(a)) = records.iter().find(|r| r.kind() == Kind::Agent) {
            let dropped: u64 = a.output.sinks.iter().map(|s| s.dropped_records.total()).sum();
            let sh = &a.shedding;
            let shed = if sh.latency_sample_every > 1 {
                let mut off: Vec<String> =
                    sh.detail_off.iter().map(|d| format!("{d} detail")).collect();
                off.extend(sh.probes_off.iter().map(|p| p.to_string()));
                let off = if off.is_empty() {
                    String::new()
                } else {
                    format!(", {} off", off.join(", "))
                };
                let floor =
                    sh.residual_pct.map(|r| format!(", at its floor: {r:.1}%")).unwrap_or_default();
                format!("sheds load (1 in {} calls timed{off}{floor})", sh.latency_sample_every)
            } else {
                "sheds nothing".into()
            };
            s.push_str(&format!(
                "\x1b[K\n\x1b[2magent: {:.1}% of a core, {} MiB, {shed}, {dropped} records \
                 dropped. Ctrl-C quits.\x1b[0m\x1b[K\n",
                a.cpu_pct,
                a.rss_bytes >> 20
            ));
        }
        s.push_str("\x1b[J");
        print(&s);
    }
}

/// Who a row is about.
fn label(r: &Record) -> String {
    match r {
        Record::Host(h) => format!("host {}", h.header.host),
        Record::Container(c) => {
            format!("container {}", c.container_id.chars().take(12).collect::<String>())
        }
        Record::Endpoint(e) if e.role == Role::Server => format!("port {} ({})", e.port, e.comm),
        Record::Endpoint(e) => {
            format!("{} -> {}:{}", e.comm, e.peer.as_deref().unwrap_or("?"), e.port)
        }
        Record::Process(p) => format!("{} (pid {})", p.comm, p.pid),
        _ => String::new(),
    }
}

fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.started {
            // The cursor back, below the last frame.
            print("\x1b[?25h\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_to_the_width_and_colour_by_level() {
        let mut s = String::new();
        let cells = [
            Cell { text: "port 8080 (api)".into(), sgr: "", width: 20, right: false },
            Cell { text: "651 ms".into(), sgr: sgr(Level::Investigate), width: 10, right: true },
            alert_cell(Some(Level::Investigate)),
        ];
        draw(&mut s, &cells, 40);
        let visible: String =
            s.replace(RESET, "").replace("\x1b[33m", "").replace("\x1b[30;43m", "");
        assert!(visible.starts_with("port 8080 (api)          651 ms INVEST"), "{visible:?}");
        assert!(visible.trim_end_matches("\x1b[K\n").chars().count() <= 40, "{visible:?}");
        assert!(s.contains("\x1b[33m    651 ms\x1b[0m"), "{s:?}");
    }

    #[test]
    fn focus_values_only_where_they_mean_something() {
        let cfg = Config::default();
        let v = serde_json::json!({"v":1,"type":"endpoint","ts":"t","host":"h","interval_s":1.0,
            "pid":7,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,
            "requests":{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null}});
        let idle = Record::from_value(v).unwrap().unwrap();
        let f = &cfg.focus;
        assert_eq!(f[1].path(), "requests.error_rate_pct");
        assert_eq!(value(&idle, &f[1]), None, "no requests: no error rate");
        assert_eq!(value(&idle, &f[2]), Some(0.0), "a rate of 0/s is a value");
        assert_eq!(value(&idle, &f[3]), None, "endpoints have no CPU");
        assert_eq!(level(&cfg, &f[0], Kind::Endpoint, 650.0), Level::Investigate);
        assert_eq!(title(&f[0]), "latency avg");
    }
}
