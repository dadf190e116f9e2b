/* config.c -- the server's settings: defaults, the command line, listen() options, and the worker's argv.
 *
 * One table describes every option once: its command-line name, its listen() name, its kind and where it
 * lives in mf_config_t. The master merges the script's listen() options under the command line's and
 * hands the result to each worker as explicit --name=value arguments, so workers never re-derive them. */
#include "config.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum opt_kind { OPT_HOST, OPT_INT, OPT_SECONDS, OPT_MILLIS, OPT_SIZE, OPT_STRING, OPT_FLAG, OPT_REDIS };

/* Who may set an option, and who gets it. */
#define F_WORKER 1 /* passed on to each worker */
#define F_HIDDEN 2 /* the master's to the worker; not in --help */

typedef struct {
  const char *name;   /* command line, without "--" */
  const char *lua;    /* listen() option name, NULL when the script may not set it */
  const char *lua2;   /* an alias */
  enum opt_kind kind;
  size_t offset;
  long min, max;
  int flags;
  const char *help;
} opt_t;

#define OFF(f) offsetof(mf_config_t, f)

static const opt_t opts[] = {
    {"host", "host", NULL, OPT_HOST, OFF(host), 0, 0, F_WORKER, "address to listen on (default 127.0.0.1)"},
    {"port", "port", NULL, OPT_INT, OFF(port), 0, 65535, F_WORKER, "TCP port, 0 for any free one (default 8080)"},
    {"workers", "nodes", "workers", OPT_INT, OFF(workers), 1, 1024, F_WORKER,
     "worker processes (default: online CPUs)"},
    {"grace", "grace", NULL, OPT_SECONDS, OFF(grace_ms), 0, 0, F_WORKER,
     "seconds in-flight requests get to finish at shutdown (default 10)"},
    /* The upper bounds are what the code can hold: a body becomes one Lua string, and both are
     * buffered per connection (a pipelined request's worth of input waits up to their sum). */
    {"max-header-size", "maxHeaderSize", NULL, OPT_SIZE, OFF(max_header_size), 256, 1L << 20, F_WORKER,
     "bytes of request line and headers, else 431 (default 16k, at most 1m)"},
    {"max-body", "maxBody", NULL, OPT_SIZE, OFF(max_body), 0, 1L << 30, F_WORKER,
     "bytes of request body, else 413 (default 1m, at most 1g)"},
    {"max-body-memory", "maxBodyMemory", NULL, OPT_SIZE, OFF(max_body_memory), 0, 1L << 36, F_WORKER,
     "bytes of request bodies a worker buffers at once; a new body past it gets 503 (default 256m)"},
    {"header-timeout", "headerTimeout", NULL, OPT_SECONDS, OFF(header_timeout_ms), 0, 0, F_WORKER,
     "seconds to receive a request's headers, else 408 (default 10)"},
    {"body-timeout", "bodyTimeout", NULL, OPT_SECONDS, OFF(body_timeout_ms), 0, 0, F_WORKER,
     "seconds to receive a whole request body, else 408, 0 = no limit (default 60)"},
    {"keepalive-timeout", "keepaliveTimeout", NULL, OPT_SECONDS, OFF(keepalive_timeout_ms), 0, 0, F_WORKER,
     "seconds an idle keep-alive connection stays open (default 5)"},
    {"request-timeout", "requestTimeout", NULL, OPT_SECONDS, OFF(request_timeout_ms), 0, 0, F_WORKER,
     "seconds a handler has to start its response, else 503 (default 60)"},
    {"send-timeout", "sendTimeout", NULL, OPT_SECONDS, OFF(send_timeout_ms), 0, 0, F_WORKER,
     "seconds a client may read nothing of a response before it is closed, 0 = never (default 60)"},
    {"resolver-ttl", "resolverTtl", NULL, OPT_SECONDS, OFF(resolver_ttl_ms), 0, 0, F_WORKER,
     "seconds a worker keeps the addresses of a host name its sockets resolved (default 5)"},
    {"max-connections", "maxConnections", NULL, OPT_INT, OFF(max_connections), 1, 1000000, F_WORKER,
     "open connections per worker before it stops accepting (default 10000)"},
    {"reuseport", "reuseport", NULL, OPT_FLAG, OFF(reuseport), 0, 0, F_WORKER,
     "a listening socket per worker (SO_REUSEPORT) instead of one shared"},
    {"sched-slice", "schedSlice", NULL, OPT_MILLIS, OFF(sched_slice_us), 100, 100000, F_WORKER,
     "CPU time slice a worker asks the kernel for, 0 = the kernel's (default 0.3)"},
    {"access-log", "accessLog", NULL, OPT_STRING, OFF(access_log), 0, 0, F_WORKER,
     "append a combined-format line per response to FILE"},
    {"error-log", "errorLog", NULL, OPT_STRING, OFF(error_log), 0, 0, F_WORKER,
     "write the log to FILE instead of stderr"},
    {"redis", "redis", NULL, OPT_REDIS, OFF(redis), 0, 0, F_WORKER,
     "Redis the hosts of a cluster share (redis://[:password@]host[:port][/db]): nodes:publish/subscribe"},
    {"watchdog", "watchdog", NULL, OPT_SECONDS, OFF(watchdog_ms), 0, 0, 0,
     "kill a worker whose loop is stuck this long, 0 = off (default 30)"},
    {"max-requests", "maxRequests", NULL, OPT_INT, OFF(max_requests), 0, 0x7fffffff, F_WORKER,
     "replace a worker after about N requests (with jitter), 0 = never"},
    {"max-memory", "maxMemory", NULL, OPT_INT, OFF(max_memory_mb), 0, 1 << 20, 0,
     "replace a worker whose RSS is over MB, 0 = never"},
    {"control", "control", NULL, OPT_STRING, OFF(control), 0, 0, 0,
     "control socket path (default: see the README)"},
    {"pid-file", "pidFile", NULL, OPT_STRING, OFF(pid_file), 0, 0, 0, "write the master's pid to FILE"},
    {"watch", "watch", NULL, OPT_FLAG, OFF(watch), 0, 0, 0, "reload when a .lua file of the app changes"},
    {"user", "user", NULL, OPT_STRING, OFF(user), 0, 0, 0, "run the workers as USER (after binding)"},
    {"group", "group", NULL, OPT_STRING, OFF(group), 0, 0, 0, "run the workers as GROUP"},
    /* Hidden: what the master tells each worker. */
    {"worker-id", NULL, NULL, OPT_INT, OFF(worker_id), 1, 1024, F_HIDDEN, NULL},
    {"master-pid", NULL, NULL, OPT_INT, OFF(master_pid), 1, 0x7fffffff, F_HIDDEN, NULL},
    {"serial", NULL, NULL, OPT_INT, OFF(serial), 1, 0x7fffffff, F_HIDDEN, NULL},
    {"sb-index", NULL, NULL, OPT_INT, OFF(sb_index), 1, 1023, F_HIDDEN, NULL},
};

