// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The epoll engine: each operation a non-blocking system call, retried when epoll says its descriptor is ready.
//
// For kernels, containers and sandboxes that refuse io_uring.  An
// operation is tried when it is pushed: file I/O (pread, pwrite,
// fallocate, fsync) is done at once; socket receives and sends use
// MSG_DONTWAIT and, when they would block, wait for readiness (one-shot
// epoll registration of the engine's own duplicate, keyed by the
// registration token, re-armed per wait; unregistering cancels what
// waits and removes the epoll registration before the duplicate is
// closed, so a reused number never meets a waiting operation); reads and writes of streams
// (pipes, terminals) first ask poll whether they can go without
// blocking.  Results are queued as the same completions io_uring gives
// (bytes or -errno; a send may complete short, as it may there).
// Nothing is ever in the kernel's hands between two calls, so draining
// only hands back what waits.

use super::buf::IoBuf;
use super::{gather, Completion, Fd, FdTable, Op};
use crate::error::{Error, Result};
use crate::sys;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An operation waiting for its descriptor.
struct Waiting {
    user_data: u64,
    op: Op,
    /// EPOLLIN or EPOLLOUT.
    want: u32,
}

pub struct EpollEngine {
    ep: OwnedFd,
    /// Operations that would block, in the order they were pushed.
    waiting: Vec<Waiting>,
    /// Results not reaped yet.
    done: VecDeque<Completion>,
    events: Vec<libc::epoll_event>,
    /// Waiting descriptors epoll cannot watch (never seen in practice:
    /// regular files do not block): retried at every wait.
    unwatched: Vec<Fd>,
    /// The descriptors operations name.
    pub(super) fds: FdTable,
    /// epoll_wait calls (for stats).
    pub enters: u64,
    /// System calls made for operations (for stats).
    pub syscalls: u64,
}

/// What trying an operation gave.
enum Try {
    Done(i32),
    /// Would block: wait for this readiness.
    Wait(u32),
}

fn res_of(r: std::io::Result<usize>) -> Option<i32> {
    match r {
        Ok(n) => Some(n.min(i32::MAX as usize) as i32),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN) => None,
            Some(libc::EINTR) => None,
            Some(n) => Some(-n),
            None => Some(-libc::EIO),
        },
    }
}

/// Whether `fd` can do `events` (POLLIN/POLLOUT) now without blocking
/// (errors and hang-ups count as ready: the call reports them).
fn ready(fd: RawFd, events: i16) -> bool {
    match sys::poll_one(fd, events, 0) {
        Ok(rev) => rev != 0,
        Err(_) => true,
    }
}

