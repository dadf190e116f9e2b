/* log.h -- one-line log records on stderr, stamped with the time and who wrote them. */
#ifndef MOONFORK_LOG_H
#define MOONFORK_LOG_H

/* Sets who this process is: worker_id 0 means the master. */
void mf_log_set_role(int worker_id);
/* Writes one line (a newline is added) with a single write(2), so lines from many processes never interleave. */
void mf_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Same, for a message that may span lines (a Lua traceback): each line gets the prefix. */
void mf_log_block(const char *text);

#endif
