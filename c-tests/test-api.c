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
#include <unistd.h>

#include "nbdcpy.h"
#include "tap.h"
#include "helpers.h"

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
  struct nbdcpy_config *c = test_config_new ();
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
  struct nbdcpy_config *c = test_config_new ();
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
  CHECK (nbdcpy_config_set (NULL, "flush", NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_stats (NULL, &st, 0) == -1);
  /* nbdcpy_cancel (async-signal-safe) says it by errno alone. */
  errno = 0;
  CHECK (nbdcpy_cancel (NULL) == -1);
  CHECK (errno == EFAULT);
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
  struct nbdcpy_config *c = test_config_new ();
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
  struct canceller c = { h, 0, 0 };
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
  struct nbdcpy_config *c = test_config_new ();
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
  if (!need_nbdkit ())
    return;
  make_file (path ("two-mib"), 2 * 1024 * 1024, 5);
  struct nbdcpy_config *c = test_config_new ();
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
  c = test_config_new ();
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

/* Ranges and incremental copies are config keys. */
static void
test_ranges_and_dirty_bitmap (void)
{
  const size_t M = 1024 * 1024;
  make_file (path ("r-src"), 4 * M, 7);
  make_file (path ("r-dst"), 4 * M, 8);
  make_file (path ("r-old"), 4 * M, 8);
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "offset", "1M") == 0);
  CHECK (nbdcpy_config_set (c, "length", "12345") == 0);
  CHECK (nbdcpy_config_set (c, "destination-offset", "3") == 0);
  struct nbdcpy *h = nbdcpy_open (path ("r-src"), path ("r-dst"), c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == 0);
    struct nbdcpy_stats st;
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.size == 12345 && st.bytes_done == 12345);
  }
  nbdcpy_close (h);
  /* Independent check: the range moved, the rest is the old file. */
  FILE *fs = fopen (path ("r-src"), "r"), *fd = fopen (path ("r-dst"), "r"),
    *fo = fopen (path ("r-old"), "r");
  int ok = fs && fd && fo;
  for (size_t i = 0; ok && i < 4 * M; i++) {
    int d = fgetc (fd), o = fgetc (fo);
    if (i >= 3 && i < 3 + 12345) {
      if (i == 3) fseek (fs, M, SEEK_SET);
      ok = d == fgetc (fs);
    }
    else
      ok = d == o;
    if (!ok) printf ("# differs at %zu\n", i);
  }
  CHECK (ok && fgetc (fd) == EOF);
  if (fs) fclose (fs);
  if (fd) fclose (fd);
  if (fo) fclose (fo);
  /* Out of range: an error naming the option. */
  CHECK (nbdcpy_config_set (c, "length", "4M") == 0);
  CHECK (nbdcpy_open (path ("r-src"), path ("r-dst"), c) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "--length") != NULL);
  /* A dirty bitmap needs an NBD source. */
  CHECK (nbdcpy_config_set (c, "length", "1M") == 0);
  CHECK (nbdcpy_config_set (c, "dirty-bitmap", "b0") == 0);
  CHECK (nbdcpy_open (path ("r-src"), path ("r-dst"), c) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "dirty-bitmap") != NULL);
  nbdcpy_config_free (c);

  if (!have ("qemu-nbd") || !have ("qemu-img") || !have ("qemu-io")) {
    printf ("# SKIP: qemu tools not installed\n");
    return;
  }
  /* An incremental copy: a qcow2 with bitmap b0, a full copy, changes,
   * then only the dirty blocks through qemu-nbd -B b0.
   */
  char cmd[2048];
  snprintf (cmd, sizeof cmd,
            "set -e; q=%s; f=%s; qemu-img create -q -f qcow2 $q 8M; "
            "qemu-io -f qcow2 -c 'write -P 1 0 4M' $q >/dev/null; "
            "qemu-img bitmap --add --enable -f qcow2 $q b0; "
            "qemu-img convert -f qcow2 -O raw $q $f; "
            "qemu-io -f qcow2 -c 'write -P 2 100000 3' "
            "-c 'write -z 2M 65536' -c 'write -P 3 7M 512' $q >/dev/null",
            path ("inc.qcow2"), path ("inc.raw"));
  CHECK (system (cmd) == 0);
  c = test_config_new ();
  const char *qn[] = { "qemu-nbd", "-r", "-f", "qcow2", "-B", "b0",
                       path ("inc.qcow2"), NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, qn) == 0);
  CHECK (nbdcpy_config_set (c, "dirty-bitmap", "b0") == 0);
  h = nbdcpy_open (NULL, path ("inc.raw"), c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == 0);
    struct nbdcpy_stats st;
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.bytes_copied + st.bytes_zeroed == st.size);
    CHECK (st.bytes_done == st.size);
    CHECK (st.size > 0 && st.size < 1024 * 1024);
    CHECK (st.bytes_skipped == 8 * M - st.size);
  }
  nbdcpy_close (h);
  nbdcpy_config_free (c);
  snprintf (cmd, sizeof cmd, "qemu-img compare -q -f qcow2 -F raw %s %s",
            path ("inc.qcow2"), path ("inc.raw"));
  CHECK (system (cmd) == 0);
}

