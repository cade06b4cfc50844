//! The agent's pipeline, once per interval:
//! probes (read cumulative maps) -> aggregate (deltas, percentiles) -> records -> sink.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use log::{debug, error, info, warn};
use probe_common::{
    cpu::{COUNTERS as CPU_COUNTERS, Counter as CpuCounter},
    syscalls::{COUNTERS, Counter, SyscallKey},
    tcp::{COUNTERS as TCP_COUNTERS, Counter as TcpCounter},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::{
        cpu::{self, CpuGroup, ProcCpu},
        latency::Latency,
        pct, round,
        syscalls::{self, CallStats, ProcessCalls, Snapshot},
        tcp::{self, Endpoint, Requests, TcpStats},
    },
    caps,
    cli::RunConfig,
    containers::{self, Cgroups, Container},
    cost, disk,
    family::Family,
    names,
    probes::{
        self as probe, MapFill, ProbeError, Probes, ProgramStats, cpu::CpuSnapshot,
        tcp::TcpSnapshot,
    },
    procfs,
    records::{
        AgentRecord, ConfigState, ContainerCost, ContainerMemory, ContainerRecord, Encoder,
        EndpointRecord, Header, HostMemory, HostRecord, KpiStatus, LostRecord, MapRecord,
        OutputState, ProcessMemory, ProcessRecord, ProgramRecord, SelfMemory, Shedding,
        StatusRecord, SyscallRecord, VERSION,
    },
    rules::Engine,
    shed::Shedder,
    sink::{SinkError, Sinks},
    timefmt::rfc3339_millis,
};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Usage(String),
    #[error("probe-agent needs {0} to load eBPF programs: run it as root or grant them")]
    Privileges(&'static str),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("starting the outputs: {0}")]
    Output(std::io::Error),
    #[error("--metrics-addr {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
}

/// State carried from one interval to the next.
struct Agent {
    cfg: RunConfig,
    host: String,
    probes: Probes,
    prev: Snapshot,
    prev_counters: [u64; COUNTERS as usize],
    prev_cpu: CpuSnapshot,
    /// CPU time counted early, to take back next interval (see aggregate::cpu).
    cpu_carry: std::collections::HashMap<u32, i128>,
    prev_cpu_counters: [u64; CPU_COUNTERS as usize],
    prev_tcp: TcpSnapshot,
    prev_tcp_counters: [u64; TCP_COUNTERS as usize],
    cgroups: Cgroups,
    cpus: u32,
    rules: Engine,
    prev_rules_cut: u64,
    config_state: ConfigState,
    shedder: Shedder,
    /// Optional probes switched off by the overhead budget, in order.
    probes_off: Vec<Family>,
    shed_alert: Option<serde_json::Value>,
    /// Alerts about the agent itself, written after the agent record.
    pending_alerts: Vec<serde_json::Value>,
    /// Whether the agent's memory was near its cgroup's limit last interval.
    memory_tight: bool,
    out: Sinks,
    /// The Prometheus endpoint, when on.
    metrics: Option<crate::metrics::Metrics>,
    /// The next record's `seq`.
    seq: u64,
    prev_cpu_ns: u64,
    /// The open BPF run-time statistics window, and the last closed one.
    stats_window: Option<StatsWindow>,
    stats_sample: Option<StatsSample>,
    last: Instant,
    /// Cost per run of each program, and the run counters at the last interval.
    prices: crate::overhead::Prices,
    prev_runs: [u64; probe_common::runs::COUNTED.len()],
    prev_ctxt: u64,
    /// Liveness and readiness for /healthz and /readyz.
    health: std::sync::Arc<crate::metrics::Health>,
    /// Whether a configuration reload is being read, and whether another
    /// SIGHUP came meanwhile.
    reloading: bool,
    reload_again: bool,
    /// Processes found gone at the previous interval: their slots are freed
    /// after this interval's read, so their last calls are reported once.
    gone: HashSet<u32>,
}

