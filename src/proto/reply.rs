// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Reply parsing and validation, in place, for requests tracked by cookie.
//
// Reply parsing and validation: simple, structured and extended replies
// parsed in place from a receive buffer that may hold several replies or
// a partial one, with requests in flight tracked by cookie.
//
// Payload is never copied: data chunks are reported as a byte range of
// the caller's buffer.  Everything the server says is checked before it
// is reported, so a hostile server cannot make the caller write outside
// what it asked for.  Protocol violations (`ConnError`) end the
// connection; server-reported errors fail just their request.

use super::consts::*;
use super::request::Request;
use super::{be16, be32, be64, HeaderMode, Negotiated, ProtoError};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Bytes in front of the data of an OFFSET_DATA chunk: 20-byte header +
/// 8-byte offset (compact) = exactly a compact WRITE header.
#[cfg(test)]
pub const DATA_PREFIX_COMPACT: usize = 28;
/// The same for an extended chunk: 32 + 8, more than the 32-byte
/// extended WRITE header.
#[cfg(test)]
pub const DATA_PREFIX_EXTENDED: usize = 40;
/// Largest error message accepted (the spec says 4096).
const MAX_ERROR_MSG: usize = 4096;

/// One base:allocation extent, absolute offsets, clamped to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub flags: u32,
}

/// What one reply message carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Nothing (a simple reply, NONE, or a write's acknowledgement).
    None,
    /// READ data for [offset, offset + payload.len()); `payload` indexes
    /// the buffer given to `parse`.
    Data {
        cookie: u64,
        offset: u64,
        payload: Range<usize>,
    },
    /// READ range that reads as zeroes.
    Hole { cookie: u64, offset: u64, len: u64 },
    /// Block status extents, starting at the request's offset: of
    /// base:allocation, or (`dirty_bitmap`) of the qemu dirty bitmap's
    /// context, whose flag bit 0 means dirty.
    BlockStatus {
        cookie: u64,
        extents: Vec<Extent>,
        dirty_bitmap: bool,
    },
    /// The server reported an error for this request (delivered again in
    /// the request's completion).
    Error {
        cookie: u64,
        errno: i32,
        message: String,
        offset: Option<u64>,
    },
}

/// A request finished (its last reply arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub cookie: u64,
    pub result: Result<(), RequestError>,
}

/// The server failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server error {}: {}{}", errno_name(*.errno), .message, .offset.map(|o| format!(" (at offset {o})")).unwrap_or_default())]
pub struct RequestError {
    pub errno: i32,
    pub message: String,
    pub offset: Option<u64>,
}

fn errno_name(e: i32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "EINVAL",
    }
}

/// The server broke the protocol: the connection cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnError(pub String);

/// The outcome of looking at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole message yet.  `need`: the total bytes (from the start
    /// of the buffer) that complete it, once known.
    Incomplete { need: Option<usize> },
    /// One message of `len` bytes, and the completion it brought, if any.
    Message {
        len: usize,
        chunk: Chunk,
        done: Option<Completion>,
    },
}

struct InFlight {
    cmd: u16,
    offset: u64,
    length: u64,
    /// READ: received [start, end) ranges, keyed by start.
    ranges: BTreeMap<u64, u64>,
    covered: u64,
    /// Contexts answered so far: bit 0 base:allocation, bit 1 the dirty
    /// bitmap.
    got_status: u8,
    error: Option<RequestError>,
}

pub struct ReplyParser {
    mode: HeaderMode,
    meta_context_id: Option<u32>,
    dirty_context_id: Option<u32>,
    /// Largest block-status payload accepted.
    max_status: usize,
    /// READ data stays in the stream: a data message ends after its
    /// prefix and the caller moves the payload itself (splice).
    external_data: bool,
    inflight: HashMap<u64, InFlight>,
}

impl ReplyParser {
    pub fn new(n: &Negotiated) -> ReplyParser {
        ReplyParser {
            mode: n.mode,
            meta_context_id: n.meta_context_id,
            dirty_context_id: n.dirty_context_id,
            max_status: 1 << 20,
            external_data: false,
            inflight: HashMap::new(),
        }
    }

    /// With `on`, a READ data message is complete once its prefix (the
    /// header, and the offset of a structured chunk) has arrived: the
    /// returned `len` covers only the prefix, `Chunk::Data::payload` the
    /// bytes that follow it in the stream, which the caller must consume
    /// before parsing on.  All checks (bounds, overlap, coverage) are the
    /// same.
    pub fn set_external_data(&mut self, on: bool) {
        self.external_data = on;
    }

