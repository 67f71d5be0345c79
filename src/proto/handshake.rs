// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The client side of fixed-newstyle negotiation, as a state machine over bytes.
//
// The client side of fixed-newstyle negotiation, as a state machine over
// bytes: EXTENDED_HEADERS (else STRUCTURED_REPLY, else simple replies),
// SET_META_CONTEXT base:allocation (and a qemu dirty bitmap's context
// when asked), then GO with BLOCK_SIZE (falling back to EXPORT_NAME when
// GO is unsupported).  With TLS, STARTTLS comes first; the driver then
// runs the TLS handshake (Handshake::tls_pending) and every later option
// goes through TLS.  A negotiation the client gives up while haggling
// options ends with NBD_OPT_ABORT (Handshake::abort), as the spec asks.

use super::consts::*;
use super::{be16, be32, be64, BlockSize, HeaderMode, Negotiated};

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    pub export_name: String,
    pub extended_headers: bool,
    pub structured_replies: bool,
    /// A meta context to select, e.g. "base:allocation".
    pub meta_context: Option<String>,
    /// A second context to select for incremental copies, e.g.
    /// "qemu:dirty-bitmap:NAME".
    pub dirty_context: Option<String>,
    pub request_block_size: bool,
    /// TLS is required: NBD_OPT_STARTTLS before anything else, and no
    /// fallback to plaintext.
    pub tls: bool,
}

/// A failed negotiation, with the option, export and server message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandshakeError(pub String);

/// Largest option reply payload accepted.
const MAX_OPTION_REPLY: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    /// Waiting for replies to this option.
    Option(u32),
    /// Waiting for EXPORT_NAME's fixed answer.
    ExportName,
    /// STARTTLS was acknowledged: the driver runs the TLS handshake.
    TlsPending,
    Done,
    /// NBD_OPT_ABORT is queued or sent: replies are skipped until the
    /// server acknowledges it.
    Aborting,
    /// The server acknowledged NBD_OPT_ABORT (or said something that
    /// cannot be parsed): nothing more to read.
    Aborted,
}

pub struct Handshake {
    opts: HandshakeOptions,
    state: State,
    out: Vec<u8>,
    sent: usize,
    server_no_zeroes: bool,
    mode: HeaderMode,
    meta_context_id: Option<u32>,
    dirty_context_id: Option<u32>,
    size: Option<u64>,
    tflags: u16,
    block_size: Option<BlockSize>,
    result: Option<Negotiated>,
}

impl Handshake {
    pub fn new(opts: HandshakeOptions) -> Handshake {
        Handshake {
            opts,
            state: State::Greeting,
            out: Vec::new(),
            sent: 0,
            server_no_zeroes: false,
            mode: HeaderMode::Simple,
            meta_context_id: None,
            dirty_context_id: None,
            size: None,
            tflags: 0,
            block_size: None,
            result: None,
        }
    }

