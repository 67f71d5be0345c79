// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! I/O buffers the kernel may use in flight (shared, never moved) and `Span`, a counted handle to their bytes.
//
// Every buffer the kernel may read or write is an `IoBuf`: a fixed heap
// allocation behind an `Arc`.  Operations handed to an engine hold a
// clone until their completion is reaped (or forever, when the engine
// cannot make sure the kernel is done with them), and so does every
// `Span`: dropping a lane, a connection or a pool while an operation is in
// flight never frees memory the kernel still uses, on any path (panics
// included).  Which *bytes* of a shared buffer are in use is the
// business of its owner (a pool's reference counts, a slot's busy flag);
// that is what the few `unsafe` writers below rely on.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

const ALIGN: usize = 4096;

/// From this size on a buffer is its own anonymous mapping: zero pages
/// the kernel fills in only when touched.  (The allocator's zeroed
/// page-aligned memory is written with zeroes up front: 2 ms and 4 MiB
/// of resident memory per receive block before a byte is copied, 15 ms
/// for the shared zero buffer.)
const MAP_MIN: usize = 128 << 10;

/// Where a buffer's memory came from, and goes back to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The allocator, with `ALIGN`.
    Heap,
    /// mmap (MAP_PRIVATE | MAP_ANONYMOUS).
    Map,
    /// A `Vec<u8>` of this capacity.
    Vec(usize),
}

/// A fixed-size heap buffer that never moves: page-aligned and zeroed
/// (`new`), or the allocation of a `Vec<u8>` taken over (`from_vec`).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    origin: Origin,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Box<[u8]>;
// shared access only reads, but for the `unsafe` writers whose callers
// guarantee exclusive use of the bytes they write.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

/// A buffer the kernel may use while an operation is in flight.
pub type IoBuf = Arc<AlignedBuf>;

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1);
        if len >= MAP_MIN {
            // SAFETY: a new anonymous private mapping: no file, no
            // existing memory involved; the result is checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                if let Some(ptr) = NonNull::new(p.cast::<u8>()) {
                    return AlignedBuf {
                        ptr,
                        len,
                        origin: Origin::Map,
                    };
                }
            }
        }
        let layout = Layout::from_size_align(len, ALIGN).expect("buffer layout");
        // SAFETY: layout has non-zero size.  Zeroed memory from fresh pages
        // costs nothing until touched, and means no uninitialised bytes are
        // ever exposed as &[u8].
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len,
            origin: Origin::Heap,
        }
    }

    /// A shared buffer of `len` zeroed bytes.
    pub fn shared(len: usize) -> IoBuf {
        Arc::new(AlignedBuf::new(len))
    }

    /// Takes over the bytes of `v` (no copy); `into_vec` gives them back.
    pub fn from_vec(v: Vec<u8>) -> AlignedBuf {
        let mut v = std::mem::ManuallyDrop::new(v);
        let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
        AlignedBuf {
            // A Vec's pointer is never null (dangling when empty).
            ptr: NonNull::new(ptr).expect("Vec pointer"),
            len,
            origin: Origin::Vec(cap),
        }
    }

    /// The Vec `from_vec` took over, or None for a page-aligned buffer.
    pub fn into_vec(self) -> Option<Vec<u8>> {
        // Anything else is freed here, as usual.
        let Origin::Vec(cap) = self.origin else {
            return None;
        };
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: ptr/len/cap are those of the Vec taken over in
        // `from_vec`, unchanged; `me` is not dropped, so this is the only
        // owner.
        Some(unsafe { Vec::from_raw_parts(me.ptr.as_ptr(), me.len, cap) })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer `at` bytes into the buffer (at most its end), for the
    /// engine to hand to the kernel.
    pub(crate) fn ptr_at(&self, at: usize) -> *mut u8 {
        assert!(at <= self.len, "pointer past the buffer");
        self.ptr.as_ptr().wrapping_add(at)
    }

    /// The whole buffer (only where nothing writes any of it: a buffer
    /// shared with a receive in flight is read by [`range`](Self::range)).
    pub fn as_slice(&self) -> &[u8] {
        self.range(0, self.len)
    }

    /// Bytes [start, end), made from the raw pointer over exactly that
    /// range: a receive writing elsewhere in the buffer is never under a
    /// `&[u8]`.
    pub fn range(&self, start: usize, end: usize) -> &[u8] {
        assert!(start <= end && end <= self.len, "range outside the buffer");
        // SAFETY: inside the allocation, initialised (zeroed or a Vec's
        // bytes) for self's lifetime; the bytes of a range that is read
        // are written by nobody meanwhile (the writers below).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Bytes [start, end) for writing, while the buffer is shared.
    ///
    /// # Safety
    /// Nothing else (no operation in flight, no span in use, no other
    /// borrow) reads or writes these bytes while the slice lives.
    #[allow(clippy::mut_from_ref)] // the bytes are behind a raw pointer, like an UnsafeCell
    pub(crate) unsafe fn range_mut(&self, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.len, "range outside the buffer");
        // SAFETY: inside the allocation; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.origin {
            // SAFETY: the Vec taken over in `from_vec`, unchanged.
            Origin::Vec(cap) => {
                drop(unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, cap) })
            }
            Origin::Map => {
                // SAFETY: the mapping made in `new`, of this length; no
                // reference into it outlives self.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
            Origin::Heap => {
                let layout = Layout::from_size_align(self.len, ALIGN).expect("buffer layout");
                // SAFETY: allocated in `new` with this very layout.
                unsafe { dealloc(self.ptr.as_ptr(), layout) }
            }
        }
    }
}

