// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Copies through real NBD servers (qemu-nbd with extended headers, nbdkit
//! with structured replies and with --no-sr, nbd-server with simple
//! replies), as source and destination, verified by independent readers.

use crate::common;
use common::*;

const MIB: usize = 1 << 20;

fn have_all() -> bool {
    require("nbdkit") & require("qemu-nbd") & require("nbd-server") & require("qemu-img")
}

#[test]
fn each_server_as_source() {
    if !have_all() {
        return;
    }
    let d = TempDir::new("src");
    // qemu-nbd and nbd-server round file sizes to 512; odd sizes are
    // tested with nbdkit memory below.
    let size = 5 * MIB + 512 * 3;
    let mut data = pattern(size, 1);
    data[MIB..2 * MIB].fill(0); // a zero run to exercise sparse paths
    let img = d.file("img");
    write_file(&img, &data);
    for kind in KINDS {
        let s = serve(kind, &d, &img);
        let out = d.file("out");
        let st = copy(&s.uri(), out.to_str().unwrap(), &[])
            .unwrap_or_else(|e| panic!("{kind} -> file: {e}"));
        assert!(cmp(&img, &out), "{kind} -> file differs");
        assert_eq!(st.done, size as u64, "{kind}");
        // -> null: and with tiny requests
        copy(
            &s.uri(),
            "null:",
            &[("request-size", "4k"), ("requests", "7")],
        )
        .unwrap_or_else(|e| panic!("{kind} -> null: {e}"));
    }
}

#[test]
fn each_server_as_destination() {
    if !have_all() {
        return;
    }
    let d = TempDir::new("dst");
    let size = 3 * MIB + 512 * 5; // nbd-server and qemu need 512-aligned files
    let mut data = pattern(size, 2);
    data[100_000..400_000].fill(0);
    let src = d.file("src");
    write_file(&src, &data);
    for kind in KINDS {
        let img = d.file("img");
        // The destination held other data that must be overwritten,
        // including where the source has zeroes.
        write_file(&img, &pattern(size, 99));
        let s = serve(kind, &d, &img);
        copy(src.to_str().unwrap(), &s.uri(), &[])
            .unwrap_or_else(|e| panic!("file -> {kind}: {e}"));
        let back = read_export(&s.uri(), &d);
        assert!(back == data, "file -> {kind}: readback differs");
        drop(s);
        assert!(cmp(&src, &img), "file -> {kind}: image differs");
    }
}

#[test]
fn nbd_to_nbd_every_pair_zero_copy() {
    if !have_all() {
        return;
    }
    let d = TempDir::new("pairs");
    let size = 4 * MIB + 512;
    let data = pattern(size, 3);
    let a = d.file("a");
    write_file(&a, &data);
    for sk in KINDS {
        for dk in KINDS {
            let b = d.file("b");
            write_file(&b, &vec![0xEEu8; size]);
            // Default (unix sockets: splice) and the receive-buffer path.
            for splice in ["auto", "0"] {
                write_file(&b, &vec![0xEEu8; size]);
                let s = serve(sk, &d, &a);
                let t = serve(dk, &d, &b);
                let st = copy(&s.uri(), &t.uri(), &[("splice", splice)])
                    .unwrap_or_else(|e| panic!("{sk} -> {dk} splice={splice}: {e}"));
                drop(s);
                drop(t);
                assert!(cmp(&a, &b), "{sk} -> {dk} splice={splice}: differs");
                assert_eq!(st.copied, size as u64, "{sk} -> {dk} splice={splice}");
                if splice == "auto" {
                    // Every payload byte went socket -> pipe -> socket.
                    assert_eq!(st.spliced, st.copied, "{sk} -> {dk}: spliced");
                    assert_eq!(st.memcpy, 0, "{sk} -> {dk}: memcpy with splice");
                } else {
                    // Payload is forwarded from the receive buffer: only
                    // headers that straddle a buffer end may be moved.
                    assert_eq!(st.spliced, 0);
                    assert!(
                        st.memcpy < (size as u64) / 100,
                        "{sk} -> {dk}: {} bytes memcpy",
                        st.memcpy
                    );
                }
            }
        }
    }
}