/// Runs the agent until `--duration`, SIGINT or SIGTERM, or every output has
/// closed for good (stdout, when it is the only one).
pub async fn run(cfg: RunConfig) -> Result<(), AgentError> {
    if let Some(caps) = procfs::missing_capabilities() {
        return Err(AgentError::Privileges(caps));
    }
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;

    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    crate::aggregate::latency::keep_buckets(cfg.histograms || cfg.metrics_addr.is_some());
    // Binding may need a privilege (a port below 1024); serving must not.
    let listener = match cfg.metrics_addr {
        Some(addr) => {
            Some(crate::metrics::Listener::bind(addr).map_err(|e| AgentError::Metrics(addr, e))?)
        }
        None => None,
    };
    let mut probes = Probes::start()?;
    let prices = crate::overhead::calibrate(&mut probes);
    // Everything is loaded, attached and priced: keep only what is still
    // needed, before any other thread exists (threads are started by
    // caps::spawn, which drops everything in the new thread as well).
    let keep = caps::needed_after_attach(!cfg.bpf_stats_window.is_zero());
    let remaining = caps::drop_all_but(&keep).unwrap_or_else(|err| {
        warn!("could not drop capabilities: {err}");
        u64::MAX
    });
    debug!("capabilities after attach: {:?}", caps::names(remaining));
    // The outputs are opened and checked without privileges, as they are
    // written: a file the agent may not safely write is refused here.
    let out = Sinks::start(&cfg.outputs).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => AgentError::Usage(e.to_string()),
        _ => AgentError::Output(e),
    })?;
    let health = crate::metrics::Health::new(cfg.interval);
    let metrics = match listener {
        Some(l) => Some(
            crate::metrics::Metrics::start(l, cfg.interval, health.clone())
                .map_err(AgentError::Output)?,
        ),
        None => None,
    };
    let host = cfg.host.clone().unwrap_or_else(procfs::hostname);
    let start = Instant::now();
    let mut agent = Agent {
        prev_counters: probes.syscalls.counters()?,
        prev_cpu: probes.cpu.read()?,
        cpu_carry: std::collections::HashMap::new(),
        prev_cpu_counters: probes.cpu.counters()?,
        prev_tcp: probes.tcp.read()?,
        prev_tcp_counters: probes.tcp.counters()?,
        cgroups: Cgroups::detect(),
        rules: Engine::new(&cfg.config),
        prev_rules_cut: 0,
        shedder: Shedder::new(
            cfg.overhead_budget_pct,
            Family::ALL.iter().filter(|f| f.optional()).count() as u32,
        ),
        probes_off: Vec::new(),
        shed_alert: None,
        pending_alerts: Vec::new(),
        memory_tight: false,
        out,
        metrics,
        seq: 0,
        config_state: ConfigState {
            path: cfg.config_path.as_ref().map(|p| p.display().to_string()),
            ..ConfigState::default()
        },
        cpus: procfs::cpus(),
        stats_window: None,
        stats_sample: None,
        prev: probes.syscalls.read()?,
        prev_cpu_ns: procfs::self_cpu_ns(),
        prev_runs: probes.runs()?,
        prev_ctxt: procfs::context_switches(),
        prices,
        health,
        reloading: false,
        reload_again: false,
        probes,
        host,
        last: start,
        gone: HashSet::new(),
        cfg,
    };
    match agent.status() {
        Err(AgentError::Sink(SinkError::Closed)) => return Ok(()),
        other => other?,
    }
    agent.health.set_ready();
    agent.open_stats_window();
    info!(
        "attached; writing records every {:?}{}",
        agent.cfg.interval,
        agent.cfg.duration.map(|d| format!(" for {d:?}")).unwrap_or_default()
    );

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(1);
    let deadline = agent.cfg.duration.map(|d| start + d);
    let mut next = start + agent.cfg.interval;
    loop {
        let wake = deadline.map_or(next, |d| d.min(next));
        let window_end = agent.stats_window.as_ref().map(|w| w.opened + agent.cfg.bpf_stats_window);
        let last = tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => deadline.is_some_and(|d| wake >= d),
            _ = tokio::time::sleep_until(window_end.unwrap_or(wake).into()), if window_end.is_some_and(|e| e < wake) => {
                agent.close_stats_window();
                continue;
            }
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
            _ = sighup.recv() => {
                agent.reload(&reload_tx);
                continue;
            }
            Some(result) = reload_rx.recv() => {
                agent.reloaded(result, &reload_tx);
                continue;
            }
        };
        match agent.interval() {
            Err(AgentError::Sink(SinkError::Closed)) => return Ok(()),
            other => other?,
        }
        agent.health.beat();
        if last {
            // Let the final interval reach stdout, unless it is stuck.
            agent.out.drain(Duration::from_secs(2));
            return Ok(());
        }
        next += agent.cfg.interval;
        // After a stall (suspend, a blocked stdout), skip missed ticks
        // rather than writing a burst of near-empty intervals.
        let now = Instant::now();
        while next <= now {
            next += agent.cfg.interval;
        }
    }
}

impl Agent {
    /// SIGHUP: read the configuration file again; a bad one keeps the
    /// current configuration running and says why.
    fn reload(&mut self, done: &tokio::sync::mpsc::Sender<Reloaded>) {
        let Some(path) = self.cfg.config_path.clone() else {
            info!("SIGHUP: no --config file; the built-in defaults stay");
            return;
        };
        if self.reloading {
            // One read at a time; a SIGHUP meanwhile reads again after it.
            self.reload_again = true;
            return;
        }
        self.reloading = true;
        // Read on a thread of its own: a file on a hung network mount must
        // not stop the measuring (or SIGTERM).
        let done = done.clone();
        let spawned = caps::spawn("config reload".into(), move || {
            let _ = done.blocking_send(crate::config::load(&path).map_err(|e| e.to_string()));
        });
        if let Err(err) = spawned {
            self.reloading = false;
            self.config_state.last_error = Some(format!("could not start the reload: {err}"));
        }
    }

    /// A reload's result: the new configuration, or why it was refused.
    fn reloaded(&mut self, result: Reloaded, done: &tokio::sync::mpsc::Sender<Reloaded>) {
        self.reloading = false;
        match result {
            Ok(config) => {
                self.rules.reconfigure(&config);
                self.cfg.config = config;
                self.config_state.reloads += 1;
                self.config_state.last_error = None;
                info!("configuration reloaded");
            }
            Err(err) => {
                error!("keeping the current configuration: {err}");
                self.config_state.last_error = Some(err);
            }
        }
        if std::mem::take(&mut self.reload_again) {
            self.reload(done);
        }
    }

