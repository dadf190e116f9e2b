# bench/db/cpu.sh -- sourced by bench/db/run and bench/db/pg-run: CPU per request of a server tree.
#
#   t0=$(tree_ticks PID); wrk ... >OUT; t1=$(tree_ticks PID)
#   cpu_per_req "$t0" "$t1" OUT      -> µs of user+sys CPU per request wrk counted
# A server's tree is PID and every descendant (moonfork's master and workers, Node's cluster).

tree_pids() { local c; echo "$1"; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$c"; done; }

tree_ticks() { # user+sys clock ticks of PID's tree, now
  local t=0 p s
  for p in $(tree_pids "$1"); do
    s=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + ${s:-0}))
  done
  echo "$t"
}

cpu_per_req() { # TICKS0 TICKS1 WRK_OUTPUT
  local n
  n=$(awk '/requests in/ { print $1; exit }' "$3")
  awk -v a="$1" -v b="$2" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n; else print "?" }'
}