/// The splice path finds zero blocks inside data extents (through a tee'd
/// copy), from NBD and file sources, like the receive path, and copies
/// the same bytes.
#[test]
fn splice_detects_zeroes_in_data() {
    if !have_all() {
        return;
    }
    let d = TempDir::new("splice-zero");
    let size = 8 * MIB;
    // Fully allocated source with zero runs inside: block status says
    // data everywhere, so only zero detection can find them.
    let mut data = pattern(size, 11);
    for (off, len) in [
        (0usize, 4096usize),
        (65536, 65536),
        (MIB + 4096, 3 * 4096),
        (5 * MIB, MIB),
    ] {
        data[off..off + len].fill(0);
    }
    let a = d.file("a");
    write_file(&a, &data);
    let mut results = Vec::new();
    // (source kind, splice, pipe size): a small pipe moves a request in
    // pieces that do not start on 128 KiB boundaries.
    for (src, splice, pipe) in [
        ("nbd", "1", ""),
        ("nbd", "0", ""),
        ("file", "1", ""),
        ("file", "1", "69632"),
        ("nbd", "1", "69632"),
    ] {
        let what = format!("{src} splice={splice} pipe={pipe}");
        let b = d.file("b");
        write_file(&b, &vec![0xEEu8; size]);
        let s = qemu_nbd(&d, &a, &["-r"]);
        let t = qemu_nbd(&d, &b, &[]);
        let from = match src {
            "nbd" => s.uri(),
            _ => a.to_str().unwrap().to_string(),
        };
        let mut opts = vec![("splice", splice)];
        if !pipe.is_empty() {
            opts.push(("pipe-size", pipe));
        }
        let st = copy(&from, &t.uri(), &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(s);
        drop(t);
        assert!(cmp(&a, &b), "{what}: differs");
        assert_eq!(st.zeroed, (4096 + 65536 + 3 * 4096 + MIB) as u64, "{what}");
        assert_eq!(
            st.spliced,
            if splice == "1" { st.copied } else { 0 },
            "{what}"
        );
        results.push((st.copied, st.zeroed));
    }
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every path copies and zeroes the same: {results:?}"
    );
}

#[test]
fn odd_sizes_through_nbdkit_memory() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("odd");
    for size in [1usize, 511, 4097, MIB + 7] {
        let src = d.file("s");
        write_file(&src, &pattern(size, size as u64));
        let m = nbdkit(&d, &["memory", &size.to_string()]);
        copy(src.to_str().unwrap(), &m.uri(), &[]).unwrap();
        let out = d.file("o");
        copy(&m.uri(), out.to_str().unwrap(), &[]).unwrap();
        assert!(cmp(&src, &out), "size {size}");
    }
}

#[test]
fn max_payload_from_blocksize_policy_is_obeyed() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("bsp");
    let size = 3 * MIB;
    let src = d.file("s");
    write_file(&src, &pattern(size, 5));
    // The server errors on any request over 64 KiB.
    let m = nbdkit(
        &d,
        &[
            "--filter=blocksize-policy",
            "memory",
            &size.to_string(),
            "blocksize-maximum=65536",
            "blocksize-preferred=4096",
            "blocksize-error-policy=error",
        ],
    );
    copy(src.to_str().unwrap(), &m.uri(), &[("request-size", "1M")]).unwrap();
    let out = d.file("o");
    copy(&m.uri(), out.to_str().unwrap(), &[("request-size", "1M")]).unwrap();
    assert!(cmp(&src, &out));
}

#[test]
fn multi_conn_is_used_when_advertised() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("mc");
    let a = nbdkit(&d, &["pattern", "64M"]);
    let b = nbdkit(&d, &["memory", "64M"]);
    let st = copy(&a.uri(), &b.uri(), &[("connections", "4")]).unwrap();
    assert_eq!(st.connections, 4);
    assert!(qemu_img_compare(&a.uri(), &b.uri()));
    // nbd-server exports that are read-write do not advertise multi-conn
    // unless asked; one connection then.
    let st = copy(&a.uri(), "null:", &[("connections", "1")]).unwrap();
    assert_eq!(st.connections, 1);
}

