/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* The embedder's contract (nbdcpy(3) "EMBEDDING"): a handle belongs to
 * no thread.  Opened or connected on a thread that then exits, run on a
 * second, closed on a third, its [ CMD ] servers live until the close;
 * a host killed with SIGKILL leaves no server behind; a host that reaps
 * its children itself (waitpid(-1) in a SIGCHLD handler) does not
 * disturb the copies; nbdcpy_cancel() works from a signal handler and
 * leaves the thread's error state alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* What a thread did with a handle: the call's result and error. */
struct step {
  struct nbdcpy *h;
  const char *src, *dst;
  struct nbdcpy_config *cfg;
  int rc, err;
  char msg[512];
};

static void
note (struct step *s, int rc)
{
  s->rc = rc;
  if (rc != 0) {
    s->err = nbdcpy_get_errno ();
    snprintf (s->msg, sizeof s->msg, "%s", nbdcpy_get_error ());
  }
}

static void *
do_connect (void *arg)
{
  struct step *s = arg;
  note (s, nbdcpy_connect (s->h));
  return NULL;
}

static void *
do_open (void *arg)
{
  struct step *s = arg;
  s->h = nbdcpy_open (s->src, s->dst, s->cfg);
  note (s, s->h ? 0 : -1);
  return NULL;
}

static void *
do_run (void *arg)
{
  struct step *s = arg;
  note (s, nbdcpy_run (s->h));
  return NULL;
}

static void *
do_close (void *arg)
{
  struct step *s = arg;
  nbdcpy_close (s->h);
  return NULL;
}

/* Runs fn(s) on a new thread and waits for that thread to exit. */
static void
on_thread (void *(*fn) (void *), struct step *s)
{
  pthread_t t;
  CHECK (pthread_create (&t, NULL, fn, s) == 0);
  pthread_join (t, NULL);
}

/* The image nbdkit's pattern plugin serves: each 8-byte word is its own
 * offset, big-endian.  Checked here, not by nbdcpy. */
static int
is_pattern (const char *p, uint64_t size)
{
  FILE *f = fopen (p, "r");
  if (!f)
    return 0;
  int ok = 1;
  unsigned char w[8];
  uint64_t off = 0;
  for (; off < size && ok; off += 8) {
    if (fread (w, 1, 8, f) != 8) { ok = 0; break; }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
      v = v << 8 | w[i];
    if (v != off) {
      fprintf (stderr, "  %s: word at %llu is %llu\n", p,
               (unsigned long long) off, (unsigned long long) v);
      ok = 0;
    }
  }
  ok = ok && fgetc (f) == EOF;
  fclose (f);
  return ok;
}

static void
make_sized (const char *p, off_t size)
{
  int fd = open (p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0 && ftruncate (fd, size) == 0);
  if (fd >= 0)
    close (fd);
}

/* Processes whose command line contains `marker` (our servers' command
 * lines name the scratch directory), read from /proc. */
static int
count_marked (const char *marker)
{
  DIR *d = opendir ("/proc");
  if (!d)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir (d)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9')
      continue;
    char p[300], buf[4096];
    snprintf (p, sizeof p, "/proc/%s/cmdline", e->d_name);
    int fd = open (p, O_RDONLY);
    if (fd < 0)
      continue;
    ssize_t len = read (fd, buf, sizeof buf - 1);
    close (fd);
    if (len <= 0)
      continue;            /* exited, or a zombie (empty cmdline) */
    for (ssize_t i = 0; i < len; i++)
      if (buf[i] == '\0')
        buf[i] = ' ';
    buf[len] = '\0';
    if (strstr (buf, marker) && strstr (buf, "nbdkit"))
      n++;
  }
  closedir (d);
  return n;
}

static uint64_t
pattern_size (void)
{
  /* Under valgrind the copy is slower, and 16 MiB shows the same. */
  return under_valgrind ? 16 << 20 : 64 << 20;
}

/* The reproducer: the source a server, connected on a thread
 * that exits, run on a second thread, closed on a third. */
