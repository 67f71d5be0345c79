// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A scripted misbehaving NBD server for reliability tests.  In `Good`
//! mode it is a correct fixed-newstyle server (structured replies,
//! optional extended headers, base:allocation, block sizes) over an
//! in-memory pattern; every other mode breaks one rule of the spec at one
//! chosen moment.  It logs every WRITE/WRITE_ZEROES range it receives.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Correct behaviour (the control).
    Good,
    /// Random bytes instead of the NBDMAGIC greeting.
    GreetingGarbage,
    /// The oldstyle greeting.
    Oldstyle,
    /// Option replies with a wrong magic.
    BadOptionMagic,
    /// Closes in the middle of the GO reply.
    TruncatedHandshake,
    /// The second connection reports a different export size.
    SizeChange,
    /// The first READ reply has a wrong magic.
    BadReplyMagic,
    /// A reply for a cookie that was never sent.
    UnknownCookie,
    /// A complete reply sent twice.
    DuplicateReply,
    /// A READ chunk at an offset outside the request.
    ChunkOutside,
    /// Two OFFSET_DATA chunks overlapping.
    OverlappingChunks,
    /// Half the READ, then DONE.
    MissingChunk,
    /// A chunk longer than the request.
    ChunkTooLong,
    /// A chunk header with a length near 4 GiB.
    HugeLength4G,
    /// An extended chunk header with length 2^63 (compact: 0xffffffff).
    HugeLength2p63,
    /// Block status with a zero-length extent.
    ZeroExtent,
    /// Block status for a context that was not negotiated.
    WrongContext,
    /// An error chunk whose message length exceeds the chunk.
    BogusErrorLen,
    /// Accepts requests after the handshake but never answers.
    Stall,
    /// Sends half of a READ reply's data, then closes.
    CloseMidReply,
    /// Sends half of a READ reply's data, then goes silent (open).
    StallMidReply,
    /// EIO for WRITEs at or after 1 MiB.
    WriteError,
    /// A proper error chunk for READs touching 2 MiB.
    ErrorChunk,
    /// Read data chunks without the final DONE (then silence).
    NoDone,
    /// Correct, but every reply trickles out in small pieces.
    SlowDrip,
    /// A simple reply with data to a READ although structured replies
    /// were negotiated.
    SimpleReplyToStructuredRead,
    /// Correct, except that FLUSH fails with EIO.
    FlushError,
    /// Correct, but every FLUSH takes `SLOW_OP` to answer (a server
    /// writing back a large cache).
    SlowFlush,
    /// Correct, but every WRITE_ZEROES takes `SLOW_OP` to answer (a server
    /// that zeroes by writing).
    SlowZero,
    /// Correct, but reads WRITE payloads slowly (16 KiB per ms), so a
    /// client with more in flight than its socket buffer holds finds the
    /// socket full; checks every payload byte against the pattern
    /// (`Hostile::bad` counts mismatches).
    SlowReader,
}

/// How long SlowFlush and SlowZero take per request.
pub const SLOW_OP: Duration = Duration::from_millis(2500);

pub const ALL_BAD: &[Mode] = &[
    Mode::GreetingGarbage,
    Mode::Oldstyle,
    Mode::BadOptionMagic,
    Mode::TruncatedHandshake,
    Mode::SizeChange,
    Mode::BadReplyMagic,
    Mode::UnknownCookie,
    Mode::DuplicateReply,
    Mode::ChunkOutside,
    Mode::OverlappingChunks,
    Mode::MissingChunk,
    Mode::ChunkTooLong,
    Mode::HugeLength4G,
    Mode::HugeLength2p63,
    Mode::ZeroExtent,
    Mode::WrongContext,
    Mode::BogusErrorLen,
    Mode::Stall,
    Mode::CloseMidReply,
    Mode::StallMidReply,
    Mode::ErrorChunk,
    Mode::NoDone,
    Mode::SimpleReplyToStructuredRead,
];

/// The byte at `off` of the exported pattern.
pub fn pattern_byte(off: u64) -> u8 {
    ((off * 7) ^ (off >> 12)) as u8 | 1
}

