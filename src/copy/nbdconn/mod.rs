// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! One NBD connection inside a worker: batched sends (one sendmsg in
//! flight per socket, so the byte stream never interleaves), the
//! large-buffer receive with replies parsed in place, and zero-copy
//! forwarding (WRITE headers written over the reply prefix in front of
//! the data).  In splice mode a source connection receives exact messages
//! and moves READ payloads into the lane's pipe, and a destination
//! connection sends synchronously so payloads can follow from the pipe.

use super::buf::BlockPool;
use super::splice::Ctl;
use super::worker::{zero_buffer, LaneParams};
use crate::error::{Error, Result};
use crate::proto::reply::{Chunk, Parse, ReplyParser};
use crate::proto::request::{self, Request};
use crate::proto::{consts, HeaderMode, Negotiated};
use crate::ring::Ring;
use io_uring::{opcode, types};
use std::collections::HashMap;
use std::os::fd::RawFd;

/// What a completion on this connection produced, for the worker.
#[derive(Debug)]
pub enum RecvEvent {
    /// READ data for `slot`: `len` bytes at `ptr` (inside receive block
    /// `block`, which holds one reference for this event), with `room`
    /// writable bytes in front of it.
    Data {
        slot: u32,
        offset: u64,
        ptr: *mut u8,
        len: u32,
        room: usize,
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
    /// BLOCK_STATUS answer: extents (offset, length, reads-as-zero) from
    /// the start of the asked range, clamped to it.
    Extents { extents: Vec<(u64, u64, bool)> },
    /// BLOCK_STATUS answer of the dirty bitmap's context: extents
    /// (offset, length, dirty), like `Extents`.
    DirtyExtents { extents: Vec<(u64, u64, bool)> },
    /// The BLOCK_STATUS for [offset, offset+len) completed (or failed,
    /// when `ok` is false: the range is then treated as data).
    StatusDone { offset: u64, len: u64, ok: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Zero,
    Flush,
    Status,
}

impl Kind {
    /// Requests a server may take long to answer without being stuck.
    fn is_slow(self) -> bool {
        matches!(self, Kind::Zero | Kind::Flush)
    }
}

struct Pending {
    slot: u32,
    offset: u64,
    len: u64,
    kind: Kind,
}

/// One item of the send stream.
enum SendItem {
    /// A request without payload; bytes inline.
    Hdr { buf: [u8; 32], len: u8 },
    /// Header already written in front of the data: one contiguous slice.
    Slice {
        ptr: *const u8,
        len: usize,
        block: Option<u32>,
    },
    /// Header inline, data elsewhere (no room in front of it).
    HdrData {
        buf: [u8; 32],
        hlen: u8,
        ptr: *const u8,
        len: usize,
        block: Option<u32>,
    },
}

impl SendItem {
    fn len(&self) -> usize {
        match self {
            SendItem::Hdr { len, .. } => *len as usize,
            SendItem::Slice { len, .. } => *len,
            SendItem::HdrData { hlen, len, .. } => *hlen as usize + *len,
        }
    }
    fn block(&self) -> Option<u32> {
        match self {
            SendItem::Hdr { .. } => None,
            SendItem::Slice { block, .. } | SendItem::HdrData { block, .. } => *block,
        }
    }
}

fn iovec(p: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: p as *mut libc::c_void,
        iov_len: len,
    }
}

mod splice_mode;
use splice_mode::{PipeRest, SpliceIn, DIRECT_BUDGET};

const SEND: u64 = 0;
const RECV: u64 = 1;
/// sendmsg takes at most IOV_MAX (1024) iovecs; items use up to two.
const MAX_BATCH: usize = 256;

pub struct NbdConn {
    pub name: String,
    fd: RawFd,
    info: Negotiated,
    parser: ReplyParser,
    next_seq: u64,
    reqs: HashMap<u64, Pending>,
    /// Flags of every READ: DF where the destination needs whole requests
    /// (a reply in one chunk goes on without being assembled).
    read_flags: u16,
    /// Requests in `reqs` that may legitimately take long (FLUSH,
    /// WRITE_ZEROES): the stall limit is then the slow one.
    slow: usize,
    // Sending: `batch` is owned by the kernel while `send_busy`.
    queue: Vec<SendItem>,
    batch: Vec<SendItem>,
    batch_len: usize,
    batch_sent: usize,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    send_busy: bool,
    // Receiving into pool block `cur`, bytes [head, tail) not yet parsed.
    pool: BlockPool,
    cur: u32,
    head: usize,
    tail: usize,
    need: Option<usize>,
    max_msg: usize,
    recv_busy: bool,
    /// Payload bytes memcpy'd (moving a partial message between blocks).
    pub memcpy: u64,
    broken: bool,
    /// Source in splice mode.
    splice: Option<SpliceIn>,
    /// Destination in splice mode: every send is a direct system call, in
    /// order, so pipe payloads can follow their headers.
    sync: Option<Ctl>,
}

impl NbdConn {
    pub fn new(fd: RawFd, name: String, info: Negotiated, p: &LaneParams) -> NbdConn {
        // The largest message we accept: a READ reply of one request, or a
        // generous bound for replies without payload (error messages).
        let max_msg = (p.request_size as usize).max(64 << 10) + 64;
        let block_size = (4 * max_msg).max(2 << 20);
        let mut pool = BlockPool::new(block_size);
        let read_flags = if p.stage_reads && info.can_df() && info.mode != HeaderMode::Simple {
            consts::NBD_CMD_FLAG_DF
        } else {
            0
        };
        let cur = pool.take();
        NbdConn {
            name,
            fd,
            parser: ReplyParser::new(&info),
            info,
            next_seq: 1,
            reqs: HashMap::new(),
            slow: 0,
            read_flags,
            queue: Vec::new(),
            batch: Vec::new(),
            batch_len: 0,
            batch_sent: 0,
            iov: Vec::with_capacity(2 * MAX_BATCH),
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            send_busy: false,
            pool,
            cur,
            head: 0,
            tail: 0,
            need: None,
            max_msg,
            recv_busy: false,
            memcpy: 0,
            broken: false,
            splice: None,
            sync: None,
        }
    }

