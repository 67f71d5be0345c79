// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Partial copies: the source range (`offset`, `length`) and where it goes
//! in the destination (`destination-offset`), checked against both ends.

use super::plan::EndFacts;
use crate::config::Config;
use crate::error::{Error, Result, Side};

/// What the copy plan is decided from, given a window: the source's size
/// is the range's length; a range moved to other offsets takes the
/// receive path (the splice path writes at the source's offsets); an
/// incremental copy claims ranges as large as block status covers, also
/// with --no-extents (the bitmap is asked for anyway).
pub fn plan_inputs(mut src: EndFacts, w: &Window, cfg: &Config) -> (EndFacts, Config) {
    let mut cfg = cfg.clone();
    if src.size.is_some() {
        src.size = Some(w.len());
    }
    if w.shift() != 0 {
        cfg.splice = Some(false);
    }
    if cfg.dirty_bitmap.is_some() {
        cfg.no_extents = false;
    }
    (src, cfg)
}

/// The part of the source a job copies, and where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First source byte copied.
    pub start: u64,
    /// One past the last source byte copied (u64::MAX: a stream's end).
    pub end: u64,
    /// Where `start` goes in the destination.
    pub dst_start: u64,
    /// A range was asked for: the destination outside it is left alone
    /// (no truncation, no up-front zeroing).
    pub partial: bool,
}

/// What `Window::plan` needs to know about the two ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ends<'a> {
    pub src_name: &'a str,
    pub dst_name: &'a str,
    /// The source's size (None: a stream).
    pub src_size: Option<u64>,
    /// The destination's size when it cannot grow (NBD, block device).
    pub dst_fixed_size: Option<u64>,
    /// The destination is a stream (a pipe, stdout): written in order.
    pub dst_stream: bool,
    /// Requests keep this granularity (a power of two, 1: none).
    pub align: u64,
}

