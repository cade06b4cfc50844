use super::*;

fn write(name: &str, lines: &[String]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("probe-report-{}-{name}.jsonl", std::process::id()));
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn ts(sec: u32) -> String {
    format!("2026-11-29T10:{:02}:{:02}.000Z", sec / 60, sec % 60)
}

fn endpoint(sec: u32, avg: f64, err: f64) -> String {
    format!(
        r#"{{"v":1,"type":"endpoint","ts":"{}","host":"h","interval_s":10.0,"pid":7,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,"requests":{{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":{err},"latency_ms":{{"avg":{avg},"p50":{avg},"p95":{avg},"p99":{avg},"max":{avg}}}}}}}"#,
        ts(sec)
    )
}

/// A process that served `count` requests.
fn process(sec: u32, pid: u32, count: u64) -> String {
    let lat =
        if count > 0 { r#"{"avg":5.0,"p50":5.0,"p95":5.0,"p99":5.0,"max":5.0}"# } else { "null" };
    format!(
        r#"{{"v":1,"type":"process","ts":"{}","host":"h","interval_s":10.0,"pid":{pid},"comm":"p{pid}","cgroup_id":null,"container_id":null,"syscalls":{{"count":1,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.1,"latency_ms":null}},"cpu":{{"cores":0.01,"utilization_pct":0.5,"runq_latency_ms":null}},"memory":{{"rss_bytes":1}},"tcp":{{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,"accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,"bytes_sent":0,"bytes_received":0}},"requests":{{"count":{count},"rate_per_s":{},"errors":0,"error_rate_pct":0.0,"latency_ms":{lat}}}}}"#,
        ts(sec),
        count as f64 / 10.0
    )
}

/// An agent record with what the red flags read.
fn agent(sec: u32, tcp_off: Option<&str>, dropped: u64, lost: u64) -> String {
    let tcp = tcp_off.map_or(r#"{"available":true,"reason":null}"#.to_string(), |why| {
        format!(r#"{{"available":false,"reason":"{why}"}}"#)
    });
    format!(
        r#"{{"v":1,"type":"agent","ts":"{}","host":"h","interval_s":10.0,"kpis":{{"tcp":{tcp},"cpu":{{"available":true,"reason":null}}}},"config":{{"path":null,"reloads":0,"last_error":null}},"lost":{{"syscall_stats_full":{lost},"syscall_no_start":99}},"shedding":{{"budget_pct":1.0,"cost_pct":0.5,"latency_sample_every":1,"probes_off":[]}},"output":{{"dropped_intervals":{},"queued_bytes":0,"failing":false,"sinks":[{{"name":"tcp://x","dropped_records":{{"queue_full":{dropped},"too_large":0}}}}]}}}}"#,
        ts(sec),
        u64::from(dropped > 0)
    )
}

fn overhead_alert(sec: u32, level: &str) -> String {
    format!(
        r#"{{"v":1,"type":"alert","ts":"{}","host":"h","interval_s":10.0,"rule":"overhead-budget","kpi":"shedding.cost_pct","level":"{level}","previous_level":"ok","repeat":false,"value":2.5,"threshold":1.0,"scope":"agent","pid":9,"since":"{}","message":"probe-agent overhead 2.50% of host CPU against its 1.00% budget: timing 1 in 4 system calls for latency (all still counted)"}}"#,
        ts(sec),
        ts(sec)
    )
}

fn report_of(name: &str, lines: &[String], cfg: &Config) -> (Report, String, String) {
    let p = write(name, lines);
    let r = collect(&p, cfg).unwrap();
    let (md, page) = (markdown(&r), html(&r));
    let _ = std::fs::remove_file(&p);
    (r, md, page)
}

#[test]
fn compare_says_how_much_latency_fell() {
    let base = write("base", &[endpoint(0, 600.0, 0.0), endpoint(10, 624.0, 0.0)]);
    let cur = write(
        "cur",
        &[endpoint(0, 480.0, 0.0), endpoint(10, 486.0, 0.0), endpoint(20, 483.0, 0.0)],
    );
    let c = compare(&base, &cur, &Config::default()).unwrap();
    let md = compare_markdown(&c);
    assert!(
        md.contains("- average request latency on port 8080 (api) fell 21% (612 ms to 483 ms)."),
        "{md}"
    );
    assert!(
        md.contains("| requests.latency_ms.avg | port 8080 (api) | 612 ms | 483 ms | -21.1% |"),
        "{md}"
    );
    // The focus KPIs lead, with their sentences.
    let focus = md.split("## Focus").nth(1).unwrap().split("| KPI").next().unwrap();
    assert!(focus.contains("average request latency on port 8080 (api) fell 21%"), "{md}");
    let page = compare_html(&c);
    assert!(page.contains("id=\"focus-requests-latency_ms-avg\""), "{page}");
    assert!(page.contains("fell 21% (612 ms to 483 ms)"));
}

#[test]
fn report_has_targets_alerts_and_offenders() {
    let lines: Vec<String> = [100.0, 600.0, 650.0, 700.0, 80.0, 70.0]
        .iter()
        .enumerate()
        .map(|(i, &v)| endpoint(i as u32 * 10, v, if i == 3 { 7.5 } else { 0.0 }))
        .collect();
    let (_, md, _) = report_of("targets", &lines, &Config::default());
    assert!(
        md.contains(
            "| requests.latency_ms.avg | port 8080 (api) | 500 ms | 367 ms | 700 ms | investigate |"
        ),
        "{md}"
    );
    // Fired at 10:00:20 after holding two intervals, resolved at 10:00:50 after two more.
    assert!(md.contains("| 2026-11-29T10:00:20.000Z | investigate | 30s | average request latency 650 ms on port 8080 (api) is above 500 ms: investigate now | 0 |"), "{md}");
    assert!(md.contains("### Ports by average request latency"), "{md}");
}

/// A process that served nothing has no request rows: an error rate of
/// no requests is not 0%.
#[test]
fn rows_only_where_the_kpi_has_data() {
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(process(i * 10, 100, 0)); // a short-lived client: served nothing
        lines.push(process(i * 10, 200, if i < 2 { 20 } else { 0 })); // a server, idle later
    }
    let (r, md, _) = report_of("gated", &lines, &Config::default());
    assert!(!md.lines().any(|l| l.contains("requests.") && l.contains("pid 100")), "{md}");
    assert!(
        md.contains("| requests.error_rate_pct | p200 (pid 200) | 1.0% | 0.000% | 0.000% | ok |"),
        "{md}"
    );
    // Its latency over the intervals with requests only.
    let t = r
        .targets
        .iter()
        .find(|t| t.path == "requests.latency_ms.avg" && t.who == "p200 (pid 200)")
        .unwrap();
    assert_eq!(t.stat.n, 2);
}

