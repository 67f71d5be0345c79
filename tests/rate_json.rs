// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! `--rate=SIZE` (measured against real servers, progress included) and
//! `--json[=FD]` (parsed by Python's json module, success and failures).

use crate::common;

use common::{nbdkit, qemu_nbd, require, write_file, TempDir};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn nbdcpy(args: &[&str]) -> Option<Output> {
    common::nbdcpy_bin()?;
    Some(common::nbdcpy_cmd().args(args).output().unwrap())
}

/// Parses one JSON document with Python's json module (an independent
/// parser) and returns each top-level key with its value re-encoded by
/// json.dumps.  Panics when it is not exactly one JSON object.
fn parse_json(text: &[u8]) -> HashMap<String, String> {
    let mut p = Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             d = json.loads(sys.stdin.buffer.read().decode('utf-8'))\n\
             assert isinstance(d, dict), 'not an object'\n\
             for k, v in d.items():\n    print(k + '\\t' + json.dumps(v))\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    p.stdin.take().unwrap().write_all(text).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "not one JSON object: {}\n{}",
        String::from_utf8_lossy(text),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn num(j: &HashMap<String, String>, k: &str) -> f64 {
    j.get(k)
        .unwrap_or_else(|| panic!("no {k} in {j:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number: {j:?}"))
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

/// The fields nbdcpy(1) documents, always present.
const FIELDS: &[&str] = &[
    "success",
    "source",
    "destination",
    "size",
    "size_known",
    "bytes_done",
    "bytes_copied",
    "bytes_zeroed",
    "bytes_skipped",
    "elapsed_seconds",
    "average_rate",
    "requests",
    "connections",
    "reconnects",
    "retried_requests",
    "blkhash",
    "error",
    "errno",
    "errno_name",
    "endpoint",
];

fn all_fields(j: &HashMap<String, String>) {
    for f in FIELDS {
        assert!(j.contains_key(*f), "field {f} missing: {j:?}");
    }
}

#[test]
fn json_on_success() {
    if !require("python3") {
        return;
    }
    let d = TempDir::new("json-ok");
    let (src, dst) = (d.file("src.img"), d.file("dst.img"));
    let mut img = data(3 << 20, 1);
    img[1 << 20..2 << 20].fill(0); // a zero MiB: zeroed or skipped
    write_file(&src, &img);
    let (s, t) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let Some(o) = nbdcpy(&["--json", s, t]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&dst).unwrap(), img);
    assert_eq!(o.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
    let j = parse_json(&o.stdout);
    all_fields(&j);
    assert_eq!(j["success"], "true");
    assert_eq!(j["source"], format!("\"{s}\""));
    assert_eq!(j["destination"], format!("\"{t}\""));
    assert_eq!(num(&j, "size"), (3 << 20) as f64);
    assert_eq!(j["size_known"], "true");
    assert_eq!(num(&j, "bytes_done"), (3 << 20) as f64);
    let parts = num(&j, "bytes_copied") + num(&j, "bytes_zeroed") + num(&j, "bytes_skipped");
    assert_eq!(parts, (3 << 20) as f64, "{j:?}");
    assert!(num(&j, "bytes_copied") >= (2 << 20) as f64);
    assert!(num(&j, "elapsed_seconds") > 0.0);
    let rate = num(&j, "average_rate");
    let want = num(&j, "bytes_done") / num(&j, "elapsed_seconds");
    assert!((rate - want).abs() <= want * 0.01 + 1.0, "{rate} vs {want}");
    assert!(num(&j, "requests") >= 1.0);
    assert_eq!(num(&j, "reconnects"), 0.0);
    assert_eq!(num(&j, "retried_requests"), 0.0);
    assert_eq!(j["blkhash"], "null");
    assert_eq!(j["error"], "null");
    assert_eq!(num(&j, "errno"), 0.0);
    assert_eq!(j["errno_name"], "null");
    assert_eq!(j["endpoint"], "null");
}

/// --json=FD: on that descriptor, nothing on stdout; a server command is
/// reported as the user wrote it; odd file names stay valid JSON.
#[test]
fn json_on_fd_and_odd_names() {
    if !require("python3") {
        return;
    }
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("json-fd");
    let name = "dst \"quoted\"\\ \t\u{e9}\n.img";
    let dst = d.file(name);
    let out = d.file("result.json");
    let Some(bin) = common::nbdcpy_bin() else {
        return;
    };
    let engine = common::engine_args().join(" ");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"exec "$0" {engine} --json=3 -- [ nbdkit pattern 1M ] "$1" 3>"$2""#
        ))
        .arg(&bin)
        .arg(&dst)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "stdout: {:?}", o.stdout);
    let j = parse_json(&std::fs::read(&out).unwrap());
    all_fields(&j);
    assert_eq!(j["success"], "true");
    assert_eq!(j["source"], "\"[ nbdkit pattern 1M ]\"");
    let want = format!("{}/{name}", d.path().display());
    let got: String = Command::new("python3")
        .args([
            "-c",
            "import json,sys; sys.stdout.write(json.loads(sys.argv[1]))",
        ])
        .arg(&j["destination"])
        .output()
        .map(|o| String::from_utf8(o.stdout).unwrap())
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(num(&j, "size"), (1 << 20) as f64);

    // Not valid UTF-8 (which the library refuses as a name): replaced in
    // the result, which stays valid JSON.
    use std::os::unix::ffi::OsStrExt;
    let bad = d
        .path()
        .join(std::ffi::OsStr::from_bytes(b"bad-\xff\xc3.img"));
    let o = common::nbdcpy_cmd()
        .arg("--json")
        .arg("--")
        .args(["[", "nbdkit", "pattern", "64k", "]"])
        .arg(&bad)
        .output()
        .unwrap();
    let j = parse_json(&o.stdout);
    assert!(j["destination"].contains("bad-\\ufffd\\ufffd.img"), "{j:?}");
    assert_eq!(o.status.success(), j["success"] == "true");

    // --json on stdout when stdout is the destination: refused.
    let o = nbdcpy(&["--json", "--", "[", "nbdkit", "pattern", "64k", "]", "-"]).unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--json=FD"));
}

