/* chan.h -- the master<->child channel: one table of line messages, their parser, a reader, senders. */
#ifndef MOONFORK_CHAN_H
#define MOONFORK_CHAN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CHAN_LINE_MAX 512 /* a longer line is cut (only "error" text can be long) */
#define CHAN_MAX_ID 1024  /* child ids are 1..this (the scale limit) */

typedef enum {
  CHAN_BAD = 0, /* a malformed line: `text` holds it */
  CHAN_READY,   /* child: it serves */
  CHAN_ERROR,   /* child: why it will not start (`text`) */
  CHAN_RECYCLE, /* child: it reached --max-requests after `count` requests; replace it */
  CHAN_RETIRE,  /* master: stop taking new work and drain gently */
  CHAN_STOP,    /* master: stop now (idle connections closed) */
  CHAN_PEER,    /* master: a mesh socket (attached) to worker `id` of `serial` */
  CHAN_LEADER,  /* master: the mesh's leader is worker `id` of `serial`, at `epoch` */
  CHAN_CONN,    /* master: a client connection (attached) from a parked --reuseport socket */
  CHAN_REPAIR,  /* child: its stream to worker `id` of `serial` was dropped (the mesh's cap); a new pair */
  CHAN_NTYPES
} chan_type_t;

typedef struct {
  chan_type_t type;
  int64_t id, serial, epoch, count;
  char text[CHAN_LINE_MAX];
} chan_msg_t;

/* Parses one line (no newline) into m. Returns 0, or -1 for a malformed line (unknown name, missing,
 * extra, non-numeric or out-of-range arguments): then m->type is CHAN_BAD and m->text the line. */
int chan_parse(const char *line, chan_msg_t *m);
/* Formats m as one line with its newline into buf. Returns the length, or -1 when it does not fit or m
 * is not a message (a bad type, a number out of range, a newline in the text). */
int chan_format(const chan_msg_t *m, char *buf, size_t len);
/* Does a message of this type come with a descriptor? */
int chan_has_fd(chan_type_t type);
/* The message's name ("ready", ...). */
const char *chan_name(chan_type_t type);

/* Splits a byte stream into lines; bytes past CHAN_LINE_MAX - 1 in one line are dropped. */
typedef struct {
  char line[CHAN_LINE_MAX];
  size_t len;
} chan_reader_t;
typedef void (*chan_line_cb)(void *data, const char *line);
/* Feeds n bytes, calling on_line for each complete line (without its newline). */
void chan_reader_feed(chan_reader_t *r, const char *p, size_t n, chan_line_cb on_line, void *data);

/* One end of a channel: a Unix socket that carries lines and descriptors. */
typedef struct chan_s chan_t;
/* A message came (CHAN_BAD for a malformed line); an attached descriptor waits for chan_accept. */
typedef void (*chan_msg_cb)(chan_t *ch, const chan_msg_t *m);
/* The other end closed, or reading failed (status, a UV_E* code). The channel is still open. */
typedef void (*chan_eof_cb)(chan_t *ch, int status);

struct chan_s {
  uv_pipe_t pipe;
  chan_reader_t reader;
  chan_msg_cb on_msg;
  chan_eof_cb on_eof;
  void *data; /* the owner's */
};

/* Opens the channel on fd (taken over) and starts reading. Returns 0 or a UV_E* code; either way the
 * pipe was initialised and must be closed with chan_close. */
int chan_open(chan_t *ch, uv_loop_t *loop, int fd, chan_msg_cb on_msg, chan_eof_cb on_eof, void *data);
/* Is it open (opened and not closing)? A zeroed chan_t is not. */
int chan_is_open(const chan_t *ch);
/* Sends m: now, or a queued copy (writeq.c). Returns 0 or a UV_E* code. */
int chan_send(chan_t *ch, const chan_msg_t *m);
/* Sends m with `fd` attached; the fd is the sender's to close either way (closed here). Returns 0 or
 * a UV_E* code. */
int chan_send_fd(chan_t *ch, const chan_msg_t *m, int fd);
/* Takes the descriptor that came with the last message into `into` (an initialised pipe or TCP
 * handle). Returns 0, or UV_ENOENT when none came, or a UV_E* code. */
int chan_accept(chan_t *ch, uv_stream_t *into);
/* Closes the channel; cb (may be NULL) runs with the pipe's handle. */
void chan_close(chan_t *ch, uv_close_cb cb);

#endif
