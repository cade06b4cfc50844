//! The overhead budget: the agent measures its own cost every interval (its
//! process CPU plus its kernel programs') and, when that exceeds the budget
//! (default 1% of the host's CPU), sheds load in steps, one per interval
//! while over budget, the least valuable measurement first:
//!
//! 1. time only 1 in 4, then 16, then 64 system calls for latency, while
//!    still counting every call and error exactly;
//! 2. then, in [`Shed::LADDER`]'s order: the per-(process, system call)
//!    detail (calls then counted in one total), the system-call programs
//!    themselves (detached: every call leaves the kernel's traced slow
//!    path), run-queue latency, and the per-segment connection detail (RTT
//!    and byte counts).
//!
//! Requests (count, errors, latency per endpoint and route) are the
//! product's headline and are never shed: at the last step, a cost still
//! over budget is the floor of what remains at this event rate, and the
//! agent says so (`residual_pct`) rather than claim a budget it cannot keep.
//!
//! Every step sheds kernel work, so it is taken only when the kernel
//! programs are at least half the budget: an agent process that is over
//! budget by itself (a short interval, thousands of processes to report)
//! is not helped by blinding the probes, and they stay on. It restores in
//! the reverse order, a step at a time, once the whole cost has stayed
//! under half the budget, or the programs under a quarter of it, for two
//! intervals.

use crate::family::Family;

/// Sampling steps: time 1 in 4^step calls.
const SAMPLE_STEPS: u32 = 3;
/// Intervals under half the budget before stepping back.
const CALM_INTERVALS: u32 = 2;

/// What the budget gives up past latency sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Per-(process, system call) counts, errors and latency: each call is
    /// counted in one total (`lost.syscalls_shed`) instead.
    SyscallDetail,
    /// The system-call programs, detached: no call is counted at all, and
    /// system calls leave the kernel's traced slow path. Requests do not
    /// need them (their bytes are found from the caller's registers).
    SyscallProbes,
    /// Run-queue latency (its programs return at once).
    Runq,
    /// RTT samples and byte counts per connection segment; requests,
    /// connects, retransmits and resets are still measured.
    TcpDetail,
}

impl Shed {
    /// Least valuable first.
    pub const LADDER: [Shed; 4] =
        [Shed::SyscallDetail, Shed::SyscallProbes, Shed::Runq, Shed::TcpDetail];

