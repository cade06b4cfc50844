#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing, then
# runs formatting and lint checks, the pure tests, a stub build (no eBPF
# toolchain), and the integration tests that load the real programs (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== fmt and clippy"
cargo fmt --all --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== stub build: check, clippy and pure tests without the eBPF toolchain"
PROBE_EBPF_STUB=1 cargo test --quiet --target-dir target/stub -p probe-common -p probe-agent
out=$(PROBE_EBPF_STUB=1 cargo run --quiet --target-dir target/stub -p probe-agent -- --duration 1s 2>&1 >/dev/null) && {
  echo "the stub agent should refuse to run"; exit 1; }
case "$out" in *"built without its eBPF object"*) ;; *) echo "unclear stub error: $out"; exit 1;; esac

echo "== arm64: cross-build the agent, run the pure tests under qemu"
cargo build --quiet --target aarch64-unknown-linux-gnu -p probe-agent
cargo test --quiet --target aarch64-unknown-linux-gnu -p probe-common -p probe-agent

echo "== all tests (integration tests load the real programs, one at a time)"
cargo test -- --test-threads=1

echo "== deployment files"
bash scripts/check-packaging.sh
# What the agent used in its container in the image smoke test (tests/tests/image.rs).
cat target/image-smoke.txt 2>/dev/null || true
