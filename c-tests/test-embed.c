/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* Tests of the embedding API of version 0.2: endpoints on sockets the
 * caller connected (nbdcpy_config_set_socket), and opening in two steps
 * (nbdcpy_create + nbdcpy_connect) bounded by "timeout" and cancellable,
 * plus nbdcpy_get_error_endpoint.
 */

#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbdcpy.h"
#include "tap.h"
#include "helpers.h"

/* Starts "nbdkit -s ARGS..." on one end of a new socket pair and returns
 * the other end (close-on-exec, ours); *pid is the server.
 */
static int
nbdkit_on_socketpair (const char *const *args, pid_t *pid)
{
  int sv[2];
  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
    perror ("socketpair");
    exit (EXIT_FAILURE);
  }
  *pid = fork ();
  if (*pid == -1) {
    perror ("fork");
    exit (EXIT_FAILURE);
  }
  if (*pid == 0) {
    const char *argv[16] = { "nbdkit", "-s", "--exit-with-parent" };
    int n = 3;
    for (int i = 0; args[i] && n < 15; i++)
      argv[n++] = args[i];
    argv[n] = NULL;
    dup2 (sv[1], 0);
    dup2 (sv[1], 1);
    execvp ("nbdkit", (char **) argv);
    _exit (127);
  }
  close (sv[1]);
  return sv[0];
}

/* Waits for the server to exit (it does at EOF), killing it after 10 s. */
static int
reap (pid_t pid)
{
  int status = 0;
  for (int i = 0; i < 1000; i++) {
    pid_t r = waitpid (pid, &status, WNOHANG);
    if (r == pid)
      return status;
    usleep (10 * 1000);
  }
  kill (pid, SIGKILL);
  waitpid (pid, &status, 0);
  return -1;
}

/* nbdkit's pattern plugin: each 8-byte word holds its offset, big
 * endian.  Checked here, independently of nbdcpy.
 */
static int
is_pattern_file (const char *p, uint64_t size)
{
  FILE *f = fopen (p, "r");
  if (!f) return 0;
  uint64_t w, off = 0;
  int ok = 1;
  while (ok && fread (&w, 8, 1, f) == 1) {
    ok = be64toh (w) == off;
    off += 8;
  }
  fclose (f);
  return ok && off == size;
}

/* A socket pair to nbdkit's pattern plugin as the source, into a file;
 * the caller closes its fd at once (nbdcpy has its own).  Asking for 4
 * connections still uses one: the socket is one connection.
 */
static void
test_socket_source (void)
{
  if (!need_nbdkit ()) return;
  const char *args[] = { "pattern", "3M", NULL };
  pid_t pid;
  int fd = nbdkit_on_socketpair (args, &pid);
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "connections", "4") == 0);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, fd, NULL) == 0);
  close (fd);
  struct nbdcpy *h = nbdcpy_open (NULL, path ("from-socket"), c);
  if (h == NULL)
    fprintf (stderr, "  error: %s\n", nbdcpy_get_error ());
  CHECK (h != NULL);
  /* One socket serves one handle. */
  CHECK (nbdcpy_open (NULL, "null:", c) == NULL);
  CHECK (nbdcpy_get_errno () == EBUSY);
  CHECK (strstr (nbdcpy_get_error (), "socket") != NULL);
  nbdcpy_config_free (c);
  if (h) {
    struct nbdcpy_stats st;
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.size == 3 << 20);
    int r = nbdcpy_run (h);
    if (r) fprintf (stderr, "  error: %s\n", nbdcpy_get_error ());
    CHECK (r == 0);
    CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
    CHECK (st.connections == 1);
    nbdcpy_close (h);
  }
  CHECK (reap (pid) == 0);      /* the server saw the end (DISC, EOF) */
  CHECK (is_pattern_file (path ("from-socket"), 3 << 20));
}

/* A socket pair to nbdkit's file plugin as the destination, with an
 * export name the server ignores; two-step open.
 */