pub struct Hostile {
    sock: PathBuf,
    stop: Arc<AtomicBool>,
    pub writes: Arc<Mutex<Vec<(u64, u64)>>>,
    /// How many connections sent NBD_CMD_DISC.
    pub discs: Arc<AtomicUsize>,
    /// How many connections were accepted.
    pub conns: Arc<AtomicUsize>,
    /// SlowReader: WRITE payload bytes that were not the pattern's.
    pub bad: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    pub fn start(dir: &Path, mode: Mode, size: u64, extended: bool) -> Hostile {
        let sock = dir.join(format!("hostile-{mode:?}.sock"));
        let _ = std::fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (st, wr) = (stop.clone(), writes.clone());
        let conns = Arc::new(AtomicUsize::new(0));
        let conns_out = conns.clone();
        let discs = Arc::new(AtomicUsize::new(0));
        let dc = discs.clone();
        let bad = Arc::new(AtomicUsize::new(0));
        let bad_out = bad.clone();
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let n = conns.fetch_add(1, Ordering::Relaxed);
                        let (st2, wr2, dc2) = (st.clone(), wr.clone(), dc.clone());
                        let bad2 = bad.clone();
                        handlers.push(std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut c = Conn {
                                s,
                                mode,
                                size,
                                extended,
                                st: st2,
                                writes: wr2,
                                discs: dc2,
                                bad: bad2,
                                n,
                                mode_ext: false,
                                structured: false,
                                reads: 0,
                                bad_done: false,
                            };
                            let _ = c.serve();
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        Hostile {
            sock,
            stop,
            writes,
            discs,
            conns: conns_out,
            bad: bad_out,
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    s: UnixStream,
    mode: Mode,
    size: u64,
    extended: bool,
    st: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<(u64, u64)>>>,
    discs: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
    n: usize,
    mode_ext: bool,
    structured: bool,
    reads: u32,
    bad_done: bool,
}

type R<T> = std::io::Result<T>;

impl Conn {
    /// Reads exactly `n` bytes, giving up when stopped.
    fn read_n(&mut self, n: usize) -> R<Vec<u8>> {
        let mut b = vec![0u8; n];
        let mut at = 0;
        while at < n {
            if self.st.load(Ordering::Relaxed) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            match self.s.read(&mut b[at..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => at += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(b)
    }

    fn send(&mut self, b: &[u8]) -> R<()> {
        if self.mode == Mode::SlowDrip {
            for c in b.chunks(4093) {
                self.s.write_all(c)?;
                std::thread::sleep(Duration::from_micros(200));
            }
            return Ok(());
        }
        self.s.write_all(b)
    }

    fn rep(&mut self, opt: u32, ty: u32, p: &[u8]) -> R<()> {
        let magic: u64 = if self.mode == Mode::BadOptionMagic {
            0x1122334455667788
        } else {
            0x0003_e889_0455_65a9
        };
        let mut v = magic.to_be_bytes().to_vec();
        v.extend(opt.to_be_bytes());
        v.extend(ty.to_be_bytes());
        v.extend((p.len() as u32).to_be_bytes());
        v.extend(p);
        self.send(&v)
    }

    fn serve(&mut self) -> R<()> {
        match self.mode {
            Mode::GreetingGarbage => return self.send(b"\x13\x37garbage, not NBD at all......."),
            Mode::Oldstyle => {
                let mut v = b"NBDMAGIC".to_vec();
                v.extend(0x0000_4202_8186_1253u64.to_be_bytes());
                v.extend(self.size.to_be_bytes());
                v.extend([0u8; 128]);
                self.send(&v)?;
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            _ => {}
        }
        let mut g = b"NBDMAGIC".to_vec();
        g.extend(0x4948_4156_454f_5054u64.to_be_bytes());
        g.extend(3u16.to_be_bytes());
        self.send(&g)?;
        self.read_n(4)?;
        let size = if self.mode == Mode::SizeChange && self.n > 0 {
            self.size + 4096
        } else {
            self.size
        };
        loop {
            let h = self.read_n(16)?;
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
            let data = self.read_n(len)?;
            match opt {
                11 if self.extended => {
                    self.mode_ext = true;
                    self.rep(11, 1, &[])?
                }
                8 if !self.mode_ext => {
                    self.structured = true;
                    self.rep(8, 1, &[])?
                }
                10 => {
                    let mut p = 5u32.to_be_bytes().to_vec();
                    p.extend(b"base:allocation");
                    self.rep(10, 4, &p)?;
                    self.rep(10, 1, &[])?;
                }
                7 => {
                    let _ = data;
                    let mut p = 0u16.to_be_bytes().to_vec();
                    p.extend(size.to_be_bytes());
                    // HAS_FLAGS, SEND_FLUSH, SEND_TRIM, SEND_WRITE_ZEROES,
                    // CAN_MULTI_CONN, SEND_FAST_ZERO
                    p.extend((1u16 | 4 | 32 | 64 | 256 | 2048).to_be_bytes());
                    if self.mode == Mode::TruncatedHandshake {
                        let mut v = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                        v.extend(7u32.to_be_bytes());
                        v.extend(3u32.to_be_bytes());
                        v.extend(12u32.to_be_bytes());
                        v.extend(&p[..5]);
                        self.send(&v)?;
                        return Ok(());
                    }
                    self.rep(7, 3, &p)?;
                    let mut b = 3u16.to_be_bytes().to_vec();
                    for x in [1u32, 4096, 1 << 20] {
                        b.extend(x.to_be_bytes());
                    }
                    self.rep(7, 3, &b)?;
                    self.rep(7, 1, &[])?;
                    break;
                }
                _ => self.rep(opt, 0x8000_0001, b"unsupported")?,
            }
        }
        self.transmission()
    }

    fn hdr(&self, flags: u16, ty: u16, cookie: u64, off: u64, len: u64) -> Vec<u8> {
        let mut v = Vec::new();
        if self.mode_ext {
            v.extend(0x6e8a_278cu32.to_be_bytes());
            v.extend(flags.to_be_bytes());
            v.extend(ty.to_be_bytes());
            v.extend(cookie.to_be_bytes());
            v.extend(off.to_be_bytes());
            v.extend(len.to_be_bytes());
        } else {
            v.extend(0x668e_33efu32.to_be_bytes());
            v.extend(flags.to_be_bytes());
            v.extend(ty.to_be_bytes());
            v.extend(cookie.to_be_bytes());
            v.extend((len as u32).to_be_bytes());
        }
        v
    }

    fn data_chunk(&self, done: bool, cookie: u64, off: u64, len: u64) -> Vec<u8> {
        let mut v = self.hdr(done as u16, 1, cookie, off, 8 + len);
        v.extend(off.to_be_bytes());
        v.extend((off..off + len).map(pattern_byte));
        v
    }

    fn simple(&self, err: u32, cookie: u64) -> Vec<u8> {
        if self.mode_ext {
            // Extended headers: every reply is a chunk.
            if err == 0 {
                return self.hdr(1, 0, cookie, 0, 0);
            }
            let mut v = self.hdr(1, 0x8001, cookie, 0, 6);
            v.extend(err.to_be_bytes());
            v.extend(0u16.to_be_bytes());
            return v;
        }
        let mut v = 0x6744_6698u32.to_be_bytes().to_vec();
        v.extend(err.to_be_bytes());
        v.extend(cookie.to_be_bytes());
        v
    }

    fn transmission(&mut self) -> R<()> {
        let hl = if self.mode_ext { 32 } else { 28 };
        loop {
            let h = self.read_n(hl)?;
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let _ = flags;
            let cmd = u16::from_be_bytes([h[6], h[7]]);
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
            let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
            let len = if self.mode_ext {
                u64::from_be_bytes(h[24..32].try_into().unwrap())
            } else {
                u32::from_be_bytes(h[24..28].try_into().unwrap()) as u64
            };
            if cmd == 2 {
                self.discs.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if self.mode == Mode::Stall {
                if cmd == 1 {
                    self.read_n(len as usize)?;
                }
                continue;
            }
            match cmd {
                0 => self.read(cookie, off, len)?,
                1 if self.mode == Mode::SlowReader => {
                    let mut at = off;
                    while at < off + len {
                        let n = (off + len - at).min(16 << 10);
                        let b = self.read_n(n as usize)?;
                        let wrong = b
                            .iter()
                            .zip(at..)
                            .filter(|&(&v, o)| v != pattern_byte(o))
                            .count();
                        self.bad.fetch_add(wrong, Ordering::Relaxed);
                        at += n;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.writes.lock().unwrap().push((off, len));
                    let r = self.simple(0, cookie);
                    self.send(&r)?;
                }
                1 => {
                    self.read_n(len as usize)?;
                    self.writes.lock().unwrap().push((off, len));
                    let err = if self.mode == Mode::WriteError && off + len > 1 << 20 {
                        5
                    } else {
                        0
                    };
                    let r = self.simple(err, cookie);
                    self.send(&r)?;
                }
                6 | 4 => {
                    if cmd == 6 && self.mode == Mode::SlowZero {
                        std::thread::sleep(SLOW_OP);
                    }
                    self.writes.lock().unwrap().push((off, len));
                    let r = self.simple(0, cookie);
                    self.send(&r)?;
                }
                3 => {
                    if self.mode == Mode::SlowFlush {
                        std::thread::sleep(SLOW_OP);
                    }
                    let err = if self.mode == Mode::FlushError { 5 } else { 0 };
                    let r = self.simple(err, cookie);
                    self.send(&r)?;
                }
                7 => self.block_status(cookie, off, len)?,
                _ => {
                    let r = self.simple(22, cookie);
                    self.send(&r)?;
                }
            }
        }
    }

    fn block_status(&mut self, cookie: u64, off: u64, len: u64) -> R<()> {
        let ctx: u32 = if self.mode == Mode::WrongContext {
            99
        } else {
            5
        };
        let first = if self.mode == Mode::ZeroExtent {
            0
        } else {
            len.min(1 << 20)
        };
        let mut p = ctx.to_be_bytes().to_vec();
        let ext = [(first, 0u32), (len - first.min(len), 0u32)];
        let ext: Vec<_> = ext
            .iter()
            .filter(|e| e.0 > 0 || self.mode == Mode::ZeroExtent)
            .collect();
        let ty = if self.mode_ext {
            p.extend((ext.len() as u32).to_be_bytes());
            for e in &ext {
                p.extend(e.0.to_be_bytes());
                p.extend((e.1 as u64).to_be_bytes());
            }
            6
        } else {
            for e in &ext {
                p.extend((e.0 as u32).to_be_bytes());
                p.extend(e.1.to_be_bytes());
            }
            5
        };
        let mut v = self.hdr(1, ty, cookie, off, p.len() as u64);
        v.extend(p);
        let _ = (off, len);
        self.send(&v)
    }

    fn read(&mut self, cookie: u64, off: u64, len: u64) -> R<()> {
        self.reads += 1;
        let first = self.reads == 2 && !self.bad_done; // misbehave on the 2nd READ
        let m = self.mode;
        if !self.structured && !self.mode_ext {
            let mut v = self.simple(0, cookie);
            v.extend((off..off + len).map(pattern_byte));
            return self.send(&v);
        }
        let half = len / 2;
        let out: Vec<u8> = match m {
            _ if !first && !matches!(m, Mode::ErrorChunk) => {
                // Correct: two chunks in reverse order, the second with DONE.
                let mut v = self.data_chunk(false, cookie, off + half, len - half);
                if half > 0 {
                    v.extend(self.data_chunk(true, cookie, off, half));
                } else {
                    v.extend(self.hdr(1, 0, cookie, off, 0));
                }
                v
            }
            Mode::ErrorChunk if off <= 2 << 20 && off + len > 2 << 20 => {
                let msg = b"injected read error";
                let mut v = self.hdr(0, 0x8002, cookie, off, 6 + msg.len() as u64 + 8);
                v.extend(5u32.to_be_bytes());
                v.extend((msg.len() as u16).to_be_bytes());
                v.extend(msg);
                v.extend((2u64 << 20).to_be_bytes());
                v.extend(self.hdr(1, 0, cookie, off, 0));
                v
            }
            Mode::ErrorChunk => self.data_chunk(true, cookie, off, len),
            Mode::BadReplyMagic => {
                let mut v = self.data_chunk(true, cookie, off, len);
                v[0] ^= 0x55;
                v
            }
            Mode::UnknownCookie => self.data_chunk(true, cookie ^ 0xdead_0000_0000, off, len),
            Mode::DuplicateReply => {
                let mut v = self.data_chunk(true, cookie, off, len);
                v.extend(self.data_chunk(true, cookie, off, len));
                v
            }
            Mode::ChunkOutside => self.data_chunk(true, cookie, off + len, len),
            Mode::OverlappingChunks => {
                let mut v = self.data_chunk(false, cookie, off, half + 512);
                v.extend(self.data_chunk(true, cookie, off + half, len - half));
                v
            }
            Mode::MissingChunk => {
                let mut v = self.data_chunk(false, cookie, off, half);
                v.extend(self.hdr(1, 0, cookie, off, 0));
                v
            }
            Mode::ChunkTooLong => self.data_chunk(true, cookie, off, len + 4096),
            Mode::HugeLength4G => self.hdr(1, 1, cookie, off, 0xffff_fff0),
            Mode::HugeLength2p63 => self.hdr(
                1,
                1,
                cookie,
                off,
                if self.mode_ext { 1 << 63 } else { 0xffff_ffff },
            ),
            Mode::BogusErrorLen => {
                let mut v = self.hdr(1, 0x8001, cookie, off, 10);
                v.extend(5u32.to_be_bytes());
                v.extend(4000u16.to_be_bytes());
                v.extend(b"abcd");
                v
            }
            Mode::CloseMidReply => {
                let v = self.data_chunk(true, cookie, off, len);
                let n = v.len() / 2;
                self.send(&v[..n])?;
                let _ = self.s.shutdown(std::net::Shutdown::Both);
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            Mode::StallMidReply => {
                let v = self.data_chunk(true, cookie, off, len);
                let n = v.len() / 2;
                self.send(&v[..n])?;
                // Silent until nbdcpy gives up and closes.
                let mut b = [0u8; 4096];
                loop {
                    match std::io::Read::read(&mut self.s, &mut b) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            Mode::NoDone => {
                let v = self.data_chunk(false, cookie, off, len);
                self.send(&v)?;
                self.bad_done = true;
                return Ok(());
            }
            Mode::SimpleReplyToStructuredRead => {
                let mut v = 0x6744_6698u32.to_be_bytes().to_vec();
                v.extend(0u32.to_be_bytes());
                v.extend(cookie.to_be_bytes());
                v.extend((off..off + len).map(pattern_byte));
                v
            }
            _ => self.data_chunk(true, cookie, off, len),
        };
        self.send(&out)
    }
}
