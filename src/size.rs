// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Sizes as people write them (`256k`, `1M`, `4GiB`): a leaf every layer may use.

/// Parses a size the way nbdcopy does: a decimal number with an optional
/// suffix b/k/M/G/T/P/E (powers of 1024; case-insensitive, optional
/// trailing "B", "iB").
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err("not a size".into());
    }
    let n: u64 = t[..digits].parse().map_err(|_| "number too large")?;
    let suffix = t[digits..].trim_start();
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "s" => 9,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err(format!("unknown size suffix \"{suffix}\"")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".to_string())
}
