/*
 * A librbd client written to Ceph 16.2's rbd/librbd.h, run by
 * tests/c_program.rs twice: linked to rbd-row's librbd.so.1 on a ROW image
 * and to the system librbd on a native image. It prints one line per
 * check, "<label> <result>"; lines starting with "=" must be equal in both
 * runs, lines starting with "~" are informational (documented differences).
 *
 * usage: abi_check POOL IMAGE   (CEPH_CONF names the cluster; the image
 * must not exist: the program creates and removes it)
 */
#include <rbd/librbd.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MiB (1024ULL * 1024ULL)
#define SIZE (32 * MiB)

static void out(const char *label, long long v) { printf("= %s %lld\n", label, v); }
static void info(const char *label, long long v) { printf("~ %s %lld\n", label, v); }

static void fill(char *b, size_t n, int seed) {
  for (size_t i = 0; i < n; i++) b[i] = (char)(seed * 31 + i * 7 + (i >> 9));
}

struct cbstate {
  pthread_t submitter;
  int calls;
  int other_thread;
  long long rv_in_cb;
};

static void cb(rbd_completion_t c, void *arg) {
  struct cbstate *s = arg;
  s->calls++;
  s->other_thread = !pthread_equal(pthread_self(), s->submitter);
  s->rv_in_cb = rbd_aio_get_return_value(c);
}

/* Runs one aio op through a completion with a callback; prints its checks. */
#define AIO(label, call)                                                     \
  do {                                                                       \
    struct cbstate st = {pthread_self(), 0, 0, 0};                          \
    rbd_completion_t c;                                                      \
    rbd_aio_create_completion(&st, cb, &c);                                  \
    int sr = (call);                                                         \
    out(label ".submit", sr);                                                \
    rbd_aio_wait_for_complete(c);                                            \
    out(label ".complete", rbd_aio_is_complete(c));                          \
    out(label ".ret", rbd_aio_get_return_value(c));                          \
    out(label ".cb_calls", st.calls);                                        \
    out(label ".cb_other_thread", st.other_thread);                          \
    out(label ".cb_saw_ret", st.rv_in_cb == rbd_aio_get_return_value(c));    \
    out(label ".arg", rbd_aio_get_arg(c) == (void *)&st);                    \
    rbd_aio_release(c);                                                      \
  } while (0)

/* Where write_zeroes zeroed a range inside an object holding data: librbd
 * reports it as existing data, rbd-row as exists=0 (issue 8: "exists is 0
 * for zeroed or discarded extents"), so those extents are informational. */
#define ZEROED_OFF (1 * MiB)

static int diff_cb(uint64_t off, size_t len, int exists, void *arg) {
  const char *label = arg;
  int zeroed = off <= ZEROED_OFF && ZEROED_OFF < off + len && len < 4 * MiB;
  printf("%c %s %llu+%zu exists=%d\n", zeroed ? '~' : '=', label, (unsigned long long)off, len,
         exists);
  return 0;
}

/* Fine-grained diffs from the beginning: librbd reports each object's
 * data from 0 to its end, rbd-row the written grains; both are compared
 * as the set of objects holding data. */
static int objects_cb(uint64_t off, size_t len, int exists, void *arg) {
  unsigned long long *mask = arg;
  for (uint64_t o = off / (4 * MiB); exists && o < (off + len + 4 * MiB - 1) / (4 * MiB); o++)
    *mask |= 1ULL << o;
  printf("~ diff.all %llu+%zu exists=%d\n", (unsigned long long)off, len, exists);
  return 0;
}

static int diff_stop_cb(uint64_t off, size_t len, int exists, void *arg) {
  (void)off; (void)len; (void)exists; (void)arg;
  return -1234;
}

static void diff(rbd_image_t img, const char *from, int whole, const char *label) {
  int r = rbd_diff_iterate2(img, from, 0, SIZE, 1, whole, diff_cb, (void *)label);
  out(label, r);
}

