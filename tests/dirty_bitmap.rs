// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Incremental copies (`--dirty-bitmap`) with real qemu tools: a qcow2
//! with a persistent bitmap, a full copy, writes, zeroes and discards at
//! odd offsets through qemu-io, then qemu-nbd -B and an incremental copy
//! onto the full copy.  The result is checked with qemu-img compare, and
//! qemu's own trace of block reads shows that clean areas were not read.

use crate::common;
use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

const SIZE: u64 = 64 << 20;

/// The qemu tools every test here needs (a SKIP line for a missing one).
fn qemu_tools() -> bool {
    require("qemu-nbd") && require("qemu-img") && require("qemu-io")
}

fn run_ok(cmd: &mut Command) {
    let what = format!("{cmd:?}");
    output_ok(cmd, &what);
}

/// qemu-img ARGS FILE LAST.
fn qemu_img(args: &[&str], file: &Path, last: impl AsRef<OsStr>) {
    run_ok(Command::new("qemu-img").args(args).arg(file).arg(last));
}

/// qemu-img compare: the qcow2 `src` and the raw `full` must be equal.
fn assert_same(src: &Path, full: &Path) {
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(src)
        .arg(full)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

fn qemu_io_qcow2(file: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    run_ok(c.arg(file));
}

/// A qcow2 with data, a full raw copy of it (by qemu-img), then the
/// bitmap "b0" and changes at odd offsets.  Returns (qcow2, full copy).
fn setup(dir: &TempDir) -> (PathBuf, PathBuf) {
    let src = dir.file("src.qcow2");
    let full = dir.file("full.raw");
    qemu_img(&["create", "-q", "-f", "qcow2"], &src, SIZE.to_string());
    qemu_io_qcow2(
        &src,
        &[
            "write -P 0x11 0 8M",
            "write -P 0x22 20M 4M",
            "write -P 0x23 40M 3M",
        ],
    );
    add_bitmap(&src);
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw"], &src, &full);
    qemu_io_qcow2(
        &src,
        &[
            // data at odd offsets, over old data and into holes
            "write -P 0x33 1000001 70001",
            "write -P 0x34 13000003 5",
            // zeroes over data, at an odd offset
            "write -z 20971523 65539",
            // a discard of data
            "discard 3145728 1048576",
            // zeroes with unmap
            "write -z -u 41943040 524288",
            // data at the very end
            "write -P 0x35 67108000 864",
        ],
    );
    (src, full)
}

/// Adds the enabled bitmap "b0" to the qcow2 `file`.
fn add_bitmap(file: &Path) {
    qemu_img(&["bitmap", "--add", "--enable", "-f", "qcow2"], file, "b0");
}

/// A new directory `tag` with setup()'s images, the qcow2 served with
/// serve_bitmap (reads traced).  Returns (dir, qcow2, full copy, trace,
/// server).
fn served(tag: &str, bitmap: bool) -> (TempDir, PathBuf, PathBuf, PathBuf, Server) {
    let dir = TempDir::new(tag);
    let (src, full) = setup(&dir);
    let trace = dir.file("trace.log");
    let srv = serve_bitmap(&dir, &src, &trace, bitmap);
    (dir, src, full, trace, srv)
}

/// The dirty ranges as qemu reports them (libnbd's nbdinfo), as
/// (offset, length).
fn dirty_map(uri: &str) -> Vec<(u64, u64)> {
    let o = Command::new("nbdinfo")
        .args(["--map=qemu:dirty-bitmap:b0", uri])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "1").then(|| (f[0].parse().unwrap(), f[1].parse().unwrap()))
        })
        .collect()
}

/// qemu's block-layer reads (trace event blk_co_preadv): (offset, bytes).
fn traced_reads(trace: &Path) -> Vec<(u64, u64)> {
    let t = std::fs::read_to_string(trace).unwrap_or_default();
    t.lines()
        .filter(|l| l.contains("blk_co_preadv"))
        .map(|l| {
            let num = |key: &str| -> u64 {
                let at = l.find(key).unwrap() + key.len();
                l[at..].split_whitespace().next().unwrap().parse().unwrap()
            };
            (num(" offset "), num(" bytes "))
        })
        .collect()
}

/// The qcow2 exported read-only with its bitmap, block reads traced.
fn serve_bitmap(dir: &TempDir, src: &Path, trace: &Path, bitmap: bool) -> Server {
    let tr = format!("blk_co_preadv,file={}", trace.display());
    let mut extra = vec!["-r", "-f", "qcow2", "--trace", &tr];
    if bitmap {
        extra.extend(["-B", "b0"]);
    }
    qemu_nbd(dir, src, &extra)
}

