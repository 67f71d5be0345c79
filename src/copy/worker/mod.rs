// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Worker threads, each driving lanes on its own io_uring.
//
// Worker threads: each runs an io_uring event loop driving one or more
// lanes until the work queue is empty, then flushing and draining.
//
// Work is claimed in large ranges and cut into pieces (`cursor`): data
// pieces are read (at most request-size) and written, zero pieces (holes
// found in the source's extents) are zeroed or skipped without reading.
// Data that turns out to be all zeroes in `sparse`-sized blocks is zeroed
// too (`zero`, `dispatch`).  File I/O lives in `fileio`, the splice data
// path in `splice_lane`, the loop itself in `event_loop`, error replies
// sent again in `resend`.

mod core;
mod cursor;
mod dispatch;
mod event_loop;
mod fileio;
mod lane;
mod reconnect;
mod resend;
mod splice_lane;
mod state;
mod zero;

pub use event_loop::run_worker;
pub use lane::{DstIo, Lane, LaneParams, SrcIo};
