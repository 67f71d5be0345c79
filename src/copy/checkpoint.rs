// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Resumable copies (`--checkpoint`): the work the destination holds durably, the FILE it is recorded in, and the work left on resume.
//
// A lane records a piece as done when its slot is free (every write and
// zeroing of it acknowledged); the pieces move to the job's durable set
// only when a flush of the lane's destination (NBD FLUSH on the lane's own
// connection, or fsync) that started after them has completed.  The main
// thread asks for flushes once per interval or GiB (an epoch the lanes
// see), and writes FILE (new file, fsync, rename) whenever the durable set
// grew.  A resumed copy is a copy whose work list is its areas with the
// recorded ones removed, into a destination that is not assumed to be
// zero anywhere.

use super::ckptfile::{self, Checkpoint, Sample};
use super::stats::Shared;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most source samples a checkpoint keeps, and the bytes of each.
const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 4096;
/// A checkpoint at least every this many bytes copied.
const EVERY_BYTES: u64 = 1 << 30;

/// Adds `more` [start, end) ranges to the sorted, merged set `set`.
pub fn merge_into(set: &mut Vec<(u64, u64)>, more: &[(u64, u64)]) {
    if more.is_empty() {
        return;
    }
    set.extend_from_slice(more);
    set.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(set.len());
    for &(a, b) in set.iter() {
        match out.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *set = out;
}

/// `areas` ([start, end), sorted, disjoint) without the sorted, merged
/// `done` ranges.
pub fn subtract(areas: &[(u64, u64)], done: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(a, b) in areas {
        let mut at = a;
        while j < done.len() && done[j].1 <= at {
            j += 1;
        }
        let mut k = j;
        while at < b {
            match done.get(k) {
                Some(&(s, e)) if s < b => {
                    if s > at {
                        out.push((at, s));
                    }
                    at = at.max(e);
                    k += 1;
                }
                _ => {
                    out.push((at, b));
                    at = b;
                }
            }
        }
    }
    out
}

/// Total length of [start, end) ranges.
pub fn total(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(a, b)| b - a).sum()
}

/// The job's record of durable work, shared by the lanes.
#[derive(Default)]
pub struct Tracker {
    /// Durable [start, end) source ranges, sorted and merged.
    durable: Mutex<Vec<(u64, u64)>>,
    /// Bumped whenever `durable` grows.
    generation: AtomicU64,
    /// Flushes asked for: a lane flushes when this is past its own.
    epoch: AtomicU64,
    /// Done but not known durable, handed back when a lane ended early.
    leftover: Mutex<Vec<(u64, u64)>>,
    samples: Mutex<Vec<Sample>>,
}

impl Tracker {
    fn add_durable(&self, r: &[(u64, u64)]) {
        if r.is_empty() {
            return;
        }
        if let Ok(mut d) = self.durable.lock() {
            merge_into(&mut d, r);
        }
        self.generation.fetch_add(1, Relaxed);
    }
}

/// A lane's part: what it finished since its last flush, and the flush
/// under way.
pub struct LaneCheckpoint {
    tracker: Arc<Tracker>,
    done: Vec<(u64, u64)>,
    in_flush: Vec<(u64, u64)>,
    /// A checkpoint flush is under way (not the final one).
    pub flushing: bool,
    epoch: u64,
}

impl LaneCheckpoint {
    pub fn new(tracker: Arc<Tracker>) -> LaneCheckpoint {
        LaneCheckpoint {
            tracker,
            done: Vec::new(),
            in_flush: Vec::new(),
            flushing: false,
            epoch: 0,
        }
    }

    /// [offset, offset + len) of the source reached the destination.
    pub fn done(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        match self.done.last_mut() {
            Some(l) if l.1 == offset => l.1 = end,
            _ => self.done.push((offset, end)),
        }
    }

    /// Whether the main thread asked for a flush this lane has not made.
    pub fn wants_flush(&self) -> bool {
        !self.flushing && !self.done.is_empty() && self.tracker.epoch.load(Relaxed) > self.epoch
    }

    /// Whether the lane finished work no flush has covered yet.
    pub fn has_unflushed(&self) -> bool {
        !self.done.is_empty()
    }

