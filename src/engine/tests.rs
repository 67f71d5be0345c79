// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Both engines' behaviour without a server: completions, waits, short I/O, cancel.

use super::buf::{AlignedBuf, Span};
use super::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Each engine this machine can run (io_uring may be refused here, but
/// not under NBDCPY_REQUIRE_SERVERS).
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

/// Waits up to 5 s for `n` completions.
fn collect(e: &mut Engine, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let t = Instant::now();
    while out.len() < n && t.elapsed() < Duration::from_secs(5) {
        e.wait(Duration::from_millis(50)).unwrap();
        e.reap(&mut out);
    }
    out
}

#[test]
fn nops_complete_with_their_user_data() {
    for mut e in engines() {
        for i in 0..20u64 {
            e.push(Op::Nop, i).unwrap();
        }
        let mut got = collect(&mut e, 20);
        got.sort_by_key(|c| c.user_data);
        assert_eq!(got.len(), 20, "{:?}", e.kind());
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, c)| c.user_data == i as u64 && c.res == 0));
        assert_eq!(e.in_flight(), 0);
    }
}

#[test]
fn receive_waits_for_data_then_completes() {
    for mut e in engines() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let buf = AlignedBuf::shared(64);
        let reg0 = e.register(a.as_raw_fd()).unwrap();
        e.push(
            Op::Recv {
                fd: reg0,
                buf: buf.clone(),
                at: 8,
                len: 16,
            },
            7,
        )
        .unwrap();
        // Nothing there yet: a bounded wait gives nothing.
        let t = Instant::now();
        e.wait(Duration::from_millis(30)).unwrap();
        let mut out = Vec::new();
        e.reap(&mut out);
        assert!(out.is_empty(), "{:?}: nothing to receive yet", e.kind());
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "the wait was bounded, not skipped"
        );
        b.write_all(b"hello").unwrap();
        let got = collect(&mut e, 1);
        assert_eq!(
            got,
            vec![Completion {
                user_data: 7,
                res: 5
            }]
        );
        assert_eq!(&buf.as_slice()[8..13], b"hello");
        // The peer hangs up: a receive completes with 0.
        drop(b);
        let reg1 = e.register(a.as_raw_fd()).unwrap();
        e.push(
            Op::Recv {
                fd: reg1,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            8,
        )
        .unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 8,
                res: 0
            }]
        );
    }
}

#[test]
fn batch_send_of_more_than_the_socket_takes_completes_short_or_whole() {
    for mut e in engines() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let payload = AlignedBuf::shared(4 << 20);
        let chunks = vec![
            Chunk::new(b"HEAD", None),
            Chunk::new(b"HDR2", Some(Span::of_buf(&payload, 64, (4 << 20) - 64))),
        ];
        let total: usize = chunks.iter().map(Chunk::len).sum();
        let batch = Arc::new(chunks);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        let mut sent = 0;
        let reg2 = e.register(a.as_raw_fd()).unwrap();
        while sent < total {
            e.push(
                Op::SendBatch {
                    fd: reg2,
                    batch: batch.clone(),
                    skip: sent,
                },
                1,
            )
            .unwrap();
            let c = collect(&mut e, 1);
            assert_eq!(c.len(), 1);
            assert!(c[0].res > 0, "{:?}: {:?}", e.kind(), c);
            sent += c[0].res as usize;
        }
        assert_eq!(sent, total);
        // The engine's duplicate would keep the socket open.
        e.unregister(reg2).unwrap();
        drop(a);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), total);
        assert_eq!(&all[..8], b"HEADHDR2");
        // The engine gave its shares back: the batch is ours alone.
        assert_eq!(Arc::strong_count(&batch), 1);
    }
}

