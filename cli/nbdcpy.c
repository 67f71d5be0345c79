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
static double bar_last;        /* when the last bar piece was written */
static const char *prog = "nbdcpy"; /* the name it was run as (basename) */
static int verbose;
static int want_blkhash;       /* --blkhash or --blkhash-file */
static int blkhash_to_file;    /* --blkhash-file: not printed on stdout */
static int json_fd = -1;       /* --json[=FD]: the result as JSON */

/* Run as "nbdcopy" (the compat link, see nbdcpy(1) "NBDCOPY
 * COMPATIBILITY"), --version answers in the form nbdcopy's callers parse
 * ("nbdcopy X.Y.Z", X.Y.Z the nbdcopy release whose options this command
 * implements), naming this program after it, then the library.
 */
#define NBDCOPY_COMPAT_VERSION "1.24.0"

/* --version: the command's own version (of the header it was built
 * with), the library's (nbdcpy_version(), the one actually loaded).
 */
static void
print_version (void)
{
  if (strcmp (prog, "nbdcopy") == 0)
    printf ("nbdcopy %s (nbdcpy %s)\n", NBDCOPY_COMPAT_VERSION,
            NBDCPY_VERSION_STRING);
  else
    printf ("nbdcpy %s\n", NBDCPY_VERSION_STRING);
  printf ("libnbdcpy %s\n", nbdcpy_version ());
}

static void
usage (FILE *fp, int status)
{
  fprintf (fp,
"Copy to and from an NBD server:\n"
"\n"
"  nbdcpy [--allocated] [--blkhash[=DIGEST[/BLOCKSIZE]]] [--blkhash-file=FILE]\n"
"         [-C N|--connections=N] [--destination-is-zero|--target-is-zero]\n"
"         [--flush] [--no-extents] [-p|--progress|--progress=FD] [--verify]\n"
"         [--queue-size=N] [--request-size=N] [-R N|--requests=N] [--rate=SIZE]\n"
"         [-S N|--sparse=N] [--splice=auto|on|off] [--synchronous]\n"
"         [-T N|--threads=N] [--timeout=SECONDS] [--slow-timeout=SECONDS]\n"
"         [--retries=N] [--retry-delay=SECONDS] [--page-cache=drop|keep]\n"
"         [--json|--json=FD] [--set=KEY=VALUE] [-v|--verbose] [--offset=N]\n"
"         [--engine=auto|io_uring|epoll] [--dirty-bitmap=NAME] [--length=N]\n"
"         [--destination-offset=N] [--ranges=FILE|-] [--checkpoint=FILE]\n"
"         [--checkpoint-interval=SECONDS] SOURCE DESTINATION\n"
"  nbdcpy --help | -V|--version\n"
"  SOURCE, DESTINATION := - | FILE | DEVICE | NBD-URI | [ CMD ARGS ... ]\n"
"  DESTINATION += null:\n"
"  nbds:// (TLS): ?tls-certificates=DIR|tls-psk-file=FILE, tls-username=,\n"
"    tls-hostname=, tls-verify-peer=false (nbdcpy(1) TLS)\n"
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

/* -p: nbdcopy's bar, which tools parse (Forklift's virt-v2v monitor
 * splits stderr at \r and \n and matches ".+ (\d+)% \[[*-]+\]"): a
 * spinner glyph, a space, the percentage in 3 columns, "% [", 40 cells
 * of '*' and '-', "]", then what nbdcopy does not show (bytes done,
 * rate, ETA) padded to a fixed width, and "\r".  Written on stderr,
 * terminal or not; the last piece (100%, `final`) is followed by a
 * newline.
 */
static void
draw_bar (int percent, const struct nbdcpy_stats *st, int final)
{
  static const char spinner[] = "|/-\\";
  static int spinpos;
  char cells[41], done[32], speed[32], eta[32] = "--:--", extra[112];
  double secs = st ? st->elapsed_ns / 1e9 : 0;
  uint64_t bytes = st ? st->bytes_done : 0;
  /* A resumed copy: the rate of this run only. */
  double rate = secs > 0 ? (bytes - (st ? st->resumed_bytes : 0)) / secs : 0;

  if (percent < 0)
    percent = 0;
  if (percent > 100)
    percent = 100;
  int fill = (percent * 40 + 99) / 100;
  for (int i = 0; i < 40; i++)
    cells[i] = i < fill ? '*' : '-';
  cells[40] = '\0';
  human (done, sizeof done, (double) bytes);
  human (speed, sizeof speed, rate);
  if (final)
    snprintf (eta, sizeof eta, "00:00");
  else if (st && rate > 0 && st->size_known && st->size > bytes) {
    long left = (long) ((st->size - bytes) / rate);
    snprintf (eta, sizeof eta, "%02ld:%02ld", left / 60, left % 60);
  }
  snprintf (extra, sizeof extra, "%s %s/s ETA %s", done, speed, eta);
  fprintf (stderr, "%c %3d%% [%s] %-34s\r%s",
           final ? '*' : spinner[spinpos], percent, cells, extra,
           final ? "\n" : "");
  fflush (stderr);
  spinpos = (spinpos + 1) % 4;
  bar_last = now_s ();
  bar_drawn = 1;
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
  if (progress_bar && now_s () - bar_last >= 0.2)
    draw_bar (percent, st, 0);
  last_percent = percent;
  return 0;
}

/* --json: a JSON string (UTF-8; invalid bytes become U+FFFD). */
static void
json_string (FILE *fp, const char *s)
{
  const unsigned char *p = (const unsigned char *) s;
  fputc ('"', fp);
  while (*p) {
    unsigned char c = *p;
    if (c == '"' || c == '\\')
      fprintf (fp, "\\%c", c);
    else if (c == '\n')
      fputs ("\\n", fp);
    else if (c == '\t')
      fputs ("\\t", fp);
    else if (c < 0x20 || c == 0x7f)
      fprintf (fp, "\\u%04x", c);
    else if (c < 0x80)
      fputc (c, fp);
    else {
      /* A whole, shortest-form UTF-8 sequence passes; anything else is
       * replaced byte by byte.
       */
      int n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
      int ok = n > 0;
      for (int k = 1; ok && k < n; k++)
        ok = (p[k] & 0xc0) == 0x80;
      if (ok && n == 3)
        ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] >= 0xa0);
      if (ok && n == 4)
        ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] >= 0x90);
      if (ok) {
        fwrite (p, 1, n, fp);
        p += n;
        continue;
      }
      fputs ("\\ufffd", fp);
    }
    p++;
  }
  fputc ('"', fp);
}

