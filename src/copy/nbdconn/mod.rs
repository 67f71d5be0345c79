// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! One NBD connection on an engine: requests, sends, receives, events for its lane.
//
// One NBD connection inside a worker: requests queued through one path
// (`book`, `send`), replies parsed in place from large receives (`recv`),
// and events for the lane; splice mode lives in `splice_mode`.

mod book;
mod recv;
mod redial;
mod send;
mod splice_mode;
#[cfg(test)]
mod splice_test;

pub use book::FailedRequest;
pub use redial::{backoff, Retry};

use super::align::Extent;
use super::dirty::DirtyExtent;
use super::splice::WaitLimits;
use crate::engine::buf::Span;
use crate::engine::{Engine, Fd};
use crate::error::{Error, Result, Side};
use crate::proto::reply::{Chunk, Parse, ReplyParser};
use crate::proto::request::{self, Request};
use crate::proto::{consts, HeaderMode, Negotiated};
use crate::tls::conn::TlsConn;
use book::{Kind, Pending, Ranges, RequestBook};
use recv::RecvBuf;
use send::{SendItem, SendQueue};
use splice_mode::{PipeRest, SpliceIn, DIRECT_BUDGET};
use std::os::fd::RawFd;

/// What a connection's completions produced, for its lane.
#[derive(Debug)]
pub enum ConnEvent {
    /// READ data for `slot` at `offset`, inside this connection's receive
    /// block `block`, which holds one reference for this event.
    Data {
        slot: u32,
        offset: u64,
        data: Span,
        block: u32,
    },
    /// READ data for `slot` at `offset`: the next `len` bytes in the
    /// lane's pipe (splice mode).  The worker must take them out of the
    /// pipe before resuming this connection.
    PipeData { slot: u32, offset: u64, len: u32 },
    /// A READ chunk that reads as zeroes.
    Hole { slot: u32, offset: u64, len: u32 },
    /// The READ for `slot` completed successfully.
    ReadDone { slot: u32 },
    /// A WRITE (or zeroing) for `slot` was acknowledged.
    WriteDone { slot: u32, len: u64, zero: bool },
    /// FLUSH acknowledged.
    Flushed,
    /// A send referring to the other side's receive block finished.
    Release { block: u32 },
    /// BLOCK_STATUS answer: extents from the start of the asked range.
    Extents { extents: Vec<Extent> },
    /// BLOCK_STATUS answer of the dirty bitmap's context, likewise.
    DirtyExtents { extents: Vec<DirtyExtent> },
    /// The BLOCK_STATUS for [offset, offset+len) completed (or failed,
    /// when `ok` is false: the range is then treated as data).
    StatusDone { ok: bool },
    /// The server answered a request with an error: the lane sends it
    /// again (`resend`) or fails (a BLOCK_STATUS: reads its range).
    Failed(Box<FailedRequest>),
}

/// Completion index of a connection's send (in the user_data's low bits).
const SEND: u64 = 0;
/// ... and of its receive.
const RECV: u64 = 1;
/// ... and of the wait for the rest of a READ payload (splice mode).
const POLL: u64 = 2;

pub struct NbdConn {
    /// "source URI" or "destination URI", for messages.
    pub name: String,
    /// The end of the copy this connection is: every error it raises
    /// is about that side.
    pub side: Side,
    /// The socket, for the system calls made here (splice mode, the
    /// shutdown of a lost connection); its owner closes it.
    fd: RawFd,
    /// ... as registered with the worker's engine (`attach`): what
    /// operations name.
    efd: Fd,
    info: Negotiated,
    parser: ReplyParser,
    book: RequestBook,
    /// Flags of every READ: DF where the destination needs whole requests
    /// (a reply in one chunk goes on without being assembled).
    read_flags: u16,
    send: SendQueue,
    recv: RecvBuf,
    broken: bool,
    /// Source in splice mode.
    splice: Option<SpliceIn>,
    /// Destination in splice mode: every send is a direct system call, in
    /// order, so pipe payloads can follow their headers.
    sync_send: Option<WaitLimits>,
    /// ... and the socket's status flags then (splice_out_now sets
    /// O_NONBLOCK around each move).
    sync_flags: libc::c_int,
    /// A receive is in the ring.
    recv_busy: bool,
    /// Reconnecting after a lost connection (`--retries`), when on.
    retry: Option<Box<Retry>>,
    /// Requests answered with an error may be sent again (`--retries`):
    /// payloads are held until the reply, READ chunks handed on counted.
    resend: bool,
    /// nbds://: sends encrypted, receives decrypted (crate::tls::conn).
    tls: Option<TlsConn>,
    /// Bytes the TLS receive in flight decrypts into (at the receive
    /// buffer's tail).
    tls_target: usize,
}

