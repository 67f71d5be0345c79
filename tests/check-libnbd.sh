#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# check-libnbd: runs libnbd's own nbdcopy test suite (copy/*.sh of a
# libnbd source tree) against the built command, installed as `nbdcopy`
# first in PATH.  No configure: tests/functions.sh is made from
# functions.sh.in with the few substitutions it needs.  The tree is
# copied to a scratch directory (the scripts write their files in the
# current directory).  Usage: check-libnbd.sh LIBNBD_SRC NBDCPY_BIN
#   LIBNBD_TESTS="copy-sparse.sh test-verbose.sh": only those scripts.
# Exit status: 0 if nothing failed (skips are fine); 1 otherwise.
# test-version.sh compares the version with libnbd's build and can
# only pass for libnbd's own nbdcopy: it is counted apart (expected).

set -u
src=${1:?usage: check-libnbd.sh LIBNBD_SRC NBDCPY_BIN}
bin=${2:?usage: check-libnbd.sh LIBNBD_SRC NBDCPY_BIN}
bin=$(realpath "$bin")
if [ ! -d "$src/copy" ] || [ ! -f "$src/tests/functions.sh.in" ]; then
    echo "check-libnbd: $src is not a libnbd source tree (copy/, tests/functions.sh.in)" >&2
    exit 2
fi
tmp=$(mktemp -d /tmp/nbdcpy-libnbd.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/tree/tests" "$tmp/log"
ln -s "$bin" "$tmp/bin/nbdcopy"
cp -a "$src/copy" "$tmp/tree/"
w() { command -v "$1" || echo "$1"; }
sed -e "s|@abs_top_srcdir@|$tmp/tree|g" \
    -e "s|@NBDKIT@|$(w nbdkit)|g" -e "s|@PYTHON@|$(w python3)|g" \
    -e "s|@QEMU_NBD@|$(w qemu-nbd)|g" \
    -e "s|@QEMU_STORAGE_DAEMON@|$(w qemu-storage-daemon)|g" \
    -e "s|@CMP@|$(w cmp)|g" -e "s|@CUT@|$(w cut)|g" -e "s|@DD@|$(w dd)|g" \
    -e "s|@REALPATH@|$(w realpath)|g" -e "s|@SED@|$(w sed)|g" \
    -e "s|@STAT@|$(w stat)|g" -e "s|@TR@|$(w tr)|g" \
    -e "s|@TRUNCATE@|$(w truncate)|g" -e "s|@[A-Z_]*@||g" \
    "$src/tests/functions.sh.in" > "$tmp/tree/tests/functions.sh"

# What libnbd's Makefile passes from configure.
export PATH="$tmp/bin:$PATH" VG= LIBNBD_DEBUG= PSKTOOL=$(command -v psktool || true)
cd "$tmp/tree/copy" || exit 2
pass=0 fail=0 skip=0 expected=0 failed=
tests=${LIBNBD_TESTS:-$(ls *.sh | grep -v '^tester\.sh$')}
for t in $tests; do
    timeout 600 bash "./$t" > "$tmp/log/$t.log" 2>&1 < /dev/null
    rc=$?
    case $rc in
        0) r=PASS; pass=$((pass + 1)) ;;
        77) r=SKIP; skip=$((skip + 1)) ;;
        *) if [ "$t" = test-version.sh ]; then
               r="XFAIL (compares with libnbd's build version)"
               expected=$((expected + 1))
           else
               r="FAIL (exit $rc)"; fail=$((fail + 1)); failed="$failed $t"
               tail -n 15 "$tmp/log/$t.log" | sed "s|^|    $t: |"
           fi ;;
    esac
    echo "$r: $t"
done
echo "check-libnbd: $pass pass, $fail fail, $skip skip, $expected expected failure(s)${failed:+; failed:$failed}"
[ "$fail" -eq 0 ]
