// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Block hash (the blkhash construction of nbdcopy 1.24 and blksum): the
//! `DIGEST/BLOCKSIZE` spec, the digests, and a hasher that several worker
//! threads feed with data and zero ranges by offset, in any order.
//!
//! The data is split into blocks of BLOCKSIZE bytes (the last may be
//! short); each block is hashed with DIGEST, and the result is
//! `DIGEST(H(block 1) || ... || H(block N) || length as u64 little-endian)`.
//! A block that reads as zeroes takes the digest of a zero block,
//! computed once; zero ranges are never read or hashed byte by byte.

pub mod digest;
pub mod hasher;

pub use digest::{Digest, Hash};
pub use hasher::BlockHasher;

use crate::size::parse_size;

/// Block size when the spec names none (nbdcopy's and blksum's).
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
/// Largest block size: a block being assembled from several requests is
/// buffered whole.
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;

/// A digest and a block size: `--blkhash=DIGEST[/BLOCKSIZE]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub digest: Digest,
    pub block_size: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            digest: Digest::Sha256,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.digest.name(), self.block_size)
    }
}

impl Spec {
    /// Parses `DIGEST`, `DIGEST/BLOCKSIZE` or "" (the default, sha256/64k);
    /// the size takes nbdcopy's suffixes ("64k", "1M") or plain bytes.
    pub fn parse(s: &str) -> std::result::Result<Spec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Spec::default());
        }
        let (name, size) = match s.split_once('/') {
            Some((n, z)) => (n, Some(z)),
            None => (s, None),
        };
        let digest = Digest::from_name(name).ok_or_else(|| {
            format!(
                "unknown digest \"{name}\" (known: {})",
                digest::ALL.map(Digest::name).join(", ")
            )
        })?;
        digest.check()?;
        let block_size = match size {
            None => DEFAULT_BLOCK_SIZE,
            Some(z) => {
                let v = parse_size(z).map_err(|e| format!("block size \"{z}\": {e}"))?;
                if !(1..=MAX_BLOCK_SIZE).contains(&v) {
                    return Err(format!("block size \"{z}\" must be between 1 and 1G"));
                }
                v
            }
        };
        Ok(Spec { digest, block_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("").unwrap(), Spec::default());
        assert_eq!(Spec::parse("sha256/64k").unwrap(), Spec::default());
        let s = Spec::parse("md5/4").unwrap();
        assert_eq!((s.digest, s.block_size), (Digest::Md5, 4));
        let s = Spec::parse("sha512/512k").unwrap();
        assert_eq!((s.digest, s.block_size), (Digest::Sha512, 512 << 10));
        let s = Spec::parse("SHA1/1M").unwrap();
        assert_eq!((s.digest, s.block_size), (Digest::Sha1, 1 << 20));
        assert_eq!(Spec::parse("sha224/65536").unwrap().block_size, 65536);
        assert_eq!(Spec::parse("sha384").unwrap().digest, Digest::Sha384);
        let e = Spec::parse("crc32").unwrap_err();
        assert!(e.contains("crc32") && e.contains("md5, sha1, sha224, sha256, sha384, sha512"));
        assert!(Spec::parse("sha256/0").is_err());
        assert!(Spec::parse("sha256/2G").is_err());
        assert!(Spec::parse("sha256/x").is_err());
        assert_eq!(Spec::default().to_string(), "sha256/65536");
    }
}
