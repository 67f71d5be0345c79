// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! One TLS session on an NBD socket, blocking or over memory buffers.
//
// One TLS session over an NBD socket: blocking on the socket during the
// handshake, then over memory buffers (ciphertext in, plaintext out;
// plaintext in, ciphertext out) so the engine keeps doing the socket I/O.

use crate::engine::buf::{AlignedBuf, IoBuf};
use crate::error::{Error, Result};
use crate::sys::FdStream;
use openssl::ssl::{ErrorCode, SslStream};
use std::io::{Read, Write};
use std::os::fd::RawFd;

/// Ciphertext receive buffer: many records per receive.
pub const RX_SIZE: usize = 1 << 20;

/// The byte stream under OpenSSL: the socket itself (blocking mode), or
/// memory buffers that the caller fills from and drains to the socket.
pub struct Wire {
    sock: FdStream,
    pub(crate) fd: RawFd,
    mem: bool,
    /// Received ciphertext not yet given to OpenSSL: rx[rx_start..rx_end].
    /// (Shared with the receive in flight, which writes past rx_end.)
    pub(crate) rx: IoBuf,
    pub(crate) rx_start: usize,
    pub(crate) rx_end: usize,
    /// The peer closed its end (a receive returned 0).
    pub(crate) eof: bool,
    /// Ciphertext OpenSSL produced, not yet handed to the socket.
    pub(crate) tx: Vec<u8>,
}

