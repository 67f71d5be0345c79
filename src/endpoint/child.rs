// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Child processes tied to a handle: forked by one library thread that never exits, killed and reaped through a pidfd.
//
// A child process the library starts (a `[ CMD ]` server, a tunnel) must
// live exactly as long as the value that owns it, whatever threads create,
// use and drop that value, and must die with the host process, SIGKILL
// included.  The child asks for PR_SET_PDEATHSIG, which Linux delivers
// when the *thread* that forked it exits; so every fork is done by one
// long-lived thread of the library's (the "forker"), which only ends with
// the process.  Its signals are blocked, so the host's handlers never run
// on it.
//
// The child is named by a pidfd, opened while the child cannot have
// exited yet (it waits for a byte from the forker first): signals go
// through pidfd_send_signal and reaping through waitid(P_PIDFD), so a
// host that reaps children itself (waitpid(-1) in a SIGCHLD handler) can
// never make us signal a pid that has been reused by someone else; ECHILD
// then only means that the host reaped ours.  Where pidfd_open is
// missing (ENOSYS: Linux before 5.3, valgrind 3.19), the pid is used,
// signalled only while waitid(WNOWAIT) finds it still our unreaped child:
// a window of a system call or two in which a host reaper and a pid reuse
// would have to meet.

use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a child has after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// What to run: a program, its arguments, environment changes and the
/// descriptors it gets.  Nothing is started until [`Command::spawn`].
pub struct Command {
    exe: PathBuf,
    argv: Vec<OsString>,
    env_set: Vec<(OsString, OsString)>,
    env_remove_prefix: Vec<OsString>,
    env_pid: Option<OsString>,
    fds: Vec<(RawFd, RawFd)>,
}