static void
test_source_command_moves_between_threads (void)
{
  if (!need_nbdkit ())
    return;
  char size[32];
  snprintf (size, sizeof size, "size=%llu", (unsigned long long) pattern_size ());
  const char *argv[] = { "nbdkit", "--filter=delay", "pattern", size, "rdelay=20ms", NULL };
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  struct step s = { .h = nbdcpy_create (NULL, path ("from-pattern"), c) };
  nbdcpy_config_free (c);
  CHECK (s.h != NULL);
  if (!s.h)
    return;
  on_thread (do_connect, &s);
  CHECK (s.rc == 0);
  if (s.rc)
    fprintf (stderr, "  connect: %s\n", s.msg);
  /* The connecting thread is gone; give a signal time to arrive. */
  usleep (200 * 1000);
  on_thread (do_run, &s);
  CHECK (s.rc == 0);
  if (s.rc)
    fprintf (stderr, "  run: %s\n", s.msg);
  on_thread (do_close, &s);
  CHECK (is_pattern (path ("from-pattern"), pattern_size ()));
  unlink (path ("from-pattern"));
}

/* The destination a server (nbdkit's file plugin on a file we read back
 * ourselves), opened on a thread that exits, run and closed on others. */
static void
test_destination_command_moves_between_threads (void)
{
  if (!need_nbdkit ())
    return;
  make_file (path ("dsrc"), 8 << 20, 35);
  make_sized (path ("ddst"), 8 << 20);
  const char *argv[] = { "nbdkit", "file", path ("ddst"), NULL };
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, argv) == 0);
  struct step s = { .src = path ("dsrc"), .cfg = c };
  on_thread (do_open, &s);
  nbdcpy_config_free (c);
  CHECK (s.rc == 0);
  if (s.rc) {
    fprintf (stderr, "  open: %s\n", s.msg);
    return;
  }
  usleep (200 * 1000);
  on_thread (do_run, &s);
  CHECK (s.rc == 0);
  if (s.rc)
    fprintf (stderr, "  run: %s\n", s.msg);
  on_thread (do_close, &s);
  CHECK (same_files (path ("dsrc"), path ("ddst")));
  unlink (path ("dsrc"));
  unlink (path ("ddst"));
}

/* A failed connect takes its server with it, on whatever thread. */
static void
test_failed_connect_leaves_no_server (void)
{
  if (!need_nbdkit ())
    return;
  /* A 1 MiB server and a 2 MiB destination file: the sizes differ. */
  make_sized (path ("small-dst"), 2 << 20);
  const char *argv[] = { "nbdkit", "--pidfile", path ("fail.pid"), "memory", "1M", NULL };
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, argv) == 0);
  struct step s = { .src = path ("small-dst"), .cfg = c };
  on_thread (do_open, &s);
  nbdcpy_config_free (c);
  CHECK (s.rc == -1 && s.h == NULL);
  CHECK (count_marked (path ("fail.pid")) == 0);
  unlink (path ("small-dst"));
}

/* The host, in its own process: a copy from a slow server to a server,
 * connected on a thread that exits; tells `ready` once data moves, then
 * runs until killed. */
static int ready_fd = -1;

static int
tell_ready (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque;
  if (ready_fd >= 0 && st->bytes_copied > 0) {
    if (write (ready_fd, "r", 1) != 1)
      _exit (3);
    close (ready_fd);
    ready_fd = -1;
  }
  return 0;
}

static void
host_copy (const char *marker)
{
  make_sized (path ("kill-dst"), 1 << 30);
  const char *src[] = { "nbdkit", "--pidfile", path ("kill-src.pid"), "--filter=delay",
                        "pattern", "size=1G", "rdelay=100ms", NULL };
  const char *dst[] = { "nbdkit", "--pidfile", path ("kill-dst.pid"), "file",
                        path ("kill-dst"), NULL };
  (void) marker;
  struct nbdcpy_config *c = test_config_new ();
  if (!c || nbdcpy_config_set_command (c, NBDCPY_SOURCE, src) != 0
      || nbdcpy_config_set_command (c, NBDCPY_DESTINATION, dst) != 0
      || nbdcpy_config_set_progress (c, tell_ready, NULL, 10) != 0)
    _exit (4);
  struct step s = { .h = nbdcpy_create (NULL, NULL, c) };
  nbdcpy_config_free (c);
  if (!s.h)
    _exit (5);
  on_thread (do_connect, &s);
  if (s.rc != 0) {
    fprintf (stderr, "  host: connect: %s\n", s.msg);
    _exit (6);
  }
  on_thread (do_run, &s);
  fprintf (stderr, "  host: the copy ended (%d: %s) before the kill\n", s.rc, s.msg);
  _exit (7);
}