/* Every failing call sets both the message and the errno: each check
 * below first leaves a different errno behind, so a call that failed
 * without recording its own error would show the old one.
 */
static void
set_einval (void)
{
  struct nbdcpy_config *c = test_config_new ();
  nbdcpy_config_set (c, "bogus", "1");
  nbdcpy_config_free (c);
}

static void
test_every_failure_sets_errors (void)
{
  struct nbdcpy_stats st;
  int local;

  /* nbdcpy_cancel sets errno only (see test-threads). */
  set_einval ();
  errno = 0;
  CHECK (nbdcpy_cancel (NULL) == -1);
  CHECK (errno == EFAULT);
  CHECK (nbdcpy_get_errno () == EINVAL);

  /* A pointer that never was a handle: refused, not dereferenced. */
  errno = 0;
  CHECK (nbdcpy_cancel ((struct nbdcpy *) &local) == -1);
  CHECK (errno == EINVAL);
  CHECK (nbdcpy_run ((struct nbdcpy *) &local) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_stats ((struct nbdcpy *) &local, &st, sizeof st) == -1);
  CHECK (nbdcpy_config_set ((struct nbdcpy_config *) &local, "flush", "1")
         == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);

  set_einval ();
  CHECK (nbdcpy_run (NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  set_einval ();
  CHECK (nbdcpy_stats (NULL, &st, sizeof st) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  set_einval ();
  CHECK (nbdcpy_config_set_progress (NULL, NULL, NULL, 0) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  set_einval ();
  CHECK (nbdcpy_config_set_log (NULL, NULL, NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  set_einval ();
  CHECK (nbdcpy_config_set_command (NULL, NBDCPY_SOURCE, NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  set_einval ();
  CHECK (nbdcpy_open (NULL, "null:", NULL) == NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);

  struct nbdcpy *h = nbdcpy_open (path ("src"), "null:", NULL);
  CHECK (h != NULL);
  set_einval ();
  CHECK (h && nbdcpy_stats (h, NULL, 0) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  nbdcpy_close (h);
  /* Void functions given a stale pointer ignore it and say so. */
  set_einval ();
  CHECK (nbdcpy_get_errno () == EINVAL);
  nbdcpy_run (NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);
  nbdcpy_close (h);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "stale") != NULL);
}

/* A stale pointer never reaches a newer object, whatever address the
 * allocator hands out next.
 */
static void
test_stale_handles_never_alias (void)
{
  struct nbdcpy *old = nbdcpy_open (path ("src"), "null:", NULL);
  CHECK (old != NULL);
  nbdcpy_close (old);
  struct nbdcpy *h = nbdcpy_open (path ("src"), path ("alias-copy"), NULL);
  CHECK (h != NULL);
  CHECK (h != old);
  /* Double close, cancel and stats of the old pointer: rejected. */
  nbdcpy_close (old);
  CHECK (nbdcpy_get_errno () == EINVAL);
  errno = 0;
  CHECK (nbdcpy_cancel (old) == -1);
  CHECK (errno == EINVAL);
  struct nbdcpy_stats st;
  CHECK (nbdcpy_stats (old, &st, sizeof st) == -1);
  CHECK (nbdcpy_run (old) == -1);
  /* ... and the new handle is untouched: not closed, not cancelled. */
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (same_files (path ("src"), path ("alias-copy")));
  nbdcpy_close (h);

  /* Configs too. */
  struct nbdcpy_config *oldc = test_config_new ();
  nbdcpy_config_free (oldc);
  struct nbdcpy_config *c = test_config_new ();
  CHECK (c != oldc);
  nbdcpy_config_free (oldc);
  CHECK (nbdcpy_config_set (c, "flush", "1") == 0);
  CHECK (nbdcpy_config_set (oldc, "flush", "1") == -1);
  nbdcpy_config_free (c);
}

static int close_from_progress_calls;
static struct nbdcpy *close_me;

static int
close_from_progress (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque; (void) st;
  close_from_progress_calls++;
  nbdcpy_close (close_me);
  return 0;
}

/* Closing a handle whose run is still going (here from its own progress
 * callback) cancels the run; the handle is freed when the run returns.
 */
static void
test_close_during_run (void)
{
  CHECK (mkfifo (path ("fifo3"), 0600) == 0);
  int keep = open (path ("fifo3"), O_RDWR);
  struct nbdcpy_config *c = test_config_new ();
  nbdcpy_config_set_progress (c, close_from_progress, NULL, 10);
  struct nbdcpy *h = nbdcpy_open (path ("fifo3"), "null:", c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  close_me = h;
  if (h) {
    CHECK (nbdcpy_run (h) == -1);
    CHECK (nbdcpy_get_errno () == ECANCELED);
    CHECK (close_from_progress_calls >= 1);
    CHECK (nbdcpy_cancel (h) == -1);      /* freed by now */
  }
  close (keep);
}

static int count_calls;
static struct nbdcpy_stats count_last;

static int
count_progress (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque;
  count_calls++;
  count_last = *st;
  return 0;
}

struct feeder {
  int fd;
  double seconds;
  size_t total;
};

/* Writes 64 KiB every 50 ms for `seconds`, then closes. */
static void *
feed_slowly (void *arg)
{
  struct feeder *f = arg;
  static char buf[65536];
  memset (buf, 'x', sizeof buf);
  double end = now_s () + f->seconds;
  while (now_s () < end) {
    if (write (f->fd, buf, sizeof buf) != (ssize_t) sizeof buf)
      break;
    f->total += sizeof buf;
    usleep (50 * 1000);
  }
  close (f->fd);
  return NULL;
}

static void
test_progress_calls (void)
{
  /* A quick copy: one call, the final one. */
  make_file (path ("one-mib"), 1024 * 1024, 6);
  struct nbdcpy_config *c = test_config_new ();
  nbdcpy_config_set_progress (c, count_progress, NULL, 1000);
  struct nbdcpy *h = nbdcpy_open (path ("one-mib"), path ("quick-copy"), c);
  CHECK (h != NULL);
  count_calls = 0;
  CHECK (h && nbdcpy_run (h) == 0);
  printf ("# quick copy: %d progress call(s)\n", count_calls);
  CHECK (count_calls == 1);
  CHECK (count_last.bytes_done == 1024 * 1024);
  CHECK (count_last.size_known == 1);
  nbdcpy_close (h);

  /* A stream of unknown size for 2.5 s at interval 1000 ms: the interval
   * holds (2 calls while it runs, give or take one, plus the final).
   */
  CHECK (mkfifo (path ("slow-fifo"), 0600) == 0);
  /* The feeder's end is open first, so opening the FIFO does not block;
   * it is the only writer, so closing it ends the stream.
   */
  struct feeder f = { open (path ("slow-fifo"), O_RDWR), 2.5, 0 };
  CHECK (f.fd >= 0);
  h = nbdcpy_open (path ("slow-fifo"), "null:", c);
  CHECK (h != NULL);
  nbdcpy_config_free (c);
  if (!h) { close (f.fd); return; }
  struct nbdcpy_stats st;
  CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.size == 0 && st.size_known == 0 && st.bytes_done == 0);
  pthread_t t;
  pthread_create (&t, NULL, feed_slowly, &f);
  count_calls = 0;
  CHECK (nbdcpy_run (h) == 0);
  pthread_join (t, NULL);
  printf ("# 2.5 s stream at 1000 ms: %d progress call(s)\n", count_calls);
  CHECK (count_calls >= 2 && count_calls <= 4);
  CHECK (count_last.bytes_done == f.total);
  CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.size == f.total && st.size_known == 1);
  nbdcpy_close (h);
}

/* Right after nbdcpy_open the size is known (for non-streams). */
static void
test_stats_after_open (void)
{
  make_file (path ("one-mib"), 1024 * 1024, 6);
  struct nbdcpy *h = nbdcpy_open (path ("one-mib"), "null:", NULL);
  CHECK (h != NULL);
  if (!h) return;
  struct nbdcpy_stats st;
  memset (&st, 0xff, sizeof st);
  CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.size == 1024 * 1024);
  CHECK (st.size_known == 1);
  CHECK (st.bytes_done == 0 && st.requests == 0 && st.elapsed_ns == 0);
  CHECK (st.finished == 0);
  CHECK (st.reserved == 0);
  CHECK (st.reconnects == 0);
  CHECK (st.retried_requests == 0 && st.resumed_bytes == 0);
  nbdcpy_close (h);
}

/* The "page-cache" key: drop or keep; either way a file copy is whole. */
static void
test_page_cache_key (void)
{
  static const char *const modes[] = { "keep", "drop" };
  make_file (path ("pc-src"), 3 * 1024 * 1024 + 512, 28);
  for (size_t i = 0; i < 2; i++) {
    struct nbdcpy_config *c = nbdcpy_config_new ();
    CHECK (nbdcpy_config_set (c, "page-cache", modes[i]) == 0);
    CHECK (nbdcpy_config_set (c, "page-cache", "sometimes") == -1);
    CHECK (nbdcpy_get_errno () == EINVAL);
    CHECK (nbdcpy_get_error () && strstr (nbdcpy_get_error (), "page-cache"));
    CHECK (nbdcpy_config_set (c, "page-cache", NULL) == -1);
    struct nbdcpy *h = nbdcpy_open (path ("pc-src"), path ("pc-dst"), c);
    nbdcpy_config_free (c);
    CHECK (h && nbdcpy_run (h) == 0);
    nbdcpy_close (h);
    CHECK (same_files (path ("pc-src"), path ("pc-dst")));
  }
}

/* The "checkpoint" keys: a copy cancelled part way leaves FILE, which
 * the same copy resumes from (resumed_bytes), and removes when done.
 */
static int
cancel_after_2mib (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque;
  return st->bytes_done >= 2 * 1024 * 1024;
}

static void
test_checkpoint_keys (void)
{
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "checkpoint-interval", "0.05") == 0);
  CHECK (nbdcpy_config_set (c, "checkpoint-interval", "-1") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_get_error () &&
         strstr (nbdcpy_get_error (), "checkpoint-interval"));
  CHECK (nbdcpy_config_set (c, "checkpoint", path ("ckpt")) == 0);
  char *v = nbdcpy_config_get (c, "checkpoint");
  CHECK (v && strcmp (v, path ("ckpt")) == 0);
  free (v);
  CHECK (nbdcpy_config_set (c, "rate", "4M") == 0);
  make_file (path ("ck-src"), 8 * 1024 * 1024, 31);
  unlink (path ("ckpt"));
  nbdcpy_config_set_progress (c, cancel_after_2mib, NULL, 10);
  struct nbdcpy *h = nbdcpy_open (path ("ck-src"), path ("ck-dst"), c);
  CHECK (h != NULL);
  CHECK (h && nbdcpy_run (h) == -1);
  CHECK (nbdcpy_get_errno () == ECANCELED);
  nbdcpy_close (h);
  CHECK (access (path ("ckpt"), F_OK) == 0);
  nbdcpy_config_set_progress (c, NULL, NULL, 0);
  CHECK (nbdcpy_config_set (c, "rate", "0") == 0);
  h = nbdcpy_open (path ("ck-src"), path ("ck-dst"), c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  struct nbdcpy_stats st;
  memset (&st, 0xff, sizeof st);
  CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.resumed_bytes >= 2 * 1024 * 1024 && st.resumed_bytes < st.size);
  CHECK (st.bytes_done == st.resumed_bytes);
  CHECK (st.retried_requests == 0);
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.bytes_done == 8 * 1024 * 1024);
  CHECK (st.bytes_copied < 7 * 1024 * 1024);
  nbdcpy_close (h);
  CHECK (same_files (path ("ck-src"), path ("ck-dst")));
  CHECK (access (path ("ckpt"), F_OK) == -1 && errno == ENOENT);
}

/* The reconnect keys: values checked; a copy with them on still works
 * and counts no reconnect when none was needed.
 */
static void
test_retry_keys (void)
{
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "retries", "3") == 0);
  CHECK (nbdcpy_config_set (c, "retries", "-1") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_config_set (c, "retries", NULL) == -1);
  CHECK (nbdcpy_config_set (c, "retry-delay", "0.25") == 0);
  CHECK (nbdcpy_config_set (c, "retry-delay", "soon") == -1);
  CHECK (nbdcpy_get_error () && strstr (nbdcpy_get_error (), "retry-delay"));
  CHECK (nbdcpy_config_set (c, "retry-delay", "-1") == -1);
  make_file (path ("retry-src"), 2 * 1024 * 1024, 9);
  struct nbdcpy *h = nbdcpy_open (path ("retry-src"), "null:", c);
  nbdcpy_config_free (c);
  CHECK (h && nbdcpy_run (h) == 0);
  struct nbdcpy_stats st;
  CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.bytes_done == 2 * 1024 * 1024);
  CHECK (st.reconnects == 0);
  CHECK (st.retried_requests == 0 && st.resumed_bytes == 0);
  nbdcpy_close (h);
}

