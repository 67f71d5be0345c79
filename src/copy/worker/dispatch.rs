// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Data from the source to the destination: zero runs, writes, slot accounting.
//
// What happens to data once the source delivered it: zero runs zeroed
// or skipped, the rest written to the destination; slot accounting, the
// final flush, and the events of NBD connections.

use super::core::{user_data, Worker, K_DST_FSYNC};
use super::lane::{DstIo, Lane, SrcIo};
use super::state::{OpKind, ZeroMode, HEADER_ROOM};
use super::zero::zero_runs;
use crate::copy::nbdconn::ConnEvent;
use crate::copy::stats::Shared;
use crate::engine::buf::{make_unique, write_exclusive, Span};
use crate::engine::Op;
use crate::error::{Error, Result, Side};

impl Worker<'_> {
    /// Copies one READ chunk (`data` with its receive block, or a hole
    /// when None) of `len` bytes at `off` into slot `slot_id`'s buffer, to be
    /// handed on whole at ReadDone.
    fn stage_chunk(
        &mut self,
        lane: &mut Lane,
        slot_id: u32,
        off: u64,
        len: u64,
        data: Option<(Span, u32)>,
    ) -> Result<()> {
        let slot = &mut lane.slots[slot_id as usize];
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
            )
            .on(Side::Source));
        };
        let at = HEADER_ROOM + (off - slot.offset) as usize;
        if !slot.staged {
            // A span of the slot's previous use may still hold the buffer
            // (until its batch is sent): then the slot gets a fresh one.
            make_unique(buf);
            // What no chunk covers reads as zero.
            if let Some(b) = write_exclusive(buf, HEADER_ROOM, HEADER_ROOM + slot.len as usize) {
                b.fill(0);
            }
            slot.staged = true;
        }
        // The slot is busy assembling: nothing but this holds its buffer.
        let Some(dst) = write_exclusive(buf, at, at + len as usize) else {
            return Err(Error::new(
                libc::EIO,
                "internal error: a slot being assembled is shared",
            ));
        };
        match data {
            Some((span, block)) => {
                dst.copy_from_slice(span.as_slice());
                Shared::add(&self.shared.bytes_memcpy, len);
                if let SrcIo::Nbd(c) = &mut lane.src {
                    c.release(block);
                }
            }
            None => dst.fill(0),
        }
        Ok(())
    }

    /// Data read from the source: zero blocks (with `sparse`) are zeroed,
    /// the rest written.  `block` carries one reference to a source
    /// receive block, passed on to the writes.
    pub(super) fn dst_data(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        off: u64,
        data: Span,
        block: Option<u32>,
    ) -> Result<()> {
        if let Some(h) = &lane.params.hash {
            h.data(off, data.as_slice());
        }
        let sparse = lane.params.sparse;
        if sparse == 0 || data.is_empty() {
            return self.dst_write(lane_id, lane, slot_id, off, data, block);
        }
        let mut runs = std::mem::take(&mut lane.runs);
        zero_runs(data.as_slice(), off, sparse, &mut runs);
        if runs.len() == 1 && !runs[0].zero {
            lane.runs = runs;
            return self.dst_write(lane_id, lane, slot_id, off, data, block);
        }
        let n_data = runs.iter().filter(|r| !r.zero).count();
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
        lane.slots[slot_id as usize].parts += 1;
        let mut r = Ok(());
        // A data run after a zero run may put its header over the zero
        // run's bytes (they are not sent): the pieces' rooms.
        let mut pieces = data.carve();
        for run in &runs {
            if r.is_err() {
                break;
            }
            let roff = off + run.start as u64;
            if run.zero {
                r = self.dst_zero(lane_id, lane, slot_id, roff, run.len() as u64);
            } else {
                let part = pieces.piece(run.start, run.end);
                r = self.dst_write(
                    lane_id,
                    lane,
                    slot_id,
                    roff,
                    part,
                    block.filter(|_| n_data > 0),
                );
            }
        }
        lane.runs = runs;
        self.part_finished(lane, slot_id, 0)?;
        r
    }

    pub(super) fn check_dst_range(lane: &Lane, offset: u64, len: u64) -> Result<()> {
        if let Some(max) = lane.params.dst_size {
            if offset.checked_add(len).is_none_or(|end| end > max) {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!(
                        "destination {}: write at offset {offset} length {len} is past its \
                         end ({max} bytes)",
                        lane.dst_name()
                    ),
                )
                .on(Side::Destination));
            }
        }
        Ok(())
    }

    /// Writes `data` to the destination at `offset`, as one part of slot
    /// `slot_id`; `block` is the source receive block reference it holds.
    fn dst_write(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        offset: u64,
        data: Span,
        block: Option<u32>,
    ) -> Result<()> {
        let len = data.len() as u64;
        let offset = offset.wrapping_add(lane.params.dst_shift);
        Self::check_dst_range(lane, offset, len)?;
        match &mut lane.dst {
            DstIo::Null => {
                if let (Some(b), SrcIo::Nbd(c)) = (block, &mut lane.src) {
                    c.release(b);
                }
                Shared::add(&self.shared.bytes_copied, len);
                self.part_done(lane, slot_id, len);
                Ok(())
            }
            DstIo::Nbd(c) => {
                lane.slots[slot_id as usize].parts += 1;
                Shared::add(&self.shared.requests, 1);
                c.queue_write(slot_id, offset, data, block)
            }
            DstIo::File { .. } => self.file_op(
                lane_id,
                lane,
                slot_id,
                offset,
                Some(data),
                len,
                OpKind::Write,
                block,
            ),
        }
    }

    /// Makes [offset, offset+len) of the destination read as zeroes (or
    /// skips it when the destination is known to be zero), as part of
    /// slot `slot_id`.
    pub(super) fn dst_zero(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let offset = offset.wrapping_add(lane.params.dst_shift);
        Self::check_dst_range(lane, offset, len)?;
        if lane.params.dst_is_zero
            && !lane.params.allocated
            && !matches!(lane.dst, DstIo::File { stream: true, .. })
        {
            Shared::add(&self.shared.bytes_skipped, len);
            self.part_done(lane, slot_id, len);
            return Ok(());
        }
        match &mut lane.dst {
            DstIo::Null => {
                Shared::add(&self.shared.bytes_zeroed, len);
                self.part_done(lane, slot_id, len);
                Ok(())
            }
            DstIo::Nbd(c) => {
                let n = c.queue_zero(slot_id, offset, len, lane.params.allocated)?;
                lane.slots[slot_id as usize].parts += n;
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
                self.file_op(lane_id, lane, slot_id, offset, None, len, kind, None)
            }
        }
    }

    /// One outstanding part of slot `slot_id` (a write, a zeroing, or the hold
    /// `dst_data` keeps while it dispatches) finished with `bytes`.
    pub(super) fn part_finished(
        &mut self,
        lane: &mut Lane,
        slot_id: u32,
        bytes: u64,
    ) -> Result<()> {
        let slot = &mut lane.slots[slot_id as usize];
        slot.parts = slot.parts.checked_sub(1).ok_or_else(|| {
            Error::new(
                libc::EIO,
                format!(
                    "internal error: slot at offset {} finished more parts than it started",
                    slot.offset
                ),
            )
        })?;
        self.part_done(lane, slot_id, bytes);
        Ok(())
    }

    /// `bytes` of slot `slot_id` reached the destination; frees the slot when
    /// nothing of it is outstanding any more.
    pub(super) fn part_done(&mut self, lane: &mut Lane, slot_id: u32, bytes: u64) {
        Shared::add(&self.shared.bytes_done, bytes);
        let slot = &mut lane.slots[slot_id as usize];
        if slot.parts == 0 && slot.read_done && slot.busy {
            slot.busy = false;
            if let Some(c) = &mut lane.ckpt {
                c.done(slot.offset, slot.len);
            }
            lane.free_slots.push(slot_id);
        }
    }

    pub(super) fn start_flush(&mut self, lane_id: usize, lane: &mut Lane) -> Result<()> {
        lane.flushing = true;
        match &mut lane.dst {
            DstIo::Null | DstIo::File { stream: true, .. } => Self::flush_done(lane),
            DstIo::File { .. } => {
                let fd = lane.dst_fd;
                self.engine
                    .push(Op::Fsync { fd }, user_data(lane_id, K_DST_FSYNC, 0))?;
            }
            DstIo::Nbd(c) => {
                if !c.queue_flush()? {
                    Self::flush_done(lane); // the server cannot flush
                }
            }
        }
        Ok(())
    }

    /// `--checkpoint`: a flush of what the lane finished so far, asked for
    /// by the job (copy/checkpoint.rs); the work is recorded when it
    /// completes.
    pub(super) fn checkpoint_flush(&mut self, lane_id: usize, lane: &mut Lane) -> Result<()> {
        let Some(c) = lane.ckpt.as_mut() else {
            return Ok(());
        };
        c.begin_flush();
        match &mut lane.dst {
            DstIo::Null | DstIo::File { stream: true, .. } => c.flushed(),
            DstIo::File { .. } => {
                let fd = lane.dst_fd;
                self.engine
                    .push(Op::Fsync { fd }, user_data(lane_id, K_DST_FSYNC, 0))?;
            }
            DstIo::Nbd(conn) => {
                if !conn.queue_flush()? {
                    c.flushed(); // the server cannot flush
                }
            }
        }
        Ok(())
    }

    /// A flush of the lane's destination completed: a checkpoint's, or
    /// the final one.
    pub(super) fn flush_done(lane: &mut Lane) {
        match lane.ckpt.as_mut() {
            Some(c) if c.flushing => c.flushed(),
            c => {
                lane.flushed = true;
                if let Some(c) = c {
                    c.all_flushed();
                }
            }
        }
    }

    pub(super) fn src_event(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        ev: ConnEvent,
    ) -> Result<()> {
        match ev {
            ConnEvent::Data {
                slot,
                offset,
                data,
                block,
            } if lane.needs_staging(slot, offset, data.len() as u64) => {
                self.stage_chunk(lane, slot, offset, data.len() as u64, Some((data, block)))
            }
            ConnEvent::Data {
                slot,
                offset,
                data,
                block,
            } => self.dst_data(lane_id, lane, slot, offset, data, Some(block)),
            ConnEvent::PipeData { slot, offset, len } => {
                self.pipe_data(lane_id, lane, slot, offset, len as usize)
            }
            ConnEvent::Hole { slot, offset, len }
                if lane.needs_staging(slot, offset, len as u64) =>
            {
                self.stage_chunk(lane, slot, offset, len as u64, None)
            }
            ConnEvent::Hole { slot, offset, len } => {
                if let Some(h) = &lane.params.hash {
                    h.zero(offset, len as u64);
                }
                self.dst_zero(lane_id, lane, slot, offset, len as u64)
            }
            ConnEvent::ReadDone { slot } => {
                let s = &mut lane.slots[slot as usize];
                s.read_done = true;
                if std::mem::take(&mut s.staged) {
                    // The assembled READ goes on as one piece.
                    let (off, len) = (s.offset, s.len as usize);
                    let data = s
                        .buf
                        .as_ref()
                        .map(|b| Span::of_buf(b, HEADER_ROOM, len))
                        .ok_or_else(|| {
                            Error::new(libc::EIO, "internal error: staged slot without buffer")
                        })?;
                    return self.dst_data(lane_id, lane, slot, off, data, None);
                }
                self.part_done(lane, slot, 0);
                Ok(())
            }
            ConnEvent::Extents { extents } => {
                lane.add_status_extents(&extents);
                Ok(())
            }
            ConnEvent::DirtyExtents { extents } => {
                lane.add_dirty_extents(&extents);
                Ok(())
            }
            ConnEvent::StatusDone { ok, .. } => lane.status_done(ok),
            ConnEvent::WriteDone { .. } | ConnEvent::Flushed | ConnEvent::Release { .. } => {
                Err(Error::new(
                    libc::EIO,
                    "internal error: write event on a source connection",
                ))
            }
            // Handled by `resend` before the events reach here.
            ConnEvent::Failed(f) => Err(f.error),
        }
    }

    pub(super) fn dst_event(&mut self, lane: &mut Lane, ev: ConnEvent) -> Result<()> {
        match ev {
            ConnEvent::WriteDone { slot, len, zero } => {
                if zero {
                    Shared::add(&self.shared.bytes_zeroed, len);
                } else {
                    Shared::add(&self.shared.bytes_copied, len);
                }
                self.part_finished(lane, slot, len)?;
                Ok(())
            }
            ConnEvent::Flushed => {
                Self::flush_done(lane);
                Ok(())
            }
            ConnEvent::Failed(f) => Err(f.error),
            ConnEvent::Release { block } => {
                if let SrcIo::Nbd(c) = &mut lane.src {
                    c.release(block);
                }
                Ok(())
            }
            ConnEvent::Data { .. }
            | ConnEvent::PipeData { .. }
            | ConnEvent::Hole { .. }
            | ConnEvent::ReadDone { .. }
            | ConnEvent::Extents { .. }
            | ConnEvent::DirtyExtents { .. }
            | ConnEvent::StatusDone { .. } => Err(Error::new(
                libc::EIO,
                "destination sent data it was not asked for",
            )
            .on(Side::Destination)),
        }
    }
}
