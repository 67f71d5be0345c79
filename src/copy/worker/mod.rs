// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! One worker thread: an io_uring event loop driving one or more lanes
//! (a source connection/file paired with a destination one) until the
//! work queue is empty, then flushing and draining.
//!
//! Work is claimed in large ranges and cut into pieces: data pieces are
//! read (at most request-size) and written, zero pieces (holes found in
//! the source's extents) are zeroed or skipped without reading.  Data that
//! turns out to be all zeroes in `sparse`-sized blocks is zeroed too.
//! File I/O lives in `fileio`, the splice data path in `splice_lane`.

use super::align::{align_down, push_merged, Aligner, Extent};
use super::buf::AlignedBuf;
use super::dirty::{self, DirtyMerge};
use super::nbdconn::{NbdConn, RecvEvent};
use super::splice;
use super::stats::Shared;
use super::WorkQueue;
use crate::error::{Error, Result};
use crate::ring::Ring;
use io_uring::{opcode, types};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

mod fileio;
mod splice_lane;
use fileio::file_extents;
use splice_lane::LaneSplice;

/// Bytes reserved in front of every file-read buffer, so an NBD WRITE
/// header can be written just before the data and both sent as one slice.
pub const HEADER_ROOM: usize = 64;

/// Largest zero piece handed to one zeroing operation by default: just
/// under 4 GiB, the most a compact WRITE_ZEROES can cover (kept 4
/// MiB-aligned).  Destinations with extended headers take `BIG_PIECE`.
pub const ZERO_PIECE: u64 = (4 << 30) - (4 << 20);
/// Largest range one BLOCK_STATUS or WRITE_ZEROES covers with extended
/// (64-bit) headers.
pub const BIG_PIECE: u64 = 1 << 40;

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
    /// Stall limit while only reads, writes and block status queries are
    /// outstanding (None: none).
    pub timeout: Option<Duration>,
    /// Stall limit while a FLUSH, WRITE_ZEROES, fsync or fallocate is
    /// outstanding (None: none).
    pub slow_timeout: Option<Duration>,
    /// Splice pipe capacity (None: from the request size).
    pub pipe_size: Option<usize>,
    /// Zero-detection block size (0: off).
    pub sparse: u64,
    /// Zeroes must be allocated on the destination (no holes).
    pub allocated: bool,
    /// The destination already reads as zeroes: zero ranges are skipped.
    pub dst_is_zero: bool,
    /// Ask the source where its data is (SEEK_DATA/SEEK_HOLE, BLOCK_STATUS).
    pub extents: bool,
    /// Write a regular-file destination with pwrite from the worker
    /// rather than through io_uring (which punts such writes to io-wq
    /// threads on filesystems without non-blocking buffered writes).
    pub direct_file_writes: bool,
    /// Held around each direct write to a regular-file destination, shared
    /// by all lanes: the kernel serialises buffered writes to one file on
    /// its inode lock anyway, and a writer waiting there spins
    /// (rwsem_spin_on_owner) for as long as the other copies; waiting here
    /// sleeps instead.
    pub file_lock: Option<std::sync::Arc<std::sync::Mutex<()>>>,
    /// Largest zero range handed to one zeroing operation.
    pub zero_piece: u64,
    /// Every request's offset and length are multiples of this (a power
    /// of two: the larger of the servers' minimum block sizes and a block
    /// device's logical sector), but at the image's end.
    pub align: u64,
    /// The destination needs aligned requests: READ replies that come in
    /// several chunks are assembled in the slot's buffer and handed on
    /// whole (a chunk boundary need not be aligned).
    pub stage_reads: bool,
    /// Added (wrapping) to a source offset gives the destination offset
    /// (`ranges::Window::shift`; 0 but for --destination-offset).
    pub dst_shift: u64,
    /// Copy only what the source's dirty bitmap marks dirty.
    pub dirty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Data(u64, u64),
    Zero(u64, u64),
}

struct Slot {
    offset: u64,
    len: u64,
    /// Bytes read so far (file sources; handles short reads).
    filled: u64,
    /// File-source buffer, or the buffer fragmented NBD reads are
    /// assembled in (`LaneParams::stage_reads`): HEADER_ROOM +
    /// request_size bytes.
    buf: Option<AlignedBuf>,
    /// READ chunks of this slot are being assembled in `buf`.
    staged: bool,
    /// Destination operations still outstanding for this slot.
    parts: u32,
    /// The source side is complete (all data delivered).
    read_done: bool,
    busy: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    /// Write `len` bytes from `ptr`.
    Write,
    /// Write zeroes from the shared zero buffer.
    WriteZeroes,
    /// fallocate(mode) over the range.
    Fallocate(i32),
}

