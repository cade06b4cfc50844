//! Probes: load the kernel object, attach its programs, and read their maps.
//!
//! Attachment is a table: each row names a program, its raw tracepoint and
//! the KPI families that need it. A program that fails to load or attach
//! marks those families unavailable, with the reason; the agent stops only
//! when nothing at all could attach.

pub mod cpu;
pub mod syscalls;
pub mod tcp;
pub mod tls;

use std::{collections::BTreeMap, os::fd::OwnedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{IterableMap, MapError},
    programs::{ProgramError, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId},
};
use log::{debug, warn};
use probe_common::{
    requests::io,
    runs::{COUNTED, RUNS_MAP},
};

use crate::{family::Family, shed::Shed};

/// The kernel object, built by build.rs from probe-ebpf (empty when built
/// without the eBPF toolchain).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Errors of the probe stage.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this probe-agent was built without its eBPF object (bpf-linker or the nightly rust-src \
         were missing at build time); run scripts/setup.sh and rebuild"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("program {name}: {}", causes(source))]
    Program { name: &'static str, source: ProgramError },
    #[error("map {name}: {}", causes(source))]
    Map { name: &'static str, source: MapError },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}

/// An error and its causes, "a: b: c": aya keeps the OS error (what a
/// user needs to see, e.g. "No such file or directory" for a tracepoint
/// this kernel lacks) as a cause of "`bpf_raw_tracepoint_open` failed".
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// A raw tracepoint (Linux 4.17+; no tracefs needed).
    Raw(&'static str),
    /// A classic tracepoint (category, name): its id comes from tracefs,
    /// and its record must have the layout the program was built for.
    Tracepoint(&'static str, &'static str),
}

/// One row of the attach table: a program of the object, where it
/// attaches, and the KPI families that cannot work without it.
pub struct Hook {
    pub program: &'static str,
    pub attach: Attach,
    pub needed_by: &'static [Family],
}

const fn raw(program: &'static str, needed_by: &'static [Family]) -> Hook {
    Hook { program, attach: Attach::Raw(program), needed_by }
}

const fn classic(
    program: &'static str,
    category: &'static str,
    needed_by: &'static [Family],
) -> Hook {
    Hook { program, attach: Attach::Tracepoint(category, program), needed_by }
}

/// Everything the agent attaches, in order (include/trace/events/
/// syscalls.h, sched.h, sock.h, tcp.h). Each program is named after its
/// hook.
pub const HOOKS: &[Hook] = &[
    raw("sys_enter", &[Family::Syscalls]),
    raw("sys_exit", &[Family::Syscalls]),
    // Moves the start of a call whose thread leaves the CPU, and accounts CPU time.
    raw("sched_switch", &[Family::Syscalls, Family::Cpu, Family::Runq]),
    raw("sched_wakeup", &[Family::Runq]),
    raw("sched_wakeup_new", &[Family::Runq]),
    raw("sched_process_exec", &[]),
    raw("sched_process_exit", &[]),
    // The frequent TCP events (every send, receive and incoming segment)
    // on raw tracepoints, reading fields at offsets from the kernel's BTF.
    raw("sock_send_length", &[Family::Tcp]),
    raw("sock_recv_length", &[Family::Tcp]),
    raw("tcp_probe", &[Family::Tcp]),
    classic("inet_sock_set_state", "sock", &[Family::Tcp]),
    classic("tcp_retransmit_skb", "tcp", &[Family::Tcp]),
    classic("tcp_send_reset", "tcp", &[Family::Tcp]),
    classic("tcp_receive_reset", "tcp", &[Family::Tcp]),
    classic("tcp_destroy_sock", "tcp", &[Family::Tcp]),
];

/// The benchmark's floors: empty programs on the system-call tracepoints,
/// and programs that only read the clock there.
pub const FLOOR_HOOKS: &[Hook] = &[
    Hook { program: "floor_sys_enter", attach: Attach::Raw("sys_enter"), needed_by: &[] },
    Hook { program: "floor_sys_exit", attach: Attach::Raw("sys_exit"), needed_by: &[] },
];
pub const FLOOR_CLOCK_HOOKS: &[Hook] = &[
    Hook { program: "floor_clk_enter", attach: Attach::Raw("sys_enter"), needed_by: &[] },
    Hook { program: "floor_clk_exit", attach: Attach::Raw("sys_exit"), needed_by: &[] },
];

/// Per-program kernel run-time statistics (cumulative).
#[derive(Clone, Debug, Default)]
pub struct ProgramStats {
    pub name: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// A map's name, live entry count and bound.
#[derive(Clone, Debug)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

/// Loads the object (programs are loaded into the kernel when attached).
/// The offset of `task_struct::tgid` comes from the kernel's BTF; without
/// it the CPU programs still run but cannot name the process currently on
/// a CPU (its time is then counted when it leaves the CPU).
/// Also returns why the TCP raw tracepoints cannot run, if they cannot:
/// the offsets they read come from the kernel's BTF too.
pub fn load() -> Result<(Ebpf, Option<String>), ProbeError> {
    if OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let btf = crate::btf::Btf::from_kernel();
    let tgid_off = match btf
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|b| b.member_offset("task_struct", "tgid").map_err(|e| e.to_string()))
    {
        Ok(off) => off,
        Err(err) => {
            warn!(
                "kernel BTF unusable ({err}); CPU time of running tasks is counted when they leave the CPU"
            );
            0
        }
    };
    let mut tcp_offsets = Vec::new();
    let mut tcp_missing = None;
    for &(global, path) in probe_common::tcp::OFFSET_GLOBALS {
        let off = path.iter().try_fold(0u32, |sum, &(st, member)| match &btf {
            Ok(b) => b.member_offset(st, member).map(|o| sum + o).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        });
        match off {
            Ok(off) => tcp_offsets.push((global, off)),
            Err(err) => {
                tcp_missing.get_or_insert(format!("kernel BTF: {err}"));
            }
        }
    }
    let switch = cpu::switch_globals(btf.as_ref().ok());
    let regs = match btf.as_ref().map_err(|e| e.to_string()).and_then(call_registers) {
        Ok(offsets) => Some(offsets),
        Err(err) => {
            tcp_missing.get_or_insert(format!("kernel BTF: {err}"));
            None
        }
    };
    drop(btf);
    // No kernel BTF for aya: the programs use no CO-RE relocations, and
    // parsing vmlinux BTF would cost the agent tens of MiB.
    let stats_entries = stats_max_entries(aya::util::nr_cpus().unwrap_or(1));
    debug!("{} holds {stats_entries} entries", probe_common::syscalls::STATS_MAP);
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .map_max_entries(probe_common::syscalls::STATS_MAP, stats_entries)
        .override_global(probe_common::cpu::TGID_OFFSET_GLOBAL, &tgid_off, true);
    for (global, off) in tcp_offsets.iter().chain(&switch) {
        loader.override_global(global, off, true);
    }
    let nrs = io_syscalls();
    for (global, nr) in io::NR_GLOBALS.iter().zip(&nrs) {
        loader.override_global(global, nr, true);
    }
    if let Some((nr_off, arg1_off)) = &regs {
        loader.override_global(io::REGS_NR_OFFSET_GLOBAL, nr_off, true);
        loader.override_global(io::REGS_ARG1_OFFSET_GLOBAL, arg1_off, true);
    }
    let ebpf = loader.load(OBJECT)?;
    // Give the pages of what loading parsed back to the system rather than
    // let the allocator keep them for the agent's lifetime.
    crate::procfs::trim_heap();
    Ok((ebpf, tcp_missing))
}

/// The read and write family's numbers on this architecture, in the order
/// of `io::NR_GLOBALS`: the calls whose buffer the socket programs read the
/// first bytes of requests and answers from.
fn io_syscalls() -> [u32; 8] {
    let nr = |n: libc::c_long| n as u32;
    [
        nr(libc::SYS_read),
        nr(libc::SYS_write),
        nr(libc::SYS_readv),
        nr(libc::SYS_writev),
        nr(libc::SYS_recvfrom),
        nr(libc::SYS_sendto),
        nr(libc::SYS_recvmsg),
        nr(libc::SYS_sendmsg),
    ]
}

/// Where `struct pt_regs` holds a system call's number and its second
/// argument: x86_64's `orig_ax` and `si`, arm64's `syscallno` and
/// `regs[1]` (the ptrace ABI's registers; the kernel's BTF gives the
/// offsets, `syscallno` not being ABI).
fn call_registers(btf: &crate::btf::Btf) -> Result<(u32, u32), String> {
    let off = |member| btf.member_offset("pt_regs", member).map_err(|e| e.to_string());
    if cfg!(target_arch = "aarch64") {
        Ok((off("syscallno")?, off("regs")? + 8))
    } else {
        Ok((off("orig_ax")?, off("si")?))
    }
}

/// Kernel memory the per-CPU syscall map may take (a per-CPU value is
/// stored once per possible CPU).
const STATS_MEMORY_BYTES: usize = 64 << 20;

/// Entries of `SYSCALL_STATS` for this many CPUs: as many as fit in
/// [`STATS_MEMORY_BYTES`], at least the compiled-in default and at most
/// 512 Ki. A host with thousands of short-lived processes per interval
/// needs many (each uses a few dozen (syscall, bucket) slots).
pub fn stats_max_entries(cpus: usize) -> u32 {
    let per_entry = std::mem::size_of::<probe_common::syscalls::SyscallValue>() * cpus.max(1) + 96;
    let n = STATS_MEMORY_BYTES / per_entry;
    (n as u32).clamp(probe_common::syscalls::STATS_MAX_ENTRIES, 512 * 1024)
}

/// Loads and attaches one program where its row says; returns the link
/// of a raw tracepoint (which the budget may detach and attach again).
pub fn attach(ebpf: &mut Ebpf, hook: &Hook) -> Result<Option<RawTracePointLinkId>, ProbeError> {
    let name = hook.program;
    let err = |source| ProbeError::Program { name, source };
    let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?;
    let mut link = None;
    match hook.attach {
        Attach::Raw(tp) => {
            let p: &mut RawTracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            match p.attach(tp) {
                Ok(id) => link = Some(id),
                Err(source) => {
                    // Nothing will run it: give its kernel memory back now.
                    let _ = p.unload();
                    return Err(err(source));
                }
            }
        }
        Attach::Tracepoint(category, tp) => {
            let p: &mut TracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            if let Err(source) = p.attach(category, tp) {
                let _ = p.unload();
                return Err(err(source));
            }
        }
    }
    debug!("attached {name} to {:?}", hook.attach);
    Ok(link)
}

/// A per-CPU value that the agent sums over CPUs: counts and sums add,
/// maxima take the largest.
pub trait PerCpu: aya::Pod + Default {
    fn absorb(&mut self, cpu: &Self);
}

impl PerCpu for probe_common::syscalls::SyscallValue {
    fn absorb(&mut self, v: &Self) {
        self.count += v.count;
        self.errors += v.errors;
        self.sum_ns += v.sum_ns;
        self.max_ns = self.max_ns.max(v.max_ns);
        self.eagain += v.eagain;
    }
}

impl PerCpu for probe_common::tcp::TcpValue {
    fn absorb(&mut self, v: &Self) {
        self.count += v.count;
        self.sum += v.sum;
        self.max = self.max.max(v.max);
    }
}

impl PerCpu for probe_common::cpu::CpuValue {
    fn absorb(&mut self, v: &Self) {
        self.run_ns += v.run_ns;
        self.runs += v.runs;
    }
}

impl PerCpu for probe_common::cpu::RunqValue {
    fn absorb(&mut self, v: &Self) {
        self.count += v.count;
        self.sum_ns += v.sum_ns;
        self.max_ns = self.max_ns.max(v.max_ns);
    }
}

/// Every entry of a per-CPU hash, summed over CPUs. Values are cumulative;
/// the aggregate stage diffs two reads.
pub fn read_summed<K, V>(
    map: &aya::maps::PerCpuHashMap<aya::maps::MapData, K, V>,
    name: &'static str,
) -> Result<std::collections::HashMap<K, V>, ProbeError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: PerCpu,
{
    let mut out = std::collections::HashMap::new();
    for item in map.iter() {
        let (key, per_cpu) = match item {
            Ok(kv) => kv,
            // Deleted between listing its key and reading it: nothing to add.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => return Err(ProbeError::Map { name, source }),
        };
        let mut sum = V::default();
        for v in per_cpu.iter() {
            sum.absorb(v);
        }
        out.insert(key, sum);
    }
    Ok(out)
}

/// A per-CPU array of counters, each summed over CPUs.
pub fn read_counters<const N: usize>(
    map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    name: &'static str,
) -> Result<[u64; N], ProbeError> {
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        let per_cpu = map.get(&(i as u32), 0).map_err(|source| ProbeError::Map { name, source })?;
        *slot = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
    }
    Ok(out)
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn max_entries<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> u64 {
    map.map().info().map(|i| u64::from(i.max_entries())).unwrap_or(0)
}

/// The system-call programs, which the overhead budget may detach.
const SYSCALL_PROGRAMS: [&str; 2] = ["sys_enter", "sys_exit"];

/// The loaded object with its attached programs.
pub struct Probes {
    ebpf: Ebpf,
    /// The programs attached now.
    attached: Vec<&'static str>,
    /// The system-call programs' links while attached.
    syscall_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// KPI family -> why it is unavailable (absent: available).
    unavailable: BTreeMap<Family, String>,
    /// Keeps BPF run-time statistics on while held (BPF_ENABLE_STATS, 5.8+).
    run_stats: Option<OwnedFd>,
    pub syscalls: syscalls::SyscallMaps,
    pub cpu: cpu::CpuMaps,
    pub tcp: tcp::TcpMaps,
    /// Whether the OpenSSL uprobes are attached, and to what.
    pub tls: tls::TlsStatus,
    /// Run counts of the programs no other figure counts.
    runs: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

impl Probes {
    /// Loads the object and attaches every KPI's programs, and the OpenSSL
    /// uprobes if `tls_uprobes`.
    pub fn start(tls_uprobes: bool) -> Result<Self, ProbeError> {
        let (mut ebpf, tcp_missing) = load()?;
        let mut attached = Vec::new();
        let mut unavailable = BTreeMap::new();
        let mut failures = Vec::new();
        let mut syscall_links = Vec::new();
        // TCP's programs read fields at offsets from the kernel's BTF and
        // classic tracepoints whose records must have the layout they were
        // built for: without those, its programs are not attached.
        let tcp_ready = match tcp_missing {
            Some(reason) => Err(reason),
            None => tcp::ensure_tracefs().and_then(|()| tcp::check_layout()),
        };
        if let Err(reason) = &tcp_ready {
            warn!("TCP KPIs unavailable: {reason}");
            unavailable.insert(Family::Tcp, reason.clone());
        }
        for hook in HOOKS {
            if tcp_ready.is_err() && hook.needed_by == [Family::Tcp] {
                continue;
            }
            match attach(&mut ebpf, hook) {
                Ok(link) => {
                    attached.push(hook.program);
                    if let (Some(link), true) = (link, SYSCALL_PROGRAMS.contains(&hook.program)) {
                        syscall_links.push((hook.program, link));
                    }
                }
                Err(err) => {
                    warn!("{err}");
                    for family in hook.needed_by {
                        unavailable.entry(*family).or_insert_with(|| err.to_string());
                    }
                    failures.push(err.to_string());
                }
            }
        }
        if attached.is_empty() {
            return Err(ProbeError::NothingAttached(failures.join("; ")));
        }
        let tls = match (&unavailable.get(&Family::Tcp), tls_uprobes) {
            (_, false) => tls::TlsStatus {
                reason: Some("off by default ([requests] tls_uprobes = true turns them on)".into()),
                ..tls::TlsStatus::default()
            },
            (Some(reason), true) => tls::TlsStatus {
                reason: Some(format!("the TCP KPIs are unavailable: {reason}")),
                ..tls::TlsStatus::default()
            },
            (None, true) => tls::attach(&mut ebpf),
        };
        let syscalls = syscalls::SyscallMaps::take(&mut ebpf)?;
        let cpu = cpu::CpuMaps::take(&mut ebpf)?;
        let tcp = tcp::TcpMaps::take(&mut ebpf)?;
        let runs = take(&mut ebpf, RUNS_MAP)?
            .try_into()
            .map_err(|source| ProbeError::Map { name: RUNS_MAP, source })?;
        Ok(Self {
            ebpf,
            attached,
            syscall_links,
            unavailable,
            run_stats: None,
            syscalls,
            cpu,
            tcp,
            tls,
            runs,
        })
    }

    /// Cumulative runs of each program of `probe_common::runs::COUNTED`
    /// (summed over CPUs), in that order.
    pub fn runs(&self) -> Result<[u64; COUNTED.len()], ProbeError> {
        read_counters(&self.runs, RUNS_MAP)
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Why a KPI family is unavailable, if it is.
    pub fn unavailable(&self, family: Family) -> Option<&str> {
        self.unavailable.get(&family).map(String::as_str)
    }

    /// Sheds a step of [`Shed::LADDER`] past latency sampling, or takes
    /// it back; `mask` is the latency sampling mask in force.
    pub fn set_shed(&mut self, what: Shed, shed: bool, mask: u32) -> Result<(), ProbeError> {
        match what {
            Shed::SyscallDetail => self.syscalls.set_control(mask, shed),
            Shed::SyscallProbes => self.set_syscall_programs(!shed),
            Shed::Runq => self.cpu.set_runq_on(!shed),
            Shed::TcpDetail => self.tcp.set_detail(!shed),
        }
    }

    /// Detaches the system-call programs, or attaches them again. Detached,
    /// no call runs a program of ours and the kernel takes its fast path
    /// for every call again (an attached `sys_enter`/`sys_exit` sends every
    /// call through the traced slow path, about 40 ns a call here).
    /// Before attaching, the starts of calls in flight are forgotten: a
    /// call that began while detached would otherwise end with the start of
    /// an older one (its exit is then counted as without start).
    fn set_syscall_programs(&mut self, on: bool) -> Result<(), ProbeError> {
        if !on {
            for (name, link) in std::mem::take(&mut self.syscall_links) {
                let err = |source| ProbeError::Program { name, source };
                let program =
                    self.ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?;
                let p: &mut RawTracePoint = program.try_into().map_err(err)?;
                p.detach(link).map_err(err)?;
                self.attached.retain(|&a| a != name);
            }
            return Ok(());
        }
        if !self.syscall_links.is_empty() {
            return Ok(());
        }
        self.syscalls.forget_calls_in_flight()?;
        for name in SYSCALL_PROGRAMS {
            let err = |source| ProbeError::Program { name, source };
            let Some(Attach::Raw(tp)) = HOOKS.iter().find(|h| h.program == name).map(|h| h.attach)
            else {
                return Err(ProbeError::MissingProgram(name));
            };
            let program = self.ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?;
            let p: &mut RawTracePoint = program.try_into().map_err(err)?;
            let link = p.attach(tp).map_err(err)?;
            self.syscall_links.push((name, link));
            self.attached.push(name);
        }
        Ok(())
    }

    /// Turns the kernel's BPF run-time statistics on or off; returns whether
    /// they are on. They cost every BPF program on the host two clock reads
    /// per run, so the agent keeps them on only for a sampled window.
    pub fn set_run_stats(&mut self, on: bool) -> bool {
        if !on {
            self.run_stats = None;
            return false;
        }
        if self.run_stats.is_none() {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => self.run_stats = Some(fd),
                Err(err) => debug!("BPF run-time statistics unavailable: {err}"),
            }
        }
        self.run_stats.is_some()
    }

    /// Cumulative run count and time of every attached program (these only
    /// advance while run-time statistics are on).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.attached
            .iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn stats_map_scales_with_cpus_within_its_memory() {
        assert_eq!(stats_max_entries(2), 381_300);
        assert_eq!(stats_max_entries(1), 493_447);
        assert!(stats_max_entries(64) >= 32_768 && stats_max_entries(64) <= 32_768 * 2);
        assert_eq!(stats_max_entries(4096), 32_768, "never below the default");
    }
}
