// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! nbdcpy as a drop-in for nbdcopy: the same arguments given to both
//! (libnbd's nbdcopy is the reference) must give the same exit status and
//! the same destination contents.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `prog` with `args`: libnbd's nbdcopy, or ours (nbdcpy_cmd(), on the
/// suite's engine).
fn run(prog: &Path, args: &[String]) -> Output {
    let mut c = if prog.file_name().is_some_and(|n| n == "nbdcopy") {
        Command::new(prog)
    } else {
        nbdcpy_cmd()
    };
    c.args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn same_results_as_nbdcopy_for_every_option() {
    let Some(ours) = common::nbdcpy_bin() else {
        return;
    };
    if !require("nbdcopy") || !require("nbdkit") {
        return;
    }
    let theirs = Path::new("/usr/bin/nbdcopy");
    let d = TempDir::new("dropin");
    let src = d.file("src");
    let mut data = pattern(3 << 20, 1);
    data[1 << 20..2 << 20].fill(0);
    write_file(&src, &data);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let options: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--allocated"],
        vec!["-C", "2"],
        vec!["--connections=1"],
        vec!["--destination-is-zero"],
        vec!["--target-is-zero"],
        vec!["--flush"],
        vec!["--no-extents"],
        vec!["--queue-size=1048576"],
        vec!["--request-size=65536"],
        vec!["-R", "4"],
        vec!["--requests=8"],
        vec!["-S", "0"],
        vec!["--sparse=8192"],
        vec!["--synchronous"],
        vec!["-T", "1"],
        vec!["--threads=2"],
    ];
    for opts in &options {
        for (kind, make_dst) in [("file", 0), ("nbd", 1)] {
            let mut outs = Vec::new();
            for prog in [theirs, ours.as_path()] {
                let srv;
                let (dst, readback): (String, Box<dyn Fn() -> Vec<u8>>) = if make_dst == 0 {
                    let p = d.file("dst");
                    let _ = std::fs::remove_file(&p);
                    let p2 = p.clone();
                    (
                        s(&p),
                        Box::new(move || std::fs::read(&p2).unwrap_or_default()),
                    )
                } else {
                    srv = nbdkit(&d, &["memory", "3M"]);
                    let u = srv.uri();
                    let dd = &d;
                    (u.clone(), Box::new(move || read_export(&u, dd)))
                };
                let mut args: Vec<String> = opts.iter().map(|x| x.to_string()).collect();
                args.push(s(&src));
                args.push(dst);
                let o = run(prog, &args);
                outs.push((
                    o.status.code(),
                    readback(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                ));
            }
            assert_eq!(
                outs[0].0, outs[1].0,
                "{opts:?} -> {kind}: exit status differs: {} / {}",
                outs[0].2, outs[1].2
            );
            assert!(
                outs[0].1 == outs[1].1,
                "{opts:?} -> {kind}: contents differ"
            );
            assert!(outs[1].1 == data, "{opts:?} -> {kind}: copy wrong");
        }
    }
}

#[test]
fn same_failures_as_nbdcopy() {
    let Some(ours) = common::nbdcpy_bin() else {
        return;
    };
    if !require("nbdcopy") {
        return;
    }
    let d = TempDir::new("dropin-bad");
    let src = d.file("src");
    write_file(&src, &pattern(4096, 2));
    let s = src.to_string_lossy().into_owned();
    for args in [
        vec![],
        vec![s.clone()],
        vec!["--bogus".to_string(), s.clone(), "null:".into()],
        vec![s.clone(), "null:".into(), "extra".into()],
        vec!["/nonexistent/x".into(), "null:".into()],
        vec!["null:".into(), "null:".into()],
        vec!["-R".into(), "x".into(), s.clone(), "null:".into()],
        vec![
            "--request-size=1000000000".into(),
            s.clone(),
            "null:".into(),
        ],
        vec![
            "--".into(),
            "[".into(),
            "nbdkit".into(),
            s.clone(),
            "null:".into(),
        ],
    ] {
        let a = run(Path::new("/usr/bin/nbdcopy"), &args);
        let b = run(&ours, &args);
        let ok = |o: &Output| o.status.success();
        assert_eq!(
            ok(&a),
            ok(&b),
            "{args:?}: nbdcopy {:?} vs nbdcpy {:?}: {}",
            a.status,
            b.status,
            String::from_utf8_lossy(&b.stderr)
        );
        if !ok(&b) {
            assert!(
                String::from_utf8_lossy(&b.stderr).starts_with("nbdcpy: ")
                    || String::from_utf8_lossy(&b.stderr).contains("Usage")
                    || String::from_utf8_lossy(&b.stderr).contains("SOURCE DESTINATION"),
                "{args:?}: {}",
                String::from_utf8_lossy(&b.stderr)
            );
        }
    }
}

#[test]
fn stdout_streams_like_nbdcopy() {
    let Some(ours) = common::nbdcpy_bin() else {
        return;
    };
    if !require("nbdcopy") || !require("nbdkit") {
        return;
    }
    let d = TempDir::new("dropin-stdout");
    let m = nbdkit(&d, &["pattern", "2M"]);
    let a = run(Path::new("/usr/bin/nbdcopy"), &[m.uri(), "-".into()]);
    let b = run(&ours, &[m.uri(), "-".into()]);
    assert!(a.status.success() && b.status.success());
    assert!(a.stdout == b.stdout && a.stdout.len() == 2 << 20);
}
