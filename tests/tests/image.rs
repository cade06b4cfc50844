//! The container image, run as the DaemonSet runs it, next to a real
//! container: podman (runc, cgroupfs) runs the image built by
//! scripts/image.sh with what packaging/kubernetes says (rendered by
//! `kubectl kustomize`): privileged, host PIDs, the same mounts, args, env,
//! port, probes and resource limits. A second container, with a memory
//! limit, runs a workload that holds a known amount of memory. The agent
//! must report the host, attribute the workload to that container's real
//! id, with its memory against the limit podman set (both read back from
//! podman and from the cgroup files), serve its metrics on the port, and
//! detach cleanly on SIGTERM within the grace period.
//!
//! It also measures what the agent uses in its container (peak memory of
//! its cgroup, BPF maps included, and CPU), which the manifest's requests
//! and limits are set from, and prints the figures.

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use probe_tests::{parse_record, require_bpf, validate, workload_bin};
use serde_json::Value;

/// What podman needs on these hosts (ENVIRONMENT.md): runc (crun fails on
/// RLIMIT_NOFILE and hybrid cgroups), the cgroupfs manager, and rlimits
/// within what the process may set.
const PODMAN: [&str; 3] = ["--runtime", "runc", "--cgroup-manager=cgroupfs"];
const RLIMITS: [&str; 4] = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024"];
const IMAGE: &str = "localhost/probe-agent:test";
const NODE: &str = "smoke-node-1";
/// The workload container's memory limit, and what the workload holds.
const LIMIT_BYTES: u64 = 96 << 20;
const HOLD_MIB: u64 = 40;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman").args(PODMAN).args(args).output().context("podman")?;
    ensure!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A container removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(PODMAN)
            .args(["rm", "--force", "--time", "5", &self.0])
            .output();
    }
}

/// The DaemonSet's pod spec, from the Kustomize base as `kubectl apply -k`
/// would send it.
fn daemonset_pod() -> Result<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(workspace().join("packaging/kubernetes"))
        .output()
        .context("kubectl (scripts/setup.sh installs it)")?;
    ensure!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    // YAML to JSON with the deployment tools' Python (scripts/setup.sh).
    let py = dirs_home().join(".cache/probe/venv-deploy/bin/python");
    let mut child = Command::new(&py)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (scripts/setup.sh makes it)", py.display()))?;
    child.stdin.take().context("stdin")?.write_all(&out.stdout)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "YAML to JSON failed");
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let ds = docs
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in packaging/kubernetes")?;
    Ok(ds["spec"]["template"]["spec"].clone())
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Kubernetes quantities as podman takes them: "200m" CPU -> "0.2",
/// "256Mi" -> bytes.
fn cpu_cores(q: &str) -> f64 {
    q.strip_suffix('m').map_or_else(|| q.parse().unwrap(), |m| m.parse::<f64>().unwrap() / 1000.0)
}

fn bytes(q: &str) -> u64 {
    for (suffix, mult) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * mult;
        }
    }
    q.parse().unwrap()
}

/// `podman run` arguments for the DaemonSet's container, and what the test
/// needs to know of it.
struct Shape {
    args: Vec<String>,
    metrics_port: u16,
    probes: Vec<(String, String)>,
    grace: u64,
    cpu_limit: f64,
    memory_limit: u64,
}

fn shape(pod: &Value, host_port: u16) -> Result<Shape> {
    let c = &pod["containers"][0];
    let mut args: Vec<String> = Vec::new();
    let flag = |args: &mut Vec<String>, a: &str, b: String| {
        args.push(a.into());
        args.push(b);
    };
    if pod["hostPID"] == true {
        args.push("--pid=host".into());
    }
    if pod["hostNetwork"] == true {
        args.push("--network=host".into());
    }
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] == true, "the DaemonSet runs privileged");
    args.push("--privileged".into());
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for m in c["volumeMounts"].as_array().context("volumeMounts")? {
        let v = volumes[m["name"].as_str().unwrap()];
        let host = v["hostPath"]["path"].as_str().context("only hostPath volumes")?;
        let mut opts = vec![if m["readOnly"] == true { "ro" } else { "rw" }];
        match m["mountPropagation"].as_str() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            _ => {}
        }
        flag(
            &mut args,
            "-v",
            format!("{host}:{}:{}", m["mountPath"].as_str().unwrap(), opts.join(",")),
        );
    }
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Some(v), _) => v.to_string(),
            (None, Some("spec.nodeName")) => NODE.to_string(),
            other => bail!("env {name}: {other:?} not handled by this test"),
        };
        flag(&mut args, "-e", format!("{name}={value}"));
        env.insert(name, value);
    }
    let ports = c["ports"].as_array().context("ports")?;
    let metrics = ports.iter().find(|p| p["name"] == "metrics").context("a `metrics` port")?;
    let metrics_port = metrics["containerPort"].as_u64().context("containerPort")? as u16;
    flag(&mut args, "-p", format!("127.0.0.1:{host_port}:{metrics_port}"));
    let limits = &c["resources"]["limits"];
    let cpu_limit = cpu_cores(limits["cpu"].as_str().context("cpu limit")?);
    let memory_limit = bytes(limits["memory"].as_str().context("memory limit")?);
    flag(&mut args, "--cpus", cpu_limit.to_string());
    flag(&mut args, "--memory", memory_limit.to_string());
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let mut probes = Vec::new();
    for p in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &c[p]["httpGet"];
        ensure!(get["port"] == "metrics" || get["port"] == metrics_port, "{p} on the metrics port");
        probes.push((p.to_string(), get["path"].as_str().context("probe path")?.to_string()));
    }
    args.push(IMAGE.into());
    // Kubernetes expands $(VAR) in args from the container's env.
    for a in c["args"].as_array().context("args")? {
        let mut a = a.as_str().unwrap().to_string();
        for (k, v) in &env {
            a = a.replace(&format!("$({k})"), v);
        }
        args.push(a);
    }
    Ok(Shape { args, metrics_port, probes, grace, cpu_limit, memory_limit })
}

