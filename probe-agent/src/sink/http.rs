//! The HTTP and OTLP sinks' transport: POSTs over HTTP/1.1 or HTTPS (ureq
//! with rustls), with the sink's credentials, following what the server
//! says.
//!
//! - Bodies: NDJSON batches of up to 1 MiB (`application/x-ndjson`), one
//!   JSON record a request (`body=json`, `application/json`: an alert
//!   webhook), or for OTLP one export request a POST
//!   (`application/x-protobuf`); optionally gzip-compressed.
//! - A 2xx answer delivers. A 408, 429 or 5xx answer (OTLP/HTTP: 429, 502,
//!   503 and 504 only, as its specification says) or a connection error is
//!   retried with the same body, after the server's `Retry-After` (seconds
//!   or an HTTP date) when it gives one, else the caller's back-off; the
//!   queue keeps filling by its policy meanwhile, so nothing is sent twice
//!   and what is dropped is counted. Another 4xx (or OTLP 5xx) refuses the
//!   body for good: its records are counted as `rejected`.
//! - TLS: rustls, trusting the CAs of `ca=PATH` when given, else the
//!   system's bundle (`SSL_CERT_FILE`, or the distribution's file), else
//!   the Mozilla roots built in (webpki-roots) where the system has none (a
//!   minimal container image).
//! - Credentials (`bearer_file`, `basic_file`) and the CA file are read
//!   when the client is built: at the first request, after any failure, on
//!   SIGHUP, and at least every minute (a Kubernetes projected token
//!   rotates under the agent). They are never logged; neither are
//!   `header=` values.
//! - Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` from
//!   the environment, read when the client is built.
//! - No redirects: a 3xx is retried like a 5xx (following one would send
//!   the credentials elsewhere).

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use log::warn;

use super::{Auth, Body, Counters, HttpTarget, Transport};

/// Most bytes of lines in one NDJSON request.
const BATCH_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole request: connect, TLS, send the body, read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Credentials and CA files are read again at least this often.
const REREAD_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of an answer's body read (an OTLP partial success, an error
/// text); the rest is not waited for.
const ANSWER_BYTES: u64 = 64 << 10;
/// The system's CA bundles, by distribution (Debian and Ubuntu, Fedora and
/// RHEL, Alpine and macOS-like layouts, SUSE).
const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// What the sink sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON lines, as the target's `body` says.
    Lines,
    /// One OTLP export request (protobuf) per queued item.
    Otlp,
}

/// A built client: the connection pool with its TLS roots, and the
/// `Authorization` value read from the credentials file.
struct Client {
    agent: ureq::Agent,
    authorization: Option<String>,
    built: Instant,
}

/// What a POST got back.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

pub struct Http {
    target: HttpTarget,
    format: Format,
    client: Option<Client>,
    /// Whether the last attempt failed (the next success counts a reconnect).
    failed: bool,
    retry_after: Option<Duration>,
    /// When an OTLP partial success was last logged.
    partial_logged: Option<Instant>,
}

impl Http {
    pub fn new(target: HttpTarget, format: Format) -> Self {
        Http {
            target,
            format,
            client: None,
            failed: false,
            retry_after: None,
            partial_logged: None,
        }
    }

