// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Page-cache hygiene of local files: write-back and dropping behind the copy.
//
// A copy of a large image through a local file or block device would
// otherwise fill the host's page cache with it (and evict everything
// else: the running VMs' cache on a hypervisor).  Like nbdcopy, the
// destination side starts write-back of what it wrote
// (sync_file_range(SYNC_FILE_RANGE_WRITE)) and, some distance behind the
// copy, waits for it and drops the pages (POSIX_FADV_DONTNEED).  The
// source side takes a map of the pages cached before the copy reads
// them (mincore, well ahead of the reads and their readahead) and drops
// the others some distance behind the reads: freshly read pages are not
// evictable at once, which is why dropping right after each read
// mostly does nothing.
//
// One `FileCache` per file endpoint and job; each lane gets its own
// `LaneCache` (no lock on the write path: lanes write disjoint ranges),
// whose share of the distance is the job's divided by the lanes.  What a
// lane has not dropped when it ends is finished by `FileCache::finish`
// after the workers, where a write-back error can still fail the job.

use super::file::{FileKind, LocalFile};
use super::Side;
use crate::config::PageCacheMode;
use crate::error::{Error, Result};
use crate::sys;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Bytes of a file a job leaves written or read behind the copy before
/// dropping them (over all lanes).
const BEHIND: u64 = 64 << 20;
/// The least share of `BEHIND` of one lane.
const MIN_LANE_BEHIND: u64 = 8 << 20;
/// How far ahead of every read the map of cached pages reaches: more
/// than the kernel's readahead (up to a few MiB) brings in ahead of a
/// read.
const AHEAD: u64 = 32 << 20;
/// The map of cached pages is taken in pieces of this size (aligned).
const MAP_CHUNK: u64 = 64 << 20;

/// Filesystems whose page cache is the data itself: nothing to drop.
const MEMORY_FS: &[i64] = &[
    0x0102_1994, // tmpfs
    0x8584_58f6, // ramfs
    0x9584_58f6, // hugetlbfs
];

/// The page-cache book-keeping of one local file endpoint of a job.
#[derive(Clone)]
pub struct FileCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// Borrowed from the endpoint, which outlives the job's run.
    fd: RawFd,
    side: Side,
    name: String,
    page: u64,
    /// Each lane's distance, and the size of the pieces it hands on.
    lane_behind: u64,
    lane_chunk: u64,
    /// Source: which pages were cached before the copy read them.
    map: Option<Mutex<CachedMap>>,
    /// Source: how far `map` reaches (read without the lock).
    mapped_to: AtomicU64,
    /// What the lanes left when they ended (to write back and drop).
    tails: Mutex<Vec<(u64, u64)>>,
}

/// Pages of a source cached before the copy, by MAP_CHUNK pieces, only
/// for pieces with any page cached.
struct CachedMap {
    /// Mapped up to here (a multiple of MAP_CHUNK, or the size).
    end: u64,
    size: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// mincore failed: everything unmapped counts as cached (kept).
    broken: bool,
    scratch: Vec<u8>,
}