/* What --json reports (see nbdcpy(1), JSON OUTPUT). */
struct result {
  const char *source, *destination;
  const struct nbdcpy_stats *st;    /* NULL: the open failed */
  int ok;
  const char *error;                /* NULL on success */
  int err;                          /* errno, 0 on success */
  int endpoint;                     /* NBDCPY_SOURCE/DESTINATION or -1 */
  const char *blkhash;              /* hex, or NULL when not computed */
  const char *engine;               /* "io_uring", "epoll" or NULL */
};

/* Writes the result as one JSON object and a newline to json_fd, in one
 * write.  Fields are only ever added (documented in nbdcpy(1)).
 */
static int
write_json (const struct result *r)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&buf, &len);
  if (fp == NULL)
    return -1;
  struct nbdcpy_stats zero;
  memset (&zero, 0, sizeof zero);
  const struct nbdcpy_stats *st = r->st ? r->st : &zero;
  double secs = st->elapsed_ns / 1e9;
  const char *ename = NULL;
#if defined __GLIBC__ && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (r->err)
    ename = strerrorname_np (r->err);
#endif
  fprintf (fp, "{\"success\": %s, \"source\": ", r->ok ? "true" : "false");
  json_string (fp, r->source);
  fputs (", \"destination\": ", fp);
  json_string (fp, r->destination);
  fprintf (fp, ", \"size\": %" PRIu64 ", \"size_known\": %s"
           ", \"bytes_done\": %" PRIu64 ", \"bytes_copied\": %" PRIu64
           ", \"bytes_zeroed\": %" PRIu64 ", \"bytes_skipped\": %" PRIu64
           ", \"elapsed_seconds\": %.6f, \"average_rate\": %.0f"
           ", \"requests\": %" PRIu64 ", \"connections\": %u"
           ", \"reconnects\": %" PRIu64 ", \"retried_requests\": %" PRIu64
           ", \"resumed_bytes\": %" PRIu64 ", \"blkhash\": ",
           st->size, st->size_known ? "true" : "false", st->bytes_done,
           st->bytes_copied, st->bytes_zeroed, st->bytes_skipped,
           secs, secs > 0 ? (st->bytes_done - st->resumed_bytes) / secs : 0.0,
           st->requests, st->connections, st->reconnects, st->retried_requests,
           st->resumed_bytes);
  if (r->blkhash)
    json_string (fp, r->blkhash);
  else
    fputs ("null", fp);
  fputs (", \"error\": ", fp);
  if (r->error)
    json_string (fp, r->error);
  else
    fputs ("null", fp);
  fprintf (fp, ", \"errno\": %d, \"errno_name\": ", r->err);
  if (ename)
    json_string (fp, ename);
  else
    fputs ("null", fp);
  fprintf (fp, ", \"endpoint\": %s",
           r->endpoint == NBDCPY_SOURCE ? "\"source\""
           : r->endpoint == NBDCPY_DESTINATION ? "\"destination\"" : "null");
  fputs (", \"engine\": ", fp);
  if (r->engine)
    json_string (fp, r->engine);
  else
    fputs ("null", fp);
  fputs ("}\n", fp);
  if (fclose (fp) != 0) {
    free (buf);
    return -1;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t n = write (json_fd, buf + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      free (buf);
      return -1;
    }
    off += n;
  }
  free (buf);
  return 0;
}

