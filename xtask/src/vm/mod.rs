//! `cargo xtask vm`: the kernel matrix. Boots each kernel of [`MATRIX`]
//! under QEMU (TCG: emulation, no KVM) with an initramfs holding the agent
//! built for its architecture, runs the ground-truth checks inside
//! (`tests/src/bin/probe-vmcheck.rs`), and collects their results from the
//! serial console. A guest that does not boot, whose checks fail, or whose
//! KPI availability differs from what the matrix expects fails the run.
//!
//! Results go to target/vm/results.json (and each guest's console to
//! target/vm/NAME/console.log); `cargo xtask vm --readme` rewrites the
//! README's kernel table from them.

mod image;
mod readme;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Debian's name for it.
    fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target to build for (None: the host's, x86_64).
    fn target(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some("aarch64-unknown-linux-gnu"),
        }
    }

    /// The dynamic loader (PT_INTERP) its binaries name.
    fn loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "/lib64/ld-linux-x86-64.so.2",
            Arch::Aarch64 => "/lib/ld-linux-aarch64.so.1",
        }
    }

    /// The QEMU command line up to the kernel (KVM hangs on these hosts:
    /// TCG, with every CPU feature QEMU can emulate).
    fn qemu(self) -> Command {
        let mut cmd = match self {
            // One host thread for both vCPUs: with a thread each (MTTCG),
            // x86 guests oops on an int3 when the kernel live-patches its
            // code (text_poke_bp, as detaching a tracepoint does), a race in
            // QEMU's emulation of cross-modifying code (seen on 6.12).
            Arch::X86_64 => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-accel", "tcg,thread=single"]);
                c
            }
            Arch::Aarch64 => {
                let mut c = Command::new("qemu-system-aarch64");
                c.args(["-M", "virt", "-accel", "tcg"]);
                c
            }
        };
        cmd.args(["-cpu", "max", "-smp", "2", "-m", "1024"]);
        // No network device: the guest has loopback only.
        cmd.args(["-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot"]);
        cmd
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

/// A KPI family the kernel cannot serve, the text the agent's reason must
/// contain, and why (for the README).
pub struct Unavailable {
    pub family: &'static str,
    pub reason_has: &'static str,
    pub why: &'static str,
}

/// One kernel of the matrix.
pub struct Kernel {
    /// Its name here: series and architecture.
    pub name: &'static str,
    pub arch: Arch,
    /// Regular expression for `apt-cache search --names-only`; the newest match is used.
    pub package: &'static str,
    /// The distribution release that ships it.
    pub distro: &'static str,
    /// What the agent must report unavailable on it; every other family must work.
    pub unavailable: &'static [Unavailable],
}

/// The request KPIs read the send and receive tracepoints added in 6.3.
const NO_SOCK_LENGTH: Unavailable = Unavailable {
    family: "tcp",
    reason_has: "sock_send_length",
    why: "no `sock_send_length` tracepoint (added in 6.3)",
};

/// Debian's cloud kernels: the releases users run (Debian 11, 12, 13), on
/// both architectures the agent ships for.
pub const MATRIX: &[Kernel] = &[
    Kernel {
        name: "5.10-x86_64",
        arch: Arch::X86_64,
        package: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
        distro: "Debian 11",
        unavailable: &[NO_SOCK_LENGTH],
    },
    Kernel {
        name: "6.1-x86_64",
        arch: Arch::X86_64,
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
        distro: "Debian 12",
        unavailable: &[NO_SOCK_LENGTH],
    },
    Kernel {
        name: "6.12-x86_64",
        arch: Arch::X86_64,
        package: r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64$",
        distro: "Debian 13",
        unavailable: &[],
    },
    Kernel {
        name: "6.1-arm64",
        arch: Arch::Aarch64,
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-arm64$",
        distro: "Debian 12",
        unavailable: &[NO_SOCK_LENGTH],
    },
    Kernel {
        name: "6.12-arm64",
        arch: Arch::Aarch64,
        package: r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-arm64$",
        distro: "Debian 13",
        unavailable: &[],
    },
];

/// The checker's console lines start with this (tests/src/bin/probe-vmcheck.rs).
const MARK: &str = "@@probe-vm";

