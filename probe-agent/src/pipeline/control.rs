//! The overhead control: what the agent costs each interval (its process
//! plus its programs: runs counted, priced per run), and the shedding that
//! keeps it within the budget (see `shed.rs`), said in the `agent` record
//! and an `overhead-budget` alert.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use log::{debug, warn};

use super::health::agent_alert;
use crate::{
    aggregate::round,
    family::Family,
    overhead::Prices,
    probes::{self, Probes, ProgramStats},
    procfs,
    records::{AlertRecord, Header, LostRecord, ProgramRecord, Shedding},
    shed::Shedder,
};

/// BPF run-time statistics at the opening of a sampled window.
struct StatsWindow {
    opened: Instant,
    at_open: Vec<ProgramStats>,
}

/// What each program ran during a closed window: (name, runs, ns).
pub struct StatsSample {
    window_s: f64,
    programs: Vec<(&'static str, u64, u64)>,
}

pub struct Control {
    pub shedder: Shedder,
    /// Optional families switched off by the budget, in order.
    pub probes_off: Vec<Family>,
    prices: Prices,
    prev_runs: [u64; probe_common::runs::COUNTED.len()],
    prev_ctxt: u64,
    prev_cpu_ns: u64,
    /// `--bpf-stats-pct`'s window within each interval (zero: never).
    stats_for: Duration,
    interval: Duration,
    /// The open statistics window, and the last closed one.
    window: Option<StatsWindow>,
    sample: Option<StatsSample>,
}

/// This interval's cost and what the agent record says of its programs.
pub struct Cost {
    pub cpu_pct: f64,
    pub bpf_stats_window_s: Option<f64>,
    pub programs_cpu_pct: Option<f64>,
    pub programs_estimated_cpu_pct: f64,
    pub programs: Vec<ProgramRecord>,
    pub shedding: Shedding,
    /// Said when the shedding step changed.
    pub alert: Option<AlertRecord>,
}

/// `ns` of CPU time over `interval_s` seconds, in percent of one core.
pub fn pct_of_core(ns: f64, interval_s: f64) -> f64 {
    if interval_s <= 0.0 { 0.0 } else { round(ns / (interval_s * 1e9) * 100.0, 3) }
}

impl Control {
    pub fn new(
        budget_pct: f64,
        prices: Prices,
        probes: &Probes,
        stats_for: Duration,
        interval: Duration,
    ) -> Result<Self, probes::ProbeError> {
        Ok(Control {
            shedder: Shedder::new(
                budget_pct,
                Family::ALL.iter().filter(|f| f.optional()).count() as u32,
            ),
            probes_off: Vec::new(),
            prices,
            prev_runs: probes.runs()?,
            prev_ctxt: procfs::context_switches(),
            prev_cpu_ns: procfs::self_cpu_ns(),
            stats_for,
            interval,
            window: None,
            sample: None,
        })
    }

    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    /// When the open statistics window closes, if one is open.
    pub fn window_end(&self) -> Option<Instant> {
        self.window.as_ref().map(|w| w.opened + self.stats_for)
    }

    /// Turns BPF run-time statistics on for this interval's sampled window.
    pub fn open_stats_window(&mut self, probes: &mut Probes) {
        if self.stats_for.is_zero() || self.window.is_some() {
            return;
        }
        if probes.set_run_stats(true) {
            self.window =
                Some(StatsWindow { opened: Instant::now(), at_open: probes.program_stats() });
        }
    }

    /// Closes the window: what the programs ran in it becomes the sample
    /// the next agent record reports.
    pub fn close_stats_window(&mut self, probes: &mut Probes) {
        let Some(w) = self.window.take() else { return };
        let at_close = probes.program_stats();
        let window_s = w.opened.elapsed().as_secs_f64();
        if self.stats_for < self.interval {
            probes.set_run_stats(false);
        }
        let programs = at_close
            .iter()
            .map(|end| {
                let start =
                    w.at_open.iter().find(|s| s.name == end.name).cloned().unwrap_or_default();
                (
                    end.name,
                    end.run_count.saturating_sub(start.run_count),
                    end.run_time_ns.saturating_sub(start.run_time_ns),
                )
            })
            .collect();
        self.sample = Some(StatsSample { window_s: round(window_s, 3), programs });
    }

