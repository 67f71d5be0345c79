/* Built against an installed (staged) nbdcpy through pkg-config. */
#include <stdio.h>
#include <string.h>
#include "nbdcpy.h"

int
main (void)
{
  struct nbdcpy_config *c = nbdcpy_config_new ();
  if (c == NULL || nbdcpy_config_set (c, "request-size", "1M") != 0)
    return 1;
  nbdcpy_config_free (c);
  printf ("installed libnbdcpy %s works\n", nbdcpy_version ());
  return strlen (nbdcpy_version ()) > 0 ? 0 : 1;
}
