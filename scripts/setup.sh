#!/usr/bin/env bash
# Installs everything probe needs on a fresh Debian/Ubuntu machine, as root,
# and nothing that is already there. Safe to run again: every step checks
# first. Used by the README's run and test commands and by .ci/run.
set -euo pipefail

log() { echo "setup: $*" >&2; }

# --- Debian packages -------------------------------------------------------
# bpftrace: the benchmark's comparison tracer; nginx and wrk: its real
# server and load generator. bpftool: inspection. util-linux: setpriv and
# taskset for the tests and the benchmark. syslog-ng-core, prometheus
# (with promtool) and python3-jsonschema: the real consumers and the
# independent schema validator of the output tests. qemu-system-x86 and
# qemu-system-arm boot the kernel matrix (`cargo xtask vm`, which fetches
# the kernels and busybox itself with apt-get download, into ~/.cache).
# podman, buildah, runc and debootstrap: the container image, built and run
# without a registry (scripts/image.sh, tests/tests/image.rs). python3-venv:
# the manifest validators' own environment (below). redis-server,
# redis-tools, postgresql and apache2-utils: the real servers and clients
# (redis-benchmark, psql, pgbench, ab) whose own counts are the truth of the
# request tests (tests/tests/requests.rs). chromium-headless-shell renders
# the HTML report to a screenshot and tmux runs `probe-agent top` in a
# terminal, for the report and console tests.
want_pkgs=(bpftrace bpftool stress-ng syslog-ng-core prometheus python3-jsonschema iproute2 procps util-linux curl pkg-config build-essential nginx wrk gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static qemu-system-x86 qemu-system-arm debian-archive-keyring podman buildah runc debootstrap python3-venv redis-server redis-tools postgresql apache2-utils chromium-headless-shell tmux)
missing=()
for p in "${want_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages (${missing[*]}); run as root to install them"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Install services (nginx) without starting them: the benchmark runs its
  # own instance on a loopback port.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
fi

# kubectl (with its built-in kustomize) validates the Kustomize base: the
# Kubernetes project's package where its apt source is configured, else
# Debian's older kubernetes-client.
if ! command -v kubectl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if apt-cache show kubectl >/dev/null 2>&1; then
    log "installing kubectl"
    apt-get install -y -qq --no-install-recommends kubectl >/dev/null
  else
    log "installing kubernetes-client (kubectl)"
    apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
  fi
fi

# A Python environment at $HOME/.cache/probe/$1 holding exactly the pinned
# packages $2, made again whenever the list changes.
python_env() {
  local venv="$HOME/.cache/probe/$1" want_py="$2"
  if [ "$(cat "$venv/.wants" 2>/dev/null)" != "$want_py" ]; then
    log "making $venv ($want_py)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $want_py
    echo "$want_py" > "$venv/.wants"
  fi
}

# --- Python tools for the deployment files, in their own environment ------
# kubernetes-validate (the built-in kinds' schemas, offline) and the
# Prometheus Operator's CRD models (the PodMonitor), pinned, from PyPI.
python_env venv-deploy \
  "kubernetes-validate==1.37.0 cloudcoil-models-prometheus-operator==0.80.1.0 PyYAML"

# --- The OTLP output test's independent decoder -----------------------------
# OpenTelemetry's own Python message classes (opentelemetry-proto, with
# Google's protobuf runtime), pinned, in their own environment: the output
# test decodes the agent's OTLP exports with them (scripts/otlp-decode.py).
python_env venv-otlp "opentelemetry-proto==1.45.2"

# --- Rust toolchains -------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v rustup >/dev/null; then
  log "rustup is required (https://rustup.rs) and is not installed"
  exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly (needed for -Z build-std=core)"
  rustup component add rust-src --toolchain nightly
fi

if ! rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu'; then
  log "adding the aarch64 target (arm64 cross-build and emulated tests)"
  rustup target add aarch64-unknown-linux-gnu
fi

# --- bpf-linker, built against the nightly's own LLVM ----------------------
# The prebuilt bpf-linker links its own LLVM; rustc's bitcode must be read by
# the same LLVM major, so build it against the libLLVM that ships inside the
# nightly toolchain. Cached in ~/.cargo/bin; rebuilt only if the LLVM major
# the nightly uses changes.
llvm_major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
stamp="$HOME/.cargo/bin/.bpf-linker-llvm"
if ! command -v bpf-linker >/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$llvm_major" ]; then
  sysroot=$(rustc +nightly --print sysroot)
  lib=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
  [ -n "$lib" ] || lib=$(ls "$sysroot"/lib/libLLVM-*.so | head -n1)
  prefix="$HOME/.cache/probe/llvm-$llvm_major"
  mkdir -p "$prefix/lib"
  ln -sf "$lib" "$prefix/lib/libLLVM.so"
  ln -sf "$lib" "$prefix/lib/$(basename "$lib")"
  log "building bpf-linker against $(basename "$lib") (about a minute, once per machine)"
  LLVM_PREFIX="$prefix" LD_LIBRARY_PATH="$prefix/lib" \
    RUSTFLAGS="-C link-arg=-Wl,-rpath,$prefix/lib" \
    cargo install --locked bpf-linker --version '^0.13' \
      --no-default-features --features "llvm-$llvm_major"
  echo "$llvm_major" > "$stamp"
fi
log "ready"