impl Wire {
    fn new(fd: RawFd) -> Wire {
        Wire {
            sock: FdStream(fd),
            fd,
            mem: false,
            rx: AlignedBuf::shared(1),
            rx_start: 0,
            rx_end: 0,
            eof: false,
            tx: Vec::new(),
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.mem {
            return self.sock.read(buf);
        }
        if self.rx_start == self.rx_end {
            return if self.eof {
                Ok(0)
            } else {
                Err(std::io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.rx_end - self.rx_start);
        buf[..n].copy_from_slice(self.rx.range(self.rx_start, self.rx_start + n));
        self.rx_start += n;
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.mem {
            return self.sock.write(buf);
        }
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What [`TlsSession::decrypt`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decrypted {
    /// This many plaintext bytes.
    Data(usize),
    /// No whole record yet: receive more ciphertext.
    More,
    /// The server closed TLS properly (close_notify).
    Closed,
}

/// A TLS client session on one NBD socket.
pub struct TlsSession {
    pub(crate) s: SslStream<Wire>,
}

impl TlsSession {
    /// Wraps a handshaken stream.
    pub(crate) fn from_stream(s: SslStream<Wire>) -> TlsSession {
        TlsSession { s }
    }

    pub(crate) fn wire(fd: RawFd) -> Wire {
        Wire::new(fd)
    }

    /// Protocol and cipher, for messages ("TLSv1.3 TLS_AES_256_GCM_SHA384").
    pub fn describe(&self) -> String {
        let ssl = self.s.ssl();
        format!(
            "{} {}",
            ssl.version_str(),
            ssl.current_cipher().map_or("?", |c| c.name())
        )
    }

    /// Plaintext bytes OpenSSL holds that a read returns without waiting.
    pub fn pending(&self) -> usize {
        self.s.ssl().pending()
    }

    /// Switches to memory buffers: from now on ciphertext is exchanged
    /// through [`rx_space`](Self::rx_space) / [`received`](Self::received)
    /// and [`take_tx`](Self::take_tx).
    pub fn use_memory(&mut self) {
        let w = self.s.get_mut();
        if !w.mem {
            w.mem = true;
            w.rx = AlignedBuf::shared(RX_SIZE);
        }
    }

    /// Where the next ciphertext receive may write (compacting first):
    /// `len` bytes at `at` of the buffer.  No receive may be in flight.
    pub fn rx_space(&mut self) -> (IoBuf, usize, usize) {
        let w = self.s.get_mut();
        if w.rx_start == w.rx_end {
            w.rx_start = 0;
            w.rx_end = 0;
        } else if w.rx.len() - w.rx_end < (64 << 10) {
            // No receive in flight: the buffer is ours alone (else it is
            // left as it is and the receive gets the smaller rest).
            if let Some(rx) = std::sync::Arc::get_mut(&mut w.rx) {
                rx.as_mut_slice().copy_within(w.rx_start..w.rx_end, 0);
                w.rx_end -= w.rx_start;
                w.rx_start = 0;
            }
        }
        let end = w.rx_end;
        (w.rx.clone(), end, w.rx.len() - end)
    }

    /// `n` bytes of ciphertext arrived at [`rx_space`](Self::rx_space)
    /// (0: the peer closed the socket).
    pub fn received(&mut self, n: usize) {
        let w = self.s.get_mut();
        if n == 0 {
            w.eof = true;
        }
        w.rx_end = (w.rx_end + n).min(w.rx.len());
    }

    /// Decrypts what was received into `out`, as much as fits.
    pub fn decrypt(&mut self, out: &mut [u8]) -> Result<Decrypted> {
        let mut n = 0;
        while n < out.len() {
            match self.s.ssl_read(&mut out[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => match e.code() {
                    ErrorCode::WANT_READ if !self.s.get_ref().eof => break,
                    _ if n > 0 => break, // the data first, the error next time
                    ErrorCode::ZERO_RETURN => return Ok(Decrypted::Closed),
                    _ if self.s.get_ref().eof => {
                        return Err(Error::new(
                            libc::ECONNRESET,
                            "TLS: the server cut the connection without close_notify \
                             (the stream may be truncated)",
                        ))
                    }
                    _ => return Err(ssl_error("TLS", &e)),
                },
            }
        }
        Ok(if n > 0 {
            Decrypted::Data(n)
        } else {
            Decrypted::More
        })
    }

    /// Encrypts `data` into the ciphertext to send (memory mode).
    pub fn encrypt(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match self.s.ssl_write(data) {
                Ok(k) => data = &data[k..],
                Err(e) => return Err(ssl_error("TLS: encrypt", &e)),
            }
        }
        Ok(())
    }

    /// Ciphertext waiting to be sent.
    pub fn tx(&self) -> &[u8] {
        &self.s.get_ref().tx
    }

    /// Swaps the ciphertext waiting to be sent with `buf` (empty), so it
    /// can be sent while OpenSSL goes on writing into a fresh buffer.
    pub fn take_tx(&mut self, buf: &mut Vec<u8>) {
        debug_assert!(buf.is_empty());
        std::mem::swap(buf, &mut self.s.get_mut().tx);
    }

    /// Best-effort goodbye without blocking: `last` (an NBD_CMD_DISC, or
    /// nothing) and close_notify, sent with MSG_DONTWAIT.
    pub fn goodbye(&mut self, last: &[u8]) {
        self.use_memory();
        if !last.is_empty() {
            let _ = self.encrypt(last);
        }
        let _ = self.s.shutdown();
        let w = self.s.get_mut();
        let tx = std::mem::take(&mut w.tx);
        // Best effort, never blocking.
        let _ = crate::sys::send(w.fd, &tx, libc::MSG_DONTWAIT);
    }
}

/// Blocking mode (before [`TlsSession::use_memory`]): the handshake and
/// the endpoint's requests before the copy.
impl Read for TlsSession {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.s.ssl_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(0),
                Err(e) => {
                    let eof_cut = e.code() == ErrorCode::SYSCALL && e.io_error().is_none()
                        || e.ssl_error().is_some_and(|s| {
                            s.errors()
                                .iter()
                                .any(|x| x.reason().is_some_and(|r| r.contains("unexpected eof")))
                        });
                    if eof_cut {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "TLS: the server cut the connection without close_notify",
                        ));
                    }
                    match e.into_io_error() {
                        Ok(io) if io.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(io) => return Err(io),
                        Err(e) => return Err(std::io::Error::other(ssl_error("TLS", &e).msg)),
                    }
                }
            }
        }
    }
}

impl Write for TlsSession {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.s.ssl_write(buf).map_err(|e| match e.into_io_error() {
            Ok(io) => io,
            Err(e) => std::io::Error::other(ssl_error("TLS", &e).msg),
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An OpenSSL error in words: the library's reasons (alerts included).
pub(crate) fn ssl_error(what: &str, e: &openssl::ssl::Error) -> Error {
    let reasons: Vec<String> = e
        .ssl_error()
        .map(|s| {
            s.errors()
                .iter()
                .map(|x| x.reason().unwrap_or("unknown error").to_string())
                .collect()
        })
        .unwrap_or_default();
    let detail = if !reasons.is_empty() {
        reasons.join("; ")
    } else if let Some(io) = e.io_error() {
        io.to_string()
    } else if e.code() == ErrorCode::SYSCALL {
        "the server closed the connection".to_string()
    } else {
        format!("OpenSSL error code {:?}", e.code())
    };
    let errno = if reasons.iter().any(|r| r.contains("alert")) {
        libc::EACCES
    } else {
        libc::EPROTO
    };
    Error::new(errno, format!("{what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::uri::TlsParams;
    use openssl::ssl::{SslAcceptor, SslMethod, SslVersion};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    const KEY: [u8; 32] = [0x42; 32];

    /// An in-process OpenSSL PSK server on one end of a socket pair,
    /// running `serve` after its handshake; the client session on the
    /// other end, in memory mode.
    fn pair(
        version: SslVersion,
        serve: impl FnOnce(&mut openssl::ssl::SslStream<UnixStream>) + Send + 'static,
    ) -> (TlsSession, UnixStream, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
            acc.set_psk_server_callback(|_ssl, id, key| {
                assert_eq!(id, Some(&b"alice"[..]));
                key[..32].copy_from_slice(&KEY);
                Ok(32)
            });
            acc.set_cipher_list("PSK").unwrap();
            acc.set_min_proto_version(Some(version)).unwrap();
            acc.set_max_proto_version(Some(version)).unwrap();
            let acc = acc.build();
            let mut s = acc.accept(b).unwrap();
            serve(&mut s);
        });
        let dir = std::env::temp_dir().join(format!(
            "nbdcpy-sess-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        let c = alice_client(&dir, &format!("bob:00\nalice:{hex}\n"));
        let mut t = c.connect(a.as_raw_fd()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(t.describe().contains(match version {
            SslVersion::TLS1_2 => "TLSv1.2",
            _ => "TLSv1.3",
        }));
        t.use_memory();
        (t, a, h)
    }

    /// Receives ciphertext from `sock` in pieces of at most `step`.
    fn recv_some(t: &mut TlsSession, sock: &mut UnixStream, step: usize) -> usize {
        let (buf, at, room) = t.rx_space();
        // SAFETY: rx_space's bytes are free (no receive in flight).
        let n = sock
            .read(unsafe { buf.range_mut(at, at + room.min(step)) })
            .unwrap();
        t.received(n);
        n
    }

    /// A PSK client as "alice", with `keys` written to a file in `dir`.
    fn alice_client(dir: &std::path::Path, keys: &str) -> std::sync::Arc<crate::tls::TlsClient> {
        std::fs::create_dir_all(dir).unwrap();
        let psk = dir.join("k.psk");
        std::fs::write(&psk, keys).unwrap();
        crate::tls::TlsClient::new(
            &TlsParams {
                psk_file: Some(psk.to_string_lossy().into()),
                username: Some("alice".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap()
    }
    #[test]
    fn memory_mode_both_ways_in_small_pieces() {
        for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
            let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let d2 = data.clone();
            let (mut t, mut sock, h) = pair(version, move |s| {
                s.write_all(&d2).unwrap();
                let mut back = vec![0u8; 5000];
                s.read_exact(&mut back).unwrap();
                assert!(back.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
                s.shutdown().unwrap();
            });
            // Decrypt into targets of odd sizes, fed odd-sized ciphertext.
            let mut got = Vec::new();
            let mut out = vec![0u8; 7777];
            while got.len() < data.len() {
                match t.decrypt(&mut out[..1 + got.len() % 7000]).unwrap() {
                    Decrypted::Data(n) => got.extend_from_slice(&out[..n]),
                    Decrypted::More => {
                        assert!(recv_some(&mut t, &mut sock, 3001) > 0);
                    }
                    Decrypted::Closed => panic!("closed early"),
                }
            }
            assert_eq!(got, data);
            // Plaintext in, ciphertext out.
            let back: Vec<u8> = (0..5000).map(|i| (i % 253) as u8).collect();
            t.encrypt(&back[..10]).unwrap();
            t.encrypt(&back[10..]).unwrap();
            let mut tx = Vec::new();
            t.take_tx(&mut tx);
            assert!(tx.len() > back.len() && !tx.windows(10).any(|w| w == &back[100..110]));
            sock.write_all(&tx).unwrap();
            // close_notify: Closed, not an error.
            let closed = loop {
                match t.decrypt(&mut out).unwrap() {
                    Decrypted::Closed => break true,
                    Decrypted::Data(_) => panic!("data after the end"),
                    Decrypted::More => {
                        if recv_some(&mut t, &mut sock, 1 << 20) == 0 {
                            break false;
                        }
                    }
                }
            };
            assert!(closed, "close_notify seen");
            h.join().unwrap();
        }
    }

    #[test]
    fn tls_alert_is_named() {
        // The server does not know the identity: OpenSSL sends an alert.
        let (a, b) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
            acc.set_psk_server_callback(|_ssl, _id, _key| Ok(0));
            acc.set_cipher_list("PSK").unwrap();
            acc.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            assert!(acc.build().accept(b).is_err());
        });
        let dir = std::env::temp_dir().join(format!("nbdcpy-alert-{}", std::process::id()));
        let c = alice_client(&dir, "alice:0011223344556677\n");
        let e = c.connect(a.as_raw_fd()).err().expect("handshake must fail");
        std::fs::remove_dir_all(&dir).unwrap();
        h.join().unwrap();
        assert!(e.msg.contains("alert"), "{}", e.msg);
        assert!(e.msg.contains("\"alice\""), "{}", e.msg);
        assert_eq!(e.errno, libc::EACCES);
    }

    #[test]
    fn cut_mid_record_is_an_error_not_a_short_read() {
        let (mut t, mut sock, h) = pair(SslVersion::TLS1_3, |s| {
            s.write_all(&[9u8; 10000]).unwrap();
        });
        h.join().unwrap();
        // Take all ciphertext, but hand over only part of the record.
        let mut all = Vec::new();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 65536];
        while let Ok(n) = sock.read(&mut b) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&b[..n]);
        }
        assert!(all.len() > 10000);
        let (buf, at, room) = t.rx_space();
        let part = all.len() - 100;
        assert!(room >= part);
        // SAFETY: rx_space's bytes are free (no receive in flight).
        unsafe { buf.range_mut(at, at + part) }.copy_from_slice(&all[..part]);
        t.received(part);
        let mut out = vec![0u8; 20000];
        // Records before the cut decrypt; the cut one never shows.
        let mut got = 0;
        loop {
            match t.decrypt(&mut out) {
                Ok(Decrypted::Data(n)) => got += n,
                Ok(Decrypted::More) => t.received(0),
                Ok(Decrypted::Closed) => panic!("a cut is not a close"),
                Err(e) => {
                    assert!(e.msg.contains("close_notify"), "{}", e.msg);
                    break;
                }
            }
        }
        assert!(got < 10000, "the truncated record must not be delivered");
    }
}
