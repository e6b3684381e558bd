#!/usr/bin/env bash
# HTTPS through lameduck against a bare tokio-rustls + hyper-util server (the same app, the same
# rustls configuration: ring, TLS 1.2 and 1.3, ALPN h2 and http/1.1), alternating, ROUNDS
# rounds (default 5): `scripts/tls-compare.sh [ROUNDS]` (`LOADS="h1 h2"` for some of them). Three loads, by generators that are not
# ours (apt-get install wrk nghttp2-client openssl):
#   keep-alive HTTP/1.1: wrk -t1 -c64 -d4s https://...
#   h2:                  h2load -c16 -m16 -D4 https://...
#   new handshakes:      wrk -t1 -c16 -d4s -H 'Connection: close' https://... (one per request)
# METRIC=cpu: the server's CPU microseconds per request instead of requests/s (the ratio is
# then lameduck's cost over the bare server's; see scripts/cpu-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu-lib.sh
source scripts/cpu-lib.sh
rounds=${1:-5}
loads=${LOADS:-h1 h2 handshakes}
for tool in wrk h2load openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install wrk nghttp2-client openssl" >&2; exit 1; }
done
cargo build --release --quiet -p lameduck-bench
bin=target/release/bench-server
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
load() {
  local how=$1 url=$2
  case $how in
    h1) wrk -t1 -c64 -d4s "$url" 2>/dev/null |
      wrk_figures ;;
    h2) h2load -c16 -m16 -D4 "$url" 2>/dev/null |
      h2load_figures ;;
    handshakes) wrk -t1 -c16 -d4s -H 'Connection: close' "$url" 2>/dev/null |
      wrk_figures ;;
  esac
}
run() {
  local kind=$1 port=$2 how=$3 out pid rps n before after
  out=$(mktemp)
  "$bin" "$kind" "127.0.0.1:$port" "$dir/cert.pem" "$dir/key.pem" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do grep -q READY "$out" && break; sleep 0.05; done
  before=$(ticks "$pid")
  read -r rps n < <(load "$how" "https://127.0.0.1:$port/")
  after=$(ticks "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  figure "$rps" "$n" "$((after - before))"
}
for how in $loads; do
  echo
  echo "### $how"
  echo "| round | tokio-rustls + hyper | lameduck | lameduck / bare |"
  echo "|---|---|---|---|"
  for i in $(seq 1 "$rounds"); do
    b=$(run hyper-tls 19411 "$how"); l=$(run lameduck-tls 19412 "$how")
    awk -v i="$i" -v b="$b" -v l="$l" -v f="$fmt" 'BEGIN { printf "| %d | " f " | " f " | %.3f |\n", i, b, l, l/b }'
  done
done
