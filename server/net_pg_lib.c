/* net_pg_lib.c -- libpq loaded with dlopen at the first connection (see net_pg_lib.h for why). */
#include <dlfcn.h>
#include <stdio.h>

/* The real names here: this file resolves them, so the header's name-to-pointer macros must not apply. */
#define NET_PG_LIB_NO_MACROS
#include "net_pg_lib.h"

struct net_pg_lib_s net_pg_lib;

static int loaded; /* 0: not tried, 1: loaded, -1: failed (why in load_err) */
static char load_err[256];

int net_pg_lib_load(char *err, size_t errlen) {
  if (loaded == 0) {
    loaded = -1;
    void *lib = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
      snprintf(load_err, sizeof load_err, "PostgreSQL client unavailable: %s", dlerror());
    } else {
      void *f;
#define NET_PG_LIB_RESOLVE(name)                                                                       \
  if ((f = dlsym(lib, #name)) == NULL && load_err[0] == 0)                                             \
    snprintf(load_err, sizeof load_err, "PostgreSQL client unavailable: libpq.so.5 has no %s", #name); \
  *(void **)&net_pg_lib.name = f;
      NET_PG_LIB_FUNCTIONS(NET_PG_LIB_RESOLVE)
#undef NET_PG_LIB_RESOLVE
      if (load_err[0] == 0)
        loaded = 1;
      else
        dlclose(lib);
    }
  }
  if (loaded < 0 && err) snprintf(err, errlen, "%s", load_err);
  return loaded > 0 ? 0 : -1;
}
