//! The join: one interval's figures per process, with its name, cgroup and
//! container; container and host totals; the filters and bounds (`--pid`,
//! `--comm`, `--top`, endpoints per process); and the KPI records.

use std::collections::{BTreeMap, HashMap};

use probe_common::{
    requests::{METHODS, ROUTE_NONE, ROUTE_OTHER, proto},
    tcp::ROLE_SERVER,
};

use super::read::Reading;
use crate::{
    aggregate::{
        cpu::{CpuGroup, ProcCpu},
        latency::Latency,
        pct,
        syscalls::{CallStats, ProcessCalls},
        tcp::{Endpoint, EndpointRequests, Outcomes, Requests, TcpStats},
    },
    cli::{RunConfig, SyscallDetail},
    containers::{self, Cgroups, Container},
    cost, disk,
    kubernetes::Kubelet,
    names,
    probes::Probes,
    procfs,
    records::{
        ContainerCost, ContainerMemory, ContainerRecord, EndpointRecord, Header, HostMemory,
        HostRecord, K8s, Kind, ProcessMemory, ProcessRecord, Record, RouteRecord, SyscallRecord,
    },
};

/// Most endpoint records per process and per interval: a process with
/// thousands of sockets (a proxy, a scanner) must not flood the stream or
/// the metrics page. The busiest are kept; the cut is counted.
const ENDPOINTS_PER_PROCESS: usize = 100;
const ENDPOINTS_TOTAL: usize = 2000;

/// System-call records per process in the default stream (`--syscalls
/// top`): the calls it spent most time in, and of the others those that
/// failed most. Bounded both ways: most processes fail some calls as a
/// matter of course (ENOENT along a search path, ENOTTY on a pipe), and a
/// build or a script would otherwise bring back nearly every call.
pub const TOP_SYSCALLS: usize = 3;
pub const TOP_FAILING: usize = 3;

/// How many processes were active, reported, and cut by the bounds.
#[derive(Default)]
pub struct Counts {
    pub active: u64,
    pub reported: u64,
    pub cut_by_top: u64,
    /// Matching processes left out as nearly idle (`--min-cpu-pct`).
    pub cut_idle: u64,
    /// Endpoint records left out by the bounds.
    pub endpoints_cut: u64,
    /// Routes added up under `other` (past 64 per endpoint).
    pub routes_cut: u64,
    /// System-call records left out by `--syscalls top` or `none`.
    pub syscalls_cut: u64,
    /// System calls counted on the host (timed or not).
    pub host_calls: u64,
    /// The agent's own cgroup as the kernel charged its CPU time, in the
    /// mounted hierarchy: the node's path even from inside a cgroup
    /// namespace (a pod's), where /proc/self/cgroup says `/`.
    pub self_cgroup: Option<String>,
}

/// One process's interval: its calls (`calls.tgid` is its id), CPU,
/// name and cgroup.
#[derive(Default)]
struct ProcessView {
    calls: ProcessCalls,
    cpu: ProcCpu,
    tcp: TcpStats,
    /// Requests it served.
    requests: Requests,
    comm: String,
    /// cgroup v2 id and path.
    cgroup: Option<(u64, String)>,
    container: Option<Container>,
}

/// One container's interval, summed over its processes.
struct ContainerAgg {
    container: Container,
    /// Its Kubernetes names, when in a pod the kubelet named.
    k8s: K8s,
    calls: CallStats,
    run_ns: u64,
    runq: Latency,
    tcp: TcpStats,
    requests: Requests,
}

/// What the join needs besides the reading.
pub struct Context<'a> {
    pub cfg: &'a RunConfig,
    pub probes: &'a Probes,
    pub cgroups: &'a mut Cgroups,
    /// Kubernetes names of containers in pods.
    pub kubelet: &'a mut Kubelet,
    pub cpus: u32,
    pub header: &'a Header,
    /// Whether latency groups keep their buckets (`--histograms`, the
    /// metrics endpoint or an OTLP sink).
    pub buckets: bool,
    /// How requests' outcomes count.
    pub outcomes: Outcomes,
    /// Route id -> its name.
    pub route_names: &'a HashMap<u32, String>,
    /// Configured route patterns, which take precedence.
    pub route_patterns: &'a [String],
}

