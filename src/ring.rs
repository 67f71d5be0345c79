// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The io_uring primitives: setup, submission, bounded waits, draining.
//
// The io_uring event loop primitives: ring setup with feature probing,
// submission with back-pressure, bounded waits and completion draining.
//
// One `Ring` belongs to one worker thread.  Operations are identified by a
// caller-chosen `user_data`; the caller owns the buffers and must keep
// them alive until the operation's completion has been reaped (see
// `Ring::push`).  `Ring::drain` cancels and waits for every operation in
// flight, so a worker can free its buffers safely on any exit path: with
// one cancel-any request (Linux 5.19+), or one cancel per operation on
// older kernels, whose rings track what is in flight for that.

use crate::error::{Error, Result};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Ring {
    uring: IoUring,
    in_flight: usize,
    /// Kernels without cancel-any (before 5.19): the user_data of every
    /// operation in flight (with a count), so a drain can cancel each.
    /// None where one cancel-any request does it.
    tracked: Option<HashMap<u64, u32>>,
    /// Number of io_uring_enter calls made (for stats and tests).
    pub enters: u64,
}

impl Ring {
    /// Creates a ring with `entries` submission slots, trying the cheapest
    /// task-running mode first and falling back on older kernels.
    pub fn new(entries: u32) -> Result<Ring> {
        let entries = entries.clamp(8, 4096).next_power_of_two();
        let cq = entries * 4;
        let uring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(entries)
        {
            Ok(r) => r,
            Err(_) => match IoUring::builder().setup_cqsize(cq).build(entries) {
                Ok(r) => r,
                Err(e) => {
                    return Err(Error::os(
                        "cannot create io_uring (is io_uring enabled in this kernel?)",
                        e,
                    ))
                }
            },
        };
        // Bounded waits (submit_and_wait) pass a timeout to io_uring_enter:
        // IORING_FEAT_EXT_ARG, Linux 5.11.  Older kernels get this error
        // rather than an EINVAL from the first wait.
        if !uring.params().is_feature_ext_arg() {
            return Err(Error::new(
                libc::ENOSYS,
                "this kernel's io_uring is too old: nbdcpy needs Linux 5.11 or later (IORING_FEAT_EXT_ARG)",
            ));
        }
        let mut ring = Ring {
            uring,
            in_flight: 0,
            tracked: None,
            enters: 0,
        };
        if !ring.probe_cancel_any()? {
            ring.tracked = Some(HashMap::new());
        }
        Ok(ring)
    }

