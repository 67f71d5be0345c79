// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! The C ABI: opaque handles, NULL checks, panic boundaries, thread-local errors.
//
// The C ABI: opaque handles, NULL checks, panic boundaries, thread-local
// errors.  No copying logic lives here.

// The contract of each exported unsafe function is its "Pointers:"
// paragraph, written for the C header (where a Rust "# Safety" heading
// would mean nothing).
#![allow(clippy::missing_safety_doc)]

mod handles;

use crate::config::Config as CopyConfig;
use crate::copy::stats::Shared;
use crate::copy::Job;
use crate::endpoint::connect::GivenSocket;
use crate::endpoint::Spec;
use crate::error::{Error, Side};
use handles::{Kind, Refused, Table};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// `side` argument of nbdcpy_config_set_command and
/// nbdcpy_config_set_socket, and a value of nbdcpy_get_error_endpoint: the
/// source.
pub const NBDCPY_SOURCE: c_int = 0;
/// The same for the destination.
pub const NBDCPY_DESTINATION: c_int = 1;

/// Log level: something the user should know.  Always passed to the log
/// callback.
pub const NBDCPY_LOG_WARNING: c_int = 1;
/// Log level: what was negotiated and decided (sizes, lanes, threads,
/// data path).  Passed on only with the "verbose" option.
pub const NBDCPY_LOG_INFO: c_int = 2;
/// Log level: details for debugging (zero sampling, up-front zeroing).
/// Passed on only with the "verbose" option.
pub const NBDCPY_LOG_DEBUG: c_int = 3;

/// Counters of a copy, read with nbdcpy_stats().  Every counter is
/// available from nbdcpy_open() on: right after it, `size` is already the
/// source's size (for a source of known size) and the others are 0.
///
/// For a stream source ("-", a pipe, a FIFO, a socket), whose size is not
/// known before its end: `size` is the number of bytes read from the
/// stream so far (0 after nbdcpy_open()) and `size_known` is 0, so
/// bytes_done / size is not a fraction of the whole copy; once the stream
/// ends, `size` is its length and `size_known` becomes 1.  Every other
/// field means the same for streams as for other sources.
///
/// New fields are only ever added at the end; pass sizeof(struct
/// nbdcpy_stats) as the caller knows it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct nbdcpy_stats {
    /// Bytes to copy: the source's size (see above for streams), the
    /// range's length with "offset"/"length", and with "dirty-bitmap" the
    /// bytes not (yet) found clean.
    pub size: u64,
    /// Bytes completed: written, zeroed or skipped, and acknowledged.
    /// Monotonic; use it for progress.
    pub bytes_done: u64,
    /// Bytes written as data.
    pub bytes_copied: u64,
    /// Bytes written as zeroes or holes.
    pub bytes_zeroed: u64,
    /// Bytes left alone because the destination already reads as zeroes,
    /// or (with "dirty-bitmap") because they are clean; the latter are
    /// not part of `size` nor `bytes_done`.
    pub bytes_skipped: u64,
    /// NBD requests and file operations issued.
    pub requests: u64,
    /// Nanoseconds since nbdcpy_run started (0 before; fixed once it
    /// returns).
    pub elapsed_ns: u64,
    /// Payload bytes copied in user space (memcpy).  0 on zero-copy paths.
    pub bytes_memcpy: u64,
    /// I/O system calls made (io_uring_enter, plus direct file writes and
    /// the splice path's calls).
    pub syscalls: u64,
    /// Connections used per NBD side (lanes); 0 until nbdcpy_run has
    /// opened them.
    pub connections: u32,
    /// 1 once nbdcpy_run has returned.
    pub finished: u32,
    /// Data bytes moved by splice (socket -> pipe -> destination), never
    /// entering user space.
    pub bytes_spliced: u64,
    /// 1 when `size` is the final size of the source: always for sources
    /// of known size, and for a stream once it has ended.
    pub size_known: u32,
    /// Always 0 (room for a future flag).
    pub reserved: u32,
    /// NBD connections made again after being lost (the "retries"
    /// option), over both sides.  Since version 0.2.
    pub reconnects: u64,
    /// Requests sent again after the server answered EIO (the "retries"
    /// option).  Since version 0.3.
    pub retried_requests: u64,
    /// Bytes a "checkpoint" file recorded as done before this run (not
    /// copied again; part of `bytes_done`).  Since version 0.3.
    pub resumed_bytes: u64,
}

/// Progress callback: called on the thread running nbdcpy_run, at most
/// once per `interval_ms` given to nbdcpy_config_set_progress while the
/// copy runs (the first time after one interval; also for stream
/// sources), and exactly once more after a successful copy, with every
/// byte counted in `bytes_done`.  Never called after a failure or a
/// cancellation.  Return 0 to continue, non-zero to cancel the copy.
#[allow(non_camel_case_types)]
pub type nbdcpy_progress_cb =
    Option<extern "C" fn(user_data: *mut c_void, stats: *const nbdcpy_stats) -> c_int>;

/// Log callback: `level` is one of NBDCPY_LOG_WARNING, NBDCPY_LOG_INFO or
/// NBDCPY_LOG_DEBUG; `message` is one line without a trailing newline and
/// without a "nbdcpy: " prefix, valid only during the call.  Called on the
/// thread running nbdcpy_run.  The library never writes to stderr itself.
#[allow(non_camel_case_types)]
pub type nbdcpy_log_cb =
    Option<extern "C" fn(user_data: *mut c_void, level: c_int, message: *const c_char)>;

/// Free callback: releases the `user_data` given with it to
/// nbdcpy_config_set_progress_free() or nbdcpy_config_set_log_free().
/// The library calls it exactly once, when it will never call that
/// callback again, on whichever thread lets go of it last.  Since
/// version 0.3.
#[allow(non_camel_case_types)]
pub type nbdcpy_free_cb = Option<extern "C" fn(user_data: *mut c_void)>;

type ProgressFn = extern "C" fn(*mut c_void, *const nbdcpy_stats) -> c_int;
type LogFn = extern "C" fn(*mut c_void, c_int, *const c_char);

