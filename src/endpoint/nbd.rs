// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! NBD endpoints: connecting, the blocking handshake, and multi-conn connections.
//
// NBD endpoints: connecting (unix, TCP, vsock, ssh, or a socket-activated
// subprocess), the blocking handshake driven through `proto::handshake`,
// and the extra connections used for multi-conn.

use super::connect::{self, GivenSocket, Limits};
use super::ssh::{self, Tunnel};
use super::subprocess::ServerProcess;
use super::Side;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::handshake::{Handshake, HandshakeOptions};
use crate::proto::reply::{Chunk, Parse, ReplyParser};
use crate::proto::request::{self, Request};
use crate::proto::uri::{self, Transport};
use crate::proto::{consts, Negotiated, COMPACT_MAX_EFFECT};
use crate::sys;
use crate::tls::{TlsClient, TlsSession};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use std::time::{Duration, Instant};

pub struct NbdEndpoint {
    /// What the first connection negotiated; later ones must match.
    pub info: Negotiated,
    /// For messages: the URI or the command.
    pub name: String,
    transport: Box<Transport>,
    export: String,
    side: Side,
    /// Connected, negotiated sockets; [0] is the first connection.
    socks: Vec<Option<Link>>,
    /// Connections handed to a lane (which then says goodbye itself), or
    /// left mid-message by a failed send: no DISC from `disconnect`.
    no_disc: Vec<bool>,
    server: Option<Box<ServerProcess>>,
    want_meta: bool,
    /// The source's dirty bitmap context (`--dirty-bitmap`).
    dirty: Option<String>,
    /// nbds://: every connection runs its own TLS session.
    tls: Option<Box<EndpointTls>>,
    /// Bounds every later connect and handshake (renewed for each).
    limits: Box<Limits>,
    /// A socket the caller handed over: no further connections.
    single: bool,
}

/// An nbds:// endpoint's TLS: the client and each socket's session.
struct EndpointTls {
    client: Arc<TlsClient>,
    /// The session of each socket in `socks` (until a lane takes it).
    sessions: Vec<Option<TlsSession>>,
    /// What the first connection's TLS negotiated, for the log.
    summary: String,
}

impl NbdEndpoint {
    pub fn connect_uri(u: &str, side: Side, cfg: &Config, lim: &Limits) -> Result<NbdEndpoint> {
        let parsed = uri::parse(u).map_err(|e| Error::invalid(e.to_string()))?;
        let tls = if parsed.tls {
            let host = match &parsed.transport {
                Transport::Tcp { host, .. } | Transport::Ssh { host, .. } => Some(host.as_str()),
                _ => None,
            };
            Some(TlsClient::new(&parsed.tls_params.or(&cfg.tls), host)?)
        } else {
            None
        };
        Self::new(
            parsed.transport,
            parsed.export_name,
            u.to_string(),
            side,
            cfg,
            None,
            (tls, lim, None),
        )
    }

    pub fn spawn(argv: &[String], side: Side, cfg: &Config, lim: &Limits) -> Result<NbdEndpoint> {
        let server = ServerProcess::spawn(argv, cfg.socket_dir.as_deref().map(Path::new))
            .map_err(|e| Error::os(format!("cannot run {}", argv.first().map_or("", |s| s)), e))?;
        let transport = Transport::Unix {
            path: server.socket_path().to_string_lossy().into_owned(),
        };
        let name = format!("[ {} ]", argv.join(" "));
        Self::new(
            transport,
            String::new(),
            name,
            side,
            cfg,
            Some(Box::new(server)),
            (None, lim, None),
        )
    }

    /// Negotiates on a socket the caller connected (one connection only).
    pub fn given(s: &GivenSocket, side: Side, cfg: &Config, lim: &Limits) -> Result<NbdEndpoint> {
        let fd = s.take_fd().ok_or_else(|| {
            Error::new(libc::EBUSY, "the socket was already used by another handle")
        })?;
        let transport =
            connect::transport_of(fd.as_raw_fd()).map_err(|e| Error::os("socket", e))?;
        connect::set_blocking(fd.as_raw_fd()).map_err(|e| Error::os("socket", e))?;
        let name = format!("socket fd {}", s.caller_fd);
        Self::new(
            transport,
            s.export.clone(),
            name,
            side,
            cfg,
            None,
            (None, lim, Some(fd)),
        )
    }

