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
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// fcntl(2) with an integer argument (F_SETPIPE_SZ, F_GETFL, F_SETFL...).
pub fn fcntl_int(fd: RawFd, cmd: libc::c_int, arg: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: these commands take an int, no memory.
    check(unsafe { libc::fcntl(fd, cmd, arg) })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
