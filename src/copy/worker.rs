//! One worker thread: an io_uring event loop driving one or more lanes
//! (a source connection/file paired with a destination one) until the
//! work queue is empty, then flushing and draining.

use super::buf::AlignedBuf;
use super::nbdconn::{NbdConn, RecvEvent};
use super::stats::Shared;
use super::WorkQueue;
use crate::error::{Error, Result};
use crate::ring::Ring;
use io_uring::{opcode, types};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Bytes reserved in front of every file-read buffer, so an NBD WRITE
/// header can be written just before the data and both sent as one slice.
pub const HEADER_ROOM: usize = 64;

/// What a lane reads from.
pub enum SrcIo {
    /// A regular file or block device (`stream` false), or a stream read in
    /// order (`stream` true).
    File {
        fd: RawFd,
        stream: bool,
        name: String,
    },
    Nbd(Box<NbdConn>),
}

/// What a lane writes to.
pub enum DstIo {
    Null,
    File {
        fd: RawFd,
        stream: bool,
        name: String,
    },
    Nbd(Box<NbdConn>),
}

/// Per-job settings every lane needs.
#[derive(Clone)]
pub struct LaneParams {
    pub request_size: u64,
    pub requests: usize,
    /// Bytes the destination can hold (None: unlimited, e.g. a new file).
    pub dst_size: Option<u64>,
    pub flush: bool,
    pub timeout: Option<Duration>,
    pub verbose: bool,
}

struct Slot {
    offset: u64,
    len: u32,
    /// Bytes read so far (file sources; handles short reads).
    filled: u32,
    /// File-source buffer: HEADER_ROOM + request_size bytes.
    buf: Option<AlignedBuf>,
    /// Destination operations still outstanding for this slot.
    parts: u32,
    /// The source side is complete (all data delivered).
    read_done: bool,
    busy: bool,
}

/// A destination write (or zero) in flight.
struct WriteOp {
    slot: u32,
    offset: u64,
    ptr: *mut u8,
    len: u32,
    done: u32,
    /// Receive block holding the data (NBD sources).
    block: Option<u32>,
}

pub struct Lane {
    pub src: SrcIo,
    pub dst: DstIo,
    p: LaneParams,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    ops: Vec<WriteOp>,
    free_ops: Vec<u32>,
    /// Current claimed work range [cur, end).
    cur: u64,
    end: u64,
    /// No more work to claim.
    exhausted: bool,
    /// Stream source: one read in flight at a time.
    stream_reading: bool,
    /// Stream destination: writes queued in offset order, one in flight.
    out_next: u64,
    out_queue: BTreeMap<u64, u32>,
    out_busy: bool,
    flushed: bool,
    flushing: bool,
}

const K_SRC_READ: u64 = 1;
const K_DST_WRITE: u64 = 2;
const K_DST_FSYNC: u64 = 3;
pub(crate) const K_SRC_NBD: u64 = 4;
pub(crate) const K_DST_NBD: u64 = 5;

#[inline]
pub(crate) fn ud(lane: usize, kind: u64, idx: u64) -> u64 {
    ((lane as u64) << 56) | (kind << 48) | (idx & ((1 << 48) - 1))
}

#[inline]
fn un_ud(u: u64) -> (usize, u64, u64) {
    ((u >> 56) as usize, (u >> 48) & 0xff, u & ((1 << 48) - 1))
}

// SAFETY: the raw pointers in a lane (WriteOp::ptr) point into buffers the
// lane itself owns (slot buffers, receive blocks) or into the static zero
// buffer; they move with the lane to its worker thread and are only used
// there.
unsafe impl Send for Lane {}

