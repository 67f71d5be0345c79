#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# Runs the C examples built in $EXAMPLES (make check-install builds them
# against a staged install) and checks what they do.
set -eu
: "${EXAMPLES:?directory of the built examples}"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# copy: a file with data and a hole, copied exactly.
truncate -s 8M "$t/src.img"
head -c 1M /dev/urandom | dd of="$t/src.img" bs=1M seek=5 conv=notrunc status=none
"$EXAMPLES/copy" "$t/src.img" "$t/dst.img"
cmp "$t/src.img" "$t/dst.img"
echo "examples: copy OK"

# progress: the callback reports 100% at the end.
"$EXAMPLES/progress" "$t/src.img" null: > "$t/progress.out"
grep -q '^copy: 100% (8388608 of 8388608 bytes' "$t/progress.out"
grep -q '^done: 8388608 bytes' "$t/progress.out"
echo "examples: progress OK"

# cancel: a copy from a pipe that never delivers data, stopped by SIGINT.
mkfifo "$t/fifo"
sleep 30 > "$t/fifo" &
writer=$!
"$EXAMPLES/cancel" - null: < "$t/fifo" > "$t/cancel.out" &
pid=$!
sleep 0.5
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
kill "$writer" 2>/dev/null || :
wait "$writer" 2>/dev/null || :
[ "$rc" = 130 ] || { echo "cancel exited $rc, expected 130"; cat "$t/cancel.out"; exit 1; }
grep -q '^copy cancelled$' "$t/cancel.out"
echo "examples: cancel OK"

# ranges: only the areas given change; the rest of the destination stays.
head -c 8M /dev/zero | tr '\0' '\132' > "$t/prev.img"
cp "$t/prev.img" "$t/want.img"
dd if="$t/src.img" of="$t/want.img" bs=4096 skip=1280 seek=1280 count=32 conv=notrunc status=none
dd if="$t/src.img" of="$t/want.img" bs=1 skip=100 seek=100 count=900 conv=notrunc status=none
"$EXAMPLES/ranges" "$t/src.img" "$t/prev.img" 5308416:65536 100:900 5242880:65536 > "$t/ranges.out"
grep -q '^copied 131972 bytes of changed areas$' "$t/ranges.out"
cmp "$t/prev.img" "$t/want.img"
echo "examples: ranges OK"
