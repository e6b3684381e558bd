# Shared by bench-lib.sh and tls-compare.sh: what a load run reports.
# `wrk_figures`, `h2load_figures`: read the tool's output, print requests/s and the number of
# requests answered.
# `ticks PID`: the CPU time PID has used, in clock ticks (user + system, all its threads).
# `figure RPS N TICKS`: with METRIC=cpu, the server's CPU microseconds per request (TICKS over
# the N requests answered); else requests/s (RPS). CPU per request is what the server spends
# on a request whoever wins the cores. `fmt`: the printf format of a figure.
wrk_figures() { awk '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {print r, n}'; }
h2load_figures() { awk '/^finished in/ {r = $4} /^requests:/ {n = $8} END {print r, n}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
figure() {
  if [ "${METRIC:-rps}" = cpu ]; then
    awk -v n="$2" -v t="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f\n", t / hz * 1e6 / n }'
  else
    echo "$1"
  fi
}
fmt='%.0f'
if [ "${METRIC:-rps}" = cpu ]; then fmt='%.2f'; fi
