#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
#
# The incremental copy users write today with libnbd's Python bindings:
# read the dirty bitmap's block status, then copy each dirty extent.
# The baseline for bench/dirty-bitmap.sh.
#
#   dirty-copy.py [--flush] BITMAP SRC-URI DST   (DST: a file, or an NBD URI)
#
# --flush: flush (NBD) or fsync (file) the destination at the end.
# Prints "requests N" (NBD requests to the source and destination).

import os
import sys

import nbd

MAX_REQUEST = 32 << 20   # the most one NBD READ may ask for
STATUS_CHUNK = 2 << 30   # one BLOCK_STATUS covers at most this

args = sys.argv[1:]
flush = args[:1] == ["--flush"]
if flush:
    args = args[1:]
bitmap, src_uri, dst = args[:3]
context = "qemu:dirty-bitmap:" + bitmap

src = nbd.NBD()
src.add_meta_context(context)
src.connect_uri(src_uri)
if not src.can_meta_context(context):
    sys.exit("the server does not export " + context)
size = src.get_size()
requests = 0

if dst.startswith("nbd"):
    out = nbd.NBD()
    out.connect_uri(dst)

    def write(buf, offset):
        out.pwrite(buf, offset)
else:
    out = None
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)

    def write(buf, offset):
        os.pwrite(fd, buf, offset)

# 1. The dirty extents, from the bitmap's block status.
dirty = []
offset = 0
while offset < size:
    got = []

    def extents(metacontext, off, entries, err):
        if metacontext != context:
            return 0
        at = off
        for i in range(0, len(entries), 2):
            length, flags = entries[i], entries[i + 1]
            if flags & 1:
                got.append((at, length))
            at += length
        got.append((at, None))  # how far this answer reaches
        return 0

    src.block_status(min(STATUS_CHUNK, size - offset), offset, extents)
    requests += 1
    reached = got.pop()[0]
    for at, length in got:
        end = min(at + length, size)
        if dirty and dirty[-1][0] + dirty[-1][1] == at:
            dirty[-1] = (dirty[-1][0], end - dirty[-1][0])
        else:
            dirty.append((at, end - at))
    offset = min(reached, size)

# 2. Copy them.
for at, length in dirty:
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
