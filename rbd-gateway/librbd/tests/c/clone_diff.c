/*
 * rbd_diff_iterate2 on a clone, with and without its parent (a backup
 * tool's first full backup of a clone reads only the clone's own data
 * with include_parent = 0). Run by tests/clone_diff.rs on a ROW clone
 * through rbd-row's librbd.so.1 and on a native clone through the system
 * librbd; "=" lines must be equal, "~" lines are informational.
 *
 * usage: clone_diff prepare POOL PARENT       (creates PARENT, writes, snapshot "s", protected)
 *        clone_diff check POOL CHILD          (CHILD cloned from PARENT@s by the caller)
 *        clone_diff remove POOL PARENT CHILD
 */
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MiB (1024ULL * 1024ULL)
#define SIZE (32 * MiB)
#define OBJ (4 * MiB)

static void out(const char *label, long long v) { printf("= %s %lld\n", label, v); }

static int write_at(rbd_image_t img, uint64_t off, size_t len, char seed) {
  char *b = malloc(len);
  memset(b, seed, len);
  int ok = rbd_write(img, off, len, b) == (ssize_t)len;
  free(b);
  return ok;
}

/* The objects holding data (fine-grained extents are compared per object:
 * librbd reports an object's data from 0, rbd-row the written grains). */
static int mask_cb(uint64_t off, size_t len, int exists, void *arg) {
  unsigned long long *mask = arg;
  printf("~ extent %llu+%zu exists=%d\n", (unsigned long long)off, len, exists);
  for (uint64_t o = off / OBJ; exists && o < (off + len + OBJ - 1) / OBJ; o++) *mask |= 1ULL << o;
  return 0;
}

static int line_cb(uint64_t off, size_t len, int exists, void *arg) {
  printf("= %s %llu+%zu exists=%d\n", (const char *)arg, (unsigned long long)off, len, exists);
  return 0;
}

static void diffs(rbd_image_t img) {
  unsigned long long with = 0, own = 0;
  out("diff.with_parent", rbd_diff_iterate2(img, NULL, 0, SIZE, 1, 0, mask_cb, &with));
  out("diff.with_parent.objects", with);
  out("diff.own", rbd_diff_iterate2(img, NULL, 0, SIZE, 0, 0, mask_cb, &own));
  out("diff.own.objects", own);
  out("diff.own.whole", rbd_diff_iterate2(img, NULL, 0, SIZE, 0, 1, line_cb, "whole.own"));
  unsigned long long win = 0;
  out("diff.own.window", rbd_diff_iterate2(img, NULL, 6 * MiB, 16 * MiB, 0, 0, mask_cb, &win));
  out("diff.own.window.objects", win);
}

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: see clone_diff.c\n"); return 2; }
  const char *mode = argv[1], *pool = argv[2], *name = argv[3];
  rados_t cl;
  rados_ioctx_t io;
  if (rados_create(&cl, "admin") < 0 || rados_conf_read_file(cl, getenv("CEPH_CONF")) < 0 ||
      rados_connect(cl) < 0 || rados_ioctx_create(cl, pool, &io) < 0) {
    fprintf(stderr, "cannot connect\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  rbd_image_t img;
  int rc = 0;
  if (strcmp(mode, "prepare") == 0) {
    int order = 22;
    out("parent.create", rbd_create(io, name, SIZE, &order));
    out("parent.open", rbd_open(io, name, &img, NULL));
    out("parent.write0", write_at(img, 0, 8192, 1));
    out("parent.write12", write_at(img, 12 * MiB, OBJ, 2));
    out("parent.write20", write_at(img, 20 * MiB, 4096, 3));
    out("parent.snap", rbd_snap_create(img, "s"));
    out("parent.protect", rbd_snap_protect(img, "s"));
    out("parent.close", rbd_close(img));
  } else if (strcmp(mode, "check") == 0) {
    out("child.open", rbd_open(io, name, &img, NULL));
    char pn[128], ps[64], pi[128];
    out("child.parent_info", rbd_get_parent_info(img, pi, sizeof pi, pn, sizeof pn, ps, sizeof ps));
    out("child.parent_snap", strcmp(ps, "s") == 0);
    out("child.write8", write_at(img, 8 * MiB, 4096, 4));
    out("child.write20", write_at(img, 20 * MiB + 8192, 4096, 5));
    diffs(img);
    out("child.close", rbd_close(img));
  } else if (strcmp(mode, "remove") == 0 && argc == 5) {
    out("child.remove", rbd_remove(io, argv[4]));
    out("parent.open", rbd_open(io, name, &img, NULL));
    out("parent.unprotect", rbd_snap_unprotect(img, "s"));
    out("parent.snap_remove", rbd_snap_remove(img, "s"));
    out("parent.close", rbd_close(img));
    out("parent.remove", rbd_remove(io, name));
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    rc = 2;
  }
  rados_ioctx_destroy(io);
  rados_shutdown(cl);
  return rc;
}
