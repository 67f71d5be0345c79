// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The copy job: opening both ends, checking sizes, splitting the work
//! into lanes and worker threads, progress reporting and the final result.

pub mod align;
pub mod buf;
pub mod dirty;
pub mod nbdconn;
pub mod ranges;
pub mod splice;
pub mod stats;
pub mod worker;

use crate::config::Config;
use crate::endpoint::file::FileKind;
use crate::endpoint::{Endpoint, Side, Spec};
use crate::error::{Error, Result};
use crate::proto::HeaderMode;
use stats::Shared;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Default request size on the splice data path.
const SPLICE_REQUEST_SIZE: u64 = 1 << 20;
/// ... and when the source is a file (see `run_inner`).
const FILE_SPLICE_REQUEST_SIZE: u64 = 2 << 20;
use worker::{DstIo, Lane, LaneParams, SrcIo, BIG_PIECE, ZERO_PIECE};

/// Hands out the source's byte range in large pieces to lanes.
pub struct WorkQueue {
    next: AtomicU64,
    end: u64,
    piece: u64,
}

impl WorkQueue {
    pub fn new(size: u64, piece: u64) -> WorkQueue {
        WorkQueue::range(0, size, piece)
    }

    /// Hands out [start, end) only.
    pub fn range(start: u64, end: u64, piece: u64) -> WorkQueue {
        WorkQueue {
            next: AtomicU64::new(start),
            end,
            piece: piece.max(1),
        }
    }

    /// The next [start, end) piece, or None when everything is handed out.
    pub fn claim(&self) -> Option<(u64, u64)> {
        let start = self.next.fetch_add(self.piece, Relaxed);
        if start >= self.end {
            return None;
        }
        Some((start, (start + self.piece).min(self.end)))
    }
}

/// The granularity requests to an endpoint keep (a power of two).
fn endpoint_align(ep: &Endpoint) -> u64 {
    match ep {
        Endpoint::Nbd(n) => (n.info.block_size.min as u64).max(1),
        Endpoint::File(f) => f.sector.max(1),
        Endpoint::Null => 1,
    }
}

/// Whether two endpoints name the same NBD export (same transport
/// address, unix socket paths resolved, and export name): refused, as
/// copying an export onto itself destroys it.
fn same_nbd_export(a: &Spec, b: &Spec) -> bool {
    use crate::proto::uri::{parse, Transport};
    let (Spec::Uri(a), Spec::Uri(b)) = (a, b) else {
        return false;
    };
    if a == b {
        return true;
    }
    let (Ok(a), Ok(b)) = (parse(a), parse(b)) else {
        return false;
    };
    let same_transport = match (&a.transport, &b.transport) {
        (Transport::Unix { path: p }, Transport::Unix { path: q }) => {
            p == q
                || matches!(
                    (std::fs::canonicalize(p), std::fs::canonicalize(q)),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        (Transport::Tcp { host: h, port: p }, Transport::Tcp { host: i, port: q }) => {
            h.eq_ignore_ascii_case(i) && p == q
        }
        (x, y) => x == y,
    };
    same_transport && a.export_name == b.export_name
}

/// An opened copy job (`struct nbdcpy`).
pub struct Job {
    src_spec: Spec,
    dst_spec: Spec,
    src: Endpoint,
    dst: Endpoint,
    cfg: Config,
    shared: Arc<Shared>,
    ran: bool,
    log: Option<Logger>,
    /// What part of the source is copied, and where it goes.
    window: ranges::Window,
}

/// How much a log message matters (the C API's `NBDCPY_LOG_*` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something the user should know; always passed on.
    Warning = 1,
    /// What was negotiated and decided; only with `verbose`.
    Info = 2,
    /// Details for debugging; only with `verbose`.
    Debug = 3,
}

/// A function receiving log messages.
pub type LogFn = dyn Fn(Level, &str) + Send;
/// Where a job's log messages go (the library never prints them).
pub type Logger = Box<LogFn>;

/// The job's logger and its verbosity, borrowed for one run.
struct Log<'a> {
    sink: Option<&'a LogFn>,
    verbose: bool,
}

impl Log<'_> {
    /// Passes the message on if there is a logger and the level is
    /// wanted: warnings always, the rest with `verbose`.
    fn emit(&self, level: Level, msg: impl FnOnce() -> String) {
        if let Some(f) = self.sink {
            if level == Level::Warning || self.verbose {
                f(level, &msg());
            }
        }
    }
}