impl NbdConn {
    /// A connection on the negotiated socket `fd` for requests of at most
    /// `request_size` bytes, on `side`; `whole_reads` asks for READ
    /// replies in one chunk where the server can (DF).
    pub fn new(
        fd: RawFd,
        name: String,
        side: Side,
        info: Negotiated,
        request_size: u64,
        whole_reads: bool,
    ) -> NbdConn {
        // The largest message we accept: a READ reply of one request, or a
        // generous bound for replies without payload (error messages).
        let max_msg = (request_size as usize).max(64 << 10) + 64;
        let read_flags = if whole_reads && info.can_df() && info.mode != HeaderMode::Simple {
            consts::NBD_CMD_FLAG_DF
        } else {
            0
        };
        NbdConn {
            name,
            side,
            fd,
            efd: Fd::NONE,
            parser: ReplyParser::new(&info),
            info,
            book: RequestBook::default(),
            read_flags,
            send: SendQueue::new(),
            recv: RecvBuf::new(max_msg),
            broken: false,
            splice: None,
            sync_send: None,
            sync_flags: 0,
            recv_busy: false,
            retry: None,
            resend: false,
            tls: None,
            tls_target: 0,
        }
    }

    /// Runs this connection through its TLS session (never in splice mode).
    pub fn set_tls(&mut self, sess: crate::tls::TlsSession) {
        self.tls = Some(TlsConn::new(sess, self.efd));
    }

    /// Lets the lane send again requests the server answered with an
    /// error (`--retries`).
    pub fn enable_resend(&mut self) {
        self.resend = true;
    }

    /// Whether a request may be sent again (after a reconnect or an
    /// error reply): its payload is then held until the reply, and READ
    /// chunks already handed on are not handed on twice.
    fn resumable(&self) -> bool {
        self.retry.is_some() || self.resend
    }

    /// Sends again a request the server answered with an error (the
    /// lane's decision): the same command at the same offset, with its
    /// payload, under a new cookie.
    pub fn resend(&mut self, f: FailedRequest) -> Result<()> {
        let mut p = f.pending;
        p.failures += 1;
        self.requeue(p, f.delivered)
    }

    /// Queues `p` again (a resend, or a request of a lost connection on
    /// the new one), keeping the READ ranges it handed on already.
    fn requeue(&mut self, p: Pending, delivered: Option<Ranges>) -> Result<()> {
        let flags = if p.cmd == consts::NBD_CMD_READ {
            self.read_flags
        } else {
            p.flags
        };
        let req = Request {
            cmd: p.cmd,
            flags,
            cookie: self.book.cookie(p.slot),
            offset: p.offset,
            length: p.len,
        };
        let cookie = req.cookie;
        self.queue(req, p.slot, p.kind, p.payload, p.block)?;
        self.book.set_failures(cookie, p.failures);
        if let Some(d) = delivered {
            self.book.set_delivered(cookie, d);
        }
        Ok(())
    }

    /// Posts the first receive.
    pub fn start(&mut self, engine: &mut Engine, base: u64) -> Result<()> {
        if self.efd == Fd::NONE {
            self.attach(engine)?;
        }
        self.post_recv(engine, base)
    }

    /// Registers the socket with the worker's engine (its operations
    /// name the registration, never the number).
    fn attach(&mut self, engine: &mut Engine) -> Result<()> {
        engine.unregister(self.efd)?;
        self.efd = engine
            .register(self.fd)
            .map_err(|e| e.at(self.side, &self.name))?;
        if let Some(t) = self.tls.as_mut() {
            t.set_fd(self.efd);
        }
        Ok(())
    }

