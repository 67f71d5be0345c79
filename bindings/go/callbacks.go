// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

// The functions C calls back: progress, log and the free callback that
// releases their runtime/cgo.Handle.  C keeps only the handle's number.

package nbdcpy

/*
#include <stdint.h>
#include <nbdcpy.h>
*/
import "C"

import (
	"runtime/cgo"
	"sync/atomic"
)

// liveCallbacks counts the cgo.Handles C holds (for the tests).
var liveCallbacks atomic.Int64

func newCallback(v any) C.uintptr_t {
	liveCallbacks.Add(1)
	return C.uintptr_t(cgo.NewHandle(v))
}

//export nbdcpyGoFree
func nbdcpyGoFree(h C.uintptr_t) {
	cgo.Handle(h).Delete()
	liveCallbacks.Add(-1)
}

//export nbdcpyGoProgress
func nbdcpyGoProgress(h C.uintptr_t, st *C.struct_nbdcpy_stats) (r C.int) {
	p := cgo.Handle(h).Value().(*progress)
	if p.panicked.Load() {
		return 1 // cancelling already: not called again
	}
	// A panic must not unwind through C: it cancels the copy and Run
	// panics again with it.
	defer func() {
		if v := recover(); v != nil {
			p.value = v
			p.panicked.Store(true)
			r = 1
		}
	}()
	p.f(uint64(st.bytes_done), uint64(st.size))
	return 0
}

//export nbdcpyGoLog
func nbdcpyGoLog(h C.uintptr_t, level C.int, msg *C.char) {
	f := cgo.Handle(h).Value().(func(int, string))
	defer func() { _ = recover() }() // a panicking logger loses its line only
	f(int(level), C.GoString(msg))
}
