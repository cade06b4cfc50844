//! The threat model, tested: the agent runs as root and reads input from
//! other users (connections, files in shared directories, process and
//! cgroup names). Each test reproduces an attack as an unprivileged local
//! user the test creates (and removes), and shows it fails while the agent
//! keeps measuring and says what it refused.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use probe_tests::{
    Agent, TestUser, Workload, agent_bin, of, require_bpf, tempdir, validate_lines, workload_bin,
};
use serde_json::Value;

/// A directory like /tmp: world-writable and sticky.
fn shared_dir(name: &str) -> std::path::PathBuf {
    let d = tempdir(name);
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Runs the agent to completion (bounded by `timeout`): exit code, stderr.
fn run_agent(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "did not end in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(path: &Path, key: &str) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or("").trim().to_string()
}

/// Every thread of the agent, not only the main one, holds no capability
/// and has no_new_privs once the programs are attached, started as plain
/// root with the metrics endpoint, a file sink and a TCP sink (the threads
/// that handle other users' input).
#[test]
fn every_thread_drops_its_capabilities() {
    require_bpf!();
    let dir = tempdir("sec-threads");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = format!("tcp://{}", listener.local_addr().unwrap());
    let _peer = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let file = format!("file:{}", dir.join("p.jsonl").display());
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--metrics-addr",
        &metrics_port,
        "--output",
        "stdout",
        "--output",
        &file,
        "--output",
        &tcp,
    ])
    .unwrap();
    let status = agent.records[0].clone();
    assert_eq!(status["capabilities"], serde_json::json!([]), "{status}");
    assert_eq!(status["no_new_privs"], true);
    agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    let tasks: Vec<_> =
        fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap().flatten().collect();
    let names: Vec<String> =
        tasks.iter().map(|t| status_field(&t.path().join("status"), "Name:")).collect();
    for want in ["sink 0", "sink 1", "sink 2", "metrics"] {
        assert!(names.iter().any(|n| n == want), "no thread {want}: {names:?}");
    }
    assert!(tasks.len() >= 5, "main, three sinks and the metrics server: {names:?}");
    for t in &tasks {
        let s = t.path().join("status");
        assert_eq!(status_field(&s, "CapEff:"), "0000000000000000", "{}", s.display());
        assert_eq!(status_field(&s, "CapPrm:"), "0000000000000000", "{}", s.display());
        assert_eq!(status_field(&s, "NoNewPrivs:"), "1", "{}", s.display());
    }
    let records = agent.stop().unwrap();
    let a = records.iter().rfind(|r| r["type"] == "agent").unwrap();
    assert_eq!(a["capabilities"], serde_json::json!([]));
    assert_eq!(a["no_new_privs"], true);
    // It priced its programs at start-up and estimates their cost from runs.
    assert!(status["program_cost_ns"]["sys_enter"].as_f64().unwrap() > 0.0, "{status}");
    let sys_exit = a["programs"].as_array().unwrap().iter().find(|p| p["name"] == "sys_exit");
    assert!(sys_exit.unwrap()["runs"].as_u64().unwrap() > 0);
    assert!(a["programs_estimated_cpu_pct"].as_f64().unwrap() > 0.0);
    let _ = fs::remove_dir_all(&dir);
}