struct log_seen {
  int info, debug, warning, other;
  int data_path;
};

static void
on_log (void *opaque, int level, const char *msg)
{
  struct log_seen *s = opaque;
  switch (level) {
  case NBDCPY_LOG_WARNING: s->warning++; break;
  case NBDCPY_LOG_INFO: s->info++; break;
  case NBDCPY_LOG_DEBUG: s->debug++; break;
  default: s->other++;
  }
  if (strstr (msg, "data path") && msg[strlen (msg) - 1] != '\n')
    s->data_path++;
}

/* The library writes nothing to stderr: messages go to the log callback,
 * INFO and DEBUG only with "verbose".
 */
static void
test_log_callback_not_stderr (void)
{
  fflush (stderr);
  int saved = dup (2);
  int err = open (path ("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK (saved >= 0 && err >= 0);
  dup2 (err, 2);
  close (err);

  struct log_seen quiet = { 0 }, loud = { 0 };
  for (int verbose = 0; verbose < 2; verbose++) {
    struct nbdcpy_config *c = test_config_new ();
    struct log_seen *seen = verbose ? &loud : &quiet;
    CHECK (nbdcpy_config_set (c, "verbose", verbose ? "1" : "0") == 0);
    CHECK (nbdcpy_config_set_log (c, on_log, seen) == 0);
    struct nbdcpy *h = nbdcpy_open (path ("src"), path ("log-copy"), c);
    nbdcpy_config_free (c);
    CHECK (h && nbdcpy_run (h) == 0);
    nbdcpy_close (h);
  }
  /* verbose without a callback: still silent. */
  struct nbdcpy_config *c = test_config_new ();
  nbdcpy_config_set (c, "verbose", "1");
  struct nbdcpy *h = nbdcpy_open (path ("src"), path ("log-copy"), c);
  nbdcpy_config_free (c);
  CHECK (h && nbdcpy_run (h) == 0);
  nbdcpy_close (h);

  fflush (stderr);
  dup2 (saved, 2);
  close (saved);
  struct stat sb;
  CHECK (stat (path ("stderr.txt"), &sb) == 0 && sb.st_size == 0);
  CHECK (quiet.info == 0 && quiet.debug == 0 && quiet.other == 0);
  CHECK (loud.info >= 1 && loud.data_path == 1 && loud.other == 0);
}

/* Environment variables never override the API; the former ones are
 * config keys now.
 */
static void
test_no_environment_overrides (void)
{
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "fast-zero", "0") == 0);
  CHECK (nbdcpy_config_set (c, "uring-file-writes", "1") == 0);
  CHECK (nbdcpy_config_set (c, "file-lock", "0") == 0);
  CHECK (nbdcpy_config_set (c, "pipe-size", "64k") == 0);
  CHECK (nbdcpy_config_set (c, "pipe-size", "1") == -1);
  CHECK (nbdcpy_config_set (c, "slow-timeout", "600") == 0);
  nbdcpy_config_free (c);
  if (!need_nbdkit ())
    return;
  const char *pattern[] = { "nbdkit", "pattern", "2M", NULL };
  for (int on = 0; on < 2; on++) {
    setenv ("NBDCPY_SPLICE", on ? "0" : "1", 1);
    c = test_config_new ();
    CHECK (nbdcpy_config_set (c, "splice", on ? "1" : "0") == 0);
    CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, pattern) == 0);
    struct nbdcpy *h = nbdcpy_open (NULL, "null:", c);
    nbdcpy_config_free (c);
    CHECK (h && nbdcpy_run (h) == 0);
    struct nbdcpy_stats st;
    CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.bytes_copied == 2 * 1024 * 1024);
    CHECK (st.bytes_spliced == (on ? st.bytes_copied : 0));
    nbdcpy_close (h);
  }
  unsetenv ("NBDCPY_SPLICE");
}

