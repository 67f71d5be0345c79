// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Faults from real servers: injected EIO on reads, writes and zeroing
//! (nbdkit's error filter), a failing FLUSH, slow servers, a server killed
//! mid-copy, and a full destination.  Never exit 0, always name the
//! offset and the side, never hang, never report as copied what was not.

use crate::common;
use common::hostile::{Hostile, Mode};
use common::*;
use nbdcpy::testing::Side::{self, Destination, Source};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Runs a copy and returns (result, bytes_done, size).
fn run(src: &str, dst: &str, opts: &[(&str, &str)]) -> (nbdcpy::Result<()>, u64, u64) {
    run_seen(src, dst, opts, &mut |_| {})
}

/// `run`, calling `seen` with the bytes done at each progress report
/// (every 10 ms).
fn run_seen(
    src: &str,
    dst: &str,
    opts: &[(&str, &str)],
    seen: &mut dyn FnMut(u64),
) -> (nbdcpy::Result<()>, u64, u64) {
    let mut cfg = common::config();
    for (k, v) in opts {
        cfg.set(k, Some(v)).unwrap();
    }
    let mut job = match nbdcpy::Job::open(
        nbdcpy::testing::Spec::parse(src),
        nbdcpy::testing::Spec::parse(dst),
        cfg,
    ) {
        Ok(j) => j,
        Err(e) => return (Err(e), 0, 0),
    };
    let t0 = Instant::now();
    let r = job.run(Duration::from_millis(10), &mut |s| {
        seen(s.bytes_done.load(Relaxed));
        true
    });
    let s = job.shared();
    // The evidence table (cargo test --test faults -- --nocapture).
    eprintln!(
        "| {:.2} s | done {} of {} | {} |",
        t0.elapsed().as_secs_f64(),
        s.bytes_done.load(Relaxed),
        s.size.load(Relaxed),
        r.as_ref().err().map_or("ok".to_string(), |e| e.msg.clone())
    );
    (r, s.bytes_done.load(Relaxed), s.size.load(Relaxed))
}

#[test]
fn injected_eio_on_reads_writes_and_zeroes() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("eio");
    let src = d.file("src");
    let mut data = pattern(8 << 20, 1);
    data[2 << 20..4 << 20].fill(0); // zeroed with WRITE_ZEROES
    write_file(&src, &data);
    for (what, args) in [
        (
            "read",
            vec![
                "--filter=error",
                "pattern",
                "8M",
                "error-pread=EIO",
                "error-pread-rate=20%",
            ],
        ),
        (
            "write",
            vec![
                "--filter=error",
                "memory",
                "8M",
                "error-pwrite=EIO",
                "error-pwrite-rate=20%",
            ],
        ),
        (
            "zero",
            vec![
                "--filter=error",
                "memory",
                "8M",
                "error-zero=EIO",
                "error-zero-rate=100%",
            ],
        ),
    ] {
        let s = nbdkit(&d, &args);
        // 256 KiB requests (the splice path's default is 1 MiB): 32
        // requests, so a 20% error rate fails one of them but for 0.8^32.
        let opts = [("request-size", "256k")];
        let (r, done, size) = if what == "read" {
            run(&s.uri(), "null:", &opts)
        } else {
            run(src.to_str().unwrap(), &s.uri(), &opts)
        };
        let e = r.expect_err(what);
        assert_eq!(e.errno, libc::EIO, "{what}: {}", e.msg);
        assert!(e.msg.contains("at offset"), "{what}: {}", e.msg);
        let side = if what == "read" { Source } else { Destination };
        assert_eq!(e.side, Some(side), "{what}: {}", e.msg);
        assert!(
            done < size,
            "{what}: reported everything as done after an error"
        );
    }
}

#[test]
fn failing_flush_fails_the_copy() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("flush");
    let src = d.file("src");
    write_file(&src, &pattern(1 << 20, 2));
    let h = Hostile::start(d.path(), Mode::FlushError, 1 << 20, false);
    let (r, _, _) = run(src.to_str().unwrap(), &h.uri(), &[]);
    r.expect("without --flush no FLUSH is sent");
    let (r, _, _) = run(src.to_str().unwrap(), &h.uri(), &[("flush", "1")]);
    let e = r.unwrap_err();
    assert!(e.msg.contains("FLUSH"), "{}", e.msg);
    assert_eq!(e.side, Some(Destination), "{}", e.msg);
}

