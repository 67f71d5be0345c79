// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The I/O engine seam: the operations a copy asks of the kernel, their keyed completions, and the buffers they hold.
//
// A worker hands its engine operations (`Op`) tagged with a user_data of
// its choosing, waits, and reaps `Completion`s carrying the same
// user_data and a result in io_uring's convention (bytes or -errno).
// Nothing above this module knows which engine runs:
//
// - `uring`: io_uring, one ring per worker, everything queued submitted
//   in one io_uring_enter per loop turn.
// - `epoll`: non-blocking system calls when a socket is ready, file I/O
//   done at once, results queued as the same completions (for kernels,
//   containers and sandboxes where io_uring is refused).
//
// An operation owns what the kernel may touch (shares of `IoBuf`s, the
// batch of a send): the engine keeps it until the completion is reaped,
// and an engine dropped with operations in flight cancels and waits for
// them, or leaks them (never frees) when it cannot, on every path, panics
// included.

pub mod buf;
mod epoll;
mod uring;

use crate::error::{Error, Result};
use buf::{IoBuf, Span};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The "engine" option: which I/O engine runs the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring, or epoll when the ring cannot be made.
    #[default]
    Auto,
    IoUring,
    Epoll,
}

/// One request header (at most 32 bytes) and the payload after it: one
/// contiguous span when the header could be written in front of the
/// payload, else two parts.
pub struct Chunk {
    head: [u8; 32],
    head_len: u8,
    body: Option<Span>,
}

impl Chunk {
    /// `hdr` followed by `payload`; the header goes in front of the
    /// payload, in its buffer, when there is room there.
    pub fn new(hdr: &[u8], payload: Option<Span>) -> Chunk {
        let mut head = [0u8; 32];
        match payload {
            None => {
                head[..hdr.len()].copy_from_slice(hdr);
                Chunk {
                    head,
                    head_len: hdr.len() as u8,
                    body: None,
                }
            }
            Some(p) => match p.prepend(hdr) {
                Ok(joined) => Chunk {
                    head,
                    head_len: 0,
                    body: Some(joined),
                },
                Err(p) => {
                    head[..hdr.len()].copy_from_slice(hdr);
                    Chunk {
                        head,
                        head_len: hdr.len() as u8,
                        body: Some(p),
                    }
                }
            },
        }
    }

    /// Whether the header was put in front of the payload.
    #[cfg(test)]
    pub fn is_joined(&self) -> bool {
        self.head_len == 0 && self.body.is_some()
    }

    pub fn len(&self) -> usize {
        self.head_len as usize + self.body.as_ref().map_or(0, Span::len)
    }

    /// The chunk's bytes, in up to two parts.
    pub fn slices(&self) -> [&[u8]; 2] {
        [
            &self.head[..self.head_len as usize],
            self.body.as_ref().map_or(&[][..], Span::as_slice),
        ]
    }
}

/// The bytes of `chunks` without their first `skip` bytes, as the
/// non-empty slices a vectored send takes.
pub fn gather<'a>(chunks: &'a [Chunk], mut skip: usize, out: &mut Vec<&'a [u8]>) {
    out.clear();
    for part in chunks.iter().flat_map(Chunk::slices) {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        out.push(&part[skip..]);
        skip = 0;
    }
}

/// An operation for the kernel.  `offset: None` means a stream's current
/// position (read/write, not pread/pwrite).
pub enum Op {
    /// Receive up to `len` bytes into `buf[at..]` (a socket).
    Recv {
        fd: Fd,
        buf: IoBuf,
        at: usize,
        len: usize,
    },
    /// Read up to `len` bytes into `buf[at..]`.
    Read {
        fd: Fd,
        buf: IoBuf,
        at: usize,
        len: usize,
        offset: Option<u64>,
    },
    /// Write `data`.
    Write {
        fd: Fd,
        data: Span,
        offset: Option<u64>,
    },
    /// Send `data` on a socket.
    Send {
        fd: Fd,
        data: Span,
    },
    /// Send the chunks of `batch` (without the first `skip` bytes) on a
    /// socket, as one vectored send.
    SendBatch {
        fd: Fd,
        batch: Arc<Vec<Chunk>>,
        skip: usize,
    },
    /// fallocate(mode) over [offset, offset+len).
    Fallocate {
        fd: Fd,
        offset: u64,
        len: u64,
        mode: i32,
    },
    Fsync {
        fd: Fd,
    },
    /// Completes when `fd` is ready for `events` (POLLIN and/or POLLOUT),
    /// with the events that are (errors and hang-ups included): for
    /// system calls made outside the engine, such as splice, that would
    /// block.
    Poll {
        fd: Fd,
        events: u32,
    },
    /// Completes at once with 0 (a result that is already known).
    Nop,
}