    /// Posts the first receive.
    pub fn start(&mut self, ring: &mut Ring, base: u64) -> Result<()> {
        self.post_recv(ring, base)
    }

    pub fn can_issue(&self) -> bool {
        !self.broken
    }

    fn cookie(&mut self, slot: u32) -> u64 {
        let c = (self.next_seq << 24) | slot as u64;
        self.next_seq += 1;
        c
    }

    fn register(&mut self, req: &Request, p: Pending) -> Result<()> {
        self.info
            .check_request(req)
            .map_err(|e| self.err(e.to_string()))?;
        self.parser
            .register(req)
            .map_err(|e| self.err(e.to_string()))?;
        if p.kind.is_slow() {
            self.slow += 1;
        }
        self.reqs.insert(req.cookie, p);
        Ok(())
    }

    /// Whether a FLUSH or WRITE_ZEROES is awaiting its reply.
    pub fn slow_pending(&self) -> bool {
        self.slow > 0
    }

    /// The server closed the connection (or reset it): it is broken.
    fn closed(&mut self) -> Error {
        self.broken = true;
        Error::new(
            libc::ECONNRESET,
            format!(
                "{}: server closed the connection with {} request(s) in flight",
                self.name,
                self.reqs.len()
            ),
        )
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::new(libc::EIO, format!("{}: {msg}", self.name))
    }

    fn push_hdr(&mut self, req: &Request) {
        let mut buf = [0u8; 32];
        let n = request::encode(self.info.mode, req, &mut buf);
        self.queue.push(SendItem::Hdr { buf, len: n as u8 });
    }

    /// Queues READ [offset, offset+len) for `slot`.
    pub fn queue_read(&mut self, slot: u32, offset: u64, len: u64) -> Result<()> {
        let req = Request {
            cmd: consts::NBD_CMD_READ,
            flags: self.read_flags,
            cookie: self.cookie(slot),
            offset,
            length: len,
        };
        self.register(
            &req,
            Pending {
                slot,
                offset,
                len,
                kind: Kind::Read,
            },
        )?;
        self.push_hdr(&req);
        Ok(())
    }

