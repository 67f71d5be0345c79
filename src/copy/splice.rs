// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The splice data path's kernel plumbing: pipes, non-blocking moves.
//
// The splice data path's kernel plumbing: pipes sized for requests, and
// splice / tee loops on non-blocking descriptors that stop where a
// socket would block (the connection then waits through its engine).
//
// READ payloads move socket -> pipe -> destination (socket, file or
// /dev/null) by reference, never entering user space; zero detection
// reads a tee'd duplicate.  These are direct system calls, not io_uring
// operations: io_uring runs SPLICE and TEE on io-wq threads, which costs
// more than the copy it saves (measured in BENCHMARKS.md).

use super::stats::Shared;
use crate::error::{Error, Result};
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pipe with both ends non-blocking.
pub struct Pipe {
    pub r: OwnedFd,
    pub w: OwnedFd,
    /// Capacity in bytes.
    pub cap: usize,
}

impl Pipe {
    /// A pipe of at least `min` bytes (trying up to `want`), or None when
    /// the system does not allow one that big (pipe-max-size, per-user
    /// pipe limits).
    pub fn new(min: usize, want: usize) -> Option<Pipe> {
        let (r, w) = sys::pipe().ok()?;
        let mut size = want.max(min).next_power_of_two();
        while size >= min {
            let got = sys::fcntl_int(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int)
                .unwrap_or(-1);
            if got >= min as libc::c_int {
                return Some(Pipe {
                    r,
                    w,
                    cap: got as usize,
                });
            }
            size /= 2;
        }
        None
    }
}

/// The job's counters, cancel and failure flags and stall timeouts, for
/// the splice path's direct calls and their bounded waits (a worker's
/// only lane waiting for its destination socket; a file or /dev/null
/// that took part of a move, which they do not).
#[derive(Clone)]
pub struct WaitLimits {
    pub shared: Arc<Shared>,
    /// The stall limit (None: wait forever).
    pub timeout: Option<Duration>,
    /// The stall limit while the peer may be busy with a FLUSH or
    /// WRITE_ZEROES (None: wait forever).
    pub slow_timeout: Option<Duration>,
}

/// Poll slice: how quickly a blocked step notices cancellation.
const SLICE_MS: i32 = 20;

impl WaitLimits {
    /// This WaitLimits, with the slow limit as its stall limit when `slow`.
    pub fn slow_if(&self, slow: bool) -> WaitLimits {
        let mut w = self.clone();
        if slow {
            w.timeout = self.slow_timeout;
        }
        w
    }

