// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Bounded, cancellable connection setup: a deadline plus a cancel test,
//! non-blocking connects (unix, TCP, vsock) and waits on a socket.

use crate::error::{Error, Result};
use crate::proto::uri::Transport;
use crate::sys::{self, SockAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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

    /// The same limits, cancelled also once `flag` is set.
    pub fn or_cancelled_by(&self, flag: Arc<std::sync::atomic::AtomicBool>) -> Limits {
        let first = self.cancelled.clone();
        let cancelled: CancelFn =
            Arc::new(move || first() || flag.load(std::sync::atomic::Ordering::Relaxed));
        Limits {
            timeout: self.timeout,
            deadline: self.deadline,
            cancelled,
        }
    }

    /// Whether waits made under these limits are cancelled.
    pub fn is_cancelled(&self) -> bool {
        (self.cancelled)()
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
            let sa = SockAddr::unix(path.as_bytes())
                .ok_or_else(|| Error::invalid(format!("{what}: path too long")))?;
            connect_addr(&sa, lim, &what)
        }
        Transport::Tcp { host, port } => {
            use std::net::ToSocketAddrs;
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<std::net::SocketAddr> = (h, *port)
                .to_socket_addrs()
                .map_err(|e| Error::os(format!("resolve {host}"), e))?
                .collect();
            let what = format!("connect to {host}:{port}");
            let mut last = None;
            for a in addrs {
                match connect_addr(&SockAddr::inet(&a), lim, &what) {
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
            connect_addr(&SockAddr::vsock(*cid, *port), lim, &what)
        }
        // The endpoint runs ssh for these (endpoint::ssh).
        Transport::Ssh { host, .. } => Err(Error::invalid(format!(
            "nbd+ssh://{host}: not a socket address"
        ))),
    }
}

/// A new non-blocking socket connected to `sa` within `lim`, made
/// blocking again.
fn connect_addr(sa: &SockAddr, lim: &Limits, what: &str) -> Result<OwnedFd> {
    let fd =
        sys::stream_socket(sa.domain()).map_err(|e| Error::os(format!("{what}: socket"), e))?;
    let raw = fd.as_raw_fd();
    loop {
        lim.check(what)?;
        let Err(e) = sys::connect(raw, sa) else {
            break;
        };
        match e.raw_os_error().unwrap_or(0) {
            libc::EINTR => {}
            // A unix listener's backlog is full: try again shortly.
            libc::EAGAIN => lim.pause(Duration::from_millis(20)),
            libc::EINPROGRESS => {
                lim.wait(raw, libc::POLLOUT, what)?;
                let err = sys::getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_ERROR)
                    .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO));
                if err != 0 {
                    return Err(Error::os(what, std::io::Error::from_raw_os_error(err)));
                }
                break;
            }
            _ => return Err(Error::os(what, e)),
        }
    }
    set_blocking(raw).map_err(|e| Error::os(what, e))?;
    Ok(fd)
}

pub fn set_blocking(fd: RawFd) -> std::io::Result<()> {
    let fl = crate::sys::fcntl_int(fd, libc::F_GETFL, 0)?;
    crate::sys::fcntl_int(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK).map(|_| ())
}

/// The transport a socket handed over by the caller uses (its address
/// family; the address itself is never needed), and whether it is a
/// stream socket at all.
pub fn transport_of(fd: RawFd) -> std::io::Result<Transport> {
    let family = sys::socket_family(fd)?;
    if sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok(match family {
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
