// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A lane's work cursor: claiming ranges, learning extents, cutting pieces.
//
// A lane's work cursor: claiming ranges from the shared work queue,
// learning their extents (SEEK_DATA or BLOCK_STATUS, fetched ahead), and
// cutting them into aligned data and zero pieces.

use super::lane::{Lane, SrcIo};
use super::state::PendingStatus;
use crate::copy::align::{align_down, push_merged, Aligner, Extent};
use crate::copy::dirty::{DirtyExtent, DirtyMerge};
use crate::copy::workqueue::WorkQueue;
use crate::error::Result;

impl Lane {
    /// Claims the next piece of work: data of at most request-size, or a
    /// zero range of at most `zero_piece`.  None: nothing to do right now
    /// (waiting for block status, or the work is all handed out).
    pub(super) fn claim(&mut self, q: &WorkQueue) -> Result<Option<Extent>> {
        if self.exhausted {
            return Ok(None);
        }
        if self.src_is_stream() {
            // Streams are read in order; the length is what a read returns.
            if self.stream_reading {
                return Ok(None);
            }
            return Ok(Some(Extent {
                offset: self.stream_pos,
                len: self.params.request_size,
                zero: false,
            }));
        }
        loop {
            if let Some(front) = self.extents.front_mut() {
                let max = if front.zero {
                    self.params.zero_piece
                } else {
                    self.params.request_size
                };
                // Never across a work piece's end (WorkQueue::piece_end).
                let lim = q
                    .piece_end(front.offset)
                    .saturating_sub(front.offset)
                    .max(1);
                let piece = Extent {
                    len: front.len.min(max).min(lim),
                    ..*front
                };
                if piece.len == front.len {
                    self.extents.pop_front();
                } else {
                    front.offset += piece.len;
                    front.len -= piece.len;
                }
                return Ok(Some(piece));
            }
            if self.status.is_some() {
                return Ok(None); // the next extents are on their way
            }
            if !self.claim_range(q)? {
                self.exhausted = true;
                return Ok(None);
            }
        }
    }

    /// Claims the next range and learns its extents (or asks for them).
    /// False when the work queue is empty.
    fn claim_range(&mut self, q: &WorkQueue) -> Result<bool> {
        let Some((a, b)) = q.claim() else {
            return Ok(false);
        };
        let mut aligner = Aligner::new(a, self.params.align);
        match &mut self.src {
            // Walked on a helper thread; the answer comes as a completion
            // (the worker reads the helper's eventfd: `arm_seek`).
            SrcIo::File { fd, .. } if self.params.extents && self.seek.ask(*fd, a, b) => {
                self.status = Some(PendingStatus {
                    start: a,
                    end: b,
                    aligner,
                    dirty: None,
                });
            }
            SrcIo::File { fd, .. } if self.params.extents => {
                let out = &mut self.extents;
                self.seek.walker.walk(*fd, a, b, &mut |e| {
                    aligner.push(e, out);
                    true
                });
                aligner.finish(out);
            }
            SrcIo::Nbd(c) if (self.params.extents || self.params.dirty) && c.can_block_status() => {
                c.queue_block_status(a, b - a)?;
                let (align, alloc) = (self.params.align, c.can_allocation_status());
                self.status = Some(PendingStatus {
                    start: a,
                    end: b,
                    aligner,
                    dirty: self
                        .params
                        .dirty
                        .then(|| DirtyMerge::new(a, b, align, alloc)),
                });
            }
            _ => push_merged(
                &mut self.extents,
                Extent {
                    offset: a,
                    len: b - a,
                    zero: false,
                },
            ),
        }
        Ok(true)
    }

    /// Asks for the next range's block status (or extents of a file)
    /// while this one is read.
    pub(super) fn prefetch_status(&mut self, q: &WorkQueue) -> Result<()> {
        let ahead = match &self.src {
            SrcIo::Nbd(c) => (self.params.extents || self.params.dirty) && c.can_block_status(),
            SrcIo::File { stream, .. } => self.params.extents && !*stream,
        };
        if self.status.is_none() && !self.exhausted && !self.extents.is_empty() && ahead {
            self.claim_range(q)?;
        }
        Ok(())
    }