impl EpollEngine {
    pub fn new() -> Result<EpollEngine> {
        let ep = sys::epoll_create().map_err(|e| Error::os("epoll_create1", e))?;
        Ok(EpollEngine {
            ep,
            waiting: Vec::new(),
            done: VecDeque::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
            unwatched: Vec::new(),
            fds: FdTable::default(),
            enters: 0,
            syscalls: 0,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.waiting.len() + self.done.len()
    }

    pub fn push(&mut self, op: Op, user_data: u64) -> Result<()> {
        match self.attempt(&op) {
            Try::Done(res) => self.done.push_back(Completion { user_data, res }),
            Try::Wait(want) => {
                let fd = op.fd().unwrap_or(Fd::NONE);
                self.waiting.push(Waiting {
                    user_data,
                    op,
                    want,
                });
                self.arm(fd)?;
            }
        }
        Ok(())
    }

    /// Tries `op` once without blocking.
    fn attempt(&mut self, op: &Op) -> Try {
        const IN: u32 = libc::EPOLLIN as u32;
        const OUT: u32 = libc::EPOLLOUT as u32;
        let nosig = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // The number stays the registration's while this runs: only
        // `unregister` closes it.
        let fd = match op.fd().map(|t| self.fds.raw(t)) {
            None => -1,
            Some(Some(fd)) => fd,
            Some(None) => return Try::Done(-libc::EBADF),
        };
        let r = match op {
            Op::Nop => return Try::Done(0),
            Op::Recv { buf, at, len, .. } => {
                // SAFETY: the op's maker reserved these bytes for it.
                let out = unsafe { op_target(buf, *at, *len) };
                self.syscalls += 1;
                match res_of(sys::recv(fd, out, libc::MSG_DONTWAIT)) {
                    Some(r) => r,
                    None => return Try::Wait(IN),
                }
            }
            Op::Read {
                buf,
                at,
                len,
                offset,
                ..
            } => {
                if offset.is_none() && !ready(fd, libc::POLLIN) {
                    return Try::Wait(IN);
                }
                // SAFETY: the op's maker reserved these bytes for it.
                let out = unsafe { op_target(buf, *at, *len) };
                self.syscalls += 1;
                let r = match offset {
                    Some(o) => sys::pread(fd, out, *o),
                    None => sys::read(fd, out),
                };
                match res_of(r) {
                    Some(r) => r,
                    None => return Try::Wait(IN),
                }
            }
            Op::Write { data, offset, .. } => {
                if offset.is_none() && !ready(fd, libc::POLLOUT) {
                    return Try::Wait(OUT);
                }
                self.syscalls += 1;
                let r = match offset {
                    Some(o) => sys::pwrite(fd, data.as_slice(), *o),
                    None => sys::write(fd, data.as_slice()),
                };
                match res_of(r) {
                    Some(r) => r,
                    None => return Try::Wait(OUT),
                }
            }
            Op::Send { data, .. } => {
                self.syscalls += 1;
                match res_of(sys::send(fd, data.as_slice(), nosig)) {
                    Some(r) => r,
                    None => return Try::Wait(OUT),
                }
            }
            Op::SendBatch { batch, skip, .. } => {
                let mut slices = Vec::new();
                gather(batch, *skip, &mut slices);
                let iov: Vec<std::io::IoSlice<'_>> = slices
                    .iter()
                    .take(1024)
                    .map(|s| std::io::IoSlice::new(s))
                    .collect();
                self.syscalls += 1;
                match res_of(sys::sendmsg(fd, &iov, libc::MSG_DONTWAIT)) {
                    Some(r) => r,
                    None => return Try::Wait(OUT),
                }
            }
            Op::Fallocate {
                offset, len, mode, ..
            } => {
                self.syscalls += 1;
                match sys::fallocate(fd, *mode, *offset, *len) {
                    Ok(()) => 0,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            Op::Fsync { .. } => {
                self.syscalls += 1;
                match sys::fsync(fd) {
                    Ok(()) => 0,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            // Asked for after a call found `fd` not ready: wait at once
            // (arming reports a readiness that came in between).
            Op::Poll { events, .. } => return Try::Wait(events & (IN | OUT)),
        };
        Try::Done(r)
    }

    /// (Re-)arms the one-shot registration of `t` for what its waiting
    /// operations want.
    fn arm(&mut self, t: Fd) -> Result<()> {
        let Some(fd) = self.fds.raw(t) else {
            // Not registered (any more): what waits on it is cancelled.
            self.cancel(t);
            return Ok(());
        };
        let want = self
            .waiting
            .iter()
            .filter(|w| w.op.fd() == Some(t))
            .fold(0, |a, w| a | w.want);
        let ev = want | (libc::EPOLLONESHOT as u32) | (libc::EPOLLRDHUP as u32);
        let ep = self.ep.as_raw_fd();
        let key = t.key();
        let r = match sys::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, ev, key) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                sys::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, ev, key)
            }
            r => r,
        };
        match r {
            Ok(()) => Ok(()),
            // Not pollable (a regular file): always ready; retried at
            // the next wait, which does not block then.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.unwatched.contains(&t) {
                    self.unwatched.push(t);
                }
                Ok(())
            }
            Err(e) => Err(Error::os("epoll_ctl", e)),
        }
    }

