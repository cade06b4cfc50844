//! Sinks: where the records go. One or several at once (`--output`):
//! stdout, a rotated file, TCP, a Unix stream socket, HTTP(S) POST of JSON
//! lines, and OTLP/HTTP metrics (`otlp.rs` encodes one export request per
//! interval from the typed records; its queue holds those requests).
//!
//! Each sink has its own bounded queue and writer thread, so a sink that
//! hangs, resets or fills its disk never stalls the measuring, never grows
//! the agent's memory past the bound, and never holds up the other sinks.
//! The queue holds whole lines: a record is written whole or not at all,
//! lines keep their order, and a line leaves the queue only once delivered
//! (a sink that comes back gets what is still queued, once). What a full
//! queue or a refusing sink costs is counted by reason and reported in the
//! `agent` record.

mod file;
mod http;
mod otlp;
mod stdout;
mod stream;

use std::{
    collections::VecDeque,
    io,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;

use crate::records::{Kind, Record};

/// Errors of the sink stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Every sink's reader went away (stdout closed): a normal end.
    #[error("every output closed")]
    Closed,
}

/// What to do with a new record when a sink's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Wait for room, at most one interval, then drop the new records.
    Block,
    /// Drop the oldest queued records to make room.
    DropOldest,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropOldest => "drop_oldest",
        }
    }
}

/// Where a sink writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Stdout,
    /// Appended; rotated to `PATH.1` .. `PATH.keep` past `rotate_bytes`.
    File {
        path: PathBuf,
        rotate_bytes: u64,
        keep: u32,
        /// Permission bits of the file (default 0600).
        mode: u32,
    },
    /// Newline-delimited JSON over TCP (`host:port`).
    Tcp(String),
    /// Newline-delimited JSON over a Unix stream socket, delivered only to
    /// a peer running as `peer_uid` (default root: the socket's path could
    /// be bound first by any user who may create it).
    Unix {
        path: PathBuf,
        peer_uid: u32,
    },
    /// Records POSTed to an HTTP(S) endpoint: NDJSON batches, or one JSON
    /// record a request.
    Http(HttpTarget),
    /// OTLP/HTTP protobuf metrics, one export request per interval.
    Otlp(HttpTarget),
}

/// A value from the command line or configuration that must never be shown
/// (logs, the `agent` record, error messages): its `Debug` says so.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How an HTTP sink lays out its requests' bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `application/x-ndjson` batches of up to 1 MiB.
    Ndjson,
    /// One record per request, `application/json` (an alert webhook).
    Json,
}

/// Credentials read from a file (never from the spec, which is shown), on
/// the first request, after every failure and on SIGHUP: a rotated token or
/// CA is picked up without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <the file's content, trimmed>`.
    BearerFile(PathBuf),
    /// `Authorization: Basic`, from a file holding `user:password`.
    BasicFile(PathBuf),
}

/// An HTTP(S) endpoint and how to talk to it.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpTarget {
    /// `http(s)://host[:port]/path`: no credentials, no query.
    pub url: String,
    pub gzip: bool,
    /// Record layout (HTTP sinks; an OTLP sink sends protobuf).
    pub body: Body,
    /// PEM file of the CAs to trust instead of the system's (`ca=`).
    pub ca: Option<PathBuf>,
    pub auth: Option<Auth>,
    /// Extra headers (`header=Name:Value`), values never shown.
    pub headers: Vec<(String, Secret)>,
}

/// One `--output`: a target and its queue.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    /// The spec as given, with header values redacted: it names the sink in
    /// the `agent` record, the logs and the metrics.
    pub name: String,
    pub target: Target,
    pub policy: Policy,
    /// Most bytes queued for this sink (lines waiting and being written).
    pub queue_bytes: usize,
    /// The record types it takes (`types=`); `None`: every type (JSON
    /// sinks) or every type with metrics but syscall (OTLP).
    pub types: Option<Vec<Kind>>,
}

impl OutputSpec {
    /// Whether this sink takes records of `kind`.
    pub fn takes(&self, kind: Kind) -> bool {
        match (&self.types, &self.target) {
            (Some(types), _) => types.contains(&kind),
            (None, Target::Otlp(_)) => OTLP_DEFAULT_TYPES.contains(&kind),
            (None, _) => true,
        }
    }
}

/// The record types an OTLP sink turns into metrics.
pub const OTLP_TYPES: [Kind; 6] =
    [Kind::Host, Kind::Container, Kind::Process, Kind::Endpoint, Kind::Syscall, Kind::Agent];
/// Those it takes by default: per system call series are left out, as the
/// Prometheus endpoint leaves them out (a process's dozens of system calls,
/// each with a histogram); `types=` adds them.
const OTLP_DEFAULT_TYPES: [Kind; 5] =
    [Kind::Host, Kind::Container, Kind::Process, Kind::Endpoint, Kind::Agent];

/// The spec as it may be shown: `header=` values replaced.
fn redact(spec: &str) -> String {
    let Some((base, query)) = spec.split_once('?') else { return spec.to_string() };
    let opts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("header", v)) => {
                format!("header={}:<redacted>", v.split_once(':').map_or("", |(n, _)| n))
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", opts.join("&"))
}

