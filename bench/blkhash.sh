#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# What --blkhash costs: W1 and W2 of the shared harness with and without
# --blkhash=sha256, alternating run by run (bench/ab.sh), W5 (64 GiB
# empty) with hashing, and this machine's SHA-256 rate on all cores
# (openssl speed -evp sha256 -multi NPROC).  Prints the bound of issue 18:
# the hashed copy's wall time against 1.2 x max(the copy without hashing,
# bytes / SHA-256 rate).
#
#   bench/blkhash.sh [ROUNDS]        (default 3)
#
# Environment: NBDCPY (default build/nbdcpy), BENCH (the harness).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NBDCPY=${NBDCPY:-$HERE/../build/nbdcpy}
rounds=${1:-3}
n=$(nproc)
# openssl prints k = 1000 bytes per second.
rate=$(openssl speed -evp sha256 -multi "$n" -bytes 65536 -seconds 3 2>/dev/null |
       awk '$1 == "sha256" {sub("k", "", $2); print $2 * 1000}' | tail -n 1)
echo "SHA-256 on $n cores (openssl speed -evp sha256 -multi $n, 64 KiB): $(awk -v r="$rate" 'BEGIN {printf "%.0f MB/s", r / 1e6}')"
for wl in W1 W2 W5; do
    echo "== $wl"
    res=$("$HERE/ab.sh" "$wl" "$rounds" "plain=$NBDCPY" "hash=$NBDCPY --blkhash=sha256")
    echo "$res"
    dir=$(sed -n 's/^(per-run rows: \(.*\))$/\1/p' <<<"$res")
    python3 - "$dir" "$wl" "$rate" <<'PY'
import csv, statistics, sys
d, wl, rate = sys.argv[1], sys.argv[2], float(sys.argv[3] or 0)
def rows(v): return list(csv.DictReader(open(f"{d}/{v}.tsv"), delimiter="\t"))[1:]
p, h = rows("plain"), rows("hash")
if not p or not h:
    sys.exit(print("  (no runs)"))
wall = lambda rs: statistics.median(float(r["wall_s"]) for r in rs)
size = float(h[0]["bytes"])
if wl == "W5":
    print(f"  {wl}: hashed copy {wall(h):.3f} s (plain {wall(p):.3f} s); the issue asks well under 1 s")
else:
    bound = max(wall(p), size / rate if rate else 0)
    print(f"  {wl}: hashed {wall(h):.3f} s, plain {wall(p):.3f} s, bytes/rate {size / rate:.3f} s: "
          f"{wall(h) / bound:.2f} x the larger (target <= 1.20)")
PY
done
