//! What a guest boots: a Debian kernel (fetched with apt, cached) and an
//! initramfs holding busybox, the agent, the workloads, the checker and
//! the C libraries they load.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{Arch, Kernel};

/// Where downloads are kept between runs (kernels change only when the
/// cache is cleared or `--refresh` is given).
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/probe/vm")
}

/// apt, pointed at a private sources list and state under the cache: the
/// host's own apt configuration is neither read nor changed, and the
/// packages of other releases and architectures are only downloaded.
fn apt(tool: &str) -> Command {
    let dir = cache_dir().join("apt");
    let mut cmd = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", "/dev/null".into()),
        ("Dir::Etc::Preferences", "/dev/null".into()),
        ("Dir::Etc::PreferencesParts", "/dev/null".into()),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd.args(["-o", "APT::Architecture=amd64", "-o", "APT::Architectures::=amd64"]);
    cmd.args(["-o", "APT::Architectures::=arm64", "-o", "Acquire::Languages=none"]);
    // Only the package lists: no translations, contents or app metadata.
    cmd.args(["-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"]);
    cmd.args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"]);
    cmd.args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"]);
    cmd.args(["-o", "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"]);
    cmd.args(["-o", "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"]);
    cmd
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Refreshes the private package lists (about 60 MB; only when something
/// is missing from the cache).
fn apt_update() -> Result<()> {
    let dir = cache_dir().join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources: String = ["bullseye", "bookworm", "trixie"]
        .iter()
        .map(|s| {
            format!(
                "deb [arch=amd64,arm64 signed-by={keyring}] http://deb.debian.org/debian {s} main\n"
            )
        })
        .collect();
    fs::write(dir.join("sources.list"), sources)?;
    eprintln!("vm: updating the package lists of bullseye, bookworm and trixie");
    run(apt("apt-get").arg("update").arg("-qq"))?;
    Ok(())
}

/// Splits into digit and non-digit runs, so 6.1.0-50 sorts after 6.1.0-9.
pub fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 {
            out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let other = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            out.push((0, rest[..other].to_string()));
            rest = &rest[other..];
        }
    }
    out
}

/// Downloads `pkg` (apt syntax, e.g. `busybox-static:arm64/bookworm`)
/// into `dir` and unpacks it there; returns the unpacked tree.
fn fetch_deb(pkg: &str, dir: &Path) -> Result<PathBuf> {
    let debs = dir.join("deb");
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&debs)?;
    run(apt("apt-get").current_dir(&debs).args(["download", "-qq", pkg]))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {pkg} left no .deb"))?;
    let tree = dir.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::remove_dir_all(&debs)?;
    Ok(tree)
}

/// A kernel of the matrix: its vmlinuz and package name, from the cache
/// or fetched (the newest package of its series in Debian's archive).
pub fn kernel(k: &Kernel, refresh: bool) -> Result<(PathBuf, String)> {
    let dir = cache_dir().join("kernels").join(k.name);
    let (vmlinuz, package) = (dir.join("vmlinuz"), dir.join("package"));
    if !refresh && vmlinuz.is_file() && package.is_file() {
        return Ok((vmlinuz, fs::read_to_string(package)?.trim().to_string()));
    }
    let search = || -> Result<Vec<String>> {
        let out = run(apt("apt-cache").args(["search", "--names-only", k.package]))?;
        Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
    };
    let mut names = search().unwrap_or_default();
    if names.is_empty() || refresh {
        apt_update()?;
        names = search()?;
    }
    let name = names
        .into_iter()
        .max_by_key(|n| natural_key(n))
        .with_context(|| format!("no package matches {} in Debian's archive", k.package))?;
    eprintln!("vm: fetching {name}");
    let pkg = format!("{name}:{}", k.arch.deb());
    let tree = fetch_deb(&pkg, &dir.join("unpacked"))?;
    let boot = tree.join("boot");
    let image = fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("{name} has no /boot/vmlinuz-*"))?;
    fs::copy(&image, &vmlinuz)?;
    fs::write(&package, &name)?;
    fs::remove_dir_all(dir.join("unpacked"))?;
    Ok((vmlinuz, name))
}