    fn kpis(&self) -> BTreeMap<&'static str, KpiStatus> {
        let mut kpis = BTreeMap::new();
        for family in Family::ALL {
            let reason = match family {
                Family::Syscalls | Family::Cpu | Family::Runq | Family::Tcp => {
                    self.probes.unavailable(family).map(str::to_string).or_else(|| {
                        self.probes_off.contains(&family).then(|| {
                            "switched off by the overhead budget (--overhead-budget-pct)".into()
                        })
                    })
                }
                Family::Memory => {
                    procfs::meminfo().is_none().then(|| "/proc/meminfo unreadable".to_string())
                }
                Family::Disk => None,
            };
            kpis.insert(family.name(), KpiStatus { available: reason.is_none(), reason });
        }
        kpis
    }

    fn status(&mut self) -> Result<(), AgentError> {
        let ts = rfc3339_millis(SystemTime::now());
        let kpis = self.kpis();
        let rec = StatusRecord {
            header: Header {
                v: VERSION,
                kind: "status",
                ts: &ts,
                host: &self.host,
                interval_s: 0.0,
            },
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            kpis,
            programs: self.probes.attached().to_vec(),
            capabilities: caps::names(caps::threads().0),
            no_new_privs: caps::threads().1,
            program_cost_ns: self
                .prices
                .ns
                .iter()
                .map(|(&name, &ns)| (name, round(ns, 1)))
                .collect(),
        };
        let mut enc = Encoder::new(self.seq, self.cfg.histograms, self.metrics.is_some());
        enc.put(&rec)?;
        self.emit(enc)?;
        // A busy interval (thousands of processes) allocates a lot for a
        // moment; give it back rather than let the allocator keep the peak.
        unsafe { libc::malloc_trim(0) };
        Ok(())
    }

    /// Hands encoded records to the metrics endpoint and the sinks. A sink
    /// with the `block` policy may hold this up to one interval.
    fn emit(&mut self, enc: Encoder) -> Result<(), AgentError> {
        self.seq = enc.seq;
        let lines = enc.lines.freeze();
        if let Some(m) = &mut self.metrics {
            m.update(enc.with_buckets.as_deref().unwrap_or(&lines));
        }
        self.out.send(&lines, Instant::now() + self.cfg.interval)?;
        Ok(())
    }

    /// Turns BPF run-time statistics on for this interval's sampled window.
    fn open_stats_window(&mut self) {
        if self.cfg.bpf_stats_window.is_zero() || self.stats_window.is_some() {
            return;
        }
        if self.probes.set_run_stats(true) {
            let at_open = self.probes.program_stats();
            self.stats_window = Some(StatsWindow { opened: Instant::now(), at_open });
        }
    }

    /// Closes the window: what the programs ran in it becomes the sample the
    /// next agent record reports.
    fn close_stats_window(&mut self) {
        let Some(w) = self.stats_window.take() else { return };
        let at_close = self.probes.program_stats();
        let window_s = w.opened.elapsed().as_secs_f64();
        if self.cfg.bpf_stats_window < self.cfg.interval {
            self.probes.set_run_stats(false);
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
        self.stats_sample = Some(StatsSample { window_s: round(window_s, 3), programs });
    }

    /// Reads the maps, writes one interval's records, frees what exited.
    fn interval(&mut self) -> Result<(), AgentError> {
        self.close_stats_window();
        let result = self.write_interval();
        self.open_stats_window();
        result
    }

    fn write_interval(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        let interval_s = round(now.duration_since(self.last).as_secs_f64(), 3);
        self.last = now;
        let ts = rfc3339_millis(SystemTime::now());
        let host_name = self.host.clone();
        let header = Header { v: VERSION, kind: "host", ts: &ts, host: &host_name, interval_s };
        let cpus = self.cpus;

        self.cgroups.next_interval();
        let cur = self.probes.syscalls.read()?;
        let counters = self.probes.syscalls.counters()?;
        let cpu_cur = self.probes.cpu.read()?;
        let cpu_counters = self.probes.cpu.counters()?;
        let (host_calls, procs) = syscalls::by_process(syscalls::interval(&self.prev, &cur));
        let host_calls_n = host_calls.count();
        let mut cpu = cpu::interval(&self.prev_cpu, &cpu_cur, &mut self.cpu_carry);
        let span_ns = cpu.span_ns;
        let tcp_cur = self.probes.tcp.read()?;
        let tcp_counters = self.probes.tcp.counters()?;
        let tcp = tcp::interval(&self.prev_tcp, &tcp_cur);

        // Every process that made calls or ran, with its container.
        let mut views: BTreeMap<u32, ProcessView> = BTreeMap::new();
        for p in procs {
            let tgid = p.tgid;
            views.entry(tgid).or_default().calls = p;
        }
        for (tgid, c) in cpu.procs.drain() {
            if c.run_ns > 0 || c.runq.count > 0 {
                views.entry(tgid).or_default().cpu = c;
            }
        }
        let mut host_tcp = TcpStats::default();
        for (&tgid, t) in &tcp.procs {
            host_tcp.merge(t);
            if tgid != 0 {
                views.entry(tgid).or_default().tcp = t.clone();
            }
        }
        let mut host_requests = Requests::default();
        for (e, r) in &tcp.endpoints {
            if e.role == probe_common::tcp::ROLE_SERVER {
                host_requests.merge(r);
            }
            if e.tgid != 0 {
                views.entry(e.tgid).or_default();
            }
        }
        for (&tgid, v) in views.iter_mut() {
            v.requests = tcp.served(tgid);
        }
        let active = views.len() as u64;
        for (&tgid, v) in views.iter_mut() {
            v.calls.tgid = tgid;
            v.comm = self.comm(tgid);
            v.cgroup = self.cgroup_of(tgid, v.cpu.cgroup);
            v.container = self.container_of(tgid, v.cgroup.as_ref().map(|c| c.1.as_str()));
        }

        // Containers: every process counts, whatever the filters.
        // Keyed by id and cgroup together: a lookalike elsewhere is not merged.
        let mut containers: BTreeMap<(String, String), ContainerAgg> = BTreeMap::new();
        for v in views.values() {
            let Some((_, c)) = &v.container else { continue };
            let key = (c.id.clone(), c.cgroup.clone());
            let agg = containers.entry(key).or_insert_with(|| ContainerAgg {
                container: c.clone(),
                calls: CallStats::default(),
                run_ns: 0,
                runq: Latency::default(),
                tcp: TcpStats::default(),
                requests: Requests::default(),
            });
            agg.calls.merge(&v.calls.total);
            agg.run_ns += v.cpu.run_ns;
            agg.runq.merge(&v.cpu.runq);
            agg.tcp.merge(&v.tcp);
            agg.requests.merge(&v.requests);
        }

        // Process filters, then the top N by CPU time plus system-call time.
        let mut chosen: Vec<&ProcessView> = views
            .iter()
            .filter(|(tgid, _)| self.cfg.pids.is_empty() || self.cfg.pids.contains(tgid))
            .map(|(_, v)| v)
            .filter(|v| self.cfg.comms.is_empty() || self.cfg.comms.contains(&v.comm))
            .collect();
        let matching = chosen.len() as u64;
        chosen.sort_by_key(|v| {
            (std::cmp::Reverse(v.cpu.run_ns + v.calls.total.latency.sum_ns), v.calls.tgid)
        });
        chosen.truncate(self.cfg.top);
        let reported = chosen.len() as u64;

        let mut enc = Encoder::new(self.seq, self.cfg.histograms, self.metrics.is_some());
        let memory = procfs::meminfo().map_or(
            HostMemory { used_bytes: 0, total_bytes: 0, utilization_pct: 0.0 },
            |(total, avail)| {
                let used = total.saturating_sub(avail);
                HostMemory {
                    used_bytes: used,
                    total_bytes: total,
                    utilization_pct: pct(used, total),
                }
            },
        );
        let host_cores = cpu.host_run_ns as f64 / (span_ns.max(1) as f64);
        let host_mem = memory.used_bytes as f64;
        let host_cost = cost::host(&self.cfg.config.cost, host_cores, host_mem);
        let host = HostRecord {
            header: header.with("host"),
            syscalls: host_calls.group(interval_s),
            cpus,
            cpu: CpuGroup::new(cpu.host_run_ns, &cpu.host_runq, span_ns, cpus),
            memory,
            disk: disk::disks(),
            tcp: host_tcp.group(),
            requests: host_requests.group(interval_s),
            cost: host_cost,
        };
        enc.put(&host)?;
        for ((id, _), c) in &containers {
            let (used, limit) = self
                .cgroups
                .memory(&c.container.cgroup)
                .map_or((None, None), |(u, l)| (Some(u), l));
            let cores = c.run_ns as f64 / (span_ns.max(1) as f64);
            let mem = used.unwrap_or(0) as f64;
            let share = cost::container(&self.cfg.config.cost, cores, mem, host_cores, host_mem);
            let rec = ContainerRecord {
                header: header.with("container"),
                container_id: id,
                runtime: c.container.runtime,
                cgroup: &c.container.cgroup,
                pod_uid: c.container.pod_uid.as_deref(),
                cpu: CpuGroup::new(c.run_ns, &c.runq, span_ns, cpus),
                memory: ContainerMemory {
                    used_bytes: used,
                    limit_bytes: limit,
                    utilization_pct: used.zip(limit).map(|(u, l)| pct(u, l)),
                },
                syscalls: c.calls.group(interval_s),
                tcp: c.tcp.group(),
                requests: c.requests.group(interval_s),
                cost: ContainerCost { projected_usd_month: share },
            };
            enc.put(&rec)?;
        }
        let (mut endpoints_written, mut endpoints_cut) = (0usize, 0u64);
        for v in &chosen {
            let tgid = v.calls.tgid;
            let container_id = v.container.as_ref().map(|(_, c)| c.id.as_str());
            let rec = ProcessRecord {
                header: header.with("process"),
                pid: tgid,
                comm: &v.comm,
                cgroup_id: v.cgroup.as_ref().map(|c| c.0),
                container_id,
                syscalls: v.calls.total.group(interval_s),
                cpu: CpuGroup::new(v.cpu.run_ns, &v.cpu.runq, span_ns, cpus),
                memory: ProcessMemory { rss_bytes: procfs::rss_bytes(tgid) },
                tcp: v.tcp.group(),
                requests: v.requests.group(interval_s),
            };
            enc.put(&rec)?;
            // The busiest endpoints of the process, within both bounds;
            // their requests stay in the process's and host's totals.
            let mut eps: Vec<(&Endpoint, &Requests)> = tcp
                .endpoints
                .range(Endpoint { tgid, role: 0, port: 0, peer: [0; 16] }..)
                .take_while(|(e, _)| e.tgid == tgid)
                .collect();
            eps.sort_by_key(|(e, r)| (std::cmp::Reverse(r.latency.count + r.errors), **e));
            let room = ENDPOINTS_PER_PROCESS.min(ENDPOINTS_TOTAL.saturating_sub(endpoints_written));
            endpoints_cut += eps.len().saturating_sub(room) as u64;
            eps.truncate(room);
            eps.sort_by_key(|(e, _)| **e);
            endpoints_written += eps.len();
            for (e, r) in eps {
                let rec = EndpointRecord {
                    header: header.with("endpoint"),
                    pid: tgid,
                    comm: &v.comm,
                    container_id,
                    role: e.role_name(),
                    port: e.port,
                    peer: e.peer_addr(),
                    requests: r.group(interval_s),
                };
                enc.put(&rec)?;
            }
            for (nr, stats) in &v.calls.calls {
                let rec =
                    syscall_record(header.with("syscall"), tgid, &v.comm, container_id, *nr, stats);
                enc.put(&rec)?;
            }
        }
        drop(chosen);
        drop(views);

        // Free the slots of processes that were already gone last interval:
        // this read was their last, and it has been reported above.
        let mut cur = cur;
        let mut doomed: Vec<SyscallKey> =
            cur.keys().filter(|k| self.gone.contains(&k.tgid)).copied().collect();
        doomed.sort_unstable();
        let mut reclaimed = self.probes.syscalls.reclaim(&doomed) as u64;
        for k in &doomed {
            cur.remove(k);
        }
        let mut cpu_cur = cpu_cur;
        reclaimed += self.probes.cpu.reclaim(&self.gone, &cpu_cur) as u64;
        cpu_cur.time.retain(|k, _| !self.gone.contains(&k.tgid));
        cpu_cur.runq.retain(|k, _| !self.gone.contains(&k.tgid));
        let mut tcp_cur = tcp_cur;
        reclaimed += self.probes.tcp.reclaim(&self.gone, &tcp_cur) as u64;
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
        reclaimed += self.probes.syscalls.sweep_comm(&tgids) as u64;
        self.gone = tgids.into_iter().filter(|&t| !procfs::alive(t)).collect();

        let mut fill = self.probes.syscalls.fill(cur.len());
        fill.extend(self.probes.cpu.fill(&cpu_cur));
        fill.extend(self.probes.tcp.fill(&tcp_cur));
        // Rules run over this interval's records, as a replay would.
        // Syscall records (the most numerous) carry no rule's KPI: skip them.
        let records: Vec<serde_json::Value> = enc.lines[..]
            .split(|&b| b == b'\n')
            .filter(|l| !l.starts_with(br#"{"v":1,"type":"syscall""#))
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let now_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for alert in self.rules.evaluate(&records, now_s) {
            info!("alert: {}", alert["message"].as_str().unwrap_or(""));
            enc.put(&alert)?;
        }
        let counts =
            ProcessCounts { active, reported, cut_by_top: matching - reported, endpoints_cut };
        let mut lost = self.lost(&counters, &cpu_counters);
        lost.cgroup_walk_cut = self.cgroups.walk_cut as u64;
        lost.alert_scopes_cut = self.rules.cut.saturating_sub(self.prev_rules_cut);
        self.prev_rules_cut = self.rules.cut;
        let tcp_lost = |c: TcpCounter| {
            tcp_counters[c as usize].saturating_sub(self.prev_tcp_counters[c as usize])
        };
        lost.tcp_socks_full = tcp_lost(TcpCounter::SocksFull);
        lost.tcp_stats_full = tcp_lost(TcpCounter::StatsFull);
        lost.tcp_endpoints_full = tcp_lost(TcpCounter::EndpointsFull);
        let host_calls = host_calls_n;
        let agent =
            self.agent_record(header.with("agent"), fill, lost, counts, reclaimed, host_calls);
        enc.put(&agent)?;
        if let Some(alert) = self.shed_alert.take() {
            enc.put(&alert)?;
        }
        for alert in std::mem::take(&mut self.pending_alerts) {
            info!("alert: {}", alert["message"].as_str().unwrap_or(""));
            enc.put(&alert)?;
        }
        self.prev = cur;
        self.prev_counters = counters;
        self.prev_cpu = cpu_cur;
        self.prev_cpu_counters = cpu_counters;
        self.prev_tcp = tcp_cur;
        self.prev_tcp_counters = tcp_counters;
        self.emit(enc)?;
        // A busy interval (thousands of processes) allocates a lot for a
        // moment; give it back rather than let the allocator keep the peak.
        unsafe { libc::malloc_trim(0) };
        Ok(())
    }

    /// The cgroup (v2 id and path) a process ran in: the one its CPU time
    /// was charged to, else the one /proc says it is in now.
    fn cgroup_of(&mut self, tgid: u32, from_cpu: Option<u64>) -> Option<(u64, String)> {
        if let Some(id) = from_cpu
            && let Some(path) = self.cgroups.path(id)
        {
            return Some((id, path.to_string()));
        }
        let path = procfs::cgroup_paths(tgid).into_iter().next()?;
        let id = self.cgroups.id_of(&path)?;
        Some((id, path))
    }

    /// The container a process runs in, and the cgroup path that says so:
    /// its v2 cgroup, else (hybrid hosts, where runtimes may use only the
    /// v1 hierarchies) any of its v1 cgroups.
    fn container_of(&self, tgid: u32, v2_path: Option<&str>) -> Option<(String, Container)> {
        if let Some(path) = v2_path
            && let Some(c) = containers::parse(path)
        {
            return Some((path.to_string(), c));
        }
        procfs::cgroup_paths(tgid).into_iter().find_map(|p| containers::parse(&p).map(|c| (p, c)))
    }

    /// What the kernel side could not record this interval.
    fn lost(
        &self,
        counters: &[u64; COUNTERS as usize],
        cpu_counters: &[u64; CPU_COUNTERS as usize],
    ) -> LostRecord {
        let sys = |c: Counter| counters[c as usize].saturating_sub(self.prev_counters[c as usize]);
        let cpu = |c: CpuCounter| {
            cpu_counters[c as usize].saturating_sub(self.prev_cpu_counters[c as usize])
        };
        let lost = LostRecord {
            syscall_stats_full: sys(Counter::StatsFull),
            syscall_start_full: sys(Counter::StartFull),
            comm_full: sys(Counter::CommFull),
            syscall_bad_nr: sys(Counter::BadNr),
            syscall_no_start: sys(Counter::NoStart),
            cpu_time_full: cpu(CpuCounter::TimeFull),
            runq_full: cpu(CpuCounter::RunqFull),
            runq_wake_full: cpu(CpuCounter::WakeFull),
            cgroup_walk_cut: 0,
            tcp_socks_full: 0,
            tcp_stats_full: 0,
            tcp_endpoints_full: 0,
            alert_scopes_cut: 0,
        };
        if lost.syscall_stats_full
            + lost.syscall_start_full
            + lost.comm_full
            + lost.cpu_time_full
            + lost.runq_full
            + lost.runq_wake_full
            > 0
        {
            warn!("kernel maps full this interval: {lost:?}");
        }
        lost
    }

    /// The process's name: /proc while it lives (it may have renamed itself),
    /// else what the kernel recorded, else empty.
    fn comm(&self, tgid: u32) -> String {
        procfs::comm(tgid)
            .or_else(|| self.probes.syscalls.comm(tgid).map(|c| procfs::comm_from_kernel(&c.bytes)))
            .unwrap_or_default()
    }

    fn agent_record<'a>(
        &mut self,
        header: Header<'a>,
        fill: Vec<MapFill>,
        lost: LostRecord,
        procs: ProcessCounts,
        reclaimed: u64,
        host_calls: u64,
    ) -> AgentRecord<'a> {
        let interval_s = header.interval_s;
        let cpu_ns = procfs::self_cpu_ns();
        let cpu_pct = pct_of_core(cpu_ns.saturating_sub(self.prev_cpu_ns), interval_s);
        self.prev_cpu_ns = cpu_ns;

        let sample = self.stats_sample.take();
        if let Some(s) = &sample {
            self.prices.update(&s.programs);
        }
        let window_s = sample.as_ref().map(|s| s.window_s);
        let runs = self.runs(
            host_calls + lost.syscall_no_start + lost.syscall_bad_nr + lost.syscall_stats_full,
        );
        let programs = self
            .probes
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
            pct_of_core(ns, s.window_s)
        });
        let estimated_ns = self.prices.cost_ns(&runs);
        let programs_estimated_cpu_pct =
            pct_of_core(estimated_ns.min(u64::MAX as f64) as u64, interval_s);
        let maps = fill
            .into_iter()
            .map(|m| MapRecord {
                name: m.name,
                entries: m.entries,
                max_entries: m.max_entries,
                fill_pct: pct(m.entries, m.max_entries),
            })
            .collect();
        // The overhead budget: the agent's own CPU plus its programs', as
        // sampled (--bpf-stats-pct) or as estimated from runs and prices.
        let prog_cores = programs_cpu_pct.unwrap_or(programs_estimated_cpu_pct) / 100.0;
        let cost_pct =
            round((cpu_pct / 100.0 + prog_cores) * 100.0 / f64::from(self.cpus.max(1)), 3);
        let before = self.shedder.step();
        // A short final interval (SIGINT) says little about the load.
        let whole = interval_s >= self.cfg.interval.as_secs_f64() / 2.0;
        let kernel_pct = prog_cores * 100.0 / f64::from(self.cpus.max(1));
        if whole && self.shedder.observe(cost_pct, kernel_pct) {
            if let Err(err) = self.probes.syscalls.set_sample_mask(self.shedder.mask()) {
                warn!("could not change the latency sampling: {err}");
            }
            self.switch_optional_probes(&runs);
            self.shed_alert =
                Some(shed_alert(&header, cost_pct, &self.shedder, before, &self.off_names()));
        }
        let shedding = Shedding {
            budget_pct: self.shedder.budget_pct,
            cost_pct,
            latency_sample_every: self.shedder.every(),
            probes_off: self.probes_off.iter().map(|f| f.name()).collect(),
        };
        let (dropped_intervals, sinks) = self.out.report();
        for s in sinks.iter().filter(|s| s.failing || s.dropped_records.total() > 0) {
            // Once per interval, however many records the fault cost.
            let d = &s.dropped_records;
            warn!(
                "output {}: {}{} records dropped this interval (queue full {}, too large {}, \
                 rejected {}, unconfirmed {}), {} queued",
                s.name,
                s.last_error.as_deref().map(|e| format!("failing ({e}); ")).unwrap_or_default(),
                d.total(),
                d.queue_full,
                d.too_large,
                d.rejected,
                d.unconfirmed,
                s.queued_records,
            );
        }
        let output = OutputState {
            dropped_intervals,
            queued_bytes: sinks.iter().map(|s| s.queued_bytes).sum(),
            failing: sinks.iter().any(|s| s.failing),
            sinks,
        };
        let cgroup_memory = self.self_memory();
        self.check_memory(&header, cgroup_memory.as_ref());
        AgentRecord {
            output,
            shedding,
            header,
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            kpis: self.kpis(),
            config: self.config_state.clone(),
            cpu_pct,
            rss_bytes: procfs::self_rss_bytes(),
            cgroup_memory,
            bpf_stats_window_s: window_s,
            programs_cpu_pct,
            programs_estimated_cpu_pct,
            capabilities: caps::names(caps::threads().0),
            no_new_privs: caps::threads().1,
            programs,
            maps,
            lost,
            processes_active: procs.active,
            processes_reported: procs.reported,
            processes_cut_by_top: procs.cut_by_top,
            endpoints_cut: procs.endpoints_cut,
            entries_reclaimed: reclaimed,
        }
    }
}