/// The file sink cannot be redirected: a symbolic link planted by a user
/// in a shared directory, a file the user created in advance (to read the
/// records or forge lines), or a FIFO (to block the agent) are refused at
/// start with exit status 2 and the reason; the link's target is untouched.
#[test]
fn the_file_sink_cannot_be_redirected() {
    require_bpf!();
    let user = TestUser::create("sec-file").unwrap();
    let dir = shared_dir("sec-file");
    let secret = tempdir("sec-secret").join("root-only");
    fs::write(&secret, "root's data\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let d = dir.display();
    user.sh(&format!(
        "ln -s '{}' '{d}/link.jsonl' && touch '{d}/mine.jsonl' && chmod 666 '{d}/mine.jsonl' && mkfifo '{d}/fifo.jsonl'",
        secret.display()
    ))
    .unwrap();
    for (name, why) in [
        ("link.jsonl", "symbolic link"),
        ("mine.jsonl", &format!("owned by uid {}", user.uid)),
        ("fifo.jsonl", "not a regular file"),
    ] {
        let out = format!("file:{d}/{name}");
        let (code, err) =
            run_agent(&["run", "--duration", "5s", "--output", &out], Duration::from_secs(30));
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root's data\n");
    assert_eq!(fs::metadata(dir.join("mine.jsonl")).unwrap().len(), 0, "nothing written");
    // A directory writable by others without the sticky bit is refused too.
    let open = tempdir("sec-open");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let out = format!("file:{}/p.jsonl", open.display());
    let (code, err) =
        run_agent(&["run", "--duration", "5s", "--output", &out], Duration::from_secs(30));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not sticky"), "{err}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&open);
}

/// A directory a user planted where rotation would move the file
/// (`PATH.1`) neither stops the sink nor loses records: rotation skips
/// the name, and the files the agent writes are 0600 and its own.
#[test]
fn planted_names_do_not_stop_rotation() {
    require_bpf!();
    let user = TestUser::create("sec-rot").unwrap();
    let dir = shared_dir("sec-rot");
    let path = dir.join("p.jsonl");
    user.sh(&format!("mkdir '{0}.1' && ln -s /etc/passwd '{0}.2'", path.display())).unwrap();
    let out = format!("file:{}?rotate_bytes=8K&keep=3", path.display());
    let agent =
        Agent::start(&["--interval", "250ms", "--output", "stdout", "--output", &out]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let records = agent.stop().unwrap();
    assert!(fs::metadata(format!("{}.1", path.display())).unwrap().is_dir());
    assert!(
        fs::symlink_metadata(format!("{}.2", path.display())).unwrap().file_type().is_symlink()
    );
    let mut files = vec![path.clone()];
    for n in 3..=5 {
        files.push(format!("{}.{n}", path.display()).into());
    }
    let mut lines = 0;
    for f in &files {
        let m = fs::symlink_metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(m.file_type().is_file());
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{}", f.display());
        let text = fs::read_to_string(f).unwrap();
        validate_lines(&text).unwrap();
        lines += text.lines().count();
    }
    assert!(lines > 20, "rotated files hold the records: {lines}");
    // The sink never failed nor dropped a record.
    for a in records.iter().filter(|r| r["type"] == "agent") {
        let s = a["output"]["sinks"].as_array().unwrap().iter().find(|s| s["kind"] == "file");
        let s = s.unwrap();
        assert_eq!(s["failing"], false, "{s}");
        assert_eq!(s["errors"], 0, "{s}");
        assert_eq!(s["dropped_records"]["queue_full"], 0, "{s}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A Unix socket path a user bound first gets nothing: the agent checks
/// its peer's user id, says why it does not send, and keeps its records
/// queued; a listener of the expected user gets them.
#[test]
fn a_users_listener_on_the_unix_socket_gets_nothing() {
    require_bpf!();
    let user = TestUser::create("sec-unix").unwrap();
    let dir = shared_dir("sec-unix");
    let sock = dir.join("x.sock");
    let got = dir.join("got");
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind('{0}')\nimport os\nos.chmod('{0}',0o777)\ns.listen()\n\
         out=open('{1}','wb')\nwhile True:\n  c,_=s.accept()\n  while True:\n    b=c.recv(65536)\n    \
         if not b: break\n    out.write(b); out.flush()\n",
        sock.display(),
        got.display()
    );
    let mut listener = user.command("/usr/bin/python3").args(["-c", &script]).spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = format!("unix:{}", sock.display());
    let agent =
        Agent::start(&["--interval", "500ms", "--output", "stdout", "--output", &out]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let records = agent.stop().unwrap();
    let sent = fs::read(&got).unwrap_or_default();
    assert!(sent.is_empty(), "the user's listener received {} bytes", sent.len());
    let states: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "agent")
        .filter_map(|a| {
            a["output"]["sinks"].as_array().unwrap().iter().find(|s| s["kind"] == "unix")
        })
        .collect();
    let last = states.last().unwrap();
    assert_eq!(last["failing"], true, "{last}");
    let why = last["last_error"].as_str().unwrap();
    assert!(why.contains(&format!("runs as uid {}", user.uid)), "{why}");
    assert!(states.iter().map(|s| s["sent_records"].as_u64().unwrap()).sum::<u64>() == 0);
    // Trusting that user by configuration delivers.
    let out = format!("unix:{}?peer_uid={}", sock.display(), user.uid);
    let agent =
        Agent::start(&["--interval", "500ms", "--output", "stdout", "--output", &out]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    agent.stop().unwrap();
    let sent = fs::read_to_string(&got).unwrap_or_default();
    assert!(sent.lines().count() > 3, "{sent}");
    validate_lines(&sent).unwrap();
    let _ = listener.kill();
    let _ = listener.wait();
    let _ = fs::remove_dir_all(&dir);
}

/// A configuration that is a device or a FIFO is refused before anything
/// is read from it; a SIGHUP reload that finds a FIFO keeps the running
/// configuration, says why, and never stops the measuring or SIGTERM.
#[test]
fn configuration_reads_are_bounded_and_never_block() {
    require_bpf!();
    let dir = tempdir("sec-config");
    let fifo = dir.join("fifo.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for bad in ["/dev/zero", fifo.to_str().unwrap(), dir.to_str().unwrap()] {
        let t0 = Instant::now();
        let (code, err) = run_agent(&["check-config", bad], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{bad}");
        let (code, err) = run_agent(&["run", "--config", bad], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{bad}: {err}");
    }
    let config = dir.join("c.toml");
    fs::write(&config, probe_tests::default_config()).unwrap();
    let mut agent =
        Agent::start(&["--interval", "500ms", "--config", config.to_str().unwrap()]).unwrap();
    agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    fs::remove_file(&config).unwrap();
    assert!(Command::new("mkfifo").arg(&config).status().unwrap().success());
    probe_tests::kill(agent.pid(), libc::SIGHUP);
    let refused = agent
        .wait_for(
            |r| r["type"] == "agent" && r["config"]["last_error"].is_string(),
            Duration::from_secs(10),
        )
        .unwrap();
    let why = refused["config"]["last_error"].as_str().unwrap();
    assert!(why.contains("not a regular file"), "{why}");
    // Still measuring: more intervals come, and SIGINT ends it at once.
    agent.wait_for(|r| r["type"] == "host", Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    agent.stop().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let _ = fs::remove_dir_all(&dir);
}

/// Peak resident memory of a finished child, in KiB (wait4's rusage,
/// which reaps it: `Child::wait` is not needed).
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (i32, u64, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // The peak RSS of the command's own image (VmHWM), read while it runs:
    // wait4's ru_maxrss would also count the test process's memory, which
    // a vfork-like spawn shares until the exec.
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status.code().unwrap_or(-1), peak_kib, reader.join().unwrap())
}

/// The offline commands stream: a 30 MB recording and a 64 MiB line are
/// read in bounded memory (the line skipped and said), not held whole.
#[test]
fn offline_commands_read_in_bounded_memory() {
    let dir = tempdir("sec-offline");
    let big = dir.join("big.jsonl");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&big).unwrap());
        let mut written = 0usize;
        let mut i = 0u64;
        while written < 30 << 20 {
            let (m, s) = (i / 60 % 60, i % 60);
            let line = format!(
                r#"{{"v":1,"type":"endpoint","ts":"2026-11-29T1{}:{m:02}:{s:02}.000Z","host":"h","interval_s":1.0,"seq":{i},"pid":{},"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,"requests":{{"count":10,"rate_per_s":10.0,"errors":0,"error_rate_pct":0.0,"latency_ms":{{"avg":12.5,"p50":12.0,"p95":20.0,"p99":30.0,"max":31.0}}}}}}"#,
                i / 3600 % 10,
                1000 + i % 50,
            );
            writeln!(f, "{line}").unwrap();
            written += line.len() + 1;
            i += 1;
        }
    }
    let (code, kib, err) =
        run_measured(Command::new(agent_bin()).args(["report", big.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert!(kib < 48 << 10, "report of 30 MB used {kib} KiB");
    let long = dir.join("long.jsonl");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&long).unwrap());
        f.write_all(b"{\"ts\":\"").unwrap();
        for _ in 0..(64 << 10) {
            f.write_all(&[b'x'; 1024]).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
    }
    for cmd in [&["report"][..], &["replay"], &["merge"]] {
        let (code, kib, err) =
            run_measured(Command::new(agent_bin()).args(cmd).arg(long.to_str().unwrap()));
        assert!(kib < 48 << 10, "{cmd:?} of a 64 MiB line used {kib} KiB");
        assert!(err.contains("skipped 1 line(s) longer than"), "{cmd:?}: {err}");
        // merge finds nothing to merge: a usage error; the others succeed.
        assert_eq!(code, if cmd[0] == "merge" { 2 } else { 0 }, "{cmd:?}: {err}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A cgroup v2 subtree delegated to a user (as systemd does for user
/// sessions) where the user names a cgroup after a real container does
/// not make the user's processes that container's: container ids count
/// only where runtimes put them, and records are keyed by id and cgroup.
#[test]
fn a_lookalike_cgroup_is_not_the_container() {
    require_bpf!();
    const ID: &str = "5eca11ab1e0ddba11c0ffee00123456789abcdef0123456789abcdef01234567";
    let v2 = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup").to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup/unified").to_path_buf()
    };
    let user = TestUser::create("sec-cg").unwrap();
    // The real container (docker's cgroupfs layout), with a busy workload.
    let real = v2.join("docker").join(ID);
    fs::create_dir_all(&real).unwrap();
    let _cleanup = Cleanup(vec![real.clone(), v2.join("docker")]);
    let mut w = Workload::start(&["spin", "--name", "pw-real", "--ms", "3000"]).unwrap();
    fs::write(real.join("cgroup.procs"), w.pid.to_string()).unwrap();
    // The user's delegated subtree, and their lookalike inside it.
    let deleg = v2.join(format!("probe-deleg-{}", std::process::id()));
    fs::create_dir_all(&deleg).unwrap();
    let lookalike = deleg.join(format!("docker-{ID}.scope"));
    let _cleanup2 = Cleanup(vec![lookalike.clone(), deleg.clone()]);
    for f in ["", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
        let p = deleg.join(f);
        let _ = std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid));
    }
    // The workload, where the user may run it (the build directory may be
    // private to root: a fresh clone in mktemp's 0700 directory).
    let bin = tempdir("sec-cg-bin").join("probe-workload");
    fs::copy(workload_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        "read go; mkdir '{0}' && echo $$ > '{0}/cgroup.procs' && exec '{1}' spin --name pw-fake --ms 3000",
        lookalike.display(),
        bin.display()
    );
    let mut fake = user
        .command("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Moved into the delegated subtree by root, as a login would be.
    fs::write(deleg.join("cgroup.procs"), fake.id().to_string()).unwrap();
    let mut stdin = fake.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let mut ready = String::new();
    let mut fake_out = BufReader::new(fake.stdout.take().unwrap());
    fake_out.read_line(&mut ready).unwrap();
    let fake_pid: u32 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        fs::read_to_string(lookalike.join("cgroup.procs")).unwrap().contains(&fake_pid.to_string())
    );
    let agent = Agent::start(&["--interval", "1s"]).unwrap();
    w.go().unwrap();
    writeln!(stdin, "go").unwrap();
    w.finish().unwrap();
    let mut truth = String::new();
    fake_out.read_line(&mut truth).unwrap();
    assert!(fake.wait().unwrap().success(), "the user's workload ran: {truth}");
    std::thread::sleep(Duration::from_millis(1200));
    let records = agent.stop().unwrap();
    let fake_procs: Vec<&Value> = of(&records, "process", fake_pid).collect();
    assert!(!fake_procs.is_empty(), "the user's process is reported");
    assert!(fake_procs.iter().all(|p| p["container_id"].is_null()), "{fake_procs:?}");
    let containers: Vec<&Value> =
        records.iter().filter(|r| r["type"] == "container" && r["container_id"] == ID).collect();
    assert!(!containers.is_empty());
    for c in &containers {
        assert_eq!(c["cgroup"], format!("/docker/{ID}"), "{c}");
        // One spinning process, not two.
        assert!(c["cpu"]["cores"].as_f64().unwrap() < 1.3, "{c}");
    }
}

/// Removes cgroup directories (leaf first) when dropped.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A process with hundreds of sockets to different peers does not flood
/// the stream: at most 100 endpoint records per process per interval,
/// the cut counted in the agent record.
#[test]
fn endpoint_records_are_bounded() {
    require_bpf!();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for c in listener.incoming().take(300) {
            let Ok(mut c) = c else { break };
            let mut b = [0u8; 4];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(b"pong");
            }
        }
    });
    let me = std::process::id().to_string();
    let mut agent = Agent::start(&["--interval", "1s", "--pid", &me]).unwrap();
    for i in 0..300u32 {
        // 127.0.0.0/8 is all loopback: 300 peers, 300 client endpoints.
        let peer = std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        let mut c = std::net::TcpStream::connect((peer, port)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
    }
    server.join().unwrap();
    agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let records = agent.stop().unwrap();
    let mut written = 0;
    let mut cut = 0;
    let mut ts: Vec<&str> = records.iter().filter_map(|r| r["ts"].as_str()).collect();
    ts.dedup();
    for t in ts {
        let n = records.iter().filter(|r| r["type"] == "endpoint" && r["ts"] == t).count();
        assert!(n <= 100, "{n} endpoint records in one interval");
        written += n;
    }
    for a in records.iter().filter(|r| r["type"] == "agent") {
        cut += a["endpoints_cut"].as_u64().unwrap();
    }
    assert!(cut >= 150, "cut {cut}");
    assert!(written + cut as usize >= 301, "written {written}, cut {cut}");
    // The requests are all still in the process's total.
    let served: u64 = of(&records, "process", std::process::id())
        .map(|p| p["requests"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 300);
}