    fn new(
        transport: Transport,
        export: String,
        name: String,
        side: Side,
        cfg: &Config,
        server: Option<Box<ServerProcess>>,
        (tls, lim, given): (Option<Arc<TlsClient>>, &Limits, Option<OwnedFd>),
    ) -> Result<NbdEndpoint> {
        // Block status is only asked of a source, and only when used.
        let want_meta = side == Side::Source && !cfg.no_extents;
        let single = given.is_some();
        // An incremental copy also asks for the source's dirty bitmap.
        let dirty = match (side, &cfg.dirty_bitmap) {
            (Side::Source, Some(b)) => Some(format!("qemu:dirty-bitmap:{b}")),
            _ => None,
        };
        let fd = match given {
            Some(fd) => Link::plain(fd),
            None => dial(&transport, lim)?,
        };
        let ask = Ask {
            export: &export,
            want_meta,
            dirty: dirty.as_deref(),
            tls: tls.as_deref(),
        };
        let (sock, info, sess) = negotiate(fd, &transport, ask, lim)?;
        let unusable = if let (Some(ctx), None) = (&dirty, info.dirty_context_id) {
            Some(Error::new(
                libc::ENOTSUP,
                format!(
                    "the NBD server does not offer the dirty bitmap \"{}\" \
                     (meta context \"{ctx}\"{}): export it with qemu-nbd -B {0} or \
                     qemu's block-export-add bitmaps",
                    cfg.dirty_bitmap.as_deref().unwrap_or_default(),
                    if info.mode == crate::proto::HeaderMode::Simple {
                        ", and it has no structured replies"
                    } else {
                        ""
                    }
                ),
            ))
        } else if info.size > i64::MAX as u64 {
            Some(Error::new(
                libc::EOVERFLOW,
                format!("export size {} is too large", info.size),
            ))
        } else {
            None
        };
        if let Some(e) = unusable {
            abandon(sock, info.mode, sess);
            return Err(e);
        }
        Ok(NbdEndpoint {
            info,
            name,
            transport: Box::new(transport),
            export,
            side,
            socks: vec![Some(sock)],
            no_disc: vec![false],
            server,
            want_meta,
            dirty,
            tls: tls.map(|client| {
                Box::new(EndpointTls {
                    summary: sess.as_ref().map_or(String::new(), |t| {
                        format!("{}, {}", t.describe(), client.describe())
                    }),
                    client,
                    sessions: vec![sess],
                })
            }),
            limits: Box::new(lim.clone()),
            single,
        })
    }