/// The agent's own alerts are alerts: a recording whose only alerts are
/// the agent's overhead alerts does not say "No alerts".
#[test]
fn the_agents_own_alerts_and_the_quiet_red_flags() {
    let lines = vec![
        agent(0, None, 0, 0),
        overhead_alert(10, "investigate"),
        agent(10, Some("no sock_send_length tracepoint (added in 6.3)"), 0, 0),
        agent(20, Some("no sock_send_length tracepoint (added in 6.3)"), 12, 3),
        overhead_alert(30, "ok"),
        agent(30, None, 0, 0),
    ];
    let (r, md, page) = report_of("agent", &lines, &Config::default());
    assert!(!md.contains("No alerts"), "{md}");
    assert!(md.contains("probe-agent overhead 2.50% of host CPU"), "{md}");
    assert_eq!(r.alerts.len(), 1);
    assert_eq!(r.alerts[0].lasted, Some(20.0));
    let flags = md.split("## Quiet red flags").nth(1).unwrap().split("## Targets").next().unwrap();
    for want in [
        "KPIs unavailable: tcp in 2 of 4 interval(s): no sock_send_length tracepoint (added in 6.3).",
        "Records dropped: 1 interval(s) had records dropped by a sink (12 queue_full).",
        "Events lost: in 1 interval(s) the kernel side could not record everything (syscall_stats_full 3).",
        "The agent raised 1 alert(s) about itself (overhead-budget)",
    ] {
        assert!(flags.contains(want), "{want}\n{flags}");
    }
    // A request focus KPI without data says why: TCP was unavailable.
    let lat = &r.focus[0];
    assert!(lat.empty.as_deref().unwrap().contains("tcp KPIs were unavailable"), "{:?}", lat.empty);
    assert!(page.contains("id=\"chart-requests-latency_ms-avg-empty\""));
}

