// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Opening is bounded: a server that accepts and never answers makes the
//! command fail within --timeout, and Ctrl-C ends a connect that would
//! wait forever; a server subprocess that never answers is reaped.

use crate::common;

use common::TempDir;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn silent_server_times_out() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = TempDir::new("open-timeout");
    let sock = d.file("silent.sock");
    let _l = UnixListener::bind(&sock).unwrap(); // never accepts
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    for (src, dst, side) in [
        (uri.as_str(), "null:", "source"),
        ("-", uri.as_str(), "destination"),
    ] {
        let t0 = Instant::now();
        let o = common::nbdcpy_cmd()
            .args(["--timeout=2", "--json=1", src, dst])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("did not answer within 2 seconds"), "{err}");
        assert!(
            err.contains(&format!("nbdcpy: {side} nbd+unix://")),
            "{err}"
        );
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("\"errno_name\": \"ETIMEDOUT\""), "{out}");
        assert!(out.contains(&format!("\"endpoint\": \"{side}\"")), "{out}");
    }
}

#[test]
fn interrupt_ends_a_hanging_connect() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = TempDir::new("open-int");
    let sock = d.file("silent.sock");
    let l = UnixListener::bind(&sock).unwrap();
    l.set_nonblocking(true).unwrap();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let mut c = common::nbdcpy_cmd()
        .args(["--timeout=0", &uri, "null:"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command has connected (and waits for a greeting that never comes).
    let mut conn = None;
    let came = common::poll_until(Duration::from_secs(10), || {
        conn = l.accept().ok();
        conn.is_some()
    });
    assert!(came, "the command did not connect");
    assert!(
        c.try_wait().unwrap().is_none(),
        "no answer: still connecting"
    );
    let t0 = Instant::now();
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let o = c.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cancelled"));
}

#[test]
fn silent_subprocess_is_reaped() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = TempDir::new("open-sub");
    let marker = d.file("alive");
    // A "server" that takes the socket and never speaks; it exists while
    // its marker file does.
    let script = format!(
        "touch {m}; trap 'rm -f {m}; exit 0' TERM; while :; do sleep 0.1; done",
        m = marker.display()
    );
    let t0 = Instant::now();
    let o = common::nbdcpy_cmd()
        .args(["--timeout=1", "--", "[", "sh", "-c", &script, "]", "null:"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not answer within 1 second "));
    let gone = common::poll_until(Duration::from_secs(5), || !marker.exists());
    assert!(gone, "the server subprocess is still running");
}