#[test]
fn slow_server_still_correct() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("slow");
    let s = nbdkit(&d, &["--filter=delay", "pattern", "4M", "rdelay=2ms"]);
    let t = nbdkit(
        &d,
        &[
            "--filter=delay",
            "memory",
            "4M",
            "delay-write=2ms",
            "delay-zero=2ms",
        ],
    );
    let (r, done, size) = run(&s.uri(), &t.uri(), &[("request-size", "64k")]);
    r.unwrap();
    assert_eq!(done, size);
    assert!(qemu_img_compare(&s.uri(), &t.uri()));
}

#[test]
fn server_killed_mid_copy() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("kill");
    let mut s = nbdkit(&d, &["--filter=delay", "pattern", "1G", "rdelay=20ms"]);
    let uri = s.uri();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = run_seen(&uri, "null:", &[], &mut |done| {
            if done > 0 {
                let _ = tx.send(());
            }
        });
        (r, t0.elapsed())
    });
    // The kill comes once data has moved (the copy is under way).
    rx.recv_timeout(Duration::from_secs(20))
        .expect("no data copied within 20 s");
    let killed = Instant::now();
    s.kill_now();
    let ((r, done, size), _) = h.join().unwrap();
    let after_kill = killed.elapsed();
    let e = r.unwrap_err();
    assert!(
        after_kill < Duration::from_secs(3),
        "took {after_kill:?} after the kill"
    );
    assert!(
        e.msg.contains("closed the connection") || e.msg.contains("reset"),
        "{}",
        e.msg
    );
    assert_eq!(e.side, Some(Source), "{}", e.msg);
    assert!(done < size);
}

#[test]
fn destination_out_of_space() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("full");
    let src = d.file("src");
    write_file(&src, &pattern(4 << 20, 3));
    // nbdkit full: every write fails with ENOSPC.
    let f = nbdkit(&d, &["full", "4M"]);
    let (r, done, _) = run(src.to_str().unwrap(), &f.uri(), &[]);
    let e = r.unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC, "{}", e.msg);
    assert!(e.msg.contains("WRITE at offset"), "{}", e.msg);
    assert_eq!(e.side, Some(Destination), "{}", e.msg);
    assert_eq!(done, 0, "nothing was written, nothing is reported done");
    // A small filesystem that fills up (where tmpfs can be mounted).
    let mnt = d.file("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: cannot mount a small tmpfs");
        return;
    }
    let (r, done, size) = run(
        src.to_str().unwrap(),
        mnt.join("out").to_str().unwrap(),
        &[],
    );
    // From an NBD source, on both data paths (splice: the pipe's pages
    // spliced into the file).
    // (A server for each: nbdkit 1.32 can abort when a copy that failed
    // half way says goodbye, see tests/hostile.rs.)
    let from_nbd: Vec<_> = ["1", "0"]
        .iter()
        .map(|splice| {
            let s = nbdkit(&d, &["pattern", "4M"]);
            let out = mnt.join(format!("out-{splice}"));
            let _ = std::fs::remove_file(mnt.join("out"));
            let r = run(&s.uri(), out.to_str().unwrap(), &[("splice", splice)]);
            let _ = std::fs::remove_file(&out);
            (splice, r)
        })
        .collect();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let e = r.unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC, "{}", e.msg);
    assert!(
        e.msg.contains("destination") && e.msg.contains("offset"),
        "{}",
        e.msg
    );
    assert_eq!(e.side, Some(Destination), "{}", e.msg);
    assert!(done <= 1 << 20 && done < size, "done {done}");
    for (splice, (r, done, size)) in from_nbd {
        let e = r.unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC, "splice={splice}: {}", e.msg);
        assert!(e.msg.starts_with("destination "), "{}", e.msg);
        assert_eq!(e.side, Some(Destination), "splice={splice}: {}", e.msg);
        assert!(done < size, "splice={splice}: done {done}");
    }
}

/// An end of a test copy: an nbdkit server with these arguments, or a
/// path.
enum End<'a> {
    Nbdkit(&'a [&'a str]),
    Path(&'a str),
}

const FAILING_READS: End = End::Nbdkit(&[
    "--filter=error",
    "pattern",
    "4M",
    "error=EIO",
    "error-pread-rate=1",
]);
const FAILING_WRITES: End = End::Nbdkit(&[
    "--filter=error",
    "memory",
    "4M",
    "error=EIO",
    "error-pwrite-rate=1",
]);
const PATTERN: End = End::Nbdkit(&["pattern", "4M"]);
const MEMORY: End = End::Nbdkit(&["memory", "4M"]);

