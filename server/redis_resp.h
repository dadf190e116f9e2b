/* redis_resp.h -- Redis replies (RESP2) to Lua values, and commands to RESP: a pure codec, no loop. */
#ifndef MOONFORK_REDIS_RESP_H
#define MOONFORK_REDIS_RESP_H

#include <lua.h>
#include <stddef.h>

typedef struct redis_resp_s redis_resp_t;

/* The most a reply may buffer before it is complete (Redis's own proto-max-bulk-len is 512 MB). */
#define REDIS_RESP_MAX_PENDING ((size_t)600 * 1024 * 1024)

/* A new reader; NULL when out of memory. Freed by redis_resp_free. */
redis_resp_t *redis_resp_new(void);
/* Frees the reader; L (NULL once the Lua state is gone) releases its registry slot. */
void redis_resp_free(lua_State *L, redis_resp_t *r);
/* The most an unfinished reply may buffer (default REDIS_RESP_MAX_PENDING; smaller in tests). */
void redis_resp_limit(redis_resp_t *r, size_t max_pending);
/* Appends bytes read from the server (copied). 0, or -1 when out of memory or when an unfinished
 * reply holds more than the limit (the reader is then unusable: drop the connection). */
int redis_resp_feed(redis_resp_t *r, const char *data, size_t n);
/* Pushes the next complete reply as a Lua value and returns 1: status and bulk -> string, integer ->
 * number, nil bulk and nil array -> moonfork.null (a NULL light userdata, as cjson.null), array ->
 * table (1-based; an error inside it -> { false, "ERR ..." }). A top-level error reply pushes its text
 * and sets *is_err. Returns 0 (nothing pushed) when no reply is complete yet, or -1 with a message
 * pushed for a malformed reply (the reader is then unusable: drop the connection). May raise a Lua
 * memory error: call it in protected mode. */
int redis_resp_next(lua_State *L, redis_resp_t *r, int *is_err);

/* Formats the command in the Lua values at idx..top (its name, then its arguments: strings or numbers,
 * anything else raises "NAME: argument #n must be ...") as RESP; integral numbers are written without
 * an exponent. Returns a buffer to free with redisFreeCommand, its length in *len. */
char *redis_resp_format(lua_State *L, int idx, size_t *len);

#endif
