# tools/browser/notes-test.sh -- the notes part of tools/browser-test (sourced by it, after the chat).
#
# Starts tools/notes-demo (its own PostgreSQL and Redis in a temporary directory, the app on a free
# port with 2 workers), runs tools/browser/notes.test.mjs against it, stops it by pid (its own trap
# stops the databases and removes the directory). Sets notes_counts ("N passed, N failed, N skipped")
# and notes_rc (0 when nothing failed). Uses browser-test's say, alive, cleanup, $bin,
# $tmp, $shots, $chromium_bin, $browser_dir, $start_timeout.
# shellcheck shell=bash disable=SC2154,SC2012  # the variables above come from tools/browser-test

notes_counts="0 passed, 0 failed, 1 skipped" notes_rc=0 notes_pid=
# notes_stop: SIGTERM to notes-demo, which stops the app and both databases (up to 30 s), then SIGKILL
notes_stop() {
  local i
  [ -n "$notes_pid" ] || return 0
  kill -TERM "$notes_pid" 2>/dev/null
  for ((i = 0; i < 300; i++)); do alive "$notes_pid" || break; sleep 0.1; done
  alive "$notes_pid" && { say "tools/notes-demo ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$notes_pid"; }
  wait "$notes_pid" 2>/dev/null
  notes_pid=
}
trap 'notes_stop; cleanup' EXIT

notes_run() {
  local pg_bin line url deadline log=$tmp/notes-demo.log out=$tmp/notes.out
  pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
  if [ ! -x "$pg_bin/postgres" ] || [ ! -x "${REDIS_SERVER:-/usr/bin/redis-server}" ]; then
    echo "### BROWSER TEST (notes) SKIPPED: postgresql or redis-server is not installed (tools/setup-deps)"
    return 0
  fi
  MOONFORK_BIN=$bin tools/notes-demo --port 0 --workers 2 >"$log" 2>&1 </dev/null &
  notes_pid=$!
  deadline=$((SECONDS + start_timeout + 60)) # initdb comes first
  until line=$(grep -m 1 -E 'listening on http://[^ ]+:[0-9]+ with [0-9]+ workers' "$log"); do
    if ! alive "$notes_pid" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "--- notes-demo log ---"; cat "$log"; echo "---"
      echo "not ok - notes: tools/notes-demo did not start the app"
      notes_counts="0 passed, 1 failed, 0 skipped" notes_rc=1
      return
    fi
    sleep 0.05
  done
  url=$(sed -E 's/.*listening on (http:\/\/[^ ]+:[0-9]+) with.*/\1/' <<<"$line")
  say "notes app at $url (tools/notes-demo pid $notes_pid)"
  NOTES_URL=$url SCREENSHOT_DIR=$shots CHROMIUM=$chromium_bin node "$browser_dir/notes.test.mjs" 2>&1 | tee "$out"
  notes_rc=${PIPESTATUS[0]}
  notes_counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$out" | tail -n 1)
  if [ -z "$notes_counts" ]; then
    echo "not ok - notes: the node test script printed no results (exit status $notes_rc)"
    notes_counts="0 passed, 1 failed, 0 skipped" notes_rc=1
  fi
  if [ "$notes_rc" != 0 ]; then echo "--- notes-demo log (tail) ---"; tail -n 40 "$log"; echo "---"; fi
  notes_stop
}
notes_run
