// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The splice data path's kernel plumbing: pipes sized for requests,
//! bounded waits on non-blocking descriptors that notice cancellation and
//! the stall timeout, and exact splice / tee / send loops.
//!
//! READ payloads move socket -> pipe -> destination (socket, file or
//! /dev/null) by reference, never entering user space; zero detection
//! reads a tee'd duplicate.  These are direct system calls, not io_uring
//! operations: io_uring runs SPLICE and TEE on io-wq threads, which costs
//! more than the copy it saves (measured in BENCHMARKS.md).

use super::stats::Shared;
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return None;
        }
        // SAFETY: pipe2 succeeded: two fresh descriptors we now own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut size = want.max(min).next_power_of_two();
        while size >= min {
            // SAFETY: fcntl on our own descriptor, no memory arguments.
            let got =
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
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
pub struct Ctl {
    pub shared: Arc<Shared>,
    /// The stall limit (None: wait forever).
    pub timeout: Option<Duration>,
    /// The stall limit while the peer may be busy with a FLUSH or
    /// WRITE_ZEROES (None: wait forever).
    pub slow_timeout: Option<Duration>,
}

/// Poll slice: how quickly a blocked step notices cancellation.
const SLICE_MS: i32 = 20;

impl Ctl {
    /// This Ctl, with the slow limit as its stall limit when `slow`.
    pub fn slow_if(self, slow: bool) -> Ctl {
        if slow {
            Ctl {
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
            let mut p = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut p, 1, SLICE_MS) };
            self.syscalls(1);
            if r > 0 {
                return Ok(()); // ready, or an error the next call reports
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(Error::os(format!("{who}: poll"), e));
                }
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

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
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
    ctl: &Ctl,
) -> std::result::Result<usize, i32> {
    let mut i = off_in.unwrap_or(0) as libc::loff_t;
    let mut o = off_out.unwrap_or(0) as libc::loff_t;
    let ip: *mut libc::loff_t = if off_in.is_some() {
        &mut i
    } else {
        std::ptr::null_mut()
    };
    let op: *mut libc::loff_t = if off_out.is_some() {
        &mut o
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: `ip`/`op` are null or point to `i`/`o`, live during the call;
    // no other memory arguments.
    let r = unsafe {
        libc::splice(
            from,
            ip,
            to,
            op,
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    ctl.syscalls(1);
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Moves up to `max` bytes from socket `sock` into `pipe_w`.  Returns once
/// all `max` bytes are in the pipe, or when the pipe is full (possibly
/// with nothing moved).  End of stream is an error.
pub fn splice_in(sock: RawFd, pipe_w: RawFd, max: usize, ctl: &Ctl, who: &str) -> Result<usize> {
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
pub fn splice_file_in(fd: RawFd, off: u64, pipe_w: RawFd, max: usize, ctl: &Ctl) -> Result<usize> {
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
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let page = 4096u64;
    let start = off / page * page;
    let end = (off + len).div_ceil(page) * page;
    let range = Range {
        off: start,
        len: end - start,
    };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both live and of the
    // kernel's layout (struct cachestat_range / struct cachestat).
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut st as *mut Stat,
            0,
        )
    };
    r == 0 && st.nr_cache >= (end - start) / page
}

/// Moves exactly `n` bytes from `pipe_r` to `fd` (at `off` for files).
pub fn splice_out(
    pipe_r: RawFd,
    fd: RawFd,
    mut off: Option<u64>,
    n: usize,
    ctl: &Ctl,
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
pub fn tee_read(pipe_r: RawFd, tee: &Pipe, buf: &mut [u8], n: usize, ctl: &Ctl) -> Result<()> {
    if n > buf.len() {
        return Err(Error::new(
            libc::EIO,
            format!("internal error: {n} bytes for a {}-byte buffer", buf.len()),
        ));
    }
    // SAFETY: no memory arguments.
    let t = unsafe { libc::tee(pipe_r, tee.w.as_raw_fd(), n, libc::SPLICE_F_NONBLOCK) };
    if t < 0 || t as usize != n {
        return Err(Error::new(
            libc::EIO,
            format!("tee of {n} bytes returned {t} (errno {})", errno()),
        ));
    }
    let mut got = 0;
    while got < n {
        // SAFETY: buf has at least n bytes; got < n.
        let r = unsafe {
            libc::read(
                tee.r.as_raw_fd(),
                buf.as_mut_ptr().add(got) as *mut libc::c_void,
                n - got,
            )
        };
        if r <= 0 {
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            return Err(Error::new(libc::EIO, "short read from the tee pipe"));
        }
        got += r as usize;
    }
    ctl.syscalls(2);
    Ok(())
}

/// Sends every byte of `iov` on socket `fd` (MSG_MORE when more follows).
pub fn send_all(
    fd: RawFd,
    iov: &mut [libc::iovec],
    more: bool,
    ctl: &Ctl,
    who: &str,
) -> Result<()> {
    let mut first = 0;
    while first < iov.len() {
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = (iov.len() - first) as _;
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
        // SAFETY: msg points at iovecs describing buffers the caller keeps
        // alive for the call.
        let r = unsafe { libc::sendmsg(fd, &msg, flags) };
        ctl.syscalls(1);
        if r < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    ctl.wait(fd, libc::POLLOUT, who)?;
                    continue;
                }
                e => return Err(Error::from_res(format!("{who}: send"), -e)),
            }
        }
        let mut left = r as usize;
        while first < iov.len() && left >= iov[first].iov_len {
            left -= iov[first].iov_len;
            first += 1;
        }
        if left > 0 {
            let v = &mut iov[first];
            // SAFETY: left < iov_len: still inside the buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(left) } as *mut libc::c_void;
            v.iov_len -= left;
        }
    }
    Ok(())
}
