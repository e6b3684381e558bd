#!/usr/bin/env bash
# Throughput of lameduck's HttpServer before and after a change, bare hyper beside both:
# `scripts/wrk-compare.sh OLD_BENCH_SERVER [ROUNDS]`, where OLD_BENCH_SERVER is a bench-server
# built from the older commit (e.g. `git worktree add /tmp/old REV && cd /tmp/old &&
# CARGO_TARGET_DIR=/tmp/target-old cargo build --release -p lameduck-bench`). Each round runs
# hyper, the old lameduck and the new one in turn, `wrk -t1 -c64 -d4s GET /` each
# (apt-get install wrk); with `H2=1`, `h2load -c16 -m16 -D4` over h2c instead
# (apt-get install nghttp2-client). METRIC=cpu: the server's CPU microseconds per request
# instead of requests/s (see scripts/cpu-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?the older bench-server binary}
rounds=${2:-5}
cargo build --release --quiet -p lameduck-bench
new=target/release/bench-server
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
echo "| round | hyper | lameduck before | lameduck after | before / hyper | after / hyper | after / before |"
echo "|---|---|---|---|---|---|---|"
for i in $(seq 1 "$rounds"); do
  h=$(run "$new" hyper 19401); o=$(run "$old" lameduck 19402); n=$(run "$new" lameduck 19403)
  awk -v i="$i" -v h="$h" -v o="$o" -v n="$n" -v f="$fmt" \
    'BEGIN { printf "| %d | " f " | " f " | " f " | %.3f | %.3f | %.3f |\n", i, h, o, n, o/h, n/h, n/o }'
done