    /// "TLSv1.3 TLS_AES_256_GCM_SHA384, TLS-PSK as \"alice\"" for nbds://.
    pub fn tls_summary(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.summary.as_str())
    }

    fn tls_client(&self) -> Option<&TlsClient> {
        self.tls.as_ref().map(|t| &*t.client)
    }

    /// What each further connection negotiates.
    fn ask(&self) -> Ask<'_> {
        Ask {
            export: &self.export,
            want_meta: self.want_meta,
            dirty: self.dirty.as_deref(),
            tls: self.tls_client(),
        }
    }

    /// The TLS session of lane `i`'s socket (nbds://), for the lane's
    /// connection to take over after [`lane_socket`](Self::lane_socket).
    pub fn take_session(&mut self, i: usize) -> Option<TlsSession> {
        self.tls
            .as_mut()
            .and_then(|t| t.sessions.get_mut(i))
            .and_then(Option::take)
    }

    /// Whether connections run TLS (then no splice: payloads are
    /// encrypted in user space).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connections this endpoint allows: 1 unless the server advertises
    /// multi-conn (and servers run as subprocesses get one, like nbdcopy:
    /// qemu-nbd accepts one client by default).
    pub fn max_connections(&self) -> u32 {
        if self.info.can_multi_conn() && self.server.is_none() && !self.single {
            u32::MAX
        } else {
            1
        }
    }

    /// The end of the copy this endpoint is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Connected over a unix domain socket (also subprocess servers, and
    /// the socketpair to ssh of nbd+ssh://).
    pub fn is_unix(&self) -> bool {
        matches!(
            *self.transport,
            Transport::Unix { .. } | Transport::Ssh { .. }
        )
    }

    /// The connected, negotiated socket for lane `i` (the first one, or
    /// a new one whose negotiation agrees with the first: `info`), and
    /// the connection's name for messages.  The endpoint keeps owning the
    /// socket; the lane says goodbye (DISC) on it, not `disconnect`.
    pub fn lane_socket(&mut self, i: usize) -> Result<(RawFd, String)> {
        while self.socks.len() <= i {
            let (sock, info, sess) =
                connect_one(&self.transport, self.ask(), &self.limits.renew())?;
            self.adopt(sock, info, sess)?;
        }
        self.no_disc[i] = true;
        let fd = self.socks[i]
            .as_ref()
            .map(|s| s.as_raw_fd())
            .ok_or_else(|| Error::new(libc::EBADF, "connection already closed"))?;
        Ok((fd, format!("{} {}", self.side, self.name)))
    }

    /// What a lane needs to connect to this server again after losing its
    /// connection (`--retries`); None for a server run as a subprocess and
    /// for a socket the caller handed over, which are never reconnected.
    /// nbds:// connections run a new TLS session.
    pub fn redialer(&self) -> Option<Redial> {
        (self.server.is_none() && !self.single).then(|| Redial {
            transport: (*self.transport).clone(),
            export: self.export.clone(),
            want_meta: self.want_meta,
            dirty: self.dirty.clone(),
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            limits: (*self.limits).clone(),
        })
    }

    /// Starts zeroing [0, len) of the export (the range the copy will
    /// write) with WRITE_ZEROES + FAST_ZERO on the first connection, before
    /// the copy starts (like qemu-img convert).  The requests are sent now;
    /// [`fast_zero_finish`](Self::fast_zero_finish) collects the replies,
    /// so the server zeroes while other connections are being opened.
    /// None: the server does not offer FAST_ZERO (or cannot take it).
    pub fn fast_zero_start(&mut self, len: u64, timeout: Duration) -> Result<Option<FastZero>> {
        let len = len.min(self.info.size);
        if len == 0 || !self.can_fast_zero_all() {
            return Ok(None);
        }
        // Extended headers carry 64-bit lengths: pieces far over 4 GiB.
        let max = self.info.max_effect_len();
        let reqs: Vec<Request> = (0..len.div_ceil(max))
            .map(|i| Request {
                cmd: consts::NBD_CMD_WRITE_ZEROES,
                flags: consts::NBD_CMD_FLAG_FAST_ZERO,
                cookie: i + 1,
                offset: i * max,
                length: (len - i * max).min(max),
            })
            .collect();
        let pending = reqs.len();
        let parser = self
            .send_requests(&reqs, timeout)
            .map_err(|e| e.context(self.zeroing()).on(self.side))?;
        Ok(parser.map(|parser| FastZero {
            parser,
            pending,
            timeout,
        }))
    }

    /// Sends `reqs` on the first connection (before the copy, blocking,
    /// bounded by `timeout`) and returns the parser that expects their
    /// replies.  None: a request is not one this server can take (nothing
    /// was sent).  A failed send leaves the stream mid-message: no DISC.
    fn send_requests(
        &mut self,
        reqs: &[Request],
        timeout: Duration,
    ) -> Result<Option<ReplyParser>> {
        let Some(Some(sock)) = self.socks.first() else {
            return Ok(None);
        };
        let fd = sock.as_raw_fd();
        let mut parser = ReplyParser::new(&self.info);
        let mut out = Vec::with_capacity(32 * reqs.len());
        for req in reqs {
            if self.info.check_request(req).is_err() || parser.register(req).is_err() {
                return Ok(None);
            }
            let mut b = [0u8; 32];
            let n = request::encode(self.info.mode, req, &mut b);
            out.extend_from_slice(&b[..n]);
        }
        set_timeouts(fd, Some(timeout));
        let mut s = sys::FdStream(fd);
        let r = match self.tls.as_mut().and_then(|t| t.sessions[0].as_mut()) {
            Some(t) => t.write_all(&out),
            None => s.write_all(&out),
        };
        set_timeouts(fd, None);
        if let Err(e) = r {
            self.no_disc[0] = true;
            return Err(timeout_err("send", e, timeout));
        }
        Ok(Some(parser))
    }

    /// Whether [`fast_zero_start`](Self::fast_zero_start) can be tried.
    pub fn can_fast_zero_all(&self) -> bool {
        let info = &self.info;
        info.can_write_zeroes() && info.can_fast_zero() && !info.read_only()
    }

    /// Waits for the replies to [`fast_zero_start`](Self::fast_zero_start).
    /// Ok(true): the range now reads as zeroes, so the copy may skip every
    /// zero range.  Ok(false): the server cannot zero quickly (it said
    /// ENOTSUP, or refused otherwise); the copy then zeroes range by range
    /// as usual.  Err: the connection broke.
    pub fn fast_zero_finish(&mut self, fz: FastZero, cancelled: &dyn Fn() -> bool) -> Result<bool> {
        let FastZero {
            mut parser,
            pending,
            timeout,
        } = fz;
        let r = self.collect(&mut parser, pending, timeout, cancelled, &mut |_, _| {});
        r.map_err(|e| e.context(self.zeroing()).on(self.side))
    }

    /// Estimates which fraction of the export reads as zeroes from one
    /// BLOCK_STATUS over its start (up to 4 GiB), on the first
    /// connection.  None: the server has no block status, or failed it.
    pub fn sample_zero_fraction(
        &mut self,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<f64>> {
        if !self.info.can_block_status() || self.info.size == 0 {
            return Ok(None);
        }
        let req = Request {
            cmd: consts::NBD_CMD_BLOCK_STATUS,
            flags: 0,
            cookie: 1,
            offset: 0,
            length: self.info.size.min(COMPACT_MAX_EFFECT),
        };
        let ctx = |e: Error| e.context("block status");
        let Some(mut parser) = self.send_requests(&[req], timeout).map_err(ctx)? else {
            return Ok(None);
        };
        let (mut zero, mut total) = (0u64, 0u64);
        let ok = self
            .collect(&mut parser, 1, timeout, cancelled, &mut |c, _| {
                if let Chunk::BlockStatus {
                    extents,
                    dirty_bitmap: false,
                    ..
                } = c
                {
                    for e in extents {
                        total += e.len;
                        if e.flags & consts::NBD_STATE_ZERO != 0 {
                            zero += e.len;
                        }
                    }
                }
            })
            .map_err(ctx)?;
        Ok((ok && total > 0).then(|| zero as f64 / total as f64))
    }

    /// Reads `len` bytes (at most 64 KiB) at `offset` on the first
    /// connection, before the copy runs (a checkpoint's source samples).
    pub fn read_at(
        &mut self,
        offset: u64,
        len: u64,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<u8>> {
        let len = len.min(64 << 10);
        let req = Request {
            cmd: consts::NBD_CMD_READ,
            flags: 0,
            cookie: 2,
            offset,
            length: len,
        };
        let ctx = |e: Error| e.context(format!("read at offset {offset}"));
        let bad = || Error::new(libc::EIO, format!("read at offset {offset}: not possible"));
        let mut parser = self
            .send_requests(&[req], timeout)
            .map_err(ctx)?
            .ok_or_else(bad)?;
        let mut out = vec![0u8; len as usize];
        // Holes read as zeroes; the parser keeps chunks inside the request.
        let ok = self
            .collect(&mut parser, 1, timeout, cancelled, &mut |c, buf| {
                if let Chunk::Data {
                    offset: at,
                    payload,
                    ..
                } = c
                {
                    let from = (at - offset) as usize;
                    if let (Some(d), Some(p)) =
                        (out.get_mut(from..from + payload.len()), buf.get(payload))
                    {
                        d.copy_from_slice(p);
                    }
                }
            })
            .map_err(ctx)?;
        if !ok {
            return Err(Error::new(
                libc::EIO,
                format!("read at offset {offset}: the server failed it"),
            ));
        }
        Ok(out)
    }

    /// Reads replies on the first connection until `pending` requests
    /// registered in `parser` are complete, handing each chunk to
    /// `on_chunk`; every wait is bounded by `timeout` and ends when `cancelled()`.
    /// Ok(false): the server failed one of them.
    fn collect(
        &mut self,
        parser: &mut ReplyParser,
        mut pending: usize,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
        on_chunk: &mut dyn FnMut(Chunk, &[u8]),
    ) -> Result<bool> {
        let Some(Some(sock)) = self.socks.first() else {
            return Err(Error::new(libc::EBADF, "connection already closed"));
        };
        let fd = sock.as_raw_fd();
        let mut plain = sys::FdStream(fd);
        let mut tls = self.tls.as_mut().and_then(|t| t.sessions[0].as_mut());
        // Room for a block status reply with many extents.
        let mut buf = vec![0u8; 4 << 20];
        let (mut have, mut all_ok) = (0usize, true);
        loop {
            if pending == 0 {
                break Ok(all_ok);
            }
            match parser.parse(&buf[..have]) {
                Ok(Parse::Message { len, done, chunk }) => {
                    on_chunk(chunk, &buf[..have]);
                    buf.copy_within(len..have, 0);
                    have -= len;
                    if let Some(c) = done {
                        pending -= 1;
                        all_ok &= c.result.is_ok();
                    }
                }
                Ok(Parse::Incomplete { .. }) if have == buf.len() => {
                    break Err(Error::new(libc::EPROTO, "protocol error: reply too large"));
                }
                Ok(Parse::Incomplete { .. }) => {
                    // Plaintext TLS already holds needs no wait.
                    let ready = tls.as_ref().is_some_and(|t| t.pending() > 0);
                    let waited = if ready {
                        Ok(())
                    } else {
                        wait_readable(fd, timeout, cancelled)
                    };
                    let s: &mut dyn Read = match tls.as_mut() {
                        Some(t) => &mut **t,
                        None => &mut plain,
                    };
                    match waited.and_then(|()| {
                        s.read(&mut buf[have..])
                            .map_err(|e| timeout_err("receive", e, timeout))
                    }) {
                        Ok(0) => {
                            break Err(Error::new(libc::ECONNRESET, "server closed the connection"))
                        }
                        Ok(n) => have += n,
                        Err(e) if e.errno == libc::EINTR => {}
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break Err(Error::new(libc::EPROTO, format!("protocol error: {e}"))),
            }
        }
    }

    fn zeroing(&self) -> String {
        format!("{} {}: zeroing the export", self.side, self.name)
    }

    /// Opens connections until there are `n`, running the handshakes in
    /// parallel; each must negotiate what the first did.
    pub fn open_connections(&mut self, n: usize) -> Result<()> {
        let need = n.saturating_sub(self.socks.len());
        if need == 0 {
            return Ok(());
        }
        let (t, ask) = (&*self.transport, self.ask());
        let lim = &self.limits.renew();
        let got: Vec<Result<Connected>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..need)
                .map(|_| s.spawn(move || connect_one(t, ask, lim)))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::new(libc::EIO, "connecting thread panicked"))
                    })
                })
                .collect()
        });
        for r in got {
            let (sock, info, sess) = r?;
            self.adopt(sock, info, sess)?;
        }
        Ok(())
    }

    /// Keeps a further connection after checking it agrees with the first.
    fn adopt(&mut self, sock: Link, info: Negotiated, sess: Option<TlsSession>) -> Result<()> {
        if info.size != self.info.size
            || info.mode != self.info.mode
            || info.tflags != self.info.tflags
            || info.meta_context_id != self.info.meta_context_id
            || info.dirty_context_id != self.info.dirty_context_id
        {
            abandon(sock, info.mode, sess);
            return Err(Error::new(
                libc::EPROTO,
                format!(
                    "connection {} negotiated differently from the first (size {} vs {})",
                    self.socks.len() + 1,
                    info.size,
                    self.info.size
                ),
            ));
        }
        self.socks.push(Some(sock));
        self.no_disc.push(false);
        if let Some(t) = self.tls.as_mut() {
            t.sessions.push(sess);
        }
        Ok(())
    }

    /// Closes every connection and stops the server subprocess.
    pub fn disconnect(&mut self) {
        let mut disc = [0u8; 32];
        let n = request::encode(self.info.mode, &request::DISC, &mut disc);
        // nbd+ssh://: every socket is closed before any ssh is waited for,
        // so they all end at once.
        let mut tunnels = Vec::new();
        for (i, s) in self.socks.iter_mut().enumerate() {
            if let Some(fd) = s.take() {
                let sess = self
                    .tls
                    .as_mut()
                    .and_then(|t| t.sessions.get_mut(i))
                    .and_then(Option::take);
                if let Some(t) = sess {
                    // Through TLS, and close_notify (a lane's connection
                    // has no session here: the lane says goodbye).
                    t_goodbye(t, if self.no_disc[i] { &[] } else { &disc[..n] });
                } else if !self.no_disc[i] {
                    // At a message boundary and not a lane's: say goodbye
                    // (best effort, never blocking).
                    let _ = sys::send(fd.as_raw_fd(), &disc[..n], libc::MSG_DONTWAIT);
                }
                let _ = sys::shutdown(fd.as_raw_fd());
                let Link { fd, tunnel } = fd;
                drop(fd);
                tunnels.extend(tunnel);
            }
        }
        drop(tunnels);
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }
}