    /// Each program's runs since the last call: system calls (`calls`,
    /// counted by the syscall maps) for `sys_enter` and `sys_exit`,
    /// context switches for `sched_switch`, the run counters for the rest.
    fn runs(&mut self, probes: &Probes, calls: u64) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::from([("sys_enter", calls), ("sys_exit", calls)]);
        let ctxt = procfs::context_switches();
        out.insert("sched_switch", ctxt.saturating_sub(self.prev_ctxt));
        self.prev_ctxt = ctxt;
        match probes.runs() {
            Ok(now) => {
                for (i, name) in probe_common::runs::COUNTED.iter().enumerate() {
                    out.insert(name, now[i].wrapping_sub(self.prev_runs[i]));
                }
                self.prev_runs = now;
            }
            Err(err) => warn!("reading the programs' run counts: {err}"),
        }
        out.retain(|name, _| probes.attached().contains(name));
        out
    }

    /// Measures this interval's cost and sheds (or restores) a step if the
    /// budget calls for it.
    pub fn interval(
        &mut self,
        probes: &mut Probes,
        header: &Header,
        host_calls: u64,
        lost: &LostRecord,
        cpus: u32,
    ) -> Cost {
        let interval_s = header.interval_s;
        let cpu_ns = procfs::self_cpu_ns();
        let cpu_pct = pct_of_core(cpu_ns.saturating_sub(self.prev_cpu_ns) as f64, interval_s);
        self.prev_cpu_ns = cpu_ns;

        let sample = self.sample.take();
        if let Some(s) = &sample {
            self.prices.update(&s.programs);
        }
        let window_s = sample.as_ref().map(|s| s.window_s);
        let calls =
            host_calls + lost.syscall_no_start + lost.syscall_bad_nr + lost.syscall_stats_full;
        let runs = self.runs(probes, calls);
        let programs = probes
            .attached()
            .iter()
            .map(|&name| {
                let (sampled, ns) = sample
                    .as_ref()
                    .and_then(|s| s.programs.iter().find(|p| p.0 == name))
                    .map_or((None, 0), |p| (Some(p.1), p.2));
                ProgramRecord {
                    name,
                    run_count: sampled,
                    runs_per_s: sampled.zip(window_s).map(|(r, w)| round(r as f64 / w, 1)),
                    avg_ns: sampled.filter(|&r| r > 0).map(|r| round(ns as f64 / r as f64, 1)),
                    runs: runs.get(name).copied(),
                    cost_per_run_ns: self.prices.ns.get(name).map(|&ns| round(ns, 1)),
                }
            })
            .collect();
        let programs_cpu_pct = sample.as_ref().map(|s| {
            let ns: u64 = s.programs.iter().map(|p| p.2).sum();
            pct_of_core(ns as f64, s.window_s)
        });
        let programs_estimated_cpu_pct = pct_of_core(self.prices.cost_ns(&runs), interval_s);
        // The overhead budget: the agent's own CPU plus its programs', as
        // sampled (--bpf-stats-pct) or as estimated from runs and prices.
        let prog_cores = programs_cpu_pct.unwrap_or(programs_estimated_cpu_pct) / 100.0;
        let cpus = f64::from(cpus.max(1));
        let cost_pct = round((cpu_pct / 100.0 + prog_cores) * 100.0 / cpus, 3);
        let before = self.shedder.step();
        // A short final interval (SIGINT) says little about the load.
        let whole = interval_s >= self.interval.as_secs_f64() / 2.0;
        let kernel_pct = prog_cores * 100.0 / cpus;
        let mut alert = None;
        if whole && self.shedder.observe(cost_pct, kernel_pct) {
            if let Err(err) = probes.syscalls.set_sample_mask(self.shedder.mask()) {
                warn!("could not change the latency sampling: {err}");
            }
            self.switch_optional_probes(probes, &runs);
            alert = Some(shed_alert(header, cost_pct, &self.shedder, before, &self.off_names()));
        }
        debug!("overhead: process {cpu_pct:.3}% of a core, programs {prog_cores:.5} cores");
        Cost {
            cpu_pct,
            bpf_stats_window_s: window_s,
            programs_cpu_pct,
            programs_estimated_cpu_pct,
            programs,
            shedding: Shedding {
                budget_pct: self.shedder.budget_pct,
                cost_pct,
                latency_sample_every: self.shedder.every(),
                probes_off: self.off_names(),
            },
            alert,
        }
    }