/// Header names an option may not set: the sink sets them itself.
const RESERVED_HEADERS: [&str; 5] =
    ["host", "content-length", "content-type", "content-encoding", "transfer-encoding"];

/// Checks `http(s)://authority/path` and returns the URL to use (with the
/// default path if none).
fn http_url(scheme: &str, rest: &str, default_path: &str) -> Result<String, String> {
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err("credentials in the URL would be shown in the agent record and the logs: \
                    put them in a file (basic_file=PATH, bearer_file=PATH)"
            .into());
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        None if !authority.is_empty() => {}
        _ => return Err(format!("expected {scheme}://HOST[:PORT]/PATH")),
    }
    if authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err("the host has spaces or control characters".into());
    }
    let path = if path.is_empty() { default_path } else { path };
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#') {
        return Err("the path has spaces, control characters or a fragment".into());
    }
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Default bound of each sink's queue.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

/// Parses a size: bytes, or with a K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl std::str::FromStr for OutputSpec {
    type Err = String;

    /// `stdout`, `file:PATH`, `tcp://HOST:PORT`, `unix:PATH`,
    /// `http(s)://HOST[:PORT]/PATH` or `otlp+http(s)://HOST[:PORT]/PATH`,
    /// optionally followed by `?key=value&...` with `policy` (block,
    /// drop_oldest), `queue_bytes`, `types` (record types, comma-separated),
    /// for files `rotate_bytes`, `keep` and `mode`, for Unix sockets
    /// `peer_uid`, for HTTP and OTLP `gzip`, `ca`, `bearer_file`,
    /// `basic_file` and `header` (repeatable), for HTTP `body` (ndjson,
    /// json). Errors show the spec with header values redacted.
    fn from_str(spec: &str) -> Result<Self, String> {
        let name = redact(spec);
        let bad = |why: String| Err(format!("--output {name:?}: {why}"));
        let (base, query) = spec.split_once('?').unwrap_or((spec, ""));
        let mut policy = Policy::DropOldest;
        let mut queue_bytes = DEFAULT_QUEUE_BYTES as u64;
        let mut rotate_bytes = 100u64 << 20;
        let mut keep = 5u32;
        let mut gzip = false;
        let mut mode = 0o600;
        let mut peer_uid = 0;
        let mut types: Option<Vec<Kind>> = None;
        let mut body = Body::Ndjson;
        let mut ca = None;
        let mut auth = None;
        let mut headers = Vec::new();
        // Options that only an HTTP or OTLP sink takes, and whether a JSON body may be chosen.
        let mut http_only = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let Some((k, v)) = kv.split_once('=') else {
                return bad(format!("option {kv:?} is not key=value"));
            };
            let size = |min: u64, max: u64| match parse_size(v) {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "--output {name:?}: {k} must be a size from {min} to {max} bytes (e.g. 8M), got {v:?}"
                )),
            };
            let file = || -> Result<PathBuf, String> {
                if v.is_empty() {
                    return Err(format!("--output {name:?}: {k} needs a file path"));
                }
                Ok(PathBuf::from(v))
            };
            match k {
                "policy" => {
                    policy = match v {
                        "block" => Policy::Block,
                        "drop_oldest" => Policy::DropOldest,
                        _ => return bad(format!("policy must be block or drop_oldest, got {v:?}")),
                    }
                }
                "queue_bytes" => queue_bytes = size(64 << 10, 1 << 30)?,
                "rotate_bytes" => rotate_bytes = size(4 << 10, 1 << 40)?,
                "keep" => match v.parse() {
                    Ok(n) if (1..=1000).contains(&n) => keep = n,
                    _ => return bad(format!("keep must be 1 to 1000, got {v:?}")),
                },
                "mode" => match u32::from_str_radix(v, 8) {
                    // Never writable or readable by others: other users
                    // would read every process name, port and peer, or
                    // forge records.
                    Ok(m) if m & !0o740 == 0 && m & 0o600 == 0o600 => mode = m,
                    _ => {
                        return bad(format!(
                            "mode must let the owner read and write, the group at most read, \
                             others nothing (0600, 0640), got {v:?}"
                        ));
                    }
                },
                "peer_uid" => match v.parse() {
                    Ok(n) => peer_uid = n,
                    _ => return bad(format!("peer_uid must be a user id, got {v:?}")),
                },
                "gzip" => match v {
                    "true" => gzip = true,
                    "false" => gzip = false,
                    _ => return bad(format!("gzip must be true or false, got {v:?}")),
                },
                "types" => {
                    let mut list = Vec::new();
                    for t in v.split(',') {
                        match Kind::parse(t) {
                            Some(kind) if !list.contains(&kind) => list.push(kind),
                            Some(_) => {}
                            None => {
                                return bad(format!(
                                    "types: {t:?} is not a record type (status, host, container, \
                                     process, endpoint, syscall, agent, alert)"
                                ));
                            }
                        }
                    }
                    types = Some(list);
                }
                "body" => {
                    http_only.push(k);
                    body = match v {
                        "ndjson" => Body::Ndjson,
                        "json" => Body::Json,
                        _ => return bad(format!("body must be ndjson or json, got {v:?}")),
                    }
                }
                "ca" => {
                    http_only.push(k);
                    ca = Some(file()?);
                }
                "bearer_file" | "basic_file" => {
                    http_only.push(k);
                    if auth.is_some() {
                        return bad("one of bearer_file and basic_file, once".into());
                    }
                    auth = Some(if k == "bearer_file" {
                        Auth::BearerFile(file()?)
                    } else {
                        Auth::BasicFile(file()?)
                    });
                }
                "header" => {
                    http_only.push(k);
                    let Some((hname, hvalue)) = v.split_once(':') else {
                        return bad("header must be Name:Value".into());
                    };
                    let token =
                        |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                    if hname.is_empty() || !hname.bytes().all(token) {
                        return bad(format!("header name {hname:?} is not an HTTP token"));
                    }
                    if RESERVED_HEADERS.contains(&hname.to_ascii_lowercase().as_str()) {
                        return bad(format!("header {hname} is set by the sink itself"));
                    }
                    if hvalue.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                        return bad(format!("header {hname}: the value has control characters"));
                    }
                    headers.push((hname.to_string(), Secret(hvalue.trim().to_string())));
                }
                _ => return bad(format!("unknown option {k:?}")),
            }
        }
        let http = |scheme: &str, rest: &str, default_path: &str| -> Result<HttpTarget, String> {
            let url = http_url(scheme, rest, default_path)
                .map_err(|why| format!("--output {name:?}: {why}"))?;
            if ca.is_some() && scheme == "http" {
                return Err(format!("--output {name:?}: ca= is for https"));
            }
            Ok(HttpTarget {
                url,
                gzip,
                body,
                ca: ca.clone(),
                auth: auth.clone(),
                headers: headers.clone(),
            })
        };
        let target = if base == "stdout" || base == "-" {
            Target::Stdout
        } else if let Some(path) = base.strip_prefix("file:") {
            if path.is_empty() {
                return bad("no file path".into());
            }
            Target::File { path: path.into(), rotate_bytes, keep, mode }
        } else if let Some(addr) = base.strip_prefix("tcp://") {
            match addr.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => return bad("expected tcp://HOST:PORT".into()),
            }
            Target::Tcp(addr.into())
        } else if let Some(path) = base.strip_prefix("unix:") {
            if path.is_empty() {
                return bad("no socket path".into());
            }
            Target::Unix { path: path.into(), peer_uid }
        } else if let Some(rest) = base.strip_prefix("http://") {
            Target::Http(http("http", rest, "/")?)
        } else if let Some(rest) = base.strip_prefix("https://") {
            Target::Http(http("https", rest, "/")?)
        } else if let Some(rest) = base.strip_prefix("otlp+http://") {
            Target::Otlp(http("http", rest, "/v1/metrics")?)
        } else if let Some(rest) = base.strip_prefix("otlp+https://") {
            Target::Otlp(http("https", rest, "/v1/metrics")?)
        } else {
            return bad("expected stdout, file:PATH, tcp://HOST:PORT, unix:PATH, \
                        http(s)://HOST:PORT/PATH or otlp+http(s)://HOST:PORT/v1/metrics"
                .into());
        };
        match &target {
            Target::Http(_) => {}
            Target::Otlp(_) => {
                if http_only.contains(&"body") {
                    return bad("body= is for http sinks: an otlp sink sends protobuf".into());
                }
                if let Some(t) = types.iter().flatten().find(|t| !OTLP_TYPES.contains(t)) {
                    return bad(format!(
                        "types: an otlp sink exports the metrics of host, container, process, \
                         endpoint, syscall and agent records, not {}",
                        t.name()
                    ));
                }
            }
            _ => {
                if let Some(k) = http_only.first() {
                    return bad(format!("{k}= is for http and otlp sinks"));
                }
            }
        }
        if types.as_ref().is_some_and(Vec::is_empty) {
            return bad("types: no record type".into());
        }
        Ok(OutputSpec { name, target, policy, queue_bytes: queue_bytes as usize, types })
    }
}

