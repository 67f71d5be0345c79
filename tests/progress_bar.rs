// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The command's `-p` bar read as migration tools read nbdcopy's, and its `-v` lines in nbdcopy's form.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Forklift's virt-v2v monitor's pattern.
const PATTERN: &str = r".+ (\d+)% \[[*-]+\]";

/// What `PATTERN` captures in `piece` (the percentage), or None when it
/// does not match: leftmost match, greedy `.+` (RE2 and Perl agree).
fn forklift_match(piece: &str) -> Option<u32> {
    let b = piece.as_bytes();
    let mut found = None;
    // Every "% [" whose digits are preceded by a space and at least one
    // character, and followed by one or more '*'/'-' and ']'; greedy `.+`
    // takes the last such one.
    for (i, w) in b.windows(3).enumerate() {
        if w != b"% [" {
            continue;
        }
        let mut d = i;
        while d > 0 && b[d - 1].is_ascii_digit() {
            d -= 1;
        }
        if d == i || d < 2 || b[d - 1] != b' ' {
            continue;
        }
        let cells = b[i + 3..]
            .iter()
            .take_while(|c| **c == b'*' || **c == b'-')
            .count();
        if cells == 0 || b.get(i + 3 + cells) != Some(&b']') {
            continue;
        }
        found = piece[d..i].parse().ok();
    }
    found
}

