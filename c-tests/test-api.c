/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* Tests of every function of the public C API, including error paths. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nbdcpy.h"
#include "tap.h"

static char dir[] = "/tmp/nbdcpy-ctest-XXXXXX";
static int under_valgrind;

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

static int
have (const char *cmd)
{
  char buf[512];
  snprintf (buf, sizeof buf, "command -v %s >/dev/null 2>&1", cmd);
  return system (buf) == 0;
}

static void
test_version (void)
{
  const char *v = nbdcpy_version ();
  CHECK (v != NULL);
  CHECK (v && strlen (v) >= 5 && v[0] >= '0' && v[0] <= '9');
}

static void *
fresh_thread_error (void *arg)
{
  (void) arg;
  /* Errors are per thread: a new thread has none. */
  intptr_t ok = nbdcpy_get_error () == NULL && nbdcpy_get_errno () == 0;
  return (void *) ok;
}

static void
test_errors_are_thread_local (void)
{
  CHECK (nbdcpy_config_set (NULL, "flush", NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  pthread_t t;
  void *ok = NULL;
  pthread_create (&t, NULL, fresh_thread_error, NULL);
  pthread_join (t, &ok);
  CHECK (ok == (void *) 1);
  CHECK (nbdcpy_get_errno () == EFAULT);   /* ours is unchanged */
}

static void
test_config (void)
{
  struct nbdcpy_config *c = nbdcpy_config_new ();
  CHECK (c != NULL);
  CHECK (nbdcpy_config_set (c, "connections", "2") == 0);
  CHECK (nbdcpy_config_set (c, "requests", "16") == 0);
  CHECK (nbdcpy_config_set (c, "request-size", "1M") == 0);
  CHECK (nbdcpy_config_set (c, "queue-size", "64M") == 0);
  CHECK (nbdcpy_config_set (c, "sparse", "64k") == 0);
  CHECK (nbdcpy_config_set (c, "threads", "0") == 0);
  CHECK (nbdcpy_config_set (c, "allocated", NULL) == 0);
  CHECK (nbdcpy_config_set (c, "allocated", "0") == 0);
  CHECK (nbdcpy_config_set (c, "destination-is-zero", "1") == 0);
  CHECK (nbdcpy_config_set (c, "flush", "1") == 0);
  CHECK (nbdcpy_config_set (c, "no-extents", NULL) == 0);
  CHECK (nbdcpy_config_set (c, "synchronous", "0") == 0);

  /* Unknown names and bad values say which. */
  CHECK (nbdcpy_config_set (c, "bogus-option", "1") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "bogus-option") != NULL);
  CHECK (nbdcpy_config_set (c, "request-size", "64M") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "request-size") != NULL);
  CHECK (strstr (nbdcpy_get_error (), "64M") != NULL);
  CHECK (nbdcpy_config_set (c, "connections", "lots") == -1);
  CHECK (strstr (nbdcpy_get_error (), "connections") != NULL);
  CHECK (nbdcpy_config_set (c, "requests", NULL) == -1);
  CHECK (nbdcpy_config_set (c, "flush", "maybe") == -1);
  CHECK (nbdcpy_config_set (c, "sparse", "1000") == -1);

  /* NULL arguments. */
  CHECK (nbdcpy_config_set (NULL, "flush", "1") == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_config_set (c, NULL, "1") == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);

  /* Commands. */
  const char *argv[] = { "nbdkit", "memory", "1M", NULL };
  const char *empty[] = { NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, NULL) == 0);
  CHECK (nbdcpy_config_set_command (c, 7, argv) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, empty) == -1);
  CHECK (nbdcpy_config_set_command (NULL, NBDCPY_SOURCE, argv) == -1);

  CHECK (nbdcpy_config_set_progress (NULL, NULL, NULL, 0) == -1);
  CHECK (nbdcpy_config_set_progress (c, NULL, NULL, 0) == 0);

  nbdcpy_config_free (c);
  nbdcpy_config_free (c);       /* double free: detected, ignored */
  nbdcpy_config_free (NULL);
  /* A freed config is rejected, not used. */
  CHECK (nbdcpy_config_set (c, "flush", "1") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
}

