/* http_alog.c -- the access log: one combined-format line per response.
 *
 * What a line needs from the request (request line, referer, user agent) is copied at dispatch,
 * because the request's memory is reused before the response ends. Lines gather in one buffer per
 * worker and go out with one write per loop turn: with O_APPEND, lines from several workers never
 * interleave. */
#include <string.h>
#include <unistd.h>

#include "http_internal.h"

static void on_flush(uv_prepare_t *p) { http_alog_flush(mf_container_of(p, http_server_t, flush)); }

void http_alog_flush(http_server_t *srv) {
  if (srv->access.len == 0) return;
  ssize_t n = write(srv->access_fd, srv->access.data, srv->access.len);
  (void)n; /* a full disk loses log lines, not requests */
  mf_buf_reset(&srv->access, 64 * 1024);
}

void http_server_set_access_log(http_server_t *srv, int fd) {
  if (srv->access_fd >= 0 && fd != srv->access_fd) http_alog_flush(srv); /* nothing buffered is lost */
  srv->access_fd = fd;
  if (fd >= 0 && !uv_is_active((uv_handle_t *)&srv->flush)) uv_prepare_start(&srv->flush, on_flush);
}

/* Appends s with quotes, backslashes and control bytes escaped (as nginx does). */
static void alog_escape(mf_buf_t *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
      mf_buf_appendf(b, "\\x%02X", ch);
    else
      mf_buf_append(b, s + i, 1);
  }
}

/* The value of header `name` escaped, or "-"; then the '\0' that ends the field. */
static void alog_header(mf_buf_t *b, const http_parse_t *p, const char *name) {
  size_t vlen;
  const char *v = http_parse_find(p, name, &vlen);
  if (v) alog_escape(b, v, vlen);
  else mf_buf_append(b, "-", 1);
  mf_buf_append(b, "", 1);
}

/* At dispatch: keeps what the log line needs from the request, which is freed before the response. */
void http_alog_request(http_conn_t *c, const char *method) {
  mf_buf_t *b = &c->rq->alog;
  size_t url_len;
  const char *url = http_parse_url(&c->rq->parser, &url_len);
  b->len = 0;
  alog_escape(b, method, strlen(method));
  mf_buf_append(b, " ", 1);
  alog_escape(b, url, url_len);
  mf_buf_appendf(b, " HTTP/%d.%d", c->rq->parser.llhttp.http_major, c->rq->parser.llhttp.http_minor);
  mf_buf_append(b, "", 1);
  alog_header(b, &c->rq->parser, "referer");
  alog_header(b, &c->rq->parser, "user-agent");
}

/* Combined log format: host - - [time] "request" status bytes "referer" "user agent" */
void http_alog_response(http_conn_t *c) {
  http_server_t *srv = c->srv;
  if (srv->access_fd < 0 || c->rq == NULL || c->rq->alog.len == 0) return;
  time_t now = time(NULL);
  if (now != srv->alog_at) {
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(srv->alog_time, sizeof srv->alog_time, "%d/%b/%Y:%H:%M:%S %z", &tm);
    srv->alog_at = now;
  }
  const char *req = c->rq->alog.data;
  const char *ref = req + strlen(req) + 1;
  const char *ua = ref + strlen(ref) + 1;
  char bytes[24] = "-";
  if (c->bytes_out > 0) snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)c->bytes_out);
  mf_buf_appendf(&srv->access, "%s - - [%s] \"%s\" %d %s \"%s\" \"%s\"\n", http_conn_remote(c), srv->alog_time, req,
                 c->status, bytes, ref, ua);
  c->rq->alog.len = 0;
}
