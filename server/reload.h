/* reload.h -- a reload: probe the script again, then replace the workers one slot at a time. */
#ifndef MOONFORK_RELOAD_H
#define MOONFORK_RELOAD_H

#include "control.h"
#include "group.h"

/* Starts a reload of g's children (or joins the one running); `conn` (may be NULL) gets the result. */
void reload_start(group_t *g, const char *why, control_conn_t *conn);
/* The group's replacement hook: the replacement for slot s is ready (ok) or failed (why). */
void reload_replaced(group_t *g, group_slot_t *s, int ok, const char *why);
/* Ends a running reload as failed (the server stops). */
void reload_abort(group_t *g, const char *why);
/* Is one running? */
int reload_active(void);

#endif
