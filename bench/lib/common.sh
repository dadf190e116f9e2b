# bench/lib/common.sh: helpers shared by bench/run and bench/smoke (sourced, not run).
# Needs: BENCH (the bench/ dir), REPO (the checkout), OUT (a scratch dir for logs and prefixes),
# WORKERS, MF_BIN (the moonfork binary). Every process it starts is remembered by pid and stopped
# by pid (stop_all); nothing is ever killed by name.

declare -A SRV_PID=()    # contestant -> pid of its master / primary
declare -A SRV_PORT=()   # contestant -> port

log() { printf '%s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# http_req PORT METHOD PATH [BODY_FILE]: one request with Connection: close over bash's /dev/tcp;
# prints the body (headers stripped). Non-zero when the connection fails.
http_req() {
  local port=$1 method=$2 path=$3 file=${4:-} len=0
  [ -n "$file" ] && len=$(stat -c %s "$file")
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    { printf "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %s\r\n\r\n" "$2" "$3" "$5"
      [ -n "$4" ] && cat "$4"; } >&3
    # drop everything up to the blank line after the headers
    sed -e "1,/^\r\$/d" <&3' _ "$port" "$method" "$path" "$file" "$len" 2>/dev/null
}

# wait_hello PORT SECONDS: until GET / answers "Hello, World!"
wait_hello() {
  local port=$1 deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(http_req "$port" GET / 2>/dev/null)" = "Hello, World!" ] && return 0
    sleep 0.1
  done
  return 1
}

children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }

# worker_pids NAME: the worker processes of a contestant (children of its master / primary)
worker_pids() { children "${SRV_PID[$1]}"; }

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# workers_rss NAME: "SUM COUNT" of the workers' VmRSS in KB
workers_rss() {
  local p sum=0 n=0 r
  for p in $(worker_pids "$1"); do
    r=$(rss_kb "$p"); sum=$((sum + ${r:-0})); n=$((n + 1))
  done
  echo "$sum $n"
}

