// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! --checkpoint: copies killed at random instants resume to the right bytes; mismatches, damage and failed flushes are refused or never recorded.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// A sparse source: holes, random data, and allocated zeroes.
fn sparse_source(p: &Path, size: usize, seed: u64) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size as u64).unwrap();
    use std::os::unix::fs::FileExt;
    let mut i = 0;
    while i < size / MIB {
        let data = if i % 7 == 3 {
            vec![0u8; MIB] // written zeroes: zero detection
        } else {
            pattern(MIB, seed + i as u64)
        };
        f.write_at(&data[..MIB * 3 / 4], (i * MIB) as u64).unwrap();
        i += 3;
    }
}

/// Garbage everywhere: the copy must write every zero of the source.
fn garbage(p: &Path, size: usize) {
    write_file(p, &vec![0xa5u8; size]);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed() -> u64 {
    let s = std::env::var("NBDCPY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("NBDCPY_TEST_SEED={s}");
    s
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Runs `args` and kills it with `sig` after `after`; true when it was
/// still running then.
fn run_and_signal(args: &[String], after: Duration, sig: i32) -> bool {
    let mut c = nbdcpy_cmd()
        .args(args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < after {
        if c.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(c.id(), sig);
    let st = c.wait().unwrap();
    // A copy that ended just before the signal succeeded.
    !st.success()
}

fn run_ok(args: &[String]) -> String {
    let out = output_ok(nbdcpy_cmd().args(args), "nbdcpy");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_fails(args: &[String]) -> String {
    let out = nbdcpy_cmd().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// SIGKILL at random instants of a copy with 4 connections from a
/// sparse source, into a file and into an NBD export (nbdkit), each
/// resumed with the same command; checked with cmp and qemu-img compare.
#[test]
fn killed_copies_resume_to_the_same_bytes() {
    if !require("nbdkit") || !require("qemu-img") || nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-kill");
    let size = 48 * MIB;
    let src = dir.file("src.img");
    sparse_source(&src, size, 7);
    let ndst = dir.file("nbd.img");
    garbage(&ndst, size);
    let server = nbdkit(&dir, &["file", ndst.to_str().unwrap()]);
    let fdst = dir.file("dst.img");
    let ck = dir.file("ck");
    let mut rng = Rng(seed());
    let mut killed = 0;
    for i in 0..20 {
        let nbd = i % 2 == 1;
        let dst = if nbd {
            garbage(&ndst, size);
            server.uri()
        } else {
            garbage(&fdst, size);
            fdst.to_str().unwrap().to_string()
        };
        let _ = std::fs::remove_file(&ck);
        let args = s(&[
            "-C",
            "4",
            &format!("--checkpoint={}", ck.display()),
            "--checkpoint-interval=0.05",
            "--rate=16M",
            src.to_str().unwrap(),
            &dst,
        ]);
        let at = Duration::from_millis(30 + rng.next() % 650);
        if run_and_signal(&args, at, libc::SIGKILL) {
            killed += 1;
            assert!(
                ck.exists(),
                "instant {i}: no checkpoint after the kill at {at:?}"
            );
        }
        let log = run_ok(&args);
        assert!(!ck.exists(), "instant {i}: checkpoint left after success");
        let same = if nbd {
            cmp(&src, &ndst) && qemu_img_compare(src.to_str().unwrap(), &server.uri())
        } else {
            cmp(&src, &fdst) && qemu_img_compare(src.to_str().unwrap(), fdst.to_str().unwrap())
        };
        assert!(
            same,
            "instant {i} ({at:?}, nbd {nbd}): destination differs\n{log}"
        );
    }
    assert!(killed >= 12, "only {killed} of 20 kills hit a running copy");
}

/// The part done before is not copied again; -v and --json say so.
#[test]
fn resume_reports_and_skips_what_is_done() {
    if nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-report");
    let size = 32 * MIB;
    let src = dir.file("src.img");
    write_file(&src, &pattern(size, 3));
    let dst = dir.file("dst.img");
    let ck = dir.file("ck");
    let mut args = s(&[
        &format!("--checkpoint={}", ck.display()),
        "--rate=16M",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(run_and_signal(
        &args,
        Duration::from_millis(1200),
        libc::SIGINT
    ));
    args.remove(1);
    args.insert(0, "-v".into());
    args.insert(0, "--json=3".into());
    args.insert(0, "--progress=1".into());
    let mut c = nbdcpy_cmd();
    let (r, w) = nix_pipe();
    c.args(&args).stderr(Stdio::piped());
    let out = unsafe_with_fd3(c, w);
    let json = read_all(r);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("resuming: "))
        .unwrap_or_else(|| panic!("no resuming line:\n{log}"));
    let n: u64 = line
        .split("resuming: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!(line.ends_with(&format!("of {size} bytes done")), "{line}");
    assert!(n >= 8 * MIB as u64 && n < size as u64, "{line}");
    assert!(json.contains(&format!("\"resumed_bytes\": {n}")), "{json}");
    let copied: u64 = json
        .split("\"bytes_copied\": ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert_eq!(copied, size as u64 - n, "{json}");
    // --progress=FD starts at the percentage done.
    let first = String::from_utf8_lossy(&out.stdout);
    let first: u64 = first
        .lines()
        .next()
        .and_then(|l| l.strip_suffix("/100"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("progress: {first}"));
    assert_eq!(first, n * 100 / size as u64);
    assert!(first > 0);
    assert!(cmp(&src, &dst));
}

fn nix_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new fds owned from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both fds are new and owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Runs `c` with `w` as its fd 3; returns its output.
fn unsafe_with_fd3(mut c: Command, w: std::os::fd::OwnedFd) -> std::process::Output {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = w.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    drop(w);
    out
}

fn read_all(r: std::os::fd::OwnedFd) -> String {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::from(r).read_to_string(&mut s).unwrap();
    s
}

/// SIGINT and SIGTERM stop the copy cleanly: FILE is a whole checkpoint
/// that records work, and the resumed copy is right.
#[test]
fn sigint_and_sigterm_leave_a_consistent_checkpoint() {
    if !require("nbdkit") || nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-sig");
    let size = 32 * MIB;
    let src = dir.file("src.img");
    sparse_source(&src, size, 11);
    let ndst = dir.file("nbd.img");
    garbage(&ndst, size);
    let server = nbdkit(&dir, &["file", ndst.to_str().unwrap()]);
    let ck = dir.file("ck");
    for (sig, nbd) in [
        (libc::SIGINT, false),
        (libc::SIGTERM, false),
        (libc::SIGINT, true),
        (libc::SIGTERM, true),
    ] {
        garbage(&ndst, size);
        let fdst = dir.file("dst.img");
        garbage(&fdst, size);
        let dst = if nbd {
            server.uri()
        } else {
            fdst.to_str().unwrap().into()
        };
        let args = s(&[
            "-C",
            "4",
            &format!("--checkpoint={}", ck.display()),
            "--checkpoint-interval=0.1",
            "--rate=4M",
            src.to_str().unwrap(),
            &dst,
        ]);
        assert!(run_and_signal(&args, Duration::from_millis(1300), sig));
        let text = std::fs::read_to_string(&ck).unwrap();
        assert!(text.starts_with("nbdcpy-checkpoint 1\n"), "{text}");
        assert!(
            text.lines().last().unwrap().starts_with("checksum "),
            "{text}"
        );
        assert!(
            text.contains("\ndone "),
            "signal {sig}, nbd {nbd}: nothing recorded\n{text}"
        );
        run_ok(&args);
        let d = if nbd { &ndst } else { &fdst };
        assert!(cmp(&src, d), "signal {sig}, nbd {nbd}: differs");
    }
}

/// SIGINT to a copy into an NBD export with no checkpoint interval (only
/// every GiB): the clean stop flushes the destination, so FILE records
/// (nearly) all that --progress=FD had reported done before the signal.
#[test]
fn a_clean_stop_flushes_an_nbd_destination() {
    if !require("nbdkit") || nbdcpy_bin().is_none() {
        return;
    }
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("ckpt-stopflush");
    let size = 32 * MIB;
    let src = dir.file("src.img");
    write_file(&src, &pattern(size, 12));
    let ndst = dir.file("nbd.img");
    garbage(&ndst, size);
    let server = nbdkit(&dir, &["file", ndst.to_str().unwrap()]);
    let ck = dir.file("ck");
    let ckarg = format!("--checkpoint={}", ck.display());
    let uri = server.uri();
    let args = s(&[
        "-C",
        "2",
        &ckarg,
        "--checkpoint-interval=0",
        "--rate=8M",
        src.to_str().unwrap(),
        &uri,
    ]);
    let (r, w) = nix_pipe();
    let raw = w.as_raw_fd();
    let mut c = nbdcpy_cmd();
    c.arg("--progress=3").args(&args).stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    drop(w);
    let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let l2 = last.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(std::fs::File::from(r)).lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line.strip_suffix("/100").and_then(|p| p.parse().ok()) {
                l2.store(p, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(2000));
    let pct = last.load(std::sync::atomic::Ordering::SeqCst);
    signal(child.id(), libc::SIGINT);
    assert!(!child.wait().unwrap().success(), "ended before the signal");
    reader.join().unwrap();
    assert!(pct >= 10, "progress before the signal: {pct}%");
    let reported = pct * size as u64 / 100;
    let out = output_ok(nbdcpy_cmd().arg("-v").args(&args), "nbdcpy");
    let log = String::from_utf8_lossy(&out.stderr);
    let n: u64 = log
        .lines()
        .find_map(|l| l.split("resuming: ").nth(1))
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no resuming line:\n{log}"));
    eprintln!("reported {pct}% ({reported} bytes) before SIGINT; resumed {n} bytes");
    let slack = MIB as u64;
    assert!(
        n + slack >= reported,
        "resumed {n} bytes, but {pct}% ({reported} bytes) was reported done before SIGINT"
    );
    assert!(cmp(&src, &ndst));
    assert!(!ck.exists());
}

/// Every flush fails (nbdkit 1.32's error filter cannot fail flushes:
/// an eval plugin over a file whose flush fails once MARK exists): the
/// copy fails, and FILE never records work after the flushes failed; the
/// resumed copy is right.
#[test]
fn failed_flushes_are_never_recorded() {
    if !require("nbdkit") || nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-flush");
    let size = 8 * MIB;
    let src = dir.file("src.img");
    write_file(&src, &pattern(size, 5));
    let ndst = dir.file("nbd.img");
    garbage(&ndst, size);
    let mark = dir.file("mark");
    let f = ndst.display();
    let server = nbdkit(
        &dir,
        &[
            "eval",
            &format!("get_size=echo {size}"),
            &format!("pread=dd if={f} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none"),
            &format!("pwrite=dd of={f} seek=$4 conv=notrunc oflag=seek_bytes status=none"),
            "can_flush=exit 0",
            "can_multi_conn=exit 0",
            &format!(
                "flush=if [ -e {} ]; then echo 'EIO flush failed' >&2; exit 1; fi",
                mark.display()
            ),
        ],
    );
    let ck = dir.file("ck");
    let args = s(&[
        "-C",
        "2",
        &format!("--checkpoint={}", ck.display()),
        "--checkpoint-interval=0.05",
        "--rate=4M",
        src.to_str().unwrap(),
        &server.uri(),
    ]);
    // Every flush fails: nothing is ever recorded.
    write_file(&mark, b"");
    let err = run_fails(&args);
    assert!(err.contains("flush"), "{err}");
    let text = std::fs::read_to_string(&ck).unwrap();
    assert!(text.starts_with("nbdcpy-checkpoint 1\n"), "{text}");
    assert!(
        !text.contains("\ndone "),
        "a failed flush recorded work:\n{text}"
    );
    // Flushes fail from some instant on: what is recorded is what was
    // recorded before it.
    std::fs::remove_file(&mark).unwrap();
    let _ = std::fs::remove_file(&ck);
    let mut c = nbdcpy_cmd()
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let before = std::fs::read_to_string(&ck).unwrap_or_default();
    write_file(&mark, b"");
    std::thread::sleep(Duration::from_millis(150)); // flushes in flight end
    let recorded = std::fs::read_to_string(&ck).unwrap_or_default();
    assert!(!c.wait().unwrap().success());
    let after = std::fs::read_to_string(&ck).unwrap();
    let done = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("done "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        !done(&before).is_empty(),
        "nothing recorded in 0.7 s:\n{before}"
    );
    assert!(
        done(&after) == done(&recorded) || done(&after) == done(&before),
        "recorded after flushes failed:\n{recorded}\n--\n{after}"
    );
    std::fs::remove_file(&mark).unwrap();
    run_ok(&args);
    assert!(cmp(&src, &ndst));
}

/// A FILE made for another copy, damaged, or no checkpoint at all, a
/// changed source, a stream: refused, the destination unchanged.
#[test]
fn mismatches_are_refused_before_writing() {
    if nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-mismatch");
    let size = 64 * MIB;
    let src = dir.file("src.img");
    write_file(&src, &pattern(size, 9));
    let dst = dir.file("dst.img");
    let ck = dir.file("ck");
    let ckarg = format!("--checkpoint={}", ck.display());
    let (sp, dp) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let base = s(&[&ckarg, "--rate=32M", sp, dp]);
    assert!(run_and_signal(
        &base,
        Duration::from_millis(1000),
        libc::SIGINT
    ));
    let saved = std::fs::read(&ck).unwrap();
    let before = std::fs::read(&dst).unwrap();
    let unchanged = |what: &str| {
        assert!(
            std::fs::read(&dst).unwrap() == before,
            "{what}: destination changed"
        );
        assert_eq!(
            std::fs::read(&ck).unwrap(),
            saved,
            "{what}: checkpoint changed"
        );
    };
    let ranges = dir.file("ranges");
    std::fs::write(&ranges, "0 1M\n").unwrap();
    let other = dir.file("other.img");
    let other_msg = format!("destination {dp}, now {}", other.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (s(&[&ckarg, "--offset=1M", sp, dp]), "offset 0, now 1048576"),
        (s(&[&ckarg, "--length=1M", sp, dp]), "length -, now 1048576"),
        (
            s(&[&ckarg, "--destination-offset=0", sp, dp]),
            "destination offset -, now 0",
        ),
        (s(&[&ckarg, "--allocated", sp, dp]), "allocated 0, now 1"),
        (
            s(&[&ckarg, "--destination-is-zero", sp, dp]),
            "destination is zero 0, now 1",
        ),
        (s(&[&ckarg, "-S", "8192", sp, dp]), "sparse -, now 8192"),
        (
            s(&[&ckarg, &format!("--ranges={}", ranges.display()), sp, dp]),
            "ranges -, now ",
        ),
        (s(&[&ckarg, sp, other.to_str().unwrap()]), &other_msg),
    ];
    for (args, want) in &cases {
        let err = run_fails(args);
        assert!(
            err.contains(&format!(
                "checkpoint {} was made for another copy: ",
                ck.display()
            )) && err.contains(want),
            "{args:?}: {err}"
        );
        unchanged(want);
    }
    // A new destination path: refused, and not created.
    let fresh = dir.file("fresh.img");
    let err = run_fails(&s(&[&ckarg, sp, fresh.to_str().unwrap()]));
    assert!(err.contains("was made for another copy"), "{err}");
    assert!(!fresh.exists(), "refused run created {}", fresh.display());
    unchanged("new destination");
    // The source's size changed (the same path).
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.set_len(32 * MIB as u64).unwrap();
    let err = run_fails(&base);
    assert!(
        err.contains(&format!(
            "checkpoint {} was made for another copy: source size 64 MiB, now 32 MiB",
            ck.display()
        )),
        "{err}"
    );
    unchanged("source size");
    // The same size, other data: the samples see it.
    write_file(&src, &pattern(size, 10));
    let err = run_fails(&base);
    assert!(
        err.contains("the source changed since the checkpoint"),
        "{err}"
    );
    unchanged("source data");
    write_file(&src, &pattern(size, 9));
    // Damage: one byte flipped; not a checkpoint at all.
    let mut bad = saved.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    std::fs::write(&ck, &bad).unwrap();
    let err = run_fails(&base);
    assert!(err.contains("is damaged"), "{err}");
    assert!(
        std::fs::read(&dst).unwrap() == before,
        "damaged: destination changed"
    );
    std::fs::write(&ck, b"# my notes\n").unwrap();
    let err = run_fails(&base);
    assert!(err.contains("not an nbdcpy checkpoint"), "{err}");
    assert!(
        std::fs::read(&dst).unwrap() == before,
        "stranger: destination changed"
    );
    // Streams cannot resume.
    let out = nbdcpy_cmd()
        .args([&ckarg, "-", dp])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream"));
    // --blkhash: refused at the start.
    let err = run_fails(&s(&[&ckarg, "--blkhash", sp, dp]));
    assert!(
        err.contains("--checkpoint cannot be combined with --blkhash"),
        "{err}"
    );
    // The right FILE again: the copy resumes and ends right.
    std::fs::write(&ck, &saved).unwrap();
    run_ok(&s(&[&ckarg, sp, dp]));
    assert!(cmp(&src, &dst));
    assert!(!ck.exists());
}

/// Two copies with one FILE: the second is refused at once, and nothing
/// it would write changes; the first goes on and ends right.
#[test]
fn a_checkpoint_in_use_is_refused() {
    if nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-lock");
    let size = 32 * MIB;
    let src = dir.file("src.img");
    write_file(&src, &pattern(size, 11));
    let (dst, dst2) = (dir.file("dst.img"), dir.file("dst2.img"));
    let ck = dir.file("ck");
    let ckarg = format!("--checkpoint={}", ck.display());
    let (sp, dp) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let first = nbdcpy_cmd()
        .args([&ckarg, "--rate=16M", sp, dp])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ck.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ck.exists(), "the first copy made no checkpoint");
    let t = Instant::now();
    let err = run_fails(&s(&[&ckarg, sp, dst2.to_str().unwrap()]));
    assert!(t.elapsed() < Duration::from_secs(5), "not refused at once");
    assert!(
        err.contains(&format!(
            "checkpoint {} is in use by another copy",
            ck.display()
        )),
        "{err}"
    );
    assert!(!dst2.exists(), "the refused copy created its destination");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cmp(&src, &dst));
    assert!(!ck.exists());
    // The lock went with FILE; a later copy with the FILE runs.
    run_ok(&s(&[&ckarg, sp, dst2.to_str().unwrap()]));
    assert!(cmp(&src, &dst2));
}

/// A range list from a `[ CMD ]` source (nbdkit by socket activation),
/// killed and resumed: the areas are the source's, the rest of the
/// destination is left as it was.
#[test]
fn ranges_from_a_command_resume() {
    if !require("nbdkit") || nbdcpy_bin().is_none() {
        return;
    }
    let dir = TempDir::new("ckpt-ranges");
    let size = 32 * MIB;
    let src = dir.file("src.img");
    sparse_source(&src, size, 21);
    let dst = dir.file("dst.img");
    let list = dir.file("ranges");
    let areas = [
        (MIB, 5 * MIB),
        (9 * MIB, 3 * MIB + 4096),
        (20 * MIB, 10 * MIB),
    ];
    let text: String = areas.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    std::fs::write(&list, text).unwrap();
    let srcdata = std::fs::read(&src).unwrap();
    let mut want = vec![0xa5u8; size];
    for &(o, l) in &areas {
        want[o..o + l].copy_from_slice(&srcdata[o..o + l]);
    }
    let ck = dir.file("ck");
    let mut rng = Rng(seed());
    for i in 0..4 {
        garbage(&dst, size);
        let _ = std::fs::remove_file(&ck);
        let args = s(&[
            "-C",
            "2",
            &format!("--checkpoint={}", ck.display()),
            "--checkpoint-interval=0.05",
            &format!("--ranges={}", list.display()),
            "--rate=8M",
            "[",
            "nbdkit",
            "file",
            src.to_str().unwrap(),
            "]",
            dst.to_str().unwrap(),
        ]);
        let at = Duration::from_millis(100 + rng.next() % 1500);
        run_and_signal(&args, at, libc::SIGKILL);
        run_ok(&args);
        assert!(
            std::fs::read(&dst).unwrap() == want,
            "kill {i} at {at:?}: wrong bytes"
        );
        assert!(!ck.exists());
    }
}
