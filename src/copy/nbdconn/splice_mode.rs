// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A connection's splice mode: READ payloads into the pipe, WRITEs from it.
//
// Splice mode of an NBD connection: a source receives exact message
// prefixes and moves READ payloads into the lane's pipe; a destination
// sends with direct system calls so a WRITE's payload can follow from
// the pipe.  Neither waits: a source whose socket has no more of a
// payload yet waits for readability through the engine (`Op::Poll`); a
// destination whose socket is full hands what is left (copied out of the
// pipe) to the engine as an ordinary send, and sends nothing directly
// until that send is done, so the byte stream stays in order.

use super::send::{io_slices, SendItem, MAX_BATCH};
use super::{ConnEvent, NbdConn, POLL};
use crate::copy::splice::{self, InStep, WaitLimits};
use crate::engine::buf::{AlignedBuf, Span};
use crate::engine::{Engine, Op};
use crate::error::{Error, Result};
use std::os::fd::RawFd;
use std::sync::Arc;

/// A source connection's splice state.
pub(super) struct SpliceIn {
    pub(super) pipe_w: RawFd,
    pub(super) pipe_cap: usize,
    pub(super) ctl: WaitLimits,
    /// Payload bytes in the pipe not yet handed to the worker.
    pub(super) in_pipe: usize,
    /// The READ payload being moved.
    pub(super) rest: Option<PipeRest>,
    /// Stopped with data in the pipe: the worker drains it, then resumes.
    pub(super) stopped: bool,
    /// Direct receives left before falling back to an engine receive.
    pub(super) budget: u32,
    /// The socket has no more of the payload for now: wait for it.
    pub(super) wait: bool,
    /// ... through this poll in the engine.
    pub(super) polling: bool,
    /// The poll just reported the socket readable.
    pub(super) ready: bool,
    /// Readiness reports in a row after which nothing could be moved.
    pub(super) stale: u32,
}

pub(super) struct PipeRest {
    pub(super) slot: u32,
    pub(super) offset: u64,
    pub(super) left: usize,
    pub(super) done: Option<crate::proto::reply::Completion>,
}

/// Direct receives (messages already waiting) per engine receive.
pub(super) const DIRECT_BUDGET: u32 = 16;

/// Stale readiness reports in a row (nothing moved into an empty pipe)
/// before the source is given up on.
const MAX_STALE: u32 = 1000;

impl NbdConn {
    /// Splice mode for a source: READ payloads go into the pipe whose
    /// write end is `pipe_w` (capacity `pipe_cap` bytes).
    pub fn set_splice_source(&mut self, pipe_w: RawFd, pipe_cap: usize, ctl: WaitLimits) {
        self.parser.set_external_data(true);
        self.splice = Some(SpliceIn {
            pipe_w,
            pipe_cap,
            ctl,
            in_pipe: 0,
            rest: None,
            stopped: false,
            budget: DIRECT_BUDGET,
            wait: false,
            polling: false,
            ready: false,
            stale: 0,
        });
    }

    /// Splice mode for a destination: sends are direct system calls.
    pub fn set_sync_send(&mut self, ctl: WaitLimits) {
        // F_GETFL cannot fail on an open descriptor; O_RDWR is what a
        // connected socket has (F_SETFL ignores the access mode).
        self.sync_flags = crate::sys::fcntl_int(self.fd, libc::F_GETFL, 0).unwrap_or(libc::O_RDWR);
        self.sync_send = Some(ctl);
    }

    /// The worker drained a `PipeData` event: call `resume`.
    pub fn wants_resume(&self) -> bool {
        self.splice.as_ref().is_some_and(|s| s.stopped)
    }

    /// Sends what is queued with direct non-blocking system calls
    /// (splice mode).  What would block goes to the engine as one send;
    /// until it is done nothing is sent directly (its completion kicks
    /// this again).
    pub(super) fn send_queue_now(
        &mut self,
        engine: &mut Engine,
        base: u64,
        more: bool,
    ) -> Result<()> {
        let Some(ctl) = self.sync_send.clone() else {
            return Ok(());
        };
        self.send_direct(engine, base, more, &ctl, false)
    }

