// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A hostile or broken server can never make nbdcpy write outside the
//! range it asked for, crash, hang, or succeed: every misbehaviour of the
//! scripted server in common/hostile.rs ends in a clear error within a
//! bounded time, and the destination outside the copied range is intact.

use crate::common;
use common::hostile::{pattern_byte, Hostile, Mode, ALL_BAD, SLOW_OP};
use common::*;
use nbdcpy::testing::Side;
use std::time::{Duration, Instant};

const SIZE: u64 = 4 << 20;

/// Copies the hostile source into an nbdkit memory disk twice its size
/// whose every byte was 0xEE, and checks the upper half is untouched.
/// Copies from a hostile source with the given data path ("1": splice,
/// "0": receive buffers).
fn run_source(mode: Mode, extended: bool, splice: &str) -> (nbdcpy::Result<Stats>, Duration) {
    let d = TempDir::new("hostile");
    let h = Hostile::start(d.path(), mode, SIZE, extended);
    // One nbdkit thread: nbdkit 1.32 can abort (connections.c:402
    // "raw_send_socket: Assertion `sock >= 0' failed") when a client's
    // NBD_CMD_DISC arrives while other worker threads still send replies,
    // which is what a copy failing mid-way legitimately does.
    let dst = nbdkit(&d, &["--threads=1", "memory", &(2 * SIZE).to_string()]);
    let fill = d.file("fill");
    write_file(&fill, &vec![0xEE; 2 * SIZE as usize]);
    fill_export(&dst.uri(), &fill);
    let t0 = Instant::now();
    let r = copy(
        &h.uri(),
        &dst.uri(),
        &[
            ("timeout", "2"),
            ("connections", "2"),
            ("request-size", "256k"),
            ("requests", "8"),
            ("splice", splice),
        ],
    );
    let took = t0.elapsed();
    assert!(
        dst.alive(),
        "{mode:?} ext={extended}: the destination server died ({r:?}): {}",
        dst.log()
    );
    let back = try_read_export(&dst.uri(), &d).unwrap_or_else(|e| {
        panic!(
            "{mode:?} ext={extended}: {e}\nalive: {}\nserver log:\n{}",
            dst.alive(),
            dst.log()
        )
    });
    assert!(
        back[SIZE as usize..].iter().all(|&b| b == 0xEE),
        "{mode:?}: destination changed outside the copied range"
    );
    (r, took)
}

#[test]
fn good_server_is_copied_exactly() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    for ext in [false, true] {
        for mode in [Mode::Good, Mode::SlowDrip, Mode::WriteError] {
            for splice in ["1", "0"] {
                let (r, _) = run_source(mode, ext, splice);
                r.unwrap_or_else(|e| panic!("{mode:?} ext={ext} splice={splice}: {e}"));
            }
        }
        let d = TempDir::new("good");
        let h = Hostile::start(d.path(), Mode::Good, SIZE, ext);
        let out = d.file("out");
        copy(&h.uri(), out.to_str().unwrap(), &[]).unwrap();
        let v = std::fs::read(&out).unwrap();
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64)),
            "content"
        );
    }
}

