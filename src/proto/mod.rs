// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Sans-I/O NBD: handshake, requests, replies, URIs, and what a connection allows.
//
// Sans-I/O NBD: the client handshake, request encoding, reply parsing
// and validation, and NBD URIs.  No sockets, no clocks: everything here
// works on byte slices, so it is unit-tested and fuzzed on bytes alone.

pub mod consts;
pub mod fuzz;
pub mod handshake;
pub mod reply;
pub mod request;
pub mod uri;

use consts::*;
use std::fmt;

/// Which reply headers the connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// 16-byte simple replies only.
    Simple,
    /// Structured replies (20-byte chunks; simple replies still allowed
    /// for commands without payload).
    Structured,
    /// Extended headers: 32-byte requests and chunks, 64-bit lengths.
    Extended,
}

/// Just under 4 GiB: the most a 32-bit request length covers, 4 MiB-aligned.
pub const COMPACT_MAX_EFFECT: u64 = (4 << 30) - (4 << 20);
/// What one request covers at most with extended (64-bit) headers.
pub const EXTENDED_MAX_EFFECT: u64 = 1 << 40;

impl HeaderMode {
    /// See [`Negotiated::max_effect_len`].
    pub fn max_effect_len(self) -> u64 {
        match self {
            HeaderMode::Extended => EXTENDED_MAX_EFFECT,
            _ => COMPACT_MAX_EFFECT,
        }
    }
}

/// The server's block-size constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub min: u32,
    pub preferred: u32,
    pub max_payload: u32,
}

impl Default for BlockSize {
    /// What the spec says to assume when the server says nothing.
    fn default() -> Self {
        BlockSize {
            min: 1,
            preferred: 4096,
            max_payload: 32 << 20,
        }
    }
}

/// The result of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub size: u64,
    pub tflags: u16,
    pub block_size: BlockSize,
    /// Whether BLOCK_SIZE came from the server (else defaults).
    pub block_size_from_server: bool,
    pub mode: HeaderMode,
    /// The id of `base:allocation`, when the server agreed to it.
    pub meta_context_id: Option<u32>,
    /// The id of `qemu:dirty-bitmap:NAME`, when asked and agreed to.
    pub dirty_context_id: Option<u32>,
    pub no_zeroes: bool,
}

impl Negotiated {
    fn flag(&self, f: u16) -> bool {
        self.tflags & f != 0
    }
    pub fn read_only(&self) -> bool {
        self.flag(NBD_FLAG_READ_ONLY)
    }
    pub fn can_flush(&self) -> bool {
        self.flag(NBD_FLAG_SEND_FLUSH)
    }
    pub fn can_fua(&self) -> bool {
        self.flag(NBD_FLAG_SEND_FUA)
    }
    pub fn can_trim(&self) -> bool {
        self.flag(NBD_FLAG_SEND_TRIM)
    }
    pub fn can_write_zeroes(&self) -> bool {
        self.flag(NBD_FLAG_SEND_WRITE_ZEROES)
    }
    pub fn can_fast_zero(&self) -> bool {
        self.flag(NBD_FLAG_SEND_FAST_ZERO)
    }
    pub fn can_df(&self) -> bool {
        self.flag(NBD_FLAG_SEND_DF)
    }
    pub fn can_multi_conn(&self) -> bool {
        self.flag(NBD_FLAG_CAN_MULTI_CONN)
    }
    pub fn can_cache(&self) -> bool {
        self.flag(NBD_FLAG_SEND_CACHE)
    }
    pub fn can_block_status(&self) -> bool {
        self.meta_context_id.is_some() || self.dirty_context_id.is_some()
    }

    /// The largest range one request without payload (BLOCK_STATUS,
    /// WRITE_ZEROES) covers: just under 4 GiB with 32-bit lengths (kept 4
    /// MiB-aligned), 1 TiB with extended headers' 64-bit ones.
    pub fn max_effect_len(&self) -> u64 {
        self.mode.max_effect_len()
    }

    /// The largest range one zeroing request covers: WRITE_ZEROES as
    /// above, or a WRITE of zeroes of at most the largest payload (and
    /// the 32 MiB zero buffer).
    pub fn max_zero_len(&self) -> u64 {
        if self.can_write_zeroes() {
            self.max_effect_len()
        } else {
            (self.block_size.max_payload as u64).min(32 << 20)
        }
    }