impl Agent {
    /// Each program's runs since the last call: system calls (`calls`,
    /// counted by the syscall maps) for `sys_enter` and `sys_exit`,
    /// context switches for `sched_switch`, the run counters for the rest.
    fn runs(&mut self, calls: u64) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::from([("sys_enter", calls), ("sys_exit", calls)]);
        let ctxt = procfs::context_switches();
        out.insert("sched_switch", ctxt.saturating_sub(self.prev_ctxt));
        self.prev_ctxt = ctxt;
        match self.probes.runs() {
            Ok(now) => {
                for (i, name) in probe_common::runs::COUNTED.iter().enumerate() {
                    out.insert(name, now[i].wrapping_sub(self.prev_runs[i]));
                }
                self.prev_runs = now;
            }
            Err(err) => warn!("reading the programs' run counts: {err}"),
        }
        out.retain(|name, _| self.probes.attached().contains(name));
        out
    }
}

impl Agent {
    fn off_names(&self) -> Vec<&'static str> {
        self.probes_off.iter().map(|f| f.name()).collect()
    }

    /// Switches optional families off or on to match the shedding step:
    /// off, the costliest of those still on (by their programs' estimated
    /// cost this interval; TCP first on a tie); on, the last switched off.
    fn switch_optional_probes(&mut self, runs: &BTreeMap<&'static str, u64>) {
        let want = self.shedder.probes_off() as usize;
        while self.probes_off.len() < want {
            let cost = |family: Family| -> u64 {
                let programs = probe::programs_of(family);
                let ran = runs.iter().filter(|(p, _)| programs.contains(p));
                self.prices.cost_ns(&ran.map(|(&p, &n)| (p, n)).collect()) as u64
            };
            let Some(family) = Family::ALL
                .into_iter()
                .filter(|f| f.optional() && !self.probes_off.contains(f))
                .filter(|&f| self.probes.unavailable(f).is_none())
                .max_by_key(|&f| (cost(f), f == Family::Tcp))
            else {
                break;
            };
            match self.probes.set_on(family, false) {
                Ok(()) => self.probes_off.push(family),
                Err(err) => {
                    warn!("could not switch {family} off: {err}");
                    break;
                }
            }
        }
        while self.probes_off.len() > want {
            let family = self.probes_off.pop().expect("not empty");
            if let Err(err) = self.probes.set_on(family, true) {
                warn!("could not switch {family} back on: {err}");
            }
        }
    }
}

