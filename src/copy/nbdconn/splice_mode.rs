// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A connection's splice mode: READ payloads into the pipe, WRITEs from it.
//
// Splice mode of an NBD connection: a source receives exact message
// prefixes and moves READ payloads into the lane's pipe; a destination
// sends synchronously so a WRITE's payload can follow from the pipe.

use super::send::{io_slices, MAX_BATCH};
use super::{ConnEvent, NbdConn};
use crate::copy::splice::{self, WaitLimits};
use crate::engine::Engine;
use crate::error::{Error, Result};
use std::os::fd::RawFd;

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
}

pub(super) struct PipeRest {
    pub(super) slot: u32,
    pub(super) offset: u64,
    pub(super) left: usize,
    pub(super) done: Option<crate::proto::reply::Completion>,
}

/// Direct receives (messages already waiting) per engine receive.
pub(super) const DIRECT_BUDGET: u32 = 16;

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
        });
    }

    /// Splice mode for a destination: sends are synchronous.
    pub fn set_sync_send(&mut self, ctl: WaitLimits) {
        self.sync_send = Some(ctl);
    }

    /// The worker drained a `PipeData` event: call `resume`.
    pub fn wants_resume(&self) -> bool {
        self.splice.as_ref().is_some_and(|s| s.stopped)
    }

    /// Sends everything queued with direct system calls (splice mode).
    pub(super) fn send_queue_now(&mut self, more: bool) -> Result<()> {
        let Some(ctl) = self.sync_send.clone() else {
            return Ok(());
        };
        // A server busy with a FLUSH or WRITE_ZEROES may stop reading.
        let ctl = ctl.slow_if(self.slow_pending());
        let q = &mut self.send;
        while !q.queue.is_empty() {
            let n = q.queue.len().min(MAX_BATCH);
            let mut bufs = io_slices(&q.queue[..n]);
            let more = more || n < q.queue.len();
            if let Err(e) = splice::send_all(self.fd, &mut bufs, more, &ctl, &self.name) {
                self.broken = true;
                return Err(e.on(self.side));
            }
            // Splice mode never forwards receive blocks: nothing to release.
            q.drop_sent(n);
        }
        Ok(())
    }

    /// Sends WRITE [offset, offset+len) for `slot` with its payload taken
    /// from the pipe `pipe_r` (splice mode), after everything queued.
    pub fn send_pipe(&mut self, slot: u32, offset: u64, pipe_r: RawFd, len: u32) -> Result<()> {
        let Some(ctl) = self.sync_send.clone() else {
            return Err(self.err("internal error: pipe write without splice mode"));
        };
        let ctl = ctl.slow_if(self.slow_pending());
        let req = self.request(
            crate::proto::consts::NBD_CMD_WRITE,
            0,
            slot,
            offset,
            len as u64,
        );
        self.queue(req, slot, super::Kind::Write, None, None)?;
        let r = self.send_queue_now(true).and_then(|()| {
            splice::splice_out(pipe_r, self.fd, None, len as usize, &ctl, &self.name)
        });
        if r.is_err() {
            self.broken = true;
        }
        r.map_err(|e| e.on(self.side))
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
            if self.wants_resume() {
                return Ok(());
            }
        }
        self.recv_more(engine, base, events)
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
            match splice::splice_in(fd, sp.pipe_w, want, &sp.ctl, name) {
                Ok(0) if sp.in_pipe == 0 => {
                    let cap = sp.pipe_cap;
                    self.broken = true;
                    return Err(self.err(format!(
                        "cannot move READ data into an empty pipe of {cap} bytes"
                    )));
                }
                Ok(n) => sp.in_pipe += n,
                Err(e) => {
                    // A cancel leaves our request stream intact (DISC can
                    // still be sent); anything else breaks the connection.
                    if e.errno != libc::ECANCELED {
                        self.broken = true;
                    }
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
