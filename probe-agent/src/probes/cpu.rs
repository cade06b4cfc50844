//! CPU probes: reading on-CPU time, what runs now, and run-queue latency.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use log::debug;
use probe_common::cpu::{
    COUNTER_MAP, COUNTERS, CURRENT_MAP, CpuKey, CpuValue, RUNQ_CONTROL_MAP, RUNQ_MAP, RunqKey,
    RunqValue, STATE_OFFSET_GLOBAL, SWITCH_STATE_ARG_GLOBAL, SchedCurrent, TIME_MAP, WAKE_MAP,
};

use super::{MapFill, ProbeError, max_entries, take};

/// How `sched_switch` learns the outgoing task's state on this kernel, as
/// the loader's globals: from its fourth argument (5.18+: `btf_trace_sched_switch`
/// takes 5 parameters with the leading `void *`), else from
/// `task_struct::__state` (`state` before 5.14). Without BTF, neither: only
/// preemptions then restart a task's run-queue wait.
pub fn switch_globals(btf: Option<&crate::btf::Btf>) -> [(&'static str, u32); 2] {
    let Some(btf) = btf else {
        return [(SWITCH_STATE_ARG_GLOBAL, 0), (STATE_OFFSET_GLOBAL, 0)];
    };
    let has_arg = btf.fn_pointer_params("btf_trace_sched_switch").is_ok_and(|n| n >= 5);
    let state_off = btf
        .member_offset("task_struct", "__state")
        .or_else(|_| btf.member_offset("task_struct", "state"))
        .unwrap_or(0);
    debug!("sched_switch: prev_state argument {has_arg}, task_struct state at {state_off}");
    [(SWITCH_STATE_ARG_GLOBAL, u32::from(has_arg)), (STATE_OFFSET_GLOBAL, state_off)]
}

/// One read of the CPU maps, with the monotonic time it was taken at.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    /// CLOCK_MONOTONIC at the read, the clock of `bpf_ktime_get_ns`.
    pub at_ns: u64,
    pub time: HashMap<CpuKey, CpuValue>,
    /// What each CPU runs now.
    pub current: Vec<SchedCurrent>,
    pub runq: HashMap<RunqKey, RunqValue>,
}

pub struct CpuMaps {
    time: PerCpuHashMap<MapData, CpuKey, CpuValue>,
    current: PerCpuArray<MapData, SchedCurrent>,
    runq: PerCpuHashMap<MapData, RunqKey, RunqValue>,
    counters: PerCpuArray<MapData, u64>,
    wake: BpfHashMap<MapData, u64, u64>,
    runq_control: Array<MapData, u32>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) fills the timespec it is given; a supported
    // clock cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl CpuMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(Self {
            time: take(ebpf, TIME_MAP)?.try_into().map_err(map_err(TIME_MAP))?,
            current: take(ebpf, CURRENT_MAP)?.try_into().map_err(map_err(CURRENT_MAP))?,
            runq: take(ebpf, RUNQ_MAP)?.try_into().map_err(map_err(RUNQ_MAP))?,
            counters: take(ebpf, COUNTER_MAP)?.try_into().map_err(map_err(COUNTER_MAP))?,
            wake: take(ebpf, WAKE_MAP)?.try_into().map_err(map_err(WAKE_MAP))?,
            runq_control: take(ebpf, RUNQ_CONTROL_MAP)?
                .try_into()
                .map_err(map_err(RUNQ_CONTROL_MAP))?,
        })
    }

    /// Switches run-queue latency on or off (the overhead budget). Switched
    /// on again, wakeups recorded before it went off are forgotten: they
    /// would time waits that were not watched.
    pub fn set_runq_on(&mut self, on: bool) -> Result<(), ProbeError> {
        if on {
            let tasks: Vec<u64> = self.wake.keys().filter_map(Result::ok).collect();
            for t in tasks {
                let _ = self.wake.remove(&t);
            }
        }
        self.runq_control.set(0, u32::from(!on), 0).map_err(map_err(RUNQ_CONTROL_MAP))
    }

    /// Reads ended runs first, then what runs now: a run that ends between
    /// the two reads is then counted late (next interval), never twice.
    pub fn read(&self) -> Result<CpuSnapshot, ProbeError> {
        let time = super::read_summed(&self.time, TIME_MAP)?;
        let current = self.current.get(&0, 0).map_err(map_err(CURRENT_MAP))?.to_vec();
        let at_ns = monotonic_ns();
        let runq = super::read_summed(&self.runq, RUNQ_MAP)?;
        Ok(CpuSnapshot { at_ns, time, current, runq })
    }

    /// The kernel's loss counters, summed over CPUs, indexed by `cpu::Counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], ProbeError> {
        super::read_counters(&self.counters, COUNTER_MAP)
    }

    /// Frees the entries of processes that have exited (after their last read).
    pub fn reclaim(&mut self, gone: &std::collections::HashSet<u32>, snap: &CpuSnapshot) -> usize {
        let mut freed = 0;
        for key in snap.time.keys().filter(|k| gone.contains(&k.tgid)) {
            freed += usize::from(self.time.remove(key).is_ok());
        }
        for key in snap.runq.keys().filter(|k| gone.contains(&k.tgid)) {
            freed += usize::from(self.runq.remove(key).is_ok());
        }
        freed
    }

    pub fn fill(&self, snap: &CpuSnapshot) -> Vec<MapFill> {
        vec![
            MapFill {
                name: TIME_MAP,
                entries: snap.time.len() as u64,
                max_entries: max_entries(&self.time),
            },
            MapFill {
                name: RUNQ_MAP,
                entries: snap.runq.len() as u64,
                max_entries: max_entries(&self.runq),
            },
        ]
    }
}
