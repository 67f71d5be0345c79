// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Bounded, cancellable connection setup: a deadline plus a cancel test,
//! non-blocking connects (unix, TCP, vsock) and waits on a socket.

use crate::error::{Error, Result};
use crate::proto::uri::Transport;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test of whether the caller asked to stop (the job's cancel flag).
pub type CancelFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long setting up a connection may wait for the other side, and
/// what stops it early.  Cloned into endpoints for later connections.
#[derive(Clone)]
pub struct Limits {
    /// The configured `timeout` (None: never).
    timeout: Option<Duration>,
    /// Every wait ends by then; None: `timeout` from each connect.
    deadline: Option<Instant>,
    cancelled: CancelFn,
}

impl Limits {
    /// Waits bounded by `timeout` from now on (one deadline for everything
    /// this value is used for, until [`renew`](Self::renew)).
    pub fn new(timeout: Option<Duration>, cancelled: CancelFn) -> Limits {
        Limits {
            timeout,
            deadline: timeout.map(|t| Instant::now() + t),
            cancelled,
        }
    }

    /// No limit and no cancellation (tests, tools).
    pub fn none() -> Limits {
        Limits::new(None, Arc::new(|| false))
    }

    /// The same limits with a deadline `timeout` from now.
    pub fn renew(&self) -> Limits {
        Limits::new(self.timeout, self.cancelled.clone())
    }

    /// Fails if cancelled or past the deadline (`what` names the step).
    pub fn check(&self, what: &str) -> Result<()> {
        if (self.cancelled)() {
            return Err(Error::new(libc::ECANCELED, format!("{what}: cancelled")));
        }
        if self.left().is_some_and(|l| l.is_zero()) {
            return Err(self.timed_out(what));
        }
        Ok(())
    }

    /// Time left before the deadline (None: no deadline).
    pub fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn timed_out(&self, what: &str) -> Error {
        let secs = self.timeout.unwrap_or_default().as_secs();
        Error::new(
            libc::ETIMEDOUT,
            format!(
                "{what}: the server did not answer within {secs} second{} (the \"timeout\" \
                 option)",
                if secs == 1 { "" } else { "s" }
            ),
        )
    }

    /// Waits until `fd` reports one of `events` (or an error or hangup,
    /// which the next call on it then reports), in steps that notice
    /// cancellation.
    pub fn wait(&self, fd: RawFd, events: libc::c_short, what: &str) -> Result<()> {
        loop {
            self.check(what)?;
            let step = self
                .left()
                .map_or(50, |l| l.as_millis().clamp(1, 50) as libc::c_int);
            match crate::sys::poll_one(fd, events, step) {
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::os(format!("{what}: poll"), e)),
            }
        }
    }

    fn pause(&self, d: Duration) {
        std::thread::sleep(self.left().map_or(d, |l| l.min(d)));
    }
}

