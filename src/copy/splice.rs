// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The splice data path's kernel plumbing: pipes, bounded waits, exact moves.
//
// The splice data path's kernel plumbing: pipes sized for requests,
// bounded waits on non-blocking descriptors that notice cancellation and
// the stall timeout, and exact splice / tee / send loops.
//
// READ payloads move socket -> pipe -> destination (socket, file or
// /dev/null) by reference, never entering user space; zero detection
// reads a tee'd duplicate.  These are direct system calls, not io_uring
// operations: io_uring runs SPLICE and TEE on io-wq threads, which costs
// more than the copy it saves (measured in BENCHMARKS.md).

use super::stats::Shared;
use crate::error::{Error, Result};
use crate::sys;
use std::io::IoSlice;
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

/// What a blocking step needs to give up in time: the job's cancel and
/// failure flags and its stall timeout.
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
    pub fn slow_if(self, slow: bool) -> WaitLimits {
        if slow {
            WaitLimits {
                timeout: self.slow_timeout,
                ..self
            }
        } else {
            self
        }
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

/// Moves up to `max` bytes from socket `sock` into `pipe_w`.  Returns once
/// all `max` bytes are in the pipe, or when the pipe is full (possibly
/// with nothing moved).  End of stream is an error.
pub fn splice_in(
    sock: RawFd,
    pipe_w: RawFd,
    max: usize,
    ctl: &WaitLimits,
    who: &str,
) -> Result<usize> {
    let mut got = 0;
    // The socket was just reported readable: EAGAIN now means the pipe is
    // full (nothing else reads this socket).
    let mut ready = false;
    while got < max {
        let r = splice1(sock, None, pipe_w, None, max - got, ctl);
        if let Some(n) = r.ok().filter(|&n| n > 0) {
            got += n;
            if got < max {
                // Partial: the rest is on its way (or the pipe is full).
                ctl.wait(sock, libc::POLLIN, who)?;
                ready = true;
            }
            continue;
        }
        match r.err().unwrap_or(libc::ECONNRESET) {
            libc::ECONNRESET => {
                return Err(Error::new(
                    libc::ECONNRESET,
                    format!("{who}: server closed the connection in the middle of a READ reply"),
                ))
            }
            libc::EINTR => continue,
            libc::EAGAIN if ready => return Ok(got), // the pipe is full: drain it first
            libc::EAGAIN => {
                ctl.wait(sock, libc::POLLIN, who)?;
                ready = true;
            }
            e => {
                return Err(Error::from_res(
                    format!("{who}: splice from the socket"),
                    -e,
                ))
            }
        }
    }
    Ok(got)
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

/// Moves exactly `n` bytes from `pipe_r` to `fd` (at `off` for files).
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

/// Sends every byte of `bufs` on socket `fd` (MSG_MORE when more follows).
pub fn send_all(
    fd: RawFd,
    mut bufs: &mut [IoSlice<'_>],
    more: bool,
    ctl: &WaitLimits,
    who: &str,
) -> Result<()> {
    let flags = libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
    while !bufs.is_empty() {
        let r = sys::sendmsg(fd, bufs, flags);
        ctl.syscalls(1);
        match r {
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) => match errno_of(e) {
                libc::EINTR => {}
                libc::EAGAIN => ctl.wait(fd, libc::POLLOUT, who)?,
                e => return Err(Error::from_res(format!("{who}: send"), -e)),
            },
        }
    }
    Ok(())
}
