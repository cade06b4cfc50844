//! Workloads with a known answer, for the integration tests and the
//! benchmark. Each one names itself (`--name`, via PR_SET_NAME), prints
//! `ready <pid>` and waits for a line on stdin before it starts, so the test
//! can attach the agent first; then it does exactly what it was told and
//! prints one JSON line of ground truth.
//!
//! System calls go through `libc::syscall` so that the C library adds none
//! of its own and the counts are exact.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        bail!("usage: probe-workload MODE [--name NAME] [options]; modes: sleep, calls, loop");
    };
    let opt = |name: &str| -> Option<&str> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
    };
    let num = |name: &str, default: u64| -> Result<u64> {
        opt(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v}")))
    };
    if let Some(name) = opt("--name") {
        set_name(&probe_tests::unescape(name));
    }
    let pid = std::process::id();
    if mode == "tcp-server" {
        let delay_file = opt("--delay-file").map(std::path::PathBuf::from);
        let http = args.iter().any(|a| a == "--http");
        return tcp_server(num("--delay-ms", 10)?, num("--response-bytes", 100)?, delay_file, http);
    }
    if !["loop", "pingpong", "storm"].contains(&mode.as_str()) {
        println!("ready {pid}");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    let truth = match mode.as_str() {
        // --short-ms A --long-ms B --count N --long-every K: N sleeps, every
        // K-th one long. Reports each call's duration percentiles as measured
        // around the system call itself.
        "sleep" => {
            let (short, long) = (num("--short-ms", 5)?, num("--long-ms", 50)?);
            let (count, every) = (num("--count", 100)?, num("--long-every", 10)?.max(1));
            let mut took = Vec::with_capacity(count as usize);
            for i in 0..count {
                let ms = if (i + 1) % every == 0 { long } else { short };
                let ts = libc::timespec {
                    tv_sec: (ms / 1000) as i64,
                    tv_nsec: (ms % 1000 * 1_000_000) as i64,
                };
                let t0 = Instant::now();
                // SAFETY: clock_nanosleep reads `ts`, which lives; no remainder.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_clock_nanosleep,
                        libc::CLOCK_MONOTONIC,
                        0,
                        &ts,
                        std::ptr::null_mut::<libc::timespec>(),
                    )
                };
                took.push(t0.elapsed().as_nanos() as u64);
                if rc != 0 {
                    bail!("clock_nanosleep failed: {rc}");
                }
            }
            took.sort_unstable();
            let p = |q: f64| nearest_rank(&took, q);
            let sum: u64 = took.iter().sum();
            serde_json::json!({"pid": pid, "count": count, "p50_ns": p(50.0), "p95_ns": p(95.0),
                "p99_ns": p(99.0), "max_ns": took.last(), "avg_ns": sum / count.max(1)})
        }
        // --ok N --fail M --threads T --pause-ms P: on each of T threads, N
        // openat of /dev/null (each closed), M openat of a missing path
        // (ENOENT) and N getppid, with an optional pause in the middle.
        "calls" => {
            let (ok, fail) = (num("--ok", 100)?, num("--fail", 10)?);
            let (threads, pause) = (num("--threads", 1)?, num("--pause-ms", 0)?);
            let work = move || {
                for i in 0..ok.max(fail) {
                    if i == ok.max(fail) / 2 && pause > 0 {
                        std::thread::sleep(std::time::Duration::from_millis(pause));
                    }
                    if i < ok {
                        // SAFETY: openat reads a static NUL-terminated path.
                        let fd = unsafe {
                            libc::syscall(
                                libc::SYS_openat,
                                libc::AT_FDCWD,
                                c"/dev/null".as_ptr(),
                                libc::O_RDONLY,
                            )
                        };
                        assert!(fd >= 0);
                        sys(libc::SYS_close, fd);
                        sys(libc::SYS_getppid, 0);
                    }
                    if i < fail {
                        // SAFETY: openat reads a static NUL-terminated path.
                        let rc = unsafe {
                            libc::syscall(
                                libc::SYS_openat,
                                libc::AT_FDCWD,
                                c"/nonexistent/probe-test".as_ptr(),
                                libc::O_RDONLY,
                            )
                        };
                        assert!(rc < 0);
                    }
                }
            };
            let handles: Vec<_> = (1..threads).map(|_| std::thread::spawn(work)).collect();
            work();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
            }
            // --eagain N: N reads of an empty non-blocking pipe (EAGAIN, as
            // an event loop's every read ends), and N / 4 of a closed
            // descriptor (EBADF), so one call fails with two errnos.
            let eagain = num("--eagain", 0)?;
            let mut fds = [0i32; 2];
            // SAFETY: pipe2 writes two descriptors into `fds`.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
            anyhow::ensure!(rc == 0, "pipe2 failed");
            let mut buf = [0u8; 8];
            for i in 0..eagain {
                let fd = if i % 4 == 3 { -1 } else { fds[0] };
                // SAFETY: reads at most 8 bytes into `buf`.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                assert!(n < 0);
            }
            let ebadf = eagain / 4;
            let t = threads;
            serde_json::json!({"pid": pid, "openat": (ok + fail) * t, "openat_errors": fail * t,
                "close": ok * t, "getppid": ok * t, "read": eagain,
                "read_eagain": eagain - ebadf, "read_ebadf": ebadf})
        }
        // --count N: N getppid calls as fast as possible (benchmark loop).
        // Prints ns per call. Starts at once.
        "loop" => {
            let count = num("--count", 1_000_000)?;
            let t0 = Instant::now();
            for _ in 0..count {
                sys(libc::SYS_getppid, 0);
            }
            let ns = t0.elapsed().as_nanos() as f64 / count as f64;
            serde_json::json!({"pid": pid, "count": count, "ns_per_call": ns})
        }
        // --ms M --threads T: T threads each burn the CPU for M ms of wall
        // time; reports the CPU time the process used from the go signal
        // on (getrusage): its start-up before that ran before the agent
        // attached (tens of ms under emulation).
        "spin" => {
            let (ms, threads) = (num("--ms", 1000)?, num("--threads", 1)?);
            let before = cpu_ns();
            let burn = move || {
                let t0 = Instant::now();
                let mut x = 0u64;
                while t0.elapsed().as_millis() < u128::from(ms) {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                x
            };
            let handles: Vec<_> = (0..threads).map(|_| std::thread::spawn(burn)).collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("spinner panicked"))?;
            }
            serde_json::json!({"pid": pid, "cpu_ns": cpu_ns() - before})
        }
        // --mib N --hold-ms H: allocates and touches N MiB, holds it H ms.
        "alloc" => {
            let (mib, hold) = (num("--mib", 100)?, num("--hold-ms", 1000)?);
            let mut v = vec![0u8; (mib as usize) << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            println!("{}", serde_json::json!({"pid": pid, "touched_bytes": v.len()}));
            std::io::stdout().flush()?;
            // Hold it, waking every 100 ms so the process stays active.
            let t0 = Instant::now();
            while t0.elapsed().as_millis() < u128::from(hold) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            std::hint::black_box(&v);
            let held = v.len();
            // --then-free-ms F: free it and stay around F ms, making a
            // system call every 100 ms so the process stays active.
            let after = num("--then-free-ms", 0)?;
            drop(v);
            let t0 = Instant::now();
            while t0.elapsed().as_millis() < u128::from(after) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            serde_json::json!({"pid": pid, "held_bytes": held})
        }
        // --count N: two threads pass a byte back and forth over pipes N
        // times (pin the process to one CPU: then every hop is a context
        // switch). Prints ns per round trip. Starts at once.
        "pingpong" => {
            let count = num("--count", 100_000)?;
            let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
            // SAFETY: pipe(2) writes two fds into each two-element array.
            unsafe {
                libc::pipe(a.as_mut_ptr());
                libc::pipe(b.as_mut_ptr());
            }
            let (a_r, a_w, b_r, b_w) = (a[0], a[1], b[0], b[1]);
            let echo = std::thread::spawn(move || {
                let mut byte = 0u8;
                for _ in 0..count {
                    // SAFETY: one byte read into and written from `byte`.
                    unsafe {
                        libc::read(a_r, (&raw mut byte).cast(), 1);
                        libc::write(b_w, (&raw const byte).cast(), 1);
                    }
                }
            });
            let t0 = Instant::now();
            let mut byte = 1u8;
            for _ in 0..count {
                // SAFETY: one byte written from and read into `byte`.
                unsafe {
                    libc::write(a_w, (&raw const byte).cast(), 1);
                    libc::read(b_r, (&raw mut byte).cast(), 1);
                }
            }
            let ns = t0.elapsed().as_nanos() as f64 / count as f64;
            echo.join().map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
            serde_json::json!({"pid": pid, "count": count, "ns_per_round_trip": ns})
        }
        // --port P --requests N --request-bytes Q [--keepalive]: N requests of
        // Q bytes (newline-terminated) to 127.0.0.1:P, each answered by one
        // line; one connection for all, or one per request. Reports the
        // median round trip (from sending a request to reading its answer)
        // and the median wait (from the send's return to the answer read):
        // what the agent measures, from the end of the client's send to the
        // end of its first read of the answer.
        "tcp-client" => {
            let port = num("--port", 0)? as u16;
            let (n, q) = (num("--requests", 10)?, num("--request-bytes", 64)?.max(1));
            let keepalive = args.iter().any(|a| a == "--keepalive");
            // --http: each request starts with an HTTP/1.1 request line,
            // `GET /vm/<i>`, and every 5th `GET /fail/<i>` (which an --http
            // server answers 503).
            let http = args.iter().any(|a| a == "--http");
            let plain: Vec<u8> = (0..q).map(|i| if i + 1 == q { b'\n' } else { b'a' }).collect();
            let request_for = |k: u64| -> Vec<u8> {
                let mut r = plain.clone();
                if http {
                    let path = if k % 5 == 4 { "fail" } else { "vm" };
                    let line = format!("GET /{path}/{k} HTTP/1.1 ");
                    let n = line.len().min(r.len().saturating_sub(1));
                    r[..n].copy_from_slice(&line.as_bytes()[..n]);
                }
                r
            };
            let (mut received, mut connects) = (0u64, 0u64);
            let mut conn: Option<BufReader<TcpStream>> = None;
            let (mut took, mut waited) = (Vec::new(), Vec::new());
            for k in 0..n {
                if conn.is_none() {
                    conn = Some(BufReader::new(TcpStream::connect(("127.0.0.1", port))?));
                    connects += 1;
                }
                let c = conn.as_mut().context("connection")?;
                let request = request_for(k);
                let t0 = Instant::now();
                c.get_mut().write_all(&request)?;
                let sent = Instant::now();
                let mut line = Vec::new();
                c.read_until(b'\n', &mut line)?;
                took.push(t0.elapsed().as_nanos() as u64);
                waited.push(sent.elapsed().as_nanos() as u64);
                received += line.len() as u64;
                if !keepalive {
                    conn = None;
                }
            }
            took.sort_unstable();
            waited.sort_unstable();
            serde_json::json!({"pid": pid, "requests": n, "connects": connects,
                "bytes_sent": n * q, "bytes_received": received,
                "round_trip_p50_ns": nearest_rank(&took, 50.0),
                "wait_p50_ns": nearest_rank(&waited, 50.0)})
        }
        // --port P --count N: N connects to a port nobody listens on.
        "tcp-refused" => {
            let port = num("--port", 0)? as u16;
            let count = num("--count", 5)?;
            let mut refused = 0;
            for _ in 0..count {
                if TcpStream::connect(("127.0.0.1", port)).is_err() {
                    refused += 1;
                }
            }
            serde_json::json!({"pid": pid, "refused": refused})
        }
        // --port P: sends one request, then resets the connection (SO_LINGER
        // 0) before the answer arrives.
        "tcp-reset" => {
            let port = num("--port", 0)? as u16;
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(b"reset me\n")?;
            std::thread::sleep(std::time::Duration::from_millis(num("--after-ms", 50)?));
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: SO_LINGER reads one linger struct, whose size is given.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as u32,
                );
            }
            drop(s);
            serde_json::json!({"pid": pid, "reset": 1})
        }
        // --procs N --threads T: forks N short-lived children one after the
        // other, each making 3 getppid calls and exiting, and starts T
        // short-lived threads doing the same. Reports how many ran.
        "churn" => {
            let (procs, threads) = (num("--procs", 1000)?, num("--threads", 0)?);
            for _ in 0..procs {
                // SAFETY: the child makes raw system calls only and exits
                // with _exit (no destructors, no allocation after the fork).
                match unsafe { libc::fork() } {
                    0 => {
                        for _ in 0..3 {
                            sys(libc::SYS_getppid, 0);
                        }
                        // SAFETY: ends the child at once, as after a fork it must.
                        unsafe { libc::_exit(0) };
                    }
                    -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
                    child => {
                        let mut status = 0;
                        // SAFETY: waitpid(2) writes the child's status into `status`.
                        unsafe { libc::waitpid(child, &mut status, 0) };
                    }
                }
            }
            for _ in 0..threads {
                std::thread::spawn(|| {
                    for _ in 0..3 {
                        sys(libc::SYS_getppid, 0);
                    }
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread panicked"))?;
            }
            serde_json::json!({"pid": pid, "procs": procs, "threads": threads})
        }
        // --seconds S: calls getppid as fast as it can for S seconds (a
        // syscall storm); starts at once and reports the count.
        "storm" => {
            let secs = num("--seconds", 5)?;
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed().as_secs() < secs {
                for _ in 0..1000 {
                    sys(libc::SYS_getppid, 0);
                }
                n += 1000;
            }
            serde_json::json!({"pid": pid, "calls": n})
        }
        other => bail!("unknown mode {other}"),
    };
    println!("{truth}");
    Ok(())
}