static void
test_open_errors (void)
{
  CHECK (nbdcpy_open (NULL, path ("x"), NULL) == NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_open (path ("src"), NULL, NULL) == NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);

  CHECK (nbdcpy_open (path ("missing"), path ("dst"), NULL) == NULL);
  CHECK (nbdcpy_get_errno () == ENOENT);
  CHECK (strstr (nbdcpy_get_error (), "source") != NULL);
  CHECK (strstr (nbdcpy_get_error (), "missing") != NULL);

  CHECK (nbdcpy_open ("null:", path ("dst"), NULL) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_open (path ("src"), "/nonexistent-dir/x", NULL) == NULL);
  CHECK (strstr (nbdcpy_get_error (), "destination") != NULL);

  /* Both a string and a command for one side. */
  struct nbdcpy_config *c = nbdcpy_config_new ();
  const char *argv[] = { "nbdkit", "memory", "1M", NULL };
  nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv);
  CHECK (nbdcpy_open (path ("src"), "null:", c) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  nbdcpy_config_free (c);
}

static void
test_unreachable_server (void)
{
  double t0 = now_s ();
  struct nbdcpy *h =
    nbdcpy_open ("nbd+unix:///?socket=/nonexistent/nbd.sock", "null:", NULL);
  CHECK (h == NULL);
  CHECK (nbdcpy_get_errno () == ENOENT);
  CHECK (strstr (nbdcpy_get_error (), "/nonexistent/nbd.sock") != NULL);
  h = nbdcpy_open ("nbd://127.0.0.1:1/", "null:", NULL);
  CHECK (h == NULL);
  CHECK (nbdcpy_get_errno () == ECONNREFUSED);
  CHECK (strstr (nbdcpy_get_error (), "127.0.0.1") != NULL);
  CHECK (now_s () - t0 < 10);
  h = nbdcpy_open ("nbd+unix:///?socket=/x&bogus=1", "null:", NULL);
  CHECK (h == NULL);
  CHECK (strstr (nbdcpy_get_error (), "bogus") != NULL);
}

static void
test_copy_file_to_file (void)
{
  make_file (path ("src"), 3 * 1024 * 1024 + 4097, 1);
  make_file (path ("dst"), 5 * 1024 * 1024, 2);   /* older, larger file */
  struct nbdcpy *h = nbdcpy_open (path ("src"), path ("dst"), NULL);
  CHECK (h != NULL);
  if (!h) { fprintf (stderr, "  %s\n", nbdcpy_get_error ()); return; }
  CHECK (nbdcpy_run (h) == 0);
  CHECK (same_files (path ("src"), path ("dst")));

  struct nbdcpy_stats st;
  memset (&st, 0xff, sizeof st);
  CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.size == 3 * 1024 * 1024 + 4097);
  CHECK (st.bytes_done == st.size);
  CHECK (st.bytes_copied + st.bytes_zeroed + st.bytes_skipped == st.size);
  CHECK (st.requests > 0);
  CHECK (st.elapsed_ns > 0);
  CHECK (st.finished == 1);
  CHECK (st.bytes_spliced == 0);  /* file -> file never splices */

  /* A caller with an older, smaller struct gets a prefix ... */
  uint64_t prefix[2] = { 0, 0 };
  CHECK (nbdcpy_stats (h, (struct nbdcpy_stats *) prefix, sizeof prefix) == 0);
  CHECK (prefix[0] == st.size && prefix[1] == st.bytes_done);
  /* ... a newer, larger one gets the rest zeroed. */
  unsigned char big[sizeof st + 16];
  memset (big, 0xaa, sizeof big);
  CHECK (nbdcpy_stats (h, (struct nbdcpy_stats *) big, sizeof big) == 0);
  CHECK (big[sizeof st] == 0 && big[sizeof big - 1] == 0);
  CHECK (nbdcpy_stats (h, NULL, sizeof st) == -1);
  CHECK (nbdcpy_stats (h, &st, 4) == -1);

  /* A handle runs once. */
  CHECK (nbdcpy_run (h) == -1);
  CHECK (nbdcpy_get_errno () == EALREADY);
  nbdcpy_close (h);
  nbdcpy_close (h);             /* double close: detected, ignored */
  nbdcpy_close (NULL);
  CHECK (nbdcpy_run (h) == -1); /* stale handle rejected */
  CHECK (nbdcpy_get_errno () == EINVAL);
}

static void
test_copy_to_null_and_empty (void)
{
  struct nbdcpy *h = nbdcpy_open (path ("src"), "null:", NULL);
  CHECK (h != NULL);
  CHECK (h && nbdcpy_run (h) == 0);
  nbdcpy_close (h);

  make_file (path ("empty"), 0, 3);
  h = nbdcpy_open (path ("empty"), path ("empty-copy"), NULL);
  CHECK (h != NULL);
  CHECK (h && nbdcpy_run (h) == 0);
  struct stat sb;
  CHECK (stat (path ("empty-copy"), &sb) == 0 && sb.st_size == 0);
  nbdcpy_close (h);
}

