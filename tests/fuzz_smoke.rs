// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Bounded fuzzing run for `make check`: every seed of fuzz/corpus and
//! deterministic mutations of them (bit flips, byte changes, truncation,
//! splicing, length-field corruption) through the same entry points the
//! libFuzzer targets in fuzz/ use.  None may panic.  (`make fuzz` runs
//! the coverage-guided libFuzzer targets for longer.)

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(r: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + r.below(4) {
        match r.below(7) {
            0 if !v.is_empty() => {
                let i = r.below(v.len());
                v[i] ^= 1 << r.below(8);
            }
            1 if !v.is_empty() => {
                let i = r.below(v.len());
                v[i] = r.next() as u8;
            }
            2 => v.truncate(r.below(v.len() + 1)),
            3 => {
                let i = r.below(v.len() + 1);
                v.insert(i, r.next() as u8);
            }
            4 => {
                // Splice the tail of another seed.
                let i = r.below(v.len() + 1);
                let j = r.below(other.len() + 1);
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            5 if v.len() >= 4 => {
                // Interesting 32-bit values, e.g. into length fields.
                let vals = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 0xffff_fff0, 4096, 28];
                let i = r.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&vals[r.below(vals.len())].to_be_bytes());
            }
            6 if v.len() >= 8 => {
                let vals = [0u64, u64::MAX, 1 << 63, 1 << 32];
                let i = r.below(v.len() - 7);
                v[i..i + 8].copy_from_slice(&vals[r.below(vals.len())].to_be_bytes());
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, f: fn(&[u8]), iterations: usize) {
    let s = seeds(target);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in &s {
        f(seed);
    }
    for _ in 0..iterations {
        let a = &s[r.below(s.len())];
        let b = &s[r.below(s.len())];
        let m = mutate(&mut r, a, b);
        f(&m);
    }
}

#[test]
fn fuzz_reply_smoke() {
    run("fuzz_reply", nbdcpy::testing::fuzz::fuzz_reply, 200_000);
}

#[test]
fn fuzz_handshake_smoke() {
    run(
        "fuzz_handshake",
        nbdcpy::testing::fuzz::fuzz_handshake,
        100_000,
    );
}

#[test]
fn fuzz_checkpoint_smoke() {
    run("fuzz_checkpoint", nbdcpy::testing::fuzz_checkpoint, 20_000);
}

#[test]
fn fuzz_uri_smoke() {
    run("fuzz_uri", nbdcpy::testing::fuzz::fuzz_uri, 100_000);
}
