// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The `nbdcpy` command run the way users run it: argv, exit status,
//! stderr and files.  Uses build/nbdcpy (`make cli`), or $NBDCPY_BIN.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nbdcpy-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Option<Output> {
    common::nbdcpy_bin()?;
    Some(common::nbdcpy_cmd().args(args).output().unwrap())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command, when built and every one of `servers` is installed
/// (otherwise a SKIP line and None).
fn bin_with(servers: &[&str]) -> Option<PathBuf> {
    let b = common::nbdcpy_bin()?;
    servers.iter().all(|s| common::require(s)).then_some(b)
}

/// The command `b` with `opts`, copying the file `src` to `dst`.
fn copy_file(opts: &[&str], src: &Path, dst: &Path) -> Output {
    common::nbdcpy_cmd()
        .args(opts)
        .arg(src)
        .arg(dst)
        .output()
        .unwrap()
}

/// Runs `cmd` with `data` written to its stdin from another thread;
/// stderr is captured.  A failed write panics when `must_write`, else it
/// is ignored (the command may stop reading early).
fn with_stdin(cmd: &mut Command, data: Vec<u8>, must_write: bool) -> Output {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut si = c.stdin.take().unwrap();
    let w = std::thread::spawn(move || si.write_all(&data));
    let o = c.wait_with_output().unwrap();
    let wrote = w.join().unwrap();
    if must_write {
        wrote.unwrap();
    }
    o
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

#[test]
fn help_and_version() {
    let Some(o) = run(&["--help"]) else { return };
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("SOURCE DESTINATION") && out.contains("null:"));
    assert!(out.lines().count() <= 24, "--help must fit on a screen");
    let v = env!("CARGO_PKG_VERSION");
    for opt in ["-V", "--version"] {
        let o = run(&[opt]).unwrap();
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out, format!("nbdcpy {v}\nlibnbdcpy {v}\n"), "{opt}");
    }
}

#[test]
fn version_under_the_nbdcopy_name_names_both() {
    let Some(bin) = common::nbdcpy_bin() else {
        return;
    };
    let dir = common::TempDir::new("nbdcopy-version");
    let link = dir.file("nbdcopy");
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    let o = Command::new(&link).arg("--version").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let v = env!("CARGO_PKG_VERSION");
    // The first line in the form nbdcopy's callers parse.
    assert_eq!(out, format!("nbdcopy 1.24.0 (nbdcpy {v})\nlibnbdcpy {v}\n"));
}

