#!/usr/bin/env bash
# The side-by-side benchmarks of docs/BENCHMARKS.md: builds in release mode, then runs
# lameduck-bench (every figure a ratio to a baseline measured in the same run), then the
# throughput of HTTP/1.1, h2c and gRPC by wrk and h2load (scripts/throughput.sh). Extra
# arguments go to lameduck-bench (`--runs 9`, `--only 1,2`; see `--help`; with `--only`, the
# wrk and h2load runs are left out).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p lameduck-bench -p lameduck-demo
# The deploy benchmark's Go peer (section 7): net/http upgraded by cloudflare/tableflip, from
# Debian's packages (golang-go, golang-github-cloudflare-tableflip-dev). Without them the row
# is skipped, and the report says so.
if command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/cloudflare/tableflip ]; then
  GOPATH=/usr/share/gocode GO111MODULE=off go build -o target/release/tableflip-server \
    ./crates/lameduck-bench/go/tableflip-server
else
  echo "note: Go or tableflip missing (apt-get install golang-go golang-github-cloudflare-tableflip-dev); its row is skipped" >&2
fi
# Ten thousand connections need file descriptors; lameduck-bench raises its own soft limit
# to the hard one, and its servers inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Throughput by load generators that are not ours (the Rust driver shares the two cores with
# the server and saturates first): wrk and h2load, from Debian, installed when missing.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p target/bench
target/release/lameduck-bench "$@" | tee target/bench/report.md
# With `--only`, only what was asked for.
if [[ " $* " != *" --only "* ]]; then
  for load in h1 h2 grpc; do
    echo
    LOAD=$load BIN=target/release/bench-server bash scripts/throughput.sh 5
  done | tee -a target/bench/report.md
fi