    /// A checkpoint flush starts: it covers what is done now.
    pub fn begin_flush(&mut self) {
        self.epoch = self.tracker.epoch.load(Relaxed);
        self.in_flush = std::mem::take(&mut self.done);
        self.flushing = true;
    }

    /// The checkpoint flush completed.
    pub fn flushed(&mut self) {
        self.tracker
            .add_durable(&std::mem::take(&mut self.in_flush));
        self.flushing = false;
    }

    /// The lane's final flush completed: all it did is durable.
    pub fn all_flushed(&mut self) {
        let mut all = std::mem::take(&mut self.in_flush);
        all.append(&mut self.done);
        self.tracker.add_durable(&all);
    }
}

impl Drop for LaneCheckpoint {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut self.in_flush);
        all.append(&mut self.done);
        if let Ok(mut l) = self.tracker.leftover.lock() {
            l.extend(all);
        }
    }
}

/// Reads `len` bytes of the source at `offset` (the sample check).
pub type ReadSource<'a> = dyn FnMut(u64, u64) -> Result<Vec<u8>> + 'a;

/// The checkpoint of one job.
pub struct Session {
    path: PathBuf,
    identity: Vec<(String, String)>,
    pub tracker: Arc<Tracker>,
    /// The recorded ranges at the start ([start, end)); None: a new copy.
    resumed: Option<Vec<(u64, u64)>>,
    interval: Duration,
    last_ask: Instant,
    last_bytes: u64,
    written: u64,
    /// FILE.lock, locked (flock) for the copy's life.
    lock: Lock,
}

/// The exclusive lock of FILE.lock: one copy at a time uses a FILE.
struct Lock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Lock {
    /// Locks FILE.lock (created if missing), at once or not at all.
    fn take(path: &Path) -> Result<Lock> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let mut lp = path.as_os_str().to_owned();
        lp.push(".lock");
        let lp = PathBuf::from(lp);
        let ctx = |e| {
            Error::os(
                format!(
                    "checkpoint {}: cannot lock {}",
                    path.display(),
                    lp.display()
                ),
                e,
            )
        };
        loop {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(&lp)
                .map_err(ctx)?;
            match crate::sys::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) {
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    return Err(Error::new(
                        libc::EBUSY,
                        format!(
                            "checkpoint {} is in use by another copy (it holds {} locked)",
                            path.display(),
                            lp.display()
                        ),
                    ))
                }
                Err(e) => return Err(ctx(e)),
                Ok(()) => {}
            }
            // A copy that ended removed the lock file we opened: lock the
            // one at the path now.
            let mine = f.metadata().map_err(ctx)?;
            match std::fs::metadata(&lp) {
                Ok(m) if m.dev() == mine.dev() && m.ino() == mine.ino() => {
                    return Ok(Lock { path: lp, _file: f })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ctx(e)),
            }
        }
    }
}

fn load_error(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("checkpoint {}: {why}", path.display()))
}

