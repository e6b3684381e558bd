#!/usr/bin/env bash
# The side-by-side benchmarks of docs/BENCHMARKS.md: builds in release mode, then runs
# lameduck-bench (every figure a ratio to a baseline measured in the same run). Extra
# arguments go to lameduck-bench (`--runs 9`, `--only 1,2`; see `--help`).
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
mkdir -p target/bench
target/release/lameduck-bench "$@" | tee target/bench/report.md
