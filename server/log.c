/* log.c -- one-line log records on stderr, stamped with the time and who wrote them. */
#include "log.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_prefix[64] = "master";

void mf_log_set_role(int worker_id) {
  if (worker_id == 0)
    snprintf(log_prefix, sizeof log_prefix, "master %d", (int)getpid());
  else
    snprintf(log_prefix, sizeof log_prefix, "worker %d %d", worker_id, (int)getpid());
}

static size_t log_stamp(char *buf, size_t size) {
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  return (size_t)snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ [%s] ", tm.tm_year + 1900,
                          tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                          (int)(tv.tv_usec / 1000), log_prefix);
}

static void log_write(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(STDERR_FILENO, buf, len);
    if (n <= 0) return; /* stderr gone: nothing better to do with a log line */
    buf += n;
    len -= (size_t)n;
  }
}

void mf_log(const char *fmt, ...) {
  char line[4096];
  size_t n = log_stamp(line, sizeof line);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  n += (size_t)m < sizeof line - n - 1 ? (size_t)m : sizeof line - n - 2;
  line[n++] = '\n';
  log_write(line, n);
}

void mf_log_block(const char *text) {
  /* The whole block goes out in one write so another process's lines cannot land inside it. */
  mf_buf_t out;
  char stamp[128];
  mf_buf_init(&out);
  for (const char *p = text; *p;) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    size_t n = log_stamp(stamp, sizeof stamp);
    if (mf_buf_append(&out, stamp, n) != 0 || mf_buf_append(&out, p, len) != 0 ||
        mf_buf_append(&out, "\n", 1) != 0)
      break;
    p += len + (nl ? 1 : 0);
  }
  log_write(out.data, out.len);
  mf_buf_free(&out);
}
