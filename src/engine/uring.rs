// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The io_uring engine: setup with feature probing, a slab of operations in flight, bounded waits, draining.
//
// One ring per worker thread.  Every operation pushed is kept in a slab
// entry (its index is the SQE's user_data) together with what it holds:
// the buffers it reads or writes and, for a vectored send, the msghdr
// and iovecs the kernel reads.  The entry is dropped when its completion
// is reaped; `drain` (also run by `Drop`) cancels and waits for every
// entry, and an engine that cannot drain leaks its entries and its ring
// instead of freeing memory the kernel may still use.

use super::{buf::IoBuf, gather, Completion, Fd, FdTable, Op};
use crate::error::{Error, Result};
use io_uring::{opcode, squeue, types, IoUring};
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

/// The msghdr and iovecs of a vectored send (boxed: the kernel reads
/// them where they are).
struct Msg {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
}

/// An operation in the ring and everything it keeps alive.
struct InFlight {
    user_data: u64,
    /// Owns the buffers (held until the completion is reaped) and names
    /// the registration whose duplicate stays open until then.
    op: Op,
    msg: Option<Box<Msg>>,
}

pub struct UringEngine {
    /// Dropped only once nothing is in flight (else leaked, see Drop).
    uring: ManuallyDrop<IoUring>,
    slab: Vec<Option<InFlight>>,
    free: Vec<u32>,
    in_flight: usize,
    /// The drain's own cancel requests in the ring.
    cancels: usize,
    /// IORING_ASYNC_CANCEL_ANY works (5.19+); else one cancel per entry.
    cancel_any: bool,
    /// Reusable msghdr boxes (boxed: the kernel reads them in place
    /// while the slab, which hands them out, may grow and move).
    #[allow(clippy::vec_box)]
    msgs: Vec<Box<Msg>>,
    /// Number of io_uring_enter calls made (for stats and tests).
    pub enters: u64,
    /// Operations that could not be drained: never free them.
    leaked: bool,
    /// The descriptors operations name.
    pub(super) fds: FdTable,
    /// Completions known at push (an operation on a descriptor not
    /// registered), handed out by the next reap.
    early: Vec<Completion>,
}

/// user_data reserved for the drain's own cancel requests.
const DRAIN_CANCEL: u64 = u64::MAX;

impl UringEngine {
    /// Creates a ring with `entries` submission slots, trying the cheapest
    /// task-running mode first and falling back on older kernels.
    pub fn new(entries: u32) -> Result<UringEngine> {
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
        // Bounded waits pass a timeout to io_uring_enter:
        // IORING_FEAT_EXT_ARG, Linux 5.11.
        if !uring.params().is_feature_ext_arg() {
            return Err(Error::new(
                libc::ENOSYS,
                "this kernel's io_uring is too old: nbdcpy needs Linux 5.11 or later (IORING_FEAT_EXT_ARG)",
            ));
        }
        let mut e = UringEngine {
            uring: ManuallyDrop::new(uring),
            slab: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            cancels: 0,
            cancel_any: true,
            msgs: Vec::new(),
            enters: 0,
            leaked: false,
            fds: FdTable::default(),
            early: Vec::new(),
        };
        e.cancel_any = e.probe_cancel_any()?;
        Ok(e)
    }

