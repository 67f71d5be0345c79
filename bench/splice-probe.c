/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* splice-probe: what would splicing the payload save?  Moves 4 GiB from a
 * writer process through a unix socketpair and reports the receiver's CPU
 * seconds per GiB for:
 *   1  recv into a buffer (what nbdcpy does for null:)
 *   2  splice socket -> pipe -> /dev/null
 *   3  splice socket -> pipe -> another unix socket (NBD -> NBD forwarding)
 *   4  recv into a buffer, then write to another unix socket
 * Build: cc -O2 -o splice-probe bench/splice-probe.c; run: ./splice-probe N
 * Results are in BENCHMARKS.md. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>
#define TOTAL (4UL<<30)
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_stime.tv_sec+(r.ru_utime.tv_usec+r.ru_stime.tv_usec)/1e6;}
static void sink(int fd){ static char b[1<<20]; while(read(fd,b,sizeof b)>0); _exit(0);}
int main(int argc,char**argv){ if(argc<2){fprintf(stderr,"usage: %s 1|2|3|4\n",argv[0]);return 2;}
  int mode=atoi(argv[1]); int sv[2]; socketpair(AF_UNIX,SOCK_STREAM,0,sv);
  int big=4<<20; setsockopt(sv[0],SOL_SOCKET,SO_SNDBUF,&big,4); setsockopt(sv[1],SOL_SOCKET,SO_RCVBUF,&big,4);
  if(fork()==0){ close(sv[1]); char*b=malloc(1<<20); memset(b,7,1<<20); for(unsigned long s=0;s<TOTAL;s+=1<<20){ size_t o=0; while(o<(1<<20)){ssize_t n=write(sv[0],b+o,(1<<20)-o); if(n<=0)_exit(1); o+=n;} } _exit(0);}
  close(sv[0]);
  int out=-1; int tv[2];
  if(mode==3||mode==4){ socketpair(AF_UNIX,SOCK_STREAM,0,tv); setsockopt(tv[0],SOL_SOCKET,SO_SNDBUF,&big,4); if(fork()==0){close(tv[0]);close(sv[1]);sink(tv[1]);} close(tv[1]); out=tv[0];}
  if(mode==2) out=open("/dev/null",O_WRONLY);
  int p[2]; pipe(p); fcntl(p[1],F_SETPIPE_SZ,1<<20);
  char*buf=malloc(1<<20);
  double c0=cpu(); struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  unsigned long got=0;
  while(got<TOTAL){
    if(mode==1||mode==4){ ssize_t n=recv(sv[1],buf,1<<20,MSG_WAITALL); if(n<=0)break; got+=n; if(mode==4){ size_t o=0; while(o<(size_t)n){ssize_t k=write(out,buf+o,n-o); o+=k;} } }
    else { ssize_t n=splice(sv[1],NULL,p[1],NULL,1<<20,SPLICE_F_MOVE); if(n<=0){perror("splice in");break;} got+=n; ssize_t left=n; while(left>0){ ssize_t k=splice(p[0],NULL,out,NULL,left,SPLICE_F_MOVE); if(k<=0){perror("splice out");exit(1);} left-=k; } }
  }
  clock_gettime(CLOCK_MONOTONIC,&t1);
  printf("mode %d: %.2f GiB, receiver cpu %.3f s/GiB, wall %.3f s\n",mode,got/1073741824.0,(cpu()-c0)/(got/1073741824.0),(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)/1e9);
  if(out>=0) close(out);
  while(wait(NULL)>0);
}
