// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The C ABI: opaque handles, NULL checks, panic boundaries, thread-local
//! errors.  No copying logic lives here.

mod handles;

use crate::config::Config as CopyConfig;
use crate::copy::stats::Shared;
use crate::copy::Job;
use crate::endpoint::Spec;
use crate::error::Error;
use handles::Registry;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `side` argument of nbdcpy_config_set_command: the source.
pub const NBDCPY_SOURCE: c_int = 0;
/// `side` argument of nbdcpy_config_set_command: the destination.
pub const NBDCPY_DESTINATION: c_int = 1;

/// Counters of a copy, read with nbdcpy_stats().
///
/// New fields are only ever added at the end; pass sizeof(struct
/// nbdcpy_stats) as the caller knows it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct nbdcpy_stats {
    /// Bytes to copy (the source size; 0 until known for a stream source).
    pub size: u64,
    /// Bytes completed: written, zeroed or skipped, and acknowledged.
    /// Monotonic; use it for progress.
    pub bytes_done: u64,
    /// Bytes written as data.
    pub bytes_copied: u64,
    /// Bytes written as zeroes or holes.
    pub bytes_zeroed: u64,
    /// Bytes left alone because the destination already reads as zeroes.
    pub bytes_skipped: u64,
    /// NBD requests and file operations issued.
    pub requests: u64,
    /// Nanoseconds since nbdcpy_run started (fixed once it returns).
    pub elapsed_ns: u64,
    /// Payload bytes copied in user space (memcpy).  0 on zero-copy paths.
    pub bytes_memcpy: u64,
    /// I/O system calls made (io_uring_enter, plus direct file writes and
    /// the splice path's calls).
    pub syscalls: u64,
    /// Connections used per NBD side (lanes).
    pub connections: u32,
    /// 1 once nbdcpy_run has returned.
    pub finished: u32,
    /// Data bytes moved by splice (socket -> pipe -> destination), never
    /// entering user space.
    pub bytes_spliced: u64,
}

/// Progress callback: called on the thread running nbdcpy_run, at the
/// interval given to nbdcpy_config_set_progress and once after a
/// successful copy.  Return 0 to continue, non-zero to cancel the copy.
#[allow(non_camel_case_types)]
pub type nbdcpy_progress_cb =
    Option<extern "C" fn(user_data: *mut c_void, stats: *const nbdcpy_stats) -> c_int>;

/// Options for nbdcpy_open().
///
/// Thread safety: a config may be used by one thread at a time; it may be
/// freed as soon as nbdcpy_open() returns (the handle keeps a copy).
pub struct Config {
    cfg: CopyConfig,
    progress: nbdcpy_progress_cb,
    progress_data: usize,
    progress_ms: u32,
    commands: [Option<Vec<String>>; 2],
}

/// One copy job, from nbdcpy_open() to nbdcpy_close().
///
/// Thread safety: nbdcpy_run() runs on one thread; nbdcpy_stats() and
/// nbdcpy_cancel() may be called from any thread at the same time (and
/// nbdcpy_cancel() from a signal handler).  nbdcpy_close() must not race
/// with any other call on the same handle.
pub struct Handle {
    job: Mutex<Option<Job>>,
    shared: Arc<Shared>,
    progress: nbdcpy_progress_cb,
    progress_data: usize,
    progress_ms: u32,
    finished: std::sync::atomic::AtomicBool,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<(CString, i32)>> = const { RefCell::new(None) };
}

static CONFIGS: Registry = Registry::new();
static HANDLES: Registry = Registry::new();

fn set_error(e: &Error) {
    let msg = CString::new(e.msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = Some((msg, e.errno)));
}

/// Runs `f` inside a panic boundary; errors are recorded and `fail` returned.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, Error>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(&e);
            fail
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(&Error::new(
                libc::EIO,
                format!("internal error (panic): {what}"),
            ));
            fail
        }
    }
}

