// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A connection's send queue: requests sent in batches, one sendmsg in flight.
//
// The send side of one connection: requests queued in order and sent in
// batches of one sendmsg, with at most one in flight so the byte stream
// never interleaves.

use crate::copy::buf::Span;
use crate::error::Result;
use crate::ring::Ring;
use io_uring::{opcode, types};
use std::io::IoSlice;
use std::os::fd::RawFd;

/// sendmsg takes at most IOV_MAX (1024) iovecs; items use up to two.
pub const MAX_BATCH: usize = 256;

/// One request in the send stream.
pub enum SendItem {
    /// A request without payload (or whose payload follows from a pipe).
    Header { buf: [u8; 32], len: u8 },
    /// Header written in front of the payload: one contiguous span.
    Joined { span: Span, block: Option<u32> },
    /// Header here, payload elsewhere (no room in front of it).
    Split {
        buf: [u8; 32],
        hlen: u8,
        payload: Span,
        block: Option<u32>,
    },
}

impl SendItem {
    /// A request header with an optional payload; the header goes in
    /// front of the payload when there is room there.  `block` is a peer
    /// receive block reference, handed back once the item is sent.
    pub fn new(hdr: &[u8], payload: Option<Span>, block: Option<u32>) -> SendItem {
        let mut buf = [0u8; 32];
        buf[..hdr.len()].copy_from_slice(hdr);
        let hlen = hdr.len() as u8;
        match payload {
            None => SendItem::Header { buf, len: hlen },
            Some(p) => match p.prepend(hdr) {
                Some(span) => SendItem::Joined { span, block },
                None => SendItem::Split {
                    buf,
                    hlen,
                    payload: p,
                    block,
                },
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            SendItem::Header { len, .. } => *len as usize,
            SendItem::Joined { span, .. } => span.len(),
            SendItem::Split { hlen, payload, .. } => *hlen as usize + payload.len(),
        }
    }

    fn block(&self) -> Option<u32> {
        match self {
            SendItem::Header { .. } => None,
            SendItem::Joined { block, .. } | SendItem::Split { block, .. } => *block,
        }
    }

    /// The item's bytes, in up to two parts.
    fn slices(&self) -> [&[u8]; 2] {
        match self {
            SendItem::Header { buf, len } => [&buf[..*len as usize], &[]],
            SendItem::Joined { span, .. } => [span.as_slice(), &[]],
            SendItem::Split {
                buf, hlen, payload, ..
            } => [&buf[..*hlen as usize], payload.as_slice()],
        }
    }
}

/// iovecs for `items` without their first `skip` bytes (already sent),
/// for an io_uring sendmsg: the items must stay where they are until it
/// completes.
pub fn fill_iov(items: &[SendItem], mut skip: usize, iov: &mut Vec<libc::iovec>) {
    iov.clear();
    for part in items.iter().flat_map(SendItem::slices) {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let rest = &part[skip..];
        iov.push(libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        });
        skip = 0;
    }
}

/// The bytes of `items`, for a direct sendmsg.
pub fn io_slices(items: &[SendItem]) -> Vec<IoSlice<'_>> {
    items
        .iter()
        .flat_map(SendItem::slices)
        .filter(|p| !p.is_empty())
        .map(IoSlice::new)
        .collect()
}

/// Requests waiting to be sent, and the batch the kernel is sending.
pub struct SendQueue {
    pub queue: Vec<SendItem>,
    /// Owned by the kernel while `busy`.
    batch: Vec<SendItem>,
    batch_len: usize,
    batch_sent: usize,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    pub busy: bool,
}

// SAFETY: the raw pointers (iovecs, msghdr) point into this queue's own
// items and the buffers their spans name, which belong to the same lane;
// the queue moves with its lane to the worker thread and is used there.
unsafe impl Send for SendQueue {}

impl SendQueue {
    pub fn new() -> SendQueue {
        SendQueue {
            queue: Vec::new(),
            batch: Vec::new(),
            batch_len: 0,
            batch_sent: 0,
            iov: Vec::with_capacity(2 * MAX_BATCH),
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            busy: false,
        }
    }