static void
test_killed_host_leaves_no_server (void)
{
  if (!need_nbdkit ())
    return;
  const char *marker = path ("kill-");
  int p[2];
  CHECK (pipe (p) == 0);
  fflush (NULL);
  pid_t host = fork ();
  CHECK (host >= 0);
  if (host == 0) {
    close (p[0]);
    ready_fd = p[1];
    host_copy (marker);
  }
  close (p[1]);
  char b;
  int got = read (p[0], &b, 1) == 1;
  close (p[0]);
  CHECK (got);
  /* Both servers are running now ... */
  CHECK (count_marked (marker) == 2);
  kill (host, SIGKILL);
  int st;
  CHECK (waitpid (host, &st, 0) == host);
  CHECK (WIFSIGNALED (st) && WTERMSIG (st) == SIGKILL);
  /* ... and gone soon after the host (they were not our children: we
   * look for them by command line in /proc). */
  int left = -1;
  for (int i = 0; i < 500 && left != 0; i++) {
    left = count_marked (marker);
    if (left)
      usleep (10 * 1000);
  }
  printf ("# servers left 5 s after the host's SIGKILL: %d\n", left);
  CHECK (left == 0);
  unlink (path ("kill-dst"));
  unlink (path ("kill-src.pid"));
  unlink (path ("kill-dst.pid"));
}

/* A host that reaps every child itself, as some do. */
static volatile sig_atomic_t reaped;

static void
reap_all (int sig)
{
  (void) sig;
  int e = errno, st;
  while (waitpid (-1, &st, WNOHANG) > 0)
    reaped++;
  errno = e;
}

static void
test_host_sigchld_reaper (void)
{
  if (!need_nbdkit ())
    return;
  struct sigaction sa = { .sa_handler = reap_all, .sa_flags = SA_RESTART }, old;
  sigemptyset (&sa.sa_mask);
  CHECK (sigaction (SIGCHLD, &sa, &old) == 0);
  /* A stranger: a child of ours that nbdcpy must never signal. */
  int p[2];
  CHECK (pipe (p) == 0);
  pid_t stranger = fork ();
  if (stranger == 0) {
    /* exec'd, so valgrind does not follow it (nor check its leaks). */
    close (p[1]);
    dup2 (p[0], 0);
    execlp ("sh", "sh", "-c", "read x; exit 42", (char *) NULL);
    _exit (43);
  }
  close (p[0]);
  int iters = under_valgrind ? 4 : 30, ok = 0;
  make_file (path ("rsrc"), 1 << 20, 7);
  for (int i = 0; i < iters; i++) {
    /* A source and a destination server per copy, started on one
     * thread, run and closed on others; the destination is read back. */
    make_sized (path ("rdst"), 1 << 20);
    const char *dst[] = { "nbdkit", "file", path ("rdst"), NULL };
    const char *src[] = { "nbdkit", "memory", "1M", NULL };
    struct nbdcpy_config *c = test_config_new ();
    CHECK (nbdcpy_config_set_command (c, NBDCPY_DESTINATION, dst) == 0);
    struct step s = { .src = path ("rsrc"), .cfg = c };
    on_thread (do_open, &s);
    if (s.rc == 0) {
      on_thread (do_run, &s);
      on_thread (do_close, &s);
    }
    if (s.rc == 0 && same_files (path ("rsrc"), path ("rdst")))
      ok++;
    else
      fprintf (stderr, "  copy %d: %s\n", i, s.msg);
    nbdcpy_config_free (c);
    /* A copy from a server to nowhere, also closed on another thread
     * while its server runs. */
    c = test_config_new ();
    CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, src) == 0);
    struct step t = { .dst = "null:", .cfg = c };
    on_thread (do_open, &t);
    nbdcpy_config_free (c);
    CHECK (t.rc == 0);
    if (t.rc == 0)
      on_thread (do_close, &t);
  }
  printf ("# %d of %d copies verified, %d children reaped by the host\n", ok, iters,
          (int) reaped);
  CHECK (ok == iters);
  CHECK (reaped >= 1);
  /* The stranger was never signalled: it is waiting still. */
  sigaction (SIGCHLD, &old, NULL);
  int st = 0;
  CHECK (waitpid (stranger, &st, WNOHANG) == 0);
  CHECK (write (p[1], "x", 1) == 1);
  close (p[1]);
  CHECK (waitpid (stranger, &st, 0) == stranger);
  CHECK (WIFEXITED (st) && WEXITSTATUS (st) == 42);
  unlink (path ("rsrc"));
  unlink (path ("rdst"));
}

