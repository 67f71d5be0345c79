#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# A/B of copier variants on one workload of the shared harness, alternating
# variant by variant each round (round 0 is a warm-up, not counted), then
# medians of wall time, copier CPU s/GiB and the servers' CPU seconds.
#
#   bench/ab.sh WORKLOAD ROUNDS 'label=command [args]' ...
#   bench/ab.sh W8 5 "def=build/nbdcpy" "c1=build/nbdcpy -C 1" "ref=nbdcopy"
#
# Environment: BENCH (the harness, default ../shared/bench/run.sh), VERIFY
# (passed to the harness; default 0 here: A/B runs are for speed).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-$HERE/../../shared/bench/run.sh}
[ $# -ge 3 ] || { sed -n 2,10p "$0"; exit 2; }
wl=$1 rounds=$2
shift 2
out=$(mktemp -d /tmp/nbdcpy-ab.XXXXXX)
for ((r = 0; r <= rounds; r++)); do
    for v in "$@"; do
        COPIER=${v#*=} REPEAT=1 WARMUP=0 VERIFY=${VERIFY:-0} RESULTS=$out/${v%%=*}.tsv \
            "$BENCH" "$wl" >/dev/null 2>>"$out/log" || echo "(${v%%=*} failed: see $out/log)"
    done
done
for v in "$@"; do
    python3 - "$out/${v%%=*}.tsv" "${v%%=*}" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))[1:]  # drop the warm-up
m = lambda k: statistics.median(float(r[k]) for r in rows)
print(f"{sys.argv[2]:>12}: runs {len(rows)}, wall {m('wall_s'):.3f} s, CPU {m('cpu_s_per_GiB'):.3f} s/GiB, "
      f"servers {m('src_srv_cpu_s'):.2f} + {m('dst_srv_cpu_s'):.2f} s; CPU per run: "
      + " ".join(r["cpu_s_per_GiB"] for r in rows))
PY
done
echo "(per-run rows: $out)"
