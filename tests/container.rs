// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Copies where io_uring is blocked the way container runtimes block it (seccomp: EPERM or ENOSYS).
//
// Every copy here runs the command under build/no-io-uring, a seccomp
// filter that fails io_uring_setup, io_uring_enter and io_uring_register
// (Docker's and containerd's default profiles answer EPERM, podman's and
// CRI-O's ENOSYS).  With the default engine (auto) every endpoint kind
// must copy, on the epoll engine, and say so with -v (and nothing
// without it); each copy is checked with an independent reader (cmp,
// qemu-img, libnbd's nbdcopy, Python's hashlib).  Forcing
// --engine=io_uring there fails with the clear error.  These tests pick
// the engine themselves: NBDCPY_TEST_ENGINE does not apply.  They skip
// (SKIP line) only where seccomp filters cannot be installed, and fail
// instead under NBDCPY_REQUIRE_SERVERS=1.

use crate::common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The errno the filter answers the io_uring calls with.
#[derive(Clone, Copy, Debug)]
enum Errno {
    /// Docker, containerd.
    Eperm,
    /// podman, CRI-O.
    Enosys,
}

impl Errno {
    fn arg(self) -> &'static str {
        match self {
            Errno::Eperm => "--errno=EPERM",
            Errno::Enosys => "--errno=ENOSYS",
        }
    }
    /// strerror's text, as the error message carries it.
    fn text(self) -> &'static str {
        match self {
            Errno::Eperm => "Operation not permitted",
            Errno::Enosys => "Function not implemented",
        }
    }
}

/// The helper: build/no-io-uring (`make` builds it) beside the command,
/// or in the tree's build/; else compiled here with cc once.
fn helper_path() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let beside = std::env::var_os("NBDCPY_BIN")
        .map(PathBuf::from)
        .and_then(|b| b.parent().map(|d| d.join("no-io-uring")));
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/no-io-uring");
    if let Some(p) = [beside, Some(tree)]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
    {
        return Some(p);
    }
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-io-uring");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/no-io-uring.c");
            let st = Command::new("cc")
                .args(["-Wall", "-Wextra", "-Werror", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .status();
            match st {
                Ok(s) if s.success() => Some(out),
                other => {
                    eprintln!("cannot build {}: {other:?}", out.display());
                    None
                }
            }
        })
        .clone()
}

/// SKIP line and false, or a panic under NBDCPY_REQUIRE_SERVERS.
fn skip(why: &str) -> bool {
    if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
        panic!("{why} (NBDCPY_REQUIRE_SERVERS is set)");
    }
    eprintln!("SKIP: {why}");
    false
}

/// The command under the seccomp helper.
struct Blocked {
    helper: PathBuf,
    bin: PathBuf,
}

