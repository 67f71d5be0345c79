/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* nbdcpy - copy to and from an NBD server.  A drop-in for nbdcopy(1),
 * written only against the public API in include/nbdcpy.h.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nbdcpy.h"

static struct nbdcpy *volatile g_handle;
static int progress_bar;       /* -p: bar on stderr */
static int progress_fd = -1;   /* --progress=FD: "N/100\n" lines */
static int last_percent = -1;
static int last_fd_percent = -1;
static int bar_drawn;
static int verbose;

/* Run as "nbdcopy" (the compat link, see nbdcpy(1) "NBDCOPY
 * COMPATIBILITY"), --version answers like libnbd's nbdcopy: the nbdcopy
 * release whose command line this one accepts, then the library.
 */
#define NBDCOPY_COMPAT_VERSION "1.14.0"

static void
usage (FILE *fp, int status)
{
  fprintf (fp,
"Copy to and from an NBD server:\n"
"\n"
"  nbdcpy [--allocated] [-C N|--connections=N]\n"
"         [--destination-is-zero|--target-is-zero] [--flush]\n"
"         [--no-extents] [-p|--progress|--progress=FD]\n"
"         [--queue-size=N] [--request-size=N] [-R N|--requests=N]\n"
"         [-S N|--sparse=N] [--splice=auto|on|off] [--synchronous]\n"
"         [-T N|--threads=N] [--timeout=SECONDS] [--slow-timeout=SECONDS]\n"
"         [--set=KEY=VALUE] [-v|--verbose] [--dirty-bitmap=NAME]\n"
"         [--offset=N] [--length=N] [--destination-offset=N]\n"
"         SOURCE DESTINATION\n"
"\n"
"  SOURCE, DESTINATION := - | FILE | DEVICE | NBD-URI | [ CMD ARGS ... ]\n"
"  DESTINATION += null:\n"
"  nbds:// (TLS): ?tls-certificates=DIR|tls-psk-file=FILE, tls-username=,\n"
"    tls-hostname=, tls-verify-peer=false (nbdcpy(1) TLS)\n"
"\n"
"  nbdcpy --help | -V|--version\n"
"\n"
"Examples:\n"
"  nbdcpy nbd://example.com local.img\n"
"  nbdcpy -- [ qemu-nbd -r -f qcow2 disk.qcow2 ] - | file -\n"
"\n"
"Please read the nbdcpy(1) manual page for full usage.\n");
  exit (status);
}

static void
on_signal (int sig)
{
  (void) sig;
  struct nbdcpy *h = g_handle;
  if (h)
    nbdcpy_cancel (h);          /* async-signal-safe */
}