/* A copy over TLS-PSK through the C API: to an nbdkit that requires TLS
 * and back, the PSK file and user given as config keys (what a URI need
 * not say) and as URI parameters; a wrong key fails with a message.
 */
/* nbd+ssh:// through the C API: the same URI strings as the command.  A
 * host that is an ssh option is refused before anything runs; ssh that
 * cannot connect (nothing listens on port 1) fails nbdcpy_open with its
 * own message, and no ssh is left (test_nothing_left_behind).
 */
static void
test_ssh_uri (void)
{
  CHECK (nbdcpy_supports ("ssh") == 1);
  make_file (path ("ssh-dst"), 4096, 3);
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "timeout", "20") == 0);
  struct nbdcpy *h = nbdcpy_open ("nbd+ssh://-oProxyCommand=false/",
                                  path ("ssh-dst"), c);
  CHECK (h == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "must not start with '-'") != NULL);
  if (!have ("ssh")) {
    printf ("# SKIP: ssh not installed\n");
    nbdcpy_config_free (c);
    return;
  }
  h = nbdcpy_open ("nbd+ssh://127.0.0.1:1/?socket=/nonexistent.sock",
                   path ("ssh-dst"), c);
  CHECK (h == NULL);
  CHECK (strstr (nbdcpy_get_error (),
                 "source nbd+ssh://127.0.0.1:1/?socket=/nonexistent.sock")
         != NULL);
  CHECK (strstr (nbdcpy_get_error (), "ssh: ") != NULL);
  nbdcpy_config_free (c);
}

