#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# What a resumed --checkpoint copy reads again: a copy of FILE (served
# by nbdkit with its stats filter) into a raw file, SIGKILLed once
# --progress=FD reports PCT% (default 90), then resumed with the same
# command; prints the bytes the resumed run read from the source (the
# stats filter's count) against the image's size, and checks the result
# with cmp.
#
#   bench/checkpoint-resume.sh IMAGE [PCT] [NBDCPY] [RATE]
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { sed -n 2,11p "$0"; exit 2; }
IMG=$(realpath "$1") PCT=${2:-90} B=${3:-$HERE/../build/nbdcpy} RATE=${4:-100M}
D=$(mktemp -d /dev/shm/nbdcpy-resume.XXXXXX)
trap 'kill "$NK" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
serve() {
    rm -f "$D/sock"
    nbdkit -f -U "$D/sock" --filter=stats file "$IMG" statsfile="$D/stats$1" statsappend=false &
    NK=$!
    for _ in $(seq 50); do [ -S "$D/sock" ] && break; sleep 0.1; done
}
cmd=("$B" -C 4 "--checkpoint=$D/ck" "--rate=$RATE" "nbd+unix:///?socket=$D/sock" "$D/dst.raw")
serve 1
exec 5< <("${cmd[@]}" --progress=3 3>&1 1>/dev/null 2>/dev/null & echo "pid $!"; wait)
read -r _ pid <&5
while read -r line <&5; do
    p=${line%%/*}
    if [ "$p" -ge "$PCT" ]; then kill -9 "$pid"; echo "killed at $p%"; break; fi
done
exec 5<&-
sleep 0.3
kill "$NK"; wait "$NK" 2>/dev/null
grep -E '^(done|id source-size)' "$D/ck" | awk '$1=="done"{d+=$3} END{print "checkpoint records " d " bytes done"}'
serve 2
start=$(date +%s.%N)
"${cmd[@]}" --json=3 3>"$D/json" || { echo "resume FAILED"; exit 1; }
end=$(date +%s.%N)
kill "$NK"; wait "$NK" 2>/dev/null
size=$(stat -c %s "$IMG")
copied=$(grep -o '"bytes_copied": [0-9]*' "$D/json" | grep -o '[0-9]*$')
zeroed=$(grep -o '"bytes_zeroed": [0-9]*' "$D/json" | grep -o '[0-9]*$')
read_bytes=$((copied + zeroed))
echo "resumed run: $(grep -o '"resumed_bytes": [0-9]*' "$D/json"), copied+zeroed (what it read) $read_bytes of $size bytes ($(echo "scale=1; 100*$read_bytes/$size" | bc)%), $(echo "$end - $start" | bc) s"
echo "source server's count (nbdkit stats): $(grep '^read:' "$D/stats2")"
cmp "$IMG" "$D/dst.raw" && echo "cmp: identical"
