//! The agent's command line: usage errors exit 2 with one clear line;
//! without the capabilities it exits 1 and names them.

use std::process::Command;

use probe_tests::{agent_bin, require_bpf};

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--interval", "1ms"][..],
        &["--top", "0"],
        &["--pid", "x"],
        &["--bogus"],
        &["run", "--duration", "0s"],
    ] {
        let out = Command::new(agent_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn unprivileged_run_names_the_capabilities() {
    require_bpf!(); // needs root to drop to nobody
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(agent_bin())
        .args(["--duration", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(out.stdout.is_empty());
}
