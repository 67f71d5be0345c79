// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Servers that enforce their block-size constraints (nbdkit's
//! blocksize-policy filter with errors, qemu's compress driver, a loop
//! device with 4 KiB sectors) get only aligned requests, on both sides and
//! every data path; an explicit request size reaches the server whole.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// A source with data and holes at 512-byte and 4 KiB granularity.
fn sparse_source(dir: &TempDir, size: usize) -> (PathBuf, Vec<u8>) {
    let mut v = pattern(size, 77);
    // Holes of odd sizes at odd 512-byte offsets, and whole 4 KiB ones.
    let mut at = 512;
    let mut n = 0;
    while at + 70_000 < size {
        let len = [512, 1536, 4096, 8192, 65536 + 512][n % 5];
        v[at..at + len].fill(0);
        at += len + [3584, 512, 61440, 1024, 131072][n % 5];
        n += 1;
    }
    let p = dir.file("sparse-src.img");
    write_file(&p, &v);
    // Make the zero ranges real holes, so the server's extents show them.
    let o = Command::new("fallocate").arg("-d").arg(&p).status();
    assert!(o.is_ok());
    (p, v)
}

/// nbdkit serving `file` with blocksize-policy errors for requests not
/// aligned to `min` or larger than `max`.
fn strict_nbdkit(dir: &TempDir, file: &Path, min: u32, max: u32, ro: bool) -> Server {
    let mut args: Vec<String> = vec![];
    if ro {
        args.push("-r".into());
    }
    args.extend([
        "--filter=blocksize-policy".into(),
        "file".into(),
        file.to_string_lossy().into(),
        format!("blocksize-minimum={min}"),
        format!("blocksize-preferred={}", min.max(4096)),
        format!("blocksize-maximum={max}"),
        "blocksize-error-policy=error".into(),
    ]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    nbdkit(dir, &a)
}

#[test]
fn strict_destination_every_path() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-dst");
    // Not a multiple of the request size, but of every minimum (a
    // server with a minimum serves whole blocks).
    let size = 8 * MIB + 3 * 65536;
    let (src, data) = sparse_source(&dir, size);
    let plain = nbdkit(&dir, &["-r", "file", src.to_str().unwrap()]);
    for (min, max) in [(512, 32 << 20), (4096, 1 << 20), (65536, 3 * 65536)] {
        for source in [src.to_string_lossy().to_string(), plain.uri()] {
            for splice in ["0", "1", "auto"] {
                for conns in ["1", "4"] {
                    let label =
                        format!("min {min} max {max} from {source} splice {splice} -C {conns}");
                    let out = dir.file("dst.img");
                    write_file(&out, &vec![0xee; size]);
                    let d = strict_nbdkit(&dir, &out, min, max, false);
                    copy(
                        &source,
                        &d.uri(),
                        &[("splice", splice), ("connections", conns)],
                    )
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                    drop(d);
                    assert!(std::fs::read(&out).unwrap() == data, "{label}: differs");
                }
            }
        }
    }
}

#[test]
fn strict_source_and_both_sides() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-src");
    let size = 6 * MIB + 65536;
    let (src, data) = sparse_source(&dir, size);
    for (smin, dmin) in [(4096, 1), (65536, 512), (512, 65536), (4096, 4096)] {
        for splice in ["0", "auto"] {
            let label = format!("source min {smin}, destination min {dmin}, splice {splice}");
            let s = strict_nbdkit(&dir, &src, smin, 32 << 20, true);
            let out = dir.file("dst.img");
            write_file(&out, &vec![0x11; size]);
            let d = if dmin > 1 {
                strict_nbdkit(&dir, &out, dmin, 32 << 20, false)
            } else {
                nbdkit(&dir, &["file", out.to_str().unwrap()])
            };
            copy(&s.uri(), &d.uri(), &[("splice", splice)])
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            drop(d);
            assert!(std::fs::read(&out).unwrap() == data, "{label}: differs");
            // NBD -> file and -> null: read aligned too.
            let f = dir.file("to-file.img");
            copy(&s.uri(), f.to_str().unwrap(), &[("splice", splice)])
                .unwrap_or_else(|e| panic!("{label} -> file: {e}"));
            assert!(std::fs::read(&f).unwrap() == data, "{label} -> file");
            copy(&s.uri(), "null:", &[("splice", splice)])
                .unwrap_or_else(|e| panic!("{label} -> null: {e}"));
        }
    }
}

/// A stream into a server with a 64 KiB minimum: whole requests.
#[test]
fn stream_into_strict_destination() {
    let Some(_) = nbdcpy_bin() else { return };
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-stream");
    let size = 3 * MIB + 65536;
    let (src, data) = sparse_source(&dir, size);
    let out = dir.file("dst.img");
    write_file(&out, &vec![0x22; size]);
    let d = strict_nbdkit(&dir, &out, 65536, 32 << 20, false);
    let o = common::nbdcpy_cmd()
        .arg("-")
        .arg(d.uri())
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(d);
    assert!(std::fs::read(&out).unwrap() == data, "differs");
}

