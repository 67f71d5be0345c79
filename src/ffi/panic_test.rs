// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A worker panicking mid-copy (fault injection): an error from nbdcpy_run, no freed buffer in use, the process fine.
//
// Run by `cargo test` on both engines, and under valgrind by `make
// check-valgrind` (which runs this test binary with only this test): a
// panic unwinds through the worker while reads are in flight; the
// engine's Drop must cancel and wait for them (or leak) before anything
// they use is freed.

use super::*;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;

struct Server(Child, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// An nbdkit pattern export (reads take a little while) on a fresh socket.
fn nbdkit_pattern(tag: &str) -> Option<(Server, String)> {
    let dir = std::env::temp_dir().join(format!("nbdcpy-panic-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let sock = dir.join("sock");
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(&sock)
        .args(["--filter=delay", "pattern", "256M", "rdelay=1ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
            panic!("nbdkit is required (NBDCPY_REQUIRE_SERVERS is set)");
        }
        eprintln!("SKIP: nbdkit not installed");
        return None;
    };
    let server = Server(child, dir);
    for _ in 0..500 {
        // Listening, not only bound: a probe connection gets through.
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            let uri = format!("nbd+unix:///?socket={}", sock.display());
            return Some((server, uri));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("nbdkit did not start");
}

/// nbdcpy_open + nbdcpy_run of `src` to null: on `engine`, with a worker
/// panic at the `panic_at`th completion (0: none); nbdcpy_run's result.
fn run(src: &str, engine: &str, panic_at: u64) -> (c_int, c_int, String) {
    let cfg = nbdcpy_config_new();
    let set = |k: &std::ffi::CStr, v: &std::ffi::CStr| {
        // SAFETY: a live config and NUL-terminated strings.
        assert_eq!(unsafe { nbdcpy_config_set(cfg, k.as_ptr(), v.as_ptr()) }, 0);
    };
    let eng = std::ffi::CString::new(engine).unwrap();
    set(c"engine", &eng);
    set(c"connections", c"2");
    set(c"threads", c"2");
    set(c"requests", c"16");
    set(c"request-size", c"64k");
    let s = std::ffi::CString::new(src).unwrap();
    // SAFETY: NUL-terminated strings and a live config.
    let h = unsafe { nbdcpy_open(s.as_ptr(), c"null:".as_ptr(), cfg) };
    nbdcpy_config_free(cfg);
    assert!(!h.is_null(), "open: {:?}", last_error());
    if panic_at > 0 {
        let g = handle(h).unwrap();
        g.shared.panic_at_completion.store(panic_at, Relaxed);
    }
    let r = nbdcpy_run(h);
    let (errno, msg) = (nbdcpy_get_errno(), last_error());
    nbdcpy_close(h);
    (r, errno, msg)
}

fn last_error() -> String {
    let p = nbdcpy_get_error();
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated message owned by the library.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn a_worker_panic_mid_copy_is_an_error_and_the_next_copy_works() {
    let mut engines = vec!["epoll"];
    if crate::engine::io_uring_available() {
        engines.push("io_uring");
    }
    for engine in engines {
        // A fresh server per copy: nbdkit 1.32 itself may abort when a
        // client goes away with replies pending (raw_send_socket's
        // assertion), which is not what this test is about.
        let Some((_server, uri)) = nbdkit_pattern(&format!("{engine}-1")) else {
            return;
        };
        // Panic after some reads completed, with many more in flight.
        let (r, errno, msg) = run(&uri, engine, 40);
        assert_eq!(r, -1, "{engine}: the run must fail");
        assert_eq!(errno, libc::EIO, "{engine}: {msg}");
        assert!(msg.contains("panicked"), "{engine}: {msg}");
        // The process (and the library) is fine: a next copy succeeds.
        let Some((_server, uri)) = nbdkit_pattern(&format!("{engine}-2")) else {
            return;
        };
        let (r, errno, msg) = run(&uri, engine, 0);
        assert_eq!(r, 0, "{engine}: next copy: errno {errno}: {msg}");
    }
}