    pub fn can_issue(&self) -> bool {
        !self.broken
    }

    /// Whether a FLUSH or WRITE_ZEROES is awaiting its reply.
    pub fn slow_pending(&self) -> bool {
        self.book.slow_pending()
    }

    /// Whether BLOCK_STATUS (base:allocation) can be asked.
    pub fn can_block_status(&self) -> bool {
        self.info.can_block_status()
    }

    /// Whether BLOCK_STATUS answers base:allocation (an incremental copy
    /// may have only the dirty bitmap's context).
    pub fn can_allocation_status(&self) -> bool {
        self.info.meta_context_id.is_some()
    }

    /// Payload bytes copied inside user space since the last call.
    pub fn take_memcpy(&mut self) -> u64 {
        std::mem::take(&mut self.recv.memcpy)
    }

    /// The server closed the connection (or reset it): it is broken.
    fn closed(&mut self) -> Error {
        self.broken = true;
        Error::new(
            libc::ECONNRESET,
            format!(
                "{}: server closed the connection with {} request(s) in flight",
                self.name,
                self.book.in_flight()
            ),
        )
        .on(self.side)
    }

    /// A send that failed with `res` (negative errno).  A peer that hung
    /// up (EPIPE, ECONNRESET) is named as such: the send usually just
    /// notices first what the receive would report.
    fn send_failed(&mut self, res: i32) -> Error {
        self.broken = true;
        let cause = Error::from_res("send", res);
        if !matches!(-res, libc::EPIPE | libc::ECONNRESET) {
            return cause.context(&self.name).on(self.side);
        }
        let e = self.closed();
        Error {
            errno: cause.errno,
            msg: format!("{} ({})", e.msg, cause.msg),
            ..e
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::new(libc::EIO, format!("{}: {msg}", self.name)).on(self.side)
    }

    fn request(&mut self, cmd: u16, flags: u16, slot: u32, offset: u64, length: u64) -> Request {
        Request {
            cmd,
            flags,
            cookie: self.book.cookie(slot),
            offset,
            length,
        }
    }

    /// The one way a request is queued: checked against what the server
    /// offers, registered with the parser and the book, and put in the
    /// send queue (its header in front of `payload` when there is room).
    fn queue(
        &mut self,
        req: Request,
        slot: u32,
        kind: Kind,
        payload: Option<Span>,
        block: Option<u32>,
    ) -> Result<()> {
        self.info
            .check_request(&req)
            .map_err(|e| self.err(e.to_string()))?;
        self.parser
            .register(&req)
            .map_err(|e| self.err(e.to_string()))?;
        // A connection that may send a request again keeps the payload's
        // block until the reply.
        let (held, block) = match self.resumable() {
            true => (block, None),
            false => (None, block),
        };
        // A connection that may be resumed keeps a copy of the payload
        // (without room: the header goes in front of the one sent); one
        // that may not keeps none, so the buffer is free once sent.
        let mut payload = payload;
        let kept = match self.retry {
            Some(_) => payload.as_mut().map(Span::share),
            None => None,
        };
        self.book.insert(
            req.cookie,
            Pending {
                slot,
                offset: req.offset,
                len: req.length,
                kind,
                cmd: req.cmd,
                flags: req.flags,
                payload: kept,
                block: held,
                failures: 0,
            },
        );
        let mut hdr = [0u8; 32];
        let n = request::encode(self.info.mode, &req, &mut hdr);
        self.send.push(SendItem::new(&hdr[..n], payload, block));
        Ok(())
    }

    /// Queues READ [offset, offset+len) for `slot`.
    pub fn queue_read(&mut self, slot: u32, offset: u64, len: u64) -> Result<()> {
        let req = self.request(consts::NBD_CMD_READ, self.read_flags, slot, offset, len);
        self.queue(req, slot, Kind::Read, None, None)
    }

    /// Queues WRITE of `data` at `offset` for `slot`.  `block` is a peer
    /// receive block reference handed back as `Release` once sent.
    pub fn queue_write(
        &mut self,
        slot: u32,
        offset: u64,
        data: Span,
        block: Option<u32>,
    ) -> Result<()> {
        let req = self.request(consts::NBD_CMD_WRITE, 0, slot, offset, data.len() as u64);
        self.queue(req, slot, Kind::Write, Some(data), block)
    }

    /// Queues making [offset, offset+len) read as zeroes: WRITE_ZEROES
    /// (with NO_HOLE when `allocated`) when the server has it, else WRITEs
    /// of zeroes.  Returns how many requests it took.
    pub fn queue_zero(&mut self, slot: u32, offset: u64, len: u64, allocated: bool) -> Result<u32> {
        let wz = self.info.can_write_zeroes();
        let max = self.info.max_zero_len();
        let flags = if allocated {
            consts::NBD_CMD_FLAG_NO_HOLE
        } else {
            0
        };
        let mut n = 0;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let piece = (end - at).min(max);
            if wz {
                let req = self.request(consts::NBD_CMD_WRITE_ZEROES, flags, slot, at, piece);
                self.queue(req, slot, Kind::Zero, None, None)?;
            } else {
                let req = self.request(consts::NBD_CMD_WRITE, 0, slot, at, piece);
                let zeroes = Span::zeroes(piece as usize);
                self.queue(req, slot, Kind::Zero, Some(zeroes), None)?;
            }
            at += piece;
            n += 1;
        }
        Ok(n)
    }