static void
test_null_handle (void)
{
  struct nbdcpy_stats st;
  CHECK (nbdcpy_run (NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_stats (NULL, &st, sizeof st) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_cancel (NULL) == -1);
  nbdcpy_close (NULL);
}

struct watcher {
  struct nbdcpy *h;
  volatile int stop;
  int calls, errors, went_back;
  uint64_t last;
};

static void *
watch_stats (void *arg)
{
  struct watcher *w = arg;
  while (!w->stop) {
    struct nbdcpy_stats st;
    if (nbdcpy_stats (w->h, &st, sizeof st) != 0)
      w->errors++;
    else {
      if (st.bytes_done < w->last) w->went_back++;
      w->last = st.bytes_done;
    }
    w->calls++;
    usleep (200);
  }
  return NULL;
}

static int progress_calls;
static uint64_t progress_last;

static int
on_progress (void *opaque, const struct nbdcpy_stats *st)
{
  CHECK (opaque == (void *) 0x1234);
  CHECK (st->bytes_done >= progress_last);
  progress_last = st->bytes_done;
  progress_calls++;
  return 0;
}

static void
test_stats_during_run (void)
{
  size_t size = (under_valgrind ? 8 : 64) * 1024 * 1024;
  make_file (path ("big"), size, 4);
  struct nbdcpy_config *c = nbdcpy_config_new ();
  nbdcpy_config_set (c, "request-size", "64k");
  nbdcpy_config_set (c, "requests", "4");
  nbdcpy_config_set_progress (c, on_progress, (void *) 0x1234, 1);
  struct nbdcpy *h = nbdcpy_open (path ("big"), path ("big-copy"), c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (!h) return;
  struct watcher w[3];
  pthread_t t[3];
  for (int i = 0; i < 3; i++) {
    memset (&w[i], 0, sizeof w[i]);
    w[i].h = h;
    pthread_create (&t[i], NULL, watch_stats, &w[i]);
  }
  CHECK (nbdcpy_run (h) == 0);
  for (int i = 0; i < 3; i++) {
    w[i].stop = 1;
    pthread_join (t[i], NULL);
    CHECK (w[i].calls > 0);
    CHECK (w[i].errors == 0);
    CHECK (w[i].went_back == 0);
  }
  CHECK (progress_calls >= 1);
  CHECK (progress_last == size);   /* last call reports completion */
  CHECK (same_files (path ("big"), path ("big-copy")));
  nbdcpy_close (h);
}

struct canceller {
  struct nbdcpy *h;
  double at;
};

static void *
cancel_later (void *arg)
{
  struct canceller *c = arg;
  usleep (300 * 1000);
  c->at = now_s ();
  CHECK (nbdcpy_cancel (c->h) == 0);
  return NULL;
}

static void
test_cancel_from_thread (void)
{
  /* A FIFO source that never delivers: the copy blocks until cancelled. */
  CHECK (mkfifo (path ("fifo"), 0600) == 0);
  int keep = open (path ("fifo"), O_RDWR);   /* a writer that never writes */
  CHECK (keep >= 0);
  struct nbdcpy *h = nbdcpy_open (path ("fifo"), path ("fifo-copy"), NULL);
  CHECK (h != NULL);
  if (!h) { close (keep); return; }
  struct canceller c = { h, 0 };
  pthread_t t;
  pthread_create (&t, NULL, cancel_later, &c);
  CHECK (nbdcpy_run (h) == -1);
  double took = now_s () - c.at;
  if (nbdcpy_get_errno () != ECANCELED)
    fprintf (stderr, "  error: %s\n", nbdcpy_get_error ());
  CHECK (nbdcpy_get_errno () == ECANCELED);
  CHECK (strstr (nbdcpy_get_error (), "cancel") != NULL);
  pthread_join (t, NULL);
  printf ("# cancel took %.1f ms\n", took * 1000);
  CHECK (took < (under_valgrind ? 2.0 : 0.5));
  nbdcpy_close (h);
  close (keep);
}

static int
cancel_from_progress (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque; (void) st;
  return 1;
}

static void
test_cancel_from_progress (void)
{
  CHECK (mkfifo (path ("fifo2"), 0600) == 0);
  int keep = open (path ("fifo2"), O_RDWR);
  struct nbdcpy_config *c = nbdcpy_config_new ();
  nbdcpy_config_set_progress (c, cancel_from_progress, NULL, 10);
  struct nbdcpy *h = nbdcpy_open (path ("fifo2"), "null:", c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == -1);
    CHECK (nbdcpy_get_errno () == ECANCELED);
  }
  nbdcpy_close (h);
  close (keep);
}

static void
test_destination_smaller_than_source (void)
{
  if (!have ("nbdkit")) {
    printf ("# SKIP: nbdkit not installed\n");
    return;
  }
  make_file (path ("two-mib"), 2 * 1024 * 1024, 5);
  struct nbdcpy_config *c = nbdcpy_config_new ();
  const char *argv[] = { "nbdkit", "memory", "1M", NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, argv) == 0);
  struct nbdcpy *h = nbdcpy_open (path ("two-mib"), NULL, c);
  CHECK (h == NULL);
  CHECK (nbdcpy_get_errno () == ENOSPC);
  CHECK (strstr (nbdcpy_get_error (), "smaller") != NULL);

  /* The same server, big enough: a real copy through the API. */
  const char *argv2[] = { "nbdkit", "memory", "3M", NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, argv2) == 0);
  h = nbdcpy_open (path ("two-mib"), NULL, c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == 0);
    struct nbdcpy_stats st;
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.bytes_done == 2 * 1024 * 1024);
  }
  nbdcpy_close (h);
  nbdcpy_config_free (c);

  /* A unix-socket server into null: moves every byte by splice. */
  c = nbdcpy_config_new ();
  const char *pattern[] = { "nbdkit", "pattern", "2M", NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, pattern) == 0);
  h = nbdcpy_open (NULL, "null:", c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == 0);
    struct nbdcpy_stats st;
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.bytes_copied == 2 * 1024 * 1024);
    CHECK (st.bytes_spliced == st.bytes_copied);
    CHECK (st.bytes_memcpy == 0);
  }
  nbdcpy_close (h);
  nbdcpy_config_free (c);
}