/// A running child process; SIGTERM, then SIGKILL, and reaped on drop.
pub struct Child {
    pid: libc::pid_t,
    /// None only where the kernel (or valgrind) has no pidfd_open.
    pidfd: Option<OwnedFd>,
    reaped: bool,
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// argv[0] looked up in PATH (as execvp would), resolved before fork.
pub fn find_in_path(cmd: &str) -> io::Result<PathBuf> {
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

impl Command {
    /// `argv[0]` (looked up in PATH unless it has a '/') run with `argv`,
    /// the host's environment and its fds 0, 1 and 2.
    pub fn new(argv: &[String]) -> io::Result<Command> {
        let cmd = argv
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        Ok(Command {
            exe: find_in_path(cmd)?,
            argv: argv.iter().map(OsString::from).collect(),
            env_set: Vec::new(),
            env_remove_prefix: Vec::new(),
            env_pid: None,
            fds: Vec::new(),
        })
    }

    /// Sets `key=value` in the child's environment.
    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Command {
        self.env_set.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// Leaves out the host's variables whose names start with `prefix`.
    pub fn env_remove_prefix(&mut self, prefix: &str) -> &mut Command {
        self.env_remove_prefix.push(prefix.into());
        self
    }

    /// Sets `key=<the child's pid>` (LISTEN_PID for socket activation).
    pub fn env_pid(&mut self, key: &str) -> &mut Command {
        self.env_pid = Some(key.into());
        self
    }

    /// Gives the child `fd` (borrowed: open until spawn returns) as its
    /// descriptor `target`, without close-on-exec.  The host's other
    /// descriptors above 2 are closed in the child.
    pub fn fd(&mut self, fd: RawFd, target: RawFd) -> &mut Command {
        self.fds.push((fd, target));
        self
    }

    /// Starts the child (on the forker thread); fails with the errno of
    /// exec if the program cannot be run.
    pub fn spawn(&self) -> io::Result<Child> {
        let prep = Prepared::new(self)?;
        // A close-on-exec pipe tells us whether exec failed, and why.
        let (err_rd, err_wr) = sys::pipe_with(libc::O_CLOEXEC)?;
        // The child waits for a byte on this one before anything else, so
        // it is alive when its pidfd is opened.
        let (go_rd, go_wr) = sys::pipe_with(libc::O_CLOEXEC)?;
        let (tx, rx) = mpsc::sync_channel(1);
        on_forker(Box::new(move || {
            let r = fork_child(&prep, go_rd.as_raw_fd(), err_wr.as_raw_fd());
            drop((go_rd, err_wr));
            let _ = tx.send(r);
        }))?;
        let r = rx.recv().map_err(|_| forker_gone())?;
        let (pid, pidfd) = r?;
        let mut child = Child {
            pid,
            pidfd,
            reaped: false,
        };
        // Go; and the exec's outcome: its errno, or EOF once exec closed
        // the pipe.
        let _ = sys::write(go_wr.as_raw_fd(), &[1]);
        drop(go_wr);
        let mut buf = [0u8; 4];
        let n = loop {
            match sys::read(err_rd.as_raw_fd(), &mut buf) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => break r.unwrap_or(0),
            }
        };
        if n == 4 {
            child.kill();
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
        }
        Ok(child)
    }
}

impl Child {
    /// For messages and tests only: signal and wait through the Child.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// True once the child has exited (reaps it).  A child that someone
    /// else reaped (the host's SIGCHLD handler) counts as exited.
    pub fn has_exited(&mut self) -> bool {
        if !self.reaped {
            let r = match &self.pidfd {
                Some(fd) => sys::waitid_pidfd(fd.as_raw_fd(), libc::WNOHANG),
                None => sys::waitpid(self.pid, libc::WNOHANG).map(|s| s.is_some()),
            };
            match r {
                Ok(done) => self.reaped = done,
                Err(e) => self.reaped = e.raw_os_error() == Some(libc::ECHILD),
            }
        }
        self.reaped
    }

    /// `sig` to the child, never to another process.
    fn signal(&mut self, sig: libc::c_int) {
        match &self.pidfd {
            Some(fd) => {
                let _ = sys::pidfd_send_signal(fd.as_raw_fd(), sig);
            }
            None => {
                // Only while it is our child and not reaped (WNOWAIT
                // leaves a zombie for has_exited to reap).
                if sys::waitid_pid_running(self.pid).unwrap_or(false) {
                    let _ = sys::kill(self.pid, sig);
                }
            }
        }
    }

    /// Waits up to `t` for the child to exit; true if it did (reaped).
    fn wait_exit(&mut self, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        loop {
            if self.has_exited() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let step = left.as_millis().clamp(1, 100) as i32;
            match &self.pidfd {
                // A pidfd is readable once its process has exited.
                Some(fd) => {
                    let _ = sys::poll_one(fd.as_raw_fd(), libc::POLLIN, step);
                }
                None => std::thread::sleep(Duration::from_millis(5).min(left)),
            }
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.  Idempotent,
    /// and from any thread.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(TERM_GRACE) {
            return;
        }
        self.signal(libc::SIGKILL);
        loop {
            let r = match &self.pidfd {
                Some(fd) => sys::waitid_pidfd(fd.as_raw_fd(), 0),
                None => sys::waitpid(self.pid, 0).map(|s| s.is_some()),
            };
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                _ => break,
            }
        }
        self.reaped = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything the child needs, allocated before fork: after it, in a
/// multithreaded process, the child may only make async-signal-safe calls.
struct Prepared {
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// "KEY=" and room for the digits of the pid, filled in by the child.
    pid_var: Option<Vec<u8>>,
    fds: Vec<(RawFd, RawFd)>,
}

impl Prepared {
    fn new(c: &Command) -> io::Result<Prepared> {
        let exe = cstr(c.exe.as_os_str().as_bytes())?;
        let args = c
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let overridden = |k: &[u8]| {
            c.env_remove_prefix
                .iter()
                .any(|p| k.starts_with(p.as_bytes()))
                || c.env_set.iter().any(|(s, _)| s.as_bytes() == k)
                || c.env_pid.as_ref().is_some_and(|p| p.as_bytes() == k)
        };
        let mut env = Vec::new();
        let kv = |k: &OsStr, v: &OsStr| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstr(&b)
        };
        for (k, v) in std::env::vars_os() {
            if !overridden(k.as_bytes()) {
                env.push(kv(&k, &v)?);
            }
        }
        for (k, v) in &c.env_set {
            env.push(kv(k, v)?);
        }
        let pid_var = c.env_pid.as_ref().map(|k| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.resize(b.len() + 16, 0);
            b
        });
        Ok(Prepared {
            exe,
            args,
            env,
            pid_var,
            fds: c.fds.clone(),
        })
    }
}

fn forker_gone() -> io::Error {
    io::Error::other("the library's process-starting thread is gone")
}

type Job = Box<dyn FnOnce() + Send>;

/// The forker: the process that started it (a forked host needs its
/// own) and the way to hand it work.
static FORKER: Mutex<Option<(u32, mpsc::Sender<Job>)>> = Mutex::new(None);

/// Runs `job` on the forker thread, starting it if this process has none.
fn on_forker(job: Job) -> io::Result<()> {
    let mut g = FORKER.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    let job = match g.as_ref() {
        Some((pid, tx)) if *pid == me => match tx.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(job)) => job,
        },
        _ => job,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    // The thread starts with every signal blocked, and keeps them so.
    let old = sys::block_all_signals()?;
    let t = std::thread::Builder::new()
        .name("nbdcpy-forker".into())
        .spawn(move || {
            // Ends only if every sender is gone, which the static never
            // lets happen: this thread lives as long as the process.
            while let Ok(job) = rx.recv() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        });
    sys::set_signal_mask(&old);
    t?;
    tx.send(job).map_err(|_| forker_gone())?;
    *g = Some((me, tx));
    Ok(())
}