impl Session {
    /// Reads FILE (if it exists) and checks it belongs to the copy
    /// described by `identity`, and that the source's samples are
    /// unchanged.  Nothing is written.
    pub fn open(
        path: &str,
        interval: Duration,
        identity: Vec<(String, String)>,
        read_source: &mut ReadSource<'_>,
    ) -> Result<Session> {
        let p = PathBuf::from(path);
        let lock = Lock::take(&p)?;
        let resumed = match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::os(format!("checkpoint {path}: cannot read it"), e)),
            Ok(bytes) => {
                let c = ckptfile::decode(&bytes).map_err(|e| load_error(&p, e))?;
                let diff = ckptfile::differences(&c.identity, &identity);
                if !diff.is_empty() {
                    return Err(Error::invalid(format!(
                        "checkpoint {path} was made for another copy: {}",
                        diff.join("; ")
                    )));
                }
                for s in &c.samples {
                    let data = read_source(s.offset, s.len).map_err(|e| {
                        e.context(format!("checkpoint {path}: checking the source"))
                    })?;
                    if ckptfile::sha256(&data) != s.sha256 {
                        return Err(Error::invalid(format!(
                            "checkpoint {path}: the source changed since the checkpoint \
                             (the {} bytes at offset {} differ): not resuming",
                            s.len, s.offset
                        )));
                    }
                }
                Some((
                    c.done.iter().map(|&(o, l)| (o, o + l)).collect::<Vec<_>>(),
                    c.samples,
                ))
            }
        };
        let tracker = Arc::new(Tracker::default());
        let (resumed, samples) = match resumed {
            Some((d, s)) => (Some(d), s),
            None => (None, Vec::new()),
        };
        if let Ok(mut v) = tracker.samples.lock() {
            *v = samples;
        }
        if let (Some(d), Ok(mut g)) = (&resumed, tracker.durable.lock()) {
            *g = d.clone();
        }
        Ok(Session {
            path: p,
            identity,
            tracker,
            resumed,
            interval,
            last_ask: Instant::now(),
            last_bytes: 0,
            written: u64::MAX,
            lock,
        })
    }

    /// Reads candidate source samples spread over `areas` ([start, end)),
    /// outside what is recorded already: those inside the durable work
    /// when FILE is written go into it (up to `SAMPLES`).
    pub fn sample_source(
        &mut self,
        areas: &[(u64, u64)],
        read_source: &mut ReadSource<'_>,
    ) -> Result<()> {
        let left = match &self.resumed {
            Some(d) => subtract(areas, d),
            None => areas.to_vec(),
        };
        let all = total(&left);
        let have = self.tracker.samples.lock().map_or(0, |v| v.len());
        if all == 0 || have >= SAMPLES {
            return Ok(());
        }
        let n = 2 * SAMPLES as u64;
        let mut out = Vec::new();
        let (mut i, mut before) = (0usize, 0u64);
        for k in 0..n {
            // The k-th of n points evenly through the areas left.
            let at = all / n * k;
            while i < left.len() && before + (left[i].1 - left[i].0) <= at {
                before += left[i].1 - left[i].0;
                i += 1;
            }
            let Some(&(a, b)) = left.get(i) else { break };
            let off = a + (at - before);
            let len = (b - off).min(SAMPLE_LEN as u64);
            if out.iter().any(|s: &Sample| s.offset == off) {
                continue;
            }
            let data = read_source(off, len)?;
            out.push(Sample {
                offset: off,
                len: data.len() as u64,
                sha256: ckptfile::sha256(&data),
            });
        }
        if let Ok(mut v) = self.tracker.samples.lock() {
            v.extend(out.into_iter().filter(|s| s.len > 0));
        }
        Ok(())
    }

    /// The ranges recorded done before this run, if it resumes.
    pub fn resumed(&self) -> Option<&[(u64, u64)]> {
        self.resumed.as_deref()
    }

    /// Writes FILE with what is durable now: a new file, fsync, rename,
    /// fsync of the directory.
    pub fn save(&mut self) -> Result<()> {
        let gen = self.tracker.generation.load(Relaxed);
        let done = self
            .tracker
            .durable
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let samples: Vec<Sample> = self
            .tracker
            .samples
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| {
                        let i = done.partition_point(|r| r.1 <= s.offset);
                        done.get(i)
                            .is_some_and(|r| r.0 <= s.offset && s.offset + s.len <= r.1)
                    })
                    .take(SAMPLES)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let c = Checkpoint {
            identity: self.identity.clone(),
            samples,
            done: done.iter().map(|&(a, b)| (a, b - a)).collect(),
        };
        write_atomically(&self.path, &ckptfile::encode(&c))?;
        self.written = gen;
        Ok(())
    }

    /// Called on the main thread while the copy runs: asks the lanes for
    /// a flush once per interval or GiB, and records what became durable.
    pub fn tick(&mut self, shared: &Shared) -> Result<()> {
        let bytes = shared.bytes_done.load(Relaxed);
        let by_time = !self.interval.is_zero() && self.last_ask.elapsed() >= self.interval;
        if by_time || bytes.saturating_sub(self.last_bytes) >= EVERY_BYTES {
            self.tracker.epoch.fetch_add(1, Relaxed);
            self.last_ask = Instant::now();
            self.last_bytes = bytes;
        }
        if self.tracker.generation.load(Relaxed) != self.written {
            self.save()?;
        }
        Ok(())
    }

    /// After the workers ended without success: `synced` says the
    /// destination was made durable after they stopped (then what they
    /// finished unflushed counts too); FILE records the durable work.
    pub fn stop(&mut self, synced: bool) -> Result<()> {
        let left = self
            .tracker
            .leftover
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        if synced {
            self.tracker.add_durable(&left);
        }
        self.save()
    }

    /// After a successful copy: FILE is removed.
    /// FILE.lock goes too (still locked: a copy waiting for it locks a
    /// new one).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::os(
                format!("checkpoint {}: cannot remove it", self.path.display()),
                e,
            )),
            _ => {
                let _ = std::fs::remove_file(&self.lock.path);
                Ok(())
            }
        }
    }
}

