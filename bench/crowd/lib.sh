# shellcheck shell=bash disable=SC2154  # repo, out, clients, workers, ...: set by bench/crowd/run
# bench/crowd/lib.sh: the pieces of bench/crowd/run (sourced): the sysctls it raises and restores, one
# contestant's server, its memory and CPU, one run of the clients and the publisher.
server_pid="" holder_pids=() saved_sysctls=()

# ---- sysctls: each one changed is saved first; restore_sysctls puts them back (the EXIT trap) ----
set_sysctl() { # set_sysctl NAME VALUE
  local old
  old=$(sysctl -n "$1" 2>/dev/null) || { echo "crowd/run: no sysctl $1" >&2; return 1; }
  old=$(echo "$old" | tr -s '\t ' ' ')
  [ "$old" = "$2" ] && return 0
  saved_sysctls+=("$1=$old")
  sysctl -q -w "$1=$2" >/dev/null || { echo "crowd/run: could not set $1 (root?)" >&2; return 1; }
  echo "crowd: sysctl $1: $old -> $2 (restored at exit)"
}

restore_sysctls() {
  local i kv
  for ((i = ${#saved_sysctls[@]} - 1; i >= 0; i--)); do
    kv=${saved_sysctls[$i]}
    sysctl -q -w "$kv" >/dev/null && echo "crowd: sysctl ${kv%%=*} restored to ${kv#*=}"
  done
  saved_sysctls=()
}

raise_sysctls() {
  [ "$(id -u)" = 0 ] || { echo "crowd/run: not root: the sysctls stay as they are" >&2; return 0; }
  local v lo hi need
  v=$(sysctl -n net.core.somaxconn); [ "$v" -ge 65535 ] || set_sysctl net.core.somaxconn 65535
  v=$(sysctl -n net.ipv4.tcp_max_syn_backlog); [ "$v" -ge 65535 ] || set_sysctl net.ipv4.tcp_max_syn_backlog 65535
  # each source address needs a local port per stream: widen the range only when it is too narrow
  read -r lo hi <<<"$(sysctl -n net.ipv4.ip_local_port_range)"
  need=$(( (per_proc + addrs - 1) / addrs ))
  [ $((hi - lo + 1)) -ge $((need * 5 / 4)) ] || set_sysctl net.ipv4.ip_local_port_range "1024 65535"
  if [ -f /proc/sys/net/netfilter/nf_conntrack_max ]; then
    v=$(sysctl -n net.netfilter.nf_conntrack_max)
    [ "$v" -ge $((clients + 65536)) ] || set_sysctl net.netfilter.nf_conntrack_max $((clients + 65536))
  fi
}

cleanup() {
  stop_holders
  stop_server
  restore_sysctls
}

# ---- processes ----
children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }

cpu_ticks() { # utime+stime (clock ticks) of $1 and its children
  local p s t=0
  for p in "$1" $(children "$1"); do
    s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' /proc/"$1"/status 2>/dev/null || echo 0; }

workers_rss() { # "SUM_KB MASTER_KB": the workers' (children's) RSS and the master's
  local p s=0
  for p in $(children "$server_pid"); do s=$((s + $(rss_kb "$p"))); done
  echo "$s $(rss_kb "$server_pid")"
}

fds_per_worker() { # open files of each worker, space-separated (the connections it holds, plus a few)
  local p
  for p in $(children "$server_pid"); do printf '%s ' "$(find /proc/"$p"/fd -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"; done
}

slab_kb() { awk '$1 == "Slab:" { print $2 }' /proc/meminfo; }

sockstat_mem() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

server_skmem() { # "SOCKETS BYTES": the server's established sockets and their r+w+f (ss -tm)
  ss -tmnH state established "( sport = :$1 )" 2>/dev/null | awk '
    /skmem:/ { n++; match($0, /skmem:\([^)]*\)/); s = substr($0, RSTART + 6, RLENGTH - 7)
      split(s, f, ","); for (i in f) { k = substr(f[i], 1, 1); v = substr(f[i], 2) + 0
        if (f[i] ~ /^r[0-9]/ || f[i] ~ /^w[0-9]/ || f[i] ~ /^f[0-9]/) b += v } }
    END { print n + 0, b + 0 }'
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

start_server() { # start_server NAME PORT LOG: starts it, waits until it takes connections
  local name=$1 port=$2 log=$3 i more=()
  port_open "$port" && { echo "crowd/run: port $port is in use" >&2; return 1; }
  [ -n "$reuseport" ] && more+=(--reuseport)
  [ "$name" = moonfork-noslice ] && more+=(--sched-slice 0)
  case "$name" in
    moonfork|moonfork-noslice) (cd "$repo" && exec "$MOONFORK_BIN" --port "$port" --workers "$workers" --max-connections 19500 \
                 "${more[@]}" examples/chat/server.lua) >"$log" 2>&1 & ;;
    moonfork-ws) (cd "$repo" && exec "$MOONFORK_BIN" --port "$port" --workers "$workers" --max-connections 19500 \
                 "${more[@]}" bench/crowd/ws_chat.lua) >"$log" 2>&1 & ;;
    moonfork-wschan) (cd "$repo" && CROWD_WS_FANOUT=chan exec "$MOONFORK_BIN" --port "$port" --workers "$workers" \
                 --max-connections 19500 "${more[@]}" bench/crowd/ws_chat.lua) >"$log" 2>&1 & ;;
    nchan) "$repo/bench/crowd/nchan-conf" "$out/nchan" "$port" "$workers" "$reuseport" || return 1
           (exec nginx -p "$out/nchan" -c "$out/nchan/nginx.conf") >"$log" 2>&1 & ;;
    node) (PORT=$port WORKERS=$workers exec node "$repo/bench/node-chat/server.js") >"$log" 2>&1 & ;;
  esac
  server_pid=$!
  for i in $(seq 300); do
    if [ "$name" = nchan ]; then
      [ "$(children "$server_pid" | wc -l)" -ge "$workers" ] && port_open "$port" && return 0
    elif grep -q "listening on" "$log" 2>/dev/null; then
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "crowd/run: $name exited at start:" >&2; tail -20 "$log" >&2; server_pid=""; return 1; }
    sleep 0.1
  done
  echo "crowd/run: $name did not start within 30 s" >&2; tail -20 "$log" >&2
  stop_server; return 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  local kids k i
  kids=$(children "$server_pid")
  kill -TERM "$server_pid" 2>/dev/null
  for i in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$server_pid" 2>/dev/null && { echo "crowd/run: pid $server_pid ignored SIGTERM for 10 s: SIGKILL" >&2; kill -KILL "$server_pid"; }
  wait "$server_pid" 2>/dev/null
  for k in $kids; do
    for i in $(seq 50); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$k" 2>/dev/null && { echo "crowd/run: child $k still alive: SIGKILL" >&2; kill -KILL "$k" 2>/dev/null; }
  done
  server_pid=""
}