impl Drop for NbdEndpoint {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// Connects to an endpoint's server again (see `NbdEndpoint::redialer`).
#[derive(Clone)]
pub struct Redial {
    transport: Transport,
    export: String,
    want_meta: bool,
    dirty: Option<String>,
    tls: Option<Arc<TlsClient>>,
    limits: Limits,
}

impl Redial {
    /// A new connected, negotiated socket and (nbds://) its TLS session;
    /// blocking, bounded by the configured timeout and cancellable like
    /// the first connect.
    pub fn dial(&self) -> Result<Connected> {
        let ask = Ask {
            export: &self.export,
            want_meta: self.want_meta,
            dirty: self.dirty.as_deref(),
            tls: self.tls.as_deref(),
        };
        connect_one(&self.transport, ask, &self.limits.renew())
    }

    /// Waits `wait`, then dials, on a helper thread, so the caller's
    /// event loop goes on meanwhile; the result arrives through the
    /// returned [`Dialing`].  Both steps end early when the job is
    /// cancelled or the `Dialing` is dropped.
    pub fn dial_after(&self, wait: Duration) -> Dialing {
        let abandon = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut me = self.clone();
        me.limits = self.limits.or_cancelled_by(abandon.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("nbdcpy-redial".into())
            .spawn(move || {
                let _ = tx.send(me.wait_then_dial(wait));
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                let (tx, rx2) = std::sync::mpsc::channel();
                let _ = tx.send(Err(Error::os("cannot start a reconnect thread", e)));
                return Dialing {
                    rx: rx2,
                    abandon,
                    thread: None,
                };
            }
        };
        Dialing {
            rx,
            abandon,
            thread,
        }
    }

    fn wait_then_dial(&self, wait: Duration) -> Result<Connected> {
        let end = Instant::now() + wait;
        loop {
            if self.limits.is_cancelled() {
                return Err(Error::new(
                    libc::ECANCELED,
                    "stopped while waiting to reconnect",
                ));
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
        self.dial()
    }
}

/// A reconnect in progress on a helper thread ([`Redial::dial_after`]).
/// Dropping it abandons the attempt and waits for the thread (which
/// notices within a few milliseconds), so no thread outlives it.
pub struct Dialing {
    rx: std::sync::mpsc::Receiver<Result<Connected>>,
    abandon: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dialing {
    /// The attempt's result once it is there (never blocks).
    pub fn poll(&mut self) -> Option<Result<Connected>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(Error::new(
                libc::EIO,
                "internal error: the reconnect thread ended without a result",
            ))),
        }
    }
}

impl Drop for Dialing {
    fn drop(&mut self) {
        self.abandon
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
fn t_goodbye(mut t: TlsSession, last: &[u8]) {
    t.goodbye(last);
}

/// A negotiated connection given up before any use (a bitmap it lacks, a
/// size it cannot have, a second connection unlike the first): the
/// transmission phase's goodbye, NBD_CMD_DISC, best effort, then closed.
fn abandon(sock: Link, mode: crate::proto::HeaderMode, sess: Option<TlsSession>) {
    let mut disc = [0u8; 32];
    let n = request::encode(mode, &request::DISC, &mut disc);
    match sess {
        Some(t) => t_goodbye(t, &disc[..n]),
        None => {
            let _ = sys::send(sock.as_raw_fd(), &disc[..n], libc::MSG_DONTWAIT);
        }
    }
    let _ = sys::shutdown(sock.as_raw_fd());
}

/// A connected socket, what it negotiated, and its TLS session.
pub type Connected = (Link, Negotiated, Option<TlsSession>);

/// A connected socket, and for nbd+ssh:// the ssh process it speaks
/// through (stopped after the socket is closed: fields drop in order).
pub struct Link {
    fd: OwnedFd,
    tunnel: Option<Tunnel>,
}

impl Link {
    fn plain(fd: OwnedFd) -> Link {
        Link { fd, tunnel: None }
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Connects to `t` within `lim`: a socket, or (nbd+ssh://) a new ssh
/// process with the socket that speaks through it.
fn dial(t: &Transport, lim: &Limits) -> Result<Link> {
    lim.check("connect")?;
    match t {
        Transport::Ssh { .. } => {
            let (fd, tunnel) = ssh::open(t)?;
            Ok(Link {
                fd,
                tunnel: Some(tunnel),
            })
        }
        _ => connect::connect(t, lim).map(Link::plain),
    }
}

/// Zeroing requests sent by `fast_zero_start`, awaiting their replies.
pub struct FastZero {
    parser: ReplyParser,
    pending: usize,
    timeout: Duration,
}

/// Waits until `fd` is readable, in steps that notice cancellation.
fn wait_readable(fd: RawFd, timeout: Duration, cancelled: &dyn Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cancelled() {
            return Err(Error::cancelled());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                libc::ETIMEDOUT,
                format!(
                    "no I/O completed for {} seconds: the server is not responding",
                    timeout.as_secs()
                ),
            ));
        }
        match sys::poll_one(fd, libc::POLLIN, left.as_millis().min(50) as i32) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::os("poll", e)),
        }
    }
}

fn timeout_err(what: &str, e: std::io::Error, timeout: Duration) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        Error::new(
            libc::ETIMEDOUT,
            format!("{what}: no answer within {} seconds", timeout.as_secs()),
        )
    } else {
        Error::os(what, e)
    }
}

