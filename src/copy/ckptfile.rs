// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The checkpoint file's format (`--checkpoint=FILE`): encoding and decoding, no I/O.
//
// A checkpoint is a small text file, written whole (new file, fsync,
// rename) by copy/checkpoint.rs:
//
//     nbdcpy-checkpoint 1
//     id source-size 67108864
//     id source nbd+unix:///?socket=/tmp/s      (one line per identity key)
//     sample OFFSET LENGTH SHA256HEX            (source blocks already copied)
//     done OFFSET LENGTH                        (sorted, disjoint source ranges)
//     checksum SHA256HEX                        (of every byte before this line)
//
// Values are escaped (`\\`, `\n`) so that any endpoint name fits on one
// line.  Decoding checks the magic, the version, the checksum and that
// the done ranges are sorted, disjoint and inside 63 bits.

/// The first word of every checkpoint file.
pub const MAGIC: &str = "nbdcpy-checkpoint";
/// The format version this nbdcpy writes and reads.
pub const VERSION: u32 = 1;

/// A digest of `len` bytes of the source at `offset`, copied before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The copy it belongs to: (key, value), in a fixed order.
    pub identity: Vec<(String, String)>,
    pub samples: Vec<Sample>,
    /// Source ranges (offset, length) the destination holds durably.
    pub done: Vec<(u64, u64)>,
}

/// Why bytes are not a usable checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a checkpoint file at all.
    NotCheckpoint,
    /// A checkpoint of a format version this nbdcpy does not read.
    Version(String),
    /// A checkpoint that is damaged (the reason).
    Damaged(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotCheckpoint => write!(f, "it is not an nbdcpy checkpoint"),
            DecodeError::Version(v) => write!(
                f,
                "it has format version {v}; this nbdcpy reads version {VERSION}"
            ),
            DecodeError::Damaged(why) => write!(f, "it is damaged ({why})"),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    // Lowercase only: the text is checksummed as written.
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// The file's bytes.
pub fn encode(c: &Checkpoint) -> Vec<u8> {
    let mut s = format!("{MAGIC} {VERSION}\n");
    for (k, v) in &c.identity {
        s += &format!("id {} {}\n", escape(k).replace(' ', "_"), escape(v));
    }
    for x in &c.samples {
        s += &format!("sample {} {} {}\n", x.offset, x.len, hex(&x.sha256));
    }
    for (o, l) in &c.done {
        s += &format!("done {o} {l}\n");
    }
    let sum = hex(&sha256(s.as_bytes()));
    s += &format!("checksum {sum}\n");
    s.into_bytes()
}

/// Reads a checkpoint file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    let damaged = |why: &str| DecodeError::Damaged(why.to_string());
    let head = format!("{MAGIC} ");
    if !bytes.starts_with(head.as_bytes()) {
        return Err(DecodeError::NotCheckpoint);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| damaged("not UTF-8"))?;
    let first = text.lines().next().unwrap_or("");
    let version = &first[head.len()..];
    if version != VERSION.to_string() {
        return Err(DecodeError::Version(version.chars().take(20).collect()));
    }
    // The checksum line is the last one, and covers all before it.
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or_else(|| damaged("no checksum"))?;
    let (body, tail) = text.split_at(body_end);
    let sum = tail
        .strip_prefix("checksum ")
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(unhex32)
        .ok_or_else(|| damaged("no checksum line at its end"))?;
    if sum != sha256(body.as_bytes()) {
        return Err(damaged("checksum mismatch"));
    }
    let mut c = Checkpoint::default();
    let num = |s: Option<&str>| s.and_then(|v| v.parse::<u64>().ok());
    for (i, line) in body.lines().enumerate().skip(1) {
        let bad = || DecodeError::Damaged(format!("line {}", i + 1));
        let mut w = line.splitn(2, ' ');
        let (kind, rest) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
        match kind {
            "id" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                c.identity
                    .push((unescape(k).ok_or_else(bad)?, unescape(v).ok_or_else(bad)?));
            }
            "sample" => {
                let mut w = rest.split(' ');
                let (o, l) = (num(w.next()), num(w.next()));
                let d = w.next().and_then(unhex32);
                match (o, l, d, w.next()) {
                    (Some(offset), Some(len), Some(sha256), None) => c.samples.push(Sample {
                        offset,
                        len,
                        sha256,
                    }),
                    _ => return Err(bad()),
                }
            }
            "done" => {
                let mut w = rest.split(' ');
                let (Some(o), Some(l), None) = (num(w.next()), num(w.next()), w.next()) else {
                    return Err(bad());
                };
                let prev_end = c.done.last().map_or(0, |(po, pl)| po + pl);
                let fits = o.checked_add(l).is_some_and(|e| e <= i64::MAX as u64);
                if l == 0 || !fits || (!c.done.is_empty() && o < prev_end) {
                    return Err(bad());
                }
                c.done.push((o, l));
            }
            _ => return Err(bad()),
        }
    }
    Ok(c)
}

