#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# The command run under the name "nbdcopy" (the compat link) behaves as
# nbdcopy's callers expect.  Usage: tests/nbdcopy-compat.sh PATH/nbdcopy
# What the callers rely on (virt-v2v 2.x, checked in its sources):
#  - `nbdcopy --version` first line "nbdcopy MAJOR.MINOR.PATCH" (libnbd's
#    display_version prints the program name and version, then "libnbd X"),
#    here the nbdcopy release whose options it implements (1.24) followed
#    by " (nbdcpy X.Y.Z)", then "libnbdcpy X.Y.Z";
#  - `nbdcopy --help | grep -- --blkhash` decides whether to pass
#    --blkhash: help must list only options that work (--blkhash does,
#    printing the hash on stdout as nbdcopy 1.24 does);
#  - `nbdcopy SRC DST --request-size=N --requests=N --flush --progress
#    [--allocated]` (options after the operands), success only on exit 0;
#  - failures exit 1, as nbdcopy does.
set -eu
cmd=${1:?path of the command named nbdcopy}
[ "$(basename "$cmd")" = nbdcopy ] || { echo "$cmd is not named nbdcopy"; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "nbdcopy-compat: FAIL: $*"; exit 1; }

"$cmd" --version > "$t/version" || fail "--version exited $?"
head -n 1 "$t/version" |
    grep -Eq '^nbdcopy 1\.24\.[0-9]+ \(nbdcpy [0-9]+\.[0-9]+\.[0-9]+\)$' ||
    fail "--version first line: $(head -n 1 "$t/version")"
sed -n 2p "$t/version" | grep -Eq '^libnbdcpy [0-9]+\.[0-9]+\.[0-9]+$' ||
    fail "--version second line: $(sed -n 2p "$t/version")"
[ "$(sed -n '1s/.*(nbdcpy \(.*\))$/\1/p' "$t/version")" = \
  "$(sed -n '2s/^libnbdcpy //p' "$t/version")" ] ||
    fail "--version: the command and the library differ: $(cat "$t/version")"

"$cmd" --help > "$t/help" || fail "--help exited $?"
for o in --allocated --connections --destination-is-zero --target-is-zero \
         --flush --no-extents --progress --queue-size --request-size \
         --requests --sparse --synchronous --threads --verbose --version; do
    grep -q -- "$o" "$t/help" || fail "--help does not list $o"
done
grep -q -- --blkhash "$t/help" || fail "--help does not list --blkhash"

# --long-options / --short-options list at least what libnbd's nbdcopy lists.
"$cmd" --long-options > "$t/long"
"$cmd" --short-options > "$t/short"
if command -v nbdcopy > /dev/null && nbdcopy --long-options > "$t/real-long" 2>/dev/null; then
    nbdcopy --short-options > "$t/real-short"
    for o in $(cat "$t/real-long" "$t/real-short"); do
        grep -qx -- "$o" "$t/long" "$t/short" || fail "$o missing (libnbd's nbdcopy has it)"
    done
fi

# Exit codes: usage errors and failed copies exit 1.
rc=0; "$cmd" --no-such-option > /dev/null 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "unknown option exited $rc, expected 1"
rc=0; "$cmd" "$t/missing.img" > /dev/null 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "one operand exited $rc, expected 1"
rc=0; "$cmd" "$t/missing.img" "$t/out.img" > /dev/null 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "missing source exited $rc, expected 1"

# virt-v2v's invocation: operands first, then its options; exit 0, exact copy.
truncate -s 6M "$t/src.img"
head -c 1M /dev/urandom | dd of="$t/src.img" bs=1M seek=2 conv=notrunc status=none
truncate -s 6M "$t/dst.img"
"$cmd" "$t/src.img" "$t/dst.img" --request-size=4194304 --requests=16 \
    --flush --progress --allocated 2> "$t/stderr" ||
    fail "virt-v2v style copy exited $?: $(cat "$t/stderr")"
cmp "$t/src.img" "$t/dst.img" || fail "copy differs"
# ... and its --progress bar as Forklift's monitor reads it (stderr split
# at \r and \n, ".+ (\d+)% \[[*-]+\]"): the last piece shows 100%.
last=$(tr '\r' '\n' < "$t/stderr" | grep -E '.+ ([0-9]+)% \[[*-]+\]' | tail -n 1)
case "$last" in
    *" 100% ["*) ;;
    *) fail "--progress: no 100% bar piece in: $(cat "$t/stderr")" ;;
esac

# --blkhash as virt-v2v passes it: the hash alone on stdout, exit 0.
"$cmd" "$t/src.img" "$t/dst2.img" --blkhash > "$t/hash" 2> "$t/stderr" ||
    fail "--blkhash copy exited $?: $(cat "$t/stderr")"
grep -Eqx '[0-9a-f]{64}' "$t/hash" || fail "--blkhash printed: $(cat "$t/hash")"
[ "$(wc -l < "$t/hash")" = 1 ] || fail "--blkhash printed more than one line"
echo "nbdcopy-compat: OK ($(head -n 1 "$t/version"))"