/// Why records were dropped, cumulative per sink. A sink counts what its
/// queue holds: records (lines), or for an OTLP sink export requests (one
/// per interval).
#[derive(Default)]
pub struct Counters {
    /// Lines delivered.
    pub sent: AtomicU64,
    /// Lines dropped because the queue was full.
    pub queue_full: AtomicU64,
    /// Lines longer than the whole queue.
    pub too_large: AtomicU64,
    /// Lines the sink refused for good (HTTP 4xx but 408 and 429).
    pub rejected: AtomicU64,
    /// Lines written to a connection that failed before the peer
    /// acknowledged them: they may or may not have arrived.
    pub unconfirmed: AtomicU64,
    /// Lines queued when the sink closed for good (stdout's reader left).
    pub closed: AtomicU64,
    /// Connections or files opened again after a failure.
    pub reconnects: AtomicU64,
    /// Failed attempts to deliver (each retried after a back-off).
    pub errors: AtomicU64,
}

/// A way of delivering lines.
pub(crate) trait Transport: Send {
    /// Delivers lines from the front of `pending`, removing each one (and
    /// counting it in `c.sent`) once it is delivered. On an error the rest
    /// stays in `pending` for a retry after a back-off.
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        stop: &AtomicBool,
    ) -> io::Result<()>;

    /// Whether `e` means nothing will ever be delivered again (stdout's
    /// reader left), rather than a fault to retry.
    fn closed_for_good(&self, _e: &io::Error) -> bool {
        false
    }

    /// After an error: how long the peer asked to be left alone
    /// (`Retry-After`), instead of the sink's own back-off.
    fn retry_after(&mut self) -> Option<Duration> {
        None
    }

    /// SIGHUP: read credentials and other files again on the next try.
    fn reload(&mut self) {}
}

