// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Resuming a lost connection: backoff, a new socket, the same export, every request again.
//
// With `--retries`, a connection that is lost (reset, EOF, a send that
// cannot go out, a stall) is not an error at once: the socket is shut
// down so the engine gives back its operations, then (on a helper thread,
// while the worker's other lanes go on) the endpoint's server is dialled
// again with capped exponential backoff, the new negotiation is checked against the old,
// and every request in the book is sent again in the order it was
// issued (READ, WRITE and WRITE_ZEROES are idempotent; a FLUSH is only
// in flight when no write of its lane is).  A server's error reply is not
// a lost connection: the lane decides about it (worker::resend).

use super::{ConnEvent, NbdConn, RECV, SEND};
use crate::config::RETRY_DELAY_CAP;
use crate::copy::stats::Shared;
use crate::endpoint::nbd::{Dialing, Link, Redial};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::proto::reply::ReplyParser;
use crate::proto::{consts, HeaderMode, Negotiated};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The reconnect state of one connection.
pub struct Retry {
    dial: Redial,
    /// Attempts allowed before giving up (`--retries`).
    retries: u32,
    /// Wait before the first attempt (`--retry-delay`).
    delay: Duration,
    /// Whether READs asked for whole replies (DF), to ask again.
    whole_reads: bool,
    /// Set when the connection was lost: the error that lost it.
    lost: Option<Error>,
    /// Attempts since the connection last made progress.
    attempts: u32,
    /// `RequestBook::completed` when the last connection was made.
    completed_then: u64,
    /// The socket of a connection made here (the first one is the
    /// endpoint's).
    sock: Option<Link>,
    /// A reconnect running on a helper thread (the worker goes on).
    dialing: Option<Dialing>,
    /// The loss is being handled (attempts counted since it happened).
    handling: bool,
    /// The last failed attempt's error.
    last: Option<Error>,
}

impl Retry {
    pub fn new(dial: Redial, retries: u32, delay: Duration, whole_reads: bool) -> Retry {
        Retry {
            dial,
            retries,
            delay,
            whole_reads,
            lost: None,
            attempts: 0,
            completed_then: 0,
            sock: None,
            dialing: None,
            handling: false,
            last: None,
        }
    }
}

/// Whether a send or receive result means the connection is gone (as
/// opposed to a bug or a bad request): EOF, reset, broken pipe, a timeout.
fn is_loss(res: i32) -> bool {
    res == 0
        || [
            libc::ECONNRESET,
            libc::EPIPE,
            libc::ECONNABORTED,
            libc::ENOTCONN,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ENETDOWN,
            libc::ENETRESET,
            libc::EHOSTDOWN,
        ]
        .contains(&-res)
}

/// The wait before attempt `n` (1-based): `delay` doubled each time, at
/// most `RETRY_DELAY_CAP` (or `delay` when that is longer).
pub fn backoff(delay: Duration, n: u32) -> Duration {
    let cap = RETRY_DELAY_CAP.max(delay);
    delay
        .checked_mul(1u32 << (n.saturating_sub(1)).min(20))
        .map_or(cap, |d| d.min(cap))
}

/// Why a new negotiation cannot resume the copy (None: it can).  The
/// copy was planned on the size, the block sizes and the read-only flag.
fn changed(old: &Negotiated, new: &Negotiated) -> Option<String> {
    if new.size != old.size {
        return Some(format!(
            "the export's size changed from {} to {} bytes",
            old.size, new.size
        ));
    }
    if new.block_size != old.block_size {
        return Some(format!(
            "the export's block sizes changed from {:?} to {:?}",
            old.block_size, new.block_size
        ));
    }
    if new.read_only() != old.read_only() {
        return Some("the export's read-only flag changed".into());
    }
    None
}

impl NbdConn {
    /// Makes this connection resumable after a loss.
    pub fn enable_retries(&mut self, r: Retry) {
        self.retry = Some(Box::new(r));
    }

    pub(super) fn is_lost(&self) -> bool {
        self.retry.as_ref().is_some_and(|r| r.lost.is_some())
    }

    /// A completion of the lost socket's send or receive: nothing more
    /// than that it is out of the engine.
    pub(super) fn lost_completion(&mut self, idx: u64) -> Result<()> {
        if idx == SEND {
            self.send.busy = false;
        }
        debug_assert!(idx == SEND || idx == RECV);
        Ok(())
    }

    /// After a failed send or receive with result `res`: when the
    /// connection may be resumed and `res` says it was lost, it is marked
    /// lost (and Ok); otherwise `e`.
    pub(super) fn lost_or(&mut self, e: Error, res: i32) -> Result<()> {
        if self.retry.is_some() && is_loss(res) {
            self.lose(e);
            return Ok(());
        }
        Err(e)
    }

    /// Gives up this socket: shut down, so its operations in the engine
    /// complete; `redial_if_lost` takes over once they have.
    pub fn lose(&mut self, e: Error) {
        let Some(r) = self.retry.as_mut() else {
            return;
        };
        self.broken = true;
        if r.lost.is_none() {
            r.lost = Some(e);
        }
        // The socket stays open (its owner closes it) until the engine has
        // given back its operations.
        let _ = crate::sys::shutdown(self.fd);
    }

    /// Whether this connection waits for replies or sends (for the stall
    /// timeout).
    pub fn has_outstanding(&self) -> bool {
        self.book.in_flight() > 0 || self.send.busy
    }

    /// Whether a stall may be resolved by reconnecting.
    pub fn can_retry(&self) -> bool {
        self.retry.is_some()
    }

