// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Safe wrappers around the system calls made outside io_uring.
//
// Safe wrappers around the raw system calls the copy and the endpoints
// make directly (not through io_uring): every `unsafe` libc call outside
// `ring` and `ffi` lives here, with its reasoning.
//
// All of them take borrowed descriptors as `RawFd` (the caller owns
// them) and Rust slices or plain values: a wrapper never keeps a pointer
// beyond the call.

use std::io::{self, IoSlice};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// recv(2) into `buf` with `flags` (e.g. MSG_DONTWAIT).
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes during the call.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// send(2) of `buf` with `flags`; MSG_NOSIGNAL is always added.
pub fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes during the call.
    check_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    })
}

/// A socket borrowed by its fd number, for `std::io::Read`/`Write` (never
/// closed here; writes never raise SIGPIPE).
#[derive(Clone, Copy, Debug)]
pub struct FdStream(pub RawFd);

/// Runs `f` again while it fails with EINTR: a blocking socket call with
/// SO_RCVTIMEO/SO_SNDTIMEO is not restarted after a signal handler even
/// with SA_RESTART (signal(7)), and the host's handlers (SIGCHLD,
/// SIGWINCH...) may run on any thread.
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl io::Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry_eintr(|| recv(self.0, buf, 0))
    }
}

impl io::Write for FdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry_eintr(|| send(self.0, buf, 0))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// shutdown(2) of both directions of socket `fd`: its pending receives
/// and sends complete, and the peer sees the connection end.
pub fn shutdown(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no memory arguments.
    if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// sendmsg(2) of `bufs` in order; MSG_NOSIGNAL is always added.
pub fn sendmsg(fd: RawFd, bufs: &[IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with struct iovec on Unix; sendmsg only
    // reads through the pointer.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: msg and the slices it points to are borrowed for the call.
    check_size(unsafe { libc::sendmsg(fd, &msg, flags | libc::MSG_NOSIGNAL) })
}

/// poll(2) on one descriptor for `events`, up to `timeout_ms`; the events
/// that occurred (0 on timeout).
pub fn poll_one(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: p is valid for the call; nfds is 1.
    check(unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(p.revents)
}

/// A pipe with both ends non-blocking and close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with(libc::O_CLOEXEC | libc::O_NONBLOCK)
}

/// pipe2(2) with `flags`: (read end, write end).
pub fn pipe_with(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: pipe2 succeeded: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: no memory arguments.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// waitpid(2) of child `pid`: its wait status once it has exited (None
/// with WNOHANG while it runs).
pub fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<libc::c_int>> {
    let mut st = 0;
    // SAFETY: st is valid for writes for the call.
    let r = check(unsafe { libc::waitpid(pid, &mut st, flags) })?;
    Ok((r == pid).then_some(st))
}

/// pidfd_open(2): a descriptor naming process `pid` (close-on-exec), so
/// it can be signalled and waited for without a pid that may be reused.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open succeeded: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// pidfd_send_signal(2): `sig` to the process `pidfd` names (ESRCH once
/// it has exited, never another process).
pub fn pidfd_send_signal(pidfd: RawFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a NULL siginfo is allowed (as kill(2) would fill it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// waitid(P_PIDFD): reaps the child `pidfd` names once it has exited.
/// Ok(true): reaped; Ok(false): still running (with WNOHANG).  ECHILD:
/// not (or no longer) a child of ours to reap, e.g. reaped by the host.
pub fn waitid_pidfd(pidfd: RawFd, flags: libc::c_int) -> io::Result<bool> {
    let mut info: libc::siginfo_t = zeroed();
    // SAFETY: info is valid for writes for the call.
    check(unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd as libc::id_t,
            &mut info,
            libc::WEXITED | flags,
        )
    })?;
    // SAFETY: waitid filled info (si_pid stays 0 with WNOHANG and no
    // child that has exited).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Whether `pid` is a child of ours that has not exited: waitid(WNOWAIT)
/// neither reaps it nor, for a zombie, lets it go.  ECHILD: not (or no
/// longer) our child.
pub fn waitid_pid_running(pid: libc::pid_t) -> io::Result<bool> {
    let mut info: libc::siginfo_t = zeroed();
    // SAFETY: info is valid for writes for the call.
    check(unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    })?;
    // SAFETY: waitid filled info (si_pid 0: the child has not exited).
    Ok(unsafe { info.si_pid() } == 0)
}

/// Blocks every signal in the calling thread; returns the mask it had.
pub fn block_all_signals() -> io::Result<libc::sigset_t> {
    let mut all: libc::sigset_t = zeroed();
    let mut old: libc::sigset_t = zeroed();
    // SAFETY: both sets are valid for the calls.
    unsafe {
        libc::sigfillset(&mut all);
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(old)
}

/// Sets the calling thread's signal mask back to `mask`.
pub fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: mask is a valid set for the call.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// mkdtemp(3): creates a private directory from `template` (ending in
/// XXXXXX) and returns its path.
pub fn mkdtemp(template: &std::path::Path) -> io::Result<std::path::PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut t = template.as_os_str().as_bytes().to_vec();
    if t.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    t.push(0);
    // SAFETY: t is a writable NUL-terminated buffer that mkdtemp edits in
    // place, alive for the call.
    if unsafe { libc::mkdtemp(t.as_mut_ptr().cast()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    t.pop();
    Ok(std::ffi::OsString::from_vec(t).into())
}

/// fcntl(2) with an integer argument (F_SETPIPE_SZ, F_GETFL, F_SETFL...).
pub fn fcntl_int(fd: RawFd, cmd: libc::c_int, arg: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: these commands take an int, no memory.
    check(unsafe { libc::fcntl(fd, cmd, arg) })
}

/// flock(2): `op` is LOCK_EX, LOCK_SH or LOCK_UN, with LOCK_NB or not.
pub fn flock(fd: RawFd, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock takes a descriptor and an int, no memory.
    check(unsafe { libc::flock(fd, op) }).map(|_| ())
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// A duplicate of `fd` (numbered 3 or higher), close-on-exec.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer, no memory.
    let dup = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: dup is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// A close-on-exec eventfd(2) counting from 0 (blocking: io_uring waits on
/// it, and a non-blocking one would come back EAGAIN there).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no memory arguments.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A block device's logical sector size (BLKSSZGET).
pub fn block_sector_size(fd: RawFd) -> io::Result<u64> {
    const BLKSSZGET: libc::c_ulong = 0x1268; // _IO(0x12, 104)
    let mut size: libc::c_int = 0;
    // SAFETY: the ioctl writes one int into `size`, which lives for the call.
    check(unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut size as *mut libc::c_int) })?;
    Ok(size.max(0) as u64)
}

/// A block device's size in bytes (BLKGETSIZE64).
pub fn block_device_size(fd: RawFd) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272; // _IOR(0x12, 114, size_t)
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`, which lives for the call.
    check(unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut size as *mut u64) })?;
    Ok(size)
}

/// splice(2) of up to `len` bytes; `off_in`/`off_out` are the offsets
/// for files (None: a pipe or socket, or the descriptor's position).
pub fn splice(
    fd_in: RawFd,
    off_in: Option<u64>,
    fd_out: RawFd,
    off_out: Option<u64>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let mut off_in = off_in.map(|o| o as libc::loff_t);
    let mut off_out = off_out.map(|o| o as libc::loff_t);
    let ptr = |o: &mut Option<libc::loff_t>| {
        o.as_mut()
            .map_or(std::ptr::null_mut(), |o| o as *mut libc::loff_t)
    };
    let (pi, po) = (ptr(&mut off_in), ptr(&mut off_out));
    // SAFETY: pi/po are null or point to the locals above, live for the
    // call; no other memory arguments.
    check_size(unsafe { libc::splice(fd_in, pi, fd_out, po, len, flags) })
}

/// Pages of [off, off+len) in the page cache, by cachestat(2) (Linux
/// 6.5); None when the kernel cannot tell.
pub fn cached_pages(fd: RawFd, off: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off, len };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both live and of the
    // kernel's layout (struct cachestat_range / struct cachestat).
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut st as *mut Stat,
            0,
        )
    };
    (r == 0).then_some(st.nr_cache)
}

/// tee(2): duplicates up to `len` bytes of pipe `fd_in` into pipe `fd_out`.
pub fn tee(fd_in: RawFd, fd_out: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: no memory arguments.
    check_size(unsafe { libc::tee(fd_in, fd_out, len, flags) })
}

/// read(2) into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes during the call.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// write(2) of `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes during the call.
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// fsync(2).
pub fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: no memory arguments.
    check(unsafe { libc::fsync(fd) })?;
    Ok(())
}

/// epoll_create1(EPOLL_CLOEXEC).
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no memory arguments.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// epoll_ctl(2): `op` (EPOLL_CTL_ADD/MOD/DEL) for `fd` with `events`,
/// reported with `data`.
pub fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is valid for the call.
    check(unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) })?;
    Ok(())
}

