/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * A copy with a progress callback.  The callback runs on the thread that
 * called nbdcpy_run; returning non-zero from it would cancel the copy.
 *
 *   cc progress.c $(pkg-config --cflags --libs nbdcpy) -o progress
 *   ./progress SOURCE DESTINATION
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <nbdcpy.h>

static int
on_progress (void *user_data, const struct nbdcpy_stats *st)
{
  const char *label = user_data;
  unsigned percent = st->size ? (unsigned) (st->bytes_done * 100 / st->size) : 0;

  printf ("%s: %3u%% (%" PRIu64 " of %" PRIu64 " bytes, %" PRIu64
          " written as data, %" PRIu64 " as zeroes)\n",
          label, percent, st->bytes_done, st->size, st->bytes_copied,
          st->bytes_zeroed);
  fflush (stdout);
  return 0;                     /* continue */
}

int
main (int argc, char *argv[])
{
  if (argc != 3) {
    fprintf (stderr, "usage: %s SOURCE DESTINATION\n", argv[0]);
    return EXIT_FAILURE;
  }

  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  if (cfg == NULL ||
      nbdcpy_config_set_progress (cfg, on_progress, (void *) "copy", 100)
      == -1) {
    fprintf (stderr, "%s\n", nbdcpy_get_error ());
    return EXIT_FAILURE;
  }
  struct nbdcpy *h = nbdcpy_open (argv[1], argv[2], cfg);
  nbdcpy_config_free (cfg);
  if (h == NULL || nbdcpy_run (h) == -1) {
    fprintf (stderr, "copy failed: %s\n", nbdcpy_get_error ());
    nbdcpy_close (h);
    return EXIT_FAILURE;
  }

  struct nbdcpy_stats st;
  if (nbdcpy_stats (h, &st, sizeof st) == 0)
    printf ("done: %" PRIu64 " bytes in %.3f s, %" PRIu64 " requests\n",
            st.bytes_done, st.elapsed_ns / 1e9, st.requests);
  nbdcpy_close (h);
  return EXIT_SUCCESS;
}
