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
        Limiter::starting(rate, burst, request, Instant::now())
    }

    /// `new`, started (empty) at `start`: the clock is the caller's.
    fn starting(rate: u64, burst: u64, request: u64, start: Instant) -> Limiter {
        Limiter {
            rate: rate.max(1) as f64,
            burst: burst.max(request).max(1) as f64,
            state: Mutex::new(State {
                tokens: 0.0,
                last: start,
            }),
        }
    }

    /// Whether a read of up to `len` bytes may start now.  None: go (then
    /// charge it with [`take`](Self::take)); Some(d): ask again in `d`.
    pub fn wait_for(&self, len: u64) -> Option<Duration> {
        self.wait_for_at(len, Instant::now())
    }

    /// Charges a read of `len` bytes.
    pub fn take(&self, len: u64) {
        self.take_at(len, Instant::now())
    }

    /// `wait_for` at time `now`.
    fn wait_for_at(&self, len: u64, now: Instant) -> Option<Duration> {
        let s = self.refill(now);
        let need = (len as f64).min(self.burst);
        (s.tokens < need).then(|| Duration::from_secs_f64((need - s.tokens) / self.rate))
    }

    /// `take` at time `now`.
    fn take_at(&self, len: u64, now: Instant) {
        self.refill(now).tokens -= len as f64;
    }

    fn refill(&self, now: Instant) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
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

    // The tests run on their own clock: `t0` plus the time they say.

    #[test]
    fn bucket_limits_and_bursts() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let l = Limiter::starting(1 << 20, 512 << 10, 256 << 10, t0);
        // Starts empty: the first read waits a quarter second.
        let d = l.wait_for_at(256 << 10, t0).expect("empty: must wait");
        assert_eq!(d, Duration::from_millis(250));
        assert!(l.wait_for_at(256 << 10, at(249)).is_some(), "not yet");
        assert!(l.wait_for_at(256 << 10, at(250)).is_none());
        l.take_at(256 << 10, at(250));
        assert!(l.wait_for_at(256 << 10, at(250)).is_some());
        // Unused time accrues at most one burst (two requests).
        for _ in 0..2 {
            assert!(l.wait_for_at(256 << 10, at(5000)).is_none());
            l.take_at(256 << 10, at(5000));
        }
        assert!(
            l.wait_for_at(256 << 10, at(5000)).is_some(),
            "the burst is spent"
        );
    }

    #[test]
    fn steady_rate() {
        // 4 MiB/s with 64 KiB requests for 10 s: 40 MiB, never more
        // (asking again as soon as told).
        let t0 = Instant::now();
        let l = Limiter::starting(4 << 20, 128 << 10, 64 << 10, t0);
        let (mut now, mut bytes) = (t0, 0u64);
        while now < t0 + Duration::from_secs(10) {
            match l.wait_for_at(64 << 10, now) {
                None => {
                    l.take_at(64 << 10, now);
                    bytes += 64 << 10;
                }
                Some(d) => now += d,
            }
            let most = (now - t0).as_secs_f64() * (4 << 20) as f64;
            assert!(bytes as f64 <= most + 1.0, "{bytes} by {:?}", now - t0);
        }
        let most = 10.0 * (4 << 20) as f64;
        assert!(bytes as f64 >= most - (128 << 10) as f64, "{bytes}");
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
