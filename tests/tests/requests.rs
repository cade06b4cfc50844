//! Application-level requests against real servers and clients whose own
//! counts are the truth: nginx (its access log) with a raw keep-alive
//! client, a pipelining shell and ApacheBench; nginx over HTTPS with curl,
//! openssl s_client, Python's http.client and ApacheBench (read through
//! the OpenSSL uprobes, and without them); a private copy of libssl under
//! Python's HTTPS server; Python's http.server with known per-route
//! delays; redis-server (its INFO) with redis-cli and redis-benchmark;
//! PostgreSQL with psql and pgbench; hostile bytes; and route
//! normalization checked against an independent reference on random paths.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use probe_tests::{Workload, kill, rel_err, require_bpf, tempdir};
use serde_json::Value;

/// A server process, stopped with its own clean-shutdown signal (nginx
/// and PostgreSQL leave their workers behind when killed outright).
struct Daemon {
    child: Child,
    stop: i32,
}

impl Daemon {
    /// Starts `cmd`; it gets `stop` if this thread dies first, so no server
    /// outlives a test killed outright (holding, say, the BPF test lock).
    fn spawn(cmd: &mut Command, stop: i32) -> Daemon {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Daemon { child, stop }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill(self.child.id(), self.stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent, watching the given process names and this test process (by
/// its name too: `--pid` and `--comm` filters apply together).
fn agent(comms: &[&str]) -> probe_tests::Agent {
    agent_with(comms, &[])
}

/// As [`agent`], with more arguments.
fn agent_with(comms: &[&str], more: &[&str]) -> probe_tests::Agent {
    let me = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
    let mut args = vec!["--interval", "60s", "--comm", &me];
    for c in comms {
        args.extend(["--comm", c]);
    }
    args.extend(more);
    probe_tests::Agent::start(&args).unwrap()
}

/// As [`agent`], with the OpenSSL uprobes on (`[requests] tls_uprobes`,
/// off by default), its configuration file written in `dir`.
fn tls_agent(dir: &Path, comms: &[&str]) -> probe_tests::Agent {
    let config = probe_tests::config_file(
        dir,
        &[("# [requests]\n", "[requests]\n"), ("# tls_uprobes = false\n", "tls_uprobes = true\n")],
    );
    agent_with(comms, &["--config", config.to_str().unwrap()])
}

/// Request totals, as the agent reports them or as the truth counts them.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    count: u64,
    errors: u64,
    client_errors: u64,
    /// By status class, `1xx` .. `5xx` (HTTP only).
    status: [u64; 5],
}

impl Totals {
    fn add(&mut self, req: &Value) {
        self.count += req["count"].as_u64().unwrap();
        self.errors += req["errors"].as_u64().unwrap();
        self.client_errors += req["client_errors"].as_u64().unwrap();
        if let Some(st) = req["status"].as_object() {
            for (i, s) in self.status.iter_mut().enumerate() {
                *s += st[&format!("{}xx", i + 1)].as_u64().unwrap();
            }
        }
    }

    /// These totals less `n` successful requests.
    fn minus(mut self, n: u64) -> Totals {
        self.count -= n;
        self
    }

    /// Truth from HTTP status codes.
    fn http(codes: impl IntoIterator<Item = u16>) -> Totals {
        let mut t = Totals::default();
        for c in codes {
            t.answered(c);
        }
        t
    }

    /// Counts one HTTP answer with status `c`.
    fn answered(&mut self, c: u16) {
        self.count += 1;
        self.status[usize::from(c / 100 - 1)] += 1;
        self.errors += u64::from(c >= 500);
        self.client_errors += u64::from((400..500).contains(&c));
    }
}

/// Sums the requests of the `kind` records (`endpoint`, `route`) that `pick`
/// selects; checks they all name `protocol`.
fn sum(records: &[Value], kind: &str, protocol: &str, pick: impl Fn(&Value) -> bool) -> Totals {
    let mut t = Totals::default();
    for r in records.iter().filter(|r| r["type"] == kind && pick(r)) {
        assert_eq!(r["protocol"], protocol, "{r}");
        t.add(&r["requests"]);
    }
    t
}

/// Route totals keyed by "METHOD route" (or the route alone).
fn routes(records: &[Value], pick: impl Fn(&Value) -> bool) -> BTreeMap<String, Totals> {
    let mut m: BTreeMap<String, Totals> = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] == "route" && pick(r)) {
        let name = r["route"].as_str().unwrap();
        let key = match r["method"].as_str() {
            Some(method) => format!("{method} {name}"),
            None => name.to_string(),
        };
        m.entry(key).or_default().add(&r["requests"]);
    }
    m
}

fn server_of<'a>(comm: &'a str, port: u16) -> impl Fn(&Value) -> bool + 'a {
    move |r: &Value| r["comm"] == comm && r["role"] == "server" && r["port"] == port
}

fn client_of(pid: u32, port: u16) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["pid"] == pid && r["role"] == "client" && r["port"] == port
}

// --- HTTP -----------------------------------------------------------------

/// A keep-alive HTTP/1.1 connection, one request at a time (connecting
/// again when the server closed it, as nginx does after a 500).
struct Http {
    port: u16,
    conn: BufReader<TcpStream>,
    closed: bool,
}

impl Http {
    fn connect(port: u16) -> Http {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        Http { port, conn: BufReader::new(s), closed: false }
    }

    /// Sends one request (in one write) and reads its whole answer;
    /// returns the status code and the time to the answer's first bytes.
    fn call(&mut self, method: &str, target: &str, body: &[u8]) -> (u16, Duration) {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.call_in_parts(&[&req])
    }

    /// Sends one request in several writes, 20 ms apart (each its own
    /// segment: TCP_NODELAY), and reads its whole answer, as [`Self::call`].
    fn call_in_parts(&mut self, parts: &[&[u8]]) -> (u16, Duration) {
        if self.closed {
            *self = Http::connect(self.port);
        }
        let t0 = Instant::now();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.conn.get_mut().write_all(part).unwrap();
        }
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        let took = t0.elapsed();
        let code: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            self.conn.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            self.closed |= lower.starts_with("connection: close");
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body).unwrap();
        (code, took)
    }
}

/// nginx on a loopback port with `locations` (its `server` block's body),
/// writing "STATUS METHOD TARGET" per request to `DIR/access.log`.
fn nginx(dir: &Path, locations: &str) -> (Daemon, u16) {
    nginx_on(dir, locations, false)
}

/// As [`nginx`], over HTTPS with a self-signed certificate made in `dir`.
fn nginx_tls(dir: &Path, locations: &str) -> (Daemon, u16) {
    nginx_on(dir, locations, true)
}

fn nginx_on(dir: &Path, locations: &str, tls: bool) -> (Daemon, u16) {
    let port = free_port();
    let ssl = if tls {
        self_signed(dir);
        format!(
            " ssl;\n ssl_certificate {d}/cert.pem;\n ssl_certificate_key {d}/key.pem",
            d = dir.display()
        )
    } else {
        String::new()
    };
    let conf = format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
           log_format truth '$status $request_method $request_uri';\n\
           access_log {d}/access.log truth;\n\
           keepalive_requests 100000;\n\
           server {{\n\
             listen 127.0.0.1:{port}{ssl};\n\
             {locations}\n\
           }}\n\
         }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let d = Daemon::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]),
        libc::SIGTERM,
    );
    wait_listening(port);
    (d, port)
}

/// A self-signed certificate and its key, `DIR/cert.pem` and `DIR/key.pem`.
fn self_signed(dir: &Path) {
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
}