/// epoll_wait(2) into `events` for up to `timeout_ms`; how many arrived.
pub fn epoll_wait(
    ep: RawFd,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let n = events.len().min(i32::MAX as usize) as libc::c_int;
    // SAFETY: events is valid for writes of n entries during the call.
    let r = check(unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), n, timeout_ms) })?;
    Ok(r as usize)
}

/// pread(2) into `buf` at `offset`.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes during the call.
    check_size(unsafe {
        libc::pread(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// pwrite(2) of `buf` at `offset`.
pub fn pwrite(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes during the call.
    check_size(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset as libc::off_t) })
}

/// lseek(2); Ok(None) for ENXIO (SEEK_DATA/SEEK_HOLE past the last one).
pub fn lseek(fd: RawFd, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// fallocate(2) with `mode` over [offset, offset+len).
pub fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: no memory arguments.
    check(unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) })?;
    Ok(())
}

/// setsockopt(2) with a plain-data value.
pub fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: value points to size_of::<T>() readable bytes for the call;
    // T is plain data (Copy) as the option expects.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The login name and home directory of user `uid` (getpwuid_r(3)).
pub fn passwd_of(uid: u32) -> Option<(String, String)> {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut pw: libc::passwd = zeroed();
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the
    // strings read from pw below.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    let s = |p: *const libc::c_char| {
        // SAFETY: on success pw_name and pw_dir point to NUL-terminated
        // strings inside buf, alive here.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    Some((s(pw.pw_name), s(pw.pw_dir)))
}

