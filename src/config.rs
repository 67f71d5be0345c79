// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Copy options: nbdcopy's option names, their defaults, and value parsing.
//
// Copy options: nbdcopy's long option names, their defaults, and parsing of
// values (including nbdcopy's human sizes such as "1M" and "256k").

pub use crate::engine::EngineChoice;
use crate::error::{Error, Result};
pub use crate::size::parse_size;

/// Largest READ/WRITE payload the NBD protocol guarantees (32 MiB).
pub const MAX_REQUEST_SIZE: u64 = 32 << 20;
/// Smallest accepted request size.
pub const MIN_REQUEST_SIZE: u64 = 512;

/// Every option of a copy job.  `Default` gives nbdcopy's defaults, but
/// for `connections` (see there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Maximum NBD connections per side (multi-conn).  0 (the default):
    /// the number of cores, at least 2 and at most 4 (nbdcopy's 4).
    pub connections: u32,
    /// Maximum requests in flight per connection; default 64.
    pub requests: u32,
    /// Maximum bytes of one READ/WRITE; default 256 KiB (1 MiB on the
    /// splice data path, where per-request system calls dominate).
    pub request_size: u64,
    /// `request_size` was set explicitly (then it is used as given).
    pub request_size_set: bool,
    /// Set by the job, not an option: the work is a range list of small
    /// areas (mean below 1 MiB), scattered over the source.
    pub small_areas: bool,
    /// Maximum bytes in flight per connection; default 16 MiB.
    pub queue_size: u64,
    /// Zero-detection block size; None = default (4096 or the destination's
    /// preferred block size if larger); Some(0) = off.
    pub sparse: Option<u64>,
    /// Worker threads; 0 = number of cores.
    pub threads: u32,
    /// Create a fully allocated destination.
    pub allocated: bool,
    /// The destination already reads as zeroes.
    pub destination_is_zero: bool,
    /// Flush the destination at the end.
    pub flush: bool,
    /// Ignore source extent information.
    pub no_extents: bool,
    /// One request at a time, in order.
    pub synchronous: bool,
    /// Pass informational and debug messages to the log callback (the
    /// library itself never prints).
    pub verbose: bool,
    /// Give up when no I/O completes for this many seconds while only
    /// reads, writes and block status queries are outstanding (0 = never).
    pub timeout_secs: u64,
    /// The same limit while a FLUSH, WRITE_ZEROES, fsync or fallocate is
    /// outstanding, which may legitimately take long (0, the default:
    /// never, like nbdcopy).
    pub slow_timeout_secs: u64,
    /// Zero an NBD destination up front when the source is mostly holes
    /// (see `Job::run_inner`).  Tuning key "fast-zero", default on.
    pub fast_zero: bool,
    /// Write regular-file destinations through io_uring rather than with
    /// pwrite from the worker.  Tuning key "uring-file-writes", default
    /// off.
    pub uring_file_writes: bool,
    /// Serialise direct writes into one regular file across lanes.  Tuning
    /// key "file-lock", default on.
    pub file_lock: bool,
    /// Capacity of the splice pipes (None: 4 request sizes, at least
    /// 1 MiB).  Tuning key "pipe-size".
    pub pipe_size: Option<u64>,
    /// Move READ payloads by splice (never through user space): None
    /// (auto, the default) where it is measured to win, Some(true) wherever
    /// the source is NBD, Some(false) never.  An nbdcpy extension.
    pub splice: Option<bool>,
    /// Reconnect attempts after a lost NBD connection (0, the default:
    /// none, like nbdcopy).  Config key "retries".
    pub retries: u32,
    /// Delay before the first reconnect attempt, doubled for each further
    /// one up to `RETRY_DELAY_CAP`.  Config key "retry-delay" (seconds,
    /// fractions allowed).
    pub retry_delay: std::time::Duration,
    /// Compute the block hash of the source as it is copied (nbdcopy 1.24's
    /// --blkhash): key "blkhash", value "DIGEST[/BLOCKSIZE]" or empty for
    /// sha256/64k.  None: off.
    pub blkhash: Option<crate::blkhash::Spec>,
    /// Write the block hash (hex and a newline) to this file after a
    /// successful copy; implies "blkhash".  Key "blkhash-file".
    pub blkhash_file: Option<String>,
    /// Read the destination back after the copy and compare its block hash
    /// with the source's (an nbdcpy extension).  Key "verify".
    pub verify: bool,
    /// Most bytes per second read from the source, over all connections
    /// and threads (0, the default: no limit).  Option "rate".
    pub rate: u64,
    /// Copy only the blocks this qemu dirty bitmap marks dirty (the
    /// source's `qemu:dirty-bitmap:NAME` meta context): incremental copies.
    pub dirty_bitmap: Option<String>,
    /// Where in the source the copied range starts (default 0).
    pub offset: u64,
    /// How many bytes to copy (None: to the source's end).
    pub length: Option<u64>,
    /// Where in the destination the range goes (None: at `offset`).
    pub destination_offset: Option<u64>,
    /// TLS settings for nbds:// endpoints whose URI does not give them
    /// (keys "tls-certificates", "tls-verify-peer", "tls-hostname",
    /// "tls-psk-file", "tls-username"; the URI's own parameters win).
    pub tls: crate::proto::uri::TlsParams,
    /// How the copy talks to the kernel: key "engine" = "auto" (the
    /// default: io_uring where the kernel allows it, else epoll),
    /// "io_uring" or "epoll".
    pub engine: EngineChoice,
    /// Copy only the areas this file lists, one `OFFSET LENGTH` a line
    /// ("-": standard input).  Key "ranges-file", option --ranges.
    pub ranges_file: Option<String>,
    /// The areas given with `nbdcpy_config_set_ranges` (sorted and
    /// merged); wins over `ranges_file`.
    pub ranges: Option<std::sync::Arc<crate::rangelist::RangeList>>,
    /// Where the private directories for the sockets of `[ CMD ]` servers
    /// are made (key "socket-dir"; None, the default: `TMPDIR`, else
    /// /tmp).
    pub socket_dir: Option<String>,
    /// What the copy leaves in the host's page cache of a local file or
    /// block device: key "page-cache" = "drop" (the default: written
    /// pages are written back and dropped behind the copy, pages the copy
    /// read in are dropped, pages cached before stay) or "keep".
    pub page_cache: PageCacheMode,
    /// Record the durable work in this file and resume from it (key
    /// "checkpoint", option --checkpoint; None: off).
    pub checkpoint: Option<String>,
    /// How often the work is recorded, at most (key
    /// "checkpoint-interval", seconds, fractions allowed; default 1; 0:
    /// only every GiB and at the end).
    pub checkpoint_interval: std::time::Duration,
}