impl Lane {
    pub fn new(src: SrcIo, dst: DstIo, p: LaneParams) -> Lane {
        let file_src = matches!(src, SrcIo::File { .. });
        let n = p.requests.max(1);
        let slots = (0..n)
            .map(|_| Slot {
                offset: 0,
                len: 0,
                filled: 0,
                buf: if file_src {
                    Some(AlignedBuf::new(HEADER_ROOM + p.request_size as usize))
                } else {
                    None
                },
                parts: 0,
                read_done: false,
                busy: false,
            })
            .collect();
        Lane {
            src,
            dst,
            slots,
            free_slots: (0..n as u32).rev().collect(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            cur: 0,
            end: 0,
            exhausted: false,
            stream_reading: false,
            out_next: 0,
            out_queue: BTreeMap::new(),
            out_busy: false,
            flushed: false,
            flushing: false,
            p,
        }
    }

    fn src_is_stream(&self) -> bool {
        matches!(self.src, SrcIo::File { stream: true, .. })
    }

    fn src_name(&self) -> &str {
        match &self.src {
            SrcIo::File { name, .. } => name,
            SrcIo::Nbd(c) => &c.name,
        }
    }

    fn dst_name(&self) -> &str {
        match &self.dst {
            DstIo::Null => "null:",
            DstIo::File { name, .. } => name,
            DstIo::Nbd(c) => &c.name,
        }
    }

    fn busy_slots(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// All data copied and acknowledged, and flushed if asked.
    fn finished(&self) -> bool {
        self.exhausted && self.busy_slots() == 0 && (!self.p.flush || self.flushed)
    }

    /// Claims the next request-sized piece of work.
    fn claim(&mut self, q: &WorkQueue) -> Option<(u64, u64)> {
        if self.exhausted {
            return None;
        }
        if self.src_is_stream() {
            // Streams are read in order by one lane; the length is what the
            // read returns.
            if self.stream_reading {
                return None;
            }
            return Some((self.cur, self.p.request_size));
        }
        if self.cur >= self.end {
            match q.claim() {
                Some((a, b)) => {
                    self.cur = a;
                    self.end = b;
                }
                None => {
                    self.exhausted = true;
                    return None;
                }
            }
        }
        let len = (self.end - self.cur).min(self.p.request_size);
        let off = self.cur;
        self.cur += len;
        Some((off, len))
    }
}

/// Runs lanes on this thread's ring until they finish, fail or are cancelled.
pub fn run_worker(mut lanes: Vec<Lane>, q: &WorkQueue, shared: &Shared) {
    let entries = lanes.iter().map(|l| l.slots.len() * 2 + 8).sum::<usize>();
    let mut ring = match Ring::new(entries as u32) {
        Ok(r) => r,
        Err(e) => {
            shared.fail(e);
            return;
        }
    };
    let mut w = Worker {
        ring,
        q,
        shared,
        cqes: Vec::with_capacity(256),
        events: Vec::with_capacity(64),
        last_progress: Instant::now(),
    };
    if let Err(e) = w.run(&mut lanes) {
        shared.fail(e);
    }
    // Every exit path: cancel and reap all operations before the buffers
    // they use (in `lanes`) are dropped.
    let clean = w.ring.drain(Duration::from_secs(10), &mut |_, _| {});
    Shared::add(&shared.ring_enters, w.ring.enters);
    if clean {
        for lane in &mut lanes {
            if let SrcIo::Nbd(c) = &mut lane.src {
                c.finish();
            }
            if let DstIo::Nbd(c) = &mut lane.dst {
                c.finish();
            }
        }
    }
    ring = w.ring;
    if !clean {
        // The kernel may still use these buffers: never free them.
        std::mem::forget(lanes);
        std::mem::forget(ring);
        shared.fail(Error::new(
            libc::EIO,
            "I/O operations did not finish after cancellation",
        ));
    }
}

struct Worker<'a> {
    ring: Ring,
    q: &'a WorkQueue,
    shared: &'a Shared,
    cqes: Vec<(u64, i32, u32)>,
    events: Vec<RecvEvent>,
    last_progress: Instant,
}

impl Worker<'_> {
    fn run(&mut self, lanes: &mut [Lane]) -> Result<()> {
        for (i, lane) in lanes.iter_mut().enumerate() {
            if let SrcIo::Nbd(c) = &mut lane.src {
                c.start(&mut self.ring, ud(i, K_SRC_NBD, 0))?;
            }
            if let DstIo::Nbd(c) = &mut lane.dst {
                c.start(&mut self.ring, ud(i, K_DST_NBD, 0))?;
            }
        }
        loop {
            if self.shared.stopping() {
                if self.shared.cancel.load(Relaxed) {
                    return Err(Error::cancelled());
                }
                return Ok(()); // another worker failed; its error is kept
            }
            let mut all_done = true;
            for (i, lane) in lanes.iter_mut().enumerate() {
                self.fill(i, lane)?;
                if lane.finished() {
                    continue;
                }
                all_done = false;
                if lane.exhausted && lane.busy_slots() == 0 && lane.p.flush && !lane.flushing {
                    self.start_flush(i, lane)?;
                }
            }
            if all_done {
                return Ok(());
            }
            for (i, lane) in lanes.iter_mut().enumerate() {
                if let SrcIo::Nbd(c) = &mut lane.src {
                    c.kick(&mut self.ring, ud(i, K_SRC_NBD, 0))?;
                }
                if let DstIo::Nbd(c) = &mut lane.dst {
                    c.kick(&mut self.ring, ud(i, K_DST_NBD, 0))?;
                }
            }
            self.ring.submit_and_wait(Duration::from_millis(50))?;
            self.cqes.clear();
            self.ring.reap(&mut self.cqes);
            if self.cqes.is_empty() {
                if let Some(t) = lanes.first().and_then(|l| l.p.timeout) {
                    if self.ring.in_flight() > 0 && self.last_progress.elapsed() > t {
                        return Err(Error::new(
                            libc::ETIMEDOUT,
                            format!(
                                "no I/O completed for {} seconds: source {} or destination {} \
                                 is not responding",
                                t.as_secs(),
                                lanes[0].src_name(),
                                lanes[0].dst_name()
                            ),
                        ));
                    }
                }
                continue;
            }
            self.last_progress = Instant::now();
            let cqes = std::mem::take(&mut self.cqes);
            for &(u, res, flags) in &cqes {
                let (li, kind, idx) = un_ud(u);
                let lane = lanes.get_mut(li).ok_or_else(|| {
                    Error::new(libc::EIO, format!("unexpected completion {u:#x}"))
                })?;
                self.complete(li, lane, kind, idx, res, flags)?;
            }
            self.cqes = cqes;
        }
    }

