#!/usr/bin/env bash
# What the live metrics cost: `scripts/metrics-compare.sh OLD_BENCH_SERVER [ROUNDS]`, where
# OLD_BENCH_SERVER is a bench-server built from a commit before the metrics (e9d7729: no
# recording code at all, as with the feature off), bare hyper beside. Each round runs, in turn,
# hyper, the old lameduck, the new one without an exporter (the feature on, nothing installed)
# and the new one with the Prometheus exporter installed (every series recorded), each under
# `wrk -t1 -c64 -d4s GET /`; with `H2=1`, `h2load -c16 -m16 -D4` over h2c instead.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?the older bench-server binary}
rounds=${2:-5}
cargo build --release --quiet -p lameduck-bench
new=target/release/bench-server
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
echo "| round | hyper | before | no exporter | exporter | before / hyper | exporter / hyper | no exporter / before | exporter / before |"
echo "|---|---|---|---|---|---|---|---|---|"
for i in $(seq 1 "$rounds"); do
  h=$(run "$new" hyper 19411); o=$(run "$old" lameduck 19412)
  n=$(run "$new" lameduck 19413); m=$(run "$new" lameduck-metrics 19414)
  awk -v i="$i" -v h="$h" -v o="$o" -v n="$n" -v m="$m" \
    'BEGIN { printf "| %d | %.0f | %.0f | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f |\n", i, h, o, n, m, o/h, m/h, n/o, m/o }'
done
