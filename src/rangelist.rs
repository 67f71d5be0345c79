// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Range lists (`--ranges=FILE`, `nbdcpy_config_set_ranges`): areas read, checked, sorted and merged, then handed out in pieces; a leaf every layer may use.
//
// A range list is one more source of extents, like the dirty bitmap: the
// areas are parsed and checked (each by itself), sorted and merged (an
// O(n log n) sort, 16 bytes an area), checked against both ends when the
// job opens, and the work queue hands out pieces of the merged areas; the
// lanes' usual extent handling (SEEK_DATA, BLOCK_STATUS, zero detection)
// applies inside each piece.

use crate::error::{Error, Result};
use crate::size::parse_size;
use std::sync::{Arc, Mutex};

/// One area to copy: `length` bytes at `offset` (the same offset in the
/// source and the destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Area {
    pub offset: u64,
    pub length: u64,
}

impl Area {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// The areas of a job, sorted by offset, merged (no two overlap or
/// touch), each non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeList {
    areas: Vec<Area>,
    /// `before[i]`: the total length of the areas before area `i` (the
    /// area's offset in the concatenation of all of them).
    before: Vec<u64>,
    total: u64,
}

/// Checks one area by itself: not empty, and its end fits in 63 bits (the
/// largest offset a file or an NBD export can have).
pub fn check_area(offset: u64, length: u64) -> std::result::Result<(), String> {
    if length == 0 {
        return Err(format!("the area at offset {offset} has length 0"));
    }
    match offset.checked_add(length) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(format!(
            "offset {offset} + length {length} overflows (the end must be at most {})",
            i64::MAX
        )),
    }
}

impl RangeList {
    /// Sorts and merges `areas`, which must each pass [`check_area`].
    pub fn new(mut areas: Vec<Area>) -> Result<RangeList> {
        for a in &areas {
            check_area(a.offset, a.length).map_err(Error::invalid)?;
        }
        areas.sort_unstable();
        let mut merged: Vec<Area> = Vec::with_capacity(areas.len());
        for a in areas {
            match merged.last_mut() {
                Some(m) if a.offset <= m.end() => {
                    let end = m.end().max(a.end());
                    m.length = end - m.offset;
                }
                _ => merged.push(a),
            }
        }
        merged.shrink_to_fit();
        let mut before = Vec::with_capacity(merged.len());
        let mut total = 0u64;
        for a in &merged {
            before.push(total);
            total += a.length;
        }
        Ok(RangeList {
            areas: merged,
            before,
            total,
        })
    }

