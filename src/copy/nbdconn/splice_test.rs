// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Splice mode against a scripted server on both engines: a stale readiness report is waited out.
//
// A readiness report is a hint: under load io_uring delivered POLLIN for
// a socket whose queue was empty by the time the payload was spliced
// (seen in CI: "cannot move READ data into an empty pipe").  Here the
// report is made stale on purpose: the server sends one byte, the engine
// reports the socket readable, and the test takes the byte away before
// the connection sees the report.

use super::*;
use crate::copy::splice::{self, Pipe, WaitLimits};
use crate::copy::stats::Shared;
use crate::engine::{Completion, EngineKind};
use crate::proto::test_negotiated;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEN: usize = 64 << 10;

/// Both engines; io_uring may be refused here, but not under
/// NBDCPY_REQUIRE_SERVERS.
fn engines() -> Vec<Engine> {
    let mut v = vec![Engine::new(EngineKind::Epoll, 16).unwrap()];
    match Engine::new(EngineKind::IoUring, 16) {
        Ok(e) => v.push(e),
        // CI (NBDCPY_REQUIRE_SERVERS) tests both engines or fails: a
        // ring that cannot be made must not quietly halve the tests.
        Err(e) if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() => {
            panic!("io_uring is required (NBDCPY_REQUIRE_SERVERS is set): {e}")
        }
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    v
}

/// Completions of `e` until `n` arrived or 5 s passed.
fn completions(e: &mut Engine, n: usize) -> Vec<Completion> {
    let (mut out, t) = (Vec::new(), Instant::now());
    while out.len() < n && t.elapsed() < Duration::from_secs(5) {
        e.wait(Duration::from_millis(20)).unwrap();
        e.reap(&mut out);
    }
    out
}

/// The source side: the connection, the pipe its payloads go to, and
/// what the "worker" took out of the pipe.
struct Source {
    conn: NbdConn,
    pipe: Pipe,
    ctl: WaitLimits,
    got: Vec<u8>,
    read_done: bool,
}

impl Source {
    /// Hands completion `c` to the connection and handles its events as
    /// a worker would (drain the pipe, resume).
    fn deliver(&mut self, e: &mut Engine, c: Completion) -> Result<()> {
        let mut events = Vec::new();
        self.conn.complete(e, 0, c.user_data, c.res, &mut events)?;
        loop {
            for ev in events.drain(..) {
                match ev {
                    ConnEvent::PipeData { len, .. } => {
                        let mut buf = vec![0u8; len as usize];
                        splice::read_pipe(self.pipe.r.as_raw_fd(), &mut buf, &self.ctl).unwrap();
                        self.got.extend_from_slice(&buf);
                    }
                    ConnEvent::ReadDone { slot: 0 } => self.read_done = true,
                    _ => {}
                }
            }
            if !self.conn.wants_resume() {
                return Ok(());
            }
            self.conn.resume(e, 0, &mut events)?;
        }
    }

    fn polling(&self) -> bool {
        self.conn.splice.as_ref().is_some_and(|s| s.polling)
    }
}

#[test]
fn a_stale_readiness_report_is_waited_out_not_an_error() {
    for mut e in engines() {
        let kind = e.kind();
        let (ours, mut srv) = UnixStream::pair().unwrap();
        let info = test_negotiated(HeaderMode::Structured);
        let conn = NbdConn::new(
            ours.as_raw_fd(),
            "source test".into(),
            Side::Source,
            info,
            LEN as u64,
            false,
        );
        let pipe = Pipe::new(64 << 10, 1 << 20).unwrap();
        let ctl = WaitLimits {
            shared: Arc::new(Shared::default()),
            timeout: Some(Duration::from_secs(5)),
            slow_timeout: Some(Duration::from_secs(5)),
        };
        let mut src = Source {
            conn,
            pipe,
            ctl: ctl.clone(),
            got: Vec::new(),
            read_done: false,
        };
        src.conn
            .set_splice_source(src.pipe.w.as_raw_fd(), src.pipe.cap, ctl);
        src.conn.queue_read(0, 0, LEN as u64).unwrap();
        src.conn.kick(&mut e, 0).unwrap();
        src.conn.start(&mut e, 0).unwrap();
        // The request goes out when the engine runs.
        let sent = completions(&mut e, 1);
        assert_eq!(sent.len(), 1, "{kind:?}: the READ was sent");
        src.deliver(&mut e, sent[0]).unwrap();

        // The server reads the READ and answers with the chunk's prefix.
        let mut req = [0u8; 28];
        srv.read_exact(&mut req).unwrap();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(&consts::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        prefix.extend_from_slice(&consts::NBD_REPLY_FLAG_DONE.to_be_bytes());
        prefix.extend_from_slice(&consts::NBD_REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        prefix.extend_from_slice(&req[8..16]); // the cookie
        prefix.extend_from_slice(&(8 + LEN as u32).to_be_bytes());
        prefix.extend_from_slice(&0u64.to_be_bytes());
        srv.write_all(&prefix).unwrap();

        // The send and the receive of the prefix complete; the payload is
        // not there, so the connection waits for it with a poll.
        let t = Instant::now();
        while !src.polling() && t.elapsed() < Duration::from_secs(5) {
            for c in completions(&mut e, 1) {
                src.deliver(&mut e, c).unwrap();
            }
        }
        assert!(src.polling(), "{kind:?}: waiting for the payload");

        // One byte makes the socket readable; it is gone again before the
        // connection hears of it.
        srv.write_all(&[0xa5]).unwrap();
        let c = completions(&mut e, 1);
        assert_eq!(c.len(), 1, "{kind:?}: the poll reports");
        assert!(c[0].res > 0, "{kind:?}: readable: {}", c[0].res);
        let mut stolen = [0u8; 1];
        (&ours).read_exact(&mut stolen).unwrap();
        src.deliver(&mut e, c[0])
            .unwrap_or_else(|err| panic!("{kind:?}: stale report: {err}"));
        assert!(src.got.is_empty(), "{kind:?}");
        assert!(src.polling(), "{kind:?}: waiting again");

        // The payload arrives: all of it goes through the pipe, the READ
        // completes.
        let payload: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 4096) as u8).collect();
        srv.write_all(&payload).unwrap();
        let t = Instant::now();
        while !src.read_done && t.elapsed() < Duration::from_secs(5) {
            for c in completions(&mut e, 1) {
                src.deliver(&mut e, c).unwrap();
            }
        }
        assert!(src.read_done, "{kind:?}: the READ completed");
        assert!(
            src.got == payload,
            "{kind:?}: the payload came through the pipe"
        );
        let mut rest = Vec::new();
        e.drain(Duration::from_secs(5), &mut |c| rest.push(c));
    }
}