/// Splits stderr as the monitor does: at '\r' and '\n'.
fn pieces(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The percentages the monitor would publish, checked against the
/// exact pattern with python3's `re` too when it is installed.
fn published(stderr: &[u8]) -> Vec<u32> {
    let ours: Vec<u32> = pieces(stderr)
        .iter()
        .filter_map(|p| forklift_match(p))
        .collect();
    if have("python3") {
        let script = format!(
            "import re,sys\nd=sys.stdin.buffer.read().decode('utf-8','replace')\n\
             for p in re.split(r'[\\r\\n]', d):\n    m=re.search(r'{PATTERN}', p)\n    \
             if m: print(m.group(1))\n"
        );
        let mut c = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(stderr).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        let py: Vec<u32> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(ours, py, "python3's re and the matcher here disagree");
    }
    ours
}

/// Every bar piece: a glyph, a space, 3 columns of percentage, "% [",
/// 40 cells whose '*' count follows the percentage, "]", ending in '\r'.
fn check_bar_form(stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    for raw in text.split_inclusive('\r') {
        let piece = raw.trim_start_matches('\n');
        let Some(open) = piece.find("% [") else {
            continue;
        };
        assert!(piece.ends_with('\r'), "a bar piece ends in \\r: {piece:?}");
        let chars: Vec<char> = piece.chars().collect();
        assert_eq!(chars[1], ' ', "{piece:?}");
        let head: String = chars[2..5].iter().collect();
        let pct: u32 = head.trim_start().parse().expect("3-column percentage");
        let cells = &piece[open + 3..open + 43];
        assert!(cells.chars().all(|c| c == '*' || c == '-'), "{piece:?}");
        assert_eq!(&piece[open + 43..open + 44], "]", "{piece:?}");
        let stars = cells.chars().filter(|c| *c == '*').count() as u32;
        assert_eq!(stars, (pct * 40).div_ceil(100), "{piece:?}");
    }
}

fn run_with_stderr(cmd: &mut Command) -> (Output, f64) {
    let t = Instant::now();
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    (o, t.elapsed().as_secs_f64())
}

#[test]
fn pattern_matcher_agrees_with_the_monitors_regex() {
    for (piece, want) in [
        ("|  42% [*****************---------------------]", Some(42)),
        (
            "* 100% [****************************************] 8.0 MiB",
            Some(100),
        ),
        ("100% [****]", None),
        (" 100% [****]", None),
        ("x  7% []", None),
        ("x 7% [**]", Some(7)),
        ("x 7 % [**]", None),
        (" 42% 1.2 GiB 580 MiB/s ETA 00:02", None),
    ] {
        assert_eq!(forklift_match(piece), want, "{piece:?}");
    }
}

/// A copy slowed by nbdkit's delay filter: several pieces the monitor
/// reads, rising to 100%, at most a few per second, all ending in '\r'.
#[test]
fn progress_bar_is_parsed_like_nbdcopys() {
    let Some(_) = nbdcpy_bin() else { return };
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("pbar");
    // 24 reads of 256 KiB, one at a time, 100 ms each: about 2.4 s.
    let src = nbdkit(&dir, &["--filter=delay", "pattern", "6M", "rdelay=100ms"]);
    let dst = dir.file("out.img");
    let (o, secs) = run_with_stderr(
        nbdcpy_cmd()
            .args(["-p", "-C", "1", "-R", "1", "--request-size=262144"])
            .arg(src.uri())
            .arg(&dst),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pct = published(&o.stderr);
    assert!(
        pct.len() >= 4,
        "several updates expected in {secs:.1} s: {pct:?}"
    );
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{pct:?}");
    assert_eq!(pct.last(), Some(&100), "{pct:?}");
    assert!(pct.iter().any(|p| (1..100).contains(p)), "{pct:?}");
    assert!(
        (pct.len() as f64) <= secs * 5.0 + 3.0,
        "{} updates in {secs:.1} s",
        pct.len()
    );
    check_bar_form(&o.stderr);
    assert!(
        o.stderr.ends_with(b"\r\n"),
        "the last piece, then a newline"
    );
    // Every piece of the output is a bar piece (nothing else is printed).
    assert_eq!(pieces(&o.stderr).len(), pct.len());
    // An independent reader: the copy is right.
    let want = read_export(&src.uri(), &dir);
    assert!(std::fs::read(&dst).unwrap() == want, "copy differs");
}

/// A copy of 0 bytes, a stream of unknown size, and nbdcopy's spelling
/// `--progress`: each ends with a 100% piece.
#[test]
fn progress_bar_ends_at_100_also_for_empty_copies_and_streams() {
    let Some(b) = nbdcpy_bin() else { return };
    let dir = TempDir::new("pbar0");
    let empty = dir.file("empty");
    write_file(&empty, &[]);
    let out = dir.file("out");
    for flag in ["-p", "--progress"] {
        let (o, _) = run_with_stderr(nbdcpy_cmd().arg(flag).arg(&empty).arg(&out));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pct = published(&o.stderr);
        assert_eq!(pct.last(), Some(&100), "0-byte copy, {flag}: {pct:?}");
        check_bar_form(&o.stderr);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    }
    let src = dir.file("src");
    write_file(&src, &pattern(3 << 20, 5));
    let cmd = format!(
        "cat '{}' | '{}' -p - '{}'",
        src.display(),
        b.display(),
        out.display()
    );
    let (o, _) = run_with_stderr(Command::new("sh").arg("-c").arg(cmd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pct = published(&o.stderr);
    assert_eq!(pct.last(), Some(&100), "stream: {pct:?}");
    check_bar_form(&o.stderr);
    assert!(cmp(&src, &out), "stream copy differs");
    // A failed copy never shows 100%.
    let (o, _) = run_with_stderr(
        nbdcpy_cmd()
            .args(["-p", "nbd+unix:///?socket=/nonexistent/sock"])
            .arg(&out),
    );
    assert!(!o.status.success());
    assert!(!published(&o.stderr).contains(&100));
}

/// -v: nbdcopy's lines (libnbd's copy/test-verbose.sh greps them), with
/// the name the command was run as, beside nbdcpy's own.
#[test]
fn verbose_prints_nbdcopys_lines() {
    let Some(b) = nbdcpy_bin() else { return };
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("verbose");
    let link = dir.file("nbdcopy");
    std::os::unix::fs::symlink(&b, &link).unwrap();
    let file = dir.file("disk.img");
    write_file(&file, &pattern(3 << 20, 2));
    let out = dir.file("out.img");
    let run = |prog: &Path, args: &[&str]| -> String {
        let o = Command::new(prog)
            .arg("-v")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{e}");
        e
    };
    let has = |e: &str, line: &str| e.lines().any(|l| l.starts_with(line));
    let e = run(
        &link,
        &["--", "[", "nbdkit", "memory", "size=1M", "]", "null:"],
    );
    for want in [
        "nbdcopy: src: nbd_ops \"nbdkit\"",
        "nbdcopy: src: size=1048576 (1M), preferred block size=",
        "nbdcopy: dst: null_ops \"null:\"",
        "nbdcopy: dst: size=9223372036854775807 (9223372036854775807)",
        "nbdcopy: connections=",
        // nbdcpy's own lines stay.
        "nbdcpy: [ nbdkit memory size=1M ] -> null:: size 1048576",
    ] {
        assert!(has(&e, want), "no line {want:?} in:\n{e}");
    }
    let srv = nbdkit(&dir, &["memory", "3M"]);
    let f = file.to_string_lossy();
    let e = run(&b, &[&f, &srv.uri()]);
    for want in [
        format!("nbdcpy: src: file_ops \"{f}\""),
        format!("nbdcpy: src: size={} (3M)", 3 << 20),
        format!("nbdcpy: dst: nbd_ops \"{}\"", srv.uri()),
        format!("nbdcpy: dst: size={} (3M)", 3 << 20),
    ] {
        assert!(has(&e, &want), "no line {want:?} in:\n{e}");
    }
    assert!(!e.contains("nbdcopy:"), "{e}");
    let e = run(&link, &[&srv.uri(), &out.to_string_lossy()]);
    assert!(has(&e, "nbdcopy: dst: file_ops"), "{e}");
    assert_eq!(read_export(&srv.uri(), &dir), std::fs::read(&out).unwrap());
    let cmd = format!("cat '{f}' | '{}' -v - null:", link.display());
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(has(&e, "nbdcopy: src: pipe_ops \"-\""), "{e}");
    assert!(has(&e, "nbdcopy: src: size=-1 "), "{e}");
}
