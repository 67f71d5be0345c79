// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A negotiation nbdcpy gives up ends with NBD_OPT_ABORT: a scripted
//! server that refuses the export, or never answers (until a timeout or a
//! cancel), sees the abort as the client's last option; nbdkit's own log
//! says so.

use crate::common;

use common::TempDir;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

/// What the scripted server does with the options it is sent.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Every option unsupported but GO, which gets ERR_UNKNOWN.
    NoSuchExport,
    /// Never answers the first option.
    Silent,
}

fn reply(s: &mut impl Write, opt: u32, ty: u32, data: &[u8]) {
    let mut b = REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend(opt.to_be_bytes());
    b.extend(ty.to_be_bytes());
    b.extend((data.len() as u32).to_be_bytes());
    b.extend(data);
    s.write_all(&b).unwrap();
}

/// Serves one client by `script`; returns the options it was sent, in
/// order, and whether the client then closed the connection.
fn serve_one(l: &UnixListener, script: Script) -> (Vec<u32>, bool) {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = b"NBDMAGIC".to_vec();
    g.extend(IHAVEOPT.to_be_bytes());
    g.extend(3u16.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    s.write_all(&g).unwrap();
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).unwrap();
    let mut opts = Vec::new();
    loop {
        let mut h = [0u8; 16];
        if s.read_exact(&mut h).is_err() {
            return (opts, true);
        }
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), IHAVEOPT);
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        opts.push(opt);
        match (script, opt) {
            (_, OPT_ABORT) => {
                reply(&mut s, OPT_ABORT, REP_ACK, &[]);
                let mut rest = Vec::new();
                let closed = s.read_to_end(&mut rest).is_ok() && rest.is_empty();
                return (opts, closed);
            }
            (Script::Silent, _) => {}
            (Script::NoSuchExport, OPT_GO) => {
                reply(&mut s, opt, REP_ERR_UNKNOWN, b"no such export")
            }
            (Script::NoSuchExport, _) => reply(&mut s, opt, REP_ERR_UNSUP, &[]),
        }
    }
}

fn scripted(script: Script, opts: &[(&str, &str)]) -> (String, Vec<u32>, bool, Duration) {
    let d = TempDir::new("opt-abort");
    let sock = d.file("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || serve_one(&l, script));
    let uri = format!("nbd+unix:///nosuch?socket={}", sock.display());
    let t0 = Instant::now();
    let e = common::copy(&uri, "null:", opts).expect_err("the copy must fail");
    let took = t0.elapsed();
    let (seen, closed) = server.join().unwrap();
    (e.to_string(), seen, closed, took)
}

#[test]
fn a_refused_export_ends_with_opt_abort() {
    let (e, seen, closed, _) = scripted(Script::NoSuchExport, &[]);
    assert!(e.contains("no such export"), "{e}");
    assert_eq!(seen.last(), Some(&OPT_ABORT), "options sent: {seen:?}");
    assert_eq!(seen.iter().filter(|&&o| o == OPT_ABORT).count(), 1);
    assert!(seen.contains(&OPT_GO), "{seen:?}");
    assert!(closed, "the client closes after the abort");
}

#[test]
fn a_negotiation_timed_out_ends_with_opt_abort() {
    let (e, seen, closed, took) = scripted(Script::Silent, &[("timeout", "1")]);
    assert!(e.contains("did not answer"), "{e}");
    assert_eq!(seen.len(), 2, "the first option, then the abort: {seen:?}");
    assert_eq!(seen[1], OPT_ABORT);
    assert!(closed);
    // The abort's bounded wait adds little to the timeout.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_negotiation_cancelled_ends_with_opt_abort() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = TempDir::new("opt-abort-int");
    let sock = d.file("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || serve_one(&l, Script::Silent));
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let c = common::nbdcpy_cmd()
        .args(["--timeout=0", &uri, "null:"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130));
    let (seen, closed) = server.join().unwrap();
    assert_eq!(seen.last(), Some(&OPT_ABORT), "{seen:?}");
    assert!(closed);
}

/// nbdkit -v logs the options it gets: a refused export name is followed
/// by the client's NBD_OPT_ABORT.
#[test]
fn nbdkit_sees_the_abort() {
    if !common::require("nbdkit") {
        return;
    }
    let d = TempDir::new("opt-abort-nbdkit");
    let srv = common::nbdkit(
        &d,
        &[
            "-v",
            "--filter=exportname",
            "memory",
            "1M",
            "exportname-strict=true",
            "exportname=good",
        ],
    );
    let uri = format!("nbd+unix:///bad?socket={}", srv.socket().display());
    let e = common::copy(&uri, "null:", &[]).expect_err("bad export");
    assert!(e.to_string().contains("bad"), "{e}");
    // nbdkit logs as it goes: give it a moment to write the last line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = srv.log();
    while !log.contains("NBD_OPT_ABORT") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log = srv.log();
    }
    assert!(log.contains("NBD_OPT_ABORT"), "{log}");
}
