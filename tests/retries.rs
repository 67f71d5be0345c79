// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! --retries: NBD servers killed and restarted on the same address mid-copy.
//
// The command runs a slowed-down copy (nbdkit's delay filter, qemu-nbd's
// throttle driver) while the test kills its server (SIGKILL) at random
// points and starts it again on the same socket or port; the result is
// checked with cmp(1) against the source file.  Also: a server that comes
// back with another size, one that never comes back, cancelling during
// the backoff, error replies (other than EIO, request_retries.rs), and
// the default (no retries).

use crate::common;

use common::{cmp, die_with_parent, free_port, nbdcpy_bin, pattern, require, write_file, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where a restartable server listens.
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

/// A server that can be killed and started again on the same address.
struct Srv {
    /// The command, without the address arguments.
    prog: &'static str,
    args: Vec<String>,
    addr: Addr,
    log: PathBuf,
    child: Option<Child>,
}

impl Srv {
    fn nbdkit(dir: &TempDir, tcp: bool, args: &[&str]) -> Srv {
        let addr = if tcp {
            Addr::Tcp(free_port())
        } else {
            Addr::Unix(dir.file("nbdkit.sock"))
        };
        Srv::new(dir, "nbdkit", addr, args)
    }

    /// nbdkit serving `file` through `filter` with the filter's `params`
    /// (args: --filter=FILTER file file=FILE PARAMS...).
    fn nbdkit_file(dir: &TempDir, tcp: bool, file: &Path, filter: &str, params: &[&str]) -> Srv {
        let filter = format!("--filter={filter}");
        let f = format!("file={}", file.display());
        let mut args = vec![filter.as_str(), "file", &f];
        args.extend(params);
        Srv::nbdkit(dir, tcp, &args)
    }

    /// nbdkit on a unix socket serving `file`, each read delayed 20 ms.
    fn slow_reads(dir: &TempDir, file: &Path) -> Srv {
        Srv::nbdkit_file(dir, false, file, "delay", &["delay-read=20ms"])
    }

    /// qemu-nbd on a raw file, throttled to `bps` bytes per second.
    fn qemu_nbd(dir: &TempDir, name: &str, file: &Path, bps: u64) -> Srv {
        let group = format!("throttle-group,id=tg0,x-bps-total={bps}");
        let opts = format!(
            "driver=throttle,throttle-group=tg0,file.driver=file,file.filename={}",
            file.display()
        );
        let addr = Addr::Unix(dir.file(&format!("{name}.sock")));
        let args = ["-t", "-e", "16", "--object", &group, "--image-opts", &opts];
        Srv::new(dir, "qemu-nbd", addr, &args)
    }

    fn new(dir: &TempDir, prog: &'static str, addr: Addr, args: &[&str]) -> Srv {
        let name = match &addr {
            Addr::Unix(p) => p.file_stem().unwrap().to_string_lossy().into_owned(),
            Addr::Tcp(port) => format!("tcp{port}"),
        };
        let mut s = Srv {
            prog,
            args: args.iter().map(|a| a.to_string()).collect(),
            addr,
            log: dir.file(&format!("{name}.log")),
            child: None,
        };
        s.start();
        s
    }

    fn uri(&self) -> String {
        match &self.addr {
            Addr::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
            Addr::Tcp(port) => format!("nbd://127.0.0.1:{port}/"),
        }
    }

    /// Starts the server (again) and waits for its greeting.
    fn start(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = Command::new(self.prog);
        match (&self.addr, self.prog) {
            (Addr::Unix(p), "nbdkit") => {
                // A killed server leaves its socket file behind.
                let _ = std::fs::remove_file(p);
                cmd.args(["-f", "--exit-with-parent", "-U"]).arg(p);
            }
            (Addr::Unix(p), _) => {
                let _ = std::fs::remove_file(p);
                cmd.arg("-k").arg(p);
            }
            (Addr::Tcp(port), _) => {
                cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
                    .arg(port.to_string());
            }
        }
        cmd.args(&self.args);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.greets() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({st}): {}", self.prog, self.log_text());
            }
            assert!(Instant::now() < deadline, "{} not ready", self.prog);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn greets(&self) -> bool {
        use std::io::Read;
        let mut b = [0u8; 8];
        let t = Some(Duration::from_secs(2));
        match &self.addr {
            Addr::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok_and(|mut s| {
                s.set_read_timeout(t).unwrap();
                s.read_exact(&mut b).is_ok()
            }),
            Addr::Tcp(port) => {
                std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok_and(|mut s| {
                    s.set_read_timeout(t).unwrap();
                    s.read_exact(&mut b).is_ok()
                })
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small random generator seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    /// A duration in [lo, hi) milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

/// The command running a copy, its stderr in a file.
struct CopyRun {
    child: Child,
    err: PathBuf,
    started: Instant,
}

impl CopyRun {
    fn start(dir: &TempDir, args: &[&str]) -> Option<CopyRun> {
        nbdcpy_bin()?;
        let err = dir.file("nbdcpy.err");
        let child = common::nbdcpy_cmd()
            .arg("-v")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Some(CopyRun {
            child,
            err,
            started: Instant::now(),
        })
    }

    /// Waits (at most 10 s) until the copy is under way: every
    /// connection is open and its worker threads ("nbdcpy-worker") run.
    fn wait_copying(&mut self) {
        let pid = self.child.id();
        let on = common::poll_until(Duration::from_secs(10), || {
            common::has_thread(pid, "nbdcpy-worker")
        });
        assert!(on, "no worker within 10 s");
        assert!(self.running(), "the copy ended early");
    }

    /// Waits (at most `limit`) until the command has a reconnect under
    /// way (its helper thread "nbdcpy-redial" waits or dials).
    fn wait_redialing(&mut self, limit: Duration) {
        let pid = self.child.id();
        let redial = common::poll_until(limit, || common::has_thread(pid, "nbdcpy-redial"));
        assert!(redial, "no reconnect within {limit:?}");
        assert!(self.running(), "the copy ended early");
    }

    /// The command copying `from` to `to` with `opts`, then two requests
    /// of 64 KiB at a time.
    fn start_small(dir: &TempDir, opts: &[&str], from: &str, to: &str) -> Option<CopyRun> {
        let args = [opts, &["--requests=2", "--request-size=64k", from, to]].concat();
        CopyRun::start(dir, &args)
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (at most `limit`, then kills it and fails): status, stderr.
    fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, std::fs::read_to_string(&self.err).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "copy still running after {limit:?}: {}",
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The reconnect count of the command's -v summary line.
fn reconnects(stderr: &str) -> u64 {
    counter(stderr, " reconnect(s)")
}

/// An image of `mib` MiB: data, with a hole of 1 MiB in every third
/// MiB, 256 KiB in (zero detection sends WRITE_ZEROES; a server may
/// answer a READ across a hole's edge in several chunks).
fn image(path: &Path, mib: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let v = pattern(mib << 20, seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len((mib << 20) as u64).unwrap();
    let hole = |at: usize| at >= 256 << 10 && ((at - (256 << 10)) >> 20) % 3 == 0;
    for at in (0..mib << 20).step_by(64 << 10) {
        if !hole(at) {
            f.write_all_at(&v[at..at + (64 << 10)], at as u64).unwrap();
        }
    }
}

/// A number the command's -v summary line prints before `what`.
fn counter(stderr: &str, what: &str) -> u64 {
    let at = stderr
        .find(what)
        .unwrap_or_else(|| panic!("no \"{what}\" in: {stderr}"));
    let start = stderr[..at].rfind(' ').map_or(0, |i| i + 1);
    stderr[start..at].parse().unwrap()
}

/// Kills `srvs` (in turn) at random points of `run`, `kills` times, each
/// started again after a random pause.  Returns how many kills happened
/// while the copy ran.
fn chaos(run: &mut CopyRun, srvs: &mut [&mut Srv], kills: usize, rng: &mut Rng) -> usize {
    run.wait_copying();
    let mut n = 0;
    for k in 0..kills {
        std::thread::sleep(rng.ms(150, 600));
        if !run.running() {
            break;
        }
        let s = &mut srvs[k % srvs.len()];
        s.kill();
        n += 1;
        std::thread::sleep(rng.ms(0, 400));
        s.start();
    }
    n
}

fn check_ok(st: ExitStatus, err: &str, kills: usize, src: &Path, dst: &Path) {
    assert!(st.success(), "copy failed ({st}): {err}");
    assert!(kills > 0, "the copy ended before the first kill: {err}");
    let r = reconnects(err);
    assert!(r >= 1, "{kills} kill(s) but no reconnect: {err}");
    assert!(cmp(src, dst), "destination differs from source: {err}");
    // Nothing handed on twice.
    let size = std::fs::metadata(src).unwrap().len();
    assert_eq!(counter(err, " bytes done"), size, "{err}");
    eprintln!("{kills} kill(s), {r} reconnect(s)");
}

/// --retries=5 --retry-delay=0.1: enough for the kills of `chaos`.
const RETRIES: [&str; 2] = ["--retries=5", "--retry-delay=0.1"];

/// A test's directory with a source image of `mib` MiB (src.img) and
/// the path of its destination (dst.img); None (a skip) without `server`.
fn setup(server: &str, tag: &str, mib: usize, seed: u64) -> Option<(TempDir, PathBuf, PathBuf)> {
    if !require(server) {
        return None;
    }
    let dir = TempDir::new(tag);
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src, mib, seed);
    Some((dir, src, dst))
}

/// `chaos` with three kills of `s`; the copy must still succeed (check_ok).
fn survives_kills(mut run: CopyRun, s: &mut Srv, src: &Path, dst: &Path) {
    let kills = chaos(&mut run, &mut [s], 3, &mut Rng::new());
    let (st, err) = run.wait(Duration::from_secs(60));
    check_ok(st, &err, kills, src, dst);
}

/// Waits until `run` is under way (and still running), then kills `s`.
fn kill_mid_copy(run: &mut CopyRun, s: &mut Srv) {
    run.wait_copying();
    s.kill();
}

#[test]
fn nbdkit_unix_source_killed_and_restarted() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-src", 16, 1) else {
        return;
    };
    let mut s = Srv::slow_reads(&dir, &src);
    let Some(run) = CopyRun::start_small(&dir, &RETRIES, &s.uri(), dst.to_str().unwrap()) else {
        return;
    };
    survives_kills(run, &mut s, &src, &dst);
}

#[test]
fn nbdkit_tcp_destination_killed_and_restarted() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-dst", 16, 2) else {
        return;
    };
    write_file(&dst, &vec![0x55; 16 << 20]);
    let mut s = Srv::nbdkit_file(
        &dir,
        true,
        &dst,
        "delay",
        &["delay-write=20ms", "delay-zero=20ms"],
    );
    let opts = [&RETRIES[..], &["--flush"]].concat();
    let Some(run) = CopyRun::start_small(&dir, &opts, src.to_str().unwrap(), &s.uri()) else {
        return;
    };
    survives_kills(run, &mut s, &src, &dst);
}

#[test]
fn qemu_nbd_source_and_destination_killed_and_restarted() {
    let Some((dir, src, dst)) = setup("qemu-nbd", "retry-qemu", 12, 3) else {
        return;
    };
    write_file(&dst, &vec![0xaa; 12 << 20]);
    let mut s = Srv::qemu_nbd(&dir, "qsrc", &src, 4 << 20);
    let mut d = Srv::qemu_nbd(&dir, "qdst", &dst, 8 << 20);
    let (su, du) = (s.uri(), d.uri());
    // Requests across the holes' edges, answered in several chunks.
    let args = [
        &RETRIES[..],
        &["--request-size=512k", "--no-extents", &su, &du],
    ]
    .concat();
    let Some(mut run) = CopyRun::start(&dir, &args) else {
        return;
    };
    let kills = chaos(&mut run, &mut [&mut s, &mut d], 4, &mut Rng::new());
    let (st, err) = run.wait(Duration::from_secs(60));
    drop(d); // the destination's writes are in its file either way
    check_ok(st, &err, kills, &src, &dst);
}

#[test]
fn a_server_back_with_another_size_is_an_error() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-size", 16, 4) else {
        return;
    };
    let other = dir.file("other.img");
    image(&other, 17, 4);
    let mut s = Srv::slow_reads(&dir, &src);
    // The result as JSON on stderr too: its "endpoint".
    let opts = ["--retries=100", "--retry-delay=0.1", "--json=2"];
    let Some(mut run) = CopyRun::start_small(&dir, &opts, &s.uri(), dst.to_str().unwrap()) else {
        return;
    };
    kill_mid_copy(&mut run, &mut s);
    s.args[2] = format!("file={}", other.display());
    s.start();
    let back = Instant::now();
    let (st, err) = run.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("size changed from 16777216 to 17825792 bytes"),
        "{err}"
    );
    assert!(
        err.contains("source nbd+unix://"),
        "names the endpoint: {err}"
    );
    assert!(err.contains(r#""endpoint": "source""#), "{err}");
    assert!(back.elapsed() < Duration::from_secs(10), "no retry loop");
}

#[test]
fn a_server_that_never_comes_back_fails_in_bounded_time() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-gone", 16, 5) else {
        return;
    };
    write_file(&dst, &vec![0; 16 << 20]);
    let mut s = Srv::nbdkit_file(&dir, false, &dst, "delay", &["delay-write=20ms"]);
    let opts = ["--retries=3", "--retry-delay=0.2", "--json=2"];
    let Some(mut run) = CopyRun::start_small(&dir, &opts, src.to_str().unwrap(), &s.uri()) else {
        return;
    };
    kill_mid_copy(&mut run, &mut s);
    let gone = Instant::now();
    let (st, err) = run.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("gave up after 3 reconnect attempt(s)"),
        "{err}"
    );
    assert!(err.contains("destination nbd+unix://"), "{err}");
    assert!(err.contains(r#""endpoint": "destination""#), "{err}");
    // 0.2 + 0.4 + 0.8 s of backoff, then the error.
    let t = gone.elapsed();
    assert!(t >= Duration::from_millis(1400), "backoff too short: {t:?}");
    assert!(t < Duration::from_secs(20), "took {t:?}");
}

#[test]
fn sigint_during_the_backoff_cancels() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-cancel", 16, 6) else {
        return;
    };
    let mut s = Srv::slow_reads(&dir, &src);
    let opts = ["--retries=100", "--retry-delay=20"];
    let Some(mut run) = CopyRun::start_small(&dir, &opts, &s.uri(), dst.to_str().unwrap()) else {
        return;
    };
    kill_mid_copy(&mut run, &mut s);
    // It noticed and waits to reconnect (20 s before the first attempt).
    run.wait_redialing(Duration::from_secs(10));
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let sent = Instant::now();
    let (st, err) = run.wait(Duration::from_secs(10));
    assert!(!st.success(), "{err}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert!(err.to_lowercase().contains("cancel"), "{err}");
}

