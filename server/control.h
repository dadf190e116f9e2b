/* control.h -- the control socket: a Unix-domain socket the master answers, and the client for it. */
#ifndef MOONFORK_CONTROL_H
#define MOONFORK_CONTROL_H

#include <stddef.h>
#include <uv.h>

typedef struct control_conn_s control_conn_t;

/* Called with each request line (without the newline). The handler answers with control_reply, now or
 * later; a connection whose client left meanwhile swallows the reply. */
typedef void (*control_handler_t)(control_conn_t *conn, const char *line);

/* Binds `path` (mode 0600; a stale socket file is replaced, a live one is an error) and starts
 * answering. Returns 0 or -1 with a reason in err. */
int control_server_start(uv_loop_t *loop, const char *path, control_handler_t handler, char *err, size_t errlen);
/* Removes the socket file (at exit). */
void control_server_stop(void);
/* Sends `text` (one JSON object, a newline is added) and closes the connection. Takes nothing over. */
void control_reply(control_conn_t *conn, const char *text);

/* Client: sends `request` to the socket at `path` and returns the reply (malloc'ed, caller frees), or
 * NULL with a reason in err. Waits at most timeout_ms. */
char *control_request(const char *path, const char *request, int timeout_ms, char *err, size_t errlen);

#endif