/// A guest's whole run must end within this (TCG is slow, arm64 slowest).
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub fn results_path(root: &Path) -> PathBuf {
    root.join("target/vm/results.json")
}

pub fn run(root: &Path, only: &[String], refresh: bool, readme_only: bool) -> Result<()> {
    if readme_only {
        return readme::write(root);
    }
    let kernels: Vec<&Kernel> =
        MATRIX.iter().filter(|k| only.is_empty() || only.iter().any(|o| o == k.name)).collect();
    if kernels.is_empty() {
        let names: Vec<&str> = MATRIX.iter().map(|k| k.name).collect();
        bail!("no kernel of the matrix is named {only:?}; the matrix: {names:?}");
    }
    let t0 = Instant::now();
    let out = root.join("target/vm");
    fs::create_dir_all(&out)?;
    // Kernels first: a download problem shows before minutes of building.
    let mut images = Vec::new();
    for k in &kernels {
        images.push(image::kernel(k, refresh)?);
    }
    let mut initrds: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        if kernels.iter().any(|k| k.arch == arch) {
            let bins = build(root, arch)?;
            let initrd = out.join(format!("initramfs-{}.cpio.gz", arch.name()));
            image::initramfs(arch, &bins, &initrd)?;
            initrds.insert(arch.name(), initrd);
        }
    }
    let mut results = Vec::new();
    for (k, (vmlinuz, package)) in kernels.iter().zip(&images) {
        eprintln!("vm: booting {} ({package})", k.name);
        let r = guest(root, k, vmlinuz, package, &initrds[k.arch.name()])?;
        eprintln!(
            "vm: {} {} in {:.0} s{}",
            k.name,
            if r["ok"] == true { "passed" } else { "FAILED" },
            r["seconds"].as_f64().unwrap_or(0.0),
            r["failures"].as_array().map_or(String::new(), |f| f
                .iter()
                .map(|f| format!("\n    {}", f.as_str().unwrap_or("")))
                .collect())
        );
        results.push(r);
    }
    let failed: Vec<&str> =
        results.iter().filter(|r| r["ok"] != true).filter_map(|r| r["name"].as_str()).collect();
    let all = json!({"seconds": t0.elapsed().as_secs_f64(), "guests": results});
    fs::write(results_path(root), serde_json::to_string_pretty(&all)? + "\n")?;
    println!("{}\n{}", readme::table(&all), readme::oldest(&all));
    println!("kernel matrix: {} guests in {:.0} s", results.len(), t0.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("kernel matrix failed on {failed:?} (consoles in target/vm/NAME/console.log)");
    }
    Ok(())
}

/// Builds the agent, the workloads and the checker for `arch` (the debug
/// profile the test suite builds anyway); returns their folder.
fn build(root: &Path, arch: Arch) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "probe-agent",
        "-p",
        "probe-tests",
        "--bins",
    ]);
    let mut dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    if let Some(t) = arch.target() {
        cmd.args(["--target", t]);
        dir = dir.join(t);
    }
    if !cmd.status()?.success() {
        bail!("building for {} failed", arch.name());
    }
    Ok(dir.join("debug"))
}

/// Boots one guest and judges what its checker said.
fn guest(root: &Path, k: &Kernel, vmlinuz: &Path, package: &str, initrd: &Path) -> Result<Value> {
    let dir = root.join("target/vm").join(k.name);
    fs::create_dir_all(&dir)?;
    let console = dir.join("console.log");
    let _ = fs::remove_file(&console);
    let t0 = Instant::now();
    let mut cmd = k.arch.qemu();
    cmd.arg("-kernel").arg(vmlinuz).arg("-initrd").arg(initrd);
    // quiet: only the kernel's warnings and errors share the console.
    cmd.args(["-append", &format!("console={} quiet panic=-1 rdinit=/init", k.arch.console())]);
    cmd.arg("-serial").arg(format!("file:{}", console.display()));
    let mut child =
        cmd.stdin(Stdio::null()).spawn().context("starting qemu (scripts/setup.sh installs it)")?;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if t0.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
    let mut r = judge(k, &text);
    if timed_out {
        push_failure(&mut r, format!("no end within {} s", GUEST_TIMEOUT.as_secs()));
    }
    validate_records(root, &dir, &mut r)?;
    r["name"] = json!(k.name);
    r["arch"] = json!(k.arch.name());
    r["distro"] = json!(k.distro);
    r["package"] = json!(package);
    r["seconds"] = json!((seconds * 10.0).round() / 10.0);
    Ok(r)
}