/// A line server on 127.0.0.1 (an ephemeral port): every request line is
/// answered, after `delay_ms`, with `bytes` bytes ending in a newline.
/// Prints `ready <pid> <port>` and serves until killed.
/// With `delay_file`, the delay is read from that file (milliseconds) for
/// every request, so a test can change it while the server runs.
/// With `http`, each answer starts with an HTTP/1.1 status line: 503 for a
/// request whose line names `/fail`, else 200 (one line all the same, so
/// the clients read it as before).
fn tcp_server(
    delay_ms: u64,
    bytes: u64,
    delay_file: Option<std::path::PathBuf>,
    http: bool,
) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("ready {} {}", std::process::id(), listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let response: Vec<u8> =
        (0..bytes.max(1)).map(|i| if i + 1 == bytes.max(1) { b'\n' } else { b'r' }).collect();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let response = response.clone();
        let delay_file = delay_file.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(conn);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let delay = delay_file
                    .as_ref()
                    .and_then(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
                    .unwrap_or(delay_ms);
                std::thread::sleep(std::time::Duration::from_millis(delay));
                let mut response = response.clone();
                if http {
                    let failed = line.windows(5).any(|w| w == b"/fail");
                    let status: &[u8] =
                        if failed { b"HTTP/1.1 503 Busy " } else { b"HTTP/1.1 200 OK " };
                    let n = status.len().min(response.len().saturating_sub(1));
                    response[..n].copy_from_slice(&status[..n]);
                }
                if reader.get_mut().write_all(&response).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// The `q`th percentile of sorted values, by nearest rank (0 when empty).
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// A raw system call with one integer argument (or none), through
/// `libc::syscall` so the C library adds no call of its own.
fn sys(nr: libc::c_long, arg: libc::c_long) -> libc::c_long {
    // SAFETY: the calls used (getppid, close) take integers only.
    unsafe { libc::syscall(nr, arg) }
}

/// CPU time (user + system) this process has used, in ns.
fn cpu_ns() -> u64 {
    // SAFETY: rusage is plain C data (integers): all zeros is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Sets this thread's (and, on the main thread, the process's) comm to raw bytes.
fn set_name(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads up to 16 bytes, NUL-terminated, from `buf`.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}