static void
test_socket_destination (void)
{
  if (!need_nbdkit ()) return;
  make_file (path ("sock-src"), 2 << 20, 7);
  int t = open (path ("sock-dst"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK (t >= 0 && ftruncate (t, 2 << 20) == 0);
  close (t);
  char arg[300];
  snprintf (arg, sizeof arg, "file=%s", path ("sock-dst"));
  const char *args[] = { "file", arg, NULL };
  pid_t pid;
  int fd = nbdkit_on_socketpair (args, &pid);
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_DESTINATION, fd, "any") == 0);
  struct nbdcpy *h = nbdcpy_create (path ("sock-src"), NULL, c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (h) {
    CHECK (nbdcpy_run (h) == -1);               /* not connected yet */
    CHECK (nbdcpy_get_errno () == ENOTCONN);
    int r = nbdcpy_connect (h);
    if (r) fprintf (stderr, "  error: %s\n", nbdcpy_get_error ());
    CHECK (r == 0);
    CHECK (nbdcpy_connect (h) == -1);
    CHECK (nbdcpy_get_errno () == EISCONN);
    CHECK (nbdcpy_run (h) == 0);
    nbdcpy_close (h);
  }
  close (fd);                   /* the caller's copy, closed late */
  CHECK (reap (pid) == 0);
  CHECK (same_files (path ("sock-src"), path ("sock-dst")));
}

static void
test_socket_errors (void)
{
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, 999, NULL) == -1);
  CHECK (nbdcpy_get_errno () == EBADF);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, -5, NULL) == -1);
  CHECK (nbdcpy_get_errno () == EBADF);
  int p[2];
  CHECK (pipe (p) == 0);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, p[0], NULL) == -1);
  CHECK (nbdcpy_get_errno () == ENOTSOCK);
  close (p[0]);
  close (p[1]);
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  CHECK (nbdcpy_config_set_socket (c, 5, sv[0], NULL) == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (nbdcpy_config_set_socket (NULL, NBDCPY_SOURCE, sv[0], NULL) == -1);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, sv[0], NULL) == 0);
  /* A side given twice. */
  CHECK (nbdcpy_open (path ("x"), "null:", c) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  /* A peer that closes at once: the handshake fails, naming the side. */
  close (sv[1]);
  CHECK (nbdcpy_open (NULL, "null:", c) == NULL);
  CHECK (nbdcpy_get_errno () == ECONNRESET);
  CHECK (strstr (nbdcpy_get_error (), "source socket fd") != NULL);
  CHECK (nbdcpy_get_error_endpoint () == NBDCPY_SOURCE);
  /* Cleared, then freed with a socket nobody took: closed. */
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, sv[0], NULL) == 0);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_SOURCE, -1, NULL) == 0);
  CHECK (nbdcpy_config_set_socket (c, NBDCPY_DESTINATION, sv[0], NULL) == 0);
  nbdcpy_config_free (c);
  close (sv[0]);
}

/* A unix socket that listens and never accepts nor answers. */
static int
silent_server (const char *p, int backlog)
{
  int s = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", p);
  if (s < 0 || bind (s, (struct sockaddr *) &sa, sizeof sa) != 0
      || listen (s, backlog) != 0) {
    perror ("silent server");
    exit (EXIT_FAILURE);
  }
  return s;
}

static void
test_open_times_out (void)
{
  int s = silent_server (path ("silent.sock"), 8);
  char uri[400];
  snprintf (uri, sizeof uri, "nbd+unix:///?socket=%s", path ("silent.sock"));
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "timeout", "2") == 0);
  double t0 = now_s ();
  CHECK (nbdcpy_open (uri, "null:", c) == NULL);
  double took = now_s () - t0;
  printf ("# open gave up after %.2f s: %s\n", took, nbdcpy_get_error ());
  CHECK (nbdcpy_get_errno () == ETIMEDOUT);
  CHECK (strstr (nbdcpy_get_error (), "timeout") != NULL);
  CHECK (strstr (nbdcpy_get_error (), "silent.sock") != NULL);
  CHECK (nbdcpy_get_error_endpoint () == NBDCPY_SOURCE);
  CHECK (took >= 1.9 && took < 3.5);

  /* The same as the destination. */
  CHECK (nbdcpy_open (path ("nowhere"), uri, c) == NULL);
  CHECK (nbdcpy_get_errno () == ENOENT);
  CHECK (nbdcpy_get_error_endpoint () == NBDCPY_SOURCE);
  t0 = now_s ();
  CHECK (nbdcpy_open ("null:", uri, c) == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);        /* null: as a source */
  CHECK (nbdcpy_get_error_endpoint () == NBDCPY_SOURCE);
  int f = open (path ("small"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  close (f);
  CHECK (nbdcpy_open (path ("small"), uri, c) == NULL);
  CHECK (nbdcpy_get_errno () == ETIMEDOUT);
  CHECK (nbdcpy_get_error_endpoint () == NBDCPY_DESTINATION);
  CHECK (now_s () - t0 < 3.5);
  nbdcpy_config_free (c);
  close (s);
}

/* A listener whose backlog is full: the connect itself waits, and still
 * within the timeout.
 */
static void
test_connect_times_out (void)
{
  int s = silent_server (path ("full.sock"), 0);
  int fillers[8], n = 0;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", path ("full.sock"));
  while (n < 8) {
    int f = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (connect (f, (struct sockaddr *) &sa, sizeof sa) != 0) {
      close (f);
      break;
    }
    fillers[n++] = f;
  }
  char uri[400];
  snprintf (uri, sizeof uri, "nbd+unix:///?socket=%s", path ("full.sock"));
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "timeout", "1") == 0);
  double t0 = now_s ();
  CHECK (nbdcpy_open (uri, "null:", c) == NULL);
  double took = now_s () - t0;
  printf ("# connect gave up after %.2f s: %s\n", took, nbdcpy_get_error ());
  CHECK (nbdcpy_get_errno () == ETIMEDOUT);
  CHECK (took >= 0.9 && took < 2.5);
  nbdcpy_config_free (c);
  for (int i = 0; i < n; i++)
    close (fillers[i]);
  close (s);
}

