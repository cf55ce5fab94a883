#!/usr/bin/env bash
# Writes .cargo/launch-order.txt: the functions `ec-launch run` executes on
# its common paths (the lock taken and the program exec'd; a busy source;
# a tuner slot), by demangled name without hashes, for the linker wrapper
# .cargo/link-in-launch-order to place together (ECP-0128). Run it after a
# change to the launch path or its dependencies, then `bash bench/launch.sh`
# shows what it bought. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "launch-order: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
host=$(rustc -vV | sed -n 's/^host: //p')
# With symbols, in a directory of its own: the release build strips them.
CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked --quiet --bin ec-launch --target-dir target/launch-order
bin=target/launch-order/$host/release/ec-launch
work=$(mktemp -d)
holder=
cleanup() {
  if [ -n "$holder" ]; then kill "$holder" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -m 700 "$work/locks"
source=http://10.0.0.5:5004/auto/v5.1
profile() {
  # The program does not exist, so the run ends in this process after the
  # exec attempt and callgrind sees it whole.
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$1.out" \
    "$bin" run --lock-dir "$work/locks" "${@:2}" -- /nonexistent >/dev/null 2>&1 || true
}
profile free --source "$source"
profile slot --source "$source" --device tuner --tuners 2
"$bin" run --lock-dir "$work/locks" --source "$source" -- sleep 60 2>/dev/null &
holder=$!
# Until status says the source is held (exit 0): the busy path is wanted.
until "$bin" status --lock-dir "$work/locks" "$source" >/dev/null 2>&1; do sleep 0.05; done
profile busy --source "$source"
# Callgrind's names, first seen first, as the binary's symbol table
# demangles them: a function callgrind shows by address is the one that
# holds it, "(below main)" is glibc's start, and a string or memory
# function glibc picks by CPU at start brings its siblings (callgrind's
# emulated CPU picks one, the machine that runs it may pick another).
python3 - "$bin" "$work"/free.out "$work"/slot.out "$work"/busy.out > .cargo/launch-order.txt <<'PY'
import re, subprocess, sys
binary, profiles = sys.argv[1], sys.argv[2:]
def symbols(*flags):
    out = subprocess.run(["nm", "--defined-only", "-n", *flags, binary], capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 2) for line in out.splitlines() if line.count(" ") >= 2]
code = [(int(a, 16), m, d) for (a, t, m), (_, _, d) in zip(symbols(), symbols("--demangle")) if t in "tTwWi"]
demangled = {m: d for _, m, d in code}
seen = []
for profile in profiles:
    for name in re.findall(r"^c?fn=\(\d+\) (.*)$", open(profile).read(), re.M):
        if name not in seen:
            seen.append(name)
hot = []
for name in seen:
    if name.startswith("0x"):
        at = int(name, 16)
        hot += [d for a, _, d in code if a <= at][-1:]
    elif name.startswith("(below main)"):
        hot += ["__libc_start_main_impl", "__libc_start_call_main"]
    elif name in demangled:
        hot.append(demangled[name])
        family = re.match(r"(__[a-z0-9]+_)(sse|ssse|avx|evex|erms)", name)
        if family:
            hot += [d for _, m, d in code if m.startswith(family.group(1))]
printed = set()
for name in hot:
    if name not in printed:
        printed.add(name)
        print(name)
PY
echo "launch-order: $(wc -l < .cargo/launch-order.txt) functions written to .cargo/launch-order.txt"