/// A socket address for connect(2), built from safe values.
pub enum SockAddr {
    Unix(libc::sockaddr_un, usize),
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
    Vsock(libc::sockaddr_vm),
}

/// An all-zero libc structure.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for libc's plain-data structures (sockaddr types,
    // passwd), for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl SockAddr {
    /// A unix socket path (None if too long or containing NUL).
    pub fn unix(path: &[u8]) -> Option<SockAddr> {
        let mut sa: libc::sockaddr_un = zeroed();
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if path.len() >= sa.sun_path.len() || path.contains(&0) {
            return None;
        }
        for (d, s) in sa.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
        Some(SockAddr::Unix(sa, len))
    }

    /// A TCP address.
    pub fn inet(a: &std::net::SocketAddr) -> SockAddr {
        match a {
            std::net::SocketAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = v4.port().to_be();
                sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                SockAddr::V4(sa)
            }
            std::net::SocketAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = v6.port().to_be();
                sa.sin6_addr.s6_addr = v6.ip().octets();
                sa.sin6_flowinfo = v6.flowinfo();
                sa.sin6_scope_id = v6.scope_id();
                SockAddr::V6(sa)
            }
        }
    }

    /// A vsock address.
    pub fn vsock(cid: u32, port: u32) -> SockAddr {
        let mut sa: libc::sockaddr_vm = zeroed();
        sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        sa.svm_cid = cid;
        sa.svm_port = port;
        SockAddr::Vsock(sa)
    }

    /// The address family (socket(2)'s domain).
    pub fn domain(&self) -> libc::c_int {
        match self {
            SockAddr::Unix(..) => libc::AF_UNIX,
            SockAddr::V4(_) => libc::AF_INET,
            SockAddr::V6(_) => libc::AF_INET6,
            SockAddr::Vsock(_) => libc::AF_VSOCK,
        }
    }

    /// Pointer and length for the system call.
    fn raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        fn p<T>(t: &T) -> *const libc::sockaddr {
            (t as *const T).cast()
        }
        let (ptr, len) = match self {
            SockAddr::Unix(sa, len) => (p(sa), *len),
            SockAddr::V4(sa) => (p(sa), std::mem::size_of_val(sa)),
            SockAddr::V6(sa) => (p(sa), std::mem::size_of_val(sa)),
            SockAddr::Vsock(sa) => (p(sa), std::mem::size_of_val(sa)),
        };
        (ptr, len as libc::socklen_t)
    }
}

/// A new non-blocking, close-on-exec stream socket of `domain`.
pub fn stream_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: no memory arguments.
    let fd = check(unsafe { libc::socket(domain, ty, 0) })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// connect(2) of `fd` to `sa` (EINPROGRESS and EAGAIN come back as errors).
pub fn connect(fd: RawFd, sa: &SockAddr) -> io::Result<()> {
    let (ptr, len) = sa.raw();
    // SAFETY: ptr points to `len` bytes of a socket address that `sa`
    // keeps alive for the call.
    check(unsafe { libc::connect(fd, ptr, len) })?;
    Ok(())
}