/// An alert said again and again without being resolved is a red flag
/// that says for how long and how many times.
#[test]
fn alerts_repeated_without_resolution_are_flagged() {
    let mut cfg = Config::default();
    cfg.alerts.repeat_every = std::time::Duration::from_secs(600);
    let lines: Vec<String> = (0..240).map(|i| endpoint(i * 10, 700.0, 0.0)).collect();
    let (r, md, _) = report_of("repeats", &lines, &cfg);
    let a = r.repeated().next().expect("a repeated alert");
    assert_eq!((a.repeats, a.lasted), (3, None));
    assert!(
        md.contains("Repeated without resolution: average request latency 700 ms on port 8080 (api) is above 500 ms: investigate now (investigate, rule request-latency) was said again 3 time(s); still held at the end, 40 min after it fired."),
        "{md}"
    );
}

#[test]
fn the_focus_leads_with_targets_baseline_and_the_script() {
    let mut lines = Vec::new();
    for i in 0..6u32 {
        let avg = [100.0, 600.0, 650.0, 700.0, 80.0, 70.0][i as usize];
        lines.push(endpoint(i * 10, avg, 0.0));
        lines.push(format!(
            r#"{{"v":1,"type":"host","ts":"{}","host":"h","interval_s":10.0,"syscalls":{{"count":0,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.0,"latency_ms":null}},"cpus":2,"cpu":{{"cores":0.5,"utilization_pct":25.0,"runq_latency_ms":null}},"memory":{{"used_bytes":1,"total_bytes":100,"utilization_pct":1.0}},"disk":[],"tcp":{{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,"accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,"bytes_sent":0,"bytes_received":0}},"requests":{{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":0.0,"latency_ms":{{"avg":{avg},"p50":{avg},"p95":{avg},"p99":{avg},"max":{avg}}}}},"cost":{{"projected_usd_month":null,"budget_usd_month":null,"over_budget_pct":null}}}}"#,
            ts(i * 10)
        ));
    }
    let (r, md, page) = report_of("focus", &lines, &Config::default());
    let focus_at = md.find("## Focus").unwrap();
    assert!(focus_at < md.find("## Targets and actuals").unwrap());
    assert!(md.contains("| average request latency (`requests.latency_ms.avg`) | 500 ms | 1000 ms | 367 ms | 700 ms | investigate | 2 |"), "{md}");
    assert!(md.contains("> We track 5 KPIs on h: average request latency, request error rate, request rate, CPU utilization and projected cost over budget."), "{md}");
    assert!(md.contains("Our targets: average request latency below 500 ms, request error rate below 1.0%, CPU utilization below 80.0% and projected cost over budget below 10.0%."), "{md}");
    assert!(
        md.contains("average request latency 367 ms on average, 700 ms in the worst interval"),
        "{md}"
    );
    assert!(md.contains("projected cost over budget not measured (cost is not configured"), "{md}");
    assert!(
        md.contains("average request latency above 1000 ms: escalate to the team lead"),
        "{md}"
    );
    // The chart: the host's line and the port's, both thresholds, and the
    // alert's period shaded.
    let lat = &r.focus[0];
    assert_eq!(lat.lines.len(), 2, "{:?}", lat.lines);
    assert_eq!(lat.periods.len(), 2, "per scope: {:?}", lat.periods);
    for id in [
        "chart-requests-latency_ms-avg",
        "chart-requests-latency_ms-avg-investigate",
        "chart-requests-latency_ms-avg-escalate",
        "chart-requests-latency_ms-avg-alert-0",
        "chart-cpu-utilization_pct",
        "chart-cpu-utilization_pct-escalate",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
    }
    // Nothing from anywhere else: no script, no URL, no external reference.
    for bad in ["<script", "http:", "https:", "src=", "url(", "@import", "<link"] {
        assert!(!page.contains(bad), "{bad} in the page");
    }
}

