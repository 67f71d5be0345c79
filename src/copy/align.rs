// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Rounding a source's extents to the block size both ends accept.
//
// Rounding a source's extents to the block size both servers accept: a
// block is zero only when all of it reads as zero, so zero ranges shrink
// inward to aligned boundaries and the cut-off bytes are copied as data.

pub use crate::endpoint::Extent;
use std::collections::VecDeque;

/// Appends `e` to `out`, merging it with the last extent when that one is
/// of the same kind and ends where `e` starts.
pub fn push_merged(out: &mut VecDeque<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    match out.back_mut() {
        Some(last) if last.zero == e.zero && last.end() == e.offset => last.len += e.len,
        _ => out.push_back(e),
    }
}

/// Turns extents that arrive in order (from `start`, at any granularity)
/// into extents whose boundaries are multiples of `block` (a power of
/// two), except the range's end.  A block is zero only when every byte of
/// it is.  Extents may arrive in several batches: a block that straddles
/// two batches is held back until it is complete or `finish` is called.
#[derive(Debug, Clone)]
pub struct Aligner {
    block: u64,
    /// Everything before `pos` has been handed out or is in `partial`.
    pos: u64,
    /// The block being assembled: its start, and whether all of it seen so
    /// far reads as zero.
    partial: Option<(u64, bool)>,
}

impl Aligner {
    /// An aligner for extents starting at `start` (itself a multiple of
    /// `block`, or 0 < block = 1 for no alignment).
    pub fn new(start: u64, block: u64) -> Aligner {
        debug_assert!(block.is_power_of_two());
        Aligner {
            block: block.max(1),
            pos: start,
            partial: None,
        }
    }

    /// Where the next extent must start.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Feeds the next extent (which must start at `pos()`), appending the
    /// aligned result to `out`.
    pub fn push(&mut self, e: Extent, out: &mut VecDeque<Extent>) {
        debug_assert_eq!(e.offset, self.pos, "extents must be contiguous");
        if e.len == 0 {
            return;
        }
        if self.block == 1 {
            push_merged(out, e);
            self.pos = e.end();
            return;
        }
        let mut at = e.offset;
        let end = e.end();
        // Complete the block in progress.
        if let Some((start, zero)) = self.partial {
            let blk_end = start + self.block;
            let upto = end.min(blk_end);
            let zero = zero && e.zero;
            at = upto;
            if upto == blk_end {
                self.partial = None;
                push_merged(
                    out,
                    Extent {
                        offset: start,
                        len: self.block,
                        zero,
                    },
                );
            } else {
                self.partial = Some((start, zero));
            }
        }
        if at < end {
            // Whole blocks keep this extent's kind; the tail starts a block.
            let whole_end = end / self.block * self.block;
            if whole_end > at {
                push_merged(
                    out,
                    Extent {
                        offset: at,
                        len: whole_end - at,
                        zero: e.zero,
                    },
                );
                at = whole_end;
            }
            if at < end {
                self.partial = Some((at, e.zero));
            }
        }
        self.pos = end;
    }

    /// The range ends at `pos()`: hands out the incomplete last block (the
    /// image's unaligned end, or the rest of a range treated as data).
    pub fn finish(&mut self, out: &mut VecDeque<Extent>) {
        if let Some((start, zero)) = self.partial.take() {
            push_merged(
                out,
                Extent {
                    offset: start,
                    len: self.pos - start,
                    zero,
                },
            );
        }
    }
}

/// Rounds `v` down to a multiple of `block` (a power of two).
pub fn align_down(v: u64, block: u64) -> u64 {
    v & !(block.max(1) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, zero: bool) -> Extent {
        Extent { offset, len, zero }
    }

    fn run(block: u64, start: u64, batches: &[&[(u64, bool)]]) -> Vec<(u64, u64, bool)> {
        let mut a = Aligner::new(start, block);
        let mut out = VecDeque::new();
        for b in batches {
            for &(len, zero) in *b {
                a.push(ext(a.pos(), len, zero), &mut out);
            }
        }
        a.finish(&mut out);
        out.iter().map(|e| (e.offset, e.len, e.zero)).collect()
    }

    #[test]
    fn no_alignment_merges_only() {
        assert_eq!(
            run(1, 0, &[&[(10, true), (5, true), (7, false)]]),
            vec![(0, 15, true), (15, 7, false)]
        );
    }

    #[test]
    fn zero_ranges_shrink_inward() {
        // data 4K, zero 124K, data 4K with 64K blocks: the first block
        // holds data, the second is all zero, the third holds data.
        assert_eq!(
            run(65536, 0, &[&[(4096, false), (126976, true), (4096, false)]]),
            vec![
                (0, 65536, false),
                (65536, 65536, true),
                (131072, 4096, false)
            ]
        );
        // One data byte in the second block makes it data.
        assert_eq!(
            run(65536, 0, &[&[(4096, false), (122880, true), (8192, false)]]),
            vec![(0, 135168, false)]
        );
        // A zero range inside one block is data.
        assert_eq!(
            run(65536, 0, &[&[(1000, false), (60000, true), (4536, false)]]),
            vec![(0, 65536, false)]
        );
    }

    #[test]
    fn every_boundary_is_aligned_but_the_end() {
        let lens = [
            (512u64, true),
            (3584, false),
            (200_000, true),
            (1, false),
            (70_000, true),
            (4096, true),
            (999, false),
        ];
        for block in [512u64, 4096, 65536] {
            let out = run(block, 0, &[&lens]);
            let total: u64 = lens.iter().map(|l| l.0).sum();
            let mut at = 0;
            for (i, &(o, l, _)) in out.iter().enumerate() {
                assert_eq!(o, at);
                assert_eq!(o % block, 0, "block {block}: {out:?}");
                if i + 1 < out.len() {
                    assert_eq!((o + l) % block, 0, "block {block}: {out:?}");
                }
                at += l;
            }
            assert_eq!(at, total);
            // Zero output only where the input is zero.
            for &(o, l, z) in &out {
                if z {
                    let mut p = 0;
                    for &(len, zero) in &lens {
                        if p < o + l && p + len > o {
                            assert!(zero, "block {block}: {out:?}");
                        }
                        p += len;
                    }
                }
            }
        }
    }

    #[test]
    fn blocks_straddling_batches_wait_for_the_rest() {
        let out = run(
            4096,
            8192,
            &[&[(1024, true)], &[(3072, true), (100, false)]],
        );
        assert_eq!(out, vec![(8192, 4096, true), (12288, 100, false)]);
    }

    #[test]
    fn align_down_rounds() {
        assert_eq!(align_down(70000, 65536), 65536);
        assert_eq!(align_down(70000, 1), 70000);
        assert_eq!(align_down(70000, 0), 70000);
    }
}
