/* SPDX-License-Identifier: LGPL-2.1-or-later
 * Copyright (C) 2026 The nbdcpy authors
 */

/* splice-frame-probe: the splice data path with NBD-like framing.  A
 * writer sends 28-byte headers each followed by PL payload bytes through a
 * unix socketpair (default socket buffers, like nbdkit); the receiver
 * forwards the payloads to another unix socket (or a file given as the
 * third argument) and reports its CPU seconds per GiB:
 *   1  recv header, recv payload into a buffer, write it out (receive path)
 *   2  recv header, splice socket -> pipe -> out (no zero detection)
 *   3  as 2, plus tee pipe -> pipe2 and read pipe2 into a buffer, checking
 *      the first word of every 4 KiB block (zero detection on a copy)
 * Build: cc -O2 -o splice-frame-probe bench/splice-frame-probe.c
 * Run:   ./splice-frame-probe MODE PAYLOAD_BYTES [OUTFILE]
 * Results are in BENCHMARKS.md (session 3). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#define TOTAL (4UL<<30)
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_stime.tv_sec+(r.ru_utime.tv_usec+r.ru_stime.tv_usec)/1e6;}
static void sink(int fd){ static char b[1<<20]; while(read(fd,b,sizeof b)>0); _exit(0);}
int main(int argc,char**argv){ int mode=atoi(argv[1]); size_t PL=atol(argv[2]); const char*outp=argc>3?argv[3]:NULL;
 int sv[2]; socketpair(AF_UNIX,SOCK_STREAM,0,sv);
 if(fork()==0){ close(sv[1]); char*b=malloc(PL+28); memset(b,7,PL+28); for(unsigned long s=0;s<TOTAL;s+=PL){ send(sv[0],b,28,MSG_MORE); size_t o=0; while(o<PL){ssize_t n=write(sv[0],b+o,PL-o); if(n<=0)_exit(1); o+=n;} } _exit(0);}
 close(sv[0]); int out; int tv[2];
 if(outp) out=open(outp,O_WRONLY|O_CREAT|O_TRUNC,0644);
 else { socketpair(AF_UNIX,SOCK_STREAM,0,tv); if(fork()==0){close(tv[0]);close(sv[1]);sink(tv[1]);} close(tv[1]); out=tv[0]; }
 int p[2]; pipe(p); fcntl(p[1],F_SETPIPE_SZ,PL);
 char*buf=aligned_alloc(4096,4<<20); char hdr[28]; unsigned long got=0; double c0=cpu(); off_t off=0;
 if(mode==1){ /* recv big chunks containing framing, write out payload parts */
   while(got<TOTAL){ if(recv(sv[1],hdr,28,MSG_WAITALL)!=28)break; ssize_t n=recv(sv[1],buf,PL,MSG_WAITALL); if(n<=0)break; got+=n; size_t o=0; while(o<(size_t)n){ssize_t k=outp?pwrite(out,buf+o,n-o,off+o):write(out,buf+o,n-o); o+=k;} off+=n; }
 } else if(mode==3){
   int q[2]; pipe(q); fcntl(q[1],F_SETPIPE_SZ,PL); unsigned long nz=0;
   while(got<TOTAL){ if(recv(sv[1],hdr,28,MSG_WAITALL)!=28)break; size_t left=PL; while(left){ ssize_t n=splice(sv[1],NULL,p[1],NULL,left,SPLICE_F_MOVE); if(n<=0){perror("in");exit(1);} left-=n; got+=n;
     ssize_t t=tee(p[0],q[1],n,0); if(t!=n){perror("tee");exit(1);} ssize_t r=0; while(r<n){ssize_t k=read(q[0],buf+r,n-r); if(k<=0){perror("rd");exit(1);} r+=k;} for(ssize_t b=0;b<n;b+=4096) if(*(long*)(buf+b)) nz++;
     ssize_t l2=n; while(l2){ ssize_t k=outp?splice(p[0],NULL,out,&off,l2,SPLICE_F_MOVE):splice(p[0],NULL,out,NULL,l2,SPLICE_F_MOVE); if(k<=0){perror("out");exit(1);} l2-=k;} } }
   if(nz==0) printf("?");
 } else {
   while(got<TOTAL){ if(recv(sv[1],hdr,28,MSG_WAITALL)!=28)break; size_t left=PL; while(left){ ssize_t n=splice(sv[1],NULL,p[1],NULL,left,SPLICE_F_MOVE); if(n<=0){perror("in");exit(1);} left-=n; got+=n; ssize_t l2=n; while(l2){ ssize_t k=outp?splice(p[0],NULL,out,&off,l2,SPLICE_F_MOVE):splice(p[0],NULL,out,NULL,l2,SPLICE_F_MOVE); if(k<=0){perror("out");exit(1);} l2-=k;} } }
 }
 printf("mode %d PL %zu %s: %.3f s/GiB\n",mode,PL,outp?outp:"sock",(cpu()-c0)/4); if(outp) unlink(outp); close(out); while(wait(NULL)>0);}
