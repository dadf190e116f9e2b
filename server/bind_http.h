/* bind_http.h -- requests into Lua and responses out of it: the bridge between http.c and moonfork.http. */
#ifndef MOONFORK_BIND_HTTP_H
#define MOONFORK_BIND_HTTP_H

#include <lua.h>

#include "http.h"

/* Opens package.loaded["moonfork.core.http"] (on, abort, remote, headers, read, gen, and the res's
 * functions: bind_res.h). */
void bind_http_open(lua_State *L);
/* The HTTP connection behind the connection object (the res) at idx (NULL once its response ended or
 * the connection closed; raises when idx is not one): for bind_ws.c and bind_pass.c. */
http_conn_t *bind_http_conn(lua_State *L, int idx);
/* Has the script registered its Lua half (http.on, through moonfork.listen)? */
int bind_http_serving(void);
/* The http_callbacks_t functions; their `data` is the lua_State. */
int bind_http_on_request(void *data, http_conn_t *c, uint32_t gen, const http_request_t *req);
void bind_http_on_conn_closed(void *data, http_conn_t *c, int in_flight);
void bind_http_on_drain(void *data, http_conn_t *c);
void bind_http_on_body(void *data, http_conn_t *c, int end, const char *trailers, size_t trailers_len);

#endif
