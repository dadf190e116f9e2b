/* net_pg_type.h -- PostgreSQL values (text format) to Lua values, by type OID. */
#ifndef MOONFORK_NET_PG_TYPE_H
#define MOONFORK_NET_PG_TYPE_H

#include <lua.h>
#include <stddef.h>

/* Type OIDs this file converts (from PostgreSQL's pg_type.dat; they never change). */
enum {
  PG_BOOL = 16, PG_BYTEA = 17, PG_INT8 = 20, PG_INT2 = 21, PG_INT4 = 23, PG_TEXT = 25, PG_OID = 26,
  PG_JSON = 114, PG_FLOAT4 = 700, PG_FLOAT8 = 701, PG_NUMERIC = 1700, PG_JSONB = 3802
};

/* Pushes the Lua value of `s` (len bytes, the text form of a value of type `oid`):
 * int2/int4/int8/oid -> number (an int8 beyond +-2^53 -> its string), float4/float8 -> number (NaN,
 * +-Infinity too), numeric -> string, bool -> boolean, bytea (hex or escape form) -> string,
 * json/jsonb -> what the function at stack index json_fn makes of the text (json_fn 0: the text),
 * a one- or more-dimensional array of those -> a table (nested per dimension; NULL elements ->
 * lightuserdata NULL, which is cjson.null and moonfork.null); any other type -> the string.
 * Returns 0 with one value pushed, or -1 with an error message pushed instead. */
int pg_type_push(lua_State *L, unsigned oid, const char *s, size_t len, int json_fn);

/* The element type of an array type, or 0 when oid is not an array type this file knows. */
unsigned pg_type_elem(unsigned oid);

#endif
