# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
"""Tests of the Python binding: real copies through nbdkit and qemu-nbd,
each verified by reading the result independently (Python's own file
reads, nbdkit's pattern computed here, the nbdcpy command's blkhash)."""

import contextlib
import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import nbdcpy

HERE = Path(__file__).resolve().parent
NBDCPY_BIN = os.environ.get("NBDCPY_BIN", str(HERE.parents[2] / "build" / "nbdcpy"))
ENGINE = os.environ.get("NBDCPY_TEST_ENGINE") or None
MiB = 1 << 20


def opts(**kw: object) -> dict:
    """The options of every copy: the engine under test (make check runs
    these tests on each)."""
    if ENGINE:
        kw.setdefault("engine", ENGINE)
    return kw


def need(cmd: str) -> None:
    if shutil.which(cmd):
        return
    if os.environ.get("NBDCPY_REQUIRE_SERVERS"):
        pytest.fail(f"{cmd} is required (NBDCPY_REQUIRE_SERVERS)")
    pytest.skip(f"{cmd} not installed")


def wait_for_socket(p: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not p.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not create {p}")
        time.sleep(0.01)


@contextlib.contextmanager
def server(argv: List[str], sock: Path) -> Iterator[str]:
    """A server on unix socket `sock`, stopped (and reaped) at the end."""
    proc = subprocess.Popen(argv)
    try:
        wait_for_socket(sock, proc)
        yield f"nbd+unix:///?socket={sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nbdkit(tmp: Path, *args: str) -> "contextlib.AbstractContextManager[str]":
    need("nbdkit")
    sock = tmp / f"nbdkit-{time.monotonic_ns()}.sock"
    return server(["nbdkit", "-f", "-U", str(sock), *args], sock)


def qemu_nbd(tmp: Path, image: Path) -> "contextlib.AbstractContextManager[str]":
    need("qemu-nbd")
    sock = tmp / f"qemu-{time.monotonic_ns()}.sock"
    return server(["qemu-nbd", "-f", "raw", "-t", "-e", "16", "-k", str(sock), str(image)], sock)


def pattern(offset: int, length: int) -> bytes:
    """What nbdkit's pattern plugin serves: each 8-byte word is its own
    offset, big-endian."""
    start = offset - offset % 8
    words = b"".join(struct.pack(">Q", o) for o in range(start, offset + length + 8, 8))
    return words[offset - start:offset - start + length]


def random_file(p: Path, size: int) -> bytes:
    data = os.urandom(size)
    p.write_bytes(data)
    return data


def test_copy_nbdkit_to_file(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    with nbdkit(tmp_path, "pattern", "8M") as uri:
        st = nbdcpy.copy(uri, str(dst), **opts(connections=4))
    assert dst.read_bytes() == pattern(0, 8 * MiB)
    assert st.size == st.bytes_done == 8 * MiB
    assert st.finished and st.size_known
    assert st.retried_requests == 0 and st.resumed_bytes == 0


def test_copy_file_to_qemu_nbd(tmp_path: Path) -> None:
    src, img = tmp_path / "src", tmp_path / "img"
    data = random_file(src, 8 * MiB)
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    with qemu_nbd(tmp_path, img) as uri:
        with nbdcpy.Copy(src, uri, **opts(connections=4)) as c:
            assert c.stats().size == 8 * MiB  # known once connected
            c.run()
            assert c.engine in ("io_uring", "epoll")
            if ENGINE:
                assert c.engine == ENGINE
    assert img.read_bytes() == data  # read after qemu-nbd has stopped


def test_command_source(tmp_path: Path) -> None:
    need("nbdkit")
    dst = tmp_path / "dst"
    nbdcpy.copy(["nbdkit", "pattern", "3M"], dst, **opts())
    assert dst.read_bytes() == pattern(0, 3 * MiB)


def test_command_connected_on_a_thread_that_exits(tmp_path: Path) -> None:
    """A [ CMD ] server whose handle is made and connected on one thread
    (which then exits) serves the run on another."""
    need("nbdkit")
    need("cmp")
    src, dst = tmp_path / "src", tmp_path / "dst"
    random_file(src, 4 * MiB)
    with open(dst, "wb") as f:
        f.truncate(4 * MiB)
    made: List[nbdcpy.Copy] = []
    errors: List[BaseException] = []

    def connect() -> None:
        try:
            made.append(nbdcpy.Copy(src, ["nbdkit", "file", str(dst)], **opts()))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=connect)
    t.start()
    t.join()
    assert not errors, errors
    time.sleep(0.3)  # the connecting thread is gone for a while
    c = made[0]
    try:
        ran: List[BaseException] = []

        def run() -> None:
            try:
                c.run()
            except BaseException as e:
                ran.append(e)

        r = threading.Thread(target=run)
        r.start()
        r.join()
        assert not ran, ran
        assert c.stats().bytes_done == 4 * MiB
    finally:
        c.close()
    # Checked by cmp, after the server has been stopped by close().
    assert subprocess.run(["cmp", str(src), str(dst)]).returncode == 0


def test_keyboard_interrupt_cancels_a_connect(tmp_path: Path) -> None:
    """Ctrl-C while connecting (a server that never answers) stops the
    connect at once, long before the timeout."""
    assert threading.current_thread() is threading.main_thread()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = tmp_path / "silent.sock"
    lst.bind(str(sock))
    lst.listen(1)  # accepts (by the kernel), never says a word
    uri = f"nbd+unix:///?socket={sock}"
    t = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            nbdcpy.Copy(uri, "null:", **opts(timeout=60))
    finally:
        t.cancel()
        lst.close()
    assert time.monotonic() - start < 10
    assert not [x for x in threading.enumerate() if x.name == "nbdcpy"]


def test_eight_copies_from_eight_threads(tmp_path: Path) -> None:
    errors: List[BaseException] = []
    size = 4 * MiB
    with nbdkit(tmp_path, "pattern", str(size)) as uri:

        def one(i: int) -> None:
            try:
                st = nbdcpy.copy(uri, tmp_path / f"dst{i}", **opts(connections=2))
                assert st.bytes_done == size
            except BaseException as e:
                errors.append(e)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors
    want = pattern(0, size)
    for i in range(8):
        assert (tmp_path / f"dst{i}").read_bytes() == want


def slow_copy(uri: str, seen: threading.Event, **kw: object) -> nbdcpy.Copy:
    """A copy of a 1 GiB source at 8 MiB/s to null:, with a progress
    callback that sets `seen`."""
    return nbdcpy.Copy(
        uri, "null:", progress=lambda d, t: seen.set(), progress_interval=0.02,
        **opts(rate="8M", **kw))


def test_cancel_from_another_thread(tmp_path: Path) -> None:
    seen = threading.Event()
    with nbdkit(tmp_path, "pattern", "1G") as uri, slow_copy(uri, seen) as c:
        t = threading.Thread(target=lambda: (seen.wait(20), c.cancel()))
        t.start()
        start = time.monotonic()
        with pytest.raises(nbdcpy.Error) as ei:
            c.run()
        t.join()
        assert time.monotonic() - start < 10
        assert ei.value.errno == errno.ECANCELED
        assert ei.value.side is None
        st = c.stats()
        assert st.finished and st.bytes_done < st.size


def test_keyboard_interrupt_cancels(tmp_path: Path) -> None:
    assert threading.current_thread() is threading.main_thread()
    seen = threading.Event()

    def interrupt() -> None:
        seen.wait(20)
        os.kill(os.getpid(), signal.SIGINT)

    with nbdkit(tmp_path, "pattern", "1G") as uri, slow_copy(uri, seen) as c:
        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            c.run()
        t.join()
        # Stopped, not left running: the run returned, nothing moves.
        st = c.stats()
        assert st.finished and st.bytes_done < st.size
        time.sleep(0.2)
        assert c.stats().bytes_done == st.bytes_done
        assert not [x for x in threading.enumerate() if x.name == "nbdcpy"]


def test_raising_progress_callback(tmp_path: Path) -> None:
    calls = []

    def boom(done: int, total: int) -> None:
        calls.append(done)
        raise ValueError("stop here")

    with nbdkit(tmp_path, "pattern", "1G") as uri:
        with nbdcpy.Copy(uri, "null:", progress=boom, progress_interval=0.02,
                         **opts(rate="8M")) as c:
            with pytest.raises(ValueError, match="stop here"):
                c.run()
            st = c.stats()
            assert st.finished and st.bytes_done < st.size
    assert len(calls) == 1  # the copy stopped at the first exception


def test_progress_rises_to_the_total(tmp_path: Path) -> None:
    seen: List[Tuple[int, int]] = []
    with nbdkit(tmp_path, "pattern", "32M") as uri:
        st = nbdcpy.copy(uri, "null:", progress=lambda d, t: seen.append((d, t)),
                         progress_interval=0.02, **opts(rate="64M", request_size="1M"))
    assert len(seen) >= 2
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert seen[-1] == (32 * MiB, 32 * MiB) == (st.bytes_done, st.size)


def closing_listener(tmp: Path) -> Tuple[socket.socket, str]:
    """A unix socket whose "server" closes every connection at once."""
    p = tmp / f"closer-{time.monotonic_ns()}.sock"
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(str(p))
    ls.listen(16)

    def serve() -> None:
        while True:
            try:
                s, _ = ls.accept()
            except OSError:
                return
            s.close()

    threading.Thread(target=serve, daemon=True).start()
    return ls, f"nbd+unix:///?socket={p}"


def test_errors_have_errno_and_side(tmp_path: Path) -> None:
    with pytest.raises(nbdcpy.Error) as ei:
        nbdcpy.copy(f"nbd+unix:///?socket={tmp_path}/none.sock", "null:", **opts())
    e = ei.value
    assert isinstance(e, OSError)
    assert e.errno == errno.ENOENT and e.side == "source"
    assert "source" in e.strerror and "none.sock" in e.strerror

    src = tmp_path / "src"
    random_file(src, MiB)
    ls, uri = closing_listener(tmp_path)
    try:
        with pytest.raises(nbdcpy.Error) as ei:
            nbdcpy.copy(src, uri, **opts())
        assert ei.value.errno == errno.ECONNRESET
        assert ei.value.side == "destination"
    finally:
        ls.close()

    with pytest.raises(nbdcpy.Error) as ei:
        nbdcpy.copy(src, "null:", connections="many")
    assert ei.value.errno == errno.EINVAL and ei.value.side is None
    assert "connections" in ei.value.strerror

    # A destination smaller than the source: refused before writing.
    with pytest.raises(nbdcpy.Error) as ei:
        with nbdcpy.Copy(src, ["nbdkit", "memory", "64k"], **opts()) as c:
            c.run()
    assert ei.value.side == "destination"


def test_ranges(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = random_file(src, 4 * MiB)
    dst.write_bytes(b"\xaa" * (4 * MiB))
    areas = [(MiB, 128 * 1024), (0, 65536), nbdcpy.Range(3 * MiB + 512, 4096)]
    st = nbdcpy.copy(src, dst, ranges=areas, **opts())
    assert st.size == 65536 + 128 * 1024 + 4096
    got = dst.read_bytes()
    want = bytearray(b"\xaa" * (4 * MiB))
    for a in areas:
        off, n = (a.offset, a.length) if isinstance(a, nbdcpy.Range) else a
        want[off:off + n] = data[off:off + n]
    assert got == bytes(want)
    with pytest.raises(nbdcpy.Error) as ei:
        nbdcpy.copy(src, dst, ranges=[(0, 0)])
    assert ei.value.errno == errno.EINVAL


def test_blkhash_equals_the_commands(tmp_path: Path) -> None:
    if not os.access(NBDCPY_BIN, os.X_OK):
        pytest.skip(f"no {NBDCPY_BIN}")
    src = tmp_path / "src"
    random_file(src, 3 * MiB + 4096)
    for digest in ("sha256", "md5/1M"):
        with nbdcpy.Copy(src, "null:", **opts(blkhash=digest)) as c:
            c.run()
            got = c.blkhash().hex()
        out = subprocess.run([NBDCPY_BIN, f"--blkhash={digest}", str(src), "null:"],
                             check=True, capture_output=True, text=True).stdout
        assert got == out.split()[0]
    with nbdcpy.Copy(src, "null:", **opts(blkhash=True)) as c:
        with pytest.raises(nbdcpy.Error) as ei:
            c.blkhash()
        assert ei.value.errno == errno.ENODATA
        c.run()
        assert len(c.blkhash()) == 32  # sha256 by default


def test_log_callback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    random_file(src, MiB)
    lines: List[Tuple[int, str]] = []
    with nbdcpy.Copy(src, "null:", log=lambda lv, m: lines.append((lv, m)),
                     **opts(verbose=True)) as c:
        c.run()
    assert any(m.startswith("connections=") for _, m in lines), lines


def test_callbacks_released(tmp_path: Path) -> None:
    """The library's free callback drops the binding's reference to the
    callbacks once the copy is closed."""
    from nbdcpy import _core

    src = tmp_path / "src"
    random_file(src, MiB)
    before = len(_core._callbacks)
    c = nbdcpy.Copy(src, "null:", progress=lambda d, t: None, **opts())
    assert len(_core._callbacks) == before + 2
    c.run()
    c.close()
    assert len(_core._callbacks) == before
