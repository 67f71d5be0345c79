// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! File I/O of a lane through io_uring (or direct pwrite where io_uring
//! would punt): source reads into slot buffers, destination writes,
//! zeroing by fallocate or written zeroes, in-order stream output, and the
//! data/hole map of a source file.

use super::{
    ud, zero_buffer, DstIo, Lane, OpKind, SrcIo, Worker, WriteOp, ZeroMode, HEADER_ROOM,
    K_DST_WRITE, K_SRC_READ,
};
use crate::copy::align::Extent;
use crate::copy::stats::Shared;
use crate::error::{Error, Result};
use io_uring::{opcode, types};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

/// Data and hole extents of [a, b) of a file, by SEEK_DATA/SEEK_HOLE, in
/// order.  Anything the kernel cannot answer counts as data.
pub(super) fn file_extents(fd: RawFd, a: u64, b: u64, out: &mut dyn FnMut(Extent)) {
    let mut push = |offset: u64, len: u64, zero: bool| {
        if len > 0 {
            out(Extent { offset, len, zero });
        }
    };
    let mut pos = a;
    while pos < b {
        // SAFETY: lseek takes no memory arguments.  The file position is
        // never used for I/O (every read has an explicit offset).
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            push(pos, b - pos, e == Some(libc::ENXIO));
            return;
        }
        let data = (data as u64).clamp(pos, b);
        push(pos, data - pos, true);
        if data >= b {
            return;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            b
        } else {
            (hole as u64).clamp(data + 1, b)
        };
        push(data, hole - data, false);
        pos = hole;
    }
}