_Static_assert(MF_ARRAY_SIZE(opts) <= 64, "from_cli has one bit per option");

void mf_config_defaults(mf_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  strcpy(cfg->host, "127.0.0.1");
  cfg->port = 8080;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n > 0 ? n : 1;
  cfg->grace_ms = 10000;
  cfg->max_header_size = 16 * 1024;
  cfg->max_body = 1024 * 1024;
  cfg->header_timeout_ms = 10000;
  cfg->keepalive_timeout_ms = 5000;
  cfg->request_timeout_ms = 60000;
  cfg->send_timeout_ms = 60000;
  cfg->body_timeout_ms = 60000;
  cfg->max_body_memory = 256 * 1024 * 1024;
  cfg->max_connections = 10000;
  cfg->watchdog_ms = 30000;
  cfg->sched_slice_us = 300;
  cfg->resolver_ttl_ms = 5000;
}

/* A size as the command line writes it: "1g", "1m", "64k" when whole, else bytes. */
static void size_text(long v, char *buf, size_t len) {
  if (v >= 1L << 30 && v % (1L << 30) == 0) snprintf(buf, len, "%ldg", v >> 30);
  else if (v >= 1L << 20 && v % (1L << 20) == 0) snprintf(buf, len, "%ldm", v >> 20);
  else if (v >= 1L << 10 && v % (1L << 10) == 0) snprintf(buf, len, "%ldk", v >> 10);
  else snprintf(buf, len, "%ld", v);
}

/* --redis: a redis:// URL (moonfork.redis parses the rest when a worker connects). 0 or -1. */
static int redis_url_check(const opt_t *o, const char *v, char *err, size_t errlen) {
  if (strncmp(v, "redis://", 8) == 0 && v[8] != '\0' && strpbrk(v, " \t\r\n") == NULL) return 0;
  snprintf(err, errlen, "bad value for %s: '%s' (a URL: redis://host:port)", o->name, v);
  return -1;
}