static void
test_tls_copy (void)
{
  CHECK (nbdcpy_supports ("tls") == 1);
  if (!need_nbdkit ())
    return;
  make_file (path ("tls-src"), 1024 * 1024, 7);
  FILE *f = fopen (path ("keys.psk"), "w");
  fprintf (f, "alice:%s\n",
           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  fclose (f);
  f = fopen (path ("wrong.psk"), "w");
  fprintf (f, "alice:%s\n", "ffeeddccbbaa99887766554433221100");
  fclose (f);
  char cmd[1024];
  snprintf (cmd, sizeof cmd,
            "nbdkit -U %s -P %s --tls=require --tls-psk=%s memory 1M",
            path ("tls.sock"), path ("tls.pid"), path ("keys.psk"));
  if (system (cmd) != 0) {
    CHECK (!"nbdkit with TLS started");
    return;
  }
  char uri[512];
  snprintf (uri, sizeof uri, "nbds+unix:///?socket=%s", path ("tls.sock"));
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "tls-psk-file", path ("keys.psk")) == 0);
  CHECK (nbdcpy_config_set (c, "tls-username", "alice") == 0);
  CHECK (nbdcpy_config_set (c, "tls-verify-peer", "maybe") == -1);
  struct nbdcpy *h = nbdcpy_open (path ("tls-src"), uri, c);
  nbdcpy_config_free (c);
  CHECK (h != NULL && nbdcpy_run (h) == 0);
  nbdcpy_close (h);

  char uri2[512];
  snprintf (uri2, sizeof uri2,
            "nbds+unix://alice@/?socket=%s&tls-psk-file=%s",
            path ("tls.sock"), path ("keys.psk"));
  h = nbdcpy_open (uri2, path ("tls-back"), NULL);
  CHECK (h != NULL && nbdcpy_run (h) == 0);
  nbdcpy_close (h);
  CHECK (same_files (path ("tls-src"), path ("tls-back")));

  snprintf (uri2, sizeof uri2,
            "nbds+unix://alice@/?socket=%s&tls-psk-file=%s",
            path ("tls.sock"), path ("wrong.psk"));
  h = nbdcpy_open (uri2, "null:", NULL);
  CHECK (h == NULL);
  CHECK (nbdcpy_get_error () && strstr (nbdcpy_get_error (), "TLS") != NULL);
  CHECK (nbdcpy_get_error () && strstr (nbdcpy_get_error (), "source") != NULL);

  snprintf (cmd, sizeof cmd, "kill $(cat %s)", path ("tls.pid"));
  CHECK (system (cmd) == 0);
}