# start_contestant NAME PORT: moonfork | nginx-lua | nginx-return | node
start_contestant() {
  local name=$1 port=$2 dir="$OUT/$1"
  mkdir -p "$dir"
  case "$name" in
    moonfork|moonfork-reuseport|moonfork-noslice|moonfork-base)
      # moonfork-reuseport: a listening socket per worker; moonfork-noslice: the kernel's CPU time
      # slice (--sched-slice 0) instead of moonfork's 0.3 ms; moonfork-base: bench/run --base's build
      rm -f "$dir/control.sock"
      local flag="" bin=$MF_BIN lua_dir=${MOONFORK_LUA_DIR:-}
      [ "$name" = moonfork-base ] && bin=$MF_BASE_BIN lua_dir=""
      [ "$name" = moonfork-reuseport ] && flag=--reuseport
      [ "$name" = moonfork-noslice ] && flag="--sched-slice=0"
      MOONFORK_LUA_DIR=$lua_dir "$bin" --port "$port" --workers "$WORKERS" --control "$dir/control.sock" \
        --keepalive-timeout 60 --max-connections 20000 $flag \
        "$BENCH/apps/server.lua" >"$dir/stdout.log" 2>"$dir/error.log" &
      ;;
    nginx-lua|nginx-return|nginx-lua-reuseport)   # nginx-lua-reuseport: `listen ... reuseport`
      local rp=""; [ "$name" = nginx-lua-reuseport ] && rp=" reuseport"
      sed -e "s|@WORKERS@|$WORKERS|g; s|@PORT@;|@PORT@$rp;|; s|@PORT@|$port|g; s|@PREFIX@|$dir|g; s|@BENCH@|$BENCH|g" \
          -e "s|@MODULES@|${NGX_LUA_MODULES:-/usr/lib/nginx/modules}|g; s|@LUA_PATH@|${NGX_LUA_PATH:-/usr/share/lua/5.1}|g" \
        "$BENCH/peers/${name%-reuseport}.conf" >"$dir/nginx.conf"
      # NGX_LUA_LIBS: where OpenResty's libluajit-5.1.so.2 is, when it is not the system's
      LD_LIBRARY_PATH=${NGX_LUA_LIBS:-${LD_LIBRARY_PATH:-}} \
        nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/stdout.log" 2>"$dir/stderr.log" &
      ;;
    node)
      node "$BENCH/peers/node-server.js" "$port" "$WORKERS" >"$dir/stdout.log" 2>"$dir/error.log" &
      ;;
    *) die "unknown contestant $name" ;;
  esac
  SRV_PID[$name]=$!
  SRV_PORT[$name]=$port
  if ! wait_hello "$port" 20; then
    log "bench: $name did not answer on port $port; its logs:"
    tail -n 20 "$dir"/*error.log "$dir"/std*.log >&2
    return 1
  fi
  # all workers up (Node's primary may answer through its first worker before the others exist)
  local deadline=$((SECONDS + 10))
  while [ "$(worker_pids "$name" | wc -l)" -lt "$WORKERS" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
}

stop_contestant() {
  local name=$1 pid=${SRV_PID[$1]:-} i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "bench: $name (pid $pid) still running after 10 s: SIGKILL"
    local w; for w in $(children "$pid"); do kill -KILL "$w" 2>/dev/null; done
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  unset "SRV_PID[$name]"
}

stop_all() {
  local n
  for n in "${!SRV_PID[@]}"; do stop_contestant "$n"; done
}

# check_answers NAME: the three routes answer what they should
check_answers() {
  local port=${SRV_PORT[$1]} got
  [ "$(http_req "$port" GET /)" = "Hello, World!" ] || { log "bench: $1: GET / is not Hello, World!"; return 1; }
  [ "$1" = nginx-return ] && return 0
  got=$(http_req "$port" GET /json)
  case "$got" in '{'*'"items"'*'}') ;; *) log "bench: $1: GET /json gave: ${got:0:200}"; return 1 ;; esac
  http_req "$port" POST /echo "$BENCH_BODY" | cmp -s - "$BENCH_BODY" ||
    { log "bench: $1: POST /echo did not echo the 4 KB body"; return 1; }
}

# The "apart" workload keeps the client off the servers' cores: wrk runs on the first half of the
# CPUs this script may use (CLIENT_CPUS, one wrk thread each), the contestant's processes, every
# thread of each, on the rest (SERVER_CPUS), and go back to ALL_CPUS afterwards. With one CPU there
# is no "apart": CLIENT_CPUS stays empty and the callers skip the workload.
ALL_CPUS=$(taskset -p -c $$ 2>/dev/null | sed 's/.*: //')
CLIENT_CPUS="" SERVER_CPUS="" CLIENT_N=0
cpus_split() {
  local part cpus=()
  for part in ${ALL_CPUS//,/ }; do
    case "$part" in
      *-*) cpus+=($(seq "${part%-*}" "${part#*-}")) ;;
      *[!0-9]*|"") return ;;   # a form we do not read (a stride): no apart workload
      *) cpus+=("$part") ;;
    esac
  done
  [ "${#cpus[@]}" -ge 2 ] || return
  CLIENT_N=$((${#cpus[@]} / 2))
  CLIENT_CPUS=$(IFS=,; echo "${cpus[*]:0:CLIENT_N}")
  SERVER_CPUS=$(IFS=,; echo "${cpus[*]:CLIENT_N}")
}
cpus_split

# pin_contestant NAME CPULIST: every thread of the contestant's master / primary and workers
pin_contestant() {
  local p
  for p in "${SRV_PID[$1]}" $(worker_pids "$1"); do
    taskset -a -p -c "$2" "$p" >/dev/null 2>&1 || log "bench: cannot move $1's pid $p to CPUs $2"
  done
}

# run_wrk NAME WORKLOAD DURATION CONNS OUTFILE: one wrk run; prints
#   "REQS_PER_S P50_MS P99_MS ERRORS REQUESTS SERVER_CPU_US_PER_REQUEST"
run_wrk() {
  local name=$1 wl=$2 dur=$3 conns=$4 outf=$5 port=${SRV_PORT[$1]} url args=()
  url="http://127.0.0.1:$port/"
  case "$wl" in
    hello) ;;
    close) args=(-H "Connection: close") ;;
    json) url="${url}json" ;;
    post) url="${url}echo"; args=(-s "$BENCH/lib/post.lua") ;;
    paced) args=(-s "$BENCH/lib/paced.lua") ;;   # its pace: $BENCH_PACE_MS (see paced.lua)
    apart) [ -n "$CLIENT_CPUS" ] || { echo FAIL; return; } ;;
  esac
  local t0 t1 client=() threads=$WRK_THREADS
  if [ "$wl" = apart ]; then
    pin_contestant "$name" "$SERVER_CPUS"
    client=(taskset -c "$CLIENT_CPUS") threads=$CLIENT_N
  fi
  t0=$(cpu_ticks "$name")
  "${client[@]}" wrk -t"$threads" -c"$conns" -d"${dur}s" --latency "${args[@]}" "$url" >"$outf" 2>&1
  t1=$(cpu_ticks "$name")
  [ "$wl" = apart ] && pin_contestant "$name" "$ALL_CPUS"
  set -- $(parse_wrk "$outf")
  [ "$1" = FAIL ] && { echo FAIL; return; }
  # server CPU (all its processes, user + system) per request, in microseconds
  echo "$@" "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$5" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')"
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_ticks NAME: utime + stime of the contestant's master / primary and its workers, in clock ticks
cpu_ticks() {
  local p sum=0 t
  for p in "${SRV_PID[$1]}" $(worker_pids "$1"); do
    t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null); sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}

# parse_wrk FILE: "REQS_PER_S P50_MS P99_MS ERRORS REQUESTS" from wrk --latency output
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /requests in/ { reqs = $1 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $5 }
    END {
      if (rps == "") { print "FAIL"; exit }
      printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, err, reqs
    }' "$1"
}

# mf_requests: "PID REQUESTS" per moonfork worker, from `moonfork status --json`
mf_requests() {
  "$MF_BIN" status --json --control "$OUT/moonfork/control.sock" 2>/dev/null |
    grep -o '"pid":[0-9]*,"serial":[0-9]*,"state":"[a-z]*","uptime":[0-9.]*,"requests":[0-9]*' |
    sed -e 's/"pid":\([0-9]*\),.*"requests":\([0-9]*\)/\1 \2/'
}

# idle_conns NAME N OUTFILE: opens N idle keep-alive connections (bench/lib/idle-conns.js) and
# measures the workers' RSS before and after; prints "RSS_BEFORE_KB RSS_AFTER_KB OPEN FAILED"
idle_conns() {
  local name=$1 n=$2 outf=$3 before after fifo line pid
  before=$(workers_rss "$name"); before=${before% *}
  fifo="$OUT/idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  # stdin from a pipe we hold open: the client exits when we close it (or on SIGTERM)
  exec 8> >(node "$BENCH/lib/idle-conns.js" "${SRV_PORT[$name]}" "$n" >"$fifo" 2>"$outf")
  pid=$!
  exec 7<"$fifo"
  line=""
  read -r -t 120 line <&7
  sleep 1   # let the workers settle (lazy frees, deferred work)
  after=$(workers_rss "$name"); after=${after% *}
  exec 8>&-          # closing stdin makes the client reset its connections and exit
  local i; for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  exec 7<&-
  rm -f "$fifo"
  set -- $line
  if [ "${1:-}" != ready ]; then echo "$before $after 0 $n"; return 1; fi
  echo "$before $after $2 $3"
}
