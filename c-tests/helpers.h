/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* Helpers shared by the C tests: the scratch directory and its files,
 * the clock, the canceller thread and the check that nothing is left.
 */
#ifndef NBDCPY_HELPERS_H
#define NBDCPY_HELPERS_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nbdcpy.h"
#include "tap.h"

/* The engine this run tests: NBDCPY_TEST_ENGINE=io_uring or epoll
 * (make check-c runs the tests once with each), or NULL when unset (no
 * "engine" key set: the library's default).  The variable belongs to
 * the tests only: the library never reads it.
 */
static const char *
test_engine (void)
{
  const char *e = getenv ("NBDCPY_TEST_ENGINE");
  if (e == NULL || *e == '\0')
    return NULL;
  if (strcmp (e, "io_uring") != 0 && strcmp (e, "epoll") != 0) {
    fprintf (stderr, "NBDCPY_TEST_ENGINE must be io_uring or epoll, not '%s'\n", e);
    exit (1);
  }
  return e;
}

/* nbdcpy_config_new with the "engine" key set to test_engine(): every
 * config the tests make comes from here.
 */
static struct nbdcpy_config *
test_config_new (void)
{
  struct nbdcpy_config *c = nbdcpy_config_new ();
  const char *e = test_engine ();
  if (c && e && nbdcpy_config_set (c, "engine", e) != 0) {
    fprintf (stderr, "cannot set engine=%s: %s\n", e, nbdcpy_get_error ());
    exit (1);
  }
  return c;
}

/* The scratch directory (made by test_begin, removed by test_end). */
static char dir[64];
static int under_valgrind;
static int fds_before, tasks_before;

/* NAME inside the scratch directory; four results stay valid at once. */
static char *
path (const char *name)
{
  static char buf[4][256];
  static int i;
  i = (i + 1) % 4;
  snprintf (buf[i], sizeof buf[i], "%s/%s", dir, name);
  return buf[i];
}

static double
now_s (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
have (const char *cmd)
{
  char buf[512];
  snprintf (buf, sizeof buf, "command -v %s >/dev/null 2>&1", cmd);
  return system (buf) == 0;
}

/* Whether nbdkit is installed; its absence is a failure when
 * NBDCPY_REQUIRE_SERVERS is set (CI), a skip otherwise. */
static int
need_nbdkit (void)
{
  if (have ("nbdkit"))
    return 1;
  if (getenv ("NBDCPY_REQUIRE_SERVERS")) {
    CHECK (!"nbdkit is required (NBDCPY_REQUIRE_SERVERS)");
    return 0;
  }
  printf ("# SKIP: nbdkit not installed\n");
  return 0;
}

/* A file of `size` bytes of pseudo-random data (not all zero). */
static void
make_file (const char *p, size_t size, unsigned seed)
{
  FILE *f = fopen (p, "w");
  if (!f) { perror (p); exit (EXIT_FAILURE); }
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < size; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    fputc ((int) (x & 0xff), f);
  }
  fclose (f);
}

/* Independent check: compare two files byte by byte with stdio. */
static int
same_files (const char *a, const char *b)
{
  FILE *fa = fopen (a, "r"), *fb = fopen (b, "r");
  int same = fa && fb;
  while (same) {
    int ca = fgetc (fa), cb = fgetc (fb);
    if (ca != cb) same = 0;
    if (ca == EOF || cb == EOF) break;
  }
  if (fa) fclose (fa);
  if (fb) fclose (fb);
  return same;
}

/* Cancels (or, with close_instead, closes) h from another thread after
 * 300 ms, noting when in `at`.
 */
struct canceller {
  struct nbdcpy *h;
  double at;
  int close_instead;
};

__attribute__ ((unused)) static void *
cancel_later (void *arg)
{
  struct canceller *c = arg;
  usleep (300 * 1000);
  c->at = now_s ();
  if (c->close_instead)
    nbdcpy_close (c->h);
  else
    CHECK (nbdcpy_cancel (c->h) == 0);
  return NULL;
}

/* Entries of a directory, read in-process: a popen'd "ls" races with
 * the parent closing its end of the pipe (valgrind runs popen's vfork as
 * a fork), so it could count one fd more or less.  opendir's own fd is
 * counted every time, so it cancels out.
 */
static int
count_dir (const char *p)
{
  DIR *d = opendir (p);
  if (d == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir (d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir (d);
  return n;
}

/* This process's threads, but the library's forker ("nbdcpy-forker",
 * which starts the servers and lives as long as the process, see
 * nbdcpy(3)). */
static int
count_tasks (void)
{
  char taskpath[64];
  snprintf (taskpath, sizeof taskpath, "/proc/%d/task", (int) getpid ());
  DIR *d = opendir (taskpath);
  if (d == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir (d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char comm[600], name[32] = "";
    snprintf (comm, sizeof comm, "%s/%s/comm", taskpath, e->d_name);
    FILE *f = fopen (comm, "r");
    if (f) {
      if (fgets (name, sizeof name, f) == NULL)
        name[0] = '\0';
      fclose (f);
    }
    if (strcmp (name, "nbdcpy-forker\n") != 0)
      n++;
  }
  closedir (d);
  return n;
}

/* This process's open file descriptors. */
static int
count_fds (void)
{
  char fdpath[64];
  snprintf (fdpath, sizeof fdpath, "/proc/%d/fd", (int) getpid ());
  return count_dir (fdpath);
}

/* Makes the scratch directory from TEMPLATE (mkdtemp's), the 1 MiB file
 * "src" in it, and notes the fds and threads open before any test.
 */
static void
test_begin (const char *template)
{
  under_valgrind = getenv ("NBDCPY_TEST_VALGRIND") != NULL;
  snprintf (dir, sizeof dir, "%s", template);
  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    exit (EXIT_FAILURE);
  }
  make_file (path ("src"), 1 << 20, 0);
  fds_before = count_fds ();
  tasks_before = count_tasks ();
}

/* After every test (successes, failures, cancellations, server
 * subprocesses): no file descriptor, thread or child process is left.
 * A thread that was joined, or an io_uring io-wq worker (iou-wrk-*) of a
 * closed ring, may still be leaving /proc for a moment: it is given up
 * to GRACE_MS; a leak stays.
 */
static void
check_nothing_left_behind (int grace_ms)
{
  int fds = count_fds (), tasks = count_tasks ();
  for (int i = 0; i < grace_ms / 10 && tasks != tasks_before; i++) {
    usleep (10 * 1000);
    tasks = count_tasks ();
  }
  printf ("# fds %d -> %d, threads %d -> %d\n", fds_before, fds, tasks_before, tasks);
  CHECK (fds == fds_before);
  CHECK (tasks == tasks_before);
  char cmd[96];
  /* The shell running this check is our child too: leave it out. */
  snprintf (cmd, sizeof cmd, "test -z \"$(pgrep -P %d | grep -vx $$)\"",
            (int) getpid ());
  CHECK (system (cmd) == 0);    /* no child process of ours remains */
}

/* Removes the scratch directory; the exit status of the run. */
static int
test_end (void)
{
  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "warning: could not remove %s\n", dir);
  return tap_done ();
}

#endif