impl Blocked {
    /// None (a skip) where the command is not built, or seccomp filters
    /// cannot be installed here (the helper exits 125 then).
    fn new() -> Option<Blocked> {
        let bin = nbdcpy_bin()?;
        let Some(helper) = helper_path() else {
            skip("no build/no-io-uring and cc cannot build it");
            return None;
        };
        let o = Command::new(&helper).arg("true").output().ok()?;
        if !o.status.success() {
            skip(&format!(
                "seccomp unavailable: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return None;
        }
        Some(Blocked { helper, bin })
    }

    /// `no-io-uring --errno=E -- nbdcpy`: arguments follow.
    fn cmd(&self, errno: Errno) -> Command {
        let mut c = Command::new(&self.helper);
        c.arg(errno.arg()).arg("--").arg(&self.bin);
        c.stdin(Stdio::null());
        c
    }

    /// The default engine (auto) under EPERM with -v and `args`: must
    /// succeed on the epoll engine.  Returns the output.
    fn copy_ok(&self, args: &[&str]) -> Output {
        self.copy_ok_with(Errno::Eperm, args)
    }

    fn copy_ok_with(&self, errno: Errno, args: &[&str]) -> Output {
        let o = self.cmd(errno).arg("-v").args(args).output().unwrap();
        check_epoll(&o, &format!("{errno:?} {args:?}"));
        o
    }
}

/// The copy succeeded, and -v said it ran on the epoll engine.
fn check_epoll(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what}: {} {err}", o.status);
    assert!(
        err.lines().any(|l| l.contains("engine: epoll")),
        "{what}: -v does not say 'engine: epoll': {err}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A disk image of `size` bytes: data, a hole, written zeroes, data.
fn image(dir: &TempDir, name: &str, size: usize, seed: u64) -> PathBuf {
    let p = dir.file(name);
    let mut v = pattern(size, seed);
    v[size / 4..size / 2].fill(0);
    write_file(&p, &v);
    // Punch the first zero run into a hole where the filesystem can.
    let _ = Command::new("fallocate")
        .args([
            "-p",
            "-o",
            &(size / 4).to_string(),
            "-l",
            &(size / 8).to_string(),
        ])
        .arg(&p)
        .status();
    p
}

/// A file of `size` bytes all `byte`.
fn filled(dir: &TempDir, name: &str, size: usize, byte: u8) -> PathBuf {
    let p = dir.file(name);
    write_file(&p, &vec![byte; size]);
    p
}

const SIZE: usize = 6 << 20;

#[test]
fn helper_blocks_io_uring_and_libnbd_nbdcopy_still_copies() {
    let Some(b) = Blocked::new() else { return };
    // The filter works: a program asking for a ring gets the errno.
    if require("python3") {
        for errno in [Errno::Eperm, Errno::Enosys] {
            let o = Command::new(&b.helper)
                .arg(errno.arg())
                .args([
                    "python3",
                    "-c",
                    "import ctypes, os\n\
                     libc = ctypes.CDLL(None, use_errno=True)\n\
                     r = libc.syscall(425, 8, ctypes.create_string_buffer(120), 0)\n\
                     print(r, os.strerror(ctypes.get_errno()))",
                ])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout);
            assert_eq!(out.trim(), format!("-1 {}", errno.text()), "{errno:?}");
        }
    }
    // Everything else is allowed: libnbd's nbdcopy (which polls) copies.
    if !require("nbdcopy") {
        return;
    }
    let d = TempDir::new("ctr-nbdcopy");
    let src = image(&d, "src.img", SIZE, 1);
    let dst = d.file("dst.img");
    let o = Command::new(&b.helper)
        .args(["nbdcopy", s(&src), s(&dst)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cmp(&src, &dst));
}

#[test]
fn forced_io_uring_fails_with_the_clear_error() {
    let Some(b) = Blocked::new() else { return };
    let d = TempDir::new("ctr-forced");
    let src = image(&d, "src.img", SIZE, 2);
    let dst = d.file("dst.img");
    for errno in [Errno::Eperm, Errno::Enosys] {
        let o = b
            .cmd(errno)
            .args(["--engine=io_uring", s(&src), s(&dst)])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{errno:?}: {err}");
        assert!(err.contains("cannot create io_uring"), "{errno:?}: {err}");
        assert!(err.contains(errno.text()), "{errno:?}: no reason: {err}");
    }
    // Forcing epoll there is fine.
    let o = b
        .cmd(Errno::Eperm)
        .args(["-v", "--engine=epoll", s(&src), s(&dst)])
        .output()
        .unwrap();
    check_epoll(&o, "--engine=epoll");
    assert!(cmp(&src, &dst));
}

#[test]
fn file_to_file_quietly_and_in_json() {
    let Some(b) = Blocked::new() else { return };
    let d = TempDir::new("ctr-file");
    let src = image(&d, "src.img", SIZE, 3);
    for errno in [Errno::Eperm, Errno::Enosys] {
        let dst = filled(&d, "dst.img", SIZE, 0x77);
        b.copy_ok_with(errno, &[s(&src), s(&dst)]);
        assert!(cmp(&src, &dst), "{errno:?}");
        // The fallback is silent without -v.
        let dst2 = d.file("dst2.img");
        let o = b.cmd(errno).args([s(&src), s(&dst2)]).output().unwrap();
        assert!(o.status.success(), "{errno:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            "",
            "{errno:?}: not quiet"
        );
        assert!(cmp(&src, &dst2), "{errno:?}");
        std::fs::remove_file(&dst2).unwrap();
    }
    // --json names the engine that ran.
    if !require("python3") {
        return;
    }
    let dst = d.file("json.img");
    let o = b
        .cmd(Errno::Eperm)
        .args(["--json", s(&src), s(&dst)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut p = Command::new("python3")
        .args([
            "-c",
            "import json, sys\nprint(json.load(sys.stdin)['engine'])",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let e = p.wait_with_output().unwrap();
    assert!(
        e.status.success(),
        "not JSON with an engine: {:?}",
        o.stdout
    );
    assert_eq!(String::from_utf8_lossy(&e.stdout).trim(), "epoll");
    assert!(cmp(&src, &dst));
}

#[test]
fn nbd_to_file_and_file_to_nbd() {
    let Some(b) = Blocked::new() else { return };
    if !require("qemu-nbd") || !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("ctr-nbd-file");
    let src = image(&d, "src.img", SIZE, 4);
    // NBD (qemu-nbd) -> file
    let q = qemu_nbd(&d, &src, &["-r"]);
    let out = filled(&d, "out.img", SIZE, 0x11);
    b.copy_ok(&[&q.uri(), s(&out)]);
    assert!(cmp(&src, &out));
    // file -> NBD (nbdkit's file plugin), read back by qemu-img
    let back = filled(&d, "back.img", SIZE, 0x22);
    let k = nbdkit(&d, &["file", s(&back)]);
    b.copy_ok(&[s(&src), &k.uri()]);
    assert!(qemu_img_compare(s(&src), &k.uri()), "export differs");
    drop(k);
    assert!(cmp(&src, &back));
    // ENOSYS: NBD -> file too
    let out2 = d.file("out2.img");
    b.copy_ok_with(Errno::Enosys, &[&q.uri(), s(&out2)]);
    assert!(cmp(&src, &out2));
}

#[test]
fn nbd_to_nbd() {
    let Some(b) = Blocked::new() else { return };
    if !require("qemu-nbd") || !require("nbdkit") || !require("nbd-server") {
        return;
    }
    let d = TempDir::new("ctr-nbd-nbd");
    let src = image(&d, "src.img", SIZE, 5);
    let q = qemu_nbd(&d, &src, &["-r"]);
    // To nbdkit (file plugin) and to nbd-server.
    for (kind, errno) in [("nbdkit", Errno::Eperm), ("nbd-server", Errno::Enosys)] {
        let back = filled(&d, &format!("{kind}.img"), SIZE, 0x33);
        let t = serve(kind, &d, &back);
        b.copy_ok_with(errno, &[&q.uri(), &t.uri()]);
        drop(t);
        assert!(cmp(&src, &back), "{kind} differs");
    }
}

#[test]
fn tls_psk_both_sides() {
    let Some(b) = Blocked::new() else { return };
    if !require("nbdkit") || !require("nbdcopy") {
        return;
    }
    let d = TempDir::new("ctr-tls");
    let psk = d.file("keys.psk");
    let key: String = pattern(32, 27).iter().map(|x| format!("{x:02x}")).collect();
    write_file(&psk, format!("alice:{key}\n").as_bytes());
    let src = image(&d, "src.img", SIZE, 6);
    let back = filled(&d, "back.img", SIZE, 0x44);
    let tls = |file: &Path| {
        let k = format!("--tls-psk={}", psk.display());
        nbdkit(&d, &["--tls=require", &k, "file", s(file)])
    };
    let (ks, kd) = (tls(&src), tls(&back));
    let uri = |srv: &Server| {
        format!(
            "nbds+unix://alice@/?socket={}&tls-psk-file={}",
            srv.socket().display(),
            psk.display()
        )
    };
    let o = b.copy_ok(&[&uri(&ks), &uri(&kd)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("TLS"), "-v names no TLS: {err}");
    drop(kd);
    assert!(cmp(&src, &back));
    // TLS -> file, read back from the TLS export by libnbd's nbdcopy.
    let out = d.file("out.img");
    b.copy_ok(&[&uri(&ks), s(&out)]);
    assert!(cmp(&src, &out));
    let theirs = d.file("theirs.img");
    output_ok(
        Command::new("nbdcopy").arg(uri(&ks)).arg(&theirs),
        "nbdcopy over TLS",
    );
    assert!(cmp(&theirs, &out));
}

#[test]
fn stdin_to_nbd_and_nbd_to_stdout() {
    let Some(b) = Blocked::new() else { return };
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("ctr-stdio");
    let data = pattern(SIZE, 7);
    let m = nbdkit(&d, &["memory", &SIZE.to_string()]);
    // stdin -> NBD, read back by qemu-img
    let mut c = b
        .cmd(Errno::Eperm)
        .args(["-v", "-", &m.uri()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut si = c.stdin.take().unwrap();
    let feed = data.clone();
    let w = std::thread::spawn(move || si.write_all(&feed));
    let o = c.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    check_epoll(&o, "stdin -> NBD");
    assert!(
        read_export(&m.uri(), &d) == data,
        "export differs from stdin"
    );
    // NBD -> stdout (a pipe)
    for errno in [Errno::Eperm, Errno::Enosys] {
        let o = b.copy_ok_with(errno, &[&m.uri(), "-"]);
        assert!(o.stdout == data, "{errno:?}: stdout differs");
    }
}

#[test]
fn subprocess_source_and_destination() {
    let Some(b) = Blocked::new() else { return };
    if !require("qemu-nbd") || !require("qemu-img") || !require("nbdkit") {
        return;
    }
    let d = TempDir::new("ctr-subproc");
    let raw = image(&d, "disk.raw", SIZE, 8);
    let q = d.file("disk.qcow2");
    raw_to_qcow2(&raw, &q);
    // [ qemu-nbd -f qcow2 ] -> file
    let out = d.file("out.raw");
    b.copy_ok(&[
        "--",
        "[",
        "qemu-nbd",
        "-r",
        "-f",
        "qcow2",
        s(&q),
        "]",
        s(&out),
    ]);
    assert!(cmp(&raw, &out));
    // file -> [ qemu-nbd -f qcow2 ] into a new qcow2, compared by qemu-img
    let q2 = d.file("copy.qcow2");
    output_ok(
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", s(&q2), &SIZE.to_string()]),
        "qemu-img create",
    );
    b.copy_ok_with(
        Errno::Enosys,
        &["--", s(&raw), "[", "qemu-nbd", "-f", "qcow2", s(&q2), "]"],
    );
    output_ok(
        Command::new("qemu-img").args([
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "qcow2",
            s(&raw),
            s(&q2),
        ]),
        "qemu-img compare",
    );
}

/// The count the -v summary line prints before `what`.
fn counter(stderr: &str, what: &str) -> u64 {
    let at = stderr
        .find(what)
        .unwrap_or_else(|| panic!("no \"{what}\" in: {stderr}"));
    let start = stderr[..at].rfind(' ').map_or(0, |i| i + 1);
    stderr[start..at]
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {e}: {stderr}"))
}

#[test]
fn multi_conn_against_nbdkit() {
    let Some(b) = Blocked::new() else { return };
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("ctr-multi");
    let src = image(&d, "src.img", SIZE, 9);
    let back = filled(&d, "back.img", SIZE, 0x66);
    let ks = nbdkit(&d, &["file", s(&src)]);
    let kd = nbdkit(&d, &["file", s(&back)]);
    let o = b.copy_ok(&["-C", "4", "--request-size=65536", &ks.uri(), &kd.uri()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        counter(&err, " connection(s)") >= 4,
        "not multi-conn: {err}"
    );
    drop(kd);
    assert!(cmp(&src, &back));
}

/// nbdkit -f -U SOCK ARGS (the socket file removed first), once it greets.
fn nbdkit_on(sock: &Path, args: &[&str], log: &Path) -> Child {
    let _ = std::fs::remove_file(sock);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "--exit-with-parent", "-U"])
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("nbdkit");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        use std::io::Read;
        if let Ok(mut c) = std::os::unix::net::UnixStream::connect(sock) {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut m = [0u8; 8];
            if c.read_exact(&mut m).is_ok() && &m == b"NBDMAGIC" {
                return child;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "nbdkit exited ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "nbdkit not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn retries_survive_a_server_killed_and_restarted() {
    let Some(b) = Blocked::new() else { return };
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("ctr-retries");
    let size = 16 << 20;
    let src = image(&d, "src.img", size, 10);
    let dst = d.file("dst.img");
    let sock = d.file("slow.sock");
    let log = d.file("nbdkit.log");
    let f = format!("file={}", src.display());
    let args = ["--filter=delay", "file", &f, "delay-read=20ms"];
    let mut srv = nbdkit_on(&sock, &args, &log);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let errf = d.file("nbdcpy.err");
    let mut run = b
        .cmd(Errno::Eperm)
        .args(["-v", "--retries=5", "--retry-delay=0.1", "--requests=2"])
        .args(["--request-size=64k", &uri, s(&dst)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&errf).unwrap_or_default();
    // Kill the server (SIGKILL) twice mid-copy, each time starting it
    // again on the same socket 200 ms later.
    let mut kills = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        if run.try_wait().unwrap().is_some() {
            break;
        }
        let _ = srv.kill();
        let _ = srv.wait();
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        srv = nbdkit_on(&sock, &args, &log);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = run.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!("copy still running after 60 s: {}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = srv.kill();
    let _ = srv.wait();
    let err = text();
    assert!(st.success(), "copy failed ({st}): {err}");
    assert!(kills > 0, "the copy ended before the first kill: {err}");
    assert!(err.contains("engine: epoll"), "{err}");
    assert!(
        counter(&err, " reconnect(s)") >= 1,
        "{kills} kill(s), no reconnect: {err}"
    );
    assert!(cmp(&src, &dst), "destination differs: {err}");
}

/// Python hashlib's block hash of `file` (the construction of
/// tests/blkhash.rs: the digest of each block's digest, then the size).
fn python_blkhash(file: &Path, digest: &str, block: usize) -> String {
    let script = "import hashlib, struct, sys\n\
                  data = open(sys.argv[1], 'rb').read()\n\
                  bs = int(sys.argv[3])\n\
                  outer = hashlib.new(sys.argv[2])\n\
                  for i in range(0, len(data), bs):\n    \
                      outer.update(hashlib.new(sys.argv[2], data[i:i + bs]).digest())\n\
                  outer.update(struct.pack('<Q', len(data)))\n\
                  print(outer.hexdigest())\n";
    let o = output_ok(
        Command::new("python3")
            .args(["-c", script, s(file), digest])
            .arg(block.to_string()),
        "python3 blkhash",
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn blkhash_of_nbd_and_file_sources() {
    let Some(b) = Blocked::new() else { return };
    if !require("python3") || !require("nbdkit") {
        return;
    }
    let d = TempDir::new("ctr-blkhash");
    let src = image(&d, "src.img", SIZE + 12_345, 11);
    let want = python_blkhash(&src, "sha256", 65536);
    // NBD (nbdkit: the odd size exactly) -> file, the hash in a file.
    let q = nbdkit(&d, &["-r", "file", s(&src)]);
    let out = d.file("out.img");
    let hf = d.file("hash");
    let hash_file = format!("--blkhash-file={}", hf.display());
    b.copy_ok(&["--blkhash=sha256/64k", &hash_file, &q.uri(), s(&out)]);
    assert!(cmp(&src, &out));
    assert_eq!(
        std::fs::read_to_string(&hf).unwrap().trim(),
        want,
        "NBD source"
    );
    // file -> null:, the hash on stdout; ENOSYS, md5 with 4 KiB blocks.
    let o = b.copy_ok_with(Errno::Enosys, &["--blkhash=md5/4k", s(&src), "null:"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        python_blkhash(&src, "md5", 4096),
        "file source"
    );
}