/// A callback's `user_data` and the function releasing it: shared by the
/// config and every handle made from it, released (free_cb called) when
/// the last of them lets go.
struct UserData {
    ptr: usize,
    free: nbdcpy_free_cb,
}

impl UserData {
    fn new(ptr: *mut c_void, free: nbdcpy_free_cb) -> Arc<UserData> {
        Arc::new(UserData {
            ptr: ptr as usize,
            free,
        })
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(f) = self.free {
            f(self.ptr as *mut c_void);
        }
    }
}

/// A registered callback with its data.
#[derive(Clone)]
struct Callback<F: Copy> {
    f: F,
    data: Arc<UserData>,
}

impl<F: Copy> Callback<F> {
    fn new(f: Option<F>, data: Arc<UserData>) -> Option<Callback<F>> {
        // Without a function the data is released at once.
        f.map(|f| Callback { f, data })
    }
    fn ptr(&self) -> *mut c_void {
        self.data.ptr as *mut c_void
    }
}

/// Options for nbdcpy_open().
///
/// Thread safety: a config may be used from any thread; calls on one
/// config are serialised.  It may be freed as soon as nbdcpy_open()
/// returns (the handle keeps a copy).
pub struct Config {
    data: Mutex<ConfigData>,
}

#[derive(Clone)]
struct ConfigData {
    cfg: CopyConfig,
    progress: Option<Callback<ProgressFn>>,
    progress_ms: u32,
    log: Option<Callback<LogFn>>,
    commands: [Option<Vec<String>>; 2],
    sockets: [Option<GivenSocket>; 2],
}

impl Default for ConfigData {
    fn default() -> Self {
        ConfigData {
            cfg: CopyConfig::default(),
            progress: None,
            progress_ms: 1000,
            log: None,
            commands: [None, None],
            sockets: [None, None],
        }
    }
}

/// One copy job, from nbdcpy_open() to nbdcpy_close().
///
/// Thread safety: nbdcpy_run() runs on one thread at a time (a second
/// one fails with EBUSY); nbdcpy_stats() and nbdcpy_cancel() may be
/// called from any thread at the same time (and nbdcpy_cancel() from a
/// signal handler).  nbdcpy_close() may be called while other calls on
/// the handle are still running (see there).  Handles are independent:
/// any number of them (up to 4096) may run at once on as many threads;
/// each running copy has its own worker threads and rings, and they
/// share no lock on the data path.
pub struct Handle {
    job: Mutex<Option<Job>>,
    /// What nbdcpy_connect opens (from nbdcpy_create until then).
    pending: Mutex<Option<Pending>>,
    shared: Arc<Shared>,
    progress: Option<Callback<ProgressFn>>,
    progress_ms: u32,
    finished: std::sync::atomic::AtomicBool,
}

/// A handle's endpoints and options between nbdcpy_create and
/// nbdcpy_connect.
struct Pending {
    src: Spec,
    dst: Spec,
    cfg: ConfigData,
}

thread_local! {
    // Never touched by nbdcpy_cancel (signal handlers).
    static LAST_ERRNO: Cell<c_int> = const { Cell::new(0) };
    static LAST_SIDE: Cell<c_int> = const { Cell::new(-1) };
    static LAST_MSG: RefCell<Option<CString>> = const { RefCell::new(None) };
}

static CONFIGS: Table<Config> = Table::new(Kind::Config);
static HANDLES: Table<Handle> = Table::new(Kind::Handle);

fn set_error(e: &Error) {
    let msg = CString::new(e.msg.replace('\0', " ")).unwrap_or_default();
    LAST_MSG.with(|l| *l.borrow_mut() = Some(msg));
    LAST_ERRNO.with(|l| l.set(if e.errno > 0 { e.errno } else { libc::EIO }));
    LAST_SIDE.with(|l| l.set(side_code(e.side)));
}

/// The C value of an error's side (kept in the error itself, never read
/// from its message).
fn side_code(side: Option<Side>) -> c_int {
    match side {
        Some(Side::Source) => NBDCPY_SOURCE,
        Some(Side::Destination) => NBDCPY_DESTINATION,
        None => -1,
    }
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

fn refused(what: &str, r: Refused) -> Error {
    Error::invalid(match r {
        Refused::NotOurs => format!("{what} is not an {what} pointer from this library"),
        Refused::Stale => format!("{what} was already freed or closed (stale pointer)"),
    })
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

/// The library version, e.g. "0.3.0".  Never NULL; static storage.
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
    ("epoll", true),
    ("socket-activation", true),
    ("splice", true),
    ("blkhash", true),
    ("tls", true),
    ("ssh", true),
];

/// 1 if `feature` is available, 0 if not (also for names this version
/// does not know, and NULL).  Known names: "splice" (the splice(2) data
/// path, the "splice" option), "extended-headers" (NBD 64-bit requests),
/// "socket-activation" (servers run by nbdcpy_config_set_command),
/// "io_uring" (1 only if this kernel lets the process create an
/// io_uring, the fast engine), "epoll" (the engine every Linux has, used
/// where io_uring is refused: always 1), "tls" (nbds:// URIs: X.509 and
/// TLS-PSK through OpenSSL), "blkhash" (nbdcopy's --blkhash: the
/// "blkhash", "blkhash-file" and "verify" keys and nbdcpy_get_blkhash())
/// and "ssh" (nbd+ssh:// and nbds+ssh:// URIs, through ssh(1) and the
/// remote host's nc; since 0.3).
/// Never fails; does not touch nbdcpy_get_error().
///
/// Pointers: `feature` is NULL or a NUL-terminated string.
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
            catch_unwind(crate::engine::io_uring_available).unwrap_or(false) as c_int
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
    LAST_MSG.with(|l| match &*l.borrow() {
        Some(m) => m.as_ptr(),
        None => std::ptr::null(),
    })
}

/// The errno of the last failed call on this thread (0 if none failed).
#[no_mangle]
pub extern "C" fn nbdcpy_get_errno() -> c_int {
    LAST_ERRNO.with(|l| l.get())
}

