/* fds.h -- the file descriptors a child process finds open when the master execs it.
 *
 * One place names them all, so the master that places them (group.c, master.c) and the child that
 * takes them (worker.c, scoreboard.c, shdict_region.c) cannot disagree. 0-2 are stdio; a kind of child may leave any of
 * the others closed. */
#ifndef MOONFORK_FDS_H
#define MOONFORK_FDS_H

#define MF_FD_LISTEN 3     /* the listening socket (with --reuseport: the slot's own) */
#define MF_FD_CONTROL 4    /* the child's end of its channel to the master (chan.c) */
#define MF_FD_SCOREBOARD 5 /* the shared scoreboard memfd (scoreboard.c) */
#define MF_FD_SHDICT 6     /* the shared dicts' memfd (shdict_region.c) */
#define MF_FD_COUNT 7      /* one past the highest */

#endif