/// The "page-cache" option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageCacheMode {
    /// Leave the page cache as the copy found it (as far as it can).
    #[default]
    Drop,
    /// Leave whatever the copy read and wrote cached.
    Keep,
}

/// The longest wait between two reconnect attempts (or `retry_delay`,
/// when that is longer).
pub const RETRY_DELAY_CAP: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for Config {
    fn default() -> Self {
        Config {
            connections: 0,
            requests: 64,
            request_size: 256 << 10,
            request_size_set: false,
            small_areas: false,
            queue_size: 16 << 20,
            sparse: None,
            threads: 0,
            allocated: false,
            destination_is_zero: false,
            flush: false,
            no_extents: false,
            synchronous: false,
            verbose: false,
            timeout_secs: 60,
            slow_timeout_secs: 0,
            fast_zero: true,
            uring_file_writes: false,
            file_lock: true,
            pipe_size: None,
            splice: None,
            retries: 0,
            retry_delay: std::time::Duration::from_secs(1),
            blkhash: None,
            blkhash_file: None,
            verify: false,
            rate: 0,
            dirty_bitmap: None,
            offset: 0,
            length: None,
            destination_offset: None,
            tls: Default::default(),
            engine: EngineChoice::Auto,
            ranges_file: None,
            ranges: None,
            socket_dir: None,
            page_cache: PageCacheMode::Drop,
            checkpoint: None,
            checkpoint_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// The option names `Config::set` accepts, for messages and `--help`.
pub const OPTION_NAMES: &[&str] = &[
    "allocated",
    "connections",
    "destination-is-zero",
    "target-is-zero",
    "flush",
    "no-extents",
    "queue-size",
    "request-size",
    "requests",
    "sparse",
    "splice",
    "synchronous",
    "threads",
    "timeout",
    "slow-timeout",
    "verbose",
    "fast-zero",
    "uring-file-writes",
    "file-lock",
    "pipe-size",
    "retries",
    "retry-delay",
    "blkhash",
    "blkhash-file",
    "verify",
    "rate",
    "dirty-bitmap",
    "offset",
    "length",
    "destination-offset",
    "tls-certificates",
    "tls-verify-peer",
    "tls-hostname",
    "tls-psk-file",
    "tls-username",
    "engine",
    "ranges-file",
    "socket-dir",
    "page-cache",
    "checkpoint",
    "checkpoint-interval",
];

impl Config {
    /// Sets option `name` (nbdcopy's long option without the dashes) from
    /// its text form.  Flags take None, "1" or "0" (also "true"/"false").
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        match name {
            "allocated" => self.allocated = parse_flag(name, value)?,
            "destination-is-zero" | "target-is-zero" => {
                self.destination_is_zero = parse_flag(name, value)?
            }
            "flush" => self.flush = parse_flag(name, value)?,
            "no-extents" => self.no_extents = parse_flag(name, value)?,
            "splice" => {
                self.splice = match value {
                    Some("auto") => None,
                    _ => Some(parse_flag(name, value)?),
                }
            }
            "synchronous" => self.synchronous = parse_flag(name, value)?,
            "engine" => {
                self.engine = match need(name, value)? {
                    "auto" => EngineChoice::Auto,
                    "io_uring" | "io-uring" | "uring" => EngineChoice::IoUring,
                    "epoll" => EngineChoice::Epoll,
                    v => {
                        return Err(Error::new(
                            libc::EINVAL,
                            format!("engine: expected auto, io_uring or epoll, not '{v}'"),
                        ))
                    }
                }
            }
            "page-cache" => {
                self.page_cache = match need(name, value)? {
                    "drop" => PageCacheMode::Drop,
                    "keep" => PageCacheMode::Keep,
                    v => {
                        return Err(Error::new(
                            libc::EINVAL,
                            format!("page-cache: expected drop or keep, not '{v}'"),
                        ))
                    }
                }
            }
            "blkhash" => {
                self.blkhash = Some(
                    crate::blkhash::Spec::parse(value.unwrap_or(""))
                        .map_err(|e| bad(name, value, &e))?,
                )
            }
            "blkhash-file" => {
                let f = need(name, value)?;
                if f.is_empty() {
                    return Err(bad(name, value, "expected a file name"));
                }
                self.blkhash_file = Some(f.to_string());
                self.blkhash.get_or_insert_with(Default::default);
            }
            "verify" => self.verify = parse_flag(name, value)?,
            "verbose" => self.verbose = parse_flag(name, value)?,
            "connections" if value == Some("auto") => self.connections = 0,
            "connections" => {
                self.connections = parse_u32_in(name, need(name, value)?, 1, 64)?;
            }
            "request-size" if value == Some("auto") => {
                self.request_size = Config::default().request_size;
                self.request_size_set = false;
            }
            "sparse" if value == Some("auto") => self.sparse = None,
            "pipe-size" if value == Some("auto") => self.pipe_size = None,
            "socket-dir" => {
                let d = need(name, value)?;
                if !d.starts_with('/') || d.contains('\0') {
                    return Err(bad(name, value, "must be an absolute directory path"));
                }
                // The socket's path, DIR/nbdcpy-XXXXXX/sock, must fit
                // sun_path (108 bytes).
                if d.len() > 80 {
                    return Err(bad(name, value, "must be at most 80 bytes long"));
                }
                self.socket_dir = Some(d.to_string());
            }
            "requests" => self.requests = parse_u32_in(name, need(name, value)?, 1, 1024)?,
            "threads" => self.threads = parse_u32_in(name, need(name, value)?, 0, 256)?,
            "timeout" => {
                self.timeout_secs = parse_u32_in(name, need(name, value)?, 0, 86400)? as u64
            }
            "slow-timeout" => {
                self.slow_timeout_secs =
                    parse_u32_in(name, need(name, value)?, 0, 7 * 86400)? as u64
            }
            "retries" => self.retries = parse_u32_in(name, need(name, value)?, 0, 1000)?,
            "retry-delay" => {
                let v = need(name, value)?;
                self.retry_delay = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=3600.0).contains(s))
                    .map(std::time::Duration::from_secs_f64)
                    .ok_or_else(|| bad(name, value, "must be seconds between 0 and 3600"))?;
            }
            "checkpoint" => {
                let v = need(name, value)?;
                self.checkpoint = (!v.is_empty()).then(|| v.to_string());
            }
            "checkpoint-interval" => {
                let v = need(name, value)?;
                self.checkpoint_interval = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=86400.0).contains(s))
                    .map(std::time::Duration::from_secs_f64)
                    .ok_or_else(|| bad(name, value, "must be seconds between 0 and 86400"))?;
            }
            "tls-certificates" => self.tls.certificates = Some(need(name, value)?.to_string()),
            "tls-hostname" => self.tls.hostname = Some(need(name, value)?.to_string()),
            "tls-psk-file" => self.tls.psk_file = Some(need(name, value)?.to_string()),
            "tls-username" => self.tls.username = Some(need(name, value)?.to_string()),
            "tls-verify-peer" => self.tls.verify_peer = Some(parse_flag(name, value)?),
            "fast-zero" => self.fast_zero = parse_flag(name, value)?,
            "uring-file-writes" => self.uring_file_writes = parse_flag(name, value)?,
            "file-lock" => self.file_lock = parse_flag(name, value)?,
            "pipe-size" => {
                let v = parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?;
                if !(4096..=(1 << 30)).contains(&v) {
                    return Err(bad(name, value, "must be between 4k and 1G"));
                }
                self.pipe_size = Some(v);
            }
            "rate" => {
                // A size per second: "10M" or "10M/s"; 0 is no limit.
                let v = need(name, value)?;
                let v = v.trim().strip_suffix("/s").unwrap_or(v);
                self.rate = parse_size(v).map_err(|e| bad(name, value, &e))?;
            }
            "request-size" => {
                let v = parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?;
                if !(MIN_REQUEST_SIZE..=MAX_REQUEST_SIZE).contains(&v) || !v.is_power_of_two() {
                    return Err(bad(name, value, "must be a power of 2 between 512 and 32M"));
                }
                self.request_size = v;
                self.request_size_set = true;
            }
            "queue-size" => {
                let v = parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?;
                if !(MIN_REQUEST_SIZE..=(1 << 40)).contains(&v) {
                    return Err(bad(name, value, "must be between 512 and 1T"));
                }
                self.queue_size = v;
            }
            "dirty-bitmap" => {
                let v = need(name, value)?;
                // The meta context name must fit the protocol's 4 KiB.
                if v.is_empty() || v.len() > 4000 || v.contains('\0') {
                    return Err(bad(name, value, "must be a bitmap name of 1 to 4000 bytes"));
                }
                self.dirty_bitmap = Some(v.to_string());
            }
            "ranges-file" => {
                let f = need(name, value)?;
                if f.is_empty() {
                    return Err(bad(
                        name,
                        value,
                        "expected a file name, or - for standard input",
                    ));
                }
                self.ranges_file = Some(f.to_string());
                self.ranges = None;
            }
            "offset" => {
                self.offset = parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?
            }
            "length" => {
                self.length =
                    Some(parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?)
            }
            "destination-offset" => {
                self.destination_offset =
                    Some(parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?)
            }
            "sparse" => {
                let v = parse_size(need(name, value)?).map_err(|e| bad(name, value, &e))?;
                if v != 0 && (!(512..=MAX_REQUEST_SIZE).contains(&v) || !v.is_power_of_two()) {
                    return Err(bad(
                        name,
                        value,
                        "must be 0 (off) or a power of 2 between 512 and 32M",
                    ));
                }
                self.sparse = Some(v);
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown option \"{name}\" (known: {})",
                    OPTION_NAMES.join(", ")
                )))
            }
        }
        Ok(())
    }
}

