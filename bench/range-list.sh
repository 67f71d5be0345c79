#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# Changed-areas copy benchmark (issue 29, CBT-driven warm migration): a
# sparse raw source of SIZE (16G) behind qemu-nbd -r holding AREAS (20000)
# changed areas of 64 KiB at random 64 KiB-aligned offsets (about 1.2 GiB),
# copied onto the previous copy (a sparse raw file on a disk, or the same
# kind of file behind qemu-nbd) by
#   - nbdcpy --ranges=LIST,
#   - the loop migration tools run today: bench/ranges-copy.py (libnbd's
#     Python bindings, one synchronous pread + pwrite per area),
#   - a full nbdcopy of the whole source.
# Copiers alternate run by run (ROUNDS, default 3, after a verified
# warm-up round: qemu-img compare of source and destination); every run
# gets fresh servers and is timed alone.  Prints medians, the areas' GiB/s
# and the wall time per GiB of the areas.
#
#   bench/range-list.sh [file|nbd ...]
#
# Environment: NBDCPY (default build/nbdcpy), ROUNDS, SIZE, AREAS, FLUSH=1
# (every copier flushes or fsyncs at the end), DIR (work directory,
# default under /var/tmp; removed at the end unless KEEP=1; not tmpfs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NBDCPY=${NBDCPY:-$ROOT/build/nbdcpy}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-16G}
AREAS=${AREAS:-20000}
DIR=${DIR:-/var/tmp/nbdcpy-ranges-bench.$$}
PY=/usr/bin/python3
FLUSH=${FLUSH:-0}
FL=()
[ "$FLUSH" = 1 ] && FL=(--flush)
DSTS=("$@")
[ ${#DSTS[@]} -gt 0 ] || DSTS=(file nbd)

"$PY" -c 'import nbd' 2>/dev/null || {
    echo "range-list.sh: needs python3-libnbd for /usr/bin/python3" >&2
    exit 1
}
mkdir -p "$DIR"
if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then
    echo "range-list.sh: $DIR is on tmpfs; use a disk-backed DIR" >&2
    exit 1
fi
PIDS=()
stop_servers() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_servers
    [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

cd "$DIR"
if [ ! -f ready ]; then
    echo "setup: $SIZE sparse raw source, $AREAS changed areas of 64 KiB" >&2
    rm -f src.raw
    truncate -s "$SIZE" src.raw
    # The areas (fixed seed), written with data; the list in random order.
    "$PY" - "$AREAS" <<'PY'
import os, random, sys
n = int(sys.argv[1])
size = os.path.getsize("src.raw")
rng = random.Random(29)
blocks = rng.sample(range(size // 65536), n)
fd = os.open("src.raw", os.O_WRONLY)
for b in sorted(blocks):
    os.pwrite(fd, rng.randbytes(65536), b * 65536)
os.close(fd)
with open("areas.txt", "w") as f:
    f.write("# changed areas: offset length\n")
    for b in blocks:
        f.write("%d 65536\n" % (b * 65536))
PY
    touch ready
fi
AREA_BYTES=$(awk '!/^#/ {s += $2} END {print s}' areas.txt)

start_qemu_nbd() {
    local name=$1
    shift
    rm -f "$name.sock"
    qemu-nbd -t -e 4 -k "$DIR/$name.sock" "$@" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -S "$name.sock" ] && return; sleep 0.05; done
    echo "qemu-nbd $name did not start" >&2
    exit 1
}

uri() { echo "nbd+unix:///?socket=$DIR/$1.sock"; }

# run COPIER DST VERIFY: one timed run onto a fresh previous copy (a
# sparse file of SIZE: outside the areas source and copy are both zero);
# appends "copier dst secs" to results.
run() {
    local copier=$1 dst=$2 verify=$3 target
    rm -f "dst-$dst.raw"
    truncate -s "$SIZE" "dst-$dst.raw"
    sync
    start_qemu_nbd src -r -f raw src.raw
    if [ "$dst" = nbd ]; then
        start_qemu_nbd dst -f raw --discard=unmap "dst-$dst.raw"
        target=$(uri dst)
    else
        target=$DIR/dst-$dst.raw
    fi
    local t0 t1
    t0=$(date +%s.%N)
    case $copier in
        nbdcpy) "$NBDCPY" "${FL[@]}" --ranges=areas.txt "$(uri src)" "$target" ;;
        script) "$PY" "$HERE/ranges-copy.py" "${FL[@]}" areas.txt "$(uri src)" "$target" >/dev/null ;;
        nbdcopy) nbdcopy "${FL[@]}" "$(uri src)" "$target" ;;
    esac
    t1=$(date +%s.%N)
    stop_servers
    echo "$copier $dst $(awk "BEGIN{print $t1 - $t0}")" >>results
    if [ "$verify" = 1 ]; then
        qemu-img compare -q -f raw -F raw src.raw "dst-$dst.raw" ||
            { echo "VERIFY FAILED: $copier -> $dst" >&2; exit 1; }
    fi
}

rm -f results
for dst in "${DSTS[@]}"; do
    for c in nbdcpy script nbdcopy; do run $c "$dst" 1; done   # warm-up, verified
    sed -i "/ $dst /d" results
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in nbdcpy script nbdcopy; do run $c "$dst" 0; done
    done
done

"$PY" - results "$SIZE" "$AREAS" "$AREA_BYTES" "$([ "$FLUSH" = 1 ] && echo ", with flush")" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
size, areas, nbytes, fl = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
gib = nbytes / (1 << 30)
print("changed areas: %d x 64 KiB (%.2f GiB) of a %s sparse source, medians of %d runs%s"
      % (areas, gib, size, len(rows) // 6 or 1, fl))
print("| destination | copier | wall s | areas GiB/s | s per areas GiB | wall / script |")
print("|---|---|---|---|---|---|")
for dst in dict.fromkeys(r[1] for r in rows):
    med = {}
    for c in ("nbdcpy", "script", "nbdcopy"):
        rs = [float(r[2]) for r in rows if r[0] == c and r[1] == dst]
        if rs:
            med[c] = statistics.median(rs)
    for c, t in med.items():
        ratio = t / med["script"] if "script" in med else float("nan")
        print("| %s | %s | %.2f | %.2f | %.3f | %.3f |" % (dst, c, t, gib / t, t / gib, ratio))
PY