/// Which endpoint the last failed call on this thread failed on:
/// NBDCPY_SOURCE, NBDCPY_DESTINATION, or -1 when the error is not about
/// one of them (a bad argument, both ends, a cancellation, ECANCELED,
/// wherever it stopped the copy) or no call failed.  The library keeps
/// the side with the error; it does not depend on the message's wording
/// (which today starts with "source " or "destination " then).  Since
/// version 0.2.
#[no_mangle]
pub extern "C" fn nbdcpy_get_error_endpoint() -> c_int {
    LAST_SIDE.with(|l| l.get())
}

/// A new config with nbdcopy's defaults.  Free with nbdcpy_config_free().
/// Fails with EMFILE when 4096 configs are alive.
#[no_mangle]
pub extern "C" fn nbdcpy_config_new() -> *mut Config {
    guard(std::ptr::null_mut(), || {
        let c = Box::new(Config {
            data: Mutex::new(ConfigData::default()),
        });
        CONFIGS
            .insert(c)
            .map_err(|_| Error::new(libc::EMFILE, "too many live nbdcpy_config objects"))
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the live config `config` names.
fn with_config<T>(
    config: *const Config,
    f: impl FnOnce(&mut ConfigData) -> Result<T, Error>,
) -> Result<T, Error> {
    if config.is_null() {
        return Err(null("config"));
    }
    let c = CONFIGS.get(config).map_err(|r| refused("config", r))?;
    let mut data = lock(&c.data);
    f(&mut data)
}

/// Sets option `name` to `value`.  The names are nbdcopy's long options
/// without the dashes: "connections", "requests", "request-size",
/// "queue-size", "sparse", "threads", "allocated", "destination-is-zero"
/// (or "target-is-zero"), "flush", "no-extents", "synchronous", "verbose"
/// (pass NBDCPY_LOG_INFO and NBDCPY_LOG_DEBUG messages to the log
/// callback); and nbdcpy's own:
///  - "timeout": seconds without any I/O completing, while only reads,
///    writes and block status queries are outstanding, after which the
///    copy fails with ETIMEDOUT (default 60; 0: never).  It also bounds
///    nbdcpy_connect (and nbdcpy_open): connecting to the servers and
///    their handshakes.
///  - "slow-timeout": the same limit while a FLUSH, WRITE_ZEROES (also
///    the up-front zeroing), fsync or fallocate is outstanding, which can
///    legitimately take long (default 0: never, like nbdcopy).
///  - "splice": "auto" (default), "1" or "0", see nbdcpy(1) --splice.
///  - "engine": how the copy talks to the kernel: "auto" (default:
///    io_uring, or epoll when this process may not set up an io_uring:
///    seccomp profiles of container runtimes, kernel.io_uring_disabled,
///    kernels before 5.11; decided once per nbdcpy_run(), silently but
///    for one NBDCPY_LOG_INFO message), "io_uring" (fails with the
///    kernel's reason where it cannot run) or "epoll" (non-blocking
///    system calls on readiness; every data path works on both).
///    nbdcpy_get_engine() tells which ran.
///  - "retries": how many times to try reconnecting an NBD connection
///    that was lost (reset, EOF, or no I/O for "timeout" seconds) before
///    failing (default 0: never, like nbdcopy); see nbdcpy(1) --retries.
///    Servers run with nbdcpy_config_set_command() and sockets given
///    with nbdcpy_config_set_socket() are not reconnected; nbds://
///    connections run a new TLS session.
///    Since version 0.2.  Since version 0.3 it is also how many times a
///    READ, WRITE, WRITE_ZEROES, TRIM or BLOCK_STATUS the server answered
///    with EIO is sent again (on the same connection, with the same
///    backoff) before the copy fails with the last error; other errors
///    (ENOSPC, EPERM, EROFS, EINVAL, ...) fail at once.  Counted in
///    `retried_requests`; each one is an NBDCPY_LOG_INFO message.
///  - "retry-delay": seconds (fractions allowed) before the first
///    reconnect attempt or resend, doubled for each further one up to 30
///    (default 1).  Since version 0.2.
///  - "rate": most bytes per second read from the source, over all
///    connections and threads ("20M", also "20M/s"; default 0: no limit).
///    A token bucket that starts empty, bursts of at most 4 requests;
///    unless "request-size" is set, requests are at most 1/8 s's worth
///    (at least 64k).  Since version 0.2.
///  - "offset", "length", "destination-offset" (sizes): copy only
///    `length` bytes (default: to the source's end) from `offset`
///    (default 0) to `destination-offset` (default: `offset`).
///    nbdcpy_open checks the range against both sizes; the destination
///    outside it is left untouched (a regular file is not truncated).
///  - "dirty-bitmap": a qemu bitmap name; copy only the blocks the NBD
///    source's meta context "qemu:dirty-bitmap:NAME" marks dirty onto the
///    previous copy (clean blocks are neither read nor written).
///    nbdcpy_open fails with ENOTSUP naming the bitmap when the server
///    does not offer it, and with EINVAL combined with
///    "destination-is-zero", a source that is not NBD, or a stream
///    destination.  Stats then count the dirty bytes as `size` (shrinking
///    from the range's length as clean blocks are found) and the clean
///    bytes as `bytes_skipped`.
///  - "ranges-file": copy only the areas this file lists, one
///    "OFFSET LENGTH" a line (sizes as above; blank lines and "#"
///    comments ignored), "-" for standard input; see
///    nbdcpy_config_set_ranges().  The file is read and checked by
///    nbdcpy_open/nbdcpy_connect, before anything is written.  Since
///    version 0.3.
///  - "tls-certificates", "tls-verify-peer", "tls-hostname",
///    "tls-psk-file", "tls-username": TLS settings for every nbds://
///    endpoint whose URI does not give them (the URI's query parameters of
///    the same names, and its user, win; a URI naming certificates or a
///    PSK file takes neither from here).
///  - "blkhash": compute the block hash of the source while copying, as
///    nbdcopy 1.24's --blkhash and blksum do: "DIGEST[/BLOCKSIZE]" (md5,
///    sha1, sha224, sha256, sha384, sha512; the size in bytes or with a
///    suffix such as "64k", "1M"), NULL or "" for "sha256/64k".  Read it
///    with nbdcpy_get_blkhash() after nbdcpy_run().
///  - "blkhash-file": after a successful copy, write the block hash in
///    lower-case hexadecimal and a newline to this file; implies
///    "blkhash".
///  - "verify" (flag): after the copy, read the destination back (its
///    holes through extents), compute the same block hash and fail with
///    EIO, naming the offset of the first block that differs, if it is
///    not the source's.  nbdcpy_open() refuses it (EINVAL) for
///    destinations that cannot be read back: "-", "null:", streams and
///    server commands.
///  - "engine": "auto" (default), "io_uring" or "epoll": how the copy
///    talks to the kernel.
///  - "socket-dir": an absolute directory (at most 80 bytes) in which
///    the private directory holding the listening socket of each
///    nbdcpy_config_set_command() server is made (default: $TMPDIR, else
///    /tmp).  Since version 0.3.
///  - "page-cache": what the copy leaves in the host's page cache of a
///    local file or block device.  "drop" (default): written pages are
///    written back and dropped some distance behind the copy (and at its
///    end), source pages the copy brought in are dropped, pages cached
///    before it stay cached (nbdcopy's behaviour, done better on the
///    source side).  "keep": nothing is dropped.  Files on tmpfs are
///    left alone either way.  Since version 0.3.
///  - "checkpoint": a file path: record there which parts of the copy the
///    destination made durable (behind a FLUSH or fsync), and resume from
///    it when it exists; removed after a successful run.  A file made for
///    another copy, damaged or not a checkpoint, a changed source, a
///    stream endpoint, or "blkhash"/"verify" with it: EINVAL at open,
///    before anything is written.  Since version 0.3.
///  - "checkpoint-interval": seconds between checkpoints at most (default
///    1, fractions allowed; 0: only every GiB and at the end).  Since
///    version 0.3.
///
/// Tuning, supported and stable like the options above; the defaults are
/// what measured best, so they are for measurements and unusual storage:
///  - "fast-zero" (default 1): 0 never zeroes an NBD destination up front.
///  - "uring-file-writes" (default 0): 1 writes regular-file destinations
///    through io_uring instead of pwrite from the worker thread.
///  - "file-lock" (default 1): 0 lets lanes write one regular file
///    concurrently instead of one at a time.
///  - "pipe-size" (default "auto": 4 request sizes, at least 1M): the
///    splice pipes' capacity, 4k to 1G.
///
/// "auto" restores the default of "connections", "request-size",
/// "sparse" and "pipe-size", which depends on the copy.  Flags take NULL,
/// "1" or "0"; sizes take nbdcopy's human forms ("1M", "256k").  Unknown
/// names and bad values are errors (EINVAL) that say which.  No
/// environment variable changes an option (see nbdcpy(3), ENVIRONMENT,
/// for the few the library reads).  nbdcpy_config_key() lists the names,
/// nbdcpy_config_get() reads a value back.
///
/// Pointers: `config` is NULL or a config pointer; `name` and `value` are NULL or
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set(
    config: *mut Config,
    name: *const c_char,
    value: *const c_char,
) -> c_int {
    guard(-1, || {
        // SAFETY: per this function's contract.
        let name = unsafe { str_arg(name, "name") }?;
        let value = if value.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { str_arg(value, "value") }?)
        };
        with_config(config, |c| c.cfg.set(name, value))?;
        Ok(0)
    })
}

/// One area of a range list: `length` bytes at `offset`.  Since version
/// 0.3.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct nbdcpy_range {
    pub offset: u64,
    pub length: u64,
}

