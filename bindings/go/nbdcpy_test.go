// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

// Tests of the Go binding: real copies through nbdkit and qemu-nbd, each
// verified by reading the result independently (the files read back,
// nbdkit's pattern computed here, the nbdcpy command's blkhash).

package nbdcpy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const MiB = 1 << 20

// config is a config with the engine under test (make check runs the
// tests on each: NBDCPY_TEST_ENGINE).
func config(t *testing.T) *Config {
	t.Helper()
	cfg := NewConfig()
	t.Cleanup(cfg.Close)
	if err := setEngine(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func setEngine(cfg *Config) error {
	if e := os.Getenv("NBDCPY_TEST_ENGINE"); e != "" {
		return cfg.Set("engine", e)
	}
	return nil
}

func set(t *testing.T, cfg *Config, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if err := cfg.Set(kv[i], kv[i+1]); err != nil {
			t.Fatal(err)
		}
	}
}

func need(t *testing.T, cmd string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err == nil {
		return
	}
	if os.Getenv("NBDCPY_REQUIRE_SERVERS") != "" {
		t.Fatalf("%s is required (NBDCPY_REQUIRE_SERVERS)", cmd)
	}
	t.Skipf("%s not installed", cmd)
}

// server runs argv (which serves on sock) until the test ends and
// returns its URI.
func server(t *testing.T, sock string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("%s exited", argv[0])
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not create %s", argv[0], sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "nbd+unix:///?socket=" + sock
}

func nbdkit(t *testing.T, args ...string) string {
	need(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbdkit.sock")
	return server(t, sock, append([]string{"nbdkit", "-f", "-U", sock}, args...)...)
}

func qemuNbd(t *testing.T, image string) string {
	need(t, "qemu-nbd")
	sock := filepath.Join(t.TempDir(), "qemu.sock")
	return server(t, sock, "qemu-nbd", "-f", "raw", "-t", "-e", "16", "-k", sock, image)
}

// pattern is what nbdkit's pattern plugin serves: each 8-byte word is
// its own offset, big-endian.
func pattern(size int) []byte {
	b := make([]byte, size)
	for o := 0; o+8 <= size; o += 8 {
		binary.BigEndian.PutUint64(b[o:], uint64(o))
	}
	return b
}

func randomFile(t *testing.T, path string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func sameFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from what was expected (%d bytes, want %d)", path, len(got), len(want))
	}
}

func TestCopyNbdkitToFile(t *testing.T) {
	uri := nbdkit(t, "pattern", "8M")
	dst := filepath.Join(t.TempDir(), "dst")
	cfg := config(t)
	set(t, cfg, "connections", "4")
	st, err := Copy(context.Background(), uri, dst, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, dst, pattern(8*MiB))
	if st.Size != 8*MiB || st.BytesDone != st.Size || !st.Finished || !st.SizeKnown {
		t.Fatalf("stats %+v", st)
	}
	if st.RetriedRequests != 0 || st.ResumedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCopyFileToQemuNbd(t *testing.T) {
	dir := t.TempDir()
	src, img := filepath.Join(dir, "src"), filepath.Join(dir, "img")
	data := randomFile(t, src, 8*MiB)
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8*MiB); err != nil {
		t.Fatal(err)
	}
	uri := qemuNbd(t, img)
	h, err := Open(src, uri, config(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if st, _ := h.Stats(); st.Size != 8*MiB {
		t.Fatalf("size after Open %d", st.Size)
	}
	if h.Engine() != "" {
		t.Fatalf("engine before Run: %q", h.Engine())
	}
	if err := h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := h.Engine()
	if want := os.Getenv("NBDCPY_TEST_ENGINE"); e != "io_uring" && e != "epoll" || want != "" && e != want {
		t.Fatalf("engine %q", e)
	}
	h.Close()
	sameFile(t, img, data)
}

func TestSixteenGoroutines(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	uri := nbdkit(t, "pattern", "4M")
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cfg := NewConfig()
			defer cfg.Close()
			if err := setEngine(cfg); err != nil {
				errs <- err
				return
			}
			if err := cfg.Set("connections", "2"); err != nil {
				errs <- err
				return
			}
			var calls int
			cfg.SetProgress(func(done, total uint64) { calls++ })
			st, err := Copy(context.Background(), uri, filepath.Join(dir, fmt.Sprint("dst", i)), cfg)
			if err == nil && (st.BytesDone != 4*MiB || calls == 0) {
				err = fmt.Errorf("copy %d: stats %+v, %d progress calls", i, st, calls)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	want := pattern(4 * MiB)
	for i := 0; i < 16; i++ {
		sameFile(t, filepath.Join(dir, fmt.Sprint("dst", i)), want)
	}
}

// slow is a config for a copy of a 1 GiB source at 8 MiB/s, whose
// progress function closes seen the first time.
func slow(t *testing.T, seen chan struct{}) *Config {
	cfg := config(t)
	set(t, cfg, "rate", "8M")
	var once sync.Once
	cfg.SetProgressInterval(20 * time.Millisecond)
	cfg.SetProgress(func(done, total uint64) { once.Do(func() { close(seen) }) })
	return cfg
}

func TestCancelByContext(t *testing.T) {
	uri := nbdkit(t, "pattern", "1G")
	seen := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-seen; cancel() }()
	start := time.Now()
	_, err := Copy(ctx, uri, "null:", slow(t, seen))
	if !errors.Is(err, context.Canceled) || !errors.Is(err, syscall.ECANCELED) {
		t.Fatalf("error %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	var e *Error
	if !errors.As(err, &e) || e.Side != NoSide {
		t.Fatalf("error %#v", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = Copy(ctx, uri, "null:", slow(t, make(chan struct{})))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Fatalf("error %v", err)
	}

	// Cancel from another goroutine, without a context.
	h, err := Open(uri, "null:", slow(t, make(chan struct{})))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	time.AfterFunc(100*time.Millisecond, h.Cancel)
	if err := h.Run(context.Background()); !errors.Is(err, syscall.ECANCELED) || errors.Is(err, context.Canceled) {
		t.Fatalf("error %v", err)
	}
	if st, _ := h.Stats(); !st.Finished || st.BytesDone >= st.Size {
		t.Fatalf("stats %+v", st)
	}
}

func TestProgressRisesToTheTotal(t *testing.T) {
	uri := nbdkit(t, "pattern", "32M")
	cfg := config(t)
	set(t, cfg, "rate", "64M", "request-size", "1M")
	var seen [][2]uint64
	cfg.SetProgressInterval(20 * time.Millisecond)
	cfg.SetProgress(func(done, total uint64) { seen = append(seen, [2]uint64{done, total}) })
	st, err := Copy(context.Background(), uri, "null:", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < 2 {
		t.Fatalf("progress calls %v", seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i][0] < seen[i-1][0] {
			t.Fatalf("progress went back: %v", seen)
		}
	}
	if last := seen[len(seen)-1]; last != [2]uint64{32 * MiB, 32 * MiB} || st.BytesDone != 32*MiB {
		t.Fatalf("last progress %v, stats %+v", last, st)
	}
}

// A [ CMD ] server opened on one goroutine (locked to an OS thread that
// ends with it) and run on another: the server must outlive the thread.
func TestCommandServerAcrossGoroutines(t *testing.T) {
	need(t, "nbdkit")
	dst := filepath.Join(t.TempDir(), "dst")
	cfg := config(t)
	// About a second of copying: a server killed when the opening
	// thread ends fails it.
	set(t, cfg, "rate", "8M")
	if err := cfg.SetCommand(Source, []string{"nbdkit", "pattern", "8M"}); err != nil {
		t.Fatal(err)
	}
	type opened struct {
		h   *Handle
		tid int
		err error
	}
	ch := make(chan opened)
	var open func()
	open = func() {
		// Locked and never unlocked: the OS thread exits with the
		// goroutine (unless it is the main thread, which Go keeps:
		// then this goroutine holds it and another one opens).
		runtime.LockOSThread()
		if syscall.Gettid() == os.Getpid() {
			go open()
			select {}
		}
		h, err := Open("", dst, cfg)
		ch <- opened{h, syscall.Gettid(), err}
	}
	go open()
	o := <-ch
	if o.err != nil {
		t.Fatal(o.err)
	}
	defer o.h.Close()
	task := fmt.Sprintf("/proc/self/task/%d", o.tid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the opening thread %d did not exit", o.tid)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if err := o.h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	sameFile(t, dst, pattern(8*MiB))
}

// closingListener is a unix socket whose "server" closes every
// connection at once.
func closingListener(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "closer.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return "nbd+unix:///?socket=" + sock
}

func TestErrorsHaveErrnoAndSide(t *testing.T) {
	dir := t.TempDir()
	_, err := Copy(context.Background(), "nbd+unix:///?socket="+dir+"/none.sock", "null:", config(t))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, syscall.ENOENT) || e.Side != Source ||
		!strings.Contains(e.Msg, "none.sock") {
		t.Fatalf("error %#v", err)
	}
	src := filepath.Join(dir, "src")
	randomFile(t, src, MiB)
	_, err = Copy(context.Background(), src, closingListener(t), config(t))
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &e) || e.Side != Destination {
		t.Fatalf("error %#v", err)
	}
	if !strings.HasPrefix(err.Error(), "nbdcpy: destination ") {
		t.Fatalf("message %q", err.Error())
	}
	err = config(t).Set("connections", "many")
	if !errors.Is(err, syscall.EINVAL) || !errors.As(err, &e) || e.Side != NoSide {
		t.Fatalf("error %#v", err)
	}
	// The error is read on the thread that failed, whichever it is.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				cfg := NewConfig()
				if err := cfg.Set("no-such-key", "1"); !errors.Is(err, syscall.EINVAL) ||
					!strings.Contains(err.Error(), "no-such-key") {
					t.Errorf("error %v", err)
				}
				cfg.Close()
			}
		}()
	}
	wg.Wait()
}

func TestRanges(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := randomFile(t, src, 4*MiB)
	want := bytes.Repeat([]byte{0xaa}, 4*MiB)
	if err := os.WriteFile(dst, want, 0o644); err != nil {
		t.Fatal(err)
	}
	areas := []Range{{MiB, 128 << 10}, {0, 65536}, {3*MiB + 512, 4096}}
	cfg := config(t)
	if err := cfg.SetRanges(areas); err != nil {
		t.Fatal(err)
	}
	st, err := Copy(context.Background(), src, dst, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != 65536+128<<10+4096 {
		t.Fatalf("size %d", st.Size)
	}
	for _, a := range areas {
		copy(want[a.Offset:a.Offset+a.Length], data[a.Offset:])
	}
	sameFile(t, dst, want)
	if err := cfg.SetRanges([]Range{{0, 0}}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("error %v", err)
	}
}

func TestBlkhashEqualsTheCommands(t *testing.T) {
	bin := os.Getenv("NBDCPY_BIN")
	if bin == "" {
		bin = "../../build/nbdcpy"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no %s", bin)
	}
	src := filepath.Join(t.TempDir(), "src")
	randomFile(t, src, 3*MiB+4096)
	for _, digest := range []string{"sha256", "md5/1M"} {
		cfg := config(t)
		set(t, cfg, "blkhash", digest)
		h, err := Open(src, "null:", cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Blkhash(); !errors.Is(err, syscall.ENODATA) {
			t.Fatalf("blkhash before Run: %v", err)
		}
		if err := h.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		sum, err := h.Blkhash()
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "--blkhash="+digest, src, "null:").Output()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := hex.EncodeToString(sum), strings.Fields(string(out))[0]; got != want {
			t.Fatalf("%s: binding %s, command %s", digest, got, want)
		}
	}
}

func TestPanicInProgressCancelsAndRepanics(t *testing.T) {
	uri := nbdkit(t, "pattern", "1G")
	cfg := config(t)
	set(t, cfg, "rate", "8M")
	calls := 0
	cfg.SetProgressInterval(20 * time.Millisecond)
	cfg.SetProgress(func(done, total uint64) { calls++; panic("stop here") })
	h, err := Open(uri, "null:", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	func() {
		defer func() {
			if v := recover(); v != "stop here" {
				t.Fatalf("recovered %v", v)
			}
		}()
		_ = h.Run(context.Background())
		t.Fatal("Run did not panic")
	}()
	if st, _ := h.Stats(); !st.Finished || st.BytesDone >= st.Size || calls != 1 {
		t.Fatalf("stats %+v, %d calls", st, calls)
	}
}

func TestLogAndCallbacksReleased(t *testing.T) {
	before := liveCallbacks.Load()
	src := filepath.Join(t.TempDir(), "src")
	randomFile(t, src, MiB)
	cfg := config(t)
	set(t, cfg, "verbose", "1")
	var lines []string
	if err := cfg.SetLog(func(level int, msg string) { lines = append(lines, msg) }); err != nil {
		t.Fatal(err)
	}
	cfg.SetProgress(func(done, total uint64) {})
	h, err := Open(src, "null:", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := liveCallbacks.Load() - before; n != 2 {
		t.Fatalf("%d callbacks held, want 2 (log, the handle's progress)", n)
	}
	cfg.Close()
	if err := h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if n := liveCallbacks.Load() - before; n != 0 {
		t.Fatalf("%d callbacks still held after Close", n)
	}
	found := false
	for _, l := range lines {
		found = found || strings.HasPrefix(l, "connections=")
	}
	if !found {
		t.Fatalf("log lines %q", lines)
	}
}