fn null(what: &str) -> Error {
    Error::new(libc::EFAULT, format!("{what} must not be NULL"))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// The library version, e.g. "0.1.0".  Never NULL; static storage.
#[no_mangle]
pub extern "C" fn nbdcpy_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// Optional features and whether this build has them.  "io_uring" is
/// answered at run time (nbdcpy_supports creates a ring).
const FEATURES: &[(&str, bool)] = &[
    ("extended-headers", true),
    ("io_uring", true),
    ("socket-activation", true),
    ("splice", true),
    ("blkhash", false),
    ("tls", false),
];

/// 1 if `feature` is available, 0 if not (also for names this version
/// does not know, and NULL).  Known names: "splice" (the splice(2) data
/// path, the "splice" option), "extended-headers" (NBD 64-bit requests),
/// "socket-activation" (servers run by nbdcpy_config_set_command),
/// "io_uring" (1 only if this kernel lets the process create an
/// io_uring, which every copy needs), "tls" (nbds:// URIs) and "blkhash"
/// (nbdcopy's --blkhash), which this version lacks.  Never fails; does
/// not touch nbdcpy_get_error().
///
/// # Safety
/// `feature` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_supports(feature: *const c_char) -> c_int {
    if feature.is_null() {
        return 0;
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let name = unsafe { CStr::from_ptr(feature) }.to_bytes();
    let known = FEATURES
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .map(|&(n, have)| (n, have));
    match known {
        Some(("io_uring", _)) => {
            catch_unwind(|| crate::ring::Ring::new(8).is_ok()).unwrap_or(false) as c_int
        }
        Some((_, have)) => have as c_int,
        None => 0,
    }
}

/// The message of the last failed call on this thread (endpoint, offset
/// and cause), or NULL if none failed yet.  Valid until the next failing
/// call on this thread.
#[no_mangle]
pub extern "C" fn nbdcpy_get_error() -> *const c_char {
    LAST_ERROR.with(|l| match &*l.borrow() {
        Some((m, _)) => m.as_ptr(),
        None => std::ptr::null(),
    })
}

/// The errno of the last failed call on this thread (0 if none failed).
#[no_mangle]
pub extern "C" fn nbdcpy_get_errno() -> c_int {
    LAST_ERROR.with(|l| l.borrow().as_ref().map_or(0, |(_, e)| *e))
}

/// A new config with nbdcopy's defaults.  Free with nbdcpy_config_free().
#[no_mangle]
pub extern "C" fn nbdcpy_config_new() -> *mut Config {
    guard(std::ptr::null_mut(), || {
        let p = Box::into_raw(Box::new(Config {
            cfg: CopyConfig::default(),
            progress: None,
            progress_data: 0,
            progress_ms: 1000,
            commands: [None, None],
        }));
        CONFIGS.insert(p as usize);
        Ok(p)
    })
}

/// # Safety
/// `config` is NULL or was returned by nbdcpy_config_new().
unsafe fn config_mut<'a>(config: *mut Config) -> Result<&'a mut Config, Error> {
    if config.is_null() {
        return Err(null("config"));
    }
    if !CONFIGS.contains(config as usize) {
        return Err(Error::invalid("config is not a live nbdcpy_config"));
    }
    // SAFETY: registered, so it is a live Box<Config>; the contract says
    // one thread at a time uses it.
    Ok(unsafe { &mut *config })
}

/// Sets option `name` (nbdcopy's long option name without the dashes:
/// "connections", "requests", "request-size", "queue-size", "sparse",
/// "threads", "allocated", "destination-is-zero", "flush", "no-extents",
/// "synchronous", "verbose", "timeout"; and the extension "splice":
/// "auto", "1" or "0", see nbdcpy(1) --splice) to `value`.  Flags take
/// NULL, "1" or "0"; sizes take nbdcopy's human forms ("1M", "256k").
/// Unknown names and bad values are errors (EINVAL) that say which.
///
/// # Safety
/// `config` is NULL or a live config; `name` and `value` are NULL or
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set(
    config: *mut Config,
    name: *const c_char,
    value: *const c_char,
) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let c = unsafe { config_mut(config) }?;
        // SAFETY: as above.
        let name = unsafe { str_arg(name, "name") }?;
        let value = if value.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { str_arg(value, "value") }?)
        };
        c.cfg.set(name, value)?;
        Ok(0)
    })
}

/// Registers a progress callback, called every `interval_ms` milliseconds
/// (0 means 1000) on the thread running nbdcpy_run().  `cb` NULL removes it.
///
/// # Safety
/// `config` is NULL or a live config; `user_data` is passed back untouched.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_progress(
    config: *mut Config,
    cb: nbdcpy_progress_cb,
    user_data: *mut c_void,
    interval_ms: u32,
) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let c = unsafe { config_mut(config) }?;
        c.progress = cb;
        c.progress_data = user_data as usize;
        c.progress_ms = if interval_ms == 0 { 1000 } else { interval_ms };
        Ok(0)
    })
}