/// A limit in seconds as a wait bound (0: practically unbounded).
fn limit(secs: u64) -> Duration {
    Duration::from_secs(if secs > 0 { secs } else { 100 * 365 * 86400 })
}

impl Job {
    /// Opens both ends, negotiates, and checks that the copy can work.
    pub fn open(src_spec: Spec, dst_spec: Spec, cfg: Config) -> Result<Job> {
        if same_nbd_export(&src_spec, &dst_spec) {
            return Err(Error::invalid(format!(
                "source {src_spec} and destination {dst_spec} are the same NBD export: \
                 copying it onto itself would destroy it"
            )));
        }
        let src = Endpoint::open(&src_spec, Side::Source, &cfg)?;
        let dst = Endpoint::open(&dst_spec, Side::Destination, &cfg)?;
        // Nothing has been written yet (a destination file is only
        // truncated when the copy runs).
        if let (Endpoint::File(s), Endpoint::File(d)) = (&src, &dst) {
            if s.id.is_some() && s.id == d.id {
                return Err(Error::invalid(format!(
                    "source {src_spec} and destination {dst_spec} are the same file: \
                     copying it onto itself would destroy it"
                )));
            }
        }
        if let Endpoint::Nbd(n) = &dst {
            if n.info.read_only() {
                return Err(Error::new(
                    libc::EROFS,
                    format!("destination {dst_spec}: the NBD server export is read-only"),
                ));
            }
        }
        // A destination of fixed size must hold what is copied into it.
        let fixed_dst = match &dst {
            Endpoint::Nbd(_) => true,
            Endpoint::File(f) => f.kind == FileKind::Block,
            Endpoint::Null => false,
        };
        let dst_stream = matches!(&dst, Endpoint::File(f) if f.is_stream());
        dirty::check_options(&cfg, matches!(&src, Endpoint::Nbd(_)), dst_stream)?;
        let shared = Arc::new(Shared::new());
        shared
            .size_known
            .store(src.size().is_some() as u64, Relaxed);
        let mut job = Job {
            window: ranges::Window::whole(src.size()),
            src_spec,
            dst_spec,
            src,
            dst,
            cfg,
            shared,
            ran: false,
            log: None,
        };
        let (src_name, dst_name) = (job.src_spec.to_string(), job.dst_spec.to_string());
        job.window = ranges::Window::plan(
            &job.cfg,
            &ranges::Ends {
                src_name: &src_name,
                dst_name: &dst_name,
                src_size: job.src.size(),
                dst_fixed_size: job.dst.size().filter(|_| fixed_dst),
                dst_stream,
                align: job.align(),
            },
        )?;
        let todo = if job.src.size().is_some() {
            job.window.len()
        } else {
            0
        };
        job.shared.size.store(todo, Relaxed);
        Ok(job)
    }