impl Config {
    /// The current value of option `name` in the text form `set` takes
    /// back ("1"/"0" for flags, sizes and counts in decimal bytes and
    /// units; "auto" where the copy decides; "" for an option without a
    /// value that is not set).
    pub fn get(&self, name: &str) -> Result<String> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let opt_n = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        let auto = |v: Option<u64>| v.map_or_else(|| "auto".to_string(), |n| n.to_string());
        Ok(match name {
            "allocated" => flag(self.allocated),
            "destination-is-zero" | "target-is-zero" => flag(self.destination_is_zero),
            "flush" => flag(self.flush),
            "no-extents" => flag(self.no_extents),
            "synchronous" => flag(self.synchronous),
            "verbose" => flag(self.verbose),
            "verify" => flag(self.verify),
            "fast-zero" => flag(self.fast_zero),
            "uring-file-writes" => flag(self.uring_file_writes),
            "file-lock" => flag(self.file_lock),
            "splice" => match self.splice {
                None => "auto".into(),
                Some(b) => flag(b),
            },
            "engine" => match self.engine {
                EngineChoice::Auto => "auto",
                EngineChoice::IoUring => "io_uring",
                EngineChoice::Epoll => "epoll",
            }
            .into(),
            "connections" => auto(Some(self.connections as u64).filter(|&n| n != 0)),
            "requests" => self.requests.to_string(),
            "threads" => self.threads.to_string(),
            "timeout" => self.timeout_secs.to_string(),
            "slow-timeout" => self.slow_timeout_secs.to_string(),
            "retries" => self.retries.to_string(),
            "retry-delay" => self.retry_delay.as_secs_f64().to_string(),
            "checkpoint" => opt(&self.checkpoint),
            "checkpoint-interval" => self.checkpoint_interval.as_secs_f64().to_string(),
            "request-size" => auto(Some(self.request_size).filter(|_| self.request_size_set)),
            "queue-size" => self.queue_size.to_string(),
            "sparse" => auto(self.sparse),
            "pipe-size" => auto(self.pipe_size),
            "rate" => self.rate.to_string(),
            "offset" => self.offset.to_string(),
            "length" => opt_n(self.length),
            "destination-offset" => opt_n(self.destination_offset),
            "dirty-bitmap" => opt(&self.dirty_bitmap),
            "blkhash" => self.blkhash.map(|b| b.to_string()).unwrap_or_default(),
            "blkhash-file" => opt(&self.blkhash_file),
            "tls-certificates" => opt(&self.tls.certificates),
            "tls-hostname" => opt(&self.tls.hostname),
            "tls-psk-file" => opt(&self.tls.psk_file),
            "tls-username" => opt(&self.tls.username),
            "tls-verify-peer" => self.tls.verify_peer.map(flag).unwrap_or_default(),
            "socket-dir" => opt(&self.socket_dir),
            "ranges-file" => opt(&self.ranges_file),
            "page-cache" => match self.page_cache {
                PageCacheMode::Drop => "drop",
                PageCacheMode::Keep => "keep",
            }
            .into(),
            _ => {
                return Err(Error::invalid(format!(
                    "unknown option \"{name}\" (known: {})",
                    OPTION_NAMES.join(", ")
                )))
            }
        })
    }
}