/// Share of its cgroup's memory limit above which the agent says it is
/// close to being reclaimed from or killed.
const MEMORY_TIGHT_PCT: f64 = 90.0;

impl Agent {
    /// The agent's own cgroup memory: the first of its cgroups (v2, then
    /// the v1 memory controller's) that has a limit, else the first read.
    fn self_memory(&self) -> Option<SelfMemory> {
        let mut first = None;
        for path in procfs::cgroup_paths(std::process::id()) {
            let Some((used, limit)) = self.cgroups.memory(&path) else { continue };
            let m = SelfMemory {
                cgroup: path,
                used_bytes: used,
                limit_bytes: limit,
                utilization_pct: limit.map(|l| round(used as f64 * 100.0 / l.max(1) as f64, 2)),
            };
            if limit.is_some() {
                return Some(m);
            }
            first.get_or_insert(m);
        }
        first
    }

    /// Says once per interval, and with an alert when it starts and ends,
    /// that the agent's memory is close to its cgroup's limit.
    fn check_memory(&mut self, header: &Header<'_>, m: Option<&SelfMemory>) {
        let pct = m.and_then(|m| m.utilization_pct).unwrap_or(0.0);
        let tight = pct >= MEMORY_TIGHT_PCT;
        if tight {
            warn!(
                "probe-agent memory at {pct:.1}% of its cgroup's limit: it keeps measuring, \
                 but the kernel may reclaim from it or kill it; raise the limit"
            );
        }
        if tight == self.memory_tight {
            return;
        }
        self.memory_tight = tight;
        let (level, previous, how) = if tight {
            ("investigate", "ok", format!("is above {MEMORY_TIGHT_PCT:.0}%: investigate"))
        } else {
            ("ok", "investigate", format!("is back below {MEMORY_TIGHT_PCT:.0}%: resolved"))
        };
        let message = format!("probe-agent memory at {pct:.1}% of its cgroup's limit {how}");
        self.pending_alerts.push(agent_alert(
            header,
            ("agent-memory", "cgroup_memory.utilization_pct"),
            (level, previous),
            (pct, MEMORY_TIGHT_PCT),
            message,
        ));
    }
}

