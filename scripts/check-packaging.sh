#!/usr/bin/env bash
# Validates the deployment files, offline:
# - the Kustomize base renders (`kubectl kustomize`), and every resource in
#   it and in its files matches the Kubernetes schema (kubernetes-validate
#   --strict); the PodMonitor matches the Prometheus Operator's CRD;
# - the Prometheus rules load and pass their unit tests (promtool), a case
#   for each level of each rule;
# - the Grafana dashboard is well-formed (its queries run against a real
#   Prometheus in tests/tests/output.rs);
# - the systemd unit (systemd-analyze verify).
# The tools come from scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$HOME/.cache/probe/venv-deploy"
[ -x "$venv/bin/kubernetes-validate" ] || { echo "run scripts/setup.sh first ($venv)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Kubernetes ---------------------------------------------------------------
kubectl kustomize packaging/kubernetes > "$tmp/rendered.yaml"
for f in packaging/kubernetes/*.yaml "$tmp/rendered.yaml"; do
  case "$f" in */kustomization.yaml) continue;; esac
  out=$("$venv/bin/kubernetes-validate" --strict --quiet "$f" 2>&1) || { echo "$out"; exit 1; }
  # Only the Prometheus Operator's kinds may lack a built-in schema.
  if grep -v "kind PodMonitor with api version monitoring.coreos.com/v1" <<<"$out" | grep -q .; then
    echo "$out"; exit 1
  fi
done
"$venv/bin/python" scripts/validate-crs.py "$tmp/rendered.yaml" >/dev/null \
  || "$venv/bin/python" scripts/validate-crs.py "$tmp/rendered.yaml"
grep -q "^kind: PodMonitor" "$tmp/rendered.yaml" || { echo "no PodMonitor in the base"; exit 1; }

# --- Prometheus rules ---------------------------------------------------------
promtool check rules packaging/prometheus/probe-rules.yaml >/dev/null
promtool test rules packaging/prometheus/probe-rules.test.yaml

# --- Grafana dashboard --------------------------------------------------------
"$venv/bin/python" - packaging/grafana/probe-dashboard.json <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert d.get("uid") and d.get("title") and exprs, "dashboard without uid, title or queries"
assert all(p.get("datasource", {}).get("uid") == "${datasource}" for p in d["panels"] if p.get("targets")), \
    "every panel queries the dashboard's Prometheus variable"
EOF

# --- systemd ------------------------------------------------------------------
# systemd-analyze checks that ExecStart exists: verify against the built binary.
install -m 0755 target/debug/probe-agent "$tmp/probe-agent" 2>/dev/null \
  || install -m 0755 target/release/probe-agent "$tmp/probe-agent"
sed "s|/usr/local/bin/probe-agent|$tmp/probe-agent|" packaging/systemd/probe-agent.service \
  > "$tmp/probe-agent.service"
# Warnings (an unknown or misspelt key) fail the check too.
out=$(systemd-analyze verify "$tmp/probe-agent.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "packaging: kustomize base, PodMonitor, Prometheus rules and their tests, dashboard, systemd unit valid"
