// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The tables of live configs and handles, named to C by tokens, never addresses.
//
// The tables of live configs and handles.  C never sees an address: it
// gets a token naming a slot of a fixed table and the slot's generation,
// so a stale, double-freed or forged pointer is recognised by comparing
// generations, never dereferenced, and never aliases a newer object.
//
// Each slot is one atomic word (generation, state bits, count of calls in
// progress) plus the object's pointer.  Lookups, cancellation and removal
// are compare-and-swap loops on that word: no locks and no allocation,
// which is what lets `nbdcpy_cancel` run in a signal handler.  An object
// removed while calls are still using it is freed by the last of them.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

/// Slots per table: the most configs (or handles) alive at once.
pub(crate) const SLOTS: usize = 4096;

const CANCEL: u64 = 1 << 0;
const LIVE: u64 = 1 << 1;
const BUSY: u64 = 1 << 2;
const CLOSING: u64 = 1 << 3;
const USER: u64 = 1 << 4;
const USERS: u64 = ((1 << 28) - 1) << 4;
const GEN_SHIFT: u32 = 32;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("handle tokens need 64-bit pointers");

fn gen_of(w: u64) -> u32 {
    (w >> GEN_SHIFT) as u32
}

/// Which table a token belongs to (a config token is no handle).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Config = 0,
    Handle = 1,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token of this table at all (a forged or foreign pointer).
    NotOurs,
    /// A token of this table whose object was closed or freed.
    Stale,
}

struct Slot<T> {
    word: AtomicU64,
    ptr: AtomicPtr<T>,
}

pub struct Table<T> {
    kind: Kind,
    slots: [Slot<T>; SLOTS],
    /// Where the next search for a free slot starts: slots are reused as
    /// late as possible, so generations advance slowly.
    next: AtomicUsize,
}

/// A slot index and generation, as packed into the pointer C holds:
/// bits 0: 1 (never NULL), 1: kind, 2..16: index, 32..64: generation.
#[derive(Clone, Copy)]
pub struct Token {
    idx: usize,
    gen: u32,
}

impl Token {
    pub fn to_ptr<P>(self, kind: Kind) -> *mut P {
        let v =
            ((self.gen as u64) << GEN_SHIFT) | ((self.idx as u64) << 2) | ((kind as u64) << 1) | 1;
        v as usize as *mut P
    }

    fn from_ptr<P>(p: *const P, kind: Kind) -> Result<Token, Refused> {
        let v = p as usize as u64;
        let idx = ((v >> 2) & 0x3fff) as usize;
        let tag_ok = v & 1 == 1 && (v >> 1) & 1 == kind as u64 && (v >> 16) & 0xffff == 0;
        if !tag_ok || idx >= SLOTS {
            return Err(Refused::NotOurs);
        }
        Ok(Token {
            idx,
            gen: (v >> GEN_SHIFT) as u32,
        })
    }
}

/// A counted use of a live object; the object stays allocated until it
/// is dropped.
pub struct Guard<'a, T: Send + Sync> {
    table: &'a Table<T>,
    idx: usize,
    obj: &'a T,
}

impl<T: Send + Sync> std::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.obj
    }
}

impl<T: Send + Sync> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.table.release(self.idx);
    }
}

impl<T: Send + Sync> Table<T> {
    pub const fn new(kind: Kind) -> Table<T> {
        Table {
            kind,
            slots: [const {
                Slot {
                    word: AtomicU64::new(0),
                    ptr: AtomicPtr::new(std::ptr::null_mut()),
                }
            }; SLOTS],
            next: AtomicUsize::new(0),
        }
    }

    /// Takes ownership of `obj`; returns its token as a pointer, or gives
    /// `obj` back when every slot is in use.
    pub fn insert<P>(&self, obj: Box<T>) -> Result<*mut P, Box<T>> {
        let start = self.next.fetch_add(1, Relaxed);
        for k in 0..SLOTS {
            let idx = (start + k) % SLOTS;
            let slot = &self.slots[idx];
            let w = slot.word.load(Acquire);
            if w & BUSY != 0 {
                continue;
            }
            let gen = gen_of(w);
            let reserved = ((gen as u64) << GEN_SHIFT) | BUSY;
            if slot
                .word
                .compare_exchange(w, reserved, AcqRel, Relaxed)
                .is_err()
            {
                continue;
            }
            self.next.store(idx + 1, Relaxed);
            slot.ptr.store(Box::into_raw(obj), Release);
            slot.word.store(reserved | LIVE, Release);
            return Ok(Token { idx, gen }.to_ptr(self.kind));
        }
        Err(obj)
    }

