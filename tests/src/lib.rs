//! Harness for the integration tests: run the real agent (real eBPF
//! programs, this kernel) next to workloads with a known answer.
//!
//! Tests that need BPF call [`require_bpf!`]: without root or BPF they print
//! why and return, except under CI (`CI` set), where that is a failure.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        OnceLock,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// Sends `sig` to process `pid` (gone already: nothing happens).
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Online CPUs, as the agent counts them (sysconf).
pub fn online_cpus() -> u64 {
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// statvfs(3) of a path: (fragment size, blocks, free blocks, available blocks).
pub fn statvfs(path: &std::path::Path) -> Option<(u64, u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain C data (integers): all zeros is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path that outlives the call, and the struct it fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_frsize as u64, st.f_blocks as u64, st.f_bfree as u64, st.f_bavail as u64))
}

/// Why BPF tests cannot run here, if they cannot.
pub fn bpf_unavailable() -> Option<String> {
    if euid() != 0 {
        return Some("not root".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        && !std::path::Path::new("/proc/sys/kernel/bpf_stats_enabled").exists()
    {
        return Some("kernel without BPF".into());
    }
    None
}

/// Returns from the test (printing why) where BPF is impossible; fails the
/// test instead under CI, where these tests must run.
#[macro_export]
macro_rules! require_bpf {
    () => {
        if let Some(why) = $crate::bpf_unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("BPF integration test cannot run under CI: {why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// Decodes `\xNN` escapes, so tests can pass arbitrary bytes as a name.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agent binary, built (once per test process) with the tests' profile.
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PROBE_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace()).args(["build", "--quiet", "-p", "probe-agent"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for probe-agent");
        assert!(status.success(), "building probe-agent failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from);
        target.join(if release { "release" } else { "debug" }).join("probe-agent")
    })
    .clone()
}

/// The agent's commented default configuration (`config --default`).
pub fn default_config() -> String {
    let out = Command::new(agent_bin()).args(["config", "--default"]).output().expect("agent");
    assert!(out.status.success(), "config --default: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 configuration")
}

/// The default configuration with each `(from, to)` replaced everywhere
/// (each must occur: an edit that matches nothing would test nothing),
/// written to `dir/probe.toml`; returns its path.
pub fn config_file(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = default_config();
    for (from, to) in edits {
        assert!(text.contains(from), "the default configuration has no {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("probe.toml");
    std::fs::write(&path, text).expect("writing the configuration");
    path
}

/// The workload binary of this crate: cargo builds it next to the test
/// binaries' `deps/` folder before running integration tests
/// (`PROBE_WORKLOAD_BIN` overrides it, as in the QEMU guests).
pub fn workload_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PROBE_WORKLOAD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target profile folder");
    dir.join("probe-workload")
}

/// The agent's programs, in the order it attaches them on this kernel
/// (bpftool shows the full names, from BTF).
pub const PROGRAMS: [&str; 15] = [
    "sys_enter",
    "sys_exit",
    "sched_switch",
    "sched_wakeup",
    "sched_wakeup_new",
    "sched_process_exec",
    "sched_process_exit",
    "sock_send_length",
    "sock_recv_length",
    "tcp_probe",
    "inet_sock_set_state",
    "tcp_retransmit_skb",
    "tcp_send_reset",
    "tcp_receive_reset",
    "tcp_destroy_sock",
];

/// A running agent whose stdout lines are collected as they come.
pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    pub records: Vec<Value>,
}

impl Agent {
    /// Starts `probe-agent run ARGS` and waits for its `status` record.
    pub fn start(args: &[&str]) -> Result<Self> {
        Agent::start_in(args, None)
    }

    /// As [`Agent::start`], run through a wrapper command (`setpriv ...`,
    /// `taskset ...`): `WRAPPER... probe-agent run ARGS`.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Result<Self> {
        let (program, rest) = wrapper.split_first().context("an empty wrapper")?;
        let mut cmd = Command::new(program);
        cmd.args(rest).arg(agent_bin()).arg("run").args(args);
        Agent::spawn(cmd)
    }

    /// As [`Agent::start`], with the agent started inside the cgroup whose
    /// `cgroup.procs` file is given (so all its memory is charged there).
    pub fn start_in(args: &[&str], cgroup_procs: Option<&std::path::Path>) -> Result<Self> {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("run").args(args);
        if let Some(procs) = cgroup_procs {
            use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
            let path = std::ffi::CString::new(procs.as_os_str().as_bytes())?;
            // Between fork and exec only raw system calls: open, write "0"
            // (meaning: this process), close.
            // SAFETY: the closure calls only async-signal-safe functions and
            // allocates nothing (the path was made before the fork).
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                })
            };
        }
        Agent::spawn(cmd)
    }

    /// Starts a prepared agent command (its stdout becomes the records)
    /// and waits for its `status` record.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting probe-agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent { child, lines, records: Vec::new() };
        // Generous: loading takes seconds under QEMU's emulation.
        agent.wait_for(|r| r["type"] == "status", Duration::from_secs(120))?;
        Ok(agent)
    }

    /// Collects lines until one matches `pred` (that record is kept too).
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|e| match e {
                RecvTimeoutError::Timeout => anyhow!("no matching record within {timeout:?}"),
                RecvTimeoutError::Disconnected => anyhow!("the agent closed its output (exited)"),
            })?;
            let rec = parse_record(&line)?;
            self.records.push(rec.clone());
            if pred(&rec) {
                return Ok(rec);
            }
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (the agent writes a final partial interval), waits for
    /// it to exit, and returns every record it wrote, each checked against
    /// the schema.
    pub fn stop(self) -> Result<Vec<Value>> {
        let records = self.stop_with(libc::SIGINT)?;
        validate(&records)?;
        Ok(records)
    }

    /// Sends `signal`, waits for a clean exit, and returns every record
    /// written (not checked against the schema: the QEMU guests have no
    /// validator, their records are checked on the host).
    pub fn stop_with(mut self, signal: i32) -> Result<Vec<Value>> {
        kill(self.child.id(), signal);
        let status = self.child.wait()?;
        if !status.success() {
            bail!("agent exited with {status}");
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.records.push(parse_record(&line)?);
        }
        Ok(std::mem::take(&mut self.records))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses one line and checks the fields every record must have.
pub fn parse_record(line: &str) -> Result<Value> {
    let rec: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
    anyhow::ensure!(rec["v"] == 1, "v != 1: {line}");
    anyhow::ensure!(rec["type"].is_string(), "no type: {line}");
    anyhow::ensure!(rec["host"].is_string(), "no host: {line}");
    anyhow::ensure!(rec["interval_s"].is_number(), "no interval_s: {line}");
    let ts = rec["ts"].as_str().context("no ts")?;
    anyhow::ensure!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "bad ts {ts}"
    );
    Ok(rec)
}

