#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# Side-by-side benchmark: nbdcpy, nbdcopy and (where it applies) qemu-img
# on the shared harness's workloads, alternating copiers run by run, then a
# table of medians and of nbdcpy's ratios to nbdcopy.
#
#   bench/compare.sh [WORKLOAD ...]      (default W1 .. W10; W9/W10 are
#                                         W2/W8 with TLS-PSK on both sides,
#                                         without qemu-img, which cannot take
#                                         nbds:// URIs)
#
# Environment: NBDCPY (the nbdcpy binary, default build/nbdcpy), ROUNDS
# (timed runs per copier and workload, default 5), BENCH (the harness,
# default ../shared/bench/run.sh), QEMU_IMG=0 to leave qemu-img out,
# NBDCPY_ARGS (extra options for nbdcpy only).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NBDCPY=${NBDCPY:-$ROOT/build/nbdcpy}
BENCH=${BENCH:-$ROOT/../shared/bench/run.sh}
ROUNDS=${ROUNDS:-5}
QEMU_IMG=${QEMU_IMG:-1}
NBDCPY_ARGS=${NBDCPY_ARGS:-}
WLS=("$@")
[ ${#WLS[@]} -gt 0 ] || WLS=(W1 W2 W3 W4 W5 W6 W7 W8 W9 W10)
OUT=$(mktemp -d /tmp/nbdcpy-bench.XXXXXX)
TSV=$OUT/results.tsv

copiers=("$NBDCPY" nbdcopy)
if [ "$QEMU_IMG" = 1 ]; then copiers+=("$(dirname "$BENCH")/qemu-img-copy.sh"); fi

run_one() { # COPIER WL WARMUP
    local args=""
    case "$2:$1" in W9:*qemu-img* | W10:*qemu-img*) return ;; esac
    [ "$1" = "$NBDCPY" ] && args=$NBDCPY_ARGS
    COPIER=$1 COPIER_ARGS=$args REPEAT=1 WARMUP=$3 RESULTS=$TSV \
        "$BENCH" "$2" >>"$OUT/log" 2>&1 || echo "  ($1 $2 failed: see $OUT/log)"
}

for wl in "${WLS[@]}"; do
    echo "== $wl"
    for c in "${copiers[@]}"; do run_one "$c" "$wl" 1; done   # warm-up round
    sed -i "/\t$wl\t/d" "$TSV" 2>/dev/null
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in "${copiers[@]}"; do run_one "$c" "$wl" 0; done
    done
done

python3 - "$TSV" "$NBDCPY" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
me = sys.argv[2]
def name(c):
    return "nbdcpy" if c == me else ("qemu-img" if "qemu-img" in c else "nbdcopy")
data = {}
for r in rows:
    if r["verify"] not in ("ok", "-", ""):
        print("VERIFY FAILED:", r["wl"], r["copier"], r["verify"]); continue
    data.setdefault((r["wl"], name(r["copier"])), []).append(r)
def med(rs, k): return statistics.median(float(r[k]) for r in rs)
print()
print("| workload | copier | runs | wall s | GiB/s | CPU s/GiB | RSS MiB |")
print("|---|---|---|---|---|---|---|")
wls = sorted({k[0] for k in data}, key=lambda w: int(w[1:]))
for wl in wls:
    for c in ("nbdcpy", "nbdcopy", "qemu-img"):
        rs = data.get((wl, c))
        if not rs: continue
        print(f"| {wl} | {c} | {len(rs)} | {med(rs,'wall_s'):.3f} | {med(rs,'GiB_s'):.3f} | "
              f"{med(rs,'cpu_s_per_GiB'):.3f} | {med(rs,'maxrss_KiB')/1024:.0f} |")
print()
print("| workload | wall nbdcpy/nbdcopy | CPU nbdcpy/nbdcopy | wall nbdcpy/qemu-img | CPU nbdcpy/qemu-img |")
print("|---|---|---|---|---|")
for wl in wls:
    a = data.get((wl, "nbdcpy"))
    if not a: continue
    cells = []
    for c in ("nbdcopy", "qemu-img"):
        b = data.get((wl, c))
        if not b:
            cells += ["-", "-"]; continue
        cb = med(b, "cpu_s_per_GiB")
        cells.append(f"{med(a,'wall_s')/med(b,'wall_s'):.2f}")
        cells.append(f"{med(a,'cpu_s_per_GiB')/cb:.2f}" if cb > 0 else "-")
    print(f"| {wl} | " + " | ".join(cells) + " |")
PY
echo "(per-run rows: $TSV)"
