# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# nbdcpy: build, test, install.  Wraps cargo; see README.md and docs/.
#
# Standard variables are honoured: CC, CFLAGS, CPPFLAGS, LDFLAGS (the
# command and the shared library link), CARGO, RUSTFLAGS (from the
# environment, as cargo reads it), CARGO_PROFILE (release by default),
# CARGO_TARGET_DIR, CARGOFLAGS (e.g. --offline), PREFIX, BINDIR, LIBDIR,
# LIBEXECDIR, INCLUDEDIR, MANDIR, DESTDIR.  -Werror is used by
# `make check` only.  Every build product is a real file target, so
# `make install` installs what `make` built without rebuilding.

PREFIX     ?= /usr/local
EXEC_PREFIX ?= $(PREFIX)
BINDIR     ?= $(EXEC_PREFIX)/bin
LIBDIR     ?= $(EXEC_PREFIX)/lib
LIBEXECDIR ?= $(EXEC_PREFIX)/libexec
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# The Go module's source (Debian's place for Go source: gocode/src/IMPORT-PATH)
# and the Python package (python3's purelib directory for PREFIX; Debian's
# dist-packages for /usr).
GODIR      ?= $(PREFIX)/share/gocode/src/nbdcpy
PYTHONDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(shell $(PYTHON3) -c \
  'import sys; d = "dist" if any(p.endswith("dist-packages") for p in sys.path) else "site"; \
   print("$(PREFIX)/lib/python%d.%d/%s-packages" % (*sys.version_info[:2], d))'))
DESTDIR    ?=

VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
SOVERSION  := 0
CARGO      ?= cargo
CC         ?= cc
CXX        ?= c++
CFLAGS     ?= -O2 -g
CPPFLAGS   ?=
LDFLAGS    ?=
CARGOFLAGS ?=
CARGO_PROFILE ?= release
CARGO_TARGET_DIR ?= target
WARN       := -Wall -Wextra
B          := build
# cargo's output directory for the profile (the "dev" profile builds into debug/).
REL        := $(CARGO_TARGET_DIR)/$(if $(filter dev test,$(CARGO_PROFILE)),debug,$(CARGO_PROFILE))
LIBSO      := $(B)/libnbdcpy.so.$(VERSION)
MAP        := src/ffi/nbdcpy.map
# The exported functions, as the map lists them.
MAP_FUNCS   = $(shell sed -n 's/^ *\(nbdcpy_[a-z0-9_]*\);/\1/p' $(MAP))
# One stamp per profile, so switching CARGO_PROFILE runs cargo again.
STAMP      := $(B)/cargo-$(CARGO_PROFILE).stamp
# build/profile changes when CARGO_PROFILE does: the products in build/ follow it.
$(shell mkdir -p $(B); [ "$$(cat $(B)/profile 2>/dev/null)" = "$(CARGO_PROFILE)" ] || \
  echo "$(CARGO_PROFILE)" > $(B)/profile)
