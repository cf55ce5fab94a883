#!/usr/bin/env bash
# Launch benchmark: ec-launch beside flock(1) and a bare exec, in one run.
# Builds the static binary the flake ships (glibc, crt-static) and benchmarks
# it together with the plain cargo build. Figures only; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in flock /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool (apt-get install util-linux time)" >&2; exit 1; }
done
host=$(rustc -vV | sed -n 's/^host: //p')
# An explicit --target keeps crt-static off the proc-macro crates, which
# cannot be linked statically.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$host" --target-dir target/static
EC_LAUNCH_STATIC="$PWD/target/static/$host/release/ec-launch" cargo bench --locked --bench launch