    fn host(&self) -> &str {
        let rest = self.target.url.split_once("://").map_or("", |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }

    /// The client, built again when due (files are read there).
    fn client(&mut self) -> io::Result<&Client> {
        if self.client.as_ref().is_none_or(|c| c.built.elapsed() >= REREAD_AFTER) {
            self.client = None;
            self.client = Some(build(&self.target)?);
        }
        Ok(self.client.as_ref().expect("built above"))
    }

    /// One POST.
    fn post(&mut self, body: &[u8], content_type: &str) -> io::Result<Answer> {
        let gzip = self.target.gzip;
        let body = if gzip { gzip_bytes(body)? } else { body.to_vec() };
        let url = self.target.url.clone();
        let headers = self.target.headers.clone();
        let has_ca = self.target.ca.clone();
        let host = self.host().to_string();
        let client = self.client()?;
        let mut req = client.agent.post(&url).header("Content-Type", content_type);
        if gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        if let Some(auth) = &client.authorization {
            req = req.header("Authorization", auth);
        }
        for (name, value) in &headers {
            req = req.header(name, &value.0);
        }
        let mut resp = req.send(&body[..]).map_err(|e| explain(e, &host, has_ca.as_deref()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body =
            resp.body_mut().with_config().limit(ANSWER_BYTES).read_to_vec().unwrap_or_default();
        Ok(Answer { status, retry_after, body })
    }

    /// Whether an answer's status is worth retrying.
    fn retryable(&self, status: u16) -> bool {
        match self.format {
            // The OTLP/HTTP specification: these, and no other 4xx or 5xx.
            Format::Otlp => matches!(status, 429 | 502 | 503 | 504),
            Format::Lines => matches!(status, 408 | 429 | 300..=399 | 500..=599),
        }
    }

    /// An OTLP collector that took the request but refused some points
    /// says so in its answer: logged at most once a minute.
    fn check_partial_success(&mut self, answer: &Answer) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
        use prost::Message as _;
        let Ok(resp) = ExportMetricsServiceResponse::decode(&answer.body[..]) else { return };
        let Some(p) = resp.partial_success else { return };
        if p.rejected_data_points == 0 && p.error_message.is_empty() {
            return;
        }
        if self.partial_logged.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        self.partial_logged = Some(Instant::now());
        warn!(
            "OTLP {}: the collector refused {} data points: {}",
            self.host(),
            p.rejected_data_points,
            p.error_message.chars().take(200).collect::<String>()
        );
    }
}

/// Builds a client: reads the CA and credentials files.
fn build(t: &HttpTarget) -> io::Result<Client> {
    use ureq::tls::{RootCerts, TlsConfig};
    let roots = match &t.ca {
        Some(path) => RootCerts::new_with_certs(&read_certs(path)?),
        None => system_roots(),
    };
    let authorization = match &t.auth {
        None => None,
        Some(Auth::BearerFile(path)) => Some(format!("Bearer {}", read_secret(path)?)),
        Some(Auth::BasicFile(path)) => {
            let pair = read_secret(path)?;
            if !pair.contains(':') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: expected user:password", path.display()),
                ));
            }
            Some(format!("Basic {}", base64(pair.as_bytes())))
        }
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .user_agent(concat!("probe-agent/", env!("CARGO_PKG_VERSION")))
        .proxy(ureq::Proxy::try_from_env())
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(Client { agent: config.into(), authorization, built: Instant::now() })
}

/// The certificates of a PEM file (at least one).
fn read_certs(path: &Path) -> io::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = read_small(path)?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The system's trusted CAs, or the built-in Mozilla roots if it has none.
fn system_roots() -> ureq::tls::RootCerts {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    for path in from_env.into_iter().chain(SYSTEM_CA_FILES.iter().map(Into::into)) {
        if let Ok(certs) = read_certs(&path) {
            return ureq::tls::RootCerts::new_with_certs(&certs);
        }
    }
    ureq::tls::RootCerts::WebPki
}

/// A small file (a CA bundle, a token): at most 4 MiB.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(4 << 20).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A credentials file's content, trimmed (a trailing newline is common).
fn read_secret(path: &Path) -> io::Result<String> {
    let raw = read_small(path)?;
    let text = String::from_utf8(raw).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: not UTF-8", path.display()))
    })?;
    let text = text.trim();
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: empty, or a control character in it", path.display()),
        ));
    }
    Ok(text.to_string())
}

