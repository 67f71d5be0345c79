// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The side of errors the lanes raise, for errors that do not carry one yet.
//
// Errors opened, negotiated or planned above the lanes carry their side
// from where they are made (`Error::at`, `Error::on`).  The lanes (worker
// and connection code, being moved behind the engine seam) still name
// their end only in the message they build: "source NAME: ..." or
// "destination NAME: ..." (`Lane::src_label`, `NbdConn::name`).  Until
// they set the side themselves, `Shared::fail`, which every lane error
// passes through, records it here, once, from that lane-made prefix.  The
// C API only ever reads `Error::side`.

use crate::error::{Error, Side};

/// `e` with its side set from a lane's message prefix when no layer set
/// one; errors about both ends (or neither) keep none.
pub fn with_side(e: Error) -> Error {
    if e.side.is_some() {
        return e;
    }
    let side = if e.msg.contains(" and destination ") {
        None
    } else if e.msg.starts_with("source ") {
        Some(Side::Source)
    } else if e.msg.starts_with("destination ") {
        Some(Side::Destination)
    } else {
        None
    };
    match side {
        Some(s) => e.on(s),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_prefixes_name_the_side_and_set_sides_are_kept() {
        let side = |m: &str| with_side(Error::invalid(m)).side;
        assert_eq!(side("source nbd://a: read at offset 0"), Some(Side::Source));
        assert_eq!(side("destination f: fsync"), Some(Side::Destination));
        assert_eq!(side("source a and destination b are the same"), None);
        assert_eq!(side("copy cancelled"), None);
        let e = Error::invalid("destination x").on(Side::Source);
        assert_eq!(with_side(e).side, Some(Side::Source));
    }
}
