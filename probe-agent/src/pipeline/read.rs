//! Reading the kernel's maps: one cumulative read per interval, diffed
//! against the previous one (never read-then-delete, which would lose what
//! arrives in between), and the reclaim of exited processes' entries.

use std::collections::{HashMap, HashSet};

use probe_common::{
    cpu::{COUNTERS as CPU_COUNTERS, Counter as CpuCounter},
    syscalls::{COUNTERS, Counter, SyscallKey},
    tcp::{COUNTERS as TCP_COUNTERS, Counter as TcpCounter},
};

use crate::{
    aggregate::{
        cpu::{self, CpuInterval},
        syscalls::{self, CallStats, ProcessCalls, Snapshot},
        tcp::{self, TcpInterval},
    },
    probes::{MapFill, ProbeError, Probes, cpu::CpuSnapshot, tcp::TcpSnapshot},
    procfs,
    records::LostRecord,
};

/// The previous read of every map, and what is carried between intervals.
pub struct Readings {
    syscalls: Snapshot,
    syscall_counters: [u64; COUNTERS as usize],
    cpu: CpuSnapshot,
    /// CPU time counted early, to take back next interval (see aggregate::cpu).
    cpu_carry: HashMap<u32, i128>,
    cpu_counters: [u64; CPU_COUNTERS as usize],
    tcp: TcpSnapshot,
    tcp_counters: [u64; TCP_COUNTERS as usize],
    /// Processes found gone at the previous interval: their slots are freed
    /// after this interval's read, so their last calls are reported once.
    gone: HashSet<u32>,
    /// Route id -> its text, read from the kernel once per id.
    pub route_names: HashMap<u32, String>,
}

/// Most route names kept; past it the cache starts again (names are read
/// back from the kernel as needed).
const ROUTE_NAMES_KEPT: usize = 65_536;

/// One interval's figures, from the kernel's maps.
pub struct Reading {
    pub host_calls: CallStats,
    pub procs: Vec<ProcessCalls>,
    pub cpu: CpuInterval,
    pub tcp: TcpInterval,
    pub lost: LostRecord,
    /// The reads themselves, kept until the interval is written, then
    /// freed of exited processes and kept as the next interval's base.
    cur: (Snapshot, CpuSnapshot, TcpSnapshot),
    counters:
        ([u64; COUNTERS as usize], [u64; CPU_COUNTERS as usize], [u64; TCP_COUNTERS as usize]),
}

impl Readings {
    /// The first read: the base the first interval is counted from.
    pub fn start(probes: &Probes) -> Result<Self, ProbeError> {
        Ok(Readings {
            syscalls: probes.syscalls.read()?,
            syscall_counters: probes.syscalls.counters()?,
            cpu: probes.cpu.read()?,
            cpu_carry: HashMap::new(),
            cpu_counters: probes.cpu.counters()?,
            tcp: probes.tcp.read()?,
            tcp_counters: probes.tcp.counters()?,
            gone: HashSet::new(),
            route_names: HashMap::new(),
        })
    }

