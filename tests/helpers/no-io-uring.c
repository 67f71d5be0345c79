/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 *
 * no-io-uring: runs a command under a seccomp filter that fails
 * io_uring_setup, io_uring_enter and io_uring_register (425, 426, 427 on
 * x86_64 and aarch64) with EPERM, as Docker's and containerd's default
 * profiles do, or with ENOSYS (--errno=ENOSYS), as podman's and CRI-O's
 * do.  Every other system call is allowed.
 *
 *   no-io-uring [--errno=EPERM|ENOSYS] [--] COMMAND [ARG...]
 *
 * Exits 125 if the filter cannot be installed (another architecture, or
 * a kernel without seccomp: the tests skip then), 127 if COMMAND cannot
 * be run.
 */

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

#define NR_IO_URING_SETUP 425
#define NR_IO_URING_ENTER 426
#define NR_IO_URING_REGISTER 427

#if defined(__x86_64__)
#define THIS_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_ARCH AUDIT_ARCH_AARCH64
#endif

#define X32_SYSCALL_BIT 0x40000000U

static void
usage (void)
{
  fprintf (stderr,
           "usage: no-io-uring [--errno=EPERM|ENOSYS] [--] COMMAND [ARG...]\n");
  exit (125);
}

#ifndef THIS_ARCH
static int
install_filter (unsigned int err)
{
  (void) err;
  fprintf (stderr, "no-io-uring: seccomp unavailable: "
           "only x86_64 and aarch64 are supported\n");
  return -1;
}
#else
static int
install_filter (unsigned int err)
{
  /* Both the native architecture and (on x86_64) x32 numbers: any other
   * architecture's calls are allowed, since their numbers mean other
   * calls.
   */
  struct sock_filter prog[] = {
    BPF_STMT (BPF_LD | BPF_W | BPF_ABS, offsetof (struct seccomp_data, arch)),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, THIS_ARCH, 1, 0),
    BPF_STMT (BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT (BPF_LD | BPF_W | BPF_ABS, offsetof (struct seccomp_data, nr)),
#if defined(__x86_64__)
    /* x32 calls: the same numbers with the x32 bit set. */
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, X32_SYSCALL_BIT | NR_IO_URING_SETUP, 5, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, X32_SYSCALL_BIT | NR_IO_URING_ENTER, 4, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, X32_SYSCALL_BIT | NR_IO_URING_REGISTER, 3, 0),
#else
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_SETUP, 5, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_ENTER, 4, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_REGISTER, 3, 0),
#endif
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_SETUP, 2, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_ENTER, 1, 0),
    BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, NR_IO_URING_REGISTER, 0, 1),
    BPF_STMT (BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
    BPF_STMT (BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog fprog = {
    .len = (unsigned short) (sizeof prog / sizeof prog[0]),
    .filter = prog,
  };

  if (prctl (PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
    perror ("no-io-uring: prctl(PR_SET_NO_NEW_PRIVS)");
    return -1;
  }
  if (prctl (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) == -1) {
    perror ("no-io-uring: prctl(PR_SET_SECCOMP)");
    return -1;
  }
  return 0;
}
#endif

int
main (int argc, char *argv[])
{
  unsigned int err = EPERM;
  int i = 1;

  for (; i < argc && strncmp (argv[i], "--", 2) == 0; i++) {
    if (strcmp (argv[i], "--") == 0) {
      i++;
      break;
    }
    else if (strcmp (argv[i], "--errno=EPERM") == 0)
      err = EPERM;
    else if (strcmp (argv[i], "--errno=ENOSYS") == 0)
      err = ENOSYS;
    else {
      fprintf (stderr, "no-io-uring: unknown option %s\n", argv[i]);
      usage ();
    }
  }
  if (i >= argc)
    usage ();

  if (install_filter (err) == -1)
    exit (125);

  execvp (argv[i], &argv[i]);
  fprintf (stderr, "no-io-uring: %s: %s\n", argv[i], strerror (errno));
  exit (127);
}