/// qemu's compress driver: 64 KiB minimum, each cluster written once.
#[test]
fn compressed_qcow2_output() {
    if !require("qemu-nbd") || !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let dir = TempDir::new("bs-compress");
    let (src, _) = sparse_source(&dir, 16 * MIB);
    let q = dir.file("out.qcow2");
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("16M")
        .status()
        .unwrap();
    assert!(o.success());
    let opts = format!(
        "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename={}",
        q.display()
    );
    let srv = qemu_nbd(&dir, Path::new(&opts), &["--image-opts"]);
    copy(src.to_str().unwrap(), &srv.uri(), &[]).unwrap_or_else(|e| panic!("from a file: {e}"));
    drop(srv);
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&src)
        .arg(&q)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // From an NBD source too, over a fresh image.
    let q2 = dir.file("out2.qcow2");
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q2)
        .arg("16M")
        .status()
        .unwrap();
    let opts2 = opts.replace(q.to_str().unwrap(), q2.to_str().unwrap());
    let s = nbdkit(&dir, &["-r", "file", src.to_str().unwrap()]);
    let srv = qemu_nbd(&dir, Path::new(&opts2), &["--image-opts"]);
    copy(&s.uri(), &srv.uri(), &[]).unwrap_or_else(|e| panic!("from NBD: {e}"));
    drop(srv);
    assert!(qemu_img_compare_fmt(&src, "raw", &q2, "qcow2"));
}

fn qemu_img_compare_fmt(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// A loop device with 4 KiB logical sectors as the destination.
#[test]
fn loop_device_with_4k_sectors() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-loop");
    let size = 4 * MIB;
    let (src, data) = sparse_source(&dir, size);
    let backing = dir.file("loop.img");
    write_file(&backing, &vec![0x33; size]);
    let o = Command::new("losetup")
        .args(["-f", "--show", "--sector-size", "4096"])
        .arg(&backing)
        .output();
    let dev = match o {
        Ok(o) if o.status.success() => LoopDev(String::from_utf8_lossy(&o.stdout).trim().into()),
        _ => {
            eprintln!("SKIP: losetup --sector-size 4096 does not work here");
            return;
        }
    };
    let s = nbdkit(&dir, &["-r", "file", src.to_str().unwrap()]);
    for source in [src.to_string_lossy().to_string(), s.uri()] {
        for opts in [vec![], vec![("allocated", "1")]] {
            copy(&source, &dev.0, &opts).unwrap_or_else(|e| panic!("{source} {opts:?}: {e}"));
            assert!(
                std::fs::read(&dev.0).unwrap() == data,
                "{source} {opts:?}: differs"
            );
        }
    }
}

/// --request-size is what the server receives, on every data path.
#[test]
fn explicit_request_size_reaches_the_server() {
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-rs");
    for (rs, bytes) in [("32M", 32u64 << 20), ("4M", 4 << 20), ("64k", 64 << 10)] {
        for splice in ["auto", "0", "1"] {
            let log = dir.file(&format!("log-{rs}-{splice}"));
            let d = nbdkit(
                &dir,
                &[
                    "--filter=log",
                    "memory",
                    "128M",
                    &format!("logfile={}", log.display()),
                ],
            );
            let s = nbdkit(&dir, &["pattern", "128M"]);
            copy(
                &s.uri(),
                &d.uri(),
                &[("request-size", rs), ("splice", splice)],
            )
            .unwrap_or_else(|e| panic!("{rs} {splice}: {e}"));
            drop(d);
            let text = std::fs::read_to_string(&log).unwrap();
            let counts: Vec<u64> = text
                .lines()
                .filter(|l| l.contains("Write id="))
                .filter_map(|l| {
                    let c = l.split("count=").nth(1)?.split_whitespace().next()?;
                    u64::from_str_radix(c.trim_start_matches("0x"), 16).ok()
                })
                .collect();
            assert_eq!(
                counts.len() as u64,
                (128 << 20) / bytes,
                "{rs} {splice}: {counts:?}"
            );
            assert!(
                counts.iter().all(|&c| c == bytes),
                "{rs} {splice}: {counts:?}"
            );
        }
    }
}

/// READs to a server with DF come back in one chunk: nothing is assembled
/// (copied) for a destination that needs whole blocks, even from a sparse
/// qemu-nbd source that would otherwise send holes as separate chunks.
#[test]
fn reads_with_df_need_no_assembly() {
    if !require("qemu-nbd") || !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("bs-df");
    let (src, data) = sparse_source(&dir, 4 * MIB);
    let s = qemu_nbd(&dir, &src, &["-r"]);
    let out = dir.file("dst.img");
    write_file(&out, &vec![0x44; 4 * MIB]);
    let d = strict_nbdkit(&dir, &out, 65536, 32 << 20, false);
    let st = copy(&s.uri(), &d.uri(), &[]).unwrap();
    drop(d);
    assert!(std::fs::read(&out).unwrap() == data, "differs");
    assert!(st.memcpy < 4096, "{} bytes assembled", st.memcpy);
}