impl Op {
    /// The registered descriptor the operation uses.
    fn fd(&self) -> Option<Fd> {
        match self {
            Op::Recv { fd, .. }
            | Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Send { fd, .. }
            | Op::SendBatch { fd, .. }
            | Op::Fallocate { fd, .. }
            | Op::Fsync { fd }
            | Op::Poll { fd, .. } => Some(*fd),
            Op::Nop => None,
        }
    }
}

/// A descriptor registered with one engine (`Engine::register`).  The
/// engine holds its own duplicate until `Engine::unregister` and every
/// operation naming it has completed, so the number an operation uses
/// cannot be closed and reused under it; operations name it by slot and
/// a generation no other registration of any engine has, so a token
/// kept past its `unregister` (or taken to another engine) completes
/// with -EBADF instead of reaching another descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fd {
    slot: u32,
    gen: u32,
}

impl Fd {
    /// Registered nowhere: operations on it complete with -EBADF.
    pub const NONE: Fd = Fd {
        slot: u32::MAX,
        gen: 0,
    };

    /// The token as epoll's event data.
    fn key(self) -> u64 {
        (self.gen as u64) << 32 | self.slot as u64
    }

    fn from_key(k: u64) -> Fd {
        Fd {
            slot: k as u32,
            gen: (k >> 32) as u32,
        }
    }
}

/// Generations of registrations, unique across the engines of the
/// process (0 is never one).
static GENERATIONS: AtomicU32 = AtomicU32::new(1);

struct Slot {
    file: Option<OwnedFd>,
    gen: u32,
    /// Not unregistered yet.
    open: bool,
    /// Operations naming it that the kernel may still run (io_uring).
    ops: u32,
}

/// The descriptors an engine holds for its operations.
#[derive(Default)]
struct FdTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl FdTable {
    fn register(&mut self, fd: RawFd) -> Result<Fd> {
        let file = crate::sys::dup_cloexec(fd)
            .map_err(|e| Error::os("registering a descriptor with the engine (dup)", e))?;
        let gen = loop {
            let g = GENERATIONS.fetch_add(1, Relaxed);
            if g != 0 {
                break g;
            }
        };
        let s = Slot {
            file: Some(file),
            gen,
            open: true,
            ops: 0,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u32
            }
        };
        Ok(Fd { slot, gen })
    }

    /// The engine's number for `t`, while it is registered.
    fn raw(&self, t: Fd) -> Option<RawFd> {
        let s = self.slots.get(t.slot as usize)?;
        if !s.open || s.gen != t.gen {
            return None;
        }
        s.file.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// `raw`, counting an operation that uses it until `end`.
    fn begin(&mut self, t: Fd) -> Option<RawFd> {
        let r = self.raw(t)?;
        self.slots[t.slot as usize].ops += 1;
        Some(r)
    }

    /// An operation `begin` counted has completed.
    fn end(&mut self, t: Fd) {
        let Some(s) = self.slots.get_mut(t.slot as usize) else {
            return;
        };
        if s.gen == t.gen {
            s.ops = s.ops.saturating_sub(1);
            self.release(t.slot);
        }
    }

    /// Unregisters `t` (false when it was not registered); its duplicate
    /// is closed once no counted operation uses it.
    fn close(&mut self, t: Fd) -> bool {
        if self.raw(t).is_none() {
            return false;
        }
        self.slots[t.slot as usize].open = false;
        self.release(t.slot);
        true
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.open && s.ops == 0 && s.file.is_some() {
            s.file = None;
            self.free.push(slot);
        }
    }
}

/// A finished operation: the user_data it was pushed with, and its
/// result (bytes, or -errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub res: i32,
}

/// Which engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    IoUring,
    Epoll,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Epoll => "epoll",
        }
    }
}

/// The engine a job's workers use, decided once per job.
#[derive(Clone, Debug)]
pub struct Choice {
    pub kind: EngineKind,
    /// Why io_uring is not used (auto fell back), for `-v`.
    pub fallback_reason: Option<String>,
}

impl Choice {
    /// Decides the engine: `Auto` tries to set up an io_uring once and
    /// falls back to epoll when the kernel refuses (EPERM, EACCES, ENOSYS:
    /// seccomp profiles, `kernel.io_uring_disabled`, old kernels, or one
    /// too old for what the io_uring engine needs); forcing io_uring
    /// where it cannot run is an error.
    pub fn decide(want: EngineChoice) -> Result<Choice> {
        match want {
            EngineChoice::Epoll => Ok(Choice {
                kind: EngineKind::Epoll,
                fallback_reason: None,
            }),
            EngineChoice::IoUring => {
                uring::UringEngine::new(8)?;
                Ok(Choice {
                    kind: EngineKind::IoUring,
                    fallback_reason: None,
                })
            }
            EngineChoice::Auto => match uring::UringEngine::new(8) {
                Ok(_) => Ok(Choice {
                    kind: EngineKind::IoUring,
                    fallback_reason: None,
                }),
                Err(e) if refused(&e) => Ok(Choice {
                    kind: EngineKind::Epoll,
                    fallback_reason: Some(e.to_string()),
                }),
                Err(e) => Err(e),
            },
        }
    }

