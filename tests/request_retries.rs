// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! --retries and error replies: requests answered with EIO sent again, permanent errors not.
//
// nbdkit's error filter fails a share of reads (error-pread-rate) or of
// writes (error-pwrite-rate) with EIO, or every write with ENOSPC.  With
// --retries the copy must come out exact (checked with cmp(1) on the
// files nbdkit serves), count its resends in --json's
// `retried_requests` and print one -v line for each; without, the first
// EIO fails it cleanly; ENOSPC fails at once even with --retries.

use crate::common;

use common::{cmp, nbdkit, pattern, require, write_file, TempDir};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// The source image: 24 MiB of data with a hole of 1 MiB every 4 MiB.
fn image(p: &Path) {
    let mut v = pattern(24 << 20, 38);
    for m in (2..24).step_by(4) {
        v[m << 20..(m + 1) << 20].fill(0);
    }
    write_file(p, &v);
}

/// The command with `args`, -v, --json on stdout, small requests (many
/// of them: a 3% rate hits some).
fn run(args: &[&str]) -> Option<Output> {
    common::nbdcpy_bin()?;
    let o = common::nbdcpy_cmd()
        .args(["-v", "--json", "--request-size=64k"])
        .args(args)
        .output()
        .unwrap();
    Some(o)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `"key": N` of the --json line.
fn json_num(o: &Output, key: &str) -> u64 {
    let s = String::from_utf8_lossy(&o.stdout);
    let pat = format!("\"{key}\": ");
    let at = s.find(&pat).unwrap_or_else(|| panic!("no {key} in {s}")) + pat.len();
    let end = s[at..].find(|c: char| !c.is_ascii_digit()).unwrap() + at;
    s[at..end].parse().unwrap()
}

/// The -v lines of requests sent again.
fn resend_lines(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.contains("sending it again"))
        .collect()
}

/// A successful copy that resent some requests, each one a -v line
/// naming the command, offset, length and EIO.
fn check_resent(o: &Output, what: &str) {
    let err = stderr(o);
    assert!(o.status.success(), "copy failed: {err}");
    let n = json_num(o, "retried_requests");
    assert!(
        n > 0,
        "3% of {what} failed but nothing was sent again: {err}"
    );
    let lines = resend_lines(&err);
    assert_eq!(lines.len() as u64, n, "one -v line per resend: {err}");
    for l in lines {
        assert!(
            l.contains(&format!("{what} at offset ")) && l.contains(" length "),
            "{l}"
        );
        assert!(l.contains("EIO"), "{l}");
    }
    eprintln!("{n} {what}(s) sent again");
}

#[test]
fn reads_failing_with_eio_are_sent_again() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-read");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    let s = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-pread-rate=3%",
        ],
    );
    let args = [
        "--retries=8",
        "--retry-delay=0.01",
        &s.uri(),
        dst.to_str().unwrap(),
    ];
    let Some(o) = run(&args) else { return };
    check_resent(&o, "READ");
    assert!(cmp(&src, &dst), "destination differs: {}", stderr(&o));
}

#[test]
fn writes_failing_with_eio_are_sent_again() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-write");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let f = format!("file={}", dst.display());
    let d = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-pwrite-rate=3%",
        ],
    );
    // Two connections: resends on each.
    let args = [
        "--retries=8",
        "--retry-delay=0.01",
        "--connections=2",
        src.to_str().unwrap(),
        &d.uri(),
    ];
    let Some(o) = run(&args) else { return };
    check_resent(&o, "WRITE");
    assert!(cmp(&src, &dst), "destination differs: {}", stderr(&o));
}

#[test]
fn without_retries_the_first_eio_fails_the_copy() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-none");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    let s = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-pread-rate=3%",
        ],
    );
    let Some(o) = run(&[&s.uri(), dst.to_str().unwrap()]) else {
        return;
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("source {}: READ at offset ", s.uri())),
        "names the endpoint and offset: {err}"
    );
    assert!(err.contains("server error EIO"), "{err}");
    assert!(resend_lines(&err).is_empty(), "{err}");
    assert_eq!(json_num(&o, "retried_requests"), 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"errno_name\": \"EIO\""),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn enospc_fails_at_once_even_with_retries() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-enospc");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let f = format!("file={}", dst.display());
    let d = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=ENOSPC",
            "error-pwrite-rate=100%",
        ],
    );
    // A backoff of 5 s: one resend would show.
    let args = [
        "--retries=8",
        "--retry-delay=5",
        src.to_str().unwrap(),
        &d.uri(),
    ];
    let t = Instant::now();
    let Some(o) = run(&args) else { return };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "no backoff: {err}");
    assert!(
        err.contains(&format!("destination {}: WRITE at offset ", d.uri())),
        "{err}"
    );
    assert!(err.contains("server error ENOSPC"), "{err}");
    assert!(resend_lines(&err).is_empty(), "{err}");
    assert_eq!(json_num(&o, "retried_requests"), 0);
}

#[test]
fn a_request_failing_every_time_fails_after_its_retries() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-always");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    let s = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-pread-rate=100%",
        ],
    );
    let args = [
        "--retries=3",
        "--retry-delay=0.01",
        "--connections=1",
        "--requests=1",
        &s.uri(),
        dst.to_str().unwrap(),
    ];
    let Some(o) = run(&args) else { return };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("server error EIO"), "{err}");
    assert!(err.contains("(failed 4 times)"), "{err}");
    assert_eq!(json_num(&o, "retried_requests"), 3, "{err}");
    assert_eq!(resend_lines(&err).len(), 3, "{err}");
}

#[test]
fn over_tls_reads_failing_with_eio_are_sent_again() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-tls");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let psk = dir.file("keys.psk");
    let key: String = pattern(32, 5).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&psk, format!("alice:{key}\n")).unwrap();
    let f = format!("file={}", src.display());
    let tls = format!("--tls-psk={}", psk.display());
    let s = nbdkit(
        &dir,
        &[
            "--tls=require",
            &tls,
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-pread-rate=3%",
        ],
    );
    let uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={}",
        s.socket().display(),
        psk.display()
    );
    let args = [
        "--retries=8",
        "--retry-delay=0.01",
        "--connections=2",
        &uri,
        dst.to_str().unwrap(),
    ];
    let Some(o) = run(&args) else { return };
    check_resent(&o, "READ");
    assert!(cmp(&src, &dst), "destination differs: {}", stderr(&o));
}

#[test]
fn block_status_failing_with_eio_is_sent_again() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("rr-extents");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    // Every BLOCK_STATUS fails (reads do not): sent again 3 times, then
    // its range is read as data.
    let s = nbdkit(
        &dir,
        &[
            "--filter=error",
            "file",
            &f,
            "error=EIO",
            "error-extents-rate=100%",
        ],
    );
    let args = [
        "--retries=3",
        "--retry-delay=0.01",
        &s.uri(),
        dst.to_str().unwrap(),
    ];
    let Some(o) = run(&args) else { return };
    check_resent(&o, "BLOCK_STATUS");
    assert_eq!(json_num(&o, "retried_requests") % 3, 0, "{}", stderr(&o));
    assert!(cmp(&src, &dst), "destination differs: {}", stderr(&o));
}
