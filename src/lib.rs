// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! nbdcpy: a fast NBD disk image copier on io_uring (or epoll), with a C API.
//
// nbdcpy: a fast NBD disk image copier on io_uring, with a C API.
//
// Layers (dependencies point down): `ffi` (C ABI) -> `copy` (the job and
// its io_uring workers) -> `endpoint` (what can be copied from/to) ->
// `engine` (io_uring and epoll engines, the buffers they own), `sys` (safe system call wrappers) and
// `proto` (sans-I/O NBD).

pub mod blkhash;
pub mod config;
pub mod copy;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod proto;
pub mod sys;
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};