/// Most bytes a writer takes from its queue at once. A quarter of the
/// queue at most: what the writer holds cannot be dropped, so the rest of
/// the queue is where `drop_oldest` finds the oldest records.
const BATCH_BYTES: usize = 1 << 20;
/// Back-off after a failure: doubles from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Longest wait a peer's `Retry-After` may impose: the queue keeps filling
/// meanwhile (and drops by its policy), so a peer asking for hours gets
/// asked again sooner.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

struct Queue {
    lines: VecDeque<Bytes>,
    /// Bytes in `lines` plus those the writer holds.
    bytes: usize,
    /// Lines the writer holds (taken, not yet delivered).
    held: usize,
}

struct Shared {
    q: Mutex<Queue>,
    /// Signalled when lines are queued.
    data: Condvar,
    /// Signalled when the writer takes lines (room in the queue).
    room: Condvar,
    c: Counters,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    closed: AtomicBool,
    stop: AtomicBool,
    /// SIGHUP: the transport reloads its files and retries at once.
    reload: AtomicBool,
    /// Most bytes the writer takes at once.
    batch_bytes: usize,
}

impl Shared {
    fn new(queue_bytes: usize) -> Self {
        Shared {
            batch_bytes: (queue_bytes / 4).clamp(1, BATCH_BYTES),
            q: Mutex::new(Queue { lines: VecDeque::new(), bytes: 0, held: 0 }),
            data: Condvar::new(),
            room: Condvar::new(),
            c: Counters::default(),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            reload: AtomicBool::new(false),
        }
    }
}

/// One sink: its queue and writer thread.
struct Sink {
    spec: OutputSpec,
    shared: Arc<Shared>,
    /// An OTLP sink's exporter: the typed records of an interval in, one
    /// encoded export request out.
    exporter: Option<otlp::Exporter>,
    /// Counters at the previous report, for per-interval figures.
    reported: Reported,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default, Clone, Copy)]
struct Reported {
    sent: u64,
    queue_full: u64,
    too_large: u64,
    rejected: u64,
    unconfirmed: u64,
    closed: u64,
    reconnects: u64,
    errors: u64,
}

/// One sink's state for the `agent` record: figures since the previous one.
#[derive(Clone, Debug, Serialize)]
pub struct SinkState {
    pub name: String,
    pub kind: &'static str,
    pub policy: &'static str,
    pub sent_records: u64,
    /// Records dropped, by reason: `queue_full`, `too_large`, `rejected`
    /// (the sink refused them: HTTP 4xx), `unconfirmed` (written to a TCP
    /// connection that failed before the peer acknowledged them: perhaps
    /// delivered, never sent twice), `closed` (the reader left).
    pub dropped_records: DroppedRecords,
    pub queued_records: u64,
    pub queued_bytes: u64,
    pub queue_max_bytes: u64,
    /// Whether the last attempt to deliver failed.
    pub failing: bool,
    /// Failed attempts this interval (each retried after a back-off).
    pub errors: u64,
    pub reconnects: u64,
    /// The last failure, while failing.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DroppedRecords {
    pub queue_full: u64,
    pub too_large: u64,
    pub rejected: u64,
    pub unconfirmed: u64,
    pub closed: u64,
}

impl DroppedRecords {
    /// Each reason by its field name.
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("queue_full", self.queue_full),
            ("too_large", self.too_large),
            ("rejected", self.rejected),
            ("unconfirmed", self.unconfirmed),
            ("closed", self.closed),
        ]
    }

    pub fn total(&self) -> u64 {
        self.queue_full + self.too_large + self.rejected + self.unconfirmed + self.closed
    }
}

/// All the sinks of a run.
pub struct Sinks {
    sinks: Vec<Sink>,
    /// Intervals of which some sink dropped records, since the last report.
    intervals_hit: u64,
    /// Records dropped on the way in (queue full, too large, closed) up to
    /// the end of the previous interval.
    dropped_before: u64,
}

