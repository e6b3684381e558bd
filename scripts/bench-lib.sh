# Shared by the throughput comparisons (throughput.sh, wrk-compare.sh, metrics-compare.sh):
# `load PORT` runs a load generator that is not ours against 127.0.0.1:PORT and prints
# requests/s; `run BIN KIND PORT` starts `BIN KIND 127.0.0.1:PORT` (a bench-server), loads it,
# stops it with SIGTERM, and prints the figure.
#
# LOAD picks the load (`H2=1` is LOAD=h2):
#   h1    wrk -t1 -c64 -d4s GET /                       (HTTP/1.1 keep-alive)
#   h2    h2load -c16 -m16 -D4 GET /                    (h2c)
#   grpc  h2load -c8 -m16 -D4 POST /demo.v1.Echo/Echo   (gRPC unary, a 5-byte message)
# PIN=1 puts the server on CPU 0 and the load generator on CPU 1 (taskset): each has a core of
# its own, so the figure is the server's cost per request, not how the two share the cores.
# METRIC=cpu: the figure is the server's CPU microseconds per request instead of requests/s
# (see scripts/cpu-lib.sh).
if [ "${H2:-0}" = 1 ]; then LOAD=h2; fi
LOAD=${LOAD:-h1}
if [ "$LOAD" = h1 ]; then
  command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
else
  command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
fi
server_cpu=() load_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  server_cpu=(taskset -c 0) load_cpu=(taskset -c 1)
fi
# The gRPC request: an uncompressed frame (flag 0, length 7) holding EchoRequest{message: "hello"}.
grpc_body=$(mktemp)
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$grpc_body"
trap 'rm -f "$grpc_body"' EXIT
# shellcheck source=scripts/cpu-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cpu-lib.sh"
# `load PORT` prints requests/s and the number of requests answered.
load() {
  case $LOAD in
    h1) "${load_cpu[@]}" wrk -t1 -c64 -d4s "http://127.0.0.1:$1/" 2>/dev/null |
      wrk_figures ;;
    h2) "${load_cpu[@]}" h2load -c16 -m16 -D4 "http://127.0.0.1:$1/" 2>/dev/null |
      h2load_figures ;;
    grpc) "${load_cpu[@]}" h2load -c8 -m16 -D4 -d "$grpc_body" -H 'content-type: application/grpc' \
      -H 'te: trailers' "http://127.0.0.1:$1/demo.v1.Echo/Echo" 2>/dev/null |
      h2load_figures ;;
    *) echo "LOAD is h1, h2 or grpc" >&2; exit 2 ;;
  esac
}
run() {
  local bin=$1 kind=$2 port=$3 out pid rps n before after
  out=$(mktemp)
  "${server_cpu[@]}" "$bin" "$kind" "127.0.0.1:$port" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do grep -q READY "$out" && break; sleep 0.05; done
  before=$(ticks "$pid")
  read -r rps n < <(load "$port")
  after=$(ticks "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  figure "$rps" "$n" "$((after - before))"
}