    /// Queues WRITE of `len` bytes at `ptr` to `offset`.  With `room` >=
    /// the header size the header is written in front of the data and
    /// both leave as one slice; `block` is a peer receive block reference
    /// handed back as `Release` once sent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn queue_write(
        &mut self,
        slot: u32,
        offset: u64,
        ptr: *mut u8,
        len: u32,
        room: usize,
        block: Option<u32>,
    ) -> Result<()> {
        let req = self.register_write(slot, offset, len)?;
        let mut buf = [0u8; 32];
        let n = request::encode(self.info.mode, &req, &mut buf);
        if room >= n {
            // SAFETY: the caller guarantees `room` writable bytes in front
            // of ptr that nothing else uses (the already-parsed reply
            // prefix, or a slot's header room).
            let hptr = unsafe { ptr.sub(n) };
            // SAFETY: as above; n <= 32 bytes, non-overlapping with buf.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), hptr, n) };
            self.queue.push(SendItem::Slice {
                ptr: hptr,
                len: n + len as usize,
                block,
            });
        } else {
            self.queue.push(SendItem::HdrData {
                buf,
                hlen: n as u8,
                ptr,
                len: len as usize,
                block,
            });
        }
        Ok(())
    }

    /// Registers WRITE [offset, offset+len) for `slot`; the caller sends it.
    fn register_write(&mut self, slot: u32, offset: u64, len: u32) -> Result<Request> {
        let req = Request {
            cmd: consts::NBD_CMD_WRITE,
            flags: 0,
            cookie: self.cookie(slot),
            offset,
            length: len as u64,
        };
        self.register(
            &req,
            Pending {
                slot,
                offset,
                len: len as u64,
                kind: Kind::Write,
            },
        )?;
        Ok(req)
    }

    /// Queues making [offset, offset+len) read as zeroes: WRITE_ZEROES
    /// (with NO_HOLE when `allocated`) when the server has it, else WRITEs
    /// of zeroes.  Returns how many requests it took.
    pub fn queue_zero(&mut self, slot: u32, offset: u64, len: u64, allocated: bool) -> Result<u32> {
        let wz = self.info.can_write_zeroes();
        // Compact requests carry 32-bit lengths; keep pieces aligned.
        let max = if wz && self.info.mode == HeaderMode::Extended {
            super::worker::BIG_PIECE
        } else if wz {
            super::worker::ZERO_PIECE
        } else {
            (self.info.block_size.max_payload as u64).min(32 << 20)
        };
        let mut n = 0;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let piece = (end - at).min(max);
            let p = Pending {
                slot,
                offset: at,
                len: piece,
                kind: Kind::Zero,
            };
            if wz {
                let req = Request {
                    cmd: consts::NBD_CMD_WRITE_ZEROES,
                    flags: if allocated {
                        consts::NBD_CMD_FLAG_NO_HOLE
                    } else {
                        0
                    },
                    cookie: self.cookie(slot),
                    offset: at,
                    length: piece,
                };
                self.register(&req, p)?;
                self.push_hdr(&req);
            } else {
                let req = Request {
                    cmd: consts::NBD_CMD_WRITE,
                    flags: 0,
                    cookie: self.cookie(slot),
                    offset: at,
                    length: piece,
                };
                self.register(&req, p)?;
                let mut buf = [0u8; 32];
                let hn = request::encode(self.info.mode, &req, &mut buf);
                self.queue.push(SendItem::HdrData {
                    buf,
                    hlen: hn as u8,
                    ptr: zero_buffer(piece as usize),
                    len: piece as usize,
                    block: None,
                });
            }
            at += piece;
            n += 1;
        }
        Ok(n)
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

    /// Queues BLOCK_STATUS for [offset, offset+len).
    pub fn queue_block_status(&mut self, offset: u64, len: u64) -> Result<()> {
        let req = Request {
            cmd: consts::NBD_CMD_BLOCK_STATUS,
            flags: 0,
            cookie: self.cookie(0),
            offset,
            length: len,
        };
        self.register(
            &req,
            Pending {
                slot: u32::MAX,
                offset,
                len,
                kind: Kind::Status,
            },
        )?;
        self.push_hdr(&req);
        Ok(())
    }