    /// One line for `-v`.
    pub fn describe(&self) -> String {
        match &self.fallback_reason {
            None => format!("engine: {}", self.kind.name()),
            Some(why) => format!("engine: {} (io_uring unavailable: {why})", self.kind.name()),
        }
    }
}

/// Whether this process may set up an io_uring the io_uring engine can
/// use (seccomp profiles, `kernel.io_uring_disabled` and old kernels
/// say no).
pub fn io_uring_available() -> bool {
    uring::UringEngine::new(8).is_ok()
}

/// Whether a failed io_uring setup means "not here" (fall back) rather
/// than a real failure.
fn refused(e: &Error) -> bool {
    matches!(
        e.errno,
        libc::EPERM | libc::EACCES | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOMEM
    )
}

/// The engine of one worker thread (one per worker, never moved on the
/// hot path: the size difference of the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Engine {
    Uring(uring::UringEngine),
    Epoll(epoll::EpollEngine),
}

impl Engine {
    /// An engine of `kind` for about `entries` operations in flight.
    pub fn new(kind: EngineKind, entries: u32) -> Result<Engine> {
        Ok(match kind {
            EngineKind::IoUring => Engine::Uring(uring::UringEngine::new(entries)?),
            EngineKind::Epoll => Engine::Epoll(epoll::EpollEngine::new()?),
        })
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Uring(_) => EngineKind::IoUring,
            Engine::Epoll(_) => EngineKind::Epoll,
        }
    }

    /// Registers (a duplicate of) the open descriptor `fd` for
    /// operations; the caller may close `fd` at any time after.
    pub fn register(&mut self, fd: RawFd) -> Result<Fd> {
        match self {
            Engine::Uring(e) => e.fds.register(fd),
            Engine::Epoll(e) => e.fds.register(fd),
        }
    }

    /// Ends the registration of `fd`: its operations still waiting
    /// complete (cancelled, or with their result if they finish first)
    /// and later ones on `fd` complete with -EBADF.  The engine closes
    /// its duplicate once the kernel has none of them.
    pub fn unregister(&mut self, fd: Fd) -> Result<()> {
        match self {
            Engine::Uring(e) => e.unregister(fd),
            Engine::Epoll(e) => e.unregister(fd),
        }
    }

    /// The engine's number for `fd` while it is registered (for tests).
    #[cfg(test)]
    pub fn raw_fd(&self, fd: Fd) -> Option<RawFd> {
        match self {
            Engine::Uring(e) => e.fds.raw(fd),
            Engine::Epoll(e) => e.fds.raw(fd),
        }
    }

    /// Queues `op`; its completion carries `user_data`.
    #[inline]
    pub fn push(&mut self, op: Op, user_data: u64) -> Result<()> {
        match self {
            Engine::Uring(e) => e.push(op, user_data),
            Engine::Epoll(e) => e.push(op, user_data),
        }
    }

    /// Starts everything queued and waits until at least one completion
    /// is there or `timeout` passes.
    #[inline]
    pub fn wait(&mut self, timeout: Duration) -> Result<()> {
        match self {
            Engine::Uring(e) => e.submit_and_wait(timeout),
            Engine::Epoll(e) => e.wait(timeout),
        }
    }

    /// Moves the completions that are there into `out`.
    #[inline]
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Uring(e) => e.reap(out),
            Engine::Epoll(e) => e.reap(out),
        }
    }

    /// Operations pushed whose completion was not reaped.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Uring(e) => e.in_flight(),
            Engine::Epoll(e) => e.in_flight(),
        }
    }

    /// Cancels every operation in flight and waits until all are reaped
    /// (handed to `sink`).  False when some did not finish within
    /// `limit`: the engine then keeps (leaks) them when dropped.
    pub fn drain(&mut self, limit: Duration, sink: &mut dyn FnMut(Completion)) -> bool {
        match self {
            Engine::Uring(e) => e.drain(limit, sink),
            Engine::Epoll(e) => e.drain(sink),
        }
    }

    /// Calls into the kernel to wait for or submit operations
    /// (io_uring_enter, epoll_wait), for stats.
    pub fn enters(&self) -> u64 {
        match self {
            Engine::Uring(e) => e.enters,
            Engine::Epoll(e) => e.enters,
        }
    }

    /// System calls made for single operations (the epoll engine's
    /// reads, writes, receives and sends), for stats.
    pub fn syscalls(&self) -> u64 {
        match self {
            Engine::Uring(_) => 0,
            Engine::Epoll(e) => e.syscalls,
        }
    }
}

#[cfg(test)]
mod tests;
