// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! TLS for NBD connections (nbds://) through OpenSSL.
//
// TLS for NBD connections (nbds:// URIs) through OpenSSL: X.509 and
// TLS-PSK clients, sessions over memory buffers, and their glue to the engine.

pub mod conn;
pub mod creds;
pub mod session;

pub use session::TlsSession;

use crate::error::{Error, Result};
use crate::proto::uri::TlsParams;
use openssl::ssl::{HandshakeError, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509VerifyResult;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Whether the kernel offers kernel TLS (the `tls` module).  This
/// kernel-side record layer is not used yet: sessions always encrypt in
/// user space (see docs/tls.md).
pub fn ktls_available() -> bool {
    std::path::Path::new("/proc/net/tls_stat").exists()
}

/// Where records are encrypted, for the log.
pub fn record_layer() -> &'static str {
    if ktls_available() {
        "records in user space (kernel TLS present but not used)"
    } else {
        "records in user space (no kernel TLS: no /proc/net/tls_stat)"
    }
}

#[derive(Debug, Clone)]
enum Auth {
    Psk {
        username: String,
    },
    X509 {
        verify: bool,
        /// The name the server's certificate must carry (None: not checked).
        name: Option<String>,
        dir: Option<std::path::PathBuf>,
    },
}

/// A configured TLS client for one endpoint (every connection of it).
#[derive(Clone)]
pub struct TlsClient {
    ctx: SslContext,
    auth: Auth,
}

impl TlsClient {
    /// From a URI's parameters, `host` the URI's host (None for unix
    /// sockets and vsock, where only `tls-hostname` names the server).
    pub fn new(p: &TlsParams, host: Option<&str>) -> Result<Arc<TlsClient>> {
        let ossl =
            |e: openssl::error::ErrorStack| Error::new(libc::EPROTO, format!("TLS setup: {e}"));
        let mut b = SslContext::builder(SslMethod::tls_client()).map_err(ossl)?;
        // TLS 1.3 preferred (OpenSSL offers it first), 1.2 accepted.
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(ossl)?;
        // AES-128-GCM first: with AES-NI the cheapest for both ends
        // (BENCHMARKS.md); TLS 1.3 PSKs need a SHA-256 suite anyway.
        b.set_ciphersuites(
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        )
        .map_err(ossl)?;
        let auth = if let Some(file) = &p.psk_file {
            let username = match &p.username {
                Some(u) => u.clone(),
                None => login_name()?,
            };
            let psk = creds::load_psk(file, &username)?;
            let id = psk.username.clone();
            b.set_psk_client_callback(move |_ssl, _hint, identity, key| {
                let idb = id.as_bytes();
                if idb.len() + 1 > identity.len() || psk.key.len() > key.len() {
                    return Ok(0);
                }
                identity[..idb.len()].copy_from_slice(idb);
                identity[idb.len()] = 0;
                key[..psk.key.len()].copy_from_slice(&psk.key);
                Ok(psk.key.len())
            });
            // TLS 1.2 needs PSK cipher suites; TLS 1.3's are the defaults.
            b.set_cipher_list(
                "DHE-PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:\
                 ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL:!SHA1:!CAMELLIA:!ARIA",
            )
            .or_else(|_| b.set_cipher_list("PSK"))
            .map_err(ossl)?;
            Auth::Psk { username }
        } else {
            let verify = p.verify_peer.unwrap_or(true);
            let root = crate::sys::geteuid() == 0;
            let home = home_dir();
            let dir = creds::cert_dir(p.certificates.as_deref(), root, home.as_deref())?;
            let files = creds::cert_files(dir.as_deref());
            match &files.ca {
                Some(ca) => b.set_ca_file(ca).map_err(|e| {
                    Error::new(
                        libc::EINVAL,
                        format!("TLS: cannot load CA certificate {}: {e}", ca.display()),
                    )
                })?,
                None => b.set_default_verify_paths().map_err(ossl)?,
            }
            if let Some((cert, key)) = &files.client {
                let bad = |what: &std::path::Path, e: openssl::error::ErrorStack| {
                    Error::new(
                        libc::EINVAL,
                        format!("TLS: cannot load {}: {e}", what.display()),
                    )
                };
                b.set_certificate_chain_file(cert)
                    .map_err(|e| bad(cert, e))?;
                b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
                    .map_err(|e| bad(key, e))?;
                b.check_private_key().map_err(|e| bad(key, e))?;
            }
            b.set_verify(if verify {
                SslVerifyMode::PEER
            } else {
                SslVerifyMode::NONE
            });
            let name = p
                .hostname
                .clone()
                .or_else(|| host.map(str::to_string))
                .filter(|h| !h.is_empty());
            Auth::X509 { verify, name, dir }
        };
        Ok(Arc::new(TlsClient {
            ctx: b.build(),
            auth,
        }))
    }

    /// What this client authenticates with, for messages.
    pub fn describe(&self) -> String {
        match &self.auth {
            Auth::Psk { username } => format!("TLS-PSK as \"{username}\""),
            Auth::X509 { verify, name, dir } => format!(
                "X.509 ({}, certificates {})",
                match (verify, name) {
                    (false, _) => "server not verified".to_string(),
                    (true, Some(n)) => format!("server verified as \"{n}\""),
                    (true, None) => "server certificate verified".to_string(),
                },
                dir.as_ref()
                    .map_or("of the system".to_string(), |d| d.display().to_string())
            ),
        }
    }