/// nginx's access log: (status, method, target) per request.
fn access_log(dir: &Path) -> Vec<(u16, String, String)> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut w = l.splitn(3, ' ');
            let code = w.next().unwrap().parse().unwrap();
            (code, w.next().unwrap().to_string(), w.next().unwrap_or("").to_string())
        })
        .collect()
}

/// The HTTP cases that are not one request in one read and one answer in
/// one write: headers split across sends (and a request line cut by one),
/// chunked request bodies sent after `Expect: 100-continue` (an interim
/// answer first), and answers far larger than one send (sendfile),
/// keep-alive throughout. Counts and statuses as nginx's log and the
/// clients' own figures say, on both sides.
#[test]
fn split_headers_chunked_bodies_expect_continue_and_large_answers() {
    require_bpf!();
    let dir = tempdir("req-edges");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    // nginx's worker (user nobody) writes the uploads.
    for sub in ["tmp", "up"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let big: Vec<u8> =
        (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(dir.join("files/big.bin"), &big).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.join("body.txt"), &body).unwrap();
    let d = dir.display();
    let (_nginx, port) = nginx(
        &dir,
        &format!(
            "location = /split {{ return 200 \"split\\n\"; }}\n\
             location /files/ {{ root {d}; sendfile on; }}\n\
             location /up/ {{ root {d}; dav_methods PUT;\n\
               client_max_body_size 16m; client_body_temp_path {d}/tmp; }}"
        ),
    );
    let agent = agent(&["nginx", "curl"]);

    // This process, one keep-alive connection: headers in three sends; a
    // request line cut in the middle of its path; then a whole request.
    let mut conn = Http::connect(port);
    let mut mine = vec![
        conn.call_in_parts(&[b"GET /split HTTP/1.1\r\nHo", b"st: t\r\nAccept: */*\r\n", b"\r\n"]).0,
        conn.call_in_parts(&[b"GET /spl", b"it HTTP/1.1\r\nHost: t\r\n\r\n"]).0,
        conn.call("GET", "/split", b"").0,
    ];
    drop(conn);
    // curl: chunked uploads of 300 kB after Expect: 100-continue (nginx
    // answers 100, reads the body, then 201 or 204), each on a new
    // connection; then a 3 MiB file three times over one connection.
    let curl = |args: &[&str]| -> Vec<u16> {
        run(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}\n"]).args(args))
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let upload = dir.join("body.txt");
    let mut curls = Vec::new();
    for i in 0..3 {
        let headers = dir.join(format!("headers-{i}"));
        curls.extend(curl(&[
            "-D",
            headers.to_str().unwrap(),
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "-T",
            upload.to_str().unwrap(),
            &url(&format!("/up/{}", 1 + i % 2)),
        ]));
        let seen = std::fs::read_to_string(&headers).unwrap();
        assert!(seen.starts_with("HTTP/1.1 100 Continue"), "an interim answer first: {seen}");
    }
    let f = url("/files/big.bin");
    curls.extend(curl(&[&f, "-o", "/dev/null", &f, "-o", "/dev/null", &f]));
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();

    assert_eq!(std::fs::read(dir.join("up/1")).unwrap(), body, "the upload arrived whole");
    let log = access_log(&dir);
    let truth = Totals::http(log.iter().map(|e| e.0));
    assert_eq!(log.len(), 3 + 6, "{log:?}");
    assert_eq!(curls, [201, 201, 204, 200, 200, 200], "curl's own statuses");
    assert_eq!(mine, [200, 200, 200]);
    let server = sum(&records, "endpoint", "http1", server_of("nginx", port));
    assert_eq!(server, truth, "nginx's side against its log {log:?}");
    let curl_side = sum(&records, "endpoint", "http1", |r| {
        r["comm"] == "curl" && r["role"] == "client" && r["port"] == port
    });
    assert_eq!(curl_side, Totals::http(curls.iter().copied()), "curl's side");
    mine.sort();
    let me = std::process::id();
    assert_eq!(sum(&records, "endpoint", "http1", client_of(me, port)), Totals::http(mine));
    // Routes: the cut request line names none; the rest by their path.
    let routes = routes(&records, server_of("nginx", port));
    assert_eq!(routes["GET /split"].count, 2, "{routes:?}");
    assert_eq!(routes["PUT /up/{id}"].status[1], 3, "{routes:?}");
    assert_eq!(routes["GET /files/big.bin"].count, 3, "{routes:?}");
    assert_eq!(routes.values().map(|t| t.count).sum::<u64>(), server.count - 1);
}

/// ApacheBench's own "Complete requests" and "Non-2xx responses".
fn ab(args: &[&str]) -> (u64, u64) {
    let out = run(Command::new("ab").arg("-q").args(args));
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    (field("Complete requests:"), field("Non-2xx responses:"))
}

/// The route a request target should have, by the documented rule,
/// written here independently of the kernel's code: the path (to the
/// first space, `?` or `#`) within the first 128 bytes of the request,
/// each identifier-like segment (all digits; 8+ hex digits and dashes
/// with a digit; 20+ characters with a digit) made `{id}`, cut to 64 bytes.
fn reference_route(method: &str, target: &str) -> String {
    let visible = 128 - method.len() - 1;
    let t = &target.as_bytes()[..target.len().min(visible)];
    let end = t.iter().position(|c| b" ?#\r\n".contains(c)).unwrap_or(t.len());
    let path = String::from_utf8_lossy(&t[..end]).into_owned();
    let is_id = |s: &str| {
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        !s.is_empty()
            && (digits == s.len()
                || (s.len() >= 8
                    && digits > 0
                    && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'))
                || (s.len() >= 20 && digits > 0))
    };
    let mut r =
        path.split('/').map(|s| if is_id(s) { "{id}" } else { s }).collect::<Vec<_>>().join("/");
    r.truncate(64);
    r
}

#[test]
fn reference_route_rule() {
    assert_eq!(reference_route("GET", "/api/items/123?x=1"), "/api/items/{id}");
    assert_eq!(reference_route("GET", "/u/0f3e9a7c-1b2d/x"), "/u/{id}/x");
    assert_eq!(reference_route("GET", "/u/deadbeef/x"), "/u/deadbeef/x");
    assert_eq!(reference_route("GET", "/t/abcdefghijklmnopqrs1"), "/t/{id}");
    assert_eq!(reference_route("GET", "/v1/abc12"), "/v1/abc12");
    assert_eq!(reference_route("POST", "/"), "/");
}

#[test]
fn http_statuses_routes_and_errors_match_nginx_access_log() {
    require_bpf!();
    let dir = tempdir("req-nginx");
    let (_nginx, port) = nginx(
        &dir,
        "location = /api/checkout { return 200 \"ok\\n\"; }\n\
         location /api/items/ { return 200 \"item\\n\"; }\n\
         location = /boom { return 500; }\n\
         location = /busy { return 503; }\n\
         location = /moved { return 301 /api/checkout; }\n\
         location / { return 404; }",
    );
    // A configured route pattern names what the automatic rule would not
    // (a user name is no identifier).
    let config = probe_tests::config_file(
        &dir,
        &[(
            "# [requests]\n# client_errors_are_errors = false\n# routes = [\"/api/users/{user}/cart\"]",
            "[requests]\nroutes = [\"/api/users/{user}/cart\"]",
        )],
    );
    let agent = agent_with(&["nginx", "ab", "python3"], &["--config", config.to_str().unwrap()]);

    // This process: one keep-alive connection, then a fresh one per request.
    let plan: &[(&str, &str, usize)] = &[
        ("GET", "/api/checkout", 12),
        ("POST", "/api/checkout?session=9", 4),
        ("GET", "/api/items/123", 7),
        ("GET", "/api/items/456?color=red", 5),
        ("GET", "/missing", 4),
        ("GET", "/boom", 3),
        ("GET", "/busy", 2),
        ("GET", "/moved", 2),
        ("GET", "/api/users/alice/cart", 3),
        ("PUT", "/api/users/bob/cart", 2),
    ];
    let mut mine = Vec::new();
    let mut keep = Http::connect(port);
    for &(method, target, n) in plan {
        for _ in 0..n {
            mine.push(keep.call(method, target, if method == "POST" { b"{}" } else { b"" }).0);
        }
    }
    for _ in 0..5 {
        mine.push(Http::connect(port).call("GET", "/boom", b"").0);
    }
    drop(keep);
    // Another client process (its own pid, its own socket):
    // - three requests in one write: nginx answers each in its own write,
    //   and each is a request, named by the first one's route;
    // - a request whose line ends in the read after its predecessor's was
    //   answered: its outcome is known, its route is not (counted by the
    //   endpoint, in no route record).
    let client = format!(
        "import socket\n\
         def req(i, last=''):\n\
         \x20   return f'GET /api/items/{{i}} HTTP/1.1\\r\\nHost: t\\r\\n{{last}}\\r\\n'.encode()\n\
         def drain(s):\n\
         \x20   while s.recv(65536): pass\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(req(1) + req(22) + req(333, 'Connection: close\\r\\n'))\n\
         drain(s)\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         two = req(4444, 'Connection: close\\r\\n')\n\
         s.sendall(req(1) + two[:20])\n\
         got = b''\n\
         while not got.endswith(b'item\\n'): got += s.recv(65536)\n\
         s.sendall(two[20:])\n\
         drain(s)\n"
    );
    run(Command::new("python3").arg("-c").arg(client));
    // ApacheBench: keep-alive and concurrent, then a new connection each.
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let ab_ok = ab(&["-k", "-n", "300", "-c", "4", &url("/api/checkout")]);
    let ab_err = ab(&["-n", "40", "-c", "2", &url("/boom")]);
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let log = access_log(&dir);

    // The server: every line of nginx's log, by status class.
    let truth = Totals::http(log.iter().map(|l| l.0));
    assert_eq!(truth.count, mine.len() as u64 + 3 + 2 + 300 + 40, "nginx's own log");
    let seen = sum(&records, "endpoint", "http1", server_of("nginx", port));
    if seen != truth {
        for r in records.iter().filter(|r| server_of("nginx", port)(r)) {
            eprintln!("{r}");
        }
    }
    assert_eq!(seen, truth, "nginx server endpoint vs its access log");

    // Its routes: the log's targets, normalized by the reference rule (but
    // for the request whose line came in two reads: no route).
    let mut want: BTreeMap<String, Totals> = BTreeMap::new();
    for (code, method, target) in &log {
        if target == "/api/items/4444" {
            continue;
        }
        let mut route = reference_route(method, target);
        if route.starts_with("/api/users/")
            && route.ends_with("/cart")
            && route.matches('/').count() == 4
        {
            route = "/api/users/{user}/cart".into();
        }
        want.entry(format!("{method} {route}")).or_default().answered(*code);
    }
    assert_eq!(routes(&records, server_of("nginx", port)), want, "nginx routes");
    for r in ["GET /api/items/{id}", "POST /api/checkout", "PUT /api/users/{user}/cart"] {
        assert!(want.contains_key(r), "{r}: {want:?}");
    }

    // The clients: this process saw exactly the answers it read; the
    // Python client 3 requests, all answered 2xx (a client's pipelined
    // batch, sent in one write, is one request to it).
    let py = |r: &Value| r["comm"] == "python3" && r["role"] == "client" && r["port"] == port;
    let py_side = sum(&records, "endpoint", "http1", py);
    assert_eq!((py_side.count, py_side.status[1]), (3, 3), "{py_side:?}");
    let me = std::process::id();
    assert_eq!(
        sum(&records, "endpoint", "http1", client_of(me, port)),
        Totals::http(mine.iter().copied()),
        "this test's client side"
    );
    // ApacheBench's own counts.
    let ab_side = |pick: &dyn Fn(&Totals) -> u64| {
        let recs = records.iter().filter(|r| {
            r["type"] == "endpoint"
                && r["comm"] == "ab"
                && r["role"] == "client"
                && r["port"] == port
        });
        recs.map(|r| {
            let mut t = Totals::default();
            t.add(&r["requests"]);
            pick(&t)
        })
        .sum::<u64>()
    };
    assert_eq!(ab_side(&|t| t.count), ab_ok.0 + ab_err.0, "ab: {ab_ok:?} {ab_err:?}");
    assert_eq!(ab_side(&|t| t.errors), ab_err.1, "ab's non-2xx answers (all 500)");
    assert_eq!((ab_ok.1, ab_err.0, ab_err.1), (0, 40, 40));
}

/// At the agent's floor (every step the budget can shed, shed: the
/// system-call programs detached), requests keep their method, route and
/// status, found from the caller's saved registers: nginx's access log is
/// the truth, and the agent says what is off.
#[test]
fn at_the_floor_routes_and_statuses_still_match_nginx_access_log() {
    require_bpf!();
    let dir = tempdir("req-floor");
    let (_nginx, port) = nginx(
        &dir,
        "location = /api/checkout { return 200 \"ok\\n\"; }\n\
         location = /busy { return 503; }\n\
         location / { return 404; }",
    );
    let agent = agent_with(&["nginx"], &["--start-at-floor", "--overhead-budget-pct", "0"]);
    let mut keep = Http::connect(port);
    for (target, n) in [("/api/checkout", 20), ("/busy", 5), ("/orders/123", 3)] {
        for _ in 0..n {
            keep.call("GET", target, b"");
        }
    }
    drop(keep);
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let log = access_log(&dir);
    assert_eq!(log.len(), 28, "nginx's own log");
    let mut want: BTreeMap<String, Totals> = BTreeMap::new();
    for (code, method, target) in &log {
        let key = format!("{method} {}", reference_route(method, target));
        want.entry(key).or_default().answered(*code);
    }
    assert_eq!(routes(&records, server_of("nginx", port)), want, "nginx routes at the floor");
    assert!(want.contains_key("GET /orders/{id}"), "{want:?}");
    let a = records.iter().rev().find(|r| r["type"] == "agent").unwrap();
    assert_eq!(a["shedding"]["probes_off"], serde_json::json!(["syscalls", "runq_latency"]), "{a}");
    assert_eq!(a["shedding"]["detail_off"], serde_json::json!(["syscalls", "tcp"]), "{a}");
    assert_eq!(a["kpis"]["syscalls"]["available"], false, "{a}");
    assert_eq!(a["kpis"]["tcp"]["available"], true, "{a}");
    let listed: Vec<&str> =
        a["programs"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(!listed.contains(&"sys_enter") && !listed.contains(&"sys_exit"), "{listed:?}");
    assert!(!records.iter().any(|r| r["type"] == "syscall"), "no call is traced at the floor");
}

/// Runs `cmd` (a client), returns its pid and what it printed.
fn client(cmd: &mut Command) -> (u32, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// curl -k on `urls` in one invocation (one keep-alive connection): its
/// pid and the status code of each answer, as curl printed them.
fn curl(urls: &[String]) -> (u32, Vec<u16>) {
    // `-o` applies to the URL after it: each answer's body is dropped.
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-w", "%{http_code}\\n"]);
    for u in urls {
        cmd.args(["-o", "/dev/null", u]);
    }
    let (pid, out) = client(&mut cmd);
    (pid, out.lines().map(|l| l.parse().unwrap()).collect())
}

/// nginx's HTTPS locations for the TLS tests.
const TLS_LOCATIONS: &str = "location = /api/checkout { return 200 \"ok\\n\"; }\n\
     location /api/items/ { return 200 \"item\\n\"; }\n\
     location = /boom { return 500; }\n\
     location = /busy { return 503; }\n\
     location = /moved { return 301 /api/checkout; }\n\
     location / { return 404; }";

/// The status record's `tls` object.
fn tls_status(records: &[Value]) -> &Value {
    &records.iter().find(|r| r["type"] == "status").expect("a status record")["tls"]
}

#[test]
fn https_through_openssl_matches_nginx_access_log() {
    require_bpf!();
    let dir = tempdir("req-nginx-tls");
    let (_nginx, port) = nginx_tls(&dir, TLS_LOCATIONS);
    let agent = tls_agent(&dir, &["nginx", "curl", "ab", "openssl", "python3"]);
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");

    // curl: one keep-alive connection for many URLs, then fresh ones.
    let mut curls = Vec::new();
    let mut keep = Vec::new();
    for (target, n) in [("/api/checkout", 6), ("/api/items/12", 3), ("/boom", 2), ("/nope", 2)] {
        keep.extend(std::iter::repeat_n(url(target), n));
    }
    keep.extend([url("/moved"), url("/api/items/9f8e7d6c-5b4a?x=1"), url("/busy")]);
    curls.push(curl(&keep));
    for target in ["/boom", "/api/checkout", "/missing/7"] {
        curls.push(curl(&[url(target)]));
    }
    // openssl s_client: one request per connection, its own answer read.
    let mut s_clients = Vec::new();
    for target in ["/api/items/77", "/nope"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-quiet", "-ign_eof"])
            .stdin(Stdio::piped());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let code: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        s_clients.push((pid, code));
    }
    // Python's http.client (its ssl module calls SSL_read_ex and
    // SSL_write_ex): keep-alive, reconnecting when nginx closes.
    let script = format!(
        "import http.client, ssl\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port},\n\
         \x20   context=ssl._create_unverified_context())\n\
         for t in ['/api/items/5', '/busy', '/api/checkout', '/nope', '/api/items/6']:\n\
         \x20   c.request('GET', t)\n\
         \x20   r = c.getresponse()\n\
         \x20   r.read()\n\
         \x20   print(r.status)\n"
    );
    let (py_pid, out) = client(Command::new("python3").arg("-c").arg(script));
    let py_codes: Vec<u16> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(py_codes, [200, 503, 200, 404, 200]);
    // ApacheBench over HTTPS: keep-alive and concurrent, then a new
    // connection each.
    let ab_ok = ab(&["-k", "-n", "60", "-c", "3", &url("/api/checkout")]);
    let ab_err = ab(&["-n", "20", "-c", "2", &url("/busy")]);
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let log = access_log(&dir);

    let tls = tls_status(&records);
    assert_eq!(tls["uprobes"], true, "{tls}");

    // Every record of the port says TLS.
    let on_port = |r: &&Value| r["type"] == "endpoint" && r["port"] == port;
    assert!(records.iter().filter(on_port).count() >= 3);
    for r in records.iter().filter(on_port) {
        assert_eq!(r["tls"], true, "{r}");
    }

    // The server: every line of nginx's log, by status class.
    let truth = Totals::http(log.iter().map(|l| l.0));
    let sent: usize =
        curls.iter().map(|c| c.1.len()).sum::<usize>() + s_clients.len() + py_codes.len();
    assert_eq!(truth.count, sent as u64 + 60 + 20, "nginx's own log");
    let seen = sum(&records, "endpoint", "http1", server_of("nginx", port));
    assert_eq!(seen, truth, "nginx HTTPS server endpoint vs its access log");

    // Its routes: the log's targets, normalized by the reference rule.
    let mut want: BTreeMap<String, Totals> = BTreeMap::new();
    for (code, method, target) in &log {
        let key = format!("{method} {}", reference_route(method, target));
        want.entry(key).or_default().answered(*code);
    }
    assert!(want.contains_key("GET /api/items/{id}"), "{want:?}");
    assert_eq!(routes(&records, server_of("nginx", port)), want, "nginx HTTPS routes");

    // The clients: each saw exactly the answers it printed.
    for (pid, codes) in &curls {
        let seen = sum(&records, "endpoint", "http1", client_of(*pid, port));
        assert_eq!(seen, Totals::http(codes.iter().copied()), "curl {pid}: {codes:?}");
    }
    assert_eq!(
        sum(&records, "endpoint", "http1", client_of(py_pid, port)),
        Totals::http(py_codes.iter().copied()),
        "python's http.client (SSL_read_ex, SSL_write_ex)"
    );
    for &(pid, code) in &s_clients {
        let seen = sum(&records, "endpoint", "http1", client_of(pid, port));
        assert_eq!(seen, Totals::http([code]), "openssl s_client {pid}");
    }
    let ab_side = sum(&records, "endpoint", "http1", |r: &Value| {
        r["comm"] == "ab" && r["role"] == "client" && r["port"] == port
    });
    assert_eq!(ab_side.count, ab_ok.0 + ab_err.0, "ab: {ab_ok:?} {ab_err:?}");
    assert_eq!(ab_side.errors, ab_err.1, "ab's non-2xx answers (all 503)");
    assert_eq!((ab_ok, ab_err), ((60, 0), (20, 20)));
}

#[test]
fn tls_without_uprobes_is_counted_with_no_protocol() {
    require_bpf!();
    let dir = tempdir("req-nginx-tls-l4");
    let (_nginx, port) = nginx_tls(&dir, TLS_LOCATIONS);
    let config = probe_tests::config_file(
        &dir,
        &[("# [requests]\n", "[requests]\n"), ("# tls_uprobes = false\n", "tls_uprobes = false\n")],
    );
    let agent = agent_with(&["nginx", "curl"], &["--config", config.to_str().unwrap()]);
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let (keep, codes) = curl(&[url("/api/checkout"), url("/boom"), url("/nope"), url("/moved")]);
    assert_eq!(codes, [200, 500, 404, 301]);
    let (fresh, _) = curl(&[url("/api/items/1")]);
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let log = access_log(&dir);
    assert_eq!(log.len(), 5, "nginx's own log");

    let tls = tls_status(&records);
    assert_eq!(tls["uprobes"], false, "{tls}");
    assert!(tls["reason"].as_str().unwrap().contains("tls_uprobes"), "{tls}");
    // Both sides: TLS, no protocol, no status classes and no routes; the
    // exchanges (handshake steps and requests) are counted as before.
    for (what, pick) in [
        ("nginx", &server_of("nginx", port) as &dyn Fn(&Value) -> bool),
        ("curl keep-alive", &client_of(keep, port)),
        ("curl fresh", &client_of(fresh, port)),
    ] {
        let eps: Vec<&Value> =
            records.iter().filter(|r| r["type"] == "endpoint" && pick(r)).collect();
        assert!(!eps.is_empty(), "{what}: no endpoint record");
        for r in &eps {
            assert_eq!((&r["protocol"], &r["tls"]), (&"unknown".into(), &true.into()), "{r}");
            assert!(r["requests"]["status"].is_null(), "{r}");
        }
        let t = sum(&records, "endpoint", "unknown", pick);
        assert!(t.count >= 1, "{what}: {t:?}");
        assert!(!records.iter().any(|r| r["type"] == "route" && pick(r)), "{what}: routes");
    }
    // The server's exchanges at least one per request it logged.
    let t = sum(&records, "endpoint", "unknown", server_of("nginx", port));
    assert!(t.count >= log.len() as u64, "{t:?} vs {} logged", log.len());
}

#[test]
fn a_private_copy_of_libssl_mapped_before_the_start_is_probed_too() {
    require_bpf!();
    let dir = tempdir("req-libssl-copy");
    self_signed(&dir);
    // A copy of the host's libssl (another file), used by an HTTPS server
    // (Python's http.server) started before the agent: only the server's
    // maps name it.
    let ldd = run(Command::new("ldd").arg(run(Command::new("which").arg("openssl")).trim()));
    let host_lib = ldd
        .lines()
        .find_map(|l| l.split_whitespace().nth(2).filter(|p| p.ends_with("/libssl.so.3")))
        .expect("openssl links libssl.so.3");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::copy(host_lib, lib.join("libssl.so.3")).unwrap();
    let port = free_port();
    let log = dir.join("served.log");
    let script = format!(
        "import http.server, ssl\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   protocol_version = 'HTTP/1.1'\n\
         \x20   def do_GET(self):\n\
         \x20       code = 200 if self.path.startswith('/ok') else 404\n\
         \x20       with open('{log}', 'a') as f: f.write(f'{{code}}\\n')\n\
         \x20       self.send_response(code)\n\
         \x20       self.send_header('Content-Length', '3')\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(b'hi\\n')\n\
         \x20   def log_message(self, *a): pass\n\
         s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('{d}/cert.pem', '{d}/key.pem')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        log = log.display(),
        d = dir.display(),
    );
    let server = Daemon::spawn(
        Command::new("python3").arg("-c").arg(script).env("LD_LIBRARY_PATH", &lib),
        libc::SIGTERM,
    );
    let copy = lib.join("libssl.so.3").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let maps = format!("/proc/{}/maps", server.child.id());
    while !std::fs::read_to_string(&maps).unwrap_or_default().contains(&copy) {
        assert!(Instant::now() < deadline, "the server never mapped the copy");
        std::thread::sleep(Duration::from_millis(50));
    }

    wait_listening(port);
    let agent = tls_agent(&dir, &["python3", "curl"]);
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let runs = [curl(&[url("/ok"), url("/ok/1"), url("/nope")]), curl(&[url("/ok")])];
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let served: Vec<u16> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| l.parse().unwrap()).collect();

    let tls = tls_status(&records);
    let libs = tls["libraries"].as_array().unwrap();
    let seen_as = format!("/proc/{}/root{copy}", server.child.id());
    assert!(libs.iter().any(|l| l == &seen_as), "{seen_as} in {libs:?}");
    assert_eq!(served, [200, 200, 404, 200], "the server's own log");
    let codes: Vec<u16> = runs.iter().flat_map(|r| r.1.iter().copied()).collect();
    assert_eq!(codes, served, "curl's own statuses");
    let server_side = |r: &Value| r["role"] == "server" && r["port"] == port;
    let seen = sum(&records, "endpoint", "http1", server_side);
    assert_eq!(seen, Totals::http(served.iter().copied()), "the server over the copied libssl");
    for r in records.iter().filter(|r| r["type"] == "endpoint" && r["port"] == port) {
        assert_eq!(r["tls"], true, "{r}");
    }
    for (pid, codes) in &runs {
        let seen = sum(&records, "endpoint", "http1", client_of(*pid, port));
        assert_eq!(seen, Totals::http(codes.iter().copied()), "curl {pid}");
    }
}

#[test]
fn per_route_latency_matches_known_delays() {
    require_bpf!();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/routes_server.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["/fast=10", "/orders/=25", "/slow=60", "/fail=15:500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let server = Daemon { child, stop: libc::SIGKILL };
    let words: Vec<&str> = ready.split_whitespace().collect();
    let (pid, port): (u32, u16) = (words[1].parse().unwrap(), words[2].parse().unwrap());
    let me = std::process::id();
    let server_pid = pid.to_string();
    let agent = probe_tests::Agent::start(&[
        "--interval",
        "60s",
        "--pid",
        &server_pid,
        "--pid",
        &me.to_string(),
    ])
    .unwrap();

    let plan =
        [("/fast", 30), ("/orders/17", 15), ("/orders/9001", 15), ("/slow", 20), ("/fail", 10)];
    let mut took: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut c = Http::connect(port);
    for round in 0..30 {
        for (target, n) in plan {
            if round < n {
                let route = if target.starts_with("/orders/") { "/orders/{id}" } else { target };
                let (_, t) = c.call("GET", target, b"");
                took.entry(route).or_default().push(t.as_secs_f64() * 1e3);
            }
        }
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let records = agent.stop().unwrap();
    drop(server);

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let route_rec = |who: u32, role: &str, route: &str| -> &Value {
        let r: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["type"] == "route" && r["pid"] == who && r["role"] == role && r["route"] == route
            })
            .collect();
        assert_eq!(r.len(), 1, "one {role} record for {route} from {who}: {r:?}");
        r[0]
    };
    for (route, delay_ms) in
        [("/fast", 10.0), ("/orders/{id}", 25.0), ("/slow", 60.0), ("/fail", 15.0)]
    {
        let v = took.get_mut(route).unwrap();
        let n = v.len() as u64;
        let client_p50 = median(v);
        for (who, role) in [(pid, "server"), (me, "client")] {
            let r = route_rec(who, role, route);
            assert_eq!(r["method"], "GET");
            assert_eq!(r["requests"]["count"], n, "{role} {route}");
            let errors = if route == "/fail" { n } else { 0 };
            assert_eq!(r["requests"]["errors"], errors, "{role} {route}");
            let p50 = r["requests"]["latency_ms"]["p50"].as_f64().unwrap();
            eprintln!("{role} {route}: p50 {p50:.3} ms, client-measured median {client_p50:.3} ms");
            // The server's time excludes the trip to and from the client,
            // the client's includes it; both are within 5% of what the
            // client itself measured, and neither is below the delay.
            assert!(rel_err(p50, client_p50) < 0.05, "{role} {route}: {p50} vs {client_p50}");
            assert!(p50 >= delay_ms * 0.98, "{role} {route}: {p50} < {delay_ms}");
        }
    }
}

// --- Redis ----------------------------------------------------------------

/// `INFO` fields of a Redis server.
fn redis_info(port: u16, section: &str) -> BTreeMap<String, String> {
    run(Command::new("redis-cli").args(["-p", &port.to_string(), "info", section]))
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn redis_commands_and_error_replies_match_redis_info() {
    require_bpf!();
    let (_redis, port) = redis();
    let before = redis_info(port, "stats");
    let agent = agent(&["redis-server", "redis-cli", "redis-benchmark"]);

    // redis-cli, one command and reply at a time, with errors of three
    // kinds: WRONGTYPE, an unknown command, and a value that is no integer.
    let mut script = String::new();
    for i in 0..30 {
        script.push_str(&format!("SET key{} v{i}\n", i % 10));
    }
    script.push_str(&"GET key3\n".repeat(20));
    script.push_str(&"LPUSH key1 x\n".repeat(5));
    script.push_str(&"NOSUCHCOMMAND a b\n".repeat(3));
    script.push_str(&"INCR key2\n".repeat(2));
    script.push_str(&"HSET h f 1\n".repeat(4));
    let mut cli = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cli.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = cli.wait_with_output().unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    let cli_errors = replies.lines().filter(|l| l.starts_with("(error)")).count() as u64;
    assert_eq!(cli_errors, 10, "redis-cli's own error replies:\n{replies}");

    // redis-benchmark: 4 clients, a new command each time the last replied
    // (and, first, two CONFIG GET sent at once: see below).
    let bench = run(Command::new("redis-benchmark").args([
        "-p",
        &port.to_string(),
        "-n",
        "2000",
        "-c",
        "4",
        "-t",
        "set,get,lpush",
        "--csv",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    let after = redis_info(port, "stats");
    let stat = |m: &BTreeMap<String, String>, k: &str| m[k].parse::<u64>().unwrap();

    // Redis's own counts: commands processed (less the INFO that asked),
    // plus the unknown commands it rejected before processing; errors are
    // every error reply it sent. A batch of pipelined commands (read in one
    // call, answered in one) is one request to the agent: redis-benchmark
    // sends its two CONFIG GET so, the one batch here.
    let processed =
        stat(&after, "total_commands_processed") - stat(&before, "total_commands_processed") - 1;
    let error_replies = stat(&after, "total_error_replies") - stat(&before, "total_error_replies");
    let server = sum(&records, "endpoint", "redis", server_of("redis-server", port));
    assert_eq!(error_replies, 10);
    assert_eq!(server.errors, error_replies, "redis error replies");
    assert_eq!(server.count, processed + 3 - 1, "redis commands (+3 unknown): {bench}");
    assert_eq!(server.client_errors, 0);

    // Routes are command names; redis-benchmark's 2000 of each.
    let by_cmd = routes(&records, server_of("redis-server", port));
    let count = |c: &str| by_cmd.get(c).map_or(0, |t| t.count);
    assert_eq!(count("SET"), 30 + 2000, "{by_cmd:?}");
    assert_eq!(count("GET"), 20 + 2000);
    assert_eq!(count("LPUSH"), 5 + 2000);
    assert_eq!(by_cmd["LPUSH"].errors, 5);
    assert_eq!(by_cmd["NOSUCHCOMMAND"].errors, 3);
    assert_eq!(by_cmd["INCR"].errors, 2);
    assert_eq!(by_cmd["HSET"], Totals { count: 4, ..Totals::default() });
    assert_eq!(count("CONFIG"), 1, "{by_cmd:?}");

    // The clients agree: redis-cli's 64 commands, 10 errors, and the
    // COMMAND DOCS it sends first (as MONITOR shows). The INFO calls ran
    // before the agent started and after it stopped.
    let cli = |r: &Value| r["comm"] == "redis-cli" && r["role"] == "client" && r["port"] == port;
    let t = sum(&records, "endpoint", "redis", cli);
    let cli_cmds = routes(&records, cli);
    assert_eq!(cli_cmds["COMMAND"].count, 1, "{cli_cmds:?}");
    assert_eq!((t.count, t.errors), (64 + 1, 10), "redis-cli's side");
    assert_eq!(cli_cmds["LPUSH"], by_cmd["LPUSH"].clone().minus(2000));
}

/// A redis-server on a free loopback port, without persistence; stopped
/// (SIGTERM) when dropped.
fn redis() -> (Daemon, u16) {
    let port = free_port();
    let daemon = Daemon::spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null()),
        libc::SIGTERM,
    );
    wait_listening(port);
    (daemon, port)
}

/// Under sustained load at the agent's defaults (1% budget; 2 s intervals
/// to see many of them), the budget sheds everything but requests: every
/// request redis-server answered is counted, through the whole run, with
/// its latency; the overhead alert says what went, and a cost that stays
/// over budget with everything shed is said as the residual floor.
#[test]
fn requests_stay_exact_under_sustained_load_at_defaults() {
    require_bpf!();
    let (_redis, port) = redis();
    let before = redis_info(port, "stats");
    let mut agent = probe_tests::Agent::start(&["--interval", "2s"]).unwrap();
    // Let a quiet interval pass: the first one's cost includes start-up.
    agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    // 8 connections, one GET each at a time: about 100k/s here, 20 s.
    let started = Instant::now();
    let bench = run(Command::new("redis-benchmark").args([
        "-p",
        &port.to_string(),
        "-n",
        "2000000",
        "-c",
        "8",
        "-t",
        "get",
        "-q",
    ]));
    let loaded_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(2500));
    let records = agent.stop().unwrap();
    let after = redis_info(port, "stats");
    let stat = |m: &BTreeMap<String, String>, k: &str| m[k].parse::<u64>().unwrap();
    // Redis's count, less the INFO that asked; redis-benchmark's two
    // pipelined CONFIG GET are one request (see the test above).
    let truth =
        stat(&after, "total_commands_processed") - stat(&before, "total_commands_processed") - 2;
    let server = sum(&records, "endpoint", "redis", server_of("redis-server", port));
    let last = bench.rsplit('\r').next().unwrap_or_default().trim();
    eprintln!("redis-benchmark {loaded_s:.1} s: {last}");

    let agents: Vec<&Value> = records.iter().filter(|r| r["type"] == "agent").collect();
    for a in &agents {
        let sh = &a["shedding"];
        let served: u64 = records
            .iter()
            .filter(|r| r["type"] == "endpoint" && r["ts"] == a["ts"])
            .filter(|r| server_of("redis-server", port)(r))
            .map(|r| r["requests"]["count"].as_u64().unwrap())
            .sum();
        eprintln!(
            "{} cost {}% every {} detail_off {} probes_off {} residual {} requests {served}",
            a["ts"],
            sh["cost_pct"],
            sh["latency_sample_every"],
            sh["detail_off"],
            sh["probes_off"],
            sh["residual_pct"]
        );
        assert_eq!(a["kpis"]["tcp"]["available"], true, "request KPIs are never switched off");
    }
    assert_eq!(server.count, truth, "every request counted through the load");
    assert_eq!(server.errors, 0);

    // Over budget, the agent shed, and said what and that requests stay.
    assert!(
        agents.iter().any(|a| a["shedding"]["latency_sample_every"].as_u64().unwrap() > 1),
        "about 40k requests/s on 2 CPUs puts the agent over a 1% budget"
    );
    let said: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "alert" && r["rule"] == "overhead-budget")
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(said.iter().any(|m| m.contains("requests are always measured")), "{said:?}");
    // Latency is still reported in every interval the server answered.
    for e in
        records.iter().filter(|r| r["type"] == "endpoint" && server_of("redis-server", port)(r))
    {
        let req = &e["requests"];
        if req["count"].as_u64().unwrap() > 0 {
            assert!(req["latency_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{e}");
        }
    }
    // With everything shed, either the cost fell within budget or the
    // agent said the residual floor it cannot go under, as alert and field.
    let floored: Vec<&&Value> =
        agents.iter().filter(|a| !a["shedding"]["residual_pct"].is_null()).collect();
    for a in &floored {
        let sh = &a["shedding"];
        assert_eq!(sh["residual_pct"], sh["cost_pct"]);
        assert!(sh["cost_pct"].as_f64().unwrap() > sh["budget_pct"].as_f64().unwrap());
        assert_eq!(sh["detail_off"], serde_json::json!(["syscalls", "tcp"]), "{sh}");
        assert_eq!(sh["probes_off"], serde_json::json!(["syscalls", "runq_latency"]), "{sh}");
        assert_eq!(a["kpis"]["syscalls"]["available"], false, "{a}");
    }
    let floor_alert = records.iter().find(|r| {
        r["type"] == "alert" && r["rule"] == "overhead-floor" && r["level"] == "investigate"
    });
    match floor_alert {
        Some(f) => {
            assert!(!floored.is_empty(), "the agent record says the residual too");
            assert!(f["message"].as_str().unwrap().contains("residual cost"), "{f}");
        }
        None => {
            let full = agents
                .iter()
                .find(|a| a["shedding"]["detail_off"] == serde_json::json!(["syscalls", "tcp"]));
            assert!(
                floored.is_empty()
                    && agents.iter().any(|a| a["shedding"]["cost_pct"].as_f64().unwrap()
                        <= a["shedding"]["budget_pct"].as_f64().unwrap()),
                "no floor said, so the budget was kept: {full:?}"
            );
        }
    }
}

// --- PostgreSQL -----------------------------------------------------------

/// The newest installed PostgreSQL's programs.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL (scripts/setup.sh installs it)")
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort();
    versions.last().unwrap().join("bin").join(name)
}

/// A command run as the `postgres` user (no intermediate process: the
/// server is our child, and gets our signals).
fn as_postgres(program: PathBuf) -> Command {
    use std::os::unix::process::CommandExt as _;
    let id = |flag: &str| run(Command::new("id").args([flag, "postgres"])).trim().parse().unwrap();
    let mut cmd = Command::new(program);
    cmd.uid(id("-u")).gid(id("-g")).env("HOME", "/tmp").current_dir("/tmp");
    cmd
}

/// A PostgreSQL cluster in a fresh folder, run as the `postgres` user,
/// listening on a loopback port with trust authentication, logging every
/// statement it runs to `DIR/server.log` (see [`pg_log`]).
fn postgres(dir: &Path) -> (Daemon, u16) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir));
    run(as_postgres(pg_bin("initdb")).args(["-D"]).arg(&data).args([
        "--auth=trust",
        "-U",
        "postgres",
        "--no-sync",
    ]));
    let port = free_port();
    let d = Daemon::spawn(
        as_postgres(pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "log_statement=all", "-c", "log_line_prefix=%a|%p|%e|"])
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap()),
        libc::SIGINT,
    );
    wait_listening(port);
    (d, port)
}

