// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Subprocesses: NBD servers through systemd socket activation, and helper commands on pipes.
//
// NBD servers run as subprocesses through systemd socket activation
// (nbdcopy's `[ CMD ARGS ... ]`): a listening unix socket in a private
// temporary directory is handed to the server as fd 3.  Helper commands
// (ssh for nbd+ssh://) get given fds as stdin and stdout (`spawn_piped`).
// Both are `child::Child`ren: tied to their value, not to a thread.

use super::child::{Child, Command};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running server subprocess; killed and reaped on drop.  It lives as
/// long as this value, whatever threads create, use and drop it (see
/// `child`), and dies with the host process.
pub struct ServerProcess {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

/// A private directory for the socket, in `parent` (the "socket-dir"
/// key) or else where `std::env::temp_dir` says (`TMPDIR`, else /tmp).
fn make_private_dir(parent: Option<&Path>) -> io::Result<PathBuf> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    sys::mkdtemp(&parent.join("nbdcpy-XXXXXX"))
}

impl ServerProcess {
    /// Starts `argv` with a listening socket as fd 3 (LISTEN_FDS=1), the
    /// socket in a private directory made in `socket_dir` (None: TMPDIR).
    pub fn spawn(argv: &[String], socket_dir: Option<&Path>) -> io::Result<ServerProcess> {
        let mut cmd = Command::new(argv)?;
        let dir = make_private_dir(socket_dir)?;
        let sock = dir.join("sock");
        let started = UnixListener::bind(&sock).and_then(|listener| {
            cmd.env_remove_prefix("LISTEN_")
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "nbd")
                .env_pid("LISTEN_PID")
                .fd(listener.as_raw_fd(), 3);
            // The child owns the listening socket once this returns.
            cmd.spawn()
        });
        match started {
            Ok(child) => Ok(ServerProcess { child, dir, sock }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.sock
    }

    #[cfg(test)]
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.  Idempotent.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A helper command (ssh for nbd+ssh://) with the given stdin and
/// stdout and its stderr on a pipe; killed and reaped on drop.  The one
/// way the endpoints run such a command, kept narrow: argv, two fds, a
/// stderr pipe, kill and reap.  Like a server, it is a `child::Child`:
/// it lives as long as this value, whatever threads use it, and dies
/// with the host process.
pub struct PipedChild {
    child: Child,
    /// The read end of the child's stderr (non-blocking).
    pub stderr: OwnedFd,
}

/// Starts `argv` (argv[0] looked up in PATH) with `stdin` and `stdout`
/// as its fds 0 and 1 and a new pipe as fd 2, in this process's
/// environment.  Fails (with the errno) when it cannot be executed.
pub fn spawn_piped(argv: &[String], stdin: RawFd, stdout: RawFd) -> io::Result<PipedChild> {
    let mut cmd = Command::new(argv)?;
    let (err_rd, err_wr) = sys::pipe_with(libc::O_CLOEXEC)?;
    cmd.fd(stdin, 0).fd(stdout, 1).fd(err_wr.as_raw_fd(), 2);
    let child = cmd.spawn()?;
    drop(err_wr);
    let fl = sys::fcntl_int(err_rd.as_raw_fd(), libc::F_GETFL, 0)?;
    sys::fcntl_int(err_rd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)?;
    Ok(PipedChild {
        child,
        stderr: err_rd,
    })
}

impl PipedChild {
    #[cfg(test)]
    pub fn pid(&self) -> libc::pid_t {
        self.child.pid()
    }

    /// Whether the child has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        self.child.has_exited()
    }

    /// Waits at most `grace` for the child to exit by itself, then kills
    /// it; always reaps.  Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill();
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.  Idempotent.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    fn have(cmd: &str) -> bool {
        super::super::child::find_in_path(cmd).is_ok()
    }

    fn greeting(sp: &ServerProcess) -> Vec<u8> {
        let mut s = std::os::unix::net::UnixStream::connect(sp.socket_path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = vec![0u8; 8];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn qemu_nbd_and_nbdkit_by_socket_activation() {
        let dir = make_private_dir(None).unwrap();
        let img = dir.join("img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut cmds = vec![vec![
            "qemu-nbd".to_string(),
            "-f".into(),
            "raw".into(),
            img.to_string_lossy().into(),
        ]];
        if have("nbdkit") {
            cmds.push(vec!["nbdkit".into(), "memory".into(), "1M".into()]);
        } else {
            eprintln!("SKIP: nbdkit not installed");
        }
        for argv in cmds {
            if !have(&argv[0]) {
                eprintln!("SKIP: {} not installed", argv[0]);
                continue;
            }
            // The second one's socket in a directory of the caller's
            // ("socket-dir").
            let in_dir = argv[0] == "nbdkit";
            let mut sp = ServerProcess::spawn(&argv, in_dir.then_some(dir.as_path())).unwrap();
            assert_eq!(&greeting(&sp), b"NBDMAGIC", "{argv:?}");
            assert_eq!(
                sp.socket_path().parent().unwrap().parent() == Some(dir.as_path()),
                in_dir
            );
            let (pid, sdir) = (sp.pid(), sp.socket_path().parent().unwrap().to_path_buf());
            sp.kill();
            drop(sp);
            assert!(sys::kill(pid, 0).is_err(), "server reaped");
            assert!(!sdir.exists(), "temp dir removed");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_command_is_a_clear_error() {
        let e = ServerProcess::spawn(&["no-such-nbd-server-xyz".into()], None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not found"), "{e}");
        let e = ServerProcess::spawn(&["/nonexistent/server".into()], None)
            .err()
            .unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