/// pidfd_open said ENOSYS once: not asked again.
static NO_PIDFD: AtomicBool = AtomicBool::new(false);

/// Forks (on the forker thread) and opens the child's pidfd.
fn fork_child(p: &Prepared, go: RawFd, err: RawFd) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    let mut argv: Vec<*const libc::c_char> = p.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut pid_var = p.pid_var.clone();
    let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|e| e.as_ptr()).collect();
    if let Some(v) = pid_var.as_ref() {
        envp.push(v.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let top = p.fds.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2);
    let mut tmp = vec![-1 as RawFd; p.fds.len()];
    let parent = std::process::id() as libc::pid_t;

    // SAFETY: fork() itself is safe to call; the child below only uses
    // async-signal-safe functions on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let a = ChildArgs {
            parent,
            go,
            err,
            exe: &p.exe,
            argv: &argv,
            envp: &envp,
            pid_var: pid_var.as_deref_mut(),
            fds: &p.fds,
            tmp: &mut tmp,
            top,
        };
        // SAFETY: child side: only async-signal-safe calls, on buffers
        // that were allocated before fork and are not freed here.
        unsafe { child(a) }
    }
    // The child waits for our byte, so this pid is still the child's.
    if NO_PIDFD.load(Ordering::Relaxed) {
        return Ok((pid, None));
    }
    match sys::pidfd_open(pid) {
        Ok(fd) => Ok((pid, Some(fd))),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            NO_PIDFD.store(true, Ordering::Relaxed);
            Ok((pid, None))
        }
        Err(e) => {
            // The child is stopped in its wait, so the pid is still ours
            // to kill and reap.
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
            Err(io::Error::new(e.kind(), format!("pidfd_open: {e}")))
        }
    }
}

struct ChildArgs<'a> {
    parent: libc::pid_t,
    go: RawFd,
    err: RawFd,
    exe: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    pid_var: Option<&'a mut [u8]>,
    fds: &'a [(RawFd, RawFd)],
    tmp: &'a mut [RawFd],
    top: RawFd,
}

