# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""nbdcpy: fast NBD disk image copies from Python (over libnbdcpy.so.0).

    import nbdcpy
    stats = nbdcpy.copy("nbd+unix:///?socket=/tmp/src.sock", "disk.img",
                        connections=4, blkhash="sha256")
"""

from ._core import (
    DESTINATION,
    SOURCE,
    Copy,
    Error,
    Range,
    Stats,
    copy,
    library_version,
    supports,
)

__all__ = [
    "Copy",
    "Error",
    "Range",
    "Stats",
    "copy",
    "library_version",
    "supports",
    "SOURCE",
    "DESTINATION",
]
__version__ = "0.3.0"