/// Debian's static busybox for `arch` (bookworm's, as on the build hosts).
fn busybox(arch: Arch) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("busybox-{}", arch.deb()));
    let bin = dir.join("busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    let pkg = format!("busybox-static:{}/bookworm", arch.deb());
    let fetch = |dir: &Path| fetch_deb(&pkg, &dir.join("unpacked"));
    let tree = match fetch(&dir) {
        Ok(t) => t,
        Err(_) => {
            apt_update()?;
            fetch(&dir)?
        }
    };
    let found = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .context("busybox-static has no busybox binary")?;
    fs::copy(found, &bin)?;
    fs::remove_dir_all(dir.join("unpacked"))?;
    Ok(bin)
}

/// The shared libraries `bin` loads, as the architecture's own dynamic
/// loader lists them (arm64's under qemu user emulation): (soname, path).
fn libraries(arch: Arch, bin: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = match arch {
        Arch::X86_64 => run(Command::new(arch.loader()).arg("--list").arg(bin))?,
        Arch::Aarch64 => run(Command::new("qemu-aarch64-static")
            .args([
                "-L",
                "/usr/aarch64-linux-gnu",
                "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
            ])
            .arg("--list")
            .arg(bin))?,
    };
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
        if let Some((name, rest)) = line.trim().split_once(" => ") {
            let path = rest.split_whitespace().next().unwrap_or("");
            let path = match arch {
                Arch::X86_64 => PathBuf::from(path),
                // qemu's -L prefix is not part of what the loader prints.
                Arch::Aarch64 if !path.starts_with("/usr/aarch64-linux-gnu") => {
                    Path::new("/usr/aarch64-linux-gnu").join(path.trim_start_matches('/'))
                }
                Arch::Aarch64 => PathBuf::from(path),
            };
            if !path.is_file() {
                bail!("{} needs {name}, not found ({line})", bin.display());
            }
            libs.push((name.to_string(), path));
        }
    }
    Ok(libs)
}

/// Where the host keeps the dynamic loader the guest's binaries name.
fn host_loader(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => PathBuf::from(arch.loader()),
        Arch::Aarch64 => PathBuf::from("/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1"),
    }
}

/// The guest's /init: mounts what the agent reads, brings loopback up,
/// runs the checker, and powers off (the host reads the console).
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname probe-vm
export PATH=/bin LD_LIBRARY_PATH=/lib/probe PROBE_AGENT_BIN=/probe/probe-agent PROBE_WORKLOAD_BIN=/probe/probe-workload
/probe/probe-vmcheck
echo "@@probe-vm {\"kind\":\"exit\",\"status\":$?}"
poweroff -f
"#;

/// A newc cpio archive (the initramfs format), written by hand: the
/// header is 13 hex fields; names and data are padded to 4 bytes.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let fields =
            [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Builds `out` (gzip'd newc): busybox and its applets, the binaries of
/// `bin_dir` stripped, their libraries, and /init.
pub fn initramfs(arch: Arch, bin_dir: &Path, out: &Path) -> Result<()> {
    let mut cpio = Cpio { out: Vec::new(), ino: 0 };
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/probe", "lib64", "probe"] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", &fs::read(busybox(arch)?)?, true);
    for applet in ["sh", "mount", "ip", "hostname", "poweroff", "uname", "cat", "ls", "sleep"] {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    cpio.file("init", INIT.as_bytes(), true);
    let strip = match arch {
        Arch::X86_64 => "strip",
        Arch::Aarch64 => "aarch64-linux-gnu-strip",
    };
    let mut libs = Vec::new();
    for name in ["probe-agent", "probe-workload", "probe-vmcheck"] {
        let bin = bin_dir.join(name);
        let stripped = out.with_extension(name);
        run(Command::new(strip).arg("-o").arg(&stripped).arg(&bin))?;
        cpio.file(&format!("probe/{name}"), &fs::read(&stripped)?, true);
        fs::remove_file(&stripped)?;
        libs.extend(libraries(arch, &bin)?);
    }
    libs.sort();
    libs.dedup();
    for (name, path) in libs {
        cpio.file(&format!("lib/probe/{name}"), &fs::read(&path)?, true);
    }
    let loader = arch.loader().trim_start_matches('/');
    cpio.file(loader, &fs::read(host_loader(arch))?, true);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&cpio.finish())?;
    fs::write(out, gz.finish()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_abi_sorts_last() {
        let mut v = ["linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v[1], "linux-image-6.1.0-50-cloud-amd64");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio { out: Vec::new(), ino: 0 };
        c.file("init", b"#!/bin/sh\n", true);
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert!(out.len().is_multiple_of(4));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
