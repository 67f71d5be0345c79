// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Range lists (`--ranges=FILE`, `ranges-file`): only the listed areas are copied, read back independently.
//
// Destinations are pre-filled with a known byte; the areas come unsorted,
// overlapping and touching, at odd offsets and at the very end, over data
// and holes; files and NBD servers (qemu-nbd, nbdkit, nbd-server) with
// multi-conn; lists from files and stdin; every malformed input leaves the
// destination unchanged.  Checked with std::fs, cmp and qemu-img.

use crate::common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const M: usize = 1 << 20;
const FILL: u8 = 0xa5;

/// A 6 MiB sparse source: data, holes punched in whole MiBs (2M and 4M),
/// and a data run of zero bytes at 5M.
fn sparse_source(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let p = dir.file("src.raw");
    let mut img = pattern(6 * M, 29);
    for mib in [2usize, 4] {
        img[mib * M..(mib + 1) * M].fill(0);
    }
    img[5 * M..5 * M + 65536].fill(0);
    write_file(&p, &img);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::fd::AsRawFd;
    for mib in [2usize, 4] {
        // SAFETY: fallocate on a file this test owns.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (mib * M) as i64,
                M as i64,
            )
        };
        assert_eq!(r, 0, "punch hole");
    }
    (p, img)
}

/// The areas (offset, length) of the tests: unsorted, overlapping,
/// touching, odd, over the holes (2M, 4M) and zero data, and the very end.
fn areas() -> Vec<(usize, usize)> {
    vec![
        (6 * M - 4097, 4097), // the very end
        (M + 12345, 100_001), // odd
        (0, 512),
        (512, 512),            // touches the one before
        (2 * M - 4096, 8192),  // data into the hole at 2M
        (4 * M + 1000, 3000),  // inside the hole at 4M
        (M + 50_000, 80_000),  // overlaps the odd one
        (5 * M, 200_000),      // zero data, then data
        (3 * M, 1),            // one byte
        (4 * M + 2000, 2_000), // inside an earlier one
    ]
}

/// The list file's text for `areas`, with comments, blank lines and
/// suffixes where they fit.
fn list_text(areas: &[(usize, usize)]) -> String {
    let mut t = String::from("# changed areas\n\n");
    for (i, &(o, l)) in areas.iter().enumerate() {
        if o % 1024 == 0 && i % 2 == 0 {
            t.push_str(&format!("{}k\t{l}   # area {i}\n", o / 1024));
        } else {
            t.push_str(&format!("  {o} {l}\n"));
        }
    }
    t
}

/// What the destination must hold: `before` with `src` over every area.
fn expected(before: &[u8], src: &[u8], areas: &[(usize, usize)]) -> Vec<u8> {
    let mut v = before.to_vec();
    for &(o, l) in areas {
        v[o..o + l].copy_from_slice(&src[o..o + l]);
    }
    v
}

/// The merged areas' total length.
fn merged_len(areas: &[(usize, usize)]) -> u64 {
    let mut v = areas.to_vec();
    v.sort();
    let mut total = 0;
    let mut end = 0;
    for (o, l) in v {
        let (s, e) = (o.max(end), o + l);
        if e > s {
            total += e - s;
        }
        end = end.max(e);
    }
    total as u64
}

fn opts<'a>(v: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Asserts that `got` equals `want`, naming the first differing offset.
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at offset {i}: {} instead of {}",
            got[i], want[i]
        );
    }
}

fn filled(dir: &TempDir, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let p = dir.file(name);
    let before = vec![FILL; len];
    write_file(&p, &before);
    (p, before)
}

#[test]
fn file_to_file_only_the_areas() {
    let dir = TempDir::new("rl-ff");
    let (src, img) = sparse_source(&dir);
    let list = dir.file("list.txt");
    std::fs::write(&list, list_text(&areas())).unwrap();
    // A destination longer than the source: its tail is not touched,
    // and the file keeps its length.
    let (dst, before) = filled(&dir, "dst.raw", 7 * M);
    let mut want_src = img.clone();
    want_src.resize(7 * M, 0);
    for conns in ["1", "4"] {
        write_file(&dst, &before);
        let o = [
            ("ranges-file", list.to_str().unwrap().to_string()),
            ("threads", conns.to_string()),
            ("request-size", "64k".to_string()),
        ];
        let st = copy(src.to_str().unwrap(), dst.to_str().unwrap(), &opts(&o)).unwrap();
        assert_eq!(st.done, merged_len(&areas()));
        assert!(st.zeroed > 0, "holes inside areas were not zeroed: {st:?}");
        // Requests of up to 64 KiB (reads and the writes or zeroings of
        // their parts): a few per area, never one per byte.
        assert!(st.requests < 64, "{} requests: {st:?}", st.requests);
        let want = expected(&before, &want_src, &areas());
        same(&std::fs::read(&dst).unwrap(), &want, "file destination");
    }
    // cmp(1) agrees: the areas equal the source, the rest differs.
    let cmp_at = |o: usize, l: usize| {
        Command::new("cmp")
            .args(["-s", "-n", &l.to_string()])
            .arg(&src)
            .arg(&dst)
            .arg(o.to_string())
            .arg(o.to_string())
            .status()
            .unwrap()
            .success()
    };
    assert!(cmp_at(M + 12345, 100_001) && cmp_at(6 * M - 4097, 4097));
    assert!(!cmp_at(3 * M + 1, 100), "outside the areas must differ");
}