    /// Queues FLUSH; Ok(false) when the server cannot flush (nothing to do).
    pub fn queue_flush(&mut self) -> Result<bool> {
        if !self.info.can_flush() {
            return Ok(false);
        }
        let req = Request {
            cmd: consts::NBD_CMD_FLUSH,
            flags: 0,
            cookie: self.cookie(0),
            offset: 0,
            length: 0,
        };
        self.register(
            &req,
            Pending {
                slot: 0,
                offset: 0,
                len: 0,
                kind: Kind::Flush,
            },
        )?;
        self.push_hdr(&req);
        Ok(true)
    }

    /// Drops a reference to one of this connection's receive blocks.
    pub fn release(&mut self, block: u32) {
        self.pool.release(block);
    }

    /// Takes one more reference to one of this connection's receive blocks.
    pub fn hold(&mut self, block: u32) {
        self.pool.hold(block);
    }

    /// Starts a send of everything queued, if none is in flight.
    pub fn kick(&mut self, ring: &mut Ring, base: u64) -> Result<()> {
        if self.send_busy || self.queue.is_empty() || self.broken {
            return Ok(());
        }
        if self.sync.is_some() {
            return self.send_queue_now(false);
        }
        let n = self.queue.len().min(MAX_BATCH);
        debug_assert!(self.batch.is_empty());
        self.batch.extend(self.queue.drain(..n));
        self.batch_len = self.batch.iter().map(SendItem::len).sum();
        self.batch_sent = 0;
        self.post_send(ring, base)
    }