/// Standard base64 with padding (for `Authorization: Basic`).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An error as the `agent` record shows it: what failed, and for a
/// certificate the server's chain not trusted, which CAs were tried.
fn explain(e: ureq::Error, host: &str, ca: Option<&Path>) -> io::Error {
    let text = e.to_string();
    let kind = match &e {
        ureq::Error::Io(io) => io.kind(),
        ureq::Error::Timeout(_) => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    let lower = text.to_ascii_lowercase();
    let trusted =
        ca.map_or("the system's CAs".to_string(), |p| format!("the CAs of {}", p.display()));
    let msg = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        format!("TLS to {host}: the server's certificate is not signed by {trusted} ({text})")
    } else if lower.contains("certificate") || lower.contains("rustls") || lower.contains("tls") {
        format!("TLS to {host}: {text} (trusting {trusted})")
    } else {
        format!("{host}: {text}")
    };
    io::Error::new(kind, msg)
}

fn gzip_bytes(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(data)?;
    e.finish()
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate, RFC 9110
/// 5.6.7), as a wait from `now` (zero for a date past).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(v: &str) -> Option<SystemTime> {
    let rest = v.split_once(", ")?.1;
    let mut p = rest.split(' ');
    let (day, month, year, time, zone) = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
    if zone != "GMT" || p.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = MONTHS.iter().position(|&n| n == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 || y < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

impl Transport for Http {
    fn deliver(
        &mut self,
        pending: &mut VecDeque<Bytes>,
        c: &Counters,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        while !pending.is_empty() && !stop.load(Ordering::Relaxed) {
            // One request's body and the queue items it takes.
            let (body, n, content_type): (Vec<u8>, usize, &str) =
                match (self.format, self.target.body) {
                    (Format::Otlp, _) => (pending[0].to_vec(), 1, "application/x-protobuf"),
                    (Format::Lines, Body::Json) => {
                        let line = &pending[0];
                        (line.strip_suffix(b"\n").unwrap_or(line).to_vec(), 1, "application/json")
                    }
                    (Format::Lines, Body::Ndjson) => {
                        let mut body = Vec::new();
                        let mut n = 0;
                        for line in pending.iter() {
                            if n > 0 && body.len() + line.len() > BATCH_BYTES {
                                break;
                            }
                            body.extend_from_slice(line);
                            n += 1;
                        }
                        (body, n, "application/x-ndjson")
                    }
                };
            let answer = match self.post(&body, content_type) {
                Ok(a) => a,
                Err(e) => {
                    // Files are read again, and connections made anew.
                    self.client = None;
                    self.failed = true;
                    return Err(e);
                }
            };
            if std::mem::take(&mut self.failed) {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let code = answer.status;
            match code {
                200..=299 => {
                    if self.format == Format::Otlp {
                        self.check_partial_success(&answer);
                    }
                    pending.drain(..n);
                    c.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ if self.retryable(code) => {
                    self.failed = true;
                    self.retry_after = answer.retry_after;
                    let when = match answer.retry_after {
                        Some(d) => format!("retrying in {} s (Retry-After)", d.as_secs_f64()),
                        None => "will retry".to_string(),
                    };
                    return Err(io::Error::other(format!("HTTP {code}: {when}")));
                }
                _ => {
                    pending.drain(..n);
                    c.rejected.fetch_add(n as u64, Ordering::Relaxed);
                    if matches!(code, 401 | 403) {
                        // Perhaps a rotated token: read it again.
                        self.client = None;
                    }
                    let what = if self.format == Format::Otlp { "export request" } else { "batch" };
                    return Err(io::Error::other(format!(
                        "HTTP {code}: {what} of {n} records refused"
                    )));
                }
            }
        }
        Ok(())
    }

    fn retry_after(&mut self) -> Option<Duration> {
        self.retry_after.take()
    }

    fn reload(&mut self) {
        self.client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        // RFC 9110's example date, 7 s after `now`.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_438_400))
        );
        for bad in
            ["", "-1", "soon", "Sun, 06 Nov 1994 08:49:37 PST", "Sun, 32 Nov 1994 08:49:37 GMT"]
        {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn basic_credentials_are_base64() {
        assert_eq!(base64(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }
}