    /// Waits until `fd` is ready for `events`.  Fails with ECANCELED when
    /// the job is cancelled or another worker failed, ETIMEDOUT after the
    /// stall timeout; `who` names the endpoint for that message.
    pub fn wait(&self, fd: RawFd, events: i16, who: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.shared.stopping() {
                return Err(Error::cancelled());
            }
            let r = sys::poll_one(fd, events, SLICE_MS);
            self.syscalls(1);
            match r {
                Ok(0) => {}
                Ok(_) => return Ok(()), // ready, or an error the next call reports
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(Error::os(format!("{who}: poll"), e)),
            }
            if let Some(t) = self.timeout {
                if start.elapsed() > t {
                    return Err(Error::new(
                        libc::ETIMEDOUT,
                        format!(
                            "no I/O completed for {} seconds: {who} is not responding",
                            t.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    /// Counts `n` direct system calls in the job's stats.
    pub fn syscalls(&self, n: u64) {
        Shared::add(&self.shared.syscalls_direct, n);
    }
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// One non-blocking `splice(2)` of up to `len` bytes, `off_*` the file
/// offsets (None: a pipe or socket).  Ok(bytes moved, 0 at end of input),
/// Err(errno).
fn splice1(
    from: RawFd,
    off_in: Option<u64>,
    to: RawFd,
    off_out: Option<u64>,
    len: usize,
    ctl: &WaitLimits,
) -> std::result::Result<usize, i32> {
    let r = sys::splice(
        from,
        off_in,
        to,
        off_out,
        len,
        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
    );
    ctl.syscalls(1);
    r.map_err(errno_of)
}

/// Where a move from a socket into a pipe stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InStep {
    /// Everything asked for is in the pipe.
    Done,
    /// The pipe is full (the socket was ready, yet nothing more went).
    PipeFull,
    /// The socket has nothing more for now: wait until it is readable.
    Wait,
}

/// Moves up to `max` bytes from socket `sock` into `pipe_w` without
/// waiting: (bytes moved, where it stopped).  `ready`: the socket was
/// just reported readable, so a first EAGAIN means the pipe is full
/// (nothing else reads this socket), or that the report was stale,
/// which the caller tells apart by what it knows is in the pipe.  End
/// of stream is an error.
pub fn splice_in(
    sock: RawFd,
    pipe_w: RawFd,
    max: usize,
    mut ready: bool,
    ctl: &WaitLimits,
    who: &str,
) -> Result<(usize, InStep)> {
    let mut got = 0;
    while got < max {
        let r = splice1(sock, None, pipe_w, None, max - got, ctl);
        if let Some(n) = r.ok().filter(|&n| n > 0) {
            got += n;
            ready = false;
            continue;
        }
        match r.err().unwrap_or(libc::ECONNRESET) {
            libc::ECONNRESET => {
                return Err(Error::new(
                    libc::ECONNRESET,
                    format!("{who}: server closed the connection in the middle of a READ reply"),
                ))
            }
            libc::EINTR => {}
            libc::EAGAIN if ready => return Ok((got, InStep::PipeFull)),
            libc::EAGAIN => return Ok((got, InStep::Wait)),
            e => {
                return Err(Error::from_res(
                    format!("{who}: splice from the socket"),
                    -e,
                ))
            }
        }
    }
    Ok((got, InStep::Done))
}

/// Moves up to `max` bytes of file `fd` at `off` into `pipe_w`: all of
/// them, or what fits when the pipe fills up (at least one byte).
pub fn splice_file_in(
    fd: RawFd,
    off: u64,
    pipe_w: RawFd,
    max: usize,
    ctl: &WaitLimits,
) -> Result<usize> {
    let mut got = 0;
    while got < max {
        let r = splice1(fd, Some(off + got as u64), pipe_w, None, max - got, ctl);
        if let Some(n) = r.ok().filter(|&n| n > 0) {
            got += n;
            continue;
        }
        let at = off + got as u64;
        if r == Ok(0) {
            return Err(Error::new(
                libc::EIO,
                format!("unexpected end of file at offset {at} (did it shrink?)"),
            ));
        }
        match r.err().unwrap_or(libc::EIO) {
            libc::EINTR => {}
            libc::EAGAIN if got > 0 => return Ok(got), // the pipe is full
            e => return Err(Error::from_res(format!("read at offset {at}"), -e)),
        }
    }
    Ok(got)
}

/// Whether every page of [off, off+len) of `fd` is in the page cache
/// (cachestat, Linux 6.5+; false when the kernel cannot tell).
pub fn cached(fd: RawFd, off: u64, len: u64) -> bool {
    let page = 4096u64;
    let start = off / page * page;
    let end = (off + len).div_ceil(page) * page;
    sys::cached_pages(fd, start, end - start).is_some_and(|n| n >= (end - start) / page)
}

/// Moves exactly `n` bytes from `pipe_r` to a file or /dev/null `fd` (at
/// `off` for files).
pub fn splice_out(
    pipe_r: RawFd,
    fd: RawFd,
    mut off: Option<u64>,
    n: usize,
    ctl: &WaitLimits,
    who: &str,
) -> Result<()> {
    let mut done = 0;
    while done < n {
        let r = splice1(pipe_r, None, fd, off, n - done, ctl);
        if let Some(k) = r.ok().filter(|&k| k > 0) {
            done += k;
            if let Some(x) = off.as_mut() {
                *x += k as u64;
            }
            continue;
        }
        let e = r.err().unwrap_or(libc::EIO);
        match e {
            libc::EINTR => {}
            libc::EAGAIN => ctl.wait(fd, libc::POLLOUT, who)?,
            e => {
                let at = off.map(|o| format!(" at offset {o}")).unwrap_or_default();
                return Err(Error::from_res(format!("{who}: write{at}"), -e));
            }
        }
    }
    Ok(())
}

/// Duplicates the first `n` bytes of `pipe_r` into `tee` and reads them
/// into `buf` (for zero detection); the bytes stay in `pipe_r`.
pub fn tee_read(
    pipe_r: RawFd,
    tee: &Pipe,
    buf: &mut [u8],
    n: usize,
    ctl: &WaitLimits,
) -> Result<()> {
    if n > buf.len() {
        return Err(Error::new(
            libc::EIO,
            format!("internal error: {n} bytes for a {}-byte buffer", buf.len()),
        ));
    }
    match sys::tee(pipe_r, tee.w.as_raw_fd(), n, libc::SPLICE_F_NONBLOCK) {
        Ok(t) if t == n => {}
        r => {
            return Err(Error::new(
                libc::EIO,
                format!("tee of {n} bytes returned {r:?}"),
            ))
        }
    }
    let mut got = 0;
    while got < n {
        match sys::read(tee.r.as_raw_fd(), &mut buf[got..n]) {
            Ok(r) if r > 0 => got += r,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(Error::new(libc::EIO, "short read from the tee pipe")),
        }
    }
    ctl.syscalls(2);
    Ok(())
}

/// Moves up to `n` bytes from `pipe_r` to socket `fd` without waiting:
/// how many went before the socket was full.
///
/// The connection's sockets are blocking (io_uring would fail rather than
/// wait on a non-blocking one), and a splice into a socket waits or not
/// by the socket's O_NONBLOCK alone (SPLICE_F_NONBLOCK is about the
/// pipe): the flag is set for the move and cleared after it.  Nothing
/// else uses the socket meanwhile: the worker is single-threaded, and its
/// engine submits nothing between the two.  `fl`: the socket's status
/// flags (F_GETFL), read once by the caller.
pub fn splice_out_now(
    pipe_r: RawFd,
    fd: RawFd,
    fl: libc::c_int,
    n: usize,
    ctl: &WaitLimits,
    who: &str,
) -> Result<usize> {
    let toggle = fl & libc::O_NONBLOCK == 0;
    if toggle {
        sys::fcntl_int(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
            .map_err(|e| Error::os(format!("{who}: fcntl"), e))?;
        ctl.syscalls(1);
    }
    let mut done = 0;
    let mut r = Ok(());
    while done < n {
        match splice1(pipe_r, None, fd, None, n - done, ctl) {
            Ok(k) if k > 0 => done += k,
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => break,
            res => {
                let e = res.err().unwrap_or(libc::EIO);
                r = Err(Error::from_res(format!("{who}: write"), -e));
                break;
            }
        }
    }
    if toggle {
        ctl.syscalls(1);
        sys::fcntl_int(fd, libc::F_SETFL, fl).map_err(|e| Error::os(format!("{who}: fcntl"), e))?;
    }
    r.map(|()| done)
}

/// Reads exactly `n` bytes the pipe `pipe_r` holds into `out`.
pub fn read_pipe(pipe_r: RawFd, out: &mut [u8], ctl: &WaitLimits) -> Result<()> {
    let mut got = 0;
    while got < out.len() {
        ctl.syscalls(1);
        match sys::read(pipe_r, &mut out[got..]) {
            Ok(k) if k > 0 => got += k,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            r => {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "internal error: {} of {} bytes in the pipe ({r:?})",
                        got,
                        out.len()
                    ),
                ))
            }
        }
    }
    Ok(())
}