#[test]
fn error_replies_are_not_reconnects() {
    // (EIO replies are sent again on the same connection: request_retries.rs.)
    let Some((dir, src, dst)) = setup("nbdkit", "retry-eperm", 4, 7) else {
        return;
    };
    let s = Srv::nbdkit_file(
        &dir,
        false,
        &src,
        "error",
        &["error=EPERM", "error-pread-rate=100%"],
    );
    let uri = s.uri();
    let args = [
        "--retries=5",
        "--retry-delay=10",
        &uri,
        dst.to_str().unwrap(),
    ];
    let Some(run) = CopyRun::start(&dir, &args) else {
        return;
    };
    let t = run.started;
    let (st, err) = run.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("READ at offset"), "{err}");
    assert_eq!(reconnects(&err), 0, "{err}");
    assert!(t.elapsed() < Duration::from_secs(8), "no backoff: {err}");
}

#[test]
fn without_retries_a_lost_connection_fails_the_copy() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-off", 16, 8) else {
        return;
    };
    let mut s = Srv::slow_reads(&dir, &src);
    let Some(mut run) = CopyRun::start_small(&dir, &[], &s.uri(), dst.to_str().unwrap()) else {
        return;
    };
    kill_mid_copy(&mut run, &mut s);
    s.start();
    let (st, err) = run.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("server closed the connection"), "{err}");
}

