#!/usr/bin/env bash
# Requests per second of bench-server kinds side by side, by load generators that are not ours
# (apt-get install wrk nghttp2-client): `scripts/throughput.sh [ROUNDS]` (default 7). Each round
# runs every kind once, in turn; the table gives each round's figures and ratios to the first
# kind, and the medians of those ratios.
#   KINDS="hyper axum lameduck"   the kinds, the baseline first (gRPC: "tonic lameduck-grpc")
#   LOAD=h1|h2|grpc, PIN=1         see scripts/bench-lib.sh
#   METRIC=cpu                     the server's CPU microseconds per request instead (lower
#                                  is better; the ratios are then the kind's cost over the
#                                  baseline's)
#   BIN=path                       another bench-server (default: a release build of this tree)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p lameduck-bench
  BIN=target/release/bench-server
fi
if [ "${LOAD:-}" = grpc ]; then KINDS=${KINDS:-tonic lameduck-grpc}; fi
read -r -a kinds <<<"${KINDS:-hyper axum lameduck}"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
echo "load: $LOAD, pinned: ${PIN:-0}, figure: ${METRIC:-rps}, $rounds rounds, $(date -u +%F)"
printf '| round |'; for k in "${kinds[@]}"; do printf ' %s |' "$k"; done
for k in "${kinds[@]:1}"; do printf ' %s / %s |' "$k" "${kinds[0]}"; done; echo
printf '|---|'; for _ in "${kinds[@]}" "${kinds[@]:1}"; do printf -- '---|'; done; echo
ratios=$(mktemp)
for i in $(seq 1 "$rounds"); do
  figures=()
  for k in "${kinds[@]}"; do figures+=("$(run "$BIN" "$k" 19420)"); done
  printf '| %d |' "$i"; for f in "${figures[@]}"; do printf " $fmt |" "$f"; done
  for j in $(seq 1 $((${#kinds[@]} - 1))); do
    r=$(awk -v a="${figures[$j]}" -v b="${figures[0]}" 'BEGIN { printf "%.3f", a / b }')
    printf ' %s |' "$r"; echo "$j $r" >>"$ratios"
  done
  echo
done
printf '| median |'; for _ in "${kinds[@]}"; do printf ' |'; done
for j in $(seq 1 $((${#kinds[@]} - 1))); do
  printf ' **%s** |' "$(awk -v j="$j" '$1 == j {print $2}' "$ratios" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
echo
rm -f "$ratios"
