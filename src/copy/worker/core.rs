// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A worker's state, shared by its parts: the `Worker` and the ids its operations carry.
//
// The parts of a worker (`event_loop`, `fileio`, `dispatch`,
// `splice_lane`, `reconnect`, `resend`) each add methods to `Worker`; they import
// this module and `lane`, never each other.

use crate::copy::nbdconn::ConnEvent;
use crate::copy::stats::Shared;
use crate::copy::workqueue::WorkQueue;
use crate::engine::{Completion, Engine};
use std::time::{Duration, Instant};

// What a completion belongs to (the `kind` in its user_data).
/// A file source read into a slot (index: the slot).
pub(super) const K_SRC_READ: u64 = 1;
/// A file destination operation (index: the operation).
pub(super) const K_DST_WRITE: u64 = 2;
/// The destination file's fsync.
pub(super) const K_DST_FSYNC: u64 = 3;
/// The source NBD connection's send or receive (index: which).
pub(super) const K_SRC_NBD: u64 = 4;
/// ... and the destination's.
pub(super) const K_DST_NBD: u64 = 5;
/// The read of a file source's seek helper eventfd (an answer is there).
pub(super) const K_SRC_SEEK: u64 = 6;

/// The user_data of an operation: lane, kind and an index (48 bits).
#[inline]
pub(super) fn user_data(lane: usize, kind: u64, idx: u64) -> u64 {
    ((lane as u64) << 56) | (kind << 48) | (idx & ((1 << 48) - 1))
}

/// `user_data`'s parts again.
#[inline]
pub(super) fn decode_user_data(u: u64) -> (usize, u64, u64) {
    ((u >> 56) as usize, (u >> 48) & 0xff, u & ((1 << 48) - 1))
}

pub(super) struct Worker<'a> {
    pub(super) engine: Engine,
    pub(super) q: &'a WorkQueue,
    pub(super) shared: &'a Shared,
    pub(super) cqes: Vec<Completion>,
    pub(super) events: Vec<ConnEvent>,
    pub(super) last_progress: Instant,
    /// A lane waits for the rate limit, or a request to be sent again:
    /// how long (the ring wait's bound).
    pub(super) rate_wait: Option<Duration>,
    /// Requests answered with EIO, waiting to be sent again (`resend`).
    pub(super) parked: Vec<super::resend::Parked>,
    /// This worker runs one lane: a wait for its destination holds up
    /// nothing else (the splice path then waits rather than copy).
    pub(super) single_lane: bool,
}
