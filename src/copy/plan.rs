// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The copy plan: every decision on how a copy runs, as one pure function.
//
// The copy plan: how a copy runs (data path, lanes, workers, request
// size, queue depth, pieces), decided from facts about both ends, the
// configuration and the cores, as one pure function.

use crate::config::Config;
use crate::endpoint::file::FileKind;
use crate::endpoint::Endpoint;
use crate::proto::{COMPACT_MAX_EFFECT, EXTENDED_MAX_EFFECT};

/// Default request size on the splice data path: it pays per request (a
/// few system calls), not per byte.
pub const SPLICE_REQUEST_SIZE: u64 = 1 << 20;
/// ... and when the source is a file (see `connections`).
pub const FILE_SPLICE_REQUEST_SIZE: u64 = 2 << 20;
/// Work range of sources without extents: large, but not so large that
/// lanes run dry one after the other.
const PLAIN_WORK_PIECE: u64 = 128 << 20;
/// nbdcopy's work piece (THREAD_WORK_SIZE in libnbd's
/// copy/multi-thread-copying.c): each piece's holes are zeroed on their
/// own, so with the same pieces the requests are the same (issue 28).
pub const NBDCOPY_WORK_PIECE: u64 = 128 << 20;

/// What kind of thing an end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    Null,
    File(FileKind),
    /// An NBD export; `unix`: over a unix domain socket (also servers run
    /// as subprocesses).
    Nbd {
        unix: bool,
    },
}

/// What the plan needs to know about one end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndFacts {
    pub kind: EndKind,
    /// Size in bytes; None for streams (and null:).
    pub size: Option<u64>,
    /// Connections the end allows (multi-conn).
    pub max_connections: u32,
    /// Granularity requests must keep (a power of two): an NBD server's
    /// minimum block size, a block device's logical sector, else 1.
    pub align: u64,
    /// An NBD server's preferred block size (else None).
    pub preferred: Option<u64>,
    /// An NBD server's largest payload (else None).
    pub max_payload: Option<u64>,
    /// What one request without payload covers at most (NBD: by header
    /// mode), or None.
    pub max_effect: Option<u64>,
    /// The end answers BLOCK_STATUS (base:allocation).
    pub block_status: bool,
    /// An NBD server reached over TLS (payloads pass through user space).
    pub tls: bool,
}

impl EndFacts {
    /// The facts of an opened endpoint.
    pub fn of(ep: &Endpoint) -> EndFacts {
        match ep {
            Endpoint::Null => EndFacts::local(EndKind::Null, None, 1),
            Endpoint::File(f) => EndFacts::local(EndKind::File(f.kind), f.size, f.sector.max(1)),
            Endpoint::Nbd(n) => EndFacts {
                kind: EndKind::Nbd { unix: n.is_unix() },
                size: Some(n.info.size),
                max_connections: n.max_connections(),
                align: (n.info.block_size.min as u64).max(1),
                preferred: Some(n.info.block_size.preferred as u64),
                max_payload: Some(n.info.block_size.max_payload as u64),
                max_effect: Some(n.info.max_effect_len()),
                block_status: n.info.can_block_status(),
                tls: n.is_tls(),
            },
        }
    }

    /// A local end (null: or a file): no connection limit, no NBD facts.
    pub fn local(kind: EndKind, size: Option<u64>, align: u64) -> EndFacts {
        EndFacts {
            kind,
            size,
            max_connections: u32::MAX,
            align,
            preferred: None,
            max_payload: None,
            max_effect: None,
            block_status: false,
            tls: false,
        }
    }

    fn is_nbd(&self) -> bool {
        matches!(self.kind, EndKind::Nbd { .. })
    }

    fn is_stream(&self) -> bool {
        self.kind == EndKind::File(FileKind::Stream)
    }

    fn is_regular_file(&self) -> bool {
        self.kind == EndKind::File(FileKind::Regular)
    }
}