/// The side of the error of a copy from `src` to `dst` with `opts`, which
/// must fail with `errno` and a message containing `what`.  Servers are
/// started for this copy alone (nbdkit 1.32 can abort when a copy that
/// failed half way says goodbye: see tests/hostile.rs).
fn failed_side(
    d: &TempDir,
    (src, dst): (&End, &End),
    opts: &[(&str, &str)],
    errno: i32,
    what: &str,
) -> Side {
    let end = |e: &End| match *e {
        End::Nbdkit(args) => {
            let s = nbdkit(d, args);
            (s.uri(), Some(s))
        }
        End::Path(p) => (p.to_string(), None),
    };
    let ((src, _s), (dst, _d)) = (end(src), end(dst));
    let (r, done, size) = run(&src, &dst, opts);
    let e = r.unwrap_err();
    let at = format!("{src} -> {dst} {opts:?}: {}", e.msg);
    assert_eq!(e.errno, errno, "{at}");
    assert!(e.msg.contains(what), "{at}");
    assert!(done < size, "{at}: done {done} of {size}");
    e.side.unwrap_or_else(|| panic!("{at}: no side"))
}

/// Errors raised in the middle of the copy (by the lanes: NBD
/// connections, files, the splice path) say which end they are about,
/// what nbdcpy_get_error_endpoint and --json's "endpoint" report.
#[test]
fn errors_mid_copy_name_their_side() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("sides");
    let src = d.file("src");
    write_file(&src, &pattern(4 << 20, 4));
    let file = End::Path(src.to_str().unwrap());
    let out = d.file("out");
    let out = End::Path(out.to_str().unwrap());
    let (null, full) = (End::Path("null:"), End::Path("/dev/full"));
    for splice in ["1", "0"] {
        let opts = [("splice", splice), ("no-extents", "1")];
        let eio = |ends, what| failed_side(&d, ends, &opts, libc::EIO, what);
        for ends in [
            (&FAILING_READS, &null),
            (&FAILING_READS, &out),
            (&FAILING_READS, &MEMORY),
        ] {
            assert_eq!(eio(ends, "READ at offset"), Source, "splice={splice}");
        }
        for ends in [(&PATTERN, &FAILING_WRITES), (&file, &FAILING_WRITES)] {
            let side = eio(ends, "WRITE at offset");
            assert_eq!(side, Destination, "splice={splice}");
        }
        // /dev/full: every write fails with ENOSPC.
        for src in [&file, &PATTERN] {
            let what = "destination /dev/full: write at offset 0";
            let side = failed_side(&d, (src, &full), &opts, libc::ENOSPC, what);
            assert_eq!(side, Destination, "splice={splice}");
        }
        // A source file that shrank after the open.
        let shrink = d.file("shrink");
        write_file(&shrink, &pattern(4 << 20, 5));
        let mut cfg = common::config();
        cfg.set("splice", Some(splice)).unwrap();
        cfg.set("no-extents", None).unwrap();
        let mut job = nbdcpy::Job::open(
            nbdcpy::testing::Spec::parse(shrink.to_str().unwrap()),
            nbdcpy::testing::Spec::parse("null:"),
            cfg,
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&shrink)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let e = job
            .run(Duration::from_millis(50), &mut |_| true)
            .unwrap_err();
        assert_eq!(e.errno, libc::EIO, "{}", e.msg);
        assert!(e.msg.contains("did it shrink?"), "{}", e.msg);
        assert_eq!(e.side, Some(Source), "splice={splice}: {}", e.msg);
    }
    // A stream source longer than the destination.
    let fifo = d.file("fifo");
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(ok.unwrap().success());
    let f2 = fifo.clone();
    let w = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
        // Until the copy gives up and closes the pipe.
        while f.write_all(&[7u8; 1 << 16]).is_ok() {}
    });
    let what = "the stream is larger than destination";
    let ends = (
        &End::Path(fifo.to_str().unwrap()),
        &End::Nbdkit(&["memory", "1M"]),
    );
    assert_eq!(failed_side(&d, ends, &[], libc::ENOSPC, what), Source);
    w.join().unwrap();
}
