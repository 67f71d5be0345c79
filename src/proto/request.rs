// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Request encoding: compact (28-byte) and extended (32-byte) headers.

use super::consts::*;
use super::HeaderMode;

/// One request as the client means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub cmd: u16,
    pub flags: u16,
    pub cookie: u64,
    pub offset: u64,
    /// Length of the range (for WRITE: of the payload that follows).
    pub length: u64,
}

/// NBD_CMD_DISC: the client is leaving.
pub const DISC: Request = Request {
    cmd: NBD_CMD_DISC,
    flags: 0,
    cookie: 0,
    offset: 0,
    length: 0,
};

/// Header size of a request in this mode.
#[cfg(test)]
pub fn header_len(mode: HeaderMode) -> usize {
    match mode {
        HeaderMode::Extended => 32,
        _ => 28,
    }
}

/// Writes the request header into `out` (at least 32 bytes) and returns
/// its length.  Extended WRITEs get PAYLOAD_LEN set.  The caller checks
/// the request with `Negotiated::check_request` first; compact lengths
/// above 32 bits are truncated there, never here (they cannot pass it).
pub fn encode(mode: HeaderMode, r: &Request, out: &mut [u8]) -> usize {
    if mode == HeaderMode::Extended {
        let flags = if r.cmd == NBD_CMD_WRITE {
            r.flags | NBD_CMD_FLAG_PAYLOAD_LEN
        } else {
            r.flags
        };
        out[0..4].copy_from_slice(&EXT_REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&flags.to_be_bytes());
        out[6..8].copy_from_slice(&r.cmd.to_be_bytes());
        out[8..16].copy_from_slice(&r.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&r.offset.to_be_bytes());
        out[24..32].copy_from_slice(&r.length.to_be_bytes());
        32
    } else {
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&r.flags.to_be_bytes());
        out[6..8].copy_from_slice(&r.cmd.to_be_bytes());
        out[8..16].copy_from_slice(&r.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&r.offset.to_be_bytes());
        out[24..28].copy_from_slice(&(r.length as u32).to_be_bytes());
        28
    }
}

/// Decodes a request header (for tests).
#[cfg(test)]
pub fn decode(mode: HeaderMode, b: &[u8]) -> Option<Request> {
    use super::{be16, be32, be64};
    match mode {
        HeaderMode::Extended if b.len() >= 32 && be32(b) == EXT_REQUEST_MAGIC => Some(Request {
            flags: be16(&b[4..]),
            cmd: be16(&b[6..]),
            cookie: be64(&b[8..]),
            offset: be64(&b[16..]),
            length: be64(&b[24..]),
        }),
        HeaderMode::Simple | HeaderMode::Structured
            if b.len() >= 28 && be32(b) == REQUEST_MAGIC =>
        {
            Some(Request {
                flags: be16(&b[4..]),
                cmd: be16(&b[6..]),
                cookie: be64(&b[8..]),
                offset: be64(&b[16..]),
                length: be32(&b[24..]) as u64,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_write_header_layout() {
        let r = Request {
            cmd: NBD_CMD_WRITE,
            flags: NBD_CMD_FLAG_FUA,
            cookie: 0x0102030405060708,
            offset: 0x1000,
            length: 512,
        };
        let mut b = [0u8; 32];
        assert_eq!(encode(HeaderMode::Structured, &r, &mut b), 28);
        assert_eq!(
            &b[..28],
            &[
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10,
                0, 0, 0, 2, 0,
            ]
        );
    }

    #[test]
    fn extended_write_sets_payload_len() {
        let r = Request {
            cmd: NBD_CMD_WRITE,
            flags: 0,
            cookie: 9,
            offset: 0,
            length: 1 << 33,
        };
        let mut b = [0u8; 32];
        assert_eq!(encode(HeaderMode::Extended, &r, &mut b), 32);
        let d = decode(HeaderMode::Extended, &b).unwrap();
        assert_eq!(d.flags, NBD_CMD_FLAG_PAYLOAD_LEN);
        assert_eq!(d.length, 1 << 33);
        let r = Request {
            cmd: NBD_CMD_READ,
            ..r
        };
        encode(HeaderMode::Extended, &r, &mut b);
        assert_eq!(decode(HeaderMode::Extended, &b).unwrap().flags, 0);
    }

    proptest! {
        #[test]
        fn round_trip(cmd in 0u16..8, flags in 0u16..32, cookie: u64, offset: u64, len: u32, ext: bool) {
            let mode = if ext { HeaderMode::Extended } else { HeaderMode::Structured };
            let r = Request { cmd, flags, cookie, offset, length: len as u64 };
            let mut b = [0u8; 32];
            let n = encode(mode, &r, &mut b);
            prop_assert_eq!(n, header_len(mode));
            let mut d = decode(mode, &b[..n]).unwrap();
            if ext && cmd == NBD_CMD_WRITE { d.flags &= !NBD_CMD_FLAG_PAYLOAD_LEN; }
            prop_assert_eq!(d, Request { flags: if ext && cmd == NBD_CMD_WRITE { flags & !NBD_CMD_FLAG_PAYLOAD_LEN } else { flags }, ..r });
        }
    }
}