    /// Sends this job's log messages to `f` (none are printed otherwise).
    pub fn set_logger(&mut self, f: Logger) {
        self.log = Some(f);
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Copies everything.  `progress` is called on this thread at most
    /// once per `interval` while the copy runs (never in the first
    /// `interval`), and exactly once more after a successful copy; it is
    /// never called after a failure.  Returning false cancels.
    pub fn run(
        &mut self,
        interval: Duration,
        progress: &mut dyn FnMut(&Shared) -> bool,
    ) -> Result<()> {
        if self.ran {
            return Err(Error::new(
                libc::EALREADY,
                "nbdcpy_run: this handle has already run",
            ));
        }
        self.ran = true;
        self.shared.start_clock();
        let r = self.run_inner(interval, progress);
        self.shared.stop_clock();
        let r = match r {
            Err(e) => Err(e),
            Ok(()) => match self.shared.take_error() {
                Some(e) => Err(e),
                None if self.shared.cancelled() => Err(Error::cancelled()),
                None => Ok(()),
            },
        };
        let r = r.and_then(|()| self.finish_destination());
        if r.is_ok() {
            progress(&self.shared);
        }
        self.close_endpoints();
        r
    }

    /// After a successful copy from a stream into a regular file: the file
    /// takes the stream's length (zero blocks at its end were skipped, not
    /// written, and must exist too), made durable with --flush.
    fn finish_destination(&mut self) -> Result<()> {
        if let (None, Endpoint::File(f)) = (self.src.size(), &mut self.dst) {
            let len = self.shared.size.load(Relaxed);
            let ctx = |e: Error| e.context(format!("destination {}", self.dst_spec));
            f.finish_dest(len).map_err(ctx)?;
            if self.cfg.flush && f.kind == FileKind::Regular {
                f.sync().map_err(ctx)?;
            }
        }
        Ok(())
    }

    fn close_endpoints(&mut self) {
        for ep in [&mut self.src, &mut self.dst] {
            if let Endpoint::Nbd(n) = ep {
                n.disconnect();
            }
        }
    }

    fn run_inner(
        &mut self,
        interval: Duration,
        progress: &mut dyn FnMut(&Shared) -> bool,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let src_size = self.src.size();
        let src_stream = src_size.is_none();
        // Regular-file destinations are truncated and extended: they then
        // read as zeroes (like nbdcopy).
        let mut dst_is_zero = cfg.destination_is_zero;
        // Ranges and incremental copies leave the rest of the destination
        // as it is: a regular file is only extended to hold the range.
        let keep_dst = self.window.partial || cfg.dirty_bitmap.is_some();
        if let Endpoint::File(f) = &mut self.dst {
            let r = if keep_dst {
                f.extend_dest(self.window.dst_start + self.window.len())
                    .map(|()| false)
            } else {
                f.prepare_dest(src_size)
            };
            dst_is_zero |= r.map_err(|e| e.context(format!("destination {}", self.dst_spec)))?;
        }
        let dst_stream = matches!(&self.dst, Endpoint::File(f) if f.is_stream());
        // Lanes: one per connection pair; streams and --synchronous use one.
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let log = Log {
            sink: self.log.as_deref(),
            verbose: cfg.verbose,
        };
        let use_splice = self.splice_wins(cfg.splice, self.sparse_block());
        // By default as many connections as cores (2 to 4): measured on 2
        // cores, 2 connections beat 4 on most workloads, since the servers
        // share those cores (BENCHMARKS.md).  One connection for local
        // servers on the receive path measured no better in 20 alternating
        // W8 runs, with the servers in the copier's scheduling group or in
        // their own (bench/groups-ab.sh, BENCHMARKS.md).
        // A file source on the splice path never waits for a server to
        // produce data (cached pages move at once, the rest is read ahead
        // by io_uring): one lane with 2 MiB requests keeps the destination
        // busy, and the destination server gets fewer, larger writes (like
        // qemu-img's): W6 into qemu-nbd 3.55-3.87 s instead of 4.08-4.53 s,
        // the server's CPU 4.9-5.4 s instead of 5.4-6.3 s (BENCHMARKS.md).
        let file_splice = use_splice
            && matches!(&self.src, Endpoint::File(_))
            && matches!(&self.dst, Endpoint::Nbd(_));
        let connections = match cfg.connections {
            0 if file_splice => 1,
            0 => cores.clamp(2, 4),
            n => n,
        };
        let mut lanes_n = connections
            .min(self.src.max_connections())
            .min(self.dst.max_connections())
            .max(1);
        if src_stream || dst_stream || cfg.synchronous {
            lanes_n = 1;
        }
        let threads = if cfg.threads == 0 { cores } else { cfg.threads };
        let any_nbd = matches!(self.src, Endpoint::Nbd(_)) || matches!(self.dst, Endpoint::Nbd(_));
        if !any_nbd {
            // Local copies: lanes only buy parallelism, one per thread.
            lanes_n = lanes_n.min(threads);
        }
        if src_size.is_some() {
            // No point in more lanes than requests' worth of work.
            let reqs = self.window.len().div_ceil(cfg.request_size).max(1);
            lanes_n = lanes_n.min(reqs.min(u32::MAX as u64) as u32);
        }

        // An NBD destination that can zero fast is zeroed up front over the
        // range the copy covers (the server works while the other
        // connections are opened, in parallel); every zero range of the
        // source is then skipped instead of being sent as a request.
        let fast_zero = match (&mut self.dst, src_size) {
            (Endpoint::Nbd(n), Some(len))
                if !dst_is_zero
                    && !cfg.allocated
                    && !keep_dst
                    && n.can_fast_zero_all()
                    && cfg.fast_zero =>
            {
                // Block status answers quickly; zeroing may not.
                let t = limit(cfg.timeout_secs);
                let slow = limit(cfg.slow_timeout_secs);
                // Only for sources that are mostly holes: zeroing first
                // would otherwise deallocate a destination that is then
                // written all over again (slow on re-copies).
                let sparse = match &mut self.src {
                    Endpoint::Nbd(s) if !cfg.no_extents => s
                        .sample_zero_fraction(t, &|| self.shared.cancelled())
                        .map_err(|e| e.context(format!("source {}", self.src_spec)))?,
                    Endpoint::File(f) if !cfg.no_extents => f.sample_zero_fraction(),
                    _ => None,
                };
                if let Some(f) = sparse {
                    log.emit(Level::Debug, || {
                        format!("{:.0}% of the source's start reads as zero", f * 100.0)
                    });
                }
                // And not for sources that are all holes: the whole
                // destination is zeroed either way, and the lanes do it
                // in parallel with reading the source's extents.
                if sparse.is_some_and(|f| (0.5..1.0).contains(&f)) {
                    n.fast_zero_start(len, slow)?
                } else {
                    None
                }
            }
            _ => None,
        };
        let (src_spec, dst_spec) = (&self.src_spec, &self.dst_spec);
        let (src_ep, dst_ep) = (&mut self.src, &mut self.dst);
        let n = lanes_n as usize;
        std::thread::scope(|s| {
            let other = s.spawn(move || match src_ep {
                Endpoint::Nbd(e) => e
                    .open_connections(n)
                    .map_err(|e| e.context(format!("source {src_spec}"))),
                _ => Ok(()),
            });
            let mine = match dst_ep {
                Endpoint::Nbd(e) => e
                    .open_connections(n)
                    .map_err(|e| e.context(format!("destination {dst_spec}"))),
                _ => Ok(()),
            };
            other
                .join()
                .unwrap_or_else(|_| Err(Error::new(libc::EIO, "connecting thread panicked")))
                .and(mine)
        })?;
        if let (Some(fz), Endpoint::Nbd(n)) = (fast_zero, &mut self.dst) {
            dst_is_zero = n.fast_zero_finish(fz, &|| self.shared.cancelled())?;
            log.emit(Level::Debug, || {
                format!(
                    "destination {}: fast zero {}",
                    self.dst_spec,
                    if dst_is_zero {
                        "done: zero ranges will be skipped"
                    } else {
                        "not available"
                    }
                )
            });
        }

        // Buffered writes into one file are serialised by the kernel (and
        // by the lanes' file lock): from an NBD source on the receive path
        // one worker drives all lanes on one ring and a second thread only
        // contends for that lock and for the cores the server needs
        // (W7: CPU and wall both lower, BENCHMARKS.md).  A spliced lane
        // blocks its worker while a payload arrives, so not there.
        let one_writer = cfg.threads == 0
            && !use_splice
            && matches!(&self.src, Endpoint::Nbd(_))
            && matches!(&self.dst, Endpoint::File(f) if f.kind == FileKind::Regular);
        let workers_n = if one_writer {
            1
        } else {
            threads.min(lanes_n).max(1) as usize
        };
        // The splice path pays per request (a few system calls), not per
        // byte: bigger requests unless the size was asked for.
        let request_size = self.effective_request_size(match (cfg.request_size_set, use_splice) {
            (false, true) if file_splice => FILE_SPLICE_REQUEST_SIZE,
            (false, true) => SPLICE_REQUEST_SIZE,
            _ => cfg.request_size,
        });
        // queue-size bounds the bytes in flight of the whole copy (so
        // memory does not grow with the number of connections); each lane
        // gets its share, and at least two requests.
        let requests = if cfg.synchronous {
            1
        } else {
            let share = (cfg.queue_size / lanes_n as u64).max(2 * request_size);
            (cfg.requests as u64).min(share / request_size).max(1) as usize
        };
        let params = LaneParams {
            request_size,
            requests,
            dst_size: match &self.dst {
                Endpoint::Nbd(n) => Some(n.info.size),
                Endpoint::File(f) if f.kind == FileKind::Block => f.size,
                _ => None,
            },
            flush: cfg.flush,
            timeout: (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs)),
            slow_timeout: (cfg.slow_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.slow_timeout_secs)),
            pipe_size: cfg.pipe_size.map(|v| v as usize),
            // Zero blocks are whole destination blocks.
            sparse: match self.sparse_block() {
                0 => 0,
                s => s.max(self.dst_align()),
            },
            allocated: cfg.allocated,
            dst_is_zero,
            extents: !cfg.no_extents,
            // Extended headers: one WRITE_ZEROES may cover more than 4 GiB.
            zero_piece: match &self.dst {
                Endpoint::Nbd(n) if n.info.mode == HeaderMode::Extended => BIG_PIECE,
                Endpoint::Nbd(_) => ZERO_PIECE,
                Endpoint::File(f) if f.is_stream() => ZERO_PIECE,
                _ => BIG_PIECE,
            },
            direct_file_writes: matches!(&self.dst, Endpoint::File(f) if f.kind == FileKind::Regular)
                && !cfg.uring_file_writes,
            file_lock: (matches!(&self.dst, Endpoint::File(f) if f.kind == FileKind::Regular)
                && cfg.file_lock)
                .then(|| Arc::new(std::sync::Mutex::new(()))),
            align: self.align(),
            stage_reads: self.dst_align() > 1 && matches!(&self.src, Endpoint::Nbd(_)),
            dst_shift: self.window.shift(),
            dirty: cfg.dirty_bitmap.is_some(),
        };