static void
write_text (const char *p, const char *text)
{
  FILE *f = fopen (p, "w");
  if (!f) { perror (p); exit (EXIT_FAILURE); }
  fputs (text, f);
  fclose (f);
}

static void
hex (const unsigned char *md, int n, char *out)
{
  for (int i = 0; i < n; i++)
    sprintf (out + 2 * i, "%02x", md[i]);
}

/* "blkhash", "blkhash-file", "verify" and nbdcpy_get_blkhash, against
 * libnbd's published vectors for "hello".
 */
static void
test_blkhash (void)
{
  write_text (path ("hello"), "hello");
  struct nbdcpy_config *cfg = test_config_new ();
  CHECK (nbdcpy_config_set (cfg, "blkhash", "md5/4") == 0);
  CHECK (nbdcpy_config_set (cfg, "blkhash", "crc32") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "sha256") != NULL);
  struct nbdcpy *h = nbdcpy_open (path ("hello"), "null:", cfg);
  CHECK (h != NULL);
  unsigned char md[64];
  char text[129];
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == -1);
  CHECK (nbdcpy_get_errno () == ENODATA);
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (nbdcpy_get_blkhash (h, NULL, 0) == 16);
  CHECK (nbdcpy_get_blkhash (h, md, 15) == -1);
  CHECK (nbdcpy_get_errno () == ERANGE);
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == 16);
  hex (md, 16, text);
  CHECK (strcmp (text, "8262896de34125dec173722c920e8bd0") == 0);
  nbdcpy_close (h);
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == -1);   /* stale */

  /* The default digest, a hash file, and --verify of a file copy. */
  CHECK (nbdcpy_config_set (cfg, "blkhash", NULL) == 0);
  CHECK (nbdcpy_config_set (cfg, "blkhash-file", path ("hello.hash")) == 0);
  CHECK (nbdcpy_config_set (cfg, "verify", "1") == 0);
  h = nbdcpy_open (path ("hello"), path ("hello.copy"), cfg);
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == 32);
  hex (md, 32, text);
  const char *want =
    "337355feb53a5309d5aba92796223c2c84ffab930e706c01fef573a2722545e6";
  CHECK (strcmp (text, want) == 0);
  char line[80] = "";
  FILE *f = fopen (path ("hello.hash"), "r");
  CHECK (f && fgets (line, sizeof line, f) != NULL);
  if (f) fclose (f);
  CHECK (strncmp (line, want, 64) == 0 && strcmp (line + 64, "\n") == 0);
  CHECK (same_files (path ("hello"), path ("hello.copy")));
  nbdcpy_close (h);

  /* --verify needs a destination it can read back. */
  h = nbdcpy_open (path ("hello"), "null:", cfg);
  CHECK (h == NULL && nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "read back") != NULL);
  nbdcpy_close (h);
  nbdcpy_config_free (cfg);

  /* Without "blkhash" or "verify" there is no hash. */
  h = nbdcpy_open (path ("hello"), "null:", NULL);
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  nbdcpy_close (h);
}

