// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Probe: forwarding a TCP loopback stream with io_uring: plain RECV+SEND,
//! SEND_ZC from registered buffers, multishot RECV into a provided buffer
//! ring, and the ring with or without SINGLE_ISSUER|DEFER_TASKRUN.
//!
//!   cargo run --release --example uring-send-probe -- MODE [GiB] [KiB]
//!   MODE: plain | plain-nodefer | zc | pbuf
//!
//! A child process sends GiB gibibytes into one TCP connection, another
//! receives and discards from a second; this process forwards between them
//! and prints its own CPU seconds per GiB (user+sys, children excluded).
//! The bytes are never inspected, so the order in which slots complete
//! does not matter here.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

const SLOTS: usize = 8;

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn child(role: &str, port: u16, bytes: u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let mut buf = vec![0x5au8; 1 << 20];
    if role == "source" {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).expect("source write");
            left -= n as u64;
        }
    } else {
        while s.read(&mut buf).expect("sink read") > 0 {}
    }
}

enum Ud {
    Recv(usize),
    Send(usize),
}
fn ud(u: Ud) -> u64 {
    match u {
        Ud::Recv(i) => i as u64,
        Ud::Send(i) => (1 << 32) | i as u64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && (args[1] == "source" || args[1] == "sink") {
        child(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    let mode = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("plain")
        .to_string();
    let gib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let slot: usize = args
        .get(3)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(256)
        << 10;
    let bytes = gib << 30;

    let lsrc = TcpListener::bind("127.0.0.1:0").unwrap();
    let ldst = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = std::env::current_exe().unwrap();
    let spawn = |role: &str, port: u16| {
        Command::new(&me)
            .args([role, &port.to_string(), &bytes.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut sink = spawn("sink", ldst.local_addr().unwrap().port());
    let dst = ldst.accept().unwrap().0;
    let mut source = spawn("source", lsrc.local_addr().unwrap().port());
    let src = lsrc.accept().unwrap().0;
    src.set_nodelay(true).ok();
    dst.set_nodelay(true).ok();

    let mut b = IoUring::builder();
    if mode != "plain-nodefer" {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring: IoUring = b.setup_cqsize(256).build(64).unwrap();
    let mut mem = vec![0u8; SLOTS * slot];
    let base = mem.as_mut_ptr();
    let (sfd, dfd) = (types::Fd(src.as_raw_fd()), types::Fd(dst.as_raw_fd()));

    if mode == "zc" {
        let iov = libc::iovec {
            iov_base: base as *mut _,
            iov_len: mem.len(),
        };
        // SAFETY: mem outlives the ring (dropped after it, below).
        unsafe { ring.submitter().register_buffers(&[iov]).unwrap() };
    }
    // Provided buffer ring: SLOTS entries, page-aligned ring memory.
    let ring_mem = if mode == "pbuf" {
        let layout = std::alloc::Layout::from_size_align(SLOTS * 16, 4096).unwrap();
        // SAFETY: non-zero size layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: p is page-aligned memory for SLOTS entries that outlives
        // the registration (leaked until exit).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, SLOTS as u16, 1, 0)
                .unwrap()
        };
        Some(p as *mut types::BufRingEntry)
    } else {
        None
    };
    let mut tail: u16 = 0;
    let give_back = |tail: &mut u16, id: usize| {
        let r = ring_mem.unwrap();
        // SAFETY: index masked to the ring's SLOTS entries; the kernel reads
        // entries only up to the published tail.
        unsafe {
            let e = &mut *r.add(*tail as usize & (SLOTS - 1));
            e.set_addr(base.add(id * slot) as u64);
            e.set_len(slot as u32);
            e.set_bid(id as u16);
            *tail = tail.wrapping_add(1);
            let t = types::BufRingEntry::tail(r) as *const std::sync::atomic::AtomicU16;
            (*t).store(*tail, std::sync::atomic::Ordering::Release);
        }
    };

    let t0 = Instant::now();
    let c0 = cpu_secs();
    let mut received = 0u64;
    let mut sent = 0u64;
    let mut pending_notif = 0usize;
    let mut rearm = false;
    let mut in_use = 0usize;
    let mut sq: Vec<squeue::Entry> = Vec::new();
    let recv = |i: usize| {
        // SAFETY (for the push below): slot i is ours until its CQE.
        opcode::Recv::new(sfd, unsafe { base.add(i * slot) }, slot as u32)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(ud(Ud::Recv(i)))
    };
    if ring_mem.is_some() {
        for i in 0..SLOTS {
            give_back(&mut tail, i);
        }
        sq.push(
            opcode::RecvMulti::new(sfd, 1)
                .build()
                .user_data(ud(Ud::Recv(0))),
        );
    } else {
        for i in 0..SLOTS {
            sq.push(recv(i));
        }
    }
    let mut eof = false;
    while sent < bytes || pending_notif > 0 {
        for e in sq.drain(..) {
            // SAFETY: every buffer an entry names is a slot of mem, which
            // outlives the ring; a slot is in one operation at a time.
            unsafe { ring.submission().push(&e).unwrap() };
        }
        ring.submit_and_wait(1).unwrap();
        let cqes: Vec<cqueue::Entry> = ring.completion().collect();
        let some = !cqes.is_empty();
        for c in cqes {
            let u = c.user_data();
            let (is_send, i) = ((u >> 32) & 1 == 1, (u & 0xffff_ffff) as usize);
            let res = c.result();
            if std::env::var_os("PROBE_DEBUG").is_some() {
                eprintln!("cqe ud={u:#x} res={res} flags={:#x}", c.flags());
            }
            if cqueue::notif(c.flags()) {
                pending_notif -= 1;
                if !eof {
                    sq.push(recv(i));
                }
                continue;
            }
            if !is_send && res == -libc::ENOBUFS {
                rearm = true; // multishot ran out of provided buffers
                continue;
            }
            assert!(
                res >= 0,
                "op failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            if !is_send && res == 0 {
                eof = true;
                continue;
            }
            if !is_send {
                let (id, n) = match ring_mem {
                    Some(_) => (
                        cqueue::buffer_select(c.flags()).unwrap() as usize,
                        res as usize,
                    ),
                    None => (i, res as usize),
                };
                if n == 0 {
                    eof = true;
                    continue;
                }
                received += n as u64;
                in_use += ring_mem.is_some() as usize;
                if ring_mem.is_some() && !cqueue::more(c.flags()) && received < bytes {
                    sq.push(
                        opcode::RecvMulti::new(sfd, 1)
                            .build()
                            .user_data(ud(Ud::Recv(0))),
                    );
                }
                // SAFETY: slot id holds n received bytes until its send ends.
                let p = unsafe { base.add(id * slot) };
                let e = if mode == "zc" {
                    pending_notif += 1;
                    opcode::SendZc::new(dfd, p, n as u32)
                        .buf_index(Some(0))
                        .flags(libc::MSG_WAITALL)
                        .build()
                } else {
                    opcode::Send::new(dfd, p, n as u32)
                        .flags(libc::MSG_WAITALL)
                        .build()
                };
                sq.push(e.user_data(ud(Ud::Send(id)) | ((n as u64) << 40)));
            } else {
                let want = (u >> 40) as i32;
                assert_eq!(res, want, "short send");
                sent += res as u64;
                if mode == "zc" {
                    continue; // slot reused after its notification
                }
                if ring_mem.is_some() {
                    give_back(&mut tail, i);
                    in_use -= 1;
                } else if received < bytes {
                    sq.push(recv(i));
                }
            }
        }
        // A multishot receive that ran out of buffers ends; re-arm it once
        // the sends have given some back.
        if some && rearm && in_use < SLOTS && received < bytes {
            rearm = false;
            sq.push(
                opcode::RecvMulti::new(sfd, 1)
                    .build()
                    .user_data(ud(Ud::Recv(0))),
            );
        }
    }
    let cpu = cpu_secs() - c0;
    let wall = t0.elapsed().as_secs_f64();
    drop(dst);
    source.wait().unwrap();
    sink.wait().unwrap();
    println!(
        "{mode:>14} slot {:>5} KiB: {:.3} CPU s/GiB, {:.2} GiB/s ({} bytes)",
        slot >> 10,
        cpu / gib as f64,
        gib as f64 / wall,
        sent
    );
    drop(ring);
    drop(mem);
}
