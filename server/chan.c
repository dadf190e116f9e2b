/* chan.c -- the master<->child channel: one table of line messages, their parser, a reader, senders.
 *
 * The master and each child it starts share a socketpair (the child's end is MF_FD_CONTROL). Both
 * sides speak short text lines, "name arg..." with decimal arguments, and some lines carry a
 * descriptor (SCM_RIGHTS through libuv's IPC pipes): a mesh socket, a client connection. Every message
 * is one row of the table below, so the parser, the formatter and the unit test (test/test_chan.c)
 * agree by construction, and a malformed line is rejected in one place rather than half-read by a
 * sscanf on one side. */
#include "chan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"
#include "writeq.h"

#define CHAN_MAX_ARGS 3

typedef struct {
  size_t off; /* of the int64_t field in chan_msg_t */
  int64_t min, max;
} chan_arg_t;

#define ARG(field, lo, hi) {offsetof(chan_msg_t, field), (lo), (hi)}

static const struct {
  const char *name;
  int nargs;
  int fd;   /* a descriptor comes with it */
  int text; /* the rest of the line is free text */
  chan_arg_t args[CHAN_MAX_ARGS];
} chan_table[CHAN_NTYPES] = {
    [CHAN_READY] = {"ready", 0, 0, 0, {{0}}},
    [CHAN_ERROR] = {"error", 0, 0, 1, {{0}}},
    [CHAN_RECYCLE] = {"recycle", 1, 0, 0, {ARG(count, 0, INT64_MAX)}},
    [CHAN_RETIRE] = {"retire", 0, 0, 0, {{0}}},
    [CHAN_STOP] = {"stop", 0, 0, 0, {{0}}},
    [CHAN_PEER] = {"peer", 2, 1, 0, {ARG(id, 1, CHAN_MAX_ID), ARG(serial, 1, INT64_MAX)}},
    [CHAN_LEADER] = {"leader", 3, 0, 0,
                     {ARG(id, 1, CHAN_MAX_ID), ARG(serial, 1, INT64_MAX), ARG(epoch, 1, INT64_MAX)}},
    [CHAN_CONN] = {"conn", 0, 1, 0, {{0}}},
    [CHAN_REPAIR] = {"repair", 2, 0, 0, {ARG(id, 1, CHAN_MAX_ID), ARG(serial, 1, INT64_MAX)}},
};

static int64_t *arg_field(chan_msg_t *m, const chan_arg_t *a) { return (int64_t *)((char *)m + a->off); }

int chan_has_fd(chan_type_t type) { return type > CHAN_BAD && type < CHAN_NTYPES && chan_table[type].fd; }

const char *chan_name(chan_type_t type) {
  return type > CHAN_BAD && type < CHAN_NTYPES ? chan_table[type].name : "?";
}

/* A decimal number of 1 to 19 digits in [min, max], ending at a space or the end; *p moves past it. */
static int parse_number(const char **p, const chan_arg_t *a, int64_t *out) {
  const char *s = *p;
  uint64_t v = 0;
  int digits = 0;
  for (; *s >= '0' && *s <= '9'; s++, digits++) {
    if (digits == 19) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  if (digits == 0 || (*s != ' ' && *s != '\0') || v > (uint64_t)INT64_MAX) return -1;
  if ((int64_t)v < a->min || (int64_t)v > a->max) return -1;
  *out = (int64_t)v;
  *p = s;
  return 0;
}

static int parse_args(int type, const char *p, chan_msg_t *m) {
  if (chan_table[type].text) {
    if (*p == ' ') p++;
    else if (*p != '\0') return -1;
    snprintf(m->text, sizeof m->text, "%s", p);
    return 0;
  }
  for (int i = 0; i < chan_table[type].nargs; i++) {
    if (*p++ != ' ') return -1;
    if (parse_number(&p, &chan_table[type].args[i], arg_field(m, &chan_table[type].args[i])) != 0) return -1;
  }
  return *p == '\0' ? 0 : -1;
}

int chan_parse(const char *line, chan_msg_t *m) {
  memset(m, 0, offsetof(chan_msg_t, text) + 1);
  size_t n = strcspn(line, " ");
  for (int type = CHAN_BAD + 1; type < CHAN_NTYPES; type++) {
    if (strlen(chan_table[type].name) != n || memcmp(chan_table[type].name, line, n) != 0) continue;
    if (parse_args(type, line + n, m) != 0) break;
    m->type = (chan_type_t)type;
    return 0;
  }
  m->type = CHAN_BAD;
  snprintf(m->text, sizeof m->text, "%s", line);
  return -1;
}

int chan_format(const chan_msg_t *m, char *buf, size_t len) {
  if (m->type <= CHAN_BAD || m->type >= CHAN_NTYPES) return -1;
  int type = m->type;
  mf_buf_t b;
  mf_buf_init(&b);
  mf_buf_appendf(&b, "%s", chan_table[type].name);
  for (int i = 0; i < chan_table[type].nargs; i++) {
    const chan_arg_t *a = &chan_table[type].args[i];
    int64_t v = *arg_field((chan_msg_t *)m, a);
    if (v < a->min || v > a->max) goto fail;
    mf_buf_appendf(&b, " %lld", (long long)v);
  }
  if (chan_table[type].text) {
    if (strchr(m->text, '\n')) goto fail;
    mf_buf_appendf(&b, " %s", m->text);
  }
  if (b.data == NULL || b.len + 2 > len || b.len + 1 > CHAN_LINE_MAX) goto fail;
  memcpy(buf, b.data, b.len);
  buf[b.len] = '\n';
  buf[b.len + 1] = '\0';
  int n = (int)b.len + 1;
  mf_buf_free(&b);
  return n;
fail:
  mf_buf_free(&b);
  return -1;
}

void chan_reader_feed(chan_reader_t *r, const char *p, size_t n, chan_line_cb on_line, void *data) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\n') {
      r->line[r->len] = '\0';
      r->len = 0;
      on_line(data, r->line);
    } else if (r->len < sizeof r->line - 1) {
      r->line[r->len++] = p[i];
    }
  }
}

