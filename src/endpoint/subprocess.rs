// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Subprocesses: NBD servers through systemd socket activation, and helper commands on pipes.
//
// NBD servers run as subprocesses through systemd socket activation
// (nbdcopy's `[ CMD ARGS ... ]`): a listening unix socket in a private
// temporary directory is handed to the server as fd 3.  Helper commands
// (ssh for nbd+ssh://) get given fds as stdin and stdout (`spawn_piped`).

use crate::sys;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running server subprocess; killed and reaped on drop.
pub struct ServerProcess {
    pid: libc::pid_t,
    dir: PathBuf,
    sock: PathBuf,
    reaped: bool,
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// argv[0] looked up in PATH (as execvp would), resolved before fork.
fn find_in_path(cmd: &str) -> io::Result<PathBuf> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(cmd);
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{cmd}: command not found in PATH"),
    ))
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
        let cmd = argv
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let exe = find_in_path(cmd)?;
        let dir = make_private_dir(socket_dir)?;
        let sock = dir.join("sock");
        let listener = match UnixListener::bind(&sock) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // Everything that allocates happens before fork: after it, in a
        // multithreaded process, the child may only use async-signal-safe
        // calls.
        let exe_c = cstr(exe.as_os_str().as_bytes())?;
        let args_c: Vec<CString> = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv_p: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut env_c: Vec<CString> = Vec::new();
        for (k, v) in std::env::vars_os() {
            let k = k.as_bytes();
            if k.starts_with(b"LISTEN_") {
                continue;
            }
            let mut kv = k.to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env_c.push(cstr(&kv)?);
        }
        env_c.push(cstr(b"LISTEN_FDS=1")?);
        env_c.push(cstr(b"LISTEN_FDNAMES=nbd")?);
        // LISTEN_PID=<pid> is filled in by the child: it only knows its pid
        // after fork.  Reserve room for the digits.
        let mut pid_var: [u8; 32] = [0; 32];
        pid_var[..11].copy_from_slice(b"LISTEN_PID=");
        let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
        env_p.push(pid_var.as_ptr() as *const libc::c_char);
        env_p.push(std::ptr::null());

        // A close-on-exec pipe tells us whether exec failed, and why.
        let (rd, wr) = sys::pipe_with(libc::O_CLOEXEC)?;
        let lfd = listener.as_raw_fd();
        let wfd = wr.as_raw_fd();

        // SAFETY: fork() itself is safe to call; the child below only uses
        // async-signal-safe functions on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: child side: only async-signal-safe calls, on buffers
            // that were allocated before fork and are not freed here.
            unsafe { child(lfd, wfd, &exe_c, &argv_p, &mut pid_var, &env_p) }
        }
        drop(wr);
        drop(listener); // the child owns the listening socket now
        let mut sp = ServerProcess {
            pid,
            dir,
            sock,
            reaped: false,
        };
        // exec failure: the child writes its errno; success closes the pipe.
        let mut buf = [0u8; 4];
        let n = loop {
            match sys::read(rd.as_raw_fd(), &mut buf) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => break r.unwrap_or(0),
            }
        };
        if n == 4 {
            sp.kill();
            let errno = i32::from_ne_bytes(buf);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(sp)
    }

    pub fn socket_path(&self) -> &Path {
        &self.sock
    }

    #[cfg(test)]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the server has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.reaped {
            return Some(0);
        }
        match sys::waitpid(self.pid, libc::WNOHANG) {
            Ok(Some(st)) => {
                self.reaped = true;
                Some(st)
            }
            // A host's SIGCHLD handler (or SIGCHLD ignored) reaped it
            // already: it is gone, and its pid is not ours any more.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                self.reaped = true;
                Some(0)
            }
            _ => None,
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.  Idempotent.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = sys::kill(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = sys::kill(self.pid, libc::SIGKILL);
        // Blocks until the killed child is gone.
        while matches!(sys::waitpid(self.pid, 0), Err(e) if e.raw_os_error() == Some(libc::EINTR)) {
        }
        self.reaped = true;
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
/// stderr pipe, kill and reap.
pub struct PipedChild {
    pid: libc::pid_t,
    reaped: bool,
    /// The read end of the child's stderr (non-blocking).
    pub stderr: OwnedFd,
}

/// Starts `argv` (argv[0] looked up in PATH) with `stdin` and `stdout`
/// as its fds 0 and 1 and a new pipe as fd 2, in this process's
/// environment.  Fails (with the errno) when it cannot be executed.
pub fn spawn_piped(argv: &[String], stdin: RawFd, stdout: RawFd) -> io::Result<PipedChild> {
    let cmd = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let exe = find_in_path(cmd)?;
    // Everything that allocates happens before fork.
    let exe_c = cstr(exe.as_os_str().as_bytes())?;
    let args_c: Vec<CString> = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut argv_p: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_c: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstr(&kv)?);
    }
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let (err_rd, err_wr) = sys::pipe_with(libc::O_CLOEXEC)?;
    let (rd, wr) = sys::pipe_with(libc::O_CLOEXEC)?;
    let fds = [stdin, stdout, err_wr.as_raw_fd()];
    let wfd = wr.as_raw_fd();
    // SAFETY: fork() itself is safe to call; the child below only uses
    // async-signal-safe functions on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side: only async-signal-safe calls, on buffers
        // that were allocated before fork and are not freed here.
        unsafe { piped_child(fds, wfd, &exe_c, &argv_p, &env_p) }
    }
    drop(wr);
    drop(err_wr);
    let mut c = PipedChild {
        pid,
        reaped: false,
        stderr: err_rd,
    };
    let mut buf = [0u8; 4];
    let n = loop {
        match sys::read(rd.as_raw_fd(), &mut buf) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => break r.unwrap_or(0),
        }
    };
    if n == 4 {
        c.kill();
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    let fl = sys::fcntl_int(c.stderr.as_raw_fd(), libc::F_GETFL, 0)?;
    sys::fcntl_int(c.stderr.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)?;
    Ok(c)
}

