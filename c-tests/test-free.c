/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* The free callbacks of nbdcpy_config_set_progress_free() and
 * nbdcpy_config_set_log_free(): each user_data is released exactly
 * once, only when the library will never call its callback again (the
 * callback replaced, the config freed, every handle that copied it
 * closed), also on error paths.  Run under valgrind by make
 * check-valgrind: a user_data freed twice or never is an error there
 * too.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "helpers.h"

/* One user_data: how often its callback ran, how often it was freed,
 * and how often the callback ran after it was freed.  Heap-allocated,
 * so valgrind sees a double free or a leak. */
struct ud {
  atomic_int calls, freed, late;
  atomic_int *freed_out;        /* survives the struct: the count */
};

static struct ud *
ud_new (atomic_int *freed_out)
{
  struct ud *u = calloc (1, sizeof *u);
  if (u == NULL) abort ();
  u->freed_out = freed_out;
  atomic_store (freed_out, 0);
  return u;
}

static void
ud_free (void *p)
{
  struct ud *u = p;
  atomic_fetch_add (u->freed_out, 1);
  free (u);
}

static int
progress_cb (void *p, const struct nbdcpy_stats *st)
{
  struct ud *u = p;
  (void) st;
  atomic_fetch_add (&u->calls, 1);
  if (atomic_load (u->freed_out) != 0)
    atomic_fetch_add (&u->late, 1);
  return 0;
}

static atomic_int log_calls;

static void
log_cb (void *p, int level, const char *msg)
{
  struct ud *u = p;
  (void) level; (void) msg;
  atomic_fetch_add (&u->calls, 1);
  atomic_fetch_add (&log_calls, 1);
}

/* Replacing a callback frees the old data at once (once); the plain
 * setters replace too; freeing the config frees the current one. */
static void
test_replace_and_config_free (void)
{
  atomic_int fa, fb, la, lb;
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&fa), ud_free) == 0);
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&fb), ud_free) == 0);
  CHECK (fa == 1 && fb == 0);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, ud_new (&la), ud_free) == 0);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, ud_new (&lb), ud_free) == 0);
  CHECK (la == 1 && lb == 0);
  /* The old setter replaces (and so releases) a callback with a free. */
  CHECK (nbdcpy_config_set_progress (c, progress_cb, NULL, 50) == 0);
  CHECK (fb == 1);
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&fb), ud_free) == 0);
  /* Removing (cb NULL) releases it. */
  CHECK (nbdcpy_config_set_log_free (c, NULL, NULL, NULL) == 0);
  CHECK (lb == 1);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, ud_new (&lb), ud_free) == 0);
  nbdcpy_config_free (c);
  CHECK (fa == 1 && fb == 1 && la == 1 && lb == 1);
}

/* Every failing call and a NULL cb release the data before returning. */
static void
test_error_paths_free (void)
{
  atomic_int f;
  CHECK (nbdcpy_config_set_progress_free (NULL, progress_cb, ud_new (&f), ud_free) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (f == 1);
  CHECK (nbdcpy_config_set_log_free (NULL, log_cb, ud_new (&f), ud_free) == -1);
  CHECK (f == 1);
  struct nbdcpy_config *c = test_config_new ();
  nbdcpy_config_free (c);       /* now stale */
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&f), ud_free) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (f == 1);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, ud_new (&f), ud_free) == -1);
  CHECK (f == 1);
  c = test_config_new ();
  CHECK (nbdcpy_config_set_progress_free (c, NULL, ud_new (&f), ud_free) == 0);
  CHECK (f == 1);
  CHECK (nbdcpy_config_set_log_free (c, NULL, ud_new (&f), ud_free) == 0);
  CHECK (f == 1);
  /* A NULL free_cb is allowed: nothing to release. */
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, NULL, NULL) == 0);
  nbdcpy_config_free (c);
}

/* The config freed first: the handle still calls the callbacks, and
 * the data is released when the last of two handles closes. */
static void
test_handles_hold_the_callbacks (void)
{
  atomic_int fp, fl;
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "verbose", "1") == 0);
  CHECK (nbdcpy_config_set_progress (c, NULL, NULL, 10) == 0);
  struct ud *up = ud_new (&fp), *ul = ud_new (&fl);
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, up, ud_free) == 0);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, ul, ud_free) == 0);
  struct nbdcpy *h1 = nbdcpy_open (path ("src"), path ("dst1"), c);
  struct nbdcpy *h2 = nbdcpy_open (path ("src"), path ("dst2"), c);
  CHECK (h1 != NULL && h2 != NULL);
  /* A failed open lets go of its copy: the config still holds one. */
  CHECK (nbdcpy_open (path ("missing"), path ("dst3"), c) == NULL);
  nbdcpy_config_free (c);
  CHECK (fp == 0 && fl == 0);
  atomic_store (&log_calls, 0);
  CHECK (nbdcpy_run (h1) == 0);
  CHECK (atomic_load (&up->calls) >= 1);  /* the final call at least */
  CHECK (atomic_load (&log_calls) >= 1);
  nbdcpy_close (h1);
  CHECK (fp == 0 && fl == 0);
  int before = atomic_load (&up->calls);
  CHECK (nbdcpy_run (h2) == 0);
  CHECK (atomic_load (&up->calls) > before);
  CHECK (atomic_load (&up->late) == 0);
  nbdcpy_close (h2);
  CHECK (fp == 1 && fl == 1);
  CHECK (same_files (path ("src"), path ("dst1")));
  CHECK (same_files (path ("src"), path ("dst2")));
}