    /// Bytes to send now.
    pub fn output(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    pub fn consume_output(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
    }

    /// The server acknowledged NBD_OPT_STARTTLS: the driver must run the
    /// TLS handshake now (once the output is sent), then call
    /// [`tls_started`](Self::tls_started).
    pub fn tls_pending(&self) -> bool {
        self.state == State::TlsPending
    }

    /// TLS is up: the negotiation goes on (through TLS).
    pub fn tls_started(&mut self) {
        if self.state == State::TlsPending {
            self.next_option(None);
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn result(&self) -> Option<&Negotiated> {
        self.result.as_ref()
    }

    /// The client gives up the negotiation (an error, a timeout, a
    /// cancel): queues NBD_OPT_ABORT after whatever output is pending, if
    /// the negotiation is where options are haggled.  True: the driver
    /// should send the output, and may read replies (bounded) until
    /// [`abort_acknowledged`](Self::abort_acknowledged), then close.
    /// False: nothing to say (before the greeting's answer, during the
    /// TLS handshake, after NBD_OPT_EXPORT_NAME or the end of the
    /// negotiation, or aborted already): just close.
    pub fn abort(&mut self) -> bool {
        match self.state {
            State::Option(_) => {
                self.out.extend_from_slice(&IHAVEOPT.to_be_bytes());
                self.out.extend_from_slice(&NBD_OPT_ABORT.to_be_bytes());
                self.out.extend_from_slice(&0u32.to_be_bytes());
                self.state = State::Aborting;
                true
            }
            _ => false,
        }
    }

    /// The server acknowledged NBD_OPT_ABORT (or what it sent after it
    /// could not be parsed): the driver may close now.
    pub fn abort_acknowledged(&self) -> bool {
        self.state == State::Aborted
    }

    /// While aborting: skips replies to earlier options, up to and with
    /// the one to NBD_OPT_ABORT.
    fn abort_reply(&mut self, b: &[u8]) -> usize {
        if b.len() < 20 {
            return 0;
        }
        if be64(b) != OPT_REPLY_MAGIC {
            self.state = State::Aborted;
            return b.len();
        }
        let len = be32(&b[16..]) as usize;
        if len > MAX_OPTION_REPLY {
            self.state = State::Aborted;
            return b.len();
        }
        if b.len() < 20 + len {
            return 0;
        }
        if be32(&b[8..]) == NBD_OPT_ABORT {
            self.state = State::Aborted;
        }
        20 + len
    }

    /// Consumes as many whole server messages from `input` as it holds;
    /// returns the bytes consumed (0: more input needed).  Never consumes
    /// past the end of the negotiation.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            let n = self.step(&input[used..])?;
            if n == 0 {
                return Ok(used);
            }
            used += n;
            if matches!(self.state, State::Done | State::Aborted) {
                return Ok(used);
            }
        }
    }

    fn fail<T>(&self, msg: String) -> Result<T, HandshakeError> {
        Err(HandshakeError(msg))
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) {
        self.out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.out.extend_from_slice(&opt.to_be_bytes());
        self.out
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.out.extend_from_slice(data);
        self.state = State::Option(opt);
    }

    /// Sends the option that follows `after` in the recommended order.
    fn next_option(&mut self, after: Option<u32>) {
        let order = [
            NBD_OPT_EXTENDED_HEADERS,
            NBD_OPT_STRUCTURED_REPLY,
            NBD_OPT_SET_META_CONTEXT,
            NBD_OPT_GO,
        ];
        let start = match after {
            None => 0,
            Some(a) => order
                .iter()
                .position(|&o| o == a)
                .map_or(order.len(), |i| i + 1),
        };
        for &opt in &order[start..] {
            match opt {
                NBD_OPT_EXTENDED_HEADERS if self.opts.extended_headers => {
                    return self.send_option(opt, &[])
                }
                NBD_OPT_STRUCTURED_REPLY
                    if self.opts.structured_replies && self.mode == HeaderMode::Simple =>
                {
                    return self.send_option(opt, &[])
                }
                NBD_OPT_SET_META_CONTEXT if self.mode != HeaderMode::Simple => {
                    let queries: Vec<&String> = [&self.opts.meta_context, &self.opts.dirty_context]
                        .into_iter()
                        .flatten()
                        .collect();
                    if !queries.is_empty() {
                        let mut d = Vec::new();
                        let name = self.opts.export_name.as_bytes();
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name);
                        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
                        for ctx in queries {
                            d.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
                            d.extend_from_slice(ctx.as_bytes());
                        }
                        return self.send_option(opt, &d);
                    }
                }
                NBD_OPT_GO => {
                    let mut d = Vec::new();
                    let name = self.opts.export_name.as_bytes();
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name);
                    if self.opts.request_block_size {
                        d.extend_from_slice(&1u16.to_be_bytes());
                        d.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
                    } else {
                        d.extend_from_slice(&0u16.to_be_bytes());
                    }
                    return self.send_option(opt, &d);
                }
                _ => {}
            }
        }
    }

    fn step(&mut self, b: &[u8]) -> Result<usize, HandshakeError> {
        match self.state {
            State::Done | State::TlsPending | State::Aborted => Ok(0),
            State::Aborting => Ok(self.abort_reply(b)),
            State::Greeting => self.greeting(b),
            State::ExportName => self.export_name_reply(b),
            State::Option(opt) => self.option_reply(opt, b),
        }
    }

    fn greeting(&mut self, b: &[u8]) -> Result<usize, HandshakeError> {
        if b.len() >= 8 && be64(b) != NBDMAGIC {
            return self.fail(format!(
                "not an NBD server: greeting starts with {:#018x} instead of NBDMAGIC",
                be64(b)
            ));
        }
        if b.len() >= 16 && be64(&b[8..]) == OLDSTYLE_MAGIC {
            return self.fail(
                "the server speaks the oldstyle protocol, which nbdcpy does not support \
                 (use a newstyle server, e.g. nbd-server without oldstyle = true)"
                    .into(),
            );
        }
        if b.len() >= 16 && be64(&b[8..]) != IHAVEOPT {
            return self.fail(format!("bad greeting magic {:#018x}", be64(&b[8..])));
        }
        if b.len() < 18 {
            return Ok(0);
        }
        let flags = be16(&b[16..]);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return self.fail("the server does not support fixed newstyle negotiation".into());
        }
        self.server_no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let mut cflags = FLAG_C_FIXED_NEWSTYLE;
        if self.server_no_zeroes {
            cflags |= FLAG_C_NO_ZEROES;
        }
        self.out.extend_from_slice(&cflags.to_be_bytes());
        if self.opts.tls {
            self.send_option(NBD_OPT_STARTTLS, &[]);
        } else {
            self.next_option(None);
        }
        Ok(18)
    }

    fn export_name_reply(&mut self, b: &[u8]) -> Result<usize, HandshakeError> {
        let need = if self.server_no_zeroes { 10 } else { 134 };
        if b.len() < need {
            return Ok(0);
        }
        self.size = Some(be64(b));
        self.tflags = be16(&b[8..]);
        self.finish()?;
        Ok(need)
    }

    fn finish(&mut self) -> Result<(), HandshakeError> {
        let Some(size) = self.size else {
            return self.fail(format!(
                "the server ended NBD_OPT_GO for export \"{}\" without sending its size",
                self.opts.export_name
            ));
        };
        let tflags = if self.tflags & NBD_FLAG_HAS_FLAGS != 0 {
            self.tflags
        } else {
            0
        };
        self.result = Some(Negotiated {
            size,
            tflags,
            block_size: self.block_size.unwrap_or_default(),
            block_size_from_server: self.block_size.is_some(),
            mode: self.mode,
            meta_context_id: self.meta_context_id,
            dirty_context_id: self.dirty_context_id,
            no_zeroes: self.server_no_zeroes,
        });
        self.state = State::Done;
        Ok(())
    }

    fn option_reply(&mut self, opt: u32, b: &[u8]) -> Result<usize, HandshakeError> {
        if b.len() < 20 {
            return Ok(0);
        }
        if be64(b) != OPT_REPLY_MAGIC {
            return self.fail(format!(
                "bad option reply magic {:#018x} in reply to {}",
                be64(b),
                option_name(opt)
            ));
        }
        let ropt = be32(&b[8..]);
        let rtype = be32(&b[12..]);
        let len = be32(&b[16..]) as usize;
        if ropt != opt {
            return self.fail(format!(
                "server replied to {} while {} was asked",
                option_name(ropt),
                option_name(opt)
            ));
        }
        if len > MAX_OPTION_REPLY {
            return self.fail(format!(
                "option reply of {len} bytes to {} is too large",
                option_name(opt)
            ));
        }
        if b.len() < 20 + len {
            return Ok(0);
        }
        let p = &b[20..20 + len];
        let used = 20 + len;
        if rtype & NBD_REP_FLAG_ERROR != 0 {
            self.option_error(opt, rtype, p)?;
            return Ok(used);
        }
        match (opt, rtype) {
            (_, NBD_REP_ACK) => match opt {
                NBD_OPT_EXTENDED_HEADERS => {
                    self.mode = HeaderMode::Extended;
                    self.next_option(Some(opt));
                }
                NBD_OPT_STRUCTURED_REPLY => {
                    self.mode = HeaderMode::Structured;
                    self.next_option(Some(opt));
                }
                NBD_OPT_SET_META_CONTEXT => self.next_option(Some(opt)),
                NBD_OPT_GO => self.finish()?,
                NBD_OPT_STARTTLS => self.state = State::TlsPending,
                _ => return self.fail(format!("unexpected ACK to {}", option_name(opt))),
            },
            (NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT) => {
                if len < 4 {
                    return self.fail("short NBD_REP_META_CONTEXT".into());
                }
                let id = be32(p);
                let name = String::from_utf8_lossy(&p[4..]);
                if Some(name.as_ref()) == self.opts.meta_context.as_deref() {
                    self.meta_context_id = Some(id);
                } else if Some(name.as_ref()) == self.opts.dirty_context.as_deref() {
                    self.dirty_context_id = Some(id);
                } else {
                    return self.fail(format!(
                        "server selected meta context \"{name}\" that was not asked for"
                    ));
                }
            }
            (NBD_OPT_GO, NBD_REP_INFO) => {
                if len < 2 {
                    return self.fail("short NBD_REP_INFO".into());
                }
                match be16(p) {
                    NBD_INFO_EXPORT => {
                        if len != 12 {
                            return self.fail(format!("NBD_INFO_EXPORT of length {len}"));
                        }
                        self.size = Some(be64(&p[2..]));
                        self.tflags = be16(&p[10..]);
                    }
                    NBD_INFO_BLOCK_SIZE => {
                        if len != 14 {
                            return self.fail(format!("NBD_INFO_BLOCK_SIZE of length {len}"));
                        }
                        let bs = BlockSize {
                            min: be32(&p[2..]),
                            preferred: be32(&p[6..]),
                            max_payload: be32(&p[10..]),
                        };
                        check_block_size(&bs).map_err(HandshakeError)?;
                        self.block_size = Some(bs);
                    }
                    _ => {} // NAME, DESCRIPTION, future types: not needed
                }
            }
            _ => {
                return self.fail(format!(
                    "unexpected reply type {rtype} to {}",
                    option_name(opt)
                ))
            }
        }
        Ok(used)
    }

    fn option_error(&mut self, opt: u32, rtype: u32, p: &[u8]) -> Result<(), HandshakeError> {
        let msg = String::from_utf8_lossy(p).trim().to_string();
        let detail = if msg.is_empty() {
            rep_error_name(rtype)
        } else {
            format!("{}: {msg}", rep_error_name(rtype))
        };
        if opt == NBD_OPT_STARTTLS {
            // Never fall back to plaintext.
            return self.fail(format!(
                "TLS was required (nbds:// URI) but the server does not offer it: \
                 NBD_OPT_STARTTLS refused ({detail})"
            ));
        }
        if rtype == NBD_REP_ERR_TLS_REQD {
            return self.fail(format!(
                "the server requires TLS: use an nbds:// URI ({} refused: {detail})",
                option_name(opt)
            ));
        }
        match opt {
            // Optional features: carry on without them.
            NBD_OPT_EXTENDED_HEADERS | NBD_OPT_STRUCTURED_REPLY | NBD_OPT_SET_META_CONTEXT => {
                if opt == NBD_OPT_SET_META_CONTEXT {
                    self.meta_context_id = None;
                    self.dirty_context_id = None;
                }
                self.next_option(Some(opt));
                Ok(())
            }
            NBD_OPT_GO if rtype == NBD_REP_ERR_UNSUP => {
                if self.mode == HeaderMode::Extended {
                    return self.fail(
                        "the server negotiated extended headers but does not support \
                         NBD_OPT_GO"
                            .into(),
                    );
                }
                // Old server: NBD_OPT_EXPORT_NAME has no reply header.
                let name = self.opts.export_name.clone();
                self.send_option(NBD_OPT_EXPORT_NAME, name.as_bytes());
                self.state = State::ExportName;
                self.block_size = None;
                Ok(())
            }
            _ => self.fail(format!(
                "the server refused {} for export \"{}\": {detail}",
                option_name(opt),
                self.opts.export_name
            )),
        }
    }
}

