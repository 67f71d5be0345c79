// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! --blkhash and --verify through the command: the block hash equals
//! Python hashlib's over the same bytes (every digest, blocks of 4 bytes
//! to 1 MiB, sparse and odd-sized sources, NBD and stream sources, every
//! kind of destination), libnbd's published vectors, a 64 GiB empty
//! source in well under a second, and --verify catching a destination
//! that silently drops a write.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// The construction written independently, in Python's hashlib.
const PY: &str = r#"
import hashlib, struct, sys
data = open(sys.argv[1], 'rb').read()
for spec in sys.argv[2:]:
    name, bs = spec.split('/')
    bs = int(bs)
    outer = hashlib.new(name)
    for i in range(0, len(data), bs):
        outer.update(hashlib.new(name, data[i:i + bs]).digest())
    outer.update(struct.pack('<Q', len(data)))
    print(outer.hexdigest())
"#;

/// Python's block hashes of `file`, one per "digest/bytes" spec.
fn python(dir: &TempDir, file: &Path, specs: &[String]) -> Vec<String> {
    let script = dir.file("blkhash.py");
    std::fs::write(&script, PY).unwrap();
    let o = output_ok(
        Command::new("python3").arg(&script).arg(file).args(specs),
        "python3",
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The command with `args`, not started.
fn nbdcpy(args: &[&str]) -> Command {
    let mut c = common::nbdcpy_cmd();
    c.args(args);
    c
}

fn run(args: &[&str]) -> Output {
    nbdcpy(args).output().unwrap()
}

/// `cat IMG | nbdcpy ARGS` (stdin the source), which must succeed.
fn piped(img: &Path, args: &str) -> Output {
    let script = format!(
        "cat '{}' | '{}' {} {args}",
        img.display(),
        nbdcpy_bin().unwrap().display(),
        engine_args().join(" ")
    );
    output_ok(Command::new("sh").arg("-c").arg(&script), &script)
}

/// Runs nbdcpy; the hash it printed on stdout.
fn hash_of(args: &[&str]) -> String {
    let o = output_ok(&mut nbdcpy(args), &format!("nbdcpy {args:?}"));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    out.trim_end().to_string()
}

/// A sparse file of odd size: data, holes, written zeroes, data again.
fn sparse_image(p: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
    let mut at = 0u64;
    let mut k = 0;
    while at < size {
        let n = (size - at).min(100_000 + 37_000 * (k % 5));
        match k % 4 {
            0 => f.write_all_at(&pattern(n as usize, seed + k), at).unwrap(),
            1 => {} // hole
            2 => f.write_all_at(&vec![0u8; n as usize], at).unwrap(),
            _ => f
                .write_all_at(&pattern(n as usize / 3, seed + k), at + 7)
                .unwrap(),
        }
        at += n + 12_345;
        k += 1;
    }
}

const DIGESTS: [&str; 6] = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

#[test]
fn every_digest_and_block_size_matches_python() {
    if nbdcpy_bin().is_none() || !require("python3") {
        return;
    }
    let d = TempDir::new("blkhash-py");
    // Small blocks on a small image (Python hashes each block).
    let small = d.file("small.img");
    sparse_image(&small, 300_001, 1);
    let big = d.file("big.img");
    sparse_image(&big, (3 << 20) + 4097, 2);
    for (img, sizes) in [
        (&small, &["4", "512", "1000"][..]),
        (&big, &["4096", "64k", "1M"][..]),
    ] {
        let specs: Vec<String> = DIGESTS
            .iter()
            .flat_map(|dg| {
                sizes.iter().map(move |s| {
                    let b = nbdcpy::config::parse_size(s).unwrap();
                    format!("{dg}/{b}")
                })
            })
            .collect();
        let want = python(&d, img, &specs);
        let img = img.to_str().unwrap();
        for (spec, want) in specs.iter().zip(&want) {
            // Requests smaller than blocks, and blocks smaller than
            // requests; with and without zero detection.
            let h = hash_of(&[
                &format!("--blkhash={spec}"),
                "--request-size=64k",
                img,
                "null:",
            ]);
            assert_eq!(&h, want, "{spec} of {img} to null:");
        }
        for spec in specs.iter().step_by(4) {
            let want = &want[specs.iter().position(|s| s == spec).unwrap()];
            let out = d.file("out.img");
            let h = hash_of(&[
                &format!("--blkhash={spec}"),
                "--sparse=0",
                img,
                out.to_str().unwrap(),
            ]);
            assert_eq!(&h, want, "{spec} of {img} to a file");
            assert!(cmp(Path::new(img), &out));
        }
    }
}

#[test]
fn libnbd_published_vectors() {
    // libnbd's copy/copy-blkhash-known.sh (cross-checked there with
    // blkhash's test/blkhash.py), through nbdkit's data plugin.
    if nbdcpy_bin().is_none() || !require("nbdkit") {
        return;
    }
    let d = TempDir::new("blkhash-vec");
    let cases = [
        ("", "sha256", "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"),
        ("\"hello\"", "md5", "f741ac9ce55f5325906bb14e9c05d467"),
        ("\"hello\"", "sha256", "337355feb53a5309d5aba92796223c2c84ffab930e706c01fef573a2722545e6"),
        ("\"hello\"", "sha512", "eca04a593cf12ec4132993da709048e25a2f1be3526e132fb521ec9d41f023ec4018b3fd07b014a33e36bb5fa145b36991f431e62f9e1a93bebea6c9565682c1"),
        ("\"hello\"", "md5/4", "8262896de34125dec173722c920e8bd0"),
        ("\"hello\" @1048576 \"goodbye\"", "sha256", "61b8f3a8cea76e16eeff7ce27f1b7711c1f1e437f5038cec17773772a4bded28"),
        ("\"12345678\"*512*256", "md5", "84fc21ac2f49ac283ff399378d834d1a"),
        ("\"12345678\"*512*256", "sha256", "cbb388edd25e567b85f504c7b345497f9fb4f6bbf4e39768809184b9f9e678f8"),
        ("\"12345678\"*512*256", "sha512/512k", "379f7eb1628058c7abbc4c96941ac972074815ea9ef4aca95eefb2b4f9c29f64023fff8d966e9fddf08d07bdba548e75298917f10268fdf9ba636c2321a2214e"),
    ];
    for (data, spec, want) in cases {
        let s = nbdkit(&d, &["data", data]);
        let file = d.file("hash");
        let o = run(&[
            &format!("--blkhash={spec}"),
            &format!("--blkhash-file={}", file.display()),
            &s.uri(),
            "null:",
        ]);
        assert!(
            o.status.success(),
            "{data} {spec}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stdout.is_empty(),
            "printed although --blkhash-file was given"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{want}\n"),
            "{data} {spec}"
        );
    }
    // copy-blkhash-pattern.sh: 1 GiB of nbdkit's pattern plugin.
    let s = nbdkit(&d, &["pattern", "1G"]);
    assert_eq!(
        hash_of(&["--blkhash", &s.uri(), "null:"]),
        "6750a1c3d78e46eaffb0d094624825dea88f0c7098b2424fce776c0748442649"
    );
    assert_eq!(
        hash_of(&["--blkhash=sha512/512k", &s.uri(), "null:"]),
        "aef2905a223b2b9b565374ce9671bcb434fc944b0a108c8b5b98769d830b6c61b9567de177791a092514675c3a3e0740758c6a5a171ae71d844c60315f07e334"
    );
}

#[test]
fn nbd_sources_every_destination_and_streams() {
    if nbdcpy_bin().is_none() || !require("python3") || !require("nbdkit") || !require("qemu-nbd") {
        return;
    }
    let d = TempDir::new("blkhash-nbd");
    let img = d.file("src.img");
    // A multiple of 512: qemu-nbd rounds sizes up to it.
    sparse_image(&img, (5 << 20) + 1536, 3);
    let specs = [
        "sha256/65536".to_string(),
        "sha1/1048576".to_string(),
        "md5/4".to_string(),
    ];
    let want = python(&d, &img, &specs);
    for kind in KINDS {
        let src = serve(kind, &d, &img);
        for (spec, want) in specs.iter().zip(&want).take(2) {
            let b = format!("--blkhash={spec}");
            // null:, a file, an NBD server, and stdout (hash to a file).
            assert_eq!(
                &hash_of(&[&b, &src.uri(), "null:"]),
                want,
                "{kind} {spec} null:"
            );
            let out = d.file("out.img");
            assert_eq!(
                &hash_of(&[&b, &src.uri(), out.to_str().unwrap()]),
                want,
                "{kind} {spec}"
            );
            assert!(cmp(&img, &out), "{kind}: copy differs");
            let mem = nbdkit(&d, &["memory", "8M"]);
            assert_eq!(
                &hash_of(&[&b, "--splice=on", &src.uri(), &mem.uri()]),
                want,
                "{kind} {spec} nbd"
            );
            let hf = d.file("stdout.hash");
            let o = common::nbdcpy_cmd()
                .args([
                    &b,
                    &format!("--blkhash-file={}", hf.display()),
                    &src.uri(),
                    "-",
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(
                o.stdout.len() as u64,
                std::fs::metadata(&img).unwrap().len()
            );
            assert_eq!(std::fs::read_to_string(&hf).unwrap(), format!("{want}\n"));
        }
    }
    // Stream sources: a pipe (stdin) with blocks larger than requests and
    // a short last block, and a server command.
    for (spec, want) in specs.iter().zip(&want) {
        let o = piped(
            &img,
            &format!("--blkhash={spec} --request-size=256k - null:"),
        );
        assert_eq!(
            String::from_utf8(o.stdout).unwrap().trim_end(),
            want,
            "stream {spec}"
        );
    }
    let h = hash_of(&[
        "--blkhash=sha256/64k",
        "--",
        "[",
        "qemu-nbd",
        "-f",
        "raw",
        img.to_str().unwrap(),
        "]",
        "null:",
    ]);
    assert_eq!(h, want[0], "server command source");
}

#[test]
fn empty_64g_source_hashes_fast() {
    if nbdcpy_bin().is_none() || !require("python3") || !require("nbdkit") {
        return;
    }
    let d = TempDir::new("blkhash-w5");
    let size: u64 = 64 << 30;
    // Python, from the zero block's digest (not 64 GiB of zeroes).
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import hashlib, struct\n\
             z = hashlib.sha256(bytes(65536)).digest()\n\
             h = hashlib.sha256(z * {}); h.update(struct.pack('<Q', {size}))\n\
             print(h.hexdigest())",
            size / 65536
        ))
        .output()
        .unwrap();
    let want = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let s = nbdkit(&d, &["memory", "64G"]);
    let sparse = d.file("sparse.img");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(size)
        .unwrap();
    for src in [s.uri(), sparse.to_string_lossy().into_owned()] {
        let t = Instant::now();
        assert_eq!(hash_of(&["--blkhash", &src, "null:"]), want, "{src}");
        let secs = t.elapsed().as_secs_f64();
        // The issue asks for well under a second; the margin is for a
        // loaded test machine.
        assert!(secs < 1.5, "{src}: {secs:.2} s for 64 GiB of holes");
        eprintln!("64 GiB empty {src}: {secs:.3} s");
    }
}

#[test]
fn option_errors() {
    if nbdcpy_bin().is_none() {
        return;
    }
    let d = TempDir::new("blkhash-opt");
    let img = d.file("a.img");
    write_file(&img, &pattern(10_000, 5));
    let img = img.to_str().unwrap();
    let o = run(&["--blkhash=crc32", img, "null:"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        e.contains("crc32") && e.contains("md5, sha1, sha224, sha256, sha384, sha512"),
        "{e}"
    );
    let o = run(&["--blkhash", img, "-"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--blkhash-file"));
    for dst in ["null:", "-"] {
        let o = run(&["--verify", img, dst]);
        assert_eq!(o.status.code(), Some(1), "--verify to {dst}");
        assert!(o.stdout.is_empty());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("--verify") && e.contains("cannot be read back"),
            "{e}"
        );
    }
    let o = run(&["--blkhash=sha256/0", img, "null:"]);
    assert_eq!(o.status.code(), Some(1));
}

/// An nbdkit eval server over `back` that silently drops the write at
/// `drop_at` (its reads and other writes are real).
fn lossy_server(d: &TempDir, back: &Path, size: u64, drop_at: u64) -> Server {
    let b = back.display();
    nbdkit(
        d,
        &[
            "eval",
            &format!("get_size=echo {size}"),
            &format!("pread=dd if={b} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none"),
            &format!(
                "pwrite=if [ $4 -eq {drop_at} ]; then cat >/dev/null; else \
                 dd of={b} seek=$4 oflag=seek_bytes conv=notrunc status=none; fi"
            ),
            "can_write=exit 0",
        ],
    )
}

#[test]
fn verify_passes_and_catches_a_dropped_write() {
    if nbdcpy_bin().is_none() || !require("nbdkit") || !require("qemu-nbd") {
        return;
    }
    let d = TempDir::new("blkhash-verify");
    let img = d.file("src.img");
    sparse_image(&img, 3 << 20, 4);
    // Healthy destinations: a file, qemu-nbd, nbdkit memory; exit 0.
    let out = d.file("out.img");
    let o = run(&["--verify", img.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "--verify alone prints nothing");
    let back = d.file("back.img");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let q = qemu_nbd(&d, &back, &[]);
    let h = hash_of(&[
        "--verify",
        "--blkhash=sha1/1M",
        img.to_str().unwrap(),
        &q.uri(),
    ]);
    assert_eq!(h.len(), 40);
    drop(q);
    assert!(cmp(&img, &back));
    // A stream source: the read-back stops at the length streamed.
    let out2 = d.file("out2.img");
    piped(
        &img,
        &format!("--verify --blkhash=sha1/1M - '{}'", out2.display()),
    );
    assert!(cmp(&img, &out2));
    let o = run(&[
        "--verify",
        img.to_str().unwrap(),
        "--",
        "[",
        "nbdkit",
        "memory",
        "3M",
        "]",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a server command cannot be read back"
    );
    // A server that drops the write at 2 MiB: the copy "succeeds", the
    // read-back does not, and the message names the block.
    let lossy = d.file("lossy.img");
    std::fs::File::create(&lossy)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let s = lossy_server(&d, &lossy, 3 << 20, 2 << 20);
    let src = d.file("data.img");
    write_file(&src, &pattern(3 << 20, 9));
    let o = run(&[
        "--request-size=256k",
        "--blkhash=sha256/64k",
        src.to_str().unwrap(),
        &s.uri(),
    ]);
    assert!(o.status.success(), "without --verify the loss goes unseen");
    assert!(!cmp(&src, &lossy), "the server really dropped a write");
    std::fs::File::create(&lossy)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let o = run(&[
        "--verify",
        "--request-size=256k",
        src.to_str().unwrap(),
        &s.uri(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("differs") && e.contains("at offset 2097152"),
        "{e}"
    );
    // With a hash file and a smaller block: named to the block; no file.
    let hf = d.file("h");
    let o = run(&[
        "--verify",
        "--blkhash=md5/4k",
        &format!("--blkhash-file={}", hf.display()),
        "--request-size=64k",
        src.to_str().unwrap(),
        &s.uri(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("at offset 2097152 (4096 bytes"), "{e}");
    assert!(!hf.exists(), "no hash file after a failed verify");
}
