//! Command line: parsing and the one validation step that turns it into
//! the runtime configuration.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "probe-agent",
    version,
    about = "eBPF host agent: system-call KPIs as JSON lines on stdout",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and write KPI records (the default).
    Run(RunArgs),
    /// Load the probes and show the focus KPIs live on this terminal, per
    /// host, container and endpoint, with their alert levels (as `run
    /// --console`; records still go to any --output given).
    Top(RunArgs),
    /// Print the configuration: `--default` for the commented defaults.
    Config {
        #[arg(long, required = true)]
        default: bool,
    },
    /// Validate a configuration file without starting probes.
    CheckConfig { file: std::path::PathBuf },
    /// Run the rules over recorded KPI lines (a file, or - for stdin) and
    /// print the alerts they would raise.
    Replay {
        file: std::path::PathBuf,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Print the definition of every KPI the agent emits.
    Kpis,
    /// A report of recorded KPI lines for stakeholders: the focus KPIs
    /// against their targets, the stakeholder script with the measured
    /// baseline, quiet red flags, alerts, top offenders (Markdown on
    /// stdout; --html FILE also writes it with charts).
    Report {
        file: std::path::PathBuf,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Also write one self-contained HTML file with a chart per focus KPI.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Fleet-wide latency percentiles: adds up the histogram buckets of
    /// recordings made with --histograms (many hosts' files, or - for stdin).
    Merge {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// The change of each KPI between two recordings, in numbers and words,
    /// the focus KPIs first (--html FILE also draws their before and after).
    Compare {
        baseline: std::path::PathBuf,
        current: std::path::PathBuf,
        /// The configuration whose focus and thresholds to use.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Also write one self-contained HTML file with the charts.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Attach only empty programs to the system-call tracepoints, for the
    /// benchmark's floor measurement, and wait.
    #[command(hide = true)]
    Floor {
        #[arg(long, value_parser = crate::timefmt::parse_duration)]
        duration: Option<Duration>,
        /// Read the clock at entry and exit (the floor of a latency tracer).
        #[arg(long)]
        clock: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// How often records are written (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = crate::timefmt::parse_duration)]
    pub interval: Duration,
    /// Stop after this long, after a final set of records.
    #[arg(long, value_parser = crate::timefmt::parse_duration)]
    pub duration: Option<Duration>,
    /// Report only this process (repeatable). Host totals are unaffected.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Report only processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Report at most N processes per interval, by CPU plus system-call time.
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    /// Without --pid or --comm, leave out processes that used less than
    /// this percent of one core and had no TCP connections or requests
    /// (counted in the agent record's processes_cut_idle; 0 keeps all).
    #[arg(long, default_value_t = 1.0, value_name = "PCT")]
    pub min_cpu_pct: f64,
    /// Per-(process, system call) records: `top`, the 3 calls each process
    /// spent most time in and the 3 others that failed most (all of them
    /// for processes named by --pid or --comm); `all`; or `none`. What is
    /// left out is counted in the agent record's syscalls_cut.
    #[arg(long, value_enum, default_value_t = SyscallDetail::Top, value_name = "WHICH")]
    pub syscalls: SyscallDetail,
    /// Show the focus KPIs live on this terminal instead of writing records
    /// to stdout (as `probe-agent top`).
    #[arg(long)]
    pub console: bool,
    /// The `host` label of every record (default: the host name; with
    /// --host-root, the node's /etc/hostname).
    #[arg(long)]
    pub host: Option<String>,
    /// Configuration file (TOML): rules, alert lifecycle, prices. Default:
    /// the built-in defaults (`probe-agent config --default`).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Percent of each interval during which the kernel's BPF run-time
    /// statistics are on, to measure the programs' own cost (0 = never:
    /// their cost is then estimated from their runs and a cost per run
    /// measured once at start-up). Above 0 the main thread keeps
    /// CAP_SYS_ADMIN (BPF_ENABLE_STATS needs it), and while statistics are
    /// on every BPF program on the host pays two extra clock reads per run.
    #[arg(long, default_value_t = 0, value_name = "PCT")]
    pub bpf_stats_pct: u8,
    /// The agent's overhead budget, in percent of the host's CPU capacity
    /// (its process plus its kernel programs). Above it, the agent times
    /// fewer system calls (counting all of them), then sheds the rest but
    /// requests, a step per interval; 0 disables shedding.
    #[arg(long, default_value_t = 1.0, value_name = "PCT")]
    pub overhead_budget_pct: f64,
    /// Start with everything shed that the budget can shed (system-call
    /// programs detached, run-queue latency and connection detail off):
    /// requests, CPU, memory and disk KPIs at their lowest cost. The
    /// budget restores a step at a time when the host is calm; with
    /// --overhead-budget-pct 0 it stays there.
    #[arg(long)]
    pub start_at_floor: bool,
    /// Where records go (repeatable; default stdout): stdout, file:PATH,
    /// tcp://HOST:PORT, unix:PATH, http(s)://HOST:PORT/PATH,
    /// otlp+http(s)://HOST:PORT/v1/metrics, with options after `?`:
    /// policy=block|drop_oldest, queue_bytes=8M, types=alert,...; for
    /// files rotate_bytes=100M and keep=5; for HTTP and OTLP gzip=true,
    /// ca=PATH, bearer_file=PATH, basic_file=PATH, header=Name:Value, and
    /// for HTTP body=ndjson|json (see the README).
    #[arg(long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Every latency summary also carries its non-empty histogram buckets,
    /// so many hosts' records can be merged (`probe-agent merge`).
    #[arg(long)]
    pub histograms: bool,
    /// Serve the KPIs in Prometheus' text format at http://ADDR/metrics
    /// (a bare port binds 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Label process, endpoint and route series of the metrics endpoint
    /// with `pid` too. Without it they are keyed by command name: the
    /// processes of one name add up, and a restart makes no new series.
    #[arg(long)]
    pub metrics_pid: bool,
    /// Where the node's root filesystem is: `/` on the node, `/host` in the
    /// DaemonSet (the node's `/` mounted there). Kubernetes names are read
    /// under it (the kubelet's /var/log/pods and /var/log/containers).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub host_root: std::path::PathBuf,
}

/// Which per-(process, system call) records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallDetail {
    /// The few each process spent most time in, and the few that failed most.
    Top,
    All,
    None,
}

/// The validated runtime configuration of `run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub top: usize,
    pub min_cpu_pct: f64,
    pub syscalls: SyscallDetail,
    /// Show the console view on the terminal (`top`, `--console`).
    pub console: bool,
    pub host: Option<String>,
    pub config: crate::config::Config,
    pub config_path: Option<std::path::PathBuf>,
    /// Window of each interval with BPF run-time statistics on (zero: off).
    pub bpf_stats_window: Duration,
    pub overhead_budget_pct: f64,
    pub start_at_floor: bool,
    pub outputs: Vec<crate::sink::OutputSpec>,
    pub histograms: bool,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `pid` on process, endpoint and route series.
    pub metrics_pid: bool,
    /// The node's root filesystem (`/`, or where it is mounted).
    pub host_root: std::path::PathBuf,
}

/// `PORT` (on 127.0.0.1) or `IP:PORT`.
fn parse_listen_addr(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

/// A usage error: the agent exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Kernel comm length minus the NUL (TASK_COMM_LEN - 1).
const COMM_MAX: usize = 15;

impl RunArgs {
    pub fn validate(self) -> Result<RunConfig, UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(86_400)
        {
            return bad(format!(
                "--interval must be between 100ms and 24h, got {:?}",
                self.interval
            ));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return bad("--duration must be above zero".into());
        }
        if self.top == 0 || self.top > 100_000 {
            return bad(format!("--top must be between 1 and 100000, got {}", self.top));
        }
        if !self.min_cpu_pct.is_finite() || !(0.0..=100.0).contains(&self.min_cpu_pct) {
            return bad(format!("--min-cpu-pct must be 0 to 100, got {}", self.min_cpu_pct));
        }
        if let Some(p) = self.pids.iter().find(|&&p| p == 0) {
            return bad(format!("--pid must be a process id above 0, got {p}"));
        }
        let mut comms = Vec::new();
        for c in self.comms {
            if c.is_empty() {
                return bad("--comm must not be empty".into());
            }
            // The kernel keeps 15 bytes of a name; match what it keeps.
            let mut end = c.len().min(COMM_MAX);
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            comms.push(c[..end].to_string());
        }
        if self.host.as_deref().is_some_and(|h| h.is_empty() || h.len() > 253) {
            return bad("--host must be 1 to 253 bytes".into());
        }
        if !self.overhead_budget_pct.is_finite()
            || !(0.0..=100.0).contains(&self.overhead_budget_pct)
        {
            return bad(format!(
                "--overhead-budget-pct must be 0 to 100, got {}",
                self.overhead_budget_pct
            ));
        }
        if self.bpf_stats_pct > 100 {
            return bad(format!("--bpf-stats-pct must be 0 to 100, got {}", self.bpf_stats_pct));
        }
        let config = match &self.config {
            Some(path) => crate::config::load(path).map_err(|e| UsageError(e.to_string()))?,
            None => crate::config::Config::default(),
        };
        let outputs = if !self.outputs.is_empty() {
            self.outputs
                .iter()
                .map(|o| o.parse::<crate::sink::OutputSpec>().map_err(UsageError))
                .collect::<Result<Vec<_>, _>>()?
        } else if !config.outputs.is_empty() {
            config.outputs.clone()
        } else if self.console {
            // The terminal is the console's: records go only where asked.
            Vec::new()
        } else {
            vec!["stdout".parse().map_err(UsageError)?]
        };
        if self.console && outputs.iter().any(|o| matches!(o.target, crate::sink::Target::Stdout)) {
            return bad("the console view owns the terminal: send records to a sink other than \
                        stdout (--output file:PATH, tcp://...)"
                .into());
        }
        let metrics_addr = match self.metrics_addr.as_deref() {
            None => None,
            Some(a) => Some(parse_listen_addr(a).ok_or_else(|| {
                UsageError(format!(
                    "--metrics-addr must be PORT or IP:PORT (e.g. 127.0.0.1:9464), got {a:?}"
                ))
            })?),
        };
        if !self.host_root.is_absolute() || !self.host_root.is_dir() {
            return bad(format!(
                "--host-root must be an absolute path to a directory, got {}",
                self.host_root.display()
            ));
        }
        Ok(RunConfig {
            outputs,
            metrics_pid: self.metrics_pid,
            host_root: self.host_root,
            histograms: self.histograms,
            metrics_addr,
            interval: self.interval,
            duration: self.duration,
            pids: self.pids,
            comms,
            top: self.top,
            min_cpu_pct: self.min_cpu_pct,
            syscalls: self.syscalls,
            console: self.console,
            host: self.host,
            config,
            config_path: self.config,
            bpf_stats_window: self.interval * u32::from(self.bpf_stats_pct) / 100,
            overhead_budget_pct: self.overhead_budget_pct,
            start_at_floor: self.start_at_floor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Result<RunConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("probe-agent").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        let run = match cli.command {
            Some(Command::Run(r)) => r,
            Some(Command::Top(mut r)) => {
                r.console = true;
                r
            }
            None => cli.run,
            Some(other) => return Err(format!("{other:?}")),
        };
        run.validate().map_err(|e| e.0)
    }

    use crate::timefmt::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("99999999999999h").is_err());
    }

    #[test]
    fn defaults_and_default_subcommand() {
        let c = args(&[]).unwrap();
        assert_eq!((c.interval, c.top, c.duration), (Duration::from_secs(10), 50, None));
        let c = args(&["--interval", "1s", "--pid", "5", "--pid", "6"]).unwrap();
        assert_eq!(c.pids, [5, 6]);
        let c = args(&["run", "--comm", "a-very-long-process-name", "--top", "3"]).unwrap();
        assert_eq!(c.comms, ["a-very-long-pro"]);
        assert_eq!(c.top, 3);
        assert_eq!((c.syscalls, c.min_cpu_pct, c.console), (SyscallDetail::Top, 1.0, false));
        let c = args(&["--syscalls", "all", "--min-cpu-pct", "0"]).unwrap();
        assert_eq!((c.syscalls, c.min_cpu_pct), (SyscallDetail::All, 0.0));
        let c = args(&["top", "--interval", "2s"]).unwrap();
        assert!(c.console && c.outputs.is_empty(), "the console writes no records to stdout");
        let c = args(&[]).unwrap();
        assert_eq!((c.metrics_pid, c.host_root.as_path()), (false, std::path::Path::new("/")));
        let c = args(&["--metrics-pid", "--host-root", "/tmp"]).unwrap();
        assert_eq!((c.metrics_pid, c.host_root.as_path()), (true, std::path::Path::new("/tmp")));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--interval", "1ms"][..],
            &["--top", "0"],
            &["--pid", "0"],
            &["--pid", "-3"],
            &["--duration", "0s"],
            &["--comm", ""],
            &["--bpf-stats-pct", "101"],
            &["--bogus"],
            &["--output", "ftp://x"],
            &["--output", "tcp://nohost"],
            &["--metrics-addr", "localhost"],
            &["--metrics-addr", "99999"],
            &["--syscalls", "some"],
            &["--min-cpu-pct", "-1"],
            &["top", "--output", "stdout"],
            &["--host-root", "relative"],
            &["--host-root", "/no/such/dir"],
        ] {
            assert!(args(bad).is_err(), "{bad:?} accepted");
        }
    }
}
