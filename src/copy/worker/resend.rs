// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Requests the server answered with an error: sending them again after EIO (`--retries`) or failing.
//
// The connection reports an error reply as a `FailedRequest`; the policy
// here decides.  EIO (storage behind a proxy failing one request now and
// then) is worth another try: the request goes back to its connection
// after the reconnect backoff, up to `retries` times.  Everything else
// (ENOSPC, EPERM, EROFS, EINVAL, EOVERFLOW, ENOTSUP, EFBIG, ...) fails at
// once, and so does a request that failed `retries` + 1 times.  A failed
// BLOCK_STATUS is not fatal either way: its range is then read.  The wait
// is a deadline the event loop's wait is bounded by, so the worker's
// other lanes (and this lane's other requests) go on meanwhile.

use super::core::Worker;
use super::lane::{DstIo, Lane, SrcIo};
use crate::copy::nbdconn::{backoff, ConnEvent, FailedRequest};
use crate::copy::stats::Shared;
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// What to do with a failed request.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Send it again after this wait (the `n`th resend).
    Resend { n: u32, after: Duration },
    /// Give up: the error stands.
    Fail,
}

/// The policy: `errno` replied to a request that had `failures` error
/// replies before, with `retries` allowed and `delay` the first wait.
fn decide(errno: i32, failures: u32, retries: u32, delay: Duration) -> Decision {
    if errno != libc::EIO || failures >= retries {
        return Decision::Fail;
    }
    let n = failures + 1;
    Decision::Resend {
        n,
        after: backoff(delay, n),
    }
}

/// A request waiting to be sent again.
pub(super) struct Parked {
    due: Instant,
    lane: usize,
    /// On the lane's source connection (else its destination's).
    src: bool,
    req: FailedRequest,
}

impl Worker<'_> {
    /// `f` failed on lane `lane_id`'s source (`is_src`) or destination
    /// connection: parks it to be sent again, or fails with its error
    /// (a BLOCK_STATUS then reads its range).
    pub(super) fn request_failed(
        &mut self,
        lane_id: usize,
        is_src: bool,
        lane: &mut Lane,
        f: FailedRequest,
    ) -> Result<()> {
        let p = &lane.params;
        let mut d = decide(f.errno, f.pending.failures, p.retries, p.retry_delay);
        // A BLOCK_STATUS that answered part of its range (or one of an
        // incremental copy's two contexts) goes on from there as data.
        if f.is_status()
            && lane
                .status
                .as_ref()
                .is_some_and(|st| st.dirty.is_some() || st.aligner.pos() != st.start)
        {
            d = Decision::Fail;
        }
        match d {
            Decision::Fail if f.is_status() => {
                let ev = ConnEvent::StatusDone { ok: false };
                if is_src {
                    self.src_event(lane_id, lane, ev)
                } else {
                    self.dst_event(lane, ev)
                }
            }
            Decision::Fail if f.pending.failures > 0 => {
                let e = f.error;
                let n = f.pending.failures + 1;
                Err(Error {
                    msg: format!("{} (failed {n} times)", e.msg),
                    ..e
                })
            }
            Decision::Fail => Err(f.error),
            Decision::Resend { n, after } => {
                Shared::add(&self.shared.retried_requests, 1);
                self.shared.note(format!(
                    "{}; sending it again in {:.3} s (retry {n} of {})",
                    f.error.msg,
                    after.as_secs_f64(),
                    lane.params.retries
                ));
                self.parked.push(Parked {
                    due: Instant::now() + after,
                    lane: lane_id,
                    src: is_src,
                    req: f,
                });
                Ok(())
            }
        }
    }

    /// Sends again the parked requests whose wait is over; bounds the
    /// next engine wait by the earliest one still waiting.  Waiting to
    /// send again is not a stall.
    pub(super) fn resend_due(&mut self, lanes: &mut [Lane]) -> Result<()> {
        if self.parked.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.last_progress = now;
        let mut i = 0;
        while i < self.parked.len() {
            if self.parked[i].due > now {
                i += 1;
                continue;
            }
            let Parked { lane, src, req, .. } = self.parked.swap_remove(i);
            let lane = lanes
                .get_mut(lane)
                .ok_or_else(|| Error::new(libc::EIO, "internal error: resend for no lane"))?;
            match (src, &mut lane.src, &mut lane.dst) {
                (true, SrcIo::Nbd(c), _) | (false, _, DstIo::Nbd(c)) => c.resend(req)?,
                _ => {
                    return Err(Error::new(
                        libc::EIO,
                        "internal error: resend to no connection",
                    ))
                }
            }
        }
        if let Some(due) = self.parked.iter().map(|p| p.due).min() {
            let d = due.saturating_duration_since(now);
            self.rate_wait = Some(self.rate_wait.map_or(d, |w| w.min(d)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eio_is_sent_again_and_only_retries_times() {
        let s = Duration::from_secs;
        let resend = |n, after| Decision::Resend { n, after };
        assert_eq!(decide(libc::EIO, 0, 3, s(1)), resend(1, s(1)));
        assert_eq!(decide(libc::EIO, 1, 3, s(1)), resend(2, s(2)));
        assert_eq!(decide(libc::EIO, 2, 3, s(1)), resend(3, s(4)));
        assert_eq!(
            decide(libc::EIO, 3, 3, s(1)),
            Decision::Fail,
            "failed 4 times"
        );
        assert_eq!(
            decide(libc::EIO, 0, 0, s(1)),
            Decision::Fail,
            "no --retries"
        );
        for errno in [
            libc::ENOSPC,
            libc::EPERM,
            libc::EROFS,
            libc::EINVAL,
            libc::EOVERFLOW,
            libc::ENOTSUP,
            libc::EFBIG,
        ] {
            assert_eq!(decide(errno, 0, 8, s(1)), Decision::Fail, "{errno}");
        }
    }
}
