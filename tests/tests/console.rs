//! `probe-agent top` on a real terminal: tmux runs it, the test reads the
//! screen (capture-pane) while a server slows past its target: the
//! server's port is there with its focus KPIs and its alert level.

use std::{process::Command, time::Duration};

use probe_tests::{Workload, agent_bin, require_bpf, tempdir};

/// A tmux server of its own (`-L`), so nobody else's sessions are touched;
/// killed with everything in it on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux { socket: format!("probe-test-{}", std::process::id()) }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (scripts/setup.sh installs it)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// The screen once `pred` holds (or the last one, after `timeout`).
    fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.screen();
            let dead = s.contains("Pane is dead");
            if pred(&s) || dead || std::time::Instant::now() > deadline {
                return (pred(&s), s);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // SIGINT first: the agent detaches and exits (a hang-up alone would
        // read as a configuration reload).
        if let Ok(out) = Command::new("tmux")
            .args(["-L", &self.socket, "list-panes", "-a", "-F", "#{pane_pid}"])
            .output()
        {
            for pid in
                String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok())
            {
                probe_tests::kill(pid, libc::SIGINT);
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

#[test]
fn top_shows_a_workloads_endpoint_and_its_alert_level() {
    require_bpf!();
    let dir = tempdir("console");
    let config = probe_tests::config_file(&dir, &[("hold_intervals = 2", "hold_intervals = 1")]);
    let delay = dir.join("delay");
    std::fs::write(&delay, "650").unwrap();
    let server = Workload::start(&[
        "tcp-server",
        "--name",
        "pw-top",
        "--delay-file",
        delay.to_str().unwrap(),
    ])
    .unwrap();
    let port = server.ready[0].clone();
    let tmux = Tmux::new();
    let quote =
        |p: &std::path::Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    // No overhead budget: the debug build under CI's load would shed, and
    // switching TCP off would take the endpoint away mid-test.
    let cmd = format!(
        "exec {} top --interval 1s --overhead-budget-pct 0 --config {}",
        quote(&agent_bin()),
        quote(&config)
    );
    // The pane stays after the agent exits, so a failure shows its reason.
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "45",
        &cmd,
        ";",
        "set-option",
        "-t",
        "top",
        "remain-on-exit",
        "on",
    ]);

    // Connections are followed from their handshake: the clients start
    // once the programs are attached.
    let (ok, screen) = tmux.wait_for(|s| s.contains("every 1.0s"), Duration::from_secs(60));
    assert!(ok, "the first frame:\n{screen}");
    let mut clients: Vec<Workload> = (0..2)
        .map(|_| {
            Workload::start(&["tcp-client", "--port", &port, "--requests", "100000", "--keepalive"])
                .unwrap()
        })
        .collect();
    for c in &mut clients {
        c.go().unwrap();
    }
    let row = format!("port {port} (pw-top)");
    let (ok, screen) = tmux.wait_for(
        |s| s.lines().any(|l| l.contains(&row) && l.contains("INVESTIGATE")),
        Duration::from_secs(30),
    );
    eprintln!("{screen}");
    assert!(ok, "the server's port with its investigate level:\n{screen}");
    assert!(screen.contains("probe-agent top") && screen.contains("latency avg"), "{screen}");
    let line = screen.lines().find(|l| l.contains(&row)).unwrap();
    assert!(line.contains(" ms"), "its latency is shown: {line}");
    assert!(screen.contains("is above 500 ms: investigate now"), "the alert is listed");

    // Slower still: the same row escalates, live.
    std::fs::write(&delay, "1300").unwrap();
    let (ok, screen) = tmux.wait_for(
        |s| s.lines().any(|l| l.contains(&row) && l.contains("ESCALATE")),
        Duration::from_secs(30),
    );
    assert!(ok, "the level follows the KPI:\n{screen}");
    drop(clients);
    drop(tmux);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