/// Makes `buf` this handle's alone before it is written again: when a
/// span or an operation of its previous use still holds it, a fresh
/// (zeroed) buffer of the same size takes its place and the old one
/// lives on with them.  True when it was replaced.
pub fn make_unique(buf: &mut IoBuf) -> bool {
    if Arc::get_mut(buf).is_some() {
        return false;
    }
    *buf = AlignedBuf::shared(buf.len());
    true
}

/// Bytes [start, end) of `buf` for writing: only when no span or
/// operation holds the buffer (checked: Arc::get_mut); None otherwise.
pub fn write_exclusive(buf: &mut IoBuf, start: usize, end: usize) -> Option<&mut [u8]> {
    assert!(start <= end && end <= buf.len(), "range outside the buffer");
    Some(&mut Arc::get_mut(buf)?.as_mut_slice()[start..end])
}

/// A bounded pool of equal-size buffers with reference counts: a buffer is
/// reused only when no operation refers to it any more.
///
/// The reference counts decide reuse only; soundness does not rest on
/// them: a block taken is checked to be the pool's alone (else replaced
/// by a fresh one), spans of a block are made only by the pool, and the
/// pool writes a block only past every byte it handed to a span
/// (`spanned`).
pub struct BlockPool {
    blocks: Vec<IoBuf>,
    refs: Vec<u32>,
    /// Per block: the end of the bytes handed to spans (room included)
    /// since the block was last the pool's alone; never written.
    spanned: Vec<usize>,
    free: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(block_size: usize) -> BlockPool {
        BlockPool {
            blocks: Vec::new(),
            refs: Vec::new(),
            spanned: Vec::new(),
            free: Vec::new(),
            block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Takes a free block (allocating one if none is free) with one
    /// reference.  A block whose count says free but that a span or an
    /// operation still holds is not reused: a fresh one takes its place.
    pub fn take(&mut self) -> u32 {
        let id = match self.free.pop() {
            Some(id) => {
                make_unique(&mut self.blocks[id as usize]);
                id
            }
            None => {
                self.blocks.push(AlignedBuf::shared(self.block_size));
                self.refs.push(0);
                self.spanned.push(0);
                (self.blocks.len() - 1) as u32
            }
        };
        self.refs[id as usize] = 1;
        self.spanned[id as usize] = 0;
        id
    }

    /// Block `id` may be written from its start again: true when nothing
    /// but the pool holds it (no span, no operation; checked).
    pub fn rewind(&mut self, id: u32) -> bool {
        let unique = Arc::get_mut(&mut self.blocks[id as usize]).is_some();
        if unique {
            self.spanned[id as usize] = 0;
        }
        unique
    }

    /// A span of `len` bytes at `at` of block `id` with up to `room`
    /// bytes before them as its room (cut to the bytes no earlier span
    /// holds); those bytes are never written by the pool again until the
    /// block is its alone.  Spans of a block are made in the order of
    /// their bytes.
    pub fn span(&mut self, id: u32, at: usize, len: usize, room: usize) -> Span {
        let end = &mut self.spanned[id as usize];
        assert!(at >= *end, "span over bytes already handed out");
        let room = room.min(at - *end);
        *end = at + len;
        Span::with_room(&self.blocks[id as usize], at, len, room)
    }

    pub fn hold(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// Drops one reference; the block is free again at zero.
    pub fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "block released too often");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(id);
        }
    }