/// Makes `side` (NBDCPY_SOURCE or NBDCPY_DESTINATION) an NBD server run as
/// a subprocess through systemd socket activation: `argv` is a
/// NULL-terminated array (argv[0] is searched in PATH), like nbdcopy's
/// `[ CMD ARGS ... ]`.  Pass NULL as that side's string to nbdcpy_open().
/// The server is killed and reaped when the handle is closed (and on every
/// error).  `argv` NULL clears the command.
///
/// # Safety
/// `config` is NULL or a live config; `argv` is NULL or a NULL-terminated
/// array of NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_command(
    config: *mut Config,
    side: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let c = unsafe { config_mut(config) }?;
        let idx = match side {
            NBDCPY_SOURCE => 0,
            NBDCPY_DESTINATION => 1,
            _ => return Err(Error::invalid(format!("bad side {side}"))),
        };
        if argv.is_null() {
            c.commands[idx] = None;
            return Ok(0);
        }
        let mut v = Vec::new();
        for i in 0.. {
            if i > 4096 {
                return Err(Error::invalid("argv has no NULL terminator"));
            }
            // SAFETY: argv is NULL-terminated; we stop at the NULL.
            let p = unsafe { *argv.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: each element is a NUL-terminated string.
            v.push(unsafe { str_arg(p, "argv element") }?.to_string());
        }
        if v.is_empty() {
            return Err(Error::invalid("command argv is empty"));
        }
        c.commands[idx] = Some(v);
        Ok(0)
    })
}

/// Frees a config.  NULL is allowed.  Freeing a config twice is detected
/// and ignored.
///
/// # Safety
/// `config` is NULL or was returned by nbdcpy_config_new().
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_free(config: *mut Config) {
    guard((), || {
        if !config.is_null() && CONFIGS.remove(config as usize) {
            // SAFETY: it was registered, so it is our live Box; removing it
            // from the registry first makes a second free a no-op.
            drop(unsafe { Box::from_raw(config) });
        }
        Ok(())
    })
}

/// Opens a copy from `source` to `destination`: connects to both ends,
/// negotiates, and checks sizes (a destination smaller than the source is
/// an error here, before anything is written).  Endpoints are what nbdcopy
/// accepts: an NBD URI, a file or block device path, "-" (stdin/stdout),
/// "null:" (destination only), or NULL for a side given as a command with
/// nbdcpy_config_set_command().  `config` may be NULL (defaults).
/// Returns NULL on error.  Close with nbdcpy_close().
///
/// # Safety
/// Strings are NULL or NUL-terminated; `config` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_open(
    source: *const c_char,
    destination: *const c_char,
    config: *const Config,
) -> *mut Handle {
    guard(std::ptr::null_mut(), || {
        let default;
        let c: &Config = if config.is_null() {
            default = Config {
                cfg: CopyConfig::default(),
                progress: None,
                progress_data: 0,
                progress_ms: 1000,
                commands: [None, None],
            };
            &default
        } else if CONFIGS.contains(config as usize) {
            // SAFETY: registered, live; only read here.
            unsafe { &*config }
        } else {
            return Err(Error::invalid("config is not a live nbdcpy_config"));
        };
        let spec = |p: *const c_char, idx: usize, what: &str| -> Result<Spec, Error> {
            match (&c.commands[idx], p.is_null()) {
                (Some(argv), true) => Ok(Spec::Command(argv.clone())),
                (Some(_), false) => Err(Error::invalid(format!(
                    "{what} given both as a string and as a command"
                ))),
                // SAFETY: per this function's contract.
                (None, _) => Ok(Spec::parse(unsafe { str_arg(p, what) }?)),
            }
        };
        let src = spec(source, 0, "source")?;
        let dst = spec(destination, 1, "destination")?;
        let job = Job::open(src, dst, c.cfg.clone())?;
        let shared = job.shared().clone();
        let p = Box::into_raw(Box::new(Handle {
            job: Mutex::new(Some(job)),
            shared,
            progress: c.progress,
            progress_data: c.progress_data,
            progress_ms: c.progress_ms,
            finished: std::sync::atomic::AtomicBool::new(false),
        }));
        HANDLES.insert(p as usize);
        Ok(p)
    })
}

/// # Safety
/// `h` is NULL or was returned by nbdcpy_open().
unsafe fn handle_ref<'a>(h: *const Handle) -> Result<&'a Handle, Error> {
    if h.is_null() {
        return Err(null("handle"));
    }
    if !HANDLES.contains(h as usize) {
        return Err(Error::invalid("handle is not a live nbdcpy handle"));
    }
    // SAFETY: registered, so live; shared access only.
    Ok(unsafe { &*h })
}

