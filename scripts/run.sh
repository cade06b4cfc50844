#!/usr/bin/env bash
# The one run command (README): installs what is missing, builds the agent
# and runs it with the given arguments (default: every 10s, to stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p probe-agent >&2
exec ./target/release/probe-agent "$@"
