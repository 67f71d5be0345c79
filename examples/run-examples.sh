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