    /// Refuses any request the server did not advertise, or that breaks
    /// its limits: we never send what it may not understand.
    pub fn check_request(&self, r: &request::Request) -> Result<(), ProtoError> {
        let bad = |why: String| {
            Err(ProtoError::Refused(format!(
                "{} at offset {} length {}: {why}",
                command_name(r.cmd),
                r.offset,
                r.length
            )))
        };
        let allowed_flags = match r.cmd {
            NBD_CMD_READ => NBD_CMD_FLAG_DF,
            NBD_CMD_WRITE => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_PAYLOAD_LEN,
            NBD_CMD_WRITE_ZEROES => {
                NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO
            }
            NBD_CMD_TRIM => NBD_CMD_FLAG_FUA,
            NBD_CMD_BLOCK_STATUS => NBD_CMD_FLAG_REQ_ONE,
            NBD_CMD_FLUSH | NBD_CMD_CACHE | NBD_CMD_DISC => 0,
            _ => return bad("unknown command".into()),
        };
        if r.flags & !allowed_flags != 0 {
            return bad(format!(
                "flags {:#x} not allowed with this command",
                r.flags
            ));
        }
        let needs = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                bad(format!("the server does not support {what}"))
            }
        };
        match r.cmd {
            NBD_CMD_WRITE | NBD_CMD_WRITE_ZEROES | NBD_CMD_TRIM if self.read_only() => {
                return bad("the export is read-only".into())
            }
            NBD_CMD_FLUSH => needs(self.can_flush(), "FLUSH")?,
            NBD_CMD_TRIM => needs(self.can_trim(), "TRIM")?,
            NBD_CMD_WRITE_ZEROES => needs(self.can_write_zeroes(), "WRITE_ZEROES")?,
            NBD_CMD_CACHE => needs(self.can_cache(), "CACHE")?,
            NBD_CMD_BLOCK_STATUS => needs(self.can_block_status(), "block status")?,
            _ => {}
        }
        if r.flags & NBD_CMD_FLAG_FUA != 0 {
            needs(self.can_fua(), "FUA")?;
        }
        if r.flags & NBD_CMD_FLAG_FAST_ZERO != 0 {
            needs(self.can_fast_zero(), "FAST_ZERO")?;
        }
        if r.flags & NBD_CMD_FLAG_DF != 0 {
            needs(self.can_df() && self.mode != HeaderMode::Simple, "DF")?;
        }
        if r.flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0 && self.mode != HeaderMode::Extended {
            return bad("PAYLOAD_LEN needs extended headers".into());
        }
        if matches!(r.cmd, NBD_CMD_READ | NBD_CMD_WRITE)
            && r.length > self.block_size.max_payload as u64
        {
            return bad(format!(
                "over the server's maximum payload {}",
                self.block_size.max_payload
            ));
        }
        if self.mode != HeaderMode::Extended && r.length > u32::MAX as u64 {
            return bad("length does not fit a compact request".into());
        }
        if !matches!(r.cmd, NBD_CMD_FLUSH | NBD_CMD_DISC) {
            match r.offset.checked_add(r.length) {
                Some(end) if end <= self.size => {}
                _ => return bad(format!("past the end of the export ({} bytes)", self.size)),
            }
            if r.length == 0 && r.cmd != NBD_CMD_DISC {
                return bad("zero length".into());
            }
        }
        Ok(())
    }
}

/// Errors of the sans-I/O layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// We refused to send a request the server did not advertise.
    #[error("refusing to send {0}")]
    Refused(String),
    /// A cookie is already in flight.
    #[error("cookie {0} is already in flight")]
    DuplicateCookie(u64),
}

impl fmt::Display for HeaderMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderMode::Simple => "simple replies",
            HeaderMode::Structured => "structured replies",
            HeaderMode::Extended => "extended headers",
        })
    }
}

pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(crate) fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A plausible negotiation for tests and fuzzing: `size` bytes, `tflags`,
/// default block sizes, base:allocation as context 1.
pub(crate) fn sample_negotiated(mode: HeaderMode, tflags: u16, size: u64) -> Negotiated {
    Negotiated {
        size,
        tflags,
        block_size: BlockSize::default(),
        block_size_from_server: false,
        mode,
        meta_context_id: Some(1),
        dirty_context_id: None,
        no_zeroes: true,
    }
}

#[cfg(test)]
pub(crate) fn test_negotiated(mode: HeaderMode) -> Negotiated {
    let tflags = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_CAN_MULTI_CONN;
    sample_negotiated(mode, tflags, 1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use request::Request;

    fn req(cmd: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            cmd,
            flags,
            cookie: 1,
            offset,
            length,
        }
    }

    #[test]
    fn check_request_refuses_what_was_not_advertised() {
        let mut n = test_negotiated(HeaderMode::Structured);
        assert!(n.check_request(&req(NBD_CMD_READ, 0, 0, 4096)).is_ok());
        assert!(n
            .check_request(&req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 0, 1 << 20))
            .is_ok());
        // Not advertised.
        assert!(n.check_request(&req(NBD_CMD_CACHE, 0, 0, 4096)).is_err());
        assert!(n
            .check_request(&req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 4096))
            .is_err());
        assert!(n
            .check_request(&req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 4096))
            .is_err());
        assert!(n
            .check_request(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096))
            .is_err());
        // Wrong flag for the command.
        assert!(n
            .check_request(&req(NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 0, 4096))
            .is_err());
        assert!(n
            .check_request(&req(NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 4096))
            .is_err());
        assert!(n
            .check_request(&req(NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 4096))
            .is_err());
        // Limits.
        assert!(n
            .check_request(&req(NBD_CMD_READ, 0, 0, (32 << 20) + 1))
            .is_err());
        assert!(n
            .check_request(&req(NBD_CMD_READ, 0, (1 << 30) - 4096, 8192))
            .is_err());
        assert!(n.check_request(&req(NBD_CMD_READ, 0, u64::MAX, 2)).is_err());
        assert!(n.check_request(&req(NBD_CMD_READ, 0, 0, 0)).is_err());
        assert!(n
            .check_request(&req(NBD_CMD_WRITE_ZEROES, 0, 0, 1 << 32))
            .is_err());
        assert!(n.check_request(&req(99, 0, 0, 1)).is_err());
        n.mode = HeaderMode::Extended;
        n.size = 1 << 40;
        assert!(n
            .check_request(&req(NBD_CMD_WRITE_ZEROES, 0, 0, 1 << 33))
            .is_ok());
        n.tflags |= NBD_FLAG_READ_ONLY;
        assert!(n.check_request(&req(NBD_CMD_WRITE, 0, 0, 1)).is_err());
        n.meta_context_id = None;
        assert!(n
            .check_request(&req(NBD_CMD_BLOCK_STATUS, 0, 0, 1))
            .is_err());
        n.tflags &= !NBD_FLAG_SEND_FLUSH;
        assert!(n.check_request(&req(NBD_CMD_FLUSH, 0, 0, 0)).is_err());
    }
}
