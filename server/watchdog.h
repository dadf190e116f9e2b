/* watchdog.h -- the master's tick: stuck or slow-starting workers killed, and recycling. */
#ifndef MOONFORK_WATCHDOG_H
#define MOONFORK_WATCHDOG_H

#include <stdint.h>

#include "group.h"

/* Starts the tick (every second) over g's children, whose `data` is their scoreboard entry. */
void watchdog_start(group_t *g);
/* Resident memory of process pid in KiB (0 when unknown). */
uint64_t watchdog_rss_kb(int pid);

#endif
