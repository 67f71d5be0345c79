/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* Many copies in one process, as an embedder runs them: 16 copies at
 * once from 16 threads (NBD -> NBD, NBD -> file, file -> NBD, TLS), some
 * cancelled from other threads at random moments; fork and exec while
 * copies run; a host with its own SIGCHLD handler and with SIGPIPE
 * ignored, blocked or at its default; two nbdcpy_run calls on one
 * handle.  Finished copies are checked with cmp(1), never with nbdcpy.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbdcpy.h"
#include "tap.h"
/* Not every helper is used here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "helpers.h"

#define NCOPIES 16
#define NSRC 4

static int have_servers;
static char plain_sock[300], tls_sock[300];
static char copy_mib_s[16];
static long long copy_size;

/* A shell command; its exit status 0 as a truth value. */
static int
sh (const char *fmt, ...)
{
  char cmd[2048];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  return system (cmd) == 0;
}

/* Independent check of a finished copy: cmp(1) of the two files. */
static int
same (const char *a, const char *b)
{
  return sh ("cmp -s %s %s", a, b);
}

/* Two nbdkit servers, each exporting every file of the scratch
 * directory's "exports" subdirectory by name (the file plugin's dir=):
 * one plain, one requiring TLS-PSK.  One worker thread per connection
 * (-t 1): nbdkit 1.32 can fail an assertion (raw_send_socket: sock >= 0)
 * when a client closes a connection while two of its worker threads
 * still send replies, which cancelled copies do; seen under helgrind.
 * Sources "src0".."src3" of copy_size random bytes; destinations are
 * made per copy.
 */
