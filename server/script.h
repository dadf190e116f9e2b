/* script.h -- loading the user's script: the master's probe for listen() options, the worker's full run. */
#ifndef MOONFORK_SCRIPT_H
#define MOONFORK_SCRIPT_H

#include <lua.h>
#include <stddef.h>

#include "config.h"

/* Master: runs the script in a throwaway state up to its moonfork.listen() call, merges listen()'s
 * options into cfg under the command line's, and closes the state. No request code ever runs here.
 * Returns 0, or -1 with a one-line reason (with file:line for script errors) in err. */
int mf_script_probe(mf_config_t *cfg, char *err, size_t errlen);

/* Worker: loads and runs the whole script in L. Returns 0, or -1 with the reason in err. */
int mf_script_run(lua_State *L, const char *script, char *err, size_t errlen);

#endif
