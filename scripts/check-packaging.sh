#!/usr/bin/env bash
# Validates the deployment files: the DaemonSet against the Kubernetes
# schema (kubernetes-validate, offline) and the systemd unit with
# systemd-analyze verify.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --user kubernetes-validate >&2
fi
kubernetes-validate --strict packaging/kubernetes/daemonset.yaml
# systemd-analyze checks that ExecStart exists: verify against the built binary.
bin=$(mktemp -d)
install -m 0755 target/debug/probe-agent "$bin/probe-agent" 2>/dev/null || install -m 0755 target/release/probe-agent "$bin/probe-agent"
unit=$(mktemp -d)/probe-agent.service
sed "s|/usr/local/bin/probe-agent|$bin/probe-agent|" packaging/systemd/probe-agent.service > "$unit"
# Warnings (an unknown or misspelt key) fail the check too.
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "packaging: daemonset and systemd unit valid"
