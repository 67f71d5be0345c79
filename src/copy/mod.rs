// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The copy job: opening both ends, running the plan's lanes on workers, the result.
//
// The copy job: opening both ends, checking sizes, splitting the work
// into lanes and worker threads, progress reporting and the final result.

pub mod align;
pub mod checkpoint;
pub mod ckptfile;
pub mod compat;
pub mod dirty;
pub mod gate;
pub mod integrity;
pub mod nbdconn;
pub mod plan;
pub mod rangeplan;
pub mod ranges;
pub mod rate;
pub mod signals;
pub mod splice;
pub mod stats;
pub mod worker;
pub mod workqueue;

use crate::config::Config;
use crate::endpoint::connect::Limits;
use crate::endpoint::file::{FileId, FileKind};
use crate::endpoint::nbd::{FastZero, NbdEndpoint};
use crate::endpoint::pagecache::{FileCache, LaneCache};
use crate::endpoint::{Endpoint, Side, Spec};
use crate::engine::Choice;
use crate::error::{Error, Result};
use crate::rangelist;
use gate::EngineGate;
use plan::{EndFacts, Plan};
use stats::Shared;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use nbdconn::{NbdConn, Retry};
use worker::{DstIo, Lane, LaneParams, SrcIo};
pub use workqueue::WorkQueue;

