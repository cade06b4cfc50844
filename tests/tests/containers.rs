//! Container attribution: a workload moved into a cgroup named as a
//! container runtime names it is reported under that container id, with
//! the container's CPU, memory and system calls.

use std::time::Duration;

use probe_tests::{Agent, TestCgroup, Workload, of, require_bpf, tempdir};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn workload_in_a_docker_named_cgroup_is_attributed_to_the_container() {
    require_bpf!();
    let cg = TestCgroup::create(&format!("docker/{ID}")).unwrap();
    let mut w = Workload::start(&["spin", "--name", "pw-contained", "--ms", "2500"]).unwrap();
    let pid = w.pid;
    cg.enter(pid).unwrap();
    let agent = Agent::start(&["--interval", "1s", "--pid", &pid.to_string()]).unwrap();
    w.go().unwrap();
    w.finish().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let records = agent.stop().unwrap();

    let procs: Vec<_> = of(&records, "process", pid).collect();
    assert!(!procs.is_empty());
    assert!(procs.iter().all(|p| p["container_id"] == ID), "{procs:?}");
    let containers: Vec<_> =
        records.iter().filter(|r| r["type"] == "container" && r["container_id"] == ID).collect();
    assert!(!containers.is_empty(), "no container record for {ID}");
    let busiest = containers
        .iter()
        .max_by(|a, b| a["cpu"]["cores"].as_f64().partial_cmp(&b["cpu"]["cores"].as_f64()).unwrap())
        .unwrap();
    assert_eq!(busiest["runtime"], "docker");
    assert_eq!(busiest["cgroup"], format!("/docker/{ID}"));
    assert!(busiest["pod_uid"].is_null());
    assert!(busiest.get("k8s_namespace").is_none(), "off Kubernetes, no names: {busiest}");
    assert!(busiest["cpu"]["cores"].as_f64().unwrap() > 0.9, "{busiest}");
    assert!(busiest["memory"]["used_bytes"].as_u64().unwrap_or(0) > 0, "{busiest}");
    // Processes outside are attributed to the host.
    let calls: Vec<_> =
        records.iter().filter(|r| r["type"] == "syscall" && r["pid"] == pid).collect();
    assert!(!calls.is_empty() && calls.iter().all(|r| r["container_id"] == ID), "{calls:?}");
}

/// `GET /metrics` from the agent's endpoint.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Kubernetes names. A node's root stands in a temporary directory
/// (`--host-root`, as the DaemonSet's `/host`), with the kubelet's log
/// layout made for real: the pod's directory in /var/log/pods and, for the
/// app container, the kubelet's absolute symlink in /var/log/containers.
/// Two real cgroups are named as containerd's systemd driver names a pod's
/// containers: the app (a server and a busy process) and the pod's sandbox
/// (no log, as the pause container). The app's container, process and
/// endpoint records name its namespace, pod and container; the sandbox's
/// its namespace and pod alone; a process on the host none; /metrics labels
/// their series with `namespace` and `pod`.
#[test]
fn containers_of_a_pod_are_named_from_the_kubelets_logs() {
    require_bpf!();
    const APP: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    const SANDBOX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    const UID: &str = "7c2e4f10-3b5a-4d8e-9f21-0a6b5c4d3e2f";
    let (ns, pod) = ("shop", "web-5d8c7f-x2k9q");
    let root = tempdir("k8s-root");
    let pod_dir = format!("var/log/pods/{ns}_{pod}_{UID}");
    std::fs::create_dir_all(root.join(&pod_dir).join("app")).unwrap();
    std::fs::write(root.join(&pod_dir).join("app/0.log"), "").unwrap();
    std::fs::create_dir_all(root.join("var/log/containers")).unwrap();
    std::os::unix::fs::symlink(
        format!("/{pod_dir}/app/0.log"),
        root.join(format!("var/log/containers/{pod}_{ns}_app-{APP}.log")),
    )
    .unwrap();
    let slice = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        UID.replace('-', "_")
    );
    let app = TestCgroup::create(&format!("{slice}/cri-containerd-{APP}.scope")).unwrap();
    let sandbox = TestCgroup::create(&format!("{slice}/cri-containerd-{SANDBOX}.scope")).unwrap();

    let server =
        Workload::start(&["tcp-server", "--name", "pw-k8s-srv", "--delay-ms", "1"]).unwrap();
    app.enter(server.pid).unwrap();
    let port = server.ready[0].clone();
    let mut busy = Workload::start(&["spin", "--name", "pw-k8s-app", "--ms", "2000"]).unwrap();
    app.enter(busy.pid).unwrap();
    let mut pause = Workload::start(&["spin", "--name", "pw-k8s-pause", "--ms", "2000"]).unwrap();
    sandbox.enter(pause.pid).unwrap();
    let mut host = Workload::start(&["spin", "--name", "pw-k8s-host", "--ms", "2000"]).unwrap();
    // A port free now (the agent binds it a moment later).
    let port_now = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let maddr = port_now.to_string();
    let agent = Agent::start(&[
        "--interval",
        "1s",
        "--host-root",
        root.to_str().unwrap(),
        "--metrics-addr",
        &maddr,
    ])
    .unwrap();
    let mut client = Workload::start(&[
        "tcp-client",
        "--name",
        "pw-k8s-cli",
        "--port",
        &port,
        "--requests",
        "20",
        "--keepalive",
    ])
    .unwrap();
    for w in [&mut busy, &mut pause, &mut host, &mut client] {
        w.go().unwrap();
    }
    for w in [&mut busy, &mut pause, &mut host, &mut client] {
        w.finish().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    let text = scrape(&maddr);
    let records = agent.stop().unwrap();

    let names = |r: &serde_json::Value| {
        let s = |k: &str| r.get(k).map(|v| v.as_str().unwrap().to_string());
        (s("k8s_namespace"), s("k8s_pod"), s("k8s_container"))
    };
    let some = |s: &str| Some(s.to_string());
    let named = (some(ns), some(pod), some("app"));
    let container = |id: &str| {
        let c: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == "container" && r["container_id"] == id)
            .collect();
        assert!(!c.is_empty(), "no container record for {id}");
        c
    };
    for c in container(APP) {
        assert_eq!(names(c), named, "{c}");
        assert_eq!((&c["runtime"], &c["pod_uid"]), (&"containerd".into(), &UID.into()), "{c}");
    }
    for c in container(SANDBOX) {
        assert_eq!(names(c), (some(ns), some(pod), None), "{c}");
    }
    for (kind, pid, want) in [
        ("process", busy.pid, named.clone()),
        ("process", server.pid, named.clone()),
        ("endpoint", server.pid, named.clone()),
        ("process", pause.pid, (some(ns), some(pod), None)),
        ("process", host.pid, (None, None, None)),
    ] {
        let rs: Vec<_> = of(&records, kind, pid).collect();
        assert!(!rs.is_empty(), "no {kind} record of {pid}");
        for r in rs {
            assert_eq!(names(r), want, "{r}");
        }
    }
    assert!(
        of(&records, "endpoint", server.pid).any(|e| e["port"] == port.parse::<u64>().unwrap()),
        "the server's endpoint"
    );

    let k8s = format!("namespace=\"{ns}\",pod=\"{pod}\"");
    let series = |prefix: &str, inner: &str| {
        text.lines().any(|l| l.starts_with(prefix) && l.contains(inner) && l.contains(&k8s))
    };
    assert!(
        series("probe_cpu_cores{", &format!("scope=\"container\",container_id=\"{APP}\"")),
        "{text}"
    );
    assert!(
        series("probe_cpu_cores{", &format!("scope=\"container\",container_id=\"{SANDBOX}\"")),
        "{text}"
    );
    assert!(
        series("probe_cpu_cores{", &format!("comm=\"pw-k8s-app\",container_id=\"{APP}\"")),
        "{text}"
    );
    assert!(
        series(
            "probe_requests_total{",
            &format!("scope=\"endpoint\",comm=\"pw-k8s-srv\",container_id=\"{APP}\"")
        ),
        "{text}"
    );
    let host_line = text
        .lines()
        .find(|l| l.contains("comm=\"pw-k8s-host\""))
        .expect("the host process's series");
    assert!(!host_line.contains("namespace=") && !host_line.contains("pod="), "{host_line}");
    drop((busy, pause, host, server));
    let _ = std::fs::remove_dir_all(&root);
}

