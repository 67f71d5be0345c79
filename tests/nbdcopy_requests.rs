// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The exact writes and zeroes a destination server receives, as nbdcopy sends them (128 MiB pieces).
//
// libnbd's copy-sparse tests compare the sorted list of requests a
// logging nbdkit-eval destination receives; nbdcopy hands out the work
// in 128 MiB pieces and zeroes each piece's holes on its own.

use crate::common;
use common::*;
use std::process::{Command, Stdio};

const M: u64 = 1 << 20;

/// Copies a sparse nbdkit-data source (one byte at 0, one at 200 MiB - 1,
/// one at 384 MiB: 3 pieces and 1 byte) into a logging eval destination
/// with `opts`; returns the sorted request lines.
fn requests(opts: &[&str]) -> Option<Vec<String>> {
    requests_of(&format!("1 @{} 1 @{} 1", 200 * M - 1, 384 * M), opts)
}

/// The sorted requests of a copy of nbdkit-data `data` with `opts`.
fn requests_of(data: &str, opts: &[&str]) -> Option<Vec<String>> {
    nbdcpy_bin()?;
    if !require("nbdkit") || !have_plugin("eval") || !have_plugin("data") {
        return None;
    }
    let dir = TempDir::new("nbdcopy-req");
    let log = dir.file("requests");
    let src = nbdkit(&dir, &["data", &format!("data={data}")]);
    let rec = format!("echo $@ >> '{}'", log.display());
    let dst = nbdkit(
        &dir,
        &[
            "eval",
            "get_size=echo 7E",
            &format!("pwrite=cat >/dev/null; {rec}"),
            &format!("trim={rec}"),
            &format!("zero={rec}"),
        ],
    );
    let o = nbdcpy_cmd()
        .args(opts)
        .arg(src.uri())
        .arg(dst.uri())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{opts:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(dst);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    Some(v)
}

fn have_plugin(p: &str) -> bool {
    let ok = Command::new("nbdkit")
        .args([p, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: nbdkit {p} plugin not installed");
    }
    ok
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Each 128 MiB piece's holes are one zero request of their own, data
/// blocks one write each (32 KiB: the data plugin's block).
#[test]
fn holes_are_zeroed_per_128_mib_piece() {
    let Some(got) = requests(&["-S", "0", "--request-size=32768"]) else {
        return;
    };
    let p = 128 * M;
    let blk = 32768;
    let mid = 200 * M - blk; // the block holding byte 200 MiB - 1
    let want: Vec<String> = [
        format!("pwrite {blk} 0"),
        format!("zero {} {blk} may_trim", p - blk),
        format!("zero {} {p} may_trim", mid - p),
        format!("pwrite {blk} {mid}"),
        format!("zero {} {} may_trim", 2 * p - mid - blk, mid + blk),
        format!("zero {p} {} may_trim", 2 * p),
        format!("pwrite 1 {}", 3 * p),
    ]
    .to_vec();
    assert_eq!(got, sorted(&want));
}

/// --allocated: data written as read (no zero detection), holes zeroed
/// without may_trim, in the same pieces.
#[test]
fn allocated_writes_zeroes_per_piece_without_trim() {
    let Some(got) = requests(&["--allocated", "--request-size=32768"]) else {
        return;
    };
    let p = 128 * M;
    let blk = 32768;
    let mid = 200 * M - blk;
    let want: Vec<String> = [
        format!("pwrite {blk} 0"),
        format!("zero {} {blk}", p - blk),
        format!("zero {} {p}", mid - p),
        format!("pwrite {blk} {mid}"),
        format!("zero {} {}", 2 * p - mid - blk, mid + blk),
        format!("zero {p} {}", 2 * p),
        format!("pwrite 1 {}", 3 * p),
    ]
    .to_vec();
    assert_eq!(got, sorted(&want));
}

/// Data on both sides of a piece boundary is written by one request per
/// piece, as nbdcopy does, also with requests large enough to cover both
/// (one lane, one request in flight: the next piece's extents arrive
/// while this piece's last one still waits, and would be merged onto it).
#[test]
fn no_request_crosses_a_piece_boundary() {
    let p = 128 * M;
    let data = format!("@{} 1 1 @{} 1", p - 1, 2 * p - 1);
    let Some(got) = requests_of(
        &data,
        &["-S", "0", "--request-size=65536", "-R", "1", "-C", "1"],
    ) else {
        return;
    };
    let blk = 32768;
    let want: Vec<String> = [
        format!("zero {} 0 may_trim", p - blk),
        format!("pwrite {blk} {}", p - blk),
        format!("pwrite {blk} {p}"),
        format!("zero {} {} may_trim", p - 2 * blk, p + blk),
        format!("pwrite {blk} {}", 2 * p - blk),
    ]
    .to_vec();
    assert_eq!(got, sorted(&want));
}