/// The KPI records of one interval: host, containers, then each reported
/// process followed by its endpoints and system calls.
pub fn records(r: &mut Reading, cx: &mut Context<'_>, out: &mut Vec<Record>) -> Counts {
    let interval_s = cx.header.interval_s;
    let (cpus, buckets) = (cx.cpus, cx.buckets);
    let span_ns = r.cpu.span_ns;
    cx.cgroups.next_interval();
    cx.kubelet.next_interval();

    // Every process that made calls, ran, or used TCP.
    let mut views: BTreeMap<u32, ProcessView> = BTreeMap::new();
    for p in std::mem::take(&mut r.procs) {
        let tgid = p.tgid;
        views.entry(tgid).or_default().calls = p;
    }
    for (tgid, c) in r.cpu.procs.drain() {
        if c.run_ns > 0 || c.runq.count > 0 {
            views.entry(tgid).or_default().cpu = c;
        }
    }
    let mut host_tcp = TcpStats::default();
    for (&tgid, t) in &r.tcp.procs {
        host_tcp.merge(t);
        if tgid != 0 {
            views.entry(tgid).or_default().tcp = t.clone();
        }
    }
    let mut host_requests = Requests::default();
    for (e, req) in &r.tcp.endpoints {
        if e.role == ROLE_SERVER {
            host_requests.merge(&req.requests);
        }
        if e.tgid != 0 {
            views.entry(e.tgid).or_default();
        }
    }
    for (&tgid, v) in views.iter_mut() {
        v.requests = r.tcp.served(tgid);
        v.calls.tgid = tgid;
        v.comm = comm(cx.probes, tgid);
        v.cgroup = cgroup_of(cx.cgroups, tgid, v.cpu.cgroup);
        v.container = container_of(tgid, v.cgroup.as_ref().map(|c| c.1.as_str()));
    }
    let self_cgroup = views
        .get(&std::process::id())
        .and_then(|v| v.cpu.cgroup)
        .and_then(|id| cx.cgroups.path(id))
        .map(str::to_string);
    let mut counts = Counts {
        active: views.len() as u64,
        host_calls: r.host_calls.count(),
        self_cgroup,
        ..Counts::default()
    };

    // Containers: every process counts, whatever the filters. Keyed by id
    // and cgroup together: a lookalike elsewhere is not merged.
    let mut containers: BTreeMap<(String, String), ContainerAgg> = BTreeMap::new();
    for v in views.values() {
        let Some(c) = &v.container else { continue };
        let agg =
            containers.entry((c.id.clone(), c.cgroup.clone())).or_insert_with(|| ContainerAgg {
                // Only a pod's containers have names to look for.
                k8s: c.pod_uid.as_ref().map(|uid| cx.kubelet.names(&c.id, uid)).unwrap_or_default(),
                container: c.clone(),
                calls: CallStats::default(),
                run_ns: 0,
                runq: Latency::default(),
                tcp: TcpStats::default(),
                requests: Requests::default(),
            });
        agg.calls.merge(&v.calls.total);
        agg.run_ns += v.cpu.run_ns;
        agg.runq.merge(&v.cpu.runq);
        agg.tcp.merge(&v.tcp);
        agg.requests.merge(&v.requests);
    }

    // Process filters, then the top N by CPU time plus system-call time.
    // Unless processes were named (--pid, --comm), those nearly idle are
    // left out: under --min-cpu-pct of a core, and no TCP or requests (the
    // rules' process KPIs), so an idle host's stream stays small.
    let cfg = cx.cfg;
    let named = !cfg.pids.is_empty() || !cfg.comms.is_empty();
    let mut chosen: Vec<&ProcessView> = views
        .iter()
        .filter(|(tgid, _)| cfg.pids.is_empty() || cfg.pids.contains(tgid))
        .map(|(_, v)| v)
        .filter(|v| cfg.comms.is_empty() || cfg.comms.contains(&v.comm))
        .collect();
    if !named {
        let floor_ns = cfg.min_cpu_pct / 100.0 * span_ns as f64;
        let before = chosen.len();
        chosen.retain(|v| {
            v.cpu.run_ns as f64 >= floor_ns
                || v.tcp.connects + v.tcp.accepts > 0
                || has_endpoints(&r.tcp.endpoints, v.calls.tgid)
        });
        counts.cut_idle = (before - chosen.len()) as u64;
    }
    let matching = chosen.len() as u64;
    chosen.sort_by_key(|v| {
        (std::cmp::Reverse(v.cpu.run_ns + v.calls.total.latency.sum_ns), v.calls.tgid)
    });
    chosen.truncate(cfg.top);
    counts.reported = chosen.len() as u64;
    counts.cut_by_top = matching - counts.reported;

    let memory = procfs::meminfo().map_or(
        HostMemory { used_bytes: 0, total_bytes: 0, utilization_pct: 0.0 },
        |(total, avail)| {
            let used = total.saturating_sub(avail);
            HostMemory { used_bytes: used, total_bytes: total, utilization_pct: pct(used, total) }
        },
    );
    let host_cores = r.cpu.host_run_ns as f64 / (span_ns.max(1) as f64);
    let host_mem = memory.used_bytes as f64;
    let prices = &cfg.config.cost;
    out.push(Record::Host(HostRecord {
        header: cx.header.with(Kind::Host),
        syscalls: r.host_calls.group(interval_s, buckets),
        cpus,
        cpu: CpuGroup::new(r.cpu.host_run_ns, &r.cpu.host_runq, span_ns, cpus, buckets),
        memory,
        disk: disk::disks(&cfg.host_root),
        tcp: host_tcp.group(buckets),
        requests: host_requests.group(interval_s, buckets),
        cost: cost::host(prices, host_cores, host_mem),
    }));
    for ((id, _), c) in &containers {
        let (used, limit) =
            cx.cgroups.memory(&c.container.cgroup).map_or((None, None), |(u, l)| (Some(u), l));
        let cores = c.run_ns as f64 / (span_ns.max(1) as f64);
        let mem = used.unwrap_or(0) as f64;
        out.push(Record::Container(ContainerRecord {
            header: cx.header.with(Kind::Container),
            container_id: id.clone(),
            runtime: c.container.runtime,
            cgroup: c.container.cgroup.clone(),
            pod_uid: c.container.pod_uid.clone(),
            k8s: c.k8s.clone(),
            cpu: CpuGroup::new(c.run_ns, &c.runq, span_ns, cpus, buckets),
            memory: ContainerMemory {
                used_bytes: used,
                limit_bytes: limit,
                utilization_pct: used.zip(limit).map(|(u, l)| pct(u, l)),
            },
            syscalls: c.calls.group(interval_s, buckets),
            tcp: c.tcp.group(buckets),
            requests: c.requests.group(interval_s, buckets),
            cost: ContainerCost {
                projected_usd_month: cost::container(prices, cores, mem, host_cores, host_mem),
            },
        }));
    }
    let mut endpoints_written = 0usize;
    for v in &chosen {
        let tgid = v.calls.tgid;
        let container_id = v.container.as_ref().map(|c| c.id.clone());
        let k8s = v
            .container
            .as_ref()
            .and_then(|c| containers.get(&(c.id.clone(), c.cgroup.clone())))
            .map(|c| c.k8s.clone())
            .unwrap_or_default();
        out.push(Record::Process(ProcessRecord {
            header: cx.header.with(Kind::Process),
            pid: tgid,
            comm: v.comm.clone(),
            cgroup_id: v.cgroup.as_ref().map(|c| c.0),
            container_id: container_id.clone(),
            k8s: k8s.clone(),
            syscalls: v.calls.total.group(interval_s, buckets),
            cpu: CpuGroup::new(v.cpu.run_ns, &v.cpu.runq, span_ns, cpus, buckets),
            memory: ProcessMemory { rss_bytes: procfs::rss_bytes(tgid) },
            tcp: v.tcp.group(buckets),
            requests: v.requests.group(interval_s, buckets),
        }));
        // The busiest endpoints of the process, within both bounds; their
        // requests stay in the process's and host's totals.
        let mut eps: Vec<(&Endpoint, &EndpointRequests)> = r
            .tcp
            .endpoints
            .range(Endpoint { tgid, role: 0, port: 0, peer: [0; 16] }..)
            .take_while(|(e, _)| e.tgid == tgid)
            .collect();
        eps.sort_by_key(|(e, req)| {
            (std::cmp::Reverse(req.requests.latency.count + req.requests.errors), **e)
        });
        let room = ENDPOINTS_PER_PROCESS.min(ENDPOINTS_TOTAL.saturating_sub(endpoints_written));
        counts.endpoints_cut += eps.len().saturating_sub(room) as u64;
        eps.truncate(room);
        eps.sort_by_key(|(e, _)| **e);
        endpoints_written += eps.len();
        for (e, req) in eps {
            let app = req.proto & !TLS;
            let protocol = protocol_name(req.proto);
            let tls = (req.proto & TLS != 0).then_some(true).or((app != 0).then_some(false));
            out.push(Record::Endpoint(EndpointRecord {
                header: cx.header.with(Kind::Endpoint),
                pid: tgid,
                comm: v.comm.clone(),
                container_id: container_id.clone(),
                k8s: k8s.clone(),
                role: e.role(),
                port: e.port,
                peer: e.peer_addr(),
                requests: req.requests.group_with(interval_s, buckets, app, cx.outcomes),
                protocol: protocol.into(),
                tls,
            }));
            let (routes, cut) = routes(req, cx.route_names, cx.route_patterns);
            counts.routes_cut += cut;
            for ((method, route), rq) in routes {
                out.push(Record::Route(RouteRecord {
                    header: cx.header.with(Kind::Route),
                    pid: tgid,
                    comm: v.comm.clone(),
                    container_id: container_id.clone(),
                    k8s: k8s.clone(),
                    role: e.role(),
                    port: e.port,
                    peer: e.peer_addr(),
                    protocol: protocol.into(),
                    method,
                    route,
                    requests: rq.group_with(interval_s, buckets, app, cx.outcomes),
                }));
            }
        }
        let calls = syscalls_of(&v.calls.calls, cfg.syscalls, named);
        counts.syscalls_cut += (v.calls.calls.len() - calls.len()) as u64;
        for (nr, stats) in calls {
            out.push(Record::Syscall(SyscallRecord {
                header: cx.header.with(Kind::Syscall),
                pid: tgid,
                comm: v.comm.clone(),
                container_id: container_id.clone(),
                syscall: names::syscall(nr).into_owned(),
                nr,
                calls: stats.group(interval_s, buckets),
                errnos: stats
                    .errnos
                    .iter()
                    .map(|(&e, &n)| (names::errno(e).into_owned(), n))
                    .collect(),
            }));
        }
    }
    counts
}