/// PostgreSQL's errors by application and SQLSTATE class (the first two
/// characters of `%e` on its ERROR lines).
fn pg_error_classes(dir: &Path, from: usize) -> BTreeMap<String, BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in text[from..].lines() {
        let f: Vec<&str> = line.splitn(4, '|').collect();
        if f.len() == 4 && f[3].starts_with("ERROR:") {
            *out.entry(f[0].to_string()).or_default().entry(f[2][..2].to_string()).or_default() +=
                1;
        }
    }
    out
}

/// PostgreSQL's own count, from its statement log past `from` (bytes):
/// (statements, errors) per application name. A statement is a logged
/// simple query or execute, or an error logged with no statement before
/// it (a syntax error fails before it could be logged).
fn pg_log(dir: &Path, from: usize) -> BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap();
    let mut by_app: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut logged: BTreeMap<String, bool> = BTreeMap::new();
    for line in text[from..].lines() {
        let mut f = line.splitn(4, '|');
        let (Some(app), Some(pid), Some(_), Some(msg)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let t = by_app.entry(app.to_string()).or_default();
        let stmt = logged.entry(pid.to_string()).or_default();
        if msg.starts_with("LOG:  statement:") || msg.starts_with("LOG:  execute") {
            t.0 += 1;
            *stmt = true;
        } else if msg.starts_with("ERROR:") {
            t.0 += u64::from(!*stmt);
            t.1 += 1;
            *stmt = false;
        } else if !msg.starts_with("DETAIL:") && !msg.starts_with("STATEMENT:") {
            *stmt = false;
        }
    }
    by_app
}