    /// Queues BLOCK_STATUS for [offset, offset+len).
    pub fn queue_block_status(&mut self, offset: u64, len: u64) -> Result<()> {
        let req = self.request(consts::NBD_CMD_BLOCK_STATUS, 0, 0, offset, len);
        self.queue(req, u32::MAX, Kind::Status, None, None)
    }

    /// Queues FLUSH; Ok(false) when the server cannot flush (nothing to do).
    pub fn queue_flush(&mut self) -> Result<bool> {
        if !self.info.can_flush() {
            return Ok(false);
        }
        let req = self.request(consts::NBD_CMD_FLUSH, 0, 0, 0, 0);
        self.queue(req, 0, Kind::Flush, None, None)?;
        Ok(true)
    }

    /// Drops a reference to one of this connection's receive blocks.
    pub fn release(&mut self, block: u32) {
        self.recv.pool.release(block);
    }

    /// Takes one more reference to one of this connection's receive blocks.
    pub fn hold(&mut self, block: u32) {
        self.recv.pool.hold(block);
    }

    /// Starts a send of everything queued, if none is in flight.
    pub fn kick(&mut self, engine: &mut Engine, base: u64) -> Result<()> {
        if self.broken {
            return Ok(());
        }
        if self.sync_send.is_some() {
            return self.send_queue_now(engine, base, false);
        }
        if self.send.start_batch() {
            let r = self.post_send(engine, base);
            self.broken |= r.is_err();
            r.map_err(|e| e.context(&self.name).on(self.side))?;
        }
        Ok(())
    }

    /// Posts the send of the rest of the batch (encrypted with TLS).
    fn post_send(&mut self, engine: &mut Engine, base: u64) -> Result<()> {
        if self.efd == Fd::NONE {
            self.attach(engine)?; // a send before `start`
        }
        match self.tls.as_mut() {
            None => self.send.post(engine, self.efd, base | SEND),
            Some(t) => {
                self.send.busy = true;
                let (chunks, skip) = self.send.batch();
                t.post_send(engine, chunks, skip, base | SEND)
            }
        }
    }

    fn post_recv(&mut self, engine: &mut Engine, base: u64) -> Result<()> {
        // Splice mode: never read past the message (its payload is spliced).
        let greedy = self.splice.is_none();
        let first = self.first_read();
        let Some(t) = self.tls.as_mut() else {
            let who = (self.name.as_str(), self.side);
            self.recv
                .post(engine, self.efd, base | RECV, first, greedy, who)?;
            self.recv_busy = true;
            return Ok(());
        };
        let who = (self.name.as_str(), self.side);
        let (_, _, len) = self.recv.target(first, greedy, who)?;
        self.tls_target = len;
        // The target, [tail, tail+len) of the held block, is untouched by
        // anything else until this receive completes (as a plain one).
        let r = t.post_recv(engine, self.recv.target_mut(len), base | RECV);
        self.broken |= r.is_err();
        r.map_err(|e| e.context(&self.name).on(self.side))
    }