/// A destination file operation in flight.
struct WriteOp {
    slot: u32,
    offset: u64,
    ptr: *mut u8,
    len: u64,
    done: u64,
    kind: OpKind,
    /// Receive block holding the data (NBD sources).
    block: Option<u32>,
}

/// How a regular-file or block-device destination is zeroed; degrades
/// when the kernel or filesystem refuses a mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ZeroMode {
    PunchHole,
    ZeroRange,
    Write,
}

pub struct Lane {
    pub src: SrcIo,
    pub dst: DstIo,
    p: LaneParams,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    ops: Vec<WriteOp>,
    free_ops: Vec<u32>,
    /// The rest of the claimed range, aligned to `LaneParams::align`.
    extents: VecDeque<Extent>,
    /// The claimed range whose BLOCK_STATUS is outstanding (at most one
    /// request is in flight).
    status: Option<PendingStatus>,
    /// No more work to claim.
    exhausted: bool,
    /// Stream source: position, and one read in flight at a time.
    stream_pos: u64,
    stream_reading: bool,
    /// Stream destination: writes queued in offset order, one in flight.
    out_next: u64,
    out_queue: BTreeMap<u64, u32>,
    out_busy: bool,
    zero_mode: ZeroMode,
    flushed: bool,
    flushing: bool,
    /// fallocate operations in the ring (they may take long).
    slow_file_ops: u32,
    /// Reused scratch space for zero-detection runs.
    runs: Vec<(usize, usize, bool)>,
    /// The splice data path, when this lane uses it.
    splice: Option<LaneSplice>,
    /// Clean bytes (dirty bitmap) not yet reported.
    clean: u64,
}

// SAFETY: the raw pointers in a lane (WriteOp::ptr) point into buffers the
// lane itself owns (slot buffers, receive blocks) or into the static zero
// buffer; they move with the lane to its worker thread and are only used
// there.
unsafe impl Send for Lane {}

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

