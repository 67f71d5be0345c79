#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""check-imports.py SRC: no circle between the crate's top-level modules.

Reads every .rs file under SRC (tests and #[cfg(test)] modules left out:
a test may reach anywhere), takes each `crate::NAME` it names (in a use or
a path) as an arrow from the file's top-level module to NAME, and fails
when the arrows make a circle, printing it with one file per arrow."""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
arrows = {}  # (from, to) -> a file that makes it
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        rel = os.path.relpath(path, src)
        top = rel.split(os.sep)[0]
        top = top[:-3] if top.endswith(".rs") else top
        if top == "lib" or f in ("tests.rs",) or f.endswith("_test.rs"):
            continue
        text = open(path, encoding="utf-8").read()
        # Cut the unit tests: from `#[cfg(test)]` before a `mod` to the end.
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text)
        if m:
            text = text[: m.start()]
        text = re.sub(r"//[^\n]*", "", text)
        for name in re.findall(r"\bcrate::(\w+)", text):
            if name != top:
                arrows.setdefault((top, name), rel)
graph = {}
for (a, b) in arrows:
    graph.setdefault(a, set()).add(b)

# A circle, if any, by depth-first search.
state = {}
stack = []


def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
        if state.get(m) == 1:
            return stack[stack.index(m):] + [m]
        if m not in state:
            c = visit(m)
            if c:
                return c
    stack.pop()
    state[n] = 2
    return None


for n in sorted(graph):
    if n not in state:
        c = visit(n)
        if c:
            print("check-imports: the crate's modules import each other in a circle:")
            for a, b in zip(c, c[1:]):
                print(f"  {a} -> {b}  ({arrows[(a, b)]})")
            sys.exit(1)
print(f"check-imports: no circle between the top-level modules of {src} ({len(arrows)} arrows)")
