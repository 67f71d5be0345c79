// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Incremental copies (`dirty-bitmap`): a range's dirty-bitmap extents
//! intersected with its allocation give the work (data and zero extents,
//! aligned); clean parts are skipped, never read nor written.

use super::align::{Aligner, Extent};
use super::stats::Shared;
use crate::config::Config;
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

/// One extent of the dirty bitmap's context: `len` bytes at `offset`,
/// written since the bitmap was started (`dirty`) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyExtent {
    pub offset: u64,
    pub len: u64,
    pub dirty: bool,
}

/// Refuses option combinations an incremental copy cannot honour.
/// `src_nbd`: the source is an NBD server; `dst_stream`: the destination
/// is a pipe or stdout.
pub fn check_options(cfg: &Config, src_nbd: bool, dst_stream: bool) -> Result<()> {
    let Some(b) = &cfg.dirty_bitmap else {
        return Ok(());
    };
    if cfg.destination_is_zero {
        return Err(Error::invalid(format!(
            "--dirty-bitmap={b} and --destination-is-zero do not go together: an \
             incremental copy writes onto the previous copy, which does not read as zeroes"
        )));
    }
    if !src_nbd {
        return Err(Error::invalid(format!(
            "--dirty-bitmap={b} needs an NBD source that exports the bitmap \
             (e.g. qemu-nbd -B {b})"
        )));
    }
    if dst_stream {
        return Err(Error::invalid(format!(
            "--dirty-bitmap={b} needs a destination that can seek (it holds the previous \
             copy, and only the dirty blocks are written)"
        )));
    }
    Ok(())
}

/// Clean bytes found: reported as skipped, and no longer part of the
/// work (`size`).
pub fn account_clean(shared: &Shared, bytes: u64) {
    if bytes > 0 {
        Shared::add(&shared.bytes_skipped, bytes);
        let _ = shared
            .size
            .fetch_update(Relaxed, Relaxed, |s| Some(s.saturating_sub(bytes)));
    }
}

/// Merges the two contexts' answers for one claimed range [start, end),
/// which may arrive in several BLOCK_STATUS replies each covering a
/// different length.  Dirty extents grow outward to whole blocks (a block
/// with any dirty byte is copied); inside them, allocation shrinks zero
/// ranges inward as `Aligner` does.
#[derive(Debug)]
pub struct DirtyMerge {
    end: u64,
    block: u64,
    /// Aligns the raw dirty extents (`zero` = clean).
    dirty_aligner: Aligner,
    /// Aligned dirty/clean extents (`zero` = clean) not merged yet.
    dirty: VecDeque<Extent>,
    /// Raw allocation extents (`zero` = reads as zeroes) not merged yet.
    alloc: VecDeque<Extent>,
    /// Allocation is known up to here (`end` when not asked for).
    alloc_pos: u64,
    /// Everything before `pos` has been handed out or skipped.
    pos: u64,
    /// Aligns the allocation inside the dirty run in progress.
    run: Option<Aligner>,
}

impl DirtyMerge {
    /// A merge for [start, end) (`start` a multiple of `block`, a power of
    /// two); `with_alloc` false: no base:allocation, dirty blocks are data.
    pub fn new(start: u64, end: u64, block: u64, with_alloc: bool) -> DirtyMerge {
        DirtyMerge {
            end,
            block: block.max(1),
            dirty_aligner: Aligner::new(start, block.max(1)),
            dirty: VecDeque::new(),
            alloc: VecDeque::new(),
            alloc_pos: if with_alloc { start } else { end },
            pos: start,
            run: None,
        }
    }

    /// Where both contexts' answers reach: a repeated request must start
    /// at or before this.
    pub fn covered(&self) -> u64 {
        self.dirty_aligner.pos().min(self.alloc_pos)
    }

    /// Dirty-bitmap extents (offset, length, dirty); what does not continue
    /// the covered part, or lies past the range, is ignored.
    pub fn add_dirty(&mut self, ext: &[DirtyExtent]) {
        for &DirtyExtent {
            offset: off,
            len,
            dirty,
        } in ext
        {
            let at = self.dirty_aligner.pos();
            let end = off.saturating_add(len).min(self.end);
            if off > at || end <= at {
                continue;
            }
            self.dirty_aligner.push(
                Extent {
                    offset: at,
                    len: end - at,
                    zero: !dirty,
                },
                &mut self.dirty,
            );
        }
    }

    /// base:allocation extents, likewise.
    pub fn add_alloc(&mut self, ext: &[Extent]) {
        for &Extent {
            offset: off,
            len,
            zero,
        } in ext
        {
            let at = self.alloc_pos;
            let end = off.saturating_add(len).min(self.end);
            if off > at || end <= at {
                continue;
            }
            super::align::push_merged(
                &mut self.alloc,
                Extent {
                    offset: at,
                    len: end - at,
                    zero,
                },
            );
            self.alloc_pos = end;
        }
    }