        let mut lanes = Vec::with_capacity(lanes_n as usize);
        let mut spliced = 0;
        for i in 0..lanes_n as usize {
            let src = match &mut self.src {
                Endpoint::File(f) => SrcIo::File {
                    fd: f.fd.as_raw_fd(),
                    stream: f.is_stream(),
                    name: self.src_spec.to_string(),
                },
                Endpoint::Nbd(n) => SrcIo::Nbd(Box::new(
                    n.lane_conn(i, &params)
                        .map_err(|e| e.context(format!("source {}", self.src_spec)))?,
                )),
                Endpoint::Null => unreachable!("null: is refused as a source at open"),
            };
            let dst = match &mut self.dst {
                Endpoint::Null => DstIo::Null,
                Endpoint::File(f) => DstIo::File {
                    fd: f.fd.as_raw_fd(),
                    stream: f.is_stream(),
                    name: self.dst_spec.to_string(),
                },
                Endpoint::Nbd(n) => {
                    DstIo::Nbd(Box::new(n.lane_conn(i, &params).map_err(|e| {
                        e.context(format!("destination {}", self.dst_spec))
                    })?))
                }
            };
            let mut lane = Lane::new(src, dst, params.clone());
            if use_splice {
                spliced += lane.enable_splice(splice::Ctl {
                    shared: self.shared.clone(),
                    timeout: params.timeout,
                    slow_timeout: params.slow_timeout,
                }) as usize;
            }
            lanes.push(lane);
        }
        self.shared.connections.store(lanes_n as u64, Relaxed);
        log.emit(Level::Info, || {
            format!(
                "{} -> {}: size {}, {} lane(s) on {} thread(s), {} requests of {} bytes, \
                 {} data path",
                self.src_spec,
                self.dst_spec,
                src_size.map_or("unknown (stream)".into(), |s| s.to_string()),
                lanes_n,
                workers_n,
                requests,
                request_size,
                if spliced == lanes_n as usize {
                    "splice"
                } else if spliced > 0 {
                    "mixed splice/receive"
                } else {
                    "receive"
                }
            )
        });