static double
now_s (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
human (char *buf, size_t n, double v)
{
  const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  int i = 0;
  while (v >= 1024 && i < 5) {
    v /= 1024;
    i++;
  }
  snprintf (buf, n, i == 0 ? "%.0f %s" : "%.1f %s", v, u[i]);
}

/* --progress=FD: one "N/100" line, like nbdcopy's.  Like nbdcopy, a
 * broken progress fd is not fatal.
 */
static void
progress_line (int percent)
{
  char line[32];
  int len = snprintf (line, sizeof line, "%d/100\n", percent);
  if (write (progress_fd, line, len) != len) {
    /* ignored */
  }
}

static int
on_progress (void *opaque, const struct nbdcpy_stats *st)
{
  (void) opaque;
  int percent = 0;
  if (st->size > 0 && st->size_known)
    percent = (int) (st->bytes_done * 100 / st->size);
  if (percent > 100)
    percent = 100;

  /* As nbdcopy: 0/100 when the copy starts, 100/100 only when it has
   * succeeded (both written by main), and in between the percentage
   * whenever it changes; a stream of unknown size stays at 0.
   */
  if (progress_fd >= 0 && percent < 100 && percent != last_fd_percent) {
    progress_line (percent);
    last_fd_percent = percent;
  }
  if (progress_bar) {
    double secs = st->elapsed_ns / 1e9;
    double rate = secs > 0 ? st->bytes_done / secs : 0;
    char done[32], speed[32], eta[32] = "--:--";
    human (done, sizeof done, (double) st->bytes_done);
    human (speed, sizeof speed, rate);
    if (rate > 0 && st->size > st->bytes_done) {
      long left = (long) ((st->size - st->bytes_done) / rate);
      snprintf (eta, sizeof eta, "%02ld:%02ld", left / 60, left % 60);
    } else if (st->size > 0 && st->bytes_done >= st->size)
      snprintf (eta, sizeof eta, "00:00");
    char bar[41];
    int fill = percent * 40 / 100;
    for (int i = 0; i < 40; i++)
      bar[i] = i < fill ? '#' : '-';
    bar[40] = '\0';
    if (isatty (2))
      fprintf (stderr, "\r[%s] %3d%% %s %s/s ETA %s\033[K",
               bar, percent, done, speed, eta);
    else if (percent != last_percent)
      fprintf (stderr, "%3d%% %s %s/s ETA %s\n", percent, done, speed, eta);
    bar_drawn = 1;
  }
  last_percent = percent;
  return 0;
}

/* Takes "[ CMD ARGS ... ]" starting at argv[*i]; returns a NULL-terminated
 * array (pointers into argv), or NULL if argv[*i] is not "[".
 */
static char **
take_command (int argc, char **argv, int *i)
{
  if (strcmp (argv[*i], "[") != 0)
    return NULL;
  int start = *i + 1, end = start;
  while (end < argc && strcmp (argv[end], "]") != 0)
    end++;
  if (end >= argc) {
    fprintf (stderr, "nbdcpy: '[' without matching ']'\n");
    exit (EXIT_FAILURE);
  }
  if (end == start) {
    fprintf (stderr, "nbdcpy: empty command in '[ ]'\n");
    exit (EXIT_FAILURE);
  }
  char **cmd = calloc (end - start + 1, sizeof (char *));
  if (cmd == NULL) {
    perror ("calloc");
    exit (EXIT_FAILURE);
  }
  for (int j = start; j < end; j++)
    cmd[j - start] = argv[j];
  *i = end + 1;
  return cmd;
}

/* The library never prints: its messages come here. */
static void
on_log (void *opaque, int level, const char *msg)
{
  (void) opaque;
  fprintf (stderr, "nbdcpy: %s%s\n",
           level == NBDCPY_LOG_WARNING ? "warning: " : "", msg);
}

static void
set (struct nbdcpy_config *cfg, const char *name, const char *value)
{
  if (nbdcpy_config_set (cfg, name, value) == -1) {
    fprintf (stderr, "nbdcpy: %s\n", nbdcpy_get_error ());
    exit (EXIT_FAILURE);
  }
}

int
main (int argc, char *argv[])
{
  enum {
    HELP_OPTION = 256, LONG_OPTIONS, SHORT_OPTIONS, ALLOCATED_OPTION,
    DESTINATION_IS_ZERO_OPTION, FLUSH_OPTION, NO_EXTENTS_OPTION,
    QUEUE_SIZE_OPTION, REQUEST_SIZE_OPTION, SYNCHRONOUS_OPTION,
    TIMEOUT_OPTION, SLOW_TIMEOUT_OPTION, SET_OPTION,
    SPLICE_OPTION, DIRTY_BITMAP_OPTION, OFFSET_OPTION, LENGTH_OPTION,
    DESTINATION_OFFSET_OPTION,
  };
  static const char short_options[] = "C:pR:S:T:vV";
  static const struct option long_options[] = {
    { "help", no_argument, NULL, HELP_OPTION },
    { "long-options", no_argument, NULL, LONG_OPTIONS },
    { "short-options", no_argument, NULL, SHORT_OPTIONS },
    { "allocated", no_argument, NULL, ALLOCATED_OPTION },
    { "connections", required_argument, NULL, 'C' },
    { "destination-is-zero", no_argument, NULL, DESTINATION_IS_ZERO_OPTION },
    { "target-is-zero", no_argument, NULL, DESTINATION_IS_ZERO_OPTION },
    { "flush", no_argument, NULL, FLUSH_OPTION },
    { "no-extents", no_argument, NULL, NO_EXTENTS_OPTION },
    { "progress", optional_argument, NULL, 'p' },
    { "queue-size", required_argument, NULL, QUEUE_SIZE_OPTION },
    { "request-size", required_argument, NULL, REQUEST_SIZE_OPTION },
    { "requests", required_argument, NULL, 'R' },
    { "sparse", required_argument, NULL, 'S' },
    { "synchronous", no_argument, NULL, SYNCHRONOUS_OPTION },
    { "threads", required_argument, NULL, 'T' },
    { "timeout", required_argument, NULL, TIMEOUT_OPTION },
    { "slow-timeout", required_argument, NULL, SLOW_TIMEOUT_OPTION },
    { "set", required_argument, NULL, SET_OPTION },
    { "splice", required_argument, NULL, SPLICE_OPTION },
    { "dirty-bitmap", required_argument, NULL, DIRTY_BITMAP_OPTION },
    { "offset", required_argument, NULL, OFFSET_OPTION },
    { "length", required_argument, NULL, LENGTH_OPTION },
    { "destination-offset", required_argument, NULL, DESTINATION_OFFSET_OPTION },
    { "verbose", no_argument, NULL, 'v' },
    { "version", no_argument, NULL, 'V' },
    { NULL }
  };

  struct nbdcpy_config *cfg = nbdcpy_config_new ();
  if (cfg == NULL) {
    fprintf (stderr, "nbdcpy: %s\n", nbdcpy_get_error ());
    exit (EXIT_FAILURE);
  }
  nbdcpy_config_set_log (cfg, on_log, NULL);

  int c;
  while ((c = getopt_long (argc, argv, short_options, long_options, NULL))
         != -1) {
    switch (c) {
    case HELP_OPTION:
      usage (stdout, EXIT_SUCCESS);
      break;
    case LONG_OPTIONS:
      for (int j = 0; long_options[j].name; j++)
        if (strcmp (long_options[j].name, "long-options") != 0 &&
            strcmp (long_options[j].name, "short-options") != 0)
          printf ("--%s\n", long_options[j].name);
      exit (EXIT_SUCCESS);
    case SHORT_OPTIONS:
      for (int j = 0; short_options[j]; j++)
        if (short_options[j] != ':')
          printf ("-%c\n", short_options[j]);
      exit (EXIT_SUCCESS);
    case ALLOCATED_OPTION: set (cfg, "allocated", "1"); break;
    case 'C': set (cfg, "connections", optarg); break;
    case DESTINATION_IS_ZERO_OPTION: set (cfg, "destination-is-zero", "1"); break;
    case FLUSH_OPTION: set (cfg, "flush", "1"); break;
    case NO_EXTENTS_OPTION: set (cfg, "no-extents", "1"); break;
    case 'p':
      if (optarg) {
        char *end;
        errno = 0;
        long fd = strtol (optarg, &end, 10);
        if (errno || *end || end == optarg || fd < 0 || fd > 1000000) {
          fprintf (stderr, "nbdcpy: --progress: bad file descriptor '%s'\n",
                   optarg);
          exit (EXIT_FAILURE);
        }
        progress_fd = (int) fd;
      }
      else
        progress_bar = 1;
      break;
    case QUEUE_SIZE_OPTION: set (cfg, "queue-size", optarg); break;
    case REQUEST_SIZE_OPTION: set (cfg, "request-size", optarg); break;
    case 'R': set (cfg, "requests", optarg); break;
    case 'S': set (cfg, "sparse", optarg); break;
    case SYNCHRONOUS_OPTION: set (cfg, "synchronous", "1"); break;
    case 'T': set (cfg, "threads", optarg); break;
    case TIMEOUT_OPTION: set (cfg, "timeout", optarg); break;
    case SLOW_TIMEOUT_OPTION: set (cfg, "slow-timeout", optarg); break;
    case DIRTY_BITMAP_OPTION: set (cfg, "dirty-bitmap", optarg); break;
    case OFFSET_OPTION: set (cfg, "offset", optarg); break;
    case LENGTH_OPTION: set (cfg, "length", optarg); break;
    case DESTINATION_OFFSET_OPTION:
      set (cfg, "destination-offset", optarg);
      break;
    case SET_OPTION: {
      /* --set=KEY=VALUE: any nbdcpy_config_set key (debug knobs). */
      char *eq = strchr (optarg, '=');
      if (eq == NULL) {
        fprintf (stderr, "nbdcpy: --set: expected KEY=VALUE, not '%s'\n",
                 optarg);
        exit (EXIT_FAILURE);
      }
      *eq = '\0';
      set (cfg, optarg, eq + 1);
      break;
    }
    case SPLICE_OPTION: set (cfg, "splice", optarg); break;
    case 'v': verbose = 1; set (cfg, "verbose", "1"); break;
    case 'V': {
      const char *slash = strrchr (argv[0], '/');
      if (strcmp (slash ? slash + 1 : argv[0], "nbdcopy") == 0)
        printf ("nbdcopy %s\nlibnbdcpy %s\n", NBDCOPY_COMPAT_VERSION,
                nbdcpy_version ());
      else
        printf ("nbdcpy %s\n", nbdcpy_version ());
      exit (EXIT_SUCCESS);
    }
    default:
      usage (stderr, EXIT_FAILURE);
    }
  }

  /* SOURCE and DESTINATION, each a word or "[ CMD ARGS ... ]". */
  const char *ends[2] = { NULL, NULL };
  char **cmds[2] = { NULL, NULL };
  int i = optind;
  for (int side = 0; side < 2; side++) {
    if (i >= argc) {
      fprintf (stderr, "nbdcpy: expected SOURCE DESTINATION\n");
      usage (stderr, EXIT_FAILURE);
    }
    cmds[side] = take_command (argc, argv, &i);
    if (cmds[side] == NULL)
      ends[side] = argv[i++];
    else if (nbdcpy_config_set_command (cfg, side == 0 ? NBDCPY_SOURCE
                                        : NBDCPY_DESTINATION,
                                        (const char *const *) cmds[side])
             == -1) {
      fprintf (stderr, "nbdcpy: %s\n", nbdcpy_get_error ());
      exit (EXIT_FAILURE);
    }
  }
  if (i != argc) {
    fprintf (stderr, "nbdcpy: extra parameters on the command line: %s\n",
             argv[i]);
    usage (stderr, EXIT_FAILURE);
  }

  if (progress_bar || progress_fd >= 0)
    nbdcpy_config_set_progress (cfg, on_progress, NULL,
                                progress_bar && isatty (2) ? 250 : 1000);

  /* Ctrl-C and kill: cancel cleanly (servers get DISC, subprocesses are
   * reaped), then exit non-zero.
   */
  struct sigaction sa;
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  signal (SIGPIPE, SIG_IGN);

  struct nbdcpy *h = nbdcpy_open (ends[0], ends[1], cfg);
  nbdcpy_config_free (cfg);
  free (cmds[0]);
  free (cmds[1]);
  if (h == NULL) {
    fprintf (stderr, "nbdcpy: %s\n", nbdcpy_get_error ());
    exit (EXIT_FAILURE);
  }
  g_handle = h;
  if (progress_fd >= 0) {
    progress_line (0);
    last_fd_percent = 0;
  }
  double t0 = now_s ();
  int r = nbdcpy_run (h);
  if (r == 0 && progress_fd >= 0)
    progress_line (100);
  int err = nbdcpy_get_errno ();
  char *msg = r == -1 ? strdup (nbdcpy_get_error ()) : NULL;
  g_handle = NULL;
  if (bar_drawn && progress_bar && isatty (2))
    fprintf (stderr, "\n");

  if (verbose) {
    struct nbdcpy_stats st;
    if (nbdcpy_stats (h, &st, sizeof st) == 0)
      fprintf (stderr,
               "nbdcpy: %.3f s: %" PRIu64 " bytes done, %" PRIu64 " copied, "
               "%" PRIu64 " zeroed, %" PRIu64 " skipped, %" PRIu64
               " requests, %" PRIu64 " bytes memcpy, %" PRIu64
               " bytes spliced, %" PRIu64
               " I/O system calls, %u connection(s)\n",
               now_s () - t0, st.bytes_done, st.bytes_copied,
               st.bytes_zeroed, st.bytes_skipped, st.requests,
               st.bytes_memcpy, st.bytes_spliced, st.syscalls,
               st.connections);
  }
  nbdcpy_close (h);
  if (r == -1) {
    fprintf (stderr, "nbdcpy: %s\n", msg ? msg : "unknown error");
    free (msg);
    exit (err == ECANCELED ? 130 : EXIT_FAILURE);
  }
  exit (EXIT_SUCCESS);
}