fn push_failure(r: &mut Value, why: String) {
    r["ok"] = json!(false);
    if let Some(f) = r["failures"].as_array_mut() {
        f.push(json!(why));
    }
}

/// Reads the checker's lines off the console and judges them against the
/// matrix's expectations for `k`.
fn judge(k: &Kernel, console: &str) -> Value {
    let mut r = json!({"ok": true, "failures": [], "kernel": null, "kpis": {}, "checks": [],
        "records": []});
    let mut done = false;
    let mut exit = None;
    for line in console.lines() {
        let Some(at) = line.find(MARK) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&line[at + MARK.len()..]) else {
            push_failure(&mut r, format!("unreadable console line: {line}"));
            continue;
        };
        match v["kind"].as_str() {
            Some("info") => r["kernel"] = v["kernel"].clone(),
            Some("kpi") => {
                let fam = v["family"].as_str().unwrap_or("?").to_string();
                r["kpis"][fam] = json!({"available": v["available"], "reason": v["reason"]});
            }
            Some("check") => {
                if v["ok"] != true {
                    push_failure(
                        &mut r,
                        format!(
                            "{} {}: saw {}, want {}",
                            v["family"], v["check"], v["saw"], v["want"]
                        ),
                    );
                }
                if let Some(c) = r["checks"].as_array_mut() {
                    c.push(v);
                }
            }
            Some("record") => {
                if let Some(c) = r["records"].as_array_mut() {
                    c.push(v["record"].clone());
                }
            }
            Some("done") => done = true,
            Some("exit") => exit = v["status"].as_i64(),
            _ => {}
        }
    }
    if r["kernel"].is_null() {
        push_failure(&mut r, "the guest never ran the checker (boot failed?)".into());
        return r;
    }
    if !done || exit != Some(0) {
        push_failure(&mut r, format!("the checker did not finish cleanly (exit status {exit:?})"));
    }
    // What the kernel can serve must be what the matrix says it can.
    let families: Vec<String> =
        r["kpis"].as_object().map_or(Vec::new(), |m| m.keys().cloned().collect());
    for family in families {
        let kpi = r["kpis"][&family].clone();
        let reason = kpi["reason"].as_str().unwrap_or("");
        match k.unavailable.iter().find(|u| u.family == family) {
            Some(u) if kpi["available"] == true => push_failure(
                &mut r,
                format!(
                    "{family} is available; the matrix expects it unavailable ({}): update it",
                    u.why
                ),
            ),
            Some(u) if !reason.contains(u.reason_has) => push_failure(
                &mut r,
                format!(
                    "{family} unavailable for another reason than expected ({}): {reason}",
                    u.why
                ),
            ),
            None if kpi["available"] != true => {
                push_failure(&mut r, format!("{family} unavailable: {reason}"))
            }
            _ => {}
        }
    }
    for u in k.unavailable {
        if r["kpis"].get(u.family).is_none() {
            push_failure(&mut r, format!("the status record has no {} family", u.family));
        }
    }
    r
}

/// Every record the agent wrote in the guest, through the schema validator.
fn validate_records(root: &Path, dir: &Path, r: &mut Value) -> Result<()> {
    let records = r.as_object_mut().and_then(|o| o.remove("records")).unwrap_or_default();
    let lines: String =
        records.as_array().into_iter().flatten().map(|v| format!("{v}\n")).collect();
    let file = dir.join("records.jsonl");
    fs::write(&file, &lines)?;
    if lines.is_empty() {
        return Ok(());
    }
    let out = Command::new("python3")
        .arg(root.join("scripts/validate-records.py"))
        .arg(root.join("schema/probe-v1.schema.json"))
        .arg(&file)
        .output()
        .context("python3 scripts/validate-records.py")?;
    if !out.status.success() {
        push_failure(
            r,
            format!(
                "records do not match the schema: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        );
    }
    Ok(())
}
