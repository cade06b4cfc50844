//! System-call probes: the attach table and the reading of their maps.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use probe_common::{
    Comm,
    syscalls::{
        COMM_MAP, CONTROL_MAP, COUNTER_MAP, COUNTERS, CURRENT_MAP, START_MAP, STATS_MAP,
        SyscallCurrent, SyscallKey, SyscallStart, SyscallValue,
    },
};

use super::{MapFill, ProbeError, max_entries, take};

/// The system-call maps, owned by the agent.
pub struct SyscallMaps {
    stats: PerCpuHashMap<MapData, SyscallKey, SyscallValue>,
    start: BpfHashMap<MapData, u32, SyscallStart>,
    current: PerCpuArray<MapData, SyscallCurrent>,
    comm: BpfHashMap<MapData, u32, Comm>,
    counters: PerCpuArray<MapData, u64>,
    control: Array<MapData, u32>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl SyscallMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(Self {
            stats: take(ebpf, STATS_MAP)?.try_into().map_err(map_err(STATS_MAP))?,
            start: take(ebpf, START_MAP)?.try_into().map_err(map_err(START_MAP))?,
            current: take(ebpf, CURRENT_MAP)?.try_into().map_err(map_err(CURRENT_MAP))?,
            comm: take(ebpf, COMM_MAP)?.try_into().map_err(map_err(COMM_MAP))?,
            counters: take(ebpf, COUNTER_MAP)?.try_into().map_err(map_err(COUNTER_MAP))?,
            control: take(ebpf, CONTROL_MAP)?.try_into().map_err(map_err(CONTROL_MAP))?,
        })
    }

    /// Sets the latency sampling mask (0: time every call) and whether the
    /// per-(process, call) detail is shed (calls then counted in one total).
    pub fn set_control(&mut self, mask: u32, detail_off: bool) -> Result<(), ProbeError> {
        let flag = if detail_off { probe_common::syscalls::DETAIL_OFF } else { 0 };
        self.control.set(0, mask | flag, 0).map_err(map_err(CONTROL_MAP))
    }

    /// Empties the record of calls in flight (every CPU's current call and
    /// the starts of switched-out threads), before the programs attach
    /// again after a detach.
    pub fn forget_calls_in_flight(&mut self) -> Result<(), ProbeError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e));
        let empty = cpus.and_then(|n| {
            aya::maps::PerCpuValues::try_from(vec![SyscallCurrent::default(); n])
                .map_err(MapError::IoError)
        });
        empty.and_then(|empty| self.current.set(0, empty, 0)).map_err(map_err(CURRENT_MAP))?;
        let tids: Vec<u32> = self.start.keys().filter_map(Result::ok).collect();
        for tid in tids {
            let _ = self.start.remove(&tid);
        }
        Ok(())
    }

    /// Every stats slot, summed over CPUs (max: the largest of any CPU).
    /// Values are cumulative; the aggregate stage diffs two reads.
    pub fn read(&self) -> Result<HashMap<SyscallKey, SyscallValue>, ProbeError> {
        super::read_summed(&self.stats, STATS_MAP)
    }

    /// The kernel's loss counters, summed over CPUs, indexed by `Counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], ProbeError> {
        super::read_counters(&self.counters, COUNTER_MAP)
    }

    /// The name the kernel recorded for `tgid`, if any.
    pub fn comm(&self, tgid: u32) -> Option<Comm> {
        self.comm.get(&tgid, 0).ok()
    }

    /// Deletes every slot of processes that have exited, after their last
    /// counts were read. Returns the number of map entries freed.
    pub fn reclaim(&mut self, keys: &[SyscallKey]) -> usize {
        let mut freed = 0;
        let mut last_tgid = None;
        for key in keys {
            if self.stats.remove(key).is_ok() {
                freed += 1;
            }
            if last_tgid != Some(key.tgid) {
                last_tgid = Some(key.tgid);
                if self.comm.remove(&key.tgid).is_ok() {
                    freed += 1;
                }
            }
        }
        freed
    }

    /// Frees the names of processes that are gone and have no stats slot
    /// (a process that only exec'd or exited, or whose slots are already
    /// reclaimed); those with slots are freed by [`Self::reclaim`].
    pub fn sweep_comm(&mut self, with_slots: &std::collections::HashSet<u32>) -> usize {
        let dead: Vec<u32> = self
            .comm
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !with_slots.contains(t) && !crate::procfs::alive(*t))
            .collect();
        dead.iter().filter(|t| self.comm.remove(t).is_ok()).count()
    }

    /// Live entries of each map against its bound. `stats_entries` is the
    /// size of the last [`Self::read`], which already walked that map.
    pub fn fill(&self, stats_entries: usize) -> Vec<MapFill> {
        vec![
            MapFill {
                name: STATS_MAP,
                entries: stats_entries as u64,
                max_entries: max_entries(&self.stats),
            },
            MapFill {
                name: START_MAP,
                entries: self.start.keys().filter(Result::is_ok).count() as u64,
                max_entries: max_entries(&self.start),
            },
            MapFill {
                name: COMM_MAP,
                entries: self.comm.keys().filter(Result::is_ok).count() as u64,
                max_entries: max_entries(&self.comm),
            },
        ]
    }
}
