//! Builds probe-ebpf for the BPF target with the nightly toolchain (aya-build)
//! and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! Where the eBPF toolchain is missing (no bpf-linker, or no nightly rust-src)
//! it writes an empty stub instead, so `cargo check`, clippy and the pure unit
//! tests work anywhere; the agent then refuses to load with a clear message.
//! `scripts/setup.sh` installs the toolchain.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_STUB");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let missing = missing_toolchain();
    if env::var_os("PROBE_EBPF_STUB").is_some() || missing.is_some() {
        let why = missing.unwrap_or_else(|| "PROBE_EBPF_STUB is set".into());
        println!(
            "cargo:warning=building a stub eBPF object ({why}); run scripts/setup.sh for a working agent"
        );
        fs::write(out_dir.join("probe"), [])?;
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .context("agent has no parent directory")?
        .join("probe-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "probe-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

/// Why the eBPF object cannot be built here, if it cannot.
fn missing_toolchain() -> Option<String> {
    let path = env::var_os("PATH").unwrap_or_default();
    let home_bin = env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    let has_linker =
        env::split_paths(&path).chain(home_bin).any(|dir| dir.join("bpf-linker").is_file());
    if !has_linker {
        return Some("bpf-linker not found".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        None => Some("no nightly toolchain".into()),
        Some(root) if !root.join("lib/rustlib/src/rust/library/core").is_dir() => {
            Some("the nightly toolchain has no rust-src component".into())
        }
        Some(_) => None,
    }
}
