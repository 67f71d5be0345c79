// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! TLS on an io_uring NBD connection: decrypt receives, encrypt send batches.
//
// TLS on an io_uring NBD connection: the connection's receives land as
// ciphertext and are decrypted straight into its receive buffer; its
// send batches are encrypted from where the data lies and the ciphertext
// sent in one go.  One receive and one send in flight, as without TLS.

use super::session::{Decrypted, TlsSession};
use crate::error::Result;
use crate::ring::Ring;
use io_uring::{opcode, types};
use std::os::fd::RawFd;

/// Parts smaller than this are gathered into one record with their
/// neighbours (request headers, small payloads).
const GATHER: usize = 16 << 10;

pub struct RingTls {
    sess: TlsSession,
    fd: RawFd,
    /// The plaintext destination of the receive in flight (address, length).
    target: (usize, usize),
    /// Plaintext already decrypted for the receive posted as a NOP.
    ready: Option<usize>,
    /// Ciphertext owned by the send in flight, and how much of it went.
    inflight: Vec<u8>,
    sent: usize,
    gather: Vec<u8>,
}

impl RingTls {
    /// Takes a handshaken session over to memory buffers.
    pub fn new(mut sess: TlsSession, fd: RawFd) -> RingTls {
        sess.into_memory();
        RingTls {
            sess,
            fd,
            target: (0, 0),
            ready: None,
            inflight: Vec::new(),
            sent: 0,
            gather: Vec::with_capacity(GATHER),
        }
    }

    /// Posts a receive whose plaintext goes to `ptr[..len]`: a NOP when
    /// OpenSSL can already produce some, else a receive of ciphertext.
    ///
    /// # Safety
    /// `ptr[..len]` must stay valid and unused by anything else until the
    /// completion is handed to [`recv_done`](Self::recv_done).
    pub unsafe fn post_recv(
        &mut self,
        ring: &mut Ring,
        ptr: *mut u8,
        len: usize,
        user_data: u64,
    ) -> Result<()> {
        self.target = (ptr as usize, len);
        // SAFETY: the caller's contract.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        match self.sess.decrypt(out)? {
            Decrypted::Data(n) => self.ready = Some(n),
            Decrypted::Closed => self.ready = Some(0),
            Decrypted::More => return self.post_cipher_recv(ring, user_data),
        }
        let e = opcode::Nop::new().build().user_data(user_data);
        // SAFETY: a NOP refers to no memory.
        unsafe { ring.push(&e) }
    }

    fn post_cipher_recv(&mut self, ring: &mut Ring, user_data: u64) -> Result<()> {
        let (p, room) = self.sess.rx_space();
        let e = opcode::Recv::new(types::Fd(self.fd), p, room as u32)
            .build()
            .user_data(user_data);
        // SAFETY: the session's rx buffer is not touched (nor moved: it is
        // boxed) until this receive completes in recv_done.
        unsafe { ring.push(&e) }
    }

    /// A receive completed with `res`.  Some(n): n plaintext bytes are at
    /// the target (0: TLS closed properly; negative: the receive's error).
    /// None: more ciphertext is needed and its receive was posted.
    pub fn recv_done(&mut self, ring: &mut Ring, res: i32, user_data: u64) -> Result<Option<i32>> {
        if let Some(n) = self.ready.take() {
            return Ok(Some(n as i32));
        }
        if res < 0 && res != -libc::ECONNRESET {
            return Ok(Some(res));
        }
        self.sess.received(res.max(0) as usize);
        let (ptr, len) = self.target;
        // SAFETY: the contract of post_recv.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
        match self.sess.decrypt(out)? {
            Decrypted::Data(n) => Ok(Some(n as i32)),
            Decrypted::Closed => Ok(Some(0)),
            Decrypted::More => {
                self.post_cipher_recv(ring, user_data)?;
                Ok(None)
            }
        }
    }

    /// Encrypts the plaintext parts of a send batch and posts the
    /// ciphertext's send.
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length (read here,
    /// before this returns).
    pub unsafe fn post_send(
        &mut self,
        ring: &mut Ring,
        iov: &[libc::iovec],
        user_data: u64,
    ) -> Result<()> {
        debug_assert!(self.inflight.is_empty());
        for v in iov {
            // SAFETY: the caller's contract.
            let part = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            if part.len() < GATHER {
                if self.gather.len() + part.len() > GATHER {
                    self.flush_gather()?;
                }
                self.gather.extend_from_slice(part);
            } else {
                self.flush_gather()?;
                self.sess.encrypt(part)?;
            }
        }
        self.flush_gather()?;
        self.sent = 0;
        self.sess.take_tx(&mut self.inflight);
        self.post_cipher_send(ring, user_data)
    }

    fn flush_gather(&mut self) -> Result<()> {
        if !self.gather.is_empty() {
            let g = std::mem::take(&mut self.gather);
            let r = self.sess.encrypt(&g);
            self.gather = g;
            self.gather.clear();
            r?;
        }
        Ok(())
    }

    fn post_cipher_send(&mut self, ring: &mut Ring, user_data: u64) -> Result<()> {
        let rest = &self.inflight[self.sent..];
        let e = opcode::Send::new(types::Fd(self.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(user_data);
        // SAFETY: `inflight` is neither changed nor dropped until the send
        // completes (send_done); the connection drains the ring first.
        unsafe { ring.push(&e) }
    }

    /// A send of `res` (>= 0) bytes completed.  True: the whole batch
    /// went; false: the rest was posted.
    pub fn send_done(&mut self, ring: &mut Ring, res: i32, user_data: u64) -> Result<bool> {
        self.sent += res.max(0) as usize;
        if self.sent < self.inflight.len() {
            self.post_cipher_send(ring, user_data)?;
            return Ok(false);
        }
        self.inflight.clear();
        self.sent = 0;
        Ok(true)
    }

    /// Says goodbye (the last request, then close_notify) without blocking.
    pub fn goodbye(&mut self, last: &[u8]) {
        self.sess.goodbye(last);
    }
}
