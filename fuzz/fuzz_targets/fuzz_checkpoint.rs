// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! libFuzzer target: nbdcpy::testing::fuzz_checkpoint (the --checkpoint FILE decoder) over arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nbdcpy::testing::fuzz_checkpoint(data);
});
