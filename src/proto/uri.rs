// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! NBD URIs, with libnbd's extensions.
//
// NBD URIs (doc/uri.md, plus libnbd's extensions): nbd, nbds, nbd+unix,
// nbds+unix, nbd+vsock, nbds+vsock, and (libnbd 1.22) nbd+ssh, nbds+ssh.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        host: String,
        port: u16,
    },
    Unix {
        path: String,
    },
    Vsock {
        cid: u32,
        port: u32,
    },
    /// nbd+ssh://[user@]host[:port]/export[?socket=PATH|?nbd-port=N]: NBD
    /// over the stdin and stdout of `ssh -p PORT HOST nc ...` (libnbd 1.22).
    Ssh {
        host: String,
        /// The ssh port (default 22).
        port: u16,
        /// The user in the URI (ssh's login name; with nbds+ssh also the
        /// TLS user name, as for the other schemes).
        user: Option<String>,
        /// socket=PATH: `nc -U PATH` on the remote host.
        socket: Option<String>,
        /// nbd-port=N: else `nc localhost N` (default 10809).
        nbd_port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub transport: Transport,
    pub export_name: String,
    /// nbds*: TLS required.
    pub tls: bool,
    /// The tls-* query parameters and the user name (for TLS-PSK).
    pub tls_params: TlsParams,
}

/// What a URI says about TLS (libnbd's query parameters); None where it
/// says nothing, so configured defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// tls-certificates=DIR: ca-cert.pem, client-cert.pem, client-key.pem.
    pub certificates: Option<String>,
    /// tls-verify-peer=false skips verifying the server's certificate.
    pub verify_peer: Option<bool>,
    /// tls-hostname=NAME: the name checked in the server's certificate.
    pub hostname: Option<String>,
    /// tls-psk-file=FILE: `username:hexkey` lines.
    pub psk_file: Option<String>,
    /// tls-username=, or the user in `nbds://alice@host/`.
    pub username: Option<String>,
}

impl TlsParams {
    /// These parameters, with `defaults` where they say nothing (a URI
    /// that names certificates or a PSK file takes neither from them).
    pub fn or(&self, defaults: &TlsParams) -> TlsParams {
        let own = self.certificates.is_some() || self.psk_file.is_some();
        let d = |x: &Option<String>| if own { None } else { x.clone() };
        TlsParams {
            certificates: self.certificates.clone().or(d(&defaults.certificates)),
            verify_peer: self.verify_peer.or(defaults.verify_peer),
            hostname: self.hostname.clone().or(defaults.hostname.clone()),
            psk_file: self.psk_file.clone().or(d(&defaults.psk_file)),
            username: self.username.clone().or(defaults.username.clone()),
        }
    }
}

/// A boolean query parameter's value, as libnbd reads them.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError(pub String);

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UriError {}

const SCHEMES: &[&str] = &[
    "nbd",
    "nbds",
    "nbd+unix",
    "nbds+unix",
    "nbd+vsock",
    "nbds+vsock",
    "nbd+ssh",
    "nbds+ssh",
];
const TLS_PARAMS: &[&str] = &[
    "tls-type",
    "tls-hostname",
    "tls-verify-peer",
    "tls-certificates",
    "tls-psk-file",
    "tls-username",
];

