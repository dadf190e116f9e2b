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

/* The control socket's path into buf: `given` (--control) as it is, else moonfork-PORT.sock in a
 * directory only this user can write: $XDG_RUNTIME_DIR/moonfork/, /run for root, /tmp/moonfork-UID/.
 * create: make the directory (mode 0700) when it is missing (the master). Returns 0, or -1 with err
 * set when the directory is not private (someone else owns it, or group or others may write it). */
int control_path(const char *given, long port, int create, char *buf, size_t len, char *err, size_t errlen);

/* What the client expects of the master it reaches (0: anything). */
typedef struct {
  long pid;  /* from --pid-file */
  long port; /* from --port */
} control_expect_t;

/* Client: checks that the socket at `path` is answered by a master of this user that matches
 * `expect` (its pid and port, from a "hello"), then sends `request` and returns the reply (malloc'ed,
 * caller frees), or NULL with a reason in err. Waits at most timeout_ms for each answer. */
char *control_request(const char *path, const char *request, const control_expect_t *expect, int timeout_ms,
                      char *err, size_t errlen);

#endif
