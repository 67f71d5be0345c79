// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! TLS on an engine-driven NBD connection: decrypt receives, encrypt send batches.
//
// The connection's receives land as ciphertext (in the session's receive
// buffer) and are decrypted straight into its receive block; its send
// batches are encrypted from where the data lies and the ciphertext sent
// in one go.  One receive and one send in flight, as without TLS.

use super::session::{Decrypted, TlsSession};
use crate::engine::buf::{AlignedBuf, IoBuf, Span};
use crate::engine::{gather, Chunk, Engine, Fd, Op};
use crate::error::Result;
use std::sync::Arc;

/// Parts smaller than this are gathered into one record with their
/// neighbours (request headers, small payloads).
const GATHER: usize = 16 << 10;

pub struct TlsConn {
    sess: TlsSession,
    /// The socket, as registered with the worker's engine.
    fd: Fd,
    /// Plaintext already decrypted for the receive posted as a NOP.
    ready: Option<usize>,
    /// Ciphertext of the send in flight (shared with it), and how much
    /// of it went.
    inflight: Option<IoBuf>,
    sent: usize,
    /// A spare ciphertext buffer for OpenSSL to write into.
    spare: Vec<u8>,
    gather: Vec<u8>,
}

impl TlsConn {
    /// Takes a handshaken session over to memory buffers.
    pub fn new(mut sess: TlsSession, fd: Fd) -> TlsConn {
        sess.use_memory();
        TlsConn {
            sess,
            fd,
            ready: None,
            inflight: None,
            sent: 0,
            spare: Vec::new(),
            gather: Vec::with_capacity(GATHER),
        }
    }

    /// Names the socket as registered with the engine (before the
    /// first operation).
    pub fn set_fd(&mut self, fd: Fd) {
        self.fd = fd;
    }

    /// Posts a receive whose plaintext goes to `target`: a NOP when
    /// OpenSSL can already produce some, else a receive of ciphertext.
    /// The completion goes to [`recv_done`](Self::recv_done) with the
    /// same target.
    pub fn post_recv(
        &mut self,
        engine: &mut Engine,
        target: &mut [u8],
        user_data: u64,
    ) -> Result<()> {
        match self.sess.decrypt(target)? {
            Decrypted::Data(n) => self.ready = Some(n),
            Decrypted::Closed => self.ready = Some(0),
            Decrypted::More => return self.post_cipher_recv(engine, user_data),
        }
        engine.push(Op::Nop, user_data)
    }

    fn post_cipher_recv(&mut self, engine: &mut Engine, user_data: u64) -> Result<()> {
        let (buf, at, len) = self.sess.rx_space();
        engine.push(
            Op::Recv {
                fd: self.fd,
                buf,
                at,
                len,
            },
            user_data,
        )
    }

    /// A receive completed with `res`.  Some(n): n plaintext bytes are at
    /// the target (0: TLS closed properly; negative: the receive's error).
    /// None: more ciphertext is needed and its receive was posted.
    pub fn recv_done(
        &mut self,
        engine: &mut Engine,
        res: i32,
        user_data: u64,
        target: &mut [u8],
    ) -> Result<Option<i32>> {
        if let Some(n) = self.ready.take() {
            return Ok(Some(n as i32));
        }
        if res < 0 && res != -libc::ECONNRESET {
            return Ok(Some(res));
        }
        self.sess.received(res.max(0) as usize);
        match self.sess.decrypt(target)? {
            Decrypted::Data(n) => Ok(Some(n as i32)),
            Decrypted::Closed => Ok(Some(0)),
            Decrypted::More => {
                self.post_cipher_recv(engine, user_data)?;
                Ok(None)
            }
        }
    }

    /// Encrypts `chunks` (without their first `skip` bytes) and posts the
    /// ciphertext's send.
    pub fn post_send(
        &mut self,
        engine: &mut Engine,
        chunks: &[Chunk],
        skip: usize,
        user_data: u64,
    ) -> Result<()> {
        debug_assert!(self.inflight.is_none());
        let mut parts = Vec::new();
        gather(chunks, skip, &mut parts);
        for part in parts {
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
        let mut tx = std::mem::take(&mut self.spare);
        tx.clear();
        self.sess.take_tx(&mut tx);
        self.inflight = Some(Arc::new(AlignedBuf::from_vec(tx)));
        self.post_cipher_send(engine, user_data)
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

    fn post_cipher_send(&mut self, engine: &mut Engine, user_data: u64) -> Result<()> {
        let Some(buf) = &self.inflight else {
            return Ok(());
        };
        let data = Span::with_room(buf, self.sent, buf.len() - self.sent, 0);
        engine.push(Op::Send { fd: self.fd, data }, user_data)
    }

    /// A send of `res` (>= 0) bytes completed.  True: the whole batch
    /// went; false: the rest was posted.
    pub fn send_done(&mut self, engine: &mut Engine, res: i32, user_data: u64) -> Result<bool> {
        self.sent += res.max(0) as usize;
        let len = self.inflight.as_ref().map_or(0, |b| b.len());
        if self.sent < len {
            self.post_cipher_send(engine, user_data)?;
            return Ok(false);
        }
        // The send's share is gone: take the Vec back for the next batch.
        if let Some(v) = self
            .inflight
            .take()
            .and_then(|b| Arc::try_unwrap(b).ok())
            .and_then(AlignedBuf::into_vec)
        {
            self.spare = v;
        }
        self.sent = 0;
        Ok(true)
    }

    /// Says goodbye (the last request, then close_notify) without blocking.
    pub fn goodbye(&mut self, last: &[u8]) {
        self.sess.goodbye(last);
    }
}
