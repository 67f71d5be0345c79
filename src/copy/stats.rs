// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Shared job state: live counters, the cancel flag and the first error.
//
// Shared job state: live counters (read by `nbdcpy_stats` from any
// thread), the cancel flag and the first error.

use crate::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

#[derive(Default)]
pub struct Shared {
    /// Bytes to copy (0 until known for a stream source).
    pub size: AtomicU64,
    /// 1 when `size` is final: from the start for sources of known size,
    /// at its end for a stream.
    pub size_known: AtomicU64,
    /// Bytes whose destination write (or skip) has completed.
    pub bytes_done: AtomicU64,
    /// Bytes written as data.
    pub bytes_copied: AtomicU64,
    /// Bytes written as zeroes or holes.
    pub bytes_zeroed: AtomicU64,
    /// Bytes left alone because the destination already reads as zero.
    pub bytes_skipped: AtomicU64,
    /// NBD requests and file operations issued.
    pub requests: AtomicU64,
    /// Payload bytes copied in user space (the zero-copy claim, checked).
    pub bytes_memcpy: AtomicU64,
    /// Calls that submit or wait for operations made by the workers
    /// (io_uring_enter, or epoll_wait with the epoll engine).
    pub ring_enters: AtomicU64,
    /// The engine the workers ran on (set once per run).
    pub engine: OnceLock<crate::engine::EngineKind>,
    /// Fault injection (tests only): a worker panics at the completion
    /// that brings this to zero (0: never).
    #[cfg(test)]
    pub panic_at_completion: AtomicU64,
    /// Fault injection (tests only): this worker (counted from 1; 0:
    /// none) cannot set up its io_uring (`copy::gate`).
    #[cfg(test)]
    pub fail_ring: std::sync::atomic::AtomicUsize,
    /// The engine each worker ran (tests only).
    #[cfg(test)]
    pub engines_ran: Mutex<Vec<crate::engine::EngineKind>>,
    /// Other system calls made for I/O (direct pwrite of file data, and
    /// every operation of the epoll engine).
    pub syscalls_direct: AtomicU64,
    /// Connections per side actually used.
    pub connections: AtomicU64,
    /// Data bytes moved by splice, never entering user space.
    pub bytes_spliced: AtomicU64,
    /// NBD connections made again after being lost (`--retries`).
    pub reconnects: AtomicU64,
    /// Bytes a `--checkpoint` recorded done before this run (counted in
    /// `bytes_done` from the start).
    pub resumed_bytes: AtomicU64,
    /// Requests sent again after an EIO reply (`--retries`).
    pub retried_requests: AtomicU64,
    /// Messages for the job's log from the workers (which have no logger),
    /// passed on by the thread running the job.
    notes: Mutex<Vec<String>>,
    start: Mutex<Option<Instant>>,
    end_ns: AtomicU64,
    finished: AtomicBool,
    cancel: AtomicBool,
    /// A cancel request made outside the job (the C API's handle table).
    external_cancel: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared::default()
    }

    pub fn start_clock(&self) {
        if let Ok(mut s) = self.start.lock() {
            *s = Some(Instant::now());
        }
    }

    pub fn stop_clock(&self) {
        let ns = self.elapsed_ns();
        self.end_ns.store(ns, Relaxed);
        self.finished.store(true, Relaxed);
    }

    pub fn elapsed_ns(&self) -> u64 {
        if self.finished.load(Relaxed) {
            return self.end_ns.load(Relaxed);
        }
        match self.start.lock().ok().and_then(|s| *s) {
            Some(t) => t.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            None => 0,
        }
    }

    /// Records the first error; later ones are dropped (they are usually
    /// consequences of the first).
    pub fn fail(&self, e: Error) {
        if let Ok(mut g) = self.error.lock() {
            if g.is_none() {
                *g = Some(e);
            }
        }
        self.failed.store(true, Relaxed);
    }

    /// True once the job must stop: failed or cancelled.
    pub fn stopping(&self) -> bool {
        self.failed.load(Relaxed) || self.cancelled()
    }

    /// Asks the job to stop; it then fails with ECANCELED.
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }

    /// Whether the job was asked to stop (by `cancel` or the watcher).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Relaxed) || self.external_cancel.get().is_some_and(|f| f())
    }

    /// Makes `f` a second source of cancellation, polled wherever the job
    /// checks for it.  Only the first watcher set counts.
    pub fn watch_cancel(&self, f: Box<dyn Fn() -> bool + Send + Sync>) {
        let _ = self.external_cancel.set(f);
    }

    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().ok().and_then(|mut g| g.take())
    }

    /// Leaves a verbose log line for the job's thread to pass on.
    pub fn note(&self, msg: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(msg);
        }
    }

    /// The log lines left since the last call.
    pub fn take_notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
