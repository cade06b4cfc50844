//! The agent's pipeline, once per interval; data flows one way:
//!
//! ```text
//! probes (read maps) -> read.rs (deltas) -> join.rs (per process, container,
//! host; filters and bounds) -> typed records -> rules -> metrics, OTLP
//! -> sinks
//! ```
//!
//! This file holds the loop and its signals; `read.rs` the reading of the
//! maps, `join.rs` the KPI records, `health.rs` the agent's own record and
//! alerts, `control.rs` the overhead control. JSON is written only at the
//! edge, by the `Encoder`.

mod control;
mod health;
mod join;
mod read;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use log::{debug, error, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::round,
    caps,
    cli::RunConfig,
    containers::Cgroups,
    family::Family,
    kubernetes::Kubelet,
    metrics::{Health as Liveness, Listener, Metrics},
    probes::{ProbeError, Probes},
    procfs,
    records::{ConfigState, Encoder, Header, Kind, KpiStatus, Record, StatusRecord, VERSION},
    rules::Engine,
    sink::{SinkError, Sinks},
    timefmt::{parse_rfc3339, rfc3339_millis},
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

/// What a configuration reload read: the new configuration, or why not.
type Reloaded = Result<crate::config::Config, String>;

/// State carried from one interval to the next.
struct Agent {
    cfg: RunConfig,
    host: String,
    cpus: u32,
    probes: Probes,
    readings: read::Readings,
    cgroups: Cgroups,
    kubelet: Kubelet,
    rules: Engine,
    prev_rules_cut: u64,
    control: control::Control,
    health: health::Health,
    config_state: ConfigState,
    out: Sinks,
    /// The Prometheus endpoint, when on.
    metrics: Option<Metrics>,
    /// /healthz and /readyz.
    liveness: std::sync::Arc<Liveness>,
    /// The next record's `seq`.
    seq: u64,
    last: Instant,
    /// The live view on the terminal (`top`, `--console`).
    console: Option<crate::console::Console>,
    /// Whether a configuration reload is being read, and whether another
    /// SIGHUP came meanwhile.
    reloading: bool,
    reload_again: bool,
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
    // Binding may need a privilege (a port below 1024); serving must not.
    let listener = match cfg.metrics_addr {
        Some(addr) => Some(Listener::bind(addr).map_err(|e| AgentError::Metrics(addr, e))?),
        None => None,
    };
    let mut probes = Probes::start(cfg.config.tls_uprobes)?;
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
    let liveness = Liveness::new(cfg.interval);
    let metrics = match listener {
        Some(l) => Some(
            Metrics::start(l, cfg.interval, liveness.clone(), cfg.metrics_pid)
                .map_err(AgentError::Output)?,
        ),
        None => None,
    };
    let start = Instant::now();
    let mut agent = Agent {
        readings: read::Readings::start(&probes)?,
        control: control::Control::new(
            cfg.overhead_budget_pct,
            prices,
            &mut probes,
            cfg.bpf_stats_window,
            cfg.interval,
            cfg.start_at_floor,
        )?,
        cgroups: Cgroups::detect(),
        kubelet: Kubelet::new(&cfg.host_root),
        rules: Engine::new(&cfg.config),
        prev_rules_cut: 0,
        health: health::Health::default(),
        config_state: ConfigState {
            path: cfg.config_path.as_ref().map(|p| p.display().to_string()),
            ..ConfigState::default()
        },
        out,
        metrics,
        liveness,
        seq: 0,
        cpus: procfs::cpus(),
        host: cfg.host.clone().unwrap_or_else(|| procfs::node_hostname(&cfg.host_root)),
        probes,
        last: start,
        reloading: false,
        reload_again: false,
        console: cfg.console.then(crate::console::Console::default),
        cfg,
    };
    match agent.status() {
        Err(AgentError::Sink(SinkError::Closed)) => return Ok(()),
        other => other?,
    }
    agent.liveness.set_ready();
    agent.control.open_stats_window(&mut agent.probes);
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
        let window_end = agent.control.window_end();
        let last = tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => deadline.is_some_and(|d| wake >= d),
            _ = tokio::time::sleep_until(window_end.unwrap_or(wake).into()), if window_end.is_some_and(|e| e < wake) => {
                agent.control.close_stats_window(&mut agent.probes);
                continue;
            }
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
            _ = sighup.recv() => {
                // On the console, a hang-up is the terminal going away: the end.
                if agent.cfg.console {
                    true
                } else {
                    agent.reload(&reload_tx);
                    continue;
                }
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
        agent.liveness.beat();
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
    /// SIGHUP: read the configuration file again, on a thread of its own
    /// (a file on a hung network mount must not stop the measuring, or
    /// SIGTERM); a bad one keeps the current configuration and says why.
    fn reload(&mut self, done: &tokio::sync::mpsc::Sender<Reloaded>) {
        // The sinks read their files again (a CA, a token) and a failing
        // one retries now; the sinks themselves stay as they started.
        self.out.reload();
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

    /// Whether each KPI family runs, and why not.
    fn kpis(&self) -> BTreeMap<&'static str, KpiStatus> {
        let mut kpis = BTreeMap::new();
        for family in Family::ALL {
            let reason = match family {
                Family::Syscalls | Family::Cpu | Family::Runq | Family::Tcp => {
                    self.probes.unavailable(family).map(str::to_string).or_else(|| {
                        self.control.switched_off(family).then(|| {
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

    fn header(&self, kind: Kind, interval_s: f64) -> Header {
        Header {
            v: VERSION,
            kind,
            ts: rfc3339_millis(SystemTime::now()),
            host: self.host.clone(),
            interval_s,
        }
    }

    fn status(&mut self) -> Result<(), AgentError> {
        let (eff, nnp) = caps::threads();
        let rec = StatusRecord {
            header: self.header(Kind::Status, 0.0),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            kpis: self.kpis(),
            programs: self.probes.attached().to_vec(),
            capabilities: caps::names(eff),
            no_new_privs: nnp,
            tls: self.probes.tls.clone(),
            program_cost_ns: self
                .control
                .prices()
                .ns
                .iter()
                .map(|(&name, &ns)| (name, round(ns, 1)))
                .collect(),
            focus: self.cfg.config.focus.iter().map(|f| f.path()).collect(),
        };
        self.emit(vec![Record::Status(rec)])
    }

    /// Hands the records to the metrics endpoint and the OTLP sinks as
    /// they are (typed, with their buckets), then, encoded, to the other
    /// sinks. A sink with the `block` policy may hold this up to one
    /// interval.
    fn emit(&mut self, mut records: Vec<Record>) -> Result<(), AgentError> {
        let deadline = Instant::now() + self.cfg.interval;
        if let Some(m) = &mut self.metrics {
            m.update(&records);
        }
        self.out.export(&records, deadline);
        if let Some(c) = &mut self.console {
            c.show(&records, &self.cfg.config);
        }
        let mut enc = Encoder::new(self.seq);
        let mut kinds = Vec::with_capacity(records.len());
        for r in &mut records {
            if !self.cfg.histograms {
                r.strip_buckets();
            }
            enc.put(r)?;
            kinds.push(r.kind());
        }
        self.seq = enc.seq;
        let lines = enc.lines.freeze();
        drop(records);
        // The console alone has no sink: nothing to send, nothing closes.
        if !self.cfg.outputs.is_empty() {
            self.out.send(&lines, &kinds, deadline)?;
        }
        // A busy interval (thousands of processes) allocates a lot for a
        // moment; give it back rather than let the allocator keep the peak.
        procfs::trim_heap();
        Ok(())
    }

    /// Reads the maps, writes one interval's records, frees what exited.
    fn interval(&mut self) -> Result<(), AgentError> {
        self.control.close_stats_window(&mut self.probes);
        let result = self.write_interval();
        self.control.open_stats_window(&mut self.probes);
        result
    }

    fn write_interval(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        let interval_s = round(now.duration_since(self.last).as_secs_f64(), 3);
        self.last = now;
        let header = self.header(Kind::Host, interval_s);

        let mut reading = self.readings.read(&self.probes)?;
        let mut records = Vec::new();
        let counts = join::records(
            &mut reading,
            &mut join::Context {
                cfg: &self.cfg,
                probes: &self.probes,
                cgroups: &mut self.cgroups,
                kubelet: &mut self.kubelet,
                cpus: self.cpus,
                header: &header,
                buckets: self.cfg.histograms || self.metrics.is_some() || self.out.want_buckets(),
                outcomes: self.cfg.config.outcomes,
                route_names: &self.readings.route_names,
                route_patterns: &self.cfg.config.route_patterns,
            },
            &mut records,
        );
        // Rules run over this interval's records, as a replay would.
        let now_s = parse_rfc3339(&header.ts).unwrap_or_default();
        let alerts = self.rules.evaluate(&records, now_s);
        for a in &alerts {
            info!("alert: {}", a.message);
        }
        records.extend(alerts.into_iter().map(Record::Alert));

        let mut lost = std::mem::take(&mut reading.lost);
        lost.cgroup_walk_cut = self.cgroups.walk_cut as u64;
        lost.kubelet_entries_cut = self.kubelet.cut;
        lost.alert_scopes_cut = self.rules.cut.saturating_sub(self.prev_rules_cut);
        self.prev_rules_cut = self.rules.cut;
        let (reclaimed, fill) = self.readings.reclaim(&mut self.probes, reading);
        let cost =
            self.control.interval(&mut self.probes, &header, counts.host_calls, &lost, self.cpus);
        let parts = health::Parts {
            header: &header,
            kpis: self.kpis(),
            config: self.config_state.clone(),
            cost,
            fill,
            lost,
            counts,
            reclaimed,
        };
        let (agent, agent_alerts) = self.health.record(parts, &mut self.out, &self.cgroups);
        records.push(Record::Agent(Box::new(agent)));
        for a in agent_alerts {
            info!("alert: {}", a.message);
            records.push(Record::Alert(a));
        }
        self.emit(records)
    }
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
