// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The integration tests, one crate (one binary, one link): every
//! tests/*.rs file is a module of it, listed here (`make check-tests`
//! fails on a file that is not).  A test file reaches the harness as
//! `use crate::common;`.

mod common;

mod blkhash;
mod block_size;
mod checkpoint;
mod cli;
mod container;
mod dirty_bitmap;
mod dropin;
mod faults;
mod fuzz_smoke;
mod hostile;
mod local_copy;
mod nbd_copy;
mod nbdcopy_requests;
mod no_data_loss;
mod open_bounds;
mod opt_abort;
mod page_cache;
mod progress_bar;
mod range_list;
mod ranges;
mod rate_json;
mod request_retries;
mod retries;
mod ssh;
mod tls;
