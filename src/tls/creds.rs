// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! TLS credentials on disk: PSK files and X.509 certificate directories.
//
// TLS credentials on disk: PSK files (`username:hexkey` lines, as nbdkit,
// qemu and libnbd use) and X.509 certificate directories (libnbd's
// defaults when none is named).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One PSK identity and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk {
    pub username: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(
            f,
            "Psk {{ username: {:?}, key: [{} bytes] }}",
            self.username,
            self.key.len()
        )
    }
}

fn hex_key(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Finds `username`'s key in the text of a PSK file.
pub fn find_psk(text: &str, username: &str, file: &str) -> Result<Psk> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((user, key)) = line.split_once(':') else {
            return Err(Error::invalid(format!(
                "TLS PSK file {file}, line {}: expected username:hexkey",
                n + 1
            )));
        };
        if user != username {
            continue;
        }
        let key = hex_key(key.trim()).ok_or_else(|| {
            Error::invalid(format!(
                "TLS PSK file {file}, line {}: the key of \"{user}\" is not an even number \
                 of hex digits",
                n + 1
            ))
        })?;
        return Ok(Psk {
            username: user.to_string(),
            key,
        });
    }
    Err(Error::new(
        libc::ENOENT,
        format!("TLS PSK file {file} has no key for user \"{username}\""),
    ))
}

/// Reads `file` and finds `username`'s key.
pub fn load_psk(file: &str, username: &str) -> Result<Psk> {
    let text =
        std::fs::read_to_string(file).map_err(|e| Error::os(format!("TLS PSK file {file}"), e))?;
    find_psk(&text, username, file)
}

/// The certificate directory: the one named, else libnbd's defaults
/// (`/etc/pki/libnbd` for root; `$HOME/.pki/libnbd`, then
/// `$HOME/.config/pki/libnbd` for others), else None (the system's
/// trusted CAs).
pub fn cert_dir(named: Option<&str>, root: bool, home: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(d) = named {
        let p = PathBuf::from(d);
        if !p.is_dir() {
            return Err(Error::new(
                libc::ENOENT,
                format!("tls-certificates: {d} is not a directory"),
            ));
        }
        return Ok(Some(p));
    }
    let candidates: Vec<PathBuf> = if root {
        vec![PathBuf::from("/etc/pki/libnbd")]
    } else {
        home.map(|h| vec![h.join(".pki/libnbd"), h.join(".config/pki/libnbd")])
            .unwrap_or_default()
    };
    Ok(candidates.into_iter().find(|p| p.is_dir()))
}

/// The files of a certificate directory that are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// ca-cert.pem, if present (else the system's trusted CAs).
    pub ca: Option<PathBuf>,
    /// client-cert.pem and client-key.pem, if both are present.
    pub client: Option<(PathBuf, PathBuf)>,
}

pub fn cert_files(dir: Option<&Path>) -> CertFiles {
    let Some(dir) = dir else {
        return CertFiles {
            ca: None,
            client: None,
        };
    };
    let f = |n: &str| Some(dir.join(n)).filter(|p| p.is_file());
    CertFiles {
        ca: f("ca-cert.pem"),
        client: f("client-cert.pem").zip(f("client-key.pem")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files() {
        let t = "alice:0123456789abcdefABCDEF\n\nbob:00ff\r\n";
        let p = find_psk(t, "alice", "f").unwrap();
        assert_eq!(
            p.key,
            vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xab, 0xcd, 0xef]
        );
        assert_eq!(find_psk(t, "bob", "f").unwrap().key, vec![0, 255]);
        let e = find_psk(t, "carol", "f").unwrap_err();
        assert!(e.msg.contains("no key for user \"carol\""), "{}", e.msg);
        let e = find_psk("alice:abc\n", "alice", "f").unwrap_err();
        assert!(
            e.msg.contains("line 1") && e.msg.contains("hex"),
            "{}",
            e.msg
        );
        let e = find_psk("bob:00\nalice:zz\n", "alice", "f").unwrap_err();
        assert!(e.msg.contains("line 2"), "{}", e.msg);
        let e = find_psk("garbage\n", "alice", "f").unwrap_err();
        assert!(e.msg.contains("username:hexkey"), "{}", e.msg);
        assert!(!format!("{p:?}").contains("0123"));
        let e = load_psk("/nonexistent/x.psk", "a").unwrap_err();
        assert!(e.msg.contains("/nonexistent/x.psk") && e.errno == libc::ENOENT);
    }

    #[test]
    fn cert_dirs() {
        let tmp = std::env::temp_dir().join(format!("nbdcpy-creds-{}", std::process::id()));
        let home = tmp.join("home");
        std::fs::create_dir_all(home.join(".config/pki/libnbd")).unwrap();
        // no ~/.pki/libnbd: the second default
        assert_eq!(
            cert_dir(None, false, Some(&home)).unwrap(),
            Some(home.join(".config/pki/libnbd"))
        );
        std::fs::create_dir_all(home.join(".pki/libnbd")).unwrap();
        assert_eq!(
            cert_dir(None, false, Some(&home)).unwrap(),
            Some(home.join(".pki/libnbd"))
        );
        assert_eq!(cert_dir(None, false, None).unwrap(), None);
        let d = home.join(".pki/libnbd");
        assert_eq!(cert_dir(d.to_str(), true, None).unwrap(), Some(d.clone()));
        assert!(cert_dir(Some("/nonexistent/dir"), false, None).is_err());
        assert_eq!(
            cert_files(Some(&d)),
            CertFiles {
                ca: None,
                client: None
            }
        );
        std::fs::write(d.join("ca-cert.pem"), "x").unwrap();
        std::fs::write(d.join("client-cert.pem"), "x").unwrap();
        let c = cert_files(Some(&d));
        assert_eq!(c.ca, Some(d.join("ca-cert.pem")));
        assert_eq!(c.client, None, "a client certificate needs its key");
        std::fs::write(d.join("client-key.pem"), "x").unwrap();
        assert!(cert_files(Some(&d)).client.is_some());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