fn bad(name: &str, value: Option<&str>, why: &str) -> Error {
    Error::invalid(format!(
        "bad value \"{}\" for option \"{name}\": {why}",
        value.unwrap_or("")
    ))
}

fn need<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str> {
    value.ok_or_else(|| Error::invalid(format!("option \"{name}\" needs a value")))
}

fn parse_flag(name: &str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("1") | Some("true") | Some("yes") | Some("on") => Ok(true),
        Some("0") | Some("false") | Some("no") | Some("off") => Ok(false),
        Some(_) => Err(bad(name, value, "expected 1 or 0")),
    }
}

fn parse_u32_in(name: &str, s: &str, min: u32, max: u32) -> Result<u32> {
    let v: u32 = s
        .trim()
        .parse()
        .map_err(|_| bad(name, Some(s), "not a number"))?;
    if v < min || v > max {
        return Err(bad(
            name,
            Some(s),
            &format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn human_sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2s"), Ok(1024));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert!(parse_size("16E").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn set_options() {
        let mut c = Config::default();
        c.set("request-size", Some("1M")).unwrap();
        assert_eq!(c.request_size, 1 << 20);
        c.set("connections", Some("2")).unwrap();
        assert_eq!(c.connections, 2);
        c.set("flush", None).unwrap();
        assert!(c.flush);
        c.set("flush", Some("0")).unwrap();
        assert!(!c.flush);
        c.set("target-is-zero", Some("1")).unwrap();
        assert!(c.destination_is_zero);
        c.set("sparse", Some("0")).unwrap();
        assert_eq!(c.sparse, Some(0));
        c.set("threads", Some("0")).unwrap();
        assert_eq!(c.threads, 0);
        c.set("blkhash", None).unwrap();
        assert_eq!(c.blkhash, Some(crate::blkhash::Spec::default()));
        c.set("blkhash", Some("md5/4")).unwrap();
        assert_eq!(c.blkhash.unwrap().block_size, 4);
        let mut c = Config::default();
        c.set("blkhash-file", Some("out.hash")).unwrap();
        assert_eq!(c.blkhash, Some(crate::blkhash::Spec::default()));
        assert_eq!(c.blkhash_file.as_deref(), Some("out.hash"));
        let e = c.set("blkhash", Some("crc32/64k")).unwrap_err();
        assert!(
            e.msg.contains("crc32") && e.msg.contains("sha256"),
            "{}",
            e.msg
        );
        c.set("verify", None).unwrap();
        assert!(c.verify);
        c.set("rate", Some("10M")).unwrap();
        assert_eq!(c.rate, 10 << 20);
        c.set("rate", Some("512k/s")).unwrap();
        assert_eq!(c.rate, 512 << 10);
        c.set("rate", Some("0")).unwrap();
        assert_eq!(c.rate, 0);
        assert!(c.set("rate", Some("fast")).is_err());
        c.set("offset", Some("1M")).unwrap();
        c.set("length", Some("64k")).unwrap();
        c.set("destination-offset", Some("2s")).unwrap();
        c.set("dirty-bitmap", Some("bitmap0")).unwrap();
        assert_eq!(
            (c.offset, c.length, c.destination_offset),
            (1 << 20, Some(64 << 10), Some(1024))
        );
        assert_eq!(c.dirty_bitmap.as_deref(), Some("bitmap0"));
        assert!(c.set("dirty-bitmap", Some("")).is_err());
        assert!(c.set("offset", Some("1X")).is_err());
        assert!(c.set("length", None).is_err());
        c.set("tls-psk-file", Some("/k.psk")).unwrap();
        c.set("tls-username", Some("alice")).unwrap();
        c.set("tls-certificates", Some("/pki")).unwrap();
        c.set("tls-hostname", Some("srv")).unwrap();
        c.set("tls-verify-peer", Some("false")).unwrap();
        assert_eq!(
            c.tls,
            crate::proto::uri::TlsParams {
                certificates: Some("/pki".into()),
                verify_peer: Some(false),
                hostname: Some("srv".into()),
                psk_file: Some("/k.psk".into()),
                username: Some("alice".into()),
            }
        );
        assert!(c.set("tls-psk-file", None).is_err());
        c.set("ranges-file", Some("changed.txt")).unwrap();
        assert_eq!(c.ranges_file.as_deref(), Some("changed.txt"));
        assert!(c.set("ranges-file", Some("")).is_err());
        assert!(c.set("ranges-file", None).is_err());
    }

    #[test]
    fn retries_and_their_delay() {
        let mut c = Config::default();
        assert_eq!((c.retries, c.retry_delay), (0, Duration::from_secs(1)));
        c.set("retries", Some("4")).unwrap();
        c.set("retry-delay", Some("0.25")).unwrap();
        assert_eq!((c.retries, c.retry_delay), (4, Duration::from_millis(250)));
        for bad in ["-1", "soon", "NaN", "3601", ""] {
            let e = c.set("retry-delay", Some(bad)).unwrap_err();
            assert!(e.msg.contains("retry-delay"), "{bad}: {}", e.msg);
        }
        assert!(c.set("retries", Some("1001")).is_err());
        assert_eq!((c.retries, c.retry_delay), (4, Duration::from_millis(250)));
    }

    #[test]
    fn every_key_reads_back_what_set_takes() {
        let d = Config::default();
        for k in OPTION_NAMES {
            let v = d.get(k).unwrap();
            // Setting a key to what it reads (when it has a value) changes
            // nothing, for the defaults and for set values alike.
            if !v.is_empty() {
                let mut c = Config::default();
                c.set(k, Some(&v))
                    .unwrap_or_else(|e| panic!("{k}={v}: {}", e.msg));
                assert_eq!(c, d, "{k}={v}");
            }
        }
        assert_eq!(d.get("connections").unwrap(), "auto");
        assert_eq!(d.get("timeout").unwrap(), "60");
        assert_eq!(d.get("fast-zero").unwrap(), "1");
        assert_eq!(d.get("pipe-size").unwrap(), "auto");
        assert_eq!(d.get("length").unwrap(), "");
        let mut c = Config::default();
        for (k, v, want) in [
            ("request-size", "1M", "1048576"),
            ("sparse", "0", "0"),
            ("retry-delay", "0.25", "0.25"),
            ("blkhash", "md5/4k", "md5/4096"),
            ("tls-verify-peer", "false", "0"),
            ("socket-dir", "/run/x", "/run/x"),
            ("target-is-zero", "1", "1"),
        ] {
            c.set(k, Some(v)).unwrap();
            assert_eq!(c.get(k).unwrap(), want, "{k}");
            let before = c.clone();
            c.set(k, Some(want)).unwrap();
            assert_eq!(c, before, "{k} round trip");
        }
        assert_eq!(c.get("destination-is-zero").unwrap(), "1");
        c.set("request-size", Some("auto")).unwrap();
        assert_eq!((c.request_size, c.request_size_set), (256 << 10, false));
        assert!(c.get("bogus").unwrap_err().msg.contains("bogus"));
        assert!(c.set("socket-dir", Some("relative")).is_err());
    }

    #[test]
    fn page_cache_drop_or_keep() {
        let mut c = Config::default();
        assert_eq!(c.page_cache, PageCacheMode::Drop);
        c.set("page-cache", Some("keep")).unwrap();
        assert_eq!(c.page_cache, PageCacheMode::Keep);
        c.set("page-cache", Some("drop")).unwrap();
        assert_eq!(c.page_cache, PageCacheMode::Drop);
        let e = c.set("page-cache", Some("sometimes")).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.msg.contains("page-cache") && e.msg.contains("sometimes"));
        assert!(c.set("page-cache", None).is_err());
        assert!(OPTION_NAMES.contains(&"page-cache"));
    }

    #[test]
    fn bad_options_say_which() {
        let mut c = Config::default();
        let e = c.set("bogus", Some("1")).unwrap_err();
        assert!(e.msg.contains("unknown option \"bogus\""), "{}", e.msg);
        let e = c.set("request-size", Some("33M")).unwrap_err();
        assert!(e.msg.contains("request-size") && e.msg.contains("33M"));
        let e = c.set("request-size", Some("1000")).unwrap_err();
        assert!(e.msg.contains("power of 2"));
        let e = c.set("connections", Some("0")).unwrap_err();
        assert!(e.msg.contains("connections"));
        let e = c.set("connections", None).unwrap_err();
        assert!(e.msg.contains("needs a value"));
        let e = c.set("flush", Some("maybe")).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(c, Config::default(), "failed sets change nothing");
    }
}
