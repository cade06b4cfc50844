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
    overhead::{Prices, SyscallMode},
    probes::{self, Probes, ProgramStats},
    procfs,
    records::{AlertRecord, Header, LostRecord, ProgramRecord, Shedding},
    shed::{Shed, Shedder},
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
    /// The steps past sampling in force in the kernel, in order.
    shed: Vec<Shed>,
    /// Whether the `overhead-floor` alert holds.
    at_floor: bool,
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
    /// Said when the shedding step changed, or the floor was reached or left.
    pub alerts: Vec<AlertRecord>,
}

/// `ns` of CPU time over `interval_s` seconds, in percent of one core.
pub fn pct_of_core(ns: f64, interval_s: f64) -> f64 {
    if interval_s <= 0.0 { 0.0 } else { round(ns / (interval_s * 1e9) * 100.0, 3) }
}

impl Control {
    pub fn new(
        budget_pct: f64,
        prices: Prices,
        probes: &mut Probes,
        stats_for: Duration,
        interval: Duration,
        start_at_floor: bool,
    ) -> Result<Self, probes::ProbeError> {
        let mut control = Control {
            // A step whose probes did not attach would shed nothing.
            shedder: Shedder::new(
                budget_pct,
                Shed::LADDER
                    .into_iter()
                    .filter(|&s| probes.unavailable(s.family()).is_none())
                    .collect(),
            ),
            shed: Vec::new(),
            at_floor: false,
            prices,
            prev_runs: probes.runs()?,
            prev_ctxt: procfs::context_switches(),
            prev_cpu_ns: procfs::self_cpu_ns(),
            stats_for,
            interval,
            window: None,
            sample: None,
        };
        if start_at_floor {
            control.shedder.go_to_floor();
            control.apply(probes);
        }
        Ok(control)
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
        let calls = host_calls
            + lost.syscall_no_start
            + lost.syscall_bad_nr
            + lost.syscall_stats_full
            + lost.syscalls_shed;
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
                    cost_per_run_ns: self
                        .prices
                        .ns
                        .contains_key(name)
                        .then(|| round(self.prices.price(name), 1)),
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
        let mut alerts = Vec::new();
        if whole && self.shedder.observe(cost_pct, kernel_pct) {
            self.apply(probes);
            alerts.push(shed_alert(header, cost_pct, &self.shedder, before, &self.shed));
        }
        // At the last step and still over budget: what remains is the floor
        // at this event rate (requests are never shed).
        let residual_pct = (self.shedder.budget_pct > 0.0
            && self.shedder.at_floor()
            && cost_pct > self.shedder.budget_pct)
            .then_some(cost_pct);
        let floor = if self.at_floor { self.shedder.at_floor() } else { residual_pct.is_some() };
        if whole && floor != self.at_floor {
            self.at_floor = floor;
            alerts.push(floor_alert(header, cost_pct, self.shedder.budget_pct, floor));
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
                probes_off: self.names(Shed::probes_off),
                detail_off: self.names(|s| !s.probes_off()),
                residual_pct,
            },
            alerts,
        }
    }

    /// Whether the budget switched a family's probes off (run-queue
    /// latency, the system-call programs; the other steps shed detail, not
    /// the family).
    pub fn switched_off(&self, family: Family) -> bool {
        self.shed.iter().any(|s| s.probes_off() && s.family() == family)
    }

    /// What is shed past sampling, by the names the records use.
    fn names(&self, which: impl Fn(Shed) -> bool) -> Vec<&'static str> {
        self.shed.iter().filter(|&&s| which(s)).map(|s| s.name()).collect()
    }

    /// Brings the kernel to the shedder's step: the sampling mask, then
    /// each step past it shed or taken back, in the ladder's order.
    fn apply(&mut self, probes: &mut Probes) {
        let mask = self.shedder.mask();
        let want = self.shedder.shed().to_vec();
        self.prices.set_mode(if want.contains(&Shed::SyscallDetail) {
            SyscallMode::DetailOff
        } else if mask != 0 {
            SyscallMode::Sampled
        } else {
            SyscallMode::Full
        });
        if let Err(err) = probes.syscalls.set_control(mask, want.contains(&Shed::SyscallDetail)) {
            warn!("could not change the system-call sampling: {err}");
        }
        // A step that cannot be taken back stays shed, and is said so; the
        // budget's next change of step tries again.
        while self.shed.len() > want.len() {
            let s = *self.shed.last().expect("not empty");
            if let Err(err) = probes.set_shed(s, false, mask) {
                warn!("could not measure {} again: {err}", s.name());
                return;
            }
            self.shed.pop();
        }
        for &s in &want[self.shed.len()..] {
            match probes.set_shed(s, true, mask) {
                Ok(()) => self.shed.push(s),
                Err(err) => {
                    warn!("could not shed {}: {err}", s.name());
                    break;
                }
            }
        }
    }
}