/* Reads `len` bytes at `off` of file `p` into `buf` (an independent
 * reader: plain stdio).
 */
static int
read_at (const char *p, long off, unsigned char *buf, size_t len)
{
  FILE *f = fopen (p, "rb");
  if (!f) return -1;
  int ok = fseek (f, off, SEEK_SET) == 0 && fread (buf, 1, len, f) == len;
  fclose (f);
  return ok ? 0 : -1;
}

static off_t
file_size (const char *p)
{
  struct stat st;
  return stat (p, &st) == 0 ? st.st_size : -1;
}

/* nbdcpy_config_set_ranges and the "ranges-file" key: unsorted,
 * overlapping and touching areas land at their offsets, nothing else of
 * the destination changes; invalid lists fail with EINVAL at once,
 * areas past the end at open, before anything is written.
 */
static void
test_range_list (void)
{
  enum { SIZE = 1 << 20 };
  static unsigned char src[SIZE], dst[SIZE];
  make_file (path ("rl-src"), SIZE, 29);
  CHECK (read_at (path ("rl-src"), 0, src, SIZE) == 0);
  FILE *f = fopen (path ("rl-dst"), "wb");
  CHECK (f != NULL);
  memset (dst, 0xaa, SIZE);
  if (f) { fwrite (dst, 1, SIZE, f); fclose (f); }

  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  struct nbdcpy_range bad[] = { { 0, 10 }, { 4096, 0 } };
  CHECK (nbdcpy_config_set_ranges (cfg, bad, 2) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "length 0") != NULL);
  struct nbdcpy_range wrap[] = { { UINT64_MAX - 10, 100 } };
  CHECK (nbdcpy_config_set_ranges (cfg, wrap, 1) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "overflows") != NULL);
  CHECK (nbdcpy_config_set_ranges (cfg, NULL, 1) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_config_set_ranges (NULL, bad, 1) == -1);

  /* Given on the heap and freed at once: the list is copied. */
  struct nbdcpy_range *r = malloc (4 * sizeof *r);
  CHECK (r != NULL);
  if (!r) return;
  r[0] = (struct nbdcpy_range) { 700001, 999 };        /* odd */
  r[1] = (struct nbdcpy_range) { 4096, 8192 };
  r[2] = (struct nbdcpy_range) { 8192, 8192 };         /* overlaps */
  r[3] = (struct nbdcpy_range) { SIZE - 3, 3 };        /* the very end */
  CHECK (nbdcpy_config_set_ranges (cfg, r, 4) == 0);
  free (r);
  struct nbdcpy *h = nbdcpy_open (path ("rl-src"), path ("rl-dst"), cfg);
  CHECK (h != NULL);
  struct nbdcpy_stats st;
  CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0);
  CHECK (st.size == 999 + 12288 + 3);
  CHECK (h && nbdcpy_run (h) == 0);
  CHECK (h && nbdcpy_stats (h, &st, sizeof st) == 0 && st.bytes_done == st.size);
  nbdcpy_close (h);
  memset (dst, 0xaa, SIZE);
  memcpy (dst + 700001, src + 700001, 999);
  memcpy (dst + 4096, src + 4096, 12288);
  memcpy (dst + SIZE - 3, src + SIZE - 3, 3);
  static unsigned char got[SIZE];
  CHECK (read_at (path ("rl-dst"), 0, got, SIZE) == 0);
  CHECK (memcmp (got, dst, SIZE) == 0);
  CHECK (file_size (path ("rl-dst")) == SIZE);

  /* Past the end of the source: refused at open, nothing written. */
  struct nbdcpy_range past[] = { { 0, 4096 }, { SIZE - 512, 1024 } };
  CHECK (nbdcpy_config_set_ranges (cfg, past, 2) == 0);
  h = nbdcpy_open (path ("rl-src"), path ("rl-dst"), cfg);
  CHECK (h == NULL && nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "past the end of source") != NULL);
  nbdcpy_close (h);
  CHECK (read_at (path ("rl-dst"), 0, got, SIZE) == 0);
  CHECK (memcmp (got, dst, SIZE) == 0);

  /* The "ranges-file" key replaces the list. */
  write_text (path ("rl-list"), "# changed\n0 1k\n\n512k 4k # two\n");
  CHECK (nbdcpy_config_set (cfg, "ranges-file", path ("rl-list")) == 0);
  h = nbdcpy_open (path ("rl-src"), path ("rl-dst"), cfg);
  CHECK (h && nbdcpy_run (h) == 0);
  nbdcpy_close (h);
  memcpy (dst, src, 1024);
  memcpy (dst + (512 << 10), src + (512 << 10), 4096);
  CHECK (read_at (path ("rl-dst"), 0, got, SIZE) == 0);
  CHECK (memcmp (got, dst, SIZE) == 0);
  write_text (path ("rl-list"), "0 1k\n4k 4k 4k\n");
  h = nbdcpy_open (path ("rl-src"), path ("rl-dst"), cfg);
  CHECK (h == NULL && nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "line 2") != NULL);
  nbdcpy_close (h);
  nbdcpy_config_free (cfg);
}

