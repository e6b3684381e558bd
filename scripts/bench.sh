#!/usr/bin/env bash
# The side-by-side benchmarks of docs/BENCHMARKS.md: builds in release mode, then runs
# lameduck-bench (every figure a ratio to a baseline measured in the same run). Extra
# arguments go to lameduck-bench (`--runs 9`, `--only 1,2`; see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p lameduck-bench -p lameduck-demo
# Ten thousand connections need file descriptors; lameduck-bench raises its own soft limit
# to the hard one, and its servers inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p target/bench
target/release/lameduck-bench "$@" | tee target/bench/report.md
