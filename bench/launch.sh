#!/usr/bin/env bash
# Launch benchmark: ec-launch beside flock(1), a bare exec and the physical
# floor (bench/floor.c: open, flock, exec, in static C), in one run; then
# each launcher's time to its program's start, cluster mode's beside it
# (against an etcd this script starts on loopback), and the sizes of both
# executables. Measures what `cargo build --release` makes, which
# .cargo/config.toml makes the binaries the flake ships (glibc linked
# statically), and for comparison a dynamically linked build of the same
# code. Figures against the targets of issue 17; see bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in flock /usr/bin/time cc etcd; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool (apt-get install util-linux time gcc etcd-server)" >&2; exit 1; }
done
host=$(rustc -vV | sed -n 's/^host: //p')
work=$(mktemp -d)
etcd_pid=
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The floor and the start marker, linked statically like ec-launch.
cc -O2 -static -o "$work/floor" bench/floor.c
cc -O2 -static -o "$work/started" bench/started.c

# A single etcd member on loopback ports the kernel is unlikely to hand out.
client=$((20000 + RANDOM % 20000))
peer=$((client + 1))
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 50); do
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$client" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

cargo build --release --locked --quiet
release=target/$host/release
echo "binary sizes: ec-launch $(stat -c %s "$release/ec-launch") bytes, ec-launch-cluster $(stat -c %s "$release/ec-launch-cluster") bytes"
# The dynamic comparison: RUSTFLAGS, when set, replaces the config's flags.
RUSTFLAGS="" cargo build --release --locked --quiet --target-dir target/dynamic
cargo bench --locked --bench launch --no-run --quiet
# Every binary read from the disk alike: a freshly linked one sits in the
# page cache as the linker wrote it and exec faults it in at a different
# cost (the same ec-launch measured 1637 us as linked and 1404 us as a
# copy, 1520 us each once read back from the disk), so without this the
# figures say how each file was written, not what it costs to run.
if [ "$(id -u)" = 0 ]; then
  sync && echo 3 > /proc/sys/vm/drop_caches
  echo "page cache dropped: every binary is read from the disk alike"
else
  echo "bench: not root, so the page cache is not dropped: a binary just built may measure slower than an installed one" >&2
fi
EC_LAUNCH_DYNAMIC="$PWD/target/dynamic/$host/release/ec-launch" \
  EC_LAUNCH_FLOOR="$work/floor" EC_LAUNCH_STARTED="$work/started" \
  EC_BENCH_ETCD="http://127.0.0.1:$client" \
  cargo bench --locked --bench launch
