// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! A registry of live handle addresses, so NULL, stale and double-freed
//! handles are caught instead of being dereferenced.

use std::collections::HashSet;
use std::sync::Mutex;

pub struct Registry(Mutex<Option<HashSet<usize>>>);

impl Registry {
    pub const fn new() -> Registry {
        Registry(Mutex::new(None))
    }

    pub fn insert(&self, p: usize) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashSet::new).insert(p);
    }

    pub fn contains(&self, p: usize) -> bool {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().is_some_and(|s| s.contains(&p))
    }

    /// Removes `p`; false if it was not live.
    pub fn remove(&self, p: usize) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().is_some_and(|s| s.remove(&p))
    }
}
