/* shdict_region.h -- the memfd that holds every shared dict: the master makes it, workers map it. */
#ifndef MOONFORK_SHDICT_REGION_H
#define MOONFORK_SHDICT_REGION_H

#include <stddef.h>
#include <stdint.h>

#include "shdict.h"

#define SHD_REGION_MAX 32   /* dicts */
#define SHD_NAME_MAX 63     /* bytes of a dict's name */

/* Master: makes the region (empty). Returns its fd (passed to each worker as MF_FD_SHDICT), or -1 with
 * the reason in err. */
int shdict_region_create(char *err, size_t errlen);
/* Master: adds a dict of `size` bytes (rounded up to pages) called name. Returns 0 when it was added, 1
 * when it exists with that size, 2 when it exists with another (*old_size; it stays until a restart),
 * or -1 with err set. */
int shdict_region_add(const char *name, uint64_t size, uint64_t *old_size, char *err, size_t errlen);
/* Worker: maps every dict of the region fd (and closes fd). Returns 0 or -1 with err set. */
int shdict_region_attach(int fd, char *err, size_t errlen);
/* The region's fd (master), or -1. */
int shdict_region_fd(void);

/* Master: worker pid is gone (reaped): releases any dict lock it held, marking the dict for repair.
 * Returns how many it released. */
int shdict_region_owner_died(int pid);

/* Any process: the dicts it has mapped. */
int shdict_region_count(void);
const char *shdict_region_name(int i);
shdict_t *shdict_region_dict(int i);
/* The dict called name, or NULL (exported for the LuaJIT FFI: shared.lua). */
shdict_t *shdict_region_find(const char *name);

#endif
