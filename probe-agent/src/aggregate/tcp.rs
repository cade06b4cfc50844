//! TCP KPIs: per-interval connection figures per process, and requests per
//! endpoint (process, role, port, peer).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
};

use probe_common::{
    requests::{proto, status},
    tcp::{EndpointKey, ROLE_SERVER, SLOT_ERROR, TcpKey, TcpValue, metric},
};
use serde::{Deserialize, Serialize};

use super::{
    latency::{Latency, LatencyMs},
    pct, round,
    syscalls::rate,
};
use crate::probes::tcp::TcpSnapshot;

/// Connection figures of one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpStats {
    pub connects: u64,
    pub connect_errors: u64,
    pub connect_latency: Latency,
    pub accepts: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub rtt: Latency,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl TcpStats {
    pub fn merge(&mut self, o: &TcpStats) {
        self.connects += o.connects;
        self.connect_errors += o.connect_errors;
        self.connect_latency.merge(&o.connect_latency);
        self.accepts += o.accepts;
        self.retransmits += o.retransmits;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        self.rtt.merge(&o.rtt);
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }

    pub fn group(&self, buckets: bool) -> TcpGroup {
        TcpGroup {
            connects: self.connects,
            connect_errors: self.connect_errors,
            connect_error_rate_pct: pct(self.connect_errors, self.connects),
            connect_latency_ms: self.connect_latency.summary_ms(buckets),
            accepts: self.accepts,
            retransmits: self.retransmits,
            resets_sent: self.resets_sent,
            resets_received: self.resets_received,
            rtt_ms: self.rtt.summary_ms(buckets),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
        }
    }
}

/// The `tcp` group of process, container and host records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpGroup {
    pub connects: u64,
    pub connect_errors: u64,
    pub connect_error_rate_pct: f64,
    pub connect_latency_ms: Option<LatencyMs>,
    pub accepts: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub rtt_ms: Option<LatencyMs>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Requests of one interval: latencies of those answered, their outcomes,
/// and those that failed before an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    pub latency: Latency,
    /// Failed: reset or closed before an answer.
    pub errors: u64,
    /// Answered requests by outcome (`requests::status`: 0 unknown, the
    /// HTTP class 1 to 5; Redis and PostgreSQL OK = 2, error = 5).
    pub by_status: [u64; 6],
    /// PostgreSQL errors by SQLSTATE class code (`status::sqlstate_code`),
    /// also counted as errors in `by_status`.
    pub sqlstate: BTreeMap<u8, u64>,
}

/// How the request KPIs count outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcomes {
    /// Count client errors (HTTP 4xx) in `errors` too (default: beside it).
    pub client_errors_are_errors: bool,
}

impl Requests {
    pub fn merge(&mut self, o: &Requests) {
        self.latency.merge(&o.latency);
        self.errors += o.errors;
        for (a, b) in self.by_status.iter_mut().zip(o.by_status) {
            *a += b;
        }
        for (&c, &n) in &o.sqlstate {
            *self.sqlstate.entry(c).or_default() += n;
        }
    }

    /// The requests group, of no protocol in particular.
    pub fn group(&self, interval_s: f64, buckets: bool) -> RequestsGroup {
        self.group_with(interval_s, buckets, proto::UNKNOWN, Outcomes::default())
    }

    /// The requests group of protocol `app` (`requests::proto`): HTTP adds
    /// the status classes, PostgreSQL the errors' SQLSTATE classes.
    pub fn group_with(
        &self,
        interval_s: f64,
        buckets: bool,
        app: u8,
        o: Outcomes,
    ) -> RequestsGroup {
        let http = app == proto::HTTP1;
        let count = self.latency.count + self.errors;
        let client_errors = self.by_status[usize::from(status::CLIENT_ERROR)];
        let mut errors = self.errors + self.by_status[usize::from(status::ERROR)];
        if o.client_errors_are_errors {
            errors += client_errors;
        }
        let error_rate_pct = pct(errors, count);
        RequestsGroup {
            count,
            rate_per_s: rate(count, interval_s),
            errors,
            error_rate_pct,
            latency_ms: self.latency.summary_ms(buckets),
            client_errors,
            success_rate_pct: if count == 0 {
                None
            } else {
                Some(round(100.0 - error_rate_pct, 3))
            },
            status: http.then(|| {
                (1..=5)
                    .map(|c| (format!("{c}xx"), self.by_status[c]))
                    .collect::<BTreeMap<String, u64>>()
            }),
            sqlstate_classes: (app == proto::POSTGRES).then(|| {
                self.sqlstate
                    .iter()
                    .map(|(&code, &n)| {
                        let class = status::sqlstate_class(code).map_or_else(
                            || "other".to_string(),
                            |c| String::from_utf8_lossy(&c).into(),
                        );
                        (class, n)
                    })
                    .collect()
            }),
        }
    }
}