static int check_read(rbd_image_t img, uint64_t off, size_t len, int seed) {
  char *want = malloc(len), *got = malloc(len);
  fill(want, len, seed);
  ssize_t r = rbd_read(img, off, len, got);
  int ok = r == (ssize_t)len && memcmp(want, got, len) == 0;
  free(want); free(got);
  return ok;
}

static int zero_read(rbd_image_t img, uint64_t off, size_t len) {
  char *got = malloc(len);
  ssize_t r = rbd_read(img, off, len, got);
  int ok = r == (ssize_t)len;
  for (size_t i = 0; ok && i < len; i++) ok = got[i] == 0;
  free(got);
  return ok;
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: abi_check POOL IMAGE\n"); return 2; }
  const char *pool = argv[1], *name = argv[2];
  rados_t cl;
  rados_ioctx_t io;
  if (rados_create(&cl, "admin") < 0 || rados_conf_read_file(cl, getenv("CEPH_CONF")) < 0 ||
      rados_connect(cl) < 0 || rados_ioctx_create(cl, pool, &io) < 0) {
    fprintf(stderr, "cannot connect\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  int major = 0, minor = 0, extra = 0;
  rbd_version(&major, &minor, &extra);
  out("version.major", major);

  int order = 22;
  out("create", rbd_create(io, name, SIZE, &order));
  out("create.order", order);
  out("create.again", rbd_create(io, name, SIZE, &order));

  rbd_image_t img, ro;
  char missing[128];
  snprintf(missing, sizeof missing, "%s-missing", name);
  out("open.missing", rbd_open(io, missing, &img, NULL));
  out("open", rbd_open(io, name, &img, NULL));
  out("open.missing_snap", rbd_open(io, name, &ro, "nosuchsnap"));

  rbd_image_info_t st;
  out("stat", rbd_stat(img, &st, sizeof st));
  out("stat.size", st.size);
  out("stat.obj_size", st.obj_size);
  out("stat.num_objs", st.num_objs);
  out("stat.order", st.order);
  printf("~ block_name_prefix %.*s\n", RBD_MAX_BLOCK_NAME_SIZE, st.block_name_prefix);
  uint64_t size = 0, features = 0, flags = 0;
  out("get_size", rbd_get_size(img, &size));
  out("get_size.value", size);
  out("get_features", rbd_get_features(img, &features));
  info("features", features);
  out("get_flags", rbd_get_flags(img, &flags));
  out("flags", flags);
  char pp[64], pn[64], ps[64];
  out("parent_info", rbd_get_parent_info(img, pp, sizeof pp, pn, sizeof pn, ps, sizeof ps));

  /* synchronous I/O and clipping at the end */
  char *buf = malloc(4 * MiB);
  fill(buf, 8192, 1);
  out("write", rbd_write(img, 0, 8192, buf));
  out("read.ok", check_read(img, 0, 8192, 1));
  out("read.unwritten_zero", zero_read(img, 8 * MiB, 65536));
  out("read.past_end", rbd_read(img, SIZE, 4096, buf));
  out("read.crossing_end", rbd_read(img, SIZE - 4096, 8192, buf));
  out("read.zero_len", rbd_read(img, SIZE + 4096, 0, buf));
  fill(buf, 8192, 2);
  out("write.crossing_end", rbd_write(img, SIZE - 4096, 8192, buf));
  out("write.past_end", rbd_write(img, SIZE, 4096, buf));
  out("flush", rbd_flush(img));
  out("invalidate_cache", rbd_invalidate_cache(img));

  /* asynchronous I/O */
  fill(buf, 4096, 3);
  AIO("aio_write", rbd_aio_write(img, 1 * MiB, 4096, buf, c));
  memset(buf, 0, 4096);
  AIO("aio_read", rbd_aio_read(img, 1 * MiB, 4096, buf, c));
  out("aio_read.ok", check_read(img, 1 * MiB, 4096, 3));
  char *a = malloc(4096), *b = malloc(8192);
  fill(a, 4096, 4);
  fill(b, 8192, 5);
  struct iovec iov[2] = {{a, 4096}, {b, 8192}};
  AIO("aio_writev", rbd_aio_writev(img, iov, 2, 2 * MiB, c));
  memset(a, 0, 4096);
  memset(b, 0, 8192);
  AIO("aio_readv", rbd_aio_readv(img, iov, 2, 2 * MiB, c));
  char *w = malloc(12288);
  fill(w, 4096, 4);
  fill(w + 4096, 8192, 5);
  out("aio_readv.ok", memcmp(w, a, 4096) == 0 && memcmp(w + 4096, b, 8192) == 0);
  AIO("aio_read.past_end", rbd_aio_read(img, SIZE, 4096, buf, c));
  AIO("aio_flush", rbd_aio_flush(img, c));

  /* polling: eventfd notification and rbd_poll_io_events */
  int efd = eventfd(0, 0);
  out("set_notification", rbd_set_image_notification(img, efd, EVENT_TYPE_EVENTFD));
  rbd_completion_t cs[4];
  for (int i = 0; i < 4; i++) {
    rbd_aio_create_completion(NULL, NULL, &cs[i]);
    fill(buf + i * 4096, 4096, 10 + i);
    rbd_aio_write(img, 3 * MiB + i * 4096, 4096, buf + i * 4096, cs[i]);
  }
  int got = 0;
  rbd_completion_t done[8];
  while (got < 4) {
    uint64_t n;
    if (read(efd, &n, sizeof n) != sizeof n) break;
    int r = rbd_poll_io_events(img, done + got, 8 - got);
    if (r < 0) { got = r; break; }
    got += r;
  }
  out("poll.events", got);
  int all_ok = 1;
  for (int i = 0; i < got; i++) {
    all_ok &= rbd_aio_get_return_value(done[i]) == 0 && rbd_aio_is_complete(done[i]);
    rbd_aio_release(done[i]);
  }
  out("poll.all_ok", all_ok);
  close(efd);

  /* snapshots and diffs: object 7 (28-32 MiB) full and 24 MiB partly
   * written before s1, object 7 discarded whole after it */
  fill(buf, 4 * MiB, 30);
  out("write.object7", rbd_write(img, 28 * MiB, 4 * MiB, buf));
  out("write.object6", rbd_write(img, 24 * MiB, 8192, buf));
  out("snap_create", rbd_snap_create(img, "s1"));
  out("snap_create.again", rbd_snap_create(img, "s1"));
  fill(buf, 4096, 20);
  out("write.after_s1", rbd_write(img, 8 * MiB, 4096, buf));
  out("write_zeroes.after_s1", rbd_write_zeroes(img, 1 * MiB, 4096, 0, 0));
  out("discard.after_s1", rbd_discard(img, 12 * MiB, 4 * MiB));
  AIO("aio_discard", rbd_aio_discard(img, 16 * MiB, 4 * MiB, c));
  AIO("aio_write_zeroes", rbd_aio_write_zeroes(img, 20 * MiB, 4 * MiB, c, 0, 0));
  AIO("aio_discard.object7", rbd_aio_discard(img, 28 * MiB, 4 * MiB, c));
  out("discard.object7_zero", zero_read(img, 28 * MiB, 4 * MiB));
  diff(img, "s1", 0, "diff.s1");
  diff(img, "s1", 1, "diff.s1.whole");
  diff(img, NULL, 1, "diff.all.whole");
  unsigned long long mask = 0;
  out("diff.all", rbd_diff_iterate2(img, NULL, 0, SIZE, 1, 0, objects_cb, &mask));
  out("diff.all.objects", mask);
  out("diff.missing_snap", rbd_diff_iterate2(img, "nosuchsnap", 0, SIZE, 1, 0, diff_cb, "x"));
  out("diff.cb_stops", rbd_diff_iterate2(img, NULL, 0, SIZE, 1, 0, diff_stop_cb, NULL));

  rbd_snap_info_t snaps[4];
  int max = 1;
  out("snap_list.small", rbd_snap_list(img, snaps, &max));
  out("snap_list.small.max", max);
  max = 4;
  int n = rbd_snap_list(img, snaps, &max);
  out("snap_list", n);
  out("snap_list.name_ok", n == 1 && strcmp(snaps[0].name, "s1") == 0);
  out("snap_list.size", n == 1 ? (long long)snaps[0].size : -1);
  rbd_snap_list_end(snaps);

  /* reading a snapshot */
  out("snap_set", rbd_snap_set(img, "s1"));
  out("snap_set.reads_old", zero_read(img, 8 * MiB, 4096) && check_read(img, 1 * MiB, 4096, 3));
  out("snap_set.write", rbd_write(img, 0, 4096, buf));
  out("snap_set.missing", rbd_snap_set(img, "nosuchsnap"));
  out("snap_set.head", rbd_snap_set(img, NULL));
  out("snap_set.head_reads_new", check_read(img, 8 * MiB, 4096, 20));

  /* snapshot lookups by id and name (what backup tools keep) */
  uint64_t sid = 0;
  out("snap_get_id", rbd_snap_get_id(img, "s1", &sid));
  uint64_t nosid = 0;
  out("snap_get_id.missing", rbd_snap_get_id(img, "nosuchsnap", &nosid));
  out("snap_get_id.missing.id", (long long)nosid);
  char sname[64];
  size_t slen = sizeof sname;
  out("snap_get_name", rbd_snap_get_name(img, sid, sname, &slen));
  out("snap_get_name.value", strcmp(sname, "s1") == 0);
  slen = 1;
  out("snap_get_name.small", rbd_snap_get_name(img, sid, sname, &slen));
  out("snap_get_name.small.len", slen);
  slen = sizeof sname;
  out("snap_get_name.missing", rbd_snap_get_name(img, sid + 1000, sname, &slen));
  struct timespec ts = {0, 0};
  out("snap_get_timestamp", rbd_snap_get_timestamp(img, sid, &ts));
  out("snap_get_timestamp.recent", llabs((long long)ts.tv_sec - (long long)time(NULL)) < 600);
  /* (an unknown id is a failed assertion in librbd 16.2, not an error) */
  bool sx = false;
  out("snap_exists", rbd_snap_exists(img, "s1", &sx));
  out("snap_exists.value", sx);
  out("snap_exists.missing", rbd_snap_exists(img, "nosuchsnap", &sx));
  out("snap_exists.missing.value", sx);

  /* write-same: a 512-byte pattern over 8 KiB at 5 MiB */
  char pat[512], zeros[512] = {0};
  fill(pat, sizeof pat, 40);
  out("writesame", rbd_writesame(img, 5 * MiB, 8192, pat, sizeof pat, 0));
  {
    char *want = malloc(8192), *got8 = malloc(8192);
    for (int i = 0; i < 16; i++) memcpy(want + i * 512, pat, 512);
    out("writesame.read", rbd_read(img, 5 * MiB, 8192, got8));
    out("writesame.ok", memcmp(want, got8, 8192) == 0);
    free(want); free(got8);
  }
  out("writesame.not_multiple", rbd_writesame(img, 5 * MiB, 8192, pat, 3000, 0));
  out("writesame.empty_pattern", rbd_writesame(img, 5 * MiB, 8192, pat, 0, 0));
  out("writesame.zeros", rbd_writesame(img, 5 * MiB + 4096, 4096, zeros, sizeof zeros, 0));
  out("writesame.zeros_read", zero_read(img, 5 * MiB + 4096, 4096));
  out("writesame.crossing_end", rbd_writesame(img, SIZE - 4096, 8192, pat, sizeof pat, 0));
  AIO("aio_writesame", rbd_aio_writesame(img, 6 * MiB, 4096, pat, sizeof pat, c, 0));
  {
    char *got4 = malloc(4096);
    int ok = rbd_read(img, 6 * MiB, 4096, got4) == 4096;
    for (int i = 0; ok && i < 8; i++) ok = memcmp(got4 + i * 512, pat, 512) == 0;
    out("aio_writesame.ok", ok);
    free(got4);
  }
  {
    rbd_completion_t c;
    rbd_aio_create_completion(NULL, NULL, &c);
    int r = rbd_aio_writesame(img, 6 * MiB, 4096, pat, 3000, c, 0);
    if (r == 0) { rbd_aio_wait_for_complete(c); r = rbd_aio_get_return_value(c); }
    out("aio_writesame.not_multiple", r);
    rbd_aio_release(c);
  }

  /* compare-and-write at 7 MiB (object 1): librbd takes at most one
   * 512-byte sector */
  {
    char *cmp = malloc(4096), *nw = malloc(4096);
    fill(cmp, 4096, 41);
    out("caw.setup", rbd_write(img, 7 * MiB, 4096, cmp));
    fill(nw, 4096, 42);
    uint64_t mm = 7;
    out("caw", rbd_compare_and_write(img, 7 * MiB + 512, 512, cmp + 512, nw, &mm, 0));
    out("caw.mismatch_off_kept", mm == 7);
    {
      char *want = malloc(4096);
      fill(want, 4096, 41);
      memcpy(want + 512, nw, 512);
      char *got4 = malloc(4096);
      out("caw.written", rbd_read(img, 7 * MiB, 4096, got4) == 4096 && memcmp(got4, want, 4096) == 0);
      free(got4); free(want);
    }
    char bad[512];
    memcpy(bad, cmp + 1024, 512);
    bad[100] ^= 1;
    out("caw.mismatch", rbd_compare_and_write(img, 7 * MiB + 1024, 512, bad, nw, &mm, 0));
    out("caw.mismatch_off", (long long)mm - (long long)(7 * MiB));
    out("caw.two_sectors", rbd_compare_and_write(img, 7 * MiB, 1024, cmp, nw, &mm, 0));
    out("caw.crossing_sector", rbd_compare_and_write(img, 7 * MiB + 256, 512, cmp + 256, nw, &mm, 0));
    out("caw.crossing_object", rbd_compare_and_write(img, 8 * MiB - 256, 512, cmp, nw, &mm, 0));
    AIO("aio_caw", rbd_aio_compare_and_write(img, 7 * MiB + 2048, 512, cmp + 2048, nw, c, &mm, 0));
    mm = 0;
    memcpy(bad, nw, 512);
    bad[300] ^= 1;
    AIO("aio_caw.mismatch", rbd_aio_compare_and_write(img, 7 * MiB + 2048, 512, bad, nw + 512, c, &mm, 0));
    out("aio_caw.mismatch_off", (long long)mm - (long long)(7 * MiB));
    AIO("aio_caw.two_sectors", rbd_aio_compare_and_write(img, 7 * MiB, 1024, cmp, nw, c, &mm, 0));
    {
      char *want = malloc(4096), *got4 = malloc(4096);
      fill(want, 4096, 41);
      memcpy(want + 512, nw, 512);
      memcpy(want + 2048, nw, 512);
      out("caw.final", rbd_read(img, 7 * MiB, 4096, got4) == 4096 && memcmp(got4, want, 4096) == 0);
      free(got4); free(want);
    }
    free(cmp); free(nw);
  }

  /* read-only and snapshot opens */
  out("open_read_only", rbd_open_read_only(io, name, &ro, NULL));
  out("open_read_only.write", rbd_write(ro, 0, 4096, buf));
  AIO("open_read_only.aio_write", rbd_aio_write(ro, 0, 4096, buf, c));
  out("open_read_only.snap_create", rbd_snap_create(ro, "s2"));
  out("close.ro", rbd_close(ro));
  out("open.at_snap", rbd_open(io, name, &ro, "s1"));
  out("open.at_snap.write", rbd_write(ro, 0, 4096, buf));
  out("open.at_snap.reads_old", zero_read(ro, 8 * MiB, 4096));
  out("close.at_snap", rbd_close(ro));
  rbd_image_t second;
  int r2 = rbd_open(io, name, &second, NULL);
  info("open.second_writer", r2); /* ROW: -EBUSY; native: 0 (lock handed over on write) */
  if (r2 == 0) rbd_close(second);

  /* functions this library forwards to the system librbd: native images
   * get librbd's answer, ROW images -EOPNOTSUPP */
  char idbuf[64], val[64];
  size_t vlen = sizeof val;
  info("forwarded.get_id", rbd_get_id(img, idbuf, sizeof idbuf));
  info("forwarded.metadata_set", rbd_metadata_set(img, "k", "v"));
  int mg = rbd_metadata_get(img, "k", val, &vlen);
  info("forwarded.metadata_get", mg == 0 ? (strcmp(val, "v") == 0 ? 1 : -1) : mg);
  uint64_t stripe = 0;
  info("forwarded.get_stripe_unit", rbd_get_stripe_unit(img, &stripe) == 0 ? (long long)stripe : -95);

  /* protect, rollback, remove */
  out("snap_protect", rbd_snap_protect(img, "s1"));
  out("snap_remove.protected", rbd_snap_remove(img, "s1"));
  out("snap_unprotect", rbd_snap_unprotect(img, "s1"));
  out("snap_rollback", rbd_snap_rollback(img, "s1"));
  out("snap_rollback.reads_old", zero_read(img, 8 * MiB, 4096) && check_read(img, 1 * MiB, 4096, 3));
  out("snap_rollback.missing", rbd_snap_rollback(img, "nosuchsnap"));
  out("snap_remove.missing", rbd_snap_remove(img, "nosuchsnap"));

  /* resize */
  out("resize", rbd_resize(img, 2 * SIZE));
  rbd_get_size(img, &size);
  out("resize.size", size);
  out("resize.shrink", rbd_resize(img, SIZE));

  /* pool level */
  rbd_image_spec_t specs[64];
  size_t nspecs = 64;
  int lr = rbd_list2(io, specs, &nspecs);
  int found = 0;
  for (size_t i = 0; lr == 0 && i < nspecs; i++) found |= strcmp(specs[i].name, name) == 0;
  if (lr == 0) rbd_image_spec_list_cleanup(specs, nspecs);
  out("list2", lr);
  out("list2.found", found);
  size_t zero = 0;
  out("list2.small", rbd_list2(io, specs, &zero) == -ERANGE && zero >= 1);
  /* rbd_list: this image and one of the other kind (created with the
   * switch unset, so native through this library) both listed */
  char other[160];
  snprintf(other, sizeof other, "%s-other", name);
  char *sw = getenv("RBD_ROW_CREATE");
  sw = sw ? strdup(sw) : NULL;
  unsetenv("RBD_ROW_CREATE");
  int oorder = 22;
  out("list.create_other", rbd_create(io, other, 4 * MiB, &oorder));
  if (sw) { setenv("RBD_ROW_CREATE", sw, 1); free(sw); }
  size_t lsize = 0;
  out("list.small", rbd_list(io, NULL, &lsize));
  out("list.small.size_set", lsize > strlen(name) + strlen(other));
  {
    size_t have = lsize + 65536;
    char *names = malloc(have);
    int lr = rbd_list(io, names, &have);
    out("list.ret_positive", lr > 0);
    int self = 0, oth = 0;
    for (char *p = names; lr > 0 && p < names + lr; p += strlen(p) + 1) {
      self |= strcmp(p, name) == 0;
      oth |= strcmp(p, other) == 0;
    }
    out("list.found", self);
    out("list.found_other", oth);
    info("list.size_after", have == (size_t)lr);
    free(names);
  }
  out("list.remove_other", rbd_remove(io, other));
  bool exists = false;
  out("namespace_exists", rbd_namespace_exists(io, "", &exists));
  out("namespace_exists.value", exists);

  out("close", rbd_close(img));
  out("remove.with_snaps", rbd_remove(io, name));
  out("open.again", rbd_open(io, name, &img, NULL));
  out("snap_remove", rbd_snap_remove(img, "s1"));
  out("close.again", rbd_close(img));
  out("remove", rbd_remove(io, name));
  out("remove.again", rbd_remove(io, name));
  out("open.removed", rbd_open(io, name, &img, NULL));

  rados_ioctx_destroy(io);
  rados_shutdown(cl);
  return 0;
}
