// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A job's range list: loaded from the config, refused with the options it cannot go with, checked against both ends, and whether lanes ask for extents inside it.

use super::ranges::Window;
use crate::config::Config;
use crate::endpoint::{Endpoint, Spec};
use crate::error::{Error, Result};
use crate::rangelist::RangeList;
use std::sync::Arc;

/// The job's range list, if it has one: the list given with
/// `nbdcpy_config_set_ranges`, or the file of `ranges-file` read now.
/// Refuses the options a range list cannot be combined with.
pub fn load(cfg: &Config, src: &Spec) -> Result<Option<Arc<RangeList>>> {
    let list = match (&cfg.ranges, &cfg.ranges_file) {
        (Some(l), _) => l.clone(),
        (None, Some(path)) => {
            if path == "-" && matches!(src, Spec::Stdio) {
                return Err(Error::invalid(
                    "--ranges=- reads the list from standard input, which is the source",
                ));
            }
            Arc::new(RangeList::read(path)?)
        }
        (None, None) => return Ok(None),
    };
    let mut clash = Vec::new();
    if cfg.offset != 0 {
        clash.push("--offset");
    }
    if cfg.length.is_some() {
        clash.push("--length");
    }
    if cfg.destination_offset.is_some() {
        clash.push("--destination-offset");
    }
    if cfg.dirty_bitmap.is_some() {
        clash.push("--dirty-bitmap");
    }
    if cfg.blkhash.is_some() {
        clash.push("--blkhash (the block hash is defined over a whole image)");
    }
    if !clash.is_empty() {
        return Err(Error::invalid(format!(
            "--ranges cannot be combined with {}",
            clash.join(", ")
        )));
    }
    Ok(Some(list))
}

/// The window of a job with a range list, after checking what it needs
/// of both ends: a source and a destination that can seek, and every area
/// inside both (a regular file's present size: it is never extended).
pub fn plan_window(
    list: &RangeList,
    src_spec: &Spec,
    dst_spec: &Spec,
    src: &Endpoint,
    dst: &Endpoint,
    align: u64,
) -> Result<Window> {
    let Some(src_size) = src.size() else {
        return Err(Error::invalid(format!(
            "--ranges: source {src_spec} is a stream; a range list needs a source that can seek"
        )));
    };
    let dst_size = match dst {
        Endpoint::Null => None,
        Endpoint::File(f) if f.is_stream() => {
            return Err(Error::invalid(format!(
                "--ranges: destination {dst_spec} is a stream; a range list needs a \
                 destination that can seek"
            )))
        }
        Endpoint::File(f) => Some(f.size.unwrap_or(0)),
        Endpoint::Nbd(n) => Some(n.info.size),
    };
    list.check_ends(
        &src_spec.to_string(),
        &dst_spec.to_string(),
        src_size,
        dst_size,
        align,
    )?;
    Ok(window(list))
}

/// The smallest window holding every area of `list` (to the same offsets).
pub fn window(list: &RangeList) -> Window {
    let (start, end) = list.bounds();
    Window {
        start,
        end,
        dst_start: start,
        partial: true,
    }
}

/// Mean area length from which an NBD source is asked for block status
/// per area (below it, a BLOCK_STATUS round trip costs more than reading
/// an area's holes, which zero detection then turns into zeroing).
pub const STATUS_MIN_MEAN_AREA: u64 = 1 << 20;

/// Whether the lanes learn the source's extents (SEEK_DATA, BLOCK_STATUS)
/// inside the areas of `list` (None: no range list, as configured).  A
/// lane has one BLOCK_STATUS in flight and claims the next area only when
/// it is answered, so for small areas of an NBD source the round trips
/// would bound the copy: their holes are read instead (and zeroed on the
/// destination by zero detection).  Files always: SEEK_DATA is local.
pub fn wants_extents(list: Option<&RangeList>, src: &Endpoint) -> bool {
    match (list, src) {
        (Some(l), Endpoint::Nbd(_)) if !l.areas().is_empty() => {
            l.mean_area() >= STATUS_MIN_MEAN_AREA
        }
        _ => true,
    }
}
