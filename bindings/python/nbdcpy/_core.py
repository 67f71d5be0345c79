# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""The Python binding over libnbdcpy.so.0's C ABI (ctypes): no copy logic here."""

from __future__ import annotations

import ctypes
import errno as _errno
import itertools
import os
import threading

# typing, dataclasses and logging are left out at run time: a copier
# started per copy pays for every import (bench/py-copier.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

    Endpoint = Union[str, "os.PathLike[str]", Sequence[str], None]

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

SOURCE = 0
DESTINATION = 1
_SIDES = {0: "source", 1: "destination"}

_lib = ctypes.CDLL("libnbdcpy.so.0", use_errno=False)


class _Stats(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("bytes_done", ctypes.c_uint64),
        ("bytes_copied", ctypes.c_uint64),
        ("bytes_zeroed", ctypes.c_uint64),
        ("bytes_skipped", ctypes.c_uint64),
        ("requests", ctypes.c_uint64),
        ("elapsed_ns", ctypes.c_uint64),
        ("bytes_memcpy", ctypes.c_uint64),
        ("syscalls", ctypes.c_uint64),
        ("connections", ctypes.c_uint32),
        ("finished", ctypes.c_uint32),
        ("bytes_spliced", ctypes.c_uint64),
        ("size_known", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("reconnects", ctypes.c_uint64),
        ("retried_requests", ctypes.c_uint64),
        ("resumed_bytes", ctypes.c_uint64),
    ]


class _Range(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint64), ("length", ctypes.c_uint64)]


_PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Stats))
_LOG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_c = ctypes.c_void_p
_i = ctypes.c_int
_s = ctypes.c_char_p


def _proto(name: str, res: Any, *args: Any) -> Any:
    f = getattr(_lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


_version = _proto("nbdcpy_version", _s)
_supports = _proto("nbdcpy_supports", _i, _s)
_get_error = _proto("nbdcpy_get_error", _s)
_get_errno = _proto("nbdcpy_get_errno", _i)
_get_error_endpoint = _proto("nbdcpy_get_error_endpoint", _i)
_config_new = _proto("nbdcpy_config_new", _c)
_config_set = _proto("nbdcpy_config_set", _i, _c, _s, _s)
_config_set_ranges = _proto(
    "nbdcpy_config_set_ranges", _i, _c, ctypes.POINTER(_Range), ctypes.c_size_t
)
_config_set_progress = _proto(
    "nbdcpy_config_set_progress", _i, _c, _PROGRESS, _c, ctypes.c_uint32
)
_config_set_progress_free = _proto(
    "nbdcpy_config_set_progress_free", _i, _c, _PROGRESS, _c, _FREE
)
_config_set_log_free = _proto("nbdcpy_config_set_log_free", _i, _c, _LOG, _c, _FREE)
_config_set_command = _proto(
    "nbdcpy_config_set_command", _i, _c, _i, ctypes.POINTER(ctypes.c_char_p)
)
_config_free = _proto("nbdcpy_config_free", None, _c)
_create = _proto("nbdcpy_create", _c, _s, _s, _c)
_connect = _proto("nbdcpy_connect", _i, _c)
_run = _proto("nbdcpy_run", _i, _c)
_stats = _proto("nbdcpy_stats", _i, _c, ctypes.POINTER(_Stats), ctypes.c_size_t)
_get_engine = _proto("nbdcpy_get_engine", _s, _c)
_get_blkhash = _proto("nbdcpy_get_blkhash", _i, _c, ctypes.c_char_p, ctypes.c_size_t)
_cancel = _proto("nbdcpy_cancel", _i, _c)
_close = _proto("nbdcpy_close", None, _c)


def library_version() -> str:
    """The loaded library's version, e.g. "0.3.0"."""
    return _version().decode()


def supports(feature: str) -> bool:
    """Whether the library has `feature` (nbdcpy_supports)."""
    return bool(_supports(feature.encode()))


class Error(OSError):
    """A failed nbdcpy call: `errno`, `strerror` (the library's message,
    naming the endpoint, offset and cause) and `side` ("source",
    "destination" or None when the error is about neither)."""

    side: Optional[str]

    def __init__(self, errno: int, strerror: str, side: Optional[str] = None) -> None:
        super().__init__(errno, strerror)
        self.side = side

    def __reduce__(self) -> Any:
        return (type(self), (self.errno, self.strerror, self.side))


def _last_error() -> Error:
    """The error of the last failed call on this thread."""
    msg = _get_error()
    return Error(
        _get_errno() or _errno.EIO,
        msg.decode(errors="replace") if msg else "unknown error",
        _SIDES.get(_get_error_endpoint()),
    )


_STATS_FIELDS = (
    "size", "bytes_done", "bytes_copied", "bytes_zeroed", "bytes_skipped",
    "requests", "elapsed_ns", "bytes_memcpy", "syscalls", "connections",
    "finished", "bytes_spliced", "size_known", "reconnects",
    "retried_requests", "resumed_bytes",
)


class Stats:
    """Counters of a copy (struct nbdcpy_stats; nbdcpy(3)); read-only."""

    __slots__ = _STATS_FIELDS
    size: int
    bytes_done: int
    bytes_copied: int
    bytes_zeroed: int
    bytes_skipped: int
    requests: int
    elapsed_ns: int
    bytes_memcpy: int
    syscalls: int
    connections: int
    finished: bool
    bytes_spliced: int
    size_known: bool
    reconnects: int
    retried_requests: int
    resumed_bytes: int

    def __init__(self, **fields: "Any") -> None:
        for k in _STATS_FIELDS:
            object.__setattr__(self, k, fields[k])

    def __setattr__(self, name: str, value: "Any") -> None:
        raise AttributeError("Stats are read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stats) and all(
            getattr(self, k) == getattr(other, k) for k in _STATS_FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in _STATS_FIELDS))

    def __repr__(self) -> str:
        return "Stats(%s)" % ", ".join(f"{k}={getattr(self, k)!r}" for k in _STATS_FIELDS)

    @classmethod
    def _of(cls, s: _Stats) -> "Stats":
        f = {k: getattr(s, k) for k in _STATS_FIELDS}
        f["finished"] = bool(f["finished"])
        f["size_known"] = bool(f["size_known"])
        return cls(**f)


