// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A connection's send queue: requests sent in batches, one send in flight.
//
// The send side of one connection: requests queued in order and sent in
// batches of one vectored send, with at most one in flight so the byte
// stream never interleaves.  The batch in flight is shared with the
// engine's operation (which holds it until its completion is reaped).

use crate::engine::buf::Span;
use crate::engine::{gather, Chunk, Engine, Fd, Op};
use crate::error::Result;
use std::io::IoSlice;
use std::sync::Arc;

/// sendmsg takes at most IOV_MAX (1024) iovecs; items use up to two.
pub const MAX_BATCH: usize = 256;

/// One request in the send stream: its bytes, and the peer receive block
/// its payload lies in (handed back once sent).
pub struct SendItem {
    pub chunk: Chunk,
    pub block: Option<u32>,
}

impl SendItem {
    /// A request header with an optional payload; the header goes in
    /// front of the payload when there is room there.
    pub fn new(hdr: &[u8], payload: Option<Span>, block: Option<u32>) -> SendItem {
        SendItem {
            chunk: Chunk::new(hdr, payload),
            block,
        }
    }
}

/// The bytes of `items`, for a direct sendmsg.
pub fn io_slices(items: &[Chunk]) -> Vec<IoSlice<'_>> {
    let mut parts = Vec::with_capacity(items.len() * 2);
    gather(items, 0, &mut parts);
    parts.into_iter().map(IoSlice::new).collect()
}

/// Requests waiting to be sent, and the batch being sent.
pub struct SendQueue {
    pub queue: Vec<Chunk>,
    queue_blocks: Vec<Option<u32>>,
    /// The batch being sent (shared with the send in flight while `busy`).
    batch: Arc<Vec<Chunk>>,
    batch_blocks: Vec<Option<u32>>,
    batch_len: usize,
    batch_sent: usize,
    pub busy: bool,
}

impl SendQueue {
    pub fn new() -> SendQueue {
        SendQueue {
            queue: Vec::new(),
            queue_blocks: Vec::new(),
            batch: Arc::new(Vec::new()),
            batch_blocks: Vec::new(),
            batch_len: 0,
            batch_sent: 0,
            busy: false,
        }
    }

    pub fn push(&mut self, item: SendItem) {
        self.queue.push(item.chunk);
        self.queue_blocks.push(item.block);
    }

    /// Forgets the first `n` queued items (sent directly); their blocks
    /// are not handed back (splice mode forwards none).
    pub fn drop_sent(&mut self, n: usize) {
        self.queue.drain(..n);
        self.queue_blocks.drain(..n);
    }

    /// How `sent` bytes from the queue's front split into whole items and
    /// the bytes of the next one.
    pub fn split_sent(&self, mut sent: usize) -> (usize, usize) {
        let mut whole = 0;
        for c in &self.queue {
            if sent < c.len() {
                break;
            }
            sent -= c.len();
            whole += 1;
        }
        (whole, sent)
    }

    /// `start_batch` of what is queued, its first `skip` bytes already
    /// sent (directly).
    pub fn start_batch_after(&mut self, skip: usize) {
        if self.start_batch() {
            self.batch_sent = skip;
        }
    }

    /// Moves up to a batch of queued items into the batch; false when
    /// there is nothing to send or a send is already in flight.
    pub fn start_batch(&mut self) -> bool {
        if self.busy || self.queue.is_empty() {
            return false;
        }
        let n = self.queue.len().min(MAX_BATCH);
        let Some(batch) = Arc::get_mut(&mut self.batch) else {
            // The previous send's share is still out (cannot happen: it
            // is dropped when its completion is reaped).
            self.batch = Arc::new(Vec::new());
            return self.start_batch();
        };
        debug_assert!(batch.is_empty());
        batch.extend(self.queue.drain(..n));
        self.batch_blocks.extend(self.queue_blocks.drain(..n));
        self.batch_len = self.batch.iter().map(Chunk::len).sum();
        self.batch_sent = 0;
        true
    }

    /// The batch and how much of it went (for a TLS connection, which
    /// encrypts it).
    pub fn batch(&self) -> (&[Chunk], usize) {
        (&self.batch, self.batch_sent)
    }

    /// Submits one vectored send of the unsent part of the batch.
    pub fn post(&mut self, engine: &mut Engine, fd: Fd, user_data: u64) -> Result<()> {
        let op = Op::SendBatch {
            fd,
            batch: self.batch.clone(),
            skip: self.batch_sent,
        };
        self.busy = true;
        engine.push(op, user_data)
    }

    /// Forgets everything queued or half sent (the connection is gone;
    /// the request book sends it all again).  Nothing may be in flight.
    pub fn clear(&mut self) {
        debug_assert!(!self.busy);
        self.queue.clear();
        self.queue_blocks.clear();
        self.batch = Arc::new(Vec::new());
        self.batch_blocks.clear();
        self.batch_len = 0;
        self.batch_sent = 0;
    }

    /// Bytes of the batch not sent yet.
    pub fn unsent(&self) -> usize {
        self.batch_len - self.batch_sent
    }

    /// `n` more bytes of the batch were sent.  True when the whole batch
    /// is out: `released` was then given the receive blocks its items
    /// referred to.  False while some of it is left (post again).
    pub fn sent(&mut self, n: usize, released: &mut impl FnMut(u32)) -> bool {
        self.busy = false;
        self.batch_sent += n;
        if self.batch_sent < self.batch_len {
            return false;
        }
        match Arc::get_mut(&mut self.batch) {
            Some(b) => b.clear(),
            None => self.batch = Arc::new(Vec::new()),
        }
        for block in self.batch_blocks.drain(..).flatten() {
            released(block);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::buf::AlignedBuf;

    fn bytes(chunks: &[Chunk], skip: usize) -> Vec<u8> {
        let mut parts = Vec::new();
        gather(chunks, skip, &mut parts);
        parts.concat()
    }

    #[test]
    fn header_goes_in_front_when_there_is_room() {
        let mut buf = AlignedBuf::shared(64);
        Arc::get_mut(&mut buf).unwrap().as_mut_slice()[32..40].copy_from_slice(b"payload!");
        let joined = SendItem::new(b"HDR", Some(Span::of_buf(&buf, 32, 8)), Some(7));
        assert!(joined.chunk.is_joined());
        let split = SendItem::new(b"HDR", Some(Span::of_buf(&buf, 2, 8)), None);
        assert!(!split.chunk.is_joined());
        let items = [SendItem::new(b"H1", None, None).chunk, joined.chunk];
        assert_eq!(bytes(&items, 0), b"H1HDRpayload!");
        // Partly sent: the rest only.
        let items = [split.chunk];
        assert_eq!(bytes(&items, 4).len(), 3 + 8 - 4);
    }

    #[test]
    fn batches_complete_and_release_blocks() {
        let buf = AlignedBuf::shared(64);
        let mut q = SendQueue::new();
        assert!(!q.start_batch());
        q.push(SendItem::new(b"A", None, None));
        q.push(SendItem::new(b"B", Some(Span::of_buf(&buf, 0, 4)), Some(3)));
        assert!(q.start_batch());
        q.busy = true;
        let mut got = Vec::new();
        assert!(!q.sent(2, &mut |b| got.push(b)), "1 + 1 + 4 bytes");
        assert!(q.sent(4, &mut |b| got.push(b)));
        assert_eq!(got, vec![3]);
    }
}