/// The TLS bit of an endpoint's `proto`.
const TLS: u8 = 0x80;

/// A protocol's name in the records.
fn protocol_name(p: u8) -> &'static str {
    match p & !TLS {
        proto::HTTP1 => "http1",
        proto::REDIS => "redis",
        proto::POSTGRES => "postgres",
        _ => "unknown",
    }
}

/// An endpoint's routes by name: the busiest [`ROUTES_PER_ENDPOINT`], the
/// rest added up under `other` (and how many were), named from the
/// kernel's route names. Requests without a route (L4) have none.
fn routes(
    req: &EndpointRequests,
    names: &HashMap<u32, String>,
    patterns: &[String],
) -> (BTreeMap<(Option<String>, String), Requests>, u64) {
    let mut named: BTreeMap<(Option<String>, String), Requests> = BTreeMap::new();
    for (&(method, id), r) in &req.routes {
        if id == ROUTE_NONE {
            continue;
        }
        let method = METHODS.get(usize::from(method).wrapping_sub(1)).map(|m| m.to_string());
        let route = match id {
            ROUTE_OTHER => "other".to_string(),
            id => names.get(&id).cloned().unwrap_or_else(|| format!("route-{id:08x}")),
        };
        let route = match patterns.iter().find(|p| crate::config::route_matches(p, &route)) {
            Some(p) => p.clone(),
            None => route,
        };
        named.entry((method, route)).or_default().merge(r);
    }
    if named.len() <= ROUTES_PER_ENDPOINT {
        return (named, 0);
    }
    let mut all: Vec<_> = named.into_iter().collect();
    all.sort_by_key(|(k, r)| (std::cmp::Reverse(r.latency.count + r.errors), k.clone()));
    let rest = all.split_off(ROUTES_PER_ENDPOINT - 1);
    let cut = rest.len() as u64;
    let mut other = Requests::default();
    for (_, r) in rest {
        other.merge(&r);
    }
    let mut kept: BTreeMap<_, _> = all.into_iter().collect();
    kept.entry((None, "other".to_string())).or_default().merge(&other);
    (kept, cut)
}