static int
count_dir (const char *p)
{
  char cmd[128];
  snprintf (cmd, sizeof cmd, "ls %s | wc -l", p);
  FILE *f = popen (cmd, "r");
  int n = -1;
  if (f) {
    if (fscanf (f, "%d", &n) != 1)
      n = -1;
    pclose (f);
  }
  return n;
}

static int fds_before, tasks_before;

/* After every copy above (successes, failures, cancellations, server
 * subprocesses): no file descriptor, thread or child process is left.
 * (`ls /proc/self/fd` lists the ls process's own fds, the same each time.)
 */
static void
test_nothing_left_behind (void)
{
  char fdpath[64], taskpath[64];
  snprintf (fdpath, sizeof fdpath, "/proc/%d/fd", (int) getpid ());
  snprintf (taskpath, sizeof taskpath, "/proc/%d/task", (int) getpid ());
  int fds = count_dir (fdpath), tasks = count_dir (taskpath);
  printf ("# fds %d -> %d, threads %d -> %d\n", fds_before, fds, tasks_before, tasks);
  CHECK (fds == fds_before);
  CHECK (tasks == tasks_before);
  char cmd[96];
  /* The shell running this check is our child too: leave it out. */
  snprintf (cmd, sizeof cmd, "test -z \"$(pgrep -P %d | grep -vx $$)\"",
            (int) getpid ());
  CHECK (system (cmd) == 0);    /* no child process of ours remains */
}

int
main (void)
{
  under_valgrind = getenv ("NBDCPY_TEST_VALGRIND") != NULL;
  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    return EXIT_FAILURE;
  }
  make_file (path ("src"), 1024 * 1024, 0);
  {
    char fdpath[64], taskpath[64];
    snprintf (fdpath, sizeof fdpath, "/proc/%d/fd", (int) getpid ());
    snprintf (taskpath, sizeof taskpath, "/proc/%d/task", (int) getpid ());
    fds_before = count_dir (fdpath);
    tasks_before = count_dir (taskpath);
  }

  RUN (test_version);
  RUN (test_errors_are_thread_local);
  RUN (test_config);
  RUN (test_open_errors);
  RUN (test_unreachable_server);
  RUN (test_copy_file_to_file);
  RUN (test_copy_to_null_and_empty);
  RUN (test_null_handle);
  RUN (test_stats_during_run);
  RUN (test_cancel_from_thread);
  RUN (test_cancel_from_progress);
  RUN (test_destination_smaller_than_source);
  RUN (test_nothing_left_behind);

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "warning: could not remove %s\n", dir);
  return tap_done ();
}