    /// Moves up to a batch of queued items into the batch; false when
    /// there is nothing to send or a send is already in flight.
    pub fn start_batch(&mut self) -> bool {
        if self.busy || self.queue.is_empty() {
            return false;
        }
        let n = self.queue.len().min(MAX_BATCH);
        debug_assert!(self.batch.is_empty());
        self.batch.extend(self.queue.drain(..n));
        self.batch_len = self.batch.iter().map(SendItem::len).sum();
        self.batch_sent = 0;
        true
    }

    /// Submits one sendmsg of the unsent part of the batch (with `tls`:
    /// the batch encrypted, as one send of ciphertext).
    pub fn post(
        &mut self,
        ring: &mut Ring,
        fd: RawFd,
        user_data: u64,
        tls: Option<&mut crate::tls::uring::RingTls>,
    ) -> Result<()> {
        fill_iov(&self.batch, self.batch_sent, &mut self.iov);
        if let Some(t) = tls {
            // SAFETY: the iovecs point into the batch items, valid now.
            unsafe { t.post_send(ring, &self.iov, user_data) }?;
            self.busy = true;
            return Ok(());
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        let e = opcode::SendMsg::new(types::Fd(fd), &*self.msg as *const libc::msghdr)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
            .user_data(user_data);
        self.busy = true;
        // SAFETY: msg (boxed), iov and the batch items (inline headers and
        // the buffers their spans name) are not touched until this send's
        // completion: `batch`/`iov` change only in `sent` after it, and
        // referenced blocks/slots are held until the Release/WriteDone
        // events that follow it.  The worker drains the ring before any of
        // them is dropped.
        unsafe { ring.push(&e) }
    }

    /// Forgets everything queued or half sent (the connection is gone;
    /// the request book sends it all again).  Nothing may be in the ring.
    pub fn clear(&mut self) {
        debug_assert!(!self.busy);
        self.queue.clear();
        self.batch.clear();
        self.batch_len = 0;
        self.batch_sent = 0;
    }

    /// Bytes of the batch not sent yet.
    pub fn unsent(&self) -> usize {
        self.batch_len - self.batch_sent
    }

    /// `n` more bytes of the batch were sent.  True when the whole batch
    /// is out: `released` was then given the receive blocks its items
    /// referred to.  False while some of it is left (post again).
    pub fn sent(&mut self, n: usize, released: &mut impl FnMut(u32)) -> bool {
        self.busy = false;
        self.batch_sent += n;
        if self.batch_sent < self.batch_len {
            return false;
        }
        for block in self.batch.drain(..).filter_map(|i| i.block()) {
            released(block);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::buf::AlignedBuf;

    fn bytes(iov: &[libc::iovec]) -> Vec<u8> {
        iov.iter()
            .flat_map(|v| {
                // SAFETY: the iovecs point into live test buffers.
                unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec()
            })
            .collect()
    }

    #[test]
    fn header_goes_in_front_when_there_is_room() {
        let mut buf = AlignedBuf::new(64);
        buf.as_mut_slice()[32..40].copy_from_slice(b"payload!");
        let joined = SendItem::new(b"HDR", Some(Span::of_buf(&buf, 32, 8)), Some(7));
        assert!(matches!(joined, SendItem::Joined { block: Some(7), .. }));
        let split = SendItem::new(b"HDR", Some(Span::of_buf(&buf, 2, 8)), None);
        assert!(matches!(split, SendItem::Split { .. }));
        // The items stay put while their iovecs are used.
        let items = [SendItem::new(b"H1", None, None), joined];
        let mut iov = Vec::new();
        fill_iov(&items, 0, &mut iov);
        assert_eq!(bytes(&iov), b"H1HDRpayload!");
        // Partly sent: the rest only.
        let items = [split];
        fill_iov(&items, 4, &mut iov);
        assert_eq!(bytes(&iov).len(), 3 + 8 - 4);
    }

    #[test]
    fn batches_complete_and_release_blocks() {
        let buf = AlignedBuf::new(64);
        let mut q = SendQueue::new();
        assert!(!q.start_batch());
        q.queue.push(SendItem::new(b"A", None, None));
        q.queue
            .push(SendItem::new(b"B", Some(Span::of_buf(&buf, 0, 4)), Some(3)));
        assert!(q.start_batch());
        q.busy = true;
        let mut got = Vec::new();
        assert!(!q.sent(2, &mut |b| got.push(b)), "1 + 1 + 4 bytes");
        assert!(q.sent(4, &mut |b| got.push(b)));
        assert_eq!(got, vec![3]);
    }
}
