// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Wire constants of the NBD protocol, with names for messages.
//
// Wire constants of the NBD protocol (doc/proto.md), with names for
// messages.  Every integer on the wire is big-endian.  The table is the
// spec's, complete: not every value is sent or checked by the copy.
#![allow(dead_code)]

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types.
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_META_CONTEXT: u32 = 4;
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;
pub const NBD_REP_ERR_EXT_HEADER_REQD: u32 = NBD_REP_FLAG_ERROR | 10;

// Info types.
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
pub const NBD_FLAG_BLOCK_STAT_PAYLOAD: u16 = 1 << 12;

// Commands.
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_CACHE: u16 = 5;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const NBD_CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// Reply flags and chunk types.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const NBD_REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const NBD_REPLY_TYPE_ERROR: u16 = 0x8001;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 0x8000;

// base:allocation extent flags.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
pub const NBD_STATE_ZERO: u32 = 1 << 1;

/// The name of an option, for messages.
pub fn option_name(opt: u32) -> String {
    match opt {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        NBD_OPT_ABORT => "NBD_OPT_ABORT".into(),
        NBD_OPT_LIST => "NBD_OPT_LIST".into(),
        NBD_OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        NBD_OPT_INFO => "NBD_OPT_INFO".into(),
        NBD_OPT_GO => "NBD_OPT_GO".into(),
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        NBD_OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT".into(),
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT".into(),
        NBD_OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS".into(),
        o => format!("option {o}"),
    }
}

/// The name of an option reply error, for messages.
pub fn rep_error_name(t: u32) -> String {
    match t {
        NBD_REP_ERR_UNSUP => "ERR_UNSUP".into(),
        NBD_REP_ERR_POLICY => "ERR_POLICY".into(),
        NBD_REP_ERR_INVALID => "ERR_INVALID".into(),
        NBD_REP_ERR_PLATFORM => "ERR_PLATFORM".into(),
        NBD_REP_ERR_TLS_REQD => "ERR_TLS_REQD".into(),
        NBD_REP_ERR_UNKNOWN => "ERR_UNKNOWN".into(),
        NBD_REP_ERR_SHUTDOWN => "ERR_SHUTDOWN".into(),
        NBD_REP_ERR_BLOCK_SIZE_REQD => "ERR_BLOCK_SIZE_REQD".into(),
        NBD_REP_ERR_TOO_BIG => "ERR_TOO_BIG".into(),
        NBD_REP_ERR_EXT_HEADER_REQD => "ERR_EXT_HEADER_REQD".into(),
        t => format!("error {t:#x}"),
    }
}

/// The name of a command, for messages.
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        NBD_CMD_READ => "READ",
        NBD_CMD_WRITE => "WRITE",
        NBD_CMD_DISC => "DISC",
        NBD_CMD_FLUSH => "FLUSH",
        NBD_CMD_TRIM => "TRIM",
        NBD_CMD_CACHE => "CACHE",
        NBD_CMD_WRITE_ZEROES => "WRITE_ZEROES",
        NBD_CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown command",
    }
}

/// Maps an NBD error number to the host's errno (Linux values); unknown
/// values become EINVAL, as the spec asks.
pub fn errno_from_wire(e: u32) -> i32 {
    match e {
        1 => 1,     // EPERM
        5 => 5,     // EIO
        12 => 12,   // ENOMEM
        22 => 22,   // EINVAL
        28 => 28,   // ENOSPC
        75 => 75,   // EOVERFLOW
        95 => 95,   // ENOTSUP
        108 => 108, // ESHUTDOWN
        _ => 22,
    }
}
