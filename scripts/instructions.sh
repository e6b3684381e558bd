#!/usr/bin/env bash
# Instructions per request of bench-server kinds under callgrind (apt-get install valgrind
# nghttp2-client): what a request costs the server's code, counted, not timed, so the same on a
# busy machine as on a quiet one. `scripts/instructions.sh` (LOAD=h1|h2|grpc, KINDS="..." as
# in throughput.sh; TLS=1: HTTPS, hyper-tls against lameduck-tls with a P-256 pair made by
# openssl, for LOAD=h1 or h2). Each kind serves 2,000 then 12,000 requests (h2load, 16 connections); the
# difference over 10,000 leaves out start and shutdown. Built with the `profiling` profile
# (release with line tables), so that `callgrind_annotate --auto=yes` on the kept output names
# source lines.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind h2load; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install valgrind nghttp2-client" >&2; exit 1; }
done
cargo build --profile profiling --quiet -p lameduck-bench
bin=target/profiling/bench-server
load=${LOAD:-h1}
case $load in
  h1) kinds=${KINDS:-hyper axum lameduck}; path=/; args=(--h1 -c16) ;;
  h2) kinds=${KINDS:-hyper axum lameduck}; path=/; args=(-c16 -m16) ;;
  grpc) kinds=${KINDS:-tonic lameduck-grpc}; path=/demo.v1.Echo/Echo
    body=$(mktemp); printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$body"; trap 'rm -f "$body"' EXIT
    args=(-c8 -m16 -d "$body" -H 'content-type: application/grpc' -H 'te: trailers') ;;
  *) echo "LOAD is h1, h2 or grpc" >&2; exit 2 ;;
esac
scheme=http tls=()
if [ "${TLS:-0}" = 1 ]; then
  [ "$load" != grpc ] || { echo "TLS=1 is for LOAD=h1 or h2" >&2; exit 2; }
  command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
  kinds=${KINDS:-hyper-tls lameduck-tls}
  pair=$(mktemp -d); trap 'rm -rf "$pair"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$pair/key.pem" -out "$pair/cert.pem" 2>/dev/null
  scheme=https tls=("$pair/cert.pem" "$pair/key.pem")
fi
out=target/callgrind
mkdir -p "$out"
total() { # KIND N: the server's instructions for N requests
  local kind=$1 n=$2 port log pid
  port=$((20000 + RANDOM % 20000))
  log=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out/$kind-$load-$n.out" \
    "$bin" "$kind" "127.0.0.1:$port" "${tls[@]}" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do grep -q READY "$log" && break; sleep 0.05; done
  h2load "${args[@]}" -n "$n" "$scheme://127.0.0.1:$port$path" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$log"
  awk '/^(summary|totals):/ {print $2; exit}' "$out/$kind-$load-$n.out"
}
echo "| kind ($load${TLS:+, TLS=$TLS}) | instructions per request | ratio to the first |"
echo "|---|---:|---:|"
first=""
for kind in $kinds; do
  a=$(total "$kind" 2000); b=$(total "$kind" 12000)
  per=$(( (b - a) / 10000 ))
  first=${first:-$per}
  awk -v k="$kind" -v p="$per" -v f="$first" 'BEGIN { printf "| %s | %d | %.3f |\n", k, p, p / f }'
done