/// GET over plain HTTP/1.1: (status code, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).context("status line")?.parse()?;
    Ok((code, body.to_string()))
}

/// Ids and names of the BPF programs loaded now.
fn bpf_programs() -> BTreeMap<u64, String> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str().unwrap_or("").to_string())))
        .collect()
}

/// A file of the v1 memory controller or the v2 hierarchy for `cgroup`.
fn cgroup_file(cgroup: &str, v1: &str, v2: &str) -> Option<u64> {
    let rel = cgroup.trim_start_matches('/');
    let read = |p: PathBuf| std::fs::read_to_string(p).ok()?.trim().parse().ok();
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        read(root.join(rel).join(v2))
    } else {
        read(root.join("memory").join(rel).join(v1))
    }
}

/// CPU time of a cgroup, in ns (v1 cpuacct, or v2 cpu.stat usage_usec).
fn cgroup_cpu_ns(cgroup: &str) -> Option<u64> {
    let rel = cgroup.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let stat = std::fs::read_to_string(root.join(rel).join("cpu.stat")).ok()?;
        let usec: u64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.parse().ok()?;
        Some(usec * 1000)
    } else {
        std::fs::read_to_string(root.join("cpuacct").join(rel).join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// The v2 cgroup path of a process (the `0::` line).
fn cgroup_of(pid: u64) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text.lines().find_map(|l| l.strip_prefix("0::")).context("no v2 line")?.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The agent container's stdout, a record per line.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(
    lines: &Receiver<String>,
    records: &mut Vec<Value>,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no such record in {timeout:?}"))?;
        let r = parse_record(&line)?;
        records.push(r.clone());
        if pred(&r) {
            return Ok(r);
        }
    }
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it() {
    require_bpf!();
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(workspace().join("scripts/image.sh"))
        .arg(IMAGE)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/image.sh");
    assert!(out.status.success(), "building the image failed");
    eprintln!("image built in {:.1} s", t0.elapsed().as_secs_f64());
    let pod = daemonset_pod().unwrap();
    let host_port = free_port();
    let shape = shape(&pod, host_port).unwrap();
    let tag = std::process::id();

    // The workload's container: the agent's image (its C libraries run the
    // workload too) with the workload binary mounted, a memory limit, and
    // no stdin, so the workload starts at once: it touches HOLD_MIB MiB and
    // holds them, waking every 100 ms.
    let wname = format!("probe-smoke-workload-{tag}");
    let wbin = workload_bin();
    let id = podman(&[
        "run",
        "--detach",
        "--name",
        &wname,
        RLIMITS[0],
        RLIMITS[1],
        RLIMITS[2],
        RLIMITS[3],
        "--memory",
        &LIMIT_BYTES.to_string(),
        "-v",
        &format!("{}:/probe-workload:ro", wbin.display()),
        "--entrypoint",
        "/probe-workload",
        IMAGE,
        "alloc",
        "--name",
        "pw-smoke",
        "--mib",
        &HOLD_MIB.to_string(),
        "--hold-ms",
        "120000",
    ])
    .unwrap();
    let _workload = Container(wname.clone());
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "podman's id: {id}");
    let wpid: u64 =
        podman(&["inspect", "--format", "{{.State.Pid}}", &wname]).unwrap().parse().unwrap();
    let inspected_limit: u64 = podman(&["inspect", "--format", "{{.HostConfig.Memory}}", &wname])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(inspected_limit, LIMIT_BYTES);
    let wcgroup = cgroup_of(wpid).unwrap();
    assert_eq!(
        wcgroup,
        format!("/libpod_parent/libpod-{id}"),
        "podman's cgroup (cgroupfs manager)"
    );
    assert_eq!(cgroup_file(&wcgroup, "memory.limit_in_bytes", "memory.max"), Some(LIMIT_BYTES));
    // Until the workload holds its memory.
    let until = Instant::now() + Duration::from_secs(20);
    while cgroup_file(&wcgroup, "memory.usage_in_bytes", "memory.current").unwrap_or(0)
        < HOLD_MIB << 20
    {
        assert!(Instant::now() < until, "the workload never held {HOLD_MIB} MiB");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The agent's container, as the DaemonSet runs it.
    let before = bpf_programs();
    let aname = format!("probe-smoke-agent-{tag}");
    eprintln!("podman run {}", shape.args.join(" "));
    let started = Instant::now();
    let mut agent = Command::new("podman")
        .args(PODMAN)
        .args(["run", "--name", &aname])
        .args(RLIMITS)
        .args(&shape.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent_container = Container(aname.clone());
    let lines = lines_of(&mut agent);
    let mut records = Vec::new();
    let status = wait_for(&lines, &mut records, Duration::from_secs(60), |r| r["type"] == "status")
        .expect("a status record");
    let attach_s = started.elapsed().as_secs_f64();
    let aid = podman(&["inspect", "--format", "{{.Id}}", &aname]).unwrap();
    let apid: u64 =
        podman(&["inspect", "--format", "{{.State.Pid}}", &aname]).unwrap().parse().unwrap();
    let acgroup = cgroup_of(apid).unwrap();
    let cpu_at_attach = cgroup_cpu_ns(&acgroup).unwrap();
    let attached_at = Instant::now();
    for kpi in ["syscalls", "cpu", "tcp"] {
        assert_eq!(status["kpis"][kpi]["available"], true, "{kpi}: {status}");
    }
    let loaded: BTreeMap<u64, String> =
        bpf_programs().into_iter().filter(|(id, _)| !before.contains_key(id)).collect();
    for name in ["sys_enter", "sys_exit", "sched_switch"] {
        assert!(loaded.values().any(|n| n == name), "{name} not loaded: {loaded:?}");
    }

    // The workload's container, attributed to podman's id, with its memory
    // against its limit.
    let container = wait_for(&lines, &mut records, Duration::from_secs(40), |r| {
        r["type"] == "container" && r["container_id"] == id.as_str()
    })
    .unwrap_or_else(|e| panic!("no container record for {id}: {e}"));
    let truth_used = cgroup_file(&wcgroup, "memory.usage_in_bytes", "memory.current").unwrap();
    eprintln!("container record: {container}");
    assert_eq!(container["runtime"], "podman");
    assert_eq!(container["cgroup"], wcgroup.as_str());
    assert!(container["pod_uid"].is_null());
    let mem = &container["memory"];
    assert_eq!(mem["limit_bytes"], LIMIT_BYTES, "the limit podman set");
    let used = mem["used_bytes"].as_u64().unwrap();
    assert!(used >= HOLD_MIB << 20, "used {used} < the {HOLD_MIB} MiB the workload holds");
    assert!(
        used.abs_diff(truth_used) < 2 << 20,
        "used {used} vs the cgroup's {truth_used} read just after"
    );
    let pct = mem["utilization_pct"].as_f64().unwrap();
    assert!((pct - used as f64 / LIMIT_BYTES as f64 * 100.0).abs() < 0.01, "{pct}");

    // The host record of the same interval: the node's name, every CPU, the
    // host's memory.
    let host =
        wait_for(&lines, &mut records, Duration::from_secs(30), |r| r["type"] == "host").unwrap();
    assert_eq!(host["host"], NODE, "--host $(NODE_NAME)");
    let cpus = probe_tests::online_cpus();
    assert_eq!(host["cpus"], cpus);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 =
        meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(host["memory"]["total_bytes"], total_kib * 1024);
    assert!(host["syscalls"]["count"].as_u64().unwrap() > 0);
    assert!(host["cpu"]["cores"].as_f64().unwrap() > 0.0);
    // The node's disks (`--host-root /host`), not the container's: its root
    // is the node's `/`, with the node's size.
    let disks = host["disk"].as_array().unwrap();
    let root = disks.iter().find(|d| d["mount"] == "/").expect("the node's / among the disks");
    let (f, blocks, _, _) = probe_tests::statvfs(Path::new("/")).unwrap();
    assert_eq!(root["size_bytes"], f * blocks, "{disks:?}");
    assert!(disks.iter().all(|d| !d["mount"].as_str().unwrap().starts_with("/host")), "{disks:?}");

    // The metrics port, as Prometheus scrapes it: the container's limit.
    let addr = format!("127.0.0.1:{host_port}");
    let until = Instant::now() + Duration::from_secs(20);
    let quoted = format!("\"{id}\"");
    let limit_line = loop {
        let (code, text) = http_get(&addr, "/metrics").unwrap();
        assert_eq!(code, 200, "/metrics on port {}", shape.metrics_port);
        if let Some(l) = text.lines().find(|l| {
            l.starts_with("probe_memory_limit_bytes{")
                && l.contains("scope=\"container\"")
                && l.contains(&quoted)
        }) {
            break l.to_string();
        }
        assert!(Instant::now() < until, "no probe_memory_limit_bytes for {id} in:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(limit_line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(), LIMIT_BYTES);
    // The probes the kubelet would call.
    assert!(!shape.probes.is_empty(), "the DaemonSet has liveness and readiness probes");
    for (probe, path) in &shape.probes {
        let (code, _) = http_get(&addr, path).unwrap();
        assert_eq!(code, 200, "{probe} {path}");
    }

    // Measure a whole interval more, then SIGTERM with the grace period.
    let _ = wait_for(&lines, &mut records, Duration::from_secs(30), |r| r["type"] == "agent");
    let _ = wait_for(&lines, &mut records, Duration::from_secs(30), |r| r["type"] == "agent");
    let peak = cgroup_file(&acgroup, "memory.max_usage_in_bytes", "memory.peak");
    let now_mem = cgroup_file(&acgroup, "memory.usage_in_bytes", "memory.current").unwrap();
    let cpu_s = (cgroup_cpu_ns(&acgroup).unwrap() - cpu_at_attach) as f64 / 1e9;
    let wall_s = attached_at.elapsed().as_secs_f64();
    let stopping = Instant::now();
    podman(&["stop", "--time", &shape.grace.to_string(), &aname]).unwrap();
    let exit = agent.wait().unwrap();
    let stop_s = stopping.elapsed().as_secs_f64();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        records.push(parse_record(&line).unwrap());
    }
    assert!(exit.success(), "SIGTERM is a clean exit: {exit}");
    assert!(stop_s < shape.grace as f64, "stopped in {stop_s:.1} s, past the grace period");
    std::thread::sleep(Duration::from_millis(300));
    let left: HashSet<u64> =
        bpf_programs().into_keys().filter(|id| loaded.contains_key(id)).collect();
    assert!(left.is_empty(), "programs left in the kernel after SIGTERM: {left:?}");
    validate(&records).unwrap();

    // The agent itself is in its own container, and says so.
    let own = records
        .iter()
        .find(|r| r["type"] == "process" && r["pid"] == apid)
        .map(|r| r["container_id"].clone());
    if let Some(own) = own {
        assert_eq!(own, aid.as_str(), "the agent's own process is in its container");
    }
    // Its own memory cgroup is the container's, with the manifest's limit
    // (what its agent-memory alert watches).
    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    let own_cg = &agents[0]["cgroup_memory"];
    assert_eq!(own_cg["cgroup"], acgroup.as_str(), "{own_cg}");
    assert_eq!(own_cg["limit_bytes"], shape.memory_limit, "{own_cg}");
    // What it used, for the manifest's requests and limits.
    let rss_max = agents.iter().filter_map(|r| r["rss_bytes"].as_u64()).max().unwrap();
    let cpu_pct: Vec<f64> = agents.iter().filter_map(|r| r["cpu_pct"].as_f64()).collect();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let figures = format!(
        "agent in its container: attached in {attach_s:.1} s; RSS up to {:.1} MiB; its cgroup \
         (BPF maps included) {:.1} MiB now, peak {:.1} MiB, limit {:.0} MiB; CPU {:.1} millicores \
         over {wall_s:.0} s after attaching (agent records: {cpu_pct:?} % of a core), limit {:.0} \
         millicores; stopped in {stop_s:.1} s",
        mib(rss_max),
        mib(now_mem),
        mib(peak.unwrap_or(0)),
        mib(shape.memory_limit),
        cpu_s / wall_s * 1000.0,
        shape.cpu_limit * 1000.0,
    );
    eprintln!("{figures}");
    // scripts/test.sh prints it after the tests: what the manifest's
    // requests and limits are checked against, each run.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    std::fs::write(target.join("image-smoke.txt"), format!("{figures}\n")).unwrap();
    assert!(now_mem < shape.memory_limit / 2, "the agent uses more than half its memory limit");
}