#[test]
fn file_reads_are_short_at_the_end_and_writes_land() {
    for mut e in engines() {
        let dir = std::env::temp_dir().join(format!("nbdcpy-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f-{:?}", e.kind()));
        let f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let src = AlignedBuf::shared(4096);
        // SAFETY-free setup through a unique handle.
        let mut src_mut = src;
        Arc::get_mut(&mut src_mut).unwrap().as_mut_slice()[..5].copy_from_slice(b"abcde");
        let data = Span::with_room(&src_mut, 0, 5, 0);
        let reg3 = e.register(f.as_raw_fd()).unwrap();
        e.push(
            Op::Write {
                fd: reg3,
                data,
                offset: Some(10),
            },
            1,
        )
        .unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 1,
                res: 5
            }]
        );
        let dst = AlignedBuf::shared(64);
        let reg4 = e.register(f.as_raw_fd()).unwrap();
        e.push(
            Op::Read {
                fd: reg4,
                buf: dst.clone(),
                at: 0,
                len: 64,
                offset: Some(8),
            },
            2,
        )
        .unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 2,
                res: 7
            }]
        );
        assert_eq!(&dst.as_slice()[..7], b"\0\0abcde");
        let reg5 = e.register(f.as_raw_fd()).unwrap();
        e.push(Op::Fsync { fd: reg5 }, 3).unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 3,
                res: 0
            }]
        );
        // A bad descriptor is an error result, not a failure to push.
        e.push(
            Op::Read {
                fd: Fd::NONE,
                buf: dst.clone(),
                at: 0,
                len: 8,
                offset: Some(0),
            },
            4,
        )
        .unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 4,
                res: -libc::EBADF
            }]
        );
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn stream_reads_wait_for_a_pipe() {
    for mut e in engines() {
        let (r, w) = crate::sys::pipe_with(libc::O_CLOEXEC).unwrap();
        let buf = AlignedBuf::shared(64);
        let reg6 = e.register(r.as_raw_fd()).unwrap();
        e.push(
            Op::Read {
                fd: reg6,
                buf: buf.clone(),
                at: 0,
                len: 64,
                offset: None,
            },
            5,
        )
        .unwrap();
        e.wait(Duration::from_millis(20)).unwrap();
        let mut out = Vec::new();
        e.reap(&mut out);
        assert!(
            out.is_empty(),
            "{:?}: an empty pipe does not block the loop",
            e.kind()
        );
        crate::sys::write(w.as_raw_fd(), b"xyz").unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 5,
                res: 3
            }]
        );
        assert_eq!(&buf.as_slice()[..3], b"xyz");
    }
}

#[test]
fn drain_cancels_a_blocked_receive_and_returns_the_buffer() {
    let mut list = engines();
    if let Ok(e) = uring::UringEngine::new(8) {
        list.push(Engine::Uring(e.without_cancel_any()));
    }
    for mut e in list {
        let (a, _b) = UnixStream::pair().unwrap();
        let buf = AlignedBuf::shared(16);
        let reg7 = e.register(a.as_raw_fd()).unwrap();
        e.push(
            Op::Recv {
                fd: reg7,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            9,
        )
        .unwrap();
        e.wait(Duration::from_millis(10)).unwrap();
        let mut seen = Vec::new();
        let t = Instant::now();
        assert!(e.drain(Duration::from_secs(5), &mut |c| seen.push(c)));
        assert_eq!(
            seen,
            vec![Completion {
                user_data: 9,
                res: -libc::ECANCELED
            }]
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "cancelled, not timed out"
        );
        assert_eq!(
            Arc::strong_count(&buf),
            1,
            "the engine let go of the buffer"
        );
    }
}

#[test]
fn an_engine_dropped_with_operations_in_flight_keeps_their_buffers_alive() {
    for mut e in engines() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let buf = AlignedBuf::shared(16);
        let reg8 = e.register(a.as_raw_fd()).unwrap();
        e.push(
            Op::Recv {
                fd: reg8,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            1,
        )
        .unwrap();
        e.wait(Duration::from_millis(5)).unwrap();
        // The engine holds a share while the receive is in flight.
        assert_eq!(Arc::strong_count(&buf), 2);
        drop(e); // cancels and waits
        assert_eq!(Arc::strong_count(&buf), 1);
        b.write_all(b"late").unwrap();
    }
}

#[test]
fn auto_is_a_probe() {
    let c = Choice::decide(EngineChoice::Auto).unwrap();
    let forced = Choice::decide(EngineChoice::IoUring);
    assert_eq!(c.kind == EngineKind::IoUring, forced.is_ok());
    assert!(c.describe().starts_with("engine: "));
    let ep = Choice::decide(EngineChoice::Epoll).unwrap();
    assert_eq!(ep.kind, EngineKind::Epoll);
}

#[test]
fn poll_completes_when_the_socket_is_ready_with_its_events() {
    for mut e in engines() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let fd = e.register(a.as_raw_fd()).unwrap();
        let (pin, pout) = (libc::POLLIN as u32, libc::POLLOUT as u32);
        e.push(Op::Poll { fd, events: pin }, 1).unwrap();
        e.wait(Duration::from_millis(30)).unwrap();
        let mut out = Vec::new();
        e.reap(&mut out);
        assert!(out.is_empty(), "{:?}: not readable yet", e.kind());
        b.write_all(b"x").unwrap();
        let got = collect(&mut e, 1);
        assert_eq!(got.len(), 1, "{:?}", e.kind());
        assert_eq!(got[0].user_data, 1);
        assert!(
            got[0].res as u32 & pin != 0,
            "{:?}: {}",
            e.kind(),
            got[0].res
        );
        // Writable at once.
        e.push(Op::Poll { fd, events: pout }, 2).unwrap();
        let got = collect(&mut e, 1);
        assert!(
            got.len() == 1 && got[0].res as u32 & pout != 0,
            "{:?}",
            e.kind()
        );
        // A poll in flight is handed back as cancelled by a drain.
        let mut x = [0u8; 1];
        (&a).read_exact(&mut x).unwrap();
        e.push(Op::Poll { fd, events: pin }, 3).unwrap();
        let mut drained = Vec::new();
        assert!(e.drain(Duration::from_secs(2), &mut |c| drained.push(c)));
        assert_eq!(drained.len(), 1, "{:?}", e.kind());
        assert_eq!(drained[0].user_data, 3);
        assert_eq!(e.in_flight(), 0);
    }
}