/* Handles made before the callback was replaced keep the old one: its
 * data is released when they close, not when it is replaced. */
static void
test_replaced_while_a_handle_holds_it (void)
{
  atomic_int fa, fb;
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&fa), ud_free) == 0);
  struct nbdcpy *h = nbdcpy_create (path ("src"), "null:", c);
  CHECK (h != NULL);
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, ud_new (&fb), ud_free) == 0);
  CHECK (fa == 0);
  nbdcpy_config_free (c);
  CHECK (fa == 0 && fb == 1);
  CHECK (nbdcpy_connect (h) == 0);
  CHECK (nbdcpy_run (h) == 0);
  CHECK (fa == 0);
  nbdcpy_close (h);
  CHECK (fa == 1);
}

/* Closed from another thread while it runs: the run is cancelled and
 * the data is released once, when the run returns, never before the
 * last call of the callback. */
static void
test_close_during_run (void)
{
  atomic_int f;
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "rate", "256k") == 0);
  CHECK (nbdcpy_config_set_progress (c, NULL, NULL, 10) == 0);
  struct ud *u = ud_new (&f);
  CHECK (nbdcpy_config_set_progress_free (c, progress_cb, u, ud_free) == 0);
  struct nbdcpy *h = nbdcpy_open (path ("src"), "null:", c);
  CHECK (h != NULL);
  nbdcpy_config_free (c);
  struct canceller cl = { .h = h, .close_instead = 1 };
  pthread_t t;
  pthread_create (&t, NULL, cancel_later, &cl);
  CHECK (nbdcpy_run (h) == -1);
  CHECK (nbdcpy_get_errno () == ECANCELED);
  pthread_join (t, NULL);
  CHECK (f == 1);
}

/* A server run as a command, with the log callback: released once when
 * the handle closes (after the server is gone). */
static void
test_command_server (void)
{
  if (!need_nbdkit ())
    return;
  atomic_int f;
  struct nbdcpy_config *c = test_config_new ();
  const char *argv[] = { "nbdkit", "pattern", "1M", NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  CHECK (nbdcpy_config_set (c, "verbose", "1") == 0);
  struct ud *u = ud_new (&f);
  CHECK (nbdcpy_config_set_log_free (c, log_cb, u, ud_free) == 0);
  struct nbdcpy *h = nbdcpy_open (NULL, "null:", c);
  CHECK (h != NULL);
  nbdcpy_config_free (c);
  CHECK (nbdcpy_run (h) == 0);
  CHECK (atomic_load (&u->calls) >= 1);
  CHECK (f == 0);
  nbdcpy_close (h);
  CHECK (f == 1);
}

/* A free callback may call the library (no lock of it is held). */
static struct nbdcpy_config *reentrant_cfg;
static atomic_int reentrant_freed;

static void
reentrant_free (void *p)
{
  (void) p;
  /* Replacing the log callback of the config being changed. */
  if (reentrant_cfg)
    CHECK (nbdcpy_config_set_log (reentrant_cfg, NULL, NULL) == 0);
  atomic_fetch_add (&reentrant_freed, 1);
}

static void
test_free_cb_may_call_the_library (void)
{
  reentrant_cfg = test_config_new ();
  CHECK (nbdcpy_config_set_progress_free (reentrant_cfg, progress_cb, NULL, NULL) == 0);
  atomic_int f;
  struct ud *u = ud_new (&f);
  CHECK (nbdcpy_config_set_progress_free (reentrant_cfg, progress_cb, u, ud_free) == 0);
  CHECK (nbdcpy_config_set_log_free (reentrant_cfg, log_cb, NULL, reentrant_free) == 0);
  CHECK (nbdcpy_config_set_log_free (reentrant_cfg, log_cb, NULL, NULL) == 0);
  CHECK (reentrant_freed == 1);
  struct nbdcpy_config *c = reentrant_cfg;
  reentrant_cfg = NULL;
  nbdcpy_config_free (c);
  CHECK (f == 1);
}

static void
test_nothing_left_behind (void)
{
  check_nothing_left_behind (under_valgrind ? 5000 : 1000);
}

int
main (void)
{
  test_begin ("/tmp/nbdcpy-ftest-XXXXXX");
  RUN (test_replace_and_config_free);
  RUN (test_error_paths_free);
  RUN (test_handles_hold_the_callbacks);
  RUN (test_replaced_while_a_handle_holds_it);
  RUN (test_close_during_run);
  RUN (test_command_server);
  RUN (test_free_cb_may_call_the_library);
  RUN (test_nothing_left_behind);
  return test_end ();
}
