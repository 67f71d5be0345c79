// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! One engine for the whole copy: every worker makes its engine before data moves, and one that cannot decides for all.
//
// Rings are made on the worker threads (io_uring's single-issuer rings
// belong to the thread that made them).  Each worker makes the job's
// engine, says how it went and waits; the job thread, once every worker
// has answered, decides: all made it, or (engine "auto") every worker
// drops its ring and runs epoll, or (engine "io_uring") the copy fails
// with the worker's error.  Nothing moves before the decision, so the
// engine the job reports is the engine that ran all of the copy.

use crate::copy::stats::Shared;
use crate::engine::{Choice, Engine, EngineKind};
use crate::error::{Error, Result};
use std::sync::{Condvar, Mutex};

/// The workers' engines, decided together.
pub struct EngineGate {
    want: EngineKind,
    /// Engine "auto": a ring that cannot be made means epoll for all.
    fallback: bool,
    state: Mutex<State>,
    cv: Condvar,
    /// Fault injection (tests only): this worker (counted from 1; 0:
    /// none) cannot make its ring (`Shared::fail_ring`).
    #[cfg(test)]
    fail_ring: usize,
}

#[derive(Default)]
struct State {
    /// Workers that tried to make their engine.
    tried: usize,
    /// The first worker whose engine could not be made, and why.
    failed: Option<(usize, Error)>,
    /// The decision: the engine every worker runs (None: none runs).
    decided: Option<Option<EngineKind>>,
}