static void
start_servers (void)
{
  copy_size = (under_valgrind ? 8 : 16) << 20;
  snprintf (copy_mib_s, sizeof copy_mib_s, "%lld", copy_size >> 20);
  if (!need_nbdkit ())
    return;
  CHECK (sh ("mkdir %s", path ("exports")));
  for (int i = 0; i < NSRC; i++)
    CHECK (sh ("head -c %sM /dev/urandom > %s/src%d", copy_mib_s, path ("exports"), i));
  /* Some zeroes and holes too, so the zero paths run. */
  CHECK (sh ("dd if=/dev/zero of=%s/src1 bs=1M seek=1 count=2 conv=notrunc status=none",
             path ("exports")));
  CHECK (sh ("fallocate -p -o 1M -l 3M %s/src3", path ("exports")));
  FILE *f = fopen (path ("keys.psk"), "w");
  fprintf (f, "alice:%s\n",
           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  fclose (f);
  snprintf (plain_sock, sizeof plain_sock, "%s", path ("plain.sock"));
  snprintf (tls_sock, sizeof tls_sock, "%s", path ("tls.sock"));
  have_servers =
    sh ("nbdkit -t 1 -U %s -P %s file dir=%s", plain_sock, path ("plain.pid"), path ("exports"))
    && sh ("nbdkit -t 1 -U %s -P %s --tls=require --tls-psk=%s file dir=%s",
           tls_sock, path ("tls.pid"), path ("keys.psk"), path ("exports"));
  CHECK (have_servers);
}

static void
stop_servers (void)
{
  if (!have_servers)
    return;
  CHECK (sh ("kill $(cat %s) $(cat %s)", path ("plain.pid"), path ("tls.pid")));
  have_servers = 0;
}

enum kind { NBD_TO_NBD, NBD_TO_FILE, FILE_TO_NBD, TLS };

struct copy {
  int i;
  enum kind kind;
  int cancel;                   /* to be cancelled (runs rate-limited) */
  long long rate;               /* "rate", if not 0 */
  char src[512], dst[512];      /* endpoints as given to nbdcpy */
  char src_file[300], dst_file[300];  /* the files behind them */
  pthread_mutex_t lock;         /* guards h for the cancellers */
  struct nbdcpy *h;
  int r, err, side, connected;
  double started, ended;        /* of nbdcpy_run */
  char engine[16];              /* nbdcpy_get_engine after the run */
  char msg[256];
  struct nbdcpy_stats st;
};

static void
uri (char *out, size_t n, int tls, const char *export)
{
  if (tls)
    snprintf (out, n, "nbds+unix://alice@/%s?socket=%s&tls-psk-file=%s",
              export, tls_sock, path ("keys.psk"));
  else
    snprintf (out, n, "nbd+unix:///%s?socket=%s", export, plain_sock);
}

/* Endpoints of copy c; destinations are fresh files of the source's
 * size (an NBD destination is a file the server exports).
 */
static void
plan_copy (struct copy *c, int i)
{
  char srcname[16], dstname[32];
  memset (c, 0, sizeof *c);
  c->i = i;
  c->kind = (enum kind) (i % 4);
  snprintf (srcname, sizeof srcname, "src%d", i % NSRC);
  snprintf (dstname, sizeof dstname, "dst%d", i);
  snprintf (c->src_file, sizeof c->src_file, "%s/%s", path ("exports"), srcname);
  snprintf (c->dst_file, sizeof c->dst_file, "%s/%s", path ("exports"), dstname);
  int tls_src = c->kind == TLS && (i / 4) % 2 == 0;
  int tls_dst = c->kind == TLS && !tls_src;
  if (c->kind == NBD_TO_NBD || c->kind == FILE_TO_NBD || tls_dst)
    CHECK (sh ("truncate -s %lld %s", copy_size, c->dst_file));
  if (c->kind == NBD_TO_NBD || c->kind == NBD_TO_FILE || tls_src)
    uri (c->src, sizeof c->src, tls_src, srcname);
  else
    snprintf (c->src, sizeof c->src, "%s", c->src_file);
  if (c->kind == NBD_TO_NBD || c->kind == FILE_TO_NBD || tls_dst)
    uri (c->dst, sizeof c->dst, tls_dst, dstname);
  else
    snprintf (c->dst, sizeof c->dst, "%s", c->dst_file);
  pthread_mutex_init (&c->lock, NULL);
}

static struct nbdcpy_config *
copy_config (const struct copy *c)
{
  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  CHECK (cfg != NULL);
  CHECK (nbdcpy_config_set (cfg, "connections", "2") == 0);
  CHECK (nbdcpy_config_set (cfg, "threads", "1") == 0);
  CHECK (nbdcpy_config_set (cfg, "timeout", "120") == 0);
  /* Both engines at once: every other copy on epoll. */
  if (c->i % 2)
    CHECK (nbdcpy_config_set (cfg, "engine", "epoll") == 0);
  /* A copy to be cancelled is slowed, so it is surely still running
   * when the cancel comes (8 s at least). */
  if (c->cancel) {
    char rate[32];
    snprintf (rate, sizeof rate, "%lld", copy_size / 8);
    CHECK (nbdcpy_config_set (cfg, "rate", rate) == 0);
  } else if (c->rate) {
    char rate[32];
    snprintf (rate, sizeof rate, "%lld", c->rate);
    CHECK (nbdcpy_config_set (cfg, "rate", rate) == 0);
  }
  return cfg;
}

static void *
run_copy (void *arg)
{
  struct copy *c = arg;
  struct nbdcpy_config *cfg = copy_config (c);
  struct nbdcpy *h = nbdcpy_create (c->src, c->dst, cfg);
  nbdcpy_config_free (cfg);
  CHECK (h != NULL);
  if (h == NULL)
    return NULL;
  pthread_mutex_lock (&c->lock);
  c->h = h;
  pthread_mutex_unlock (&c->lock);
  c->connected = nbdcpy_connect (h) == 0;
  c->started = now_s ();
  c->r = c->connected ? nbdcpy_run (h) : -1;
  c->ended = now_s ();
  c->err = c->r == -1 ? nbdcpy_get_errno () : 0;
  c->side = c->r == -1 ? nbdcpy_get_error_endpoint () : -1;
  if (c->r == -1 && nbdcpy_get_error ())
    snprintf (c->msg, sizeof c->msg, "%s", nbdcpy_get_error ());
  CHECK (nbdcpy_stats (h, &c->st, sizeof c->st) == 0);
  const char *engine = nbdcpy_get_engine (h);
  snprintf (c->engine, sizeof c->engine, "%s", engine ? engine : "-");
  pthread_mutex_lock (&c->lock);
  c->h = NULL;
  pthread_mutex_unlock (&c->lock);
  nbdcpy_close (h);
  return NULL;
}

struct canceller_args {
  struct copy *copies;
  int which[NCOPIES], n;
  unsigned seed;
};

/* Cancels its copies, each at a random moment 300 to 900 ms after the
 * one before (4 times that under valgrind), mostly while they run,
 * sometimes while they connect. */
static void *
cancel_some (void *arg)
{
  struct canceller_args *a = arg;
  for (int k = 0; k < a->n; k++) {
    int scale = under_valgrind ? 4 : 1;
    usleep (scale * (300000 + rand_r (&a->seed) % 600000));
    struct copy *c = &a->copies[a->which[k]];
    for (int tries = 0; tries < 1000; tries++) {
      pthread_mutex_lock (&c->lock);
      int done = c->h != NULL && nbdcpy_cancel (c->h) == 0;
      pthread_mutex_unlock (&c->lock);
      if (done)
        break;
      usleep (10000);           /* not created yet */
    }
  }
  return NULL;
}

/* 16 copies at once, each on its own thread with its own handle (half
 * of them on the epoll engine), one of each kind cancelled from one of
 * two other threads.
 */
static void
test_sixteen_copies_at_once (void)
{
  if (!have_servers)
    return;
  static struct copy copies[NCOPIES];
  unsigned seed = (unsigned) time (NULL);
  printf ("# seed %u, %d copies of %s MiB\n", seed, NCOPIES, copy_mib_s);
  for (int i = 0; i < NCOPIES; i++) {
    plan_copy (&copies[i], i);
    /* About 1.5 s each (6 s under valgrind, which runs one thread at a
     * time), so that all run at the same time. */
    copies[i].rate = under_valgrind ? copy_size / 6 : copy_size * 2 / 3;
  }
  struct canceller_args ca[2] = { { copies, {0}, 0, seed }, { copies, {0}, 0, seed + 1 } };
  for (int k = 0; k < 4; k++) {
    int i = k + 4 * (int) (rand_r (&seed) % (NCOPIES / 4));
    copies[i].cancel = 1;
    ca[k % 2].which[ca[k % 2].n++] = i;
  }
  pthread_t t[NCOPIES], ct[2];
  double t0 = now_s ();
  for (int i = 0; i < NCOPIES; i++)
    CHECK (pthread_create (&t[i], NULL, run_copy, &copies[i]) == 0);
  for (int k = 0; k < 2; k++)
    CHECK (pthread_create (&ct[k], NULL, cancel_some, &ca[k]) == 0);
  for (int k = 0; k < 2; k++)
    pthread_join (ct[k], NULL);
  for (int i = 0; i < NCOPIES; i++)
    pthread_join (t[i], NULL);
  printf ("# all done in %.1f s\n", now_s () - t0);
  static const char *kinds[] = { "nbd->nbd", "nbd->file", "file->nbd", "tls" };
  /* The finished copies all ran at the same time: the last start is
   * before the first end. */
  double last_start = 0, first_end = 1e300;
  for (int i = 0; i < NCOPIES; i++) {
    if (copies[i].cancel)
      continue;
    if (copies[i].started > last_start) last_start = copies[i].started;
    if (copies[i].ended < first_end) first_end = copies[i].ended;
  }
  printf ("# all running together for %.2f s\n", first_end - last_start);
  /* Valgrind runs one thread at a time and its TLS handshakes take
   * seconds: there the copies overlap only mostly. */
  if (!under_valgrind)
    CHECK (last_start < first_end);
  for (int i = 0; i < NCOPIES; i++) {
    struct copy *c = &copies[i];
    printf ("# copy %2d %-9s %-8s %s: r=%d errno=%d side=%d %s\n", i, kinds[c->kind],
            c->engine, c->cancel ? "cancelled" : "finished ", c->r, c->err, c->side,
            c->msg);
    if (c->cancel) {
      /* Cancelled while it connected (nbdcpy_connect fails, naming the
       * end it was connecting to) or while it ran (about neither end). */
      CHECK (c->r == -1);
      CHECK (c->err == ECANCELED);
      CHECK (strstr (c->msg, "cancel") != NULL);
      CHECK (c->st.bytes_done < (uint64_t) copy_size);
      if (c->connected) {
        CHECK (c->side == -1);
        CHECK (c->st.finished == 1);
      }
    } else {
      CHECK (c->connected);
      CHECK (c->st.finished == 1);
      if (c->i % 2)
        CHECK (strcmp (c->engine, "epoll") == 0);
      CHECK (c->r == 0);
      CHECK (c->st.bytes_done == (uint64_t) copy_size);
      CHECK (same (c->src_file, c->dst_file));
    }
    pthread_mutex_destroy (&c->lock);
    unlink (c->dst_file);
  }
}

/* Copies on threads of their own, started together and joined by
 * join_copies; checked with cmp.
 */
static pthread_t bg[4];
static struct copy bgc[4];

static void
start_copies (int n, int base, long long rate)
{
  for (int i = 0; i < n; i++) {
    plan_copy (&bgc[i], base + i);
    bgc[i].rate = rate;
    CHECK (pthread_create (&bg[i], NULL, run_copy, &bgc[i]) == 0);
  }
}

static void
join_copies (int n)
{
  for (int i = 0; i < n; i++) {
    pthread_join (bg[i], NULL);
    printf ("# copy %d: r=%d %s\n", bgc[i].i, bgc[i].r, bgc[i].msg);
    CHECK (bgc[i].r == 0);
    CHECK (same (bgc[i].src_file, bgc[i].dst_file));
    pthread_mutex_destroy (&bgc[i].lock);
    unlink (bgc[i].dst_file);
  }
}

/* The number of open descriptors a program exec'd from a child sees:
 * ls(1) lists /proc/self/fd (its own 0, 1, 2 and the directory's).
 * -1 if the child failed.
 */
static int
fds_after_exec (void)
{
  int p[2];
  if (pipe2 (p, O_CLOEXEC) != 0)
    return -1;
  fflush (stdout);
  pid_t pid = fork ();
  if (pid == 0) {
    /* Only async-signal-safe calls until exec. */
    dup2 (p[1], 1);
    execl ("/bin/ls", "ls", "/proc/self/fd", (char *) NULL);
    _exit (127);
  }
  close (p[1]);
  char buf[4096];
  size_t len = 0;
  ssize_t n;
  while ((n = read (p[0], buf + len, sizeof buf - 1 - len)) > 0)
    len += n;
  close (p[0]);
  buf[len] = 0;
  int status;
  if (pid < 0 || waitpid (pid, &status, 0) != pid || !WIFEXITED (status)
      || WEXITSTATUS (status) != 0)
    return -1;
  int lines = 0;
  for (size_t i = 0; i < len; i++)
    lines += buf[i] == '\n';
  return lines;
}

/* fork() while four copies run: each child execs (true(1), or ls(1) to
 * count what it inherited: nothing of nbdcpy's, every descriptor being
 * close-on-exec), exits 0, and the parent's copies all finish.
 */
static void
test_fork_while_copying (void)
{
  if (!have_servers)
    return;
  /* What a child inherits from the test itself (its harness's fds). */
  int baseline = fds_after_exec ();
  CHECK (baseline >= 4);
  /* About 1.5 s each. */
  start_copies (4, 0, copy_size * 2 / 3);
  usleep (100000);
  int forks = 0;
  for (int k = 0; k < 10; k++) {
    fflush (stdout);
  pid_t pid = fork ();
    CHECK (pid >= 0);
    if (pid == 0) {
      execl ("/bin/true", "true", (char *) NULL);
      _exit (127);
    }
    int status = 0;
    CHECK (waitpid (pid, &status, 0) == pid);
    CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    CHECK (fds_after_exec () == baseline);
    forks += 2;
    usleep (20000);
  }
  int running = 0;
  for (int i = 0; i < 4; i++) {
    pthread_mutex_lock (&bgc[i].lock);
    running += bgc[i].h != NULL;
    pthread_mutex_unlock (&bgc[i].lock);
  }
  printf ("# %d children forked and exec'd, %d copies still running then\n", forks, running);
  CHECK (running > 0);
  join_copies (4);
}

/* The handler counts by writing a byte to a pipe (no memory shared with
 * the interrupted thread, so nothing for helgrind to report). */
static int sigchld_pipe[2] = { -1, -1 };

static void
on_sigchld (int sig)
{
  (void) sig;
  int e = errno;
  if (write (sigchld_pipe[1], "c", 1) < 0) {
    /* Full: enough counted. */
  }
  errno = e;
}

static int
sigchld_drain (void)
{
  char buf[256];
  int n = 0;
  ssize_t r;
  while ((r = read (sigchld_pipe[0], buf, sizeof buf)) > 0)
    n += r;
  return n;
}

static pthread_mutex_t storm_lock = PTHREAD_MUTEX_INITIALIZER;

static int
storm_stopped (int *stop)
{
  pthread_mutex_lock (&storm_lock);
  int v = *stop;
  pthread_mutex_unlock (&storm_lock);
  return v;
}

static void *
fork_storm (void *arg)
{
  int *stop = arg;
  while (!storm_stopped (stop)) {
    fflush (stdout);
  pid_t pid = fork ();
    if (pid == 0) {
      /* exec, not _exit: under valgrind a child that exits is checked
       * for leaks, and the other threads' memory looks lost there. */
      execl ("/bin/true", "true", (char *) NULL);
      _exit (127);
    }
    if (pid > 0)
      while (waitpid (pid, NULL, 0) == -1 && errno == EINTR)
        ;
    usleep (2000);
  }
  return NULL;
}

/* A server run as a subprocess ([ CMD ]) to a file, with the host's
 * handlers in place; checked with cmp.
 */
static void
command_copy (void)
{
  const char *argv[] = { "nbdkit", "file", NULL, NULL };
  char file_arg[400];
  snprintf (file_arg, sizeof file_arg, "file=%s/src0", path ("exports"));
  argv[2] = file_arg;
  struct nbdcpy_config *c = nbdcpy_config_new ();
  CHECK (nbdcpy_config_set_command (c, NBDCPY_SOURCE, argv) == 0);
  CHECK (nbdcpy_config_set (c, "socket-dir", dir) == 0);
  struct nbdcpy *h = nbdcpy_open (NULL, path ("cmd-dst"), c);
  nbdcpy_config_free (c);
  int r = h ? nbdcpy_run (h) : -1;
  if (r != 0)
    printf ("# command copy: %s\n", nbdcpy_get_error ());
  CHECK (r == 0);
  nbdcpy_close (h);
  char src[400];
  snprintf (src, sizeof src, "%s/src0", path ("exports"));
  CHECK (same (src, path ("cmd-dst")));
  unlink (path ("cmd-dst"));
}

/* The host installs its own SIGCHLD handler (without SA_RESTART, so
 * every child's exit interrupts some system call) and forks all the
 * time; SIGPIPE is ignored, then blocked, then at its default, while
 * NBD copies run and a destination server dies in the middle of one.
 * Every copy finishes (the broken one fails, with an error, and the
 * process lives on).
 */
static void
test_host_signal_handlers (void)
{
  if (!have_servers)
    return;
  CHECK (pipe2 (sigchld_pipe, O_CLOEXEC | O_NONBLOCK) == 0);
  struct sigaction sa = { .sa_handler = on_sigchld }, old_chld, old_pipe;
  sigemptyset (&sa.sa_mask);
  CHECK (sigaction (SIGCHLD, &sa, &old_chld) == 0);
  for (int mode = 0; mode < 3; mode++) {
    sigset_t pipe_set, old_mask;
    sigemptyset (&pipe_set);
    sigaddset (&pipe_set, SIGPIPE);
    struct sigaction pipe_sa = { .sa_handler = mode == 0 ? SIG_IGN : SIG_DFL };
    sigemptyset (&pipe_sa.sa_mask);
    CHECK (sigaction (SIGPIPE, &pipe_sa, &old_pipe) == 0);
    /* Threads made from here on inherit the mask. */
    if (mode == 1)
      CHECK (pthread_sigmask (SIG_BLOCK, &pipe_set, &old_mask) == 0);
    printf ("# SIGPIPE %s\n", mode == 0 ? "ignored" : mode == 1 ? "blocked" : "default");
    sigchld_drain ();
    int stop = 0;
    pthread_t storm;
    CHECK (pthread_create (&storm, NULL, fork_storm, &stop) == 0);
    start_copies (3, 0, 0);
    command_copy ();
    join_copies (3);
    pthread_mutex_lock (&storm_lock);
    stop = 1;
    pthread_mutex_unlock (&storm_lock);
    pthread_join (storm, NULL);
    int delivered = sigchld_drain ();
    printf ("# %d SIGCHLD delivered\n", delivered);
    CHECK (delivered > 0);
    if (mode == 1)
      CHECK (pthread_sigmask (SIG_SETMASK, &old_mask, NULL) == 0);
    CHECK (sigaction (SIGPIPE, &old_pipe, NULL) == 0);
  }
  CHECK (sigaction (SIGCHLD, &old_chld, NULL) == 0);
  close (sigchld_pipe[0]);
  close (sigchld_pipe[1]);
}

/* With SIGPIPE at its default: a destination server that goes away in
 * the middle of a copy (its socket closed under our writes, on every
 * data path) fails the copy with an error naming the destination; the
 * process is not killed.
 */
static void
test_sigpipe_default_server_gone (void)
{
  if (!need_nbdkit ())
    return;
  signal (SIGPIPE, SIG_DFL);
  const char *splice[] = { "0", "1" };
  for (int k = 0; k < 2; k++) {
    CHECK (sh ("nbdkit -U %s -P %s memory 64M", path ("gone.sock"), path ("gone.pid")));
    char src[400], dst[400];
    snprintf (src, sizeof src, "nbd+unix:///src%d?socket=%s", k, plain_sock);
    snprintf (dst, sizeof dst, "nbd+unix:///?socket=%s", path ("gone.sock"));
    struct nbdcpy_config *c = nbdcpy_config_new ();
    CHECK (nbdcpy_config_set (c, "splice", splice[k]) == 0);
    char rate[32];
    snprintf (rate, sizeof rate, "%lld", copy_size / 4);
    CHECK (nbdcpy_config_set (c, "rate", rate) == 0);
    struct nbdcpy *h = nbdcpy_open (src, dst, c);
    nbdcpy_config_free (c);
    CHECK (h != NULL);
    fflush (stdout);
  pid_t pid = fork ();
    if (pid == 0) {
      /* Kills the server after 500 ms. */
      usleep (500000);
      char cmd[400];
      snprintf (cmd, sizeof cmd, "kill -9 $(cat %s)", path ("gone.pid"));
      execl ("/bin/sh", "sh", "-c", cmd, (char *) NULL);
      _exit (127);
    }
    int r = h ? nbdcpy_run (h) : 0;
    printf ("# splice=%s, server killed: r=%d errno=%d side=%d %s\n", splice[k], r,
            nbdcpy_get_errno (), nbdcpy_get_error_endpoint (),
            r == -1 ? nbdcpy_get_error () : "");
    CHECK (r == -1);
    CHECK (nbdcpy_get_error_endpoint () == NBDCPY_DESTINATION);
    nbdcpy_close (h);
    waitpid (pid, NULL, 0);
    unlink (path ("gone.sock"));
  }
}

/* Two nbdcpy_run calls on one handle from two threads: the second fails
 * at once with EBUSY; the first goes on and succeeds.
 */
struct second_run {
  struct nbdcpy *h;
  int r, err;
  double took;
};

static void *
second_run (void *arg)
{
  struct second_run *s = arg;
  double t0 = now_s ();
  s->r = nbdcpy_run (s->h);
  s->err = nbdcpy_get_errno ();
  s->took = now_s () - t0;
  return NULL;
}

static void
test_second_run_is_busy (void)
{
  if (!have_servers)
    return;
  struct copy c;
  plan_copy (&c, 1);
  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  char rate[32];
  snprintf (rate, sizeof rate, "%lld", copy_size);      /* about 1 s */
  CHECK (nbdcpy_config_set (cfg, "rate", rate) == 0);
  struct nbdcpy *h = nbdcpy_open (c.src, c.dst, cfg);
  nbdcpy_config_free (cfg);
  CHECK (h != NULL);
  struct second_run s = { h, 0, 0, 0 };
  pthread_t t;
  pthread_t first;
  struct second_run f = { h, 0, 0, 0 };
  CHECK (pthread_create (&first, NULL, second_run, &f) == 0);
  usleep (200000);
  CHECK (pthread_create (&t, NULL, second_run, &s) == 0);
  pthread_join (t, NULL);
  printf ("# second nbdcpy_run: r=%d errno=%d after %.3f s\n", s.r, s.err, s.took);
  CHECK (s.r == -1 && s.err == EBUSY);
  CHECK (s.took < 0.5);
  unsigned char md[64];
  CHECK (nbdcpy_get_blkhash (h, md, sizeof md) == -1);
  CHECK (nbdcpy_get_errno () == EBUSY);
  pthread_join (first, NULL);
  CHECK (f.r == 0);
  CHECK (same (c.src_file, c.dst_file));
  /* After the run: EALREADY, as before. */
  CHECK (nbdcpy_run (h) == -1 && nbdcpy_get_errno () == EALREADY);
  nbdcpy_close (h);
  pthread_mutex_destroy (&c.lock);
  unlink (c.dst_file);
}

/* Every key can be listed and read back, and what is read back sets the
 * same value again; the tuning keys read as their documented defaults.
 */
static void
test_config_keys (void)
{
  struct nbdcpy_config *c = nbdcpy_config_new ();
  size_t n = 0;
  int saw_socket_dir = 0, saw_fast_zero = 0;
  for (; nbdcpy_config_key (n) != NULL; n++) {
    const char *k = nbdcpy_config_key (n);
    CHECK (k == nbdcpy_config_key (n));         /* static storage */
    char *v = nbdcpy_config_get (c, k);
    CHECK (v != NULL);
    if (v == NULL)
      continue;
    if (v[0] != '\0') {
      struct nbdcpy_config *c2 = nbdcpy_config_new ();
      int ok = nbdcpy_config_set (c2, k, v) == 0;
      if (!ok)
        printf ("# %s=%s: %s\n", k, v, nbdcpy_get_error ());
      CHECK (ok);
      char *v2 = nbdcpy_config_get (c2, k);
      CHECK (v2 && strcmp (v, v2) == 0);
      free (v2);
      nbdcpy_config_free (c2);
    }
    saw_socket_dir |= strcmp (k, "socket-dir") == 0;
    saw_fast_zero |= strcmp (k, "fast-zero") == 0;
    free (v);
  }
  printf ("# %zu keys\n", n);
  CHECK (n >= 30);
  CHECK (saw_socket_dir && saw_fast_zero);
  CHECK (nbdcpy_config_key ((size_t) -1) == NULL);
  static const char *const defaults[][2] = {
    { "fast-zero", "1" }, { "uring-file-writes", "0" }, { "file-lock", "1" },
    { "pipe-size", "auto" }, { "timeout", "60" }, { "connections", "auto" },
    { "splice", "auto" }, { "length", "" }, { "socket-dir", "" },
  };
  for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
    char *v = nbdcpy_config_get (c, defaults[i][0]);
    CHECK (v && strcmp (v, defaults[i][1]) == 0);
    free (v);
  }
  CHECK (nbdcpy_config_set (c, "request-size", "1M") == 0);
  CHECK (nbdcpy_config_set (c, "target-is-zero", NULL) == 0);
  char *v = nbdcpy_config_get (c, "request-size");
  CHECK (v && strcmp (v, "1048576") == 0);
  free (v);
  v = nbdcpy_config_get (c, "destination-is-zero");
  CHECK (v && strcmp (v, "1") == 0);
  free (v);
  CHECK (nbdcpy_config_set (c, "request-size", "auto") == 0);
  v = nbdcpy_config_get (c, "request-size");
  CHECK (v && strcmp (v, "auto") == 0);
  free (v);
  CHECK (nbdcpy_config_get (c, "no-such-key") == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
  CHECK (strstr (nbdcpy_get_error (), "no-such-key") != NULL);
  CHECK (nbdcpy_config_get (NULL, "timeout") == NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_config_get (c, NULL) == NULL);
  CHECK (nbdcpy_get_errno () == EFAULT);
  CHECK (nbdcpy_config_set (c, "socket-dir", "relative/dir") == -1);
  CHECK (nbdcpy_get_errno () == EINVAL);
  nbdcpy_config_free (c);
  /* A freed config is refused. */
  CHECK (nbdcpy_config_get (c, "timeout") == NULL);
  CHECK (nbdcpy_get_errno () == EINVAL);
}

static void
test_nothing_left_behind (void)
{
  stop_servers ();
  check_nothing_left_behind (2000);
}

int
main (void)
{
  test_begin ("/tmp/nbdcpy-many-XXXXXX");
  start_servers ();

  RUN (test_config_keys);
  RUN (test_sixteen_copies_at_once);
  RUN (test_fork_while_copying);
  RUN (test_host_signal_handlers);
  RUN (test_sigpipe_default_server_gone);
  RUN (test_second_run_is_busy);
  RUN (test_nothing_left_behind);

  return test_end ();
}