    /// References held on block `id`.
    pub fn refs(&self, id: u32) -> u32 {
        self.refs[id as usize]
    }

    /// The block itself (to hand a receive a share of it, past its
    /// `spanned` bytes).
    pub fn buf(&self, id: u32) -> &IoBuf {
        &self.blocks[id as usize]
    }

    /// Bytes [start, end) of block `id` (exactly those: a receive may
    /// be writing the block's tail).
    pub fn slice(&self, id: u32, start: usize, end: usize) -> &[u8] {
        self.blocks[id as usize].range(start, end)
    }

    /// Bytes [start, end) of block `id`, for writing: only past every
    /// byte handed to a span (checked).  The one rule left to the caller
    /// (the connection): no receive it posted on these bytes is in
    /// flight (it writes them only instead of posting one).
    pub fn range_mut(&mut self, id: u32, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.block_size);
        assert!(
            start >= self.spanned[id as usize],
            "write over bytes a span holds"
        );
        // SAFETY: inside the block; no span covers these bytes (checked
        // above: spans are made only by `span`, below `spanned`), and
        // &mut self keeps the pool from handing out the range twice.
        unsafe { self.blocks[id as usize].range_mut(start, end) }
    }

    /// Copies [start, end) of block `from` to the start of block `to`
    /// (distinct blocks; `to` freshly taken: the pool's alone, checked).
    pub fn copy_to_fresh(&mut self, from: u32, start: usize, end: usize, to: u32) {
        assert!(from != to && start <= end && end <= self.block_size);
        let (from, to) = (from as usize, to as usize);
        if make_unique(&mut self.blocks[to]) {
            self.spanned[to] = 0;
        }
        assert_eq!(self.spanned[to], 0, "a fresh block has no spans");
        // Two blocks of the pool: split the borrow.
        let (src, dst) = if from < to {
            let (a, b) = self.blocks.split_at_mut(to);
            (&a[from], &mut b[0])
        } else {
            let (a, b) = self.blocks.split_at_mut(from);
            (&b[0], &mut a[to])
        };
        let out = Arc::get_mut(dst)
            .expect("unique: just checked")
            .as_mut_slice();
        out[..end - start].copy_from_slice(src.range(start, end));
    }
}

