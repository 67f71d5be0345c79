// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The requests in flight on one connection and the events their replies complete.
//
// The request book of one connection: cookies, what each request in
// flight asked for, and the event its reply completes.

use super::ConnEvent;
use crate::engine::buf::Span;
use crate::error::{Error, Result, Side};
use crate::proto::reply::RequestError;
use std::collections::HashMap;

/// What a request in flight does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    /// WRITE_ZEROES, or a WRITE of zeroes where the server has none.
    Zero,
    Flush,
    Status,
}

impl Kind {
    /// Requests a server may take long to answer without being stuck.
    fn is_slow(self) -> bool {
        matches!(self, Kind::Zero | Kind::Flush)
    }

    fn command(self) -> &'static str {
        match self {
            Kind::Read => "READ",
            Kind::Write => "WRITE",
            Kind::Zero => "WRITE_ZEROES",
            Kind::Flush => "FLUSH",
            Kind::Status => "BLOCK_STATUS",
        }
    }
}

/// One request awaiting its reply.
#[derive(Debug)]
pub struct Pending {
    /// The lane slot it belongs to (unused for FLUSH and BLOCK_STATUS).
    pub slot: u32,
    pub offset: u64,
    pub len: u64,
    pub kind: Kind,
    /// What was sent, to send it again on a new connection (`redial`):
    /// the command, its flags, and a WRITE's payload (valid until the
    /// reply: its slot or block is held until then).
    pub cmd: u16,
    pub flags: u16,
    pub payload: Option<Span>,
    /// The peer receive block the payload is in, released at the reply
    /// when the connection may be resumed (else once sent).
    pub block: Option<u32>,
    /// Error replies this request has had before (it was sent again).
    pub failures: u32,
}

/// A request the server answered with an error, as the connection reports
/// it to its lane (which sends it again or fails): what was sent, with a
/// WRITE's payload and block still held, and the READ ranges handed on.
#[derive(Debug)]
pub struct FailedRequest {
    pub pending: Pending,
    pub delivered: Option<Ranges>,
    /// The server's errno.
    pub errno: i32,
    /// The error naming the connection, the command, offset, length and
    /// the server's message.
    pub error: Error,
}

impl FailedRequest {
    /// A BLOCK_STATUS (whose failure leaves its range to be read).
    pub fn is_status(&self) -> bool {
        self.pending.kind == Kind::Status
    }
}

/// Byte ranges (offset, length) of a READ already handed on.
pub type Ranges = Vec<(u64, u64)>;

/// Cookies and the requests in flight.
#[derive(Default)]
pub struct RequestBook {
    next_seq: u64,
    pending: HashMap<u64, Pending>,
    /// Requests in `pending` that may legitimately take long (FLUSH,
    /// WRITE_ZEROES): the stall limit is then the slow one.
    slow: usize,
    /// Replies completed so far (progress, for `redial`).
    pub completed: u64,
    /// READ ranges already handed on, by cookie (only on connections
    /// that may be resumed: a READ sent again must not hand them on twice).
    delivered: HashMap<u64, Ranges>,
}

impl RequestBook {
    /// A fresh cookie: unique on this connection, with the slot in its low
    /// bits for debugging.
    pub fn cookie(&mut self, slot: u32) -> u64 {
        self.next_seq += 1;
        (self.next_seq << 24) | (slot as u64 & 0xff_ffff)
    }

    /// Records a request sent with `cookie`.
    pub fn insert(&mut self, cookie: u64, p: Pending) {
        if p.kind.is_slow() {
            self.slow += 1;
        }
        self.pending.insert(cookie, p);
    }

    /// Requests awaiting their replies.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether a FLUSH or WRITE_ZEROES is awaiting its reply.
    pub fn slow_pending(&self) -> bool {
        self.slow > 0
    }

    /// The peer block a request with `cookie` holds until its reply.
    pub fn held_block(&self, cookie: u64) -> Option<u32> {
        self.pending.get(&cookie).and_then(|p| p.block)
    }

    /// Every request in flight, in the order they were issued, with the
    /// READ ranges already handed on, leaving the book empty (to be sent
    /// again on a new connection).
    pub fn take_all(&mut self) -> Vec<(Pending, Option<Ranges>)> {
        let mut all: Vec<(u64, Pending)> = self.pending.drain().collect();
        all.sort_unstable_by_key(|&(cookie, _)| cookie);
        self.slow = 0;
        let mut delivered = std::mem::take(&mut self.delivered);
        all.into_iter()
            .map(|(c, p)| (p, delivered.remove(&c)))
            .collect()
    }

    /// Records how many error replies the request with `cookie` had
    /// before it was sent again.
    pub fn set_failures(&mut self, cookie: u64, failures: u32) {
        if let Some(p) = self.pending.get_mut(&cookie) {
            p.failures = failures;
        }
    }

