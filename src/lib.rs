// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! nbdcpy: a fast NBD disk image copier on io_uring (or epoll), with a C API.
//
// Layers (dependencies point down): `ffi` (C ABI) -> `copy` (the job and
// its worker threads, each on the copy's one engine) -> `endpoint` (what
// can be copied from/to) -> `engine` (the io_uring and epoll engines, the
// buffers they own), `tls`, `sys` (safe system call wrappers) and `proto`
// (sans-I/O NBD).  docs/architecture.md has the layout and the rules.

pub(crate) mod blkhash;
pub mod config;
pub(crate) mod copy;
pub(crate) mod endpoint;
pub(crate) mod engine;
pub mod error;
pub mod ffi;
pub(crate) mod proto;
pub(crate) mod rangelist;
pub(crate) mod size;
pub(crate) mod sys;
pub(crate) mod tls;

pub use config::Config;
pub use copy::Job;
pub use engine::EngineKind;
pub use error::{Error, Result};

/// The internals the integration tests and fuzz targets drive (not API:
/// no stability promise).
#[doc(hidden)]
pub mod testing {
    pub use crate::copy::ckptfile::fuzz as fuzz_checkpoint;
    pub use crate::copy::splice::cached;
    pub use crate::endpoint::connect::Limits;
    pub use crate::endpoint::{Endpoint, Side, Spec};
    pub use crate::proto::fuzz;
    pub use crate::proto::HeaderMode;
    /// The page-cache system calls the page-cache tests measure with.
    pub mod sys {
        pub use crate::sys::{fadvise, fs_type, page_size, resident_pages};
    }
}