    /// Whether this kernel cancels by IORING_ASYNC_CANCEL_ANY (5.19): on
    /// the empty ring, such a cancel finds nothing (ENOENT); an older
    /// kernel refuses its flags (EINVAL).
    fn probe_cancel_any(&mut self) -> Result<bool> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(DRAIN_CANCEL);
        // SAFETY: a cancel request refers to no memory.
        unsafe { self.push(&e) }?;
        let mut out = Vec::new();
        while self.in_flight > 0 {
            self.submit_and_wait(Duration::from_millis(100))?;
            self.reap(&mut out);
        }
        Ok(out.first().is_some_and(|&(_, res, _)| res == -libc::ENOENT))
    }

    /// Drain as on kernels without cancel-any (for tests).
    #[cfg(test)]
    fn without_cancel_any(mut self) -> Ring {
        self.tracked = Some(HashMap::new());
        self
    }

    /// Operations submitted (or queued) whose completion was not reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues one operation; submits first when the queue is full.
    ///
    /// # Safety
    /// Every buffer, iovec, msghdr and fd `entry` refers to must stay valid
    /// (and buffers must not be moved, freed or, for reads, accessed) until
    /// the completion carrying the entry's user_data has been returned by
    /// `reap`.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: forwarded to the caller's contract above.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.in_flight += 1;
                if let Some(t) = self.tracked.as_mut() {
                    *t.entry(entry.get_user_data()).or_insert(0) += 1;
                }
                return Ok(());
            }
            self.submit(0)?;
        }
    }

    fn submit(&mut self, want: usize) -> Result<()> {
        self.enters += 1;
        match self.uring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(Error::os("io_uring_enter", e)),
        }
    }

    /// Submits everything queued and waits until at least one completion is
    /// available or `timeout` passes (one io_uring_enter).
    pub fn submit_and_wait(&mut self, timeout: Duration) -> Result<()> {
        if !self.uring.completion().is_empty() {
            return self.submit(0);
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.enters += 1;
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::os("io_uring_enter", e)),
        }
    }

    /// Moves the available completions into `out` as (user_data, result).
    pub fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        let mut cq = self.uring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Some(t) = self.tracked.as_mut() {
                if let Some(n) = t.get_mut(&cqe.user_data()) {
                    *n -= 1;
                    if *n == 0 {
                        t.remove(&cqe.user_data());
                    }
                }
            }
            out.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    /// Cancels every operation in flight and waits until all completions
    /// are reaped, so their buffers may be freed.  Returns false when some
    /// operation did not complete within `limit`; the caller must then leak
    /// (never free) the buffers.
    pub fn drain(&mut self, limit: Duration, sink: &mut dyn FnMut(u64, i32)) -> bool {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut cancelled = false;
        while self.in_flight > 0 {
            if !cancelled {
                if self.push_cancels().is_err() {
                    return false;
                }
                cancelled = true;
            }
            if self.submit_and_wait(Duration::from_millis(20)).is_err() {
                return false;
            }
            out.clear();
            self.reap(&mut out);
            for &(ud, res, _) in &out {
                if ud != DRAIN_CANCEL {
                    sink(ud, res);
                }
            }
            if Instant::now() > deadline {
                return self.in_flight == 0;
            }
            // Re-issue the cancel now and then: an operation may have been
            // between states when the first one ran.
            if out.is_empty() {
                cancelled = false;
            }
        }
        true
    }
}

impl Ring {
    /// Asks the kernel to cancel every operation in flight.
    fn push_cancels(&mut self) -> Result<()> {
        let entries: Vec<squeue::Entry> = match &self.tracked {
            None => vec![opcode::AsyncCancel2::new(types::CancelBuilder::any()).build()],
            Some(t) => t
                .keys()
                .filter(|&&ud| ud != DRAIN_CANCEL)
                .map(|&ud| opcode::AsyncCancel::new(ud).build())
                .collect(),
        };
        for e in entries {
            // SAFETY: a cancel request refers to no memory.
            unsafe { self.push(&e.user_data(DRAIN_CANCEL)) }?;
        }
        Ok(())
    }
}

/// user_data reserved for the drain's own cancel requests.
pub const DRAIN_CANCEL: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn nop_round_trip_and_drain() {
        let mut r = Ring::new(8).unwrap();
        for i in 0..20u64 {
            // SAFETY: NOP refers to no memory.
            unsafe { r.push(&opcode::Nop::new().build().user_data(i)) }.unwrap();
        }
        let mut got = Vec::new();
        while r.in_flight() > 0 {
            r.submit_and_wait(Duration::from_millis(100)).unwrap();
            r.reap(&mut got);
        }
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|&(_, res, _)| res == 0));
    }

    #[test]
    fn drain_cancels_a_blocked_read() {
        drain_cancels_a_blocked_read_on(Ring::new(8).unwrap());
    }

    #[test]
    fn drain_cancels_without_cancel_any() {
        drain_cancels_a_blocked_read_on(Ring::new(8).unwrap().without_cancel_any());
    }

    fn drain_cancels_a_blocked_read_on(mut r: Ring) {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = vec![0u8; 16];
        let e = opcode::Recv::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 16)
            .build()
            .user_data(7);
        // SAFETY: buf and a outlive the drain below, which reaps the op.
        unsafe { r.push(&e) }.unwrap();
        r.submit_and_wait(Duration::from_millis(10)).unwrap();
        let mut seen = Vec::new();
        let t = Instant::now();
        assert!(r.drain(Duration::from_secs(5), &mut |ud, res| seen.push((ud, res))));
        assert_eq!(seen, vec![(7, -libc::ECANCELED)]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "cancelled, not timed out"
        );
        drop(buf);
    }
}
