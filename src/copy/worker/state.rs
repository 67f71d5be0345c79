// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Plain state types of a lane (file operations, pending block status, the splice pipes), used by its parts.

use crate::copy::align::Aligner;
use crate::copy::dirty::DirtyMerge;
use crate::copy::splice::{Pipe, WaitLimits};
use crate::engine::buf::Span;
use std::os::fd::OwnedFd;

/// Bytes reserved in front of every file-read buffer, so an NBD WRITE
/// header can be written just before the data and both sent as one slice.
pub const HEADER_ROOM: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    /// Write the op's data.
    Write,
    /// Write zeroes from the shared zero buffer.
    WriteZeroes,
    /// fallocate(mode) over the range.
    Fallocate(i32),
}

/// A destination file operation in flight.
pub(super) struct WriteOp {
    pub(super) slot: u32,
    pub(super) offset: u64,
    /// What a Write writes (None for zeroing).
    pub(super) data: Option<Span>,
    pub(super) len: u64,
    pub(super) done: u64,
    pub(super) kind: OpKind,
    /// Receive block holding the data (NBD sources).
    pub(super) block: Option<u32>,
}

/// How a regular-file or block-device destination is zeroed; degrades
/// when the kernel or filesystem refuses a mode.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ZeroMode {
    PunchHole,
    ZeroRange,
    Write,
}

/// A claimed range whose BLOCK_STATUS is outstanding.
pub(super) struct PendingStatus {
    /// Where the outstanding request's answer must make progress from.
    pub(super) start: u64,
    pub(super) end: u64,
    /// Extents received so far end at `aligner.pos()`.
    pub(super) aligner: Aligner,
    /// Incremental copies: both contexts' answers, merged.
    pub(super) dirty: Option<DirtyMerge>,
}

/// A lane's splice data path: READ payloads arrive in `pipe`; zero
/// detection reads a duplicate made with tee into `tee`/`tee_buf`; bytes not
/// written anywhere go to /dev/null.
pub(super) struct LaneSplice {
    pub(super) pipe: Pipe,
    pub(super) tee: Option<(Pipe, Vec<u8>)>,
    pub(super) devnull: OwnedFd,
    pub(super) ctl: WaitLimits,
}
