// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Local endpoints: regular files, block devices and streams.
//
// Local endpoints: regular files, block devices, and streams (stdin,
// stdout, pipes, character devices).

use super::{Extent, Side};
use crate::error::{Error, Result};
use crate::sys;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Block,
    /// Not seekable (pipe, socket, tty, character device): read or written
    /// strictly in order.
    Stream,
}

/// What makes two opened files the same file: a regular file's device
/// and inode, or a block device's device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileId {
    Inode { dev: u64, ino: u64 },
    Device { rdev: u64 },
}

pub struct LocalFile {
    pub fd: OwnedFd,
    pub kind: FileKind,
    /// The underlying regular file or block device (also for `-` when
    /// the shell redirected it to one), to refuse copying a file onto
    /// itself.
    pub id: Option<FileId>,
    /// Size for regular files and block devices; None for streams.
    pub size: Option<u64>,
    /// A block device's logical sector size (zeroing by fallocate needs
    /// it); 1 for everything else.
    pub sector: u64,
    /// The name for messages.
    pub name: String,
}

/// Walks the data and hole extents of [a, b) of a file, in order, by
/// SEEK_DATA/SEEK_HOLE, while `out` returns true.  Anything the kernel
/// cannot answer counts as data.  The file position is moved (every read
/// and write of the copy has an explicit offset).
pub fn walk_extents(fd: RawFd, a: u64, b: u64, out: &mut dyn FnMut(Extent) -> bool) {
    ExtentWalker::default().walk(fd, a, b, out)
}

/// `walk_extents` for consecutive ranges of one file: remembers the last
/// data extent the kernel reported, so ranges inside one long data extent
/// cost no more calls (on tmpfs, SEEK_HOLE walks the page cache page by
/// page up to the next hole: a few ms per call on a 2 GiB file).  Holes
/// punched since read as zeroes, so a stale answer never copies wrong data.
#[derive(Default)]
pub struct ExtentWalker {
    data: Option<(u64, u64)>,
}

impl ExtentWalker {
    pub fn walk(&mut self, fd: RawFd, a: u64, b: u64, out: &mut dyn FnMut(Extent) -> bool) {
        let mut push =
            |offset: u64, len: u64, zero: bool| len == 0 || out(Extent { offset, len, zero });
        let mut pos = a;
        while pos < b {
            if let Some((ds, de)) = self.data {
                if ds <= pos && pos < de {
                    let end = de.min(b);
                    if !push(pos, end - pos, false) {
                        return;
                    }
                    pos = end;
                    continue;
                }
            }
            let data = match sys::lseek(fd, pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d.clamp(pos, b),
                Ok(None) => {
                    push(pos, b - pos, true); // ENXIO: a hole up to the end
                    return;
                }
                Err(_) => {
                    push(pos, b - pos, false);
                    return;
                }
            };
            if !push(pos, data - pos, true) || data >= b {
                return;
            }
            let hole = match sys::lseek(fd, data, libc::SEEK_HOLE) {
                Ok(Some(h)) if h > data => {
                    self.data = Some((data, h));
                    h.min(b)
                }
                _ => b,
            };
            if !push(data, hole - data, false) {
                return;
            }
            pos = hole;
        }
    }
}

impl LocalFile {
    pub fn is_stream(&self) -> bool {
        self.kind == FileKind::Stream
    }

    /// Estimates which fraction of the file's start (up to 4 GiB) is
    /// holes, from SEEK_DATA/SEEK_HOLE (bounded: at most 4096 extents are
    /// looked at).  None for devices and streams.
    pub fn sample_zero_fraction(&self) -> Option<f64> {
        let limit = match (self.kind, self.size) {
            (FileKind::Regular, Some(s)) if s > 0 => s.min(4 << 30),
            _ => return None,
        };
        let (mut seen, mut holes, mut extents) = (0u64, 0u64, 0);
        walk_extents(self.fd.as_raw_fd(), 0, limit, &mut |e| {
            if e.zero {
                holes += e.len;
            } else {
                extents += 1;
            }
            seen = e.end();
            extents < 4096
        });
        (seen > 0).then(|| holes as f64 / seen as f64)
    }