#[test]
fn postgres_queries_and_error_responses_match_the_server_log() {
    require_bpf!();
    let dir = tempdir("req-pg");
    let (pg, port) = postgres(&dir);
    let p = port.to_string();
    let conn = ["-h", "127.0.0.1", "-p", &p, "-U", "postgres"];
    run(Command::new(pg_bin("pgbench")).args(conn).args(["-i", "-q", "postgres"]));
    let agent = agent(&["postgres", "psql", "pgbench"]);
    let from = std::fs::metadata(dir.join("server.log")).unwrap().len() as usize;

    // psql, one statement per query message; 7 of them fail.
    let mut sql = String::new();
    sql.push_str("CREATE TABLE t (a int);\n");
    sql.push_str(&"SELECT 1;\n".repeat(20));
    sql.push_str(&"SELECT 1/0;\n".repeat(3));
    sql.push_str(&"SELEC broken;\n".repeat(2));
    sql.push_str(&"INSERT INTO t VALUES (1);\n".repeat(5));
    sql.push_str(&"INSERT INTO t VALUES ('x');\n".repeat(2));
    let file = dir.join("q.sql");
    std::fs::write(&file, sql).unwrap();
    let out = Command::new(pg_bin("psql"))
        .args(conn)
        .args(["-d", "postgres", "-q", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let psql_errors = stderr.lines().filter(|l| l.contains("ERROR:")).count() as u64;
    assert_eq!(psql_errors, 7, "psql's own errors:\n{stderr}");

    // pgbench: the select-only script, in the simple and extended protocols.
    let mut processed = 0;
    for mode in ["simple", "extended"] {
        let out = run(Command::new(pg_bin("pgbench"))
            .args(conn)
            .args(["-n", "-S", "-M", mode, "-c", "2", "-t", "150", "postgres"]));
        let line = out
            .lines()
            .find(|l| l.starts_with("number of transactions actually processed"))
            .unwrap();
        let done = line.rsplit(": ").next().unwrap().split('/').next().unwrap();
        processed += done.parse::<u64>().unwrap();
    }
    assert_eq!(processed, 600);
    std::thread::sleep(Duration::from_millis(300));
    let records = agent.stop().unwrap();
    drop(pg);
    let truth = pg_log(&dir, from);
    eprintln!("PostgreSQL's log: {truth:?}");
    assert_eq!(truth["psql"], (33, 7), "the server's log agrees with psql");
    // pgbench's transactions, and the queries it makes before each run.
    assert!(truth["pgbench"].0 > processed && truth["pgbench"].1 == 0, "{truth:?}");

    // Each client's side; start-up, the SSL question and authentication
    // are not requests.
    let side = |comm: &str| {
        let mut t = Totals::default();
        for r in records.iter().filter(|r| {
            r["type"] == "endpoint"
                && r["comm"] == comm
                && r["role"] == "client"
                && r["port"] == port
        }) {
            assert_eq!(r["protocol"], "postgres", "{r}");
            t.add(&r["requests"]);
        }
        (t.count, t.errors)
    };
    assert_eq!(side("psql"), truth["psql"]);
    assert_eq!(side("pgbench"), truth["pgbench"]);
    // The server's backends (one process per connection) saw them all.
    let server = sum(&records, "endpoint", "postgres", server_of("postgres", port));
    let all = truth.values().fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1));
    assert_eq!((server.count, server.errors), all);
    // Routes are statements' first keywords.
    let by_kind = routes(&records, server_of("postgres", port));
    let count = |k: &str| by_kind.get(k).map_or(0, |t| t.count);
    assert_eq!((count("CREATE"), count("INSERT"), count("SELEC")), (1, 7, 2), "{by_kind:?}");
    assert_eq!(by_kind["INSERT"].errors, 2);
    // Errors by SQLSTATE class, as the server logged them: division by
    // zero and a bad integer (22), a syntax error (42); on both sides.
    let classes = pg_error_classes(&dir, from);
    assert_eq!(classes["psql"], BTreeMap::from([("22".into(), 5), ("42".into(), 2)]));
    let by_class = |pick: &dyn Fn(&Value) -> bool| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for r in records.iter().filter(|r| r["type"] == "endpoint" && pick(r)) {
            for (c, n) in r["requests"]["sqlstate_classes"].as_object().unwrap() {
                *m.entry(c.clone()).or_default() += n.as_u64().unwrap();
            }
        }
        m
    };
    let psql = |r: &Value| r["comm"] == "psql" && r["role"] == "client" && r["port"] == port;
    assert_eq!(by_class(&psql), classes["psql"], "psql's side");
    assert_eq!(by_class(&server_of("postgres", port)), classes["psql"], "the server's side");
    assert_eq!(count("SELECT"), all.0 - 10, "{by_kind:?}");
}

