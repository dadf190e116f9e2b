/* master.h -- the master process: binds the socket, starts and supervises workers, handles signals. */
#ifndef MOONFORK_MASTER_H
#define MOONFORK_MASTER_H

#include "config.h"

/* Runs the master to the end; returns the process exit status. Errors before serving (script, bind)
 * are printed as one "moonfork: ..." line on stderr. */
int master_run(mf_config_t *cfg);

#endif