/// Bytes of an I/O buffer passed along the data path (a READ payload in
/// a receive block, a file read in a slot buffer, the zero buffer): `len`
/// bytes at `start`, with `room` bytes in front of them where a request
/// header may be put.  The span holds a share of its buffer, so its bytes
/// stay allocated for as long as it lives.
///
/// The room is a capability held by one span only: a span is not
/// `Clone`; [`share`](Self::share) and [`sub`](Self::sub) give spans
/// without room and mark the bytes seen by more than one span (`shared`);
/// [`prepend`](Self::prepend) consumes the span; [`carve`](Self::carve)
/// hands the bytes between pieces on as their rooms only while no other
/// span sees them.
pub struct Span {
    buf: IoBuf,
    start: usize,
    len: usize,
    room: usize,
    /// Another span may read these bytes: none of them is ever room.
    shared: bool,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Span({}+{}, room {})", self.start, self.len, self.room)
    }
}

impl Span {
    /// `len` bytes of `buf` from `start`, with the bytes before them as
    /// room (the owner reserves them for headers).
    pub fn of_buf(buf: &IoBuf, start: usize, len: usize) -> Span {
        Span::with_room(buf, start, len, start)
    }

    /// As `of_buf`, with only `room` bytes of room (at most `start`).
    pub fn with_room(buf: &IoBuf, start: usize, len: usize, room: usize) -> Span {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= buf.len()) && room <= start,
            "span outside its buffer"
        );
        Span {
            buf: buf.clone(),
            start,
            len,
            room,
            shared: false,
        }
    }

    /// `len` bytes of the process-wide zero buffer (no room: never written).
    pub fn zeroes(len: usize) -> Span {
        static ZEROES: once_cell::sync::Lazy<IoBuf> =
            once_cell::sync::Lazy::new(|| AlignedBuf::shared(32 << 20));
        assert!(len <= ZEROES.len(), "zero buffer too small");
        Span::with_room(&ZEROES, 0, len, 0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writable bytes in front of the data.
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.room
    }

    /// The buffer and where the bytes start in it (for the engine).
    pub(crate) fn parts(&self) -> (&IoBuf, usize) {
        (&self.buf, self.start)
    }

    /// The span's bytes, exactly (never a slice over its whole buffer).
    pub fn as_slice(&self) -> &[u8] {
        self.buf.range(self.start, self.start + self.len)
    }

    /// The same bytes for one more reader (a request book keeping a
    /// payload to send it again): without room, and from now on neither
    /// span's bytes are room for anything.
    pub fn share(&mut self) -> Span {
        self.shared = true;
        Span {
            buf: self.buf.clone(),
            start: self.start,
            len: self.len,
            room: 0,
            shared: true,
        }
    }

    /// The bytes [start, end) of this span, without room (shared, as by
    /// [`share`](Self::share)).
    pub fn sub(&mut self, start: usize, end: usize) -> Span {
        assert!(start <= end && end <= self.len, "sub-span outside the span");
        self.shared = true;
        Span {
            buf: self.buf.clone(),
            start: self.start + start,
            len: end - start,
            room: 0,
            shared: true,
        }
    }

    /// Cuts this span into pieces, in order (see [`Pieces`]).
    pub fn carve(self) -> Pieces {
        Pieces {
            whole: self,
            next: 0,
            first: true,
        }
    }

    /// Writes `hdr` into the room just in front of the data and returns
    /// the span of header and data together; the span itself when the
    /// room is too small.
    pub fn prepend(self, hdr: &[u8]) -> std::result::Result<Span, Span> {
        if hdr.len() > self.room {
            return Err(self);
        }
        let at = self.start - hdr.len();
        // SAFETY: the room in front of a span is bytes only this span may
        // write and no span or operation reads: made so by the span's
        // owner (`with_room`: parsed reply headers, a slot's header room),
        // handed on only by `carve` (bytes no other span sees), never
        // copied (no Clone; `share` and `sub` give no room), and consumed
        // here.
        let out = unsafe { self.buf.range_mut(at, self.start) };
        out.copy_from_slice(hdr);
        Ok(Span {
            buf: self.buf,
            start: at,
            len: hdr.len() + self.len,
            room: self.room - hdr.len(),
            shared: self.shared,
        })
    }
}

