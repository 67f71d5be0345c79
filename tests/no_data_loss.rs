// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The command never leaves a short or wrong image behind: every source
//! kind (pipe, redirected file, regular file, NBD) into every destination
//! kind (new, larger and smaller files, a loop block device, an NBD export
//! with dirty content), for data with zeroes at the end, start, nowhere or
//! everywhere and an odd size, with each zeroing option; checked by
//! reading the destination back independently (the file, the device, or
//! the export's backing file).  Also: a file copied onto itself is refused,
//! an NBD export copied onto itself is allowed and unchanged.

use crate::common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

const MIB: usize = 1 << 20;
/// Size of the fixed-size destinations (device, export): larger than
/// every data set, so the bytes past the stream's end must survive.
const FIXED: usize = 3 * MIB;
const DIRTY: u8 = 0x5a;

/// The data sets: name and bytes.
fn datasets() -> Vec<(&'static str, Vec<u8>)> {
    let r = |n: usize, seed: u64| pattern(n, seed);
    let z = |n: usize| vec![0u8; n];
    let cat = |parts: Vec<Vec<u8>>| parts.concat();
    vec![
        ("ending-in-zeroes", cat(vec![r(MIB, 1), z(MIB)])),
        ("all-zeroes", z(2 * MIB)),
        ("zeroes-first", cat(vec![z(MIB), r(MIB, 2)])),
        ("no-zeroes", r(2 * MIB, 3)),
        (
            "odd-size",
            cat(vec![r(MIB + 333, 4), z(300_000), r(4096, 5), z(5003)]),
        ),
    ]
}

const MODES: [&[&str]; 4] = [
    &[],
    &["-S", "0"],
    &["--allocated"],
    &["--destination-is-zero"],
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Src {
    Pipe,
    Redirected,
    File,
    Nbd,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dst {
    NewFile,
    LargerFile,
    SmallerFile,
    Loop,
    Nbd,
}

/// Runs the command with `args`, feeding `stdin_data` through a pipe or
/// `stdin_file` as a redirection.
fn run(args: &[String], stdin_data: Option<&[u8]>, stdin_file: Option<&Path>) -> Output {
    let mut c = common::nbdcpy_cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match (stdin_data, stdin_file) {
        (Some(_), _) => c.stdin(Stdio::piped()),
        (None, Some(f)) => c.stdin(std::fs::File::open(f).unwrap()),
        (None, None) => c.stdin(Stdio::null()),
    };
    let mut child = c.spawn().unwrap();
    let writer = stdin_data.map(|d| {
        let mut si = child.stdin.take().unwrap();
        let d = d.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&d);
        })
    });
    let o = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    o
}

