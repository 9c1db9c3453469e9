/*
 * Synchronous librbd calls from many foreign threads at once (issue 8):
 * THREADS plain pthreads, each owning a 256 KiB lane of the image, write
 * and read back their lane with rbd_write/rbd_read (unaligned, so grains
 * take read-modify-write), flush, and use aio + rbd_aio_wait_for_complete;
 * meanwhile one more thread creates and removes snapshots (each of which
 * takes the image gate exclusively between writes). An alarm ends a hang
 * with exit status 3.
 *
 * usage: threads POOL IMAGE   (an existing image of at least 16 MiB)
 * Prints "ok <ops>" and exits 0 when every call returned what librbd
 * promises and every read matched.
 */
#include <rbd/librbd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 16
#define ROUNDS 12
#define LANE (256 * 1024)
#define SNAPS 6

static rbd_image_t img;
static volatile int failed;
static volatile int writers_done;

static void fill(char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (char)(seed * 131 + i * 7 + (i >> 11));
}

static void bad(int t, const char *what, long long got, long long want) {
  fprintf(stderr, "thread %d: %s returned %lld, want %lld\n", t, what, got, want);
  failed = 1;
}

static void *lane(void *arg) {
  int t = (int)(long)arg;
  size_t len = 8192 + 512;
  char *w = malloc(len), *r = malloc(len);
  for (int round = 0; round < ROUNDS && !failed; round++) {
    uint64_t off = (uint64_t)t * LANE + 512 * (round % 8);
    fill(w, len, t * 1000 + round);
    ssize_t n = rbd_write(img, off, len, w);
    if (n != (ssize_t)len) bad(t, "rbd_write", n, len);
    n = rbd_read(img, off, len, r);
    if (n != (ssize_t)len) bad(t, "rbd_read", n, len);
    else if (memcmp(w, r, len)) bad(t, "rbd_read data", 1, 0);
    if (round % 3 == 0) {
      int f = rbd_flush(img);
      if (f) bad(t, "rbd_flush", f, 0);
    }
    /* aio from a foreign thread, waited for synchronously */
    rbd_completion_t c;
    rbd_aio_create_completion(NULL, NULL, &c);
    memset(r, 0, len);
    rbd_aio_read(img, off, len, r, c);
    rbd_aio_wait_for_complete(c);
    ssize_t rv = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    if (rv != (ssize_t)len || memcmp(w, r, len)) bad(t, "rbd_aio_read", rv, len);
  }
  free(w);
  free(r);
  return NULL;
}

static void *snapper(void *arg) {
  (void)arg;
  char name[32];
  for (int i = 0; i < SNAPS && !failed; i++) {
    snprintf(name, sizeof name, "t%d", i);
    int r = rbd_snap_create(img, name);
    if (r) bad(THREADS, "rbd_snap_create", r, 0);
    usleep(20000);
  }
  for (int i = 0; i < SNAPS && !failed; i++) {
    snprintf(name, sizeof name, "t%d", i);
    int r = rbd_snap_remove(img, name);
    if (r) bad(THREADS, "rbd_snap_remove", r, 0);
  }
  return NULL;
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "threads: timed out (a synchronous call hung)\n";
  write(2, msg, sizeof msg - 1);
  _exit(3);
}

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  signal(SIGALRM, on_alarm);
  alarm(240);
  rados_t cl;
  rados_ioctx_t io;
  if (rados_create(&cl, "admin") < 0 || rados_conf_read_file(cl, getenv("CEPH_CONF")) < 0 ||
      rados_connect(cl) < 0 || rados_ioctx_create(cl, argv[1], &io) < 0) {
    fprintf(stderr, "cannot connect\n");
    return 2;
  }
  int r = rbd_open(io, argv[2], &img, NULL);
  if (r) { fprintf(stderr, "rbd_open: %d\n", r); return 2; }
  pthread_t th[THREADS + 1];
  for (long i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, lane, (void *)i);
  pthread_create(&th[THREADS], NULL, snapper, NULL);
  for (int i = 0; i <= THREADS; i++) pthread_join(th[i], NULL);
  r = rbd_close(img);
  if (r) bad(-1, "rbd_close", r, 0);
  rados_ioctx_destroy(io);
  rados_shutdown(cl);
  if (failed) return 1;
  printf("ok %d\n", THREADS * ROUNDS * 4 + 2 * SNAPS);
  return 0;
}
