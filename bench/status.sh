#!/usr/bin/env bash
# status benchmark: `ec-launch status` over 2,000 lock files (200 of them
# held, each with a helper that inherited the lock; for 100 the launched
# program has exited) with 3,000 extra idle processes on the machine, beside
# lslocks(8) (which reads /proc/locks alone and cannot name an inherited
# holder), and beside the floor (bench/status-floor.c: the link of every
# descriptor of every process, on every core, and nothing else; what any
# tool that names inherited holders reads at least). Checks that every
# helper is named; target (issue 17): median <= 50 ms.
# Also times `status --readers` over the same locks and processes.
# Prints figures from hyperfine; cleans up every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCKS=${LOCKS:-2000}
HELD=${HELD:-200}
IDLE=${IDLE:-3000}
for tool in hyperfine cc lslocks; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool (apt-get install hyperfine gcc util-linux)" >&2; exit 1; }
done

cargo build --release --locked --quiet
# .cargo/config.toml builds for the host triple: target/<host>/release.
bin=$PWD/target/$(rustc -vV | sed -n 's/^host: //p')/release/ec-launch
work=$(mktemp -d)
# The lock directory on a tmpfs, as /run is in production: on a disk
# filesystem shared with other programs' flocks (a build's own), a lock
# whose taker is gone sends status on a second, stat-per-descriptor pass.
locks=$(mktemp -d -p "${LOCK_PARENT:-/dev/shm}")
cc -O2 -static -o "$work/status-floor" bench/status-floor.c
pids=()
cleanup() {
  # Killed on purpose: no job report for each.
  disown -a 2>/dev/null || true
  ((${#pids[@]})) && kill -9 "${pids[@]}" 2>/dev/null || true
  [ -f "$work/helpers.pids" ] && xargs -r kill -9 < "$work/helpers.pids" 2>/dev/null || true
  rm -rf "$work" "$locks"
}
trap cleanup EXIT

export EC_LAUNCH_LOCK_DIR=$locks/locks EC_LAUNCH_LOG=off
for i in $(seq 1 "$LOCKS"); do
  "$bin" run --source "http://10.1.$((i / 250)).$((i % 250 + 1)):5004/auto/v$i.1" -- true
done
# Every held lock has a helper that inherited its descriptor (the case only
# fdinfo can explain): for half, the launched program still runs beside its
# helper; for the other half, the program exited and the helper holds alone.
for i in $(seq 1 "$HELD"); do
  source="http://10.1.$((i / 250)).$((i % 250 + 1)):5004/auto/v$i.1"
  if ((i % 2)); then
    "$bin" run --source "$source" -- sh -c "sleep 86400 </dev/null >/dev/null 2>&1 & echo \$! >> '$work/helpers.pids'; exec sleep 86400" &
    pids+=($!)
  else
    "$bin" run --source "$source" -- sh -c "sleep 86400 </dev/null >/dev/null 2>&1 & echo \$! >> '$work/helpers.pids'"
  fi
done
for _ in $(seq 1 "$IDLE"); do
  sleep 86400 </dev/null >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
echo "lock files: $(ls "$EC_LAUNCH_LOCK_DIR" | wc -l), held: $("$bin" status --json | grep -c '"state": "held"'), processes: $(ls /proc | grep -c '^[0-9]')"
# Every inherited holder is still named (the truth rules of ECP-0131).
"$bin" status --json > "$work/status.json" || true
named=0
while read -r pid; do
  grep -q "\"pid\": $pid," "$work/status.json" && named=$((named + 1))
done < "$work/helpers.pids"
echo "inheriting helpers named by status: $named of $(wc -l < "$work/helpers.pids")"
[ -n "${KEEP:-}" ] && { echo "$EC_LAUNCH_LOCK_DIR"; sleep "$KEEP"; }
# `--readers` beside plain status (ECP-0133; target: no worse than twice):
# the same scan plus the socket dump (IPv4, IPv6) and 2,000 endpoints.
hyperfine --warmup 3 --runs 30 -N "$bin status --lock-dir $EC_LAUNCH_LOCK_DIR" "$bin status --json --lock-dir $EC_LAUNCH_LOCK_DIR" \
  "$bin status --readers --lock-dir $EC_LAUNCH_LOCK_DIR" "lslocks" "$work/status-floor" --export-json "$work/status-times.json"
python3 - "$work/status-times.json" "$bin" "$EC_LAUNCH_LOCK_DIR" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    name = r["command"].replace(sys.argv[2], "ec-launch").replace(" --lock-dir " + sys.argv[3], "")
    name = "floor (every descriptor link)" if name.endswith("/status-floor") else name
    print("%-30s median %7.1f ms  (user %.1f ms, system %.1f ms)" % (name, r["median"] * 1e3, r["user"] * 1e3, r["system"] * 1e3))
print("target: status median <= 50 ms")
PY
