// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Test harness: real NBD servers (nbdkit, qemu-nbd, nbd-server) on unix
//! sockets in temporary directories, always stopped (Drop kills and
//! reaps them, also when a test panics), plus independent readers
//! (qemu-img, cmp) to verify copies.
#![allow(dead_code)]

pub mod hostile;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique directory, removed (recursively) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nbdcpy-t-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// Takes over directory `p` (it exists; removed on drop).
    pub fn at(p: PathBuf) -> TempDir {
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `limit` passed
/// (false): tests wait for the state they need, never for a guessed time.
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` has a thread named `name` (/proc/PID/task/*/comm).
pub fn has_thread(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// True if `cmd` is there.  Otherwise prints a SKIP line and returns
/// false, or panics when NBDCPY_REQUIRE_SERVERS=1 (CI: a missing server
/// is a failure, not a skip).
pub fn require(cmd: &str) -> bool {
    if have(cmd) {
        return true;
    }
    if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
        panic!("{cmd} is required (NBDCPY_REQUIRE_SERVERS is set) but not installed");
    }
    eprintln!("SKIP: {cmd} not installed");
    false
}

/// The `nbdcpy` command under test: $NBDCPY_BIN or build/nbdcpy (`make
/// cli`).  None (with a SKIP line) when not built, unless
/// NBDCPY_REQUIRE_SERVERS is set: then a panic.
pub fn nbdcpy_bin() -> Option<PathBuf> {
    let p = bin_path();
    if p.exists() {
        Some(p)
    } else if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
        panic!("{} not built (run make cli)", p.display());
    } else {
        eprintln!("SKIP: {} not built (run make cli)", p.display());
        None
    }
}

/// The engine this run of the suite tests: NBDCPY_TEST_ENGINE=io_uring
/// or epoll (`make check-rust` runs the integration tests once with
/// each); None when unset (no `engine` key set: the library's default).
/// The variable belongs to this harness only: the library never reads it.
/// `none` is the run of the modules that `make check` runs once
/// (ENGINE_FREE_TESTS in the Makefile): a test there that asks for the
/// suite's engine fails, as it must run on each.
pub fn test_engine() -> Option<&'static str> {
    match std::env::var("NBDCPY_TEST_ENGINE").as_deref() {
        Err(_) | Ok("") => None,
        Ok("io_uring") => Some("io_uring"),
        Ok("epoll") => Some("epoll"),
        Ok("none") => panic!(
            "this test uses the suite's engine: remove its module from ENGINE_FREE_TESTS (Makefile)"
        ),
        Ok(v) => panic!("NBDCPY_TEST_ENGINE must be io_uring or epoll, not '{v}'"),
    }
}

/// Sets the `engine` key of `cfg` to the suite's engine (test_engine()),
/// if one is chosen.  Every Config a test builds goes through this.
pub fn set_engine(cfg: &mut nbdcpy::Config) {
    if let Some(e) = test_engine() {
        cfg.set("engine", Some(e))
            .unwrap_or_else(|e| panic!("engine key: {e}"));
    }
}

/// A Config with the suite's engine set (Config::default() otherwise).
pub fn config() -> nbdcpy::Config {
    let mut cfg = nbdcpy::Config::default();
    set_engine(&mut cfg);
    cfg
}

