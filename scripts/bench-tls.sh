#!/usr/bin/env bash
# What reading HTTPS through OpenSSL's uprobes costs per request: nginx over
# HTTPS (one worker, a constant answer, keep-alive) under ApacheBench with
# one connection, in rounds of four configurations in turn:
#   none      no agent
#   l4        the agent as deployed ([requests] tls_uprobes = false, the
#             default: TLS counted L4)
#   uprobes   the agent with tls_uprobes = true (uprobes on libssl.so.3)
#   bpftrace  bpftrace with empty programs on SSL_read/SSL_write entry and
#             return: the kernel's own cost of the same breakpoints
# Prints ab's mean time per request for each, then the medians. As root,
# after a build (AGENT defaults to target/debug/probe-agent).
# Usage: scripts/bench-tls.sh [ROUNDS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-10000}
agent=${AGENT:-$PWD/target/debug/probe-agent}
lib=$(ldd "$(command -v nginx)" | awk '/libssl.so.3/{print $3}')
dir=$(mktemp -d /tmp/bench-tls.XXXXXX)
trap 'kill "$(cat "$dir/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 512; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    location / { return 200 "ok\n"; }
  }
}
EOF
"$agent" config --default |
  sed 's/^# \[requests\]/[requests]/; s/^# tls_uprobes = false/tls_uprobes = true/' >"$dir/uprobes.toml"
nginx -p "$dir" -c "$dir/nginx.conf"
sleep 0.5

per_request() {
  ab -q -k -n "$n" -c 1 "https://127.0.0.1:$port/" |
    awk '/Time per request.*\(mean\)/{print $4 * 1000; exit}'
}
run() {
  local pid=""
  case $1 in
    l4) "$agent" run --interval 60s --comm nginx --comm ab >/dev/null 2>&1 &
      pid=$!; sleep 3 ;;
    uprobes) "$agent" run --interval 60s --comm nginx --comm ab --config "$dir/uprobes.toml" >/dev/null 2>&1 &
      pid=$!; sleep 3 ;;
    bpftrace) bpftrace -e "uprobe:$lib:SSL_read {} uretprobe:$lib:SSL_read {}
        uprobe:$lib:SSL_write {} uretprobe:$lib:SSL_write {}" >/dev/null 2>&1 &
      pid=$!; sleep 4 ;;
  esac
  echo "$1 $(per_request)"
  if [ -n "$pid" ]; then kill -INT "$pid"; wait "$pid" || true; fi
}
for _ in $(seq "$rounds"); do
  for config in none l4 uprobes bpftrace; do run "$config"; done
done | tee "$dir/runs.txt"
echo
echo "| configuration | us per request (median of $rounds) | us added |"
echo "|---|---:|---:|"
for config in none l4 uprobes bpftrace; do
  awk -v c="$config" '$1 == c {print $2}' "$dir/runs.txt" | sort -n |
    awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
done | paste -d' ' <(printf '%s\n' none l4 uprobes bpftrace) - |
  awk 'NR == 1 {base = $2} {printf "| %s | %.1f | %.1f |\n", $1, $2, $2 - base}'
