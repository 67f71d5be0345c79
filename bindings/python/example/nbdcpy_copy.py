#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""Copies SOURCE to DESTINATION (NBD URIs or files) with nbdcpy, showing
progress, and prints the source's block hash: example/nbdcpy_copy.py SRC DST"""

import sys

import nbdcpy


def show(done: int, total: int) -> None:
    print(f"\r{done * 100 // max(total, 1):3d}%", end="", file=sys.stderr)


try:
    with nbdcpy.Copy(sys.argv[1], sys.argv[2], progress=show,
                     connections=4, blkhash="sha256") as c:
        c.run()
        print(f"\ncopied {c.stats().bytes_done} bytes on {c.engine}",
              file=sys.stderr)
        print(c.blkhash().hex())
except nbdcpy.Error as e:
    sys.exit(f"copy failed ({e.side or 'copy'}): {e.strerror}")
except KeyboardInterrupt:
    sys.exit("interrupted: the copy was cancelled")