/// A span cut into pieces in order ([`Span::carve`]): each piece's room
/// is the bytes between the previous piece and it (bytes no piece
/// holds), the first piece's also the span's own room.  Bytes another
/// span sees (`shared`) are never room: a piece then has only the
/// span's own room, if it is the first.
pub struct Pieces {
    whole: Span,
    /// Where the previous piece ended (0 before the first).
    next: usize,
    first: bool,
}

impl Pieces {
    /// The bytes [start, end) of the span, after every piece cut before.
    pub fn piece(&mut self, start: usize, end: usize) -> Span {
        let w = &self.whole;
        assert!(
            self.next <= start && start <= end && end <= w.len,
            "pieces out of order or outside the span"
        );
        let gap = if w.shared { 0 } else { start - self.next };
        let room = match (self.first, w.shared) {
            (true, false) => gap + w.room,
            (true, true) if start == 0 => w.room,
            _ => gap,
        };
        self.next = end;
        self.first = false;
        Span {
            buf: w.buf.clone(),
            start: w.start + start,
            len: end - start,
            room,
            shared: w.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        // From the allocator, and (large) a mapping of its own.
        for len in [10000, MAP_MIN, (4 << 20) + 1] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.ptr_at(0) as usize % 4096, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[len - 1] = 1;
            assert_eq!(b.as_slice()[len - 1], 1);
            assert!(b.into_vec().is_none());
        }
    }

    #[test]
    fn vec_round_trip() {
        let b = AlignedBuf::from_vec(vec![1, 2, 3]);
        assert_eq!(b.as_slice(), &[1, 2, 3]);
        assert_eq!(b.into_vec().unwrap(), vec![1, 2, 3]);
        assert!(AlignedBuf::new(8).into_vec().is_none());
    }

    #[test]
    fn pool_reuses_only_released_blocks() {
        let mut p = BlockPool::new(4096);
        let a = p.take();
        p.hold(a);
        let b = p.take();
        assert_ne!(a, b);
        p.release(a);
        let c = p.take();
        assert_ne!(c, a, "a still has a reference");
        p.release(a);
        let d = p.take();
        assert_eq!(d, a);
    }

    #[test]
    fn spans_cut_and_prepend_and_keep_their_buffer() {
        let buf = AlignedBuf::shared(128);
        let s = Span::of_buf(&buf, 64, 32);
        assert_eq!((s.len(), s.room()), (32, 64));
        let mut p = s.carve();
        let t = p.piece(8, 16);
        assert_eq!(
            (t.len(), t.room()),
            (8, 72),
            "the bytes before it and the span's room"
        );
        let u = p.piece(20, 32);
        assert_eq!(
            (u.len(), u.room()),
            (12, 4),
            "the gap since the previous piece"
        );
        let h = t.prepend(&[7u8; 72]).unwrap();
        assert_eq!(h.len(), 80);
        assert_eq!(&h.as_slice()[..72], &[7u8; 72]);
        let h = h.prepend(&[1]).expect_err("no room left");
        assert!(Span::zeroes(4096).as_slice().iter().all(|&b| b == 0));
        // Shared bytes are nobody's room.
        let mut s = Span::of_buf(&buf, 64, 32);
        let kept = s.share();
        assert_eq!(kept.room(), 0);
        let mut p = s.carve();
        assert_eq!(p.piece(0, 8).room(), 64, "the span's own room stays");
        assert_eq!(p.piece(16, 24).room(), 0, "shared bytes are no room");
        let mut s = Span::of_buf(&buf, 64, 32);
        let part = s.sub(4, 8);
        assert_eq!(part.room(), 0);
        assert_eq!(s.carve().piece(4, 8).room(), 0, "after sub, shared");
        // The span outlives the caller's handle: the bytes stay.
        drop(buf);
        assert_eq!(h.as_slice().len(), 80);
    }
}
