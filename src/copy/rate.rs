// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The "rate" option: a token bucket on bytes read from the source,
//! shared by every lane and worker thread of a copy.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second accrue, up to `burst` bytes.
/// A read starts only when the bucket holds a whole request's worth and
/// takes its length.  The bucket starts empty, so by any time t after
/// the start at most rate * t bytes have been read, and reads come in
/// bursts of at most `burst` bytes (a few requests).
pub struct Limiter {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    last: Instant,
}

impl Limiter {
    /// `rate` bytes per second (> 0); `burst` is raised to at least one
    /// request of `request` bytes.
    pub fn new(rate: u64, burst: u64, request: u64) -> Limiter {
        Limiter {
            rate: rate.max(1) as f64,
            burst: burst.max(request).max(1) as f64,
            state: Mutex::new(State {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Whether a read of up to `len` bytes may start now.  None: go (then
    /// charge it with [`take`](Self::take)); Some(d): ask again in `d`.
    pub fn wait_for(&self, len: u64) -> Option<Duration> {
        let s = self.refill();
        let need = (len as f64).min(self.burst);
        (s.tokens < need).then(|| Duration::from_secs_f64((need - s.tokens) / self.rate))
    }

    /// Charges a read of `len` bytes.
    pub fn take(&self, len: u64) {
        self.refill().tokens -= len as f64;
    }

    fn refill(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let dt = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = now;
        s.tokens = (s.tokens + dt * self.rate).min(self.burst);
        s
    }
}

/// The request size for a limited copy whose size was not asked for: a
/// request is at most about an eighth of a second's worth (a power of
/// two, at least 64 KiB), so the flow is smooth at low rates.
pub fn request_size(want: u64, rate: u64, explicit: bool) -> u64 {
    if rate == 0 || explicit {
        return want;
    }
    let cap = (rate / 8).max(64 << 10);
    let cap = 1u64 << (63 - cap.leading_zeros());
    want.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_and_bursts() {
        let l = Limiter::new(1 << 20, 512 << 10, 256 << 10);
        // Starts empty: the first read waits a quarter second.
        let d = l.wait_for(256 << 10).expect("empty: must wait");
        assert!(d > Duration::from_millis(200) && d <= Duration::from_millis(260));
        std::thread::sleep(d + Duration::from_millis(5));
        assert!(l.wait_for(256 << 10).is_none());
        l.take(256 << 10);
        assert!(l.wait_for(256 << 10).is_some());
        // Unused time accrues at most one burst (two requests).
        std::thread::sleep(Duration::from_millis(800));
        for _ in 0..2 {
            assert!(l.wait_for(256 << 10).is_none());
            l.take(256 << 10);
        }
        assert!(l.wait_for(256 << 10).is_some(), "the burst is spent");
    }

    #[test]
    fn steady_rate() {
        // 4 MiB/s with 64 KiB requests for 0.5 s: about 2 MiB, never more.
        let l = Limiter::new(4 << 20, 128 << 10, 64 << 10);
        let t0 = Instant::now();
        let mut bytes = 0u64;
        while t0.elapsed() < Duration::from_millis(500) {
            match l.wait_for(64 << 10) {
                None => {
                    l.take(64 << 10);
                    bytes += 64 << 10;
                }
                Some(d) => std::thread::sleep(d.min(Duration::from_millis(5))),
            }
        }
        let most = t0.elapsed().as_secs_f64() * (4 << 20) as f64;
        let got = bytes as f64;
        assert!(
            got <= most && got >= most * 0.9 - (64 << 10) as f64,
            "{got} vs {most}"
        );
    }

    #[test]
    fn smaller_requests_at_low_rates() {
        assert_eq!(request_size(256 << 10, 0, false), 256 << 10);
        assert_eq!(request_size(1 << 20, 1 << 20, false), 128 << 10);
        assert_eq!(request_size(1 << 20, 1 << 20, true), 1 << 20);
        assert_eq!(request_size(256 << 10, 100 << 10, false), 64 << 10);
        assert_eq!(request_size(256 << 10, 1 << 30, false), 256 << 10);
    }
}
