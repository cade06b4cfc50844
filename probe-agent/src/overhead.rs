//! What the agent's kernel programs cost, without keeping privileges.
//!
//! The kernel measures a program's run time only while BPF run-time
//! statistics are on, and turning them on (BPF_ENABLE_STATS) needs
//! CAP_SYS_ADMIN: a compromised agent holding it is root. So by default the
//! agent measures once, at start-up, before it drops its capabilities:
//! statistics on for a short window while it makes a known load of its own
//! (system calls, context switches, loopback TCP requests), which gives
//! each program's cost per run with warm caches, as on a busy host. Every
//! interval it then prices the runs it counts: system calls (`sys_enter`,
//! `sys_exit`) from the syscall maps, context switches (`sched_switch`)
//! from /proc/stat, the rest from the `PROG_RUNS` counters.
//!
//! Shedding changes what a system call's programs do (sampled: no clock
//! read at entry for most calls; detail off: no map update at exit), so
//! `sys_enter` and `sys_exit` are priced in each of those modes too, each
//! with its own run of system calls, and a run is priced in the mode in
//! force: the estimate then falls when shedding does, as the real cost.
//! The programs of the other shed steps (run-queue latency, the
//! connection detail) keep their full price though they skip work: an
//! over-estimate, on the safe side of the budget.
//!
//! The trade-off: the price of a run is fixed at start. A program's cost
//! per run varies with the load (cache misses, hash-map contention), so the
//! estimate is an approximation. `--bpf-stats-pct` keeps CAP_SYS_ADMIN on
//! the main thread (no other) and samples the real figure every interval.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use log::debug;

use crate::probes::{Probes, ProgramStats};

/// Fewest runs in the calibration window for a program's own price; a
/// program that ran less is priced at the dearest measured run (rare
/// programs add little either way, and this errs on the high side).
const MIN_RUNS: u64 = 50;

/// What the system-call programs do: everything, time 1 in N calls, or
/// count the calls alone (the detail shed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyscallMode {
    #[default]
    Full = 0,
    Sampled = 1,
    DetailOff = 2,
}

/// The system-call programs, priced per mode.
const SYSCALL_PROGRAMS: [&str; 2] = ["sys_enter", "sys_exit"];

