// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! nbdcopy's own `-v` lines (`src: nbd_ops "URI"`, `src: size=N (1M)`, ...), which scripts grep.
//
// The command prints these messages with the name it was run as in
// front (`nbdcopy: src: ...`), like libnbd's copy/main.c does, beside
// nbdcpy's own verbose lines.  API users get them as INFO messages.

use super::plan::Plan;
use crate::endpoint::file::FileKind;
use crate::endpoint::{Endpoint, Spec};

/// nbdcopy's size in its "human" form: the number with the largest of
/// K, M, G, T, P, E (powers of 1024) that divides it exactly.
pub fn human_size(bytes: i64) -> String {
    const EXT: [&str; 7] = ["E", "P", "T", "G", "M", "K", ""];
    if bytes < 0 {
        // nbdcopy prints an unknown size (-1) as an unsigned number.
        return (bytes as u64).to_string();
    }
    let (mut b, mut i) = (bytes as u64, 6);
    while b != 0 && b & 1023 == 0 && i > 0 {
        b >>= 10;
        i -= 1;
    }
    format!("{b}{}", EXT[i])
}

/// The two lines nbdcopy prints for one end (`side`: "src" or "dst").
fn end_lines(side: &str, spec: &Spec, ep: &Endpoint) -> [String; 2] {
    let (ops, size, preferred) = match ep {
        Endpoint::Null => ("null_ops", i64::MAX, 4096),
        Endpoint::File(f) if f.kind == FileKind::Stream => ("pipe_ops", -1, 4096),
        Endpoint::File(f) => (
            "file_ops",
            f.size.map_or(-1, |s| s.min(i64::MAX as u64) as i64),
            4096,
        ),
        Endpoint::Nbd(n) => (
            "nbd_ops",
            n.info.size.min(i64::MAX as u64) as i64,
            match n.info.block_size.preferred {
                0 => 4096,
                p => p as u64,
            },
        ),
    };
    // nbdcopy names a server it runs by its program.
    let name = match spec {
        Spec::Command(argv) => argv.first().cloned().unwrap_or_default(),
        s => s.to_string(),
    };
    [
        format!("{side}: {ops} \"{name}\""),
        format!(
            "{side}: size={size} ({}), preferred block size={preferred}",
            human_size(size)
        ),
    ]
}

/// nbdcopy's verbose lines for a copy about to run, without the
/// program name.
pub fn verbose_lines(
    src: (&Spec, &Endpoint),
    dst: (&Spec, &Endpoint),
    plan: &Plan,
    synchronous: bool,
) -> Vec<String> {
    let mut v = Vec::with_capacity(5);
    v.extend(end_lines("src", src.0, src.1));
    v.extend(end_lines("dst", dst.0, dst.1));
    v.push(format!(
        "connections={} requests={} threads={} synchronous={}",
        plan.lanes, plan.requests, plan.workers, synchronous
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_like_nbdcopy() {
        for (n, want) in [
            (0, "0"),
            (1, "1"),
            (1000, "1000"),
            (1024, "1K"),
            (1536, "1536"),
            (1 << 20, "1M"),
            (3 << 30, "3G"),
            ((1 << 40) + (1 << 20), "1048577M"),
            (1 << 60, "1E"),
            (i64::MAX, "9223372036854775807"),
            (-1, "18446744073709551615"),
        ] {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn null_destination_lines() {
        let [a, b] = end_lines("dst", &Spec::Null, &Endpoint::Null);
        assert_eq!(a, "dst: null_ops \"null:\"");
        assert_eq!(
            b,
            "dst: size=9223372036854775807 (9223372036854775807), preferred block size=4096"
        );
    }
}
