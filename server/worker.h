/* worker.h -- a worker process: its event loop, the Lua state running the script, the master link. */
#ifndef MOONFORK_WORKER_H
#define MOONFORK_WORKER_H

#include "config.h"

/* File descriptors a worker finds open when the master execs it. */
#define MF_FD_LISTEN 3
#define MF_FD_CONTROL 4

/* Runs a worker to the end; returns the process exit status. */
int worker_run(mf_config_t *cfg);

#endif
