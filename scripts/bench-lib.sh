# Shared by the throughput comparisons (wrk-compare.sh, metrics-compare.sh): `load PORT` runs
# the load generator against 127.0.0.1:PORT and prints requests/s (wrk; with `H2=1`, h2load over
# h2c); `run BIN KIND PORT` starts `BIN KIND 127.0.0.1:PORT` (a bench-server), loads it, stops it
# with SIGTERM, and prints the figure.
if [ "${H2:-0}" = 1 ]; then
  command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
else
  command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
fi
load() {
  if [ "${H2:-0}" = 1 ]; then
    h2load -c16 -m16 -D4 "http://127.0.0.1:$1/" 2>/dev/null | awk '/^finished in/ {print $4}'
  else
    wrk -t1 -c64 -d4s "http://127.0.0.1:$1/" 2>/dev/null | awk '/Requests\/sec/ {print $2}'
  fi
}
run() {
  local bin=$1 kind=$2 port=$3 out pid rps
  out=$(mktemp)
  "$bin" "$kind" "127.0.0.1:$port" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do grep -q READY "$out" && break; sleep 0.05; done
  rps=$(load "$port")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  echo "$rps"
}
