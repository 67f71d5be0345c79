// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

// A copier for ../shared/bench/run.sh through the Go binding, to compare
// its CPU with the command's (make bench-drivers builds it):
//
//	COPIER=build/nbdcpy-go-copier ../shared/bench/run.sh W2 W6
//
// Arguments: [--KEY=VALUE | --FLAG]... SOURCE DESTINATION, KEY a config
// key (nbdcpy(3)).
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"nbdcpy"
)

func main() {
	args := os.Args[1:]
	cfg := nbdcpy.NewConfig()
	for len(args) > 2 {
		k, v, _ := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		if err := cfg.Set(k, v); err != nil {
			fmt.Fprintln(os.Stderr, "go-copier:", err)
			os.Exit(1)
		}
		args = args[1:]
	}
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-copier [--KEY=VALUE]... SOURCE DESTINATION")
		os.Exit(2)
	}
	if _, err := nbdcpy.Copy(context.Background(), args[0], args[1], cfg); err != nil {
		fmt.Fprintln(os.Stderr, "go-copier:", err)
		os.Exit(1)
	}
}
