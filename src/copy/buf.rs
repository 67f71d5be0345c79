// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! I/O buffers the kernel may use in flight, and `Span`, the handle to their bytes.
//
// Page-aligned I/O buffers whose memory never moves, so the kernel may
// read or write them while an io_uring operation is in flight.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

const ALIGN: usize = 4096;

/// A fixed-size, page-aligned, zero-initialised heap buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Box<[u8]>:
// shared references only read, mutation needs &mut.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1);
        let layout = Layout::from_size_align(len, ALIGN).expect("buffer layout");
        // SAFETY: layout has non-zero size.  Zeroed memory from fresh pages
        // costs nothing until touched, and means no uninitialised bytes are
        // ever exposed as &[u8].
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base pointer, for handing to the kernel.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A pointer `at` bytes into the buffer (at most its end), for
    /// handing to the kernel.
    pub fn ptr_at(&self, at: usize) -> *mut u8 {
        assert!(at <= self.len, "pointer past the buffer");
        self.ptr.as_ptr().wrapping_add(at)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for self's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN).expect("buffer layout");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// A bounded pool of equal-size buffers with reference counts: a buffer is
/// reused only when no operation refers to it any more.
pub struct BlockPool {
    blocks: Vec<AlignedBuf>,
    refs: Vec<u32>,
    free: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(block_size: usize) -> BlockPool {
        BlockPool {
            blocks: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Takes a free block (allocating one if none is free) with one reference.
    pub fn take(&mut self) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.blocks.push(AlignedBuf::new(self.block_size));
                self.refs.push(0);
                (self.blocks.len() - 1) as u32
            }
        };
        self.refs[id as usize] = 1;
        id
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

    pub fn ptr(&self, id: u32) -> *mut u8 {
        self.blocks[id as usize].ptr()
    }

    pub fn slice(&self, id: u32) -> &[u8] {
        self.blocks[id as usize].as_slice()
    }

    /// Bytes [start, end) of block `id`, for writing.  The caller makes
    /// sure no operation in flight uses them (other parts of the block
    /// may be in use).
    pub fn range_mut(&mut self, id: u32, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.block_size);
        // SAFETY: inside the block's allocation; only this range is
        // borrowed, and &mut self keeps the pool from handing it out twice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id).add(start), end - start) }
    }

    /// Blocks allocated so far (for memory accounting).
    pub fn allocated(&self) -> usize {
        self.blocks.len()
    }
}

/// Bytes of an I/O buffer passed along the data path (a READ payload in
/// a receive block, a file read in a slot buffer, the zero buffer): `len`
/// bytes, with `room` writable bytes in front of them where a request
/// header may be put.  Whoever made it holds the buffer (a block or slot
/// reference) until every operation using the span has completed.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    ptr: NonNull<u8>,
    len: usize,
    room: usize,
}

// SAFETY: a span points into a buffer owned by the lane that made it (its
// receive blocks or slot buffers) or into the static zero buffer; it moves
// with the lane to the lane's worker thread and is used only there.
unsafe impl Send for Span {}

impl Span {
    /// # Safety
    /// `ptr` must be valid for reads of `len` initialised bytes, and for
    /// writes of the `room` bytes before it (which nothing else uses), for
    /// as long as the span or any span derived from it is used; nothing
    /// may write the `len` bytes meanwhile.
    pub unsafe fn new(ptr: *mut u8, len: usize, room: usize) -> Span {
        Span {
            ptr: NonNull::new(ptr).expect("span of a null pointer"),
            len,
            room,
        }
    }

    /// `len` bytes of `buf` from `start`, with the bytes before them as
    /// room.  The caller keeps `buf` alive and unwritten while the span
    /// is used (the slot stays busy until its writes complete).
    pub fn of_buf(buf: &AlignedBuf, start: usize, len: usize) -> Span {
        assert!(start + len <= buf.len(), "span outside its buffer");
        // SAFETY: inside buf, a live allocation of buf.len() bytes; its
        // first `start` bytes are the room the slot reserves for headers.
        unsafe { Span::new(buf.ptr().add(start), len, start) }
    }

    /// `len` bytes of the process-wide zero buffer (no room: never written).
    pub fn zeroes(len: usize) -> Span {
        static ZEROES: once_cell::sync::Lazy<AlignedBuf> =
            once_cell::sync::Lazy::new(|| AlignedBuf::new(32 << 20));
        assert!(len <= ZEROES.len(), "zero buffer too small");
        // SAFETY: a static, never-freed buffer nothing writes (room 0).
        unsafe { Span::new(ZEROES.ptr(), len, 0) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writable bytes in front of the data.
    pub fn room(&self) -> usize {
        self.room
    }

    /// The start, for handing to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `new`'s contract: valid, initialised and not written
        // while the span is used.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes [start, end) of this span, with `room` bytes in front of
    /// them that the caller knows are free (at most what lies before them
    /// in this span's buffer).
    pub fn sub(&self, start: usize, end: usize, room: usize) -> Span {
        assert!(start <= end && end <= self.len && room <= start + self.room);
        Span {
            // SAFETY: start <= len: inside (or one past) the span.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(start)) },
            len: end - start,
            room,
        }
    }

    /// Writes `hdr` into the room just in front of the data and returns
    /// the span of header and data together; None when the room is too
    /// small.
    pub fn prepend(&self, hdr: &[u8]) -> Option<Span> {
        if hdr.len() > self.room {
            return None;
        }
        // SAFETY: hdr.len() <= room: inside the writable room in front.
        let start = unsafe { self.ptr.as_ptr().sub(hdr.len()) };
        // SAFETY: the room is writable and unused (`new`'s contract); hdr
        // is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(hdr.as_ptr(), start, hdr.len()) };
        Some(Span {
            // SAFETY: derived from a non-null pointer inside the buffer.
            ptr: unsafe { NonNull::new_unchecked(start) },
            len: hdr.len() + self.len,
            room: self.room - hdr.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(10000);
        assert_eq!(b.ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9999] = 1;
        assert_eq!(b.as_slice()[9999], 1);
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
        assert_eq!(p.allocated(), 3);
    }

    #[test]
    fn spans_cut_and_prepend() {
        let buf = AlignedBuf::new(128);
        let s = Span::of_buf(&buf, 64, 32);
        assert_eq!((s.len(), s.room()), (32, 64));
        let t = s.sub(8, 16, 8);
        assert_eq!((t.len(), t.room()), (8, 8));
        let h = t.prepend(&[7u8; 8]).unwrap();
        assert_eq!(h.len(), 16);
        assert_eq!(&h.as_slice()[..8], &[7u8; 8]);
        assert!(h.prepend(&[1]).is_none(), "no room left");
        assert!(Span::zeroes(4096).as_slice().iter().all(|&b| b == 0));
    }
}