    /// Parses a range list's text: one `OFFSET LENGTH` a line (sizes as
    /// the other options take them), blank lines and `#` comments
    /// ignored.  `name` names the list in errors, with the line number.
    pub fn parse(text: &str, name: &str) -> Result<RangeList> {
        let mut areas = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad =
                |why: String| Error::invalid(format!("--ranges: {name}, line {}: {why}", i + 1));
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let (Some(o), Some(l), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(format!(
                    "expected \"OFFSET LENGTH\" (two sizes), not \"{content}\""
                )));
            };
            let num = |what: &str, s: &str| {
                if s.starts_with('-') {
                    return Err(bad(format!("the {what} \"{s}\" is negative")));
                }
                parse_size(s).map_err(|e| bad(format!("the {what} \"{s}\": {e}")))
            };
            let (offset, length) = (num("offset", o)?, num("length", l)?);
            check_area(offset, length).map_err(bad)?;
            areas.push(Area { offset, length });
        }
        RangeList::new(areas)
    }

    /// Reads and parses the list in file `path` ("-": standard input).
    pub fn read(path: &str) -> Result<RangeList> {
        use std::io::Read;
        let mut text = String::new();
        let r = if path == "-" {
            std::io::stdin().lock().read_to_string(&mut text)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
        };
        let name = if path == "-" { "standard input" } else { path };
        r.map_err(|e| Error::os(format!("--ranges: cannot read {name}"), e))?;
        RangeList::parse(&text, name)
    }

    pub fn areas(&self) -> &[Area] {
        &self.areas
    }

    /// The merged areas' total length: the work of the copy.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Where source offset `off` (inside an area) is in the concatenation
    /// of the areas (the block hash of --verify covers that); an offset
    /// between areas maps to the next area's start.
    pub fn packed_offset(&self, off: u64) -> u64 {
        let i = self.areas.partition_point(|a| a.end() <= off);
        match self.areas.get(i) {
            Some(a) => self.before[i] + off.saturating_sub(a.offset),
            None => self.total,
        }
    }

    /// The smallest [start, end) holding every area.
    pub fn bounds(&self) -> (u64, u64) {
        let start = self.areas.first().map_or(0, |a| a.offset);
        let end = self.areas.last().map_or(0, Area::end);
        (start, end)
    }

    /// The mean length of the areas (0 for an empty list).
    pub fn mean_area(&self) -> u64 {
        match self.areas.len() {
            0 => 0,
            n => self.total / n as u64,
        }
    }

    /// Checks the areas against both ends: every area inside the source
    /// and the destination (`dst_size`: None when it has no end, as
    /// null:), aligned to `align` but at the source's end.
    pub fn check_ends(
        &self,
        src_name: &str,
        dst_name: &str,
        src_size: u64,
        dst_size: Option<u64>,
        align: u64,
    ) -> Result<()> {
        let Some(last) = self.areas.last() else {
            return Ok(());
        };
        if last.end() > src_size {
            let a = self.areas[self.areas.partition_point(|a| a.end() <= src_size)];
            return Err(Error::invalid(format!(
                "--ranges: the area at offset {} length {} goes past the end of source \
                 {src_name} ({src_size} bytes)",
                a.offset, a.length
            )));
        }
        if let Some(d) = dst_size.filter(|&d| last.end() > d) {
            let a = self.areas[self.areas.partition_point(|a| a.end() <= d)];
            return Err(Error::new(
                libc::ENOSPC,
                format!(
                    "--ranges: the area at offset {} length {} goes past the end of \
                     destination {dst_name} ({d} bytes; a range list never extends it)",
                    a.offset, a.length
                ),
            ));
        }
        let al = align.max(1);
        if al > 1 {
            for a in &self.areas {
                if a.offset % al != 0 || (a.end() % al != 0 && a.end() != src_size) {
                    return Err(Error::invalid(format!(
                        "--ranges: the area at offset {} length {} is not aligned to {al} \
                         bytes, the block size the NBD server(s) or the block device of \
                         {src_name} -> {dst_name} require",
                        a.offset, a.length
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Hands out the areas in pieces of at most `piece` bytes, in order.
#[derive(Debug)]
pub struct Claims {
    list: Arc<RangeList>,
    /// (index of the area, next offset in it).
    at: Mutex<(usize, u64)>,
}

impl Claims {
    pub fn new(list: Arc<RangeList>) -> Claims {
        let first = list.areas.first().map_or(0, |a| a.offset);
        Claims {
            list,
            at: Mutex::new((0, first)),
        }
    }

    /// The next [start, end) piece, or None when all are handed out.
    pub fn claim(&self, piece: u64) -> Option<(u64, u64)> {
        let mut g = self.at.lock().unwrap_or_else(|p| p.into_inner());
        let (i, pos) = *g;
        let a = *self.list.areas.get(i)?;
        let end = a.end().min(pos.saturating_add(piece.max(1)));
        *g = if end == a.end() {
            (i + 1, self.list.areas.get(i + 1).map_or(0, |n| n.offset))
        } else {
            (i, end)
        };
        Some((pos, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(offset: u64, length: u64) -> Area {
        Area { offset, length }
    }

    #[test]
    fn sorted_and_merged() {
        let l = RangeList::new(vec![a(100, 10), a(0, 5), a(5, 5), a(105, 20), a(50, 1)]).unwrap();
        assert_eq!(l.areas(), &[a(0, 10), a(50, 1), a(100, 25)]);
        assert_eq!(l.total(), 36);
        assert_eq!(l.bounds(), (0, 125));
        assert_eq!(l.packed_offset(0), 0);
        assert_eq!(l.packed_offset(50), 10);
        assert_eq!(l.packed_offset(110), 21);
        // Contained areas.
        let l = RangeList::new(vec![a(0, 100), a(10, 5), a(99, 1)]).unwrap();
        assert_eq!(l.areas(), &[a(0, 100)]);
    }

    #[test]
    fn parse_lines() {
        let t = "# changed areas\n\n1M 64k\n  0\t512 # first sector\n1048576 1k\n4096 4096\n";
        let l = RangeList::parse(t, "f").unwrap();
        assert_eq!(l.areas(), &[a(0, 512), a(4096, 4096), a(1 << 20, 64 << 10)]);
        let err = |t: &str| RangeList::parse(t, "f").unwrap_err().msg;
        let m = err("0 1\n1 2 3\n");
        assert!(
            m.contains("f, line 2") && m.contains("OFFSET LENGTH"),
            "{m}"
        );
        assert!(err("0\n").contains("line 1"));
        let m = err("\n\n-512 10\n");
        assert!(m.contains("line 3") && m.contains("negative"), "{m}");
        assert!(err("0 -1\n").contains("negative"));
        let m = err("# x\n10 0\n");
        assert!(m.contains("line 2") && m.contains("length 0"), "{m}");
        assert!(err("1X 10\n").contains("suffix"));
        assert!(err("8E 8E\n").contains("overflows"));
        assert!(err("18446744073709551615 1\n").contains("overflows"));
        assert_eq!(RangeList::parse("# nothing\n", "f").unwrap().total(), 0);
    }

    #[test]
    fn checked_against_the_ends() {
        let l = RangeList::new(vec![a(0, 4096), a(8192, 4096)]).unwrap();
        assert!(l.check_ends("s", "d", 12288, Some(12288), 4096).is_ok());
        assert!(l.check_ends("s", "d", 12288, None, 1).is_ok());
        let m = l.check_ends("s", "d", 12000, None, 1).unwrap_err().msg;
        assert!(
            m.contains("offset 8192") && m.contains("source s (12000"),
            "{m}"
        );
        let e = l.check_ends("s", "d", 12288, Some(10000), 1).unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC);
        assert!(e.msg.contains("destination d (10000"), "{}", e.msg);
        let l = RangeList::new(vec![a(512, 4096)]).unwrap();
        let m = l.check_ends("s", "d", 1 << 20, None, 4096).unwrap_err().msg;
        assert!(m.contains("not aligned to 4096"), "{m}");
        // The source's unaligned end is fine.
        let l = RangeList::new(vec![a(4096, 100)]).unwrap();
        assert!(l.check_ends("s", "d", 4196, None, 4096).is_ok());
    }

    #[test]
    fn claims_cover_every_area_once() {
        let l = Arc::new(RangeList::new(vec![a(0, 10), a(20, 3), a(100, 25)]).unwrap());
        let c = Claims::new(l);
        let mut got = Vec::new();
        while let Some(p) = c.claim(8) {
            got.push(p);
        }
        assert_eq!(
            got,
            vec![
                (0, 8),
                (8, 10),
                (20, 23),
                (100, 108),
                (108, 116),
                (116, 124),
                (124, 125)
            ]
        );
        assert_eq!(c.claim(8), None);
        assert_eq!(Claims::new(Arc::default()).claim(8), None);
    }

    #[test]
    fn a_million_areas_load_quickly() {
        // Scattered 64 KiB areas in a pseudo-random order.
        let mut text = String::with_capacity(24 << 20);
        let mut seed = 29u64;
        for _ in 0..1_000_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let block = (seed >> 24) % (1 << 26);
            text.push_str(&format!("{} 64k\n", block << 16));
        }
        let t = std::time::Instant::now();
        let l = RangeList::parse(&text, "big").unwrap();
        let took = t.elapsed();
        assert!(l.areas().len() > 900_000 && l.total() % 65536 == 0);
        assert!(l.areas().windows(2).all(|w| w[0].end() < w[1].offset));
        // Generous (a loaded debug build): a per-byte map would take far longer.
        assert!(took.as_secs() < 20, "{took:?}");
    }
}