/// A size as people read it: "64 MiB" when exact, else bytes.
pub fn human_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// What differs between a checkpoint's identity and the copy's, as
/// "source size 64 MiB, now 32 MiB" (keys ending in "size" are sizes);
/// empty when they are the same copy.
pub fn differences(was: &[(String, String)], now: &[(String, String)]) -> Vec<String> {
    let shown = |k: &str, v: Option<&String>| match v {
        None => "(none)".to_string(),
        Some(v) if k.ends_with("size") => v.parse::<u64>().map_or(v.clone(), human_size),
        Some(v) => v.clone(),
    };
    let mut keys: Vec<&String> = now.iter().map(|(k, _)| k).collect();
    for (k, _) in was {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let get =
        |l: &'_ [(String, String)], k: &str| l.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (get(was, k), get(now, k));
            (a != b).then(|| {
                format!(
                    "{} {}, now {}",
                    k.replace('-', " "),
                    shown(k, a.as_ref()),
                    shown(k, b.as_ref())
                )
            })
        })
        .collect()
}

/// Fuzz entry point: decoding never panics, and what decodes encodes
/// to bytes that decode to the same checkpoint.
pub fn fuzz(data: &[u8]) {
    if let Ok(c) = decode(data) {
        assert_eq!(decode(&encode(&c)), Ok(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            identity: vec![
                ("source-size".into(), "67108864".into()),
                ("source".into(), "[ nbdkit a\\b\nc ]".into()),
            ],
            samples: vec![Sample {
                offset: 4096,
                len: 4096,
                sha256: sha256(b"x"),
            }],
            done: vec![(0, 4096), (8192, 1 << 20)],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let b = encode(&c);
        assert_eq!(decode(&b), Ok(c));
        assert_eq!(
            decode(&encode(&Checkpoint::default())),
            Ok(Checkpoint::default())
        );
    }

    #[test]
    fn damage_and_strangers_are_refused() {
        let b = encode(&sample());
        assert_eq!(decode(b"hello\n"), Err(DecodeError::NotCheckpoint));
        assert_eq!(decode(b""), Err(DecodeError::NotCheckpoint));
        assert!(matches!(
            decode(b"nbdcpy-checkpoint 9\nchecksum 00\n"),
            Err(DecodeError::Version(v)) if v == "9"
        ));
        // Every single flipped byte past the magic, and every truncation.
        for i in MAGIC.len() + 1..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x20;
            assert!(decode(&d).is_err(), "flip at {i}");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "cut at {n}");
        }
        // Overlapping ranges with a right checksum are refused too.
        let mut c = sample();
        c.done = vec![(0, 10), (5, 10)];
        assert!(matches!(decode(&encode(&c)), Err(DecodeError::Damaged(_))));
        c.done = vec![(0, 0)];
        assert!(decode(&encode(&c)).is_err());
    }

    #[test]
    fn differences_name_the_key() {
        let was = vec![("source-size".to_string(), (64u64 << 20).to_string())];
        let now = vec![("source-size".to_string(), (32u64 << 20).to_string())];
        assert_eq!(differences(&was, &now), ["source size 64 MiB, now 32 MiB"]);
        assert!(differences(&was, &was).is_empty());
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(human_size(3 << 30), "3 GiB");
        let now = vec![("offset".to_string(), "0".to_string())];
        assert_eq!(differences(&[], &now), ["offset (none), now 0"]);
    }
}