    /// Whether this kernel cancels by IORING_ASYNC_CANCEL_ANY (5.19): on
    /// the empty ring, such a cancel finds nothing (ENOENT); an older
    /// kernel refuses its flags (EINVAL).
    fn probe_cancel_any(&mut self) -> Result<bool> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(DRAIN_CANCEL);
        self.push_cancel(&e)?;
        let mut res = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cancels > 0 && Instant::now() < deadline {
            self.submit_and_wait(Duration::from_millis(100))?;
            let mut cq = self.uring.completion();
            cq.sync();
            for cqe in &mut cq {
                if cqe.user_data() == DRAIN_CANCEL {
                    self.cancels -= 1;
                    res = Some(cqe.result());
                }
            }
        }
        Ok(res == Some(-libc::ENOENT))
    }

    /// Drain as on kernels without cancel-any (for tests).
    #[cfg(test)]
    pub(super) fn without_cancel_any(mut self) -> UringEngine {
        self.cancel_any = false;
        self
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight + self.early.len()
    }

    /// Queues `op`; submits first when the submission queue is full.
    pub fn push(&mut self, op: Op, user_data: u64) -> Result<()> {
        // The duplicate stays open while the entry lives (`reap` ends
        // the count), queued or submitted.
        let fd = match op.fd().map(|t| self.fds.begin(t)) {
            None => -1,
            Some(Some(fd)) => fd,
            Some(None) => {
                self.early.push(Completion {
                    user_data,
                    res: -libc::EBADF,
                });
                return Ok(());
            }
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(None);
                (self.slab.len() - 1) as u32
            }
        };
        let mut msg = None;
        let sqe = self.build(&op, fd, &mut msg).user_data(idx as u64);
        let t = op.fd();
        self.slab[idx as usize] = Some(InFlight { user_data, op, msg });
        // SAFETY: every pointer in `sqe` points into memory the slab
        // entry just stored owns (shares of IoBufs inside the op, the
        // boxed Msg), which stays allocated and in place until the
        // completion for `idx` is reaped (`reap` drops the entry) or, if
        // it never is, forever (`Drop` leaks what it cannot drain).  The
        // fd number is the engine's duplicate, open until then too.
        let r = unsafe { self.push_entry(&sqe) };
        if r.is_err() {
            // Not in the ring: the entry can go.
            self.slab[idx as usize] = None;
            self.free.push(idx);
            if let Some(t) = t {
                self.fds.end(t);
            }
            return r;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// The SQE for `op` (its pointers derived from the op's own buffers).
    fn build(&mut self, op: &Op, fd: i32, msg: &mut Option<Box<Msg>>) -> squeue::Entry {
        let fd = types::Fd(fd);
        fn at(buf: &IoBuf, at: usize, len: usize) -> *mut u8 {
            assert!(at.checked_add(len).is_some_and(|e| e <= buf.len()));
            buf.ptr_at(at)
        }
        let off = |o: Option<u64>| o.unwrap_or(u64::MAX);
        match op {
            Op::Recv {
                buf, at: a, len, ..
            } => opcode::Recv::new(fd, at(buf, *a, *len), *len as u32).build(),
            Op::Read {
                buf,
                at: a,
                len,
                offset,
                ..
            } => opcode::Read::new(fd, at(buf, *a, *len), *len as u32)
                .offset(off(*offset))
                .build(),
            Op::Write { data, offset, .. } => {
                let (b, s) = data.parts();
                opcode::Write::new(fd, at(b, s, data.len()), data.len() as u32)
                    .offset(off(*offset))
                    .build()
            }
            Op::Send { data, .. } => {
                let (b, s) = data.parts();
                opcode::Send::new(fd, at(b, s, data.len()), data.len() as u32)
                    .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                    .build()
            }
            Op::SendBatch { batch, skip, .. } => {
                let mut m = self.msgs.pop().unwrap_or_else(|| {
                    Box::new(Msg {
                        // SAFETY: msghdr is plain data; all-zero is valid.
                        hdr: unsafe { std::mem::zeroed() },
                        iov: Vec::new(),
                    })
                });
                let mut parts = Vec::new();
                gather(batch, *skip, &mut parts);
                m.iov.clear();
                m.iov.extend(parts.iter().map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                }));
                m.hdr.msg_iov = m.iov.as_mut_ptr();
                m.hdr.msg_iovlen = m.iov.len() as _;
                let e = opcode::SendMsg::new(fd, &m.hdr as *const libc::msghdr)
                    .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
                    .build();
                *msg = Some(m);
                e
            }
            Op::Fallocate {
                offset, len, mode, ..
            } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
            Op::Fsync { .. } => opcode::Fsync::new(fd).build(),
            Op::Poll { events, .. } => opcode::PollAdd::new(fd, *events).build(),
            Op::Nop => opcode::Nop::new().build(),
        }
    }

    /// # Safety
    /// What `entry` points to stays valid until its completion is reaped.
    unsafe fn push_entry(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: forwarded to the caller's contract.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit(0)?;
        }
    }

    fn push_cancel(&mut self, entry: &squeue::Entry) -> Result<()> {
        // SAFETY: a cancel request refers to no memory.
        unsafe { self.push_entry(entry) }?;
        self.cancels += 1;
        Ok(())
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
        if !self.early.is_empty() || !self.uring.completion().is_empty() {
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

    /// Moves the available completions into `out`, dropping what their
    /// operations held.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.early);
        let mut cq = self.uring.completion();
        cq.sync();
        for cqe in &mut cq {
            let idx = cqe.user_data();
            if idx == DRAIN_CANCEL {
                self.cancels = self.cancels.saturating_sub(1);
                continue;
            }
            let Some(entry) = self.slab.get_mut(idx as usize).and_then(Option::take) else {
                continue; // not ours (cannot happen)
            };
            self.in_flight -= 1;
            self.free.push(idx as u32);
            if let Some(t) = entry.op.fd() {
                self.fds.end(t);
            }
            if let Some(m) = entry.msg {
                self.msgs.push(m);
            }
            out.push(Completion {
                user_data: entry.user_data,
                res: cqe.result(),
            });
        }
    }

    /// Cancels every operation in flight and waits until all completions
    /// are reaped (handed to `sink`).  False when some operation did not
    /// complete within `limit`.
    pub fn drain(&mut self, limit: Duration, sink: &mut dyn FnMut(Completion)) -> bool {
        let clean = self.drain_within(limit, sink);
        self.leaked |= !clean;
        clean
    }

    fn drain_within(&mut self, limit: Duration, sink: &mut dyn FnMut(Completion)) -> bool {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        self.early.drain(..).for_each(&mut *sink);
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
            out.iter().for_each(|&c| sink(c));
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

    /// Ends the registration `t`: its operations in the ring are
    /// cancelled (a cancel that finds one done changes nothing) and its
    /// duplicate is closed when the last of them is reaped; later pushes
    /// naming `t` complete with -EBADF.
    pub fn unregister(&mut self, t: Fd) -> Result<()> {
        if !self.fds.close(t) {
            return Ok(());
        }
        let live: Vec<u64> = (0..self.slab.len())
            .filter(|&i| self.slab[i].as_ref().is_some_and(|e| e.op.fd() == Some(t)))
            .map(|i| i as u64)
            .collect();
        for idx in live {
            let e = opcode::AsyncCancel::new(idx)
                .build()
                .user_data(DRAIN_CANCEL);
            self.push_cancel(&e)?;
        }
        Ok(())
    }

    /// Asks the kernel to cancel every operation in flight.
    fn push_cancels(&mut self) -> Result<()> {
        if self.cancel_any {
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(DRAIN_CANCEL);
            return self.push_cancel(&e);
        }
        let live: Vec<u64> = (0..self.slab.len())
            .filter(|&i| self.slab[i].is_some())
            .map(|i| i as u64)
            .collect();
        for idx in live {
            let e = opcode::AsyncCancel::new(idx)
                .build()
                .user_data(DRAIN_CANCEL);
            self.push_cancel(&e)?;
        }
        Ok(())
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        if self.leaked || (self.in_flight > 0 && !self.drain(Duration::from_secs(10), &mut |_| {}))
        {
            // The kernel may still use what the entries hold: keep it all,
            // and the ring whose requests refer to it, forever.
            std::mem::forget(std::mem::take(&mut self.slab));
            return;
        }
        // SAFETY: nothing is in flight; the ring is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.uring) }
    }
}
