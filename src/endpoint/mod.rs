// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! What can be a source or a destination, parsed from the user's words and opened.
//
// What can be a source or a destination: parsing the user's words
// (`-`, `null:`, a path, an NBD URI, a server command) and opening them.

pub mod child;
pub mod connect;
pub mod file;
pub mod nbd;
pub mod pagecache;
pub mod seek;
pub mod ssh;
pub mod subprocess;

use crate::config::Config;
use crate::error::{Error, Result};
use connect::{GivenSocket, Limits};
use std::fmt;

/// An extent of a source: `len` bytes at `offset`, reading as zeroes or
/// holding data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Which end of the copy an endpoint is.
pub use crate::error::Side;

/// An endpoint as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `null:` (destination only): discard everything.
    Null,
    /// `-`: stdin (source) or stdout (destination), streamed in order.
    Stdio,
    /// A file or block device path.
    Path(String),
    /// An NBD URI.
    Uri(String),
    /// `[ CMD ARGS ... ]`: an NBD server run by socket activation.
    Command(Vec<String>),
    /// A socket already connected to an NBD server, handed over by the
    /// caller (C API only): nbdcpy negotiates on it.
    Socket(GivenSocket),
}

impl Spec {
    /// Classifies the user's word for an endpoint.
    pub fn parse(word: &str) -> Spec {
        if word == "null:" {
            Spec::Null
        } else if word == "-" {
            Spec::Stdio
        } else if crate::proto::uri::is_nbd_uri(word) {
            Spec::Uri(word.to_string())
        } else {
            Spec::Path(word.to_string())
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Null => f.write_str("null:"),
            Spec::Stdio => f.write_str("-"),
            Spec::Path(p) | Spec::Uri(p) => f.write_str(p),
            Spec::Command(argv) => write!(f, "[ {} ]", argv.join(" ")),
            Spec::Socket(s) => write!(f, "socket fd {}", s.caller_fd),
        }
    }
}

/// An opened endpoint.
pub enum Endpoint {
    Null,
    File(file::LocalFile),
    Nbd(nbd::NbdEndpoint),
}

impl Endpoint {
    /// Opens (and for NBD, connects and negotiates) one endpoint; every
    /// wait for a server is bounded by `lim`.
    pub fn open(spec: &Spec, side: Side, cfg: &Config, lim: &Limits) -> Result<Endpoint> {
        let ctx = |e: Error| e.at(side, spec);
        match spec {
            Spec::Null if side == Side::Source => Err(Error::invalid(format!(
                "{side} null: can only be used as the destination"
            ))
            .on(side)),
            Spec::Null => Ok(Endpoint::Null),
            Spec::Stdio => file::LocalFile::stdio(side)
                .map(Endpoint::File)
                .map_err(ctx),
            Spec::Path(p) => file::LocalFile::open(p, side)
                .map(Endpoint::File)
                .map_err(ctx),
            Spec::Uri(u) => nbd::NbdEndpoint::connect_uri(u, side, cfg, lim)
                .map(Endpoint::Nbd)
                .map_err(ctx),
            Spec::Command(argv) => nbd::NbdEndpoint::spawn(argv, side, cfg, lim)
                .map(Endpoint::Nbd)
                .map_err(ctx),
            Spec::Socket(s) => nbd::NbdEndpoint::given(s, side, cfg, lim)
                .map(Endpoint::Nbd)
                .map_err(ctx),
        }
    }

    /// Size in bytes, or None for streams and null:.
    pub fn size(&self) -> Option<u64> {
        match self {
            Endpoint::Null => None,
            Endpoint::File(f) => f.size,
            Endpoint::Nbd(n) => Some(n.info.size),
        }
    }

    /// How many connections/lanes this endpoint allows (files: unlimited).
    pub fn max_connections(&self) -> u32 {
        match self {
            Endpoint::Null => u32::MAX,
            Endpoint::File(f) if f.is_stream() => 1,
            Endpoint::File(_) => u32::MAX,
            Endpoint::Nbd(n) => n.max_connections(),
        }
    }
}