    /// Requests in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Records a request about to be sent.
    pub fn register(&mut self, r: &Request) -> Result<(), ProtoError> {
        if r.cmd == NBD_CMD_DISC {
            return Ok(()); // no reply
        }
        if self.inflight.contains_key(&r.cookie) {
            return Err(ProtoError::DuplicateCookie(r.cookie));
        }
        self.inflight.insert(
            r.cookie,
            InFlight {
                cmd: r.cmd,
                offset: r.offset,
                length: r.length,
                ranges: BTreeMap::new(),
                covered: 0,
                got_status: 0,
                error: None,
            },
        );
        Ok(())
    }

    /// Parses the message at the front of `buf`.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parse, ConnError> {
        if buf.len() < 4 {
            return Ok(Parse::Incomplete { need: None });
        }
        let magic = be32(buf);
        match (self.mode, magic) {
            (HeaderMode::Extended, EXT_REPLY_MAGIC) => self.chunk(buf, 32),
            (HeaderMode::Structured, STRUCTURED_REPLY_MAGIC) => self.chunk(buf, 20),
            (HeaderMode::Simple | HeaderMode::Structured, SIMPLE_REPLY_MAGIC) => self.simple(buf),
            _ => Err(ConnError(format!(
                "bad reply magic {magic:#010x} (expected {} with {})",
                match self.mode {
                    HeaderMode::Extended => "0x6e8a278c",
                    HeaderMode::Structured => "0x67446698 or 0x668e33ef",
                    HeaderMode::Simple => "0x67446698",
                },
                self.mode
            ))),
        }
    }

    fn lookup(&mut self, cookie: u64) -> Result<&mut InFlight, ConnError> {
        self.inflight
            .get_mut(&cookie)
            .ok_or_else(|| ConnError(format!("reply for unknown cookie {cookie:#x}")))
    }

    fn simple(&mut self, buf: &[u8]) -> Result<Parse, ConnError> {
        if buf.len() < 16 {
            return Ok(Parse::Incomplete { need: Some(16) });
        }
        let error = be32(&buf[4..]);
        let cookie = be64(&buf[8..]);
        let mode = self.mode;
        let req = self.lookup(cookie)?;
        let (cmd, offset, length) = (req.cmd, req.offset, req.length);
        if error != 0 {
            self.inflight.remove(&cookie);
            let e = RequestError {
                errno: errno_from_wire(error),
                message: format!("{} failed", command_name(cmd)),
                offset: None,
            };
            return Ok(Parse::Message {
                len: 16,
                chunk: Chunk::None,
                done: Some(Completion {
                    cookie,
                    result: Err(e),
                }),
            });
        }
        let mut chunk = Chunk::None;
        let mut len = 16;
        match cmd {
            NBD_CMD_READ if mode == HeaderMode::Structured => {
                return Err(ConnError(format!(
                    "simple reply to READ (cookie {cookie:#x}) although structured replies \
                     were negotiated"
                )))
            }
            NBD_CMD_READ => {
                let total = 16 + length as usize;
                if !self.external_data && buf.len() < total {
                    return Ok(Parse::Incomplete { need: Some(total) });
                }
                chunk = Chunk::Data {
                    cookie,
                    offset,
                    payload: 16..total,
                };
                if !self.external_data {
                    len = total;
                }
            }
            NBD_CMD_BLOCK_STATUS => {
                return Err(ConnError(format!(
                    "simple success reply to BLOCK_STATUS (cookie {cookie:#x})"
                )))
            }
            _ => {}
        }
        self.inflight.remove(&cookie);
        Ok(Parse::Message {
            len,
            chunk,
            done: Some(Completion {
                cookie,
                result: Ok(()),
            }),
        })
    }

    fn chunk(&mut self, buf: &[u8], hdr: usize) -> Result<Parse, ConnError> {
        if buf.len() < hdr {
            return Ok(Parse::Incomplete { need: Some(hdr) });
        }
        let flags = be16(&buf[4..]);
        let ctype = be16(&buf[6..]);
        let cookie = be64(&buf[8..]);
        let plen: u64 = if hdr == 32 {
            be64(&buf[24..])
        } else {
            be32(&buf[16..]) as u64
        };
        let mode = self.mode;
        let meta = self.meta_context_id;
        let dirty_ctx = self.dirty_context_id;
        let all_status = meta.map_or(0, |_| 1) | dirty_ctx.map_or(0, |_| 2);
        let max_status = self.max_status;
        let external = self.external_data;
        let req = self.lookup(cookie)?;
        let what = |s: &str| {
            ConnError(format!(
                "{s} (cookie {cookie:#x}, {} at offset {} length {})",
                command_name(req.cmd),
                req.offset,
                req.length
            ))
        };
        // Bound the payload before waiting for it: no length a server
        // sends can make us wait for, or buffer, more than we asked for.
        let cap: u64 = match ctype {
            NBD_REPLY_TYPE_NONE => 0,
            NBD_REPLY_TYPE_OFFSET_DATA => 8 + req.length,
            NBD_REPLY_TYPE_OFFSET_HOLE => 16,
            NBD_REPLY_TYPE_BLOCK_STATUS | NBD_REPLY_TYPE_BLOCK_STATUS_EXT => max_status as u64,
            _ => (MAX_ERROR_MSG + 16) as u64,
        };
        if plen > cap {
            return Err(what(&format!(
                "chunk type {ctype:#x} with payload length {plen}, more than the {cap} bytes possible"
            )));
        }
        let total = hdr + plen as usize;
        // External data: only the 8-byte offset of the payload is needed.
        let have = if external && ctype == NBD_REPLY_TYPE_OFFSET_DATA {
            hdr + (plen as usize).min(8)
        } else {
            total
        };
        if buf.len() < have {
            return Ok(Parse::Incomplete { need: Some(have) });
        }
        let p = &buf[hdr..have];
        let done_flag = flags & NBD_REPLY_FLAG_DONE != 0;
        let chunk = match ctype {
            NBD_REPLY_TYPE_NONE => {
                if !done_flag {
                    return Err(what("NONE chunk without the DONE flag"));
                }
                Chunk::None
            }
            NBD_REPLY_TYPE_OFFSET_DATA | NBD_REPLY_TYPE_OFFSET_HOLE => {
                if req.cmd != NBD_CMD_READ {
                    return Err(what("data chunk in reply to a command other than READ"));
                }
                if plen < 8 {
                    return Err(what("data chunk too short"));
                }
                let off = be64(p);
                let (len, is_data) = if ctype == NBD_REPLY_TYPE_OFFSET_DATA {
                    (plen - 8, true)
                } else if plen == 12 {
                    (be32(&p[8..]) as u64, false)
                } else if plen == 16 && mode == HeaderMode::Extended {
                    (be64(&p[8..]), false)
                } else {
                    return Err(what(&format!(
                        "OFFSET_HOLE chunk with payload length {plen}"
                    )));
                };
                if len == 0 {
                    return Err(what("empty data chunk"));
                }
                let end = off.checked_add(len);
                if off < req.offset || end.is_none_or(|e| e > req.offset + req.length) {
                    return Err(what(&format!(
                        "READ chunk [offset {off}, length {len}] outside the request"
                    )));
                }
                let end = off + len;
                // No overlap with what arrived before.
                if let Some((&s, &e)) = req.ranges.range(..end).next_back() {
                    if e > off {
                        return Err(what(&format!(
                            "READ chunk [offset {off}, length {len}] overlaps [offset {s}, length {}]",
                            e - s
                        )));
                    }
                }
                req.ranges.insert(off, end);
                req.covered += len;
                if is_data {
                    Chunk::Data {
                        cookie,
                        offset: off,
                        payload: hdr + 8..total,
                    }
                } else {
                    Chunk::Hole {
                        cookie,
                        offset: off,
                        len,
                    }
                }
            }
            NBD_REPLY_TYPE_BLOCK_STATUS | NBD_REPLY_TYPE_BLOCK_STATUS_EXT => {
                if req.cmd != NBD_CMD_BLOCK_STATUS {
                    return Err(what("block status chunk in reply to another command"));
                }
                let ext = ctype == NBD_REPLY_TYPE_BLOCK_STATUS_EXT;
                if ext != (mode == HeaderMode::Extended) {
                    return Err(what(
                        "block status chunk of the wrong kind for the header mode",
                    ));
                }
                let (head, each) = if ext { (8, 16) } else { (4, 8) };
                if plen < head + each || (plen - head) % each != 0 {
                    return Err(what(&format!(
                        "block status payload length {plen} is malformed"
                    )));
                }
                let ctx = be32(p);
                let bit = if Some(ctx) == meta {
                    1
                } else if Some(ctx) == dirty_ctx {
                    2
                } else {
                    return Err(what(&format!(
                        "block status for unknown meta context {ctx}"
                    )));
                };
                if req.got_status & bit != 0 {
                    return Err(what("second block status chunk for one context"));
                }
                let n = ((plen - head) / each) as usize;
                if ext && be32(&p[4..]) as usize != n {
                    return Err(what("block status extent count does not match its length"));
                }
                let mut extents = Vec::with_capacity(n.min(4096));
                let mut at = req.offset;
                let end = req.offset + req.length;
                for i in 0..n {
                    let e = &p[head as usize + i * each as usize..];
                    let (len, fl) = if ext {
                        (be64(e), be64(&e[8..]) as u32)
                    } else {
                        (be32(e) as u64, be32(&e[4..]))
                    };
                    if len == 0 {
                        return Err(what(&format!("block status extent {i} has length 0")));
                    }
                    if at >= end {
                        break; // beyond the request: ignored
                    }
                    let l = len.min(end - at);
                    extents.push(Extent {
                        offset: at,
                        len: l,
                        flags: fl,
                    });
                    at += l;
                }
                req.got_status |= bit;
                Chunk::BlockStatus {
                    cookie,
                    extents,
                    dirty_bitmap: bit == 2,
                }
            }
            NBD_REPLY_TYPE_ERROR | NBD_REPLY_TYPE_ERROR_OFFSET => {
                if plen < 6 {
                    return Err(what("error chunk too short"));
                }
                let errno = be32(p);
                let mlen = be16(&p[4..]) as u64;
                let want = 6
                    + mlen
                    + if ctype == NBD_REPLY_TYPE_ERROR_OFFSET {
                        8
                    } else {
                        0
                    };
                if want != plen {
                    return Err(what(&format!(
                        "error chunk message length {mlen} does not match its payload length {plen}"
                    )));
                }
                if errno == 0 {
                    return Err(what("error chunk with error number 0"));
                }
                let message = String::from_utf8_lossy(&p[6..6 + mlen as usize]).into_owned();
                let offset = if ctype == NBD_REPLY_TYPE_ERROR_OFFSET {
                    let o = be64(&p[6 + mlen as usize..]);
                    if o < req.offset || o >= req.offset + req.length.max(1) {
                        return Err(what(&format!("error offset {o} outside the request")));
                    }
                    Some(o)
                } else {
                    None
                };
                let e = RequestError {
                    errno: errno_from_wire(errno),
                    message: message.clone(),
                    offset,
                };
                req.error.get_or_insert(e.clone());
                Chunk::Error {
                    cookie,
                    errno: e.errno,
                    message,
                    offset,
                }
            }
            t if t & NBD_REPLY_TYPE_ERROR_BIT != 0 => {
                let e = RequestError {
                    errno: libc_einval(),
                    message: format!("unknown error chunk type {t:#x}"),
                    offset: None,
                };
                req.error.get_or_insert(e.clone());
                Chunk::Error {
                    cookie,
                    errno: e.errno,
                    message: e.message,
                    offset: None,
                }
            }
            t => return Err(what(&format!("unknown chunk type {t:#x}"))),
        };
        let done = if done_flag {
            let req = self
                .inflight
                .remove(&cookie)
                .ok_or_else(|| ConnError("lost request".into()))?;
            let result = match req.error {
                Some(e) => Err(e),
                None => {
                    if req.cmd == NBD_CMD_READ && req.covered != req.length {
                        return Err(ConnError(format!(
                            "READ at offset {} length {} ended (cookie {cookie:#x}) with only {} \
                             bytes received",
                            req.offset, req.length, req.covered
                        )));
                    }
                    if req.cmd == NBD_CMD_BLOCK_STATUS && req.got_status != all_status {
                        return Err(ConnError(format!(
                            "BLOCK_STATUS at offset {} ended (cookie {cookie:#x}) without extents{}",
                            req.offset,
                            if req.got_status != 0 {
                                " for every meta context"
                            } else {
                                ""
                            }
                        )));
                    }
                    Ok(())
                }
            };
            Some(Completion { cookie, result })
        } else {
            None
        };
        Ok(Parse::Message {
            len: have,
            chunk,
            done,
        })
    }
}