#[test]
fn nbd_destinations_multi_conn() {
    if !require("qemu-nbd") || !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let dir = TempDir::new("rl-nbd");
    let (src, img) = sparse_source(&dir);
    let a = areas();
    let list = dir.file("list.txt");
    std::fs::write(&list, list_text(&a)).unwrap();
    let o = [
        ("ranges-file", list.to_str().unwrap().to_string()),
        ("connections", "4".to_string()),
        ("request-size", "64k".to_string()),
    ];
    let want = expected(&vec![FILL; 6 * M], &img, &a);
    for kind in ["qemu-nbd", "nbdkit", "nbd-server"] {
        if kind == "nbd-server" && !have("nbd-server") {
            continue;
        }
        let (dfile, _) = filled(&dir, &format!("dst-{}.raw", kind), 6 * M);
        let srv = serve(kind, &dir, &dfile);
        let st = copy(src.to_str().unwrap(), &srv.uri(), &opts(&o)).unwrap();
        assert_eq!(st.done, merged_len(&a), "{kind}");
        same(&read_export(&srv.uri(), &dir), &want, kind);
        // And back, NBD -> file (the export as the source).
        let (back, before) = filled(&dir, "back.raw", 6 * M);
        copy(&srv.uri(), back.to_str().unwrap(), &opts(&o)).unwrap();
        same(
            &std::fs::read(&back).unwrap(),
            &expected(&before, &want, &a),
            "NBD -> file",
        );
    }
}

#[test]
fn verify_and_null_and_rate() {
    let dir = TempDir::new("rl-verify");
    let (src, img) = sparse_source(&dir);
    let a = areas();
    let list = dir.file("list.txt");
    std::fs::write(&list, list_text(&a)).unwrap();
    let (dst, before) = filled(&dir, "dst.raw", 6 * M);
    let l = list.to_str().unwrap().to_string();
    let o = [("ranges-file", l.clone()), ("verify", "1".to_string())];
    copy(src.to_str().unwrap(), dst.to_str().unwrap(), &opts(&o)).unwrap();
    same(
        &std::fs::read(&dst).unwrap(),
        &expected(&before, &img, &a),
        "--verify",
    );
    // null: (no end), and the rate limit (200 MiB/s: the areas take
    // a few ms).
    let o = [("ranges-file", l), ("rate", "200M".to_string())];
    let st = copy(src.to_str().unwrap(), "null:", &opts(&o)).unwrap();
    assert_eq!(st.done, merged_len(&a));
}

/// Runs the command; returns (exit code, stderr).
fn run(_b: &Path, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut c = nbdcpy_cmd();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let text = stdin.unwrap_or("").to_string();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let o = child.wait_with_output().unwrap();
    let _ = feeder.join();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn command_line_file_and_stdin() {
    let Some(b) = nbdcpy_bin() else { return };
    let dir = TempDir::new("rl-cli");
    let (src, img) = sparse_source(&dir);
    let a = areas();
    let list = dir.file("list.txt");
    std::fs::write(&list, list_text(&a)).unwrap();
    let (dst, before) = filled(&dir, "dst.raw", 6 * M);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let arg = format!("--ranges={}", list.display());
    let (code, out, err) = run(&b, &["--json", &arg, s, d], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("\"size\": {}", merged_len(&a))),
        "{out}"
    );
    let want = expected(&before, &img, &a);
    same(&std::fs::read(&dst).unwrap(), &want, "--ranges=FILE");
    // From standard input, into NBD when qemu-nbd is there.
    write_file(&dst, &before);
    let (code, _, err) = run(&b, &["--ranges=-", s, d], Some(&list_text(&a)));
    assert_eq!(code, Some(0), "{err}");
    same(&std::fs::read(&dst).unwrap(), &want, "--ranges=-");
    if have("qemu-nbd") && have("qemu-img") {
        let (nf, _) = filled(&dir, "nbd.raw", 6 * M);
        let srv = qemu_nbd(&dir, &nf, &[]);
        let (code, _, err) = run(
            &b,
            &["-C", "2", "--ranges=-", s, &srv.uri()],
            Some(&list_text(&a)),
        );
        assert_eq!(code, Some(0), "{err}");
        same(&read_export(&srv.uri(), &dir), &want, "stdin list into NBD");
    }
}