# The libraries rustc says a staticlib of this crate needs (--print native-static-libs).
NATIVE_LIBS := -lssl -lcrypto -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
RUST_SRCS  := $(shell find src -type f) Cargo.toml $(wildcard Cargo.lock) build.rs cbindgen.toml
EXAMPLES   := $(patsubst %.c,%,$(wildcard examples/*.c))
MULTIARCH  := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

.PHONY: check-valgrind-panic all lib cli fuzz check check-quick check-tests check-layout check-imports check-man check-rust check-c check-header check-style check-valgrind \
        check-warnings check-symbols check-version check-install check-spdx check-deb header \
        check-header-prefix check-libnbd check-python check-go python-wheel bench-drivers \
        test-deps deps demo install uninstall bench bench-engines bench-dirty bench-ranges deb deb-deps clean dist check-dist

all: $(B)/nbdcpy $(B)/nbdcpy.install $(LIBSO) $(B)/libnbdcpy.so $(B)/libnbdcpy.a \
     $(B)/no-io-uring

# Older names of the build targets.
lib: $(LIBSO) $(B)/libnbdcpy.so $(B)/libnbdcpy.a
cli: all

# cargo decides what to rebuild; this stamp only tells make whether to ask.
# The header build.rs generated (in OUT_DIR) is copied to $(B)/nbdcpy.h.gen.
$(STAMP): $(RUST_SRCS)
	@mkdir -p $(B)
	$(CARGO) build --profile $(CARGO_PROFILE) --lib $(CARGOFLAGS) \
	  --message-format=json-render-diagnostics > $(B)/cargo.json
	@out=$$(sed -n 's/.*"reason":"build-script-executed","package_id":"[^"]*nbdcpy[^"]*".*"out_dir":"\([^"]*\)".*/\1/p' $(B)/cargo.json | tail -n 1); \
	if [ -f "$$out/nbdcpy.h" ]; then cp -f "$$out/nbdcpy.h" $(B)/nbdcpy.h.gen; \
	else echo "warning: build.rs generated no header"; rm -f $(B)/nbdcpy.h.gen; fi
	@touch $@

# An empty recipe: make looks at the file again after cargo ran (without
# one it keeps the old time and would not relink the shared library).
$(REL)/libnbdcpy.a: $(STAMP) ;

$(B)/libnbdcpy.a: $(REL)/libnbdcpy.a $(B)/profile
	cp -f $< $@

# The shared library is linked from the staticlib with the version script:
# rustc's cdylib link adds its own unversioned export list, which wins.
$(LIBSO): $(REL)/libnbdcpy.a $(MAP) $(B)/profile
	$(CC) $(CFLAGS) -shared -o $@ -Wl,-soname,libnbdcpy.so.$(SOVERSION) \
	  -Wl,--version-script=$(MAP) -Wl,--gc-sections -Wl,--no-undefined \
	  $(patsubst %,-Wl$(comma)--undefined=%,$(shell sed -n 's/^ *\(nbdcpy_[a-z0-9_]*\);/\1/p' $(MAP))) \
	  $(LDFLAGS) $(REL)/libnbdcpy.a $(NATIVE_LIBS)
comma := ,

$(B)/libnbdcpy.so.$(SOVERSION): $(LIBSO)
	ln -sf libnbdcpy.so.$(VERSION) $@
$(B)/libnbdcpy.so: $(B)/libnbdcpy.so.$(SOVERSION)
	ln -sf libnbdcpy.so.$(SOVERSION) $@

# The command: build/nbdcpy runs from the tree (rpath $ORIGIN);
# build/nbdcpy.install is the copy `make install` installs (no rpath).
$(B)/nbdcpy: cli/nbdcpy.c include/nbdcpy.h $(B)/libnbdcpy.so
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Iinclude -o $@ cli/nbdcpy.c \
	  $(LDFLAGS) -L$(B) -lnbdcpy -Wl,-rpath,'$$ORIGIN'
$(B)/nbdcpy.install: cli/nbdcpy.c include/nbdcpy.h $(B)/libnbdcpy.so
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Iinclude -o $@ cli/nbdcpy.c \
	  $(LDFLAGS) -L$(B) -lnbdcpy

# A test helper (not installed): runs a command with io_uring blocked by
# seccomp, as container runtimes do (tests/container.rs).
$(B)/no-io-uring: tests/helpers/no-io-uring.c
	@mkdir -p $(B)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $< $(LDFLAGS)

# Replaces the checked-in header with the one build.rs generates.
header: $(STAMP)
	cp -f $(B)/nbdcpy.h.gen include/nbdcpy.h

# Everything CI runs.  Installs its test servers first where apt-get
# exists.  The stages run in this order, each timed ("== STAGE: N s").
CHECK_STAGES := test-deps check-spdx check-tests check-layout check-imports check-man check-style all check-warnings check-header \
       check-header-prefix check-symbols check-version check-rust check-c check-valgrind check-install \
       check-python check-go \
       $(if $(LIBNBD_SRC),check-libnbd)
# Where valgrind runs (check-valgrind), the C tests' shared builds run
# under it only, not natively as well (the same code and engines): the
# static builds run natively (their timing checks) and so does the
# io_uring-blocked run.
CHECK_C_VARIANTS := $(if $(or $(shell command -v valgrind),$(NBDCPY_REQUIRE_SERVERS)),static,shared static)
check:
	@t0=$$(date +%s); for s in $(CHECK_STAGES); do t=$$(date +%s); \
	  $(MAKE) --no-print-directory $$s C_VARIANTS="$(CHECK_C_VARIANTS)" || \
	    { echo "make check: $$s failed"; exit 1; }; \
	  echo "== $$s: $$(( $$(date +%s) - t )) s"; done; \
	echo "make check: all passed in $$(( $$(date +%s) - t0 )) s"

# The edit-test loop (about 2 minutes once built): formatting, the unit
# tests and a few integration modules on one engine, built without LTO
# (the test-release profile: build/ then holds that build until the next
# plain `make`).  `make check` is what must pass before a commit.
QUICK_ENGINE ?= io_uring
QUICK_TESTS ?= local_copy:: nbd_copy:: cli:: fuzz_smoke::
check-quick: check-tests
	$(CARGO) fmt --all -- --check
	$(MAKE) --no-print-directory all CARGO_PROFILE=test-release
	NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy $(CARGO) test --profile test-release $(CARGOFLAGS) --lib -- --test-threads=2
	NBDCPY_TEST_ENGINE=$(QUICK_ENGINE) NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy \
	  $(CARGO) test --profile test-release $(CARGOFLAGS) --test integration -- --test-threads=2 $(QUICK_TESTS)
	@echo "make check-quick: passed (engine $(QUICK_ENGINE); make check runs everything)"

# docs/architecture.md's layout table names every module of src/ (every
# directory and .rs file), so it stays true when modules come and go.
check-layout:
	tests/check-layout.sh docs/architecture.md src

# No circle between the crate's top-level modules (config, copy,
# endpoint, engine...): the script must also find one, or it checks nothing.
check-imports:
	python3 tests/check-imports.py src
	@t=$$(mktemp -d); trap 'rm -rf $$t' EXIT; mkdir -p $$t/a $$t/b; \
	printf 'use crate::b::X;\n' > $$t/a/mod.rs; printf 'use crate::a::Y;\n' > $$t/b/mod.rs; \
	if python3 tests/check-imports.py $$t >/dev/null; then \
	  echo "check-imports: the check passed a crate with a circle"; exit 1; fi

# nbdcpy(3)'s NAME lists every exported function of the map (each has a
# man page linking to it: make install).
check-man:
	@name=$$(sed -n '/^\.SH NAME/,/^\.SH/p' nbdcpy.3 | tr -d '\\' | tr ', ' '\n\n'); missing=""; \
	for f in $(MAP_FUNCS); do printf '%s\n' $$name | grep -qx "$$f" || missing="$$missing $$f"; done; \
	[ -z "$$missing" ] || { echo "not in nbdcpy.3's NAME section:$$missing"; exit 1; }

# The integration tests are one crate: every tests/*.rs must be a module
# of tests/main.rs (cargo builds nothing else; see docs/testing.md).
check-tests:
	@missing=""; for f in tests/*.rs; do m=$$(basename $$f .rs); [ $$m = main ] && continue; \
	  grep -q "^mod $$m;" tests/main.rs || missing="$$missing $$f"; done; \
	[ -z "$$missing" ] || { echo "not in tests/main.rs (add 'mod NAME;' there, and in the file"; \
	  echo "'use crate::common;' instead of 'mod common;'):$$missing"; exit 1; }

check-style:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The C sources with -Werror; the header alone as C99 -pedantic and as C++.
check-warnings: all
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Werror -Iinclude -fsyntax-only cli/nbdcpy.c
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Werror -fsyntax-only tests/helpers/no-io-uring.c
	@for f in examples/*.c; do echo "  $$f"; \
	  $(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Werror -Iinclude -fsyntax-only $$f || exit 1; done
	printf '#include "nbdcpy.h"\nint main (void) { return nbdcpy_version () == NULL; }\n' > $(B)/hdr.c
	$(CC) -std=c99 -pedantic-errors $(WARN) -Werror -Iinclude -c -o $(B)/hdr.o $(B)/hdr.c
	$(CXX) -x c++ -std=c++11 -pedantic-errors $(WARN) -Werror -Iinclude -c -o $(B)/hdr.o $(B)/hdr.c

# The checked-in header must equal what build.rs generates (in a git
# checkout: a packager's different cbindgen may format differently).
check-header: $(STAMP)
	@if [ -d .git ] || [ -f .git ]; then \
	  diff -u include/nbdcpy.h $(B)/nbdcpy.h.gen || \
	  { echo "include/nbdcpy.h is stale: run 'make header' and commit it"; exit 1; }; \
	fi

# Only prefixed names in the public header: NBDCPY_* macros, nbdcpy_* (or
# NBDCPY_*) functions, types, constants; and no Rust doc headings in its
# comments, which are for C programmers.  The script must also catch a
# bare name (the SLOTS macro that once leaked), or it checks nothing.
check-header-prefix:
	@mkdir -p $(B)
	tests/check-header-prefix.sh include/nbdcpy.h
	@! grep -n '^// # ' include/nbdcpy.h || \
	  { echo "a Rust doc heading (# Safety, # Errors ...) reached include/nbdcpy.h"; exit 1; }
	@printf '#define SLOTS 4096\nstruct table;\nint run (void);\n' > $(B)/unprefixed.h; \
	if tests/check-header-prefix.sh $(B)/unprefixed.h >/dev/null; then \
	  echo "check-header-prefix: the check passed a header with bare names"; exit 1; fi

# Symbol versions: every exported nbdcpy_* symbol has the version of the
# node the map lists it in (NBDCPY_0.1, NBDCPY_0.2, NBDCPY_0.3, ...), nothing else is
# exported, every function of the header is in the map, and the command
# records a need for NBDCPY_0.1 and a version for every nbdcpy_* symbol it
# uses.
check-symbols: $(LIBSO) $(B)/nbdcpy
	@set -e; syms=$$(readelf --dyn-syms -W $(LIBSO) | awk '$$7 != "UND" && $$8 ~ /^nbdcpy_/ {print $$8}'); \
	[ -n "$$syms" ] || { echo "no nbdcpy_* symbols exported"; exit 1; }; \
	printf '%s\n' $$syms | sort > $(B)/syms.got; \
	awk '/^NBDCPY_[0-9.]* *[{]/ {n = $$1} /^ *nbdcpy_[a-z0-9_]*;/ {s = $$1; sub(";", "", s); print s "@@" n}' \
	  $(MAP) | sort > $(B)/syms.want; \
	diff -u $(B)/syms.want $(B)/syms.got || \
	  { echo "exported symbols or their versions differ from $(MAP) (- map, + library)"; exit 1; }; \
	other=$$(readelf --dyn-syms -W $(LIBSO) | awk '$$7 != "UND" && $$5 != "LOCAL" && NR > 3 && $$8 != "" {print $$8}' | grep -v '^nbdcpy_\|^NBDCPY_' || true); \
	[ -z "$$other" ] || { echo "unexpected exported symbols: $$other"; exit 1; }; \
	for f in $$(sed -n 's/^[a-z].* \**\(nbdcpy_[a-z0-9_]*\)(.*/\1/p' include/nbdcpy.h); do \
	  grep -q "^ *$$f;" $(MAP) || { echo "$$f is in nbdcpy.h but not in $(MAP)"; exit 1; }; done; \
	readelf -V $(B)/nbdcpy | grep -A4 'File: libnbdcpy.so.$(SOVERSION)' | grep -q 'Name: NBDCPY_0\.1' || \
	  { echo "$(B)/nbdcpy records no need for NBDCPY_0.1"; exit 1; }; \
	unver=$$(readelf --dyn-syms -W $(B)/nbdcpy | awk '$$7 == "UND" && $$8 ~ /^nbdcpy_/ && $$8 !~ /@NBDCPY_[0-9.]*$$/ {print $$8}'); \
	[ -z "$$unver" ] || { echo "$(B)/nbdcpy uses unversioned symbols: $$unver"; exit 1; }; \
	readelf -d $(LIBSO) | grep -q 'SONAME.*libnbdcpy.so.$(SOVERSION)'; \
	for f in $$(sed -n 's/^ *\(nbdcpy_[a-z0-9_]*\);/\1/p' $(MAP)); do \
	  v=$$(awk -v f="$$f;" '/^NBDCPY_/ {n=$$1} $$1 == f {print n}' $(MAP)); \
	  printf '%s\n' $$syms | grep -qx "$$f@@$$v" || { echo "$$f is not exported @@$$v"; exit 1; }; \
	  grep -q "^ $$f@$$v " debian/libnbdcpy0.symbols || { echo "$$f@$$v missing in debian/libnbdcpy0.symbols"; exit 1; }; done; \
	echo "check-symbols: $$(echo $$syms | wc -w) symbols in their map nodes ($$(cut -d@ -f3 $(B)/syms.got | sort -u | tr '\n' ' ')), command's symbols versioned"

# One release version everywhere (tests/check-version.sh): Cargo.toml,
# the header's NBDCPY_VERSION_*, NEWS, debian/changelog, nbdcpy.spec, the
# built library, and the map's nodes in debian/libnbdcpy0.symbols with
# their releases as minimum versions.  The script must also catch a
# stale changelog and a symbols line listed twice, or it checks nothing.
check-version: $(B)/nbdcpy
	tests/check-version.sh . $(B)/nbdcpy
	@set -e; t=$$(mktemp -d); trap 'rm -rf $$t' EXIT; \
	for f in Cargo.toml Cargo.lock include/nbdcpy.h NEWS debian/changelog debian/libnbdcpy0.symbols \
	    nbdcpy.spec nbdcpy.pc.in src/ffi/nbdcpy.map; do mkdir -p $$t/good/$$(dirname $$f); cp $$f $$t/good/$$f; done; \
	cp -r $$t/good $$t/a; sed -i '1s/(\([0-9.]*\))/(9.9.9)/' $$t/a/debian/changelog; \
	cp -r $$t/good $$t/b; sed -n '/^ NBDCPY_0.1@/p' $$t/b/debian/libnbdcpy0.symbols >> $$t/b/debian/libnbdcpy0.symbols; \
	cp -r $$t/good $$t/c; sed -i 's/^\( nbdcpy_get_engine@NBDCPY_0.3\) .*/\1 0.2.0/' $$t/c/debian/libnbdcpy0.symbols; \
	for x in a b c; do if tests/check-version.sh $$t/$$x >/dev/null; then \
	  echo "check-version: the check passed a tree with a wrong version ($$x)"; exit 1; fi; done

# The unit and doc tests once; the integration tests (tests/main.rs,
# one binary) once per engine: NBDCPY_TEST_ENGINE tells tests/common
# which one to set (the library never reads it).  The modules of
# ENGINE_FREE_TESTS do not depend on it (they pick their engine
# themselves, or copy nothing): they run once, with
# NBDCPY_TEST_ENGINE=none, which makes tests/common panic if one of them
# asks for the suite's engine.  Every engine runs even if one fails.
# TEST_PROFILE=test-release builds the tests without LTO (Cargo.toml):
# measured, with one test binary that costs more than it saves in `make
# check` (the dependencies are built a second time), so the default is
# the profile of the library the C tests use.
TEST_ENGINES ?= io_uring epoll
TEST_PROFILE ?= $(CARGO_PROFILE)
ENGINE_FREE_TESTS := container:: fuzz_smoke::
CARGO_TEST := $(CARGO) test --profile $(TEST_PROFILE) $(CARGOFLAGS)
check-rust: all check-tests
	NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy $(CARGO_TEST) --lib -- --test-threads=2
	$(CARGO_TEST) --doc -- --test-threads=2
	@failed=""; echo "== integration tests that do not depend on the engine: $(ENGINE_FREE_TESTS)"; \
	NBDCPY_TEST_ENGINE=none NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy \
	  $(CARGO_TEST) --test integration -- --test-threads=2 $(ENGINE_FREE_TESTS) || failed=" engine-free"; \
	for e in $(TEST_ENGINES); do \
	  echo "== integration tests, engine $$e"; \
	  NBDCPY_TEST_ENGINE=$$e NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy \
	    $(CARGO_TEST) --test integration -- --test-threads=2 $(ENGINE_FREE_TESTS:%=--skip %) || \
	    failed="$$failed $$e"; done; \
	[ -z "$$failed" ] || { echo "check-rust: integration tests failed on:$$failed"; exit 1; }

# libnbd's own nbdcopy tests (copy/*.sh of a libnbd source tree, e.g.
# `git clone https://gitlab.com/nbdkit/libnbd` or `apt-get source libnbd`;
# no configure needed) against $(B)/nbdcpy installed as `nbdcopy` first
# in PATH: make check-libnbd LIBNBD_SRC=DIR [LIBNBD_TESTS="a.sh b.sh"].
# `make check` runs it too when LIBNBD_SRC is set.
check-libnbd: $(B)/nbdcpy
	@test -n "$(LIBNBD_SRC)" || { echo "check-libnbd: set LIBNBD_SRC=DIR (a libnbd source tree)"; exit 2; }
	tests/check-libnbd.sh "$(LIBNBD_SRC)" $(B)/nbdcpy

C_VARIANTS ?= shared static
check-c: all
	$(MAKE) -C c-tests check B=$(CURDIR)/$(B) TEST_ENGINES="$(TEST_ENGINES)" VARIANTS="$(C_VARIANTS)"

# The bindings (bindings/python, bindings/go) against the library in
# $(B): their tests on each engine, then their examples (a copy checked
# with cmp, its block hash against the command's).  Skipped where pytest
# or go is missing, which fails under NBDCPY_REQUIRE_SERVERS=1.
PYTEST     ?= $(firstword $(shell command -v pytest-3 pytest 2>/dev/null))
PYTHON3    ?= $(firstword $(wildcard /usr/bin/python3) python3)
GO         ?= go
BIND_ENV   := LD_LIBRARY_PATH=$(CURDIR)/$(B)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
              NBDCPY_BIN=$(CURDIR)/$(B)/nbdcpy
define example_check
d=$$(mktemp -d); trap 'rm -rf $$d' EXIT; head -c 5M /dev/urandom > $$d/src; \
h=$$($(1) $$d/src $$d/dst 2>/dev/null); cmp $$d/src $$d/dst; \
[ "$$h" = "$$($(B)/nbdcpy --blkhash=sha256 $$d/src null:)" ] || \
  { echo "example printed blkhash '$$h', the command another"; exit 1; }
endef

check-python: all
	@if [ -z "$(PYTEST)" ]; then \
	  [ -z "$$NBDCPY_REQUIRE_SERVERS" ] || { echo "check-python: pytest is required"; exit 1; }; \
	  echo "check-python: pytest not installed, skipped"; exit 0; fi; \
	set -e; export $(BIND_ENV) PYTHONPATH=$(CURDIR)/bindings/python PYTHONDONTWRITEBYTECODE=1; \
	for e in $(TEST_ENGINES); do echo "== python binding (engine $$e)"; \
	  NBDCPY_TEST_ENGINE=$$e $(PYTEST) -q -p no:cacheprovider bindings/python/tests; done; \
	echo "== python example"; \
	$(call example_check,$(PYTHON3) bindings/python/example/nbdcpy_copy.py)

# bindings/go builds against $(B)/nbdcpy.pc, which points at $(B).
$(B)/nbdcpy.pc: nbdcpy.pc.in Makefile
	sed -e 's|@PREFIX@|$(CURDIR)|' -e 's|@LIBDIR@|$(CURDIR)/$(B)|' \
	    -e 's|@INCLUDEDIR@|$(CURDIR)/include|' -e 's|@VERSION@|$(VERSION)|' $< > $@

check-go: all $(B)/nbdcpy.pc
	@if ! command -v $(GO) >/dev/null; then \
	  [ -z "$$NBDCPY_REQUIRE_SERVERS" ] || { echo "check-go: go is required"; exit 1; }; \
	  echo "check-go: go not installed, skipped"; exit 0; fi; \
	set -e; export $(BIND_ENV) PKG_CONFIG_PATH=$(CURDIR)/$(B)$${PKG_CONFIG_PATH:+:$$PKG_CONFIG_PATH} \
	  GOFLAGS=-mod=mod GOPROXY=off GOCACHE=$${GOCACHE:-$(CURDIR)/$(B)/go-cache}; \
	cd bindings/go; test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }; $(GO) vet ./...; \
	for e in $(TEST_ENGINES); do echo "== go binding (engine $$e)"; \
	  NBDCPY_TEST_ENGINE=$$e $(GO) test -race -count=1 ./...; done; \
	echo "== go example"; $(GO) build -o $(CURDIR)/$(B)/nbdcpy-go-example ./example; cd $(CURDIR); \
	$(call example_check,$(B)/nbdcpy-go-example)

# The bindings' copiers for ../shared/bench/run.sh (COPIER=...): their CPU
# against the command's (BENCHMARKS.md).
bench-drivers: all $(B)/nbdcpy.pc
	cd bench/go-copier && PKG_CONFIG_PATH=$(CURDIR)/$(B) GOFLAGS=-mod=mod GOPROXY=off \
	  GOCACHE=$${GOCACHE:-$(CURDIR)/$(B)/go-cache} \
	  $(GO) build -ldflags=-r=$(CURDIR)/$(B) -o $(CURDIR)/$(B)/nbdcpy-go-copier .
	@echo "COPIER=$(B)/nbdcpy-go-copier or COPIER=\"$(PYTHON3) bench/py-copier.py\""

# A wheel of the Python binding (pure Python: any Linux, any CPU).
python-wheel:
	$(PYTHON3) -m pip wheel --no-build-isolation --no-deps -w $(B) ./bindings/python
	rm -rf bindings/python/build bindings/python/*.egg-info

# Stage an install; build the examples and a smoke test against it with
# pkg-config; run them and the nbdcopy compat test from the staged tree.
check-install: all
	@set -e; st=$$(mktemp -d); trap 'rm -rf $$st' EXIT; \
	lib=/usr/lib/$(MULTIARCH); \
	$(MAKE) -s install DESTDIR=$$st PREFIX=/usr LIBDIR=$$lib; \
	test -L $$st$$lib/libnbdcpy.so.0; \
	test -L $$st$$lib/libnbdcpy.so; \
	test -f $$st/usr/share/man/man3/nbdcpy.3; \
	for f in $(MAP_FUNCS); do grep -qx '.so man3/nbdcpy.3' $$st/usr/share/man/man3/$$f.3; done; \
	readelf -d $$st$$lib/libnbdcpy.so.$(VERSION) | grep -q 'SONAME.*libnbdcpy.so.0'; \
	export PKG_CONFIG_SYSROOT_DIR=$$st PKG_CONFIG_LIBDIR=$$st$$lib/pkgconfig; \
	pkg-config --exact-version=$(VERSION) nbdcpy; \
	$(CC) $(WARN) -Werror -o $$st/smoke c-tests/install-smoke.c $$(pkg-config --cflags --libs nbdcpy); \
	LD_LIBRARY_PATH=$$st$$lib $$st/smoke; \
	for e in $(EXAMPLES); do \
	  $(CC) $(WARN) -Werror -o $$st/$$(basename $$e) $$e.c $$(pkg-config --cflags --libs nbdcpy); done; \
	LD_LIBRARY_PATH=$$st$$lib EXAMPLES=$$st examples/run-examples.sh; \
	LD_LIBRARY_PATH=$$st$$lib tests/nbdcopy-compat.sh $$st/usr/libexec/nbdcpy/compat/nbdcopy; \
	echo "check-install: OK"

# Valgrind is optional outside CI (a distro build root may lack it).
check-valgrind: all
	@if command -v valgrind >/dev/null || [ -n "$$NBDCPY_REQUIRE_SERVERS" ]; then \
	  $(MAKE) -C c-tests check-valgrind B=$(CURDIR)/$(B) TEST_ENGINES="$(TEST_ENGINES)" && \
	  $(MAKE) -s check-valgrind-panic; \
	else echo "check-valgrind: valgrind not installed, skipped"; fi

# Fault injection (compiled into the library's unit tests only): a worker
# panics mid-copy with reads in flight, on each engine; under valgrind
# no invalid read or write, nbdcpy_run fails, the next copy succeeds.
PANIC_TEST := ffi::panic_test::a_worker_panic_mid_copy_is_an_error_and_the_next_copy_works
check-valgrind-panic:
	@set -e; bin=$$($(CARGO) test --profile $(TEST_PROFILE) $(CARGOFLAGS) --lib --no-run \
	    --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | head -1); \
	[ -n "$$bin" ] || { echo "check-valgrind-panic: cannot build the unit tests"; exit 1; }; \
	echo "== worker panic mid-copy (valgrind)"; \
	valgrind -q --fair-sched=yes --error-exitcode=99 "$$bin" --exact $(PANIC_TEST) --test-threads=1

# Every tracked source file carries an SPDX-License-Identifier line in its
# first 15 lines (see docs/packaging.md, "Licence"): add
#   SPDX-License-Identifier: LGPL-2.1-or-later
#   Copyright (C) <year> The nbdcpy authors
# in the file's comment syntax.  Documentation, data and Debian control
# files are exempt (SPDX_EXEMPT).
SPDX_EXEMPT := '\.(md|json|lock|txt)$$|(^|/)py\.typed$$|^fuzz/corpus/|^(COPYING|NEWS|\.gitignore)$$|^debian/(changelog|control|copyright|source/format|.*\.(install|docs|examples|symbols|links|manpages))$$'
check-spdx:
	@if [ -d .git ] || [ -f .git ]; then \
	  missing=$$(git ls-files | grep -Ev $(SPDX_EXEMPT) | while read f; do \
	    [ -f "$$f" ] || continue; \
	    head -n 15 "$$f" | grep -q 'SPDX-License-Identifier:' || echo "$$f"; done); \
	  [ -z "$$missing" ] || { echo "files without an SPDX-License-Identifier line (add"; \
	    echo "'SPDX-License-Identifier: LGPL-2.1-or-later' and a copyright line at the top):"; \
	    echo "$$missing"; exit 1; }; \
	fi

# Test servers and independent readers.  Where apt-get and dpkg exist,
# missing Debian packages are installed; elsewhere (a distro build root,
# Fedora's %check) the commands are only looked for, and tests that need a
# missing one skip (or fail with NBDCPY_REQUIRE_SERVERS=1).
TEST_PKGS := nbdkit nbd-server libnbd-bin qemu-utils valgrind pkg-config libssl-dev openssl gnutls-bin python3 python3-pytest golang-go openssh-server netcat-openbsd
TEST_CMDS := nbdkit nbd-server nbdcopy nbdinfo qemu-nbd qemu-img valgrind pkg-config openssl python3 pytest-3 go
test-deps:
	@if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
	  missing=""; for p in $(TEST_PKGS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi; \
	else \
	  missing=""; for c in $(TEST_CMDS); do \
	    command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	  [ -z "$$missing" ] || echo "test-deps: not installed:$$missing (tests needing them skip)"; \
	fi

deps: test-deps

# From nothing to a real, verified copy.
demo: test-deps all
	@set -e; d=$$(mktemp -d); trap 'rm -rf $$d' EXIT; \
	echo "demo: generating a 256 MiB disk with data and holes in $$d"; \
	truncate -s 256M $$d/disk.img; \
	for off in 0 17 100 200; do \
	  head -c 8M /dev/urandom | dd of=$$d/disk.img bs=1M seek=$$off conv=notrunc status=none; \
	done; \
	truncate -s 256M $$d/copy.img; \
	echo "demo: nbdcpy disk.img -> [ qemu-nbd -f raw copy.img ] (an NBD server run by socket activation)"; \
	$(B)/nbdcpy -p -- $$d/disk.img [ qemu-nbd -f raw $$d/copy.img ]; \
	cmp $$d/disk.img $$d/copy.img; \
	echo "demo: OK, copy is identical (checked with cmp)"

# Installs what `make` built (builds only what is missing or stale).  The
# nbdcopy compat link is inert unless its directory is put first in PATH.
install: $(LIBSO) $(B)/libnbdcpy.a $(B)/nbdcpy.install
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	  $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
	  $(DESTDIR)$(LIBEXECDIR)/nbdcpy/compat
	install -m 0755 $(LIBSO) $(DESTDIR)$(LIBDIR)/
	ln -sf libnbdcpy.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libnbdcpy.so.$(SOVERSION)
	ln -sf libnbdcpy.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libnbdcpy.so
	install -m 0644 $(B)/libnbdcpy.a $(DESTDIR)$(LIBDIR)/
	install -m 0644 include/nbdcpy.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0755 $(B)/nbdcpy.install $(DESTDIR)$(BINDIR)/nbdcpy
	ln -sf $$(realpath -m --relative-to=$(LIBEXECDIR)/nbdcpy/compat $(BINDIR))/nbdcpy \
	  $(DESTDIR)$(LIBEXECDIR)/nbdcpy/compat/nbdcopy
	install -m 0644 nbdcpy.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 nbdcpy.3 $(DESTDIR)$(MANDIR)/man3/
	@# One page per exported function, a link to nbdcpy(3) (whose NAME lists
	@# them all: check-man), taken from the map so new functions have one.
	for f in $(MAP_FUNCS); do \
	  echo '.so man3/nbdcpy.3' > $(DESTDIR)$(MANDIR)/man3/$$f.3 || exit 1; done
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    nbdcpy.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/nbdcpy.pc
	install -d $(DESTDIR)$(GODIR) $(DESTDIR)$(GODIR)/example $(DESTDIR)$(PYTHONDIR)/nbdcpy
	install -m 0644 bindings/go/go.mod $(filter-out %_test.go,$(wildcard bindings/go/*.go)) $(DESTDIR)$(GODIR)/
	install -m 0644 bindings/go/example/*.go $(DESTDIR)$(GODIR)/example/
	install -m 0644 bindings/python/nbdcpy/*.py bindings/python/nbdcpy/py.typed \
	  $(DESTDIR)$(PYTHONDIR)/nbdcpy/

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libnbdcpy.so* $(DESTDIR)$(LIBDIR)/libnbdcpy.a \
	  $(DESTDIR)$(INCLUDEDIR)/nbdcpy.h $(DESTDIR)$(BINDIR)/nbdcpy \
	  $(DESTDIR)$(PKGCONFIGDIR)/nbdcpy.pc $(DESTDIR)$(MANDIR)/man1/nbdcpy.1 \
	  $(DESTDIR)$(MANDIR)/man3/nbdcpy.3 $(DESTDIR)$(LIBEXECDIR)/nbdcpy/compat/nbdcopy \
	  $(MAP_FUNCS:%=$(DESTDIR)$(MANDIR)/man3/%.3)
	rm -rf $(DESTDIR)$(GODIR) $(DESTDIR)$(PYTHONDIR)/nbdcpy
	-rmdir $(DESTDIR)$(LIBEXECDIR)/nbdcpy/compat $(DESTDIR)$(LIBEXECDIR)/nbdcpy

# A source tarball with the crates vendored, nbdcpy.spec's Source0
# (docs/building.md, "Building offline"): the files of the commit HEAD, vendor/ and
# .cargo/config.toml pointing cargo at it, in nbdcpy-VERSION/.  cargo
# fetches the crates from crates.io, or with VENDORFLAGS=--offline takes
# them from its local registry cache.  check-dist builds the tarball's
# tree with an empty CARGO_HOME and no network (cargo --offline): every
# crate must come from vendor/.
VENDORFLAGS ?=
DIST := $(B)/nbdcpy-$(VERSION)-vendored.tar.gz
dist:
	@set -e; st=$$(mktemp -d); trap 'rm -rf $$st' EXIT; d=$$st/nbdcpy-$(VERSION); \
	mkdir -p $(B) $$d/.cargo; \
	git archive --format=tar HEAD | tar -x -C $$d; \
	(cd $$d && $(CARGO) vendor --locked $(VENDORFLAGS) vendor > $$st/vendor.toml); \
	grep -q 'directory = "vendor"' $$st/vendor.toml; \
	cp $$st/vendor.toml $$d/.cargo/config.toml; \
	tar -C $$st --sort=name --owner=0 --group=0 --numeric-owner \
	  --mtime="@$$(git log -1 --format=%ct HEAD)" -czf $(CURDIR)/$(DIST) nbdcpy-$(VERSION); \
	echo "dist: $(DIST) ($$(du -h $(DIST) | cut -f1))"

check-dist: dist
	@set -e; st=$$(mktemp -d); trap 'rm -rf $$st' EXIT; \
	tar -C $$st -xzf $(DIST); mkdir $$st/cargo-home; \
	CARGO_HOME=$$st/cargo-home CARGO_TARGET_DIR=$$st/target \
	  $(MAKE) -s -C $$st/nbdcpy-$(VERSION) CARGOFLAGS="--offline --locked" all; \
	LD_LIBRARY_PATH=$$st/nbdcpy-$(VERSION)/build $$st/nbdcpy-$(VERSION)/build/nbdcpy --version; \
	test -z "$$(ls -A $$st/cargo-home/registry 2>/dev/null)"; \
	echo "check-dist: the vendored tarball builds offline"

# Debian packages, built from a copy of the tree's files in build/deb/
# (dpkg-buildpackage writes into the parent directory), in the same
# cargo target directory: the crates it depends on are built once (the
# package's own crate is compiled again, from the copy; its output
# there, $(REL)/libnbdcpy.a, is then the copy's, of the same files).  Where Rust comes from rustup rather than Debian
# packages, the build profile pkg.nbdcpy.rustup drops the rustc and cargo
# build dependencies.  deb-deps installs the packaging tools with apt-get.
DEB_PROFILES ?= $(shell dpkg -s rustc >/dev/null 2>&1 || echo -Ppkg.nbdcpy.rustup)
DEB_PKGS := debhelper lintian dpkg-dev fakeroot binutils pkg-config libssl-dev
deb-deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deb:
	rm -rf $(B)/deb && mkdir -p $(B)/deb/nbdcpy-$(VERSION)
	git ls-files -z --cached --others --exclude-standard | \
	  xargs -0 cp -P --parents -t $(B)/deb/nbdcpy-$(VERSION)
	cd $(B)/deb/nbdcpy-$(VERSION) && \
	  CARGO_TARGET_DIR=$(abspath $(CARGO_TARGET_DIR)) \
	  dpkg-buildpackage -b -us -uc $(DEB_PROFILES)
	lintian --fail-on error $(B)/deb/*.changes
	@ls -1 $(B)/deb/*.deb

# Build the .debs, unpack them into a scratch root and run the command
# from there (a file copy and the nbdcopy compat test).
check-deb: deb
	@set -e; root=$$(mktemp -d); trap 'rm -rf $$root' EXIT; \
	for d in $(B)/deb/*.deb; do dpkg-deb -x $$d $$root; done; \
	lib=$$root/usr/lib/$(MULTIARCH); \
	test -f $$root/usr/share/man/man1/nbdcpy.1.gz; \
	test -f $$root/usr/share/man/man3/nbdcpy.3.gz; \
	for f in $(MAP_FUNCS); do test -f $$root/usr/share/man/man3/$$f.3.gz; done; \
	LD_LIBRARY_PATH=$$lib $$root/usr/bin/nbdcpy --version; \
	head -c 3M /dev/urandom > $$root/src.img; \
	LD_LIBRARY_PATH=$$lib $$root/usr/bin/nbdcpy $$root/src.img $$root/dst.img; \
	cmp $$root/src.img $$root/dst.img; \
	LD_LIBRARY_PATH=$$lib tests/nbdcopy-compat.sh $$root/usr/libexec/nbdcpy/compat/nbdcopy; \
	echo "check-deb: OK"

# Coverage-guided fuzzing of the parsers with libFuzzer (cargo-fuzz; the
# stable toolchain is allowed its -Z flags).  FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in fuzz_reply fuzz_handshake fuzz_uri fuzz_checkpoint; do \
	  mkdir -p corpus-work/$$t; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus-work/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) || exit 1; done

# Side-by-side benchmark with nbdcopy (see ../shared/bench/run.sh).
BENCH ?= ../shared/bench/run.sh
# Alternating runs, medians and the ratio table (bench/compare.sh).
bench: all bench-engines bench-dirty bench-ranges
	BENCH=$(BENCH) NBDCPY=$(CURDIR)/$(B)/nbdcpy bench/compare.sh $(WORKLOADS)
	BENCH=$(BENCH) NBDCPY=$(CURDIR)/$(B)/nbdcpy bench/blkhash.sh

# The two engines and nbdcopy side by side, one alternating run (issue 27:
# --engine=epoll, --engine=io_uring, nbdcopy; NBDCOPY_NEW=wrapper adds a
# newer nbdcopy, e.g. the one ../shared/bench/build-nbdcopy.sh builds).
bench-engines: all
	BENCH=$(BENCH) NBDCPY=$(CURDIR)/$(B)/nbdcpy bench/engines.sh $(WORKLOADS)

# Incremental copy by dirty bitmap against the libnbd Python loop users
# write today and a full nbdcopy (bench/dirty-bitmap.sh, BENCHMARKS.md).
BENCH_PKGS := python3-libnbd qemu-utils libnbd-bin
bench-dirty: all
	@if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BENCH_PKGS); fi
	NBDCPY=$(CURDIR)/$(B)/nbdcpy bench/dirty-bitmap.sh

# Copy of a list of changed areas (--ranges, issue 29) against the libnbd
# Python loop migration tools run today and a full nbdcopy
# (bench/range-list.sh, BENCHMARKS.md).
bench-ranges: all
	@if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BENCH_PKGS); fi
	NBDCPY=$(CURDIR)/$(B)/nbdcpy bench/range-list.sh

clean:
	$(CARGO) clean
	rm -rf $(B)
	$(MAKE) -C c-tests clean B=$(CURDIR)/$(B)