    /// Waits for readiness (unless results are there already) up to
    /// `timeout`, then retries the operations that can go on.
    pub fn wait(&mut self, timeout: Duration) -> Result<()> {
        if !self.done.is_empty() {
            return Ok(());
        }
        // Waiting on a descriptor epoll cannot watch: do not block.
        let ms = if self.unwatched.is_empty() {
            timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        } else {
            0
        };
        self.enters += 1;
        let n = match sys::epoll_wait(self.ep.as_raw_fd(), &mut self.events, ms) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => 0,
            Err(e) => return Err(Error::os("epoll_wait", e)),
        };
        let mut fired: Vec<(Fd, u32)> = self.events[..n]
            .iter()
            .map(|e| (Fd::from_key(e.u64), e.events))
            .collect();
        // Descriptors epoll cannot watch count as ready.
        let all = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
        fired.extend(
            std::mem::take(&mut self.unwatched)
                .into_iter()
                .map(|fd| (fd, all)),
        );
        self.retry(&fired)
    }

    /// Retries, in order, the waiting operations of descriptors that
    /// fired; re-arms those still waiting.
    fn retry(&mut self, fired: &[(Fd, u32)]) -> Result<()> {
        let errs = (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;
        let mut rearm: Vec<Fd> = Vec::new();
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            let fd = w.op.fd().unwrap_or(Fd::NONE);
            let hit = fired
                .iter()
                .any(|&(f, ev)| f == fd && (ev & (w.want | errs)) != 0);
            // An fd that fired for something else was disarmed too.
            let touched = fired.iter().any(|&(f, _)| f == fd);
            if !hit {
                self.waiting.push(w);
                if touched && !rearm.contains(&fd) {
                    rearm.push(fd);
                }
                continue;
            }
            let tried = match w.op {
                // The readiness it waited for (or an error) is there.
                Op::Poll { .. } => {
                    let ev = fired
                        .iter()
                        .filter(|&&(f, _)| f == fd)
                        .fold(0, |a, &(_, e)| a | e);
                    Try::Done((ev & (w.want | errs)) as i32)
                }
                _ => self.attempt(&w.op),
            };
            match tried {
                Try::Done(res) => self.done.push_back(Completion {
                    user_data: w.user_data,
                    res,
                }),
                Try::Wait(want) => {
                    self.waiting.push(Waiting { want, ..w });
                    if !rearm.contains(&fd) {
                        rearm.push(fd);
                    }
                }
            }
        }
        for fd in rearm {
            if self.waiting.iter().any(|w| w.op.fd() == Some(fd)) {
                self.arm(fd)?;
            }
        }
        Ok(())
    }

    /// Ends the registration `t`: what waits on it completes cancelled,
    /// epoll forgets it, and its duplicate is closed, in that order.
    pub fn unregister(&mut self, t: Fd) -> Result<()> {
        let Some(fd) = self.fds.raw(t) else {
            return Ok(());
        };
        self.cancel(t);
        self.unwatched.retain(|&u| u != t);
        match sys::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) => {}
            Err(e) => return Err(Error::os("epoll_ctl", e)),
        }
        self.fds.close(t);
        Ok(())
    }

    /// Completes the operations waiting on `t` as cancelled.
    fn cancel(&mut self, t: Fd) {
        let done = &mut self.done;
        self.waiting.retain(|w| {
            let mine = w.op.fd() == Some(t);
            if mine {
                done.push_back(Completion {
                    user_data: w.user_data,
                    res: -libc::ECANCELED,
                });
            }
            !mine
        });
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }

    /// Hands back everything not reaped: waiting operations as cancelled.
    pub fn drain(&mut self, sink: &mut dyn FnMut(Completion)) -> bool {
        for c in self.done.drain(..) {
            sink(c);
        }
        for w in self.waiting.drain(..) {
            sink(Completion {
                user_data: w.user_data,
                res: -libc::ECANCELED,
            });
        }
        true
    }
}

/// The bytes [at, at+len) a receive or read writes into.
///
/// # Safety
/// Whoever made the operation reserved these bytes for it (a receive
/// block's unreceived end, a busy slot's unread part, the TLS session's
/// free receive space): no span, borrow or other operation reads or
/// writes them until its completion, which is queued before this borrow
/// ends.  It is the same promise the io_uring engine hands the kernel.
#[allow(clippy::mut_from_ref)]
unsafe fn op_target(buf: &IoBuf, at: usize, len: usize) -> &mut [u8] {
    let end = at.checked_add(len).expect("operation range overflows");
    // SAFETY: the caller's promise above.
    unsafe { buf.range_mut(at, end) }
}