/// Every decision about how a copy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// READ payloads move by splice, never through user space.
    pub splice: bool,
    /// Lanes: connection (or file) pairs, each with its own requests.
    pub lanes: u32,
    /// Worker threads the lanes are spread over.
    pub workers: u32,
    /// Bytes of one READ/WRITE (a multiple of `align`).
    pub request_size: u64,
    /// Requests in flight per lane.
    pub requests: usize,
    /// Zero-detection block size (0: off).
    pub sparse: u64,
    /// Largest zero range one zeroing operation covers.
    pub zero_piece: u64,
    /// Size of the ranges lanes claim from the work queue.
    pub work_piece: u64,
    /// Every request's offset and length are multiples of this.
    pub align: u64,
    /// READ replies in several chunks are assembled before being written
    /// (the destination needs whole blocks).
    pub stage_reads: bool,
    /// A regular-file destination is written with pwrite from the worker.
    pub direct_file_writes: bool,
    /// ... under one lock shared by the lanes.
    pub file_lock: bool,
}

/// Decides how the copy from `src` to `dst` runs with `cfg` on `cores`
/// cores.  Each rule's measurement is in BENCHMARKS.md.
pub fn plan(src: &EndFacts, dst: &EndFacts, cfg: &Config, cores: u32) -> Plan {
    let cores = cores.max(1);
    // A block device source is read through the page cache: any offset
    // works there.  Both granularities are powers of two, so the larger
    // is a multiple of the other.
    let src_align = if src.is_nbd() { src.align } else { 1 };
    let align = src_align.max(dst.align);
    // --allocated: data is written as read, zero blocks too, as nbdcopy
    // does (copy/multi-thread-copying.c; libnbd's copy-sparse-allocated
    // test compares the requests).
    let sparse_block = match cfg.sparse {
        _ if cfg.allocated => 0,
        Some(s) => s,
        None => dst.preferred.unwrap_or(0).max(4096),
    };
    let splice = splice_wins(src, dst, cfg, align, sparse_block);
    // A file source on the splice path never waits for a server to
    // produce data (cached pages move at once, the rest is read ahead by
    // io_uring): one lane with 2 MiB requests keeps the destination busy,
    // and the destination server gets fewer, larger writes (W6).
    let file_splice = splice && matches!(src.kind, EndKind::File(_)) && dst.is_nbd();

    let want = match (cfg.request_size_set, splice) {
        (false, true) if file_splice => FILE_SPLICE_REQUEST_SIZE,
        (false, true) => SPLICE_REQUEST_SIZE,
        _ => cfg.request_size,
    };
    // A rate limit wants smaller requests (copy/rate.rs).
    let want = super::rate::request_size(want, cfg.rate, cfg.request_size_set);
    let request_size = clamp_request_size(want, src, dst, align);

    // By default as many connections as cores (2 to 4): on 2 cores, 2
    // connections beat 4 on most workloads, since the servers share
    // those cores.
    let connections = match cfg.connections {
        0 if file_splice => 1,
        0 => cores.clamp(2, 4),
        n => n,
    };
    let mut lanes = connections
        .min(src.max_connections)
        .min(dst.max_connections)
        .max(1);
    if src.is_stream() || dst.is_stream() || cfg.synchronous {
        lanes = 1;
    }
    let threads = if cfg.threads == 0 { cores } else { cfg.threads };
    if !src.is_nbd() && !dst.is_nbd() {
        // Local copies: lanes only buy parallelism, one per thread.
        lanes = lanes.min(threads);
    }
    if let Some(s) = src.size {
        // No point in more lanes than requests' worth of work.
        let reqs = s.div_ceil(request_size).max(1);
        lanes = lanes.min(reqs.min(u32::MAX as u64) as u32);
    }

    // Buffered writes into one file are serialised by the kernel: from an
    // NBD source on the receive path one worker drives all lanes, and a
    // second thread only contends for that lock and for the servers'
    // cores (W7).  A spliced lane blocks its worker while a payload
    // arrives, so not there.  Nor for small scattered areas of a range
    // list: there a write is a new extent of the file each time, and one
    // worker writing stops reading replies meanwhile, so the source
    // server stalls on its full socket; two overlap (20,000 areas of 64
    // KiB into ext4: 0.99 s vs 1.38 s).
    let one_writer =
        cfg.threads == 0 && !splice && src.is_nbd() && dst.is_regular_file() && !cfg.small_areas;
    let workers = if one_writer {
        1
    } else {
        threads.min(lanes).max(1)
    };

    // queue-size bounds the bytes in flight of the whole copy (memory
    // does not grow with the connections); each lane gets its share, and
    // at least two requests.
    let requests = if cfg.synchronous {
        1
    } else {
        let share = (cfg.queue_size / lanes as u64).max(2 * request_size);
        (cfg.requests as u64).min(share / request_size).max(1) as usize
    };

    // Zero blocks are whole destination blocks.
    let sparse = match sparse_block {
        0 => 0,
        s => s.max(dst.align),
    };
    let zero_piece = match dst.kind {
        EndKind::Nbd { .. } => dst.max_effect.unwrap_or(COMPACT_MAX_EFFECT),
        EndKind::File(FileKind::Stream) => COMPACT_MAX_EFFECT,
        _ => EXTENDED_MAX_EFFECT,
    };
    let work_piece = match src.size {
        None => u64::MAX,
        // nbdcopy's pieces, whole requests: libnbd's tests compare the
        // exact list of writes and zeroes.  Not for incremental copies
        // (nbdcopy has none): their block status wants large ranges; nor
        // where an end speaks extended headers, whose one request covers
        // more than 4 GiB (a 256 GiB disk: 26 requests, not 2052).
        Some(_) if cfg.dirty_bitmap.is_none() && !extended(src) && !extended(dst) => {
            (NBDCOPY_WORK_PIECE / request_size * request_size).max(request_size)
        }
        Some(size) => {
            // Sources that report extents get bigger ranges: one block
            // status (and one zeroing request) then covers more.
            let max_piece = match src.max_effect {
                Some(m) if !cfg.no_extents && src.block_status => m,
                _ => PLAIN_WORK_PIECE,
            };
            // Large pieces, but enough of them to keep every lane busy.
            let per = size / (lanes as u64 * 4).max(1);
            per.clamp(request_size, max_piece.max(request_size)) / request_size * request_size
        }
    };
    Plan {
        splice,
        lanes,
        workers,
        request_size,
        requests,
        sparse,
        zero_piece,
        work_piece,
        align,
        stage_reads: dst.align > 1 && src.is_nbd(),
        direct_file_writes: dst.is_regular_file() && !cfg.uring_file_writes,
        file_lock: dst.is_regular_file() && cfg.file_lock,
    }
}