/// Copies only these `n` areas, each from the source to the same offset
/// of the destination (CBT-driven incremental copies); nothing else of
/// the destination is written (a regular file is neither truncated nor
/// extended).  The areas may come in any order, overlap or touch: they
/// are sorted and merged.  Inside an area holes of the source become
/// zeroes on the destination.  The array is copied: the caller may free
/// it when this returns.  `n` 0 (then `ranges` may be NULL) sets an empty
/// list: nothing is copied.  Replaces an earlier list or "ranges-file".
///
/// Fails with EINVAL, changing nothing, for a list that is invalid in
/// itself: a zero length, or an offset plus length past 2^63 - 1.  Areas
/// past the end of the source or the destination, and the options a
/// range list cannot be combined with ("offset", "length",
/// "destination-offset", "dirty-bitmap", "blkhash"), fail in
/// nbdcpy_open/nbdcpy_connect, before anything is written.  Stats count
/// the merged areas' length as `size`; "verify" reads back only the
/// areas.  Since version 0.3.
///
/// Pointers: `config` is NULL or a config pointer; `ranges` points to
/// `n` areas (or is NULL when `n` is 0).
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_ranges(
    config: *mut Config,
    ranges: *const nbdcpy_range,
    n: usize,
) -> c_int {
    guard(-1, || {
        with_config(config, |_| Ok(()))?;
        let areas: &[nbdcpy_range] = if n == 0 {
            &[]
        } else if ranges.is_null() {
            return Err(null("ranges"));
        } else if n > isize::MAX as usize / std::mem::size_of::<nbdcpy_range>() {
            return Err(Error::invalid(format!("n {n} is too large")));
        } else {
            // SAFETY: per this function's contract, `n` areas at `ranges`.
            unsafe { std::slice::from_raw_parts(ranges, n) }
        };
        let mut list = Vec::with_capacity(areas.len());
        for (i, r) in areas.iter().enumerate() {
            crate::rangelist::check_area(r.offset, r.length)
                .map_err(|e| Error::invalid(format!("nbdcpy_config_set_ranges: area {i}: {e}")))?;
            list.push(crate::rangelist::Area {
                offset: r.offset,
                length: r.length,
            });
        }
        let list = std::sync::Arc::new(crate::rangelist::RangeList::new(list)?);
        with_config(config, |c| {
            c.cfg.ranges = Some(list);
            c.cfg.ranges_file = None;
            Ok(0)
        })
    })
}