fn libc_einval() -> i32 {
    22
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::test_negotiated;
    use proptest::prelude::*;

    pub fn simple(error: u32, cookie: u64, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&error.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    pub fn chunk(mode: HeaderMode, flags: u16, ty: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        if mode == HeaderMode::Extended {
            v.extend_from_slice(&EXT_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&flags.to_be_bytes());
            v.extend_from_slice(&ty.to_be_bytes());
            v.extend_from_slice(&cookie.to_be_bytes());
            v.extend_from_slice(&0u64.to_be_bytes());
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        } else {
            v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            v.extend_from_slice(&flags.to_be_bytes());
            v.extend_from_slice(&ty.to_be_bytes());
            v.extend_from_slice(&cookie.to_be_bytes());
            v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    pub fn data(mode: HeaderMode, cookie: u64, off: u64, d: &[u8], done: bool) -> Vec<u8> {
        let mut p = off.to_be_bytes().to_vec();
        p.extend_from_slice(d);
        chunk(
            mode,
            if done { 1 } else { 0 },
            NBD_REPLY_TYPE_OFFSET_DATA,
            cookie,
            &p,
        )
    }

    fn parser(mode: HeaderMode) -> ReplyParser {
        ReplyParser::new(&test_negotiated(mode))
    }

    fn read(p: &mut ReplyParser, cookie: u64, offset: u64, length: u64) {
        p.register(&Request {
            cmd: NBD_CMD_READ,
            flags: 0,
            cookie,
            offset,
            length,
        })
        .unwrap();
    }

    fn err_of(p: &mut ReplyParser, b: &[u8]) -> String {
        match p.parse(b) {
            Err(ConnError(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn simple_read_reply_in_simple_mode() {
        let mut p = parser(HeaderMode::Simple);
        read(&mut p, 7, 4096, 8);
        let b = simple(0, 7, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            p.parse(&b[..10]).unwrap(),
            Parse::Incomplete { need: Some(16) }
        );
        assert_eq!(
            p.parse(&b[..20]).unwrap(),
            Parse::Incomplete { need: Some(24) }
        );
        match p.parse(&b).unwrap() {
            Parse::Message {
                len: 24,
                chunk:
                    Chunk::Data {
                        offset: 4096,
                        payload,
                        ..
                    },
                done: Some(c),
            } => {
                assert_eq!(payload, 16..24);
                assert!(c.result.is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn simple_error_reply_fails_the_request() {
        let mut p = parser(HeaderMode::Structured);
        p.register(&Request {
            cmd: NBD_CMD_WRITE,
            flags: 0,
            cookie: 3,
            offset: 0,
            length: 512,
        })
        .unwrap();
        match p.parse(&simple(28, 3, &[])).unwrap() {
            Parse::Message {
                done: Some(Completion { result: Err(e), .. }),
                ..
            } => {
                assert_eq!(e.errno, 28);
                assert!(e.to_string().contains("ENOSPC"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn several_replies_in_one_buffer() {
        let mut p = parser(HeaderMode::Structured);
        read(&mut p, 1, 0, 4);
        read(&mut p, 2, 4, 4);
        let mut b = data(HeaderMode::Structured, 2, 4, b"wxyz", true);
        b.extend(data(HeaderMode::Structured, 1, 0, b"abcd", true));
        let mut at = 0;
        let mut got = Vec::new();
        while at < b.len() {
            match p.parse(&b[at..]).unwrap() {
                Parse::Message {
                    len,
                    chunk:
                        Chunk::Data {
                            offset, payload, ..
                        },
                    done,
                } => {
                    assert_eq!(payload.start, DATA_PREFIX_COMPACT);
                    got.push((offset, b[at + payload.start..at + payload.end].to_vec()));
                    assert!(done.unwrap().result.is_ok());
                    at += len;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, vec![(4, b"wxyz".to_vec()), (0, b"abcd".to_vec())]);
    }

    #[test]
    fn extended_data_prefix_is_40() {
        let mut p = parser(HeaderMode::Extended);
        read(&mut p, 5, 100, 3);
        match p
            .parse(&data(HeaderMode::Extended, 5, 100, b"abc", true))
            .unwrap()
        {
            Parse::Message {
                chunk: Chunk::Data { payload, .. },
                ..
            } => {
                assert_eq!(payload, DATA_PREFIX_EXTENDED..DATA_PREFIX_EXTENDED + 3)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_rules() {
        let m = HeaderMode::Structured;
        // bad magic
        let mut p = parser(m);
        assert!(err_of(&mut p, &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]).contains("bad reply magic"));
        // extended magic in structured mode
        let mut p = parser(m);
        read(&mut p, 1, 0, 4);
        assert!(err_of(&mut p, &data(HeaderMode::Extended, 1, 0, b"abcd", true)).contains("magic"));
        // unknown cookie
        let mut p = parser(m);
        assert!(err_of(&mut p, &data(m, 9, 0, b"a", true)).contains("unknown cookie"));
        // duplicate reply after completion
        let mut p = parser(m);
        read(&mut p, 1, 0, 1);
        p.parse(&data(m, 1, 0, b"a", true)).unwrap();
        assert!(err_of(&mut p, &data(m, 1, 0, b"a", true)).contains("unknown cookie"));
        // chunk outside the request
        let mut p = parser(m);
        read(&mut p, 1, 4096, 4096);
        assert!(err_of(&mut p, &data(m, 1, 0, &[0; 16], false)).contains("outside"));
        let mut p = parser(m);
        read(&mut p, 1, 4096, 16);
        assert!(err_of(&mut p, &data(m, 1, 4096 + 8, &[0; 9], false)).contains("outside"));
        // overlapping chunks
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        p.parse(&data(m, 1, 0, &[1; 8], false)).unwrap();
        assert!(err_of(&mut p, &data(m, 1, 4, &[1; 8], false)).contains("overlaps"));
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        p.parse(&data(m, 1, 8, &[1; 8], false)).unwrap();
        assert!(err_of(&mut p, &data(m, 1, 4, &[1; 8], false)).contains("overlaps"));
        // missing chunk then DONE
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        p.parse(&data(m, 1, 0, &[1; 8], false)).unwrap();
        assert!(err_of(&mut p, &chunk(m, 1, NBD_REPLY_TYPE_NONE, 1, &[])).contains("only 8 bytes"));
        // chunk longer than asked: refused from its header alone
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        let b = data(m, 1, 0, &[1; 17], true);
        assert!(err_of(&mut p, &b[..20]).contains("more than"));
        // huge lengths, before any payload arrives
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        let mut h = chunk(m, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &[]);
        h[16..20].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(err_of(&mut p, &h).contains("more than"));
        let mut p = parser(HeaderMode::Extended);
        read(&mut p, 1, 0, 16);
        let mut h = chunk(HeaderMode::Extended, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &[]);
        h[24..32].copy_from_slice(&(1u64 << 63).to_be_bytes());
        assert!(err_of(&mut p, &h).contains("more than"));
        // NONE without DONE
        let mut p = parser(m);
        read(&mut p, 1, 0, 16);
        assert!(err_of(&mut p, &chunk(m, 0, NBD_REPLY_TYPE_NONE, 1, &[])).contains("DONE"));
        // data chunk for a WRITE
        let mut p = parser(m);
        p.register(&Request {
            cmd: NBD_CMD_WRITE,
            flags: 0,
            cookie: 1,
            offset: 0,
            length: 4,
        })
        .unwrap();
        assert!(err_of(&mut p, &data(m, 1, 0, &[1; 4], true)).contains("other than READ"));
        // simple success reply to a READ with structured replies
        let mut p = parser(m);
        read(&mut p, 1, 0, 4);
        assert!(err_of(&mut p, &simple(0, 1, &[1; 4])).contains("structured"));
        // unknown non-error chunk type
        let mut p = parser(m);
        read(&mut p, 1, 0, 4);
        assert!(err_of(&mut p, &chunk(m, 1, 77, 1, &[])).contains("unknown chunk type"));
        // empty data chunk
        let mut p = parser(m);
        read(&mut p, 1, 0, 4);
        assert!(err_of(&mut p, &data(m, 1, 0, &[], false)).contains("empty"));
    }

    fn status_req(p: &mut ReplyParser, cookie: u64, offset: u64, length: u64) {
        p.register(&Request {
            cmd: NBD_CMD_BLOCK_STATUS,
            flags: 0,
            cookie,
            offset,
            length,
        })
        .unwrap();
    }

    fn status_payload(ctx: u32, ext: &[(u32, u32)]) -> Vec<u8> {
        let mut v = ctx.to_be_bytes().to_vec();
        for (l, f) in ext {
            v.extend_from_slice(&l.to_be_bytes());
            v.extend_from_slice(&f.to_be_bytes());
        }
        v
    }

    #[test]
    fn block_status_is_clamped_and_validated() {
        let m = HeaderMode::Structured;
        let mut p = parser(m);
        status_req(&mut p, 1, 4096, 10000);
        let b = chunk(
            m,
            1,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status_payload(1, &[(4096, 0), (1 << 20, 3)]),
        );
        match p.parse(&b).unwrap() {
            Parse::Message {
                chunk: Chunk::BlockStatus { extents, .. },
                done: Some(d),
                ..
            } => {
                assert!(d.result.is_ok());
                assert_eq!(
                    extents,
                    vec![
                        Extent {
                            offset: 4096,
                            len: 4096,
                            flags: 0
                        },
                        Extent {
                            offset: 8192,
                            len: 10000 - 4096,
                            flags: 3
                        },
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // zero-length extent
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 100);
        let b = chunk(
            m,
            1,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status_payload(1, &[(0, 0)]),
        );
        assert!(err_of(&mut p, &b).contains("length 0"));
        // wrong context
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 100);
        let b = chunk(
            m,
            1,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status_payload(99, &[(100, 0)]),
        );
        assert!(err_of(&mut p, &b).contains("meta context 99"));
        // DONE without any status
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 100);
        assert!(
            err_of(&mut p, &chunk(m, 1, NBD_REPLY_TYPE_NONE, 1, &[])).contains("without extents")
        );
        // malformed length
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 100);
        assert!(err_of(
            &mut p,
            &chunk(m, 1, NBD_REPLY_TYPE_BLOCK_STATUS, 1, &[0, 0, 0, 1, 0])
        )
        .contains("malformed"));
    }

    #[test]
    fn block_status_per_context() {
        let m = HeaderMode::Structured;
        let mut n = test_negotiated(m);
        n.dirty_context_id = Some(7);
        let mut p = ReplyParser::new(&n);
        status_req(&mut p, 1, 0, 8192);
        let dirty = chunk(
            m,
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status_payload(7, &[(4096, 1), (4096, 0)]),
        );
        match p.parse(&dirty).unwrap() {
            Parse::Message {
                chunk:
                    Chunk::BlockStatus {
                        extents,
                        dirty_bitmap: true,
                        ..
                    },
                done: None,
                ..
            } => assert_eq!(extents.len(), 2),
            other => panic!("{other:?}"),
        }
        // The same context twice is refused.
        let mut q = ReplyParser::new(&n);
        status_req(&mut q, 1, 0, 8192);
        q.parse(&dirty).unwrap();
        assert!(err_of(&mut q, &dirty).contains("second block status chunk"));
        // DONE before base:allocation answered.
        let mut q = ReplyParser::new(&n);
        status_req(&mut q, 1, 0, 8192);
        q.parse(&dirty).unwrap();
        assert!(err_of(&mut q, &chunk(m, 1, NBD_REPLY_TYPE_NONE, 1, &[]))
            .contains("for every meta context"));
        // base:allocation completes the request.
        let alloc = chunk(
            m,
            1,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status_payload(1, &[(8192, 0)]),
        );
        match p.parse(&alloc).unwrap() {
            Parse::Message {
                chunk:
                    Chunk::BlockStatus {
                        dirty_bitmap: false,
                        ..
                    },
                done: Some(d),
                ..
            } => assert!(d.result.is_ok()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extended_block_status() {
        let m = HeaderMode::Extended;
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 8 << 30);
        let mut pl = 1u32.to_be_bytes().to_vec();
        pl.extend_from_slice(&1u32.to_be_bytes());
        pl.extend_from_slice(&(16u64 << 30).to_be_bytes());
        pl.extend_from_slice(&3u64.to_be_bytes());
        match p
            .parse(&chunk(m, 1, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 1, &pl))
            .unwrap()
        {
            Parse::Message {
                chunk: Chunk::BlockStatus { extents, .. },
                ..
            } => {
                assert_eq!(
                    extents,
                    vec![Extent {
                        offset: 0,
                        len: 8 << 30,
                        flags: 3
                    }]
                )
            }
            other => panic!("{other:?}"),
        }
        // a count that disagrees with the length
        let mut p = parser(m);
        status_req(&mut p, 1, 0, 100);
        pl[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert!(err_of(
            &mut p,
            &chunk(m, 1, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 1, &pl)
        )
        .contains("count"));
    }

    #[test]
    fn error_chunks() {
        let m = HeaderMode::Structured;
        let mut p = parser(m);
        read(&mut p, 1, 0, 4096);
        let mut pl = 5u32.to_be_bytes().to_vec();
        pl.extend_from_slice(&4u16.to_be_bytes());
        pl.extend_from_slice(b"oops");
        pl.extend_from_slice(&100u64.to_be_bytes());
        match p
            .parse(&chunk(m, 0, NBD_REPLY_TYPE_ERROR_OFFSET, 1, &pl))
            .unwrap()
        {
            Parse::Message {
                chunk:
                    Chunk::Error {
                        errno: 5,
                        message,
                        offset: Some(100),
                        ..
                    },
                done: None,
                ..
            } => {
                assert_eq!(message, "oops")
            }
            other => panic!("{other:?}"),
        }
        match p.parse(&chunk(m, 1, NBD_REPLY_TYPE_NONE, 1, &[])).unwrap() {
            Parse::Message {
                done: Some(Completion { result: Err(e), .. }),
                ..
            } => {
                assert_eq!(e.errno, 5);
                assert!(e.to_string().contains("EIO: oops (at offset 100)"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // bogus message length
        let mut p = parser(m);
        read(&mut p, 1, 0, 4096);
        let mut pl = 5u32.to_be_bytes().to_vec();
        pl.extend_from_slice(&400u16.to_be_bytes());
        pl.extend_from_slice(b"short");
        assert!(
            err_of(&mut p, &chunk(m, 1, NBD_REPLY_TYPE_ERROR, 1, &pl)).contains("message length")
        );
        // errno 0
        let mut p = parser(m);
        read(&mut p, 1, 0, 4096);
        let mut pl = 0u32.to_be_bytes().to_vec();
        pl.extend_from_slice(&0u16.to_be_bytes());
        assert!(err_of(&mut p, &chunk(m, 1, NBD_REPLY_TYPE_ERROR, 1, &pl)).contains("number 0"));
        // unknown error type: fails only the request
        let mut p = parser(m);
        read(&mut p, 1, 0, 4096);
        match p.parse(&chunk(m, 1, 0x8123, 1, &[1, 2])).unwrap() {
            Parse::Message {
                done: Some(Completion { result: Err(e), .. }),
                ..
            } => assert_eq!(e.errno, 22),
            other => panic!("{other:?}"),
        }
    }

    /// Splits [0, len) into random pieces in random order.
    fn pieces(len: u64, cuts: &[u64], order: &[usize]) -> Vec<(u64, u64)> {
        let mut points: Vec<u64> = cuts.iter().map(|c| c % len).filter(|&c| c > 0).collect();
        points.push(0);
        points.push(len);
        points.sort();
        points.dedup();
        let mut v: Vec<(u64, u64)> = points.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
        for (i, &o) in order.iter().enumerate() {
            let n = v.len();
            v.swap(i % n, o % n);
        }
        v
    }

    proptest! {
        #[test]
        fn random_chunk_splits_reassemble(len in 1u64..5000, cuts in prop::collection::vec(any::<u64>(), 0..12),
                                          order in prop::collection::vec(any::<usize>(), 0..12), ext: bool, split in 1usize..64) {
            let m = if ext { HeaderMode::Extended } else { HeaderMode::Structured };
            let mut p = parser(m);
            let base = 1u64 << 20;
            read(&mut p, 42, base, len);
            let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let ps = pieces(len, &cuts, &order);
            let mut wire = Vec::new();
            for (i, &(o, l)) in ps.iter().enumerate() {
                wire.extend(data(m, 42, base + o, &src[o as usize..(o + l) as usize], i + 1 == ps.len()));
            }
            // Feed it to the parser as a receive loop would, `split` bytes at a time.
            let mut out = vec![0u8; len as usize];
            let (mut have, mut at, mut done) = (0usize, 0usize, false);
            while at < wire.len() {
                have = (have + split).min(wire.len());
                while let Parse::Message { len: n, chunk, done: d } = p.parse(&wire[at..have]).unwrap() {
                    if let Chunk::Data { offset, payload, .. } = chunk {
                        let o = (offset - base) as usize;
                        out[o..o + payload.len()].copy_from_slice(&wire[at + payload.start..at + payload.end]);
                    }
                    if let Some(c) = d { prop_assert!(c.result.is_ok()); done = true; }
                    at += n;
                }
            }
            prop_assert!(done);
            prop_assert_eq!(out, src);
        }

        /// External data (splice mode): each data message ends after its
        /// prefix, the caller takes the payload from the stream itself, and
        /// the same bytes land in the same places.
        #[test]
        fn external_data_reassembles(len in 1u64..5000, cuts in prop::collection::vec(any::<u64>(), 0..12),
                                     order in prop::collection::vec(any::<usize>(), 0..12), mode in 0u8..3) {
            let m = [HeaderMode::Simple, HeaderMode::Structured, HeaderMode::Extended][mode as usize];
            let mut p = parser(m);
            p.set_external_data(true);
            let base = 1u64 << 20;
            read(&mut p, 42, base, len);
            let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut wire = Vec::new();
            if m == HeaderMode::Simple {
                wire.extend(simple(0, 42, &src));
            } else {
                let ps = pieces(len, &cuts, &order);
                for (i, &(o, l)) in ps.iter().enumerate() {
                    wire.extend(data(m, 42, base + o, &src[o as usize..(o + l) as usize], i + 1 == ps.len()));
                }
            }
            let mut out = vec![0u8; len as usize];
            let (mut at, mut done) = (0usize, false);
            while at < wire.len() {
                match p.parse(&wire[at..]).unwrap() {
                    Parse::Message { len: n, chunk, done: d } => {
                        at += n;
                        if let Chunk::Data { offset, payload, .. } = chunk {
                            // The payload starts right after the prefix.
                            prop_assert_eq!(payload.start, n);
                            let o = (offset - base) as usize;
                            out[o..o + payload.len()].copy_from_slice(&wire[at..at + payload.len()]);
                            at += payload.len();
                        }
                        if let Some(c) = d { prop_assert!(c.result.is_ok()); done = true; }
                    }
                    Parse::Incomplete { .. } => prop_assert!(false, "incomplete at {}", at),
                }
            }
            prop_assert!(done);
            prop_assert_eq!(out, src);
        }

        #[test]
        fn overlapping_or_gapped_splits_are_rejected(len in 2u64..5000, a in any::<u64>(), b in any::<u64>(), gap: bool) {
            let m = HeaderMode::Structured;
            let mut p = parser(m);
            read(&mut p, 1, 0, len);
            let cut = 1 + a % (len - 1);
            let mut wire = data(m, 1, 0, &vec![1; cut as usize], false);
            if gap {
                // Skip at least one byte, then DONE.
                let start = (cut + 1 + b % len).min(len);
                if start < len {
                    wire.extend(data(m, 1, start, &vec![1; (len - start) as usize], true));
                } else {
                    wire.extend(chunk(m, 1, NBD_REPLY_TYPE_NONE, 1, &[]));
                }
            } else {
                // Start inside the first chunk.
                let start = b % cut;
                wire.extend(data(m, 1, start, &vec![1; (len - start) as usize], true));
            }
            let mut at = 0;
            let mut failed = false;
            while at < wire.len() {
                match p.parse(&wire[at..]) {
                    Ok(Parse::Message { len, .. }) => at += len,
                    Ok(Parse::Incomplete { .. }) => break,
                    Err(_) => { failed = true; break; }
                }
            }
            prop_assert!(failed);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), ext: bool) {
            let m = if ext { HeaderMode::Extended } else { HeaderMode::Structured };
            let mut p = parser(m);
            read(&mut p, 1, 0, 64);
            status_req(&mut p, 2, 0, 64);
            let mut at = 0;
            while at < bytes.len() {
                match p.parse(&bytes[at..]) {
                    Ok(Parse::Message { len, chunk, .. }) => {
                        if let Chunk::Data { payload, .. } = chunk { prop_assert!(payload.end <= bytes.len() - at); }
                        prop_assert!(len > 0);
                        at += len
                    }
                    _ => break,
                }
            }
        }
    }
}