/// What the agent sheds, in words: "timing 1 in 64 system calls for
/// latency (all still counted), run-queue latency off; requests always
/// measured".
fn shed_words(every: u32, shed: &[Shed]) -> String {
    if every == 1 {
        return "timing every system call again".into();
    }
    // Detached, the system-call programs neither time nor count a call.
    if shed.contains(&Shed::SyscallProbes) {
        let parts: Vec<&str> =
            shed.iter().filter(|&&s| s != Shed::SyscallDetail).map(|s| s.words()).collect();
        return format!("{}; requests are always measured", parts.join(", "));
    }
    let mut parts = vec![format!("timing 1 in {every} system calls for latency")];
    parts.extend(shed.iter().map(|s| s.words().to_string()));
    let counted = if shed.contains(&Shed::SyscallDetail) {
        "every call still counted"
    } else {
        "all still counted"
    };
    format!("{} ({counted}); requests are always measured", parts.join(", "))
}

/// The alert said when the agent sheds more or less load.
fn shed_alert(
    header: &Header,
    cost_pct: f64,
    shedder: &Shedder,
    before: u32,
    shed: &[Shed],
) -> AlertRecord {
    let budget = shedder.budget_pct;
    let every = shedder.every();
    let state = shed_words(every, shed);
    let message = if shedder.step() > before {
        format!(
            "probe-agent overhead {cost_pct:.2}% of host CPU against its {budget:.2}% budget: {state}"
        )
    } else {
        // Calm: the whole cost under half the budget, or the programs
        // under a quarter of it (the agent process may be the rest).
        format!(
            "probe-agent overhead {cost_pct:.2}% of host CPU is calm against its {budget:.2}% \
             budget, one step restored: {state}"
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
        *off = Some(shed.iter().filter(|s| s.probes_off()).map(|s| s.name().to_string()).collect());
    }
    alert
}

/// The alert said when everything that can be shed is, and the cost is
/// still over budget (`at`), or when the agent leaves that floor.
fn floor_alert(header: &Header, cost_pct: f64, budget: f64, at: bool) -> AlertRecord {
    use crate::rules::lifecycle::Level;
    let message = if at {
        format!(
            "probe-agent cannot keep its {budget:.2}% budget: with everything but requests shed, \
             its residual cost at this event rate is {cost_pct:.2}% of host CPU (request \
             counting is never switched off; raise --overhead-budget-pct to keep more detail)"
        )
    } else {
        format!("probe-agent has left its cost floor: it now costs {cost_pct:.2}% of host CPU")
    };
    warn!("{message}");
    let (level, previous) =
        if at { (Level::Investigate, Level::Ok) } else { (Level::Ok, Level::Investigate) };
    agent_alert(
        header,
        ("overhead-floor", "shedding.residual_pct"),
        (level, previous),
        (cost_pct, budget),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detached, the system-call programs count nothing: the words do not
    /// claim that calls are still counted or timed.
    #[test]
    fn shed_words_say_what_is_still_measured() {
        assert_eq!(
            shed_words(64, &[Shed::SyscallDetail]),
            "timing 1 in 64 system calls for latency, per-(process, system call) detail off \
             (every call still counted); requests are always measured"
        );
        assert_eq!(
            shed_words(64, &Shed::LADDER),
            "system-call programs detached, run-queue latency off, connection RTT and byte \
             counts off; requests are always measured"
        );
        assert_eq!(shed_words(1, &[]), "timing every system call again");
    }
}