    /// Its name in the `agent` record: in `shedding.detail_off` for the
    /// details, in `shedding.probes_off` for the steps that switch a
    /// family's programs off (see [`Shed::probes_off`]).
    pub fn name(self) -> &'static str {
        match self {
            Shed::SyscallDetail | Shed::SyscallProbes => "syscalls",
            Shed::Runq => "runq_latency",
            Shed::TcpDetail => "tcp",
        }
    }

    /// Whether it switches its family's programs off (else it sheds detail).
    pub fn probes_off(self) -> bool {
        matches!(self, Shed::SyscallProbes | Shed::Runq)
    }

    /// The KPI family whose programs it sheds.
    pub fn family(self) -> Family {
        match self {
            Shed::SyscallDetail | Shed::SyscallProbes => Family::Syscalls,
            Shed::Runq => Family::Runq,
            Shed::TcpDetail => Family::Tcp,
        }
    }

    /// What is given up, in the overhead alert's words.
    pub fn words(self) -> &'static str {
        match self {
            Shed::SyscallDetail => "per-(process, system call) detail off",
            Shed::SyscallProbes => "system-call programs detached",
            Shed::Runq => "run-queue latency off",
            Shed::TcpDetail => "connection RTT and byte counts off",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Shedder {
    /// Percent of the host's CPU capacity (0: never shed).
    pub budget_pct: f64,
    /// The steps past sampling this host can take, in order.
    ladder: Vec<Shed>,
    step: u32,
    calm: u32,
}

impl Shedder {
    pub fn new(budget_pct: f64, ladder: Vec<Shed>) -> Self {
        Shedder { budget_pct, ladder, step: 0, calm: 0 }
    }

    /// How far it sheds: 0 is full measurement.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// Time 1 in this many system calls.
    pub fn every(&self) -> u32 {
        1 << (2 * self.step.min(SAMPLE_STEPS))
    }

    /// The kernel's sampling mask for [`Self::every`].
    pub fn mask(&self) -> u32 {
        self.every() - 1
    }

    /// What is shed past sampling, in the order it went.
    pub fn shed(&self) -> &[Shed] {
        &self.ladder[..self.step.saturating_sub(SAMPLE_STEPS) as usize]
    }

    /// Whether every step is taken: nothing more can be shed.
    pub fn at_floor(&self) -> bool {
        self.step == SAMPLE_STEPS + self.ladder.len() as u32
    }

    /// Takes every step at once (`--start-at-floor`).
    pub fn go_to_floor(&mut self) {
        self.step = SAMPLE_STEPS + self.ladder.len() as u32;
        self.calm = 0;
    }

    /// Feeds one interval's cost, in all and of the kernel programs alone
    /// (percent of the host's CPU); returns whether the step changed.
    pub fn observe(&mut self, cost_pct: f64, kernel_pct: f64) -> bool {
        let budget = self.budget_pct;
        if budget <= 0.0 {
            return false;
        }
        if cost_pct > budget && kernel_pct >= budget / 2.0 {
            self.calm = 0;
            if !self.at_floor() {
                self.step += 1;
                return true;
            }
            return false;
        }
        let calm = cost_pct < budget / 2.0 || kernel_pct < budget / 4.0;
        if calm && self.step > 0 {
            self.calm += 1;
            if self.calm >= CALM_INTERVALS {
                self.calm = 0;
                self.step -= 1;
                return true;
            }
        } else {
            self.calm = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_in_steps_and_restores_when_calm() {
        let mut s = Shedder::new(1.0, vec![Shed::SyscallDetail, Shed::Runq]);
        let mut seen = Vec::new();
        for c in [0.5, 3.0, 2.0, 1.5, 1.2, 1.1, 1.1, 0.9, 0.4, 0.4, 0.4, 0.3, 0.3] {
            // The kernel programs make most of the cost.
            s.observe(c, c * 0.8);
            seen.push((s.every(), s.shed().len()));
        }
        assert_eq!(
            seen,
            [
                (1, 0),
                (4, 0),
                (16, 0),
                (64, 0),
                (64, 1),
                (64, 2),
                (64, 2),
                (64, 2),
                (64, 2),
                (64, 1),
                (64, 1),
                (64, 0),
                (64, 0),
            ]
        );
        assert_eq!(s.mask(), 63);
        assert_eq!(s.shed(), []);
    }

    /// Over budget by its own process alone, the agent keeps its probes.
    #[test]
    fn an_expensive_agent_process_sheds_no_probe() {
        let mut s = Shedder::new(1.0, vec![Shed::SyscallDetail, Shed::Runq]);
        for _ in 0..10 {
            assert!(!s.observe(1.5, 0.1));
        }
        assert_eq!((s.every(), s.shed().len()), (1, 0));
        // Once shed for kernel cost, it restores when the kernel is calm,
        // even if the process keeps the total over budget.
        for _ in 0..3 {
            s.observe(3.0, 2.0);
        }
        assert_eq!(s.every(), 64);
        for _ in 0..6 {
            s.observe(1.2, 0.1);
        }
        assert_eq!(s.every(), 1);
    }

    /// Started at the floor with no budget, it stays there.
    #[test]
    fn a_floor_start_without_budget_stays() {
        let mut s = Shedder::new(0.0, Shed::LADDER.to_vec());
        s.go_to_floor();
        assert!(s.at_floor());
        assert!(!s.observe(0.0, 0.0));
        assert_eq!((s.every(), s.shed()), (64, &Shed::LADDER[..]));
    }

    #[test]
    fn zero_budget_never_sheds() {
        let mut s = Shedder::new(0.0, Shed::LADDER.to_vec());
        assert!(!s.observe(99.0, 99.0));
        assert_eq!(s.every(), 1);
    }
}