/// Failures: the message, errno and endpoint, from the open and from a
/// copy that fails half way.
#[test]
fn json_on_failure() {
    if !require("python3") {
        return;
    }
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("json-fail");
    let src = d.file("src.img");
    write_file(&src, &data(2 << 20, 2));
    let s = src.to_str().unwrap();

    // Destination too small: found at open.
    let small = nbdkit(&d, &["memory", "1M"]);
    let Some(o) = nbdcpy(&["--json", s, &small.uri()]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(1));
    let j = parse_json(&o.stdout);
    all_fields(&j);
    assert_eq!(j["success"], "false");
    assert_eq!(num(&j, "errno"), libc::ENOSPC as f64);
    assert_eq!(j["errno_name"], "\"ENOSPC\"");
    assert_eq!(j["endpoint"], "\"destination\"");
    assert!(j["error"].contains("smaller than source"), "{j:?}");
    assert_eq!(num(&j, "bytes_done"), 0.0);

    // No server: the source.
    let gone = format!("nbd+unix:///?socket={}", d.file("none.sock").display());
    let o = nbdcpy(&["--json", &gone, "null:"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let j = parse_json(&o.stdout);
    all_fields(&j);
    assert_eq!(num(&j, "errno"), libc::ENOENT as f64);
    assert_eq!(j["endpoint"], "\"source\"");
    assert!(j["error"].contains("none.sock"));

    // A source whose reads all fail: EIO from the source, with the
    // offset, and the counters of what was done.
    let bad = nbdkit(
        &d,
        &[
            "--filter=error",
            "pattern",
            "4M",
            "error=EIO",
            "error-pread-rate=1",
        ],
    );
    let o = nbdcpy(&["--json", "--no-extents", &bad.uri(), "null:"]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let j = parse_json(&o.stdout);
    all_fields(&j);
    assert_eq!(j["success"], "false");
    assert_eq!(num(&j, "errno"), libc::EIO as f64, "{j:?}");
    assert_eq!(j["endpoint"], "\"source\"");
    assert!(j["error"].contains("offset"), "{j:?}");
    assert_eq!(num(&j, "size"), (4 << 20) as f64);
    assert!(num(&j, "bytes_done") < (4 << 20) as f64);
}

/// One limited copy: (seconds, bytes per second seen by the JSON result,
/// the progress lines).
fn limited_copy(args: &[&str]) -> (f64, f64, String) {
    let t0 = Instant::now();
    let o = nbdcpy(args).unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = parse_json(&o.stdout);
    let secs = num(&j, "elapsed_seconds");
    assert!(secs <= wall);
    (
        secs,
        num(&j, "bytes_done") / secs,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// --rate across 4 connections of a multi-conn qemu-nbd source into a
/// file: within 10% of the limit over about 4 seconds, the copy intact,
/// and the progress lines' rate and ETA follow the limit.  Never faster;
/// slower only if the machine is too busy, so a slow run is retried.
#[test]
fn rate_limits_nbd_source() {
    if !require("python3") {
        return;
    }
    if !require("qemu-nbd") {
        return;
    }
    let d = TempDir::new("rate-nbd");
    let (src, dst) = (d.file("src.img"), d.file("dst.img"));
    let img = data(40 << 20, 3);
    write_file(&src, &img);
    let srv = qemu_nbd(&d, &src, &["-r"]);
    let uri = srv.uri();
    let limit = 10.0 * (1 << 20) as f64;
    let mut rates = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_file(&dst);
        let Some(_) = common::nbdcpy_bin() else {
            return;
        };
        let (secs, rate, progress) = limited_copy(&[
            "--rate=10M",
            "--json",
            "-C",
            "4",
            "-p",
            &uri,
            dst.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(&dst).unwrap(), img, "copy differs");
        eprintln!(
            "10M/s limit: {secs:.2} s, {:.2} MiB/s",
            rate / (1 << 20) as f64
        );
        assert!(rate <= limit * 1.10, "faster than the limit: {rate}");
        // Progress: "G NNN% [***---] DONE RATE/s ETA mm:ss" pieces ending
        // in \r; the rate shown is the limit's once it settles, and the
        // ETA counts down from it.
        let lines: Vec<&str> = progress
            .split(['\r', '\n'])
            .filter(|l| l.contains("ETA"))
            .collect();
        assert!(lines.len() >= 2, "progress: {progress}");
        let mid = lines[lines.len() / 2];
        let shown: f64 = mid
            .split_once("] ")
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("progress line {mid}"));
        assert!(mid.contains("MiB/s"), "{mid}");
        assert!(shown <= 11.0, "progress shows {shown} MiB/s: {mid}");
        rates.push(rate);
        if rate >= limit * 0.90 {
            assert!(shown >= 9.0, "progress shows {shown} MiB/s: {mid}");
            return;
        }
    }
    panic!("never within 10% of the limit: {rates:?} vs {limit}");
}

/// The config key through --set, on a local file source: the same bound.
#[test]
fn rate_config_key() {
    if !require("python3") {
        return;
    }
    let d = TempDir::new("rate-key");
    let src = d.file("src.img");
    write_file(&src, &data(24 << 20, 4));
    let s = src.to_str().unwrap();
    if common::nbdcpy_bin().is_none() {
        return;
    }
    let limit = 8.0 * (1 << 20) as f64;
    let mut rates = Vec::new();
    for _ in 0..5 {
        let (_, rate, _) = limited_copy(&["--set=rate=8M", "--json", s, "null:"]);
        assert!(rate <= limit * 1.10, "faster than the limit: {rate}");
        rates.push(rate);
        if rate >= limit * 0.90 {
            return;
        }
    }
    panic!("never within 10% of the limit: {rates:?} vs {limit}");
}
