#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# check-layout.sh DOC SRC: the layout table of DOC (rows "| `path` | what |")
# names every directory and .rs file under SRC.  A file is named by its
# path in a row's first cell (`src/a/b.rs`, or `b.rs` after a first path
# in the same directory), or by `b` in backquotes in the row of its
# directory (`src/a/`); mod.rs by its directory's row.
set -eu
doc=$1 src=$2
[ -f "$doc" ] || { echo "check-layout: $doc missing"; exit 1; }
find "$src" -mindepth 1 \( -type d -o -name '*.rs' \) | sort | awk -v doc="$doc" '
function dirname(p) { sub(/\/[^\/]*$/, "", p); return p }
BEGIN {
  while ((getline line < doc) > 0) {
    if (line !~ /^\| `/) continue
    n = split(line, cell, "|")
    first = cell[2]; rest = ""
    for (i = 3; i <= n; i++) rest = rest "|" cell[i]
    dir = ""
    while (match(first, /`[^`]+`/)) {
      t = substr(first, RSTART + 1, RLENGTH - 2); first = substr(first, RSTART + RLENGTH)
      if (dir == "") {
        if (t ~ /\/$/) { dir = substr(t, 1, length(t) - 1); named[dir] = 1; isdir = 1 }
        else { dir = dirname(t); named[t] = 1; isdir = 0 }
      } else if (t ~ /\//) named[t] = 1
      else named[dir "/" t] = 1
    }
    if (isdir)
      while (match(rest, /`[a-z0-9_]+(\.rs)?`/)) {
        t = substr(rest, RSTART + 1, RLENGTH - 2); rest = substr(rest, RSTART + RLENGTH)
        sub(/\.rs$/, "", t); named[dir "/" t ".rs"] = 1
      }
  }
}
{
  p = $0
  if (p ~ /\/mod\.rs$/) p = dirname(p)
  if (!(p in named) && !((p "/mod.rs") in named)) { print "  " $0; bad = 1 }
}
END { if (bad) { print "check-layout: not named in the layout table of " doc " (above)"; exit 1 } }
'
echo "check-layout: every module of $src is in $doc"