/// Connects a socket to `t` without ever blocking longer than one step,
/// then makes it blocking again.
pub fn connect(t: &Transport, lim: &Limits) -> Result<OwnedFd> {
    match t {
        Transport::Unix { path } => {
            let what = format!("connect to unix socket {path}");
            let mut sa: libc::sockaddr_un = zeroed_addr();
            sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_bytes();
            if bytes.len() >= sa.sun_path.len() || bytes.contains(&0) {
                return Err(Error::invalid(format!("{what}: path too long")));
            }
            for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
            let fd = socket(libc::AF_UNIX, &what)?;
            connect_addr(&fd, &sa, len, lim, &what)?;
            Ok(fd)
        }
        Transport::Tcp { host, port } => {
            use std::net::{SocketAddr, ToSocketAddrs};
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<SocketAddr> = (h, *port)
                .to_socket_addrs()
                .map_err(|e| Error::os(format!("resolve {host}"), e))?
                .collect();
            let what = format!("connect to {host}:{port}");
            let mut last = None;
            for a in addrs {
                let r = match a {
                    SocketAddr::V4(v4) => {
                        let mut sa: libc::sockaddr_in = zeroed_addr();
                        sa.sin_family = libc::AF_INET as libc::sa_family_t;
                        sa.sin_port = v4.port().to_be();
                        sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                        socket(libc::AF_INET, &what).and_then(|fd| {
                            connect_addr(&fd, &sa, std::mem::size_of_val(&sa), lim, &what)
                                .map(|()| fd)
                        })
                    }
                    SocketAddr::V6(v6) => {
                        let mut sa: libc::sockaddr_in6 = zeroed_addr();
                        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                        sa.sin6_port = v6.port().to_be();
                        sa.sin6_addr.s6_addr = v6.ip().octets();
                        sa.sin6_flowinfo = v6.flowinfo();
                        sa.sin6_scope_id = v6.scope_id();
                        socket(libc::AF_INET6, &what).and_then(|fd| {
                            connect_addr(&fd, &sa, std::mem::size_of_val(&sa), lim, &what)
                                .map(|()| fd)
                        })
                    }
                };
                match r {
                    Ok(fd) => return Ok(fd),
                    // Cancelled or out of time: no other address either.
                    Err(e) if matches!(e.errno, libc::ECANCELED | libc::ETIMEDOUT) => {
                        return Err(e)
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last
                .unwrap_or_else(|| Error::new(libc::EHOSTUNREACH, format!("{host}: no address"))))
        }
        Transport::Vsock { cid, port } => {
            let what = format!("connect to vsock {cid}:{port}");
            let mut sa: libc::sockaddr_vm = zeroed_addr();
            sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            sa.svm_cid = *cid;
            sa.svm_port = *port;
            let fd = socket(libc::AF_VSOCK, &what)?;
            connect_addr(&fd, &sa, std::mem::size_of_val(&sa), lim, &what)?;
            Ok(fd)
        }
    }
}

/// An all-zero socket address structure.
fn zeroed_addr<T: SockAddr>() -> T {
    // SAFETY: only instantiated for libc's plain-data sockaddr types, for
    // which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// libc socket address structures (plain data).
trait SockAddr {}
impl SockAddr for libc::sockaddr_un {}
impl SockAddr for libc::sockaddr_in {}
impl SockAddr for libc::sockaddr_in6 {}
impl SockAddr for libc::sockaddr_vm {}

/// A new non-blocking, close-on-exec stream socket.
fn socket(domain: libc::c_int, what: &str) -> Result<OwnedFd> {
    // SAFETY: socket() takes no memory arguments.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(Error::os(
            format!("{what}: socket"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects the non-blocking `fd` to `sa` (`len` bytes of it) within
/// `lim`, then clears O_NONBLOCK.
fn connect_addr<T: SockAddr>(
    fd: &OwnedFd,
    sa: &T,
    len: usize,
    lim: &Limits,
    what: &str,
) -> Result<()> {
    let raw = fd.as_raw_fd();
    loop {
        lim.check(what)?;
        // SAFETY: sa points to a socket address structure of at least
        // `len` bytes, alive for the call.
        let r = unsafe {
            libc::connect(
                raw,
                (sa as *const T).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error().unwrap_or(0) {
            libc::EINTR => {}
            // A unix listener's backlog is full: try again shortly.
            libc::EAGAIN => lim.pause(Duration::from_millis(20)),
            libc::EINPROGRESS => {
                lim.wait(raw, libc::POLLOUT, what)?;
                let err = so_error(raw);
                if err != 0 {
                    return Err(Error::os(what, std::io::Error::from_raw_os_error(err)));
                }
                break;
            }
            _ => return Err(Error::os(what, e)),
        }
    }
    set_blocking(raw).map_err(|e| Error::os(what, e))
}

fn so_error(fd: RawFd) -> libc::c_int {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        err
    }
}

pub fn set_blocking(fd: RawFd) -> std::io::Result<()> {
    let fl = crate::sys::fcntl_int(fd, libc::F_GETFL, 0)?;
    crate::sys::fcntl_int(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK).map(|_| ())
}

/// The transport a socket handed over by the caller uses (its address
/// family; the address itself is never needed), and whether it is a
/// stream socket at all.
pub fn transport_of(fd: RawFd) -> std::io::Result<Transport> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    // SAFETY: ss and len are valid for writes of their sizes.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let mut ty: libc::c_int = 0;
    let mut tlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: ty and tlen are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut tlen,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if ty != libc::SOCK_STREAM {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok(match ss.ss_family as libc::c_int {
        libc::AF_UNIX => Transport::Unix {
            path: String::new(),
        },
        libc::AF_VSOCK => Transport::Vsock { cid: 0, port: 0 },
        _ => Transport::Tcp {
            host: String::new(),
            port: 0,
        },
    })
}

/// A connected socket the caller handed over (nbdcpy_config_set_socket):
/// nbdcpy's own duplicate of the caller's fd, taken once by the endpoint
/// that negotiates on it.
#[derive(Clone)]
pub struct GivenSocket {
    fd: Arc<std::sync::Mutex<Option<OwnedFd>>>,
    /// The caller's fd number, for messages.
    pub caller_fd: RawFd,
    /// The export to ask for ("" = the server's default).
    pub export: String,
}

impl GivenSocket {
    /// Duplicates `fd` (close-on-exec): the caller keeps its own.
    pub fn dup(fd: RawFd, export: &str) -> Result<GivenSocket> {
        let what = || format!("socket fd {fd}");
        let owned = crate::sys::dup_cloexec(fd).map_err(|e| Error::os(what(), e))?;
        transport_of(owned.as_raw_fd()).map_err(|e| Error::os(what(), e))?;
        Ok(GivenSocket {
            fd: Arc::new(std::sync::Mutex::new(Some(owned))),
            caller_fd: fd,
            export: export.to_string(),
        })
    }

    /// Moves the descriptor into a new value that alone owns it (a config
    /// hands it to one handle); None if it was taken already.
    pub fn take(&self) -> Option<GivenSocket> {
        let fd = self.fd.lock().ok()?.take()?;
        Some(GivenSocket {
            fd: Arc::new(std::sync::Mutex::new(Some(fd))),
            caller_fd: self.caller_fd,
            export: self.export.clone(),
        })
    }

    /// The descriptor itself, once.
    pub fn take_fd(&self) -> Option<OwnedFd> {
        self.fd.lock().ok()?.take()
    }
}

impl std::fmt::Debug for GivenSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GivenSocket(fd {})", self.caller_fd)
    }
}

impl PartialEq for GivenSocket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fd, &other.fd)
    }
}

impl Eq for GivenSocket {}
