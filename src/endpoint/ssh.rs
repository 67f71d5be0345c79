// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! NBD over ssh (nbd+ssh://, nbds+ssh://): one `ssh HOST nc ...` per connection, NBD on a socketpair to its stdin and stdout.
//
// As libnbd 1.22 does it: `ssh -p PORT [-o User=USER] -- HOST nc -U
// SOCKET` when the URI has ?socket=, else `ssh -p PORT ... -- HOST nc
// localhost NBD-PORT`, ssh and the remote nc looked up in PATH.  Each
// connection (multi-conn, reconnects) runs its own ssh; the NBD stream is
// one end of a unix socketpair whose other end is ssh's stdin and stdout,
// so the engines treat it as any unix socket.  ssh's stderr goes to a
// pipe read when the handshake fails, so the error carries ssh's own
// message; the process is killed and reaped with its connection.

use super::connect::Limits;
use super::subprocess::{spawn_piped, PipedChild};
use crate::error::{Error, Result};
use crate::proto::uri::Transport;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// The most of ssh's stderr an error carries.
const STDERR_MAX: usize = 4096;

/// The ssh command line for an nbd+ssh:// transport.
pub fn argv(t: &Transport) -> Option<Vec<String>> {
    let Transport::Ssh {
        host,
        port,
        user,
        socket,
        nbd_port,
    } = t
    else {
        return None;
    };
    let mut v: Vec<String> = vec!["ssh".into(), "-p".into(), port.to_string()];
    if let Some(u) = user {
        v.extend(["-o".into(), format!("User={u}")]);
    }
    v.extend(["--".into(), host.clone(), "nc".into()]);
    // ssh hands the remote command to the remote user's shell.
    match socket {
        Some(s) => v.extend(["-U".into(), shell_quote(s)]),
        None => v.extend(["localhost".into(), nbd_port.to_string()]),
    }
    Some(v)
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The ssh process behind one connection; stopped and reaped on drop.
pub struct Tunnel {
    child: PipedChild,
}

/// Starts ssh for `t` and returns the socket that speaks NBD through it.
pub fn open(t: &Transport) -> Result<(OwnedFd, Tunnel)> {
    let argv = argv(t).ok_or_else(|| Error::invalid("not an nbd+ssh:// transport"))?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| Error::os("socketpair for ssh", e))?;
    let fd = theirs.as_raw_fd();
    let child = spawn_piped(&argv, fd, fd)
        .map_err(|e| Error::os(format!("cannot run {}", argv.join(" ")), e))?;
    // ssh has its own copy now.
    drop(theirs);
    Ok((OwnedFd::from(ours), Tunnel { child }))
}

impl Tunnel {
    /// `e`, a failed handshake through this tunnel, with what ssh said on
    /// stderr.  When the stream ended (ECONNRESET, EPIPE), ssh is usually
    /// why: first waits for it to exit (bounded by `lim`, at most 5 s).
    pub fn explain(&mut self, e: Error, lim: &Limits) -> Error {
        let ended = matches!(e.errno, libc::ECONNRESET | libc::EPIPE);
        let grace = match ended {
            true => lim
                .left()
                .map_or(Duration::from_secs(5), |l| l.min(Duration::from_secs(5))),
            false => Duration::ZERO,
        };
        let deadline = std::time::Instant::now() + grace;
        while !self.child.exited() && std::time::Instant::now() < deadline && !lim.is_cancelled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let said = self.stderr_text();
        let msg = match (said.is_empty(), self.child.exited()) {
            (true, true) => format!("{}; ssh exited", e.msg),
            (true, false) => e.msg.clone(),
            (false, _) => format!("{}; ssh: {said}", e.msg),
        };
        Error { msg, ..e }
    }

    /// What ssh wrote on stderr so far (at most STDERR_MAX bytes), on one line.
    fn stderr_text(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while out.len() < STDERR_MAX {
            match sys::read(self.child.stderr.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out.truncate(STDERR_MAX);
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines.join(" / ")
    }

    #[cfg(test)]
    pub fn pid(&self) -> libc::pid_t {
        self.child.pid()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // The connection was closed before (its end of the socketpair):
        // ssh ends by itself once the far side has; else it is killed.
        self.child.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, socket: Option<&str>) -> Transport {
        Transport::Ssh {
            host: "server".into(),
            port: 2222,
            user: user.map(Into::into),
            socket: socket.map(Into::into),
            nbd_port: 10809,
        }
    }

    #[test]
    fn command_lines_are_libnbds() {
        let v = argv(&ssh(None, None)).unwrap();
        assert_eq!(
            v,
            [
                "ssh",
                "-p",
                "2222",
                "--",
                "server",
                "nc",
                "localhost",
                "10809"
            ]
        );
        let v = argv(&ssh(Some("bob"), Some("/run/nbd.sock"))).unwrap();
        assert_eq!(
            v,
            [
                "ssh",
                "-p",
                "2222",
                "-o",
                "User=bob",
                "--",
                "server",
                "nc",
                "-U",
                "/run/nbd.sock"
            ]
        );
        let v = argv(&ssh(None, Some("/tmp/a b's;x"))).unwrap();
        assert_eq!(v.last().unwrap(), "'/tmp/a b'\\''s;x'");
        assert!(argv(&Transport::Unix { path: "/s".into() }).is_none());
    }

    #[test]
    fn a_failing_ssh_is_explained_and_reaped() {
        // A stand-in ssh: says something on stderr and exits.
        let dir = std::env::temp_dir().join(format!("nbdcpy-ssh-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-ssh");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'Permission denied (publickey).' >&2\nexit 255\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let child = spawn_piped(
            &[fake.to_string_lossy().into_owned()],
            theirs.as_raw_fd(),
            theirs.as_raw_fd(),
        )
        .unwrap();
        drop(theirs);
        let mut t = Tunnel { child };
        let pid = t.pid();
        // The stream ends when ssh exits.
        let mut b = [0u8; 8];
        assert_eq!(sys::read(ours.as_raw_fd(), &mut b).unwrap(), 0);
        let e = t.explain(Error::new(libc::ECONNRESET, "handshake"), &Limits::none());
        assert_eq!(e.errno, libc::ECONNRESET);
        assert_eq!(e.msg, "handshake; ssh: Permission denied (publickey).");
        drop(t);
        assert!(sys::kill(pid, 0).is_err(), "reaped");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