class Range:
    """One area of a range list: `length` bytes at `offset`."""

    __slots__ = ("offset", "length")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length

    def __iter__(self) -> "Iterator[int]":
        return iter((self.offset, self.length))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and (self.offset, self.length) == (other.offset, other.length)

    def __hash__(self) -> int:
        return hash((self.offset, self.length))

    def __repr__(self) -> str:
        return f"Range(offset={self.offset}, length={self.length})"


# Callbacks: C keeps only an integer key into this table, never a Python
# object; the free callback removes the entry when the library says it
# will not call the callback again.
_callbacks: Dict[int, Any] = {}
_keys = itertools.count(1)
_cb_lock = threading.Lock()


def _register(obj: Any) -> int:
    with _cb_lock:
        k = next(_keys)
        _callbacks[k] = obj
        return k


@_FREE
def _free_trampoline(key: Optional[int]) -> None:
    with _cb_lock:
        _callbacks.pop(key or 0, None)


class _ProgressState:
    __slots__ = ("fn", "exc")

    def __init__(self, fn: Callable[[int, int], Any]) -> None:
        self.fn = fn
        self.exc: Optional[BaseException] = None


@_PROGRESS
def _progress_trampoline(key: Optional[int], st: Any) -> int:
    state = _callbacks.get(key or 0)
    if state is None:
        return 0
    if state.exc is not None:
        return 1  # cancelling already: not called again
    try:
        s = st.contents
        state.fn(s.bytes_done, s.size)
        return 0
    except BaseException as e:  # re-raised from run(); cancels the copy
        state.exc = e
        return 1


@_LOG
def _log_trampoline(key: Optional[int], level: int, msg: Optional[bytes]) -> None:
    fn = _callbacks.get(key or 0)
    if fn is not None:
        try:
            fn(level, (msg or b"").decode(errors="replace"))
        except Exception:
            import logging

            logging.getLogger("nbdcpy").exception("log callback raised")


def _default_log(level: int, msg: str) -> None:
    """Messages to the "nbdcpy" logger of the logging module (imported
    with the first message: without "verbose" only warnings come)."""
    import logging

    lv = {1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}.get(level, logging.INFO)
    logging.getLogger("nbdcpy").log(lv, "%s", msg)


def _value(v: Any) -> Optional[bytes]:
    if v is None or v is True:
        return None  # flags: NULL is "on"; blkhash: the default digest
    if v is False:
        return b"0"
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    return str(v).encode()


