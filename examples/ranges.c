/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * Copy only the changed areas of a disk (a warm migration's incremental
 * pass, e.g. from VMware's changed block tracking): the areas are given
 * as OFFSET:LENGTH arguments (in bytes) and copied to the same offsets
 * of DESTINATION, which holds the previous copy; nothing else of it is
 * written.
 *
 *   cc ranges.c $(pkg-config --cflags --libs nbdcpy) -o ranges
 *   ./ranges nbd+unix:///?socket=/tmp/vddk.sock disk.img 0:65536 1048576:4096
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <nbdcpy.h>

int
main (int argc, char *argv[])
{
  if (argc < 4) {
    fprintf (stderr, "usage: %s SOURCE DESTINATION OFFSET:LENGTH...\n",
             argv[0]);
    return EXIT_FAILURE;
  }

  size_t n = (size_t) argc - 3;
  struct nbdcpy_range *areas = calloc (n, sizeof *areas);
  if (areas == NULL) {
    perror ("calloc");
    return EXIT_FAILURE;
  }
  for (size_t i = 0; i < n; i++) {
    if (sscanf (argv[3 + i], "%" SCNu64 ":%" SCNu64,
                &areas[i].offset, &areas[i].length) != 2) {
      fprintf (stderr, "%s: expected OFFSET:LENGTH\n", argv[3 + i]);
      free (areas);
      return EXIT_FAILURE;
    }
  }

  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  /* The list is copied (sorted and merged): our array can go at once. */
  int r = cfg ? nbdcpy_config_set_ranges (cfg, areas, n) : -1;
  free (areas);
  if (r == -1) {
    fprintf (stderr, "%s\n", nbdcpy_get_error ());
    nbdcpy_config_free (cfg);
    return EXIT_FAILURE;
  }
  /* Areas past either end fail here, before anything is written. */
  struct nbdcpy *h = nbdcpy_open (argv[1], argv[2], cfg);
  nbdcpy_config_free (cfg);
  struct nbdcpy_stats st;
  if (h == NULL || nbdcpy_run (h) == -1
      || nbdcpy_stats (h, &st, sizeof st) == -1) {
    fprintf (stderr, "copy failed: %s\n", nbdcpy_get_error ());
    nbdcpy_close (h);
    return EXIT_FAILURE;
  }
  printf ("copied %" PRIu64 " bytes of changed areas\n", st.bytes_done);
  nbdcpy_close (h);
  return EXIT_SUCCESS;
}