impl Sinks {
    /// Starts a writer thread per sink. Files are opened and addresses
    /// checked lazily: a sink that cannot deliver yet retries and counts.
    pub fn start(specs: &[OutputSpec]) -> io::Result<Self> {
        let mut sinks = Vec::new();
        for spec in specs {
            let transport: Box<dyn Transport> = match &spec.target {
                Target::Stdout => Box::new(stdout::Stdout),
                Target::File { path, rotate_bytes, keep, mode } => {
                    Box::new(file::File::new(path.clone(), *rotate_bytes, *keep, *mode)?)
                }
                Target::Tcp(addr) => Box::new(stream::Stream::tcp(addr.clone())),
                Target::Unix { path, peer_uid } => {
                    Box::new(stream::Stream::unix(path.clone(), *peer_uid))
                }
                Target::Http(t) => Box::new(http::Http::new(t.clone(), http::Format::Lines)),
                Target::Otlp(t) => Box::new(http::Http::new(t.clone(), http::Format::Otlp)),
            };
            let exporter = matches!(spec.target, Target::Otlp(_)).then(otlp::Exporter::new);
            let shared = Arc::new(Shared::new(spec.queue_bytes));
            let s = shared.clone();
            let thread =
                crate::caps::spawn(format!("sink {}", sinks.len()), move || writer(transport, s))?;
            sinks.push(Sink {
                spec: spec.clone(),
                shared,
                exporter,
                reported: Reported::default(),
                thread: Some(thread),
            });
        }
        Ok(Sinks { sinks, intervals_hit: 0, dropped_before: 0 })
    }

    /// Whether some sink needs the latency groups' buckets (OTLP).
    pub fn want_buckets(&self) -> bool {
        self.sinks.iter().any(|s| s.exporter.is_some())
    }

    /// SIGHUP: every sink reads its files again (CA, token) and a failing
    /// one retries now rather than at the end of its back-off.
    pub fn reload(&self) {
        for sink in &self.sinks {
            sink.shared.reload.store(true, Ordering::Relaxed);
            sink.shared.data.notify_all();
        }
    }

    /// Hands one interval's typed records to the OTLP sinks, each of which
    /// encodes one export request and queues it (a `block` sink waits for
    /// room until `deadline`). Called before [`Sinks::send`] in the same
    /// interval: the exporter reads the records as they are, with their
    /// histogram buckets, rather than parsing the JSON lines back.
    pub fn export(&mut self, records: &[Record], deadline: Instant) {
        for sink in &mut self.sinks {
            let Some(exporter) = sink.exporter.as_mut() else { continue };
            if sink.shared.closed.load(Ordering::Relaxed) {
                continue;
            }
            let spec = &sink.spec;
            let Some(request) = exporter.encode(records.iter().filter(|r| spec.takes(r.kind())))
            else {
                continue;
            };
            sink.push(std::iter::once(Bytes::from(request)), deadline);
        }
    }

    /// Queues one interval's lines on every sink that takes lines, each
    /// line (one record, of type `kinds[i]`) only where `types=` lets it. A
    /// `block` sink waits for room until `deadline`; what does not fit is
    /// dropped and counted. Fails only when every sink has closed for good.
    pub fn send(
        &mut self,
        lines: &Bytes,
        kinds: &[Kind],
        deadline: Instant,
    ) -> Result<(), SinkError> {
        let result = self.send_all(lines, kinds, deadline);
        // Drops on the way in since the previous interval (this one's
        // export and lines, and sinks closed meanwhile).
        let dropped: u64 = self
            .sinks
            .iter()
            .map(|k| {
                k.shared.c.queue_full.load(Ordering::Relaxed)
                    + k.shared.c.too_large.load(Ordering::Relaxed)
                    + k.shared.c.closed.load(Ordering::Relaxed)
            })
            .sum();
        if dropped > self.dropped_before {
            self.intervals_hit += 1;
        }
        self.dropped_before = dropped;
        result
    }

    fn send_all(&self, lines: &Bytes, kinds: &[Kind], deadline: Instant) -> Result<(), SinkError> {
        let mut open = 0;
        for sink in &self.sinks {
            if sink.exporter.is_some() {
                // Fed by `export`; it has no lines to take.
                open += usize::from(!sink.shared.closed.load(Ordering::Relaxed));
                continue;
            }
            let mine = split_lines(lines)
                .zip(kinds.iter().copied().chain(std::iter::repeat(Kind::Status)))
                .filter(|&(_, kind)| sink.spec.takes(kind))
                .map(|(line, _)| line);
            if sink.shared.closed.load(Ordering::Relaxed) {
                sink.shared.c.closed.fetch_add(mine.count() as u64, Ordering::Relaxed);
                continue;
            }
            open += 1;
            sink.push(mine, deadline);
        }
        if open == 0 { Err(SinkError::Closed) } else { Ok(()) }
    }

    /// Intervals of which records were dropped, and each sink's figures,
    /// since the previous call.
    pub fn report(&mut self) -> (u64, Vec<SinkState>) {
        (std::mem::take(&mut self.intervals_hit), self.sinks.iter_mut().map(Sink::report).collect())
    }