#[test]
fn bad_arguments_are_rejected_with_usage() {
    let Some(o) = run(&[]) else { return };
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nbdcpy: expected SOURCE DESTINATION"));
    let o = run(&["--bogus", "a", "b"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("SOURCE DESTINATION"), "usage shown");
    let o = run(&["a", "b", "c"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("extra parameters"));
    let o = run(&["--request-size=3M", "a", "b"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("nbdcpy: ") && stderr(&o).contains("request-size"));
    let o = run(&["-R", "zero", "a", "b"]).unwrap();
    assert!(stderr(&o).contains("requests"));
    let o = run(&["--progress=x", "a", "b"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["--", "[", "nbdkit", "memory", "1M", "null:"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("without matching ']'"));
    let o = run(&["--", "[", "]", "null:"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty command"));
}

#[test]
fn missing_source_names_it() {
    let Some(o) = run(&["/nonexistent/disk.img", "null:"]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.starts_with("nbdcpy: source /nonexistent/disk.img"), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn file_copies_with_every_local_option() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = tmpdir("opts");
    let src = d.join("src");
    std::fs::write(&src, data((2 << 20) + 4095, 1)).unwrap();
    for opts in [
        vec![],
        vec!["--allocated"],
        vec!["-C", "2"],
        vec!["--connections=3"],
        vec!["--flush"],
        vec!["--no-extents"],
        vec!["--queue-size=1M"],
        vec!["--request-size=64k"],
        vec!["-R", "2"],
        vec!["--requests=5"],
        vec!["-S", "0"],
        vec!["--sparse=8k"],
        vec!["--synchronous"],
        vec!["-T", "1"],
        vec!["--threads=4"],
        vec!["-v"],
        vec!["--verbose"],
        vec!["-p"],
        vec!["--progress"],
        vec!["--timeout=5"],
    ] {
        let dst = d.join("dst");
        let o = copy_file(&opts, &src, &dst);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        let st = Command::new("cmp").arg(&src).arg(&dst).status().unwrap();
        assert!(st.success(), "{opts:?}: copy differs");
        if opts
            .iter()
            .any(|o| o.starts_with("-v") || *o == "--verbose")
        {
            assert!(stderr(&o).contains("bytes done"), "verbose prints counters");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn destination_is_zero_skips_zeroes() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = tmpdir("diz");
    let src = d.join("src");
    let mut v = data(1 << 20, 2);
    v[4096..65536].fill(0);
    std::fs::write(&src, &v).unwrap();
    // A "destination" that really is zero: --destination-is-zero and its
    // alias both leave the zero blocks alone.
    for flag in ["--destination-is-zero", "--target-is-zero"] {
        let dst = d.join("dst");
        std::fs::write(&dst, vec![0u8; 1 << 20]).unwrap();
        let o = copy_file(&[flag, "-v"], &src, &dst);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&dst).unwrap(), v);
        assert!(stderr(&o).contains("61440 skipped"), "{}", stderr(&o));
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn stdin_and_stdout_stream() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = tmpdir("stdio");
    let v = data((3 << 20) + 11, 3);
    // stdin -> file
    let dst = d.join("from-stdin");
    let o = with_stdin(common::nbdcpy_cmd().arg("-").arg(&dst), v.clone(), true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dst).unwrap(), v);
    // file -> stdout
    let o = common::nbdcpy_cmd().arg(&dst).arg("-").output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, v);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn progress_fd_writes_percentages() {
    let Some(b) = common::nbdcpy_bin() else {
        return;
    };
    let d = tmpdir("progress");
    let src = d.join("src");
    std::fs::write(&src, data(8 << 20, 4)).unwrap();
    // --progress=FD with FD 3 redirected to a file by the shell.
    let dst_arg = format!("'{}'", d.join("dst").display());
    let lines = |copier: &Path, extra: &str, src: &str, dst: &str| -> Vec<String> {
        let log = d.join("progress.log");
        // The suite's engine for ours (nbdcpy_cmd()'s arguments).
        let engine = if copier == b.as_path() {
            common::engine_args().join(" ")
        } else {
            String::new()
        };
        let cmd = format!(
            "exec 3>'{}'; {extra} '{}' {engine} --progress=3 --request-size=65536 -R 2 {src} {dst}",
            log.display(),
            copier.display(),
        );
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success());
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines().map(str::to_string).collect()
    };
    let check = |lines: &[String]| {
        // Like nbdcopy: 0/100 first, 100/100 last and only there, and
        // percentages that never go back in between.
        assert_eq!(
            lines.first().map(String::as_str),
            Some("0/100"),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("100/100"),
            "{lines:?}"
        );
        let mut prev = 0;
        for (i, l) in lines.iter().enumerate() {
            let (n, rest) = l.split_once('/').expect("N/100 format");
            assert_eq!(rest, "100", "{l}");
            let n: u32 = n.parse().unwrap();
            assert!(n >= prev && (n < 100 || i == lines.len() - 1), "{lines:?}");
            prev = n;
        }
    };
    let src_arg = format!("'{}'", src.display());
    let ours = lines(&b, "", &src_arg, &dst_arg);
    check(&ours);
    // A stream of unknown size: 0/100, then 100/100 at its end.
    let cat = format!("cat {src_arg} |");
    let stream = lines(&b, &cat, "-", "null:");
    assert_eq!(stream, ["0/100", "100/100"]);
    // nbdcopy, for the same copies, writes the same distinct lines (it
    // repeats some: "0/100" once per range handed out, or per read of a
    // stream).
    if common::have("nbdcopy") {
        let distinct = |mut v: Vec<String>| {
            v.dedup();
            v
        };
        // (Ours may add a percentage in between if the copy is slow.)
        let theirs = distinct(lines(Path::new("nbdcopy"), "", &src_arg, &dst_arg));
        assert_eq!(theirs, ["0/100", "100/100"], "nbdcopy: {theirs:?}");
        assert_eq!(theirs.first(), ours.first());
        assert_eq!(theirs.last(), ours.last());
        let theirs = distinct(lines(Path::new("nbdcopy"), &cat, "-", "null:"));
        assert_eq!(theirs, stream, "nbdcopy: {theirs:?}");
    }
}

/// -v: the library's log messages, printed by the command (the library
/// itself never writes to stderr).
#[test]
fn verbose_prints_the_library_log() {
    let Some(_) = common::nbdcpy_bin() else {
        return;
    };
    let d = tmpdir("verbose-log");
    let src = d.join("src");
    std::fs::write(&src, data(1 << 20, 5)).unwrap();
    let dst = d.join("dst");
    let o = copy_file(&[], &src, &dst);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "", "quiet without -v");
    let o = copy_file(&["-v"], &src, &dst);
    assert!(o.status.success());
    assert!(stderr(&o).contains("nbdcpy: ") && stderr(&o).contains("data path"));
    // Debug knobs are config keys, reachable with --set.
    let knobs = ["--set=file-lock=0", "--set=uring-file-writes=1"];
    let o = copy_file(&knobs, &src, &dst);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(common::cmp(&src, &dst));
    let o = copy_file(&["--set=bogus=1"], &src, &dst);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bogus"));
}

use crate::common;

/// Within 5 s no process mentions any `needle` in its command line
/// (servers are gone); else fails with the needle's message.
fn assert_none_left(needles: &[(&Path, &str)]) {
    for (needle, msg) in needles {
        let gone = common::poll_until(std::time::Duration::from_secs(5), || {
            procs_with(&needle.to_string_lossy()).is_empty()
        });
        assert!(gone, "{msg}: {:?}", procs_with(&needle.to_string_lossy()));
    }
}

/// Processes whose command line mentions `needle` (to prove servers are gone).
fn procs_with(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&c).replace('\0', " ");
            if s.contains(needle) {
                v.push(s);
            }
        }
    }
    v
}

#[test]
fn subprocess_servers_both_ends_and_none_left_behind() {
    let Some(_) = bin_with(&["qemu-nbd", "nbdkit", "qemu-img"]) else {
        return;
    };
    let d = tmpdir("subproc");
    let raw = d.join("raw");
    let mut v = data(3 << 20, 5);
    v[1 << 20..2 << 20].fill(0);
    std::fs::write(&raw, &v).unwrap();
    let q = d.join("disk.qcow2");
    common::raw_to_qcow2(&raw, &q);
    let marker = d.join("marker-file-for-ps");
    // [ qemu-nbd -f qcow2 ] -> file
    let out = d.join("out");
    let o = common::nbdcpy_cmd()
        .args(["--", "[", "qemu-nbd", "-r", "-f", "qcow2"])
        .arg(&q)
        .arg("]")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), v);
    // file -> [ qemu-nbd -f qcow2 ] (an existing qcow2 of the right size)
    let q2 = d.join("disk2.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q2)
        .arg((3 << 20).to_string())
        .status()
        .unwrap()
        .success());
    let o = common::nbdcpy_cmd()
        .args(["--"])
        .arg(&raw)
        .args(["[", "qemu-nbd", "-f", "qcow2"])
        .arg(&q2)
        .arg("]")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&q2)
        .status()
        .unwrap()
        .success());
    // Both ends subprocesses: [ qemu-nbd ] -> [ nbdkit memory ]; the
    // marker path in nbdkit's argv lets us look for leftovers.
    let o = common::nbdcpy_cmd()
        .args(["--", "[", "qemu-nbd", "-r", "-f", "qcow2"])
        .arg(&q)
        .args(["]", "[", "nbdkit", "memory", "3M"])
        .arg(format!("--pidfile={}", marker.display()))
        .arg("]")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_none_left(&[
        (&marker, "nbdkit left behind"),
        (&q, "qemu-nbd left behind"),
    ]);
    // A failing copy still stops its servers: destination too small.
    let o = common::nbdcpy_cmd()
        .args(["--"])
        .arg(&raw)
        .args(["[", "nbdkit", "memory", "1M"])
        .arg(format!("--pidfile={}", marker.display()))
        .arg("]")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("smaller"), "{}", stderr(&o));
    assert_none_left(&[(&marker, "nbdkit left behind after error")]);
    // A command that does not exist.
    let o = run(&["--", "[", "no-such-server-xyz", "]", "null:"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-server-xyz"), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn nbd_streams_to_stdout_and_from_stdin() {
    let Some(_) = bin_with(&["nbdkit"]) else {
        return;
    };
    let dir = common::TempDir::new("clistream");
    let v = data(4 << 20, 6);
    let src = dir.file("src");
    std::fs::write(&src, &v).unwrap();
    let m = common::nbdkit(&dir, &["memory", "4M"]);
    // stdin -> NBD
    let o = with_stdin(common::nbdcpy_cmd().arg("-").arg(m.uri()), v.clone(), true);
    assert!(o.status.success(), "{}", stderr(&o));
    // NBD -> stdout
    let o = common::nbdcpy_cmd().arg(m.uri()).arg("-").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, v);
    // A stream longer than the destination is an error, not a truncation.
    let small = common::nbdkit(&dir, &["memory", "1M"]);
    let o = with_stdin(common::nbdcpy_cmd().arg("-").arg(small.uri()), v, false);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is larger than destination"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ctrl_c_cancels_cleanly() {
    let Some(_) = bin_with(&["nbdkit"]) else {
        return;
    };
    let d = tmpdir("sigint");
    let marker = d.join("slow-server-marker");
    // A slow source (delay filter) run as a subprocess.
    let c = common::nbdcpy_cmd()
        .args([
            "--",
            "[",
            "nbdkit",
            "--filter=delay",
            "pattern",
            "1G",
            "rdelay=200ms",
        ])
        .arg(format!("--pidfile={}", marker.display()))
        .args(["]", "null:"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server wrote its pidfile: it serves, and the copy is under way
    // (or about to be).
    let started = common::poll_until(std::time::Duration::from_secs(10), || {
        std::fs::metadata(&marker).is_ok_and(|m| m.len() > 0)
    });
    assert!(started, "the server did not write {}", marker.display());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let t0 = std::time::Instant::now();
    let o = c.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));
    assert_none_left(&[(&marker, "server left behind")]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// The splice path with a pipe smaller than a request (payloads move in
/// pieces), into NBD, a file (with and without zero detection) and null:,
/// checked with cmp against the source.
#[test]
fn splice_with_a_small_pipe() {
    let Some(_) = bin_with(&["qemu-nbd"]) else {
        return;
    };
    let d = common::TempDir::new("splice-pipe");
    let size = 6 << 20;
    let mut v = data(size, 9);
    v[(1 << 20) + 4096..(2 << 20) + 8192].fill(0);
    let src = d.file("src");
    std::fs::write(&src, &v).unwrap();
    let s = common::qemu_nbd(&d, &src, &["-r"]);
    let dstf = d.file("dst");
    for (what, extra) in [
        ("nbd", vec![]),
        ("file", vec![]),
        ("file", vec!["-S", "0"]),
        ("null", vec![]),
    ] {
        std::fs::write(&dstf, vec![0xEEu8; size]).unwrap();
        let t = (what == "nbd").then(|| common::qemu_nbd(&d, &dstf, &[]));
        let dst = match what {
            "nbd" => t.as_ref().unwrap().uri(),
            "file" => dstf.to_str().unwrap().to_string(),
            _ => "null:".to_string(),
        };
        let o = common::nbdcpy_cmd()
            .args(["-v", "--splice=on", "--set=pipe-size=64k"])
            .args(["--request-size=1048576"])
            .args(&extra)
            .arg(s.uri())
            .arg(&dst)
            .output()
            .unwrap();
        drop(t);
        let err = stderr(&o);
        assert!(o.status.success(), "{what} {extra:?}: {err}");
        assert!(err.contains("splice data path"), "{what}: {err}");
        if what != "null" {
            assert!(common::cmp(&src, &dstf), "{what} {extra:?}: differs");
        }
    }
}