    fn off_names(&self) -> Vec<&'static str> {
        self.probes_off.iter().map(|f| f.name()).collect()
    }

    /// Switches optional families off or on to match the shedding step:
    /// off, the costliest of those still on (by their programs' estimated
    /// cost this interval; TCP first on a tie); on, the last switched off.
    fn switch_optional_probes(&mut self, probes: &mut Probes, runs: &BTreeMap<&'static str, u64>) {
        let want = self.shedder.probes_off() as usize;
        while self.probes_off.len() < want {
            let cost = |family: Family| -> u64 {
                let programs = probes::programs_of(family);
                let ran = runs.iter().filter(|(p, _)| programs.contains(p));
                self.prices.cost_ns(&ran.map(|(&p, &n)| (p, n)).collect()) as u64
            };
            let Some(family) = Family::ALL
                .into_iter()
                .filter(|f| f.optional() && !self.probes_off.contains(f))
                .filter(|&f| probes.unavailable(f).is_none())
                .max_by_key(|&f| (cost(f), f == Family::Tcp))
            else {
                break;
            };
            match probes.set_on(family, false) {
                Ok(()) => self.probes_off.push(family),
                Err(err) => {
                    warn!("could not switch {family} off: {err}");
                    break;
                }
            }
        }
        while self.probes_off.len() > want {
            let family = self.probes_off.pop().expect("not empty");
            if let Err(err) = probes.set_on(family, true) {
                warn!("could not switch {family} back on: {err}");
            }
        }
    }
}

/// The alert said when the agent sheds more or less load.
fn shed_alert(
    header: &Header,
    cost_pct: f64,
    shedder: &Shedder,
    before: u32,
    probes_off: &[&str],
) -> AlertRecord {
    let budget = shedder.budget_pct;
    let every = shedder.every();
    let state = match (every, probes_off) {
        (1, _) => "timing every system call again".to_string(),
        (_, []) => format!("timing 1 in {every} system calls for latency (all still counted)"),
        (_, off) => format!(
            "{} switched off; timing 1 in {every} system calls for latency (all still counted)",
            off.join(" and ")
        ),
    };
    let message = if shedder.step() > before {
        format!(
            "probe-agent overhead {cost_pct:.2}% of host CPU against its {budget:.2}% budget: {state}"
        )
    } else {
        format!(
            "probe-agent overhead {cost_pct:.2}% of host CPU is back under its {budget:.2}% \
             budget: {state}"
        )
    };
    warn!("{message}");
    use crate::rules::lifecycle::Level;
    let level = |step: u32| if step > 0 { Level::Investigate } else { Level::Ok };
    let mut alert = agent_alert(
        header,
        ("overhead-budget", "shedding.cost_pct"),
        (level(shedder.step()), level(before)),
        (cost_pct, budget),
        message,
    );
    if let crate::records::Place::Agent { latency_sample_every, probes_off: off, .. } =
        &mut alert.place
    {
        *latency_sample_every = Some(every);
        *off = Some(probes_off.iter().map(|s| s.to_string()).collect());
    }
    alert
}