/// A workload process waiting for the go signal.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// What the ready line said after the pid (a server's port).
    pub ready: Vec<String>,
}

impl Workload {
    /// Starts `probe-workload ARGS` and waits until it is ready.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(workload_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting probe-workload")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let mut words =
            line.strip_prefix("ready ").context("workload not ready")?.split_whitespace();
        let pid = words.next().context("no pid")?.parse()?;
        let ready = words.map(str::to_string).collect();
        Ok(Workload { child, stdin, stdout, pid, ready })
    }

    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("already started")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Reads the next line the workload prints (as JSON).
    pub fn next_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits for the workload to finish and returns its ground truth.
    pub fn finish(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "workload failed: {status}");
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records of `kind` for process `pid`.
pub fn of<'a>(records: &'a [Value], kind: &str, pid: u32) -> impl Iterator<Item = &'a Value> {
    let kind = kind.to_string();
    records.iter().filter(move |r| r["type"] == kind.as_str() && r["pid"] == pid)
}

/// Sum of `field` (a count) over every `syscall` record of `pid` for `name`.
pub fn syscall_total(records: &[Value], pid: u32, name: &str, field: &str) -> u64 {
    of(records, "syscall", pid)
        .filter(|r| r["syscall"] == name)
        .map(|r| r[field].as_u64().unwrap_or(0))
        .sum()
}

/// Asserts that the `calls` workload's own counts (`truth`: `openat`,
/// `openat_errors`, `getppid`) are exactly what the records of `pid` say.
pub fn assert_calls_exact(records: &[Value], pid: u32, truth: &Value) {
    let want = |k: &str| truth[k].as_u64().unwrap_or_else(|| panic!("{k} in {truth}"));
    assert_eq!(syscall_total(records, pid, "openat", "count"), want("openat"), "openat");
    assert_eq!(syscall_total(records, pid, "openat", "errors"), want("openat_errors"), "errors");
    assert_eq!(syscall_total(records, pid, "getppid", "count"), want("getppid"), "getppid");
}