/* nbdcpy_cancel from a signal handler, mid-copy; a failing one (NULL,
 * stale) says so by errno only: the thread's nbdcpy_get_error() is
 * untouched, as nothing thread-local is. */
static struct nbdcpy *to_cancel;
static volatile sig_atomic_t handler_rc = 99, handler_errno, stale_rc = 99, stale_errno;

static void
cancel_handler (int sig)
{
  (void) sig;
  int e = errno;
  handler_rc = nbdcpy_cancel (to_cancel);
  errno = 0;
  stale_rc = nbdcpy_cancel (NULL);
  stale_errno = errno;
  errno = e;
}

static int
alarm_once (void *opaque, const struct nbdcpy_stats *st)
{
  int *sent = opaque;
  if (!*sent && st->bytes_copied > 0) {
    *sent = 1;
    /* The signal lands on this thread, inside the library's run. */
    pthread_kill (pthread_self (), SIGUSR1);
  }
  return 0;
}

static void
test_cancel_from_signal_handler (void)
{
  if (!need_nbdkit ())
    return;
  struct sigaction sa = { .sa_handler = cancel_handler }, old;
  sigemptyset (&sa.sa_mask);
  CHECK (sigaction (SIGUSR1, &sa, &old) == 0);
  const char *argv[] = { "nbdkit", "--filter=delay", "pattern", "size=1G", "rdelay=50ms", NULL };
  int sent = 0;
  struct nbdcpy_config *c = test_config_new ();
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  CHECK (nbdcpy_config_set_progress (c, alarm_once, &sent, 10) == 0);
  struct nbdcpy *h = nbdcpy_open (NULL, "null:", c);
  nbdcpy_config_free (c);
  CHECK (h != NULL);
  if (h) {
    to_cancel = h;
    double t0 = now_s ();
    CHECK (nbdcpy_run (h) == -1);
    CHECK (nbdcpy_get_errno () == ECANCELED);
    CHECK (now_s () - t0 < 20);
    CHECK (sent == 1);
    CHECK (handler_rc == 0);
    CHECK (stale_rc == -1 && stale_errno == EFAULT);
    nbdcpy_close (h);
  }
  sigaction (SIGUSR1, &old, NULL);

  /* A failing nbdcpy_cancel leaves the last error as it was. */
  CHECK (nbdcpy_run (NULL) == -1);
  char before[256];
  snprintf (before, sizeof before, "%s", nbdcpy_get_error ());
  int local;
  errno = 0;
  CHECK (nbdcpy_cancel ((struct nbdcpy *) &local) == -1);
  CHECK (errno == EINVAL);
  CHECK (nbdcpy_cancel (NULL) == -1);
  CHECK (errno == EFAULT);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (strcmp (nbdcpy_get_error (), before) == 0);
}

static void
test_nothing_left_behind (void)
{
  check_nothing_left_behind (2000);
}

int
main (void)
{
  signal (SIGPIPE, SIG_IGN);
  test_begin ("/tmp/nbdcpy-ttest-XXXXXX");

  RUN (test_source_command_moves_between_threads);
  RUN (test_destination_command_moves_between_threads);
  RUN (test_failed_connect_leaves_no_server);
  RUN (test_killed_host_leaves_no_server);
  RUN (test_host_sigchld_reaper);
  RUN (test_cancel_from_signal_handler);
  RUN (test_nothing_left_behind);

  return test_end ();
}
