// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The message digests a block hash can use, by their OpenSSL names, on OpenSSL's implementations.

use openssl::hash::{Hasher, MessageDigest};
use openssl::sha;

/// Longest digest (SHA-512), in bytes.
pub const MAX_LEN: usize = 64;

/// A message digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Every digest, in the order messages list them.
pub const ALL: [Digest; 6] = [
    Digest::Md5,
    Digest::Sha1,
    Digest::Sha224,
    Digest::Sha256,
    Digest::Sha384,
    Digest::Sha512,
];

/// One digest value (`len` bytes of `bytes`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hash {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl Hash {
    fn from_slice(s: &[u8]) -> Hash {
        let mut bytes = [0; MAX_LEN];
        bytes[..s.len()].copy_from_slice(s);
        Hash {
            bytes,
            len: s.len() as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Lower-case hexadecimal, as blksum and nbdcopy print it.
    pub fn to_hex(self) -> String {
        to_hex(self.as_bytes())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lower-case hexadecimal of `b`.
pub fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

impl Digest {
    /// The name as OpenSSL (and so nbdcopy and blksum) spells it.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha1 => "sha1",
            Digest::Sha224 => "sha224",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha512 => "sha512",
        }
    }

    /// The digest named `name` (case-insensitive; "sha-256" also works).
    pub fn from_name(name: &str) -> Option<Digest> {
        let n = name.trim().to_ascii_lowercase().replace('-', "");
        ALL.into_iter().find(|d| d.name() == n)
    }

    /// Digest length in bytes.
    pub fn size(self) -> usize {
        match self {
            Digest::Md5 => 16,
            Digest::Sha1 => 20,
            Digest::Sha224 => 28,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    /// The digest of `data`.
    pub fn hash(self, data: &[u8]) -> Hash {
        let mut c = self.ctx();
        c.update(data);
        c.finish()
    }

    /// Whether this system's OpenSSL offers the digest (MD5 is missing
    /// in FIPS mode); the error says why not.
    pub fn check(self) -> Result<(), String> {
        match self {
            Digest::Md5 => Hasher::new(MessageDigest::md5())
                .map(drop)
                .map_err(|e| format!("md5 is not available from OpenSSL here: {e}")),
            _ => Ok(()),
        }
    }

    /// The digest of `len` zero bytes, without a buffer of that size.
    pub fn hash_zeroes(self, len: u64) -> Hash {
        static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
        let mut ctx = self.ctx();
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROES.len() as u64) as usize;
            ctx.update(&ZEROES[..n]);
            left -= n as u64;
        }
        ctx.finish()
    }

    /// A context to hash data given in pieces.
    pub fn ctx(self) -> Ctx {
        match self {
            // Only an allocation failure can stop this once `check` passed;
            // Rust aborts on those anyway.
            Digest::Md5 => Ctx::Md5(
                Hasher::new(MessageDigest::md5()).expect("MD5 context (checked with the spec)"),
            ),
            Digest::Sha1 => Ctx::Sha1(sha::Sha1::new()),
            Digest::Sha224 => Ctx::Sha224(sha::Sha224::new()),
            Digest::Sha256 => Ctx::Sha256(sha::Sha256::new()),
            Digest::Sha384 => Ctx::Sha384(sha::Sha384::new()),
            Digest::Sha512 => Ctx::Sha512(sha::Sha512::new()),
        }
    }
}

/// A digest being computed over data given in pieces.
#[derive(Clone)]
pub enum Ctx {
    Md5(Hasher),
    Sha1(sha::Sha1),
    Sha224(sha::Sha224),
    Sha256(sha::Sha256),
    Sha384(sha::Sha384),
    Sha512(sha::Sha512),
}

impl Ctx {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            // EVP_DigestUpdate cannot fail on an initialised MD5 context.
            Ctx::Md5(c) => c.update(data).expect("MD5 update"),
            Ctx::Sha1(c) => c.update(data),
            Ctx::Sha224(c) => c.update(data),
            Ctx::Sha256(c) => c.update(data),
            Ctx::Sha384(c) => c.update(data),
            Ctx::Sha512(c) => c.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        match self {
            Ctx::Md5(mut c) => Hash::from_slice(&c.finish().expect("MD5 final")),
            Ctx::Sha1(c) => Hash::from_slice(&c.finish()),
            Ctx::Sha224(c) => Hash::from_slice(&c.finish()),
            Ctx::Sha256(c) => Hash::from_slice(&c.finish()),
            Ctx::Sha384(c) => Hash::from_slice(&c.finish()),
            Ctx::Sha512(c) => Hash::from_slice(&c.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_abc() {
        // FIPS 180 / RFC 1321 test vectors.
        let want = [
            (Digest::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Digest::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                Digest::Sha224,
                "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
            ),
            (
                Digest::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                Digest::Sha384,
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
                 8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                Digest::Sha512,
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (d, hex) in want {
            assert_eq!(d.hash(b"abc").to_hex(), hex, "{}", d.name());
            assert_eq!(d.hash(b"abc").as_bytes().len(), d.size());
            let mut c = d.ctx();
            c.update(b"a");
            c.update(b"bc");
            assert_eq!(c.finish().to_hex(), hex);
            assert_eq!(d.hash_zeroes(100_000), d.hash(&vec![0; 100_000]));
        }
    }

    #[test]
    fn names() {
        for d in ALL {
            assert_eq!(Digest::from_name(d.name()), Some(d));
        }
        assert_eq!(Digest::from_name("SHA-256"), Some(Digest::Sha256));
        assert_eq!(Digest::from_name("sha3"), None);
    }
}
