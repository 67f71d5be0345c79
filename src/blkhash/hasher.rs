// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The block hasher: worker threads hand it data and zero ranges by
//! offset, in any order and cut anywhere; whole blocks are hashed on the
//! calling thread, blocks that arrive in pieces are assembled first, and
//! the block digests go into the final digest in block order.

use super::digest::{Ctx, Hash};
use super::Spec;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Computes one block hash from pieces given by several threads.
pub struct BlockHasher {
    spec: Spec,
    /// The data's length when known up front (None: a stream, whose
    /// last block may turn out short).
    size: Option<u64>,
    /// The digest of a whole block of zeroes.
    zero_hash: Hash,
    /// `zero_hash` repeated, to feed runs of zero blocks in large updates.
    zero_run: Vec<u8>,
    /// Keep each block's fingerprint (for --verify: where two hashes
    /// first differ).
    keep_prints: bool,
    /// Maps the offsets given to where they are in the hashed data (a
    /// range list hashes its areas one after the other).
    offset_map: Option<OffsetMap>,
    state: Mutex<State>,
}

/// See `BlockHasher::set_offset_map`.
pub type OffsetMap = Box<dyn Fn(u64) -> u64 + Send + Sync>;

struct State {
    /// The first block whose digest is not yet in `outer`.
    next: u64,
    /// The final digest, fed block digests in order.
    outer: Ctx,
    /// Digests of blocks after `next`, waiting for the ones before them.
    ready: BTreeMap<u64, Ready>,
    /// Blocks of which only some bytes arrived.
    partial: HashMap<u64, Partial>,
    /// The first 8 bytes of each block's digest (with `keep_prints`).
    prints: Vec<u64>,
    /// A block was given twice (an internal error, reported by finish).
    twice: Option<u64>,
}

/// Blocks whose digests are known.
enum Ready {
    /// One block's digest.
    One(Hash),
    /// This many whole blocks of zeroes.
    Zeros(u64),
}

/// A block being assembled.
struct Partial {
    /// Allocated when the first data (not zeroes) arrives.
    buf: Option<Vec<u8>>,
    /// Bytes of the block given so far.
    filled: u64,
}

/// Part of one block: data, or zeroes (None).
struct Part<'a> {
    block: u64,
    at: u64,
    len: u64,
    data: Option<&'a [u8]>,
}

/// Digests computed outside the lock, to be fed in one go.
type Batch = Vec<(u64, Ready)>;

fn push(batch: &mut Batch, block: u64, r: Ready) {
    if let (Some((b, Ready::Zeros(n))), Ready::Zeros(m)) = (batch.last_mut(), &r) {
        if *b + *n == block {
            *n += m;
            return;
        }
    }
    batch.push((block, r));
}

/// True when every byte is zero; stops at the first 64 bytes that are
/// not (this module's own: `blkhash` sits below `copy`).
fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let acc = c.chunks_exact(8).fold(0u64, |a, w| {
            a | u64::from_ne_bytes(w.try_into().unwrap_or([1; 8]))
        });
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

fn fingerprint(h: &Hash) -> u64 {
    let mut b = [0u8; 8];
    let s = h.as_bytes();
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s[..n]);
    u64::from_le_bytes(b)
}

impl BlockHasher {
    /// A hasher for data of `size` bytes (None: a stream), keeping each
    /// block's fingerprint if `keep_prints`.
    pub fn new(spec: Spec, size: Option<u64>, keep_prints: bool) -> BlockHasher {
        let zero_hash = spec.digest.hash_zeroes(spec.block_size);
        let zero_run = zero_hash.as_bytes().repeat(64);
        BlockHasher {
            spec,
            size,
            zero_hash,
            zero_run,
            keep_prints,
            offset_map: None,
            state: Mutex::new(State {
                next: 0,
                outer: spec.digest.ctx(),
                ready: BTreeMap::new(),
                partial: HashMap::new(),
                prints: Vec::new(),
                twice: None,
            }),
        }
    }

    /// Offsets given to `data` and `zero` are passed through `map` first
    /// (each piece given must map to a contiguous range).
    pub fn set_offset_map(&mut self, map: OffsetMap) {
        self.offset_map = Some(map);
    }

