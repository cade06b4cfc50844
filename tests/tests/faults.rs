//! Faults: sinks that hang, reset or fill their disk, and a memory limit
//! close to the agent's use. The agent keeps measuring (a reference
//! workload's calls stay exact), says what is wrong once per interval, and
//! recovers when the fault goes away.

use std::{
    io::Read as _,
    net::TcpListener,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use probe_tests::{Agent, Workload, require_bpf, syscall_total, tempdir};
use serde_json::Value;

/// The per-interval states the agent reported for sink `name`.
fn sink_states<'a>(records: &'a [Value], name: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "agent")
        .flat_map(|r| r["output"]["sinks"].as_array().unwrap().iter())
        .filter(|s| s["name"] == name)
        .collect()
}

fn sum(states: &[&Value], f: impl Fn(&Value) -> u64) -> u64 {
    states.iter().map(|s| f(s)).sum()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// A reference workload: 2000 openat (500 failing) and 1500 getppid, on the
/// go signal. Returns the workload and its pid as a string.
fn reference() -> (Workload, String) {
    let w = Workload::start(&[
        "calls",
        "--name",
        "pw-fault",
        "--ok",
        "1500",
        "--fail",
        "500",
        "--pause-ms",
        "1500",
    ])
    .unwrap();
    let pid = w.pid.to_string();
    (w, pid)
}

fn check_reference(records: &[Value], w: &mut Workload) {
    let truth = w.finish().unwrap();
    assert_eq!(syscall_total(records, w.pid, "openat", "count"), truth["openat"].as_u64().unwrap());
    assert_eq!(
        syscall_total(records, w.pid, "openat", "errors"),
        truth["openat_errors"].as_u64().unwrap()
    );
    assert_eq!(
        syscall_total(records, w.pid, "getppid", "count"),
        truth["getppid"].as_u64().unwrap()
    );
}

/// A TCP sink whose peer accepts and never reads: the agent keeps writing
/// every interval to stdout, counts the reference workload exactly, keeps
/// the sink's queue within its bound (dropping the oldest, counted), says
/// the sink is failing, and still stops at once on SIGINT.
#[test]
fn a_sink_that_never_reads() {
    require_bpf!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // The smallest receive buffer: the peer's kernel takes little before
    // the agent's socket (128 KiB) and queue (64 KiB) fill.
    let small: libc::c_int = 4096;
    // SAFETY: SO_RCVBUF reads one c_int from `small`, whose size is given.
    unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            // Small buffers: the sink's socket fills sooner.
            let _ = c.set_nonblocking(false);
            h.lock().unwrap().push(c);
        }
    });
    let spec = format!("tcp://127.0.0.1:{port}?queue_bytes=64K");
    let (mut w, pid) = reference();
    // Every process (not just the reference) and their buckets: enough
    // bytes each interval to fill the socket and the queue within seconds.
    // Every record, not the default stream's selection: the reference is
    // counted exactly from its system-call records.
    let _ = pid;
    let agent = Agent::start(&[
        "--interval",
        "250ms",
        "--histograms",
        "--top",
        "100000",
        "--min-cpu-pct",
        "0",
        "--syscalls",
        "all",
        "--output",
        "stdout",
        "--output",
        &spec,
    ])
    .unwrap();
    w.go().unwrap();
    std::thread::sleep(Duration::from_secs(10));
    // How long the agent takes to exit after SIGINT (until it is a zombie,
    // before the harness reaps it and checks its records).
    let t0 = Instant::now();
    probe_tests::kill(agent.pid(), libc::SIGINT);
    let exited = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
    };
    while !exited(agent.pid()) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped_in = t0.elapsed();
    let records = agent.stop().unwrap();
    check_reference(&records, &mut w);
    let agents = records.iter().filter(|r| r["type"] == "agent").count();
    assert!(agents >= 20, "an agent record every interval: {agents}");
    let states = sink_states(&records, &spec);
    let dropped = sum(&states, |s| s["dropped_records"]["queue_full"].as_u64().unwrap());
    assert!(dropped > 0, "the queue overflowed and dropped the oldest");
    assert!(
        states.iter().all(|s| s["queued_bytes"].as_u64().unwrap() <= 64 << 10),
        "queue within its bound"
    );
    let last = states.last().unwrap();
    assert_eq!(last["failing"], true, "{last}");
    assert!(last["last_error"].as_str().unwrap().contains("not reading"), "{last}");
    let rss = records
        .iter()
        .filter(|r| r["type"] == "agent")
        .map(|r| r["rss_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(rss < 64 << 20, "RSS {rss}");
    assert!(
        stopped_in < Duration::from_secs(4),
        "a stuck sink does not hold up the exit: {stopped_in:?}"
    );
    drop(held);
}

/// Sets SO_LINGER to zero, so that closing sends a reset.
fn reset(c: std::net::TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: SO_LINGER reads one linger struct, whose size is given.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(c);
}

/// A TCP sink that accepts and then resets every connection for a while:
/// the agent retries with back-off, counts the errors and reconnections,
/// keeps measuring, and once the peer behaves delivers in order again.
#[test]
fn a_sink_that_resets_then_recovers() {
    require_bpf!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let healthy = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (hl, g) = (healthy.clone(), got.clone());
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            if !hl.load(Ordering::SeqCst) {
                reset(c);
                continue;
            }
            let g = g.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 65536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    g.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let spec = format!("tcp://127.0.0.1:{port}");
    let (mut w, pid) = reference();
    let agent = Agent::start(&[
        "--interval",
        "250ms",
        "--output",
        "stdout",
        "--output",
        &spec,
        "--pid",
        &pid,
    ])
    .unwrap();
    w.go().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    healthy.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(12));
    let records = agent.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    check_reference(&records, &mut w);
    let states = sink_states(&records, &spec);
    assert!(sum(&states, |s| s["errors"].as_u64().unwrap()) > 0, "resets are counted as errors");
    assert!(sum(&states, |s| s["reconnects"].as_u64().unwrap()) > 0, "and it reconnected");
    assert!(states.iter().any(|s| s["failing"] == true));
    assert_eq!(states.last().unwrap()["failing"], false, "recovered: {}", states.last().unwrap());
    let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
    let received: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("whole records")).collect();
    let got_seq = seqs(&received);
    assert!(got_seq.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let want = seqs(&records);
    let last_agent =
        records.iter().rev().find(|r| r["type"] == "agent").unwrap()["seq"].as_u64().unwrap();
    let missing =
        want.iter().filter(|s| **s < last_agent && got_seq.binary_search(s).is_err()).count()
            as u64;
    let reported = sum(&states, |s| {
        s["dropped_records"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
    });
    assert!(missing <= reported, "missing {missing}, reported dropped {reported}");
    // Queued while it was resetting, then delivered: nearly all arrived.
    assert!(
        got_seq.len() as u64 + reported >= last_agent,
        "{} received, {reported} dropped, {last_agent} written",
        got_seq.len()
    );
}

/// Mounts a tmpfs of `size` at `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk under the file sink fills up: writes fail (a partial write is
/// cut back to the last whole record), the sink says so each interval and
/// keeps its records queued, the agent keeps measuring; freed space, the
/// queued records are written, whole and in order, none lost.
#[test]
fn a_full_disk_under_the_file_sink() {
    require_bpf!();
    let dir = tempdir("diskfull");
    let _fs = Tmpfs::mount(&dir, "2m");
    let file = dir.join("probe.jsonl");
    let spec = format!("file:{}", file.display());
    let (mut w, pid) = reference();
    let mut agent = Agent::start(&[
        "--interval",
        "250ms",
        "--output",
        "stdout",
        "--output",
        &spec,
        "--pid",
        &pid,
    ])
    .unwrap();
    w.go().unwrap();
    // Fill the disk.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let failing = agent
        .wait_for(
            |r| {
                r["type"] == "agent"
                    && r["output"]["sinks"].as_array().unwrap().iter().any(|s| s["failing"] == true)
            },
            Duration::from_secs(10),
        )
        .expect("the file sink reports the full disk");
    let s = failing["output"]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == spec.as_str())
        .unwrap();
    assert!(s["last_error"].as_str().unwrap().contains("No space left"), "{s}");
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let records = agent.stop().unwrap();
    check_reference(&records, &mut w);
    let states = sink_states(&records, &spec);
    let failing_intervals = states.iter().filter(|s| s["failing"] == true).count();
    assert!(failing_intervals >= 4, "said once per interval while full: {failing_intervals}");
    assert_eq!(states.last().unwrap()["failing"], false, "recovered");
    let text = std::fs::read_to_string(&file).unwrap();
    let written: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("no torn record")).collect();
    assert_eq!(seqs(&written), seqs(&records), "every record, in order, once");
}