impl FileCache {
    /// The book-keeping for `file` on `side` of a job with `lanes`
    /// lanes, or None where there is nothing to do: "page-cache=keep",
    /// streams, and files on memory filesystems (tmpfs: their pages are
    /// the data).  A source whose cached pages cannot be mapped
    /// reliably (mincore reports the page cache only for files the
    /// caller owns or may write) is left alone.
    pub fn new(
        file: &LocalFile,
        side: Side,
        name: &str,
        mode: PageCacheMode,
        lanes: u32,
    ) -> Option<FileCache> {
        let fd = file.fd.as_raw_fd();
        match (mode, file.kind) {
            (PageCacheMode::Keep, _) | (_, FileKind::Stream) => return None,
            (_, FileKind::Regular) => {
                if sys::fs_type(fd).map_or(true, |t| MEMORY_FS.contains(&t)) {
                    return None;
                }
            }
            (_, FileKind::Block) => {}
        }
        let size = file.size?;
        let map = if side == Side::Source {
            let euid = sys::geteuid();
            if euid != 0 && sys::fd_owner(fd).ok() != Some(euid) {
                return None;
            }
            Some(Mutex::new(CachedMap {
                end: 0,
                size,
                chunks: BTreeMap::new(),
                broken: false,
                scratch: Vec::new(),
            }))
        } else {
            None
        };
        let page = sys::page_size();
        let lane_behind = (BEHIND / lanes.max(1) as u64).max(MIN_LANE_BEHIND);
        Some(FileCache {
            inner: Arc::new(Inner {
                fd,
                side,
                name: name.to_string(),
                page,
                lane_behind,
                lane_chunk: (lane_behind / 4).max(page),
                map,
                mapped_to: AtomicU64::new(0),
                tails: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A lane's tracker of this file.
    fn tracker(&self) -> Tracker {
        Tracker {
            file: self.inner.clone(),
            pending: Vec::new(),
            pending_bytes: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            seen: Vec::new(),
        }
    }

    /// After the copy: writes back and drops what the lanes left behind.
    /// A write-back error fails the copy (the data did not reach the
    /// disk, and an fsync after this would no longer report it).
    pub fn finish(&self) -> Result<()> {
        let tails = std::mem::take(&mut *lock(&self.inner.tails));
        let mut merged = Vec::new();
        for (a, b) in tails {
            add_range(&mut merged, a, b);
        }
        for &(a, b) in &merged {
            self.inner.start(a, b)?;
        }
        for (a, b) in merged {
            self.inner.retire(a, b)?;
        }
        Ok(())
    }
}

/// A lane's page-cache trackers for its source and destination files
/// (each None when it has nothing to do): the lane reports what it read
/// and wrote, the trackers drop it some distance behind.
#[derive(Default)]
pub struct LaneCache {
    src: Option<Tracker>,
    dst: Option<Tracker>,
}

impl LaneCache {
    /// A lane's trackers of the job's source and destination files.
    pub fn new(src: Option<&FileCache>, dst: Option<&FileCache>) -> LaneCache {
        LaneCache {
            src: src.map(FileCache::tracker),
            dst: dst.map(FileCache::tracker),
        }
    }

    /// Before reading [off, off+len) of the source: makes sure the map of
    /// pages cached before the copy reaches well beyond it.
    pub fn before_read(&mut self, off: u64, len: u64) {
        if let Some(t) = &self.src {
            t.file.map_ahead(off.saturating_add(len));
        }
    }

    /// [off, off+len) of the source has been read.
    pub fn read(&mut self, off: u64, len: u64) {
        if let Some(t) = self.src.as_mut() {
            // Dropping source pages cannot fail in a way that matters.
            let _ = t.add(off, len);
        }
    }

    /// [off, off+len) of the destination has been written.  Fails on a
    /// write-back error.
    pub fn wrote(&mut self, off: u64, len: u64) -> Result<()> {
        match self.dst.as_mut() {
            Some(t) => t.add(off, len),
            None => Ok(()),
        }
    }
}

/// What one lane read or wrote of one file and has not dropped yet.
struct Tracker {
    file: Arc<Inner>,
    /// Ranges [a, b) not yet handed on (sorted, merged).
    pending: Vec<(u64, u64)>,
    pending_bytes: u64,
    /// Ranges handed on (write-back started), oldest first.
    queue: VecDeque<(u64, u64)>,
    queued_bytes: u64,
    /// Every range dropped so far (sorted, merged), dropped once more
    /// after the copy (cheap: the pages are clean, most are gone).  Pages
    /// read where a lane starts reading a new part of a file are often
    /// still not evictable a long way behind (measured: the first
    /// readahead window, 8 MiB here); pages at the edges of a written
    /// range that does not end on a page boundary are only dropped with
    /// their neighbour.
    seen: Vec<(u64, u64)>,
}

impl Tracker {
    fn add(&mut self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = off.saturating_add(len);
        add_range(&mut self.pending, off, end);
        self.pending_bytes += len;
        if self.pending_bytes < self.file.lane_chunk {
            return Ok(());
        }
        self.pending_bytes = 0;
        for (a, b) in std::mem::take(&mut self.pending) {
            self.file.start(a, b)?;
            self.queue.push_back((a, b));
            self.queued_bytes += b - a;
        }
        while self.queued_bytes > self.file.lane_behind {
            let Some((a, b)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= b - a;
            self.file.retire(a, b)?;
            add_range(&mut self.seen, a, b);
        }
        Ok(())
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let mut tails = lock(&self.file.tails);
        tails.extend(self.queue.drain(..));
        tails.append(&mut self.pending);
        tails.append(&mut self.seen);
    }
}

impl Inner {
    /// Starts write-back of [a, b) (destinations).
    fn start(&self, a: u64, b: u64) -> Result<()> {
        if self.side == Side::Destination {
            self.sync_range(a, b, libc::SYNC_FILE_RANGE_WRITE)?;
        }
        Ok(())
    }

    /// Drops [a, b) from the page cache: for a destination once its
    /// write-back is done; for a source only the pages that were not
    /// cached before the copy.
    fn retire(&self, a: u64, b: u64) -> Result<()> {
        match &self.map {
            None => {
                self.sync_range(
                    a,
                    b,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )?;
                self.drop_range(a, b);
            }
            Some(map) => {
                let mut runs = Vec::new();
                lock(map).uncached_runs(a, b, self.page, &mut runs);
                for (x, y) in runs {
                    self.drop_range(x, y);
                }
            }
        }
        Ok(())
    }

    fn sync_range(&self, a: u64, b: u64, flags: libc::c_uint) -> Result<()> {
        match sys::sync_file_range(self.fd, a, b - a, flags) {
            Ok(()) => Ok(()),
            // Not supported here (nothing to write back then): fine.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESPIPE | libc::EINVAL)) => Ok(()),
            Err(e) => Err(Error::os(
                format!(
                    "destination {}: write-back at offset {a} length {}",
                    self.name,
                    b - a
                ),
                e,
            )
            .on(Side::Destination)),
        }
    }

    fn drop_range(&self, a: u64, b: u64) {
        // Advice only: a failure leaves the pages cached, nothing else.
        let _ = sys::fadvise(self.fd, a, b - a, libc::POSIX_FADV_DONTNEED);
    }

    /// Extends the map of cached pages to reach AHEAD beyond `pos`.
    fn map_ahead(&self, pos: u64) {
        let want = pos.saturating_add(AHEAD);
        if want <= self.mapped_to.load(Relaxed) {
            return;
        }
        if let Some(map) = &self.map {
            let mut m = lock(map);
            m.extend(self.fd, want, self.page);
            self.mapped_to.store(m.end, Relaxed);
            if m.end >= m.size {
                self.mapped_to.store(u64::MAX, Relaxed);
            }
        }
    }
}

/// Which pages of a MAP_CHUNK piece were cached.
enum Chunk {
    All,
    /// One bit per page.
    Some(Vec<u64>),
}

impl CachedMap {
    /// Maps the pages cached in [self.end, want) (in MAP_CHUNK pieces).
    fn extend(&mut self, fd: RawFd, want: u64, page: u64) {
        while self.end < want.min(self.size) {
            let a = self.end;
            let b = (a / MAP_CHUNK + 1).saturating_mul(MAP_CHUNK).min(self.size);
            self.end = b;
            if self.broken {
                continue;
            }
            // cachestat (Linux 6.5) answers none or all without a look at
            // every page (mincore costs ~40 ms per GiB).
            let pages = (b - a).div_ceil(page);
            match sys::cached_pages(fd, a, b - a) {
                Some(0) => continue,
                Some(n) if n >= pages => {
                    self.chunks.insert(a / MAP_CHUNK, Chunk::All);
                    continue;
                }
                _ => {}
            }
            if sys::resident_pages(fd, a, b - a, &mut self.scratch).is_err() {
                self.broken = true;
                continue;
            }
            if self.scratch.iter().all(|&r| r & 1 == 0) {
                continue;
            }
            let mut bits = vec![0u64; (MAP_CHUNK / page).div_ceil(64) as usize];
            let first = ((a % MAP_CHUNK) / page) as usize;
            for (i, &r) in self.scratch.iter().enumerate() {
                if r & 1 != 0 {
                    let p = first + i;
                    bits[p / 64] |= 1 << (p % 64);
                }
            }
            self.chunks.insert(a / MAP_CHUNK, Chunk::Some(bits));
        }
    }

    /// Whether page `p` (index in the file) was cached before the copy.
    fn was_cached(&self, p: u64, page: u64) -> bool {
        let per = MAP_CHUNK / page;
        if p.saturating_mul(page) >= self.end || self.broken {
            // Not mapped (a read without `before_read`), or mincore
            // failed: keep it.
            return true;
        }
        match self.chunks.get(&(p / per)) {
            None => false,
            Some(Chunk::All) => true,
            Some(Chunk::Some(bits)) => {
                let i = (p % per) as usize;
                bits[i / 64] & (1 << (i % 64)) != 0
            }
        }
    }

    /// The runs of whole pages in [a, b) not cached before the copy.
    fn uncached_runs(&self, a: u64, b: u64, page: u64, out: &mut Vec<(u64, u64)>) {
        let (first, last) = (a.div_ceil(page), b / page);
        let per = MAP_CHUNK / page;
        let mut run: Option<u64> = None;
        let mut p = first;
        while p < last {
            let mapped = p.saturating_mul(page) < self.end && !self.broken;
            let next_chunk = ((p / per + 1) * per).min(last);
            match self.chunks.get(&(p / per)) {
                // Chunks with no or all pages cached: all of it at once.
                None if mapped => {
                    run.get_or_insert(p);
                    p = next_chunk;
                    continue;
                }
                Some(Chunk::All) => {
                    if let Some(s) = run.take() {
                        out.push((s * page, p * page));
                    }
                    p = next_chunk;
                    continue;
                }
                _ => {}
            }
            let (q, cached) = (p, self.was_cached(p, page));
            p += 1;
            match (cached, run) {
                (false, None) => run = Some(q),
                (true, Some(s)) => {
                    out.push((s * page, q * page));
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            out.push((s * page, last * page));
        }
    }
}

/// Adds [a, b) to the sorted, disjoint ranges `v`, merging it with the
/// ranges it touches.
fn add_range(v: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    let i = v.partition_point(|&(_, e)| e < a);
    let mut j = i;
    let (mut na, mut nb) = (a, b);
    while j < v.len() && v[j].0 <= b {
        na = na.min(v[j].0);
        nb = nb.max(v[j].1);
        j += 1;
    }
    v.splice(i..j, std::iter::once((na, nb)));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut v = Vec::new();
        add_range(&mut v, 10, 20);
        add_range(&mut v, 30, 40);
        assert_eq!(v, [(10, 20), (30, 40)]);
        add_range(&mut v, 0, 5);
        assert_eq!(v, [(0, 5), (10, 20), (30, 40)]);
        add_range(&mut v, 20, 30);
        assert_eq!(v, [(0, 5), (10, 40)]);
        add_range(&mut v, 3, 12);
        assert_eq!(v, [(0, 40)]);
        add_range(&mut v, 50, 60);
        add_range(&mut v, 45, 46);
        assert_eq!(v, [(0, 40), (45, 46), (50, 60)]);
    }

    #[test]
    fn uncached_runs_skip_cached_pages() {
        let page = 4096;
        let mut bits = vec![0u64; (MAP_CHUNK / page / 64) as usize];
        // Pages 2, 3 and 10 were cached.
        bits[0] = (1 << 2) | (1 << 3) | (1 << 10);
        let mut m = CachedMap {
            end: MAP_CHUNK,
            size: 2 * MAP_CHUNK,
            chunks: BTreeMap::new(),
            broken: false,
            scratch: Vec::new(),
        };
        m.chunks.insert(0, Chunk::Some(bits));
        let mut out = Vec::new();
        m.uncached_runs(0, 16 * page, page, &mut out);
        assert_eq!(
            out,
            [(0, 2 * page), (4 * page, 10 * page), (11 * page, 16 * page)]
        );
        // Partial pages at the ends are left alone; beyond the map, kept.
        out.clear();
        m.uncached_runs(100, MAP_CHUNK + 8 * page, page, &mut out);
        assert_eq!(out.first(), Some(&(page, 2 * page)));
        assert_eq!(out.last(), Some(&(11 * page, MAP_CHUNK)));
        // A mapped chunk with no cached page is dropped whole.
        m.end = 2 * MAP_CHUNK;
        out.clear();
        m.uncached_runs(8 * page, 2 * MAP_CHUNK, page, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], (11 * page, 2 * MAP_CHUNK));
        // A chunk all cached is kept whole.
        m.end = 3 * MAP_CHUNK;
        m.size = 3 * MAP_CHUNK;
        m.chunks.insert(2, Chunk::All);
        out.clear();
        m.uncached_runs(MAP_CHUNK, 3 * MAP_CHUNK, page, &mut out);
        assert_eq!(out, [(MAP_CHUNK, 2 * MAP_CHUNK)]);
    }
}