/// The child after fork: wait for the go byte, tie our life to the
/// forker thread, set up descriptors and the environment, then exec.
///
/// # Safety
/// Must only be called in a freshly forked child.  Uses only
/// async-signal-safe functions and the pre-allocated buffers passed in.
unsafe fn child(a: ChildArgs<'_>) -> ! {
    // SAFETY (whole body): see the function's contract.
    unsafe {
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(a.go, b.as_mut_ptr().cast(), 1);
            if n == 1 {
                break;
            }
            if n == 0 || *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        // Die with the forker thread, which lives as long as the process:
        // a crashed or killed host leaves no child behind.  If the host
        // died before this, our parent is someone else already.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != a.parent {
            libc::_exit(127);
        }
        // Default signal handling and an empty mask (the forker blocks
        // everything).
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // The descriptors: first all out of the way (above every target,
        // close-on-exec), then every descriptor of the host's above 2
        // close-on-exec, then each onto its target (dup2 clears
        // close-on-exec), so no source is overwritten before it is moved
        // and nothing else of the host's reaches the program (the error
        // pipe must stay open until exec, and is close-on-exec already).
        for (i, &(src, _)) in a.fds.iter().enumerate() {
            a.tmp[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, a.top + 1);
            if a.tmp[i] < 0 {
                report_and_exit(a.err);
            }
        }
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for (i, &(_, target)) in a.fds.iter().enumerate() {
            if libc::dup2(a.tmp[i], target) < 0 {
                report_and_exit(a.err);
            }
        }
        if let Some(v) = a.pid_var {
            // KEY=<our pid>, formatted by hand (no allocation).
            let start = v.iter().position(|&c| c == b'=').unwrap_or(0) + 1;
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
                v[start + i] = digits[n - 1 - i];
            }
            v[start + n] = 0;
        }
        libc::execve(a.exe.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        report_and_exit(a.err)
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

    fn alive(pid: libc::pid_t) -> bool {
        // A zombie is dead for us; /proc/PID/stat's third field says.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_child_outlives_the_thread_that_started_it() {
        let mut c = std::thread::spawn(|| {
            Command::new(&["sleep".into(), "30".into()])
                .unwrap()
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(alive(c.pid()), "the child died with its starting thread");
        assert!(!c.has_exited());
        let pid = c.pid();
        std::thread::spawn(move || drop(c)).join().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn environment_and_descriptors() {
        let dir = sys::mkdtemp(&std::env::temp_dir().join("nbdcpy-child-XXXXXX")).unwrap();
        let out = dir.join("out");
        let f = std::fs::File::create(&out).unwrap();
        // fd 5 (or 6) of the child is the file; a descriptor of ours without
        // close-on-exec is not inherited; the pid variable is the child's
        // pid; HOME is left out.
        let (_r, w) = sys::pipe_with(0).unwrap();
        let t = if w.as_raw_fd() == 5 { 6 } else { 5 };
        let script = format!(
            "echo \"$MY_PID $$ $FOO ${{HOME-unset}}\" >&{t}; \
             if [ -e /proc/self/fd/{} ]; then echo leak >&{t}; fi",
            w.as_raw_fd()
        );
        let mut cmd = Command::new(&["sh".into(), "-c".into(), script]).unwrap();
        cmd.env("FOO", "bar")
            .env_pid("MY_PID")
            .env_remove_prefix("HOM")
            .fd(f.as_raw_fd(), t);
        let mut c = cmd.spawn().unwrap();
        assert!(c.wait_exit(Duration::from_secs(10)));
        let got = std::fs::read_to_string(&out).unwrap();
        let w: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(w.len(), 4, "{got:?}");
        assert_eq!(w[0], w[1], "{got:?}");
        assert_eq!(w[0], c.pid().to_string());
        assert_eq!(&w[2..], ["bar", "unset"], "{got:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_failure_is_the_exec_errno_and_leaves_nothing() {
        let e = Command::new(&["/nonexistent/server".into()])
            .unwrap()
            .spawn()
            .err()
            .unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = Command::new(&["no-such-nbd-server-xyz".into()])
            .err()
            .unwrap();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn a_child_reaped_by_someone_else_is_exited_and_never_signalled_again() {
        // With its pidfd, and by pid (where pidfd_open is missing).
        for by_pid in [false, true] {
            let mut c = Command::new(&["true".into()]).unwrap().spawn().unwrap();
            if by_pid {
                c.pidfd = None;
            }
            // Reap it as a host's SIGCHLD handler would, by pid.
            let pid = c.pid();
            let deadline = Instant::now() + Duration::from_secs(10);
            while sys::waitpid(pid, libc::WNOHANG).unwrap().is_none() {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(!sys::waitid_pid_running(pid).unwrap_or(false));
            assert!(c.has_exited());
            c.kill(); // nothing left to signal: no error, no wait
        }
    }

    #[test]
    fn killed_and_reaped_by_pid_too() {
        let mut c = Command::new(&["sleep".into(), "30".into()])
            .unwrap()
            .spawn()
            .unwrap();
        c.pidfd = None;
        let pid = c.pid();
        assert!(sys::waitid_pid_running(pid).unwrap());
        let t = Instant::now();
        c.kill();
        assert!(t.elapsed() < TERM_GRACE, "SIGTERM was enough");
        assert!(!alive(pid));
        assert!(sys::waitpid(pid, libc::WNOHANG).is_err(), "reaped");
    }
}