/// The agent's memory limit set just above its use: it reports its own
/// cgroup's memory and an alert, keeps measuring exactly, and resolves the
/// alert once the limit is raised.
#[test]
fn a_memory_limit_close_to_the_agents_use() {
    require_bpf!();
    // cgroup v1's memory controller where mounted (this host), else v2.
    let (cg, max_file, used_file) =
        if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            (
                PathBuf::from(format!("/sys/fs/cgroup/memory/probe-test-{}", std::process::id())),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            (
                PathBuf::from(format!("/sys/fs/cgroup/probe-test-{}", std::process::id())),
                "memory.max",
                "memory.current",
            )
        };
    std::fs::create_dir_all(&cg).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _cleanup = Cleanup(cg.clone());
    let (mut w, pid) = reference();
    let mut agent =
        Agent::start_in(&["--interval", "250ms", "--pid", &pid], Some(&cg.join("cgroup.procs")))
            .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let used: u64 = std::fs::read_to_string(cg.join(used_file)).unwrap().trim().parse().unwrap();
    // Within 5% of its use: the kernel reclaims what it can (file pages of
    // the binary) rather than kill it, and the agent says it is tight.
    let limit = used + used / 20;
    std::fs::write(cg.join(max_file), limit.to_string()).unwrap();
    // The kernel rounds the limit to pages.
    let limit_set: u64 =
        std::fs::read_to_string(cg.join(max_file)).unwrap().trim().parse().unwrap();
    let alert = agent
        .wait_for(
            |r| r["type"] == "alert" && r["rule"] == "agent-memory" && r["level"] == "investigate",
            Duration::from_secs(10),
        )
        .expect("the agent says its memory is close to its limit");
    eprintln!("{} (used {used}, limit {limit})", alert["message"]);
    w.go().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(cg.join(max_file), (1u64 << 30).to_string()).unwrap();
    agent
        .wait_for(
            |r| r["type"] == "alert" && r["rule"] == "agent-memory" && r["level"] == "ok",
            Duration::from_secs(10),
        )
        .expect("the alert resolves once the limit is raised");
    let records = agent.stop().unwrap();
    check_reference(&records, &mut w);
    let tight = records
        .iter()
        .find(|r| r["type"] == "agent" && r["cgroup_memory"]["limit_bytes"] == limit_set)
        .expect("the agent record shows its cgroup's limit");
    assert!(
        tight["cgroup_memory"]["utilization_pct"].as_f64().unwrap() >= 90.0,
        "{}",
        tight["cgroup_memory"]
    );
}