/// What a configuration reload read: the new configuration, or why not.
type Reloaded = Result<crate::config::Config, String>;

/// BPF run-time statistics at the opening of a sampled window.
struct StatsWindow {
    opened: Instant,
    at_open: Vec<ProgramStats>,
}

/// What each program ran during a closed window: (name, runs, ns).
struct StatsSample {
    window_s: f64,
    programs: Vec<(&'static str, u64, u64)>,
}

/// One process's interval: its calls (`calls.tgid` is its id), CPU,
/// name and cgroup.
#[derive(Default)]
struct ProcessView {
    calls: ProcessCalls,
    cpu: ProcCpu,
    tcp: TcpStats,
    /// Requests it served.
    requests: Requests,
    comm: String,
    /// cgroup v2 id and path.
    cgroup: Option<(u64, String)>,
    /// Its container and the cgroup path that names it.
    container: Option<(String, Container)>,
}

/// One container's interval, summed over its processes.
struct ContainerAgg {
    container: Container,
    calls: CallStats,
    run_ns: u64,
    runq: Latency,
    tcp: TcpStats,
    requests: Requests,
}

/// The alert said when the agent sheds more or less load.
fn shed_alert(
    header: &Header<'_>,
    cost_pct: f64,
    shedder: &Shedder,
    before: u32,
    probes_off: &[&str],
) -> serde_json::Value {
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
    let level = |step: u32| if step > 0 { "investigate" } else { "ok" };
    let mut alert = agent_alert(
        header,
        ("overhead-budget", "shedding.cost_pct"),
        (level(shedder.step()), level(before)),
        (cost_pct, budget),
        message,
    );
    alert["latency_sample_every"] = every.into();
    alert["probes_off"] = probes_off.into();
    alert
}

/// An alert about the agent itself (scope `agent`), in the rules' layout:
/// (rule, kpi), (level, previous level), (value, threshold).
fn agent_alert(
    header: &Header<'_>,
    (rule, kpi): (&str, &str),
    (level, previous): (&str, &str),
    (value, threshold): (f64, f64),
    message: String,
) -> serde_json::Value {
    serde_json::json!({
        "v": VERSION, "type": "alert", "ts": header.ts, "host": header.host,
        "interval_s": header.interval_s, "rule": rule, "kpi": kpi, "level": level,
        "previous_level": previous, "repeat": false, "value": value, "threshold": threshold,
        "scope": "agent", "pid": std::process::id(), "since": header.ts, "message": message,
    })
}

/// How many processes were active, reported, and cut by `--top`.
struct ProcessCounts {
    active: u64,
    reported: u64,
    cut_by_top: u64,
    /// Endpoint records left out by the bounds.
    endpoints_cut: u64,
}

/// Most endpoint records per process and per interval: a process with
/// thousands of sockets (a proxy, a scanner) must not flood the stream or
/// the metrics page. The busiest are kept; the cut is counted.
const ENDPOINTS_PER_PROCESS: usize = 100;
const ENDPOINTS_TOTAL: usize = 2000;

/// One `syscall` record.
fn syscall_record<'a>(
    header: Header<'a>,
    pid: u32,
    comm: &'a str,
    container_id: Option<&'a str>,
    nr: u16,
    stats: &CallStats,
) -> SyscallRecord<'a> {
    let g = stats.group(header.interval_s);
    SyscallRecord {
        header,
        pid,
        comm,
        container_id,
        syscall: names::syscall(nr),
        nr,
        count: g.count,
        errors: g.errors,
        error_rate_pct: g.error_rate_pct,
        rate_per_s: g.rate_per_s,
        latency_ms: g.latency_ms,
        errnos: stats.errnos.iter().map(|(&e, &n)| (names::errno(e).into_owned(), n)).collect(),
    }
}

/// `ns` of CPU time over `interval_s` seconds, in percent of one core.
fn pct_of_core(ns: u64, interval_s: f64) -> f64 {
    if interval_s <= 0.0 { 0.0 } else { round(ns as f64 / (interval_s * 1e9) * 100.0, 3) }
}

/// `probe-agent floor`: attaches the empty programs and waits.
pub async fn floor(duration: Option<Duration>, clock: bool) -> Result<(), AgentError> {
    if let Some(caps) = procfs::missing_capabilities() {
        return Err(AgentError::Privileges(caps));
    }
    let (mut ebpf, _) = crate::probes::load()?;
    let hooks = if clock { crate::probes::FLOOR_CLOCK_HOOKS } else { crate::probes::FLOOR_HOOKS };
    for hook in hooks {
        crate::probes::attach(&mut ebpf, hook)?;
    }
    info!("floor programs attached");
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let forever = Duration::from_secs(86_400 * 365);
    tokio::select! {
        _ = tokio::time::sleep(duration.unwrap_or(forever)) => {},
        _ = sigint.recv() => {},
        _ = sigterm.recv() => {},
    }
    Ok(())
}