// --- Hostile input and route normalization --------------------------------

/// A xorshift generator: the same paths on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn from(&mut self, chars: &[u8], len: usize) -> String {
        (0..len).map(|_| chars[self.below(chars.len() as u64) as usize] as char).collect()
    }
}

/// A random path segment of one of seven outcomes: an identifier of a
/// random kind (a number, hex with a digit, a UUID, a long token with a
/// digit), or one of the cases the rule keeps (hex without a digit, short
/// mixed tokens, 20+ characters without a digit, an empty segment).
fn segment(rng: &mut Rng) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let with_digit = |mut s: String, rng: &mut Rng| {
        let at = rng.below(s.len() as u64) as usize;
        s.replace_range(at..=at, &rng.below(10).to_string());
        s
    };
    match rng.below(7) {
        0 => match rng.below(4) {
            0 => rng.below(1_000_000_000).to_string(),
            1 => {
                let len = 8 + rng.below(10) as usize;
                let h = rng.from(HEX, len);
                with_digit(h, rng)
            }
            2 => format!("{}-{}-{}", rng.from(HEX, 8), rng.from(HEX, 4), rng.from(HEX, 12)),
            _ => {
                let len = 20 + rng.below(6) as usize;
                let t = rng.from(ALNUM, len);
                with_digit(t, rng)
            }
        },
        1 => "deadbeef-cafe".into(),
        2 => "abc1234".into(),
        3 => "x1".into(),
        4 => "abcdefghijklmnopqrstuvwxyz".into(),
        5 => "caf%C3%A9~o'k".into(),
        _ => String::new(),
    }
}