impl Lane {
    pub fn new(src: SrcIo, dst: DstIo, p: LaneParams) -> Lane {
        let file_src = matches!(src, SrcIo::File { .. });
        let n = p.requests.max(1);
        let slots = (0..n)
            .map(|_| Slot {
                offset: 0,
                len: 0,
                filled: 0,
                buf: (file_src || p.stage_reads)
                    .then(|| AlignedBuf::new(HEADER_ROOM + p.request_size as usize)),
                staged: false,
                parts: 0,
                read_done: false,
                busy: false,
            })
            .collect();
        let zero_mode = if p.allocated {
            ZeroMode::ZeroRange
        } else {
            ZeroMode::PunchHole
        };
        Lane {
            src,
            dst,
            slots,
            free_slots: (0..n as u32).rev().collect(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            extents: VecDeque::new(),
            status: None,
            exhausted: false,
            stream_pos: 0,
            stream_reading: false,
            out_next: 0,
            out_queue: BTreeMap::new(),
            out_busy: false,
            zero_mode,
            flushed: false,
            flushing: false,
            slow_file_ops: 0,
            runs: Vec::new(),
            splice: None,
            clean: 0,
            p,
        }
    }

    /// Whether a READ chunk for slot `si` must be assembled first: the
    /// destination needs aligned requests and the chunk is not the whole
    /// request.
    fn needs_staging(&self, si: u32, off: u64, len: u64) -> bool {
        let s = &self.slots[si as usize];
        self.p.stage_reads && (s.staged || off != s.offset || len != s.len)
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

    /// "source NAME" for messages (NBD connection names carry the side).
    fn src_label(&self) -> String {
        match &self.src {
            SrcIo::Nbd(c) => c.name.clone(),
            SrcIo::File { name, .. } => format!("source {name}"),
        }
    }

    fn dst_label(&self) -> String {
        match &self.dst {
            DstIo::Nbd(c) => c.name.clone(),
            DstIo::File { name, .. } => format!("destination {name}"),
            DstIo::Null => "destination null:".into(),
        }
    }

    /// Whether a FLUSH, WRITE_ZEROES, fsync or fallocate is outstanding.
    fn slow_pending(&self) -> bool {
        (self.flushing && !self.flushed)
            || self.slow_file_ops > 0
            || matches!(&self.dst, DstIo::Nbd(c) if c.slow_pending())
    }

    fn busy_slots(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// All data copied and acknowledged, and flushed if asked.
    fn finished(&self) -> bool {
        self.exhausted && self.busy_slots() == 0 && (!self.p.flush || self.flushed)
    }

    /// Claims the next piece of work: a data piece of at most
    /// request-size, or a zero piece.  None: nothing to do right now
    /// (waiting for block status, or the work is all handed out).
    fn claim(&mut self, q: &WorkQueue) -> Result<Option<Piece>> {
        if self.exhausted {
            return Ok(None);
        }
        if self.src_is_stream() {
            // Streams are read in order; the length is what a read returns.
            if self.stream_reading {
                return Ok(None);
            }
            return Ok(Some(Piece::Data(self.stream_pos, self.p.request_size)));
        }
        loop {
            if let Some(front) = self.extents.front_mut() {
                let Extent {
                    offset: off,
                    len,
                    zero,
                } = *front;
                let take = if zero {
                    len.min(self.p.zero_piece)
                } else {
                    len.min(self.p.request_size)
                };
                if take == len {
                    self.extents.pop_front();
                } else {
                    front.offset += take;
                    front.len -= take;
                }
                return Ok(Some(if zero {
                    Piece::Zero(off, take)
                } else {
                    Piece::Data(off, take)
                }));
            }
            if self.status.is_some() {
                return Ok(None); // the next extents are on their way
            }
            if !self.claim_range(q)? {
                self.exhausted = true;
                return Ok(None);
            }
        }
    }

    /// Claims the next range and learns its extents (or asks for them).
    /// False when the work queue is empty.
    fn claim_range(&mut self, q: &WorkQueue) -> Result<bool> {
        let Some((a, b)) = q.claim() else {
            return Ok(false);
        };
        let mut aligner = Aligner::new(a, self.p.align);
        match &mut self.src {
            SrcIo::File { fd, .. } if self.p.extents => {
                let out = &mut self.extents;
                file_extents(*fd, a, b, &mut |e| aligner.push(e, out));
                aligner.finish(out);
            }
            SrcIo::Nbd(c) if (self.p.extents || self.p.dirty) && c.can_block_status() => {
                c.queue_block_status(a, b - a)?;
                self.status = Some(PendingStatus {
                    start: a,
                    end: b,
                    aligner,
                    dirty: self
                        .p
                        .dirty
                        .then(|| DirtyMerge::new(a, b, self.p.align, c.can_allocation_status())),
                });
            }
            _ => push_merged(
                &mut self.extents,
                Extent {
                    offset: a,
                    len: b - a,
                    zero: false,
                },
            ),
        }
        Ok(true)
    }

    /// Asks for the next range's block status while this one is read.
    fn prefetch_status(&mut self, q: &WorkQueue) -> Result<()> {
        if self.status.is_none()
            && !self.exhausted
            && !self.extents.is_empty()
            && matches!(&self.src, SrcIo::Nbd(c) if (self.p.extents || self.p.dirty) && c.can_block_status())
        {
            self.claim_range(q)?;
        }
        Ok(())
    }

    /// Extents from a BLOCK_STATUS reply for the pending range.
    fn add_status_extents(&mut self, ext: &[(u64, u64, bool)]) {
        let Some(st) = self.status.as_mut() else {
            return;
        };
        if let Some(d) = st.dirty.as_mut() {
            d.add_alloc(ext);
            self.clean += d.drain(&mut self.extents);
            return;
        }
        for &(off, len, zero) in ext {
            // Keep only what continues the covered part, inside the range
            // (a continued request may start before it: see status_done).
            let at = st.aligner.pos();
            let end = off.saturating_add(len).min(st.end);
            if off > at || end <= at {
                continue;
            }
            st.aligner.push(
                Extent {
                    offset: at,
                    len: end - at,
                    zero,
                },
                &mut self.extents,
            );
        }
    }

    /// The pending BLOCK_STATUS finished: ask again for what it did not
    /// cover (from an aligned offset), or (on error) treat the rest as
    /// data.
    fn status_done(&mut self, ok: bool) -> Result<()> {
        let Some(mut st) = self.status.take() else {
            return Ok(());
        };
        if st.dirty.is_some() {
            return self.dirty_status_done(st, ok);
        }
        let covered = st.aligner.pos();
        if covered < st.end {
            if ok && covered > st.start {
                if let SrcIo::Nbd(c) = &mut self.src {
                    let from = align_down(covered, self.p.align);
                    c.queue_block_status(from, st.end - from)?;
                    st.start = covered;
                    self.status = Some(st);
                    return Ok(());
                }
            }
            // An error, or no progress at all: read the rest.
            st.aligner.push(
                Extent {
                    offset: covered,
                    len: st.end - covered,
                    zero: false,
                },
                &mut self.extents,
            );
        }
        st.aligner.finish(&mut self.extents);
        Ok(())
    }
}

impl Lane {
    /// Dirty-bitmap extents for the pending range.
    fn add_dirty_extents(&mut self, ext: &[(u64, u64, bool)]) {
        if let Some(d) = self.status.as_mut().and_then(|st| st.dirty.as_mut()) {
            d.add_dirty(ext);
            self.clean += d.drain(&mut self.extents);
        }
    }

    /// `status_done` of an incremental copy: ask again from where both
    /// contexts' answers reach, or (on error, no progress) copy the rest.
    fn dirty_status_done(&mut self, mut st: PendingStatus, ok: bool) -> Result<()> {
        let Some(d) = st.dirty.as_mut() else {
            return Ok(());
        };
        let covered = d.covered();
        if covered < st.end && ok && covered > st.start {
            if let SrcIo::Nbd(c) = &mut self.src {
                let from = align_down(covered, self.p.align);
                c.queue_block_status(from, st.end - from)?;
                st.start = covered;
                self.status = Some(st);
                return Ok(());
            }
        }
        self.clean += if covered < st.end {
            d.rest_is_dirty(&mut self.extents)
        } else {
            d.finish(&mut self.extents)
        };
        Ok(())
    }
}

/// A claimed range whose BLOCK_STATUS is outstanding.
struct PendingStatus {
    /// Where the outstanding request's answer must make progress from.
    start: u64,
    end: u64,
    /// Extents received so far end at `aligner.pos()`.
    aligner: Aligner,
    /// Incremental copies: both contexts' answers, merged.
    dirty: Option<DirtyMerge>,
}

/// True when every byte is zero; stops at the first non-zero word.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Splits `data` (at absolute offset `off`) into runs of data and of
/// zero blocks of `sparse` bytes aligned to absolute offsets.
fn zero_runs(data: &[u8], off: u64, sparse: u64, runs: &mut Vec<(usize, usize, bool)>) {
    runs.clear();
    let len = data.len();
    let mut i = 0usize;
    while i < len {
        let blk_end = (((off + i as u64) / sparse + 1) * sparse - off) as usize;
        let end = blk_end.min(len);
        let z = is_zero(&data[i..end]);
        match runs.last_mut() {
            Some(r) if r.2 == z => r.1 = end,
            _ => runs.push((i, end, z)),
        }
        i = end;
    }
}

/// Runs lanes on this thread's ring until they finish, fail or are cancelled.
pub fn run_worker(mut lanes: Vec<Lane>, q: &WorkQueue, shared: &Shared) {
    let entries = lanes.iter().map(|l| l.slots.len() * 2 + 8).sum::<usize>();
    let ring = match Ring::new(entries as u32) {
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
    if !clean {
        // The kernel may still use these buffers: never free them.
        std::mem::forget(lanes);
        std::mem::forget(w.ring);
        shared.fail(Error::new(
            libc::EIO,
            "I/O operations did not finish after cancellation",
        ));
        return;
    }
    for lane in &mut lanes {
        if let SrcIo::Nbd(c) = &mut lane.src {
            c.finish();
        }
        if let DstIo::Nbd(c) = &mut lane.dst {
            c.finish();
        }
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
                if self.shared.cancelled() {
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
                // Idle for a whole wait: let other threads run.  Costs
                // nothing on a busy copy, and under valgrind (which treats
                // io_uring_enter as non-blocking and keeps its big lock
                // across it) it is what lets a cancelling thread run.
                std::thread::yield_now();
                self.check_timeout(lanes)?;
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

    fn check_timeout(&self, lanes: &[Lane]) -> Result<()> {
        // While an operation that may take long is outstanding, a silent
        // peer is not a stuck one: the slow limit applies.
        let slow = lanes.iter().any(Lane::slow_pending);
        let limit = lanes
            .first()
            .and_then(|l| if slow { l.p.slow_timeout } else { l.p.timeout });
        let Some(t) = limit else {
            return Ok(());
        };
        if self.ring.in_flight() > 0 && self.last_progress.elapsed() > t {
            return Err(Error::new(
                libc::ETIMEDOUT,
                format!(
                    "no I/O completed for {} seconds: {} or {} is not responding",
                    t.as_secs(),
                    lanes[0].src_label(),
                    lanes[0].dst_label()
                ),
            ));
        }
        Ok(())
    }

    /// Starts work on free slots: reads for data pieces, zeroing for
    /// zero pieces.
    fn fill(&mut self, li: usize, lane: &mut Lane) -> Result<()> {
        dirty::account_clean(self.shared, std::mem::take(&mut lane.clean));
        while let Some(&si) = lane.free_slots.last() {
            if let SrcIo::Nbd(c) = &lane.src {
                if !c.can_issue() {
                    break;
                }
            }
            let Some(piece) = lane.claim(self.q)? else {
                break;
            };
            lane.free_slots.pop();
            let (off, len) = match piece {
                Piece::Data(o, l) | Piece::Zero(o, l) => (o, l),
            };
            let slot = &mut lane.slots[si as usize];
            slot.offset = off;
            slot.len = len;
            slot.filled = 0;
            slot.staged = false;
            slot.parts = 0;
            slot.read_done = false;
            slot.busy = true;
            if let Piece::Zero(..) = piece {
                slot.read_done = true;
                self.dst_zero(li, lane, si, off, len)?;
                continue;
            }
            Shared::add(&self.shared.requests, 1);
            match &mut lane.src {
                SrcIo::File {
                    fd, stream: false, ..
                } if lane.splice.is_some() && splice::cached(*fd, off, len) => {
                    let fd = *fd;
                    self.file_splice(li, lane, si, fd, off, len)?;
                }
                SrcIo::File { fd, stream, .. } => {
                    let (fd, stream) = (*fd, *stream);
                    if stream {
                        lane.stream_reading = true;
                    }
                    self.push_file_read(li, lane, si, fd, stream)?;
                }
                SrcIo::Nbd(c) => c.queue_read(si, off, len)?,
            }
        }
        lane.prefetch_status(self.q)
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
            K_SRC_NBD | K_DST_NBD => {
                let is_src = kind == K_SRC_NBD;
                let c = match (is_src, &mut lane.src, &mut lane.dst) {
                    (true, SrcIo::Nbd(c), _) | (false, _, DstIo::Nbd(c)) => c,
                    _ => return Err(Error::new(libc::EIO, "bad completion")),
                };
                let mut events = std::mem::take(&mut self.events);
                events.clear();
                let mut r = c.complete(
                    &mut self.ring,
                    ud(li, kind, 0),
                    idx,
                    res,
                    flags,
                    &mut events,
                );
                Shared::add(&self.shared.bytes_memcpy, std::mem::take(&mut c.memcpy));
                loop {
                    let mut r2 = Ok(());
                    for ev in events.drain(..) {
                        if r2.is_ok() {
                            r2 = if is_src {
                                self.src_event(li, lane, ev)
                            } else {
                                self.dst_event(lane, ev)
                            };
                        }
                    }
                    r = r.and(r2);
                    // Splice mode: the pipe is drained; go on receiving.
                    match &mut lane.src {
                        SrcIo::Nbd(c) if is_src && r.is_ok() && c.wants_resume() => {
                            r = c.resume(&mut self.ring, ud(li, kind, 0), &mut events);
                        }
                        _ => break,
                    }
                }
                self.events = events;
                r
            }
            _ => Err(Error::new(
                libc::EIO,
                format!("unknown completion kind {kind}"),
            )),
        }
    }

    /// Copies one READ chunk (data at `ptr`, or a hole when None) into
    /// slot `si`'s buffer, to be handed on whole at ReadDone.
    fn stage_chunk(
        &mut self,
        lane: &mut Lane,
        si: u32,
        off: u64,
        ptr: Option<*mut u8>,
        len: u64,
        block: Option<u32>,
    ) -> Result<()> {
        let slot = &mut lane.slots[si as usize];
        let inside = off >= slot.offset
            && off
                .checked_add(len)
                .is_some_and(|e| e <= slot.offset + slot.len);
        let Some(buf) = slot.buf.as_mut().filter(|_| inside) else {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "{}: READ chunk at offset {off} length {len} outside the request",
                    lane.src_label()
                ),
            ));
        };
        let at = HEADER_ROOM + (off - slot.offset) as usize;
        if !slot.staged {
            // What no chunk covers reads as zero.
            buf.as_mut_slice()[HEADER_ROOM..HEADER_ROOM + slot.len as usize].fill(0);
            slot.staged = true;
        }
        let dst = &mut buf.as_mut_slice()[at..at + len as usize];
        match ptr {
            Some(p) => {
                // SAFETY: the chunk's payload, `len` initialised bytes in a
                // receive block held (by `block`) until released below.
                let src = unsafe { std::slice::from_raw_parts(p, len as usize) };
                dst.copy_from_slice(src);
                Shared::add(&self.shared.bytes_memcpy, len);
            }
            None => dst.fill(0),
        }
        if let (Some(b), SrcIo::Nbd(c)) = (block, &mut lane.src) {
            c.release(b);
        }
        Ok(())
    }

    /// Data read from the source: zero blocks (with `sparse`) are zeroed,
    /// the rest written.  `block` carries one reference to a source
    /// receive block, passed on to the writes.
    #[allow(clippy::too_many_arguments)]
    fn dst_data(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        off: u64,
        ptr: *mut u8,
        len: usize,
        room: usize,
        block: Option<u32>,
    ) -> Result<()> {
        let sparse = lane.p.sparse;
        if sparse == 0 || len == 0 {
            return self.dst_write(li, lane, si, off, ptr, len as u32, room, block);
        }
        // SAFETY: ptr..ptr+len is initialised data that the kernel has
        // finished writing (the read completed) and nothing writes now.
        let data = unsafe { std::slice::from_raw_parts(ptr, len) };
        let mut runs = std::mem::take(&mut lane.runs);
        zero_runs(data, off, sparse, &mut runs);
        if runs.len() == 1 && !runs[0].2 {
            lane.runs = runs;
            return self.dst_write(li, lane, si, off, ptr, len as u32, room, block);
        }
        let n_data = runs.iter().filter(|r| !r.2).count();
        if let (Some(b), SrcIo::Nbd(c)) = (block, &mut lane.src) {
            // One reference per data run; none if all zero.
            if n_data == 0 {
                c.release(b);
            }
            for _ in 1..n_data {
                c.hold(b);
            }
        }
        // Hold the slot while its runs are dispatched: a run that is done
        // at once (a skipped zero run) must not free the slot, and let the
        // next read reuse its buffer, while a later run's write still
        // points into it.
        lane.slots[si as usize].parts += 1;
        let mut r = Ok(());
        let mut prev_zero = room;
        for &(a, e, z) in &runs {
            if r.is_err() {
                break;
            }
            let roff = off + a as u64;
            if z {
                prev_zero = e - a;
                r = self.dst_zero(li, lane, si, roff, (e - a) as u64);
            } else {
                let room = if a == 0 { room } else { prev_zero };
                // SAFETY: a < len, inside the data.
                let p = unsafe { ptr.add(a) };
                r = self.dst_write(
                    li,
                    lane,
                    si,
                    roff,
                    p,
                    (e - a) as u32,
                    room,
                    block.filter(|_| n_data > 0),
                );
            }
        }
        lane.runs = runs;
        self.part_finished(lane, si, 0)?;
        r
    }

    fn check_dst_range(lane: &Lane, offset: u64, len: u64) -> Result<()> {
        if let Some(max) = lane.p.dst_size {
            if offset.checked_add(len).is_none_or(|end| end > max) {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!(
                        "destination {}: write at offset {offset} length {len} is past its \
                         end ({max} bytes)",
                        lane.dst_name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Writes `len` bytes at `ptr` (with `room` writable bytes before it)
    /// to the destination at `offset`, as one part of slot `si`.
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
        let offset = offset.wrapping_add(lane.p.dst_shift);
        Self::check_dst_range(lane, offset, len as u64)?;
        match &mut lane.dst {
            DstIo::Null => {
                if let (Some(b), SrcIo::Nbd(c)) = (block, &mut lane.src) {
                    c.release(b);
                }
                Shared::add(&self.shared.bytes_copied, len as u64);
                self.part_done(lane, si, len as u64);
                Ok(())
            }
            DstIo::Nbd(c) => {
                lane.slots[si as usize].parts += 1;
                Shared::add(&self.shared.requests, 1);
                c.queue_write(si, offset, ptr, len, room, block)
            }
            DstIo::File { .. } => {
                self.file_op(li, lane, si, offset, ptr, len as u64, OpKind::Write, block)
            }
        }
    }

    /// Makes [offset, offset+len) of the destination read as zeroes (or
    /// skips it when the destination is known to be zero), as part of
    /// slot `si`.
    fn dst_zero(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let offset = offset.wrapping_add(lane.p.dst_shift);
        Self::check_dst_range(lane, offset, len)?;
        if lane.p.dst_is_zero
            && !lane.p.allocated
            && !matches!(lane.dst, DstIo::File { stream: true, .. })
        {
            Shared::add(&self.shared.bytes_skipped, len);
            self.part_done(lane, si, len);
            return Ok(());
        }
        match &mut lane.dst {
            DstIo::Null => {
                Shared::add(&self.shared.bytes_zeroed, len);
                self.part_done(lane, si, len);
                Ok(())
            }
            DstIo::Nbd(c) => {
                let n = c.queue_zero(si, offset, len, lane.p.allocated)?;
                lane.slots[si as usize].parts += n;
                Shared::add(&self.shared.requests, n as u64);
                Ok(())
            }
            DstIo::File { stream, .. } => {
                let kind = match (*stream, lane.zero_mode) {
                    (true, _) | (_, ZeroMode::Write) => OpKind::WriteZeroes,
                    (false, ZeroMode::PunchHole) => {
                        OpKind::Fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    }
                    (false, ZeroMode::ZeroRange) => {
                        OpKind::Fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    }
                };
                self.file_op(li, lane, si, offset, std::ptr::null_mut(), len, kind, None)
            }
        }
    }

    /// One outstanding part of slot `si` (a write, a zeroing, or the hold
    /// `dst_data` keeps while it dispatches) finished with `bytes`.
    fn part_finished(&mut self, lane: &mut Lane, si: u32, bytes: u64) -> Result<()> {
        let slot = &mut lane.slots[si as usize];
        slot.parts = slot.parts.checked_sub(1).ok_or_else(|| {
            Error::new(
                libc::EIO,
                format!(
                    "internal error: slot at offset {} finished more parts than it started",
                    slot.offset
                ),
            )
        })?;
        self.part_done(lane, si, bytes);
        Ok(())
    }

    /// `bytes` of slot `si` reached the destination; frees the slot when
    /// nothing of it is outstanding any more.
    fn part_done(&mut self, lane: &mut Lane, si: u32, bytes: u64) {
        Shared::add(&self.shared.bytes_done, bytes);
        let slot = &mut lane.slots[si as usize];
        if slot.parts == 0 && slot.read_done && slot.busy {
            slot.busy = false;
            lane.free_slots.push(si);
        }
    }

    fn start_flush(&mut self, li: usize, lane: &mut Lane) -> Result<()> {
        lane.flushing = true;
        match &mut lane.dst {
            DstIo::Null | DstIo::File { stream: true, .. } => lane.flushed = true,
            DstIo::File { fd, .. } => {
                let e =
                    opcode::Fsync::new(types::Fd(*fd))
                        .build()
                        .user_data(ud(li, K_DST_FSYNC, 0));
                // SAFETY: fsync refers to no memory.
                unsafe { self.ring.push(&e) }?;
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
                room: _,
                block,
            } if lane.needs_staging(slot, offset, len as u64) => {
                self.stage_chunk(lane, slot, offset, Some(ptr), len as u64, Some(block))
            }
            RecvEvent::Data {
                slot,
                offset,
                ptr,
                len,
                room,
                block,
            } => self.dst_data(li, lane, slot, offset, ptr, len as usize, room, Some(block)),
            RecvEvent::PipeData { slot, offset, len } => {
                self.pipe_data(li, lane, slot, offset, len as usize)
            }
            RecvEvent::Hole { slot, offset, len }
                if lane.needs_staging(slot, offset, len as u64) =>
            {
                self.stage_chunk(lane, slot, offset, None, len as u64, None)
            }
            RecvEvent::Hole { slot, offset, len } => {
                self.dst_zero(li, lane, slot, offset, len as u64)
            }
            RecvEvent::ReadDone { slot } => {
                let s = &mut lane.slots[slot as usize];
                s.read_done = true;
                if std::mem::take(&mut s.staged) {
                    // The assembled READ goes on as one piece.
                    let (off, len) = (s.offset, s.len);
                    let data = s.buf.as_ref().map(|b| b.ptr()).ok_or_else(|| {
                        Error::new(libc::EIO, "internal error: staged slot without buffer")
                    })?;
                    // SAFETY: HEADER_ROOM is inside the buffer.
                    let data = unsafe { data.add(HEADER_ROOM) };
                    return self.dst_data(
                        li,
                        lane,
                        slot,
                        off,
                        data,
                        len as usize,
                        HEADER_ROOM,
                        None,
                    );
                }
                self.part_done(lane, slot, 0);
                Ok(())
            }
            RecvEvent::Extents { extents } => {
                lane.add_status_extents(&extents);
                Ok(())
            }
            RecvEvent::DirtyExtents { extents } => {
                lane.add_dirty_extents(&extents);
                Ok(())
            }
            RecvEvent::StatusDone { ok, .. } => lane.status_done(ok),
            RecvEvent::WriteDone { .. } | RecvEvent::Flushed | RecvEvent::Release { .. } => {
                Err(Error::new(
                    libc::EIO,
                    "internal error: write event on a source connection",
                ))
            }
        }
    }

    fn dst_event(&mut self, lane: &mut Lane, ev: RecvEvent) -> Result<()> {
        match ev {
            RecvEvent::WriteDone { slot, len, zero } => {
                if zero {
                    Shared::add(&self.shared.bytes_zeroed, len);
                } else {
                    Shared::add(&self.shared.bytes_copied, len);
                }
                self.part_finished(lane, slot, len)?;
                Ok(())
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
            RecvEvent::Data { .. }
            | RecvEvent::PipeData { .. }
            | RecvEvent::Hole { .. }
            | RecvEvent::ReadDone { .. }
            | RecvEvent::Extents { .. }
            | RecvEvent::DirtyExtents { .. }
            | RecvEvent::StatusDone { .. } => Err(Error::new(
                libc::EIO,
                "destination sent data it was not asked for",
            )),
        }
    }
}

/// A process-wide read-only buffer of zeroes, at least `len` bytes long
/// (up to 32 MiB, the largest request).
pub(crate) fn zero_buffer(len: usize) -> *mut u8 {
    static ZEROES: once_cell::sync::Lazy<AlignedBuf> =
        once_cell::sync::Lazy::new(|| AlignedBuf::new(32 << 20));
    assert!(len <= ZEROES.len(), "zero buffer too small");
    ZEROES.ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scan() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4096]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[63] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn runs_are_aligned_to_absolute_offsets() {
        let mut d = vec![1u8; 16384];
        d[1024..9216].fill(0); // zero from 1024 to 9216
        let mut runs = Vec::new();
        // data starts at absolute offset 3072: blocks end at 4096-3072=1024, 5120, 9216...
        zero_runs(&d, 3072, 4096, &mut runs);
        assert_eq!(
            runs,
            vec![(0, 1024, false), (1024, 9216, true), (9216, 16384, false)]
        );
        zero_runs(&[0u8; 100], 0, 4096, &mut runs);
        assert_eq!(runs, vec![(0, 100, true)]);
    }

    #[test]
    fn file_extents_find_holes() {
        let p = std::env::temp_dir().join(format!("nbdcpy-ext-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        f.sync_all().unwrap();
        use std::os::fd::AsRawFd;
        let mut out = VecDeque::new();
        file_extents(f.as_raw_fd(), 0, 8 << 20, &mut |e| push_merged(&mut out, e));
        std::fs::remove_file(&p).unwrap();
        let total: u64 = out.iter().map(|e| e.len).sum();
        assert_eq!(total, 8 << 20);
        // The written block is data; most of the rest is a hole (where
        // the filesystem supports SEEK_HOLE).
        assert!(out
            .iter()
            .any(|e| !e.zero && e.offset <= 1 << 20 && e.end() >= (1 << 20) + 4096));
    }
}
