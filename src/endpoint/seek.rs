// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A file's SEEK_DATA/SEEK_HOLE walks on a helper thread, handed back through an eventfd.
//
// On tmpfs a SEEK_HOLE walks the page cache page by page up to the next
// hole: milliseconds on a large file.  Made inside a worker's event loop
// it would hold up every operation of that worker.  A `SeekHelper`
// walks the ranges it is asked for on its own thread, in order, and
// counts up an eventfd for each answer; the asker reads that eventfd
// through its engine like any other operation and takes the answer when
// the read completes.

use super::file::ExtentWalker;
use super::Extent;
use crate::sys;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

type Answers = Arc<Mutex<VecDeque<Vec<Extent>>>>;

/// Walks a file's extents on a helper thread.
pub struct SeekHelper {
    ask: Option<mpsc::Sender<(u64, u64)>>,
    answers: Answers,
    ready: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl SeekHelper {
    /// A helper walking the file `fd`.  It walks a duplicate: moving the
    /// shared file position changes nothing, as every read and write of
    /// a copy gives its offset.
    pub fn new(fd: RawFd) -> io::Result<SeekHelper> {
        let file = sys::dup_cloexec(fd)?;
        let ready = Arc::new(sys::eventfd()?);
        let answers: Answers = Arc::default();
        let (tx, rx) = mpsc::channel::<(u64, u64)>();
        let (out, wake) = (answers.clone(), ready.clone());
        let thread = std::thread::Builder::new()
            .name("nbdcpy-seek".into())
            .spawn(move || {
                // Remembers the last data extent, as the lane's own did.
                let mut walker = ExtentWalker::default();
                for (a, b) in rx {
                    let mut found = Vec::new();
                    walker.walk(file.as_raw_fd(), a, b, &mut |e| {
                        found.push(e);
                        true
                    });
                    out.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(found);
                    // Cannot fail but on a counter at its maximum.
                    let _ = sys::write(wake.as_raw_fd(), &1u64.to_ne_bytes());
                }
            })?;
        Ok(SeekHelper {
            ask: Some(tx),
            answers,
            ready,
            thread: Some(thread),
        })
    }

    /// Readable (8 bytes: how many answers came since the last read)
    /// once an answer is waiting.
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Asks for the extents of [a, b); false when the helper is gone.
    pub fn ask(&self, a: u64, b: u64) -> bool {
        self.ask.as_ref().is_some_and(|tx| tx.send((a, b)).is_ok())
    }

    /// The oldest answer not taken yet: the extents covering the range
    /// asked for, in order.
    pub fn answer(&self) -> Option<Vec<Extent>> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

impl Drop for SeekHelper {
    fn drop(&mut self) {
        // The thread ends once it has no more to walk and nobody can ask.
        drop(self.ask.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_in_order_with_the_eventfd_counted_up() {
        let dir = std::env::temp_dir().join(format!("nbdcpy-seek-{}", std::process::id()));
        let f = std::fs::File::create(&dir).unwrap();
        // 1 MiB of data at 4 MiB in an 8 MiB file: holes around it (or,
        // where the filesystem cannot tell, all data).
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![1u8; 1 << 20], 4 << 20).unwrap();
        let h = SeekHelper::new(f.as_raw_fd()).unwrap();
        assert!(h.ask(0, 8 << 20));
        assert!(h.ask(4 << 20, 5 << 20));
        let mut got = Vec::new();
        while got.len() < 2 {
            let mut n = [0u8; 8];
            // Blocks until an answer is there.
            assert_eq!(sys::read(h.ready_fd(), &mut n).unwrap(), 8);
            for _ in 0..u64::from_ne_bytes(n) {
                got.push(h.answer().expect("one answer per count"));
            }
        }
        std::fs::remove_file(&dir).unwrap();
        let covers = |es: &[Extent], a: u64, b: u64| {
            es.first().map(|e| e.offset) == Some(a)
                && es.last().map(Extent::end) == Some(b)
                && es.windows(2).all(|w| w[0].end() == w[1].offset)
        };
        assert!(covers(&got[0], 0, 8 << 20), "{:?}", got[0]);
        assert!(covers(&got[1], 4 << 20, 5 << 20), "{:?}", got[1]);
        assert!(got[1].iter().all(|e| !e.zero), "the written MiB is data");
        assert!(h.answer().is_none());
    }
}