#[test]
fn route_names_follow_the_reference_rule_on_random_paths() {
    require_bpf!();
    let dir = tempdir("req-fuzz");
    let (_nginx, port) = nginx(&dir, "location / { return 200 \"ok\\n\"; }");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut paths = Vec::new();
    let mut want: BTreeMap<String, Totals> = BTreeMap::new();
    for _ in 0..400 {
        // /{word}/{segment}[/{id} or /edit]: 2 x 7 x 3 routes at most.
        let mut p = format!("/{}/{}", ["cart", "v2"][rng.below(2) as usize], segment(&mut rng));
        match rng.below(3) {
            0 => p.push_str(&format!("/{}", rng.below(100_000))),
            1 => p.push_str("/edit"),
            _ => {}
        }
        match rng.below(4) {
            0 => p.push_str(&format!("?q={}", rng.below(100))),
            1 => p.push_str("#frag"),
            _ => {}
        }
        want.entry(format!("GET {}", reference_route("GET", &p))).or_default().count += 1;
        paths.push(p);
    }
    // Long paths: cut at 64 bytes, and beyond what the kernel peeks at.
    for n in [60, 70, 130] {
        let p = format!("/{}/{}", "l".repeat(n), 42);
        want.entry(format!("GET {}", reference_route("GET", &p))).or_default().count += 1;
        paths.push(p);
    }
    for t in want.values_mut() {
        t.status[1] = t.count;
    }
    // Every route gets a record of its own below the agent's bound of 64.
    assert!(want.len() < 64, "{} routes: make the generator narrower", want.len());
    let agent = agent(&["nginx"]);
    let mut c = Http::connect(port);
    for p in &paths {
        assert_eq!(c.call("GET", p, b"").0, 200, "{p}");
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let records = agent.stop().unwrap();
    assert_eq!(access_log(&dir).len(), paths.len());
    assert_eq!(routes(&records, server_of("nginx", port)), want, "server routes");
    let me = std::process::id();
    assert_eq!(routes(&records, client_of(me, port)), want, "client routes");
}

#[test]
fn hostile_bytes_are_counted_not_fatal() {
    require_bpf!();
    let dir = tempdir("req-hostile");
    let (_nginx, port) = nginx(&dir, "location / { return 200 \"ok\\n\"; }");
    // A line server: one answer per line received.
    let raw = Workload::start(&["tcp-server", "--name", "pw-raw", "--delay-ms", "1"]).unwrap();
    let raw_port: u16 = raw.ready[0].parse().unwrap();
    let agent = agent(&["nginx", "pw-raw"]);
    let send = |port: u16, bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(bytes).unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    };
    let mut rng = Rng(7);
    let junk = |rng: &mut Rng| -> Vec<u8> {
        let len = 1 + rng.below(300) as usize;
        (0..len).map(|_| rng.next() as u8).filter(|&c| c != b'\n').collect()
    };
    // nginx: request lines of garbage after a method (it answers 400).
    for _ in 0..10 {
        let mut b = b"GET /".to_vec();
        b.extend(junk(&mut rng).into_iter().filter(|&c| c != b'\r'));
        b.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
        send(port, &b);
    }
    // The line server: random bytes, some dressed as a protocol's start (a
    // RESP array with a broken length; a PostgreSQL SSL request, which is
    // not a request and is not counted).
    let mut raw_requests = 0;
    for i in 0..30 {
        let mut b = match i % 3 {
            0 => b"*9\r$99999999999999999999\r".to_vec(),
            1 => vec![0, 0, 0, 8, 4, 210, 22, 47],
            _ => Vec::new(),
        };
        raw_requests += u64::from(i % 3 != 1);
        b.extend(junk(&mut rng));
        b.push(b'\n');
        send(raw_port, &b);
    }
    // A valid request whose route holds quotes, backslashes and bytes that
    // are not UTF-8: the record must still be valid JSON.
    let mut c = Http::connect(port);
    assert_eq!(c.call("GET", "/a\"b\\c/\u{e9}t\u{e9}", b"").0, 200);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    // stop() checks a clean exit and every record against the schema.
    let records = agent.stop().unwrap();
    let truth = Totals::http(access_log(&dir).iter().map(|l| l.0));
    assert_eq!((truth.count, truth.client_errors), (11, 10));
    assert_eq!(sum(&records, "endpoint", "http1", server_of("nginx", port)), truth);
    let odd = routes(&records, server_of("nginx", port));
    assert!(odd.keys().any(|k| k.starts_with("GET /a\"b\\c/")), "{odd:?}");
    let mut raw_seen = Totals::default();
    for r in records.iter().filter(|r| r["type"] == "endpoint" && r["pid"] == raw.pid) {
        raw_seen.add(&r["requests"]);
    }
    assert_eq!((raw_seen.count, raw_seen.errors), (raw_requests, 0), "the line server");
}
