#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# The changed-areas copy migration tools write today with libnbd's Python
# bindings: for each (offset, length) area of the list, one synchronous
# pread from the source and one pwrite to the destination.  The baseline
# for bench/range-list.sh.
#
#   ranges-copy.py [--flush] LIST SRC-URI DST   (DST: a file, or an NBD URI)
#
# LIST: one "OFFSET LENGTH" a line (bytes; "#" comments and blank lines
# ignored).  --flush: flush (NBD) or fsync (file) the destination at the
# end.  Prints "requests N" (NBD requests to the source and destination).

import os
import sys

import nbd

MAX_REQUEST = 32 << 20   # the most one NBD READ may ask for

args = sys.argv[1:]
flush = args[:1] == ["--flush"]
if flush:
    args = args[1:]
listfile, src_uri, dst = args[:3]

areas = []
with open(listfile) as f:
    for line in f:
        line = line.split("#", 1)[0].strip()
        if line:
            off, length = line.split()
            areas.append((int(off), int(length)))

src = nbd.NBD()
src.connect_uri(src_uri)
requests = 0

if dst.startswith("nbd"):
    out = nbd.NBD()
    out.connect_uri(dst)

    def write(buf, offset):
        out.pwrite(buf, offset)
else:
    out = None
    fd = os.open(dst, os.O_WRONLY)

    def write(buf, offset):
        os.pwrite(fd, buf, offset)

for at, length in areas:
    end = at + length
    while at < end:
        n = min(MAX_REQUEST, end - at)
        write(src.pread(n, at), at)
        requests += 2
        at += n

if out is not None:
    if flush:
        out.flush()
        requests += 1
    out.shutdown()
else:
    if flush:
        os.fsync(fd)
    os.close(fd)
src.shutdown()
print("requests", requests)
