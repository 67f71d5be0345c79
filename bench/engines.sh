#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# The two engines side by side: nbdcpy --engine=io_uring, nbdcpy
# --engine=epoll and nbdcopy (and a newer nbdcopy when NBDCOPY_NEW names
# one) on the shared harness's workloads, alternating copiers run by run
# after a warm-up round, each run with fresh servers; then medians and the
# ratios the engine issue asks for (epoll/nbdcopy CPU and wall,
# epoll/io_uring CPU).
#
#   bench/engines.sh [WORKLOAD ...]      (default W1 .. W10)
#
# Environment: NBDCPY (default build/nbdcpy), ROUNDS (default 3), BENCH
# (the harness, default ../shared/bench/run.sh), NBDCOPY_NEW (a second
# nbdcopy, e.g. the wrapper ../shared/bench/build-nbdcopy.sh prints).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NBDCPY=${NBDCPY:-$ROOT/build/nbdcpy}
BENCH=${BENCH:-$ROOT/../shared/bench/run.sh}
ROUNDS=${ROUNDS:-3}
WLS=("$@")
[ ${#WLS[@]} -gt 0 ] || WLS=(W1 W2 W3 W4 W5 W6 W7 W8 W9 W10)
OUT=$(mktemp -d /tmp/nbdcpy-engines.XXXXXX)
variants=("io_uring=$NBDCPY --engine=io_uring" "epoll=$NBDCPY --engine=epoll" "nbdcopy=nbdcopy")
[ -n "${NBDCOPY_NEW:-}" ] && variants+=("nbdcopy-new=$NBDCOPY_NEW")

for wl in "${WLS[@]}"; do
    echo "== $wl"
    for ((r = 0; r <= ROUNDS; r++)); do
        for v in "${variants[@]}"; do
            # Round 0 is a warm-up (its rows go to a file not read).
            tsv=$OUT/$wl.${v%%=*}.tsv
            [ "$r" = 0 ] && tsv=$OUT/warmup.tsv
            COPIER=${v#*=} REPEAT=1 WARMUP=0 VERIFY=${VERIFY:-1} RESULTS=$tsv \
                "$BENCH" "$wl" >>"$OUT/log" 2>&1 || echo "  (${v%%=*} $wl failed: see $OUT/log)"
        done
    done
done

python3 - "$OUT" "${WLS[@]}" <<'PY'
import csv, os, statistics, sys
out, wls = sys.argv[1], sys.argv[2:]
names = ["io_uring", "epoll", "nbdcopy", "nbdcopy-new"]
data = {}
for wl in wls:
    for n in names:
        p = os.path.join(out, f"{wl}.{n}.tsv")
        if not os.path.exists(p):
            continue
        rows = list(csv.DictReader(open(p), delimiter="\t"))
        bad = [r for r in rows if r["verify"] not in ("ok", "-", "", "skip")]
        for r in bad:
            print("VERIFY FAILED:", wl, n, r["verify"])
        rows = [r for r in rows if r not in bad]
        if rows:
            data[(wl, n)] = rows
med = lambda rs, k: statistics.median(float(r[k]) for r in rs)
print()
print("| workload | copier | runs | wall s | GiB/s | CPU s/GiB |")
print("|---|---|---|---|---|---|")
for wl in wls:
    for n in names:
        rs = data.get((wl, n))
        if rs:
            print(f"| {wl} | {n} | {len(rs)} | {med(rs,'wall_s'):.3f} | {med(rs,'GiB_s'):.3f} | {med(rs,'cpu_s_per_GiB'):.3f} |")
print()
print("| workload | CPU epoll/nbdcopy | wall epoll/nbdcopy | CPU epoll/io_uring | wall epoll/io_uring | CPU io_uring/nbdcopy |")
print("|---|---|---|---|---|---|")
def ratio(wl, a, b, k):
    x, y = data.get((wl, a)), data.get((wl, b))
    if not x or not y or med(y, k) == 0:
        return "-"
    return f"{med(x, k) / med(y, k):.2f}"
for wl in wls:
    print(f"| {wl} | {ratio(wl,'epoll','nbdcopy','cpu_s_per_GiB')} | {ratio(wl,'epoll','nbdcopy','wall_s')} | "
          f"{ratio(wl,'epoll','io_uring','cpu_s_per_GiB')} | {ratio(wl,'epoll','io_uring','wall_s')} | "
          f"{ratio(wl,'io_uring','nbdcopy','cpu_s_per_GiB')} |")
PY
echo "(per-run rows: $OUT)"
