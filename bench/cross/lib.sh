# shellcheck shell=bash disable=SC2154  # repo, workers, nodedir, out, results, clients, ...: set by bench/cross/run
# bench/cross/lib.sh: the pieces of bench/cross/run (sourced): one cluster per contestant and round
# through tools/cluster-demo, the servers' CPU time, one xfanout run and its RESULT line.
cdir=""

cluster_down() {
  [ -n "$cdir" ] && [ -f "$cdir/cluster.env" ] && "$repo/tools/cluster-demo" down --dir "$cdir" >/dev/null 2>&1
  cdir=""
  return 0
}

cluster_up() { # cluster_up CONTESTANT DIR: two hosts of CONTESTANT on one redis-server
  cdir=$2
  mkdir -p "$cdir"
  local demo=$repo/tools/cluster-demo
  case "$1" in
    moonfork) "$demo" up --dir "$cdir" --app "$repo/examples/chat/server.lua" -- --workers "$workers" ;;
    moonfork-noslice) "$demo" up --dir "$cdir" --app "$repo/examples/chat/server.lua" -- --workers "$workers" --sched-slice 0 ;;
    nchan) "$demo" up --dir "$cdir" --host-cmd "$repo/bench/cross/nchan-host {N} {REDIS_URL} {PORT} {DIR} $workers" ;;
    sio) NODE_PATH=$nodedir/node_modules "$demo" up --dir "$cdir" \
      --host-cmd "PORT={PORT} REDIS_URL={REDIS_URL} WORKERS=$workers exec node $repo/bench/cross/sio-host.js" ;;
  esac >"$cdir/up.log" 2>&1
}

cpu_ticks() { # "HOSTS REDIS": utime+stime (clock ticks) of both hosts' processes and of redis-server
  local p s t=0 rt=0
  # shellcheck disable=SC1091
  . "$cdir/cluster.env"
  for p in $(ip netns pids "$NS1") $(ip netns pids "$NS2"); do
    s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  s=$(cat /proc/"$REDIS_PID"/stat 2>/dev/null) && { s=${s##*) }; set -- $s; rt=$((${12} + ${13})); }
  echo "$t $rt"
}

xfanout_args() { # the load generator's options for contestant $1
  . "$cdir/cluster.env"
  echo --hosts "$H1_ADDR:$HOST_PORT,$H2_ADDR:$HOST_PORT" --clients "$clients" --rate "$rate" --duration "$duration" --label "$1"
  case "$1" in
    nchan) echo --pub-format raw ;;
    sio) echo --proto sio ;;
  esac
}

run_one() { # run_one CONTESTANT ROUND: a fresh cluster, one load, one line in $results
  local t=$1 r=$2 load c0 c1 line json alive=yes
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! cluster_up "$t" "$out/$t-$r"; then
    echo "cross/run: round $r $t: the cluster did not start:" >&2; tail -5 "$out/$t-$r/up.log" >&2
    echo "{\"label\":\"$t\",\"round\":$r,\"error\":\"did not start\"}" >>"$results"
    cluster_down; return 1
  fi
  # shellcheck disable=SC2046
  "$repo/bench/cross/xfanout" $(xfanout_args "$t") --dump "$out/$t-$r.msgs" "${extra[@]}" >"$out/$t-$r.out" 2>"$out/$t-$r.err" &
  local fpid=$! _
  # CPU from when every client is connected (xfanout logs "publishing") to the end of the drain
  for _ in $(seq 1200); do
    grep -q publishing "$out/$t-$r.err" 2>/dev/null && break
    kill -0 "$fpid" 2>/dev/null || break
    sleep 0.05
  done
  read -r -a c0 <<<"$(cpu_ticks)"
  wait "$fpid"
  read -r -a c1 <<<"$(cpu_ticks)"
  local load_after
  load_after=$(cut -d' ' -f1 /proc/loadavg)
  . "$cdir/cluster.env"
  [ -n "$(ip netns pids "$NS1")" ] && [ -n "$(ip netns pids "$NS2")" ] || alive=no
  cluster_down
  line=$(grep '^RESULT ' "$out/$t-$r.out" | tail -1)
  [ -n "$line" ] || { echo "cross/run: round $r $t: no result (see $out/$t-$r.err)" >&2; line='RESULT {"error":"no result"}'; }
  json=$(node -e 'const j=JSON.parse(process.argv[1]); const hz=+process.argv[4];
    Object.assign(j, {label: process.argv[2], round: +process.argv[3], hosts_cpu_s: +process.argv[5] / hz,
      redis_cpu_s: +process.argv[6] / hz, hosts_alive_at_end: process.argv[7] === "yes", loadavg_before: +process.argv[8], loadavg_after: +process.argv[9]});
    j.cpu_us_per_delivery = j.received ? +((j.hosts_cpu_s + j.redis_cpu_s) * 1e6 / j.received).toFixed(2) : null;
    console.log(JSON.stringify(j))' "${line#RESULT }" "$t" "$r" "$hz" "$((c1[0] - c0[0]))" "$((c1[1] - c0[1]))" "$alive" "$load" "$load_after")
  echo "$json" >>"$results"
  node -e 'const j=JSON.parse(process.argv[1]);
    console.log(`round ${j.round} ${j.label.padEnd(8)}: ` + (j.error ? j.error :
      `${j.received}/${j.expected} delivered (lost ${j.lost}, dup ${j.duplicates}, out-of-order ${j.out_of_order}, ` +
      `order disagreements ${j.order_disagreements}), p50 ${j.p50_ms} p99 ${j.p99_ms} max ${j.max_ms} ms ` +
      `(cross-host p99 ${j.cross_p99_ms}), CPU hosts ${j.hosts_cpu_s.toFixed(2)} s + redis ${j.redis_cpu_s.toFixed(2)} s = ` +
      `${j.cpu_us_per_delivery} us/delivery, load ${j.loadavg_before} -> ${j.loadavg_after}`))' "$json"
}