/// Whether lanes move data by splice.  Auto (`cfg.splice` None): only
/// where it measured faster: a unix-socket NBD source or a file (its
/// cached pages) into null:, a unix-socket NBD destination, or (NBD
/// sources) a file when zero detection is off.  Not over TCP (the pipe
/// fills in small pieces: no gain), not NBD -> file with zero detection
/// (the same two copies either way), not file -> file.
fn splice_wins(src: &EndFacts, dst: &EndFacts, cfg: &Config, align: u64, sparse: u64) -> bool {
    // TLS payloads are decrypted and encrypted in user space (no kernel
    // TLS), and block hashing (--blkhash, --verify) needs the bytes in user
    // space too (BENCHMARKS.md, issue 18): nothing to splice, also when
    // splicing was asked for.
    if src.tls || dst.tls || cfg.blkhash.is_some() || cfg.verify {
        return false;
    }
    // Pipes hand payloads on in pieces of what they hold, which need not
    // be whole blocks of a server that wants aligned requests.
    if align > 1 {
        return false;
    }
    // A lost connection is resumed by sending its requests again, which
    // the receive path can do at any point; a payload half in a pipe
    // cannot be taken back.
    if cfg.retries > 0 {
        return false;
    }
    // An explicit request size above the splice default is honoured by
    // the receive path (a pipe may not hold it whole), also when splicing
    // was asked for.
    if cfg.request_size_set && cfg.request_size > SPLICE_REQUEST_SIZE {
        return false;
    }
    let unix_src = match src.kind {
        EndKind::Nbd { unix } => unix,
        // Cached file pages go to the pipe by reference.
        EndKind::File(k) if k != FileKind::Stream && !matches!(dst.kind, EndKind::File(_)) => true,
        _ => return false,
    };
    match cfg.splice {
        Some(on) => on,
        None => {
            unix_src
                && match dst.kind {
                    EndKind::Null => true,
                    EndKind::Nbd { unix } => unix,
                    EndKind::File(k) => k != FileKind::Stream && sparse == 0,
                }
        }
    }
}

