/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* Minimal test harness for the C API tests: CHECK() records a failure
 * with its line and goes on; the run ends with "N passed, N failed".
 */
#ifndef NBDCPY_TAP_H
#define NBDCPY_TAP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_passed, tap_failed, tap_test_failed;

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf (stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      tap_test_failed = 1;                                                \
    }                                                                     \
  } while (0)

/* TAP_ONLY=name runs just that test (and the final leak check). */
#define RUN(fn)                                                           \
  do {                                                                    \
    const char *only_ = getenv ("TAP_ONLY");                              \
    if (only_ && strcmp (only_, #fn) != 0                                 \
        && strcmp (#fn, "test_nothing_left_behind") != 0)                 \
      break;                                                              \
    tap_test_failed = 0;                                                  \
    fn ();                                                                \
    if (tap_test_failed) {                                                \
      tap_failed++;                                                       \
      printf ("not ok %s\n", #fn);                                        \
    } else {                                                              \
      tap_passed++;                                                       \
      printf ("ok %s\n", #fn);                                            \
    }                                                                     \
    fflush (stdout);                                                      \
  } while (0)

static int
tap_done (void)
{
  printf ("%d passed, %d failed\n", tap_passed, tap_failed);
  return tap_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
