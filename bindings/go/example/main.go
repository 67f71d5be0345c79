// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

// Copies SOURCE to DESTINATION (NBD URIs or files) with nbdcpy, showing
// progress, and prints the source's block hash; Ctrl-C cancels.
//
//	go run ./example SOURCE DESTINATION
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"

	"nbdcpy"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: example SOURCE DESTINATION")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	cfg := nbdcpy.NewConfig()
	defer cfg.Close()
	if err := cfg.Set("connections", "4"); err != nil {
		fail(err)
	}
	if err := cfg.Set("blkhash", "sha256"); err != nil {
		fail(err)
	}
	cfg.SetProgress(func(done, total uint64) {
		fmt.Fprintf(os.Stderr, "\r%3d%%", done*100/max(total, 1))
	})

	h, err := nbdcpy.Open(os.Args[1], os.Args[2], cfg)
	if err != nil {
		fail(err)
	}
	defer h.Close()
	if err := h.Run(ctx); err != nil {
		fail(err)
	}
	st, _ := h.Stats()
	fmt.Fprintf(os.Stderr, "\ncopied %d bytes on %s\n", st.BytesDone, h.Engine())
	sum, err := h.Blkhash()
	if err != nil {
		fail(err)
	}
	fmt.Println(hex.EncodeToString(sum))
}

func max(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func fail(err error) {
	if e, ok := err.(*nbdcpy.Error); ok {
		fmt.Fprintf(os.Stderr, "copy failed (%s): %s\n", e.Side, e.Msg)
	} else {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(1)
}