/// The current value of option `name` of `config` (any name
/// nbdcpy_config_set() takes), as a string nbdcpy_config_set() accepts
/// and that keeps the option as it is: "1" or "0" for flags, decimal
/// numbers (sizes in bytes, "retry-delay" and "timeout" in seconds),
/// "auto" where the copy picks the value, and "" for an option that is
/// not set and has no default ("length", "dirty-bitmap", the "tls-*"
/// keys, "socket-dir", "blkhash" when off).  Returns a string the caller
/// frees with free(), or NULL on error (EINVAL for an unknown name, which
/// the message names).  Since version 0.3.
///
/// Pointers: `config` is NULL or a config pointer; `name` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_get(
    config: *const Config,
    name: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: per this function's contract.
        let name = unsafe { str_arg(name, "name") }?;
        let v = with_config(config, |c| c.cfg.get(name))?;
        let len = v.len();
        // SAFETY: malloc of len + 1 bytes (never 0); checked for NULL
        // before use.
        let p = unsafe { libc::malloc(len + 1) }.cast::<u8>();
        if p.is_null() {
            return Err(Error::new(libc::ENOMEM, "nbdcpy_config_get: out of memory"));
        }
        // SAFETY: p has len + 1 writable bytes; v has len readable ones
        // (values never hold a NUL: set refuses them, C strings cannot).
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), p, len);
            *p.add(len) = 0;
        }
        Ok(p.cast::<c_char>())
    })
}

/// The name of option number `index` (0, 1, ...), in static storage, or
/// NULL once `index` is past the last one: every name
/// nbdcpy_config_set() and nbdcpy_config_get() take ("target-is-zero"
/// too, the other name of "destination-is-zero").  A newer library may
/// list more.  Never fails; does not touch nbdcpy_get_error().  Since
/// version 0.3.
#[no_mangle]
pub extern "C" fn nbdcpy_config_key(index: usize) -> *const c_char {
    static KEYS: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
    catch_unwind(|| {
        let keys = KEYS.get_or_init(|| {
            crate::config::OPTION_NAMES
                .iter()
                .filter_map(|k| CString::new(*k).ok())
                .collect()
        });
        keys.get(index).map_or(std::ptr::null(), |k| k.as_ptr())
    })
    .unwrap_or(std::ptr::null())
}

/// Registers a progress callback (see nbdcpy_progress_cb), called at most
/// every `interval_ms` milliseconds (0 means 1000; the finest step is
/// 10 ms) on the thread running nbdcpy_run().  `cb` NULL removes it (and
/// still sets the interval).  Handles already made keep what they had.
///
/// Pointers: `config` is NULL or a config pointer; `user_data` is passed back
/// untouched.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_progress(
    config: *mut Config,
    cb: nbdcpy_progress_cb,
    user_data: *mut c_void,
    interval_ms: u32,
) -> c_int {
    let data = UserData::new(user_data, None);
    guard(-1, || set_progress(config, cb, data, Some(interval_ms)))
}

/// As nbdcpy_config_set_progress(), with `free_cb` (NULL: none) to
/// release `user_data`, and keeping the interval set last (1000 ms by
/// default; nbdcpy_config_set_progress(config, NULL, NULL, interval_ms)
/// sets another).  Handles copy the config's callbacks, so the library
/// calls `free_cb(user_data)` exactly once, when it will never call `cb`
/// again: when the callback has been replaced or removed (or the config
/// freed) and every handle made from the config while it had the callback
/// is closed.  If this call fails, or `cb` is NULL, `free_cb` is called
/// before it returns.  `free_cb` runs on the thread of the call that lets
/// go last (this function, nbdcpy_config_free(), nbdcpy_close(), or
/// nbdcpy_run() for a handle closed while it ran), with no lock of the
/// library held: it may call nbdcpy_* functions.  Since version 0.3.
///
/// Pointers: `config` is NULL or a config pointer; `user_data` is passed back
/// untouched, to `cb` and to `free_cb`.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_progress_free(
    config: *mut Config,
    cb: nbdcpy_progress_cb,
    user_data: *mut c_void,
    free_cb: nbdcpy_free_cb,
) -> c_int {
    let data = UserData::new(user_data, free_cb);
    guard(-1, || set_progress(config, cb, data, None))
}

fn set_progress(
    config: *mut Config,
    cb: nbdcpy_progress_cb,
    data: Arc<UserData>,
    interval_ms: Option<u32>,
) -> Result<c_int, Error> {
    let new = Callback::new(cb, data);
    let old = with_config(config, move |c| {
        if let Some(ms) = interval_ms {
            c.progress_ms = if ms == 0 { 1000 } else { ms };
        }
        Ok(std::mem::replace(&mut c.progress, new))
    })?;
    // Released outside the config's lock.
    drop(old);
    Ok(0)
}

/// Registers a log callback (see nbdcpy_log_cb).  Without one, messages
/// are dropped: the library never prints.  `cb` NULL removes it.
/// Handles already made keep what they had.
///
/// Pointers: `config` is NULL or a config pointer; `user_data` is passed back
/// untouched.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_log(
    config: *mut Config,
    cb: nbdcpy_log_cb,
    user_data: *mut c_void,
) -> c_int {
    let data = UserData::new(user_data, None);
    guard(-1, || set_log(config, cb, data))
}

/// As nbdcpy_config_set_log(), with `free_cb` (NULL: none) to release
/// `user_data`, called exactly once when the library will never call
/// `cb` again, as nbdcpy_config_set_progress_free() says.  Since version
/// 0.3.
///
/// Pointers: `config` is NULL or a config pointer; `user_data` is passed back
/// untouched, to `cb` and to `free_cb`.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_log_free(
    config: *mut Config,
    cb: nbdcpy_log_cb,
    user_data: *mut c_void,
    free_cb: nbdcpy_free_cb,
) -> c_int {
    let data = UserData::new(user_data, free_cb);
    guard(-1, || set_log(config, cb, data))
}

fn set_log(config: *mut Config, cb: nbdcpy_log_cb, data: Arc<UserData>) -> Result<c_int, Error> {
    let new = Callback::new(cb, data);
    let old = with_config(config, move |c| Ok(std::mem::replace(&mut c.log, new)))?;
    drop(old);
    Ok(0)
}