/// The `requests` group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestsGroup {
    /// Requests that ended in the interval: answered or failed.
    pub count: u64,
    pub rate_per_s: f64,
    /// Server errors (HTTP 5xx, Redis error replies, PostgreSQL
    /// ErrorResponse) and requests on connections reset or closed before
    /// the answer.
    pub errors: u64,
    pub error_rate_pct: f64,
    /// Latency of the answered requests.
    pub latency_ms: Option<LatencyMs>,
    /// Client errors (HTTP 4xx), beside `errors` (not in it, by default).
    #[serde(default)]
    pub client_errors: u64,
    /// 100 - error_rate_pct: the transaction success rate (null without requests).
    #[serde(default)]
    pub success_rate_pct: Option<f64>,
    /// HTTP answers by status class (`1xx` .. `5xx`); null for other protocols.
    #[serde(default)]
    pub status: Option<BTreeMap<String, u64>>,
    /// PostgreSQL errors (ErrorResponse) by SQLSTATE class (`22`, `23`,
    /// `42`...; `other` for a class PostgreSQL does not document), a part
    /// of `errors`; null for other protocols.
    #[serde(default)]
    pub sqlstate_classes: Option<BTreeMap<String, u64>>,
}

/// An endpoint: a process serving a port, or calling a peer's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub tgid: u32,
    pub role: u8,
    pub port: u16,
    pub peer: [u8; 16],
}

impl Endpoint {
    pub fn role(&self) -> crate::records::Role {
        use crate::records::Role;
        if self.role == ROLE_SERVER { Role::Server } else { Role::Client }
    }

    /// The peer address for clients (IPv4 shown as a.b.c.d), none for servers.
    pub fn peer_addr(&self) -> Option<String> {
        if self.role == ROLE_SERVER {
            return None;
        }
        let a = Ipv6Addr::from(self.peer);
        Some(a.to_ipv4_mapped().map_or_else(|| a.to_string(), |v4| v4.to_string()))
    }
}

/// One endpoint's requests in an interval, in all and per route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointRequests {
    /// The protocol its connections showed (`requests::proto`; the TLS
    /// bit 0x80 when encrypted), 0 when none was recognised.
    pub proto: u8,
    pub requests: Requests,
    /// (method, route id) -> requests.
    pub routes: BTreeMap<(u8, u32), Requests>,
}

/// One interval of TCP figures.
#[derive(Clone, Debug, Default)]
pub struct TcpInterval {
    /// Per process (tgid 0: sockets whose owner is not known).
    pub procs: HashMap<u32, TcpStats>,
    pub endpoints: BTreeMap<Endpoint, EndpointRequests>,
}

impl TcpInterval {
    /// Requests a process served (server endpoints only).
    pub fn served(&self, tgid: u32) -> Requests {
        let mut r = Requests::default();
        for (e, req) in self.endpoints.range(Endpoint { tgid, role: 0, port: 0, peer: [0; 16] }..) {
            if e.tgid != tgid {
                break;
            }
            if e.role == ROLE_SERVER {
                r.merge(&req.requests);
            }
        }
        r
    }

    /// Route ids seen this interval.
    pub fn route_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.endpoints.values().flat_map(|e| e.routes.keys().map(|&(_, r)| r))
    }
}

fn delta(prev: Option<&TcpValue>, now: &TcpValue) -> TcpValue {
    let before = prev.filter(|p| p.count <= now.count).copied().unwrap_or_default();
    TcpValue {
        count: now.count - before.count,
        sum: now.sum.saturating_sub(before.sum),
        max: now.max,
    }
}

