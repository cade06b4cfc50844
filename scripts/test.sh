#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing, then
# runs formatting and lint checks, the pure tests, a stub build (no eBPF
# toolchain), the integration tests that load the real programs (root), and
# the same programs' ground-truth checks on other kernels and on arm64, in
# QEMU guests (`cargo xtask vm`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Each step says when it starts, so a slow CI run shows where the time went.
step() { echo "== $* (at ${SECONDS}s)"; }

step "fmt and clippy"
cargo fmt --all --check
cargo clippy --all-targets --quiet -- -D warnings

step "stub build: check, clippy and pure tests without the eBPF toolchain"
PROBE_EBPF_STUB=1 cargo test --quiet --target-dir target/stub -p probe-common -p probe-agent
out=$(PROBE_EBPF_STUB=1 cargo run --quiet --target-dir target/stub -p probe-agent -- --duration 1s 2>&1 >/dev/null) && {
  echo "the stub agent should refuse to run"; exit 1; }
case "$out" in *"built without its eBPF object"*) ;; *) echo "unclear stub error: $out"; exit 1;; esac

step "arm64: cross-build the agent, run the pure tests under qemu"
cargo build --quiet --target aarch64-unknown-linux-gnu -p probe-agent
cargo test --quiet --target aarch64-unknown-linux-gnu -p probe-common -p probe-agent

step "all tests (integration tests load the real programs, one at a time)"
cargo test -- --test-threads=1

step "kernel matrix: Debian's 5.10, 6.1, 6.12 (x86_64) and 6.1, 6.12 (arm64) under QEMU"
cargo xtask vm

step "deployment files"
bash scripts/check-packaging.sh
# What the agent used in its container in the image smoke test (tests/tests/image.rs).
cat target/image-smoke.txt 2>/dev/null || true
echo "== all passed in ${SECONDS}s"
