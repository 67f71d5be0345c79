/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * The smallest complete use of the API: copy SOURCE to DESTINATION
 * (anything nbdcpy(1) accepts: NBD URIs, files, devices, "-", "null:").
 *
 *   cc copy.c $(pkg-config --cflags --libs nbdcpy) -o copy
 *   ./copy nbd+unix:///?socket=/tmp/sock disk.img
 */
#include <stdio.h>
#include <stdlib.h>

#include <nbdcpy.h>

int
main (int argc, char *argv[])
{
  if (argc != 3) {
    fprintf (stderr, "usage: %s SOURCE DESTINATION\n", argv[0]);
    return EXIT_FAILURE;
  }

  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  if (cfg == NULL || nbdcpy_config_set (cfg, "flush", "1") == -1) {
    fprintf (stderr, "%s\n", nbdcpy_get_error ());
    return EXIT_FAILURE;
  }
  struct nbdcpy *h = nbdcpy_open (argv[1], argv[2], cfg);
  nbdcpy_config_free (cfg);          /* the handle keeps a copy */
  if (h == NULL || nbdcpy_run (h) == -1) {
    fprintf (stderr, "copy failed: %s (errno %d)\n",
             nbdcpy_get_error (), nbdcpy_get_errno ());
    nbdcpy_close (h);                /* NULL is fine */
    return EXIT_FAILURE;
  }
  nbdcpy_close (h);
  return EXIT_SUCCESS;
}