/// The recorded run of the fixtures (real records, with alerts): the
/// report charts it and lists its alerts.
#[test]
fn a_recorded_run_reports_with_charts() {
    use std::io::Read as _;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("recorded.jsonl.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let cfg = crate::config::load(&dir.join("recorded.config.toml")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let (r, md, page) = report_of("fixture", &lines, &cfg);
    assert_eq!(r.intervals, 25);
    let lat = &r.focus[0];
    assert!(lat.raised.0 > 0 && lat.raised.1 > 0, "{:?}", lat.raised);
    assert!(lat.periods.iter().any(|p| p.level == Level::Escalate));
    assert!(md.contains("CPU utilization 98.2% on host vm is above 95.0%: escalate"), "{md}");
    assert!(page.contains("id=\"chart-requests-latency_ms-avg-escalate\""));
    assert_eq!(r.flags.agent_intervals, 24);
    // The fixture was saved without its syscall records: seq says so.
    assert!(r.flags.seq_missing > 0);
    assert!(md.contains("filtered out before it was saved"), "{md}");
}

/// Cost against budget: the projection over time against the budget and
/// the rule's lines above it, and the focus KPI over budget.
#[test]
fn cost_is_drawn_against_its_budget() {
    let host = |sec: u32, projected: f64| {
        let over = (projected - 100.0) / 100.0 * 100.0;
        format!(
            r#"{{"v":1,"type":"host","ts":"{}","host":"h","interval_s":10.0,"syscalls":{{"count":0,"errors":0,"error_rate_pct":0.0,"rate_per_s":0.0,"latency_ms":null}},"cpus":2,"cpu":{{"cores":0.5,"utilization_pct":25.0,"runq_latency_ms":null}},"memory":{{"used_bytes":1,"total_bytes":100,"utilization_pct":1.0}},"disk":[],"tcp":{{"connects":0,"connect_errors":0,"connect_error_rate_pct":0.0,"connect_latency_ms":null,"accepts":0,"retransmits":0,"resets_sent":0,"resets_received":0,"rtt_ms":null,"bytes_sent":0,"bytes_received":0}},"requests":{{"count":0,"rate_per_s":0.0,"errors":0,"error_rate_pct":0.0,"latency_ms":null}},"cost":{{"projected_usd_month":{projected},"budget_usd_month":100.0,"over_budget_pct":{over}}}}}"#,
            ts(sec)
        )
    };
    let lines: Vec<String> = [90.0, 95.0, 125.0, 130.0, 98.0, 90.0, 88.0]
        .iter()
        .enumerate()
        .map(|(i, &v)| host(i as u32 * 10, v))
        .collect();
    let (r, md, page) = report_of("cost", &lines, &Config::default());
    assert_eq!(r.cost.budget, Some(100.0));
    for id in ["chart-cost", "chart-cost-budget", "chart-cost-investigate", "chart-cost-escalate"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
    }
    let cost = r.focus.iter().find(|f| f.path == "cost.over_budget_pct").unwrap();
    assert_eq!(cost.baseline.unwrap().worst, 30.0);
    assert_eq!(cost.raised, (0, 1), "escalated once: {:?}", r.alerts);
    assert!(md.contains("- host h: projected 102 USD/month on average, 130 at the most, against a budget of 100 USD/month (+2.3% on average)."), "{md}");
    // Requests: no data, and the page says so rather than drawing zeros.
    assert!(page.contains("id=\"chart-requests-latency_ms-avg-empty\""));
    assert!(
        md.contains(
            "average request latency not measured (no requests were served in this recording)"
        ),
        "{md}"
    );
}

fn route(sec: u32, route: &str, avg: f64, err: f64) -> String {
    format!(
        r#"{{"v":1,"type":"route","ts":"{}","host":"h","interval_s":10.0,"pid":7,"comm":"api","container_id":null,"role":"server","port":8080,"peer":null,"protocol":"http1","method":"GET","route":"{route}","requests":{{"count":10,"rate_per_s":1.0,"errors":0,"error_rate_pct":{err},"latency_ms":{{"avg":{avg},"p50":{avg},"p95":{avg},"p99":{avg},"max":{avg}}},"client_errors":0,"success_rate_pct":100.0,"status":{{"1xx":0,"2xx":10,"3xx":0,"4xx":0,"5xx":0}}}}}}"#,
        ts(sec)
    )
}

#[test]
fn report_and_compare_name_routes() {
    let lines = [
        endpoint(0, 300.0, 1.0),
        route(0, "/api/checkout", 900.0, 3.0),
        route(0, "/api/items/{id}", 20.0, 0.0),
    ];
    let (_, md, page) = report_of("routes", &lines, &Config::default());
    let slow = md.split("Routes by average request latency").nth(1).expect(&md);
    let first = slow.lines().find(|l| l.contains("/api/")).unwrap();
    assert!(first.contains("GET /api/checkout on port 8080 (api)"), "{md}");
    assert!(md.contains("Routes by request error rate"), "{md}");
    assert!(page.contains("GET /api/checkout on port 8080 (api)"), "{page}");

    let base = write("routes-base", &[route(0, "/api/checkout", 900.0, 0.0)]);
    let cur = write("routes-cur", &[route(0, "/api/checkout", 450.0, 0.0)]);
    let c = compare(&base, &cur, &Config::default()).unwrap();
    let md = compare_markdown(&c);
    assert!(
        md.contains("average request latency on GET /api/checkout on port 8080 (api) fell 50%"),
        "{md}"
    );
    let _ = std::fs::remove_file(base);
    let _ = std::fs::remove_file(cur);
}
