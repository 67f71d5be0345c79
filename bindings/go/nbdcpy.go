// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

// Package nbdcpy copies disk images to and from NBD servers, files and
// block devices with libnbdcpy (nbdcpy(3)): a thin layer over its C API,
// which does all the copying.
//
//	cfg := nbdcpy.NewConfig()
//	cfg.Set("connections", "4")
//	stats, err := nbdcpy.Copy(ctx, "nbd+unix:///?socket=/run/src.sock", "disk.img", cfg)
//
// Everything here may be used from any goroutine; nothing depends on the
// OS thread a handle was made on.  The library's errors read with
// nbdcpy_get_error are per thread, so each call that can fail runs
// locked to its thread until its error is read.
package nbdcpy

/*
#cgo pkg-config: nbdcpy
#include <stdint.h>
#include <stdlib.h>
#include <nbdcpy.h>

extern int nbdcpyGoProgress(uintptr_t h, struct nbdcpy_stats *st);
extern void nbdcpyGoLog(uintptr_t h, int level, char *msg);
extern void nbdcpyGoFree(uintptr_t h);

static int progress_tramp(void *ud, const struct nbdcpy_stats *st)
{
  return nbdcpyGoProgress((uintptr_t) ud, (struct nbdcpy_stats *) st);
}

static void log_tramp(void *ud, int level, const char *msg)
{
  nbdcpyGoLog((uintptr_t) ud, level, (char *) msg);
}

static void free_tramp(void *ud)
{
  nbdcpyGoFree((uintptr_t) ud);
}

static int set_progress(struct nbdcpy_config *c, uintptr_t h, uint32_t ms)
{
  if (nbdcpy_config_set_progress(c, NULL, NULL, ms) != 0) {
    free_tramp((void *) h);
    return -1;
  }
  return nbdcpy_config_set_progress_free(c, progress_tramp, (void *) h, free_tramp);
}

static int set_log(struct nbdcpy_config *c, uintptr_t h)
{
  return nbdcpy_config_set_log_free(c, h ? log_tramp : NULL, (void *) h,
                                    h ? free_tramp : NULL);
}
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Side names an endpoint: the source or the destination.
type Side int

const (
	// Source is the side copied from.
	Source Side = C.NBDCPY_SOURCE
	// Destination is the side copied to.
	Destination Side = C.NBDCPY_DESTINATION
	// NoSide marks an error about neither end (a bad argument, a
	// cancellation).
	NoSide Side = -1
)

func (s Side) String() string {
	switch s {
	case Source:
		return "source"
	case Destination:
		return "destination"
	}
	return "none"
}

// Log levels passed to a SetLog function.
const (
	LogWarning = C.NBDCPY_LOG_WARNING
	LogInfo    = C.NBDCPY_LOG_INFO
	LogDebug   = C.NBDCPY_LOG_DEBUG
)

// Error is a failed libnbdcpy call: the library's message (naming the
// endpoint, offset and cause), its errno and the side it is about.
// errors.Is(err, syscall.ECONNRESET) tests the errno; a copy stopped by
// its context also matches context.Canceled (or DeadlineExceeded).
type Error struct {
	Msg   string
	Errno syscall.Errno
	Side  Side
	ctx   error
}

func (e *Error) Error() string { return "nbdcpy: " + e.Msg }

// Unwrap gives the errno.
func (e *Error) Unwrap() error { return e.Errno }

// Is matches the context error that cancelled the copy.
func (e *Error) Is(target error) bool { return e.ctx != nil && target == e.ctx }

// lastError is the error of the last failed call on this OS thread
// (the caller is locked to it).
func lastError() error {
	msg := "unknown error"
	if m := C.nbdcpy_get_error(); m != nil {
		msg = C.GoString(m)
	}
	errno := syscall.Errno(C.nbdcpy_get_errno())
	if errno == 0 {
		errno = syscall.EIO
	}
	return &Error{Msg: msg, Errno: errno, Side: Side(C.nbdcpy_get_error_endpoint())}
}

// call runs f, a C call returning 0 or -1, and reads its error on the
// same OS thread.
func call(f func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if f() != 0 {
		return lastError()
	}
	return nil
}

// Range is one area of a range list: Length bytes at Offset.
type Range struct {
	Offset, Length uint64
}

// Stats are a copy's counters (struct nbdcpy_stats).
type Stats struct {
	Size            uint64 // bytes to copy
	BytesDone       uint64 // completed (written, zeroed or skipped)
	BytesCopied     uint64
	BytesZeroed     uint64
	BytesSkipped    uint64
	Requests        uint64
	Elapsed         time.Duration
	BytesMemcpy     uint64
	Syscalls        uint64
	Connections     uint32
	Finished        bool
	BytesSpliced    uint64
	SizeKnown       bool
	Reconnects      uint64
	RetriedRequests uint64
	ResumedBytes    uint64
}

func statsOf(s *C.struct_nbdcpy_stats) *Stats {
	return &Stats{
		Size:            uint64(s.size),
		BytesDone:       uint64(s.bytes_done),
		BytesCopied:     uint64(s.bytes_copied),
		BytesZeroed:     uint64(s.bytes_zeroed),
		BytesSkipped:    uint64(s.bytes_skipped),
		Requests:        uint64(s.requests),
		Elapsed:         time.Duration(s.elapsed_ns),
		BytesMemcpy:     uint64(s.bytes_memcpy),
		Syscalls:        uint64(s.syscalls),
		Connections:     uint32(s.connections),
		Finished:        s.finished != 0,
		BytesSpliced:    uint64(s.bytes_spliced),
		SizeKnown:       s.size_known != 0,
		Reconnects:      uint64(s.reconnects),
		RetriedRequests: uint64(s.retried_requests),
		ResumedBytes:    uint64(s.resumed_bytes),
	}
}

// progress is a progress function and the panic it raised, if any.
type progress struct {
	f        func(done, total uint64)
	panicked atomic.Bool
	value    any
}

// Config holds a copy's options (a struct nbdcpy_config).  Handles copy
// it when they are made: changing it later does not change them.  Its
// methods may be called from any goroutine.  Close frees it at once;
// otherwise the garbage collector does.
type Config struct {
	mu       sync.Mutex
	c        *C.struct_nbdcpy_config
	progress func(done, total uint64)
	interval time.Duration
}

// NewConfig returns a config with nbdcopy's defaults.
func NewConfig() *Config {
	var c *C.struct_nbdcpy_config
	err := call(func() C.int {
		c = C.nbdcpy_config_new()
		if c == nil {
			return -1
		}
		return 0
	})
	if err != nil {
		panic(err) // only when 4096 configs are alive at once
	}
	cfg := &Config{c: c, interval: time.Second}
	runtime.SetFinalizer(cfg, (*Config).Close)
	return cfg
}

// Close frees the config (handles made from it keep their copy).
func (cfg *Config) Close() {
	cfg.mu.Lock()
	defer cfg.mu.Unlock()
	if cfg.c != nil {
		C.nbdcpy_config_free(cfg.c)
		cfg.c = nil
	}
}

func (cfg *Config) with(f func(c *C.struct_nbdcpy_config) C.int) error {
	cfg.mu.Lock()
	defer cfg.mu.Unlock()
	if cfg.c == nil {
		return &Error{Msg: "config is closed", Errno: syscall.EINVAL, Side: NoSide}
	}
	return call(func() C.int { return f(cfg.c) })
}

// Set sets a config key (nbdcpy(3): "connections", "request-size",
// "blkhash", "engine", ...) to value.  An empty value is NULL (the flag
// on, or blkhash's default digest).
func (cfg *Config) Set(key, value string) error {
	k := C.CString(key)
	defer C.free(unsafe.Pointer(k))
	var v *C.char
	if value != "" {
		v = C.CString(value)
		defer C.free(unsafe.Pointer(v))
	}
	return cfg.with(func(c *C.struct_nbdcpy_config) C.int { return C.nbdcpy_config_set(c, k, v) })
}

// Get reads a config key back as a string Set accepts.
func (cfg *Config) Get(key string) (string, error) {
	k := C.CString(key)
	defer C.free(unsafe.Pointer(k))
	var out string
	err := cfg.with(func(c *C.struct_nbdcpy_config) C.int {
		v := C.nbdcpy_config_get(c, k)
		if v == nil {
			return -1
		}
		out = C.GoString(v)
		C.free(unsafe.Pointer(v))
		return 0
	})
	return out, err
}

// SetProgress makes handles made from now on call f(done, total) every
// progress interval (SetProgressInterval; 1 s by default) while they
// run, and once more after a successful copy, on the goroutine running
// Run.  A panic in f cancels the copy and Run panics with it.  nil
// removes it.
func (cfg *Config) SetProgress(f func(done, total uint64)) {
	cfg.mu.Lock()
	cfg.progress = f
	cfg.mu.Unlock()
}

// SetProgressInterval sets how often the progress function is called
// (the library's finest step is 10 ms).
func (cfg *Config) SetProgressInterval(d time.Duration) {
	cfg.mu.Lock()
	cfg.interval = d
	cfg.mu.Unlock()
}

// SetLog sends the library's messages to f (level LogWarning, and with
// the "verbose" key LogInfo and LogDebug), on the goroutine running the
// copy.  nil drops them (the default).
func (cfg *Config) SetLog(f func(level int, msg string)) error {
	return cfg.with(func(c *C.struct_nbdcpy_config) C.int {
		var h C.uintptr_t
		if f != nil {
			h = newCallback(f)
		}
		return C.set_log(c, h)
	})
}

// SetRanges makes the copy write only these areas (each to the same
// offset of the destination); nil or empty copies nothing.
func (cfg *Config) SetRanges(ranges []Range) error {
	n := len(ranges)
	var p *C.struct_nbdcpy_range
	if n > 0 {
		p = (*C.struct_nbdcpy_range)(C.malloc(C.size_t(n) * C.sizeof_struct_nbdcpy_range))
		defer C.free(unsafe.Pointer(p))
		a := unsafe.Slice(p, n)
		for i, r := range ranges {
			a[i].offset = C.uint64_t(r.Offset)
			a[i].length = C.uint64_t(r.Length)
		}
	}
	return cfg.with(func(c *C.struct_nbdcpy_config) C.int {
		return C.nbdcpy_config_set_ranges(c, p, C.size_t(n))
	})
}

// SetCommand makes side an NBD server run as a subprocess by socket
// activation (nbdcopy's [ CMD ARGS ... ]); pass "" for that side's
// endpoint.  A nil argv clears it.
func (cfg *Config) SetCommand(side Side, argv []string) error {
	var arr **C.char
	if argv != nil {
		arr = (**C.char)(C.calloc(C.size_t(len(argv)+1), C.size_t(unsafe.Sizeof(uintptr(0)))))
		defer C.free(unsafe.Pointer(arr))
		a := unsafe.Slice(arr, len(argv)+1)
		for i, s := range argv {
			a[i] = C.CString(s)
			defer C.free(unsafe.Pointer(a[i]))
		}
	}
	return cfg.with(func(c *C.struct_nbdcpy_config) C.int {
		return C.nbdcpy_config_set_command(c, C.int(side), arr)
	})
}

// Handle is one copy job (a struct nbdcpy): Create, Connect, Run,
// Close; Stats, Engine and Cancel from any goroutine meanwhile.
type Handle struct {
	mu       sync.Mutex
	h        *C.struct_nbdcpy
	progress *progress
}

func cstr(s string) *C.char {
	if s == "" {
		return nil
	}
	return C.CString(s)
}

// Create makes a handle for a copy from src to dst, not yet connected.
// Endpoints are what nbdcpy(1) takes: an NBD URI, a path, "null:", or ""
// for a side given with SetCommand.  cfg may be nil (defaults).
func Create(src, dst string, cfg *Config) (*Handle, error) {
	s, d := cstr(src), cstr(dst)
	defer C.free(unsafe.Pointer(s))
	defer C.free(unsafe.Pointer(d))
	h := &Handle{}
	create := func(c *C.struct_nbdcpy_config) C.int {
		h.h = C.nbdcpy_create(s, d, c)
		if h.h == nil {
			return -1
		}
		return 0
	}
	if cfg == nil {
		if err := call(func() C.int { return create(nil) }); err != nil {
			return nil, err
		}
	} else if err := cfg.create(h, create); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(h, (*Handle).Close)
	return h, nil
}

// create runs f (nbdcpy_create) on the config, with the progress
// function registered for this handle alone (so its panic is this
// handle's Run's).
func (cfg *Config) create(h *Handle, f func(c *C.struct_nbdcpy_config) C.int) error {
	cfg.mu.Lock()
	defer cfg.mu.Unlock()
	if cfg.c == nil {
		return &Error{Msg: "config is closed", Errno: syscall.EINVAL, Side: NoSide}
	}
	if cfg.progress != nil {
		h.progress = &progress{f: cfg.progress}
		ms := C.uint32_t(cfg.interval / time.Millisecond)
		if ms == 0 {
			ms = 1
		}
		cb := newCallback(h.progress)
		if err := call(func() C.int { return C.set_progress(cfg.c, cb, ms) }); err != nil {
			return err
		}
		// The handle keeps the callback; the config lets go of it.
		defer C.nbdcpy_config_set_progress(cfg.c, nil, nil, 0)
	}
	return call(func() C.int { return f(cfg.c) })
}

// Open is Create then Connect, bounded by the "timeout" key; to cancel
// the connect by a context use those two.
func Open(src, dst string, cfg *Config) (*Handle, error) {
	h, err := Create(src, dst, cfg)
	if err != nil {
		return nil, err
	}
	if err := h.Connect(context.Background()); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func (h *Handle) ptr() *C.struct_nbdcpy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.h
}

// withContext runs f (nbdcpy_connect or nbdcpy_run) and has the
// context's cancellation call nbdcpy_cancel meanwhile.
func (h *Handle) withContext(ctx context.Context, f func(p *C.struct_nbdcpy) C.int) error {
	p := h.ptr()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if done := ctx.Done(); done != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-done:
				C.nbdcpy_cancel(p)
			case <-stop:
			}
		}()
	}
	err := call(func() C.int { return f(p) })
	close(stop)
	wg.Wait()
	runtime.KeepAlive(h)
	var e *Error
	if err != nil && ctx.Err() != nil && errors.As(err, &e) && e.Errno == syscall.ECANCELED {
		e.ctx = ctx.Err()
	}
	return err
}

// Connect opens both ends, negotiates and checks sizes; ctx's
// cancellation stops it.
func (h *Handle) Connect(ctx context.Context) error {
	return h.withContext(ctx, func(p *C.struct_nbdcpy) C.int { return C.nbdcpy_connect(p) })
}

// Run copies everything, blocking until done, failed or cancelled (by
// ctx or Cancel: an Error with errno ECANCELED, which also matches ctx's
// error).  A handle runs once.
func (h *Handle) Run(ctx context.Context) error {
	err := h.withContext(ctx, func(p *C.struct_nbdcpy) C.int { return C.nbdcpy_run(p) })
	if p := h.progress; p != nil && p.panicked.Load() {
		panic(p.value)
	}
	return err
}

// Cancel stops a running (or later) Connect or Run.
func (h *Handle) Cancel() {
	C.nbdcpy_cancel(h.ptr())
	runtime.KeepAlive(h)
}

// Stats returns the counters, also while Run runs.
func (h *Handle) Stats() (*Stats, error) {
	var s C.struct_nbdcpy_stats
	p := h.ptr()
	err := call(func() C.int { return C.nbdcpy_stats(p, &s, C.sizeof_struct_nbdcpy_stats) })
	runtime.KeepAlive(h)
	if err != nil {
		return nil, err
	}
	return statsOf(&s), nil
}

// Engine is the I/O engine the copy ran on ("io_uring" or "epoll"), ""
// before Run has chosen.
func (h *Handle) Engine() string {
	e := C.nbdcpy_get_engine(h.ptr())
	runtime.KeepAlive(h)
	if e == nil {
		return ""
	}
	return C.GoString(e)
}

// Blkhash is the block hash (keys "blkhash" or "verify") of a successful
// Run; hex.EncodeToString gives what nbdcpy --blkhash prints.
func (h *Handle) Blkhash() ([]byte, error) {
	var buf [64]byte
	var n C.int
	p := h.ptr()
	err := call(func() C.int {
		n = C.nbdcpy_get_blkhash(p, (*C.uint8_t)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
		if n < 0 {
			return -1
		}
		return 0
	})
	runtime.KeepAlive(h)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), buf[:n]...), nil
}

// Close disconnects and frees the handle (a Run still going elsewhere is
// cancelled).  Closing twice is harmless; it always returns nil.
func (h *Handle) Close() error {
	h.mu.Lock()
	p := h.h
	h.h = nil
	h.mu.Unlock()
	if p != nil {
		C.nbdcpy_close(p)
	}
	return nil
}

// Copy copies src to dst with cfg (nil: defaults) and returns the final
// counters; ctx's cancellation stops it.
func Copy(ctx context.Context, src, dst string, cfg *Config) (*Stats, error) {
	h, err := Create(src, dst, cfg)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := h.Connect(ctx); err != nil {
		return nil, err
	}
	if err := h.Run(ctx); err != nil {
		return nil, err
	}
	return h.Stats()
}