    /// (Re)builds the iovecs for the unsent part of the batch and submits.
    fn post_send(&mut self, ring: &mut Ring, base: u64) -> Result<()> {
        self.iov.clear();
        let mut skip = self.batch_sent;
        for item in &self.batch {
            let parts: [(*const u8, usize); 2] = match item {
                SendItem::Hdr { buf, len } => [(buf.as_ptr(), *len as usize), (buf.as_ptr(), 0)],
                SendItem::Slice { ptr, len, .. } => [(*ptr, *len), (*ptr, 0)],
                SendItem::HdrData {
                    buf,
                    hlen,
                    ptr,
                    len,
                    ..
                } => [(buf.as_ptr(), *hlen as usize), (*ptr, *len)],
            };
            for (p, l) in parts {
                if l == 0 {
                    continue;
                }
                if skip >= l {
                    skip -= l;
                    continue;
                }
                self.iov.push(libc::iovec {
                    // SAFETY: skip < l, inside the part.
                    iov_base: unsafe { p.add(skip) } as *mut libc::c_void,
                    iov_len: l - skip,
                });
                skip = 0;
            }
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        let e = opcode::SendMsg::new(types::Fd(self.fd), &*self.msg as *const libc::msghdr)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
            .user_data(base | SEND);
        self.send_busy = true;
        // SAFETY: msg (boxed), iov and the batch items (inline headers and
        // the buffers they point to) are not touched until this send's
        // completion: `batch`/`iov` change only in complete() after it, and
        // referenced blocks/slots are held until the Release/WriteDone
        // events that follow it.  The worker drains the ring before any of
        // them is dropped.
        unsafe { ring.push(&e) }
    }

    fn post_recv(&mut self, ring: &mut Ring, base: u64) -> Result<()> {
        let bs = self.pool.block_size();
        if self.head == self.tail && self.pool_refs_only_ours() {
            self.head = 0;
            self.tail = 0;
        }
        let partial = self.tail - self.head;
        let want = self.need.unwrap_or(self.first_read()).max(partial + 1);
        if want > self.max_msg {
            return Err(self.err(format!(
                "server reply of {want} bytes is larger than any reply asked for"
            )));
        }
        if self.head + want > bs {
            // The message would straddle the block end: continue it at the
            // start of a fresh block.  Thanks to the exact reads near the
            // end this is normally only a header.
            let new = self.pool.take();
            let (h, t, old) = (self.head, self.tail, self.cur);
            let src = self.pool.ptr(old);
            let dst = self.pool.ptr(new);
            // SAFETY: distinct blocks of block_size bytes; t <= bs.
            unsafe { std::ptr::copy_nonoverlapping(src.add(h), dst, t - h) };
            self.memcpy += (t - h) as u64;
            self.pool.release(old);
            self.cur = new;
            self.head = 0;
            self.tail = partial;
        }
        // Greedy reads fill the block up to max_msg before its end, so any
        // message that starts inside that part fits; past it, read exactly
        // the rest of the current message (or the next header).
        let greedy_end = bs - self.max_msg;
        // Splice mode: never read past the message (its payload is spliced).
        let len = if self.splice.is_none() && self.tail + (64 << 10) <= greedy_end {
            greedy_end - self.tail
        } else {
            self.head + want - self.tail
        };
        // SAFETY: tail + len <= bs (both branches), inside the block.
        let ptr = unsafe { self.pool.ptr(self.cur).add(self.tail) };
        let e = opcode::Recv::new(types::Fd(self.fd), ptr, len as u32)
            .build()
            .user_data(base | RECV);
        self.recv_busy = true;
        // SAFETY: the block is held (our reference on `cur`) until this
        // receive completes; nothing else reads or writes [tail, tail+len)
        // meanwhile; the worker drains the ring before dropping the pool.
        unsafe { ring.push(&e) }
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

    fn pool_refs_only_ours(&self) -> bool {
        self.pool.refs(self.cur) == 1
    }

    /// Handles a completion of this connection's send or receive.
    pub fn complete(
        &mut self,
        ring: &mut Ring,
        base: u64,
        idx: u64,
        res: i32,
        _flags: u32,
        events: &mut Vec<RecvEvent>,
    ) -> Result<()> {
        match idx {
            SEND => {
                self.send_busy = false;
                if res < 0 {
                    self.broken = true;
                    return Err(Error::from_res(format!("{}: send", self.name), res));
                }
                self.batch_sent += res as usize;
                if self.batch_sent < self.batch_len {
                    return self.post_send(ring, base);
                }
                for item in self.batch.drain(..) {
                    if let Some(block) = item.block() {
                        events.push(RecvEvent::Release { block });
                    }
                }
                self.kick(ring, base)
            }
            _ => {
                self.recv_busy = false;
                if res < 0 && res != -libc::ECONNRESET {
                    self.broken = true;
                    return Err(Error::from_res(format!("{}: receive", self.name), res));
                }
                if res <= 0 {
                    return Err(self.closed());
                }
                self.tail += res as usize;
                if let Some(sp) = self.splice.as_mut() {
                    sp.budget = DIRECT_BUDGET;
                }
                self.recv_more(ring, base, events)
            }
        }
    }

    /// Parses what arrived; in splice mode keeps receiving directly while
    /// messages are waiting (up to a budget), stopping whenever READ data
    /// was put into the pipe.  Otherwise posts the next receive.
    fn recv_more(&mut self, ring: &mut Ring, base: u64, events: &mut Vec<RecvEvent>) -> Result<()> {
        loop {
            if self.parse(events)? {
                return Ok(()); // data in the pipe: the worker resumes us
            }
            if self.splice.as_ref().is_some_and(|s| s.budget > 0) && self.recv_direct()? {
                continue;
            }
            return self.post_recv(ring, base);
        }
    }

    /// Parses the messages received.  True when it stopped with READ data
    /// in the pipe (splice mode).
    fn parse(&mut self, events: &mut Vec<RecvEvent>) -> Result<bool> {
        loop {
            let base = self.pool.ptr(self.cur);
            let buf = &self.pool.slice(self.cur)[self.head..self.tail];
            let parsed = match self.parser.parse(buf) {
                Ok(p) => p,
                Err(e) => {
                    self.broken = true;
                    return Err(self.err(format!("protocol error: {e}")));
                }
            };
            match parsed {
                Parse::Incomplete { need } => {
                    self.need = need;
                    return Ok(false);
                }
                Parse::Message { len, chunk, done } => {
                    self.need = None;
                    match chunk {
                        Chunk::Data {
                            cookie,
                            offset,
                            payload,
                        } if self.splice.is_some() => {
                            // Only the prefix is here; the payload follows
                            // in the stream.
                            let slot = self.slot_of(cookie)?;
                            self.head += len;
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
                        } => {
                            let slot = self.slot_of(cookie)?;
                            self.pool.hold(self.cur);
                            events.push(RecvEvent::Data {
                                slot,
                                offset,
                                // SAFETY: head + payload.end <= tail <= bs.
                                ptr: unsafe { base.add(self.head + payload.start) },
                                len: payload.len() as u32,
                                room: payload.start,
                                block: self.cur,
                            });
                        }
                        Chunk::Hole {
                            cookie,
                            offset,
                            len,
                        } => {
                            let slot = self.slot_of(cookie)?;
                            events.push(RecvEvent::Hole {
                                slot,
                                offset,
                                len: len as u32,
                            });
                        }
                        Chunk::BlockStatus {
                            extents,
                            dirty_bitmap: false,
                            ..
                        } => {
                            events.push(RecvEvent::Extents {
                                extents: extents
                                    .iter()
                                    .map(|e| {
                                        (e.offset, e.len, e.flags & consts::NBD_STATE_ZERO != 0)
                                    })
                                    .collect(),
                            });
                        }
                        Chunk::BlockStatus { extents, .. } => {
                            events.push(RecvEvent::DirtyExtents {
                                extents: extents
                                    .iter()
                                    .map(|e| (e.offset, e.len, e.flags & 1 != 0))
                                    .collect(),
                            });
                        }
                        _ => {}
                    }
                    self.head += len;
                    if let Some(c) = done {
                        self.completed(c.cookie, c.result, events)?;
                    }
                }
            }
        }
    }

    fn slot_of(&self, cookie: u64) -> Result<u32> {
        self.reqs
            .get(&cookie)
            .map(|p| p.slot)
            .ok_or_else(|| self.err(format!("reply for unknown cookie {cookie}")))
    }

    fn completed(
        &mut self,
        cookie: u64,
        result: std::result::Result<(), crate::proto::reply::RequestError>,
        events: &mut Vec<RecvEvent>,
    ) -> Result<()> {
        let p = self
            .reqs
            .remove(&cookie)
            .ok_or_else(|| self.err(format!("reply for unknown cookie {cookie}")))?;
        if p.kind.is_slow() {
            self.slow -= 1;
        }
        if p.kind == Kind::Status {
            // A failed block status is not fatal: the range is read.
            events.push(RecvEvent::StatusDone {
                offset: p.offset,
                len: p.len,
                ok: result.is_ok(),
            });
            return Ok(());
        }
        if let Err(e) = result {
            let what = match p.kind {
                Kind::Status => "BLOCK_STATUS",
                Kind::Read => "READ",
                Kind::Write => "WRITE",
                Kind::Zero => "WRITE_ZEROES",
                Kind::Flush => "FLUSH",
            };
            return Err(Error::new(
                e.errno,
                format!(
                    "{}: {what} at offset {} length {} failed: {e}",
                    self.name, p.offset, p.len
                ),
            ));
        }
        events.push(match p.kind {
            Kind::Read => RecvEvent::ReadDone { slot: p.slot },
            Kind::Write => RecvEvent::WriteDone {
                slot: p.slot,
                len: p.len,
                zero: false,
            },
            Kind::Zero => RecvEvent::WriteDone {
                slot: p.slot,
                len: p.len,
                zero: true,
            },
            Kind::Flush | Kind::Status => RecvEvent::Flushed,
        });
        Ok(())
    }

    /// After the ring is drained: tells the server we are leaving (DISC)
    /// when the stream is at a message boundary.
    pub fn finish(&mut self) {
        if self.broken || self.send_busy {
            return;
        }
        let mut buf = [0u8; 32];
        let n = request::encode(self.info.mode, &request::DISC, &mut buf);
        // SAFETY: buf is valid for n bytes during the call.
        unsafe {
            libc::send(
                self.fd,
                buf.as_ptr() as *const libc::c_void,
                n,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        self.broken = true;
    }
}
