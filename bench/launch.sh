#!/usr/bin/env bash
# Launch benchmark: ec-launch beside flock(1) and a bare exec, in one run.
# Measures what `cargo build --release` makes, which .cargo/config.toml makes
# the binary the flake ships (glibc linked statically), and for comparison a
# dynamically linked build of the same code. Figures only; results in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in flock /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool (apt-get install util-linux time)" >&2; exit 1; }
done
host=$(rustc -vV | sed -n 's/^host: //p')
# The dynamic comparison: RUSTFLAGS, when set, replaces the config's flags.
RUSTFLAGS="" cargo build --release --locked --target-dir target/dynamic
EC_LAUNCH_DYNAMIC="$PWD/target/dynamic/$host/release/ec-launch" cargo bench --locked --bench launch