/// Makes `side` (NBDCPY_SOURCE or NBDCPY_DESTINATION) an NBD server run as
/// a subprocess through systemd socket activation: `argv` is a
/// NULL-terminated array (argv[0] is searched in PATH), like nbdcopy's
/// `[ CMD ARGS ... ]`.  Pass NULL as that side's string to nbdcpy_open().
/// The server is killed (SIGTERM, after 2 s SIGKILL) and reaped when the
/// handle is closed, or when the nbdcpy_open()/nbdcpy_connect() that
/// started it fails, and not before, whatever threads those calls are
/// made on and whether those threads have exited since.  It dies with the
/// host process, SIGKILL included.  It gets the caller's fds 0, 1 and 2
/// and no other descriptor of the host's.  `argv` NULL clears the
/// command.
///
/// Pointers: `config` is NULL or a config pointer; `argv` is NULL or a
/// NULL-terminated array of NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_command(
    config: *mut Config,
    side: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(-1, || {
        let idx = side_index(side)?;
        let cmd = if argv.is_null() {
            None
        } else {
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
            Some(v)
        };
        with_config(config, |c| {
            c.commands[idx] = cmd;
            Ok(0)
        })
    })
}

/// Frees a config.  NULL is allowed.  A pointer that is not a live config
/// (freed already, or never one) is detected and ignored, and
/// nbdcpy_get_error() then says so (see docs/c-api.md, "Handles").
///
/// Any pointer value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_config_free(config: *mut Config) {
    guard((), || {
        if !config.is_null() {
            CONFIGS.remove(config).map_err(|r| refused("config", r))?;
        }
        Ok(())
    })
}

/// Makes `side` (NBDCPY_SOURCE or NBDCPY_DESTINATION) an NBD server on a
/// socket the caller has already connected (a socketpair with a server
/// it started, a vsock, a socket systemd passed): nbdcpy runs the NBD
/// handshake on it, asking for `export_name` (NULL or "": the server's
/// default export).  Pass NULL as that side's string to nbdcpy_open() or
/// nbdcpy_create().  That side then uses this one connection (no
/// multi-conn).  `fd` -1 clears the socket.
///
/// Ownership: the caller's `fd` stays the caller's.  nbdcpy duplicates it
/// at once (F_DUPFD_CLOEXEC), so the caller may close its `fd` as soon as
/// this returns; it must not read or write the socket while nbdcpy uses
/// it.  The duplicate belongs to the config, moves to the handle
/// nbdcpy_create() or nbdcpy_open() makes from it (so one socket serves
/// one handle: a second handle from the same config fails with EBUSY),
/// and is closed by nbdcpy_close() after NBD_CMD_DISC and
/// shutdown(SHUT_RDWR), or by nbdcpy_config_free() if no handle took it.
/// The socket is put into blocking mode (O_NONBLOCK is shared by
/// duplicates).  Fails with EBADF for a bad `fd`, ENOTSOCK for one that is
/// not a stream socket.  Since version 0.2.
///
/// Pointers: `config` is NULL or a config pointer; `export_name` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_config_set_socket(
    config: *mut Config,
    side: c_int,
    fd: c_int,
    export_name: *const c_char,
) -> c_int {
    guard(-1, || {
        let idx = side_index(side)?;
        let export = if export_name.is_null() {
            ""
        } else {
            // SAFETY: per this function's contract.
            unsafe { str_arg(export_name, "export_name") }?
        };
        // Check the config first: a bad config duplicates nothing.
        with_config(config, |_| Ok(()))?;
        let sock = if fd == -1 {
            None
        } else if fd < 0 {
            return Err(Error::new(libc::EBADF, format!("bad socket fd {fd}")));
        } else {
            Some(GivenSocket::dup(fd, export)?)
        };
        with_config(config, |c| {
            c.sockets[idx] = sock;
            Ok(0)
        })
    })
}

fn side_index(side: c_int) -> Result<usize, Error> {
    match side {
        NBDCPY_SOURCE => Ok(0),
        NBDCPY_DESTINATION => Ok(1),
        _ => Err(Error::invalid(format!("bad side {side}"))),
    }
}

/// Opens a copy from `source` to `destination`: connects to both ends,
/// negotiates, and checks sizes (a destination smaller than the source is
/// an error here, before anything is written).  Endpoints are what nbdcopy
/// accepts: an NBD URI, a file or block device path, "-" (stdin/stdout),
/// "null:" (destination only), or NULL for a side given as a command with
/// nbdcpy_config_set_command() or as a socket with
/// nbdcpy_config_set_socket().  `config` may be NULL (defaults).
/// Returns NULL on error; EMFILE when 4096 handles are open.  Close with
/// nbdcpy_close().  nbdcpy_stats() on the new handle already reports the
/// source's size (0 for a stream source).
///
/// The same as nbdcpy_create() then nbdcpy_connect() (closing the handle
/// if that fails): waiting for a server is bounded by the "timeout"
/// option.  To cancel an open from another thread, use those two.
///
/// Pointers: strings are NULL or NUL-terminated; `config` is NULL or a config
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_open(
    source: *const c_char,
    destination: *const c_char,
    config: *const Config,
) -> *mut Handle {
    guard(std::ptr::null_mut(), || {
        // SAFETY: per this function's contract.
        let p = unsafe { create(source, destination, config) }?;
        if let Err(e) = connect(p) {
            let _ = HANDLES.remove(p);
            return Err(e);
        }
        Ok(p)
    })
}

/// A handle for a copy from `source` to `destination` (as for
/// nbdcpy_open()), not yet connected: nothing is opened or connected
/// until nbdcpy_connect().  The handle exists meanwhile, so another
/// thread can nbdcpy_cancel() the connect, and nbdcpy_stats() works (all
/// counters 0).  Arguments are checked here; the config is copied (free
/// it whenever you like).  Close with nbdcpy_close().  Since version 0.2.
///
/// Pointers: strings are NULL or NUL-terminated; `config` is NULL or a config
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_create(
    source: *const c_char,
    destination: *const c_char,
    config: *const Config,
) -> *mut Handle {
    // SAFETY: per this function's contract.
    guard(std::ptr::null_mut(), || unsafe {
        create(source, destination, config)
    })
}

