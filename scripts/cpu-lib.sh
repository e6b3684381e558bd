# Shared by bench-lib.sh and tls-compare.sh: what a load run reports.
# `ticks PID`: the CPU time PID has used, in clock ticks (user + system, all its threads).
# `figure RPS N TICKS`: with METRIC=cpu, the server's CPU microseconds per request (TICKS over
# the N requests answered); else requests/s (RPS). CPU per request is what the server spends
# on a request whoever wins the cores, so steadier than requests/s on a shared machine.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
figure() {
  if [ "${METRIC:-rps}" = cpu ]; then
    awk -v n="$2" -v t="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f\n", t / hz * 1e6 / n }'
  else
    echo "$1"
  fi
}