impl Worker<'_> {
    pub(super) fn push_file_read(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let slot = &lane.slots[si as usize];
        let buf = slot
            .buf
            .as_ref()
            .ok_or_else(|| Error::new(libc::EIO, "internal error: slot without buffer"))?;
        let filled = slot.filled as usize;
        // SAFETY: HEADER_ROOM + filled < buffer length (len <= request_size).
        let ptr = unsafe { buf.ptr().add(HEADER_ROOM + filled) };
        let off = if stream {
            u64::MAX
        } else {
            slot.offset + slot.filled
        };
        let e = opcode::Read::new(types::Fd(fd), ptr, (slot.len - slot.filled) as u32)
            .offset(off)
            .build()
            .user_data(ud(li, K_SRC_READ, si as u64));
        // SAFETY: the slot buffer lives in `lane`, which outlives every
        // operation (run_worker drains the ring before dropping lanes), and
        // the slot is not reused until this read completes.
        unsafe { self.ring.push(&e) }
    }

    pub(super) fn file_read_done(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        res: i32,
    ) -> Result<()> {
        let (fd, stream) = match &lane.src {
            SrcIo::File { fd, stream, .. } => (*fd, *stream),
            SrcIo::Nbd(_) => return Err(Error::new(libc::EIO, "bad completion")),
        };
        let at = lane.slots[si as usize].offset + lane.slots[si as usize].filled;
        if res < 0 {
            return Err(Error::from_res(
                format!("source {}: read at offset {at}", lane.src_name()),
                res,
            ));
        }
        if stream {
            // A stream fills the whole slot (a pipe hands out what it
            // has): requests stay request-size, and so aligned, but the
            // last.
            lane.slots[si as usize].filled += res as u64;
            lane.stream_pos += res as u64;
            // Keep the size current so progress shows something sensible.
            self.shared.size.fetch_max(lane.stream_pos, Relaxed);
            if let Some(max) = lane.p.dst_size {
                if lane.stream_pos > max {
                    return Err(Error::new(
                        libc::ENOSPC,
                        format!(
                            "source {}: the stream is larger than {} ({max} bytes): it goes \
                             on past offset {max}",
                            lane.src_name(),
                            lane.dst_label()
                        ),
                    ));
                }
            }
            let slot = &mut lane.slots[si as usize];
            if res > 0 && slot.filled < slot.len {
                return self.push_file_read(li, lane, si, fd, true);
            }
            lane.stream_reading = false;
            if res == 0 {
                // End of the stream: its size is now known.
                lane.exhausted = true;
                self.shared.size.store(lane.stream_pos, Relaxed);
                self.shared.size_known.store(1, Relaxed);
                if slot.filled == 0 {
                    slot.busy = false;
                    lane.free_slots.push(si);
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
                ));
            }
            let slot = &mut lane.slots[si as usize];
            slot.filled += res as u64;
            if slot.filled < slot.len {
                return self.push_file_read(li, lane, si, fd, false);
            }
        }
        let slot = &mut lane.slots[si as usize];
        slot.read_done = true;
        let ptr = slot
            .buf
            .as_ref()
            .map(|b| b.ptr())
            .unwrap_or(std::ptr::null_mut());
        // SAFETY: HEADER_ROOM is inside the buffer.
        let data = unsafe { ptr.add(HEADER_ROOM) };
        let (off, len) = (slot.offset, slot.len);
        self.dst_data(li, lane, si, off, data, len as usize, HEADER_ROOM, None)
    }

    /// Starts one destination file operation as a part of slot `si`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn file_op(
        &mut self,
        li: usize,
        lane: &mut Lane,
        si: u32,
        offset: u64,
        ptr: *mut u8,
        len: u64,
        kind: OpKind,
        block: Option<u32>,
    ) -> Result<()> {
        let DstIo::File { fd, stream, .. } = lane.dst else {
            return Err(Error::new(libc::EIO, "internal error: not a file"));
        };
        let op = WriteOp {
            slot: si,
            offset,
            ptr,
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
        lane.slots[si as usize].parts += 1;
        Shared::add(&self.shared.requests, 1);
        if stream {
            lane.out_queue.insert(offset, oi);
            self.pump_stream_out(li, lane, fd)
        } else {
            self.push_file_op(li, lane, oi, fd, false)
        }
    }

    pub(super) fn pump_stream_out(&mut self, li: usize, lane: &mut Lane, fd: RawFd) -> Result<()> {
        if lane.out_busy {
            return Ok(());
        }
        if let Some(oi) = lane.out_queue.remove(&lane.out_next) {
            lane.out_busy = true;
            self.push_file_op(li, lane, oi, fd, true)?;
        }
        Ok(())
    }

    pub(super) fn push_file_op(
        &mut self,
        li: usize,
        lane: &mut Lane,
        oi: u32,
        fd: RawFd,
        stream: bool,
    ) -> Result<()> {
        let op = &lane.ops[oi as usize];
        if lane.p.direct_file_writes && !stream {
            if let OpKind::Write | OpKind::WriteZeroes = op.kind {
                // Page-cache writes that io_uring would hand to an io-wq
                // thread (filesystems without non-blocking writes, such as
                // tmpfs) are cheaper done right here.
                let (p, n) = match op.kind {
                    // SAFETY: done < len, inside the op's data.
                    OpKind::Write => (
                        unsafe { op.ptr.add(op.done as usize) },
                        (op.len - op.done) as usize,
                    ),
                    _ => {
                        let n = (op.len - op.done).min(32 << 20) as usize;
                        (zero_buffer(n), n)
                    }
                };
                let lock = lane.p.file_lock.clone();
                let serial = lock.as_ref().map(|l| l.lock());
                // SAFETY: p is valid for n bytes (slot buffer, receive block
                // or zero buffer, all held for this op).
                let r = unsafe {
                    libc::pwrite(
                        fd,
                        p as *const libc::c_void,
                        n,
                        (op.offset + op.done) as libc::off_t,
                    )
                };
                drop(serial);
                let res = if r < 0 {
                    -std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO)
                } else {
                    r as i32
                };
                Shared::add(&self.shared.syscalls_direct, 1);
                return self.write_done(li, lane, oi, res);
            }
        }
        let off = if stream {
            u64::MAX
        } else {
            op.offset + op.done
        };
        let u = ud(li, K_DST_WRITE, oi as u64);
        let e = match op.kind {
            OpKind::Write => {
                // SAFETY: done < len, inside the data the op refers to.
                let p = unsafe { op.ptr.add(op.done as usize) };
                opcode::Write::new(types::Fd(fd), p, (op.len - op.done) as u32)
                    .offset(off)
                    .build()
            }
            OpKind::WriteZeroes => {
                let n = (op.len - op.done).min(32 << 20) as usize;
                opcode::Write::new(types::Fd(fd), zero_buffer(n), n as u32)
                    .offset(off)
                    .build()
            }
            OpKind::Fallocate(mode) => {
                lane.slow_file_ops += 1;
                opcode::Fallocate::new(types::Fd(fd), op.len)
                    .offset(op.offset)
                    .mode(mode)
                    .build()
            }
        };
        // SAFETY: the data lives in a slot buffer or receive block owned by
        // `lane` and held (slot busy / block reference) until this
        // operation completes, or in the static zero buffer; run_worker
        // drains the ring before dropping lanes.
        unsafe { self.ring.push(&e.user_data(u)) }
    }

    pub(super) fn write_done(
        &mut self,
        li: usize,
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
                return self.push_file_op(li, lane, oi, fd, stream);
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
            ));
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
                ))
            }
            _ => op.done += res as u64,
        }
        if op.done < op.len {
            return self.push_file_op(li, lane, oi, fd, stream);
        }
        let (si, len, block) = (op.slot, op.len, op.block.take());
        lane.free_ops.push(oi);
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
            self.pump_stream_out(li, lane, fd)?;
        }
        self.part_finished(lane, si, len)?;
        Ok(())
    }
}