/// Whether two endpoints name the same NBD export (same transport
/// address, unix socket paths resolved, and export name).  Allowed, as
/// nbdcopy allows it (reading and writing the same bytes changes
/// nothing), but then the destination is never zeroed up front.
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
    /// Block hash (--blkhash, --verify): the hasher while the copy runs,
    /// then its result.
    hasher: Option<Arc<crate::blkhash::BlockHasher>>,
    hashed: Option<integrity::Outcome>,
    /// A read-back for --verify: only this many bytes of the source, and
    /// each block's fingerprint kept.
    readback: Option<u64>,
    /// What part of the source is copied, and where it goes.
    window: ranges::Window,
    /// A range list (--ranges): only its areas are copied.
    list: Option<Arc<rangelist::RangeList>>,
    /// The source and destination are the same NBD export: no up-front
    /// zeroing (it would destroy the source).
    self_copy: bool,
    /// `--checkpoint`: the FILE, what it recorded, what becomes durable.
    ckpt: Option<checkpoint::Session>,
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
        Job::open_with(src_spec, dst_spec, cfg, Arc::new(Shared::new()))
    }

    /// [`open`](Self::open) with counters and a cancel flag made before
    /// (the C API's handle exists before it connects): waiting for the
    /// servers is bounded by the `timeout` option and ends on a cancel.
    pub fn open_with(
        src_spec: Spec,
        dst_spec: Spec,
        cfg: Config,
        shared: Arc<Shared>,
    ) -> Result<Job> {
        // The whole range list is read and checked before anything opens.
        let list = rangeplan::load(&cfg, &src_spec)?;
        let mut cfg = cfg;
        if let Some(l) = &list {
            cfg.ranges = Some(l.clone());
            cfg.ranges_file = None;
        }
        let self_copy = same_nbd_export(&src_spec, &dst_spec);
        let lim = {
            let sh = shared.clone();
            let timeout = (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs));
            Limits::new(timeout, Arc::new(move || sh.cancelled()))
        };
        let src = Endpoint::open(&src_spec, Side::Source, &cfg, &lim)?;
        // A destination file this open creates is removed again if the job
        // is refused (a checkpoint mismatch, sizes...): it stays unchanged.
        let new_path = match &dst_spec {
            Spec::Path(p) => std::fs::symlink_metadata(p)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                .then(|| p.clone()),
            _ => None,
        };
        let dst = Endpoint::open(&dst_spec, Side::Destination, &cfg, &lim)?;
        let mut created = Created(new_path.zip(match &dst {
            Endpoint::File(f) => f.id,
            _ => None,
        }));
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
        if cfg.verify {
            integrity::check_readable(&dst_spec, &dst)?;
        }
        if let Endpoint::Nbd(n) = &dst {
            if n.info.read_only() {
                return Err(Error::new(
                    libc::EROFS,
                    format!("destination {dst_spec}: the NBD server export is read-only"),
                )
                .on(Side::Destination));
            }
        }
        // A destination of fixed size must hold what is copied into it
        // (the whole source, or the range asked for).
        let fixed_dst = match &dst {
            Endpoint::Nbd(_) => true,
            Endpoint::File(f) => f.kind == FileKind::Block,
            Endpoint::Null => false,
        };
        let dst_stream = matches!(&dst, Endpoint::File(f) if f.is_stream());
        dirty::check_options(&cfg, matches!(&src, Endpoint::Nbd(_)), dst_stream)?;
        let align = plan::plan(&EndFacts::of(&src), &EndFacts::of(&dst), &cfg, 1).align;
        let window = match &list {
            Some(l) => rangeplan::plan_window(l, &src_spec, &dst_spec, &src, &dst, align)?,
            None => ranges::Window::plan(
                &cfg,
                &ranges::Ends {
                    src_name: &src_spec.to_string(),
                    dst_name: &dst_spec.to_string(),
                    src_size: src.size(),
                    dst_fixed_size: dst.size().filter(|_| fixed_dst),
                    dst_stream,
                    align,
                },
            )?,
        };
        // The block hash covers a whole source as copied from offset 0
        // (--verify with a range list: the areas, one after the other).
        if (cfg.blkhash.is_some() || cfg.verify)
            && list.is_none()
            && (window.partial || cfg.dirty_bitmap.is_some())
        {
            return Err(Error::invalid(
                "--blkhash and --verify hash the whole source: they cannot be combined \
                 with --offset, --length, --destination-offset or --dirty-bitmap",
            ));
        }
        let mut src = src;
        let ckpt = match &cfg.checkpoint {
            Some(path) => Some(open_checkpoint(
                path,
                &cfg,
                (&src_spec, &mut src),
                (&dst_spec, &dst),
                list.as_deref(),
                &window,
                &shared,
            )?),
            None => None,
        };
        // The handle's counters (the C API reads them from any thread).
        let work = list.as_ref().map_or(window.len(), |l| l.total());
        shared.size.store(src.size().map_or(0, |_| work), Relaxed);
        shared
            .size_known
            .store(src.size().is_some() as u64, Relaxed);
        let job = Job {
            src_spec,
            dst_spec,
            src,
            dst,
            cfg,
            shared,
            ran: false,
            log: None,
            hasher: None,
            hashed: None,
            readback: None,
            window,
            list,
            self_copy,
            ckpt,
        };
        // A resumed copy's progress starts at what is done.
        job.resume_list()?;
        created.0 = None;
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
        let r = self.finish_checkpoint(r);
        let r = r.and_then(|()| self.finish_blkhash());
        self.close_endpoints();
        let r = r.and_then(|()| self.verify_destination());
        if r.is_ok() {
            progress(&self.shared);
        }
        r
    }

    /// --checkpoint: FILE is removed after a successful copy; after a
    /// failure or cancel it records what is durable (a file or block
    /// device destination is synced first, so all that reached it counts).
    fn finish_checkpoint(&mut self, r: Result<()>) -> Result<()> {
        let Some(c) = &mut self.ckpt else {
            return r;
        };
        if r.is_ok() {
            return c.remove();
        }
        let synced = match &self.dst {
            Endpoint::File(f) if !f.is_stream() => f.sync().is_ok(),
            _ => false,
        };
        if let Err(e) = c.stop(synced) {
            self.log().emit(Level::Warning, || e.to_string());
        }
        r
    }

    /// Whether this job computes a block hash (--blkhash or --verify).
    pub fn hashes(&self) -> bool {
        self.cfg.blkhash.is_some() || self.cfg.verify
    }

    /// The block hash of the copied data, after a successful run with
    /// --blkhash or --verify.
    pub fn blkhash(&self) -> Option<&crate::blkhash::Hash> {
        self.hashed.as_ref().map(|o| &o.digest)
    }

    /// The source's length as this job copies it (a read-back stops at
    /// the length copied).
    fn src_size(&self) -> Option<u64> {
        let s = self.src.size()?;
        if let Some(l) = &self.list {
            return Some(l.total()); // what is hashed: the areas, packed
        }
        Some(self.readback.map_or(s, |l| s.min(l)))
    }

    /// After a successful copy: the block hash of what was copied.
    fn finish_blkhash(&mut self) -> Result<()> {
        let Some(h) = self.hasher.take() else {
            return Ok(());
        };
        let length = self
            .src_size()
            .unwrap_or_else(|| self.shared.size.load(Relaxed));
        let digest = h.finish(length)?;
        self.hashed = Some(integrity::Outcome {
            digest,
            length,
            prints: h.fingerprints(),
        });
        Ok(())
    }

    /// --verify: reads the destination back (its holes through extents)
    /// and compares its block hash with the source's; then writes the
    /// hash file if asked.
    fn verify_destination(&mut self) -> Result<()> {
        let Some(src) = &self.hashed else {
            return Ok(());
        };
        let spec = self.cfg.blkhash.unwrap_or_default();
        if self.cfg.verify {
            let cfg = integrity::readback_config(&self.cfg, spec);
            let ctx = |e: Error| e.context(format!("--verify: reading back {}", self.dst_spec));
            let mut job = Job::open(self.dst_spec.clone(), Spec::Null, cfg).map_err(ctx)?;
            job.readback = Some(src.length);
            let main = self.shared.clone();
            job.run(Duration::from_millis(100), &mut |_| !main.cancelled())
                .map_err(ctx)?;
            let dst = job.hashed.as_ref().ok_or_else(|| {
                Error::new(libc::EIO, "internal error: the read-back computed no hash")
            })?;
            integrity::compare(&self.dst_spec, spec, src, dst)?;
            self.log().emit(Level::Info, || {
                format!(
                    "--verify: destination {} read back: block hash {spec} {} matches",
                    self.dst_spec,
                    dst.digest.to_hex()
                )
            });
        }
        if let Some(f) = &self.cfg.blkhash_file {
            integrity::write_hash_file(f, &src.digest)?;
        }
        Ok(())
    }

    /// After a successful copy from a stream into a regular file: the file
    /// takes the stream's length (zero blocks at its end were skipped, not
    /// written, and must exist too), made durable with --flush.
    fn finish_destination(&mut self) -> Result<()> {
        if let (None, Endpoint::File(f)) = (self.src.size(), &mut self.dst) {
            let len = self.shared.size.load(Relaxed);
            let ctx = |e: Error| e.at(Side::Destination, &self.dst_spec);
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
        // The engine first: a forced io_uring that cannot run fails
        // before the destination is touched.  The workers then follow
        // this choice together or fall back together (`gate`), and the
        // engine they ran is the one logged and reported.
        let engine = Choice::decide(self.cfg.engine)?;
        let src_size = self.src_size();
        if self.cfg.blkhash.is_some() || self.cfg.verify || self.readback.is_some() {
            let mut h = crate::blkhash::BlockHasher::new(
                self.cfg.blkhash.unwrap_or_default(),
                src_size,
                self.cfg.verify || self.readback.is_some(),
            );
            if let Some(l) = self.list.clone() {
                h.set_offset_map(Box::new(move |off| l.packed_offset(off)));
            }
            self.hasher = Some(Arc::new(h));
        }
        // --checkpoint: FILE exists before anything is written (a new copy
        // records that nothing is done yet).  A resumed copy assumes no
        // zeroes anywhere: what FILE does not record may have been written
        // in part by the run that stopped, and is rewritten whole.
        let resuming = match &mut self.ckpt {
            Some(c) => {
                c.save()?;
                c.resumed().is_some()
            }
            None => false,
        };
        // Regular-file destinations are truncated and extended: they then
        // read as zeroes (like nbdcopy).
        let mut dst_is_zero = self.cfg.destination_is_zero && !resuming;
        // Ranges and incremental copies leave the rest of the destination
        // as it is: a regular file is only extended to hold the range.
        let keep_dst = self.window.partial || self.cfg.dirty_bitmap.is_some();
        if let Endpoint::File(f) = &mut self.dst {
            let r = if keep_dst {
                f.extend_dest(self.window.dst_start + self.window.len())
                    .map(|()| false)
            } else if resuming {
                f.resume_dest(src_size).map(|()| false)
            } else {
                f.prepare_dest(src_size)
            };
            dst_is_zero |= r.map_err(|e| e.at(Side::Destination, &self.dst_spec))?;
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let (mut src_facts, mut plan_cfg) =
            ranges::plan_inputs(EndFacts::of(&self.src), &self.window, &self.cfg);
        plan_cfg.small_areas = self.list.as_ref().is_some_and(|l| {
            !l.areas().is_empty()
                && l.total() / (l.areas().len() as u64) < rangeplan::STATUS_MIN_MEAN_AREA
        });
        if self.readback.is_some() || self.list.is_some() {
            // A --verify read-back: only the source's length; a range
            // list: the areas' length.
            src_facts.size = src_size;
        }
        let plan = plan::plan(&src_facts, &EndFacts::of(&self.dst), &plan_cfg, cores);
        if self.readback.is_none() {
            for l in compat::verbose_lines(
                (&self.src_spec, &self.src),
                (&self.dst_spec, &self.dst),
                &plan,
                self.cfg.synchronous,
            ) {
                self.log().emit(Level::Info, || l);
            }
        }
        let fast_zero =
            self.fast_zero_start(dst_is_zero || keep_dst || self.self_copy || resuming)?;
        self.open_connections(plan.lanes as usize)?;
        if let (Some(fz), Endpoint::Nbd(n)) = (fast_zero, &mut self.dst) {
            dst_is_zero = n.fast_zero_finish(fz, &|| self.shared.cancelled())?;
            self.log().emit(Level::Debug, || {
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
        let mut lanes = self.build_lanes(&plan, dst_is_zero)?;
        let caches = self.page_caches(plan.lanes);
        for lane in &mut lanes {
            lane.cache = LaneCache::new(caches.0.as_ref(), caches.1.as_ref());
        }
        let resume = self.resume_list()?;
        if resume.is_some() {
            let (done, work) = (
                self.shared.resumed_bytes.load(Relaxed),
                self.shared.size.load(Relaxed),
            );
            self.log().emit(Level::Info, || {
                format!("resuming: {done} of {work} bytes done")
            });
        }
        let q = match (&self.list, resume) {
            (_, Some(rest)) => WorkQueue::areas(rest, plan.work_piece),
            (Some(l), None) => WorkQueue::areas(l.clone(), plan.work_piece),
            (None, None) => WorkQueue::range(self.window.start, self.window.end, plan.work_piece)
                .guided(plan.lanes, 8),
        };
        if let Some(c) = &self.ckpt {
            for lane in &mut lanes {
                lane.ckpt = Some(checkpoint::LaneCheckpoint::new(c.tracker.clone()));
            }
        }
        let mut ckpt = self.ckpt.take();
        let r = self.run_workers(
            lanes,
            plan.workers as usize,
            &q,
            &engine,
            (interval, progress),
            ckpt.as_mut(),
        );
        self.ckpt = ckpt;
        r?;
        // The lanes' last pages (not when cancelled: that ends at once).
        // A failure here counts only if nothing failed before.
        for c in [caches.0, caches.1].into_iter().flatten() {
            if self.shared.cancelled() {
                break;
            }
            if let Err(e) = c.finish() {
                self.shared.fail(e);
            }
        }
        Ok(())
    }

    /// A resumed copy's work: its areas without those FILE records done
    /// (None: not resuming).  The bytes done count from the start.
    fn resume_list(&self) -> Result<Option<Arc<rangelist::RangeList>>> {
        let Some(done) = self.ckpt.as_ref().and_then(|c| c.resumed()) else {
            return Ok(None);
        };
        let areas: Vec<(u64, u64)> = match &self.list {
            Some(l) => l.areas().iter().map(|a| (a.offset, a.end())).collect(),
            None => vec![(self.window.start, self.window.end)],
        };
        let rest = checkpoint::subtract(&areas, done);
        let work = checkpoint::total(&areas);
        let resumed = work.saturating_sub(checkpoint::total(&rest));
        self.shared.resumed_bytes.store(resumed, Relaxed);
        self.shared.bytes_done.store(resumed, Relaxed);
        let rest = rest
            .into_iter()
            .map(|(a, b)| rangelist::Area {
                offset: a,
                length: b - a,
            })
            .collect();
        Ok(Some(Arc::new(rangelist::RangeList::new(rest)?)))
    }

    /// The page-cache book-keeping of a file source and destination
    /// (option "page-cache").
    fn page_caches(&self, lanes: u32) -> (Option<FileCache>, Option<FileCache>) {
        let of = |ep: &Endpoint, side, spec: &Spec| match ep {
            Endpoint::File(f) => {
                FileCache::new(f, side, &spec.to_string(), self.cfg.page_cache, lanes)
            }
            _ => None,
        };
        (
            of(&self.src, Side::Source, &self.src_spec),
            of(&self.dst, Side::Destination, &self.dst_spec),
        )
    }

    fn log(&self) -> Log<'_> {
        Log {
            sink: self.log.as_deref(),
            verbose: self.cfg.verbose,
        }
    }

    /// An NBD destination that can zero fast is zeroed up front over the
    /// range the copy covers (the server works while the other
    /// connections are opened, in parallel); every zero range of the
    /// source is then skipped instead of being sent as a request.  Only
    /// for sources that are mostly holes (see below).
    fn fast_zero_start(&mut self, dst_is_zero: bool) -> Result<Option<FastZero>> {
        let cfg = &self.cfg;
        let (Endpoint::Nbd(n), Some(len)) = (&mut self.dst, self.src.size()) else {
            return Ok(None);
        };
        if dst_is_zero || cfg.allocated || !n.can_fast_zero_all() || !cfg.fast_zero {
            return Ok(None);
        }
        // Block status answers quickly; zeroing may not.
        let t = limit(cfg.timeout_secs);
        let slow = limit(cfg.slow_timeout_secs);
        // Zeroing first would deallocate a destination that is then
        // written all over again (slow on re-copies) unless the source is
        // mostly holes.
        let sparse = match &mut self.src {
            Endpoint::Nbd(s) if !cfg.no_extents => s
                .sample_zero_fraction(t, &|| self.shared.cancelled())
                .map_err(|e| e.at(Side::Source, &self.src_spec))?,
            Endpoint::File(f) if !cfg.no_extents => f.sample_zero_fraction(),
            _ => None,
        };
        if let Some(f) = sparse {
            Log {
                sink: self.log.as_deref(),
                verbose: cfg.verbose,
            }
            .emit(Level::Debug, || {
                format!("{:.0}% of the source's start reads as zero", f * 100.0)
            });
        }
        // And not for sources that are all holes: the whole destination
        // is zeroed either way, and the lanes do it in parallel with
        // reading the source's extents.
        if sparse.is_some_and(|f| (0.5..1.0).contains(&f)) {
            n.fast_zero_start(len, slow)
        } else {
            Ok(None)
        }
    }

    /// Opens `n` connections on each NBD side, both sides in parallel.
    fn open_connections(&mut self, n: usize) -> Result<()> {
        let (src_spec, dst_spec) = (&self.src_spec, &self.dst_spec);
        let (src_ep, dst_ep) = (&mut self.src, &mut self.dst);
        std::thread::scope(|s| {
            let other = s.spawn(move || match src_ep {
                Endpoint::Nbd(e) => e
                    .open_connections(n)
                    .map_err(|e| e.at(Side::Source, src_spec)),
                _ => Ok(()),
            });
            let mine = match dst_ep {
                Endpoint::Nbd(e) => e
                    .open_connections(n)
                    .map_err(|e| e.at(Side::Destination, dst_spec)),
                _ => Ok(()),
            };
            other
                .join()
                .unwrap_or_else(|_| Err(Error::new(libc::EIO, "connecting thread panicked")))
                .and(mine)
        })
    }

    /// The lanes of the plan, each with its connections or files.
    fn build_lanes(&mut self, plan: &Plan, dst_is_zero: bool) -> Result<Vec<Lane>> {
        let cfg = &self.cfg;
        let params = LaneParams {
            request_size: plan.request_size,
            requests: plan.requests,
            dst_size: match &self.dst {
                Endpoint::Nbd(n) => Some(n.info.size),
                Endpoint::File(f) if f.kind == FileKind::Block => f.size,
                _ => None,
            },
            // --checkpoint: a lane's last work is recorded after its flush.
            flush: cfg.flush || cfg.checkpoint.is_some(),
            timeout: (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs)),
            slow_timeout: (cfg.slow_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.slow_timeout_secs)),
            pipe_size: cfg.pipe_size.map(|v| v as usize),
            sparse: plan.sparse,
            allocated: cfg.allocated,
            dst_is_zero,
            extents: !cfg.no_extents && rangeplan::wants_extents(self.list.as_deref(), &self.src),
            zero_piece: plan.zero_piece,
            direct_file_writes: plan.direct_file_writes,
            file_lock: plan.file_lock.then(|| Arc::new(std::sync::Mutex::new(()))),
            align: plan.align,
            stage_reads: plan.stage_reads,
            retries: cfg.retries,
            retry_delay: cfg.retry_delay,
            hash: self.hasher.clone(),
            // Bursts of at most 4 requests (late wake-ups on a busy
            // machine lose nothing up to that).
            rate: (cfg.rate > 0).then(|| {
                let rs = plan.request_size;
                Arc::new(rate::Limiter::new(cfg.rate, 4 * rs, rs))
            }),
            dst_shift: self.window.shift(),
            dirty: cfg.dirty_bitmap.is_some(),
        };
        let mut lanes = Vec::with_capacity(plan.lanes as usize);
        let mut spliced = 0;
        for i in 0..plan.lanes as usize {
            let src = match &mut self.src {
                Endpoint::File(f) => SrcIo::File {
                    fd: f.fd.as_raw_fd(),
                    stream: f.is_stream(),
                    name: self.src_spec.to_string(),
                },
                Endpoint::Nbd(n) => SrcIo::Nbd(Box::new(
                    lane_conn(n, i, &params, params.stage_reads)
                        .map_err(|e| e.at(Side::Source, &self.src_spec))?,
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
                Endpoint::Nbd(n) => DstIo::Nbd(Box::new(
                    lane_conn(n, i, &params, false)
                        .map_err(|e| e.at(Side::Destination, &self.dst_spec))?,
                )),
            };
            let mut lane = Lane::new(src, dst, params.clone());
            if plan.splice {
                spliced += lane.enable_splice(splice::WaitLimits {
                    shared: self.shared.clone(),
                    timeout: params.timeout,
                    slow_timeout: params.slow_timeout,
                }) as usize;
            }
            lanes.push(lane);
        }
        self.shared.connections.store(plan.lanes as u64, Relaxed);
        self.log().emit(Level::Info, || {
            format!(
                "{} -> {}: size {}, {} lane(s) on {} thread(s), {} requests of {} bytes, \
                 {} data path",
                self.src_spec,
                self.dst_spec,
                self.src
                    .size()
                    .map_or("unknown (stream)".into(), |s| s.to_string()),
                plan.lanes,
                plan.workers,
                plan.requests,
                plan.request_size,
                if spliced == plan.lanes as usize {
                    "splice"
                } else if spliced > 0 {
                    "mixed splice/receive"
                } else {
                    "receive"
                }
            )
        });
        for (side, spec, e) in [
            ("source", &self.src_spec, &self.src),
            ("destination", &self.dst_spec, &self.dst),
        ] {
            if let Endpoint::Nbd(n) = e {
                if let Some(t) = n.tls_summary() {
                    self.log().emit(Level::Info, || {
                        format!("{side} {spec}: {t}, {}", crate::tls::record_layer())
                    });
                }
            }
        }
        Ok(lanes)
    }

    /// Runs the lanes on `workers` threads, reporting progress on this
    /// one (and recording a checkpoint), until all are done.
    fn run_workers(
        &self,
        lanes: Vec<Lane>,
        workers: usize,
        q: &WorkQueue,
        engine: &Choice,
        (interval, progress): (Duration, &mut dyn FnMut(&Shared) -> bool),
        mut ckpt: Option<&mut checkpoint::Session>,
    ) -> Result<()> {
        let mut per_worker: Vec<Vec<Lane>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, lane) in lanes.into_iter().enumerate() {
            per_worker[i % workers].push(lane);
        }
        let shared = &*self.shared;
        let fallback = self.cfg.engine == crate::config::EngineChoice::Auto;
        let gate = &EngineGate::new(engine.kind, fallback, shared);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let mut started = 0;
            let mut spawn_err = None;
            for (index, lanes) in per_worker.into_iter().enumerate() {
                let done_tx = done_tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("nbdcpy-worker".into())
                    .spawn_scoped(s, move || {
                        signals::library_thread_start();
                        // A panic in a worker becomes an error, never an abort.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            worker::run_worker(lanes, q, shared, gate, index)
                        }));
                        if r.is_err() {
                            shared.fail(Error::new(libc::EIO, "internal error: worker panicked"));
                        }
                        let _ = done_tx.send(());
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => {
                        spawn_err = Some(Error::os("cannot start worker thread", e));
                        break;
                    }
                }
            }
            // Every worker has its engine (or none) before data moves.
            match gate.decide(started, spawn_err.is_some()) {
                Ok(ran) => {
                    // Without a worker's fallback, the job's choice (and
                    // why auto did not pick io_uring, if it did not).
                    let ran = if ran.fallback_reason.is_none() {
                        engine
                    } else {
                        &ran
                    };
                    self.log().emit(Level::Info, || ran.describe());
                    let _ = shared.engine.set(ran.kind);
                }
                Err(e) => shared.fail(spawn_err.take().unwrap_or(e)),
            }
            let workers = started;
            // Wake at once when a worker ends; otherwise report progress
            // once per `interval`, whether or not the size is known.
            let mut running = workers;
            let tick = interval.clamp(Duration::from_millis(10), Duration::from_millis(100));
            let mut last = std::time::Instant::now();
            while running > 0 {
                match done_rx.recv_timeout(tick) {
                    Ok(()) => running -= 1,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if let Some(c) = ckpt.as_deref_mut().filter(|_| running > 0) {
                    if let Err(e) = c.tick(shared) {
                        shared.fail(e);
                    }
                }
                for n in shared.take_notes() {
                    self.log().emit(Level::Info, || n);
                }
                if running > 0 && last.elapsed() >= interval {
                    last = std::time::Instant::now();
                    if !progress(shared) {
                        shared.cancel();
                    }
                }
            }
            for n in shared.take_notes() {
                self.log().emit(Level::Info, || n);
            }
            Ok::<(), Error>(())
        })
    }
}