    /// Records that READ `cookie`'s [offset, offset+len) was handed on.
    pub fn set_delivered(&mut self, cookie: u64, ranges: Ranges) {
        self.delivered.insert(cookie, ranges);
    }

    /// The parts of READ `cookie`'s chunk [offset, offset+len) not handed
    /// on yet (sent again after a reconnect, a READ may bring some
    /// twice); records the chunk as handed on.
    pub fn undelivered(&mut self, cookie: u64, offset: u64, len: u64) -> Ranges {
        let seen = self.delivered.entry(cookie).or_default();
        let out = uncovered(seen, offset, len);
        seen.push((offset, len));
        out
    }

    /// The slot of the request with `cookie` (errors name the connection
    /// `name`, on `side`).
    pub fn slot_of(&self, name: &str, side: Side, cookie: u64) -> Result<u32> {
        self.pending
            .get(&cookie)
            .map(|p| p.slot)
            .ok_or_else(|| unknown(name, cookie).on(side))
    }

    /// The reply for `cookie` is complete: the event for the lane; a
    /// server's error is a `Failed` event (the lane decides whether to
    /// send the request again), named after the connection `name`, on
    /// `side`.
    pub fn complete(
        &mut self,
        name: &str,
        side: Side,
        cookie: u64,
        result: std::result::Result<(), RequestError>,
    ) -> Result<ConnEvent> {
        let p = self
            .pending
            .remove(&cookie)
            .ok_or_else(|| unknown(name, cookie).on(side))?;
        if p.kind.is_slow() {
            self.slow -= 1;
        }
        self.completed += 1;
        let delivered = self.delivered.remove(&cookie);
        if let Err(e) = result {
            let error = Error::new(
                e.errno,
                format!(
                    "{name}: {} at offset {} length {} failed: {e}",
                    p.kind.command(),
                    p.offset,
                    p.len
                ),
            )
            .on(side);
            return Ok(ConnEvent::Failed(Box::new(FailedRequest {
                pending: p,
                delivered,
                errno: e.errno,
                error,
            })));
        }
        if p.kind == Kind::Status {
            return Ok(ConnEvent::StatusDone { ok: true });
        }
        Ok(match p.kind {
            Kind::Read => ConnEvent::ReadDone { slot: p.slot },
            Kind::Write | Kind::Zero => ConnEvent::WriteDone {
                slot: p.slot,
                len: p.len,
                zero: p.kind == Kind::Zero,
            },
            Kind::Flush | Kind::Status => ConnEvent::Flushed,
        })
    }
}

