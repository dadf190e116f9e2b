/* worker.h -- a worker process: its event loop, the Lua state running the script, the master link. */
#ifndef MOONFORK_WORKER_H
#define MOONFORK_WORKER_H

#include "config.h"

/* Runs a worker to the end; returns the process exit status. */
int worker_run(mf_config_t *cfg);

#endif
