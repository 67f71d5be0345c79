// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Partial copies (`--offset`, `--length`, `--destination-offset`) between
//! files and NBD servers, sparse sources and multi-conn, into destinations
//! full of other data: the range lands where asked, everything outside it
//! is untouched (read back independently: std::fs, qemu-img).

use crate::common;
use common::*;

const M: usize = 1 << 20;

/// A source with data, holes (a sparse file) and zero-filled data.
fn sparse_source(dir: &TempDir, size: usize) -> (std::path::PathBuf, Vec<u8>) {
    let p = dir.file("src.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size as u64).unwrap();
    drop(f);
    let mut img = vec![0u8; size];
    for (i, (off, len)) in [
        (0usize, M / 2),
        (M + 4097, 300_001),
        (3 * M, M),
        (6 * M - 999, 999),
    ]
    .into_iter()
    .enumerate()
    {
        let d = pattern(len, i as u64 + 1);
        img[off..off + len].copy_from_slice(&d);
    }
    // An explicit run of zero bytes that is allocated (data, all zero).
    std::fs::write(&p, &img).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    // Punch holes back where the image is zero in whole MiBs.
    use std::os::fd::AsRawFd;
    for mib in [2usize, 4] {
        // SAFETY: fallocate on a file this test owns.
        unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (mib * M) as i64,
                M as i64,
            )
        };
    }
    (p, img)
}

/// Checks `after` = `before` with `src[so..so+len]` placed at `doff`.
fn check(after: &[u8], before: &[u8], src: &[u8], so: usize, len: usize, doff: usize) {
    assert_eq!(after.len(), before.len().max(doff + len));
    assert!(
        after[doff..doff + len] == src[so..so + len],
        "range differs"
    );
    assert!(
        after[..doff] == before[..doff],
        "bytes before the range changed"
    );
    let end = doff + len;
    if end < before.len() {
        assert!(
            after[end..] == before[end..],
            "bytes after the range changed"
        );
    }
}

#[test]
fn file_to_file_at_odd_offsets() {
    let dir = TempDir::new("ranges-ff");
    let (src, img) = sparse_source(&dir, 6 * M);
    let dst = dir.file("dst.raw");
    let before = pattern(8 * M, 99);
    for (so, len, doff) in [
        (12345usize, 3_000_001usize, 777usize),
        (0, 6 * M, 2 * M), // the whole source, shifted
        (M + 4097, 1, 8 * M - 1),
        (5 * M, M, 5 * M), // the default destination offset
        (6 * M, 0, 0),     // empty
    ] {
        write_file(&dst, &before);
        let mut o = vec![
            ("offset", so.to_string()),
            ("length", len.to_string()),
            ("destination-offset", doff.to_string()),
        ];
        if so == 5 * M {
            o.pop();
        }
        let o: Vec<(&str, &str)> = o.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let st = copy(src.to_str().unwrap(), dst.to_str().unwrap(), &o).unwrap();
        assert_eq!(st.done, len as u64);
        check(&std::fs::read(&dst).unwrap(), &before, &img, so, len, doff);
    }
    // A destination file that is too short is extended, not truncated.
    write_file(&dst, &before[..M]);
    copy(
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        &[
            ("offset", "3M"),
            ("length", "1M"),
            ("destination-offset", "2M"),
        ],
    )
    .unwrap();
    let after = std::fs::read(&dst).unwrap();
    assert_eq!(after.len(), 3 * M);
    assert!(after[..M] == before[..M] && after[M..2 * M].iter().all(|&b| b == 0));
    assert!(after[2 * M..] == img[3 * M..4 * M]);
}