impl PipedChild {
    #[cfg(test)]
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether the child has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        if !self.reaped {
            match sys::waitpid(self.pid, libc::WNOHANG) {
                Ok(Some(_)) => self.reaped = true,
                // Reaped by someone else (a host's SIGCHLD handler).
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => self.reaped = true,
                _ => {}
            }
        }
        self.reaped
    }

    /// Waits at most `grace` for the child to exit by itself, then
    /// SIGKILL; always reaps.  Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill();
    }

    /// SIGKILL and reap.  Idempotent.
    pub fn kill(&mut self) {
        if self.exited() {
            return;
        }
        let _ = sys::kill(self.pid, libc::SIGKILL);
        while matches!(sys::waitpid(self.pid, 0), Err(e) if e.raw_os_error() == Some(libc::EINTR)) {
        }
        self.reaped = true;
    }
}

impl Drop for PipedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child after fork for `spawn_piped`: fds 0, 1, 2, default signals,
/// then exec.
///
/// # Safety
/// Must only be called in a freshly forked child.  Uses only
/// async-signal-safe functions and the pre-allocated buffers passed in.
unsafe fn piped_child(
    fds: [RawFd; 3],
    wfd: RawFd,
    exe: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY (whole body): see the function's contract.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // dup2 clears close-on-exec on the copies; every other fd of
        // ours is close-on-exec.
        for (to, &from) in fds.iter().enumerate() {
            if libc::dup2(from, to as RawFd) < 0 {
                report_and_exit(wfd);
            }
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        report_and_exit(wfd)
    }
}

/// The child after fork: set up fd 3 and the environment, then exec.
///
/// # Safety
/// Must only be called in a freshly forked child.  Uses only
/// async-signal-safe functions and the pre-allocated buffers passed in.
unsafe fn child(
    lfd: RawFd,
    wfd: RawFd,
    exe: &CString,
    argv: &[*const libc::c_char],
    pid_var: &mut [u8; 32],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY (whole body): see the function's contract.
    unsafe {
        // Die with us, so a crashed copier leaves no server behind.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        // Default signal handling and an empty mask for the server.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if lfd == 3 {
            let fl = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
        } else if libc::dup2(lfd, 3) < 0 {
            report_and_exit(wfd);
        }
        // LISTEN_PID=<our pid>, formatted by hand (no allocation).
        let mut pid = libc::getpid() as u32;
        let mut digits = [0u8; 12];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            pid_var[11 + i] = digits[n - 1 - i];
        }
        pid_var[11 + n] = 0;
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        report_and_exit(wfd)
    }
}

/// # Safety
/// Child only: writes errno to the pipe and exits without unwinding.
unsafe fn report_and_exit(wfd: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on a stack buffer.
    unsafe {
        let e = *libc::__errno_location();
        let b = e.to_ne_bytes();
        libc::write(wfd, b.as_ptr() as *const libc::c_void, 4);
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn have(cmd: &str) -> bool {
        find_in_path(cmd).is_ok()
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
