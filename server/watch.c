/* watch.c -- --watch: notices edits to the app's .lua files and asks for a reload.
 *
 * libuv's fs events are inotify on Linux, which does not watch a tree: one watcher per directory,
 * found by walking the script's directory (hidden directories, node_modules and build/ skipped) and
 * walked again when a directory appears. Editors save in bursts (write, rename, chmod), so a change
 * only starts a short timer; the reload comes when the burst is over. */
#include "watch.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define WATCH_MAX_DIRS 256
#define WATCH_DEBOUNCE_MS 300

typedef struct {
  uv_fs_event_t ev;
  char path[PATH_MAX];
} wdir_t;

static struct {
  uv_loop_t *loop;
  wdir_t *dirs[WATCH_MAX_DIRS];
  int ndirs;
  uv_timer_t debounce;
  void (*on_change)(void);
  int active;
} watch;

static void watch_tree(const char *dir);

static int skip_dir(const char *name) {
  return name[0] == '.' || strcmp(name, "node_modules") == 0 || strcmp(name, "build") == 0;
}

static void on_debounce(uv_timer_t *t) {
  (void)t;
  if (watch.active) watch.on_change();
}

static int is_watched(const char *path) {
  for (int i = 0; i < watch.ndirs; i++)
    if (strcmp(watch.dirs[i]->path, path) == 0) return 1;
  return 0;
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  wdir_t *d = h->data;
  (void)events;
  if (status < 0 || filename == NULL || !watch.active) return;
  size_t n = strlen(filename);
  if (n > 4 && strcmp(filename + n - 4, ".lua") == 0) {
    uv_timer_start(&watch.debounce, on_debounce, WATCH_DEBOUNCE_MS, 0);
    return;
  }
  /* maybe a new directory: watch it (and what is in it) too */
  char path[PATH_MAX + 256];
  snprintf(path, sizeof path, "%s/%s", d->path, filename);
  if (skip_dir(filename)) return;
  uv_fs_t req;
  int dir = uv_fs_stat(NULL, &req, path, NULL) == 0 && (req.statbuf.st_mode & S_IFMT) == S_IFDIR;
  uv_fs_req_cleanup(&req); /* only after a stat: a request never made has nothing to clean */
  if (dir && !is_watched(path)) {
    watch_tree(path);
    uv_timer_start(&watch.debounce, on_debounce, WATCH_DEBOUNCE_MS, 0);
  }
}

static void watch_dir(const char *path) {
  if (watch.ndirs >= WATCH_MAX_DIRS || is_watched(path)) return;
  wdir_t *d = calloc(1, sizeof *d);
  if (d == NULL) return;
  snprintf(d->path, sizeof d->path, "%s", path);
  uv_fs_event_init(watch.loop, &d->ev);
  d->ev.data = d;
  if (uv_fs_event_start(&d->ev, on_event, path, 0) != 0) {
    uv_close((uv_handle_t *)&d->ev, (uv_close_cb)free);
    return;
  }
  uv_unref((uv_handle_t *)&d->ev);
  watch.dirs[watch.ndirs++] = d;
}

static void watch_tree(const char *dir) {
  watch_dir(dir);
  uv_fs_t req;
  uv_dirent_t ent;
  if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
    uv_fs_req_cleanup(&req);
    return;
  }
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    if (ent.type != UV_DIRENT_DIR || skip_dir(ent.name)) continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, ent.name);
    watch_tree(path);
  }
  uv_fs_req_cleanup(&req);
}

int watch_start(uv_loop_t *loop, const char *script, void (*on_change)(void), char *err, size_t errlen) {
  char real[PATH_MAX];
  if (realpath(script, real) == NULL) {
    snprintf(err, errlen, "cannot resolve %s", script);
    return -1;
  }
  char *slash = strrchr(real, '/');
  if (slash == real) slash[1] = '\0';
  else if (slash) *slash = '\0';
  watch.loop = loop;
  watch.on_change = on_change;
  uv_timer_init(loop, &watch.debounce);
  uv_unref((uv_handle_t *)&watch.debounce);
  watch.active = 1;
  watch_tree(real);
  if (watch.ndirs == 0) {
    snprintf(err, errlen, "cannot watch %s", real);
    watch.active = 0;
    return -1;
  }
  mf_log("--watch: watching %d director%s under %s", watch.ndirs, watch.ndirs == 1 ? "y" : "ies", real);
  return 0;
}

void watch_stop(void) {
  if (!watch.active) return;
  watch.active = 0;
  for (int i = 0; i < watch.ndirs; i++) uv_fs_event_stop(&watch.dirs[i]->ev);
}