#[test]
fn every_misbehaving_source_fails_cleanly() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let mut table = Vec::new();
    for &mode in ALL_BAD {
        for (ext, splice) in [(false, "1"), (true, "1"), (false, "0"), (true, "0")] {
            let (r, took) = run_source(mode, ext, splice);
            let e = match r {
                Ok(_) => panic!("{mode:?} ext={ext} splice={splice}: the copy succeeded"),
                Err(e) => e,
            };
            assert!(e.errno != 0);
            assert!(took < Duration::from_secs(10), "{mode:?}: took {took:?}");
            assert!(!e.msg.is_empty());
            table.push(format!(
                "| {mode:?} | {} | {} | {} | {:.2} s | {} |",
                if ext { "ext" } else { "sr" },
                if splice == "1" { "splice" } else { "receive" },
                e.errno,
                took.as_secs_f64(),
                e.msg
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn specific_messages() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    for (mode, want) in [
        (Mode::GreetingGarbage, "not an NBD server"),
        (Mode::Oldstyle, "oldstyle"),
        (Mode::BadOptionMagic, "option reply magic"),
        (Mode::TruncatedHandshake, "closed"),
        (Mode::SizeChange, "negotiated differently"),
        (Mode::BadReplyMagic, "bad reply magic"),
        (Mode::UnknownCookie, "unknown cookie"),
        (Mode::DuplicateReply, "unknown cookie"),
        (Mode::ChunkOutside, "outside the request"),
        (Mode::OverlappingChunks, "overlaps"),
        (Mode::MissingChunk, "bytes received"),
        (Mode::ChunkTooLong, "more than"),
        (Mode::HugeLength4G, "more than"),
        (Mode::ZeroExtent, "length 0"),
        (Mode::WrongContext, "meta context 99"),
        (Mode::BogusErrorLen, "message length"),
        (Mode::Stall, "no I/O completed"),
        (Mode::CloseMidReply, "closed the connection"),
        (Mode::StallMidReply, "no I/O completed"),
        (Mode::ErrorChunk, "injected read error"),
        (Mode::NoDone, "no I/O completed"),
        (Mode::SimpleReplyToStructuredRead, "simple reply"),
    ] {
        for splice in ["1", "0"] {
            let (r, _) = run_source(mode, false, splice);
            let e = r.err().unwrap_or_else(|| panic!("{mode:?} succeeded"));
            assert!(e.msg.contains(want), "{mode:?} splice={splice}: {}", e.msg);
            assert!(
                e.msg.contains("source"),
                "{mode:?} splice={splice} names the endpoint: {}",
                e.msg
            );
            assert_eq!(
                e.side,
                side_of_error_at(Side::Source, &e.msg),
                "{mode:?} splice={splice}: {}",
                e.msg
            );
        }
    }
    let (r, _) = run_source(Mode::ErrorChunk, false, "1");
    let e = r.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.msg.contains("offset 2097152"), "{}", e.msg);
}

#[test]
fn hostile_destination() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("hdst");
    let src = d.file("src");
    write_file(&src, &pattern(SIZE as usize / 2, 3));
    // A destination that fails writes past 1 MiB: error naming the offset,
    // and every write nbdcpy sent was inside what it meant to copy.
    let h = Hostile::start(d.path(), Mode::WriteError, SIZE, false);
    let e = copy(src.to_str().unwrap(), &h.uri(), &[("connections", "1")]).unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.msg.contains("WRITE at offset"), "{}", e.msg);
    assert_eq!(e.side, Some(Side::Destination), "{}", e.msg);
    for &(o, l) in h.writes.lock().unwrap().iter() {
        assert!(
            o + l <= SIZE / 2,
            "write [{o}, +{l}) outside the source's range"
        );
    }
    // A destination that never answers: the timeout ends it.
    let h = Hostile::start(d.path(), Mode::Stall, SIZE, true);
    let t0 = Instant::now();
    let e = copy(src.to_str().unwrap(), &h.uri(), &[("timeout", "2")]).unwrap_err();
    assert_eq!(e.errno, libc::ETIMEDOUT, "{}", e.msg);
    let side = side_of_error_at(Side::Destination, &e.msg);
    assert_eq!(e.side, side, "{}", e.msg);
    assert!(t0.elapsed() < Duration::from_secs(8));
}