stop_holders() {
  local p
  for p in "${holder_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${holder_pids[@]}"; do wait "$p" 2>/dev/null; done
  holder_pids=()
}

src_addrs() { # the source addresses of client process $1: 127.0.(P+1).1 .. 127.0.(P+1).$addrs
  local a list=""
  for a in $(seq "$addrs"); do list="$list${list:+,}127.0.$(($1 + 1)).$a"; done
  echo "$list"
}

wait_ready() { # until every client process printed READY (or exited); the processes time out themselves
  local p i n
  for i in $(seq 3000); do
    n=0
    for p in $(seq 0 $((procs - 1))); do
      if grep -q '^READY' "$out/$1-$p.out" 2>/dev/null || ! kill -0 "${holder_pids[$p]}" 2>/dev/null; then n=$((n + 1)); fi
    done
    [ "$n" = "$procs" ] && return 0
    sleep 0.1
  done
  return 1
}

wait_holders() { # until every client process has exited (all messages in), at most $1 s, then SIGTERM
  local p i alive
  for i in $(seq $(($1 * 10))); do
    alive=0
    for p in "${holder_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  stop_holders
}

run_one() { # run_one CONTESTANT: one server, the crowd, the posts; one line in $results
  local t=$1 port p n left mark sl0 sl1 alive rss0 rss1 rss2 sk0 sk1 sk2 ss1 c0 c1 fds load post json lats=()
  case "$t" in moonfork) port=$port_base ;; nchan) port=$((port_base + 1)) ;; node) port=$((port_base + 2)) ;;
    moonfork-noslice) port=$((port_base + 3)) ;; moonfork-ws) port=$((port_base + 4)) ;;
    moonfork-wschan) port=$((port_base + 5)) ;; esac
  load=$(cut -d' ' -f1 /proc/loadavg)
  start_server "$t" "$port" "$out/$t.log" || {
    echo "{\"label\":\"$t\",\"error\":\"did not start\"}" >>"$results"; return 1; }
  sleep 0.5   # let the workers' start-up allocations settle before the baseline (no readiness to wait for)
  rss0=$(workers_rss); sk0=$(sockstat_mem); sl0=$(slab_kb)
  mark="crowd:$(printf '%06x' $((RANDOM * 32768 + RANDOM))):"
  left=$clients holder_pids=()
  for p in $(seq 0 $((procs - 1))); do
    n=$((left < per_proc ? left : per_proc)); left=$((left - n))
    "$crowd" hold --port "$port" --clients "$n" --messages "$messages" --mark "$mark" --src "$(src_addrs "$p")" \
      --proto "$proto" --parallel "$parallel" --lat "$out/$t-$p.lat" >"$out/$t-$p.out" 2>"$out/$t-$p.err" &
    holder_pids+=($!)
    lats+=("$out/$t-$p.lat")
  done
  wait_ready "$t"
  rss1=$(workers_rss); sk1=$(sockstat_mem); sl1=$(slab_kb); ss1=$(server_skmem "$port"); fds=$(fds_per_worker)
  echo "crowd: $t: $(cat "$out/$t"-[0-9]*.out | grep -c '^READY') client processes ready; workers' open files: $fds"
  c0=$(cpu_ticks "$server_pid")
  post=$("$crowd" post --port "$port" --messages "$messages" --rate "$rate" --mark "$mark" \
    --format "$([ "$t" = nchan ] && echo raw || echo json)" 2>"$out/$t-post.err" | grep '^RESULT ')
  wait_holders "$drain"
  c1=$(cpu_ticks "$server_pid"); rss2=$(workers_rss); sk2=$(sockstat_mem)
  kill -0 "$server_pid" 2>/dev/null && alive=true || alive=false
  stop_server
  json=$(node "$repo/bench/crowd/collect.js" "$t" "$out" "$procs" "${post#RESULT }" "$("$crowd" merge "${lats[@]}")" \
    "rss0=$rss0" "rss1=$rss1" "rss2=$rss2" "sk0=$sk0" "sk1=$sk1" "sk2=$sk2" "ss1=$ss1" "slab0=$sl0" "slab1=$sl1" "cpu_ticks=$((c1 - c0))" \
    "hz=$(getconf CLK_TCK)" "alive=$alive" "fds=$fds" "load=$load" "load_after=$(cut -d' ' -f1 /proc/loadavg)" \
    "workers=$workers" "proto=$proto" "rate=$rate")
  echo "$json" >>"$results"
  # shellcheck disable=SC2016  # JavaScript template strings
  node -e 'const j = JSON.parse(process.argv[1]); console.log(`crowd: ${j.label}: ` + (j.error ? j.error :
    `${j.connected}/${j.clients} connected, ${j.received}/${j.expected} delivered (lost ${j.lost}, repeats ${j.repeats}, ` +
    `skipped ${j.skipped}, streams dropped ${j.dropped}), p50 ${j.p50_ms} p99 ${j.p99_ms} max ${j.max_ms} ms, ` +
    `workers RSS ${j.rss_mb} MB = ${j.user_kb_per_conn} KB/conn; kernel, both ends: sockstat ${j.kernel_kb_per_conn}, ` +
    `slab ${j.slab_kb_per_conn} KB/conn; server sockets ${j.server_sock_kb_per_conn} KB/conn; CPU ${j.cpu_s} s = ${j.cpu_us_per_delivery} us/delivery`))' "$json"
}