    /// Hands out the work both contexts have answered for (appended to
    /// `out`); returns the clean bytes skipped.
    pub fn drain(&mut self, out: &mut VecDeque<Extent>) -> u64 {
        let mut clean = 0;
        let dirty_to = self.dirty.back().map_or(self.pos, Extent::end);
        let limit = dirty_to.min(self.alloc_pos);
        while self.pos < limit {
            let Some(d) = self.dirty.front().copied() else {
                break;
            };
            // None: no base:allocation (dirty blocks are data).
            let a = self.alloc.front().copied();
            let mut upto = d.end().min(limit);
            if let Some(a) = a {
                upto = upto.min(a.end());
            }
            let len = upto - self.pos;
            if d.zero {
                clean += len;
                if let Some(mut r) = self.run.take() {
                    r.finish(out);
                }
            } else {
                let zero = a.is_some_and(|a| a.zero);
                let (pos, block) = (self.pos, self.block);
                self.run
                    .get_or_insert_with(|| Aligner::new(pos, block))
                    .push(
                        Extent {
                            offset: pos,
                            len,
                            zero,
                        },
                        out,
                    );
            }
            self.pos = upto;
            trim_front(&mut self.dirty, upto);
            trim_front(&mut self.alloc, upto);
        }
        clean
    }

    /// Both contexts have answered up to the range's end (or the rest is
    /// to be copied): hands out everything left; returns the clean bytes.
    pub fn finish(&mut self, out: &mut VecDeque<Extent>) -> u64 {
        self.dirty_aligner.finish(&mut self.dirty);
        let clean = self.drain(out);
        if let Some(mut r) = self.run.take() {
            r.finish(out);
        }
        clean
    }

    /// The server failed or stopped making progress: the rest of the
    /// range is treated as dirty data (copying more is safe, less is not).
    pub fn rest_is_dirty(&mut self, out: &mut VecDeque<Extent>) -> u64 {
        let (d, a) = (self.dirty_aligner.pos(), self.alloc_pos);
        self.add_dirty(&[DirtyExtent {
            offset: d,
            len: self.end - d,
            dirty: true,
        }]);
        self.add_alloc(&[Extent {
            offset: a,
            len: self.end - a,
            zero: false,
        }]);
        self.finish(out)
    }
}

