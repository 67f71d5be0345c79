// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Zero detection: which `sparse`-sized blocks of data read as zeroes.

/// Bytes [start, end) of a buffer: data, or whole zero blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub end: usize,
    pub zero: bool,
}

impl Run {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// True when every byte is zero; stops at the first non-zero word.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Splits `data` (at absolute offset `off`) into runs of data and of
/// zero blocks of `sparse` bytes aligned to absolute offsets.
pub fn zero_runs(data: &[u8], off: u64, sparse: u64, runs: &mut Vec<Run>) {
    runs.clear();
    let len = data.len();
    let mut i = 0usize;
    while i < len {
        let blk_end = (((off + i as u64) / sparse + 1) * sparse - off) as usize;
        let end = blk_end.min(len);
        let zero = is_zero(&data[i..end]);
        match runs.last_mut() {
            Some(r) if r.zero == zero => r.end = end,
            _ => runs.push(Run {
                start: i,
                end,
                zero,
            }),
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scan() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4096]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[63] = 1;
        assert!(!is_zero(&b));
    }

    fn run(start: usize, end: usize, zero: bool) -> Run {
        Run { start, end, zero }
    }

    #[test]
    fn runs_are_aligned_to_absolute_offsets() {
        let mut d = vec![1u8; 16384];
        d[1024..9216].fill(0); // zero from 1024 to 9216
        let mut runs = Vec::new();
        // data starts at absolute offset 3072: blocks end at 4096-3072=1024, 5120, 9216...
        zero_runs(&d, 3072, 4096, &mut runs);
        assert_eq!(
            runs,
            vec![
                run(0, 1024, false),
                run(1024, 9216, true),
                run(9216, 16384, false)
            ]
        );
        zero_runs(&[0u8; 100], 0, 4096, &mut runs);
        assert_eq!(runs, vec![run(0, 100, true)]);
    }
}