/// The path of the command under test ($NBDCPY_BIN or build/nbdcpy),
/// built or not (nbdcpy_bin() checks).
fn bin_path() -> PathBuf {
    std::env::var_os("NBDCPY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("build/nbdcpy"))
}

/// The command under test with `--engine=X` first when the suite runs on
/// an engine (test_engine()).  Tests call nbdcpy_bin() first to skip
/// when it is not built.  A test that picks its own engine (container.rs)
/// builds its command line itself.
pub fn nbdcpy_cmd() -> Command {
    let mut c = Command::new(bin_path());
    if let Some(e) = test_engine() {
        c.arg(format!("--engine={e}"));
    }
    c
}

/// The arguments nbdcpy_cmd() puts first (for command lines given to a
/// shell or to another program as a string).
pub fn engine_args() -> Vec<String> {
    test_engine()
        .map(|e| vec![format!("--engine={e}")])
        .unwrap_or_default()
}

/// A server process; killed (TERM, then KILL) and reaped on drop.
pub struct Server {
    child: Option<Child>,
    /// Daemonized servers (nbd-server) are found by their pid file.
    pidfile: Option<PathBuf>,
    sock: PathBuf,
    export: String,
    log: PathBuf,
}

impl Server {
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.export, self.sock.display())
    }
    pub fn socket(&self) -> &Path {
        &self.sock
    }
    pub fn pid(&self) -> i32 {
        match (&self.child, &self.pidfile) {
            (_, Some(pf)) => std::fs::read_to_string(pf)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1),
            (Some(c), None) => c.id() as i32,
            _ => -1,
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGKILL now (fault tests).
    pub fn kill_now(&mut self) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: signalling a server process this harness started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }
    /// Whether the process still exists.
    pub fn alive(&self) -> bool {
        let pid = self.pid();
        // SAFETY: signal 0 only probes.
        pid > 0 && unsafe { libc::kill(pid, 0) } == 0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A child already reaped (kill_now) must not be signalled again:
        // its pid may belong to another test's server by now.
        if let (Some(c), None) = (&mut self.child, &self.pidfile) {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
        }
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: as in kill_now.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let gone = match &mut self.child {
                Some(c) if self.pidfile.is_none() => c.try_wait().ok().flatten().is_some(),
                _ => !self.alive(),
            };
            if gone {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Makes the process `cmd` starts die with the test process, so nothing
/// outlives a crashed test run.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the server sends the NBD greeting on its socket.
fn wait_ready(s: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&s.sock) {
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 8];
            if c.read_exact(&mut b).is_ok() && &b == b"NBDMAGIC" {
                return;
            }
        }
        if let Some(c) = &mut s.child {
            if s.pidfile.is_none() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("server exited ({st}) before accepting: {}", s.log());
                }
            }
        }
        if Instant::now() > deadline {
            panic!("server not ready after 10 s: {}", s.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new server's socket and log paths in `dir`: TAG<n>.sock, TAG<n>.log.
fn sock_and_log(dir: &TempDir, tag: &str) -> (PathBuf, PathBuf) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (
        dir.file(&format!("{tag}{n}.sock")),
        dir.file(&format!("{tag}{n}.log")),
    )
}

/// A server running in the foreground as `child` on `sock`, once it
/// sends its greeting.
fn started(child: Child, sock: PathBuf, log: PathBuf) -> Server {
    let mut s = Server {
        child: Some(child),
        pidfile: None,
        sock,
        export: String::new(),
        log,
    };
    wait_ready(&mut s);
    s
}

/// nbdkit -f -U SOCK ARGS...
pub fn nbdkit(dir: &TempDir, args: &[&str]) -> Server {
    let (sock, log) = sock_and_log(dir, "nbdkit");
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "--exit-with-parent", "-U"])
        .arg(&sock)
        .args(args);
    started(spawn(cmd, &log), sock, log)
}