        // Large pieces, but enough of them to keep every lane busy.
        let size = self.window.len();
        // Sources that report extents get bigger ranges: one block status
        // (and one zeroing request) then covers more.
        let max_piece: u64 = match &self.src {
            // Just under 4 GiB: the most one compact BLOCK_STATUS or
            // WRITE_ZEROES can cover.
            Endpoint::Nbd(n) if !cfg.no_extents && n.info.can_block_status() => {
                if n.info.mode == HeaderMode::Extended {
                    BIG_PIECE
                } else {
                    ZERO_PIECE
                }
            }
            _ => 128 << 20,
        };
        let piece = if src_stream {
            u64::MAX
        } else {
            let per = size / (lanes_n as u64 * 4).max(1);
            per.clamp(request_size, max_piece) / request_size * request_size
        };
        let q = WorkQueue::range(self.window.start, self.window.end, piece);

        let mut per_worker: Vec<Vec<Lane>> = (0..workers_n).map(|_| Vec::new()).collect();
        for (i, lane) in lanes.into_iter().enumerate() {
            per_worker[i % workers_n].push(lane);
        }
        let shared = &*self.shared;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            for lanes in per_worker {
                let q = &q;
                let done_tx = done_tx.clone();
                std::thread::Builder::new()
                    .name("nbdcpy-worker".into())
                    .spawn_scoped(s, move || {
                        // A panic in a worker becomes an error, never an abort.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            worker::run_worker(lanes, q, shared)
                        }));
                        if r.is_err() {
                            shared.fail(Error::new(libc::EIO, "internal error: worker panicked"));
                        }
                        let _ = done_tx.send(());
                    })
                    .map_err(|e| Error::os("cannot start worker thread", e))?;
            }
            // Wake at once when a worker ends; otherwise report progress
            // once per `interval`, whether or not the size is known.
            let mut running = workers_n;
            let tick = interval.clamp(Duration::from_millis(10), Duration::from_millis(100));
            let mut last = std::time::Instant::now();
            while running > 0 {
                match done_rx.recv_timeout(tick) {
                    Ok(()) => running -= 1,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if running > 0 && last.elapsed() >= interval {
                    last = std::time::Instant::now();
                    if !progress(shared) {
                        shared.cancel();
                    }
                }
            }
            Ok::<(), Error>(())
        })?;
        Ok(())
    }

    /// Whether lanes move data by splice.  `mode` None (auto): only where
    /// it measured faster (BENCHMARKS.md): a unix-socket NBD source or a
    /// file (its cached pages) into null: or a unix-socket NBD
    /// destination, or an NBD source into a file when zero detection is
    /// off.  Not over TCP (the pipe fills in small pieces: no gain), not
    /// NBD -> file with zero detection (the same two copies either way),
    /// not file -> file.
    fn splice_wins(&self, mode: Option<bool>, sparse: u64) -> bool {
        // Pipes hand payloads on in pieces of what they hold, which need
        // not be whole blocks of a server that wants aligned requests.
        if self.align() > 1 {
            return false;
        }
        // The splice path writes at the source's offsets.
        if self.window.shift() != 0 {
            return false;
        }
        // An explicit request size above the splice default is honoured
        // by the receive path (a pipe may not hold it whole), also when
        // splicing was asked for.
        if self.cfg.request_size_set && self.cfg.request_size > SPLICE_REQUEST_SIZE {
            return false;
        }
        let unix_src = match &self.src {
            Endpoint::Nbd(src) => src.is_unix(),
            // Cached file pages go to the pipe by reference (disk reads
            // still use io_uring: see Worker::file_splice).
            Endpoint::File(f) if !f.is_stream() && !matches!(&self.dst, Endpoint::File(_)) => true,
            _ => return false,
        };
        match mode {
            Some(on) => on,
            None => {
                unix_src
                    && match &self.dst {
                        Endpoint::Null => true,
                        Endpoint::Nbd(d) => d.is_unix(),
                        Endpoint::File(f) => !f.is_stream() && sparse == 0,
                    }
            }
        }
    }

    /// Zero-detection block size: the option, else 4096 or the
    /// destination's preferred block size if larger (like nbdcopy).
    fn sparse_block(&self) -> u64 {
        match self.cfg.sparse {
            Some(v) => v,
            None => match &self.dst {
                Endpoint::Nbd(n) => (n.info.block_size.preferred as u64).max(4096),
                _ => 4096,
            },
        }
    }

    /// A request size clamped to what both ends accept, and a multiple of
    /// the alignment both need.
    fn effective_request_size(&self, want: u64) -> u64 {
        let mut rs = want;
        for ep in [&self.src, &self.dst] {
            if let Endpoint::Nbd(n) = ep {
                rs = rs.min(n.info.block_size.max_payload as u64);
            }
        }
        let a = self.align();
        (rs / a * a).max(a)
    }

    /// The granularity every request must keep: the larger of both ends'
    /// (powers of two, so a multiple of each).
    fn align(&self) -> u64 {
        // A block device source is read through the page cache: any
        // offset works there.
        let src = match &self.src {
            Endpoint::Nbd(_) => endpoint_align(&self.src),
            _ => 1,
        };
        src.max(self.dst_align())
    }

    /// The destination's: an NBD server's minimum block size, a block
    /// device's logical sector size, else 1.
    fn dst_align(&self) -> u64 {
        endpoint_align(&self.dst)
    }
}