/// # Safety
/// As nbdcpy_create.
unsafe fn create(
    source: *const c_char,
    destination: *const c_char,
    config: *const Config,
) -> Result<*mut Handle, Error> {
    let c = if config.is_null() {
        ConfigData::default()
    } else {
        with_config(config, |c| Ok(c.clone()))?
    };
    let spec = |p: *const c_char, idx: usize, what: Side| -> Result<Spec, Error> {
        let given = [
            !p.is_null(),
            c.commands[idx].is_some(),
            c.sockets[idx].is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(Error::invalid(format!(
                "{what} given more than once (as a string, a command or a socket)"
            ))
            .on(what));
        }
        if let Some(argv) = &c.commands[idx] {
            return Ok(Spec::Command(argv.clone()));
        }
        if let Some(s) = &c.sockets[idx] {
            // The config hands its socket to this handle alone.
            return s.take().map(Spec::Socket).ok_or_else(|| {
                Error::new(
                    libc::EBUSY,
                    format!(
                        "{what} socket fd {} was already given to another handle",
                        s.caller_fd
                    ),
                )
                .on(what)
            });
        }
        // SAFETY: per this function's contract.
        Ok(Spec::parse(
            unsafe { str_arg(p, if idx == 0 { "source" } else { "destination" }) }
                .map_err(|e| e.on(what))?,
        ))
    };
    let src = spec(source, 0, Side::Source)?;
    let dst = spec(destination, 1, Side::Destination)?;
    let shared = Arc::new(Shared::new());
    let h = Box::new(Handle {
        job: Mutex::new(None),
        pending: Mutex::new(Some(Pending {
            src,
            dst,
            cfg: c.clone(),
        })),
        shared: shared.clone(),
        progress: c.progress.clone(),
        progress_ms: c.progress_ms,
        finished: std::sync::atomic::AtomicBool::new(false),
    });
    let p: *mut Handle = HANDLES
        .insert(h)
        .map_err(|_| Error::new(libc::EMFILE, "too many open nbdcpy handles"))?;
    // nbdcpy_cancel sets a bit in the handle's slot, never touching the
    // job: the job polls that bit.
    shared.watch_cancel(Box::new(HANDLES.cancel_watch(p)));
    Ok(p)
}

/// Connects a handle from nbdcpy_create(): opens both ends, negotiates,
/// and checks sizes, as nbdcpy_open() does.  Every wait for a server
/// (connect and handshake, both ends together) is bounded by the
/// "timeout" option (ETIMEDOUT; "timeout" 0: no bound), and
/// nbdcpy_cancel() from another thread (or a signal handler), or
/// nbdcpy_close(), ends it within about 50 ms with ECANCELED.  On failure
/// everything opened so far is closed (server subprocesses reaped); the
/// handle can then only be closed.  A handle connects once (EISCONN
/// after a success, EALREADY after a failure).  Since version 0.2.
///
/// Any pointer value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_connect(h: *mut Handle) -> c_int {
    guard(-1, || connect(h).map(|()| 0))
}

fn connect(h: *mut Handle) -> Result<(), Error> {
    let h = handle(h)?;
    let mut job = busy_or(&h.job, "nbdcpy_connect")?;
    if job.is_some() {
        return Err(Error::new(libc::EISCONN, "the handle is already connected"));
    }
    let Pending { src, dst, cfg: c } = lock(&h.pending).take().ok_or_else(|| {
        Error::new(
            libc::EALREADY,
            "the handle's connect failed before: close it",
        )
    })?;
    let mut j = Job::open_with(src, dst, c.cfg.clone(), h.shared.clone())?;
    if let Some(log) = c.log.clone() {
        // The logger holds the callback's data until the job is dropped.
        j.set_logger(Box::new(move |level, msg| {
            let m = CString::new(msg.replace('\0', " ")).unwrap_or_default();
            (log.f)(log.ptr(), level as c_int, m.as_ptr());
        }));
    }
    *job = Some(j);
    Ok(())
}

/// The handle's job, or EBUSY at once when nbdcpy_run or nbdcpy_connect
/// holds it on another thread (or on this one, from a callback): a
/// second caller never waits for a whole copy.
fn busy_or<'a>(
    job: &'a Mutex<Option<Job>>,
    call: &str,
) -> Result<MutexGuard<'a, Option<Job>>, Error> {
    match job.try_lock() {
        Ok(j) => Ok(j),
        Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => Err(Error::new(
            libc::EBUSY,
            format!("{call}: nbdcpy_run or nbdcpy_connect is running on this handle"),
        )),
    }
}

/// The live handle `h` names, held until the guard drops.
fn handle(h: *const Handle) -> Result<handles::Guard<'static, Handle>, Error> {
    if h.is_null() {
        return Err(null("handle"));
    }
    HANDLES.get(h).map_err(|r| refused("handle", r))
}

