// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Page-aligned I/O buffers whose memory never moves, so the kernel may
//! read or write them while an io_uring operation is in flight.

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

    pub fn slice_mut(&mut self, id: u32) -> &mut [u8] {
        self.blocks[id as usize].as_mut_slice()
    }

    /// Blocks allocated so far (for memory accounting).
    pub fn allocated(&self) -> usize {
        self.blocks.len()
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
}
