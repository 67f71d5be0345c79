// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The io_uring event loop primitives: ring setup with feature probing,
//! submission with back-pressure, bounded waits and completion draining.
//!
//! One `Ring` belongs to one worker thread.  Operations are identified by a
//! caller-chosen `user_data`; the caller owns the buffers and must keep
//! them alive until the operation's completion has been reaped (see
//! `Ring::push`).  `Ring::drain` cancels and waits for every operation in
//! flight, so a worker can free its buffers safely on any exit path.

use crate::error::{Error, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use std::time::{Duration, Instant};

/// Which optional kernel features this ring has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN were accepted.
    pub defer_taskrun: bool,
    /// IORING_OP_SEND_ZC is supported.
    pub send_zc: bool,
    /// IORING_OP_FALLOCATE is supported.
    pub fallocate: bool,
    /// Cancel-any (IORING_ASYNC_CANCEL_ANY, 5.19+) is supported.
    pub cancel_any: bool,
}

pub struct Ring {
    uring: IoUring,
    in_flight: usize,
    pub features: Features,
    /// Number of io_uring_enter calls made (for stats and tests).
    pub enters: u64,
}

impl Ring {
    /// Creates a ring with `entries` submission slots, trying the cheapest
    /// task-running mode first and falling back on older kernels.
    pub fn new(entries: u32) -> Result<Ring> {
        let entries = entries.clamp(8, 4096).next_power_of_two();
        let mut features = Features::default();
        let cq = entries * 4;
        let uring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(entries)
        {
            Ok(r) => {
                features.defer_taskrun = true;
                r
            }
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
        let mut probe = Probe::new();
        if uring.submitter().register_probe(&mut probe).is_ok() {
            features.send_zc = probe.is_supported(opcode::SendZc::CODE);
            features.fallocate = probe.is_supported(opcode::Fallocate::CODE);
            // ASYNC_CANCEL exists since 5.5; CANCEL_ANY since 5.19, the same
            // release as SEND_ZC's predecessor features; use SEND_ZC (6.0) as
            // the witness of a new enough kernel.
            features.cancel_any = probe.is_supported(opcode::AsyncCancel::CODE) && features.send_zc;
        }
        Ok(Ring {
            uring,
            in_flight: 0,
            features,
            enters: 0,
        })
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
            // A zero-copy send posts its result with F_MORE and a
            // notification later: it stays in flight (and its buffers in
            // use) until that last completion.
            if cqueue::more(cqe.flags()) {
                out.push((cqe.user_data(), cqe.result(), cqe.flags()));
                continue;
            }
            self.in_flight = self.in_flight.saturating_sub(1);
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
                let e = if self.features.cancel_any {
                    opcode::AsyncCancel2::new(types::CancelBuilder::any())
                        .build()
                        .user_data(DRAIN_CANCEL)
                } else {
                    opcode::Nop::new().build().user_data(DRAIN_CANCEL)
                };
                // SAFETY: a cancel request refers to no memory.
                if unsafe { self.push(&e) }.is_err() {
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
        let mut r = Ring::new(8).unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut buf = vec![0u8; 16];
        let e = opcode::Recv::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 16)
            .build()
            .user_data(7);
        // SAFETY: buf and a outlive the drain below, which reaps the op.
        unsafe { r.push(&e) }.unwrap();
        r.submit_and_wait(Duration::from_millis(10)).unwrap();
        let mut seen = Vec::new();
        assert!(r.drain(Duration::from_secs(5), &mut |ud, res| seen.push((ud, res))));
        assert_eq!(seen, vec![(7, -libc::ECANCELED)]);
        drop(buf);
    }
}