/// The agent in a cgroup namespace, as in a pod: /proc/self/cgroup says
/// `/` (the root: no limit), yet its own memory is read from its real
/// cgroup, the one the kernel charges, found in the mounted hierarchy,
/// with that cgroup's limit.
#[test]
fn the_agents_own_cgroup_is_found_from_inside_a_cgroup_namespace() {
    require_bpf!();
    let rel = format!("probe-test-cgns-{}/agent", std::process::id());
    let cg = TestCgroup::create(&rel).unwrap();
    cg.limit_memory(512 << 20).unwrap();
    // Into the cgroup, then a new cgroup namespace rooted there, then the agent.
    let procs: Vec<String> =
        cg.dirs().iter().map(|d| d.join("cgroup.procs").display().to_string()).collect();
    let script = format!(
        "for f in {}; do echo $$ > \"$f\" || exit 1; done; exec unshare --cgroup \"$@\"",
        procs.join(" ")
    );
    let mut agent =
        Agent::start_wrapped(&["sh", "-c", &script, "sh"], &["--interval", "500ms"]).unwrap();
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(ns(agent.pid()), ns(std::process::id()), "the agent is in a cgroup namespace");
    let seen = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid())).unwrap();
    assert!(seen.contains(&rel), "from outside, its cgroup is {rel}: {seen}");
    let rec = agent.wait_for(|r| r["type"] == "agent", Duration::from_secs(10)).unwrap();
    drop(agent);
    let own = &rec["cgroup_memory"];
    assert_eq!(own["cgroup"], format!("/{rel}"), "{own}");
    assert_eq!(own["limit_bytes"], 512u64 << 20, "{own}");
    assert!(own["used_bytes"].as_u64().unwrap() > 0, "{own}");
}

/// The node's name from a pod: in a UTS namespace of its own (a pod's is
/// named after the pod), the agent names the host after the node's
/// /etc/hostname under `--host-root`; without it, after its namespace.
#[test]
fn the_host_is_named_after_the_node_from_a_uts_namespace() {
    require_bpf!();
    let root = tempdir("utsroot");
    std::fs::create_dir(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "node-a7\n").unwrap();
    let wrapper = ["unshare", "--uts", "sh", "-c", "hostname pw-pod-5d8c7 && exec \"$@\"", "sh"];
    let host = |args: &[&str]| {
        let agent = Agent::start_wrapped(&wrapper, args).unwrap();
        // The status record, first, has the host label every record has.
        agent.records[0]["host"].clone()
    };
    assert_eq!(host(&["--interval", "1s", "--host-root", root.to_str().unwrap()]), "node-a7");
    assert_eq!(host(&["--interval", "1s"]), "pw-pod-5d8c7");
    let _ = std::fs::remove_dir_all(&root);
}