    fn mapped(&self, offset: u64) -> u64 {
        self.offset_map.as_ref().map_or(offset, |m| m(offset))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Length of block `b` (0 past the end of data of known size).
    fn block_len(&self, b: u64) -> u64 {
        let bs = self.spec.block_size;
        match self.size {
            Some(s) => s.saturating_sub(b.saturating_mul(bs)).min(bs),
            None => bs,
        }
    }

    /// The digest of block `b` of `len` bytes of zeroes.
    fn zero_block(&self, len: u64) -> Ready {
        if len == self.spec.block_size {
            Ready::Zeros(1)
        } else {
            Ready::One(self.spec.digest.hash_zeroes(len))
        }
    }

    /// The digest of a complete block's bytes.
    fn block(&self, data: &[u8]) -> Ready {
        if is_zero(data) {
            self.zero_block(data.len() as u64)
        } else {
            Ready::One(self.spec.digest.hash(data))
        }
    }

    /// `data` read at `offset`.  Whole blocks in it are hashed here, on
    /// the calling thread.
    pub fn data(&self, offset: u64, data: &[u8]) {
        let offset = self.mapped(offset);
        let bs = self.spec.block_size;
        let mut batch = Batch::new();
        let mut parts = Vec::new();
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let b = abs / bs;
            let blen = self.block_len(b);
            let at = abs - b * bs;
            if at >= blen {
                break; // past the end of the data: not part of it
            }
            let n = ((blen - at) as usize).min(data.len() - pos);
            let piece = &data[pos..pos + n];
            if at == 0 && n as u64 == blen {
                push(&mut batch, b, self.block(piece));
            } else {
                parts.push(Part {
                    block: b,
                    at,
                    len: n as u64,
                    data: Some(piece),
                });
            }
            pos += n;
        }
        self.commit(batch, parts);
    }

