#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# Incremental copy benchmark (issue 19): a qcow2 source of SIZE (64G) with
# base data, a persistent dirty bitmap, then 1% of it written in scattered
# 64 KiB runs; copied onto the previous copy (a raw file, or the same file
# behind qemu-nbd) by
#   - nbdcpy --dirty-bitmap,
#   - the loop users write today: bench/dirty-copy.py (libnbd's Python
#     bindings: the bitmap's block status, then each dirty extent),
#   - a full nbdcopy.
# Copiers alternate run by run (ROUNDS, default 5, after a warm-up round);
# every run gets fresh servers and is timed alone; the requests each
# server received are counted from qemu's trace
# (nbd_co_receive_request_decode_type).  The first run of each copier is
# verified with qemu-img compare.  Prints medians.
#
#   bench/dirty-bitmap.sh [file|nbd ...]
#
# Environment: NBDCPY (default build/nbdcpy), ROUNDS, SIZE, FLUSH=1 (every
# copier flushes or fsyncs the destination at the end), DIR (work
# directory, default under /var/tmp; removed at the end unless KEEP=1).
# Not on tmpfs: the files take a few GiB, and a zeroing request that a
# filesystem cannot turn into a hole would fill memory with zeroes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NBDCPY=${NBDCPY:-$ROOT/build/nbdcpy}
ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-64G}
DIR=${DIR:-/var/tmp/nbdcpy-dirty-bench.$$}
PY=/usr/bin/python3
FLUSH=${FLUSH:-0}
FL=()
[ "$FLUSH" = 1 ] && FL=(--flush)
DSTS=("$@")
[ ${#DSTS[@]} -gt 0 ] || DSTS=(file nbd)

"$PY" -c 'import nbd' 2>/dev/null || {
    echo "dirty-bitmap.sh: needs python3-libnbd for /usr/bin/python3" >&2
    exit 1
}
mkdir -p "$DIR"
if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then
    echo "dirty-bitmap.sh: $DIR is on tmpfs; use a disk-backed DIR" >&2
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
    echo "setup: $SIZE qcow2, base data, bitmap b0, 1% dirty in 64 KiB runs" >&2
    qemu-img create -q -f qcow2 src.qcow2 "$SIZE"
    bytes=$(qemu-img info --output=json src.qcow2 |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    # Base data: 64 MiB every 4 GiB.
    "$PY" -c "
for i, off in enumerate(range(0, $bytes, 4 << 30)):
    print('write -P %d %d 64M' % (i % 250 + 1, off))" |
        qemu-io -f qcow2 src.qcow2 >/dev/null
    qemu-img bitmap --add --enable -f qcow2 src.qcow2 b0
    # The previous copy.
    qemu-img convert -f qcow2 -O raw src.qcow2 base.raw
    for d in file nbd; do cp --sparse=always base.raw "dst-$d.raw"; done
    rm base.raw
    # 1% of the 64 KiB blocks, scattered (fixed seed).
    "$PY" -c "
import random
blocks = $bytes // 65536
for b in sorted(random.Random(19).sample(range(blocks), blocks // 100)):
    print('write -P %d %d 64k' % (b % 251 + 1, b * 65536))" |
        qemu-io -f qcow2 src.qcow2 >/dev/null
    touch ready
fi

# start_qemu_nbd NAME ARGS... : a server on $DIR/NAME.sock, tracing the
# requests it decodes into $DIR/NAME.trace.
start_qemu_nbd() {
    local name=$1
    shift
    rm -f "$name.sock" "$name.trace"
    qemu-nbd -t -e 4 -k "$DIR/$name.sock" \
        --trace "nbd_co_receive_request_decode_type,file=$DIR/$name.trace" "$@" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -S "$name.sock" ] && return; sleep 0.05; done
    echo "qemu-nbd $name did not start" >&2
    exit 1
}

uri() { echo "nbd+unix:///?socket=$DIR/$1.sock"; }
count() { [ -f "$1.trace" ] && grep -c decode_type "$1.trace" || echo 0; }

# run COPIER DST VERIFY: one timed run; appends "copier dst secs src-reqs
# dst-reqs" to results.
run() {
    local copier=$1 dst=$2 verify=$3 target
    rm -f src.trace dst.trace
    start_qemu_nbd src -r -f qcow2 -B b0 src.qcow2
    if [ "$dst" = nbd ]; then
        # Zeroing punches holes (else a full copy writes 64G of zeroes).
        start_qemu_nbd dst -f raw --discard=unmap "dst-$dst.raw"
        target=$(uri dst)
    else
        target=$DIR/dst-$dst.raw
    fi
    local t0 t1
    t0=$(date +%s.%N)
    case $copier in
        nbdcpy) "$NBDCPY" "${FL[@]}" --dirty-bitmap=b0 "$(uri src)" "$target" ;;
        script) "$PY" "$HERE/dirty-copy.py" "${FL[@]}" b0 "$(uri src)" "$target" >/dev/null ;;
        nbdcopy) nbdcopy "${FL[@]}" "$(uri src)" "$target" ;;
    esac
    t1=$(date +%s.%N)
    stop_servers
    echo "$copier $dst $(awk "BEGIN{print $t1 - $t0}") $(count src) $(count dst)" >>results
    if [ "$verify" = 1 ]; then
        qemu-img compare -q -f qcow2 -F raw src.qcow2 "dst-$dst.raw" ||
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

"$PY" - results "$SIZE" "$([ "$FLUSH" = 1 ] && echo ", with flush")" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("incremental copy of a %s qcow2 with 1%% dirty (64 KiB runs), medians of %d runs%s"
      % (sys.argv[2], len(rows) // 6 or 1, sys.argv[3]))
print("| destination | copier | wall s | source requests | destination requests | wall / script |")
print("|---|---|---|---|---|---|")
for dst in dict.fromkeys(r[1] for r in rows):
    med = {}
    for c in ("nbdcpy", "script", "nbdcopy"):
        rs = [r for r in rows if r[0] == c and r[1] == dst]
        if rs:
            med[c] = [statistics.median(float(r[i]) for r in rs) for i in (2, 3, 4)]
    for c, (t, s, d) in med.items():
        ratio = t / med["script"][0] if "script" in med else float("nan")
        print("| %s | %s | %.2f | %d | %d | %.2f |" % (dst, c, t, s, d, ratio))
PY