/// Copies everything; blocks until done, failed or cancelled.  Returns 0
/// only when every byte was written and acknowledged (and flushed with
/// "flush").  Cancelled copies fail with errno ECANCELED.  A handle runs
/// once.
///
/// # Safety
/// `h` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_run(h: *mut Handle) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let h = unsafe { handle_ref(h) }?;
        let mut job = h
            .job
            .lock()
            .map_err(|_| Error::new(libc::EIO, "handle lock poisoned"))?;
        let job = job
            .as_mut()
            .ok_or_else(|| Error::new(libc::EALREADY, "handle has no job"))?;
        let interval = Duration::from_millis(h.progress_ms as u64);
        let mut last = std::time::Instant::now();
        let mut cb = |s: &Shared| -> bool {
            let Some(f) = h.progress else { return true };
            let done = s.bytes_done.load(Relaxed) >= s.size.load(Relaxed);
            if last.elapsed() < interval && !done {
                return true;
            }
            last = std::time::Instant::now();
            let st = snapshot(s, false);
            f(h.progress_data as *mut c_void, &st) == 0
        };
        let r = job.run(interval, &mut cb);
        h.finished.store(true, Relaxed);
        r.map(|()| 0)
    })
}

fn snapshot(s: &Shared, finished: bool) -> nbdcpy_stats {
    nbdcpy_stats {
        size: s.size.load(Relaxed),
        bytes_done: s.bytes_done.load(Relaxed),
        bytes_copied: s.bytes_copied.load(Relaxed),
        bytes_zeroed: s.bytes_zeroed.load(Relaxed),
        bytes_skipped: s.bytes_skipped.load(Relaxed),
        requests: s.requests.load(Relaxed),
        elapsed_ns: s.elapsed_ns(),
        bytes_memcpy: s.bytes_memcpy.load(Relaxed),
        syscalls: s.ring_enters.load(Relaxed) + s.syscalls_direct.load(Relaxed),
        connections: s.connections.load(Relaxed) as u32,
        finished: finished as u32,
        bytes_spliced: s.bytes_spliced.load(Relaxed),
    }
}

/// Copies the current counters into `out` (`out_size` bytes: pass
/// sizeof(struct nbdcpy_stats)).  Callable from any thread, also while
/// nbdcpy_run() runs.  A larger struct (newer header) gets its extra
/// bytes zeroed; a smaller one gets a prefix.
///
/// # Safety
/// `h` is NULL or a live handle; `out` is NULL or points to `out_size`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_stats(
    h: *const Handle,
    out: *mut nbdcpy_stats,
    out_size: usize,
) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let h = unsafe { handle_ref(h) }?;
        if out.is_null() {
            return Err(null("out"));
        }
        if out_size < 8 {
            return Err(Error::invalid(format!("out_size {out_size} is too small")));
        }
        let st = snapshot(&h.shared, h.finished.load(Relaxed));
        let n = out_size.min(std::mem::size_of::<nbdcpy_stats>());
        // SAFETY: `out` has out_size writable bytes; we write n <= out_size
        // from our struct, then zero the rest of the caller's struct.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&st as *const nbdcpy_stats).cast::<u8>(),
                out.cast::<u8>(),
                n,
            );
            if out_size > n {
                std::ptr::write_bytes(out.cast::<u8>().add(n), 0, out_size - n);
            }
        }
        Ok(0)
    })
}

/// Asks a running (or future) nbdcpy_run() to stop; it then fails with
/// ECANCELED within about 100 ms.  Safe from any thread and from a signal
/// handler (it only stores a flag).
///
/// # Safety
/// `h` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_cancel(h: *mut Handle) -> c_int {
    // Async-signal-safe: no locks, no allocation on the success path (the
    // registry is not consulted here for that reason).
    if h.is_null() {
        return -1;
    }
    // SAFETY: the caller guarantees a live handle (not checked against the
    // registry, which takes a lock).
    let h = unsafe { &*h };
    h.shared.cancel.store(true, Relaxed);
    0
}

/// Closes a handle: disconnects, kills and reaps server subprocesses,
/// frees everything.  NULL is allowed; closing a handle twice is detected
/// and ignored.  Must not be called while nbdcpy_run() runs on the handle.
///
/// # Safety
/// `h` is NULL or was returned by nbdcpy_open().
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_close(h: *mut Handle) {
    guard((), || {
        if !h.is_null() && HANDLES.remove(h as usize) {
            // SAFETY: registered, so our live Box; removed first, so a
            // second close is a no-op.
            drop(unsafe { Box::from_raw(h) });
        }
        Ok(())
    })
}
