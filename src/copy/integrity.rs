// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The copy's block hash (--blkhash) and --verify: which destinations can
//! be read back, the read-back job's settings, the hash file, and the
//! message naming where a destination first differs.

use crate::blkhash::{Hash, Spec as HashSpec};
use crate::config::Config;
use crate::endpoint::{Endpoint, Spec};
use crate::error::{Error, Result};

/// What a finished copy's block hash left for the caller.
pub struct Outcome {
    pub digest: Hash,
    /// Bytes hashed.
    pub length: u64,
    /// Each block's fingerprint (kept for --verify and read-backs).
    pub prints: Vec<u64>,
}

/// --verify needs a destination it can read again: not stdout or another
/// stream, not null:, and not a server command (a new one would be
/// started, without the data).
pub fn check_readable(spec: &Spec, ep: &Endpoint) -> Result<()> {
    let why = match (spec, ep) {
        (Spec::Null, _) | (_, Endpoint::Null) => "null: keeps nothing",
        (Spec::Stdio, _) => "standard output",
        (_, Endpoint::File(f)) if f.is_stream() => "a stream",
        (Spec::Command(_), _) => {
            "a server command ends with the copy; give the destination as a URI \
             or a file to verify it"
        }
        _ => return Ok(()),
    };
    Err(Error::invalid(format!(
        "--verify: destination {spec} cannot be read back ({why})"
    )))
}

/// The read-back job's options: the same block hash, nothing written.
pub fn readback_config(cfg: &Config, spec: HashSpec) -> Config {
    let mut c = cfg.clone();
    // A range list's read-back hashes with the default spec (--blkhash
    // cannot be given with --ranges), as the copy did, on the receive
    // path (spliced bytes are not seen).
    c.blkhash = cfg.ranges.is_none().then_some(spec);
    if cfg.ranges.is_some() {
        c.splice = Some(false);
    }
    c.blkhash_file = None;
    c.verify = false;
    c.flush = false;
    c.allocated = false;
    c.destination_is_zero = false;
    c
}

/// Writes the digest in hexadecimal and a newline to `path`.
pub fn write_hash_file(path: &str, digest: &Hash) -> Result<()> {
    std::fs::write(path, format!("{}\n", digest.to_hex()))
        .map_err(|e| Error::os(format!("blkhash file {path}"), e))
}

/// Compares the destination's read-back block hash with the source's;
/// on a mismatch the error names the first block that differs.
pub fn compare(dst_spec: &Spec, spec: HashSpec, src: &Outcome, dst: &Outcome) -> Result<()> {
    if src.digest == dst.digest && src.length == dst.length {
        return Ok(());
    }
    let first = src
        .prints
        .iter()
        .zip(&dst.prints)
        .position(|(a, b)| a != b)
        .unwrap_or(src.prints.len().min(dst.prints.len()));
    let offset = first as u64 * spec.block_size;
    Err(Error::new(
        libc::EIO,
        format!(
            "--verify: destination {dst_spec} differs from the source: the first block that \
             differs is at offset {offset} ({} bytes; block hash {spec}: {} read back, {} \
             copied)",
            spec.block_size,
            dst.digest.to_hex(),
            src.digest.to_hex()
        ),
    ))
}