/* Stores `value` into the option; 0 or -1 with a reason. */
static int opt_set(mf_config_t *cfg, const opt_t *o, const char *value, char *err, size_t errlen) {
  void *field = (char *)cfg + o->offset;
  long l;
  uint64_t u;
  switch (o->kind) {
    case OPT_HOST:
      if (value[0] == '\0' || strlen(value) >= sizeof cfg->host) break;
      strcpy(field, value);
      return 0;
    case OPT_INT:
      if (mf_parse_int(value, o->min, o->max, &l) != 0) {
        snprintf(err, errlen, "bad value for %s: '%s' (a whole number from %ld to %ld)", o->name, value,
                 o->min, o->max);
        return -1;
      }
      *(long *)field = l;
      return 0;
    case OPT_SECONDS:
      if (mf_parse_seconds(value, &u) != 0) {
        snprintf(err, errlen, "bad value for %s: '%s' (seconds, e.g. 10 or 0.5)", o->name, value);
        return -1;
      }
      *(uint64_t *)field = u;
      return 0;
    case OPT_MILLIS: /* milliseconds, possibly fractional, stored in microseconds */
      if (mf_parse_seconds(value, &u) != 0 || (u != 0 && (u < (uint64_t)o->min || u > (uint64_t)o->max))) {
        snprintf(err, errlen, "bad value for %s: '%s' (milliseconds from %g to %g, e.g. 0.3, or 0)", o->name,
                 value, (double)o->min / 1000.0, (double)o->max / 1000.0);
        return -1;
      }
      *(uint64_t *)field = u;
      return 0;
    case OPT_REDIS:
      if (redis_url_check(o, value, err, errlen) != 0) return -1;
      /* fall through */
    case OPT_STRING:
      if (value[0] == '\0') break;
      *(char **)field = strdup(value);
      return 0;
    case OPT_FLAG:
      if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0) *(long *)field = 1;
      else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0) *(long *)field = 0;
      else break;
      return 0;
    case OPT_SIZE:
      if (mf_parse_size(value, &u) != 0 || u < (uint64_t)o->min || u > (uint64_t)o->max) {
        char lo[24], hi[24];
        size_text(o->min, lo, sizeof lo);
        size_text(o->max, hi, sizeof hi);
        snprintf(err, errlen, "bad value for %s: '%s' (bytes from %s to %s, e.g. 65536, 64k or 1m)", o->name,
                 value, lo, hi);
        return -1;
      }
      *(uint64_t *)field = u;
      return 0;
  }
  snprintf(err, errlen, "bad value for %s: '%s'", o->name, value);
  return -1;
}

int mf_config_parse_args(mf_config_t *cfg, int argc, char **argv, char *err, size_t errlen) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      cfg->want_help = 1;
      continue;
    }
    if (strcmp(a, "--version") == 0 || strcmp(a, "-v") == 0) {
      cfg->want_version = 1;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      if (i + 1 < argc) cfg->script = argv[++i];
      if (i + 1 < argc) goto extra;
      break;
    }
    if (a[0] == '-' && a[1] != '\0') {
      if (a[1] != '-') {
        snprintf(err, errlen, "unknown option '%s' (try --help)", a);
        return -1;
      }
      const char *name = a + 2, *eq = strchr(name, '=');
      size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
      const opt_t *o = NULL;
      for (size_t k = 0; k < MF_ARRAY_SIZE(opts); k++)
        if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, name, nlen) == 0) o = &opts[k];
      if (o == NULL) {
        snprintf(err, errlen, "unknown option '--%.*s' (try --help)", (int)nlen, name);
        return -1;
      }
      const char *value = eq ? eq + 1 : NULL;
      if (value == NULL && o->kind == OPT_FLAG) value = "true";
      if (value == NULL) {
        if (i + 1 >= argc) {
          snprintf(err, errlen, "option --%s needs a value", o->name);
          return -1;
        }
        value = argv[++i];
      }
      if (opt_set(cfg, o, value, err, errlen) != 0) return -1;
      cfg->from_cli |= (uint64_t)1 << (o - opts);
      continue;
    }
    if (cfg->script != NULL) goto extra;
    cfg->script = a;
  }
  return 0;
extra:
  snprintf(err, errlen, "only one script may be given ('%s' and '%s')", cfg->script, argv[argc - 1]);
  return -1;
}

int mf_config_set_from_script(mf_config_t *cfg, const char *key, const char *value, char *err,
                              size_t errlen) {
  for (size_t k = 0; k < MF_ARRAY_SIZE(opts); k++) {
    const opt_t *o = &opts[k];
    if (o->lua == NULL || (strcmp(o->lua, key) != 0 && (o->lua2 == NULL || strcmp(o->lua2, key) != 0)))
      continue;
    if (cfg->from_cli & ((uint64_t)1 << k)) return 0;
    char why[256];
    if (opt_set(cfg, o, value, why, sizeof why) != 0) {
      snprintf(err, errlen, "listen(): option %s: %s", key, why);
      return -1;
    }
    return 0;
  }
  return 1;
}

#define SHARED_MIN (32ULL << 10)
#define SHARED_MAX (16ULL << 30)