    /// Opens a path as source (read-only) or destination (write-only,
    /// created if missing; regular files are truncated by `prepare_dest`).
    pub fn open(path: &str, side: Side) -> Result<LocalFile> {
        let mut oo = OpenOptions::new();
        match side {
            Side::Source => oo.read(true),
            Side::Destination => oo.write(true).create(true).mode(0o644),
        };
        oo.custom_flags(libc::O_CLOEXEC);
        let file = oo.open(path).map_err(|e| Error::os("open", e))?;
        Self::from_file(file, path.to_string())
    }

    /// stdin for a source, stdout for a destination (duplicated, so closing
    /// the endpoint does not close the process's stdio).
    pub fn stdio(side: Side) -> Result<LocalFile> {
        let fd: RawFd = match side {
            Side::Source => 0,
            Side::Destination => 1,
        };
        let dup = sys::dup_cloexec(fd).map_err(|e| {
            Error::os(
                if side == Side::Source {
                    "stdin"
                } else {
                    "stdout"
                },
                e,
            )
        })?;
        let file = File::from(dup);
        let mut f = Self::from_file(file, "-".into())?;
        // "-" is always streamed in order, like nbdcopy, even when the shell
        // redirected it to a regular file (which may be in append mode).
        f.kind = FileKind::Stream;
        f.size = None;
        // A bigger pipe means fewer, larger reads and writes (best effort).
        // It fails harmlessly on anything that is not a pipe.
        let _ = sys::fcntl_int(f.fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        Ok(f)
    }

    fn from_file(file: File, name: String) -> Result<LocalFile> {
        let md = file.metadata().map_err(|e| Error::os("stat", e))?;
        let ft = md.file_type();
        let id = if ft.is_file() {
            Some(FileId::Inode {
                dev: md.dev(),
                ino: md.ino(),
            })
        } else if ft.is_block_device() {
            Some(FileId::Device { rdev: md.rdev() })
        } else {
            None
        };
        let mut sector = 1;
        let (kind, size) = if ft.is_file() {
            (FileKind::Regular, Some(md.len()))
        } else if ft.is_block_device() {
            sector = logical_sector_size(file.as_raw_fd());
            (FileKind::Block, Some(block_device_size(file.as_raw_fd())?))
        } else if ft.is_dir() {
            return Err(Error::new(libc::EISDIR, "is a directory"));
        } else {
            (FileKind::Stream, None)
        };
        Ok(LocalFile {
            fd: file.into(),
            kind,
            id,
            size,
            sector,
            name,
        })
    }

    /// Makes a regular-file destination read as zeroes before the copy
    /// (as nbdcopy does: truncate to 0, then extend to the source's size).
    /// Returns whether the destination now reads as zeroes *and* has the
    /// source's size, so that zero ranges may be skipped.  For a stream
    /// source (size None) the file is left empty and `finish_dest` gives
    /// it the stream's length at the end: the zero blocks skipped at the
    /// end of a stream then exist too.
    pub fn prepare_dest(&mut self, size: Option<u64>) -> Result<bool> {
        if self.kind != FileKind::Regular {
            return Ok(false);
        }
        self.set_len(0)?;
        self.size = Some(0);
        if let Some(size) = size {
            self.set_len(size)?;
            self.size = Some(size);
        }
        Ok(true)
    }

    /// A resumed copy (--checkpoint): a regular-file destination keeps its
    /// contents and takes the source's size (what `prepare_dest` gives,
    /// without zeroing what is already copied).
    pub fn resume_dest(&mut self, size: Option<u64>) -> Result<()> {
        if let (FileKind::Regular, Some(size)) = (self.kind, size) {
            self.set_len(size)?;
            self.size = Some(size);
        }
        Ok(())
    }

    /// For ranges and incremental copies: a regular-file destination keeps
    /// its contents and is only extended (with a hole) to hold `min_len`
    /// bytes.
    pub fn extend_dest(&mut self, min_len: u64) -> Result<()> {
        if self.kind != FileKind::Regular {
            return Ok(());
        }
        let now = self
            .file()?
            .metadata()
            .map_err(|e| Error::os("stat", e))?
            .len();
        if now < min_len {
            self.set_len(min_len)?;
        }
        self.size = Some(now.max(min_len));
        Ok(())
    }

    /// After a successful copy from a stream: a regular-file destination
    /// ends at exactly `len` bytes, the stream's length (the copy wrote
    /// only the data; the skipped zero blocks are the extension).
    pub fn finish_dest(&mut self, len: u64) -> Result<()> {
        if self.kind != FileKind::Regular {
            return Ok(());
        }
        self.set_len(len)?;
        self.size = Some(len);
        Ok(())
    }

    /// The descriptor as a `File` (a duplicate, closed on drop).
    fn file(&self) -> Result<File> {
        Ok(File::from(
            self.fd.try_clone().map_err(|e| Error::os("dup", e))?,
        ))
    }

    fn set_len(&self, size: u64) -> Result<()> {
        self.file()?.set_len(size).map_err(|e| {
            if size == 0 {
                Error::os("truncate", e)
            } else {
                Error::os(format!("set the size to {size} bytes"), e)
            }
        })
    }

    /// fsync (for --flush after `finish_dest`).
    pub fn sync(&self) -> Result<()> {
        self.file()?.sync_all().map_err(|e| Error::os("fsync", e))
    }
}

/// A block device's logical sector size (BLKSSZGET), a power of two; 512
/// when the kernel does not say.
fn logical_sector_size(fd: RawFd) -> u64 {
    match sys::block_sector_size(fd) {
        Ok(size) if size > 0 && size.is_power_of_two() => size,
        _ => 512,
    }
}

/// Size of a block device in bytes (BLKGETSIZE64).
fn block_device_size(fd: RawFd) -> Result<u64> {
    sys::block_device_size(fd).map_err(|e| Error::os("block device size (BLKGETSIZE64)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_source_and_dest() {
        let dir = std::env::temp_dir().join(format!("nbdcpy-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a");
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let f = LocalFile::open(p.to_str().unwrap(), Side::Source).unwrap();
        assert_eq!(f.kind, FileKind::Regular);
        assert_eq!(f.size, Some(5000));
        let mut d = LocalFile::open(p.to_str().unwrap(), Side::Destination).unwrap();
        assert!(d.prepare_dest(Some(1234)).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), vec![0u8; 1234]);
        let e = LocalFile::open(dir.join("missing").to_str().unwrap(), Side::Source)
            .err()
            .unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        let e = LocalFile::open(dir.to_str().unwrap(), Side::Source)
            .err()
            .unwrap();
        assert_eq!(e.errno, libc::EISDIR);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_null_is_a_stream() {
        let f = LocalFile::open("/dev/null", Side::Destination).unwrap();
        assert_eq!(f.kind, FileKind::Stream);
        assert_eq!(f.size, None);
    }

    #[test]
    fn walk_finds_holes() {
        let p = std::env::temp_dir().join(format!("nbdcpy-ext-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        f.sync_all().unwrap();
        let mut out = Vec::new();
        walk_extents(f.as_raw_fd(), 0, 8 << 20, &mut |e| {
            out.push(e);
            true
        });
        std::fs::remove_file(&p).unwrap();
        let total: u64 = out.iter().map(|e| e.len).sum();
        assert_eq!(total, 8 << 20);
        assert!(out.windows(2).all(|w| w[0].end() == w[1].offset));
        // The written block is data; most of the rest is a hole (where
        // the filesystem supports SEEK_HOLE).
        assert!(out
            .iter()
            .any(|e| !e.zero && e.offset <= 1 << 20 && e.end() >= (1 << 20) + 4096));
    }

    #[test]
    fn one_walker_over_consecutive_ranges_matches_fresh_walks() {
        let p = std::env::temp_dir().join(format!("nbdcpy-walk-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![1u8; 2 << 20], 1 << 20).unwrap();
        f.write_all_at(&vec![1u8; 1 << 20], 5 << 20).unwrap();
        f.sync_all().unwrap();
        let collect = |w: &mut ExtentWalker, a: u64, b: u64| {
            let mut v = Vec::new();
            w.walk(f.as_raw_fd(), a, b, &mut |e| {
                v.push(e);
                true
            });
            v
        };
        let mut walker = ExtentWalker::default();
        for step in [300_000u64, 1 << 19, 3 << 20] {
            let mut a = 0;
            while a < 8 << 20 {
                let b = (a + step).min(8 << 20);
                let fresh = collect(&mut ExtentWalker::default(), a, b);
                assert_eq!(collect(&mut walker, a, b), fresh, "[{a}, {b})");
                assert_eq!(fresh.iter().map(|e| e.len).sum::<u64>(), b - a);
                a = b;
            }
        }
        std::fs::remove_file(&p).unwrap();
    }
}
