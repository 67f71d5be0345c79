// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Where a worker hands source data to the block hasher: at once, or,
//! when it is sent to an NBD destination from the same buffer, after this
//! loop turn's sends are submitted, so the destination server works while
//! this thread hashes.

use super::{DstIo, Lane, Worker};
use crate::blkhash::BlockHasher;
use crate::error::Result;
use std::sync::Arc;

/// Data waiting to be hashed; its buffer is held by writes in flight.
pub(super) struct Deferred {
    hash: Arc<BlockHasher>,
    offset: u64,
    ptr: *const u8,
    len: usize,
}

impl Worker<'_> {
    /// `len` bytes at `ptr`, read at `offset`, go into the block hash
    /// (if there is one).  With `whole_write` (the data goes to the
    /// destination as one WRITE from this buffer, so no WRITE header is
    /// put inside it) and an NBD destination, hashing waits for
    /// `hash_deferred`: the WRITE holds the buffer (receive block or slot)
    /// until its reply is reaped, which is after that.
    pub(super) fn hash_data(
        &mut self,
        lane: &Lane,
        offset: u64,
        ptr: *const u8,
        len: usize,
        whole_write: bool,
    ) {
        let Some(h) = &lane.p.hash else {
            return;
        };
        if len == 0 {
            return;
        }
        if whole_write && matches!(lane.dst, DstIo::Nbd(_)) {
            self.hash_later.push(Deferred {
                hash: h.clone(),
                offset,
                ptr,
                len,
            });
        } else {
            // SAFETY: ptr..ptr+len is the data the read completed, which
            // nothing writes while the slot or receive block is held.
            h.data(offset, unsafe { std::slice::from_raw_parts(ptr, len) });
        }
    }

    /// Submits the queued sends, then hashes what was deferred.
    pub(super) fn hash_deferred(&mut self) -> Result<()> {
        if self.hash_later.is_empty() {
            return Ok(());
        }
        self.ring.submit_now()?;
        for d in self.hash_later.drain(..) {
            // SAFETY: the buffer is held by a WRITE whose completion has
            // not been reaped yet (see hash_data); the kernel only reads it.
            let data = unsafe { std::slice::from_raw_parts(d.ptr, d.len) };
            d.hash.data(d.offset, data);
        }
        Ok(())
    }
}