    /// Reads every map and diffs it against the previous read.
    pub fn read(&mut self, probes: &Probes) -> Result<Reading, ProbeError> {
        let cur = probes.syscalls.read()?;
        let counters = probes.syscalls.counters()?;
        let cpu_cur = probes.cpu.read()?;
        let cpu_counters = probes.cpu.counters()?;
        let tcp_cur = probes.tcp.read()?;
        let tcp_counters = probes.tcp.counters()?;
        let (host_calls, procs) = syscalls::by_process(syscalls::interval(&self.syscalls, &cur));
        let cpu = cpu::interval(&self.cpu, &cpu_cur, &mut self.cpu_carry);
        let tcp = tcp::interval(&self.tcp, &tcp_cur);
        let unknown: Vec<u32> =
            tcp.route_ids().filter(|id| !self.route_names.contains_key(id)).collect();
        if self.route_names.len() + unknown.len() > ROUTE_NAMES_KEPT {
            self.route_names.clear();
        }
        for id in unknown {
            if let Some(name) = probes.tcp.route_name(id) {
                self.route_names.insert(id, name);
            }
        }
        let sys =
            |c: Counter| counters[c as usize].saturating_sub(self.syscall_counters[c as usize]);
        let cpu_lost =
            |c: CpuCounter| cpu_counters[c as usize].saturating_sub(self.cpu_counters[c as usize]);
        let tcp_lost =
            |c: TcpCounter| tcp_counters[c as usize].saturating_sub(self.tcp_counters[c as usize]);
        let lost = LostRecord {
            syscall_stats_full: sys(Counter::StatsFull),
            syscall_start_full: sys(Counter::StartFull),
            comm_full: sys(Counter::CommFull),
            syscall_bad_nr: sys(Counter::BadNr),
            syscall_no_start: sys(Counter::NoStart),
            syscalls_shed: sys(Counter::Shed),
            cpu_time_full: cpu_lost(CpuCounter::TimeFull),
            runq_full: cpu_lost(CpuCounter::RunqFull),
            runq_wake_full: cpu_lost(CpuCounter::WakeFull),
            cgroup_walk_cut: 0,
            kubelet_entries_cut: 0,
            tcp_socks_full: tcp_lost(TcpCounter::SocksFull),
            tcp_stats_full: tcp_lost(TcpCounter::StatsFull),
            tcp_endpoints_full: tcp_lost(TcpCounter::EndpointsFull),
            tcp_routes_cut: tcp_lost(TcpCounter::RoutesCut),
            route_names_full: tcp_lost(TcpCounter::RouteNamesFull),
            tls_calls_full: tcp_lost(TcpCounter::SslCallsFull),
            tls_no_socket: tcp_lost(TcpCounter::SslNoSocket),
            alert_scopes_cut: 0,
        };
        Ok(Reading {
            host_calls,
            procs,
            cpu,
            tcp,
            lost,
            cur: (cur, cpu_cur, tcp_cur),
            counters: (counters, cpu_counters, tcp_counters),
        })
    }

    /// After the interval is written: frees the entries of processes that
    /// were already gone last interval (this read was their last, and it
    /// has been reported), notes which are gone now, keeps the read as the
    /// next base. Returns the entries freed and each map's fill.
    pub fn reclaim(&mut self, probes: &mut Probes, reading: Reading) -> (u64, Vec<MapFill>) {
        let (mut cur, mut cpu_cur, mut tcp_cur) = reading.cur;
        let mut doomed: Vec<SyscallKey> =
            cur.keys().filter(|k| self.gone.contains(&k.tgid)).copied().collect();
        doomed.sort_unstable();
        let mut reclaimed = probes.syscalls.reclaim(&doomed) as u64;
        for k in &doomed {
            cur.remove(k);
        }
        reclaimed += probes.cpu.reclaim(&self.gone, &cpu_cur) as u64;
        cpu_cur.time.retain(|k, _| !self.gone.contains(&k.tgid));
        cpu_cur.runq.retain(|k, _| !self.gone.contains(&k.tgid));
        reclaimed += probes.tcp.reclaim(&self.gone, &tcp_cur) as u64;
        tcp_cur.stats.retain(|k, _| !self.gone.contains(&k.tgid));
        tcp_cur.endpoints.retain(|k, _| !self.gone.contains(&k.tgid));
        let tgids: HashSet<u32> = cur
            .keys()
            .map(|k| k.tgid)
            .chain(cpu_cur.time.keys().map(|k| k.tgid))
            .chain(cpu_cur.runq.keys().map(|k| k.tgid))
            .chain(tcp_cur.stats.keys().map(|k| k.tgid))
            .chain(tcp_cur.endpoints.keys().map(|k| k.tgid))
            .filter(|&t| t != 0)
            .collect();
        reclaimed += probes.syscalls.sweep_comm(&tgids) as u64;
        self.gone = tgids.into_iter().filter(|&t| !procfs::alive(t)).collect();

        let mut fill = probes.syscalls.fill(cur.len());
        fill.extend(probes.cpu.fill(&cpu_cur));
        fill.extend(probes.tcp.fill(&tcp_cur));
        self.syscalls = cur;
        self.cpu = cpu_cur;
        self.tcp = tcp_cur;
        (self.syscall_counters, self.cpu_counters, self.tcp_counters) = reading.counters;
        (reclaimed, fill)
    }
}