#[test]
fn a_stalled_server_is_reconnected_after_the_timeout() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-stall", 16, 9) else {
        return;
    };
    let mut s = Srv::slow_reads(&dir, &src);
    let opts = [&RETRIES[..], &["--timeout=1"]].concat();
    let Some(mut run) = CopyRun::start_small(&dir, &opts, &s.uri(), dst.to_str().unwrap()) else {
        return;
    };
    run.wait_copying();
    // The server stops answering (its connections stay open) ...
    let pid = s.child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // ... past the timeout (the stall is taken as a loss: a reconnect
    // starts, and hangs in its handshake), then is replaced by a new one.
    run.wait_redialing(Duration::from_secs(10));
    s.kill();
    s.start();
    let (st, err) = run.wait(Duration::from_secs(60));
    assert!(st.success(), "copy failed ({st}): {err}");
    assert!(reconnects(&err) >= 1, "{err}");
    assert!(cmp(&src, &dst), "destination differs: {err}");
}

#[test]
fn nbds_source_killed_and_restarted_runs_a_new_tls_session() {
    let Some((dir, src, dst)) = setup("nbdkit", "retry-tls", 16, 3) else {
        return;
    };
    let psk = dir.file("keys.psk");
    let key: String = pattern(32, 11).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&psk, format!("alice:{key}\n")).unwrap();
    let f = format!("file={}", src.display());
    let tls = format!("--tls-psk={}", psk.display());
    let mut s = Srv::nbdkit(
        &dir,
        false,
        &[
            "--tls=require",
            &tls,
            "--filter=delay",
            "file",
            &f,
            "delay-read=20ms",
        ],
    );
    let Addr::Unix(sock) = &s.addr else {
        unreachable!()
    };
    let uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={}",
        sock.display(),
        psk.display()
    );
    let Some(run) = CopyRun::start_small(&dir, &RETRIES, &uri, dst.to_str().unwrap()) else {
        return;
    };
    survives_kills(run, &mut s, &src, &dst);
}