    /// A counted use of the object `p` names, if it is live.
    pub fn get<P>(&self, p: *const P) -> Result<Guard<'_, T>, Refused> {
        let t = Token::from_ptr(p, self.kind)?;
        let slot = &self.slots[t.idx];
        let mut w = slot.word.load(Acquire);
        loop {
            if gen_of(w) != t.gen || w & LIVE == 0 || w & USERS == USERS {
                return Err(Refused::Stale);
            }
            match slot
                .word
                .compare_exchange_weak(w, w + USER, AcqRel, Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        let ptr = slot.ptr.load(Acquire);
        // SAFETY: the slot is live and we hold one of its use counts, so
        // the object stays allocated until our Guard releases it (removal
        // frees only at a zero count); only shared references are made.
        let obj = unsafe { &*ptr };
        Ok(Guard {
            table: self,
            idx: t.idx,
            obj,
        })
    }

    fn release(&self, idx: usize) {
        let prev = self.slots[idx].word.fetch_sub(USER, AcqRel);
        if prev & CLOSING != 0 && prev & USERS == USER {
            self.free(idx, prev - USER);
        }
    }

    /// Applies `change` to the word of the live slot `p` names, in one
    /// compare-and-swap (lock- and allocation-free); returns the slot's
    /// index and the new word.
    fn update_live<P>(
        &self,
        p: *const P,
        change: impl Fn(u64) -> u64,
    ) -> Result<(usize, u64), Refused> {
        let t = Token::from_ptr(p, self.kind)?;
        let slot = &self.slots[t.idx];
        let mut w = slot.word.load(Acquire);
        loop {
            if gen_of(w) != t.gen || w & LIVE == 0 {
                return Err(Refused::Stale);
            }
            let new = change(w);
            match slot.word.compare_exchange_weak(w, new, AcqRel, Acquire) {
                Ok(_) => return Ok((t.idx, new)),
                Err(now) => w = now,
            }
        }
    }

    /// Sets the cancel bit of the live object `p` names.  Lock-free and
    /// allocation-free (async-signal-safe); never touches the object.
    pub fn cancel<P>(&self, p: *const P) -> Result<(), Refused> {
        self.update_live(p, |w| w | CANCEL).map(|_| ())
    }

    /// A test of the cancel bit of the object `p` names, for the object's
    /// own use: true once cancelled, and also once the slot no longer
    /// holds that object.
    pub fn cancel_watch<P>(&'static self, p: *const P) -> impl Fn() -> bool + Send + Sync {
        let t = Token::from_ptr(p, self.kind).ok();
        move || match t {
            Some(t) => {
                let w = self.slots[t.idx].word.load(Relaxed);
                w & CANCEL != 0 || gen_of(w) != t.gen
            }
            None => true,
        }
    }

    /// Makes `p` stale at once and frees its object, now or when the last
    /// call using it returns.  Sets the cancel bit, so a run still using
    /// it stops.  Err: `p` was not live (already removed, or not ours).
    pub fn remove<P>(&self, p: *const P) -> Result<(), Refused> {
        let (idx, closing) = self.update_live(p, |w| (w & !LIVE) | CLOSING | CANCEL)?;
        if closing & USERS == 0 {
            self.free(idx, closing);
        }
        Ok(())
    }

    /// Drops the object of a closing slot without users, then opens the
    /// slot for reuse under the next generation.
    fn free(&self, idx: usize, w: u64) {
        let slot = &self.slots[idx];
        let ptr = slot.ptr.swap(std::ptr::null_mut(), AcqRel);
        if !ptr.is_null() {
            // SAFETY: the pointer came from Box::into_raw in insert; the
            // slot is closing (no new users) and its use count is zero, and
            // the swap above hands it to exactly one caller.
            drop(unsafe { Box::from_raw(ptr) });
        }
        let next = (gen_of(w).wrapping_add(1) as u64) << GEN_SHIFT;
        slot.word.store(next, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Obj(u32);
    impl Drop for Obj {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn stale_tokens_never_alias_new_objects() {
        static T: Table<Obj> = Table::new(Kind::Handle);
        let a: *mut () = T.insert(Box::new(Obj(1))).ok().unwrap();
        assert_eq!(T.get(a).unwrap().0, 1);
        T.remove(a).unwrap();
        assert_eq!(T.remove(a), Err(Refused::Stale));
        assert!(T.get(a).is_err());
        assert_eq!(T.cancel(a), Err(Refused::Stale));
        // Fill every slot: one of them reuses a's slot, under a new
        // generation; a stays stale.
        let all: Vec<*mut ()> = (0..SLOTS)
            .map(|i| T.insert(Box::new(Obj(i as u32))).ok().unwrap())
            .collect();
        assert!(T.insert::<()>(Box::new(Obj(0))).is_err(), "table full");
        assert!(T.get(a).is_err());
        assert_eq!(T.remove(a), Err(Refused::Stale));
        for p in &all {
            assert!(T.get(*p).is_ok());
            T.remove(*p).unwrap();
        }
        // Foreign pointers and the other kind's tokens are refused.
        let cfg: *mut () = Token { idx: 0, gen: 0 }.to_ptr(Kind::Config);
        assert_eq!(T.get(cfg).err(), Some(Refused::NotOurs));
        let bogus = 0x1000 as *const ();
        assert_eq!(T.get(bogus).err(), Some(Refused::NotOurs));
    }

    #[test]
    fn removal_waits_for_the_last_user() {
        static T: Table<Obj> = Table::new(Kind::Config);
        let before = DROPS.load(Relaxed);
        let p: *mut () = T.insert(Box::new(Obj(7))).ok().unwrap();
        let watch = T.cancel_watch(p);
        let g = T.get(p).unwrap();
        assert!(!watch());
        T.remove(p).unwrap();
        assert!(watch(), "removal cancels");
        assert!(T.get(p).is_err(), "stale at once");
        assert_eq!(g.0, 7, "still usable by the call holding it");
        drop(g);
        assert!(DROPS.load(Relaxed) > before, "freed by the last user");
    }
}
