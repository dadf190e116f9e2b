/* master.h -- the master process: set-up, signals, log files, privileges; it supervises the workers. */
#ifndef MOONFORK_MASTER_H
#define MOONFORK_MASTER_H

#include "config.h"

/* Runs the master to the end; returns the process exit status. Errors before serving (script, bind)
 * are printed as one "moonfork: ..." line on stderr. */
int master_run(mf_config_t *cfg);

/* For the master's own modules (reload.c, watchdog.c): the command line as given; what the workers run
 * with (the command line over the script); */
const mf_config_t *master_cli(void);
mf_config_t *master_config(void);
/* a reload's new configuration, for the workers started from now on (next is taken over); */
void master_use_config(mf_config_t *next);
/* and whether the first workers were all ready once ("listening on ..." was logged). */
int master_announced(void);

#endif