/// The spec's rules for NBD_INFO_BLOCK_SIZE.
fn check_block_size(bs: &BlockSize) -> Result<(), String> {
    let bad = |why: &str| Err(format!("server sent bad block sizes {bs:?}: {why}"));
    if !bs.min.is_power_of_two() || bs.min > 64 << 10 {
        return bad("minimum must be a power of 2 up to 64 KiB");
    }
    if !bs.preferred.is_power_of_two() || bs.preferred < bs.min {
        return bad("preferred must be a power of 2, at least the minimum");
    }
    if bs.max_payload < bs.min || (bs.max_payload != u32::MAX && bs.max_payload % bs.min != 0) {
        return bad("maximum must be a multiple of the minimum");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn greeting(flags: u16) -> Vec<u8> {
        let mut v = NBDMAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    pub fn rep(opt: u32, ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut p = NBD_INFO_EXPORT.to_be_bytes().to_vec();
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        rep(NBD_OPT_GO, NBD_REP_INFO, &p)
    }

    pub fn info_block_size(min: u32, pref: u32, max: u32) -> Vec<u8> {
        let mut p = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for x in [min, pref, max] {
            p.extend_from_slice(&x.to_be_bytes());
        }
        rep(NBD_OPT_GO, NBD_REP_INFO, &p)
    }

    pub fn meta(id: u32, name: &str) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, &p)
    }

    pub fn opts() -> HandshakeOptions {
        HandshakeOptions {
            export_name: "disk".into(),
            extended_headers: true,
            structured_replies: true,
            meta_context: Some("base:allocation".into()),
            dirty_context: None,
            request_block_size: true,
            tls: false,
        }
    }

    /// Runs a handshake against a scripted server; `whole` feeds all at
    /// once, otherwise one byte at a time.  Returns (result, client bytes).
    fn run(
        server: &[u8],
        o: HandshakeOptions,
        whole: bool,
    ) -> (Result<Negotiated, String>, Vec<u8>) {
        let mut h = Handshake::new(o);
        let mut sent = Vec::new();
        let mut have: Vec<u8> = Vec::new();
        let mut at = 0;
        loop {
            sent.extend_from_slice(h.output());
            let n = h.output().len();
            h.consume_output(n);
            if h.is_done() {
                return (Ok(h.result().unwrap().clone()), sent);
            }
            if at >= server.len() && have.is_empty() {
                return (Err("server ran out".into()), sent);
            }
            let take = if whole {
                server.len() - at
            } else {
                1.min(server.len() - at)
            };
            have.extend_from_slice(&server[at..at + take]);
            at += take;
            match h.feed(&have) {
                Ok(u) => {
                    have.drain(..u);
                }
                Err(e) => {
                    sent.extend_from_slice(h.output());
                    return (Err(e.0), sent);
                }
            }
            if at >= server.len() && !h.is_done() && h.output().is_empty() {
                match h.feed(&have) {
                    Ok(0) => return (Err("server ran out".into()), sent),
                    Ok(u) => {
                        have.drain(..u);
                    }
                    Err(e) => {
                        sent.extend_from_slice(h.output());
                        return (Err(e.0), sent);
                    }
                }
            }
        }
    }

    fn both(server: &[u8], o: HandshakeOptions) -> Result<Negotiated, String> {
        let (a, sa) = run(server, o.clone(), true);
        let (b, sb) = run(server, o, false);
        assert_eq!(a, b, "byte-at-a-time feeding must give the same result");
        assert_eq!(sa, sb);
        a
    }

    #[test]
    fn qemu_like_extended_headers() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(meta(0, "base:allocation"));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_block_size(1, 4096, 32 << 20));
        s.extend(info_export(
            1 << 30,
            NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN,
        ));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let n = both(&s, opts()).unwrap();
        assert_eq!(n.mode, HeaderMode::Extended);
        assert_eq!(n.meta_context_id, Some(0));
        assert_eq!(n.size, 1 << 30);
        assert!(n.can_flush() && n.can_multi_conn());
        assert!(n.block_size_from_server);
        assert!(n.no_zeroes);
    }

    #[test]
    fn nbdkit_like_structured_only() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, &[]));
        s.extend(rep(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
        s.extend(meta(1, "base:allocation"));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_export(12345, NBD_FLAG_HAS_FLAGS));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let n = both(&s, opts()).unwrap();
        assert_eq!(n.mode, HeaderMode::Structured);
        assert_eq!(n.meta_context_id, Some(1));
        assert_eq!(n.block_size, BlockSize::default());
        assert!(!n.block_size_from_server);
    }

    #[test]
    fn dirty_bitmap_context_is_asked_with_allocation() {
        let o = HandshakeOptions {
            dirty_context: Some("qemu:dirty-bitmap:b0".into()),
            ..opts()
        };
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(meta(3, "qemu:dirty-bitmap:b0"));
        s.extend(meta(2, "base:allocation"));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_export(1 << 20, NBD_FLAG_HAS_FLAGS));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let (r, sent) = run(&s, o.clone(), false);
        let n = r.unwrap();
        assert_eq!((n.meta_context_id, n.dirty_context_id), (Some(2), Some(3)));
        // One SET_META_CONTEXT with two queries.
        let mut head = IHAVEOPT.to_be_bytes().to_vec();
        head.extend_from_slice(&NBD_OPT_SET_META_CONTEXT.to_be_bytes());
        let at = sent.windows(12).position(|w| w == head).unwrap();
        // length, export name length, "disk", then the number of queries
        assert_eq!(be32(&sent[at + 12 + 4 + 4 + 4..]), 2, "two queries");
        assert!(sent.windows(20).any(|w| w == b"qemu:dirty-bitmap:b0"));
        // A server without the bitmap answers only base:allocation.
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(meta(2, "base:allocation"));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_export(1 << 20, NBD_FLAG_HAS_FLAGS));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let n = both(&s, o).unwrap();
        assert_eq!((n.meta_context_id, n.dirty_context_id), (Some(2), None));
    }

    #[test]
    fn nbd_server_like_simple_only() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, &[]));
        s.extend(rep(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[]));
        // No SET_META_CONTEXT without structured replies.
        s.extend(info_export(4096, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let (r, sent) = run(&s, opts(), true);
        let n = r.unwrap();
        assert_eq!(n.mode, HeaderMode::Simple);
        assert_eq!(n.meta_context_id, None);
        assert!(n.read_only());
        // the client never asked for a meta context
        assert!(!sent.windows(15).any(|w| w == b"base:allocation"));
    }

    #[test]
    fn go_unsupported_falls_back_to_export_name() {
        for no_zeroes in [true, false] {
            let mut s = greeting(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 });
            s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, &[]));
            s.extend(rep(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[]));
            s.extend(rep(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[]));
            s.extend(777u64.to_be_bytes());
            s.extend((NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH).to_be_bytes());
            if !no_zeroes {
                s.extend([0u8; 124]);
            }
            let n = both(&s, opts()).unwrap();
            assert_eq!(n.size, 777);
            assert!(n.can_flush());
        }
    }

    #[test]
    fn errors_name_option_export_and_message() {
        for (code, name) in [
            (NBD_REP_ERR_UNKNOWN, "ERR_UNKNOWN"),
            (NBD_REP_ERR_POLICY, "ERR_POLICY"),
            (NBD_REP_ERR_INVALID, "ERR_INVALID"),
            (NBD_REP_ERR_PLATFORM, "ERR_PLATFORM"),
            (NBD_REP_ERR_SHUTDOWN, "ERR_SHUTDOWN"),
            (NBD_REP_ERR_BLOCK_SIZE_REQD, "ERR_BLOCK_SIZE_REQD"),
            (NBD_REP_ERR_TOO_BIG, "ERR_TOO_BIG"),
            (NBD_REP_ERR_EXT_HEADER_REQD, "ERR_EXT_HEADER_REQD"),
        ] {
            let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
            s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
            s.extend(rep(NBD_OPT_GO, code, b"No such export"));
            let e = both(&s, opts()).unwrap_err();
            assert!(
                e.contains("NBD_OPT_GO")
                    && e.contains("\"disk\"")
                    && e.contains(name)
                    && e.contains("No such export"),
                "{e}"
            );
        }
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(rep(
            NBD_OPT_EXTENDED_HEADERS,
            NBD_REP_ERR_TLS_REQD,
            b"TLS please",
        ));
        assert!(both(&s, opts()).unwrap_err().contains("requires TLS"));
    }

    /// The options in what the client sent (after its 4 flag bytes).
    fn client_options(sent: &[u8]) -> Vec<u32> {
        let mut v = Vec::new();
        let mut b = &sent[4..];
        while b.len() >= 16 {
            assert_eq!(be64(b), IHAVEOPT);
            v.push(be32(&b[8..]));
            let len = be32(&b[12..]) as usize;
            b = &b[16 + len..];
        }
        assert!(b.is_empty(), "a partial option");
        v
    }

    /// Drains the output into `sent`.
    fn take(h: &mut Handshake, sent: &mut Vec<u8>) {
        sent.extend_from_slice(h.output());
        let n = h.output().len();
        h.consume_output(n);
    }

    #[test]
    fn a_refused_export_is_abandoned_with_opt_abort() {
        for whole in [true, false] {
            let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
            s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
            s.extend(rep(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, b"No such export"));
            let mut h = Handshake::new(opts());
            let mut sent = Vec::new();
            let err = if whole {
                h.feed(&s).err()
            } else {
                let mut have = Vec::new();
                let mut err = None;
                for &byte in &s {
                    have.push(byte);
                    match h.feed(&have) {
                        Ok(u) => {
                            have.drain(..u);
                        }
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                err
            };
            assert!(err.unwrap().0.contains("No such export"));
            assert!(h.abort());
            assert!(!h.abort(), "one NBD_OPT_ABORT only");
            take(&mut h, &mut sent);
            assert_eq!(
                client_options(&sent),
                [
                    NBD_OPT_EXTENDED_HEADERS,
                    NBD_OPT_SET_META_CONTEXT,
                    NBD_OPT_GO,
                    NBD_OPT_ABORT
                ]
            );
            assert_eq!(&sent[sent.len() - 16..][12..], &[0, 0, 0, 0], "no data");
            // The server's ACK (byte by byte too) ends it.
            assert!(!h.abort_acknowledged());
            let ack = rep(NBD_OPT_ABORT, NBD_REP_ACK, &[]);
            let mut buf = Vec::new();
            for &byte in &ack {
                buf.push(byte);
                let u = h.feed(&buf).unwrap();
                buf.drain(..u);
            }
            assert!(h.abort_acknowledged() && buf.is_empty());
        }
    }

    #[test]
    fn abort_while_waiting_skips_earlier_replies_and_follows_pending_output() {
        // Given up (a timeout, a cancel) before the first reply, with the
        // first option not even sent: the abort comes after it.
        let mut h = Handshake::new(opts());
        assert!(!h.abort(), "nothing to abort before the greeting");
        let g = greeting(FLAG_FIXED_NEWSTYLE);
        assert_eq!(h.feed(&g).unwrap(), g.len());
        assert!(h.abort());
        let mut sent = Vec::new();
        take(&mut h, &mut sent);
        assert_eq!(
            client_options(&sent),
            [NBD_OPT_EXTENDED_HEADERS, NBD_OPT_ABORT]
        );
        // A late reply to the first option is skipped, the ACK ends it.
        let mut late = rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]);
        late.extend(rep(NBD_OPT_ABORT, NBD_REP_ACK, &[]));
        assert_eq!(h.feed(&late).unwrap(), late.len());
        assert!(h.abort_acknowledged());
        assert!(!h.abort());
        // Garbage after the abort: nothing more to wait for.
        let mut h = Handshake::new(opts());
        h.feed(&g).unwrap();
        assert!(h.abort());
        h.feed(&[0xffu8; 24]).unwrap();
        assert!(h.abort_acknowledged());
    }

    #[test]
    fn refused_tls_is_aborted_but_not_a_tls_handshake_or_transmission() {
        let mut o = opts();
        o.tls = true;
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(rep(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, b"no"));
        let mut h = Handshake::new(o.clone());
        assert!(h.feed(&s).is_err());
        assert!(h.abort());
        let mut sent = Vec::new();
        take(&mut h, &mut sent);
        assert_eq!(client_options(&sent), [NBD_OPT_STARTTLS, NBD_OPT_ABORT]);

        // STARTTLS acknowledged: the bytes now belong to TLS.
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(rep(NBD_OPT_STARTTLS, NBD_REP_ACK, &[]));
        let mut h = Handshake::new(o);
        h.feed(&s).unwrap();
        assert!(h.tls_pending());
        assert!(!h.abort());

        // After NBD_OPT_EXPORT_NAME (no reply to haggle) and once done.
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, &[]));
        s.extend(rep(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[]));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[]));
        let mut h = Handshake::new(opts());
        h.feed(&s).unwrap();
        assert!(!h.abort(), "EXPORT_NAME has moved the server on");
        let mut fin = 1u64.to_be_bytes().to_vec();
        fin.extend(0u16.to_be_bytes());
        h.feed(&fin).unwrap();
        assert!(h.is_done());
        assert!(!h.abort(), "transmission ends with NBD_CMD_DISC instead");
    }

    #[test]
    fn bad_servers() {
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend(OLDSTYLE_MAGIC.to_be_bytes());
        old.extend([0u8; 140]);
        assert!(both(&old, opts()).unwrap_err().contains("oldstyle"));
        assert!(both(b"HTTP/1.1 400 Bad Request\r\n\r\n", opts())
            .unwrap_err()
            .contains("not an NBD server"));
        assert!(both(&greeting(0), opts())
            .unwrap_err()
            .contains("fixed newstyle"));
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        let mut r = rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]);
        r[0] ^= 0xff;
        s.extend(r);
        assert!(both(&s, opts()).unwrap_err().contains("option reply magic"));
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        assert!(both(&s, opts())
            .unwrap_err()
            .contains("while NBD_OPT_EXTENDED_HEADERS was asked"));
        let mut s = greeting(FLAG_FIXED_NEWSTYLE);
        let mut r = rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]);
        r[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        s.extend(r);
        assert!(both(&s, opts()).unwrap_err().contains("too large"));
        // GO's ACK without INFO_EXPORT
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        assert!(both(&s, opts())
            .unwrap_err()
            .contains("without sending its size"));
        // nonsense block sizes
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_block_size(3, 4096, 32 << 20));
        assert!(both(&s, opts()).unwrap_err().contains("block sizes"));
        // truncated: runs out before GO's ACK
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        let full = info_export(1, NBD_FLAG_HAS_FLAGS);
        s.extend(&full[..full.len() - 3]);
        assert!(both(&s, opts()).unwrap_err().contains("ran out"));
        // TLS asked for, not offered: no fallback to plaintext
        for code in [NBD_REP_ERR_UNSUP, NBD_REP_ERR_POLICY, NBD_REP_ERR_INVALID] {
            let mut o = opts();
            o.tls = true;
            let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            s.extend(rep(NBD_OPT_STARTTLS, code, b"no TLS here"));
            let (r, sent) = run(&s, o, true);
            let e = r.unwrap_err();
            assert!(
                e.contains("does not offer it") && e.contains("no TLS here"),
                "{e}"
            );
            // only the flags and STARTTLS were sent
            assert_eq!(sent.len(), 4 + 16, "{sent:?}");
        }
    }

    #[test]
    fn starttls_first_then_the_rest() {
        let mut o = opts();
        o.tls = true;
        let mut h = Handshake::new(o);
        let g = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(h.feed(&g).unwrap(), 18);
        let out = h.output().to_vec();
        h.consume_output(out.len());
        assert_eq!(&out[4..12], &IHAVEOPT.to_be_bytes());
        assert_eq!(&out[12..16], &NBD_OPT_STARTTLS.to_be_bytes());
        assert_eq!(&out[16..20], &0u32.to_be_bytes());
        assert_eq!(out.len(), 20);
        let ack = rep(NBD_OPT_STARTTLS, NBD_REP_ACK, &[]);
        // nothing past the ACK is consumed (TLS bytes follow)
        let mut more = ack.clone();
        more.extend([0x16, 3, 1]);
        assert_eq!(h.feed(&more).unwrap(), ack.len());
        assert!(h.tls_pending() && h.output().is_empty());
        assert_eq!(h.feed(&more[ack.len()..]).unwrap(), 0);
        h.tls_started();
        assert!(!h.tls_pending());
        // inside TLS: the usual sequence, from EXTENDED_HEADERS on
        assert_eq!(&h.output()[0..8], &IHAVEOPT.to_be_bytes());
        assert_eq!(&h.output()[8..12], &NBD_OPT_EXTENDED_HEADERS.to_be_bytes());
        let n = h.output().len();
        h.consume_output(n);
        let mut s = rep(NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, &[]);
        s.extend(meta(0, "base:allocation"));
        s.extend(rep(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
        s.extend(info_export(1 << 20, NBD_FLAG_HAS_FLAGS));
        s.extend(rep(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let mut at = 0;
        while !h.is_done() {
            let u = h.feed(&s[at..]).unwrap();
            assert!(u > 0);
            at += u;
            let n = h.output().len();
            h.consume_output(n);
        }
        assert_eq!(at, s.len());
        assert_eq!(h.result().unwrap().mode, HeaderMode::Extended);
    }

    #[test]
    fn plain_client_told_to_use_tls() {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(rep(
            NBD_OPT_EXTENDED_HEADERS,
            NBD_REP_ERR_TLS_REQD,
            b"TLS required",
        ));
        let e = both(&s, opts()).unwrap_err();
        assert!(e.contains("requires TLS") && e.contains("nbds://"), "{e}");
    }

    #[test]
    fn client_never_sends_no_zeroes_unless_offered() {
        let s = greeting(FLAG_FIXED_NEWSTYLE);
        let (_, sent) = run(&s, opts(), true);
        assert_eq!(&sent[..4], &FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        let s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        let (_, sent) = run(&s, opts(), true);
        assert_eq!(
            &sent[..4],
            &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()
        );
    }
}
