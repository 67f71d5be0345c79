/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * Cancelling a copy from a signal handler: Ctrl-C (SIGINT) or SIGTERM
 * makes nbdcpy_run return -1 with errno ECANCELED within about 100 ms;
 * the servers are disconnected cleanly and the handle is closed as usual.
 * nbdcpy_cancel only sets a flag, so it is async-signal-safe.
 *
 *   cc cancel.c $(pkg-config --cflags --libs nbdcpy) -o cancel
 *   ./cancel SOURCE DESTINATION      (then press Ctrl-C)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdcpy.h>

/* Set before the handler is installed, cleared before nbdcpy_close. */
static struct nbdcpy *volatile running;

static void
on_signal (int sig)
{
  struct nbdcpy *h = running;

  (void) sig;
  if (h != NULL)
    nbdcpy_cancel (h);
}

int
main (int argc, char *argv[])
{
  if (argc != 3) {
    fprintf (stderr, "usage: %s SOURCE DESTINATION\n", argv[0]);
    return EXIT_FAILURE;
  }

  struct nbdcpy *h = nbdcpy_open (argv[1], argv[2], NULL); /* defaults */
  if (h == NULL) {
    fprintf (stderr, "%s\n", nbdcpy_get_error ());
    return EXIT_FAILURE;
  }
  running = h;

  struct sigaction sa;
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);

  int r = nbdcpy_run (h);
  int err = nbdcpy_get_errno ();
  running = NULL;
  if (r == -1 && err == ECANCELED)
    printf ("copy cancelled\n");
  else if (r == -1)
    fprintf (stderr, "copy failed: %s\n", nbdcpy_get_error ());
  else
    printf ("copy finished\n");
  nbdcpy_close (h);
  return r == 0 ? EXIT_SUCCESS : err == ECANCELED ? 130 : EXIT_FAILURE;
}