/// What every connection to an endpoint negotiates.
#[derive(Clone, Copy)]
struct Ask<'a> {
    export: &'a str,
    /// base:allocation (sources that use extents).
    want_meta: bool,
    /// The dirty bitmap's meta context (incremental copies).
    dirty: Option<&'a str>,
    /// nbds://: TLS first.
    tls: Option<&'a TlsClient>,
}

/// Connects one socket and runs the handshake on it, within `lim`.
fn connect_one(t: &Transport, ask: Ask<'_>, lim: &Limits) -> Result<Connected> {
    negotiate(dial(t, lim)?, t, ask, lim)
}

/// Runs the handshake on a connected socket, within `lim`: plaintext
/// waits are polled (cancellable); OpenSSL's own reads and writes are
/// bounded by socket timeouts set to what is left.
fn negotiate(mut fd: Link, t: &Transport, ask: Ask<'_>, lim: &Limits) -> Result<Connected> {
    set_timeouts(
        fd.as_raw_fd(),
        lim.left().map(|l| l.max(Duration::from_millis(1))),
    );
    let shook = handshake(
        fd.as_raw_fd(),
        ask.export,
        ask.want_meta,
        ask.dirty,
        ask.tls,
        lim,
    );
    let (info, sess) = match (shook, fd.tunnel.as_mut()) {
        (Ok(r), _) => r,
        // Through ssh: what ssh said is usually the reason.
        (Err(e), Some(tunnel)) => return Err(tunnel.explain(e, lim)),
        (Err(e), None) => return Err(e),
    };
    set_timeouts(fd.as_raw_fd(), None);
    tune_socket(fd.as_raw_fd(), t);
    Ok((fd, info, sess))
}

