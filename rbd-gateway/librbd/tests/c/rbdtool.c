/*
 * Pool-level helper for the drop-in's tests, through whichever librbd.so.1
 * is loaded: create (rbd_create; a ROW image when RBD_ROW_CREATE=1), remove
 * (rbd_remove), snap/unsnap (rbd_open + rbd_snap_create/rbd_snap_remove),
 * list (rbd_list2).
 *
 * usage: rbdtool create POOL IMAGE SIZE_MIB | remove POOL IMAGE |
 *        snap POOL IMAGE SNAP | unsnap POOL IMAGE SNAP | list POOL
 * Exit status 0 on success, else the negated return value (capped).
 */
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, int r) {
  fprintf(stderr, "rbdtool: %s: %d\n", what, r);
  return r < 0 && r > -255 ? -r : 1;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: see source\n"); return 2; }
  rados_t cl;
  rados_ioctx_t io;
  if (rados_create(&cl, "admin") < 0 || rados_conf_read_file(cl, getenv("CEPH_CONF")) < 0 ||
      rados_connect(cl) < 0 || rados_ioctx_create(cl, argv[2], &io) < 0)
    return fail("connect", -1);
  int r = 0;
  if (!strcmp(argv[1], "create") && argc == 5) {
    int order = 0;
    r = rbd_create(io, argv[3], strtoull(argv[4], NULL, 10) << 20, &order);
    if (r < 0) return fail("rbd_create", r);
  } else if (!strcmp(argv[1], "remove") && argc == 4) {
    r = rbd_remove(io, argv[3]);
    if (r < 0) return fail("rbd_remove", r);
  } else if (!strcmp(argv[1], "snap") && argc == 5) {
    rbd_image_t img;
    r = rbd_open(io, argv[3], &img, NULL);
    if (r < 0) return fail("rbd_open", r);
    r = rbd_snap_create(img, argv[4]);
    rbd_close(img);
    if (r < 0) return fail("rbd_snap_create", r);
  } else if (!strcmp(argv[1], "unsnap") && argc == 5) {
    rbd_image_t img;
    r = rbd_open(io, argv[3], &img, NULL);
    if (r < 0) return fail("rbd_open", r);
    r = rbd_snap_remove(img, argv[4]);
    rbd_close(img);
    if (r < 0) return fail("rbd_snap_remove", r);
  } else if (!strcmp(argv[1], "list") && argc == 3) {
    rbd_image_spec_t specs[1024];
    size_t n = 1024;
    r = rbd_list2(io, specs, &n);
    if (r < 0) return fail("rbd_list2", r);
    for (size_t i = 0; i < n; i++) printf("%s\n", specs[i].name);
    rbd_image_spec_list_cleanup(specs, n);
  } else {
    return fail("usage", -22);
  }
  rados_ioctx_destroy(io);
  rados_shutdown(cl);
  return 0;
}
