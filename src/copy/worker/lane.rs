// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A lane: a source and a destination connection or file, with slots and settings.
//
// A lane: a source connection or file paired with a destination one, its
// request slots and its settings.

use super::state::{FileSeek, LaneSplice, PendingStatus, WriteOp, ZeroMode, HEADER_ROOM};
use super::zero::Run;
use crate::copy::align::Extent;
use crate::copy::nbdconn::NbdConn;
use crate::engine::buf::{AlignedBuf, IoBuf};
use crate::engine::{Engine, Fd};
use crate::error::{Result, Side};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::time::Duration;

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
    /// Reconnect attempts after losing an NBD connection (0: none), and
    /// the wait before the first (`--retries`, `--retry-delay`).
    pub retries: u32,
    pub retry_delay: Duration,
    /// The block hash of the source (--blkhash, --verify): fed the data
    /// as it arrives and the zero ranges, by offset.
    pub hash: Option<std::sync::Arc<crate::blkhash::BlockHasher>>,
    /// The "rate" option's limiter, shared by all lanes (None: no limit).
    pub rate: Option<std::sync::Arc<crate::copy::rate::Limiter>>,
    /// Added (wrapping) to a source offset gives the destination offset
    /// (`ranges::Window::shift`; 0 but for --destination-offset).
    pub dst_shift: u64,
    /// Copy only what the source's dirty bitmap marks dirty.
    pub dirty: bool,
}

pub(super) struct Slot {
    pub(super) offset: u64,
    pub(super) len: u64,
    /// Bytes read so far (file sources; handles short reads).
    pub(super) filled: u64,
    /// File-source buffer, or the buffer fragmented NBD reads are
    /// assembled in (`LaneParams::stage_reads`): HEADER_ROOM +
    /// request_size bytes.
    pub(super) buf: Option<IoBuf>,
    /// READ chunks of this slot are being assembled in `buf`.
    pub(super) staged: bool,
    /// Destination operations still outstanding for this slot.
    pub(super) parts: u32,
    /// The source side is complete (all data delivered).
    pub(super) read_done: bool,
    pub(super) busy: bool,
}

pub struct Lane {
    pub src: SrcIo,
    pub dst: DstIo,
    pub(super) params: LaneParams,
    pub(super) slots: Vec<Slot>,
    pub(super) free_slots: Vec<u32>,
    pub(super) ops: Vec<WriteOp>,
    pub(super) free_ops: Vec<u32>,
    /// The rest of the claimed range, aligned to `LaneParams::align`.
    pub(super) extents: VecDeque<Extent>,
    /// The claimed range whose BLOCK_STATUS is outstanding (at most one
    /// request is in flight).
    pub(super) status: Option<PendingStatus>,
    /// No more work to claim.
    pub(super) exhausted: bool,
    /// SEEK_DATA/SEEK_HOLE of a file source (on a helper thread).
    pub(super) seek: FileSeek,
    /// Stream source: position, and one read in flight at a time.
    pub(super) stream_pos: u64,
    pub(super) stream_reading: bool,
    /// Stream destination: writes queued in offset order, one in flight.
    pub(super) out_next: u64,
    pub(super) out_queue: BTreeMap<u64, u32>,
    pub(super) out_busy: bool,
    pub(super) zero_mode: ZeroMode,
    pub(super) flushed: bool,
    pub(super) flushing: bool,
    /// fallocate operations in flight (they may take long).
    pub(super) slow_file_ops: u32,
    /// Reused scratch space for zero-detection runs.
    pub(super) runs: Vec<Run>,
    /// The splice data path, when this lane uses it.
    pub(super) splice: Option<LaneSplice>,
    /// Clean bytes (dirty bitmap) not yet reported.
    pub(super) clean: u64,
    /// Page-cache hygiene of file sources and destinations.
    pub cache: crate::endpoint::pagecache::LaneCache,
    /// `--checkpoint`: what this lane finished and flushed (None: off).
    pub ckpt: Option<crate::copy::checkpoint::LaneCheckpoint>,
    /// The file source and destination as registered with the worker's
    /// engine (`attach`): what their operations name.
    pub(super) src_fd: Fd,
    pub(super) dst_fd: Fd,
}

impl Lane {
    /// Registers the lane's files with the worker's engine, before any
    /// operation on them.
    pub(super) fn attach(&mut self, engine: &mut Engine) -> Result<()> {
        if let SrcIo::File { fd, name, .. } = &self.src {
            self.src_fd = engine.register(*fd).map_err(|e| e.at(Side::Source, name))?;
        }
        if let DstIo::File { fd, name, .. } = &self.dst {
            self.dst_fd = engine
                .register(*fd)
                .map_err(|e| e.at(Side::Destination, name))?;
        }
        Ok(())
    }

    pub fn new(src: SrcIo, dst: DstIo, p: LaneParams) -> Lane {
        let file_src = matches!(src, SrcIo::File { .. });
        let n = p.requests.max(1);
        let slots = (0..n)
            .map(|_| Slot {
                offset: 0,
                len: 0,
                filled: 0,
                buf: (file_src || p.stage_reads)
                    .then(|| AlignedBuf::shared(HEADER_ROOM + p.request_size as usize)),
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
            src_fd: Fd::NONE,
            dst_fd: Fd::NONE,
            slots,
            free_slots: (0..n as u32).rev().collect(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            extents: VecDeque::new(),
            status: None,
            exhausted: false,
            seek: FileSeek::new(),
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
            cache: Default::default(),
            ckpt: None,
            params: p,
        }
    }

    /// Whether a READ chunk for slot `slot_id` must be assembled first: the
    /// destination needs aligned requests and the chunk is not the whole
    /// request.
    pub(super) fn needs_staging(&self, slot_id: u32, off: u64, len: u64) -> bool {
        let s = &self.slots[slot_id as usize];
        self.params.stage_reads && (s.staged || off != s.offset || len != s.len)
    }

    pub(super) fn src_is_stream(&self) -> bool {
        matches!(self.src, SrcIo::File { stream: true, .. })
    }

    pub(super) fn src_name(&self) -> &str {
        match &self.src {
            SrcIo::File { name, .. } => name,
            SrcIo::Nbd(c) => &c.name,
        }
    }

    pub(super) fn dst_name(&self) -> &str {
        match &self.dst {
            DstIo::Null => "null:",
            DstIo::File { name, .. } => name,
            DstIo::Nbd(c) => &c.name,
        }
    }

    /// "source NAME" for messages (NBD connection names carry the side).
    pub(super) fn src_label(&self) -> String {
        match &self.src {
            SrcIo::Nbd(c) => c.name.clone(),
            SrcIo::File { name, .. } => format!("source {name}"),
        }
    }

    pub(super) fn dst_label(&self) -> String {
        match &self.dst {
            DstIo::Nbd(c) => c.name.clone(),
            DstIo::File { name, .. } => format!("destination {name}"),
            DstIo::Null => "destination null:".into(),
        }
    }

    /// Whether a FLUSH, WRITE_ZEROES, fsync or fallocate is outstanding.
    pub(super) fn slow_pending(&self) -> bool {
        (self.flushing && !self.flushed)
            || self.slow_file_ops > 0
            || matches!(&self.dst, DstIo::Nbd(c) if c.slow_pending())
    }

    pub(super) fn busy_slots(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// All data copied and acknowledged, and flushed if asked.
    pub(super) fn finished(&self) -> bool {
        self.exhausted && self.busy_slots() == 0 && (!self.params.flush || self.flushed)
    }
}
