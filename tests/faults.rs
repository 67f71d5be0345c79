// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Faults from real servers: injected EIO on reads, writes and zeroing
//! (nbdkit's error filter), a failing FLUSH, slow servers, a server killed
//! mid-copy, and a full destination.  Never exit 0, always name the
//! offset, never hang, never report as copied what was not.

mod common;
use common::hostile::{Hostile, Mode};
use common::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Runs a copy and returns (result, bytes_done, size).
fn run(src: &str, dst: &str, opts: &[(&str, &str)]) -> (nbdcpy::Result<()>, u64, u64) {
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
    let r = job.run(Duration::from_millis(50), &mut |_| true);
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
    let h = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = run(&uri, "null:", &[]);
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
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
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let e = r.unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC, "{}", e.msg);
    assert!(
        e.msg.contains("destination") && e.msg.contains("offset"),
        "{}",
        e.msg
    );
    assert!(done <= 1 << 20 && done < size, "done {done}");
}