    /// The seek helper's answers for the pending range of a file source.
    pub(super) fn seek_answered(&mut self) -> Result<()> {
        while let Some(extents) = self.seek.answer() {
            self.add_status_extents(&extents);
            self.status_done(true)?;
        }
        Ok(())
    }

    /// Extents from a BLOCK_STATUS reply for the pending range.
    pub(super) fn add_status_extents(&mut self, extents: &[Extent]) {
        let Some(st) = self.status.as_mut() else {
            return;
        };
        if let Some(d) = st.dirty.as_mut() {
            d.add_alloc(extents);
            self.clean += d.drain(&mut self.extents);
            return;
        }
        for e in extents {
            // Keep only what continues the covered part, inside the range
            // (a continued request may start before it: see status_done).
            let at = st.aligner.pos();
            let end = e.offset.saturating_add(e.len).min(st.end);
            if e.offset > at || end <= at {
                continue;
            }
            st.aligner.push(
                Extent {
                    offset: at,
                    len: end - at,
                    zero: e.zero,
                },
                &mut self.extents,
            );
        }
    }

    /// The pending BLOCK_STATUS finished: ask again for what it did not
    /// cover (from an aligned offset), or (on error) treat the rest as
    /// data.
    pub(super) fn status_done(&mut self, ok: bool) -> Result<()> {
        let Some(mut st) = self.status.take() else {
            return Ok(());
        };
        if st.dirty.is_some() {
            return self.dirty_status_done(st, ok);
        }
        let covered = st.aligner.pos();
        if covered < st.end {
            if ok && covered > st.start {
                match self.ask_again(st, covered)? {
                    None => return Ok(()),
                    Some(back) => st = back,
                }
            }
            // An error, or no progress at all: read the rest.
            st.aligner.push(
                Extent {
                    offset: covered,
                    len: st.end - covered,
                    zero: false,
                },
                &mut self.extents,
            );
        }
        st.aligner.finish(&mut self.extents);
        Ok(())
    }
}

impl Lane {
    /// Dirty-bitmap extents for the pending range (incremental copies).
    pub(super) fn add_dirty_extents(&mut self, extents: &[DirtyExtent]) {
        if let Some(d) = self.status.as_mut().and_then(|st| st.dirty.as_mut()) {
            d.add_dirty(extents);
            self.clean += d.drain(&mut self.extents);
        }
    }

    /// `status_done` of an incremental copy: ask again from where both
    /// contexts' answers reach, or (on error, no progress) copy the rest.
    fn dirty_status_done(&mut self, mut st: PendingStatus, ok: bool) -> Result<()> {
        let Some(covered) = st.dirty.as_ref().map(|d| d.covered()) else {
            return Ok(());
        };
        if covered < st.end && ok && covered > st.start {
            match self.ask_again(st, covered)? {
                None => return Ok(()),
                Some(back) => st = back,
            }
        }
        let Some(d) = st.dirty.as_mut() else {
            return Ok(());
        };
        self.clean += if covered < st.end {
            d.rest_is_dirty(&mut self.extents)
        } else {
            d.finish(&mut self.extents)
        };
        Ok(())
    }
}

impl Lane {
    /// Asks again for [covered, end) of the pending range `st` (from an
    /// aligned offset), after an answer that made progress; gives `st`
    /// back when the source cannot be asked.
    fn ask_again(&mut self, mut st: PendingStatus, covered: u64) -> Result<Option<PendingStatus>> {
        let SrcIo::Nbd(c) = &mut self.src else {
            return Ok(Some(st));
        };
        let from = align_down(covered, self.params.align);
        c.queue_block_status(from, st.end - from)?;
        st.start = covered;
        self.status = Some(st);
        Ok(None)
    }
}