/// A socket pair one of whose ends has the number `want` (the pairs
/// made on the way are kept open in `keep`, so the lowest free numbers
/// move up to it).
fn pair_at(want: i32, keep: &mut Vec<UnixStream>) -> Option<(UnixStream, UnixStream)> {
    for _ in 0..256 {
        let (x, y) = UnixStream::pair().unwrap();
        if x.as_raw_fd() == want {
            return Some((x, y));
        }
        if y.as_raw_fd() == want {
            return Some((y, x));
        }
        keep.push(x);
        keep.push(y);
    }
    None
}

#[test]
fn a_closed_and_reused_number_never_reaches_an_operation() {
    for mut e in engines() {
        let k = e.kind();
        let mut keep = Vec::new();
        // The caller closes its socket while a receive waits: the engine's
        // duplicate keeps the socket (and its number) for the operation,
        // so a socket that takes the caller's number is not read.
        let (a, mut pa) = UnixStream::pair().unwrap();
        let a_num = a.as_raw_fd();
        let ta = e.register(a_num).unwrap();
        let buf = AlignedBuf::shared(16);
        e.push(
            Op::Recv {
                fd: ta,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            1,
        )
        .unwrap();
        e.wait(Duration::from_millis(10)).unwrap();
        drop(a);
        let (b, mut pb) = pair_at(a_num, &mut keep).expect("number reused");
        pb.write_all(b"BBBB").unwrap();
        e.wait(Duration::from_millis(30)).unwrap();
        let mut out = Vec::new();
        e.reap(&mut out);
        assert!(out.is_empty(), "{k:?}: {out:?}");
        pa.write_all(b"AAAA").unwrap();
        assert_eq!(
            collect(&mut e, 1),
            vec![Completion {
                user_data: 1,
                res: 4
            }],
            "{k:?}"
        );
        assert_eq!(&buf.as_slice()[..4], b"AAAA", "{k:?}");
        drop((b, pb));

        // Unregistered while a receive waits: the receive is cancelled,
        // and once the engine's own number is reused by another socket
        // with data, the old token reaches nothing.
        let buf = AlignedBuf::shared(16);
        e.push(
            Op::Recv {
                fd: ta,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            2,
        )
        .unwrap();
        e.wait(Duration::from_millis(10)).unwrap();
        let old = e.raw_fd(ta).unwrap();
        e.unregister(ta).unwrap();
        assert_eq!(e.raw_fd(ta), None);
        let got = collect(&mut e, 1);
        assert_eq!(got.len(), 1, "{k:?}");
        assert_eq!(got[0].user_data, 2);
        assert_eq!(got[0].res, -libc::ECANCELED, "{k:?}");
        assert_eq!(e.in_flight(), 0, "{k:?}");
        let (b, mut pb) = pair_at(old, &mut keep).expect("number reused");
        pb.write_all(b"BBBB").unwrap();
        e.push(
            Op::Recv {
                fd: ta,
                buf: buf.clone(),
                at: 0,
                len: 16,
            },
            3,
        )
        .unwrap();
        e.push(
            Op::Poll {
                fd: ta,
                events: libc::POLLIN as u32,
            },
            4,
        )
        .unwrap();
        let mut got = collect(&mut e, 2);
        got.sort_by_key(|c| c.user_data);
        assert_eq!(
            got,
            vec![
                Completion {
                    user_data: 3,
                    res: -libc::EBADF
                },
                Completion {
                    user_data: 4,
                    res: -libc::EBADF
                }
            ],
            "{k:?}"
        );
        assert_eq!(&buf.as_slice()[..4], &[0u8; 4], "{k:?}");
        // B's data is still B's.
        let mut x = [0u8; 4];
        (&b).read_exact(&mut x).unwrap();
        assert_eq!(&x, b"BBBB");
        // A registration is this engine's alone: another engine's token
        // with the same slot is refused.
        let tb = e.register(b.as_raw_fd()).unwrap();
        let mut other = Engine::new(EngineKind::Epoll, 8).unwrap();
        let _ = other.register(b.as_raw_fd()).unwrap();
        other
            .push(
                Op::Poll {
                    fd: tb,
                    events: libc::POLLOUT as u32,
                },
                5,
            )
            .unwrap();
        assert_eq!(
            collect(&mut other, 1),
            vec![Completion {
                user_data: 5,
                res: -libc::EBADF
            }]
        );
        e.unregister(tb).unwrap();
    }
}
