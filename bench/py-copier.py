#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""A copier for ../shared/bench/run.sh through the Python binding, to
compare its CPU with the command's:

    COPIER="python3 bench/py-copier.py" ../shared/bench/run.sh W2 W6

Arguments: [--KEY=VALUE | --FLAG]... SOURCE DESTINATION, KEY a config
key (nbdcpy(3)).  Uses bindings/python and build/libnbdcpy.so.0 of this
tree (NBDCPY_LIB names another library)."""

import ctypes
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
lib = os.environ.get("NBDCPY_LIB", os.path.join(ROOT, "build", "libnbdcpy.so.0"))
if os.path.exists(lib):
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)  # found by its soname below
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
import nbdcpy  # noqa: E402

opts = {}
args = sys.argv[1:]
while len(args) > 2:
    k, _, v = args.pop(0).lstrip("-").partition("=")
    opts[k.replace("-", "_")] = v or True
if len(args) != 2:
    sys.exit("usage: py-copier.py [--KEY=VALUE]... SOURCE DESTINATION")
try:
    nbdcpy.copy(args[0], args[1], **opts)
except nbdcpy.Error as e:
    sys.exit(f"py-copier: {e.strerror}")