    /// When the connection was lost and the engine holds nothing of it any
    /// more: connects again, waiting with backoff, on a helper thread (so
    /// this worker's other lanes go on), checks the export is the same and
    /// sends every request in flight again.  True while it reconnects or
    /// when it just did (the lane is not stalled).  Fails after `retries`
    /// attempts without progress, with the error that lost the
    /// connection; at once when the export changed.  (A cancelled job
    /// stops the worker, which drops the attempt.)
    pub fn redial_if_lost(
        &mut self,
        engine: &mut Engine,
        base: u64,
        shared: &Shared,
    ) -> Result<bool> {
        let Some(r) = self.retry.as_mut() else {
            return Ok(false);
        };
        // The old socket's completions carry the same user_data as the
        // new one's will: wait until they are all in.  (Fd reuse is not
        // the reason: operations name the engine's registration, which
        // `attach` ends, never a number.)
        if r.lost.is_none() || self.send.busy || self.recv_busy {
            return Ok(false);
        }
        if !r.handling {
            r.handling = true;
            r.last = None;
            if self.book.completed != r.completed_then {
                r.attempts = 0; // the last connection made progress
            }
        }
        if let Some(d) = r.dialing.as_mut() {
            match d.poll() {
                None => return Ok(true),
                Some(Err(e)) => {
                    r.dialing = None;
                    r.last = Some(e);
                }
                Some(Ok((sock, info, sess))) => {
                    r.dialing = None;
                    let lost = r
                        .lost
                        .take()
                        .unwrap_or_else(|| Error::new(libc::EIO, "lost"));
                    r.handling = false;
                    if let Some(why) = changed(&self.info, &info) {
                        return Err(Error::new(
                            libc::EPROTO,
                            format!(
                                "{}: reconnected after the connection was lost ({lost}), \
                                 but {why}: not resuming the copy",
                                self.name
                            ),
                        )
                        .on(self.side));
                    }
                    r.completed_then = self.book.completed;
                    // The engine holds its own duplicate of the old socket
                    // until its operations are reaped: closing the old
                    // one (the previous redialled socket, if any) here
                    // cannot hand its number to them.
                    self.fd = sock.as_raw_fd();
                    r.sock = Some(sock);
                    let whole_reads = r.whole_reads;
                    self.attach(engine)?;
                    if let Some(sess) = sess {
                        // nbds://: the old session went with the old socket.
                        self.set_tls(sess);
                    }
                    self.resume_on(info, whole_reads)?;
                    Shared::add(&shared.reconnects, 1);
                    self.post_recv(engine, base)?;
                    return Ok(true);
                }
            }
        }
        if r.attempts >= r.retries {
            let lost = r
                .lost
                .take()
                .unwrap_or_else(|| Error::new(libc::EIO, "lost"));
            let why = r
                .last
                .take()
                .map_or(String::new(), |e| format!("; last attempt: {e}"));
            return Err(Error::new(
                lost.errno,
                format!(
                    "{lost}; gave up after {} reconnect attempt(s){why}",
                    r.attempts
                ),
            )
            .on(self.side));
        }
        r.attempts += 1;
        r.dialing = Some(r.dial.dial_after(backoff(r.delay, r.attempts)));
        Ok(true)
    }

    /// Starts over on the new connection `info`: a fresh parser, what was
    /// received of the old one dropped, and every request again.
    fn resume_on(&mut self, info: Negotiated, whole_reads: bool) -> Result<()> {
        self.read_flags = if whole_reads && info.can_df() && info.mode != HeaderMode::Simple {
            consts::NBD_CMD_FLAG_DF
        } else {
            0
        };
        self.parser = ReplyParser::new(&info);
        self.info = info;
        self.recv.head = self.recv.tail;
        self.recv.need = None;
        self.send.clear();
        self.broken = false;
        for (p, delivered) in self.book.take_all() {
            self.requeue(p, delivered)?;
        }
        Ok(())
    }

    /// A READ data chunk on a connection that may be resumed: only what
    /// was not handed on before (over a lost connection) goes on.
    /// `start` is where the payload starts in the unparsed bytes.
    pub(super) fn resumable_data(
        &mut self,
        cookie: u64,
        offset: u64,
        start: usize,
        len: usize,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        let slot = self.book.slot_of(&self.name, self.side, cookie)?;
        let pieces = self.book.undelivered(cookie, offset, len as u64);
        for (o, l) in pieces {
            let (data, block) = self
                .recv
                .take_span(start + (o - offset) as usize, l as usize);
            events.push(ConnEvent::Data {
                slot,
                offset: o,
                data,
                block,
            });
        }
        Ok(())
    }

    /// A READ hole chunk, the same way.
    pub(super) fn resumable_hole(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u64,
        events: &mut Vec<ConnEvent>,
    ) -> Result<()> {
        let slot = self.book.slot_of(&self.name, self.side, cookie)?;
        let pieces = self.book.undelivered(cookie, offset, len);
        for (o, l) in pieces {
            events.push(ConnEvent::Hole {
                slot,
                offset: o,
                len: l as u32,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let got: Vec<_> = (1..=7).map(|n| backoff(s(1), n)).collect();
        assert_eq!(got, [s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        assert_eq!(backoff(s(45), 3), s(45), "a longer delay is its own cap");
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
        assert_eq!(backoff(s(1), 1000), s(30));
    }

    #[test]
    fn losses_are_told_from_errors() {
        for res in [0, -libc::ECONNRESET, -libc::EPIPE, -libc::ETIMEDOUT] {
            assert!(is_loss(res), "{res}");
        }
        for res in [-libc::EIO, -libc::EBADF, -libc::ENOSPC, -libc::ECANCELED] {
            assert!(!is_loss(res), "{res}");
        }
    }
}
