//! Probes: load the kernel object, attach its programs, and read their maps.
//!
//! Attachment is a table: each KPI family lists its programs and hooks. A
//! program that fails to load or attach is reported with the reason; the
//! agent stops only when nothing at all could attach.

pub mod syscalls;

use std::os::fd::OwnedFd;

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{ProgramError, RawTracePoint},
};
use log::{debug, warn};

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
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}

/// One row of the attach table: a program of the object and its raw tracepoint.
pub struct Hook {
    pub program: &'static str,
    pub tracepoint: &'static str,
}

/// The benchmark's floors: empty programs on the system-call tracepoints,
/// and programs that only read the clock there.
pub const FLOOR_HOOKS: &[Hook] = &[
    Hook { program: "floor_sys_enter", tracepoint: "sys_enter" },
    Hook { program: "floor_sys_exit", tracepoint: "sys_exit" },
];
pub const FLOOR_CLOCK_HOOKS: &[Hook] = &[
    Hook { program: "floor_clk_enter", tracepoint: "sys_enter" },
    Hook { program: "floor_clk_exit", tracepoint: "sys_exit" },
];

/// Per-program kernel run-time statistics (cumulative).
#[derive(Clone, Debug, Default)]
pub struct ProgramStats {
    pub name: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Loads the object (programs are loaded into the kernel when attached).
pub fn load() -> Result<Ebpf, ProbeError> {
    if OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    Ok(EbpfLoader::new().load(OBJECT)?)
}

/// Loads and attaches one raw-tracepoint program.
pub fn attach(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), ProbeError> {
    let name = hook.program;
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    program.load().map_err(|source| ProbeError::Program { name, source })?;
    program.attach(hook.tracepoint).map_err(|source| ProbeError::Program { name, source })?;
    debug!("attached {name} to raw tracepoint {}", hook.tracepoint);
    Ok(())
}

/// The loaded object with its attached programs.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    /// Keeps BPF run-time statistics on while held (BPF_ENABLE_STATS, 5.8+).
    run_stats: Option<OwnedFd>,
    pub syscalls: syscalls::SyscallMaps,
}

impl Probes {
    /// Loads the object and attaches every KPI's programs.
    pub fn start() -> Result<Self, ProbeError> {
        let mut ebpf = load()?;
        let mut attached = Vec::new();
        let mut failures = Vec::new();
        for hook in syscalls::HOOKS {
            match attach(&mut ebpf, hook) {
                Ok(()) => attached.push(hook.program),
                Err(err) => {
                    warn!("{err}");
                    failures.push(err.to_string());
                }
            }
        }
        if attached.is_empty() {
            return Err(ProbeError::NothingAttached(failures.join("; ")));
        }
        let syscalls = syscalls::SyscallMaps::take(&mut ebpf)?;
        Ok(Self { ebpf, attached, run_stats: None, syscalls })
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
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