/// getsockopt(2) of an int-valued option.
pub fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes.
    check(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// The address family of the socket `fd` (getsockname(2)).
pub fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    let mut ss: libc::sockaddr_storage = zeroed();
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    // SAFETY: ss and len are valid for writes of their sizes.
    check(unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    Ok(ss.ss_family as libc::c_int)
}

/// sync_file_range(2) over [offset, offset+len) with `flags`
/// (`SYNC_FILE_RANGE_*`): starts and/or waits for write-back.
pub fn sync_file_range(fd: RawFd, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: no memory arguments.
    check(unsafe {
        libc::sync_file_range(fd, offset as libc::off64_t, len as libc::off64_t, flags)
    })?;
    Ok(())
}

/// posix_fadvise(2) `advice` over [offset, offset+len).
pub fn fadvise(fd: RawFd, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, advice) };
    // It returns the error number instead of setting errno.
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// The type (`f_type`, a magic number such as TMPFS_MAGIC) of the
/// filesystem holding `fd`.
pub fn fs_type(fd: RawFd) -> io::Result<i64> {
    // SAFETY: statfs is plain data; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes `st`, live and of the right type.
    check(unsafe { libc::fstatfs(fd, &mut st) })?;
    Ok(st.f_type as i64)
}

/// The owner (uid) of the file open on `fd`.
pub fn fd_owner(fd: RawFd) -> io::Result<u32> {
    // SAFETY: stat is plain data; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes `st`, live and of the right type.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_uid)
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r > 0 {
        r as u64
    } else {
        4096
    }
}

/// Which pages of [offset, offset+len) of file `fd` are in the page
/// cache (mincore(2) over a temporary read-only shared mapping; never
/// touched, so nothing is read): one byte per page in `out`, bit 0 set
/// for a resident page.  `offset` must be a multiple of the page size.
/// The kernel reports the page cache only for files the caller owns or
/// may write (else only pages this process mapped: none).
pub fn resident_pages(fd: RawFd, offset: u64, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let page = page_size();
    out.clear();
    if len == 0 {
        return Ok(());
    }
    if offset % page != 0 || usize::try_from(len).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let pages = len.div_ceil(page) as usize;
    out.resize(pages, 0);
    // SAFETY: a new mapping chosen by the kernel (no address given), so no
    // existing memory is replaced; it is only passed to mincore and
    // unmapped below, never read or written.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: [addr, addr+len) is the mapping made above; `out` holds one
    // byte per page of it.
    let r = unsafe { libc::mincore(addr, len as usize, out.as_mut_ptr()) };
    let err = (r < 0).then(io::Error::last_os_error);
    // SAFETY: unmaps exactly the mapping made above, referenced nowhere.
    unsafe { libc::munmap(addr, len as usize) };
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    extern "C" fn no_op(_: libc::c_int) {}

    /// A host's signal handler running on the thread blocked in a
    /// FdStream read (the TLS handshake's) does not fail the read.
    #[test]
    fn fd_stream_read_survives_a_signal() {
        use std::io::Read;
        // SAFETY: a handler that does nothing, for a signal whose default
        // is to be ignored (nothing else in the tests uses SIGWINCH);
        // sigaction is given valid, initialised structures.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = no_op as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut()),
                0
            );
        }
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 5];
            let n = FdStream(b.as_raw_fd()).read(&mut buf);
            n.map(|n| buf[..n].to_vec())
        });
        let tid = std::os::unix::thread::JoinHandleExt::as_pthread_t(&reader);
        // The reader blocks in recv; interrupt it a few times, then send.
        std::thread::sleep(std::time::Duration::from_millis(100));
        for _ in 0..5 {
            // SAFETY: tid names a thread not joined yet (its pthread_t
            // stays valid until the join below).
            unsafe { libc::pthread_kill(tid, libc::SIGWINCH) };
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        send(a.as_raw_fd(), b"hello", 0).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), b"hello");
    }

    #[test]
    fn pipe_send_and_splice() {
        let (r, w) = pipe().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(send(a.as_raw_fd(), b"hello", 0).unwrap(), 5);
        assert_eq!(
            splice(b.as_raw_fd(), None, w.as_raw_fd(), None, 5, 0).unwrap(),
            5
        );
        let mut buf = [0u8; 8];
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        let e = recv(b.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert_eq!(
            poll_one(b.as_raw_fd(), libc::POLLIN, 0).unwrap() & libc::POLLIN,
            0
        );
    }
}