    /// Issues source reads into free slots.
    fn fill(&mut self, li: usize, lane: &mut Lane) -> Result<()> {
        while let Some(&si) = lane.free_slots.last() {
            if let SrcIo::Nbd(c) = &lane.src {
                if !c.can_issue() {
                    break;
                }
            }
            let Some((off, len)) = lane.claim(self.q) else {
                break;
            };
            lane.free_slots.pop();
            let slot = &mut lane.slots[si as usize];
            slot.offset = off;
            slot.len = len as u32;
            slot.filled = 0;
            slot.parts = 0;
            slot.read_done = false;
            slot.busy = true;
            Shared::add(&self.shared.requests, 1);
            match &mut lane.src {
                SrcIo::File { fd, stream, .. } => {
                    if *stream {
                        lane.stream_reading = true;
                    }
                    let fd = *fd;
                    let stream = *stream;
                    self.push_file_read(li, lane, si, fd, stream)?;
                }
                SrcIo::Nbd(c) => {
                    c.queue_read(si, off, len)?;
                }
            }
        }
        Ok(())
    }

    fn push_file_read(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let slot = &mut lane.slots[si as usize];
        let buf = slot.buf.as_ref().expect("file source slot has a buffer");
        let filled = slot.filled as usize;
        // SAFETY: HEADER_ROOM + filled < buffer length (len <= request_size).
        let ptr = unsafe { buf.ptr().add(HEADER_ROOM + filled) };
        let off = if stream {
            u64::MAX
        } else {
            slot.offset + filled as u64
        };
        let e = opcode::Read::new(types::Fd(fd), ptr, slot.len - slot.filled)
            .offset(off)
            .build()
            .user_data(ud(li, K_SRC_READ, si as u64));
        // SAFETY: the slot buffer lives in `lane`, which outlives every
        // operation (run_worker drains the ring before dropping lanes), and
        // the slot is not reused until this read completes.
        unsafe { self.ring.push(&e) }
    }