/// An NBD end with extended headers: one request covers more than 4 GiB.
fn extended(e: &EndFacts) -> bool {
    e.max_effect.is_some_and(|m| m > COMPACT_MAX_EFFECT)
}

/// `want` clamped to what both ends accept, and a multiple of `align`.
fn clamp_request_size(want: u64, src: &EndFacts, dst: &EndFacts, align: u64) -> u64 {
    let max = [src.max_payload, dst.max_payload]
        .into_iter()
        .flatten()
        .fold(want, u64::min);
    (max / align * align).max(align)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbd(unix: bool) -> EndFacts {
        EndFacts {
            kind: EndKind::Nbd { unix },
            size: Some(1 << 30),
            max_connections: u32::MAX,
            align: 1,
            preferred: Some(4096),
            max_payload: Some(32 << 20),
            max_effect: Some(COMPACT_MAX_EFFECT),
            block_status: true,
            tls: false,
        }
    }

    fn file(kind: FileKind) -> EndFacts {
        let size = (kind != FileKind::Stream).then_some(1 << 30);
        EndFacts::local(EndKind::File(kind), size, 1)
    }

    fn null() -> EndFacts {
        EndFacts::of(&Endpoint::Null)
    }

    const REG: FileKind = FileKind::Regular;
    const STREAM: FileKind = FileKind::Stream;

    fn cfg(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    /// (splice, lanes, workers, request size, requests per lane)
    type Want = (bool, u32, u32, u64, usize);

    /// (what, source, destination, config, cores) -> Want
    #[test]
    fn data_path_lanes_workers_and_sizes() {
        let d = Config::default();
        let no_sparse = cfg(|c| c.sparse = Some(0));
        let small = EndFacts {
            size: Some(100 << 10),
            ..nbd(true)
        };
        let single = EndFacts {
            max_connections: 1,
            ..nbd(true)
        };
        let aligned = EndFacts {
            align: 4096,
            ..nbd(true)
        };
        let tls = EndFacts {
            tls: true,
            ..nbd(true)
        };
        #[rustfmt::skip]
        let table: Vec<(&str, EndFacts, EndFacts, Config, u32, Want)> = vec![
            ("unix nbd -> unix nbd: splice, 1 MiB, 2 lanes on 2 cores",
             nbd(true), nbd(true), d.clone(), 2, (true, 2, 2, 1 << 20, 8)),
            ("4 cores: 4 lanes, 4 workers",
             nbd(true), nbd(true), d.clone(), 4, (true, 4, 4, 1 << 20, 4)),
            ("16 cores: at most 4 lanes",
             nbd(true), nbd(true), d.clone(), 16, (true, 4, 4, 1 << 20, 4)),
            ("tcp nbd -> tcp nbd: receive path, 256 KiB",
             nbd(false), nbd(false), d.clone(), 2, (false, 2, 2, 256 << 10, 32)),
            ("unix nbd -> null: splice",
             nbd(true), null(), d.clone(), 2, (true, 2, 2, 1 << 20, 8)),
            ("nbd -> file with zero detection: receive path, one writer",
             nbd(true), file(REG), d.clone(), 2, (false, 2, 1, 256 << 10, 32)),
            ("nbd -> file without zero detection: splice, two workers",
             nbd(true), file(REG), no_sparse.clone(), 2, (true, 2, 2, 1 << 20, 8)),
            ("nbd -> file, threads set: no single writer",
             nbd(true), file(REG), cfg(|c| c.threads = 2), 2, (false, 2, 2, 256 << 10, 32)),
            ("nbd -> file, small scattered areas of a range list: no single writer",
             nbd(true), file(REG), cfg(|c| c.small_areas = true), 2, (false, 2, 2, 256 << 10, 32)),
            ("file -> unix nbd: splice, one lane, 2 MiB",
             file(REG), nbd(true), d.clone(), 2, (true, 1, 1, 2 << 20, 8)),
            ("file -> unix nbd, -C 2: two lanes",
             file(REG), nbd(true), cfg(|c| c.connections = 2), 2, (true, 2, 2, 2 << 20, 4)),
            ("file -> file: receive path, lanes <= threads",
             file(REG), file(REG), cfg(|c| c.threads = 1), 2, (false, 1, 1, 256 << 10, 64)),
            ("stream -> nbd: one lane",
             file(STREAM), nbd(true), d.clone(), 2, (false, 1, 1, 256 << 10, 64)),
            ("nbd -> stream: one lane",
             nbd(true), file(STREAM), d.clone(), 2, (false, 1, 1, 256 << 10, 64)),
            ("synchronous: one lane, one request",
             nbd(true), nbd(true), cfg(|c| c.synchronous = true), 2, (true, 1, 1, 1 << 20, 1)),
            ("no multi-conn: one lane",
             single, nbd(true), d.clone(), 4, (true, 1, 1, 1 << 20, 16)),
            ("tiny source: lanes capped by its requests",
             small, nbd(false), d.clone(), 4, (false, 1, 1, 256 << 10, 64)),
            ("aligned server: receive path",
             aligned, nbd(true), d.clone(), 2, (false, 2, 2, 256 << 10, 32)),
            ("explicit 4 MiB requests: receive path even with splice on",
             nbd(true), nbd(true), cfg(|c| { c.request_size = 4 << 20; c.request_size_set = true; c.splice = Some(true) }),
             2, (false, 2, 2, 4 << 20, 2)),
            ("splice off",
             nbd(true), nbd(true), cfg(|c| c.splice = Some(false)), 2, (false, 2, 2, 256 << 10, 32)),
            ("retries: receive path even with splice on",
             nbd(true), nbd(true), cfg(|c| { c.retries = 3; c.splice = Some(true) }), 2, (false, 2, 2, 256 << 10, 32)),
            ("block hash: receive path even with splice on",
             nbd(true), nbd(true), cfg(|c| { c.blkhash = Some(Default::default()); c.splice = Some(true) }),
             2, (false, 2, 2, 256 << 10, 32)),
            ("verify: receive path",
             nbd(true), nbd(true), cfg(|c| c.verify = true), 2, (false, 2, 2, 256 << 10, 32)),
            ("splice forced over tcp",
             nbd(false), nbd(false), cfg(|c| c.splice = Some(true)), 2, (true, 2, 2, 1 << 20, 8)),
            ("tls source: receive path, also with splice on",
             tls, nbd(true), cfg(|c| c.splice = Some(true)), 2, (false, 2, 2, 256 << 10, 32)),
            ("tls destination: receive path",
             nbd(true), tls, d.clone(), 2, (false, 2, 2, 256 << 10, 32)),
            ("file -> tls nbd: receive path",
             file(REG), tls, d.clone(), 2, (false, 2, 2, 256 << 10, 32)),
        ];
        for (what, src, dst, c, cores, want) in table {
            let p = plan(&src, &dst, &c, cores);
            assert_eq!(
                (p.splice, p.lanes, p.workers, p.request_size, p.requests),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn request_size_keeps_limits_and_alignment() {
        let limited = EndFacts {
            max_payload: Some(64 << 10),
            ..nbd(false)
        };
        let p = plan(&nbd(false), &limited, &Config::default(), 2);
        assert_eq!(p.request_size, 64 << 10);
        // 1000-byte requests asked of a 4 KiB-block server: one block.
        let aligned = EndFacts {
            align: 4096,
            ..nbd(false)
        };
        let c = cfg(|c| {
            c.request_size = 1000;
            c.request_size_set = true
        });
        let p = plan(&aligned, &file(REG), &c, 2);
        assert_eq!((p.request_size, p.align), (4096, 4096));
        assert!(!p.stage_reads, "a file takes chunks at any offset");
        // A block device destination with 4 KiB sectors: aligned too.
        let dev = EndFacts {
            align: 4096,
            ..file(FileKind::Block)
        };
        let p = plan(&nbd(false), &dev, &Config::default(), 2);
        assert_eq!((p.align, p.sparse), (4096, 4096));
        assert!(p.stage_reads);
        // ... but a block device source is read through the page cache.
        let p = plan(&dev, &file(REG), &Config::default(), 2);
        assert_eq!(p.align, 1);
    }

    #[test]
    fn zero_detection_block() {
        let big = EndFacts {
            preferred: Some(64 << 10),
            ..nbd(false)
        };
        let d = Config::default();
        assert_eq!(plan(&nbd(false), &file(REG), &d, 2).sparse, 4096);
        assert_eq!(plan(&nbd(false), &big, &d, 2).sparse, 64 << 10);
        let off = cfg(|c| c.sparse = Some(0));
        assert_eq!(plan(&nbd(false), &big, &off, 2).sparse, 0);
        let aligned = EndFacts {
            align: 8192,
            ..nbd(false)
        };
        let c = cfg(|c| c.sparse = Some(512));
        assert_eq!(plan(&nbd(false), &aligned, &c, 2).sparse, 8192);
        // --allocated: no zero detection, also with -S.
        let c = cfg(|c| {
            c.allocated = true;
            c.sparse = Some(4096)
        });
        assert_eq!(plan(&nbd(false), &big, &c, 2).sparse, 0);
    }

    #[test]
    fn pieces() {
        let d = Config::default();
        let ext = EndFacts {
            max_effect: Some(EXTENDED_MAX_EFFECT),
            ..nbd(false)
        };
        assert_eq!(
            plan(&nbd(false), &nbd(false), &d, 2).zero_piece,
            COMPACT_MAX_EFFECT
        );
        assert_eq!(
            plan(&nbd(false), &ext, &d, 2).zero_piece,
            EXTENDED_MAX_EFFECT
        );
        assert_eq!(
            plan(&nbd(false), &file(STREAM), &d, 2).zero_piece,
            COMPACT_MAX_EFFECT
        );
        assert_eq!(
            plan(&nbd(false), &file(REG), &d, 2).zero_piece,
            EXTENDED_MAX_EFFECT
        );
        // Work ranges: nbdcopy's 128 MiB pieces, whole requests, for
        // every source of known size, with or without extents.
        let huge = EndFacts {
            size: Some(1 << 50),
            ..ext
        };
        let dirty = cfg(|c| c.dirty_bitmap = Some("b0".into()));
        #[rustfmt::skip]
        let table: Vec<(&str, EndFacts, Config, u64)> = vec![
            ("compact headers", EndFacts { size: Some(1 << 50), ..nbd(false) }, d.clone(), 128 << 20),
            // Extended headers: a quarter of each lane's share, up to the
            // largest range.
            ("extended headers", huge, d.clone(), EXTENDED_MAX_EFFECT),
            ("extended, no extents", huge, cfg(|c| c.no_extents = true), 128 << 20),
            ("1 GiB", nbd(false), d.clone(), 128 << 20),
            ("tiny source", EndFacts { size: Some(1000), ..nbd(false) }, d.clone(), 128 << 20),
            ("3 MiB requests: whole requests", nbd(false),
             cfg(|c| { c.request_size = 3 << 20; c.request_size_set = true }), 42 * (3 << 20)),
            ("stream", file(STREAM), d.clone(), u64::MAX),
            // Incremental copies: a quarter of each lane's share, within
            // [request size, the source's largest range].
            ("dirty bitmap, huge", huge, dirty.clone(), EXTENDED_MAX_EFFECT),
            ("dirty bitmap, 1 GiB", nbd(false), dirty.clone(), (1 << 30) / 8),
            ("dirty bitmap, tiny", EndFacts { size: Some(1000), ..nbd(false) }, dirty, 256 << 10),
        ];
        for (what, src, c, want) in table {
            let p = plan(&src, &null(), &c, 2);
            assert_eq!(p.work_piece, want, "{what}");
            assert!(
                p.work_piece == u64::MAX || p.work_piece % p.request_size == 0,
                "{what}"
            );
        }
    }

    #[test]
    fn file_destinations() {
        let d = Config::default();
        let p = plan(&nbd(false), &file(REG), &d, 2);
        assert!(p.direct_file_writes && p.file_lock);
        let c = cfg(|c| {
            c.uring_file_writes = true;
            c.file_lock = false
        });
        let p = plan(&nbd(false), &file(REG), &c, 2);
        assert!(!p.direct_file_writes && !p.file_lock);
        let p = plan(&nbd(false), &file(FileKind::Block), &d, 2);
        assert!(!p.direct_file_writes && !p.file_lock);
    }
}