    /// `send_queue_now`; with `wait`, a full socket is waited for here
    /// (a bounded, cancellable poll) instead of handing the rest to the
    /// engine.
    fn send_direct(
        &mut self,
        engine: &mut Engine,
        base: u64,
        more: bool,
        ctl: &WaitLimits,
        wait: bool,
    ) -> Result<()> {
        while !self.send.busy && !self.send.queue.is_empty() {
            let n = self.send.queue.len().min(MAX_BATCH);
            let bufs = io_slices(&self.send.queue[..n]);
            let more = more || n < self.send.queue.len();
            let flags = libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
            let r = crate::sys::sendmsg(self.fd, &bufs, flags);
            drop(bufs);
            ctl.syscalls(1);
            let sent = match r {
                Ok(k) => k,
                Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EINTR => continue,
                    libc::EAGAIN if wait => {
                        // A server busy with a FLUSH or WRITE_ZEROES may
                        // stop reading.
                        ctl.slow_if(self.slow_pending())
                            .wait(self.fd, libc::POLLOUT, &self.name)
                            .map_err(|e| e.on(self.side))?;
                        continue;
                    }
                    libc::EAGAIN => 0,
                    errno => return Err(self.send_failed(-errno)),
                },
            };
            // Whole items sent are forgotten (splice mode forwards no
            // receive blocks: nothing to release); a part left goes to
            // the engine.
            let (whole, part) = self.send.split_sent(sent);
            self.send.drop_sent(whole);
            if whole < n || part > 0 {
                return self.send_rest_by_engine(engine, base, part);
            }
        }
        Ok(())
    }

    /// Hands what is queued to the engine as one send, its first `skip`
    /// bytes already sent directly.
    fn send_rest_by_engine(&mut self, engine: &mut Engine, base: u64, skip: usize) -> Result<()> {
        self.send.start_batch_after(skip);
        let r = self.post_send(engine, base);
        self.broken |= r.is_err();
        r.map_err(|e| e.context(&self.name).on(self.side))
    }

    /// Sends WRITE [offset, offset+len) for `slot` with its payload taken
    /// from the pipe `pipe_r` (splice mode), after everything queued.
    /// Spliced to the socket directly while it takes them.  When it is
    /// full, and `alone` (this is its worker's only lane: nothing else
    /// could run meanwhile), the socket is waited for here, bounded by
    /// the stall timeout and noticing cancellation; otherwise the bytes
    /// it does not take are copied out of the pipe and sent by the
    /// engine, so the worker's other lanes go on.  The pipe holds none of
    /// them afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn send_pipe(
        &mut self,
        engine: &mut Engine,
        base: u64,
        slot: u32,
        offset: u64,
        pipe_r: RawFd,
        len: u32,
        alone: bool,
    ) -> Result<()> {
        let Some(ctl) = self.sync_send.clone() else {
            return Err(self.err("internal error: pipe write without splice mode"));
        };
        let req = self.request(
            crate::proto::consts::NBD_CMD_WRITE,
            0,
            slot,
            offset,
            len as u64,
        );
        self.queue(req, slot, super::Kind::Write, None, None)?;
        let r = self.send_direct(engine, base, true, &ctl, alone);
        self.broken |= r.is_err();
        r?;
        let len = len as usize;
        let slow = self.slow_pending();
        let mut moved = 0;
        while !self.send.busy && moved < len {
            let fl = self.sync_flags;
            let r = splice::splice_out_now(pipe_r, self.fd, fl, len - moved, &ctl, &self.name)
                .and_then(|n| {
                    moved += n;
                    if moved < len && alone {
                        ctl.slow_if(slow).wait(self.fd, libc::POLLOUT, &self.name)?;
                    }
                    Ok(())
                });
            self.broken |= r.is_err();
            r.map_err(|e| e.on(self.side))?;
            if !alone {
                break;
            }
        }
        if moved == len {
            return Ok(());
        }
        let rest = len - moved;
        let mut buf = AlignedBuf::new(rest);
        splice::read_pipe(pipe_r, buf.as_mut_slice(), &ctl).map_err(|e| e.on(self.side))?;
        self.recv.memcpy += rest as u64;
        let buf = Arc::new(buf);
        self.send
            .push(SendItem::new(&[], Some(Span::of_buf(&buf, 0, rest)), None));
        if self.send.busy {
            return Ok(()); // it follows the send in flight
        }
        self.send_rest_by_engine(engine, base, 0)
    }

    /// Continues after the worker drained the pipe (splice mode).
    pub fn resume(
        &mut self,
        engine: &mut Engine,
        base: u64,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        let Some(sp) = self.splice.as_mut() else {
            return Ok(());
        };
        sp.stopped = false;
        if sp.rest.is_some() {
            self.pipe_step(events)?;
            if self.pipe_busy() {
                return self.poll_payload(engine, base);
            }
        }
        self.recv_more(engine, base, events)
    }

    /// A READ payload is being moved: the worker drains the pipe, or the
    /// rest is awaited.
    pub(super) fn pipe_busy(&self) -> bool {
        self.splice
            .as_ref()
            .is_some_and(|s| s.stopped || s.wait || s.polling)
    }

    /// Waits for the rest of the payload through the engine, when
    /// `pipe_step` found none.
    pub(super) fn poll_payload(&mut self, engine: &mut Engine, base: u64) -> Result<()> {
        let fd = self.efd;
        let Some(sp) = self.splice.as_mut() else {
            return Ok(());
        };
        if !sp.wait || sp.polling {
            return Ok(());
        }
        let op = Op::Poll {
            fd,
            events: libc::POLLIN as u32,
        };
        engine.push(op, base | POLL)?;
        sp.wait = false;
        sp.polling = true;
        Ok(())
    }

    /// The poll for the rest of a payload completed: move it on.
    pub(super) fn payload_ready(
        &mut self,
        engine: &mut Engine,
        base: u64,
        res: i32,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        let Some(sp) = self.splice.as_mut() else {
            return Ok(());
        };
        sp.polling = false;
        if res < 0 {
            self.broken = true;
            return Err(Error::from_res(format!("{}: poll", self.name), res).on(self.side));
        }
        sp.ready = true;
        self.pipe_step(events)?;
        self.poll_payload(engine, base)
    }

    /// One non-blocking receive of the rest of the current message (splice
    /// mode).  True when bytes arrived.
    pub(super) fn recv_direct(&mut self) -> Result<bool> {
        if let Some(sp) = self.splice.as_mut() {
            sp.budget -= 1;
        }
        let first = self.first_read();
        let Some(target) = self.recv.direct_target(first) else {
            return Ok(false); // let post_recv move it to a fresh block
        };
        let r = crate::sys::recv(self.fd, target, libc::MSG_DONTWAIT);
        if let Some(sp) = &self.splice {
            sp.ctl.syscalls(1);
        }
        match r {
            Ok(0) => Err(self.closed()),
            Ok(n) => {
                self.recv.tail += n;
                Ok(true)
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNRESET) => Err(self.closed()),
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(false),
                _ => {
                    self.broken = true;
                    Err(Error::os(format!("{}: receive", self.name), e).on(self.side))
                }
            },
        }
    }

    /// Moves the current READ payload into the pipe and hands the worker
    /// what is there (all of it, or a 4 KiB-aligned part when the pipe
    /// filled up first).
    pub(super) fn pipe_step(&mut self, events: &mut Vec<ConnEvent>) -> Result<()> {
        // Disjoint field borrows: no copy of the name per payload.
        let (fd, name) = (self.fd, &self.name);
        let Some(sp) = self.splice.as_mut() else {
            return Ok(());
        };
        let Some(r) = sp.rest.as_mut() else {
            return Ok(());
        };
        let want = (r.left - sp.in_pipe).min(sp.pipe_cap - sp.in_pipe);
        if want > 0 {
            let ready = std::mem::take(&mut sp.ready);
            match splice::splice_in(fd, sp.pipe_w, want, ready, &sp.ctl, name) {
                Ok((n, step)) => {
                    sp.in_pipe += n;
                    if n > 0 {
                        sp.stale = 0;
                    }
                    match step {
                        InStep::Done => {}
                        // Nothing in the pipe, so it was not full: the
                        // readiness was stale (a wakeup may report data
                        // that is gone by the time it is delivered, seen
                        // with io_uring under load).  Wait again; only a
                        // kernel that keeps refusing is an error.
                        InStep::PipeFull if sp.in_pipe == 0 => {
                            sp.stale += 1;
                            if sp.stale > MAX_STALE {
                                let cap = sp.pipe_cap;
                                self.broken = true;
                                return Err(self.err(format!(
                                    "cannot move READ data into an empty pipe of {cap} bytes \
                                     (the socket was reported readable {MAX_STALE} times)"
                                )));
                            }
                            sp.wait = true;
                            return Ok(());
                        }
                        InStep::PipeFull => {}
                        // The rest of what fits is on its way: hand on
                        // whole payloads, not what happened to be there.
                        InStep::Wait => {
                            sp.wait = true;
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    self.broken = true;
                    return Err(e.on(self.side));
                }
            }
        }
        let give = if sp.in_pipe == r.left {
            sp.in_pipe
        } else if sp.in_pipe >= 4096 {
            sp.in_pipe / 4096 * 4096
        } else {
            sp.in_pipe
        };
        events.push(ConnEvent::PipeData {
            slot: r.slot,
            offset: r.offset,
            len: give as u32,
        });
        sp.stopped = true;
        sp.in_pipe -= give;
        r.offset += give as u64;
        r.left -= give;
        if r.left == 0 {
            let done = r.done.take();
            sp.rest = None;
            if let Some(c) = done {
                let ev = self
                    .book
                    .complete(&self.name, self.side, c.cookie, c.result)?;
                events.push(ev);
            }
        }
        Ok(())
    }
}