fn check_incremental(dst_kind: &str, connections: &str) {
    if !qemu_tools() || !require("nbdinfo") {
        return;
    }
    let tag = format!("dirty-{}-{connections}", dst_kind.replace(' ', ""));
    let (dir, src, full, trace, srv) = served(&tag, true);
    let dirty = dirty_map(&srv.uri());
    let dirty_bytes: u64 = dirty.iter().map(|d| d.1).sum();
    assert!(dirty.len() >= 5 && dirty_bytes < SIZE / 4, "{dirty:?}");
    // The independent list is taken; only the copy's reads follow.
    let _ = std::fs::write(&trace, "");
    let opts = [("dirty-bitmap", "b0"), ("connections", connections)];
    let st = match dst_kind {
        "file" => copy(&srv.uri(), full.to_str().unwrap(), &opts).unwrap(),
        _ => {
            let dsrv = qemu_nbd(&dir, &full, &[]);
            let st = copy(&srv.uri(), &dsrv.uri(), &opts).unwrap();
            drop(dsrv);
            st
        }
    };
    // qemu-nbd writes its trace out when it ends.
    drop(srv);
    let reads = traced_reads(&trace);
    // The result equals the source.
    assert_same(&src, &full);
    // Every block read was inside a dirty range, and some were made.
    assert!(!reads.is_empty(), "no reads traced");
    for &(off, len) in &reads {
        assert!(
            dirty.iter().any(|&(d, l)| d <= off && off + len <= d + l),
            "read of {len} bytes at {off} outside the dirty ranges {dirty:?}"
        );
    }
    let read: u64 = reads.iter().map(|r| r.1).sum();
    assert!(
        read <= dirty_bytes,
        "{read} bytes read, {dirty_bytes} dirty"
    );
    // The work is the dirty bytes; the rest is reported as skipped.
    assert_eq!(st.copied + st.zeroed, dirty_bytes, "{st:?}");
    assert_eq!(st.skipped, SIZE - dirty_bytes, "{st:?}");
    assert_eq!(st.done, dirty_bytes, "{st:?}");
    // qemu-nbd -r advertises multi-conn: every lane's connection asks for
    // both contexts.
    assert_eq!(st.connections.to_string(), connections, "{st:?}");
}

#[test]
fn incremental_copy_into_a_file() {
    check_incremental("file", "1");
}

#[test]
fn incremental_copy_into_nbd_multi_conn() {
    check_incremental("qemu-nbd", "2");
}

/// Clean areas of the destination are not written: a marker there
/// survives; with a range, dirty blocks outside it are not copied either.
#[test]
fn clean_areas_are_left_alone_and_ranges_clip() {
    if !qemu_tools() {
        return;
    }
    let (dir, src, full, _trace, srv) = served("dirty-marker", true);
    // A marker in a clean area (30M) and in a dirty one (1000001).
    qemu_io(
        full.to_str().unwrap(),
        &["write -P 0x77 30M 4096", "write -P 0x77 1000001 16"],
    );
    let before = std::fs::read(&full).unwrap();
    // Only [0, 2M): the dirty write at 1000001 is copied, the one at
    // 13000003 and the rest are not.
    copy(
        &srv.uri(),
        full.to_str().unwrap(),
        &[("dirty-bitmap", "b0"), ("offset", "0"), ("length", "2M")],
    )
    .unwrap();
    drop(srv);
    let after = std::fs::read(&full).unwrap();
    let truth = dir.file("truth.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw"], &src, &truth);
    let truth = std::fs::read(&truth).unwrap();
    assert_eq!(after.len(), before.len());
    let m = 30 << 20;
    assert!(
        after[m..m + 4096].iter().all(|&b| b == 0x77),
        "clean marker overwritten"
    );
    assert_eq!(
        after[1000001..1071002],
        truth[1000001..1071002],
        "dirty write not copied"
    );
    assert_eq!(
        after[2 << 20..],
        before[2 << 20..],
        "written outside the range"
    );
    assert_ne!(after[13000003..13000008], truth[13000003..13000008]);
}