/// Drops what ends at or before `to` from the queue's front, and cuts the
/// first extent to start there.
fn trim_front(q: &mut VecDeque<Extent>, to: u64) {
    while let Some(f) = q.front_mut() {
        if f.end() <= to {
            q.pop_front();
        } else {
            if f.offset < to {
                f.len -= to - f.offset;
                f.offset = to;
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, len: u64, zero: bool) -> Extent {
        Extent { offset, len, zero }
    }

    fn dirty_of(v: &[(u64, u64, bool)]) -> Vec<DirtyExtent> {
        v.iter()
            .map(|&(offset, len, dirty)| DirtyExtent { offset, len, dirty })
            .collect()
    }

    fn alloc_of(v: &[(u64, u64, bool)]) -> Vec<Extent> {
        v.iter().map(|&(o, l, z)| e(o, l, z)).collect()
    }

    /// Runs a merge over one reply per context; returns (work, clean).
    fn merge(
        start: u64,
        end: u64,
        block: u64,
        dirty: &[(u64, u64, bool)],
        alloc: Option<&[(u64, u64, bool)]>,
    ) -> (Vec<Extent>, u64) {
        let mut m = DirtyMerge::new(start, end, block, alloc.is_some());
        let mut out = VecDeque::new();
        m.add_dirty(&dirty_of(dirty));
        let mut clean = m.drain(&mut out);
        if let Some(a) = alloc {
            m.add_alloc(&alloc_of(a));
        }
        clean += m.drain(&mut out);
        assert_eq!(m.covered(), end);
        clean += m.finish(&mut out);
        (out.into_iter().collect(), clean)
    }

    #[test]
    fn dirty_intersected_with_allocation() {
        // dirty [0,4k) [8k,16k); allocation: data [0,10k), zero [10k,16k)
        let (w, clean) = merge(
            0,
            16384,
            1,
            &[(0, 4096, true), (4096, 4096, false), (8192, 8192, true)],
            Some(&[(0, 10240, false), (10240, 6144, true)]),
        );
        assert_eq!(
            w,
            vec![
                e(0, 4096, false),
                e(8192, 2048, false),
                e(10240, 6144, true)
            ]
        );
        assert_eq!(clean, 4096);
        // A dirty range that now reads as zeroes is work (zeroed), not skipped.
        let (w, clean) = merge(0, 8192, 1, &[(0, 8192, true)], Some(&[(0, 8192, true)]));
        assert_eq!((w, clean), (vec![e(0, 8192, true)], 0));
        // All clean: nothing to do.
        let (w, clean) = merge(0, 8192, 1, &[(0, 8192, false)], Some(&[(0, 8192, false)]));
        assert_eq!((w.len(), clean), (0, 8192));
    }

    #[test]
    fn dirty_grows_to_whole_blocks_and_zeroes_shrink() {
        // Dirty bytes [5000, 5100) with 4 KiB blocks: the whole block
        // [4096, 8192) is work; allocation zero from 4096 to 6000 does not
        // cover a whole block, so it is data.
        let (w, clean) = merge(
            0,
            12288,
            4096,
            &[(0, 5000, false), (5000, 100, true), (5100, 7188, false)],
            Some(&[(0, 4096, false), (4096, 1904, true), (6000, 6288, false)]),
        );
        assert_eq!(w, vec![e(4096, 4096, false)]);
        assert_eq!(clean, 8192);
    }

    #[test]
    fn without_allocation_dirty_is_data() {
        let (w, clean) = merge(
            4096,
            20480,
            1,
            &[(4096, 4096, false), (8192, 12288, true)],
            None,
        );
        assert_eq!((w, clean), (vec![e(8192, 12288, false)], 4096));
    }

    #[test]
    fn replies_in_pieces_and_repeated_requests() {
        let mut m = DirtyMerge::new(0, 1 << 20, 512, true);
        let mut out = VecDeque::new();
        // First reply: dirty answers up to 300k, allocation up to 100k.
        m.add_dirty(&dirty_of(&[
            (0, 100 << 10, true),
            (100 << 10, 200 << 10, false),
        ]));
        m.add_alloc(&alloc_of(&[(0, 100 << 10, false)]));
        let mut clean = m.drain(&mut out);
        assert_eq!(m.covered(), 100 << 10);
        assert_eq!(out.iter().map(|x| x.len).sum::<u64>(), 100 << 10);
        // The repeated request starts at 100k: dirty's repeat of what it
        // said is ignored, allocation continues.
        m.add_dirty(&dirty_of(&[(100 << 10, 1 << 20, false)]));
        m.add_alloc(&alloc_of(&[(100 << 10, 1 << 20, true)]));
        clean += m.drain(&mut out);
        clean += m.finish(&mut out);
        assert_eq!(clean, (1 << 20) - (100 << 10));
        assert_eq!(out, VecDeque::from(vec![e(0, 100 << 10, false)]));
    }

    #[test]
    fn failures_copy_the_rest() {
        let mut m = DirtyMerge::new(0, 8192, 1, true);
        let mut out = VecDeque::new();
        m.add_dirty(&dirty_of(&[(0, 4096, false)]));
        m.add_alloc(&alloc_of(&[(0, 2048, true)]));
        let clean = m.drain(&mut out) + m.rest_is_dirty(&mut out);
        // What the bitmap said is clean stays clean; the rest is data.
        assert_eq!(clean, 4096);
        assert_eq!(out, VecDeque::from(vec![e(4096, 4096, false)]));
    }

    #[test]
    fn every_byte_is_work_or_clean_exactly_once() {
        // Pseudo-random extents, several replies, several block sizes.
        let mut seed = 12345u64;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let block = [1u64, 512, 4096][round % 3];
            let end = block * (1 + rnd(64)) + if round % 5 == 0 { 100 } else { 0 };
            let mk = |rnd: &mut dyn FnMut(u64) -> u64| {
                let mut v = Vec::new();
                let mut at = 0;
                while at < end {
                    let l = (1 + rnd(3000)).min(end - at);
                    v.push((at, l, rnd(2) == 0));
                    at += l;
                }
                v
            };
            let dirty = mk(&mut rnd);
            let alloc = mk(&mut rnd);
            let (w, clean) = merge(0, end, block, &dirty, Some(&alloc));
            let work: u64 = w.iter().map(|x| x.len).sum();
            assert_eq!(work + clean, end, "round {round}");
            // Contiguity and order; every dirty byte is inside the work.
            for p in w.windows(2) {
                assert!(p[0].end() <= p[1].offset);
            }
            for &(o, l, d) in &dirty {
                if d {
                    for b in [o, o + l - 1] {
                        assert!(w.iter().any(|x| x.offset <= b && b < x.end()), "{b}");
                    }
                }
            }
            // A zero extent reads as zero in the allocation at every byte.
            for x in w.iter().filter(|x| x.zero) {
                for &(o, l, z) in &alloc {
                    if o < x.end() && x.offset < o + l {
                        assert!(z, "round {round}: {x:?} overlaps data at {o}+{l}");
                    }
                }
            }
            // Boundaries are aligned but at the range's end.
            for x in &w {
                assert!(x.offset % block == 0);
                assert!(x.end() % block == 0 || x.end() == end);
            }
        }
    }
}