/* ---- the channel on a libuv pipe ------------------------------------------------------------- */

static void on_line(void *data, const char *line) {
  chan_t *ch = data;
  chan_msg_t m;
  chan_parse(line, &m);
  ch->on_msg(ch, &m);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char b[4096]; /* lines are copied out by the reader before the next read */
  (void)h, (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  chan_t *ch = s->data;
  if (n < 0) {
    uv_read_stop(s);
    ch->on_eof(ch, (int)n);
    return;
  }
  chan_reader_feed(&ch->reader, buf->base, (size_t)n, on_line, ch);
}

int chan_open(chan_t *ch, uv_loop_t *loop, int fd, chan_msg_cb on_msg, chan_eof_cb on_eof, void *data) {
  ch->reader.len = 0;
  ch->on_msg = on_msg;
  ch->on_eof = on_eof;
  ch->data = data;
  uv_pipe_init(loop, &ch->pipe, 1);
  ch->pipe.data = ch;
  int r = uv_pipe_open(&ch->pipe, fd);
  if (r != 0) {
    close(fd);
    return r;
  }
  return uv_read_start((uv_stream_t *)&ch->pipe, on_alloc, on_read);
}

int chan_is_open(const chan_t *ch) {
  return ch->on_msg != NULL && !uv_is_closing((const uv_handle_t *)&ch->pipe);
}

void chan_close(chan_t *ch, uv_close_cb cb) {
  if (chan_is_open(ch)) uv_close((uv_handle_t *)&ch->pipe, cb);
}

static void on_queued(uv_write_t *req, int status) {
  (void)status; /* a channel that cannot be written is closing: its owner learns it from the read side */
  mf_writeq_done(req);
}

int chan_send(chan_t *ch, const chan_msg_t *m) {
  char line[CHAN_LINE_MAX + 1];
  int n = chan_format(m, line, sizeof line);
  if (n < 0) return UV_EINVAL;
  if (!chan_is_open(ch)) return UV_EPIPE;
  uv_buf_t b = uv_buf_init(line, (unsigned)n);
  return mf_writeq((uv_stream_t *)&ch->pipe, &b, 1, on_queued);
}

/* A line with a descriptor: uv_write2 needs the descriptor in a handle of its own, and the line and
 * the handle live until the write is done. */
typedef struct {
  uv_write_t req;
  uv_pipe_t handle;
  char line[CHAN_LINE_MAX + 1];
} chan_fd_send_t;

static void on_fd_handle_closed(uv_handle_t *h) { free(mf_container_of(h, chan_fd_send_t, handle)); }

static void on_fd_sent(uv_write_t *req, int status) {
  chan_fd_send_t *fs = mf_container_of(req, chan_fd_send_t, req);
  (void)status; /* the receiver is gone: its exit is handled elsewhere, and the descriptor closes here */
  uv_close((uv_handle_t *)&fs->handle, on_fd_handle_closed);
}

int chan_send_fd(chan_t *ch, const chan_msg_t *m, int fd) {
  chan_fd_send_t *fs = malloc(sizeof *fs);
  int n = fs ? chan_format(m, fs->line, sizeof fs->line) : -1;
  int r = fs == NULL ? UV_ENOMEM : n < 0 ? UV_EINVAL : !chan_is_open(ch) ? UV_EPIPE : 0;
  if (r != 0) goto fail_free;
  uv_pipe_init(ch->pipe.loop, &fs->handle, 0);
  r = uv_pipe_open(&fs->handle, fd);
  if (r != 0) goto fail_close;
  uv_buf_t b = uv_buf_init(fs->line, (unsigned)n);
  r = uv_write2(&fs->req, (uv_stream_t *)&ch->pipe, &b, 1, (uv_stream_t *)&fs->handle, on_fd_sent);
  if (r != 0) goto fail_handle;
  return 0;
fail_close:
  close(fd);
fail_handle:
  uv_close((uv_handle_t *)&fs->handle, on_fd_handle_closed);
  return r;
fail_free:
  free(fs);
  close(fd);
  return r;
}

int chan_accept(chan_t *ch, uv_stream_t *into) {
  if (uv_pipe_pending_count(&ch->pipe) < 1) return UV_ENOENT;
  return uv_accept((uv_stream_t *)&ch->pipe, into);
}