/// A destination file the job created, removed when the job is dropped
/// before it is made (None once it is).
struct Created(Option<(String, FileId)>);

impl Drop for Created {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Some((path, id)) = self.0.take() else {
            return;
        };
        // Only the empty file this job made, not one put there since.
        if let (Ok(m), FileId::Inode { dev, ino }) = (std::fs::symlink_metadata(&path), id) {
            if m.dev() == dev && m.ino() == ino && m.len() == 0 && m.is_file() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The connection of lane `i` to the NBD endpoint `n`.
fn lane_conn(n: &mut NbdEndpoint, i: usize, p: &LaneParams, whole_reads: bool) -> Result<NbdConn> {
    let (fd, name) = n.lane_socket(i)?;
    let info = n.info.clone();
    let mut conn = NbdConn::new(fd, name, n.side(), info, p.request_size, whole_reads);
    if let Some(sess) = n.take_session(i) {
        conn.set_tls(sess);
    }
    if p.retries > 0 {
        conn.enable_resend();
    }
    if let Some(dial) = n.redialer().filter(|_| p.retries > 0) {
        conn.enable_retries(Retry::new(dial, p.retries, p.retry_delay, whole_reads));
    }
    Ok(conn)
}

/// `--checkpoint`: refuses what cannot resume, then reads FILE (if any)
/// and checks it belongs to this copy.  Nothing is written.
fn open_checkpoint(
    path: &str,
    cfg: &Config,
    (src_spec, src): (&Spec, &mut Endpoint),
    (dst_spec, dst): (&Spec, &Endpoint),
    list: Option<&rangelist::RangeList>,
    window: &ranges::Window,
    shared: &Shared,
) -> Result<checkpoint::Session> {
    for (side, spec, ep) in [("source", src_spec, &*src), ("destination", dst_spec, dst)] {
        if matches!(ep, Endpoint::File(f) if f.is_stream()) || matches!(spec, Spec::Stdio) {
            return Err(Error::invalid(format!(
                "--checkpoint: the {side} {spec} is a stream, which cannot resume"
            )));
        }
    }
    if cfg.blkhash.is_some() || cfg.verify {
        return Err(Error::invalid(
            "--checkpoint cannot be combined with --blkhash or --verify: a resumed copy \
             does not read again what an earlier run copied",
        ));
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    let dst_size = match dst {
        Endpoint::Nbd(n) => Some(n.info.size),
        Endpoint::File(f) if f.kind == FileKind::Block => f.size,
        _ => None,
    };
    let ranges = list.map(|l| {
        let mut b = Vec::with_capacity(16 * l.areas().len());
        for a in l.areas() {
            b.extend_from_slice(&a.offset.to_le_bytes());
            b.extend_from_slice(&a.length.to_le_bytes());
        }
        ckptfile::hex(&ckptfile::sha256(&b))
    });
    let flag = |b: bool| (b as u8).to_string();
    let identity: Vec<(String, String)> = [
        ("source", src_spec.to_string()),
        ("destination", dst_spec.to_string()),
        ("source-size", opt(src.size())),
        ("destination-size", opt(dst_size)),
        ("offset", cfg.offset.to_string()),
        ("length", opt(cfg.length)),
        ("destination-offset", opt(cfg.destination_offset)),
        ("ranges", ranges.unwrap_or_else(|| "-".into())),
        (
            "dirty-bitmap",
            cfg.dirty_bitmap.clone().unwrap_or_else(|| "-".into()),
        ),
        ("allocated", flag(cfg.allocated)),
        ("destination-is-zero", flag(cfg.destination_is_zero)),
        ("sparse", opt(cfg.sparse)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let t = limit(cfg.timeout_secs);
    let mut read = |off: u64, len: u64| -> Result<Vec<u8>> {
        match &mut *src {
            Endpoint::File(f) => {
                let mut b = vec![0u8; len as usize];
                let mut got = 0;
                while got < b.len() {
                    match crate::sys::pread(f.fd.as_raw_fd(), &mut b[got..], off + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::os(format!("source {src_spec}: read"), e)),
                    }
                }
                b.truncate(got);
                Ok(b)
            }
            Endpoint::Nbd(n) => n
                .read_at(off, len, t, &|| shared.cancelled())
                .map_err(|e| e.at(Side::Source, src_spec)),
            Endpoint::Null => Ok(Vec::new()),
        }
    };
    let mut s = checkpoint::Session::open(path, cfg.checkpoint_interval, identity, &mut read)?;
    let areas: Vec<(u64, u64)> = match list {
        Some(l) => l.areas().iter().map(|a| (a.offset, a.end())).collect(),
        None => vec![(window.start, window.end)],
    };
    s.sample_source(&areas, &mut read)
        .map_err(|e| e.context(format!("checkpoint {path}: sampling the source")))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::WorkQueue;

    #[test]
    fn pieces_and_their_ends() {
        let m = 1u64 << 20;
        let q = WorkQueue::range(10, 10 + 300 * m, 128 * m);
        assert_eq!(q.claim(), Some((10, 10 + 128 * m)));
        for (off, end) in [
            (10, 10 + 128 * m),
            (10 + 128 * m - 1, 10 + 128 * m),
            (10 + 128 * m, 10 + 256 * m),
            (10 + 299 * m, 10 + 300 * m),
        ] {
            assert_eq!(q.piece_end(off), end, "{off}");
        }
        assert_eq!(q.claim(), Some((10 + 128 * m, 10 + 256 * m)));
        assert_eq!(q.claim(), Some((10 + 256 * m, 10 + 300 * m)));
        assert_eq!(q.claim(), None);
        // A stream's single piece never ends early.
        let s = WorkQueue::range(0, u64::MAX, u64::MAX);
        assert_eq!(s.piece_end(1 << 40), u64::MAX);
    }
}
