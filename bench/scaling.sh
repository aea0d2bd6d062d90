#!/usr/bin/env bash
# bench/scaling.sh — how each proxy scales with workers: runs bench/compare.sh with
# WORKERS=1..MAX_WORKERS (proxy on CPUs 0..W-1, load generator and upstreams on the next W
# CPUs) and prints, per test and proxy, req/s and req/CPU-s at each worker count and the
# speed-up over one worker (req/s ÷ req/s at W=1; W is perfect scaling).
#
# On a machine with 2·N CPUs, MAX_WORKERS defaults to N. On this repository's 2-CPU machine
# that is 1: set MAX_WORKERS=2 to run two workers anyway (proxy and load then share the
# CPUs, and the figures say so with compare.sh's "other CPU" and a warning).
#
#   MAX_WORKERS [nproc/2]  TESTS ["root 16k h2c close"]  PROXIES ["portico nginx haproxy"]
#   ROUNDS [1]  DURATION [10]  WARMUP [2]; any other compare.sh knob passes through
#   (PORTICO_BIN, UPSTREAM_BIN, SKIP_BUILD, ...). Raw results go to
#   RESULTS_DIR [target/bench-scaling], one file per worker count.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CPUS=$(nproc)
MAX_WORKERS=${MAX_WORKERS:-$((CPUS / 2 > 0 ? CPUS / 2 : 1))}
[[ $MAX_WORKERS =~ ^[1-9][0-9]*$ ]] || { echo "MAX_WORKERS must be a whole number >= 1" >&2; exit 1; }
export TESTS=${TESTS:-root 16k h2c close}
export PROXIES=${PROXIES:-portico nginx haproxy}
export ROUNDS=${ROUNDS:-1}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-scaling}
mkdir -p "$RESULTS_DIR"

for ((w = 1; w <= MAX_WORKERS; w++)); do
    echo "[scaling] ---- $w worker(s) of $MAX_WORKERS" >&2
    WORKERS=$w RESULTS="$RESULTS_DIR/workers-$w.tsv" bash "$ROOT/bench/compare.sh" >&2
    # Build once: later runs use the binaries the first one built.
    if [[ -z ${PORTICO_BIN:-} && -z ${UPSTREAM_BIN:-} ]]; then export SKIP_BUILD=1; fi
done

python3 - "$RESULTS_DIR" "$MAX_WORKERS" <<'EOF'
import sys
from statistics import median

results_dir, max_workers = sys.argv[1], int(sys.argv[2])
# (test, proxy) -> workers -> (req/s, req/CPU-s) medians over rounds
table = {}
for w in range(1, max_workers + 1):
    runs = {}
    with open(f"{results_dir}/workers-{w}.tsv") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            r = line.rstrip("\n").split("\t")
            if r[0] in ("idle", "slow") or r[-1] != "1":
                continue
            try:
                rps, rpcs = float(r[3]), float(r[4])
            except ValueError:
                continue
            runs.setdefault((r[0], r[1]), []).append((rps, rpcs))
    for key, vals in runs.items():
        table.setdefault(key, {})[w] = (median(v[0] for v in vals), median(v[1] for v in vals))

hdr = ["test", "proxy"]
for w in range(1, max_workers + 1):
    hdr += [f"req/s w={w}", f"req/CPU-s w={w}", f"speed-up w={w}"]
rows = []
for (test, proxy), by_w in sorted(table.items()):
    row = [test, proxy]
    base = by_w.get(1, (float("nan"), 0))[0]
    for w in range(1, max_workers + 1):
        rps, rpcs = by_w.get(w, (float("nan"), float("nan")))
        up = rps / base if base == base and base > 0 and rps == rps else float("nan")
        row += ["-" if rps != rps else f"{rps:,.0f}", "-" if rpcs != rpcs else f"{rpcs:,.0f}",
                "-" if up != up else f"{up:.2f}x"]
    rows.append(row)
widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
fmt = lambda r: "  ".join(str(x).rjust(n) if i > 1 else str(x).ljust(n) for i, (x, n) in enumerate(zip(r, widths)))
print(f"Scaling over 1..{max_workers} worker(s); speed-up = req/s ÷ req/s with one worker.")
print(fmt(hdr))
print("  ".join("-" * n for n in widths))
for r in rows:
    print(fmt(r))
EOF
