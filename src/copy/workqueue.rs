// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The shared work queue: the source's byte range (or a range list's areas) handed to lanes in large pieces.

use super::rangelist;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Hands out the source's byte range in large pieces to lanes.
pub struct WorkQueue {
    next: AtomicU64,
    start: u64,
    end: u64,
    piece: u64,
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
            list: None,
        }
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
        let start = self.next.fetch_add(self.piece, Relaxed);
        if start >= self.end {
            return None;
        }
        Some((start, (start + self.piece).min(self.end)))
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
}