pub fn interval(prev: &TcpSnapshot, cur: &TcpSnapshot) -> TcpInterval {
    let mut out = TcpInterval::default();
    for (key, now) in &cur.stats {
        let d = delta(prev.stats.get(key), now);
        if d.count == 0 {
            continue;
        }
        let s = out.procs.entry(key.tgid).or_default();
        let TcpKey { metric: m, slot, .. } = *key;
        match m {
            metric::CONNECTS => s.connects += d.count,
            metric::CONNECT_ERRORS => s.connect_errors += d.count,
            metric::CONNECT_LATENCY => {
                s.connect_latency.add(u32::from(slot), d.count, d.sum, d.max)
            }
            metric::ACCEPTS => s.accepts += d.count,
            metric::RETRANSMITS => s.retransmits += d.count,
            metric::RESETS_SENT => s.resets_sent += d.count,
            metric::RESETS_RECEIVED => s.resets_received += d.count,
            metric::RTT => s.rtt.add(u32::from(slot), d.count, d.sum, d.max),
            metric::BYTES_SENT => s.bytes_sent += d.sum,
            metric::BYTES_RECEIVED => s.bytes_received += d.sum,
            _ => {}
        }
    }
    for (key, now) in &cur.endpoints {
        let d = delta(prev.endpoints.get(key), now);
        if d.count == 0 {
            continue;
        }
        let EndpointKey { tgid, role, port, peer, slot, proto, status, method, route } = *key;
        let e = out.endpoints.entry(Endpoint { tgid, role, port, peer }).or_default();
        e.proto = e.proto.max(proto);
        let r = e.routes.entry((method, route)).or_default();
        for r in [&mut e.requests, r] {
            if slot == SLOT_ERROR {
                r.errors += d.count;
            } else {
                r.latency.add(u32::from(slot), d.count, d.sum, d.max);
                if status & status::SQLSTATE != 0 {
                    r.by_status[usize::from(status::ERROR)] += d.count;
                    *r.sqlstate.entry(status & !status::SQLSTATE).or_default() += d.count;
                } else {
                    r.by_status[usize::from(status.min(5))] += d.count;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{hist::bucket_of, tcp::ROLE_CLIENT};

    fn ep(tgid: u32, role: u8, port: u16, slot: u16) -> EndpointKey {
        let peer = if role == ROLE_CLIENT {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        } else {
            [0; 16]
        };
        EndpointKey { tgid, port, role, proto: 0, peer, slot, status: 0, method: 0, route: 0 }
    }

    #[test]
    fn requests_and_connection_figures() {
        let mut prev = TcpSnapshot::default();
        let mut cur = TcpSnapshot::default();
        let b = bucket_of(20_000_000) as u16;
        prev.endpoints.insert(
            ep(5, ROLE_SERVER, 8080, b),
            TcpValue { count: 10, sum: 200_000_000, max: 20_000_000 },
        );
        cur.endpoints.insert(
            ep(5, ROLE_SERVER, 8080, b),
            TcpValue { count: 30, sum: 600_000_000, max: 20_000_000 },
        );
        cur.endpoints
            .insert(ep(5, ROLE_SERVER, 8080, SLOT_ERROR), TcpValue { count: 2, sum: 0, max: 0 });
        cur.endpoints.insert(
            ep(6, ROLE_CLIENT, 8080, b),
            TcpValue { count: 4, sum: 80_000_000, max: 20_000_000 },
        );
        cur.stats.insert(
            TcpKey { tgid: 6, metric: metric::CONNECTS, slot: 0 },
            TcpValue { count: 5, sum: 0, max: 0 },
        );
        cur.stats.insert(
            TcpKey { tgid: 6, metric: metric::CONNECT_ERRORS, slot: 0 },
            TcpValue { count: 1, sum: 0, max: 0 },
        );
        cur.stats.insert(
            TcpKey { tgid: 6, metric: metric::BYTES_SENT, slot: 0 },
            TcpValue { count: 3, sum: 4500, max: 2000 },
        );
        let d = interval(&prev, &cur);
        let served = d.served(5).group(2.0, false);
        assert_eq!((served.count, served.errors, served.rate_per_s), (22, 2, 11.0));
        assert_eq!(served.latency_ms.unwrap().p50, 20.0);
        assert_eq!(served.error_rate_pct, 9.091);
        assert_eq!(d.served(6).group(1.0, false).count, 0, "client requests are not served");
        let g = d.procs[&6].group(false);
        assert_eq!(
            (g.connects, g.connect_errors, g.connect_error_rate_pct, g.bytes_sent),
            (5, 1, 20.0, 4500)
        );
        let client = d.endpoints.keys().find(|e| e.tgid == 6).unwrap();
        assert_eq!(
            (client.role(), client.peer_addr().as_deref()),
            (crate::records::Role::Client, Some("127.0.0.1"))
        );
    }
}
