// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A connection's receive buffers: large receives, replies parsed where they land.
//
// The receive side of one connection: large receives into pool blocks,
// replies parsed where they landed, and a partial message moved to a
// fresh block only when it would not fit before the block's end.

use crate::engine::buf::{BlockPool, IoBuf, Span};
use crate::engine::{Engine, Fd, Op};
use crate::error::{Error, Result, Side};

/// Receive buffers: pool block `cur`, bytes [head, tail) not yet parsed.
pub struct RecvBuf {
    pub pool: BlockPool,
    pub cur: u32,
    pub head: usize,
    pub tail: usize,
    /// Bytes the message being parsed needs in all (None: unknown).
    pub need: Option<usize>,
    /// The largest message accepted.
    pub max_msg: usize,
    /// Payload bytes memcpy'd (moving a partial message between blocks).
    pub memcpy: u64,
}

impl RecvBuf {
    /// Buffers for messages of at most `max_msg` bytes.
    pub fn new(max_msg: usize) -> RecvBuf {
        let mut pool = BlockPool::new((4 * max_msg).max(2 << 20));
        let cur = pool.take();
        RecvBuf {
            pool,
            cur,
            head: 0,
            tail: 0,
            need: None,
            max_msg,
            memcpy: 0,
        }
    }

    /// The unparsed bytes.
    pub fn unparsed(&self) -> &[u8] {
        self.pool.slice(self.cur, self.head, self.tail)
    }

    /// `len` bytes at `start` of the unparsed bytes, the `start` bytes
    /// before them (already parsed) as room, with one more reference on
    /// the block for the span's user.
    pub fn take_span(&mut self, start: usize, len: usize) -> (Span, u32) {
        assert!(
            self.head + start + len <= self.tail,
            "span outside the data"
        );
        self.pool.hold(self.cur);
        // The block's received bytes are not written until the block is
        // free again (the reference just taken is held until the span's
        // user releases it); the parsed bytes in front are not used any
        // more, so they are the span's room.
        let at = self.head + start;
        let span = self.pool.span(self.cur, at, len, start);
        (span, self.cur)
    }

    /// Bytes to ask for next: the rest of the current message, or
    /// `first` at a message boundary, and at least one more.
    fn want(&self, first: usize) -> usize {
        self.need.unwrap_or(first).max(self.tail - self.head + 1)
    }

    /// Starts over at the block's beginning when everything was parsed
    /// and nobody else uses the block.
    fn rewind_if_idle(&mut self) {
        // (The counts say idle; the pool checks nothing holds the block.)
        if self.head == self.tail && self.pool.refs(self.cur) == 1 && self.pool.rewind(self.cur) {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// Posts a receive: greedy (filling the block) when `greedy`, else
    /// exactly the rest of the current message (or `first` bytes).
    /// Errors when a message would be larger than any asked for (`who`:
    /// the connection's name and side, for that error).
    pub fn post(
        &mut self,
        engine: &mut Engine,
        fd: Fd,
        user_data: u64,
        first: usize,
        greedy: bool,
        who: (&str, Side),
    ) -> Result<()> {
        let (buf, at, len) = self.target(first, greedy, who)?;
        // Nothing else reads or writes [tail, tail+len) of the held block
        // `cur` until this receive completes; the operation holds a share
        // of the block for as long as the kernel may write it.
        engine.push(Op::Recv { fd, buf, at, len }, user_data)
    }

    /// Where the next receive goes, as for [`post`](Self::post): `len`
    /// bytes at `at` of the held block `cur` (also the target of a TLS
    /// connection's decryption, see [`target_mut`](Self::target_mut)).
    pub fn target(
        &mut self,
        first: usize,
        greedy: bool,
        (name, side): (&str, Side),
    ) -> Result<(IoBuf, usize, usize)> {
        self.rewind_if_idle();
        let bs = self.pool.block_size();
        let want = self.want(first);
        if want > self.max_msg {
            return Err(Error::new(
                libc::EIO,
                format!("{name}: server reply of {want} bytes is larger than any reply asked for"),
            )
            .on(side));
        }
        if self.head + want > bs {
            self.move_to_fresh_block();
        }
        // Greedy reads fill the block up to max_msg before its end, so any
        // message that starts inside that part fits; past it, read exactly
        // the rest of the current message (or the next header).
        let greedy_end = bs - self.max_msg;
        let len = if greedy && self.tail + (64 << 10) <= greedy_end {
            greedy_end - self.tail
        } else {
            self.head + want - self.tail
        };
        // tail + len <= bs (both branches): inside the block.
        Ok((self.pool.buf(self.cur).clone(), self.tail, len))
    }

    /// The bytes a receive posted at `target` writes (for decrypting
    /// into them): [tail, tail+len) of the current block.
    pub fn target_mut(&mut self, len: usize) -> &mut [u8] {
        let (cur, tail) = (self.cur, self.tail);
        self.pool.range_mut(cur, tail, tail + len)
    }

    /// The message would straddle the block end: continue it at the start
    /// of a fresh block.  Thanks to the exact reads near the end this is
    /// normally only a header.
    fn move_to_fresh_block(&mut self) {
        let new = self.pool.take();
        let (h, t, old) = (self.head, self.tail, self.cur);
        self.pool.copy_to_fresh(old, h, t, new);
        self.memcpy += (t - h) as u64;
        self.pool.release(old);
        self.cur = new;
        self.head = 0;
        self.tail = t - h;
    }

    /// Where a direct (non-engine) receive of the rest of the current
    /// message goes; None when it would not fit in this block (an
    /// engine receive then moves it).
    pub fn direct_target(&mut self, first: usize) -> Option<&mut [u8]> {
        self.rewind_if_idle();
        let want = self.want(first);
        if self.head + want > self.pool.block_size() {
            return None;
        }
        let (tail, end) = (self.tail, self.head + want);
        Some(self.pool.range_mut(self.cur, tail, end))
    }
}
