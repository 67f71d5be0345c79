#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# --checkpoint soak: N kill-and-resume cycles at random instants.  Each
# cycle copies a sparse 128 MiB source (holes, data, written zeroes) with
# 4 connections into a destination full of garbage (a file, or an nbdkit
# export, in turn; the engine alternates too), kills it with SIGKILL at a
# random instant (sometimes twice), resumes with the same command, and
# compares with cmp.  Prints one line per cycle and the mismatch count;
# exits non-zero on any mismatch or failed resume.
#
#   bench/checkpoint-soak.sh [N] [NBDCPY]      (defaults: 100 build/nbdcpy)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${1:-100}
B=${2:-$HERE/../build/nbdcpy}
D=$(mktemp -d /tmp/nbdcpy-soak.XXXXXX)
trap 'kill "$NK" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
SIZE=$((128 << 20))
python3 - "$D/src.img" "$SIZE" <<'EOF'
import os, random, sys
p, size = sys.argv[1], int(sys.argv[2])
r = random.Random(37)
with open(p, "wb") as f:
    f.truncate(size)
    for mib in range(0, size >> 20):
        k = r.random()
        if k < 0.35:
            continue                         # a hole
        f.seek(mib << 20)
        n = r.choice([4096, 65536, 1 << 19, 1 << 20])
        f.write(bytes(n) if k < 0.45 else os.urandom(n))
EOF
head -c "$SIZE" /dev/zero | tr '\0' '\245' > "$D/garbage"
cp "$D/garbage" "$D/nbd.img"
nbdkit -f -U "$D/sock" file "$D/nbd.img" & NK=$!
for _ in $(seq 50); do [ -S "$D/sock" ] && break; sleep 0.1; done
URI="nbd+unix:///?socket=$D/sock"
bad=0 killed=0
for ((i = 1; i <= N; i++)); do
    if ((i % 2)); then dst=$D/dst.img out=$D/dst.img; else dst=$URI out=$D/nbd.img; fi
    if ((i % 4 < 2)); then eng=io_uring; else eng=epoll; fi
    cp "$D/garbage" "$out"
    rm -f "$D/ck"
    cmd=("$B" --engine=$eng -C 4 "--checkpoint=$D/ck" --checkpoint-interval=0.1
         --rate=40M "$D/src.img" "$dst")
    kills=$((1 + RANDOM % 2)) note=""
    for ((k = 0; k < kills; k++)); do
        "${cmd[@]}" 2>/dev/null & P=$!
        sleep "0.$(printf %03d $((RANDOM % 1000)))"
        if kill -9 "$P" 2>/dev/null; then killed=$((killed + 1)); note+="killed "; fi
        wait "$P" 2>/dev/null
        [ -f "$D/ck" ] || break
    done
    if ! "${cmd[@]}" 2>"$D/err"; then
        echo "cycle $i: resume FAILED: $(cat "$D/err")"; bad=$((bad + 1)); continue
    fi
    if cmp -s "$D/src.img" "$out" && [ ! -e "$D/ck" ]; then r=ok; else r=MISMATCH; bad=$((bad + 1)); fi
    echo "cycle $i ($eng, ${dst##*/}): ${note}$r"
done
echo "soak: $N cycles, $killed kills of a running copy, $bad mismatches"
[ "$bad" -eq 0 ]