impl Window {
    /// The whole source, to the same offsets.
    pub fn whole(src_size: Option<u64>) -> Window {
        Window {
            start: 0,
            end: src_size.unwrap_or(u64::MAX),
            dst_start: 0,
            partial: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Added (wrapping) to a source offset gives its destination offset.
    pub fn shift(&self) -> u64 {
        self.dst_start.wrapping_sub(self.start)
    }

    /// The window the options ask for, or an error naming the option,
    /// the endpoint and the sizes.
    pub fn plan(cfg: &Config, e: &Ends) -> Result<Window> {
        let partial = cfg.offset != 0 || cfg.length.is_some() || cfg.destination_offset.is_some();
        if !partial {
            let w = Window::whole(e.src_size);
            if let (Some(s), Some(d)) = (e.src_size, e.dst_fixed_size) {
                if d < s {
                    return Err(Error::new(
                        libc::ENOSPC,
                        format!(
                            "destination {} ({d} bytes) is smaller than source {} ({s} bytes)",
                            e.dst_name, e.src_name
                        ),
                    )
                    .on(Side::Destination));
                }
            }
            return Ok(w);
        }
        let Some(size) = e.src_size else {
            return Err(Error::invalid(format!(
                "source {} is a stream: --offset, --length and --destination-offset need \
                 a source that can seek",
                e.src_name
            ))
            .on(Side::Source));
        };
        let start = cfg.offset;
        if start > size {
            return Err(Error::invalid(format!(
                "--offset={start} is beyond the end of source {} ({size} bytes)",
                e.src_name
            )));
        }
        let end = match cfg.length {
            None => size,
            Some(len) => match start.checked_add(len) {
                Some(end) if end <= size => end,
                _ => {
                    return Err(Error::invalid(format!(
                        "--offset={start} --length={len} goes beyond the end of source {} \
                         ({size} bytes)",
                        e.src_name
                    )))
                }
            },
        };
        let dst_start = cfg.destination_offset.unwrap_or(start);
        if e.dst_stream && dst_start != 0 {
            return Err(Error::invalid(format!(
                "destination {} is a stream, written from its start: --destination-offset \
                 must be 0 (it defaults to --offset={start})",
                e.dst_name
            ))
            .on(Side::Destination));
        }
        let len = end - start;
        let Some(dst_end) = dst_start.checked_add(len).filter(|&v| v <= i64::MAX as u64) else {
            return Err(Error::invalid(format!(
                "--destination-offset={dst_start} + {len} bytes is too large"
            )));
        };
        if let Some(d) = e.dst_fixed_size {
            if dst_end > d {
                return Err(Error::new(
                    libc::ENOSPC,
                    format!(
                        "destination {} ({d} bytes) cannot hold {len} bytes at \
                         --destination-offset={dst_start} (they would end at {dst_end})",
                        e.dst_name
                    ),
                )
                .on(Side::Destination));
            }
        }
        let a = e.align.max(1);
        for (what, v, ok_unaligned) in [
            ("--offset", start, false),
            ("--destination-offset", dst_start, false),
            ("the range's end (--offset + --length)", end, end == size),
        ] {
            if v % a != 0 && !ok_unaligned {
                return Err(Error::invalid(format!(
                    "{what} {v} is not a multiple of {a} bytes, the block size the NBD \
                     server(s) or the block device of {} -> {} require",
                    e.src_name, e.dst_name
                )));
            }
        }
        Ok(Window {
            start,
            end,
            dst_start,
            partial: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(o: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (k, v) in o {
            c.set(k, Some(v)).unwrap();
        }
        c
    }

    fn ends(src: Option<u64>, dst: Option<u64>) -> Ends<'static> {
        Ends {
            src_name: "src",
            dst_name: "dst",
            src_size: src,
            dst_fixed_size: dst,
            dst_stream: false,
            align: 1,
        }
    }

    fn err(c: &Config, e: &Ends) -> String {
        Window::plan(c, e).unwrap_err().msg
    }

    #[test]
    fn whole_copy_is_unchanged() {
        let w = Window::plan(&Config::default(), &ends(Some(100), None)).unwrap();
        assert_eq!(w, Window::whole(Some(100)));
        assert!(!w.partial && w.shift() == 0 && w.len() == 100);
        assert!(err(&Config::default(), &ends(Some(100), Some(99))).contains("smaller"));
        // A stream source, whole.
        let w = Window::plan(&Config::default(), &ends(None, None)).unwrap();
        assert_eq!(w.end, u64::MAX);
    }

    #[test]
    fn offset_length_and_destination_offset() {
        let c = cfg(&[("offset", "1M"), ("length", "64k")]);
        let w = Window::plan(&c, &ends(Some(4 << 20), Some(4 << 20))).unwrap();
        assert_eq!(
            (w.start, w.end, w.dst_start),
            (1 << 20, (1 << 20) + 65536, 1 << 20)
        );
        assert!(w.partial && w.shift() == 0);
        let c = cfg(&[("offset", "1M"), ("destination-offset", "0")]);
        let w = Window::plan(&c, &ends(Some(4 << 20), None)).unwrap();
        assert_eq!((w.start, w.end, w.dst_start), (1 << 20, 4 << 20, 0));
        assert_eq!((1u64 << 20).wrapping_add(w.shift()), 0);
        let c = cfg(&[("destination-offset", "3M")]);
        let w = Window::plan(&c, &ends(Some(1 << 20), Some(4 << 20))).unwrap();
        assert_eq!((w.start, w.end, w.dst_start), (0, 1 << 20, 3 << 20));
        assert_eq!(100u64.wrapping_add(w.shift()), (3 << 20) + 100);
        // Up to the end exactly, and an empty range.
        let c = cfg(&[("offset", "4M"), ("length", "0")]);
        assert!(Window::plan(&c, &ends(Some(4 << 20), None))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn out_of_range_is_refused_with_the_sizes() {
        let c = cfg(&[("offset", "5M")]);
        let m = err(&c, &ends(Some(4 << 20), None));
        assert!(
            m.contains("--offset=5242880") && m.contains("4194304 bytes"),
            "{m}"
        );
        let c = cfg(&[("offset", "3M"), ("length", "2M")]);
        let m = err(&c, &ends(Some(4 << 20), None));
        assert!(
            m.contains("--length=2097152") && m.contains("source src"),
            "{m}"
        );
        let c = cfg(&[("offset", "1"), ("length", "18446744073709551615")]);
        assert!(err(&c, &ends(Some(4 << 20), None)).contains("beyond the end"));
        let c = cfg(&[("destination-offset", "3M")]);
        let e = Window::plan(&c, &ends(Some(2 << 20), Some(4 << 20))).unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC);
        assert!(
            e.msg.contains("destination dst (4194304 bytes)"),
            "{}",
            e.msg
        );
        let c = cfg(&[("destination-offset", "9E")]);
        assert!(err(&c, &ends(Some(1 << 20), None)).contains("too large"));
    }

    #[test]
    fn plan_inputs_follow_the_window() {
        use crate::copy::plan::{EndFacts, EndKind};
        use crate::endpoint::file::FileKind;
        let src = EndFacts::local(EndKind::File(FileKind::Regular), Some(100 << 20), 1);
        let c = cfg(&[("offset", "1M"), ("length", "2M")]);
        let w = Window::plan(&c, &ends(Some(100 << 20), None)).unwrap();
        let (s, pc) = plan_inputs(src, &w, &c);
        assert_eq!(s.size, Some(2 << 20));
        assert_eq!(pc.splice, None, "same offsets: the data path is the plan's");
        let c = cfg(&[("destination-offset", "1M")]);
        let w = Window::plan(&c, &ends(Some(100 << 20), None)).unwrap();
        assert_eq!(plan_inputs(src, &w, &c).1.splice, Some(false));
        let c = cfg(&[("dirty-bitmap", "b"), ("no-extents", "1")]);
        assert!(!plan_inputs(src, &Window::whole(Some(1)), &c).1.no_extents);
    }

    #[test]
    fn streams_and_alignment() {
        let c = cfg(&[("length", "1M")]);
        assert!(err(&c, &ends(None, None)).contains("is a stream"));
        let mut e = ends(Some(4 << 20), None);
        e.dst_stream = true;
        let c = cfg(&[("offset", "1M")]);
        assert!(err(&c, &e).contains("--destination-offset must be 0"));
        let c = cfg(&[("offset", "1M"), ("destination-offset", "0")]);
        assert_eq!(Window::plan(&c, &e).unwrap().dst_start, 0);
        let mut e = ends(Some((4 << 20) + 100), None);
        e.align = 4096;
        let c = cfg(&[("offset", "512")]);
        assert!(err(&c, &e).contains("--offset 512 is not a multiple of 4096"));
        let c = cfg(&[("destination-offset", "512")]);
        assert!(err(&c, &e).contains("--destination-offset 512"));
        let c = cfg(&[("length", "1000")]);
        assert!(err(&c, &e).contains("range's end"));
        // The image's unaligned end is fine.
        let c = cfg(&[("offset", "4M")]);
        assert_eq!(Window::plan(&c, &e).unwrap().len(), 100);
    }
}
