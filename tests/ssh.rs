// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! nbd+ssh:// and nbds+ssh://: copies through a private sshd on 127.0.0.1, and a refused login.
//
// Each test starts its own sshd (Debian's openssh-server) on a free port
// with its own host key and authorized key in a temporary directory, and
// puts an `ssh` wrapper first in PATH that points ssh at the test's
// config (identity, known_hosts, batch mode).  nbdkit serves the image on
// a unix socket (?socket=) or on 127.0.0.1 (?nbd-port=); the far side's
// nc (netcat-openbsd) bridges.  Copies are checked with cmp(1); after
// each run no process naming the test's directory is left.

use crate::common;

use common::{cmp, die_with_parent, free_port, nbdkit, pattern, require, write_file, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd, stopped (and reaped) on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn run_ok(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn keygen(path: &Path) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path),
    );
}

/// Whether the tools are there (else SKIP, or a failure under
/// NBDCPY_REQUIRE_SERVERS=1).
fn tools() -> bool {
    if !Path::new(SSHD).exists() {
        if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
            panic!("{SSHD} is required (NBDCPY_REQUIRE_SERVERS is set): apt-get install openssh-server");
        }
        eprintln!("SKIP: {SSHD} not installed");
        return false;
    }
    ["ssh", "ssh-keygen", "nc", "nbdkit"]
        .iter()
        .all(|c| require(c))
        && common::nbdcpy_bin().is_some()
}