    /// Runs the TLS handshake on `fd` (blocking; the caller bounds it
    /// with socket timeouts) right after the server acknowledged STARTTLS.
    pub fn connect(&self, fd: RawFd) -> Result<TlsSession> {
        let mut ssl = openssl::ssl::Ssl::new(&self.ctx)
            .map_err(|e| Error::new(libc::EPROTO, format!("TLS setup: {e}")))?;
        if let Auth::X509 {
            verify: true,
            name: Some(n),
            ..
        } = &self.auth
        {
            let param = ssl.param_mut();
            let r = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => param.set_ip(ip),
                Err(_) => param.set_host(n),
            };
            r.map_err(|e| Error::new(libc::EINVAL, format!("TLS: server name \"{n}\": {e}")))?;
        }
        if let Auth::X509 { name: Some(n), .. } = &self.auth {
            if n.parse::<std::net::IpAddr>().is_err() {
                let _ = ssl.set_hostname(n); // SNI
            }
        }
        match ssl.connect(TlsSession::wire(fd)) {
            Ok(s) => Ok(TlsSession::from_stream(s)),
            Err(HandshakeError::SetupFailure(e)) => {
                Err(Error::new(libc::EPROTO, format!("TLS setup: {e}")))
            }
            Err(HandshakeError::WouldBlock(_)) => Err(Error::new(
                libc::ETIMEDOUT,
                "TLS handshake: the server did not answer in time",
            )),
            Err(HandshakeError::Failure(mid)) => Err(self.handshake_error(&mid)),
        }
    }

    /// An NBD negotiation error on a TLS session, explained: a TLS alert
    /// the server sent before closing (TLS 1.3 servers reject a client
    /// certificate only after the client's handshake completed).
    pub fn explain(&self, sess: &mut TlsSession, e: Error) -> Error {
        if e.errno == libc::ETIMEDOUT {
            return e;
        }
        let mut b = [0u8; 1];
        let alert = match sess.s.ssl_read(&mut b) {
            Err(x) => Some(session::ssl_error("", &x).msg)
                .filter(|m| m.contains("alert"))
                .map(|m| m.trim_start_matches(": ").to_string()),
            Ok(_) => None,
        };
        let hint = match &self.auth {
            Auth::X509 { .. } => {
                " (the server ended the TLS session: does it require a client certificate \
                 (client-cert.pem and client-key.pem in tls-certificates=), or reject this one?)"
            }
            Auth::Psk { .. } => " (the server ended the TLS session)",
        };
        match alert {
            Some(a) => Error::new(
                libc::EACCES,
                format!("{}: TLS alert from the server: {a}{hint}", e.msg),
            ),
            None => Error::new(e.errno, format!("{}{hint}", e.msg)),
        }
    }

    fn handshake_error(&self, mid: &openssl::ssl::MidHandshakeSslStream<session::Wire>) -> Error {
        let v = mid.ssl().verify_result();
        if v != X509VerifyResult::OK {
            let why = match v.as_raw() {
                62 => match &self.auth {
                    Auth::X509 { name: Some(n), .. } => format!(
                        "the server's certificate is not for \"{n}\" (name mismatch; \
                         tls-hostname= names the expected server)"
                    ),
                    _ => "name mismatch".to_string(),
                },
                10 => "the server's certificate has expired".to_string(),
                9 => "the server's certificate is not yet valid".to_string(),
                2 | 18 | 19 | 20 | 21 => format!(
                    "the server's certificate is not trusted ({}; tls-certificates= names \
                     the directory with ca-cert.pem)",
                    v.error_string()
                ),
                _ => format!(
                    "the server's certificate was rejected: {}",
                    v.error_string()
                ),
            };
            return Error::new(libc::EACCES, format!("TLS handshake failed: {why}"));
        }
        let e = session::ssl_error("", mid.error());
        let detail = e.msg.trim_start_matches(": ").to_string();
        let hint = match &self.auth {
            Auth::Psk { username }
                if detail.contains("alert")
                    || detail.contains("decrypt")
                    || detail.contains("bad record mac") =>
            {
                format!(" (the server rejected the TLS-PSK identity \"{username}\" or its key)")
            }
            Auth::Psk { username }
                if detail.contains("unexpected eof")
                    || detail.contains("closed the connection") =>
            {
                format!(
                    " during the TLS-PSK handshake: unknown identity \"{username}\" or wrong key"
                )
            }
            Auth::X509 { .. } if detail.contains("alert") => {
                " (does the server require a client certificate? client-cert.pem and \
                 client-key.pem in tls-certificates=)"
                    .to_string()
            }
            _ => String::new(),
        };
        Error::new(
            if e.errno == libc::EPROTO && hint.is_empty() {
                libc::EPROTO
            } else {
                libc::EACCES
            },
            format!("TLS handshake failed: {detail}{hint}"),
        )
    }
}

/// The user's home directory (for libnbd's default certificate dirs).
fn home_dir() -> Option<std::path::PathBuf> {
    passwd_entry().map(|(_, home)| home.into())
}

/// The login name: TLS-PSK's user when the URI names none (like libnbd).
fn login_name() -> Result<String> {
    passwd_entry().map(|(name, _)| name).ok_or_else(|| {
        Error::invalid("TLS-PSK: no user name (give nbds://USER@... or tls-username=)")
    })
}

fn passwd_entry() -> Option<(String, String)> {
    crate::sys::passwd_of(crate::sys::geteuid())
}
