/* watch.h -- --watch: notices edits to the app's .lua files and asks for a reload. */
#ifndef MOONFORK_WATCH_H
#define MOONFORK_WATCH_H

#include <stddef.h>
#include <uv.h>

/* Watches the directory of `script` and the directories below it; `on_change` runs once a burst of
 * changes to .lua files has been quiet for a moment. Returns 0, or -1 with a reason in err. */
int watch_start(uv_loop_t *loop, const char *script, void (*on_change)(void), char *err, size_t errlen);
void watch_stop(void);

#endif
