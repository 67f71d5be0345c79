#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# The release is one version everywhere: Cargo.toml (and Cargo.lock),
# the header's NBDCPY_VERSION_* macros, the top entries of NEWS,
# debian/changelog and nbdcpy.spec, nbdcpy.pc.in (which takes it from the
# Makefile), and, when given, what the built command's library says.  The
# map's nodes and debian/libnbdcpy0.symbols agree: each node NBDCPY_X.Y
# is listed once as NBDCPY_X.Y@NBDCPY_X.Y X.Y.0, each of its functions as
# FUNC@NBDCPY_X.Y X.Y.0, nothing else, no line twice; and no node is
# newer than the release.
# Usage: check-version.sh [ROOT [NBDCPY-COMMAND]] (ROOT: the source tree,
# default .).  Prints every disagreement; exits 1 if there is one.
set -u
root=${1:-.}
cmd=${2:-}
status=0
bad () { echo "check-version: $*"; status=1; }

v=$(sed -n 's/^version = "\([^"]*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
case "$v" in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "check-version: no version in $root/Cargo.toml"; exit 1 ;;
esac
major=${v%%.*}; rest=${v#*.}; minor=${rest%%.*}; patch=${rest#*.}

# Cargo.lock: the package's own entry.
lock=$(awk '/^name = "nbdcpy"$/ {getline; sub(/^version = "/, ""); sub(/"$/, ""); print; exit}' \
  "$root/Cargo.lock")
[ "$lock" = "$v" ] || bad "Cargo.lock says nbdcpy $lock, Cargo.toml $v"

# The header: the macros build.rs writes from Cargo's version.
h="$root/include/nbdcpy.h"
num=$((major * 1000000 + minor * 1000 + patch))
for m in "MAJOR $major" "MINOR $minor" "PATCH $patch" "STRING \"$v\"" "NUMBER $num"; do
  grep -q "^#define NBDCPY_VERSION_${m%% *} ${m#* }\$" "$h" ||
    bad "$h: NBDCPY_VERSION_${m%% *} is not ${m#* } ($(grep "NBDCPY_VERSION_${m%% *} " "$h"))"
done

# NEWS: the first release heading, "* nbdcpy X.Y.Z (...)".
news=$(sed -n 's/^\* nbdcpy \([0-9][0-9.]*\).*/\1/p' "$root/NEWS" | head -n 1)
[ "$news" = "$v" ] || bad "NEWS: the newest release is '$news', Cargo.toml says $v"

# debian/changelog: the top entry, "nbdcpy (X.Y.Z[-R]) ...".
deb=$(sed -n '1s/^nbdcpy (\([^)-]*\).*/\1/p' "$root/debian/changelog")
[ "$deb" = "$v" ] || bad "debian/changelog: the top entry is '$deb', Cargo.toml says $v"

# nbdcpy.spec: Version and the newest %changelog entry.
spec=$(sed -n 's/^Version: *//p' "$root/nbdcpy.spec")
[ "$spec" = "$v" ] || bad "nbdcpy.spec: Version is '$spec', Cargo.toml says $v"
specch=$(sed -n '/^%changelog/,$ s/^\* .* - \([0-9.]*\)-[0-9]*$/\1/p' "$root/nbdcpy.spec" | head -n 1)
[ "$specch" = "$v" ] || bad "nbdcpy.spec: the newest %changelog entry is '$specch', Cargo.toml says $v"

# nbdcpy.pc.in: filled in by `make install` from the same version.
grep -q '^Version: @VERSION@$' "$root/nbdcpy.pc.in" ||
  bad "nbdcpy.pc.in: Version is not @VERSION@ ($(grep '^Version' "$root/nbdcpy.pc.in"))"

# The map and the symbols file.
map="$root/src/ffi/nbdcpy.map"
syms="$root/debian/libnbdcpy0.symbols"
want=$(awk '/^NBDCPY_[0-9]+\.[0-9]+ *[{]/ {n = $1; r = substr(n, 8) ".0"; print " " n "@" n " " r}
            /^ *nbdcpy_[a-z0-9_]*;/ {s = $1; sub(";", "", s); print " " s "@" n " " r}' "$map" | sort)
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$want" | sort -u > "$tmp/want"
grep '^ ' "$syms" | sort > "$tmp/got"
dups=$(uniq -d "$tmp/got")
[ -z "$dups" ] || bad "$syms lists twice: $dups"
sort -u "$tmp/got" > "$tmp/got.u"
missing=$(comm -23 "$tmp/want" "$tmp/got.u")
extra=$(comm -13 "$tmp/want" "$tmp/got.u")
[ -z "$missing" ] || bad "$syms lacks (or has another minimum version for):
$missing"
[ -z "$extra" ] || bad "$syms has entries the map does not (or with another version):
$extra"
newest=$(sed -n 's/^NBDCPY_\([0-9]*\)\.\([0-9]*\) *[{].*/\1 \2/p' "$map" | sort -n -k1,1 -k2,2 | tail -n 1)
nmaj=${newest% *}; nmin=${newest#* }
if [ "$nmaj" -gt "$major" ] || { [ "$nmaj" -eq "$major" ] && [ "$nmin" -gt "$minor" ]; }; then
  bad "$map has node NBDCPY_$nmaj.$nmin, newer than the release $v"
fi

# The built library's nbdcpy_version(), through the command's --version.
if [ -n "$cmd" ]; then
  lib=$("$cmd" --version 2>&1 | sed -n 's/^nbdcpy //p' | head -n 1)
  [ "$lib" = "$v" ] || bad "$cmd --version: the library says '$lib', Cargo.toml $v"
fi

[ $status = 0 ] && echo "check-version: $v everywhere ($(printf '%s\n' "$want" | wc -l) symbols entries)"
exit $status