    /// [offset, offset + len) reads as zeroes: nothing is read or hashed
    /// byte by byte.
    pub fn zero(&self, offset: u64, len: u64) {
        let offset = self.mapped(offset);
        let bs = self.spec.block_size;
        let mut batch = Batch::new();
        let mut parts = Vec::new();
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let b = pos / bs;
            let blen = self.block_len(b);
            let at = pos - b * bs;
            if at >= blen {
                break;
            }
            if at == 0 && end - pos >= blen {
                if blen == bs {
                    // A run of whole blocks (the short last one apart).
                    let mut count = (end - pos) / bs;
                    if let Some(s) = self.size {
                        count = count.min(s / bs - b);
                    }
                    push(&mut batch, b, Ready::Zeros(count));
                    pos += count * bs;
                } else {
                    push(&mut batch, b, self.zero_block(blen));
                    pos += blen;
                }
            } else {
                let n = (blen - at).min(end - pos);
                parts.push(Part {
                    block: b,
                    at,
                    len: n,
                    data: None,
                });
                pos += n;
            }
        }
        self.commit(batch, parts);
    }

    /// Feeds `batch`, adds `parts` to their blocks, and hashes (outside
    /// the lock) the blocks they complete.
    fn commit(&self, batch: Batch, parts: Vec<Part>) {
        let mut complete = Vec::new();
        {
            let mut st = self.lock();
            for p in parts {
                let blen = self.block_len(p.block);
                let e = st.partial.entry(p.block).or_insert(Partial {
                    buf: None,
                    filled: 0,
                });
                if let Some(d) = p.data {
                    let buf = e.buf.get_or_insert_with(|| vec![0; blen as usize]);
                    buf[p.at as usize..(p.at + p.len) as usize].copy_from_slice(d);
                }
                e.filled += p.len;
                if e.filled >= blen {
                    if let Some(done) = st.partial.remove(&p.block) {
                        complete.push((p.block, done));
                    }
                }
            }
            self.feed(&mut st, batch);
        }
        if !complete.is_empty() {
            let mut batch = Batch::new();
            for (b, p) in complete {
                let r = match &p.buf {
                    Some(buf) => self.block(&buf[..p.filled as usize]),
                    None => self.zero_block(p.filled),
                };
                push(&mut batch, b, r);
            }
            let mut st = self.lock();
            self.feed(&mut st, batch);
        }
    }

    fn feed(&self, st: &mut State, batch: Batch) {
        for (b, r) in batch {
            if b == st.next {
                self.apply(st, r);
            } else if b < st.next || st.ready.insert(b, r).is_some() {
                st.twice.get_or_insert(b);
            }
        }
        while let Some(e) = st.ready.first_entry() {
            if *e.key() != st.next {
                break;
            }
            let r = e.remove();
            self.apply(st, r);
        }
    }

    /// Adds the digests of the blocks from `st.next` on.
    fn apply(&self, st: &mut State, r: Ready) {
        match r {
            Ready::One(h) => {
                st.outer.update(h.as_bytes());
                if self.keep_prints {
                    st.prints.push(fingerprint(&h));
                }
                st.next += 1;
            }
            Ready::Zeros(n) => {
                let per = self.zero_run.len() as u64 / self.zero_hash.as_bytes().len() as u64;
                let mut left = n;
                while left > 0 {
                    let k = left.min(per);
                    let bytes = k as usize * self.zero_hash.as_bytes().len();
                    st.outer.update(&self.zero_run[..bytes]);
                    left -= k;
                }
                if self.keep_prints {
                    let fp = fingerprint(&self.zero_hash);
                    st.prints.extend(std::iter::repeat_n(fp, n as usize));
                }
                st.next += n;
            }
        }
    }

    /// The block hash of the `length` bytes given (for a stream, its
    /// last block may be short).  Fails if some bytes never arrived.
    pub fn finish(&self, length: u64) -> Result<Hash> {
        let bs = self.spec.block_size;
        let mut st = self.lock();
        let partial = std::mem::take(&mut st.partial);
        let mut batch = Batch::new();
        for (b, p) in partial {
            let start = b * bs;
            if start + p.filled != length {
                return Err(Error::new(
                    libc::EIO,
                    format!(
                        "internal error: blkhash: block at offset {start} got {} of its bytes",
                        p.filled
                    ),
                ));
            }
            let r = match &p.buf {
                Some(buf) => self.block(&buf[..p.filled as usize]),
                None => self.zero_block(p.filled),
            };
            push(&mut batch, b, r);
        }
        self.feed(&mut st, batch);
        if let Some(b) = st.twice {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "internal error: blkhash: block at offset {} given twice",
                    b * bs
                ),
            ));
        }
        if st.next != length.div_ceil(bs) || !st.ready.is_empty() {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "internal error: blkhash: no data for the block at offset {} of {length} bytes",
                    st.next * bs
                ),
            ));
        }
        let mut outer = std::mem::replace(&mut st.outer, self.spec.digest.ctx());
        outer.update(&length.to_le_bytes());
        Ok(outer.finish())
    }

    /// Each block's fingerprint (the first 8 bytes of its digest), in
    /// order, when kept.
    pub fn fingerprints(&self) -> Vec<u64> {
        self.lock().prints.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Digest;
    use super::*;

    /// The construction, written out plainly.
    fn reference(spec: Spec, data: &[u8]) -> Hash {
        let mut outer = spec.digest.ctx();
        for b in data.chunks(spec.block_size as usize) {
            outer.update(spec.digest.hash(b).as_bytes());
        }
        outer.update(&(data.len() as u64).to_le_bytes());
        outer.finish()
    }

    fn spec(s: &str) -> Spec {
        Spec::parse(s).unwrap()
    }

    #[test]
    fn libnbd_vectors() {
        // copy-blkhash-known.sh in libnbd (cross-checked there against
        // blkhash's own test/blkhash.py).
        let hello_goodbye = {
            let mut d = vec![0u8; (1 << 20) + 7];
            d[..5].copy_from_slice(b"hello");
            d[1 << 20..].copy_from_slice(b"goodbye");
            d
        };
        let pattern = b"12345678".repeat(512 * 256);
        let cases: [(&[u8], &str, &str); 9] = [
            (b"", "sha256", "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"),
            (b"hello", "md5", "f741ac9ce55f5325906bb14e9c05d467"),
            (b"hello", "sha256", "337355feb53a5309d5aba92796223c2c84ffab930e706c01fef573a2722545e6"),
            (b"hello", "sha512", "eca04a593cf12ec4132993da709048e25a2f1be3526e132fb521ec9d41f023ec4018b3fd07b014a33e36bb5fa145b36991f431e62f9e1a93bebea6c9565682c1"),
            (b"hello", "md5/4", "8262896de34125dec173722c920e8bd0"),
            (&hello_goodbye, "sha256", "61b8f3a8cea76e16eeff7ce27f1b7711c1f1e437f5038cec17773772a4bded28"),
            (&pattern, "md5", "84fc21ac2f49ac283ff399378d834d1a"),
            (&pattern, "sha256", "cbb388edd25e567b85f504c7b345497f9fb4f6bbf4e39768809184b9f9e678f8"),
            (&pattern, "sha512/512k", "379f7eb1628058c7abbc4c96941ac972074815ea9ef4aca95eefb2b4f9c29f64023fff8d966e9fddf08d07bdba548e75298917f10268fdf9ba636c2321a2214e"),
        ];
        for (data, s, want) in cases {
            let sp = spec(s);
            assert_eq!(reference(sp, data).to_hex(), want, "reference {s}");
            for size in [Some(data.len() as u64), None] {
                let h = BlockHasher::new(sp, size, false);
                h.data(0, data);
                assert_eq!(h.finish(data.len() as u64).unwrap().to_hex(), want, "{s}");
            }
        }
    }

    /// Deterministic pseudo-random bytes with zero stretches.
    fn image(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = vec![0u8; len];
        let mut i = 0;
        while i < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = (x % 7000) as usize + 1;
            let end = (i + run).min(len);
            if x % 3 != 0 {
                for (k, b) in v[i..end].iter_mut().enumerate() {
                    *b = (x >> (k % 56)) as u8 | 1;
                }
            }
            i = end;
        }
        v
    }

    #[test]
    fn any_order_any_cut() {
        for (s, len) in [
            ("sha256/4", 1001usize),
            ("md5/512", 70_001),
            ("sha1/4096", 65_536),
            ("sha224/1000", 33_333),
            ("sha384/64k", 300_000),
            ("sha512/1M", 3 << 20),
            ("sha256/64k", 65_535),
        ] {
            let sp = spec(s);
            let data = image(len, len as u64);
            let want = reference(sp, &data);
            for (seed, cut) in [
                (1u64, 3u64),
                (2, 4096),
                (3, 65_536),
                (4, 100_003),
                (5, 1 << 20),
            ] {
                // Cut into pieces, some given as zero ranges where they
                // are zero, and shuffle.
                let mut pieces = Vec::new();
                let mut at = 0u64;
                let mut x = seed;
                while at < len as u64 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = (cut / 2 + (x >> 33) % cut + 1).min(len as u64 - at);
                    pieces.push((at, n, x));
                    at += n;
                }
                pieces.sort_by_key(|p| p.2);
                for size in [Some(len as u64), None] {
                    let h = BlockHasher::new(sp, size, true);
                    std::thread::scope(|t| {
                        for chunk in pieces.chunks(pieces.len().div_ceil(3)) {
                            let (h, data) = (&h, &data);
                            t.spawn(move || {
                                for &(off, n, _) in chunk {
                                    let d = &data[off as usize..(off + n) as usize];
                                    if is_zero(d) {
                                        h.zero(off, n);
                                    } else {
                                        h.data(off, d);
                                    }
                                }
                            });
                        }
                    });
                    assert_eq!(
                        h.finish(len as u64).unwrap(),
                        want,
                        "{s} cut {cut} {size:?}"
                    );
                    assert_eq!(
                        h.fingerprints().len() as u64,
                        (len as u64).div_ceil(sp.block_size)
                    );
                }
            }
        }
    }

    #[test]
    fn huge_zero_range_is_cheap() {
        let sp = spec("sha256/64k");
        let size = 64u64 << 30;
        let t = std::time::Instant::now();
        let h = BlockHasher::new(sp, Some(size), false);
        h.zero(0, size / 2);
        h.zero(size / 2, size / 2);
        let got = h.finish(size).unwrap();
        // Optimised builds only: unoptimised SHA-256 over the 32 MiB of
        // zero-block digests alone takes seconds.
        if !cfg!(debug_assertions) {
            assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        }
        // The same with the zero block's digest written out.
        let z = Digest::Sha256.hash(&vec![0u8; 65536]);
        let mut outer = Digest::Sha256.ctx();
        for _ in 0..size / 65536 {
            outer.update(z.as_bytes());
        }
        outer.update(&size.to_le_bytes());
        assert_eq!(got, outer.finish());
    }

    #[test]
    fn missing_or_repeated_data_is_an_error() {
        let sp = spec("sha256/4k");
        let h = BlockHasher::new(sp, Some(16384), false);
        h.data(0, &[1u8; 8192]);
        let e = h.finish(16384).unwrap_err();
        assert!(e.msg.contains("offset 8192"), "{}", e.msg);
        let h = BlockHasher::new(sp, Some(16384), false);
        h.data(0, &[1u8; 16384]);
        h.data(4096, &[1u8; 4096]);
        assert!(h.finish(16384).unwrap_err().msg.contains("twice"));
        let h = BlockHasher::new(sp, None, false);
        h.data(0, &[1u8; 5000]);
        h.zero(5000, 1000);
        assert_eq!(
            h.finish(6000).unwrap(),
            reference(sp, &{
                let mut v = vec![1u8; 6000];
                v[5000..].fill(0);
                v
            })
        );
    }
}
