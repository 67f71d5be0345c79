// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The library's error type: an errno value and a message naming endpoint, offset, cause.
//
// The library's error type: an errno value plus a message naming the
// endpoint, offset and cause.

use std::fmt;

/// Which end of the copy an endpoint (or an error) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// An error from any layer, carried to the C API as (errno, message,
/// side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// A positive errno value (EINVAL, EIO, ECANCELED, ...).
    pub errno: i32,
    /// Human-readable, complete message (endpoint, offset, cause).
    pub msg: String,
    /// The endpoint the error is about (None: neither, both, or an
    /// argument), what nbdcpy_get_error_endpoint reports.  Kept apart
    /// from `msg`, so the wording can change freely.
    pub side: Option<Side>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, msg: impl Into<String>) -> Self {
        Error {
            errno,
            msg: msg.into(),
            side: None,
        }
    }

    /// Marks the error as about `side`, unless an inner layer already
    /// said which end it is about.  A cancellation (ECANCELED) is about
    /// neither end, wherever it stopped the copy.
    pub fn on(mut self, side: Side) -> Self {
        if self.errno != libc::ECANCELED {
            self.side.get_or_insert(side);
        }
        self
    }

    /// Prefixes the message with "`side` `name`: " and marks it as about
    /// `side`.
    pub fn at(self, side: Side, name: impl fmt::Display) -> Self {
        self.context(format_args!("{side} {name}")).on(side)
    }

    /// EINVAL with a message: bad argument, option or value.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::new(libc::EINVAL, msg)
    }

    /// From an OS error, prefixed by `what` (e.g. "source: open disk.img").
    pub fn os(what: impl fmt::Display, e: std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        Error::new(errno, format!("{what}: {}", strip_os_suffix(&e)))
    }

    /// From a negative io_uring result (-errno).
    pub fn from_res(what: impl fmt::Display, res: i32) -> Self {
        Error::os(what, std::io::Error::from_raw_os_error(-res))
    }

    /// Prefixes the message with more context ("source nbd+unix://...: ").
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    pub fn cancelled() -> Self {
        Error::new(libc::ECANCELED, "copy cancelled")
    }
}

/// `std::io::Error`'s Display adds " (os error N)"; users do not need it.
fn strip_os_suffix(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_keeps_errno_and_drops_suffix() {
        let e = Error::os(
            "source: open x",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.msg, "source: open x: No such file or directory");
        let e = e.context("nbdcpy");
        assert!(e.msg.starts_with("nbdcpy: source: open x"));
        assert_eq!(e.side, None, "context alone names no side");
    }

    #[test]
    fn the_innermost_side_wins_and_survives_context() {
        let e = Error::invalid("bad").at(Side::Destination, "d.img");
        assert_eq!(e.msg, "destination d.img: bad");
        assert_eq!(e.side, Some(Side::Destination));
        let e = e.context("outer").on(Side::Source);
        assert_eq!(e.side, Some(Side::Destination));
        assert!(e.msg.starts_with("outer: destination d.img"));
        let e = Error::new(libc::ECANCELED, "handshake: cancelled").at(Side::Source, "s");
        assert_eq!(
            (e.side, e.msg.as_str()),
            (None, "source s: handshake: cancelled")
        );
    }
}
