/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * Built against an installed (staged) nbdcpy through pkg-config: the
 * header's version macros match the library, the feature query answers.
 */
#include <stdio.h>
#include <string.h>
#include "nbdcpy.h"

#if NBDCPY_VERSION_NUMBER < NBDCPY_VERSION_CHECK (0, 1, 0)
#error "NBDCPY_VERSION_NUMBER is wrong"
#endif

int
main (void)
{
  struct nbdcpy_config *c = nbdcpy_config_new ();
  if (c == NULL || nbdcpy_config_set (c, "request-size", "1M") != 0)
    return 1;
  nbdcpy_config_free (c);
  if (strcmp (nbdcpy_version (), NBDCPY_VERSION_STRING) != 0) {
    fprintf (stderr, "header %s, library %s\n",
             NBDCPY_VERSION_STRING, nbdcpy_version ());
    return 1;
  }
  if (nbdcpy_supports ("splice") != 1 || nbdcpy_supports ("tls") != 1 ||
      nbdcpy_supports ("blkhash") != 0 || nbdcpy_supports ("no-such") != 0 ||
      nbdcpy_supports (NULL) != 0 || nbdcpy_supports ("io_uring") != 1) {
    fprintf (stderr, "nbdcpy_supports gives wrong answers\n");
    return 1;
  }
  printf ("installed libnbdcpy %s works\n", nbdcpy_version ());
  return 0;
}