/// On the splice path, a destination that reads slowly while more is in
/// flight than the socket buffer holds: the socket fills.  With two
/// lanes on one worker, the rest of a payload is copied out of the pipe
/// and sent by the engine (the other lane goes on); a worker's only lane
/// waits for the socket instead (zero copies).  Every byte arrives in
/// order (the server checks each against the source's pattern).  Also
/// from a source that trickles its replies (the rest of a payload is
/// awaited through the engine).
#[test]
fn full_destination_socket_on_the_splice_path() {
    let d = TempDir::new("fullsock");
    // More than the 8 MiB a socket buffer holds (endpoint/nbd.rs asks for
    // 4 MiB, which the kernel doubles), but from SlowDrip, the slow end.
    let cases = [
        (Mode::Good, 32u64 << 20, "2"),
        (Mode::SlowDrip, 4 << 20, "2"),
        (Mode::Good, 16 << 20, "1"),
    ];
    for (src_mode, n, conns) in cases {
        let what = format!("{src_mode:?}, {conns} lane(s)");
        let src = Hostile::start(d.path(), src_mode, n, false);
        let dst = Hostile::start(d.path(), Mode::SlowReader, n, false);
        let s = copy(
            &src.uri(),
            &dst.uri(),
            &[
                ("splice", "1"),
                ("connections", conns),
                ("threads", "1"),
                ("requests", "32"),
                ("queue-size", "64M"),
            ],
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(s.copied, n);
        assert_eq!(dst.bad.load(std::sync::atomic::Ordering::Relaxed), 0);
        let mut w = dst.writes.lock().unwrap().clone();
        w.sort();
        let mut at = 0;
        for (o, l) in w {
            assert_eq!(o, at, "{what}: the writes tile the image");
            at += l;
        }
        assert_eq!(at, n);
        assert!(s.memcpy < n, "{what}: {} bytes copied in memory", s.memcpy);
        match (src_mode, conns) {
            (Mode::Good, "2") => assert!(s.memcpy > 0, "{what}: the full socket was never met"),
            (_, "1") => assert_eq!(s.memcpy, 0, "{what}: the only lane waits"),
            _ => {}
        }
    }
}

/// The side an error caused by a misbehaving `side` must report: that
/// side, but for the stall timeout of a whole worker, which names both
/// ends ("source S or destination D is not responding") and so neither.
fn side_of_error_at(side: Side, msg: &str) -> Option<Side> {
    (!msg.contains(" or destination ")).then_some(side)
}

/// Runs a copy and cancels it 300 ms in; returns its error and how long
/// after the cancel request it ended.  The job is closed on return.
fn copy_cancelled_after_300ms(
    src: &str,
    dst: &str,
    cfg: nbdcpy::Config,
) -> (nbdcpy::Error, Duration) {
    let mut job = nbdcpy::Job::open(
        nbdcpy::testing::Spec::parse(src),
        nbdcpy::testing::Spec::parse(dst),
        cfg,
    )
    .unwrap();
    let shared = job.shared().clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        shared.cancel();
        Instant::now()
    });
    let e = job
        .run(Duration::from_millis(100), &mut |_| true)
        .unwrap_err();
    let ended = Instant::now();
    let asked = canceller.join().unwrap();
    (e, ended - asked)
}

/// Cancelling a copy whose source never answers ends it promptly with
/// ECANCELED, and every connection (source and destination) is told
/// goodbye with NBD_CMD_DISC rather than just dropped: both while nbdcpy
/// still samples the source's extents before the copy (one connection per
/// side), and in the middle of the copy (no-extents: two lanes).
#[test]
fn cancel_sends_disc() {
    for (opts, want) in [(vec![], 1), (vec![("no-extents", "1")], 2)] {
        let d = TempDir::new("cancel-disc");
        let src = Hostile::start(d.path(), Mode::Stall, SIZE, true);
        // The destination offers FAST_ZERO, so with extents nbdcpy first
        // samples the source's extents (and stalls there).
        let dst_h = Hostile::start(d.path(), Mode::Good, SIZE, false);
        let mut cfg = common::config();
        cfg.set("connections", Some("2")).unwrap();
        for (k, v) in &opts {
            cfg.set(k, Some(v)).unwrap();
        }
        let (e, took) = copy_cancelled_after_300ms(&src.uri(), &dst_h.uri(), cfg);
        assert_eq!(e.errno, libc::ECANCELED, "{opts:?}: {}", e.msg);
        assert!(took < Duration::from_millis(100), "cancel took {took:?}");
        let n = |a: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
            a.load(std::sync::atomic::Ordering::Relaxed)
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while (n(&src.discs) < want || n(&dst_h.discs) < want) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (h, side) in [(&src, "source"), (&dst_h, "destination")] {
            assert_eq!(n(&h.conns), want, "{opts:?}: {side} connections");
            assert_eq!(
                n(&h.discs),
                want,
                "{opts:?}: DISC on each {side} connection"
            );
        }
        eprintln!("{opts:?}: cancel took {took:?}");
    }
}