/// Every malformed input is an error naming what is wrong, and the
/// destination (file and NBD) is unchanged afterwards.
#[test]
fn malformed_input_touches_nothing() {
    let Some(b) = nbdcpy_bin() else { return };
    let dir = TempDir::new("rl-bad");
    let (src, _) = sparse_source(&dir);
    let s = src.to_str().unwrap();
    let (dst, before) = filled(&dir, "dst.raw", 4 * M); // shorter than the source
    let d = dst.to_str().unwrap().to_string();
    let list = dir.file("bad.txt");
    let l = format!("--ranges={}", list.display());
    let cases: &[(&str, &[&str], &str)] = &[
        ("0 4k\n1M\n", &[], "line 2"),
        ("0 4k\n1M 4k 4k\n", &[], "OFFSET LENGTH"),
        ("# a\n-4096 4k\n", &[], "negative"),
        ("0 -1\n", &[], "negative"),
        ("0 4k\n\n8k 0\n", &[], "length 0"),
        ("0 4k\nabc 4k\n", &[], "line 2"),
        ("1M 4q\n", &[], "suffix"),
        ("8E 8E\n", &[], "overflows"),
        ("0 4k\n6M 1\n", &[], "past the end of source"),
        ("5M 4k\n", &[], "past the end of destination"),
        ("0 4k\n", &["--offset=4k"], "--offset"),
        ("0 4k\n", &["--length=4k"], "--length"),
        (
            "0 4k\n",
            &["--destination-offset=0"],
            "--destination-offset",
        ),
        ("0 4k\n", &["--dirty-bitmap=b0"], "--dirty-bitmap"),
        ("0 4k\n", &["--blkhash"], "--blkhash"),
    ];
    for (text, extra, want) in cases {
        std::fs::write(&list, text).unwrap();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([l.as_str(), s, d.as_str()]);
        let (code, _, err) = run(&b, &args, None);
        assert_eq!(code, Some(1), "{text:?} {extra:?}: {err}");
        assert!(err.contains(want), "{text:?} {extra:?}: {err}");
        assert!(
            std::fs::read(&dst).unwrap() == before,
            "{text:?}: dst changed"
        );
    }
    // An unreadable list, a missing one, and --ranges=- with stdin the source.
    let (code, _, err) = run(&b, &["--ranges=/nonexistent/list", s, &d], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/list"), "{err}");
    let (code, _, err) = run(&b, &["--ranges=-", "-", &d], Some("0 1\n"));
    assert_eq!(code, Some(1));
    assert!(err.contains("standard input"), "{err}");
    // A stream destination.
    std::fs::write(&list, "0 4k\n").unwrap();
    let (code, _, err) = run(&b, &[&l, s, "-"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("stream"), "{err}");
    assert!(std::fs::read(&dst).unwrap() == before);
    // NBD: an area past the export's end; the export is unchanged.
    if have("nbdkit") && have("qemu-img") {
        let srv = nbdkit(&dir, &["file", &d]);
        std::fs::write(&list, "0 4k\n4M 1\n").unwrap();
        let (code, _, err) = run(&b, &[&l, s, &srv.uri()], None);
        assert_eq!(code, Some(1));
        assert!(err.contains("past the end of destination"), "{err}");
        same(&read_export(&srv.uri(), &dir), &before, "NBD unchanged");
    }
}

/// A million areas load and merge in little time and memory (measured:
/// printed with --nocapture), and an empty list copies nothing.
#[test]
fn many_scattered_areas() {
    let dir = TempDir::new("rl-million");
    let src = dir.file("src.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 << 30).unwrap(); // sparse: 64 GiB of holes
    drop(f);
    let list = dir.file("list.txt");
    let mut t = String::with_capacity(32 << 20);
    for i in 0..1_000_000u64 {
        // Every 64 KiB block of 4 KiB, in a scattered order.
        let blk = (i * 7_919) % 1_000_000;
        t.push_str(&format!("{} 4096\n", blk << 16));
    }
    std::fs::write(&list, &t).unwrap();
    let t0 = std::time::Instant::now();
    let o = [("ranges-file", list.to_str().unwrap().to_string())];
    let st = copy(src.to_str().unwrap(), "null:", &opts(&o)).unwrap();
    let took = t0.elapsed();
    eprintln!("1,000,000 areas: loaded and copied to null: in {took:?}");
    assert_eq!(st.done, 1_000_000 * 4096);
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    // Empty list: nothing.
    std::fs::write(&list, "# nothing changed\n").unwrap();
    let (dst, before) = filled(&dir, "dst.raw", M);
    let st = copy(src.to_str().unwrap(), dst.to_str().unwrap(), &opts(&o)).unwrap();
    assert_eq!(st.done, 0);
    assert!(std::fs::read(&dst).unwrap() == before);
}