/// `|got - want| / want`.
pub fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want
}

/// Checks records against the published schema (`schema/probe-v1.schema.json`)
/// with an independent validator (python3-jsonschema): every record any
/// integration test sees from the agent goes through here.
pub fn validate(records: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    validate_lines(&text)
}

/// As [`validate`], for raw lines.
pub fn validate_lines(text: &str) -> Result<()> {
    let mut child = Command::new("python3")
        .arg(workspace().join("scripts/validate-records.py"))
        .arg(workspace().join("schema/probe-v1.schema.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running scripts/validate-records.py (python3 with python3-jsonschema)")?;
    let mut stdin = child.stdin.take().context("validator stdin")?;
    let text = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "records do not match the schema:\n{said}");
    Ok(())
}

/// A fresh, empty directory for one test (named after it, this process and
/// thread).
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "probe-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a temporary directory");
    d
}

/// A system user made for one test (an unprivileged local user, as an
/// attacker would be), removed with its files on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn create(tag: &str) -> Result<Self> {
        let name = format!("probe-{tag}-{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .context("useradd")?;
        anyhow::ensure!(out.status.success(), "useradd: {}", String::from_utf8_lossy(&out.stderr));
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id").args([flag, &name]).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
        };
        Ok(TestUser { uid: id("-u")?, gid: id("-g")?, name })
    }

    /// A command run as this user, with no capability and no supplementary group.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.gid),
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            program,
        ]);
        c
    }

    /// Runs `sh -c SCRIPT` as this user and waits; fails if it does.
    pub fn sh(&self, script: &str) -> Result<()> {
        let out = self.command("sh").args(["-c", script]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "as {}: {script}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-9", "-u", &self.uid.to_string()]).output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A cgroup made for a test in every hierarchy that can hold it (the v2
/// hierarchy, and the v1 memory controller on hybrid hosts), removed on
/// drop: a stand-in for a container runtime's cgroup, named as one names it.
pub struct TestCgroup {
    dirs: Vec<PathBuf>,
    /// The directories above `dirs` that `create` made, deepest first.
    made: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes `rel` (e.g. `docker/<id>`, as docker's cgroupfs driver names it).
    pub fn create(rel: &str) -> Result<Self> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let bases = if root.join("cgroup.controllers").exists() {
            vec![root]
        } else {
            vec![root.join("unified"), root.join("memory")]
        };
        let (mut dirs, mut made) = (Vec::new(), Vec::new());
        for base in bases {
            let dir = base.join(rel);
            let missing: Vec<PathBuf> = dir
                .ancestors()
                .skip(1)
                .take_while(|p| p.starts_with(&base) && *p != base && !p.exists())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            dirs.push(dir);
            made.extend(missing);
        }
        Ok(TestCgroup { dirs, made })
    }

    /// Sets a memory limit: v1 `memory.limit_in_bytes` on hybrid hosts
    /// (their v2 hierarchy has no memory controller), else v2 `memory.max`,
    /// with the controller enabled down to it.
    pub fn limit_memory(&self, bytes: u64) -> Result<()> {
        let root = Path::new("/sys/fs/cgroup");
        for d in &self.dirs {
            let file = if d.starts_with(root.join("unified")) {
                continue;
            } else if d.starts_with(root.join("memory")) {
                d.join("memory.limit_in_bytes")
            } else {
                let mut parents: Vec<&Path> =
                    d.ancestors().skip(1).take_while(|p| p.starts_with(root)).collect();
                parents.reverse();
                for p in parents {
                    let _ = std::fs::write(p.join("cgroup.subtree_control"), "+memory");
                }
                d.join("memory.max")
            };
            std::fs::write(&file, bytes.to_string())
                .with_context(|| format!("{}", file.display()))?;
        }
        Ok(())
    }

    /// Its directories (the v2 one, and the v1 memory controller's).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves process `pid` in.
    pub fn enter(&self, pid: u32) -> Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} to {}", d.display()))?;
        }
        Ok(())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Empty once the workload has exited; the leaf first.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        // Those it made above (a sibling's still there keeps them).
        for d in &self.made {
            let _ = std::fs::remove_dir(d);
        }
    }
}