/* An endpoint as the user wrote it, for --json: the word, or the
 * command as "[ CMD ARGS ... ]".
 */
static char *
endpoint_words (const char *word, char **cmd)
{
  if (word)
    return strdup (word);
  size_t n = 3;
  for (int i = 0; cmd[i]; i++)
    n += strlen (cmd[i]) + 1;
  char *s = malloc (n + 1);
  if (s == NULL)
    return NULL;
  strcpy (s, "[");
  for (int i = 0; cmd[i]; i++) {
    strcat (s, " ");
    strcat (s, cmd[i]);
  }
  strcat (s, " ]");
  return s;
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
  /* nbdcopy's own -v lines, which scripts grep ("nbdcopy: src:
   * nbd_ops ..."), carry the name it was run as.
   */
  if (level != NBDCPY_LOG_WARNING
      && (strncmp (msg, "src: ", 5) == 0 || strncmp (msg, "dst: ", 5) == 0
          || strncmp (msg, "connections=", 12) == 0)) {
    fprintf (stderr, "%s: %s\n", prog, msg);
    return;
  }
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
    SPLICE_OPTION, RETRIES_OPTION, RETRY_DELAY_OPTION,
    BLKHASH_OPTION, BLKHASH_FILE_OPTION, VERIFY_OPTION,
    RATE_OPTION, JSON_OPTION,
    DIRTY_BITMAP_OPTION, OFFSET_OPTION, LENGTH_OPTION,
    DESTINATION_OFFSET_OPTION, ENGINE_OPTION, RANGES_OPTION, PAGE_CACHE_OPTION,
    CHECKPOINT_OPTION, CHECKPOINT_INTERVAL_OPTION,
  };
  static const char short_options[] = "C:pR:S:T:vV";
  if (argc > 0 && argv[0] && argv[0][0]) {
    const char *base = strrchr (argv[0], '/');
    prog = base && base[1] ? base + 1 : argv[0];
  }
  static const struct option long_options[] = {
    { "help", no_argument, NULL, HELP_OPTION },
    { "long-options", no_argument, NULL, LONG_OPTIONS },
    { "short-options", no_argument, NULL, SHORT_OPTIONS },
    { "allocated", no_argument, NULL, ALLOCATED_OPTION },
    { "blkhash", optional_argument, NULL, BLKHASH_OPTION },
    { "blkhash-file", required_argument, NULL, BLKHASH_FILE_OPTION },
    { "checkpoint", required_argument, NULL, CHECKPOINT_OPTION },
    { "checkpoint-interval", required_argument, NULL,
      CHECKPOINT_INTERVAL_OPTION },
    { "connections", required_argument, NULL, 'C' },
    { "destination-is-zero", no_argument, NULL, DESTINATION_IS_ZERO_OPTION },
    { "target-is-zero", no_argument, NULL, DESTINATION_IS_ZERO_OPTION },
    { "flush", no_argument, NULL, FLUSH_OPTION },
    { "no-extents", no_argument, NULL, NO_EXTENTS_OPTION },
    { "progress", optional_argument, NULL, 'p' },
    { "queue-size", required_argument, NULL, QUEUE_SIZE_OPTION },
    { "request-size", required_argument, NULL, REQUEST_SIZE_OPTION },
    { "rate", required_argument, NULL, RATE_OPTION },
    { "json", optional_argument, NULL, JSON_OPTION },
    { "requests", required_argument, NULL, 'R' },
    { "sparse", required_argument, NULL, 'S' },
    { "synchronous", no_argument, NULL, SYNCHRONOUS_OPTION },
    { "threads", required_argument, NULL, 'T' },
    { "timeout", required_argument, NULL, TIMEOUT_OPTION },
    { "slow-timeout", required_argument, NULL, SLOW_TIMEOUT_OPTION },
    { "retries", required_argument, NULL, RETRIES_OPTION },
    { "retry-delay", required_argument, NULL, RETRY_DELAY_OPTION },
    { "set", required_argument, NULL, SET_OPTION },
    { "splice", required_argument, NULL, SPLICE_OPTION },
    { "verify", no_argument, NULL, VERIFY_OPTION },
    { "dirty-bitmap", required_argument, NULL, DIRTY_BITMAP_OPTION },
    { "offset", required_argument, NULL, OFFSET_OPTION },
    { "length", required_argument, NULL, LENGTH_OPTION },
    { "destination-offset", required_argument, NULL, DESTINATION_OFFSET_OPTION },
    { "ranges", required_argument, NULL, RANGES_OPTION },
    { "engine", required_argument, NULL, ENGINE_OPTION },
    { "page-cache", required_argument, NULL, PAGE_CACHE_OPTION },
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
    case BLKHASH_OPTION:
      set (cfg, "blkhash", optarg ? optarg : "");
      want_blkhash = 1;
      break;
    case BLKHASH_FILE_OPTION:
      set (cfg, "blkhash-file", optarg);
      want_blkhash = blkhash_to_file = 1;
      break;
    case VERIFY_OPTION: set (cfg, "verify", "1"); break;
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
    case RANGES_OPTION: set (cfg, "ranges-file", optarg); break;
    case SET_OPTION: {
      /* --set=KEY=VALUE: any nbdcpy_config_set key (tuning keys). */
      char *eq = strchr (optarg, '=');
      if (eq == NULL) {
        fprintf (stderr, "nbdcpy: --set: expected KEY=VALUE, not '%s'\n",
                 optarg);
        exit (EXIT_FAILURE);
      }
      *eq = '\0';
      set (cfg, optarg, eq + 1);
      if (strcmp (optarg, "blkhash") == 0)
        want_blkhash = 1;
      else if (strcmp (optarg, "blkhash-file") == 0)
        want_blkhash = blkhash_to_file = 1;
      break;
    }
    case SPLICE_OPTION: set (cfg, "splice", optarg); break;
    case RETRIES_OPTION: set (cfg, "retries", optarg); break;
    case RETRY_DELAY_OPTION: set (cfg, "retry-delay", optarg); break;
    case RATE_OPTION: set (cfg, "rate", optarg); break;
    case CHECKPOINT_OPTION: set (cfg, "checkpoint", optarg); break;
    case CHECKPOINT_INTERVAL_OPTION:
      set (cfg, "checkpoint-interval", optarg);
      break;
    case ENGINE_OPTION: set (cfg, "engine", optarg); break;
    case PAGE_CACHE_OPTION: set (cfg, "page-cache", optarg); break;
    case JSON_OPTION:
      if (optarg) {
        char *end;
        errno = 0;
        long fd = strtol (optarg, &end, 10);
        if (errno || *end || end == optarg || fd < 0 || fd > 1000000) {
          fprintf (stderr, "nbdcpy: --json: bad file descriptor '%s'\n",
                   optarg);
          exit (EXIT_FAILURE);
        }
        json_fd = (int) fd;
      }
      else
        json_fd = STDOUT_FILENO;
      break;
    case 'v': verbose = 1; set (cfg, "verbose", "1"); break;
    case 'V':
      print_version ();
      exit (EXIT_SUCCESS);
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

  /* Like nbdcopy: the block hash goes to stdout unless written to a
   * file, so stdout cannot also be the destination.
   */
  if (want_blkhash && !blkhash_to_file && ends[1] && strcmp (ends[1], "-") == 0) {
    fprintf (stderr, "nbdcpy: --blkhash: the destination is stdout, "
             "so the block hash cannot be printed there: use --blkhash-file=FILE\n");
    exit (EXIT_FAILURE);
  }
  if (json_fd == STDOUT_FILENO && ends[1] && strcmp (ends[1], "-") == 0) {
    fprintf (stderr, "nbdcpy: --json: the destination is stdout: "
             "use --json=FD\n");
    exit (EXIT_FAILURE);
  }
  char *words[2] = { NULL, NULL };
  if (json_fd >= 0)
    for (int side = 0; side < 2; side++)
      if ((words[side] = endpoint_words (ends[side], cmds[side])) == NULL) {
        perror ("malloc");
        exit (EXIT_FAILURE);
      }

  if (progress_bar || progress_fd >= 0)
    nbdcpy_config_set_progress (cfg, on_progress, NULL,
                                progress_bar ? 250 : 1000);

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

  /* Create, then connect: a signal also ends a connect that hangs. */
  struct nbdcpy *h = nbdcpy_create (ends[0], ends[1], cfg);
  nbdcpy_config_free (cfg);
  free (cmds[0]);
  free (cmds[1]);
  if (h == NULL) {
    int err = nbdcpy_get_errno ();
    fprintf (stderr, "nbdcpy: %s\n", nbdcpy_get_error ());
    if (json_fd >= 0) {
      struct result res = { words[0], words[1], NULL, 0, nbdcpy_get_error (),
                            err, nbdcpy_get_error_endpoint (), NULL, NULL };
      if (write_json (&res) == -1)
        fprintf (stderr, "nbdcpy: --json: cannot write the result: %m\n");
    }
    exit (err == ECANCELED ? 130 : EXIT_FAILURE);
  }
  g_handle = h;
  int connected = nbdcpy_connect (h) == 0;
  /* A resumed copy (--checkpoint) starts at the percentage done. */
  int start_percent = 0;
  struct nbdcpy_stats st0;
  if (connected && nbdcpy_stats (h, &st0, sizeof st0) == 0 &&
      st0.size > 0 && st0.size_known)
    start_percent = (int) (st0.bytes_done * 100 / st0.size);
  if (start_percent > 99)
    start_percent = 99;
  if (connected && progress_fd >= 0) {
    progress_line (start_percent);
    last_fd_percent = start_percent;
  }
  if (connected && progress_bar)
    draw_bar (start_percent, NULL, 0);
  double t0 = now_s ();
  int r = connected ? nbdcpy_run (h) : -1;
  if (r == 0 && progress_fd >= 0)
    progress_line (100);
  int err = r == -1 ? nbdcpy_get_errno () : 0;
  int err_side = r == -1 ? nbdcpy_get_error_endpoint () : -1;
  char *msg = r == -1 ? strdup (nbdcpy_get_error ()) : NULL;
  g_handle = NULL;
  if (r == 0 && progress_bar) {
    struct nbdcpy_stats st;
    draw_bar (100, nbdcpy_stats (h, &st, sizeof st) == 0 ? &st : NULL, 1);
  }
  else if (bar_drawn && progress_bar)
    fprintf (stderr, "\n");

  char hex[129] = "";
  if (r == 0 && want_blkhash) {
    unsigned char md[64];
    int n = nbdcpy_get_blkhash (h, md, sizeof md);
    if (n == -1) {
      r = -1;
      err = nbdcpy_get_errno ();
      msg = strdup (nbdcpy_get_error ());
    }
    else {
      for (int j = 0; j < n && j < 64; j++)
        snprintf (hex + 2 * j, 3, "%02x", md[j]);
    }
    if (n != -1 && !blkhash_to_file) {
      printf ("%s\n", hex);
      if (fflush (stdout) == EOF) {
        r = -1;
        err = errno;
        msg = strdup ("--blkhash: cannot write the block hash to stdout");
      }
    }
  }

  if (verbose && connected) {
    struct nbdcpy_stats st;
    if (nbdcpy_stats (h, &st, sizeof st) == 0)
      fprintf (stderr,
               "nbdcpy: %.3f s: %" PRIu64 " bytes done, %" PRIu64 " copied, "
               "%" PRIu64 " zeroed, %" PRIu64 " skipped, %" PRIu64
               " requests, %" PRIu64 " bytes memcpy, %" PRIu64
               " bytes spliced, %" PRIu64
               " I/O system calls, %u connection(s), %" PRIu64
               " reconnect(s), %" PRIu64 " retried request(s)\n",
               now_s () - t0, st.bytes_done, st.bytes_copied,
               st.bytes_zeroed, st.bytes_skipped, st.requests,
               st.bytes_memcpy, st.bytes_spliced, st.syscalls,
               st.connections, st.reconnects, st.retried_requests);
  }
  int json_failed = 0;
  if (json_fd >= 0) {
    struct nbdcpy_stats st;
    int have_st = nbdcpy_stats (h, &st, sizeof st) == 0;
    struct result res = { words[0], words[1], have_st ? &st : NULL, r == 0,
                          r == -1 ? (msg ? msg : "unknown error") : NULL,
                          err, err_side, hex[0] ? hex : NULL,
                          nbdcpy_get_engine (h) };
    if (write_json (&res) == -1) {
      fprintf (stderr, "nbdcpy: --json: cannot write the result: %m\n");
      json_failed = 1;
    }
    free (words[0]);
    free (words[1]);
  }
  nbdcpy_close (h);
  if (r == -1) {
    fprintf (stderr, "nbdcpy: %s\n", msg ? msg : "unknown error");
    free (msg);
    exit (err == ECANCELED ? 130 : EXIT_FAILURE);
  }
  exit (json_failed ? EXIT_FAILURE : EXIT_SUCCESS);
}