/// Most route records per endpoint: the busiest, the rest under `other`.
const ROUTES_PER_ENDPOINT: usize = 64;

/// Whether process `tgid` has an endpoint (served or made requests).
fn has_endpoints<V>(endpoints: &BTreeMap<Endpoint, V>, tgid: u32) -> bool {
    let from = Endpoint { tgid, role: 0, port: 0, peer: [0; 16] };
    endpoints.range(from..).next().is_some_and(|(e, _)| e.tgid == tgid)
}

/// The system calls of a process that get a record, in number order:
/// every one (`all`, or a process named by --pid or --comm: the filter
/// already bounds the stream and asks for its detail), none, or the
/// [`TOP_SYSCALLS`] it spent most time in plus the [`TOP_FAILING`] others
/// with the most errors.
fn syscalls_of(
    calls: &[(u16, CallStats)],
    detail: SyscallDetail,
    named: bool,
) -> Vec<(u16, &CallStats)> {
    let all = calls.iter().map(|(nr, s)| (*nr, s));
    match detail {
        SyscallDetail::None => Vec::new(),
        SyscallDetail::All => all.collect(),
        SyscallDetail::Top if named => all.collect(),
        SyscallDetail::Top => {
            let mut by_time: Vec<(u16, &CallStats)> = all.collect();
            by_time.sort_by_key(|(nr, s)| (std::cmp::Reverse((s.latency.sum_ns, s.count())), *nr));
            let mut failing: Vec<(u16, &CallStats)> =
                by_time.iter().skip(TOP_SYSCALLS).filter(|(_, s)| s.errors > 0).copied().collect();
            failing.sort_by_key(|(nr, s)| (std::cmp::Reverse(s.errors), *nr));
            by_time.truncate(TOP_SYSCALLS);
            let mut keep = by_time;
            keep.extend(failing.into_iter().take(TOP_FAILING));
            keep.sort_by_key(|(nr, _)| *nr);
            keep
        }
    }
}