/// Whether `s` starts with an NBD URI scheme (else it is a file path).
pub fn is_nbd_uri(s: &str) -> bool {
    s.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

fn pct_decode(s: &str, what: &str) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError(format!("bad percent-encoding in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("the {what} is not valid UTF-8")))
}

pub fn parse(uri: &str) -> Result<NbdUri, UriError> {
    let err = |m: String| Err(UriError(format!("NBD URI \"{uri}\": {m}")));
    let Some((scheme, rest)) = uri.split_once("://") else {
        return err("missing \"://\"".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        return err(format!("unknown scheme \"{scheme}\""));
    }
    let tls = scheme.starts_with("nbds");
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let _ = fragment;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Export name: the path without its first '/', percent-decoded.
    let export_name = pct_decode(path.strip_prefix('/').unwrap_or(path), "export name")?;

    let mut socket = None;
    let mut nbd_port = None;
    let mut tls_params = TlsParams::default();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = pct_decode(k, "query")?;
        let v = pct_decode(v, "query")?;
        if k == "socket" {
            socket = Some(v);
        } else if k == "nbd-port" && scheme.ends_with("+ssh") {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => nbd_port = Some(p),
                _ => return err(format!("bad nbd-port \"{v}\"")),
            }
        } else if TLS_PARAMS.contains(&k.as_str()) {
            // Harmless without TLS, like libnbd.
            let t = &mut tls_params;
            match k.as_str() {
                "tls-certificates" => t.certificates = Some(v),
                "tls-hostname" => t.hostname = Some(v),
                "tls-psk-file" => t.psk_file = Some(v),
                "tls-username" => t.username = Some(v),
                "tls-verify-peer" => {
                    t.verify_peer = Some(parse_bool(&v).ok_or_else(|| {
                        UriError(format!(
                            "NBD URI \"{uri}\": tls-verify-peer=\"{v}\" is not a boolean"
                        ))
                    })?)
                }
                _ => {} // tls-type: the scheme decides
            }
        } else {
            return err(format!("unknown query parameter \"{k}\""));
        }
    }
    let mut uri_user = None;
    let userinfo_stripped = match authority.rsplit_once('@') {
        Some((user, h)) => {
            // nbds://alice@host/: the TLS-PSK user (tls-username= wins).
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            if !user.is_empty() {
                uri_user = Some(pct_decode(user, "user name")?);
            }
            if tls_params.username.is_none() {
                tls_params.username = uri_user.clone();
            }
            h
        }
        None => authority,
    };
    let transport = if scheme.ends_with("+unix") {
        if !userinfo_stripped.is_empty() && userinfo_stripped != "localhost" {
            return err("a unix socket URI must not name a host".into());
        }
        match socket {
            Some(p) if !p.is_empty() => Transport::Unix { path: p },
            _ => return err("missing ?socket=PATH".into()),
        }
    } else if scheme.ends_with("+ssh") {
        let (host, port) = split_host_port(userinfo_stripped)
            .map_err(|m| UriError(format!("NBD URI \"{uri}\": {m}")))?;
        if host.is_empty() {
            return err("missing host".into());
        }
        // Never an option of ssh's (libnbd refuses these too).
        if host.starts_with('-') || uri_user.as_deref().is_some_and(|u| u.starts_with('-')) {
            return err("the host and user must not start with '-'".into());
        }
        if socket.is_some() && nbd_port.is_some() {
            return err("socket= and nbd-port= exclude each other".into());
        }
        let port = match port {
            Some(p) if p <= u16::MAX as u32 && p > 0 => p as u16,
            Some(p) => return err(format!("bad port {p}")),
            None => 22,
        };
        Transport::Ssh {
            host,
            port,
            user: uri_user,
            socket: socket.filter(|s| !s.is_empty()),
            nbd_port: nbd_port.unwrap_or(10809),
        }
    } else {
        if socket.is_some() {
            return err("socket= is only for nbd+unix:// and nbd+ssh:// URIs".into());
        }
        let (host, port) = split_host_port(userinfo_stripped)
            .map_err(|m| UriError(format!("NBD URI \"{uri}\": {m}")))?;
        if scheme.ends_with("+vsock") {
            let cid = host
                .parse::<u32>()
                .map_err(|_| UriError(format!("NBD URI \"{uri}\": bad vsock CID \"{host}\"")))?;
            Transport::Vsock {
                cid,
                port: port.unwrap_or(10809),
            }
        } else {
            if host.is_empty() {
                return err("missing host".into());
            }
            let port = match port {
                Some(p) if p <= u16::MAX as u32 && p > 0 => p as u16,
                Some(p) => return err(format!("bad port {p}")),
                None => 10809,
            };
            Transport::Tcp { host, port }
        }
    };
    Ok(NbdUri {
        transport,
        export_name,
        tls,
        tls_params,
    })
}

/// "host", "host:port", "[v6]", "[v6]:port".
fn split_host_port(a: &str) -> Result<(String, Option<u32>), String> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err("unterminated IPv6 address".into());
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address \"{h}\""));
        }
        match after {
            "" => (h.to_string(), None),
            p if p.starts_with(':') => (h.to_string(), Some(&p[1..])),
            _ => return Err("garbage after the IPv6 address".into()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (a.to_string(), None),
        }
    };
    let host = pct_decode(&host, "host").map_err(|e| e.0)?;
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u32>().map_err(|_| format!("bad port \"{p}\""))?),
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16) -> Transport {
        Transport::Tcp {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn tcp_uris() {
        let u = parse("nbd://example.com").unwrap();
        assert_eq!(
            (u.transport, u.export_name.as_str(), u.tls),
            (tcp("example.com", 10809), "", false)
        );
        let u = parse("nbd://example.com:1234/disk").unwrap();
        assert_eq!(
            (u.transport, u.export_name.as_str()),
            (tcp("example.com", 1234), "disk")
        );
        let u = parse("nbd://h//x").unwrap();
        assert_eq!(u.export_name, "/x");
        let u = parse("nbd://h/a%20b%2Fc").unwrap();
        assert_eq!(u.export_name, "a b/c");
        let u = parse("nbd://[::1]:5000/e").unwrap();
        assert_eq!(u.transport, tcp("::1", 5000));
        let u = parse("nbd://[fe80::1]/").unwrap();
        assert_eq!(u.transport, tcp("fe80::1", 10809));
        let u = parse("NBD://127.0.0.1/").unwrap();
        assert_eq!(u.transport, tcp("127.0.0.1", 10809));
        assert!(parse("nbds://h/").unwrap().tls);
    }

    #[test]
    fn unix_and_vsock() {
        let u = parse("nbd+unix:///?socket=/tmp/s.sock").unwrap();
        assert_eq!(
            u.transport,
            Transport::Unix {
                path: "/tmp/s.sock".into()
            }
        );
        let u = parse("nbd+unix:///exp?socket=/tmp/a%20b").unwrap();
        assert_eq!(
            u.transport,
            Transport::Unix {
                path: "/tmp/a b".into()
            }
        );
        assert_eq!(u.export_name, "exp");
        assert!(parse("nbds+unix:///?socket=/x").unwrap().tls);
        let u = parse("nbd+vsock://3:1234/e").unwrap();
        assert_eq!(u.transport, Transport::Vsock { cid: 3, port: 1234 });
        let u = parse("nbd+vsock://2").unwrap();
        assert_eq!(
            u.transport,
            Transport::Vsock {
                cid: 2,
                port: 10809
            }
        );
    }

    #[test]
    fn errors() {
        for (u, m) in [
            ("nbd+unix:///", "socket"),
            ("nbd+unix:///?socket=", "socket"),
            ("nbd://h/?socket=/x", "only for nbd+unix"),
            ("nbd://h/?bogus=1", "unknown query parameter \"bogus\""),
            (
                "nbd+unix:///?socket=/x&foo",
                "unknown query parameter \"foo\"",
            ),
            ("nbd://h:99999/", "bad port"),
            ("nbd://h:0/", "bad port"),
            ("nbd://h:x/", "bad port"),
            ("nbd://[::1/", "unterminated"),
            ("nbd://[zz]/", "IPv6"),
            ("nbd:///", "missing host"),
            ("nbd+vsock://abc/", "CID"),
            ("nbd://h/%zz", "percent"),
            ("http://h/", "unknown scheme"),
            ("nbd:h", "://"),
        ] {
            let e = parse(u).unwrap_err().0;
            assert!(e.contains(m), "{u}: {e}");
        }
        assert!(parse("nbds://h/?tls-certificates=/etc/pki&tls-verify-peer=false").is_ok());
        let e = parse("nbds://h/?tls-verify-peer=maybe").unwrap_err().0;
        assert!(e.contains("tls-verify-peer"), "{e}");
    }

    #[test]
    fn tls_parameters() {
        let u = parse(
            "nbds://alice@h:1234/e?tls-certificates=/c%20d&tls-verify-peer=false\
             &tls-hostname=srv.example&tls-psk-file=/k.psk",
        )
        .unwrap();
        assert!(u.tls);
        assert_eq!(u.transport, tcp("h", 1234));
        assert_eq!(
            u.tls_params,
            TlsParams {
                certificates: Some("/c d".into()),
                verify_peer: Some(false),
                hostname: Some("srv.example".into()),
                psk_file: Some("/k.psk".into()),
                username: Some("alice".into()),
            }
        );
        let u = parse("nbds://alice@h/?tls-username=bob&tls-verify-peer=1").unwrap();
        assert_eq!(u.tls_params.username.as_deref(), Some("bob"));
        assert_eq!(u.tls_params.verify_peer, Some(true));
        let u = parse("nbds+unix://carol@/e?socket=/s&tls-psk-file=/k").unwrap();
        assert_eq!(u.tls_params.username.as_deref(), Some("carol"));
        assert_eq!(u.transport, Transport::Unix { path: "/s".into() });
        let u = parse("nbds+vsock://dave@3:99/").unwrap();
        assert_eq!(u.tls_params.username.as_deref(), Some("dave"));
        assert_eq!(u.transport, Transport::Vsock { cid: 3, port: 99 });
        let u = parse("nbd://h/").unwrap();
        assert!(!u.tls);
        assert_eq!(u.tls_params, TlsParams::default());
    }

    #[test]
    fn ssh_uris() {
        let ssh =
            |host: &str, port, user: Option<&str>, socket: Option<&str>, nbd_port| Transport::Ssh {
                host: host.into(),
                port,
                user: user.map(Into::into),
                socket: socket.map(Into::into),
                nbd_port,
            };
        let u = parse("nbd+ssh://server/disk").unwrap();
        assert_eq!(u.transport, ssh("server", 22, None, None, 10809));
        assert_eq!((u.export_name.as_str(), u.tls), ("disk", false));
        let u = parse("nbd+ssh://bob@server:2222/?socket=/run/nbd%20x.sock").unwrap();
        assert_eq!(
            u.transport,
            ssh("server", 2222, Some("bob"), Some("/run/nbd x.sock"), 10809)
        );
        let u = parse("nbds+ssh://alice@[::1]/e?nbd-port=10810&tls-psk-file=/k").unwrap();
        assert!(u.tls);
        assert_eq!(u.transport, ssh("::1", 22, Some("alice"), None, 10810));
        assert_eq!(u.tls_params.username.as_deref(), Some("alice"));
        let u = parse("nbds+ssh://alice@h/?tls-username=carol").unwrap();
        assert_eq!(u.transport, ssh("h", 22, Some("alice"), None, 10809));
        assert_eq!(u.tls_params.username.as_deref(), Some("carol"));
        assert!(is_nbd_uri("nbd+ssh://h/"));
        assert!(is_nbd_uri("nbds+ssh://h/"));
        for (u, m) in [
            ("nbd+ssh:///", "missing host"),
            ("nbd+ssh://-oProxyCommand=xeyes/", "must not start with '-'"),
            ("nbd+ssh://-x@h/", "must not start with '-'"),
            ("nbd+ssh://h:0/", "bad port"),
            ("nbd+ssh://h/?nbd-port=x", "bad nbd-port"),
            ("nbd+ssh://h/?socket=/s&nbd-port=1", "exclude"),
            ("nbd://h/?nbd-port=1", "unknown query parameter"),
        ] {
            let e = parse(u).unwrap_err().0;
            assert!(e.contains(m), "{u}: {e}");
        }
    }

    #[test]
    fn uri_or_path() {
        assert!(is_nbd_uri("nbd://x"));
        assert!(is_nbd_uri("nbd+unix:///?socket=/s"));
        assert!(!is_nbd_uri("disk.img"));
        assert!(!is_nbd_uri("/dev/sda"));
        assert!(!is_nbd_uri("http://x"));
        assert!(!is_nbd_uri("null:"));
    }
}
