#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# A/B of two copiers on one set of servers of the shared harness: N pairs,
# the order swapped every pair (which one runs first moves W7's figures
# as much as the binary does), the destination file removed before each
# copy, the first pair dropped; then median CPU seconds and wall of each.
# For workloads whose cost is the kernel's (W7: fresh tmpfs pages), where
# fresh servers per run (bench/ab.sh) add more noise than they remove.
#
#   bench/pairs.sh WORKLOAD N 'label=command [args]' 'label=command [args]'
#   bench/pairs.sh W7 20 "new=build/nbdcpy" "old=/work/wt-old/build/nbdcpy"
#
# Environment: BENCH (the harness, default ../shared/bench/run.sh).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-$HERE/../../shared/bench/run.sh}
[ $# -eq 4 ] || { sed -n 2,13p "$0"; exit 2; }
out=$(mktemp /tmp/nbdcpy-pairs.XXXXXX)
export PAIRS_N=$2 PAIRS_A=$3 PAIRS_B=$4 PAIRS_OUT=$out
# shellcheck disable=SC2016 # expanded by the harness's bash
"$BENCH" with "$1" '
for ((i = 1; i <= PAIRS_N; i++)); do
    order=("$PAIRS_A" "$PAIRS_B")
    ((i % 2)) || order=("$PAIRS_B" "$PAIRS_A")
    for v in "${order[@]}"; do
        [ -f "$DST" ] && rm -f "$DST"
        /usr/bin/time -f "${v%%=*} %e %U %S" -a -o "$PAIRS_OUT" ${v#*=} "$SRC" "$DST" ||
            echo "(${v%%=*} failed)" >&2
    done
done' >/dev/null
python3 - "$out" "${3%%=*}" "${4%%=*}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 4][2:]  # drop the first pair
for name in sys.argv[2:]:
    cpu = [float(r[2]) + float(r[3]) for r in rows if r[0] == name]
    wall = [float(r[1]) for r in rows if r[0] == name]
    if cpu:
        print(f"{name:>10}: pairs {len(cpu)}, CPU {statistics.median(cpu):.2f} s "
              f"({min(cpu):.2f}-{max(cpu):.2f}), wall {statistics.median(wall):.2f} s")
PY
echo "(per-copy rows: $out)"