/// Cancelling while a READ payload is half-way through the pipe (the
/// server stalls mid-reply) ends the copy promptly on both data paths.
#[test]
fn cancel_mid_payload() {
    if !require("nbdkit") {
        return;
    }
    for splice in ["1", "0"] {
        let d = TempDir::new("cancel-mid");
        let src = Hostile::start(d.path(), Mode::StallMidReply, SIZE, false);
        let dst = nbdkit(&d, &["--threads=1", "memory", &SIZE.to_string()]);
        let mut cfg = common::config();
        cfg.set("splice", Some(splice)).unwrap();
        cfg.set("no-extents", None).unwrap();
        let (e, took) = copy_cancelled_after_300ms(&src.uri(), &dst.uri(), cfg);
        assert_eq!(e.errno, libc::ECANCELED, "splice={splice}: {}", e.msg);
        assert!(
            took < Duration::from_millis(100),
            "splice={splice}: cancel took {took:?}"
        );
    }
}

/// A FLUSH or WRITE_ZEROES that takes longer than "timeout" is not a
/// stalled server: by default only "slow-timeout" (none) bounds it, as
/// nbdcopy has no limit at all; a silent server is still caught while
/// reads and writes are outstanding (hostile_destination above).
#[test]
fn slow_flush_and_zeroes_are_not_stalls() {
    let d = TempDir::new("slow-ops");
    // Data, written zeroes (zero detection sends WRITE_ZEROES), data.
    let mut v = pattern(SIZE as usize, 11);
    v[(2 << 20)..(3 << 20)].fill(0);
    let zeroes = d.file("zeroes");
    write_file(&zeroes, &v);
    // 1 MiB of data, then a hole: mostly holes, so the destination is
    // zeroed up front (a WRITE_ZEROES with FAST_ZERO) and then per range.
    let holes = d.file("holes");
    write_file(&holes, &v[..1 << 20]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&holes)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    for splice in ["0", "1"] {
        for (mode, src, flush) in [
            (Mode::SlowFlush, &zeroes, "1"),
            (Mode::SlowZero, &zeroes, "0"),
            (Mode::SlowZero, &holes, "0"),
        ] {
            let h = Hostile::start(d.path(), mode, SIZE, false);
            let t0 = Instant::now();
            let r = copy(
                src.to_str().unwrap(),
                &h.uri(),
                &[("timeout", "1"), ("flush", flush), ("splice", splice)],
            );
            let what = format!("{mode:?} {} splice={splice}", src.display());
            assert!(r.is_ok(), "{what}: {r:?}");
            assert!(t0.elapsed() >= SLOW_OP, "{what}: the slow request was sent");
            // The limit for them can still be set.
            let h = Hostile::start(d.path(), mode, SIZE, false);
            let e = copy(
                src.to_str().unwrap(),
                &h.uri(),
                &[
                    ("timeout", "1"),
                    ("slow-timeout", "1"),
                    ("flush", flush),
                    ("splice", splice),
                ],
            )
            .unwrap_err();
            assert_eq!(e.errno, libc::ETIMEDOUT, "{what}: {}", e.msg);
        }
    }
}
