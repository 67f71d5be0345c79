// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Entry points for fuzzing the parsers over arbitrary bytes.
//
// Entry points for fuzzing (cargo fuzz targets in fuzz/ and the bounded
// smoke run in the tests): drive the parsers over arbitrary bytes.  They
// must never panic, hang or report data outside what was asked.
#![doc(hidden)]

use super::consts::*;
use super::handshake::{Handshake, HandshakeOptions};
use super::reply::{Chunk, Parse, ReplyParser};
use super::request::Request;
use super::HeaderMode;

/// The reply parser over `data` (its first byte picks the header mode),
/// with a READ and a BLOCK_STATUS in flight.
pub fn fuzz_reply(data: &[u8]) {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let mode = match sel % 3 {
        0 => HeaderMode::Simple,
        1 => HeaderMode::Structured,
        _ => HeaderMode::Extended,
    };
    let tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FLUSH;
    let n = super::sample_negotiated(mode, tflags, 1 << 40);
    let mut p = ReplyParser::new(&n);
    let reqs = [
        (1u64, NBD_CMD_READ, 4096u64, 512u64),
        (2, NBD_CMD_READ, 0, 64),
        (3, NBD_CMD_BLOCK_STATUS, 0, 1 << 20),
        (4, NBD_CMD_WRITE, 0, 4096),
    ];
    for (cookie, cmd, offset, length) in reqs {
        let _ = p.register(&Request {
            cmd,
            flags: 0,
            cookie,
            offset,
            length,
        });
    }
    let mut at = 0;
    while at < data.len() {
        match p.parse(&data[at..]) {
            Ok(Parse::Message { len, chunk, .. }) => {
                assert!(len > 0 && at + len <= data.len());
                match chunk {
                    Chunk::Data {
                        cookie,
                        offset,
                        payload,
                    } => {
                        let &(_, _, o, l) =
                            reqs.iter().find(|r| r.0 == cookie).expect("known cookie");
                        assert!(payload.end <= len);
                        assert!(offset >= o && offset + payload.len() as u64 <= o + l);
                    }
                    Chunk::BlockStatus { extents, .. } => {
                        for e in extents {
                            assert!(e.len > 0 && e.offset + e.len <= 1 << 20);
                        }
                    }
                    _ => {}
                }
                at += len;
            }
            _ => return,
        }
    }
}

/// The handshake against `data` as the whole server side.
pub fn fuzz_handshake(data: &[u8]) {
    let mut h = Handshake::new(HandshakeOptions {
        export_name: "x".into(),
        extended_headers: true,
        structured_replies: true,
        meta_context: Some("base:allocation".into()),
        dirty_context: Some("qemu:dirty-bitmap:b".into()),
        request_block_size: true,
        tls: false,
    });
    let mut at = 0;
    for _ in 0..10_000 {
        let n = h.output().len();
        h.consume_output(n);
        if h.is_done() {
            break;
        }
        match h.feed(&data[at..]) {
            Ok(0) | Err(_) => break,
            Ok(u) => at += u,
        }
    }
}

/// The URI parser over arbitrary text.
pub fn fuzz_uri(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = super::uri::parse(s);
        let _ = super::uri::is_nbd_uri(s);
    }
}