/// Copies everything; blocks until done, failed or cancelled.  Returns 0
/// only when every byte was written and acknowledged (and flushed with
/// "flush").  Cancelled copies fail with errno ECANCELED.  A handle runs
/// once (EALREADY after that).  While it runs (or nbdcpy_connect does),
/// a second nbdcpy_run (or nbdcpy_connect, nbdcpy_get_blkhash) on the
/// same handle, from another thread or a callback, fails at once with
/// EBUSY and leaves the running one alone.
///
/// Any pointer value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_run(h: *mut Handle) -> c_int {
    guard(-1, || {
        let h = handle(h)?;
        let mut job = busy_or(&h.job, "nbdcpy_run")?;
        let job = job.as_mut().ok_or_else(|| {
            Error::new(
                libc::ENOTCONN,
                "nbdcpy_run: the handle is not connected (see nbdcpy_connect)",
            )
        })?;
        let interval = Duration::from_millis(h.progress_ms as u64);
        let mut cb = |s: &Shared| -> bool {
            let Some(p) = &h.progress else { return true };
            let st = snapshot(s, false);
            (p.f)(p.ptr(), &st) == 0
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
        size_known: s.size_known.load(Relaxed) as u32,
        reserved: 0,
        reconnects: s.reconnects.load(Relaxed),
        retried_requests: s.retried_requests.load(Relaxed),
        resumed_bytes: s.resumed_bytes.load(Relaxed),
    }
}

/// Copies the current counters into `out` (`out_size` bytes: pass
/// sizeof(struct nbdcpy_stats)).  Callable from any thread, from
/// nbdcpy_open() on, also while nbdcpy_run() runs.  A larger struct (newer
/// header) gets its extra bytes zeroed; a smaller one gets a prefix.
///
/// Pointers: `out` is NULL or points to `out_size` writable bytes; any `h` value is
/// accepted.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_stats(
    h: *const Handle,
    out: *mut nbdcpy_stats,
    out_size: usize,
) -> c_int {
    guard(-1, || {
        let h = handle(h)?;
        if out.is_null() {
            return Err(null("out"));
        }
        if out_size < 8 {
            return Err(Error::invalid(format!("out_size {out_size} is too small")));
        }
        let st = snapshot(&h.shared, h.finished.load(Relaxed));
        let n = out_size.min(std::mem::size_of::<nbdcpy_stats>());
        // SAFETY: `out` has out_size writable bytes; we write n <= out_size
        // from our struct (no padding: every byte is a field), then zero
        // the rest of the caller's struct.
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

/// The I/O engine the copy ran on: "io_uring" or "epoll" (the "engine"
/// key; with "auto", epoll where the kernel refuses io_uring).  NULL
/// before nbdcpy_run() has chosen one (and for a NULL or closed handle);
/// the string is static.  Callable from any thread, also while
/// nbdcpy_run() runs.  Does not touch nbdcpy_get_error().
///
/// Any `h` value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_get_engine(h: *const Handle) -> *const c_char {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Ok(h) = handle(h) else {
            return std::ptr::null();
        };
        match h.shared.engine.get() {
            Some(crate::engine::EngineKind::IoUring) => c"io_uring".as_ptr(),
            Some(crate::engine::EngineKind::Epoll) => c"epoll".as_ptr(),
            None => std::ptr::null(),
        }
    }));
    r.unwrap_or(std::ptr::null())
}

/// Copies the block hash ("blkhash" or "verify") computed by a successful
/// nbdcpy_run() into `buf`, which has `len` bytes, and returns its length
/// in bytes: 16 (md5), 20 (sha1), 28, 32, 48 or 64 (sha512); never more
/// than 64.  `buf` may be NULL when `len` is 0: only the length is
/// returned.  Errors (-1, nothing written): EINVAL when neither "blkhash"
/// nor "verify" was set; ENODATA before nbdcpy_run() has succeeded;
/// EBUSY while it runs; ERANGE when `len` is too small.  The command
/// prints it in hexadecimal, as nbdcopy does.
///
/// Pointers: `buf` is NULL or points to `len` writable bytes; any `h` value is
/// accepted.
#[no_mangle]
pub unsafe extern "C" fn nbdcpy_get_blkhash(h: *const Handle, buf: *mut u8, len: usize) -> c_int {
    guard(-1, || {
        let h = handle(h)?;
        let job = busy_or(&h.job, "nbdcpy_get_blkhash")?;
        let job = job
            .as_ref()
            .ok_or_else(|| Error::new(libc::EINVAL, "handle has no job"))?;
        if !job.hashes() {
            return Err(Error::invalid(
                "nbdcpy_get_blkhash: neither \"blkhash\" nor \"verify\" was set",
            ));
        }
        let digest = job.blkhash().ok_or_else(|| {
            Error::new(
                libc::ENODATA,
                "nbdcpy_get_blkhash: no block hash: nbdcpy_run has not succeeded",
            )
        })?;
        let d = digest.as_bytes();
        if buf.is_null() && len == 0 {
            return Ok(d.len() as c_int);
        }
        if buf.is_null() {
            return Err(null("buf"));
        }
        if len < d.len() {
            return Err(Error::new(
                libc::ERANGE,
                format!(
                    "nbdcpy_get_blkhash: len {len} is less than the digest's {} bytes",
                    d.len()
                ),
            ));
        }
        // SAFETY: `buf` has `len` >= d.len() writable bytes (contract).
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf, d.len()) };
        Ok(d.len() as c_int)
    })
}

/// Asks a running (or future) nbdcpy_run() to stop; it then fails with
/// ECANCELED within about 100 ms.  Async-signal-safe: callable from any
/// thread and from a signal handler (also in a library loaded with
/// dlopen()).  It only sets a bit in the handle's slot with an atomic
/// compare-and-swap: no lock, no allocation, no thread-local storage,
/// and the handle's memory is not touched.
///
/// Returns 0, or -1 with `errno` set (EFAULT: `h` is NULL; EINVAL: `h` is
/// closed or not a handle).  Unlike every other call, a failing
/// nbdcpy_cancel() does not change nbdcpy_get_error() and
/// nbdcpy_get_errno() (they are thread-local); a signal handler that
/// calls it should save and restore `errno`, as for any call there.
///
/// Any pointer value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_cancel(h: *mut Handle) -> c_int {
    // Nothing thread-local here (a dlopen'd library reaches its
    // thread-locals through __tls_get_addr, which may allocate): errno
    // is libc's, which is async-signal-safe to set.
    let errno = if h.is_null() {
        libc::EFAULT
    } else {
        match HANDLES.cancel(h) {
            Ok(()) => return 0,
            Err(Refused::NotOurs | Refused::Stale) => libc::EINVAL,
        }
    };
    // SAFETY: __errno_location returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() = errno };
    -1
}

/// Closes a handle: disconnects, kills and reaps server subprocesses,
/// frees everything.  NULL is allowed.  A pointer that is not an open
/// handle (closed already, or never one) is detected and ignored, and
/// nbdcpy_get_error() then says so.  The pointer is invalid as soon as
/// this is called.  If nbdcpy_run() or nbdcpy_stats() is still running on
/// it (in another thread, or this is called from the progress callback),
/// the run is cancelled and the handle is freed when the last of those
/// calls returns, on that call's thread.
///
/// Any pointer value is accepted.
#[no_mangle]
pub extern "C" fn nbdcpy_close(h: *mut Handle) {
    guard((), || {
        if !h.is_null() {
            HANDLES.remove(h).map_err(|r| refused("handle", r))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod panic_test;
