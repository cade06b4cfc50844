#!/usr/bin/env bash
# Rewrites the README's KPI table from the catalogue (`probe-agent kpis`);
# a unit test fails while the two differ.
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(PROBE_EBPF_STUB=1 cargo run --quiet --target-dir target/stub -p probe-agent -- kpis)
python3 - "$table" <<'PY'
import sys
s = open("README.md").read()
b, e = "<!-- kpis:begin -->\n", "<!-- kpis:end -->"
i, j = s.index(b) + len(b), s.index(e)
open("README.md", "w").write(s[:i] + sys.argv[1] + "\n" + s[j:])
PY