    /// Waits up to `timeout` for the queues of the sinks that work to
    /// empty (at exit), then has the writers stop at a line boundary. A
    /// failing sink is not waited for.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for sink in &self.sinks {
            let mut q = sink.shared.q.lock().unwrap_or_else(|e| e.into_inner());
            while q.bytes > 0
                && !sink.shared.closed.load(Ordering::Relaxed)
                && !sink.shared.failing.load(Ordering::Relaxed)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = sink
                    .shared
                    .room
                    .wait_timeout(q, left.min(Duration::from_millis(20)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        for sink in &mut self.sinks {
            sink.shared.stop.store(true, Ordering::Relaxed);
            sink.shared.data.notify_all();
        }
        // A writer blocked in a write to a stuck reader is left behind: the
        // process is exiting. The others finish their line.
        let until = Instant::now() + Duration::from_millis(200);
        for sink in &mut self.sinks {
            while sink.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if sink.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let _ = sink.thread.take().map(|t| t.join());
            }
        }
    }
}

impl Sink {
    /// Queues items (lines, or an OTLP sink's export requests), each
    /// whole or not at all.
    fn push(&self, items: impl Iterator<Item = Bytes>, deadline: Instant) {
        let s = &self.shared;
        let max = self.spec.queue_bytes;
        let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
        for line in items {
            if line.len() > max {
                s.c.too_large.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            while q.bytes + line.len() > max {
                match self.spec.policy {
                    Policy::DropOldest => match q.lines.pop_front() {
                        Some(old) => {
                            q.bytes -= old.len();
                            s.c.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        // Only what the writer holds is left: it cannot be
                        // taken back, so the new line goes instead.
                        None => break,
                    },
                    Policy::Block => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        q = s.room.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
            if q.bytes + line.len() > max {
                s.c.queue_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.bytes += line.len();
            q.lines.push_back(line);
        }
        drop(q);
        s.data.notify_one();
    }

    fn report(&mut self) -> SinkState {
        let c = &self.shared.c;
        let now = Reported {
            sent: c.sent.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed),
            too_large: c.too_large.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            unconfirmed: c.unconfirmed.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        };
        let was = std::mem::replace(&mut self.reported, now);
        // Counters only grow; saturate all the same rather than panic.
        let d = |now: u64, was: u64| now.saturating_sub(was);
        let (queued_records, queued_bytes) = {
            let q = self.shared.q.lock().unwrap_or_else(|e| e.into_inner());
            ((q.lines.len() + q.held) as u64, q.bytes as u64)
        };
        let failing = self.shared.failing.load(Ordering::Relaxed);
        SinkState {
            name: self.spec.name.clone(),
            kind: match self.spec.target {
                Target::Stdout => "stdout",
                Target::File { .. } => "file",
                Target::Tcp(_) => "tcp",
                Target::Unix { .. } => "unix",
                Target::Http(_) => "http",
                Target::Otlp(_) => "otlp",
            },
            policy: self.spec.policy.name(),
            sent_records: d(now.sent, was.sent),
            dropped_records: DroppedRecords {
                queue_full: d(now.queue_full, was.queue_full),
                too_large: d(now.too_large, was.too_large),
                rejected: d(now.rejected, was.rejected),
                unconfirmed: d(now.unconfirmed, was.unconfirmed),
                closed: d(now.closed, was.closed),
            },
            queued_records,
            queued_bytes,
            queue_max_bytes: self.spec.queue_bytes as u64,
            failing,
            errors: d(now.errors, was.errors),
            reconnects: d(now.reconnects, was.reconnects),
            last_error: if failing {
                self.shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
            } else {
                None
            },
        }
    }
}

/// The lines of `buf`, each with its newline (the last one may lack it).
fn split_lines(buf: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= buf.len() {
            return None;
        }
        let end =
            buf[start..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| start + i + 1);
        let line = buf.slice(start..end);
        start = end;
        Some(line)
    })
}

/// Sleeps `d`, waking early when asked to stop or to reload (SIGHUP).
fn nap(d: Duration, s: &Shared) {
    let until = Instant::now() + d;
    while !s.stop.load(Ordering::Relaxed) && !s.reload.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

fn writer(mut t: Box<dyn Transport>, s: Arc<Shared>) {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if s.reload.swap(false, Ordering::Relaxed) {
            t.reload();
            backoff = BACKOFF_FIRST;
        }
        if pending.is_empty() {
            let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
            while q.lines.is_empty() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                q = s
                    .data
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let mut took = 0;
            while took < s.batch_bytes
                && let Some(line) = q.lines.pop_front()
            {
                took += line.len();
                pending.push_back(line);
            }
            q.held = pending.len();
        }
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let before: usize = pending.iter().map(Bytes::len).sum();
        let result = t.deliver(&mut pending, &s.c, &s.stop);
        let after: usize = pending.iter().map(Bytes::len).sum();
        {
            let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
            // A transport may put back lines it could not confirm (TCP).
            q.bytes = (q.bytes + after).saturating_sub(before);
            q.held = pending.len();
        }
        s.room.notify_all();
        match result {
            Ok(()) => {
                s.failing.store(false, Ordering::Relaxed);
                backoff = BACKOFF_FIRST;
            }
            Err(e) if t.closed_for_good(&e) => {
                // stdout's reader left: nothing will ever read again.
                let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
                let n = q.lines.len() + pending.len();
                s.c.closed.fetch_add(n as u64, Ordering::Relaxed);
                q.lines.clear();
                q.bytes = 0;
                q.held = 0;
                s.closed.store(true, Ordering::Relaxed);
                s.room.notify_all();
                return;
            }
            Err(e) => {
                s.c.errors.fetch_add(1, Ordering::Relaxed);
                s.failing.store(true, Ordering::Relaxed);
                *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                match t.retry_after() {
                    // The peer said when: that, not our back-off (which
                    // starts again from the first step after it).
                    Some(wait) => {
                        nap(wait.min(RETRY_AFTER_CAP), &s);
                        backoff = BACKOFF_FIRST;
                    }
                    None => {
                        nap(backoff, &s);
                        backoff = (backoff * 2).min(BACKOFF_CAP);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: OutputSpec =
            "file:/var/log/p.jsonl?rotate_bytes=10M&keep=3&policy=block".parse().unwrap();
        assert_eq!(
            s.target,
            Target::File {
                path: "/var/log/p.jsonl".into(),
                rotate_bytes: 10 << 20,
                keep: 3,
                mode: 0o600
            }
        );
        assert_eq!(s.policy, Policy::Block);
        let s: OutputSpec =
            "http://collector:8080/ingest?gzip=true&queue_bytes=64M".parse().unwrap();
        let Target::Http(t) = &s.target else { panic!("{s:?}") };
        assert_eq!(
            (t.url.as_str(), t.gzip, t.body),
            ("http://collector:8080/ingest", true, Body::Ndjson)
        );
        assert_eq!(s.queue_bytes, 64 << 20);
        let s: OutputSpec = "http://collector".parse().unwrap();
        let Target::Http(t) = &s.target else { panic!("{s:?}") };
        assert_eq!((t.url.as_str(), t.gzip), ("http://collector/", false));
        assert!(s.takes(Kind::Syscall) && s.takes(Kind::Alert));
        // A webhook for alerts: TLS with its own CA, a token from a file.
        let s: OutputSpec =
            "https://pager:8443/hook?types=alert&body=json&ca=/etc/probe/ca.pem&bearer_file=/run/t"
                .parse()
                .unwrap();
        let Target::Http(t) = &s.target else { panic!("{s:?}") };
        assert_eq!(t.url, "https://pager:8443/hook");
        assert_eq!(t.body, Body::Json);
        assert_eq!(t.ca.as_deref(), Some(std::path::Path::new("/etc/probe/ca.pem")));
        assert_eq!(t.auth, Some(Auth::BearerFile("/run/t".into())));
        assert!(s.takes(Kind::Alert) && !s.takes(Kind::Host));
        // OTLP: the default path, and no per system call series by default.
        let s: OutputSpec = "otlp+https://otel:4318?gzip=true".parse().unwrap();
        let Target::Otlp(t) = &s.target else { panic!("{s:?}") };
        assert_eq!(t.url, "https://otel:4318/v1/metrics");
        assert!(s.takes(Kind::Process) && !s.takes(Kind::Syscall) && !s.takes(Kind::Alert));
        let s: OutputSpec = "otlp+http://[::1]:4318/v1/metrics?types=host,syscall".parse().unwrap();
        assert!(s.takes(Kind::Syscall) && !s.takes(Kind::Process));
        assert_eq!(
            "tcp://127.0.0.1:5140".parse::<OutputSpec>().unwrap().target,
            Target::Tcp("127.0.0.1:5140".into())
        );
        assert_eq!(
            "unix:/run/vector.sock?peer_uid=998".parse::<OutputSpec>().unwrap().target,
            Target::Unix { path: "/run/vector.sock".into(), peer_uid: 998 }
        );
        assert_eq!("-".parse::<OutputSpec>().unwrap().target, Target::Stdout);
    }

    /// Header values never reach the sink's name (the agent record, the
    /// logs, the metrics' labels) nor an error message.
    #[test]
    fn header_values_are_redacted() {
        let spec = "https://h/p?header=X-Api-Key:s3cret&header=X-Scope-OrgID:t1&gzip=true";
        let s: OutputSpec = spec.parse().unwrap();
        assert_eq!(
            s.name,
            "https://h/p?header=X-Api-Key:<redacted>&header=X-Scope-OrgID:<redacted>&gzip=true"
        );
        let Target::Http(t) = &s.target else { panic!() };
        assert_eq!(t.headers[0].1, Secret("s3cret".into()));
        assert!(!format!("{s:?}").contains("s3cret"));
        let err =
            "https://h/p?header=X-Api-Key:s3cret&gzip=maybe".parse::<OutputSpec>().unwrap_err();
        assert!(!err.contains("s3cret") && err.contains("gzip must be"), "{err}");
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("https://user:pw@x/y", "credentials in the URL"),
            ("http://x/y?ca=/ca.pem", "ca= is for https"),
            ("tcp://x:1?bearer_file=/t", "is for http and otlp sinks"),
            ("https://x/y?bearer_file=/t&basic_file=/u", "one of bearer_file"),
            ("https://x/y?header=Host:evil", "set by the sink itself"),
            ("https://x/y?header=Bad Name:v", "not an HTTP token"),
            ("https://x/y?header=novalue", "Name:Value"),
            ("https://x/y?types=host,nonsense", "not a record type"),
            ("otlp+http://x:4318?types=alert", "an otlp sink exports"),
            ("otlp+http://x:4318?body=json", "body= is for http sinks"),
            ("https://x/y?body=xml", "body must be"),
            ("ftp://x/y", "expected stdout"),
            ("tcp://host", "tcp://HOST:PORT"),
            ("tcp://host:0", "tcp://HOST:PORT"),
            ("file:", "no file path"),
            ("stdout?policy=wait", "policy must be"),
            ("stdout?queue_bytes=1", "queue_bytes must be"),
            ("stdout?queue_bytes=99999999999999999999G", "queue_bytes must be"),
            ("file:/x?keep=0", "keep must be"),
            ("file:/x?mode=0644", "mode must let"),
            ("file:/x?mode=rw", "mode must let"),
            ("unix:/x?peer_uid=root", "peer_uid must be"),
            ("stdout?color=red", "unknown option"),
            ("stdout?policy", "not key=value"),
        ] {
            let err = spec.parse::<OutputSpec>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    /// Collects delivered lines; fails while `fail` is set.
    struct Mem(Arc<Mutex<Vec<Bytes>>>, Arc<AtomicBool>);

    impl Transport for Mem {
        fn deliver(
            &mut self,
            pending: &mut VecDeque<Bytes>,
            c: &Counters,
            _: &AtomicBool,
        ) -> io::Result<()> {
            if self.1.load(Ordering::Relaxed) {
                return Err(io::Error::other("down"));
            }
            while let Some(l) = pending.pop_front() {
                self.0.lock().unwrap().push(l);
                c.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }

    fn mem_sink(
        policy: Policy,
        queue_bytes: usize,
    ) -> (Sink, Arc<Mutex<Vec<Bytes>>>, Arc<AtomicBool>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared::new(queue_bytes));
        let s = shared.clone();
        let t = Box::new(Mem(got.clone(), fail.clone()));
        let thread = std::thread::spawn(move || writer(t, s));
        let spec = OutputSpec {
            name: "mem".into(),
            target: Target::Stdout,
            policy,
            queue_bytes,
            types: None,
        };
        let sink = Sink {
            spec,
            shared,
            exporter: None,
            reported: Reported::default(),
            thread: Some(thread),
        };
        (sink, got, fail)
    }

    /// A sink that is down keeps the newest lines that fit, counts every
    /// line it dropped, and once back delivers the rest in order, once.
    #[test]
    fn drop_oldest_counts_and_delivers_in_order() {
        let (mut sink, got, fail) = mem_sink(Policy::DropOldest, 100);
        let far = Instant::now() + Duration::from_secs(60);
        let mut all = Vec::new();
        for i in 0..50 {
            let line = format!("{{\"i\":{i:02}}}\n"); // 9 bytes
            all.push(line.clone());
            sink.push(std::iter::once(Bytes::from(line)), far);
        }
        std::thread::sleep(Duration::from_millis(300));
        fail.store(false, Ordering::Relaxed);
        // Generous: under qemu (the arm64 run) threads are slow.
        let until = Instant::now() + Duration::from_secs(30);
        while sink.shared.q.lock().unwrap().bytes > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = sink.report();
        let got: Vec<String> =
            got.lock().unwrap().iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
        assert_eq!(got.len() as u64 + state.dropped_records.queue_full, 50);
        assert_eq!(state.sent_records, got.len() as u64);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
        assert_eq!(got.last(), all.last(), "the newest line is kept");
        assert!(state.dropped_records.queue_full > 0);
        sink.shared.stop.store(true, Ordering::Relaxed);
    }

    /// `block` waits for room until the deadline, then drops the new line.
    #[test]
    fn block_waits_until_the_deadline() {
        let (mut sink, _got, _fail) = mem_sink(Policy::Block, 20);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(300);
        let lines = Bytes::from_static(b"0123456789\n0123456789\n0123456789\n");
        sink.push(split_lines(&lines), deadline);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
        let state = sink.report();
        assert!(state.dropped_records.queue_full >= 1);
        assert!(state.queued_bytes <= 20);
        sink.shared.stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_line_longer_than_the_queue_is_dropped_as_too_large() {
        let (mut sink, _got, _fail) = mem_sink(Policy::DropOldest, 10);
        sink.push(std::iter::once(Bytes::from_static(b"0123456789abcdef\n")), Instant::now());
        assert_eq!(sink.report().dropped_records.too_large, 1);
        sink.shared.stop.store(true, Ordering::Relaxed);
    }
}