fn whoami() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Sshd {
    /// sshd on 127.0.0.1 (a free port) accepting the key `dir`/id, and
    /// the wrapper `dir`/bin/ssh using it.
    fn start(dir: &TempDir) -> Sshd {
        let d = dir.path().to_path_buf();
        keygen(&d.join("hostkey"));
        keygen(&d.join("id"));
        keygen(&d.join("other"));
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
        // sshd as root wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nMaxStartups 50\nMaxSessions 50\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), conf).unwrap();
        let hostpub = std::fs::read_to_string(d.join("hostkey.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {hostpub}"),
        )
        .unwrap();
        Sshd::wrapper(&d, "id");
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut s = Sshd {
            child,
            port,
            dir: d,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sshd exited ({st}): {}", s.log());
            }
            assert!(Instant::now() < deadline, "sshd not ready: {}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// `dir`/bin/ssh: the real ssh with the test's config and identity `key`.
    fn wrapper(d: &Path, key: &str) {
        let conf = format!(
            "Host *\n  IdentityFile {d}/{key}\n  IdentitiesOnly yes\n\
             UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n\
             BatchMode yes\n  LogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("ssh_config"), conf).unwrap();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v ssh"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let script = format!(
            "#!/bin/sh\nexec {} -F {}/ssh_config \"$@\"\n",
            real.trim(),
            d.display()
        );
        let w = bin.join("ssh");
        std::fs::write(&w, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The command with the wrapper first in PATH.
    fn nbdcpy(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        common::nbdcpy_cmd()
            .env("PATH", path)
            .arg("-v")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes (other than this one) whose command line mentions `dir`:
/// ssh, the far side's nc, sshd's session processes.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // ssh (through the wrapper: -F DIR/ssh_config) and the far
        // side's nc; not the test's own servers.
        let tunnel =
            cmd.starts_with("nc ") || cmd.contains("ssh_config") || cmd.contains("/bin/ssh ");
        if cmd.contains(&needle) && tunnel && !cmd.starts_with(SSHD) {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

/// No ssh (nor the far side's nc) naming `dir` within a few seconds.
fn nothing_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_naming(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The number before `what` in the -v summary line.
fn counter(err: &str, what: &str) -> u64 {
    let at = err
        .find(what)
        .unwrap_or_else(|| panic!("no {what} in {err}"));
    let start = err[..at].rfind(' ').map_or(0, |i| i + 1);
    err[start..at].parse().unwrap()
}

fn image(p: &Path) {
    let mut v = pattern(8 << 20, 3838);
    v[3 << 20..4 << 20].fill(0);
    write_file(p, &v);
}

#[test]
fn copy_from_nbd_ssh_with_two_connections() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-from");
    let sshd = Sshd::start(&dir);
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    let s = nbdkit(&dir, &["file", &f]);
    let uri = format!(
        "nbd+ssh://{}@127.0.0.1:{}/?socket={}",
        whoami(),
        sshd.port,
        s.socket().display()
    );
    let o = sshd.nbdcpy(&["--connections=2", &uri, dst.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nsshd: {}", sshd.log());
    assert!(cmp(&src, &dst), "destination differs: {err}");
    assert_eq!(counter(&err, " connection(s)"), 2, "{err}");
    eprintln!("{err}");
    nothing_left(dir.path());
}

#[test]
fn copy_to_nbd_ssh_through_nc_localhost() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-to");
    let sshd = Sshd::start(&dir);
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    // nbdkit on 127.0.0.1, reached as `nc localhost PORT` on the far side.
    let f = format!("file={}", dst.display());
    let (_d, nbd_uri) = common::nbdkit_tcp(&dir, &["file", &f]);
    let nbd_port = nbd_uri
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {nbd_uri}"));
    let uri = format!("nbd+ssh://127.0.0.1:{}/?nbd-port={nbd_port}", sshd.port);
    let o = sshd.nbdcpy(&["--connections=2", src.to_str().unwrap(), &uri]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nsshd: {}", sshd.log());
    assert!(cmp(&src, &dst), "destination differs: {err}");
    assert_eq!(counter(&err, " connection(s)"), 2, "{err}");
    // Each ssh names the test's ssh_config (the wrapper's -F).
    nothing_left(dir.path());
}

#[test]
fn nbd_ssh_to_nbd_takes_the_splice_path() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-splice");
    let sshd = Sshd::start(&dir);
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let f = format!("file={}", src.display());
    let s = nbdkit(&dir, &["file", &f]);
    let g = format!("file={}", dst.display());
    let d = nbdkit(&dir, &["file", &g]);
    let uri = format!(
        "nbd+ssh://127.0.0.1:{}/?socket={}",
        sshd.port,
        s.socket().display()
    );
    // The socketpair to ssh is a unix socket: payloads are spliced.
    let o = sshd.nbdcpy(&["--splice=on", &uri, &d.uri()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nsshd: {}", sshd.log());
    assert!(cmp(&src, &dst), "destination differs: {err}");
    assert!(err.contains("splice data path"), "{err}");
    assert!(counter(&err, " bytes spliced") > 0, "{err}");
    nothing_left(dir.path());
}

#[test]
fn nbds_ssh_runs_tls_inside_the_tunnel_with_the_uri_user() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-tls");
    let sshd = Sshd::start(&dir);
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    // The URI's user logs in to ssh and is the TLS-PSK user.
    let user = whoami();
    let psk = dir.file("keys.psk");
    let key: String = pattern(32, 38).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&psk, format!("{user}:{key}\n")).unwrap();
    let f = format!("file={}", src.display());
    let tls = format!("--tls-psk={}", psk.display());
    let s = nbdkit(&dir, &["--tls=require", &tls, "file", &f]);
    let uri = format!(
        "nbds+ssh://{user}@127.0.0.1:{}/?socket={}&tls-psk-file={}",
        sshd.port,
        s.socket().display(),
        psk.display()
    );
    let o = sshd.nbdcpy(&["--connections=2", &uri, dst.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nsshd: {}", sshd.log());
    assert!(cmp(&src, &dst), "destination differs: {err}");
    assert!(err.contains(&format!("TLS-PSK as \"{user}\"")), "{err}");
    assert_eq!(counter(&err, " connection(s)"), 2, "{err}");
    // Without TLS the server (which requires it) refuses.
    let plain = uri.replacen("nbds+ssh", "nbd+ssh", 1);
    let o = sshd.nbdcpy(&[&plain, dst.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("requires TLS"), "{err}");
    nothing_left(dir.path());
}

#[test]
fn a_refused_login_carries_sshs_message_and_leaves_nothing() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-refused");
    let sshd = Sshd::start(&dir);
    // The wrapper now offers a key the server does not know.
    Sshd::wrapper(dir.path(), "other");
    let (src, dst) = (dir.file("src.img"), dir.file("dst.img"));
    image(&src);
    let f = format!("file={}", src.display());
    let s = nbdkit(&dir, &["file", &f]);
    let uri = format!(
        "nbd+ssh://127.0.0.1:{}/?socket={}",
        sshd.port,
        s.socket().display()
    );
    let t = Instant::now();
    let o = sshd.nbdcpy(&["--timeout=20", &uri, dst.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{err}");
    assert!(
        err.contains(&format!("source {uri}")),
        "names the endpoint: {err}"
    );
    assert!(err.contains("Permission denied"), "ssh's message: {err}");
    eprintln!("{err}");
    nothing_left(dir.path());
}

#[test]
fn an_ssh_that_hangs_is_bounded_by_the_timeout() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("ssh-hang");
    let sshd = Sshd::start(&dir);
    // An ssh that says something and then never connects.
    let w = dir.path().join("bin/ssh");
    std::fs::write(
        &w,
        "#!/bin/sh\necho 'stuck before the login' >&2\nwhile :; do sleep 1; done\n",
    )
    .unwrap();
    let dst = dir.file("dst.img");
    let uri = format!("nbd+ssh://127.0.0.1:{}/?socket=/s.sock", sshd.port);
    let t = Instant::now();
    let o = sshd.nbdcpy(&["--timeout=2", &uri, dst.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "{:?}: {err}",
        t.elapsed()
    );
    assert!(err.contains(&format!("source {uri}")), "{err}");
    assert!(err.contains("timeout"), "{err}");
    assert!(err.contains("ssh: stuck before the login"), "{err}");
    eprintln!("{err}");
    nothing_left(dir.path());
}