#[test]
fn a_server_without_the_bitmap_is_a_clear_error() {
    if !qemu_tools() {
        return;
    }
    let (_dir, _src, full, _trace, srv) = served("dirty-missing", false);
    let before = std::fs::read(&full).unwrap();
    let e = copy(
        &srv.uri(),
        full.to_str().unwrap(),
        &[("dirty-bitmap", "b0")],
    )
    .unwrap_err();
    assert!(
        e.msg.contains("dirty bitmap \"b0\"") && e.msg.contains("source"),
        "{}",
        e.msg
    );
    let e = copy(
        &srv.uri(),
        full.to_str().unwrap(),
        &[("dirty-bitmap", "nosuch")],
    )
    .unwrap_err();
    assert!(e.msg.contains("\"nosuch\""), "{}", e.msg);
    assert_eq!(std::fs::read(&full).unwrap(), before, "destination changed");
}

#[test]
fn combinations_that_make_no_sense_are_refused() {
    if !qemu_tools() {
        return;
    }
    let (dir, _src, full, _trace, srv) = served("dirty-refused", true);
    let f = full.to_str().unwrap();
    let e = copy(
        &srv.uri(),
        f,
        &[("dirty-bitmap", "b0"), ("destination-is-zero", "1")],
    )
    .unwrap_err();
    assert!(e.msg.contains("--destination-is-zero"), "{}", e.msg);
    let e = copy(
        f,
        &dir.file("x.raw").to_string_lossy(),
        &[("dirty-bitmap", "b0")],
    )
    .unwrap_err();
    assert!(e.msg.contains("needs an NBD source"), "{}", e.msg);
    // The command: exit 1 and the reason.
    if nbdcpy_bin().is_some() {
        let o = common::nbdcpy_cmd()
            .args(["--dirty-bitmap=b0", &srv.uri(), "-"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("can seek"));
    }
}

/// The command, with --no-extents (the bitmap alone: dirty blocks are
/// read as data) and progress.
#[test]
fn command_line_incremental_copy() {
    if !qemu_tools() {
        return;
    }
    let Some(_) = nbdcpy_bin() else { return };
    let (_dir, src, full, trace, srv) = served("dirty-cli", true);
    let o = common::nbdcpy_cmd()
        .args(["-v", "--no-extents", "--dirty-bitmap=b0", &srv.uri()])
        .arg(&full)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(srv);
    assert_same(&src, &full);
    let read: u64 = traced_reads(&trace).iter().map(|r| r.1).sum();
    assert!(read > 0 && read < SIZE / 4, "{read} bytes read");
}

/// An 8 TiB disk with a few dirty MiB: block status for both contexts is
/// fetched in large ranges (a handful of requests for the whole disk),
/// and the copy takes well under a second (asserted loosely: the machine
/// may be loaded).
#[test]
fn huge_disk_few_dirty_blocks() {
    if !qemu_tools() || !require("nbdinfo") {
        return;
    }
    let dir = TempDir::new("dirty-huge");
    let src = dir.file("big.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &src, "8T");
    add_bitmap(&src);
    qemu_io_qcow2(
        &src,
        &[
            "write -P 0x33 1000001 70001",
            "write -P 0x34 5T 1M",
            "write -z 7T 1M",
            "write -P 1 8191G 2M",
        ],
    );
    let trace = dir.file("trace.log");
    let tr = format!(
        "nbd_co_receive_request_decode_type,file={}",
        trace.display()
    );
    let srv = qemu_nbd(
        &dir,
        &src,
        &["-r", "-f", "qcow2", "-B", "b0", "--trace", &tr],
    );
    let dirty: u64 = dirty_map(&srv.uri()).iter().map(|d| d.1).sum();
    let _ = std::fs::write(&trace, "");
    let t = std::time::Instant::now();
    let st = copy(&srv.uri(), "null:", &[("dirty-bitmap", "b0")]).unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(srv);
    assert_eq!(st.copied + st.zeroed, dirty, "{st:?}");
    assert_eq!(st.skipped, (8u64 << 40) - dirty);
    let t = std::fs::read_to_string(&trace).unwrap();
    let status = t.matches("(block status)").count();
    let reads = t.matches("(read)").count();
    assert!(status > 0 && status <= 64, "{status} BLOCK_STATUS requests");
    assert!(reads > 0 && reads <= 16, "{reads} READ requests");
    assert!(secs < 5.0, "8 TiB incremental copy took {secs:.2} s");
    eprintln!("8 TiB, {dirty} dirty bytes: {secs:.3} s, {status} BLOCK_STATUS, {reads} READ");
}