/// NBD destinations (qemu-nbd, nbdkit) over several connections, from a
/// sparse file, and NBD -> file: zero ranges inside the range are
/// zeroed (the destination is not empty), nothing outside is touched.
#[test]
fn nbd_ranges_multi_conn_and_sparse() {
    if !require("qemu-nbd") || !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let dir = TempDir::new("ranges-nbd");
    let (src, img) = sparse_source(&dir, 6 * M);
    let before = pattern(16 * M, 7);
    let (so, len, doff) = (M - 512, 4 * M + 1024, 9 * M + 512);
    let opts = [
        ("offset", so.to_string()),
        ("length", len.to_string()),
        ("destination-offset", doff.to_string()),
        ("connections", "2".to_string()),
        ("request-size", "64k".to_string()),
    ];
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for kind in ["qemu-nbd", "nbdkit"] {
        let dfile = dir.file(&format!("dst-{kind}.raw"));
        write_file(&dfile, &before);
        let srv = serve(kind, &dir, &dfile);
        let st = copy(src.to_str().unwrap(), &srv.uri(), &opts).unwrap();
        assert!(
            st.zeroed > 0,
            "{kind}: holes in the range were not zeroed: {st:?}"
        );
        let got = read_export(&srv.uri(), &dir);
        check(&got, &before, &img, so, len, doff);
        // NBD -> NBD, and NBD -> file, from this export.
        let dfile2 = dir.file("dst2.raw");
        write_file(&dfile2, &before);
        let srv2 = qemu_nbd(&dir, &dfile2, &[]);
        let back = [
            ("offset", doff.to_string()),
            ("length", len.to_string()),
            ("destination-offset", "3M".to_string()),
            ("connections", "2".to_string()),
        ];
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (*k, v.as_str())).collect();
        copy(&srv.uri(), &srv2.uri(), &back).unwrap();
        let got2 = read_export(&srv2.uri(), &dir);
        check(&got2, &before, &got, doff, len, 3 * M);
        drop(srv2);
        let f3 = dir.file("dst3.raw");
        write_file(&f3, &before);
        copy(&srv.uri(), f3.to_str().unwrap(), &back).unwrap();
        check(
            &std::fs::read(&f3).unwrap(),
            &before,
            &got,
            doff,
            len,
            3 * M,
        );
    }
}

#[test]
fn ranges_are_checked_against_both_sizes() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("ranges-err");
    let src = dir.file("src.raw");
    write_file(&src, &pattern(4 * M, 1));
    let s = src.to_str().unwrap();
    let srv = nbdkit(&dir, &["memory", "2M"]);
    let e = copy(s, &srv.uri(), &[("offset", "5M")]).unwrap_err();
    assert!(e.msg.contains("beyond the end of source"), "{}", e.msg);
    let e = copy(s, &srv.uri(), &[("offset", "3M"), ("length", "2M")]).unwrap_err();
    assert!(e.msg.contains("--length=2097152"), "{}", e.msg);
    let e = copy(
        s,
        &srv.uri(),
        &[("length", "1M"), ("destination-offset", "1536k")],
    )
    .unwrap_err();
    assert!(
        e.msg.contains("(2097152 bytes) cannot hold 1048576 bytes"),
        "{}",
        e.msg
    );
    assert_eq!(e.errno, libc::ENOSPC);
    // Within the export: fine (verified by qemu-img).
    copy(
        s,
        &srv.uri(),
        &[("offset", "3M"), ("destination-offset", "1M")],
    )
    .unwrap();
    if have("qemu-img") {
        let got = read_export(&srv.uri(), &dir);
        assert!(got[M..] == pattern(4 * M, 1)[3 * M..]);
    }
}

/// The command takes human sizes; a stream destination takes a range
/// from offset 0.
#[test]
fn command_line_ranges() {
    let Some(_) = nbdcpy_bin() else { return };
    let dir = TempDir::new("ranges-cli");
    let src = dir.file("src.raw");
    let img = pattern(4 * M, 3);
    write_file(&src, &img);
    let dst = dir.file("dst.raw");
    let before = pattern(4 * M, 4);
    write_file(&dst, &before);
    let o = common::nbdcpy_cmd()
        .args(["--offset=1M", "--length=64k", "--destination-offset=2s"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check(&std::fs::read(&dst).unwrap(), &before, &img, M, 65536, 1024);
    let o = common::nbdcpy_cmd()
        .args(["--offset=3M", "--destination-offset=0"])
        .arg(&src)
        .arg("-")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(o.stdout == img[3 * M..]);
    let o = common::nbdcpy_cmd()
        .args(["--offset=3M"])
        .arg(&src)
        .arg("-")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--destination-offset must be 0"));
    let o = common::nbdcpy_cmd()
        .args(["--length=1X"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("length"));
}