    fn complete(
        &mut self,
        li: usize,
        lane: &mut Lane,
        kind: u64,
        idx: u64,
        res: i32,
        flags: u32,
    ) -> Result<()> {
        match kind {
            K_SRC_READ => self.file_read_done(li, lane, idx as u32, res),
            K_DST_WRITE => self.write_done(li, lane, idx as u32, res),
            K_DST_FSYNC => {
                if res < 0 {
                    return Err(Error::from_res(
                        format!("destination {}: fsync", lane.dst_name()),
                        res,
                    ));
                }
                lane.flushed = true;
                Ok(())
            }
            K_SRC_NBD => {
                let SrcIo::Nbd(c) = &mut lane.src else {
                    return Err(Error::new(libc::EIO, "bad completion"));
                };
                let mut events = std::mem::take(&mut self.events);
                events.clear();
                let r = c.complete(&mut self.ring, ud(li, K_SRC_NBD, 0), idx, res, flags, &mut events);
                Shared::add(&self.shared.bytes_memcpy, std::mem::take(&mut c.memcpy));
                for ev in events.drain(..) {
                    self.src_event(li, lane, ev)?;
                }
                self.events = events;
                r
            }
            K_DST_NBD => {
                let DstIo::Nbd(c) = &mut lane.dst else {
                    return Err(Error::new(libc::EIO, "bad completion"));
                };
                let mut events = std::mem::take(&mut self.events);
                events.clear();
                let r = c.complete(&mut self.ring, ud(li, K_DST_NBD, 0), idx, res, flags, &mut events);
                for ev in events.drain(..) {
                    self.dst_event(li, lane, ev)?;
                }
                self.events = events;
                r
            }
            _ => Err(Error::new(libc::EIO, format!("unknown completion kind {kind}"))),
        }
    }

