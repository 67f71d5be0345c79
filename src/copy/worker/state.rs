// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Plain state types of a lane (file operations, pending block status, the splice pipes), used by its parts.

use crate::copy::align::Aligner;
use crate::copy::dirty::DirtyMerge;
use crate::copy::splice::{Pipe, WaitLimits};
use crate::endpoint::file::ExtentWalker;
use crate::endpoint::seek::SeekHelper;
use crate::engine::buf::{AlignedBuf, IoBuf, Span};
use std::os::fd::{OwnedFd, RawFd};

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

/// How a file source's extents are learnt: on a helper thread, its
/// answers waited for through the engine (a read of its eventfd), or,
/// when no helper can be started, by walking here.
pub(super) struct FileSeek {
    helper: Option<SeekHelper>,
    /// No helper could be started: walk in the lane.
    inline: bool,
    pub(super) walker: ExtentWalker,
    /// The 8 bytes the eventfd read fills.
    pub(super) counter: IoBuf,
    /// A read of the helper's eventfd is in the engine.
    pub(super) armed: bool,
    /// The eventfd as registered with the worker's engine.
    pub(super) reg: Option<crate::engine::Fd>,
}

impl FileSeek {
    pub(super) fn new() -> FileSeek {
        FileSeek {
            helper: None,
            inline: false,
            walker: ExtentWalker::default(),
            counter: AlignedBuf::shared(8),
            armed: false,
            reg: None,
        }
    }

    /// Asks the helper (started for file `fd` on first use) for the
    /// extents of [a, b); false when there is none: walk inline.
    pub(super) fn ask(&mut self, fd: RawFd, a: u64, b: u64) -> bool {
        if self.inline {
            return false;
        }
        if self.helper.is_none() {
            self.helper = SeekHelper::new(fd).ok();
        }
        let asked = self.helper.as_ref().is_some_and(|h| h.ask(a, b));
        if !asked {
            self.helper = None;
            self.inline = true;
        }
        asked
    }

    /// The helper's eventfd, when a read of it should be put in the engine.
    pub(super) fn to_arm(&self) -> Option<RawFd> {
        match &self.helper {
            Some(h) if !self.armed => Some(h.ready_fd()),
            _ => None,
        }
    }

    /// The helper's oldest answer.
    pub(super) fn answer(&self) -> Option<Vec<crate::endpoint::Extent>> {
        self.helper.as_ref().and_then(SeekHelper::answer)
    }
}