/// The parts of [offset, offset+len) that no range of `seen` covers.
fn uncovered(seen: &[(u64, u64)], offset: u64, len: u64) -> Ranges {
    let mut ranges: Ranges = seen.to_vec();
    ranges.sort_unstable();
    let (mut at, end) = (offset, offset + len);
    let mut out = Vec::new();
    for (o, l) in ranges {
        if o + l <= at {
            continue;
        }
        if o >= end {
            break;
        }
        if o > at {
            out.push((at, o - at));
        }
        at = at.max(o + l);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

fn unknown(name: &str, cookie: u64) -> Error {
    Error::new(
        libc::EIO,
        format!("{name}: protocol error: reply for unknown cookie {cookie}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(slot: u32, kind: Kind) -> Pending {
        Pending {
            slot,
            offset: 4096,
            len: 512,
            kind,
            cmd: 0,
            flags: 0,
            payload: None,
            block: None,
            failures: 0,
        }
    }

    #[test]
    fn chunks_handed_on_before_are_not_handed_on_again() {
        assert_eq!(uncovered(&[], 0, 100), [(0, 100)]);
        assert_eq!(uncovered(&[(0, 100)], 0, 100), []);
        assert_eq!(
            uncovered(&[(20, 10), (50, 10)], 0, 100),
            [(0, 20), (30, 20), (60, 40)]
        );
        assert_eq!(uncovered(&[(50, 10), (0, 60)], 40, 30), [(60, 10)]);
        assert_eq!(uncovered(&[(200, 10)], 0, 100), [(0, 100)]);
        let mut b = RequestBook::default();
        let c = b.cookie(2);
        b.insert(c, p(2, Kind::Read));
        assert_eq!(b.undelivered(c, 0, 64), [(0, 64)]);
        let (_, seen) = b.take_all().pop().unwrap();
        // Sent again: the first 64 bytes arrive again, with more.
        let c2 = b.cookie(2);
        b.insert(c2, p(2, Kind::Read));
        b.set_delivered(c2, seen.unwrap());
        assert_eq!(b.undelivered(c2, 0, 128), [(64, 64)]);
        assert_eq!(b.undelivered(c2, 0, 128), []);
        b.complete("s", Side::Source, c2, Ok(())).unwrap();
        assert!(b.delivered.is_empty());
    }

    #[test]
    fn take_all_gives_requests_in_issue_order() {
        let mut b = RequestBook::default();
        let mut cookies = Vec::new();
        for (slot, kind) in [
            (4, Kind::Write),
            (1, Kind::Zero),
            (7, Kind::Read),
            (0, Kind::Flush),
        ] {
            let c = b.cookie(slot);
            let mut q = p(slot, kind);
            q.block = Some(slot + 10);
            b.insert(c, q);
            cookies.push(c);
        }
        assert_eq!(b.held_block(cookies[2]), Some(17));
        b.complete("d", Side::Destination, cookies[2], Ok(()))
            .unwrap();
        assert_eq!(b.completed, 1);
        let all = b.take_all();
        let got: Vec<(u32, Kind)> = all.iter().map(|(q, _)| (q.slot, q.kind)).collect();
        assert_eq!(got, [(4, Kind::Write), (1, Kind::Zero), (0, Kind::Flush)]);
        assert_eq!(b.in_flight(), 0);
        assert!(!b.slow_pending());
    }

    #[test]
    fn cookies_are_unique_and_carry_the_slot() {
        let mut b = RequestBook::default();
        let a = b.cookie(5);
        let c = b.cookie(5);
        assert_ne!(a, c);
        assert_eq!(a & 0xff_ffff, 5);
    }

    #[test]
    fn replies_become_events() {
        let mut b = RequestBook::default();
        let cases = [
            (Kind::Read, ConnEvent::ReadDone { slot: 3 }),
            (
                Kind::Write,
                ConnEvent::WriteDone {
                    slot: 3,
                    len: 512,
                    zero: false,
                },
            ),
            (
                Kind::Zero,
                ConnEvent::WriteDone {
                    slot: 3,
                    len: 512,
                    zero: true,
                },
            ),
            (Kind::Flush, ConnEvent::Flushed),
            (Kind::Status, ConnEvent::StatusDone { ok: true }),
        ];
        for (kind, want) in cases {
            let c = b.cookie(3);
            b.insert(c, p(3, kind));
            assert_eq!(b.slot_of("src", Side::Source, c).unwrap(), 3);
            let got = b.complete("src", Side::Source, c, Ok(())).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{kind:?}");
        }
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn slow_requests_are_counted() {
        let mut b = RequestBook::default();
        let (r, z, f) = (b.cookie(0), b.cookie(1), b.cookie(2));
        b.insert(r, p(0, Kind::Read));
        assert!(!b.slow_pending());
        b.insert(z, p(1, Kind::Zero));
        b.insert(f, p(2, Kind::Flush));
        b.complete("d", Side::Destination, z, Ok(())).unwrap();
        assert!(b.slow_pending());
        b.complete("d", Side::Destination, f, Ok(())).unwrap();
        assert!(!b.slow_pending());
    }

    fn server_error(errno: i32) -> std::result::Result<(), RequestError> {
        Err(RequestError {
            errno,
            message: "failed".into(),
            offset: None,
        })
    }

    #[test]
    fn errors_name_command_offset_and_connection() {
        let mut b = RequestBook::default();
        let c = b.cookie(1);
        b.insert(c, p(1, Kind::Write));
        let ev = b
            .complete(
                "destination nbd://x",
                Side::Destination,
                c,
                server_error(libc::ENOSPC),
            )
            .unwrap();
        let ConnEvent::Failed(f) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(f.errno, libc::ENOSPC);
        assert_eq!((f.pending.kind, f.pending.offset), (Kind::Write, 4096));
        assert!(!f.is_status());
        let e = f.error;
        assert_eq!(e.errno, libc::ENOSPC);
        assert_eq!(e.side, Some(Side::Destination));
        let m = e.to_string();
        assert!(
            m.contains("destination nbd://x: WRITE at offset 4096 length 512"),
            "{m}"
        );
        assert_eq!(b.in_flight(), 0);
        // A failed BLOCK_STATUS is reported the same way.
        let s = b.cookie(0);
        b.insert(s, p(0, Kind::Status));
        let ev = b
            .complete("src", Side::Source, s, server_error(libc::EINVAL))
            .unwrap();
        assert!(
            matches!(ev, ConnEvent::Failed(ref f) if f.is_status()),
            "{ev:?}"
        );
    }

    #[test]
    fn unknown_cookies_are_protocol_errors() {
        let mut b = RequestBook::default();
        let e = b.slot_of("src", Side::Source, 99).unwrap_err();
        assert_eq!(e.side, Some(Side::Source));
        let e = b.complete("src", Side::Source, 99, Ok(())).unwrap_err();
        assert!(e.to_string().contains("unknown cookie 99"));
        assert_eq!(e.side, Some(Side::Source));
        let c = b.cookie(0);
        b.insert(c, p(0, Kind::Read));
        b.complete("src", Side::Source, c, Ok(())).unwrap();
        assert!(
            b.complete("src", Side::Source, c, Ok(())).is_err(),
            "a second reply"
        );
    }
}
