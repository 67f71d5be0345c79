// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A worker thread's event loop on its engine, from the first read to the drain.
//
// The worker thread's event loop: starting work on free slots, waiting
// on the engine, routing completions to lanes, the stall timeout, and
// the drain on every exit path (the engine's Drop drains too, so a panic
// unwinding through here never frees what the kernel may still use).

use super::core::{
    decode_user_data, user_data, Worker, K_DST_FSYNC, K_DST_NBD, K_DST_WRITE, K_SRC_NBD,
    K_SRC_READ, K_SRC_SEEK,
};
use super::lane::{DstIo, Lane, SrcIo};
use crate::copy::gate::EngineGate;
use crate::copy::nbdconn::ConnEvent;
use crate::copy::splice;
use crate::copy::stats::Shared;
use crate::copy::workqueue::WorkQueue;
use crate::engine::{Completion, Op};
use crate::error::{Error, Result, Side};
use std::time::{Duration, Instant};

/// The longest a clean stop of a `--checkpoint` copy waits for the
/// destination's flushes (less when the `timeout` option is shorter).
const STOP_FLUSH: Duration = Duration::from_secs(5);

/// Runs lanes, as worker `index`, on the engine `gate` decides for the
/// whole job, until they finish, fail or are cancelled.
pub fn run_worker(
    mut lanes: Vec<Lane>,
    q: &WorkQueue,
    shared: &Shared,
    gate: &EngineGate,
    index: usize,
) {
    let entries = lanes.iter().map(|l| l.slots.len() * 2 + 8).sum::<usize>();
    let engine = match gate.engine(index, entries as u32) {
        Ok(Some(e)) => e,
        Ok(None) => return, // the job reports why
        Err(e) => return shared.fail(e),
    };
    #[cfg(test)]
    shared
        .engines_ran
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(engine.kind());
    let mut w = Worker {
        engine,
        q,
        shared,
        cqes: Vec::with_capacity(256),
        events: Vec::with_capacity(64),
        last_progress: Instant::now(),
        rate_wait: None,
        parked: Vec::new(),
        single_lane: lanes.len() == 1,
    };
    if let Err(e) = w.run(&mut lanes) {
        shared.fail(e);
    }
    if shared.stopping() {
        w.stop_flush(&mut lanes);
    }
    // Cancel and reap all operations before the connections say goodbye.
    // (The operations hold their buffers: even if this never ran, as on a
    // panic, the engine's Drop drains or leaks them, never frees them.)
    let clean = w.engine.drain(Duration::from_secs(10), &mut |_| {});
    Shared::add(&shared.ring_enters, w.engine.enters());
    Shared::add(&shared.syscalls_direct, w.engine.syscalls());
    if !clean {
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

impl Worker<'_> {
    fn run(&mut self, lanes: &mut [Lane]) -> Result<()> {
        for (i, lane) in lanes.iter_mut().enumerate() {
            lane.attach(&mut self.engine)?;
            if let SrcIo::Nbd(c) = &mut lane.src {
                c.start(&mut self.engine, user_data(i, K_SRC_NBD, 0))?;
            }
            if let DstIo::Nbd(c) = &mut lane.dst {
                c.start(&mut self.engine, user_data(i, K_DST_NBD, 0))?;
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
                let ckpt_flushing = match &lane.ckpt {
                    Some(c) if c.wants_flush() && !lane.flushing => {
                        self.checkpoint_flush(i, lane)?;
                        true
                    }
                    Some(c) => c.flushing,
                    None => false,
                };
                if lane.finished() {
                    continue;
                }
                all_done = false;
                if lane.exhausted
                    && lane.busy_slots() == 0
                    && lane.params.flush
                    && !lane.flushing
                    && !ckpt_flushing
                {
                    self.start_flush(i, lane)?;
                }
            }
            if all_done {
                return Ok(());
            }
            self.redial_lost(lanes)?;
            self.resend_due(lanes)?;
            for (i, lane) in lanes.iter_mut().enumerate() {
                if let SrcIo::Nbd(c) = &mut lane.src {
                    c.kick(&mut self.engine, user_data(i, K_SRC_NBD, 0))?;
                }
                if let DstIo::Nbd(c) = &mut lane.dst {
                    c.kick(&mut self.engine, user_data(i, K_DST_NBD, 0))?;
                }
            }
            let wait = self
                .rate_wait
                .take()
                .map_or(Duration::from_millis(50), |d| {
                    d.clamp(Duration::from_millis(1), Duration::from_millis(50))
                });
            self.engine.wait(wait)?;
            self.cqes.clear();
            self.engine.reap(&mut self.cqes);
            if self.cqes.is_empty() {
                // Idle for a whole wait: let other threads run.  Costs
                // nothing on a busy copy, and under valgrind (which treats
                // io_uring_enter as non-blocking and keeps its big lock
                // across it) it is what lets a cancelling thread run.
                std::thread::yield_now();
                self.check_timeout(lanes)
                    .or_else(|e| self.stall_as_loss(lanes, e))?;
                continue;
            }
            self.last_progress = Instant::now();
            let cqes = std::mem::take(&mut self.cqes);
            for &Completion { user_data: u, res } in &cqes {
                fault::completion(self.shared);
                let (lane_id, kind, idx) = decode_user_data(u);
                let lane = lanes.get_mut(lane_id).ok_or_else(|| {
                    Error::new(libc::EIO, format!("unexpected completion {u:#x}"))
                })?;
                self.complete(lane_id, lane, kind, idx, res)?;
            }
            self.cqes = cqes;
        }
    }

    /// A clean stop (error, cancel, signal) of a `--checkpoint` copy: each
    /// lane whose NBD destination connection is still healthy flushes
    /// what it finished, so that FILE records it.  Bounded by the
    /// `timeout` option and `STOP_FLUSH`; a lane whose flush fails or
    /// whose connection breaks records nothing more.
    fn stop_flush(&mut self, lanes: &mut [Lane]) {
        let bound = lanes
            .first()
            .and_then(|l| l.params.timeout)
            .map_or(STOP_FLUSH, |t| t.min(STOP_FLUSH));
        let deadline = Instant::now() + bound;
        let healthy = |lane: &Lane| matches!(&lane.dst, DstIo::Nbd(c) if c.can_issue());
        // Per lane: waiting for a flush, and flushes it may still start
        // (one more after a checkpoint flush that was under way).
        let mut waiting = vec![false; lanes.len()];
        let mut more = vec![0u8; lanes.len()];
        for (i, lane) in lanes.iter_mut().enumerate() {
            let Some(c) = &lane.ckpt else { continue };
            if !healthy(lane) || lane.flushing {
                continue; // a final flush under way records all when it ends
            }
            if c.flushing {
                (waiting[i], more[i]) = (true, 1);
            } else if c.has_unflushed() {
                waiting[i] = self.checkpoint_flush(i, lane).is_ok();
            }
        }
        while waiting.iter().any(|&w| w) && Instant::now() < deadline {
            for (i, lane) in lanes.iter_mut().enumerate() {
                if !waiting[i] {
                    continue;
                }
                let flushing = lane.ckpt.as_ref().is_some_and(|c| c.flushing);
                let unflushed = lane.ckpt.as_ref().is_some_and(|c| c.has_unflushed());
                if !healthy(lane) {
                    waiting[i] = false;
                } else if !flushing {
                    waiting[i] = more[i] > 0 && unflushed && self.checkpoint_flush(i, lane).is_ok();
                    more[i] = 0;
                }
                if let (true, DstIo::Nbd(c)) = (waiting[i], &mut lane.dst) {
                    if c.kick(&mut self.engine, user_data(i, K_DST_NBD, 0))
                        .is_err()
                    {
                        waiting[i] = false;
                    }
                }
            }
            if !waiting.iter().any(|&w| w) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .engine
                .wait(left.clamp(Duration::from_millis(1), Duration::from_millis(50)))
                .is_err()
            {
                break;
            }
            self.cqes.clear();
            self.engine.reap(&mut self.cqes);
            let cqes = std::mem::take(&mut self.cqes);
            for &Completion { user_data: u, res } in &cqes {
                let (lane_id, kind, idx) = decode_user_data(u);
                let Some(lane) = lanes.get_mut(lane_id) else {
                    continue;
                };
                // An error ends that lane's part: what its flushes made
                // durable so far is what FILE gets.
                if self.complete(lane_id, lane, kind, idx, res).is_err() {
                    if let Some(w) = waiting.get_mut(lane_id) {
                        *w = false;
                    }
                }
            }
            self.cqes = cqes;
        }
    }

    fn check_timeout(&self, lanes: &[Lane]) -> Result<()> {
        // While an operation that may take long is outstanding, a silent
        // peer is not a stuck one: the slow limit applies.
        let slow = lanes.iter().any(Lane::slow_pending);
        let limit = lanes.first().and_then(|l| {
            if slow {
                l.params.slow_timeout
            } else {
                l.params.timeout
            }
        });
        let Some(t) = limit else {
            return Ok(());
        };
        if self.engine.in_flight() > 0 && self.last_progress.elapsed() > t {
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
    fn fill(&mut self, lane_id: usize, lane: &mut Lane) -> Result<()> {
        crate::copy::dirty::account_clean(self.shared, std::mem::take(&mut lane.clean));
        while let Some(&slot_id) = lane.free_slots.last() {
            if let SrcIo::Nbd(c) = &lane.src {
                if !c.can_issue() {
                    break;
                }
            }
            // The "rate" option (copy/rate.rs): no read while in debt.
            let rs = lane.params.request_size;
            if let Some(d) = lane.params.rate.as_ref().and_then(|r| r.wait_for(rs)) {
                self.rate_wait = Some(self.rate_wait.map_or(d, |w| w.min(d)));
                break;
            }
            let Some(piece) = lane.claim(self.q)? else {
                break;
            };
            if let (Some(r), false) = (&lane.params.rate, piece.zero) {
                r.take(piece.len);
            }
            lane.free_slots.pop();
            let (off, len) = (piece.offset, piece.len);
            let slot = &mut lane.slots[slot_id as usize];
            slot.offset = off;
            slot.len = len;
            slot.filled = 0;
            slot.staged = false;
            slot.parts = 0;
            slot.read_done = false;
            slot.busy = true;
            if piece.zero {
                slot.read_done = true;
                if let Some(h) = &lane.params.hash {
                    h.zero(off, len);
                }
                self.dst_zero(lane_id, lane, slot_id, off, len)?;
                continue;
            }
            Shared::add(&self.shared.requests, 1);
            lane.cache.before_read(off, len);
            match &mut lane.src {
                SrcIo::File {
                    fd, stream: false, ..
                } if lane.splice.is_some() && splice::cached(*fd, off, len) => {
                    let fd = *fd;
                    self.file_splice(lane_id, lane, slot_id, fd, off, len)?;
                }
                SrcIo::File { fd, stream, .. } => {
                    let (fd, stream) = (*fd, *stream);
                    if stream {
                        lane.stream_reading = true;
                    }
                    self.push_file_read(lane_id, lane, slot_id, fd, stream)?;
                }
                SrcIo::Nbd(c) => c.queue_read(slot_id, off, len)?,
            }
        }
        lane.prefetch_status(self.q)?;
        self.arm_seek(lane_id, lane)
    }

    /// Waits (through the engine) for the file source's seek helper to
    /// answer the pending range.
    fn arm_seek(&mut self, lane_id: usize, lane: &mut Lane) -> Result<()> {
        if lane.status.is_none() {
            return Ok(());
        }
        let Some(fd) = lane.seek.to_arm() else {
            return Ok(());
        };
        let fd = match lane.seek.reg {
            Some(t) => t,
            None => {
                // The helper (and its eventfd) lives as long as the lane.
                let t = self.engine.register(fd)?;
                lane.seek.reg = Some(t);
                t
            }
        };
        let op = Op::Read {
            fd,
            buf: lane.seek.counter.clone(),
            at: 0,
            len: 8,
            offset: None,
        };
        self.engine.push(op, user_data(lane_id, K_SRC_SEEK, 0))?;
        lane.seek.armed = true;
        Ok(())
    }

    fn complete(
        &mut self,
        lane_id: usize,
        lane: &mut Lane,
        kind: u64,
        idx: u64,
        res: i32,
    ) -> Result<()> {
        match kind {
            K_SRC_READ => self.file_read_done(lane_id, lane, idx as u32, res),
            K_DST_WRITE => self.write_done_file(lane_id, lane, idx as u32, res),
            K_SRC_SEEK => {
                lane.seek.armed = false;
                if res < 0 {
                    return Err(Error::from_res(
                        format!("source {}: waiting for its extents", lane.src_name()),
                        res,
                    )
                    .on(Side::Source));
                }
                lane.seek_answered()?;
                self.arm_seek(lane_id, lane)
            }
            K_DST_FSYNC => {
                if res < 0 {
                    return Err(Error::from_res(
                        format!("destination {}: fsync", lane.dst_name()),
                        res,
                    )
                    .on(Side::Destination));
                }
                Self::flush_done(lane);
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
                    &mut self.engine,
                    user_data(lane_id, kind, 0),
                    idx,
                    res,
                    &mut events,
                );
                Shared::add(&self.shared.bytes_memcpy, c.take_memcpy());
                loop {
                    let mut r2 = Ok(());
                    for ev in events.drain(..) {
                        if r2.is_ok() {
                            r2 = if let ConnEvent::Failed(f) = ev {
                                self.request_failed(lane_id, is_src, lane, *f)
                            } else if is_src {
                                self.src_event(lane_id, lane, ev)
                            } else {
                                self.dst_event(lane, ev)
                            };
                        }
                    }
                    r = r.and(r2);
                    // Splice mode: the pipe is drained; go on receiving.
                    match &mut lane.src {
                        SrcIo::Nbd(c) if is_src && r.is_ok() && c.wants_resume() => {
                            r = c.resume(
                                &mut self.engine,
                                user_data(lane_id, kind, 0),
                                &mut events,
                            );
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
}

/// Fault injection for tests: a panic in the middle of a copy.
#[cfg(test)]
mod fault {
    use crate::copy::stats::Shared;
    use std::sync::atomic::Ordering::Relaxed;

    pub fn completion(shared: &Shared) {
        let n = &shared.panic_at_completion;
        if n.load(Relaxed) > 0 && n.fetch_sub(1, Relaxed) == 1 {
            panic!("fault injection: worker panics mid-copy");
        }
    }
}

#[cfg(not(test))]
mod fault {
    #[inline(always)]
    pub fn completion(_: &crate::copy::stats::Shared) {}
}
