// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A lane's splice data path: setup, and moving piped data to the destination.
//
// A lane's splice data path: setting it up (pipes, /dev/null), and
// moving what arrived in the pipe on to the destination, with zero
// detection on a tee'd copy.

use super::core::{user_data, Worker, K_DST_NBD};
use super::lane::{DstIo, Lane, SrcIo};
use super::state::LaneSplice;
use super::zero::{zero_runs, Run};
use crate::copy::splice::{self, Pipe, WaitLimits};
use crate::copy::stats::Shared;
use crate::error::{Error, Result, Side};
use std::os::fd::{AsRawFd, RawFd};

impl Lane {
    /// Switches this lane to the splice data path when it applies (an
    /// NBD source; null:, NBD, regular-file or block-device destination)
    /// and the system grants the pipes.  True when it did.
    pub fn enable_splice(&mut self, ctl: WaitLimits) -> bool {
        match (&self.src, &self.dst) {
            (SrcIo::Nbd(_), DstIo::File { stream: true, .. }) => return false,
            (SrcIo::Nbd(_), _) => {}
            // Files: page-cache pages go to the pipe by reference.
            (SrcIo::File { stream: false, .. }, DstIo::Nbd(_) | DstIo::Null) => {}
            _ => return false,
        }
        let rs = self.params.request_size as usize;
        // Room for a whole request even when the kernel fills pipe slots
        // with less than a page each.  A smaller pipe (the system's limit,
        // or the "pipe-size" option for tests) works too: payloads then
        // move in pieces.
        let want = self
            .params
            .pipe_size
            .unwrap_or((4 * rs).max(1 << 20))
            .max(4096);
        let Some(pipe) = Pipe::new(want.min(64 << 10), want) else {
            return false;
        };
        let detect = self.params.sparse > 0 && !matches!(self.dst, DstIo::Null);
        let tee = if detect {
            // As many slots as the main pipe, so a tee always fits.
            match Pipe::new(pipe.cap, pipe.cap) {
                Some(t) => {
                    let buf = vec![0u8; pipe.cap];
                    Some((t, buf))
                }
                None => return false,
            }
        } else {
            None
        };
        let Ok(devnull) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
            return false;
        };
        if let SrcIo::Nbd(src) = &mut self.src {
            src.set_splice_source(pipe.w.as_raw_fd(), pipe.cap, ctl.clone());
        }
        if let DstIo::Nbd(d) = &mut self.dst {
            d.set_sync_send(ctl.clone());
        }
        self.splice = Some(LaneSplice {
            pipe,
            tee,
            devnull: devnull.into(),
            ctl,
        });
        true
    }
}

impl Worker<'_> {
    /// READ data waiting in the lane's pipe (splice mode): zero blocks
    /// (found in a tee'd copy) are discarded and zeroed, the rest moved to
    /// the destination without entering user space.  Leaves the pipe empty.
    pub(super) fn pipe_data(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        off: u64,
        len: usize,
    ) -> Result<()> {
        Self::check_dst_range(lane, off, len as u64)?;
        let sparse = lane.params.sparse;
        let Some(sp) = lane.splice.as_mut() else {
            return Err(Error::new(
                libc::EIO,
                "internal error: pipe data without a pipe",
            ));
        };
        let (pipe_r, devnull, ctl) = (
            sp.pipe.r.as_raw_fd(),
            sp.devnull.as_raw_fd(),
            sp.ctl.clone(),
        );
        let mut runs = std::mem::take(&mut lane.runs);
        runs.clear();
        match sp.tee.as_mut() {
            Some((tee, tee_buf)) if len > 0 => {
                if let Err(e) = splice::tee_read(pipe_r, tee, tee_buf, len, &ctl) {
                    lane.runs = runs;
                    let e = e.context(format!("{} (zero detection)", lane.src_label()));
                    return Err(e.on(Side::Source));
                }
                zero_runs(&tee_buf[..len], off, sparse, &mut runs);
            }
            _ => runs.push(Run {
                start: 0,
                end: len,
                zero: false,
            }),
        }
        let mut r = Ok(());
        for run in &runs {
            let (roff, n) = (off + run.start as u64, run.len());
            r = match (&mut lane.dst, run.zero) {
                (_, true) => splice::splice_out(pipe_r, devnull, None, n, &ctl, "/dev/null")
                    .and_then(|()| self.dst_zero(lane_id, lane, slot_id, roff, n as u64)),
                (DstIo::Nbd(c), false) => {
                    lane.slots[slot_id as usize].parts += 1;
                    Shared::add(&self.shared.requests, 1);
                    Shared::add(&self.shared.bytes_spliced, n as u64);
                    let base = user_data(lane_id, K_DST_NBD, 0);
                    let alone = self.single_lane;
                    c.send_pipe(
                        &mut self.engine,
                        base,
                        slot_id,
                        roff,
                        pipe_r,
                        n as u32,
                        alone,
                    )
                }
                // Null and file destinations are written right here.
                (dst, false) => {
                    let moved = match dst {
                        DstIo::File { fd, name, .. } => {
                            Shared::add(&self.shared.requests, 1);
                            let _serial = lane.params.file_lock.as_ref().map(|l| l.lock());
                            splice::splice_out(pipe_r, *fd, Some(roff), n, &ctl, name).map_err(
                                |mut e| {
                                    // "destination NAME: ...", built only on error.
                                    e.msg = format!("destination {}", e.msg);
                                    e.on(Side::Destination)
                                },
                            )
                        }
                        _ => splice::splice_out(pipe_r, devnull, None, n, &ctl, "/dev/null"),
                    };
                    moved
                        .and_then(|()| lane.cache.wrote(roff, n as u64))
                        .map(|()| {
                            Shared::add(&self.shared.bytes_copied, n as u64);
                            Shared::add(&self.shared.bytes_spliced, n as u64);
                            self.part_done(lane, slot_id, n as u64);
                        })
                }
            };
            if r.is_err() {
                break;
            }
        }
        lane.runs = runs;
        r
    }

    /// Moves [off, off+len) of a file whose pages are all in the page
    /// cache into the pipe and on to the destination (splice path; no
    /// disk I/O can block the worker), as slot `slot_id`.
    pub(super) fn file_splice(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        slot_id: u32,
        fd: RawFd,
        off: u64,
        len: u64,
    ) -> Result<()> {
        let Some(sp) = lane.splice.as_ref() else {
            return Err(Error::new(libc::EIO, "internal error: no pipe"));
        };
        let (pipe_w, cap, ctl) = (sp.pipe.w.as_raw_fd(), sp.pipe.cap, sp.ctl.clone());
        let mut done = 0u64;
        while done < len {
            // At most a pipe's worth of bytes at a time (what the zero
            // detection buffer holds).
            let want = ((len - done) as usize).min(cap);
            let n = splice::splice_file_in(fd, off + done, pipe_w, want, &ctl)
                .map_err(|e| e.at(Side::Source, lane.src_name()))?;
            self.pipe_data(lane_id, lane, slot_id, off + done, n)?;
            done += n as u64;
        }
        lane.cache.read(off, len);
        lane.slots[slot_id as usize].read_done = true;
        self.part_done(lane, slot_id, 0);
        Ok(())
    }
}