#[test]
fn default_connections_follow_the_data_path() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("dconn");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    // Unix sockets, splice path: as many connections as cores (2 to 4).
    let a = nbdkit(&d, &["pattern", "64M"]);
    let b = nbdkit(&d, &["memory", "64M"]);
    let st = copy(&a.uri(), &b.uri(), &[]).unwrap();
    assert_eq!(st.connections, cores.clamp(2, 4));
    assert!(qemu_img_compare(&a.uri(), &b.uri()));
    // Receive path (TCP to 127.0.0.1): the same.
    let (_ta, ua) = nbdkit_tcp(&d, &["pattern", "64M"]);
    let (_tb, ub) = nbdkit_tcp(&d, &["memory", "64M"]);
    let st = copy(&ua, &ub, &[]).unwrap();
    assert_eq!(st.connections, cores.clamp(2, 4));
    assert!(qemu_img_compare(&ua, &ub));
    // Asked for: as asked.
    let st = copy(&ua, "null:", &[("connections", "3")]).unwrap();
    assert_eq!(st.connections, 3);
    // A file source on the splice path: one connection, 2 MiB requests
    // (fewer requests than with 1 MiB ones).
    let f = d.file("src");
    write_file(&f, &pattern(64 << 20, 3));
    let st = copy(f.to_str().unwrap(), &b.uri(), &[]).unwrap();
    assert_eq!(st.connections, 1);
    assert!(st.spliced > 0, "{st:?}");
    assert!(st.requests < 128, "{st:?}"); // 1 MiB requests count 128
    let back = d.file("back");
    copy(&b.uri(), back.to_str().unwrap(), &[]).unwrap();
    assert!(cmp(&f, &back));
}

#[test]
fn sparse_random_sources() {
    if !require("nbdkit") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("sparse");
    for (seed, percent) in [(1, "10"), (7, "50"), (42, "1")] {
        let s = nbdkit(
            &d,
            &[
                "sparse-random",
                "256M",
                &format!("seed={seed}"),
                &format!("percent={percent}"),
            ],
        );
        let t = nbdkit(&d, &["memory", "256M"]);
        let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
        assert!(qemu_img_compare(&s.uri(), &t.uri()), "seed {seed}");
        assert_eq!(st.done, 256 << 20);
        assert!(st.zeroed + st.skipped > 0, "holes were not read as data");
    }
}

#[test]
fn empty_disk_zeroes_a_dirty_destination() {
    if !require("nbdkit") || !require("qemu-io") {
        return;
    }
    let d = TempDir::new("w5");
    let s = nbdkit(&d, &["memory", "4G"]);
    let t = nbdkit(&d, &["memory", "4G"]);
    qemu_io(&t.uri(), &["write -P 0xa5 0 1M", "write -P 0xa5 2G 1M"]);
    let t0 = std::time::Instant::now();
    let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
    eprintln!("4 GiB empty -> dirty: {:?}, {st:?}", t0.elapsed());
    assert!(qemu_img_compare(&s.uri(), &t.uri()));
    assert_eq!(st.copied, 0, "nothing read as data");
}

#[test]
fn several_tib_mostly_empty() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("tib");
    // 3 TiB + 7 bytes: a size that is not a multiple of 512.
    let size = (3u64 << 40) + 7;
    let s = nbdkit(
        &d,
        &[
            "--filter=truncate",
            "null",
            "3T",
            &format!("truncate={size}"),
        ],
    );
    let t = nbdkit(&d, &["memory", &size.to_string()]);
    let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
    assert_eq!(st.done, size);
}