int mf_config_add_shared(mf_config_t *cfg, const char *name, const char *size, char *err, size_t errlen) {
  size_t n = strlen(name);
  int ok = n > 0 && n < sizeof cfg->shared[0].name && !(name[0] >= '0' && name[0] <= '9');
  for (size_t i = 0; ok && i < n; i++)
    ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
         (name[i] >= '0' && name[i] <= '9') || name[i] == '_';
  if (!ok) {
    snprintf(err, errlen, "listen(): shared dict name '%.80s' must be letters, digits and _ (not first a "
             "digit), at most 63 bytes", name);
    return -1;
  }
  uint64_t u;
  if (mf_parse_size(size, &u) != 0 || u < SHARED_MIN || u > SHARED_MAX) {
    snprintf(err, errlen, "listen(): shared dict %s: bad size '%.80s' (bytes from 32k to 16g, e.g. 512k or "
             "10m)", name, size);
    return -1;
  }
  for (int i = 0; i < cfg->nshared; i++)
    if (strcmp(cfg->shared[i].name, name) == 0) {
      cfg->shared[i].size = u;
      return 0;
    }
  if (cfg->nshared >= MF_SHARED_MAX) {
    snprintf(err, errlen, "listen(): at most %d shared dicts", MF_SHARED_MAX);
    return -1;
  }
  snprintf(cfg->shared[cfg->nshared].name, sizeof cfg->shared[0].name, "%s", name);
  cfg->shared[cfg->nshared++].size = u;
  return 0;
}

int mf_config_to_args(const mf_config_t *cfg, char **argv, int max) {
  int n = 0;
  for (size_t k = 0; k < MF_ARRAY_SIZE(opts) && n < max; k++) {
    const opt_t *o = &opts[k];
    const void *field = (const char *)cfg + o->offset;
    char buf[512];
    if (!(o->flags & F_WORKER)) continue; /* the hidden ones are the master's to add */
    switch (o->kind) {
      case OPT_STRING:
      case OPT_REDIS:
        if (*(char *const *)field == NULL) continue;
        snprintf(buf, sizeof buf, "--%s=%s", o->name, *(char *const *)field);
        break;
      case OPT_FLAG: snprintf(buf, sizeof buf, "--%s=%s", o->name, *(const long *)field ? "true" : "false"); break;
      case OPT_HOST: snprintf(buf, sizeof buf, "--%s=%s", o->name, (const char *)field); break;
      case OPT_INT: snprintf(buf, sizeof buf, "--%s=%ld", o->name, *(const long *)field); break;
      case OPT_SECONDS: /* ms, written as seconds */
      case OPT_MILLIS:  /* us, written as ms */
        snprintf(buf, sizeof buf, "--%s=%.3f", o->name, (double)*(const uint64_t *)field / 1000.0);
        break;
      case OPT_SIZE:
        snprintf(buf, sizeof buf, "--%s=%llu", o->name, (unsigned long long)*(const uint64_t *)field);
        break;
    }
    argv[n++] = strdup(buf);
  }
  return n;
}

void mf_config_usage(FILE *out) {
  fprintf(out,
          "usage: moonfork [options] SCRIPT.lua\n"
          "\n"
          "Starts a master that binds one socket and N worker processes that serve it, each running\n"
          "SCRIPT.lua's handler. Options override what the script passes to moonfork.listen().\n"
          "\n"
          "options:\n");
  for (size_t k = 0; k < MF_ARRAY_SIZE(opts); k++) {
    if (opts[k].help == NULL) continue;
    const char *arg = opts[k].kind == OPT_HOST      ? "HOST"
                      : opts[k].kind == OPT_SECONDS ? "SECONDS"
                      : opts[k].kind == OPT_MILLIS  ? "MS"
                      : opts[k].kind == OPT_SIZE    ? "BYTES"
                      : opts[k].kind == OPT_STRING  ? "VALUE"
                      : opts[k].kind == OPT_REDIS   ? "URL"
                      : opts[k].kind == OPT_FLAG    ? ""
                                                    : "N";
    char left[64];
    snprintf(left, sizeof left, "--%s %s", opts[k].name, arg);
    fprintf(out, "  %-28s %s\n", left, opts[k].help);
  }
  fprintf(out,
          "  %-28s %s\n  %-28s %s\n"
          "\n"
          "usage: moonfork status|reload|stop [--json] [--control PATH | --port PORT]\n"
          "       moonfork scale N [--control PATH | --port PORT]\n"
          "  talk to a running master through its control socket.\n"
          "\n"
          "signals to the master: TERM or INT = graceful stop (a second one stops at once), HUP = reload,\n"
          "TTIN / TTOU = one worker more / less, USR1 = reopen the log files\n",
          "--help", "this text", "--version", "print the version");
}