/// Every source kind and data set x every mode into one destination kind.
fn matrix(dst: Dst) {
    let Some(_) = nbdcpy_bin() else { return };
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new(&format!("noloss-{dst:?}"));
    // The fixed-size destination's backing file (served or looped).
    let backing = dir.file("fixed.img");
    write_file(&backing, &vec![DIRTY; FIXED]);
    let lo = if dst == Dst::Loop {
        match LoopDev::new(&backing) {
            Some(l) => Some(l),
            None => return,
        }
    } else {
        None
    };
    let server = (dst == Dst::Nbd).then(|| nbdkit(&dir, &["file", backing.to_str().unwrap()]));
    let mut cells = 0;
    for (dname, data) in datasets() {
        let src_file = dir.file(&format!("src-{dname}"));
        write_file(&src_file, &data);
        let src_server = nbdkit(&dir, &["-r", "file", src_file.to_str().unwrap()]);
        for src in [Src::Pipe, Src::Redirected, Src::File, Src::Nbd] {
            for mode in MODES {
                let dz = mode.contains(&"--destination-is-zero");
                let label = format!("{src:?} -> {dst:?}, {dname}, {mode:?}");
                // Prepare the destination; `expect` is what it must hold.
                let (target, expect): (String, Vec<u8>) = match dst {
                    Dst::NewFile | Dst::LargerFile | Dst::SmallerFile => {
                        let f = dir.file("out.img");
                        let _ = std::fs::remove_file(&f);
                        match dst {
                            Dst::LargerFile => write_file(&f, &vec![0xa5; FIXED]),
                            Dst::SmallerFile => write_file(&f, &vec![0xa5; 100_000]),
                            _ => {}
                        }
                        (f.to_string_lossy().into(), data.clone())
                    }
                    Dst::Loop | Dst::Nbd => {
                        // Dirty everywhere; with --destination-is-zero the
                        // user promises zeroes where the copy goes, so
                        // keep that promise there.
                        let mut fill = vec![DIRTY; FIXED];
                        if dz {
                            fill[..data.len()].fill(0);
                        }
                        let path = match &lo {
                            Some(l) => PathBuf::from(&l.0),
                            None => backing.clone(),
                        };
                        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                        f.write_all(&fill).unwrap();
                        f.sync_all().unwrap();
                        let mut expect = data.clone();
                        expect.extend_from_slice(&vec![DIRTY; FIXED - data.len()]);
                        let t = match (&lo, &server) {
                            (Some(l), _) => l.0.clone(),
                            (_, Some(s)) => s.uri(),
                            _ => unreachable!(),
                        };
                        (t, expect)
                    }
                };
                let source = match src {
                    Src::Pipe | Src::Redirected => "-".to_string(),
                    Src::File => src_file.to_string_lossy().into(),
                    Src::Nbd => src_server.uri(),
                };
                let mut args: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
                args.push(source);
                args.push(target);
                let o = run(
                    &args,
                    (src == Src::Pipe).then_some(&data[..]),
                    (src == Src::Redirected).then_some(src_file.as_path()),
                );
                assert!(
                    o.status.success(),
                    "{label}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                // Read back independently of nbdcpy.
                let got = match (dst, &lo) {
                    (Dst::Loop, Some(l)) => std::fs::read(&l.0).unwrap(),
                    (Dst::Nbd, _) => std::fs::read(&backing).unwrap(),
                    _ => std::fs::read(dir.file("out.img")).unwrap(),
                };
                assert_eq!(got.len(), expect.len(), "{label}: destination size");
                if got != expect {
                    let at = got.iter().zip(&expect).position(|(a, b)| a != b).unwrap();
                    panic!("{label}: destination differs at offset {at}");
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 5 * 4 * 4);
}

#[test]
fn into_new_file() {
    matrix(Dst::NewFile);
}

#[test]
fn into_larger_file() {
    matrix(Dst::LargerFile);
}

#[test]
fn into_smaller_file() {
    matrix(Dst::SmallerFile);
}

#[test]
fn into_loop_device() {
    matrix(Dst::Loop);
}

#[test]
fn into_dirty_nbd_export() {
    matrix(Dst::Nbd);
}

/// A stream longer than a fixed-size destination is an error that names
/// the destination; the destination's bytes past what was written stay.
#[test]
fn stream_longer_than_fixed_destination_fails() {
    let Some(_) = nbdcpy_bin() else { return };
    if !require("nbdkit") {
        return;
    }
    let dir = TempDir::new("noloss-short");
    let data = pattern(3 * MIB, 9);
    let small = dir.file("small.img");
    write_file(&small, &vec![DIRTY; MIB]);
    let srv = nbdkit(&dir, &["file", small.to_str().unwrap()]);
    let mut targets = vec![srv.uri()];
    let lo_file = dir.file("lo.img");
    write_file(&lo_file, &vec![DIRTY; MIB]);
    let lo = LoopDev::new(&lo_file);
    if let Some(l) = &lo {
        targets.push(l.0.clone());
    }
    for t in targets {
        let o = run(&["-".into(), t.clone()], Some(&data), None);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{t}: {e}");
        assert!(e.contains(&t) && e.contains("offset"), "{t}: {e}");
    }
}

/// Copying a file onto itself is refused before anything is written
/// (its truncation would destroy it): same path, hard link, symlink, `-`
/// redirected from it.
#[test]
fn file_onto_itself_is_refused() {
    let Some(_) = nbdcpy_bin() else { return };
    let dir = TempDir::new("noloss-self");
    let data = pattern(MIB + 17, 11);
    let f = dir.file("disk.img");
    write_file(&f, &data);
    let hard = dir.file("hard.img");
    std::fs::hard_link(&f, &hard).unwrap();
    let sym = dir.file("sym.img");
    std::os::unix::fs::symlink(&f, &sym).unwrap();
    let fs = f.to_string_lossy().to_string();
    let cases: Vec<(Vec<String>, bool)> = vec![
        (vec![fs.clone(), fs.clone()], false),
        (vec![fs.clone(), hard.to_string_lossy().into()], false),
        (vec![sym.to_string_lossy().into(), fs.clone()], false),
        (vec!["-".into(), fs.clone()], true),
    ];
    for (args, redirect) in cases {
        let o = run(&args, None, redirect.then_some(f.as_path()));
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("same file"), "{args:?}: {e}");
        assert_eq!(std::fs::read(&f).unwrap(), data, "{args:?}: source damaged");
    }
}

/// An NBD export copied onto itself is allowed, as nbdcopy allows it
/// (libnbd's copy-nbd-to-nbd2 test): reading and writing the same bytes
/// changes nothing, and the destination is not zeroed up front (the
/// export here is mostly zero and zeroes fast: a fast zero would
/// otherwise run first and destroy the source).  Also spelled
/// differently.
#[test]
fn nbd_export_onto_itself_is_allowed_and_unchanged() {
    let Some(_) = nbdcpy_bin() else { return };
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let dir = TempDir::new("noloss-self-nbd");
    let f = dir.file("disk.img");
    let mut data = vec![0u8; 8 * MIB];
    data[..MIB].copy_from_slice(&pattern(MIB, 12));
    data[5 * MIB..5 * MIB + 4096].copy_from_slice(&pattern(4096, 13));
    write_file(&f, &data);
    // nbdkit's memory plugin zeroes fast: a copy onto another export of
    // it would zero the destination first (the source is 87% zero).
    let srv = nbdkit(&dir, &["memory", "8M"]);
    let u = srv.uri();
    fill_export(&u, &f);
    let sock = srv.socket().to_string_lossy().to_string();
    let alias = dir.file("alias");
    std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
    let sock2 = alias.join(srv.socket().file_name().unwrap());
    for other in [
        u.clone(),
        format!("nbd+unix://?socket={sock}"),
        format!("nbd+unix:///?socket={}", sock2.display()),
    ] {
        let o = run(&["-v".into(), u.clone(), other.clone()], None, None);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{other}: {e}");
        assert!(
            !e.contains("fast zero done"),
            "{other}: zeroed up front: {e}"
        );
        assert!(
            std::fs::read(&f).unwrap() == data,
            "{other}: export changed"
        );
    }
}

/// A read buffer whose first part is a skipped zero run and whose rest is
/// data: the data's write must finish before the buffer takes the next
/// read (it once freed the slot at the zero run, and the next read
/// overwrote the data still waiting to be sent: a wrong image, exit 0).
#[test]
fn zero_run_before_data_keeps_the_buffer_until_written() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let dir = TempDir::new("noloss-slot");
    let mut data = Vec::new();
    for i in 0..256u64 {
        data.extend_from_slice(&[0u8; 4096]);
        data.extend_from_slice(&pattern(61440, i + 1));
    }
    let src = dir.file("src.img");
    write_file(&src, &data);
    for rs in ["64k", "256k", "1M"] {
        for splice in ["0", "1"] {
            let srv = nbdkit(&dir, &["memory", "16M"]);
            copy(
                src.to_str().unwrap(),
                &srv.uri(),
                &[
                    ("destination-is-zero", "1"),
                    ("request-size", rs),
                    ("splice", splice),
                ],
            )
            .unwrap_or_else(|e| panic!("request-size {rs} splice {splice}: {e}"));
            let got = read_export(&srv.uri(), &dir);
            assert!(
                got[..data.len()] == data[..],
                "request-size {rs} splice {splice}: destination differs"
            );
        }
    }
}
