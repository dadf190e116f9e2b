/* bind_res.h -- the `res` a handler gets: one small userdata that is also its connection's binding
 * object (see bind_res.c). */
#ifndef MOONFORK_BIND_RES_H
#define MOONFORK_BIND_RES_H

#include <stdint.h>

#include <lua.h>

#include "bind_obj.h"
#include "http.h"

typedef struct {
  http_conn_t *conn; /* NULL once the response is over or its connection closed (as bind_obj_t's ptr) */
  int self_ref;      /* pins the res while its response is in flight (the connection's user_ref) */
  uint16_t status;   /* statusCode, when it is a whole number */
  uint16_t flags;    /* RES_* (bind_res.c) */
} bind_res_t;

/* Adds the res's functions to the module table on the stack top (res_get, res_set, res_on, writeHead,
 * write, finish, res_mt: the metatable of `type`, which http.lua fills). */
void bind_res_open(lua_State *L, bind_type_t *type);
/* Pushes a new res for the connection's current request, pinned in its user_ref slot. */
bind_res_t *bind_res_new(lua_State *L, http_conn_t *c);
/* Pushes the connection's res and returns it; NULL (nothing pushed) when it has none. */
bind_res_t *bind_res_push(lua_State *L, http_conn_t *c);
/* The response is over (in_flight 0) or its connection closed under it (in_flight 1): the res lets go
 * of the connection and is unpinned; with in_flight, cb_ref is called with it. */
void bind_res_closed(lua_State *L, http_conn_t *c, int in_flight, int cb_ref);

#endif
