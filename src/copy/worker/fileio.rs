// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A lane's file I/O: source reads, destination writes and zeroing, stream output.
//
// File I/O of a lane through the engine (or direct pwrite where io_uring
// would punt): source reads into slot buffers, destination writes,
// zeroing by fallocate or written zeroes, and in-order stream output.

use super::core::{user_data, Worker, K_DST_WRITE, K_SRC_READ};
use super::lane::{DstIo, Lane, SrcIo};
use super::state::{OpKind, WriteOp, ZeroMode, HEADER_ROOM};
use crate::copy::stats::Shared;
use crate::engine::buf::Span;
use crate::engine::Op;
use crate::error::{Error, Result, Side};
use crate::sys;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

impl Worker<'_> {
    pub(super) fn push_file_read(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let slot = &lane.slots[slot_id as usize];
        let buf = slot
            .buf
            .as_ref()
            .ok_or_else(|| Error::new(libc::EIO, "internal error: slot without buffer"))?;
        let filled = slot.filled as usize;
        // `fd` is the lane's number (for system calls made here); the
        // operation names the engine's registration of it.
        debug_assert!(matches!(lane.src, SrcIo::File { fd: f, .. } if f == fd));
        let op = Op::Read {
            fd: lane.src_fd,
            buf: buf.clone(),
            at: HEADER_ROOM + filled,
            len: (slot.len - slot.filled) as usize,
            offset: (!stream).then_some(slot.offset + slot.filled),
        };
        // The slot is not reused (nor its buffer written) until this read
        // completes; the operation holds a share of the buffer.
        self.engine
            .push(op, user_data(lane_id, K_SRC_READ, slot_id as u64))
    }

    pub(super) fn file_read_done(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        res: i32,
    ) -> Result<()> {
        let (fd, stream) = match &lane.src {
            SrcIo::File { fd, stream, .. } => (*fd, *stream),
            SrcIo::Nbd(_) => return Err(Error::new(libc::EIO, "bad completion")),
        };
        let at = lane.slots[slot_id as usize].offset + lane.slots[slot_id as usize].filled;
        if res < 0 {
            return Err(Error::from_res(
                format!("source {}: read at offset {at}", lane.src_name()),
                res,
            )
            .on(Side::Source));
        }
        if stream {
            // A stream fills the whole slot (a pipe hands out what it
            // has): requests stay request-size, and so aligned, but the
            // last.
            lane.slots[slot_id as usize].filled += res as u64;
            lane.stream_pos += res as u64;
            // Keep the size current so progress shows something sensible.
            self.shared.size.fetch_max(lane.stream_pos, Relaxed);
            if let Some(max) = lane.params.dst_size {
                if lane.stream_pos > max {
                    return Err(Error::new(
                        libc::ENOSPC,
                        format!(
                            "source {}: the stream is larger than {} ({max} bytes): it goes \
                             on past offset {max}",
                            lane.src_name(),
                            lane.dst_label()
                        ),
                    )
                    .on(Side::Source));
                }
            }
            let slot = &mut lane.slots[slot_id as usize];
            if res > 0 && slot.filled < slot.len {
                return self.push_file_read(lane_id, lane, slot_id, fd, true);
            }
            lane.stream_reading = false;
            if res == 0 {
                // End of the stream: its size is now known.
                lane.exhausted = true;
                self.shared.size.store(lane.stream_pos, Relaxed);
                self.shared.size_known.store(1, Relaxed);
                if slot.filled == 0 {
                    slot.busy = false;
                    lane.free_slots.push(slot_id);
                    return Ok(());
                }
                slot.len = slot.filled;
            }
        } else {
            if res == 0 {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "source {}: unexpected end of file at offset {at} (did it shrink?)",
                        lane.src_name(),
                    ),
                )
                .on(Side::Source));
            }
            let slot = &mut lane.slots[slot_id as usize];
            slot.filled += res as u64;
            if slot.filled < slot.len {
                return self.push_file_read(lane_id, lane, slot_id, fd, false);
            }
        }
        let slot = &mut lane.slots[slot_id as usize];
        slot.read_done = true;
        let (off, len) = (slot.offset, slot.len as usize);
        lane.cache.read(off, len as u64);
        let data = slot
            .buf
            .as_ref()
            .map(|b| Span::of_buf(b, HEADER_ROOM, len))
            .ok_or_else(|| Error::new(libc::EIO, "internal error: slot without buffer"))?;
        self.dst_data(lane_id, lane, slot_id, off, data, None)
    }

    /// Starts one destination file operation as a part of slot `slot_id`:
    /// writing `data` (with `block`, a source receive block reference it
    /// holds), or zeroing `len` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn file_op(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        offset: u64,
        data: Option<Span>,
        len: u64,
        kind: OpKind,
        block: Option<u32>,
    ) -> Result<()> {
        let DstIo::File { fd, stream, .. } = lane.dst else {
            return Err(Error::new(libc::EIO, "internal error: not a file"));
        };
        let op = WriteOp {
            slot: slot_id,
            offset,
            data,
            len,
            done: 0,
            kind,
            block,
        };
        let oi = match lane.free_ops.pop() {
            Some(i) => {
                lane.ops[i as usize] = op;
                i
            }
            None => {
                lane.ops.push(op);
                (lane.ops.len() - 1) as u32
            }
        };
        lane.slots[slot_id as usize].parts += 1;
        Shared::add(&self.shared.requests, 1);
        if stream {
            lane.out_queue.insert(offset, oi);
            self.pump_stream_out(lane_id, lane, fd)
        } else {
            self.push_file_op(lane_id, lane, oi, fd, false)
        }
    }

    pub(super) fn pump_stream_out(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        fd: RawFd,
    ) -> Result<()> {
        if lane.out_busy {
            return Ok(());
        }
        if let Some(oi) = lane.out_queue.remove(&lane.out_next) {
            lane.out_busy = true;
            self.push_file_op(lane_id, lane, oi, fd, true)?;
        }
        Ok(())
    }

    pub(super) fn push_file_op(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        oi: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let op = &mut lane.ops[oi as usize];
        if lane.params.direct_file_writes && !stream {
            if let OpKind::Write | OpKind::WriteZeroes = op.kind {
                // Page-cache writes that io_uring would hand to an io-wq
                // thread (filesystems without non-blocking writes, such as
                // tmpfs) are cheaper done right here.
                let rest = op.rest();
                let lock = lane.params.file_lock.clone();
                let serial = lock.as_ref().map(|l| l.lock());
                let r = sys::pwrite(fd, rest.as_slice(), op.offset + op.done);
                drop(serial);
                let res = match r {
                    Ok(n) => n as i32,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                };
                Shared::add(&self.shared.syscalls_direct, 1);
                return self.write_done_file(lane_id, lane, oi, res);
            }
        }
        let offset = (!stream).then_some(op.offset + op.done);
        let u = user_data(lane_id, K_DST_WRITE, oi as u64);
        let e = match op.kind {
            OpKind::Write | OpKind::WriteZeroes => Op::Write {
                fd: lane.dst_fd,
                data: op.rest(),
                offset,
            },
            OpKind::Fallocate(mode) => {
                lane.slow_file_ops += 1;
                Op::Fallocate {
                    fd: lane.dst_fd,
                    offset: op.offset,
                    len: op.len,
                    mode,
                }
            }
        };
        // The data (a slot buffer or receive block held by the slot or a
        // block reference until this completes, or the zero buffer) is
        // shared with the operation.
        self.engine.push(e, u)
    }

    pub(super) fn write_done_file(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        oi: u32,
        res: i32,
    ) -> Result<()> {
        let DstIo::File { fd, stream, .. } = lane.dst else {
            return Err(Error::new(libc::EIO, "bad completion"));
        };
        let (at, left, kind) = {
            let op = &lane.ops[oi as usize];
            (op.offset + op.done, op.len - op.done, op.kind)
        };
        if let OpKind::Fallocate(_) = kind {
            lane.slow_file_ops -= 1;
            if res == -libc::EOPNOTSUPP || res == -libc::EINVAL || res == -libc::ENODEV {
                // Not supported here: degrade (punch -> zero range -> write).
                let next = match lane.zero_mode {
                    ZeroMode::PunchHole => ZeroMode::ZeroRange,
                    _ => ZeroMode::Write,
                };
                lane.zero_mode = next;
                let op = &mut lane.ops[oi as usize];
                op.kind = match next {
                    ZeroMode::ZeroRange => {
                        OpKind::Fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    }
                    _ => OpKind::WriteZeroes,
                };
                return self.push_file_op(lane_id, lane, oi, fd, stream);
            }
        }
        if res < 0 {
            let what = match kind {
                OpKind::Fallocate(_) => "zeroing",
                _ => "write",
            };
            return Err(Error::from_res(
                format!(
                    "destination {}: {what} at offset {at} length {left}",
                    lane.dst_name()
                ),
                res,
            )
            .on(Side::Destination));
        }
        let op = &mut lane.ops[oi as usize];
        match kind {
            OpKind::Fallocate(_) => op.done = op.len,
            _ if res == 0 => {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "destination {}: write at offset {at} made no progress",
                        lane.dst_name()
                    ),
                )
                .on(Side::Destination))
            }
            _ => op.done += res as u64,
        }
        if op.done < op.len {
            return self.push_file_op(lane_id, lane, oi, fd, stream);
        }
        let (slot_id, offset, len, block) = (op.slot, op.offset, op.len, op.block.take());
        // The data's buffer is free for reuse once nothing holds it.
        op.data = None;
        lane.free_ops.push(oi);
        if !matches!(kind, OpKind::Fallocate(_)) && !stream {
            lane.cache.wrote(offset, len)?;
        }
        if let (Some(b), SrcIo::Nbd(c)) = (block, &mut lane.src) {
            c.release(b);
        }
        if kind == OpKind::Write {
            Shared::add(&self.shared.bytes_copied, len);
        } else {
            Shared::add(&self.shared.bytes_zeroed, len);
        }
        if stream {
            lane.out_busy = false;
            lane.out_next += len;
            self.pump_stream_out(lane_id, lane, fd)?;
        }
        self.part_finished(lane, slot_id, len)?;
        Ok(())
    }
}

impl WriteOp {
    /// What is left to write: the rest of the data, or (zeroing by
    /// writes) up to 32 MiB of zeroes.
    fn rest(&mut self) -> Span {
        match &mut self.data {
            Some(d) => d.sub(self.done as usize, d.len()),
            None => Span::zeroes((self.len - self.done).min(32 << 20) as usize),
        }
    }
}
