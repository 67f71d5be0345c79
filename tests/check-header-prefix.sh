#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# Every name a public header declares carries the library's prefix:
# macros NBDCPY_*, and functions, types (struct, enum, union tags and
# typedefs), enum constants and variables nbdcpy_* or NBDCPY_* (or the
# handle type, struct nbdcpy, itself).  Struct
# fields and parameter names are the caller's scope and are not checked.
# Usage: check-header-prefix.sh [HEADER...] (default include/nbdcpy.h).
# Prints every offending name; exits 1 if there is one.
set -e
[ $# -gt 0 ] || set -- include/nbdcpy.h
status=0
for h in "$@"; do
  [ -r "$h" ] || { echo "$h: cannot read" >&2; exit 2; }
  # Comments out (// to the line's end, /* ... */ across lines), then the
  # preprocessor lines; the rest is one stream of declarations.
  bad=$(awk '
    BEGIN { inc = 0 }
    {
      line = $0; out = ""
      while (length (line) > 0) {
        if (inc) {
          i = index (line, "*/")
          if (i == 0) { line = ""; break }
          line = substr (line, i + 2); inc = 0; continue
        }
        a = index (line, "/*"); b = index (line, "//")
        if (a == 0 && b == 0) { out = out line; break }
        if (b != 0 && (a == 0 || b < a)) { out = out substr (line, 1, b - 1); break }
        out = out substr (line, 1, a - 1); line = substr (line, a + 2); inc = 1
      }
      if (out ~ /^[ \t]*#/) {
        if (out ~ /^[ \t]*#[ \t]*define[ \t]/) {
          name = out; sub (/^[ \t]*#[ \t]*define[ \t]+/, "", name)
          sub (/[^A-Za-z0-9_].*$/, "", name)
          if (name !~ /^NBDCPY_/) print "macro " name
        }
        next
      }
      text = text " " out
    }
    END {
      # C++ linkage wrappers are not declarations.
      gsub (/extern[ \t]*"C"[ \t]*\{/, " ", text)
      # Split into tokens: identifiers and single punctuation characters.
      n = 0
      while (length (text) > 0) {
        if (match (text, /^[ \t]+/)) { text = substr (text, RLENGTH + 1); continue }
        if (match (text, /^[A-Za-z_][A-Za-z0-9_]*/)) tok[++n] = substr (text, 1, RLENGTH)
        else if (match (text, /^"([^"\\]|\\.)*"/)) tok[++n] = "\"str\""
        else { RLENGTH = 1; tok[++n] = substr (text, 1, 1) }
        text = substr (text, RLENGTH + 1)
      }
      depth = 0; paren = 0; start = 1; inenum = 0
      for (i = 1; i <= n; i++) {
        t = tok[i]
        if (t == "struct" || t == "enum" || t == "union") {
          if (tok[i + 1] ~ /^[A-Za-z_]/) check("tag", tok[i + 1])
          if (t == "enum" && depth == 0) enumnext = 1
          continue
        }
        if (t == "{") {
          depth++
          if (enumnext && depth == 1) inenum = 1
          continue
        }
        if (t == "}") { depth--; if (depth <= 0) { depth = 0; inenum = 0; enumnext = 0 }; continue }
        if (inenum && depth == 1 && t ~ /^[A-Za-z_]/ && (tok[i - 1] == "{" || tok[i - 1] == ",")) {
          check("enum constant", t); continue
        }
        if (depth > 0) continue
        if (t == "(") {
          paren++
          # The name before the first top-level "(": a function, unless it
          # is "(*name)" of a function pointer (typedef or variable).
          if (paren == 1 && !named) {
            if (tok[i + 1] == "*" && tok[i + 2] ~ /^[A-Za-z_]/) check("name", tok[i + 2])
            else if (tok[i - 1] ~ /^[A-Za-z_]/ && tok[i - 1] != "__attribute__") check("function", tok[i - 1])
            named = 1
          }
          continue
        }
        if (t == ")") { paren--; continue }
        if (t == ";" && paren == 0) {
          # A declaration without parentheses: its last identifier is the
          # name (a typedef or a variable), unless it only named a tag.
          if (!named && tok[i - 1] ~ /^[A-Za-z_]/ && tok[i - 2] != "struct" \
              && tok[i - 2] != "enum" && tok[i - 2] != "union" && tok[i - 1] != "}")
            check("name", tok[i - 1])
          named = 0; enumnext = 0
          continue
        }
      }
    }
    function check(what, name) {
      if (name !~ /^(nbdcpy_|NBDCPY_)/ && name != "nbdcpy") print what " " name
    }
  ' "$h")
  if [ -n "$bad" ]; then
    printf '%s\n' "$bad" | sed "s|^|$h: unprefixed |"
    status=1
  fi
done
[ $status -eq 0 ] && echo "check-header-prefix: every name in $* is prefixed"
exit $status