fn set_timeouts(fd: RawFd, t: Option<Duration>) {
    let tv = match t {
        Some(d) => libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        let _ = sys::setsockopt(fd, libc::SOL_SOCKET, opt, &tv);
    }
}

/// Larger socket buffers let one receive pull many replies.
fn tune_socket(fd: RawFd, t: &Transport) {
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        let _ = sys::setsockopt(fd, libc::SOL_SOCKET, opt, &size);
    }
    if matches!(t, Transport::Tcp { .. }) {
        let one: libc::c_int = 1;
        let _ = sys::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one);
    }
}

/// How long a negotiation that nbdcpy gives up may take to say so
/// (NBD_OPT_ABORT sent, the server's answer read): a server that does not
/// answer costs this much more, once.
const ABORT_GRACE: Duration = Duration::from_millis(250);

/// Drives the sans-I/O handshake over a blocking socket; with `tls`, the
/// TLS handshake after STARTTLS and everything after it through TLS.  A
/// negotiation given up while options are haggled (a refusal, a protocol
/// error, a timeout, a cancel) ends with NBD_OPT_ABORT, as the spec asks.
fn handshake(
    fd: RawFd,
    export: &str,
    want_meta: bool,
    dirty: Option<&str>,
    tls: Option<&TlsClient>,
    lim: &Limits,
) -> Result<(Negotiated, Option<TlsSession>)> {
    let mut hs = Handshake::new(HandshakeOptions {
        export_name: export.to_string(),
        extended_headers: true,
        structured_replies: true,
        meta_context: want_meta.then(|| "base:allocation".to_string()),
        dirty_context: dirty.map(str::to_string),
        request_block_size: true,
        tls: tls.is_some(),
    });
    let mut sess: Option<TlsSession> = None;
    let mut input = Input {
        buf: vec![0u8; 64 << 10],
        have: 0,
    };
    match drive(&mut hs, fd, tls, &mut sess, &mut input, lim) {
        Ok(info) => Ok((info, sess)),
        Err(e) => {
            if hs.abort() {
                say_abort(&mut hs, fd, &mut sess, &mut input);
            }
            Err(e)
        }
    }
}

