// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Local copies through the library: regular files of awkward sizes,
//! many lanes and tiny requests, streams and null:.  Verified with `cmp`.

use crate::common;

use nbdcpy::testing::Spec;
use nbdcpy::Job;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nbdcpy-local-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn random_file(p: &Path, size: usize, seed: u64) {
    common::write_file(p, &common::pattern(size, seed));
}

fn cmp(a: &Path, b: &Path) {
    let st = Command::new("cmp").arg(a).arg(b).status().unwrap();
    assert!(st.success(), "cmp {} {} differ", a.display(), b.display());
}

fn copy(src: &str, dst: &str, opts: &[(&str, &str)]) -> nbdcpy::Result<()> {
    let mut cfg = common::config();
    for (k, v) in opts {
        cfg.set(k, Some(v)).unwrap();
    }
    let mut job = Job::open(Spec::parse(src), Spec::parse(dst), cfg)?;
    job.run(Duration::from_millis(100), &mut |_| true)
}

#[test]
fn odd_sizes_file_to_file() {
    let d = tmpdir("odd");
    for (i, size) in [
        0usize,
        1,
        511,
        4097,
        262_143,
        262_145,
        3 << 20,
        (5 << 20) + 7,
    ]
    .into_iter()
    .enumerate()
    {
        let s = d.join(format!("s{i}"));
        let t = d.join(format!("t{i}"));
        random_file(&s, size, i as u64);
        // The destination held older, larger data: it must end up equal.
        random_file(&t, size + 12345, 99);
        copy(s.to_str().unwrap(), t.to_str().unwrap(), &[]).unwrap();
        cmp(&s, &t);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn many_lanes_small_requests() {
    let d = tmpdir("lanes");
    let s = d.join("s");
    let t = d.join("t");
    random_file(&s, (7 << 20) + 333, 7);
    copy(
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        &[
            ("request-size", "4k"),
            ("requests", "3"),
            ("threads", "4"),
            ("connections", "4"),
        ],
    )
    .unwrap();
    cmp(&s, &t);
    copy(
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        &[("synchronous", "1"), ("flush", "1")],
    )
    .unwrap();
    cmp(&s, &t);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn fifo_source_is_streamed_in_order() {
    let d = tmpdir("fifo");
    let s = d.join("s");
    let f = d.join("fifo");
    let t = d.join("t");
    random_file(&s, (3 << 20) + 17, 3);
    assert!(Command::new("mkfifo").arg(&f).status().unwrap().success());
    // A writer that delivers the data in small, irregular pieces.
    let (s2, f2) = (s.clone(), f.clone());
    let w = std::thread::spawn(move || {
        use std::io::Write;
        let data = std::fs::read(&s2).unwrap();
        let mut out = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
        let mut i = 0;
        let mut step = 1;
        while i < data.len() {
            let n = step.min(data.len() - i);
            out.write_all(&data[i..i + n]).unwrap();
            i += n;
            step = (step * 7 + 3) % 100_000 + 1;
        }
    });
    copy(f.to_str().unwrap(), t.to_str().unwrap(), &[]).unwrap();
    w.join().unwrap();
    cmp(&s, &t);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn errors_name_the_endpoint() {
    let d = tmpdir("err");
    let e = copy(d.join("nope").to_str().unwrap(), "null:", &[])
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::ENOENT);
    assert!(
        e.msg.contains("source") && e.msg.contains("nope"),
        "{}",
        e.msg
    );
    let e = copy("null:", "null:", &[]).err().unwrap();
    assert_eq!(e.errno, libc::EINVAL);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Allocated bytes of a file (st_blocks * 512).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn holes_stay_holes_unless_allocated() {
    let d = tmpdir("alloc");
    let s = d.join("s");
    // 64 MiB with 1 MiB of data at an odd offset and 4 MiB of explicit
    // zeroes (allocated in the source, detected as zero blocks).
    let f = std::fs::File::create(&s).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    f.write_all_at(&data, (10 << 20) + 12345).unwrap();
    f.write_all_at(&vec![0u8; 4 << 20], 40 << 20).unwrap();
    f.sync_all().unwrap();
    let t = d.join("t");
    copy(s.to_str().unwrap(), t.to_str().unwrap(), &[]).unwrap();
    cmp(&s, &t);
    assert!(
        allocated(&t) <= 4 << 20,
        "default keeps holes: {} allocated",
        allocated(&t)
    );
    let a = d.join("a");
    copy(
        s.to_str().unwrap(),
        a.to_str().unwrap(),
        &[("allocated", "1")],
    )
    .unwrap();
    cmp(&s, &a);
    assert!(
        allocated(&a) >= 64 << 20,
        "--allocated leaves no holes: {} allocated",
        allocated(&a)
    );
    // -S 0 and --no-extents still give a correct copy.
    let n = d.join("n");
    copy(
        s.to_str().unwrap(),
        n.to_str().unwrap(),
        &[("sparse", "0"), ("no-extents", "1")],
    )
    .unwrap();
    cmp(&s, &n);
    std::fs::remove_dir_all(&d).unwrap();
}