impl EngineGate {
    pub fn new(want: EngineKind, fallback: bool, shared: &Shared) -> EngineGate {
        let _ = shared;
        EngineGate {
            want,
            fallback,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            #[cfg(test)]
            fail_ring: shared.fail_ring.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On worker `worker`: makes the job's engine (`entries` deep), waits
    /// for the job's decision and returns the engine it decided, or None
    /// when the copy does not run (the job reports why).  An epoll engine
    /// that cannot be made after a fallback is this worker's error.
    pub fn engine(&self, worker: usize, entries: u32) -> Result<Option<Engine>> {
        let mine = self.make(worker, entries);
        let mut s = self.lock();
        s.tried += 1;
        let mine = match mine {
            Ok(e) => Some(e),
            Err(e) => {
                if s.failed.is_none() {
                    s.failed = Some((worker, e));
                }
                None
            }
        };
        self.cv.notify_all();
        let decided = loop {
            if let Some(d) = s.decided {
                break d;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        };
        drop(s);
        match (decided, mine) {
            (None, _) => Ok(None),
            (Some(k), Some(e)) if e.kind() == k => Ok(Some(e)),
            // The ring (if any) goes before the epoll engine is made.
            (Some(k), mine) => {
                drop(mine);
                Engine::new(k, entries).map(Some)
            }
        }
    }

    /// On the job thread, once `workers` threads run `engine`: waits
    /// until each has tried, then decides for all.  The engine that runs
    /// (with why io_uring does not, after a fallback), or the error that
    /// fails the copy (engine "io_uring" and a worker without its ring).
    /// `workers` smaller than the job's (a thread that could not start):
    /// the workers are told not to run.
    pub fn decide(&self, workers: usize, abort: bool) -> Result<Choice> {
        let mut s = self.lock();
        while s.tried < workers {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let r = match s.failed.take() {
            _ if abort => Err(Error::new(libc::EIO, "the copy did not start")),
            None => Ok(Choice {
                kind: self.want,
                fallback_reason: None,
            }),
            Some((w, e)) if self.fallback => Ok(Choice {
                kind: EngineKind::Epoll,
                fallback_reason: Some(format!("worker {w}: {e}")),
            }),
            Some((w, e)) => Err(Error::new(
                e.errno,
                format!(
                    "engine io_uring: worker {w} of the copy cannot set up its ring: {e} \
                     (engine=auto falls back to epoll)"
                ),
            )),
        };
        s.decided = Some(r.as_ref().ok().map(|c| c.kind));
        self.cv.notify_all();
        r
    }

    /// Worker `worker`'s engine of the job's kind.
    #[cfg(not(test))]
    fn make(&self, _worker: usize, entries: u32) -> Result<Engine> {
        Engine::new(self.want, entries)
    }

    #[cfg(test)]
    fn make(&self, worker: usize, entries: u32) -> Result<Engine> {
        if self.want == EngineKind::IoUring && self.fail_ring == worker + 1 {
            return Err(Error::new(
                libc::EPERM,
                "io_uring setup: Operation not permitted (injected)",
            ));
        }
        Engine::new(self.want, entries)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::copy::Job;
    use crate::endpoint::Spec;
    use crate::engine::EngineKind;
    use crate::error::Result;
    use std::sync::atomic::Ordering::Relaxed;

    const SIZE: usize = 8 << 20;

    /// Whether this machine can run io_uring; else a skip, or a failure
    /// under NBDCPY_REQUIRE_SERVERS (CI tests both engines).
    fn have_io_uring() -> bool {
        if crate::engine::io_uring_available() {
            return true;
        }
        if std::env::var_os("NBDCPY_REQUIRE_SERVERS").is_some() {
            panic!("io_uring is required (NBDCPY_REQUIRE_SERVERS is set)");
        }
        eprintln!("SKIP: io_uring cannot be set up here");
        false
    }

    /// A file-to-file copy on `engine` with two workers, the second of
    /// which cannot make its ring when `fail` is set: the result, the
    /// engine the job reports, the engines the workers ran, and whether
    /// the destination holds the source.
    fn copy(
        tag: &str,
        engine: &str,
        fail: bool,
    ) -> (Result<()>, Option<EngineKind>, Vec<EngineKind>, bool) {
        let dir = std::env::temp_dir().join(format!("nbdcpy-gate-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8 | 1).collect();
        std::fs::write(&src, &data).unwrap();
        let mut cfg = Config::default();
        for (k, v) in [
            ("engine", engine),
            ("threads", "2"),
            ("connections", "2"),
            ("request-size", "64k"),
        ] {
            cfg.set(k, Some(v)).unwrap();
        }
        let spec = |p: &std::path::Path| Spec::parse(p.to_str().unwrap());
        let mut job = Job::open(spec(&src), spec(&dst), cfg).unwrap();
        if fail {
            job.shared().fail_ring.store(2, Relaxed);
        }
        let r = job.run(std::time::Duration::from_millis(50), &mut |_| true);
        let shared = job.shared().clone();
        drop(job);
        let ran = shared.engines_ran.lock().unwrap().clone();
        let same = std::fs::read(&dst).unwrap_or_default() == data;
        let _ = std::fs::remove_dir_all(&dir);
        (r, shared.engine.get().copied(), ran, same)
    }

    #[test]
    fn every_worker_runs_the_engine_reported() {
        if !have_io_uring() {
            return;
        }
        let (r, engine, ran, same) = copy("uring", "io_uring", false);
        r.unwrap();
        assert_eq!(engine, Some(EngineKind::IoUring));
        assert_eq!(ran, [EngineKind::IoUring; 2]);
        assert!(same);
    }

    #[test]
    fn auto_falls_back_as_a_whole_when_one_worker_has_no_ring() {
        if !have_io_uring() {
            return;
        }
        let (r, engine, ran, same) = copy("auto", "auto", true);
        r.unwrap();
        assert_eq!(
            engine,
            Some(EngineKind::Epoll),
            "the job reports the fallback"
        );
        assert_eq!(ran, [EngineKind::Epoll; 2], "no mixture");
        assert!(same, "the copy is whole");
    }

    #[test]
    fn forced_io_uring_fails_before_data_moves_when_one_worker_has_no_ring() {
        if !have_io_uring() {
            return;
        }
        let (r, engine, ran, same) = copy("forced", "io_uring", true);
        let e = r.unwrap_err();
        assert_eq!(e.errno, libc::EPERM, "{}", e.msg);
        assert!(
            e.msg
                .contains("engine io_uring: worker 1 of the copy cannot set up its ring"),
            "{}",
            e.msg
        );
        assert_eq!(engine, None, "no engine ran");
        assert!(ran.is_empty(), "no worker ran: {ran:?}");
        assert!(!same);
    }
}