#[test]
fn qcow2_through_qemu_nbd() {
    if !require("qemu-nbd") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("qcow2");
    let raw = d.file("raw");
    let mut data = pattern(2 * MIB, 6);
    data[MIB / 2..MIB].fill(0);
    write_file(&raw, &data);
    let q = d.file("q.qcow2");
    raw_to_qcow2(&raw, &q);
    let s = qemu_nbd(&d, &q, &["-f", "qcow2", "-r"]);
    let out = d.file("out");
    copy(&s.uri(), out.to_str().unwrap(), &[]).unwrap();
    assert!(cmp(&raw, &out));
}

#[test]
fn flush_and_synchronous() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("flush");
    let src = d.file("s");
    write_file(&src, &pattern(2 * MIB, 8));
    let m = nbdkit(&d, &["memory", "2M"]);
    copy(src.to_str().unwrap(), &m.uri(), &[("flush", "1")]).unwrap();
    copy(src.to_str().unwrap(), &m.uri(), &[("synchronous", "1")]).unwrap();
    let out = d.file("o");
    copy(
        &m.uri(),
        out.to_str().unwrap(),
        &[("synchronous", "1"), ("flush", "1")],
    )
    .unwrap();
    assert!(cmp(&src, &out));
}

#[test]
fn errors_name_endpoint_and_cause() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("errs");
    let small = nbdkit(&d, &["memory", "1M"]);
    let src = d.file("s");
    write_file(&src, &pattern(2 * MIB, 9));
    let e = copy(src.to_str().unwrap(), &small.uri(), &[]).unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC);
    assert!(e.msg.contains("smaller"), "{}", e.msg);
    let ro = nbdkit(&d, &["-r", "memory", "4M"]);
    let e = copy(src.to_str().unwrap(), &ro.uri(), &[]).unwrap_err();
    assert!(e.msg.contains("read-only"), "{}", e.msg);
    let bad = format!("nbd+unix:///nosuch?socket={}", small.socket().display());
    let e = copy(&bad, "null:", &[]);
    // nbdkit serves any export name by default; a missing socket fails.
    drop(e);
    let e = copy(
        &format!("nbd+unix:///?socket={}", d.file("nope.sock").display()),
        "null:",
        &[],
    )
    .unwrap_err();
    assert!(e.msg.contains("nope.sock"), "{}", e.msg);
    // Read errors from the server name the offset.
    let eio = nbdkit(
        &d,
        &[
            "--filter=error",
            "pattern",
            "4M",
            "error-rate=100%",
            "error-pread=EIO",
        ],
    );
    let e = copy(&eio.uri(), "null:", &[]).unwrap_err();
    assert_eq!(e.errno, libc::EIO, "{}", e.msg);
    assert!(e.msg.contains("READ at offset"), "{}", e.msg);
}

#[test]
fn tcp_uri() {
    if !require("nbdkit") {
        return;
    }
    let d = TempDir::new("tcp");
    let (_src, src_uri) = nbdkit_tcp(&d, &["pattern", "16M"]);
    let (_dst, dst_uri) = nbdkit_tcp(&d, &["memory", "16M"]);
    let st = copy(&src_uri, &dst_uri, &[]).unwrap();
    assert_eq!(st.done, 16 << 20);
    assert!(qemu_img_compare(&src_uri, &dst_uri));
    let out = d.file("o");
    copy(&dst_uri, out.to_str().unwrap(), &[]).unwrap();
    assert!(qemu_img_compare(&src_uri, out.to_str().unwrap()));
}

#[test]
fn loop_device_as_source_and_destination() {
    let d = TempDir::new("loop");
    let backing = d.file("backing");
    write_file(&backing, &pattern(8 * MIB, 77)); // old data everywhere
    let Some(dev) = LoopDev::new(&backing) else {
        return;
    };
    let src = d.file("src");
    let mut data = pattern(6 * MIB, 11);
    data[MIB..3 * MIB].fill(0); // zeroes over old data: must be zeroed
    write_file(&src, &data);
    copy(src.to_str().unwrap(), &dev.0, &[]).unwrap();
    let out = d.file("out");
    copy(&dev.0, out.to_str().unwrap(), &[]).unwrap();
    let back = std::fs::read(&out).unwrap();
    assert_eq!(back.len(), 8 * MIB, "block device size by ioctl");
    assert!(back[..6 * MIB] == data[..], "copied range differs");
    assert!(
        back[6 * MIB..] == pattern(8 * MIB, 77)[6 * MIB..],
        "beyond the source untouched"
    );
    // A source larger than the device is refused before any write.
    let big = d.file("big");
    write_file(&big, &pattern(9 * MIB, 1));
    let e = copy(big.to_str().unwrap(), &dev.0, &[]).unwrap_err();
    assert!(e.msg.contains("smaller"), "{}", e.msg);
}