/// `path` holds `bytes` or what it held before, whatever happens.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let ctx = |what: &str, e| Error::os(format!("checkpoint {}: {what}", path.display()), e);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| ctx("cannot create its new copy", e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ctx("cannot write its new copy", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ctx("cannot rename its new copy", e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_subtract() {
        let mut s = vec![];
        merge_into(&mut s, &[(10, 20), (0, 5)]);
        merge_into(&mut s, &[(5, 10), (30, 40)]);
        assert_eq!(s, [(0, 20), (30, 40)]);
        assert_eq!(subtract(&[(0, 100)], &s), [(20, 30), (40, 100)]);
        assert_eq!(subtract(&[(0, 15), (18, 35)], &s), [(20, 30)]);
        assert_eq!(subtract(&[(50, 60)], &s), [(50, 60)]);
        assert_eq!(subtract(&[(0, 20)], &s), []);
        assert_eq!(total(&s), 30);
    }

    #[test]
    fn only_flushed_work_is_durable() {
        let t = Arc::new(Tracker::default());
        let mut l = LaneCheckpoint::new(t.clone());
        l.done(0, 10);
        l.done(10, 10);
        assert!(!l.wants_flush());
        t.epoch.fetch_add(1, Relaxed);
        assert!(l.wants_flush());
        l.begin_flush();
        l.done(20, 5); // after the flush started: not covered by it
        l.flushed();
        assert_eq!(*t.durable.lock().unwrap(), [(0, 20)]);
        drop(l);
        assert_eq!(*t.leftover.lock().unwrap(), [(20, 25)]);
    }

    #[test]
    fn save_open_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("nbdcpy-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c");
        let path = p.to_str().unwrap();
        let id = vec![("source-size".to_string(), (64u64 << 20).to_string())];
        let src = vec![7u8; 8192];
        let mut read = |o: u64, l: u64| Ok(src[o as usize..(o + l) as usize].to_vec());
        let mut s = Session::open(path, Duration::ZERO, id.clone(), &mut read).unwrap();
        assert!(s.resumed().is_none());
        s.sample_source(&[(0, 8192)], &mut read).unwrap();
        let mut l = LaneCheckpoint::new(s.tracker.clone());
        l.done(0, 8192);
        l.all_flushed();
        s.save().unwrap();
        // FILE is locked while its session lives.
        let e = Session::open(path, Duration::ZERO, id.clone(), &mut read)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains(&format!("checkpoint {path} is in use by another copy")),
            "{e}"
        );
        drop(s);
        let again = Session::open(path, Duration::ZERO, id, &mut read).unwrap();
        assert_eq!(again.resumed(), Some(&[(0u64, 8192u64)][..]));
        assert!(!again.tracker.samples.lock().unwrap().is_empty());
        drop(again);
        let other = vec![("source-size".to_string(), (32u64 << 20).to_string())];
        let e = Session::open(path, Duration::ZERO, other.clone(), &mut read)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("checkpoint {path} was made for another copy: source size 64 MiB, now 32 MiB")
        );
        // A changed source.
        let id = vec![("source-size".to_string(), (64u64 << 20).to_string())];
        let mut changed = |_: u64, l: u64| Ok(vec![8u8; l as usize]);
        let e = Session::open(path, Duration::ZERO, id, &mut changed)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("the source changed since the checkpoint"),
            "{e}"
        );
        std::fs::write(&p, b"not one\n").unwrap();
        let e = Session::open(path, Duration::ZERO, other, &mut read)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not an nbdcpy checkpoint"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
