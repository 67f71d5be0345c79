// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The shared work queue: the source's byte range (or a range list's areas) handed to lanes in large pieces.

use crate::rangelist;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Hands out the source's byte range in large pieces to lanes.
pub struct WorkQueue {
    next: AtomicU64,
    start: u64,
    end: u64,
    piece: u64,
    /// Guided claims: (lanes, most pieces in one claim).
    guide: Option<(u64, u64)>,
    /// A range list: its areas are handed out instead.
    list: Option<rangelist::Claims>,
}

impl WorkQueue {
    /// Hands out [start, end) only.
    pub fn range(start: u64, end: u64, piece: u64) -> WorkQueue {
        WorkQueue {
            next: AtomicU64::new(start),
            start,
            end,
            piece: piece.max(1),
            guide: None,
            list: None,
        }
    }

    /// Claims of several whole pieces (up to `max_pieces`) while much is
    /// left: a claim is at most 1/(2 x `lanes`) of what remains, so the
    /// lanes still finish together.  A lane asks for the extents of a
    /// claim at once (one BLOCK_STATUS for up to `max_pieces` pieces: 64
    /// instead of 512 for an empty 64 GiB disk); requests still never
    /// cross a piece's end.
    pub fn guided(mut self, lanes: u32, max_pieces: u64) -> WorkQueue {
        self.guide = Some((lanes.max(1) as u64, max_pieces.max(1)));
        self
    }

    /// Hands out the areas of a range list only.
    pub fn areas(list: Arc<rangelist::RangeList>, piece: u64) -> WorkQueue {
        WorkQueue {
            list: Some(rangelist::Claims::new(list)),
            ..WorkQueue::range(0, 0, piece)
        }
    }

    /// The end of the piece holding `offset`: no request crosses it, so
    /// each piece's holes are zeroed by requests of their own (nbdcopy's
    /// requests), also when a lane's next piece is merged onto this one.
    /// A range list's areas are disjoint: no bound but their own ends.
    pub fn piece_end(&self, offset: u64) -> u64 {
        if self.list.is_some() {
            return u64::MAX;
        }
        let k = offset.saturating_sub(self.start) / self.piece;
        self.start
            .saturating_add(k.saturating_add(1).saturating_mul(self.piece))
            .min(self.end)
    }

    /// The next [start, end) piece, or None when everything is handed out.
    pub fn claim(&self) -> Option<(u64, u64)> {
        if let Some(l) = &self.list {
            return l.claim(self.piece);
        }
        let mut start = self.next.load(Relaxed);
        loop {
            if start >= self.end {
                return None;
            }
            let n = match self.guide {
                None => 1,
                Some((lanes, max)) => ((self.end - start) / (2 * lanes) / self.piece).clamp(1, max),
            };
            let end = start
                .saturating_add(n.saturating_mul(self.piece))
                .min(self.end);
            match self
                .next
                .compare_exchange_weak(start, end, Relaxed, Relaxed)
            {
                Ok(_) => return Some((start, end)),
                Err(now) => start = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_a_range_and_of_a_list() {
        let q = WorkQueue::range(0, 10 << 20, 4 << 20);
        assert_eq!(q.piece_end(0), 4 << 20);
        assert_eq!(q.piece_end(9 << 20), 10 << 20);
        assert_eq!(q.claim(), Some((0, 4 << 20)));
        let list = rangelist::RangeList::parse("8M 4k\n1G 64k\n", "l").unwrap();
        let q = WorkQueue::areas(Arc::new(list), 4 << 20);
        // Requests inside an area are cut by the request size only (a
        // bound of 0 made every request one byte long).
        assert_eq!(q.piece_end(8 << 20), u64::MAX);
        assert_eq!(q.claim(), Some((8 << 20, (8 << 20) + 4096)));
        assert_eq!(q.claim(), Some((1 << 30, (1 << 30) + (64 << 10))));
        assert_eq!(q.claim(), None);
    }

    #[test]
    fn guided_claims_shrink_towards_the_end() {
        let p = 128u64 << 20;
        let q = WorkQueue::range(0, 64 << 30, p).guided(2, 8);
        let mut claims = Vec::new();
        while let Some(c) = q.claim() {
            claims.push(c);
        }
        // Whole pieces, in order, tiling the range; 1 GiB while much is
        // left, single pieces at the end.
        assert!(claims.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!((claims[0].0, claims.last().unwrap().1), (0, 64 << 30));
        assert!(claims.iter().all(|c| c.0 % p == 0));
        assert_eq!(claims[0].1, 1 << 30);
        assert_eq!(claims.last().unwrap().1 - claims.last().unwrap().0, p);
        assert!(claims.len() < 100, "{} claims", claims.len());
        assert_eq!(q.piece_end(5 * p + 1), 6 * p);
    }
}