    /// Bytes to read at a message boundary when nothing of the next
    /// message is known.  In splice mode reads must not run into a READ
    /// payload: a header, plus (with structured replies) the 8-byte offset
    /// of a data chunk, since every message is at least that long or is
    /// followed by another header (so the extra bytes are never payload).
    fn first_read(&self) -> usize {
        match (self.info.mode, self.splice.is_some()) {
            (HeaderMode::Extended, true) => 40,
            (HeaderMode::Structured, true) => 28,
            (HeaderMode::Extended, false) => 32,
            (HeaderMode::Structured, false) => 20,
            (HeaderMode::Simple, _) => 16,
        }
    }

    /// Handles a completion of this connection's send or receive.
    pub fn complete(
        &mut self,
        engine: &mut Engine,
        base: u64,
        idx: u64,
        res: i32,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        if idx == RECV {
            self.recv_busy = false;
        }
        if self.is_lost() {
            return self.lost_completion(idx);
        }
        if idx == POLL {
            return self.payload_ready(engine, base, res, events);
        }
        if idx == SEND {
            if res < 0 {
                self.send.busy = false;
                let e = self.send_failed(res);
                return self.lost_or(e, res);
            }
            let n = match self.tls.as_mut() {
                None => res as usize,
                Some(t) => match t.send_done(engine, res, base | SEND) {
                    Ok(true) => self.send.unsent(),
                    Ok(false) => return Ok(()), // the rest is posted
                    Err(e) => {
                        self.send.busy = false;
                        self.broken = true;
                        let res = -e.errno;
                        return self.lost_or(e.context(&self.name).on(self.side), res);
                    }
                },
            };
            // No allocation per completion: released blocks go straight
            // into the lane's events.
            let done = self
                .send
                .sent(n, &mut |block| events.push(ConnEvent::Release { block }));
            return if done {
                self.kick(engine, base)
            } else {
                self.post_send(engine, base)
            };
        }
        let res = match self.tls.as_mut() {
            None => res,
            Some(t) => match t.recv_done(
                engine,
                res,
                base | RECV,
                self.recv.target_mut(self.tls_target),
            ) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(()), // more ciphertext is being received
                Err(e) => {
                    // A TLS cut (ECONNRESET) is a lost connection too.
                    self.broken = true;
                    let (n, res) = (self.book.in_flight(), -e.errno);
                    let e = e
                        .context(format!("{} ({n} request(s) in flight)", self.name))
                        .on(self.side);
                    return self.lost_or(e, res);
                }
            },
        };
        if res < 0 && res != -libc::ECONNRESET {
            self.broken = true;
            let e = Error::from_res(format!("{}: receive", self.name), res).on(self.side);
            return self.lost_or(e, res);
        }
        if res <= 0 {
            let e = self.closed();
            return self.lost_or(e, res);
        }
        self.recv.tail += res as usize;
        if let Some(sp) = self.splice.as_mut() {
            sp.budget = DIRECT_BUDGET;
        }
        self.recv_more(engine, base, events)
    }

    /// Parses what arrived; in splice mode keeps receiving directly while
    /// messages are waiting (up to a budget), stopping whenever READ data
    /// was put into the pipe.  Otherwise posts the next receive.
    fn recv_more(
        &mut self,
        engine: &mut Engine,
        base: u64,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        loop {
            if self.parse(events)? {
                // Data in the pipe (the worker resumes us), or the rest
                // of a payload awaited.
                return self.poll_payload(engine, base);
            }
            if self.splice.as_ref().is_some_and(|s| s.budget > 0) && self.recv_direct()? {
                continue;
            }
            return self.post_recv(engine, base);
        }
    }

    /// Parses the messages received.  True when it stopped with READ data
    /// in the pipe (splice mode).
    fn parse(&mut self, events: &mut Vec<ConnEvent>) -> Result<bool> {
        loop {
            let parsed = match self.parser.parse(self.recv.unparsed()) {
                Ok(p) => p,
                Err(e) => {
                    self.broken = true;
                    return Err(self.err(format!("protocol error: {e}")));
                }
            };
            let (len, chunk, done) = match parsed {
                Parse::Incomplete { need } => {
                    self.recv.need = need;
                    return Ok(false);
                }
                Parse::Message { len, chunk, done } => (len, chunk, done),
            };
            self.recv.need = None;
            match chunk {
                Chunk::Data {
                    cookie,
                    offset,
                    payload,
                } if self.splice.is_some() => {
                    // Only the prefix is here; the payload follows in the
                    // stream.
                    let slot = self.book.slot_of(&self.name, self.side, cookie)?;
                    self.recv.head += len;
                    if let Some(sp) = self.splice.as_mut() {
                        sp.rest = Some(PipeRest {
                            slot,
                            offset,
                            left: payload.len(),
                            done,
                        });
                    }
                    self.pipe_step(events)?;
                    return Ok(true);
                }
                Chunk::Data {
                    cookie,
                    offset,
                    payload,
                } if self.resumable() => {
                    self.resumable_data(cookie, offset, payload.start, payload.len(), events)?
                }
                Chunk::Hole {
                    cookie,
                    offset,
                    len,
                } if self.resumable() => self.resumable_hole(cookie, offset, len, events)?,
                Chunk::Data {
                    cookie,
                    offset,
                    payload,
                } => {
                    let slot = self.book.slot_of(&self.name, self.side, cookie)?;
                    let (data, block) = self.recv.take_span(payload.start, payload.len());
                    events.push(ConnEvent::Data {
                        slot,
                        offset,
                        data,
                        block,
                    });
                }
                Chunk::Hole {
                    cookie,
                    offset,
                    len,
                } => {
                    let slot = self.book.slot_of(&self.name, self.side, cookie)?;
                    events.push(ConnEvent::Hole {
                        slot,
                        offset,
                        len: len as u32,
                    });
                }
                Chunk::BlockStatus {
                    extents,
                    dirty_bitmap: true,
                    ..
                } => {
                    let extents = extents.iter().map(|e| DirtyExtent {
                        offset: e.offset,
                        len: e.len,
                        dirty: e.flags & 1 != 0,
                    });
                    events.push(ConnEvent::DirtyExtents {
                        extents: extents.collect(),
                    });
                }
                Chunk::BlockStatus { extents, .. } => {
                    events.push(ConnEvent::Extents {
                        extents: extents
                            .iter()
                            .map(|e| Extent {
                                offset: e.offset,
                                len: e.len,
                                zero: e.flags & consts::NBD_STATE_ZERO != 0,
                            })
                            .collect(),
                    });
                }
                Chunk::None | Chunk::Error { .. } => {}
            }
            self.recv.head += len;
            if let Some(c) = done {
                // A request that failed keeps its payload's block: the
                // lane may send it again.
                if c.result.is_ok() {
                    let held = self.book.held_block(c.cookie);
                    events.extend(held.map(|block| ConnEvent::Release { block }));
                }
                let ev = self
                    .book
                    .complete(&self.name, self.side, c.cookie, c.result)?;
                events.push(ev);
            }
        }
    }

    /// After the ring is drained: tells the server we are leaving (DISC)
    /// when the stream is at a message boundary.
    pub fn finish(&mut self) {
        if self.broken || self.send.busy {
            return;
        }
        let mut buf = [0u8; 32];
        let n = request::encode(self.info.mode, &request::DISC, &mut buf);
        if let Some(t) = self.tls.as_mut() {
            // Through TLS, then close_notify; never blocking.
            t.goodbye(&buf[..n]);
            self.broken = true;
            return;
        }
        // Best effort: the server may be gone already.
        let _ = crate::sys::send(self.fd, &buf[..n], libc::MSG_DONTWAIT);
        self.broken = true;
    }
}
