// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Signal state of the threads the library starts: SIGPIPE blocked there.
//
// Sockets are written with MSG_NOSIGNAL, but splice(2) into a socket (the
// splice data path) and write(2) into a pipe whose reader is gone have no
// such flag: the kernel sends SIGPIPE to the calling thread, which kills
// a host that leaves SIGPIPE at its default.  The library never touches
// the host's signal dispositions or the masks of the host's threads; it
// blocks SIGPIPE in the worker threads it starts itself, where the call
// then just fails with EPIPE.  A SIGPIPE raised there stays pending on
// that thread and goes away with it: it is directed at the thread, so no
// other thread of the host ever receives it.

/// Blocks SIGPIPE in the calling thread: call it first thing in every
/// thread the library starts for I/O, never on a caller's thread.
pub fn library_thread_start() {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before
    // use; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_thread_gets_epipe_and_its_sigpipe_stays_pending() {
        let (rd, wr) = crate::sys::pipe_with(libc::O_CLOEXEC).unwrap();
        drop(rd);
        let (n, errno, pending) = std::thread::spawn(move || {
            library_thread_start();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&wr);
            // SAFETY: one byte from a static buffer to our own pipe.
            let n = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: plain data filled in by sigpending.
            let pending = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut set);
                libc::sigismember(&set, libc::SIGPIPE)
            };
            (n, errno, pending)
        })
        .join()
        .unwrap();
        // The kernel did raise SIGPIPE (Rust test binaries ignore it, so
        // only the pending signal shows the mask held it) and the write
        // failed with EPIPE.
        assert_eq!((n, errno, pending), (-1, Some(libc::EPIPE), 1));
    }
}