/// Cost per run of each attached program, in ns.
#[derive(Clone, Debug, Default)]
pub struct Prices {
    pub ns: BTreeMap<&'static str, f64>,
    /// `sys_enter` and `sys_exit` in the sampled and detail-off modes (in
    /// full mode: `ns`), when calibrated.
    modes: [BTreeMap<&'static str, f64>; 2],
    mode: SyscallMode,
}

impl Prices {
    /// Prices from statistics taken before and after a window.
    pub fn from_window(
        attached: &[&'static str],
        before: &[ProgramStats],
        after: &[ProgramStats],
    ) -> Self {
        let mut measured = BTreeMap::new();
        for end in after {
            let start = before.iter().find(|s| s.name == end.name);
            let runs = end.run_count.saturating_sub(start.map_or(0, |s| s.run_count));
            let ns = end.run_time_ns.saturating_sub(start.map_or(0, |s| s.run_time_ns));
            if runs >= MIN_RUNS {
                measured.insert(end.name, ns as f64 / runs as f64);
            }
        }
        let dearest = measured.values().copied().fold(0.0, f64::max);
        let ns = attached
            .iter()
            .map(|&name| (name, measured.get(name).copied().unwrap_or(dearest)))
            .collect();
        Prices { ns, ..Prices::default() }
    }

    /// Prices `sys_enter` and `sys_exit` in `mode` from a window of its own.
    fn set_mode_prices(
        &mut self,
        mode: SyscallMode,
        before: &[ProgramStats],
        after: &[ProgramStats],
    ) {
        let Some(slot) = (mode as usize).checked_sub(1) else { return };
        let window = Prices::from_window(&SYSCALL_PROGRAMS, before, after);
        self.modes[slot] = window.ns.into_iter().filter(|(_, ns)| *ns > 0.0).collect();
    }

    /// The mode in force: runs are priced in it from now on.
    pub fn set_mode(&mut self, mode: SyscallMode) {
        self.mode = mode;
    }

    /// A program's price per run in the mode in force.
    pub fn price(&self, name: &str) -> f64 {
        let moded = (self.mode as usize).checked_sub(1).and_then(|m| self.modes[m].get(name));
        moded.or_else(|| self.ns.get(name)).copied().unwrap_or(0.0)
    }

    /// Takes the programs' figures from a sampled window (`--bpf-stats-pct`):
    /// the latest measurement replaces the start-up price.
    pub fn update(&mut self, sampled: &[(&'static str, u64, u64)]) {
        for &(name, runs, ns) in sampled {
            if runs >= MIN_RUNS {
                let per_run = ns as f64 / runs as f64;
                match (self.mode as usize).checked_sub(1) {
                    Some(m) if SYSCALL_PROGRAMS.contains(&name) => {
                        self.modes[m].insert(name, per_run);
                    }
                    _ => {
                        self.ns.insert(name, per_run);
                    }
                }
            }
        }
    }

    /// Kernel time of `runs` (program -> runs), in ns.
    pub fn cost_ns(&self, runs: &BTreeMap<&'static str, u64>) -> f64 {
        runs.iter().map(|(name, &n)| n as f64 * self.price(name)).sum()
    }
}

/// Measures each program's cost per run: statistics on, a known load,
/// statistics off. Needs CAP_SYS_ADMIN (the caller drops it afterwards);
/// without it, or without statistics (before Linux 5.8), every price is 0
/// and the overhead budget counts the agent process alone.
pub fn calibrate(probes: &mut Probes) -> Prices {
    if !probes.set_run_stats(true) {
        debug!("BPF run-time statistics unavailable: the programs' cost is not estimated");
        return Prices::default();
    }
    let before = probes.program_stats();
    let t0 = Instant::now();
    if let Err(err) = load() {
        debug!("calibration load: {err}");
    }
    let after = probes.program_stats();
    let mut prices = Prices::from_window(probes.attached(), &before, &after);
    // The system-call programs in the modes shedding uses (latency sampled
    // 1 in 64; the detail off), each over its own run of calls.
    for (mode, detail_off) in [(SyscallMode::Sampled, false), (SyscallMode::DetailOff, true)] {
        if probes.syscalls.set_control(63, detail_off).is_err() {
            break;
        }
        let before = probes.program_stats();
        system_calls();
        prices.set_mode_prices(mode, &before, &probes.program_stats());
    }
    if let Err(err) = probes.syscalls.set_control(0, false) {
        log::warn!("could not restore full system-call measurement: {err}");
    }
    probes.set_run_stats(false);
    debug!(
        "programs' cost per run (ns), calibrated in {:?}: {:?}; sampled {:?}; detail off {:?}",
        t0.elapsed(),
        prices.ns,
        prices.modes[0],
        prices.modes[1]
    );
    prices
}

/// A run of cheap system calls (about 0.05 s).
fn system_calls() {
    for _ in 0..100_000 {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// A known load of the agent's own: system calls, context switches and
/// loopback TCP requests, each enough for a stable average (about 0.3 s).
/// The threads it starts are joined before it returns.
fn load() -> std::io::Result<()> {
    system_calls();
    // Context switches and wakeups: a byte bounced between two threads.
    let (mut there_rx, mut there_tx) = std::io::pipe()?;
    let (mut back_rx, mut back_tx) = std::io::pipe()?;
    let bouncer = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while there_rx.read_exact(&mut byte).is_ok() {
            if back_tx.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut byte = [0u8; 1];
    for _ in 0..10_000 {
        there_tx.write_all(&byte)?;
        back_rx.read_exact(&mut byte)?;
    }
    drop(there_tx);
    let _ = bouncer.join();
    // TCP: connects, requests and answers, closes on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let clients = (|| -> std::io::Result<()> {
        for _ in 0..4 {
            let mut conn = std::net::TcpStream::connect(addr)?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 16];
            for _ in 0..500 {
                conn.write_all(b"GET / HTTP/1.1\r\n")?;
                conn.read_exact(&mut buf)?;
            }
        }
        Ok(())
    })();
    if clients.is_err() {
        // Release a server still waiting for its connections.
        for _ in 0..4 {
            let _ = std::net::TcpStream::connect(addr);
        }
    }
    let _ = server.join();
    clients
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &'static str, runs: u64, ns: u64) -> ProgramStats {
        ProgramStats { name, run_count: runs, run_time_ns: ns }
    }

    #[test]
    fn prices_are_window_averages_and_rare_programs_pay_the_dearest() {
        let before = [stats("a", 100, 10_000), stats("b", 0, 0), stats("c", 5, 900)];
        let after = [stats("a", 1100, 110_000), stats("b", 200, 60_000), stats("c", 6, 2000)];
        let p = Prices::from_window(&["a", "b", "c"], &before, &after);
        assert_eq!(p.ns["a"], 100.0);
        assert_eq!(p.ns["b"], 300.0);
        assert_eq!(p.ns["c"], 300.0, "one run is too few: priced at the dearest");
        let runs = BTreeMap::from([("a", 10), ("b", 1)]);
        assert_eq!(p.cost_ns(&runs), 1300.0);
    }

    #[test]
    fn system_calls_are_priced_in_the_mode_in_force() {
        let full = [stats("sys_enter", 1000, 100_000), stats("sys_exit", 1000, 200_000)];
        let mut p = Prices::from_window(&["sys_enter", "sys_exit", "x"], &[], &full);
        let shed = [stats("sys_enter", 2000, 140_000), stats("sys_exit", 2000, 280_000)];
        p.set_mode_prices(SyscallMode::DetailOff, &full, &shed);
        let runs = BTreeMap::from([("sys_enter", 10), ("sys_exit", 10)]);
        assert_eq!(p.cost_ns(&runs), 3000.0);
        p.set_mode(SyscallMode::DetailOff);
        assert_eq!(p.cost_ns(&runs), 400.0 + 800.0);
        // Not calibrated in this mode: the full price.
        p.set_mode(SyscallMode::Sampled);
        assert_eq!(p.cost_ns(&runs), 3000.0);
        // A sampled figure (--bpf-stats-pct) prices the mode it ran in.
        p.update(&[("sys_enter", 100, 5000)]);
        assert_eq!(p.price("sys_enter"), 50.0);
        p.set_mode(SyscallMode::Full);
        assert_eq!(p.price("sys_enter"), 100.0);
    }
}