class Copy:
    """One copy from `src` to `dst`: connected when made, copied by
    run(), closed by close() or the end of a with block.

    Endpoints are what nbdcpy(1) takes (an NBD URI, a path, "null:"), or
    a list of strings: an NBD server run as a command ([ CMD ]).
    `options` are nbdcpy's config keys with "_" for "-"
    (connections=4, blkhash="sha256", destination_is_zero=True);
    `ranges` a list of Range or (offset, length); `progress(done,
    total)` is called every `progress_interval` seconds on the thread
    running run() and once at the end; `log(level, message)` receives
    the library's messages (default: the "nbdcpy" logging logger).
    """

    def __init__(
        self,
        src: Endpoint,
        dst: Endpoint,
        *,
        progress: Optional[Callable[[int, int], Any]] = None,
        progress_interval: float = 1.0,
        log: Optional[Callable[[int, str], Any]] = None,
        ranges: Optional[Iterable[Union[Range, Tuple[int, int]]]] = None,
        **options: Any,
    ) -> None:
        self._h: Optional[int] = None
        self._progress: Optional[_ProgressState] = None
        self._lock = threading.Lock()
        cfg = _config_new()
        if not cfg:
            raise _last_error()
        try:
            for k, v in options.items():
                if _config_set(cfg, k.replace("_", "-").encode(), _value(v)) != 0:
                    raise _last_error()
            if ranges is not None:
                rs = [r if isinstance(r, Range) else Range(*r) for r in ranges]
                arr = (_Range * max(len(rs), 1))(*[(r.offset, r.length) for r in rs])
                if _config_set_ranges(cfg, arr, len(rs)) != 0:
                    raise _last_error()
            if progress is not None:
                ms = max(1, int(progress_interval * 1000))
                if _config_set_progress(cfg, _PROGRESS(), None, ms) != 0:
                    raise _last_error()
                self._progress = _ProgressState(progress)
                key = _register(self._progress)
                if _config_set_progress_free(cfg, _progress_trampoline, key, _free_trampoline):
                    raise _last_error()
            key = _register(log if log is not None else _default_log)
            if _config_set_log_free(cfg, _log_trampoline, key, _free_trampoline) != 0:
                raise _last_error()
            ends: List[Optional[bytes]] = []
            for side, e in ((SOURCE, src), (DESTINATION, dst)):
                if e is None or isinstance(e, (str, bytes, os.PathLike)):
                    ends.append(None if e is None else os.fsencode(e))
                    continue
                argv = [os.fsencode(a) for a in e]
                arr = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
                if _config_set_command(cfg, side, arr) != 0:
                    raise _last_error()
                ends.append(None)
            h = _create(ends[0], ends[1], cfg)
            if not h:
                raise _last_error()
            self._h = h
        finally:
            _config_free(cfg)
        try:
            # Connected like run(): on the main thread on a worker thread,
            # so Ctrl-C cancels the connect (nbdcpy_cancel) at once.  A
            # [ CMD ] server lives as long as the handle, not the thread.
            self._call(_connect)
        except BaseException:
            self.close()
            raise

    def _handle(self) -> int:
        h = self._h
        if h is None:
            raise Error(_errno.EINVAL, "the copy is closed")
        return h

    def _call(self, fn: Any) -> None:
        """Runs fn(handle) (nbdcpy_connect, nbdcpy_run) with the GIL
        released.  On the main thread it runs on a worker thread, so that
        Ctrl-C (KeyboardInterrupt) cancels it: the connect or copy is
        stopped and waited for before the exception goes on."""
        h = self._handle()
        if threading.current_thread() is not threading.main_thread():
            if fn(h) != 0:
                raise _last_error()
            return
        result: List[Optional[Error]] = []
        done = threading.Event()

        def work() -> None:
            try:
                result.append(_last_error() if fn(h) != 0 else None)
            finally:
                done.set()

        t = threading.Thread(target=work, name="nbdcpy", daemon=True)
        try:
            t.start()
            done.wait()
        except BaseException:
            _cancel(h)
            # Wait for the copy to stop (through further Ctrl-Cs too),
            # unless the thread never started.
            while t.ident is not None and not done.is_set():
                try:
                    done.wait()
                except BaseException:
                    pass
            raise
        if result and result[0] is not None:
            raise result[0]

    def run(self) -> "Copy":
        """Copies everything; blocks until done.  Raises Error (errno
        ECANCELED after cancel()), the progress callback's exception if it
        raised one, or KeyboardInterrupt after stopping the copy."""
        try:
            self._call(_run)
        except Error:
            p = self._progress
            if p is not None and p.exc is not None:
                raise p.exc from None
            raise
        p = self._progress
        if p is not None and p.exc is not None:
            raise p.exc
        return self

    def cancel(self) -> None:
        """Stops a running (or later) run(), which raises Error ECANCELED;
        callable from any thread (and from a signal handler)."""
        h = self._h
        if h is not None:
            _cancel(h)

    def stats(self) -> Stats:
        """The counters, from any thread, also while run() runs."""
        s = _Stats()
        if _stats(self._handle(), ctypes.byref(s), ctypes.sizeof(s)) != 0:
            raise _last_error()
        return Stats._of(s)

    @property
    def engine(self) -> Optional[str]:
        """The engine the copy ran on: "io_uring", "epoll", or None
        before run() has chosen."""
        h = self._h
        e = _get_engine(h) if h is not None else None
        return e.decode() if e else None

    def blkhash(self) -> bytes:
        """The block hash (options blkhash or verify) of a successful
        run(), as bytes (.hex() is what nbdcpy --blkhash prints)."""
        buf = ctypes.create_string_buffer(64)
        n = _get_blkhash(self._handle(), buf, 64)
        if n < 0:
            raise _last_error()
        return buf.raw[:n]

    def close(self) -> None:
        """Disconnects and frees the copy (a run() still going on another
        thread is cancelled).  Closing twice is harmless."""
        with self._lock:
            h, self._h = self._h, None
        if h is not None:
            _close(h)

    def __enter__(self) -> "Copy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def copy(
    src: Endpoint,
    dst: Endpoint,
    *,
    progress: Optional[Callable[[int, int], Any]] = None,
    **options: Any,
) -> Stats:
    """Copies `src` to `dst` (see Copy for the arguments); returns the
    final counters."""
    with Copy(src, dst, progress=progress, **options) as c:
        c.run()
        return c.stats()