/* After every copy above (successes, failures, cancellations, server
 * subprocesses): no file descriptor, thread or child process is left.
 */
static void
test_nothing_left_behind (void)
{
  check_nothing_left_behind (1000);
}

/* The engine key: the engine a copy ran on is readable after
 * nbdcpy_run (NULL before, and for NULL); with NBDCPY_TEST_ENGINE set it
 * is that one; each engine asked for is the one that runs.
 */
static void
test_engine_choice (void)
{
  static const char *const engines[] = { "io_uring", "epoll" };

  CHECK (nbdcpy_supports ("epoll") == 1);
  CHECK (nbdcpy_get_engine (NULL) == NULL);
  make_file (path ("eng-src"), 2 * 1024 * 1024 + 511, 7);

  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "engine", "bogus") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "epoll") != NULL);
  struct nbdcpy *h = nbdcpy_open (path ("eng-src"), path ("eng-dst"), c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (!h)
    return;
  CHECK (nbdcpy_get_engine (h) == NULL);
  CHECK (nbdcpy_run (h) == 0);
  const char *e = nbdcpy_get_engine (h);
  CHECK (e != NULL && (strcmp (e, "io_uring") == 0 || strcmp (e, "epoll") == 0));
  if (e && test_engine ())
    CHECK (strcmp (e, test_engine ()) == 0);
  CHECK (same_files (path ("eng-src"), path ("eng-dst")));
  nbdcpy_close (h);
  CHECK (nbdcpy_get_engine (h) == NULL);   /* closed */

  for (size_t i = 0; i < sizeof engines / sizeof engines[0]; i++) {
    if (strcmp (engines[i], "io_uring") == 0 && !nbdcpy_supports ("io_uring"))
      continue;
    unlink (path ("eng-dst"));
    c = nbdcpy_config_new ();
    CHECK (nbdcpy_config_set (c, "engine", engines[i]) == 0);
    h = nbdcpy_open (path ("eng-src"), path ("eng-dst"), c);
    nbdcpy_config_free (c);
    CHECK (h != NULL);
    if (!h)
      continue;
    CHECK (nbdcpy_run (h) == 0);
    e = nbdcpy_get_engine (h);
    CHECK (e != NULL && strcmp (e, engines[i]) == 0);
    CHECK (same_files (path ("eng-src"), path ("eng-dst")));
    nbdcpy_close (h);
  }
}

int
main (void)
{
  test_begin ("/tmp/nbdcpy-ctest-XXXXXX");

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
  RUN (test_ranges_and_dirty_bitmap);
  RUN (test_every_failure_sets_errors);
  RUN (test_stale_handles_never_alias);
  RUN (test_close_during_run);
  RUN (test_progress_calls);
  RUN (test_stats_after_open);
  RUN (test_retry_keys);
  RUN (test_checkpoint_keys);
  RUN (test_page_cache_key);
  RUN (test_log_callback_not_stderr);
  RUN (test_no_environment_overrides);
  RUN (test_tls_copy);
  RUN (test_ssh_uri);
  RUN (test_blkhash);
  RUN (test_range_list);
  RUN (test_engine_choice);
  RUN (test_nothing_left_behind);

  return test_end ();
}