    fn file_read_done(&mut self, li: usize, lane: &mut Lane, si: u32, res: i32) -> Result<()> {
        let (fd, stream) = match &lane.src {
            SrcIo::File { fd, stream, .. } => (*fd, *stream),
            SrcIo::Nbd(_) => return Err(Error::new(libc::EIO, "bad completion")),
        };
        let at = lane.slots[si as usize].offset + lane.slots[si as usize].filled as u64;
        if res < 0 {
            return Err(Error::from_res(
                format!("source {}: read at offset {at}", lane.src_name()),
                res,
            ));
        }
        let slot = &mut lane.slots[si as usize];
        if stream {
            lane.stream_reading = false;
            if res == 0 {
                // End of the stream: its size is now known.
                slot.busy = false;
                lane.exhausted = true;
                self.shared.size.store(lane.cur, Relaxed);
                lane.free_slots.push(si);
                return Ok(());
            }
            slot.len = res as u32;
            lane.cur += res as u64;
            if let Some(max) = lane.p.dst_size {
                if lane.cur > max {
                    return Err(Error::new(
                        libc::ENOSPC,
                        format!(
                            "source {} is larger than destination {} ({max} bytes)",
                            lane.src_name(),
                            lane.dst_name()
                        ),
                    ));
                }
            }
        } else {
            if res == 0 {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "source {}: unexpected end of file at offset {at} (did it shrink?)",
                        lane.src_name(),
                    ),
                ));
            }
            slot.filled += res as u32;
            if slot.filled < slot.len {
                return self.push_file_read(li, lane, si, fd, false);
            }
        }
        let slot = &mut lane.slots[si as usize];
        slot.read_done = true;
        let ptr = slot.buf.as_ref().expect("buffer").ptr();
        // SAFETY: HEADER_ROOM is inside the buffer.
        let data = unsafe { ptr.add(HEADER_ROOM) };
        let (off, len) = (slot.offset, slot.len);
        self.dst_write(li, lane, si, off, data, len, HEADER_ROOM, None)
    }

    /// Sends `len` bytes at `ptr` (with `room` writable bytes before it) to
    /// the destination at `offset`, as one part of slot `si`.
    #[allow(clippy::too_many_arguments)]
    fn dst_write(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        offset: u64,
        ptr: *mut u8,
        len: u32,
        room: usize,
        block: Option<u32>,
    ) -> Result<()> {
        if let Some(max) = lane.p.dst_size {
            if offset + len as u64 > max {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!(
                        "destination {}: write at offset {offset} length {len} is past its end \
                         ({max} bytes)",
                        lane.dst_name()
                    ),
                ));
            }
        }
        match &mut lane.dst {
            DstIo::Null => {
                if let Some(b) = block {
                    if let SrcIo::Nbd(c) = &mut lane.src {
                        c.release(b);
                    }
                }
                Shared::add(&self.shared.bytes_copied, len as u64);
                self.part_done(lane, si, len as u64)
            }
            DstIo::Nbd(c) => {
                lane.slots[si as usize].parts += 1;
                Shared::add(&self.shared.requests, 1);
                c.queue_write(si, offset, ptr, len, room, block)
            }
            DstIo::File { fd, stream, .. } => {
                let (fd, stream) = (*fd, *stream);
                let oi = match lane.free_ops.pop() {
                    Some(i) => i,
                    None => {
                        lane.ops.push(WriteOp {
                            slot: 0,
                            offset: 0,
                            ptr: std::ptr::null_mut(),
                            len: 0,
                            done: 0,
                            block: None,
                        });
                        (lane.ops.len() - 1) as u32
                    }
                };
                lane.ops[oi as usize] = WriteOp {
                    slot: si,
                    offset,
                    ptr,
                    len,
                    done: 0,
                    block,
                };
                lane.slots[si as usize].parts += 1;
                Shared::add(&self.shared.requests, 1);
                if stream {
                    lane.out_queue.insert(offset, oi);
                    self.pump_stream_out(li, lane, fd)
                } else {
                    self.push_file_write(li, lane, oi, fd, false)
                }
            }
        }
    }

    fn pump_stream_out(&mut self, li: usize, lane: &mut Lane, fd: RawFd) -> Result<()> {
        if lane.out_busy {
            return Ok(());
        }
        if let Some(oi) = lane.out_queue.remove(&lane.out_next) {
            lane.out_busy = true;
            self.push_file_write(li, lane, oi, fd, true)?;
        }
        Ok(())
    }

    fn push_file_write(
        &mut self,
        li: usize,
        lane: &mut Lane,
        oi: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let op = &lane.ops[oi as usize];
        let off = if stream {
            u64::MAX
        } else {
            op.offset + op.done as u64
        };
        // SAFETY: done < len, inside the data the op refers to.
        let ptr = unsafe { op.ptr.add(op.done as usize) };
        let e = opcode::Write::new(types::Fd(fd), ptr, op.len - op.done)
            .offset(off)
            .build()
            .user_data(ud(li, K_DST_WRITE, oi as u64));
        // SAFETY: the data lives in a slot buffer or receive block owned by
        // `lane` and held (slot busy / block reference) until this
        // operation completes; run_worker drains before dropping lanes.
        unsafe { self.ring.push(&e) }
    }

    fn write_done(&mut self, li: usize, lane: &mut Lane, oi: u32, res: i32) -> Result<()> {
        let (fd, stream) = match &lane.dst {
            DstIo::File { fd, stream, .. } => (*fd, *stream),
            _ => return Err(Error::new(libc::EIO, "bad completion")),
        };
        let (at, left) = {
            let op = &lane.ops[oi as usize];
            (op.offset + op.done as u64, op.len - op.done)
        };
        if res < 0 {
            return Err(Error::from_res(
                format!(
                    "destination {}: write at offset {at} length {left}",
                    lane.dst_name()
                ),
                res,
            ));
        }
        if res == 0 {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "destination {}: write at offset {at} made no progress",
                    lane.dst_name()
                ),
            ));
        }
        let op = &mut lane.ops[oi as usize];
        op.done += res as u32;
        if op.done < op.len {
            return self.push_file_write(li, lane, oi, fd, stream);
        }
        let (si, len, block) = (op.slot, op.len, op.block.take());
        lane.free_ops.push(oi);
        if let Some(b) = block {
            if let SrcIo::Nbd(c) = &mut lane.src {
                c.release(b);
            }
        }
        Shared::add(&self.shared.bytes_copied, len as u64);
        if stream {
            lane.out_busy = false;
            lane.out_next += len as u64;
            self.pump_stream_out(li, lane, fd)?;
        }
        lane.slots[si as usize].parts -= 1;
        self.part_done(lane, si, len as u64)
    }

    /// A part of slot `si` reached the destination; frees the slot when it
    /// was the last one.
    fn part_done(&mut self, lane: &mut Lane, si: u32, bytes: u64) -> Result<()> {
        Shared::add(&self.shared.bytes_done, bytes);
        let slot = &mut lane.slots[si as usize];
        if slot.parts == 0 && slot.read_done && slot.busy {
            slot.busy = false;
            lane.free_slots.push(si);
        }
        Ok(())
    }

    fn start_flush(&mut self, li: usize, lane: &mut Lane) -> Result<()> {
        lane.flushing = true;
        match &mut lane.dst {
            DstIo::Null => lane.flushed = true,
            DstIo::File { fd, stream, .. } => {
                if *stream {
                    lane.flushed = true;
                } else {
                    let e = opcode::Fsync::new(types::Fd(*fd))
                        .build()
                        .user_data(ud(li, K_DST_FSYNC, 0));
                    // SAFETY: fsync refers to no memory.
                    unsafe { self.ring.push(&e) }?;
                }
            }
            DstIo::Nbd(c) => {
                if !c.queue_flush()? {
                    lane.flushed = true; // the server cannot flush
                }
            }
        }
        Ok(())
    }

    fn src_event(&mut self, li: usize, lane: &mut Lane, ev: RecvEvent) -> Result<()> {
        match ev {
            RecvEvent::Data {
                slot,
                offset,
                ptr,
                len,
                room,
                block,
            } => self.dst_write(li, lane, slot, offset, ptr, len, room, Some(block)),
            RecvEvent::Hole { slot, offset, len } => self.dst_zero(li, lane, slot, offset, len),
            RecvEvent::ReadDone { slot } => {
                let s = &mut lane.slots[slot as usize];
                s.read_done = true;
                self.part_done(lane, slot, 0)
            }
            RecvEvent::WriteDone { .. } | RecvEvent::Flushed | RecvEvent::Release { .. } => {
                Err(Error::new(
                    libc::EIO,
                    "internal error: write event on a source connection",
                ))
            }
        }
    }

    fn dst_event(&mut self, _li: usize, lane: &mut Lane, ev: RecvEvent) -> Result<()> {
        match ev {
            RecvEvent::WriteDone { slot, len, zero } => {
                if zero {
                    Shared::add(&self.shared.bytes_zeroed, len as u64);
                } else {
                    Shared::add(&self.shared.bytes_copied, len as u64);
                }
                lane.slots[slot as usize].parts -= 1;
                self.part_done(lane, slot, len as u64)
            }
            RecvEvent::Flushed => {
                lane.flushed = true;
                Ok(())
            }
            RecvEvent::Release { block } => {
                if let SrcIo::Nbd(c) = &mut lane.src {
                    c.release(block);
                }
                Ok(())
            }
            RecvEvent::Data { .. } | RecvEvent::Hole { .. } | RecvEvent::ReadDone { .. } => Err(
                Error::new(libc::EIO, "destination sent data it was not asked for"),
            ),
        }
    }

    /// Makes [offset, offset+len) of the destination read as zeroes.
    fn dst_zero(&mut self, li: usize, lane: &mut Lane, si: u32, offset: u64, len: u32) -> Result<()> {
        match &mut lane.dst {
            DstIo::Null => {
                Shared::add(&self.shared.bytes_zeroed, len as u64);
                self.part_done(lane, si, len as u64)
            }
            DstIo::Nbd(c) => {
                lane.slots[si as usize].parts += 1;
                Shared::add(&self.shared.requests, 1);
                c.queue_zero(si, offset, len)
            }
            DstIo::File { .. } => {
                // Written as data from a shared zero buffer (sparse-aware
                // zeroing of files is the sparse work's job).
                let zero = zero_buffer(len as usize);
                self.dst_write(li, lane, si, offset, zero, len, 0, None)
            }
        }
    }
}

/// A process-wide read-only buffer of zeroes, at least `len` bytes long
/// (up to 32 MiB, the largest request).
pub(crate) fn zero_buffer(len: usize) -> *mut u8 {
    static ZEROES: once_cell::sync::Lazy<AlignedBuf> =
        once_cell::sync::Lazy::new(|| AlignedBuf::new(32 << 20));
    assert!(len <= ZEROES.len());
    ZEROES.ptr()
}