/// nbdkit on TCP 127.0.0.1:PORT (a free port is picked); uri() is nbd://.
pub fn nbdkit_tcp(dir: &TempDir, args: &[&str]) -> (Server, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Ask the kernel for a free port, then hand it to nbdkit.
    let port = free_port();
    let log = dir.file(&format!("nbdkit-tcp{n}.log"));
    let mut cmd = Command::new("nbdkit");
    cmd.args([
        "-f",
        "--exit-with-parent",
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .args(args);
    let child = spawn(cmd, &log);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nbdkit on TCP not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = Server {
        child: Some(child),
        pidfile: None,
        sock: dir.file("unused"),
        export: String::new(),
        log,
    };
    (s, format!("nbd://127.0.0.1:{port}/"))
}

/// A loop device over `file`, detached on drop.
pub struct LoopDev(pub String);

impl LoopDev {
    /// None (with the reason printed) where losetup does not work.
    pub fn new(file: &Path) -> Option<LoopDev> {
        match Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
        {
            Ok(o) if o.status.success() => Some(LoopDev(
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            )),
            Ok(o) => {
                eprintln!(
                    "SKIP: losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run losetup: {e}");
                None
            }
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// qemu-nbd -f raw -k SOCK -t -e 16 EXTRA FILE (`extra` may override -f,
/// or hold --image-opts: FILE is then the options).
pub fn qemu_nbd(dir: &TempDir, file: &Path, extra: &[&str]) -> Server {
    let (sock, log) = sock_and_log(dir, "qemu");
    let mut cmd = Command::new("qemu-nbd");
    if !extra.contains(&"-f") && !extra.contains(&"--image-opts") {
        cmd.args(["-f", "raw"]);
    }
    cmd.arg("-k")
        .arg(&sock)
        .args(["-t", "-e", "16"])
        .args(extra)
        .arg(file);
    started(spawn(cmd, &log), sock, log)
}

/// nbd-server with a generated config: a unix socket (and a loopback TCP
/// port it insists on), export "disk"; daemonized, found by pid file.
pub fn nbd_server(dir: &TempDir, file: &Path, extra_conf: &str) -> Server {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let sock = dir.file(&format!("nbdsrv{n}.sock"));
    let log = dir.file(&format!("nbdsrv{n}.log"));
    let pidfile = dir.file(&format!("nbdsrv{n}.pid"));
    let conf = dir.file(&format!("nbdsrv{n}.conf"));
    let port = 30000 + (std::process::id() * 7 + n * 13) % 30000;
    let mut f = std::fs::File::create(&conf).unwrap();
    write!(
        f,
        "[generic]\n    unixsock = {}\n    listenaddr = 127.0.0.1\n    port = {port}\n\
         [disk]\n    exportname = {}\n{extra_conf}\n",
        sock.display(),
        file.display()
    )
    .unwrap();
    let mut cmd = Command::new("nbd-server");
    cmd.arg("-C").arg(&conf).arg("-p").arg(&pidfile);
    let mut child = spawn(cmd, &log);
    // It forks into the background; the parent exits at once.
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pidfile).map_or(true, |s| s.trim().is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = Server {
        child: None,
        pidfile: Some(pidfile),
        sock,
        export: "disk".into(),
        log,
    };
    wait_ready(&mut s);
    s
}

/// Deterministic non-trivial data (a xorshift stream).
pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

pub fn write_file(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
}

/// Independent check with cmp(1).
pub fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// Independent reader: the whole export, via qemu-img convert.
pub fn read_export(uri: &str, dir: &TempDir) -> Vec<u8> {
    try_read_export(uri, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// read_export, returning qemu-img's complaint instead of panicking.
pub fn try_read_export(uri: &str, dir: &TempDir) -> Result<Vec<u8>, String> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let out = dir.file(&format!("readback{n}.raw"));
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(&out)
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(format!(
            "qemu-img convert {uri}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let v = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    Ok(v)
}

/// Runs `cmd` to its end; panics (naming it `what`, with its stderr)
/// unless it succeeds.  Returns its output.
pub fn output_ok(cmd: &mut Command, what: &str) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Independent writer: runs qemu-io commands (e.g. "write -P 0x5a 1M 1M")
/// on a raw file or NBD URI.
pub fn qemu_io(target: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    output_ok(c.arg(target), &format!("qemu-io {target} {cmds:?}"));
}

/// Independent writer: fill an export from a file, via qemu-img convert.
pub fn fill_export(uri: &str, file: &Path) {
    output_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(file)
            .arg(uri),
        &format!("qemu-img convert to {uri}"),
    );
}

/// qemu-img convert of a raw image into a new qcow2 file.
pub fn raw_to_qcow2(raw: &Path, qcow2: &Path) {
    output_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow2),
        "qemu-img convert to qcow2",
    );
}

/// qemu-img compare of two raw images (files or URIs).
pub fn qemu_img_compare(a: &str, b: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw", a, b])
        .status()
        .unwrap()
        .success()
}

/// Starts a server of `kind` ("qemu-nbd", "nbdkit", "nbdkit --no-sr",
/// "nbd-server") serving `file`.
pub fn serve(kind: &str, dir: &TempDir, file: &Path) -> Server {
    let f = file.to_string_lossy();
    match kind {
        "qemu-nbd" => qemu_nbd(dir, file, &[]),
        "nbdkit" => nbdkit(dir, &["file", &f]),
        "nbdkit --no-sr" => nbdkit(dir, &["--no-sr", "file", &f]),
        "nbd-server" => nbd_server(dir, file, ""),
        _ => panic!("unknown server kind {kind}"),
    }
}

pub const KINDS: [&str; 4] = ["qemu-nbd", "nbdkit", "nbdkit --no-sr", "nbd-server"];

/// Runs the library copy with options; returns the job's stats.
/// The `engine` key is the suite's (test_engine()) unless `opts` sets it.
pub fn copy(src: &str, dst: &str, opts: &[(&str, &str)]) -> nbdcpy::Result<Stats> {
    let mut cfg = config();
    for (k, v) in opts {
        cfg.set(k, Some(v)).unwrap();
    }
    let mut job = nbdcpy::Job::open(
        nbdcpy::testing::Spec::parse(src),
        nbdcpy::testing::Spec::parse(dst),
        cfg,
    )?;
    job.run(Duration::from_millis(100), &mut |_| true)?;
    let s = job.shared();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(Stats {
        done: g(&s.bytes_done),
        copied: g(&s.bytes_copied),
        zeroed: g(&s.bytes_zeroed),
        skipped: g(&s.bytes_skipped),
        memcpy: g(&s.bytes_memcpy),
        connections: g(&s.connections),
        requests: g(&s.requests),
        spliced: g(&s.bytes_spliced),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub done: u64,
    pub copied: u64,
    pub zeroed: u64,
    pub skipped: u64,
    pub memcpy: u64,
    pub connections: u64,
    pub requests: u64,
    pub spliced: u64,
}