#[test]
fn memory_with_data_at_odd_offsets() {
    if !require("nbdkit") || !require("qemu-io") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("oddoff");
    let s = nbdkit(&d, &["memory", "64M"]);
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "raw"])
        .args([
            "-c",
            "write -P 0x11 12345 7777",
            "-c",
            "write -P 0x22 1048577 65537",
        ])
        .args([
            "-c",
            "write -P 0x33 33554431 3",
            "-c",
            "write -P 0x44 67104768 1023",
        ])
        .arg(s.uri())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for opts in [
        vec![],
        vec![("sparse", "0")],
        vec![("no-extents", "1")],
        vec![("request-size", "4k")],
    ] {
        let t = nbdkit(&d, &["memory", "64M"]);
        // The destination holds old data everywhere that must disappear.
        let fill = d.file("fill");
        write_file(&fill, &vec![0xEE; 64 * MIB]);
        fill_export(&t.uri(), &fill);
        let st = copy(&s.uri(), &t.uri(), &opts).unwrap();
        assert!(qemu_img_compare(&s.uri(), &t.uri()), "{opts:?}");
        if opts.is_empty() {
            assert!(
                st.copied < 2 * MIB as u64,
                "{opts:?}: holes read as data ({st:?})"
            );
        }
    }
}

/// An NBD destination that offers FAST_ZERO is zeroed up front over the
/// copied range only, and the source's holes are then skipped; a server
/// that answers ENOTSUP to FAST_ZERO, or does not offer it, gets the holes
/// zeroed one by one.  Either way the copy is exact and the destination
/// beyond the source's size is untouched.
#[test]
fn fast_zero_destination_and_enotsup_fallback() {
    if !require("nbdkit") || !require("qemu-io") {
        return;
    }
    const M: usize = 1 << 20;
    let d = TempDir::new("fastzero");
    let s = nbdkit(&d, &["memory", &(6 * M).to_string()]);
    qemu_io(&s.uri(), &["write -P 0x5a 1M 1M", "write -P 0x3c 4M 1M"]);
    let want = read_export(&s.uri(), &d);
    let fill = d.file("fill");
    write_file(&fill, &vec![0xEE; 8 * M]);
    for (args, fast) in [
        (vec!["memory", "8M"], true),
        (
            vec![
                "--filter=nozero",
                "memory",
                "8M",
                "zeromode=plugin",
                "fastzeromode=slow",
            ],
            false,
        ),
        (
            vec![
                "--filter=nozero",
                "memory",
                "8M",
                "zeromode=plugin",
                "fastzeromode=none",
            ],
            false,
        ),
    ] {
        let t = nbdkit(&d, &args);
        fill_export(&t.uri(), &fill);
        let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
        let got = read_export(&t.uri(), &d);
        assert!(got[..6 * M] == want[..], "{args:?}: content differs");
        assert!(
            got[6 * M..].iter().all(|&b| b == 0xEE),
            "{args:?}: beyond the source's size changed"
        );
        assert_eq!(st.copied, 2 * M as u64, "{args:?}: {st:?}");
        if fast {
            assert_eq!(
                (st.zeroed, st.skipped),
                (0, 4 * M as u64),
                "{args:?}: {st:?}"
            );
        } else {
            assert_eq!(
                (st.zeroed, st.skipped),
                (4 * M as u64, 0),
                "{args:?}: {st:?}"
            );
        }
    }
    // A mostly allocated source: the destination is not zeroed up front
    // (that would deallocate what is then rewritten); its one hole is
    // zeroed in place.
    qemu_io(&s.uri(), &["write -P 0x11 0 1M", "write -P 0x22 2M 2M"]);
    let want = read_export(&s.uri(), &d);
    let t = nbdkit(&d, &["memory", "8M"]);
    fill_export(&t.uri(), &fill);
    let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
    assert!(read_export(&t.uri(), &d)[..6 * M] == want[..]);
    assert_eq!(
        (st.copied, st.zeroed, st.skipped),
        (5 * M as u64, M as u64, 0),
        "{st:?}"
    );
}