/* With no timeout the connect would wait forever: a cancel from another
 * thread, or a close, ends it promptly.
 */
static void
test_connect_cancelled (void)
{
  int s = silent_server (path ("cancel.sock"), 8);
  char uri[400];
  snprintf (uri, sizeof uri, "nbd+unix:///?socket=%s", path ("cancel.sock"));
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "timeout", "0") == 0);
  for (int close_instead = 0; close_instead < 2; close_instead++) {
    struct nbdcpy *h = nbdcpy_create (path ("src"), uri, c);
    CHECK (h != NULL);
    if (!h) break;
    struct canceller k = { h, 0, close_instead };
    pthread_t t;
    pthread_create (&t, NULL, cancel_later, &k);
    CHECK (nbdcpy_connect (h) == -1);
    double took = now_s () - k.at;
    pthread_join (t, NULL);
    printf ("# %s ended the connect after %.1f ms: %s\n",
            close_instead ? "close" : "cancel", took * 1000,
            nbdcpy_get_error ());
    CHECK (nbdcpy_get_errno () == ECANCELED);
    CHECK (strstr (nbdcpy_get_error (), "cancel") != NULL);
    CHECK (took < (under_valgrind ? 2.0 : 0.5));
    if (!close_instead) {
      CHECK (nbdcpy_connect (h) == -1);         /* one attempt only */
      CHECK (nbdcpy_get_errno () == EALREADY);
      nbdcpy_close (h);
    }
  }

  /* Cancelled before it starts: fails at once. */
  struct nbdcpy *h = nbdcpy_create (path ("src"), uri, c);
  CHECK (h != NULL);
  CHECK (nbdcpy_cancel (h) == 0);
  double t0 = now_s ();
  CHECK (nbdcpy_connect (h) == -1);
  CHECK (nbdcpy_get_errno () == ECANCELED);
  CHECK (now_s () - t0 < 0.5);
  nbdcpy_close (h);
  nbdcpy_config_free (c);
  close (s);
}

/* A socket-activated server that never answers: the open times out and
 * the subprocess is killed and reaped (test_nothing_left_behind).
 */
static void
test_silent_subprocess (void)
{
  struct nbdcpy_config *c = test_config_new ();
  const char *argv[] = { "sleep", "60", NULL };
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  CHECK (nbdcpy_config_set (c, "timeout", "1") == 0);
  double t0 = now_s ();
  CHECK (nbdcpy_open (NULL, "null:", c) == NULL);
  CHECK (nbdcpy_get_errno () == ETIMEDOUT);
  CHECK (strstr (nbdcpy_get_error (), "[ sleep 60 ]") != NULL);
  CHECK (now_s () - t0 < 2.5);
  nbdcpy_config_free (c);
}

/* The "rate" key: a 1 MiB copy at 2 MiB/s takes half a second (the
 * bucket starts empty), never less.
 */
static void
test_rate_key (void)
{
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set (c, "rate", "10M/s") == 0);
  CHECK (nbdcpy_config_set (c, "rate", "fast") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "rate") != NULL);
  CHECK (nbdcpy_config_set (c, "rate", "2M") == 0);
  struct nbdcpy *h = nbdcpy_open (path ("src"), "null:", c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (!h) return;
  double t0 = now_s ();
  CHECK (nbdcpy_run (h) == 0);
  double took = now_s () - t0;
  struct nbdcpy_stats st;
  CHECK (nbdcpy_stats (h, &st, sizeof st) == 0);
  printf ("# 1 MiB at 2 MiB/s took %.3f s\n", took);
  CHECK (st.bytes_done == 1 << 20);
  CHECK (took >= 0.45);
  CHECK (took < (under_valgrind ? 5.0 : 0.8));
  nbdcpy_close (h);
}

/* io_uring's io-wq worker threads (iou-wrk-*) leave a moment after
 * their ring is closed: give them up to 2 s.
 */
static void
test_nothing_left_behind (void)
{
  check_nothing_left_behind (2000);
}

int
main (void)
{
  signal (SIGPIPE, SIG_IGN);
  test_begin ("/tmp/nbdcpy-etest-XXXXXX");

  RUN (test_socket_source);
  RUN (test_socket_destination);
  RUN (test_socket_errors);
  RUN (test_open_times_out);
  RUN (test_connect_times_out);
  RUN (test_connect_cancelled);
  RUN (test_silent_subprocess);
  RUN (test_rate_key);
  RUN (test_nothing_left_behind);

  return test_end ();
}
