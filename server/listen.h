/* listen.h -- the master's listening socket: resolve, bind, listen, and the URL it answers on. */
#ifndef MOONFORK_LISTEN_H
#define MOONFORK_LISTEN_H

#include <stddef.h>

#include "config.h"

/* Binds and listens on cfg's host and port (with SO_REUSEPORT under --reuseport); a port of 0 becomes
 * the one the kernel chose, in cfg->port. Writes "http://HOST:PORT" into url. Returns the socket
 * (close-on-exec), or -1 with the reason in err. */
int listen_bind(mf_config_t *cfg, char *url, size_t urllen, char *err, size_t errlen);

#endif