/// What the server sent that the handshake has not consumed yet.
struct Input {
    buf: Vec<u8>,
    have: usize,
}

/// Sends NBD_OPT_ABORT (after any pending output) and reads until the
/// server acknowledges it or closes, all within ABORT_GRACE; best effort,
/// never cancellable (it is how a cancel ends politely).
fn say_abort(hs: &mut Handshake, fd: RawFd, sess: &mut Option<TlsSession>, input: &mut Input) {
    let deadline = Instant::now() + ABORT_GRACE;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut plain = sys::FdStream(fd);
    // OpenSSL's reads and writes wait on the socket's own timeouts.
    set_timeouts(fd, Some(ABORT_GRACE));
    while !hs.output().is_empty() {
        let ms = left().as_millis() as i32;
        if ms == 0 || !matches!(sys::poll_one(fd, libc::POLLOUT, ms), Ok(r) if r != 0) {
            return;
        }
        let s: &mut dyn Write = match sess.as_mut() {
            Some(t) => t,
            None => &mut plain,
        };
        match s.write(hs.output()) {
            Ok(n) => hs.consume_output(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    loop {
        let Input { buf, have } = input;
        match hs.feed(&buf[..*have]) {
            Ok(used) => {
                buf.copy_within(used..*have, 0);
                *have -= used;
            }
            Err(_) => return,
        }
        if hs.abort_acknowledged() || *have == buf.len() {
            return;
        }
        if sess.as_ref().is_none_or(|t| t.pending() == 0) {
            let ms = left().as_millis() as i32;
            if ms == 0 || !matches!(sys::poll_one(fd, libc::POLLIN, ms), Ok(r) if r != 0) {
                return;
            }
        }
        let s: &mut dyn Read = match sess.as_mut() {
            Some(t) => t,
            None => &mut plain,
        };
        match s.read(&mut buf[*have..]) {
            Ok(0) => return,
            Ok(n) => *have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The negotiation itself, until its result or an error.
fn drive(
    hs: &mut Handshake,
    fd: RawFd,
    tls: Option<&TlsClient>,
    sess: &mut Option<TlsSession>,
    input: &mut Input,
    lim: &Limits,
) -> Result<Negotiated> {
    let mut plain = sys::FdStream(fd);
    let Input { buf, have } = input;
    loop {
        while !hs.output().is_empty() {
            lim.wait(fd, libc::POLLOUT, "handshake")?;
            let s: &mut dyn Write = match sess.as_mut() {
                Some(t) => t,
                None => &mut plain,
            };
            let n = match s.write(hs.output()) {
                Ok(n) => n,
                // A signal handler in the host program: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(tls_explain(tls, sess, io_err("handshake: send", e))),
            };
            hs.consume_output(n);
        }
        if hs.tls_pending() {
            if *have > 0 {
                return Err(Error::new(
                    libc::EPROTO,
                    "handshake: server sent data after acknowledging NBD_OPT_STARTTLS",
                ));
            }
            let Some(client) = tls else {
                return Err(Error::new(libc::EPROTO, "handshake: unexpected STARTTLS"));
            };
            *sess = Some(client.connect(fd)?);
            hs.tls_started();
            continue;
        }
        if hs.is_done() {
            break;
        }
        // Feed what we have; read more only when the machine needs it.
        let used = hs
            .feed(&buf[..*have])
            .map_err(|e| Error::new(libc::EPROTO, format!("handshake: {e}")))?;
        buf.copy_within(used..*have, 0);
        *have -= used;
        if hs.is_done() || hs.tls_pending() || !hs.output().is_empty() {
            continue;
        }
        if used > 0 && *have > 0 {
            continue;
        }
        if *have == buf.len() {
            return Err(Error::new(
                libc::EPROTO,
                "handshake: server reply too large",
            ));
        }
        // Plaintext the TLS session holds already needs no wait.
        if sess.as_ref().is_none_or(|t| t.pending() == 0) {
            lim.wait(fd, libc::POLLIN, "handshake")?;
        }
        let s: &mut dyn Read = match sess.as_mut() {
            Some(t) => t,
            None => &mut plain,
        };
        let n = match s.read(&mut buf[*have..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tls_explain(tls, sess, io_err("handshake: receive", e))),
        };
        if n == 0 {
            return Err(tls_explain(
                tls,
                sess,
                Error::new(libc::ECONNRESET, "handshake: server closed the connection"),
            ));
        }
        *have += n;
    }
    if *have > 0 {
        return Err(Error::new(
            libc::EPROTO,
            "handshake: server sent data after the negotiation ended",
        ));
    }
    hs.result()
        .cloned()
        .ok_or_else(|| Error::new(libc::EPROTO, "handshake ended without a result"))
}

/// A negotiation error inside TLS, with what TLS knows about it.
fn tls_explain(tls: Option<&TlsClient>, sess: &mut Option<TlsSession>, e: Error) -> Error {
    match (tls, sess.as_mut()) {
        (Some(c), Some(t)) => c.explain(t, e),
        _ => e,
    }
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        Error::new(
            libc::ETIMEDOUT,
            format!("{what}: the server did not answer in time (the \"timeout\" option)"),
        )
    } else {
        Error::os(what, e)
    }
}