/// The process's name: /proc while it lives (it may have renamed itself),
/// else what the kernel recorded, else empty.
fn comm(probes: &Probes, tgid: u32) -> String {
    procfs::comm(tgid)
        .or_else(|| probes.syscalls.comm(tgid).map(|c| procfs::comm_from_kernel(&c.bytes)))
        .unwrap_or_default()
}

/// The cgroup (v2 id and path) a process ran in: the one its CPU time was
/// charged to, else the one /proc says it is in now.
fn cgroup_of(cgroups: &mut Cgroups, tgid: u32, from_cpu: Option<u64>) -> Option<(u64, String)> {
    if let Some(id) = from_cpu
        && let Some(path) = cgroups.path(id)
    {
        return Some((id, path.to_string()));
    }
    let path = procfs::cgroup_paths(tgid).into_iter().next()?;
    let id = cgroups.id_of(&path)?;
    Some((id, path))
}

/// The container a process runs in: told by its v2 cgroup, else (hybrid
/// hosts, where runtimes may use only the v1 hierarchies) any of its v1
/// cgroups.
fn container_of(tgid: u32, v2_path: Option<&str>) -> Option<Container> {
    if let Some(c) = v2_path.and_then(containers::parse) {
        return Some(c);
    }
    procfs::cgroup_paths(tgid).iter().find_map(|p| containers::parse(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sum_ns: u64, count: u64, errors: u64) -> CallStats {
        let mut s = CallStats { calls: count, errors, ..CallStats::default() };
        s.latency.add(0, count, sum_ns, sum_ns);
        s
    }

    #[test]
    fn top_syscalls_by_time_plus_those_that_failed() {
        // nr: (time, calls, errors)
        let calls: Vec<(u16, CallStats)> = vec![
            (0, call(50, 10, 0)),
            (1, call(900, 2, 0)),
            (2, call(10, 1, 1)),
            (3, call(700, 5, 0)),
            (4, call(20, 9, 0)),
            (5, call(800, 1, 1)),
            (6, call(1, 8, 8)),
            (7, call(2, 5, 5)),
            (8, call(3, 4, 4)),
        ];
        let nrs = |v: Vec<(u16, &CallStats)>| v.into_iter().map(|c| c.0).collect::<Vec<_>>();
        // By time 1, 5, 3; then the three others that failed most: 6, 7, 8
        // (2 failed once: cut).
        assert_eq!(nrs(syscalls_of(&calls, SyscallDetail::Top, false)), [1, 3, 5, 6, 7, 8]);
        assert_eq!(nrs(syscalls_of(&calls, SyscallDetail::Top, true)).len(), 9);
        assert_eq!(nrs(syscalls_of(&calls, SyscallDetail::All, false)).len(), 9);
        assert!(syscalls_of(&calls, SyscallDetail::None, true).is_empty());
    }
}