/// With extended headers (qemu-nbd) one BLOCK_STATUS and one WRITE_ZEROES
/// cover more than 4 GiB: a 256 GiB disk with 2 MiB of data in two places,
/// onto a dirty 256 GiB destination, takes 26 requests where 4 GiB pieces
/// take 83.
#[test]
fn extended_headers_cover_more_than_4g() {
    if !require("qemu-nbd") || !require("qemu-io") || !require("qemu-img") {
        return;
    }
    let d = TempDir::new("ext4g");
    let size: u64 = 256 << 30;
    let (a, b) = (d.file("a.raw"), d.file("b.raw"));
    for (f, writes) in [
        (&a, ["write -P 0x61 40G 1M", "write -P 0x62 200G 1M"]),
        (&b, ["write -P 0x99 0 1M", "write -P 0x98 100G 1M"]),
    ] {
        std::fs::File::create(f).unwrap().set_len(size).unwrap();
        qemu_io(f.to_str().unwrap(), &writes);
    }
    let s = qemu_nbd(&d, &a, &["-r"]);
    // discard=unmap: zeroing may punch holes instead of writing zeroes.
    let t = qemu_nbd(&d, &b, &["--discard=unmap"]);
    let st = copy(&s.uri(), &t.uri(), &[]).unwrap();
    drop((s, t));
    let o = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(st.copied, 2 << 20, "{st:?}");
    eprintln!("256 GiB with extended headers: {st:?}");
    assert!(
        st.requests < 64,
        "{} requests for 256 GiB: {st:?}",
        st.requests
    );
}

/// A file source on the splice path: cached pages go file -> pipe ->
/// socket; pages not in the page cache are read through io_uring instead
/// (the worker never blocks on the disk).  Half the file is evicted first,
/// so both kinds of piece meet in one copy.
#[test]
fn file_source_splice_cached_and_uncached() {
    if !require("nbdkit") {
        return;
    }
    use std::os::fd::AsRawFd;
    let d = TempDir::new("splice-file");
    let size = 8 * MIB;
    let mut data = pattern(size, 21);
    data[3 * MIB..3 * MIB + 65536].fill(0);
    let a = d.file("a");
    write_file(&a, &data);
    let f = std::fs::File::open(&a).unwrap();
    f.sync_all().unwrap();
    if !nbdcpy::testing::cached(f.as_raw_fd(), 0, 4 * MIB as u64) {
        eprintln!("SKIP: cachestat (Linux 6.5+) unavailable: file sources are never spliced");
        return;
    }
    // SAFETY: fadvise on an open descriptor, no memory arguments.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            (4 * MIB) as i64,
            (4 * MIB) as i64,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    let evicted = !nbdcpy::testing::cached(f.as_raw_fd(), 4 * MIB as u64, 4 * MIB as u64);
    let m = nbdkit(&d, &["memory", &size.to_string()]);
    let st = copy(a.to_str().unwrap(), &m.uri(), &[("splice", "1")]).unwrap();
    assert_eq!(read_export(&m.uri(), &d), data);
    assert_eq!(st.zeroed, 65536);
    assert!(st.spliced > 0, "{st:?}");
    if evicted {
        assert!(
            st.spliced < st.copied,
            "evicted pages must not be spliced: {st:?}"
        );
    } else {
        eprintln!("page cache eviction not possible here (tmpfs?): mixed case not checked");
    }
}
