/* main.c -- the command line: the master, a worker (when the master execs it), or a control command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "control.h"
#include "master.h"
#include "status.h"
#include "util.h"
#include "worker.h"

static const char *const commands[] = {"status", "reload", "scale", "stop"};

/* Prints a status reply as a table (the reply is JSON; --json prints it as it came). */
static void print_status(const char *json) {
  /* A small scan for the master's fields: the reply's shape is ours (status.c). */
  const char *p = strstr(json, "\"master\":{");
  int pid = 0, workers = 0;
  double up = 0;
  unsigned long long restarts = 0;
  char url[300] = "";
  if (p) {
    sscanf(strstr(p, "\"pid\":") ? strstr(p, "\"pid\":") : "", "\"pid\":%d", &pid);
    sscanf(strstr(p, "\"uptime\":") ? strstr(p, "\"uptime\":") : "", "\"uptime\":%lf", &up);
    sscanf(strstr(p, "\"url\":\"") ? strstr(p, "\"url\":\"") : "", "\"url\":\"%299[^\"]", url);
    sscanf(strstr(p, "\"workers\":") ? strstr(p, "\"workers\":") : "", "\"workers\":%d", &workers);
    sscanf(strstr(p, "\"restarts\":") ? strstr(p, "\"restarts\":") : "", "\"restarts\":%llu", &restarts);
  }
  printf("master  pid %d, up %.0f s, %s, %d workers, %llu restarts%s\n", pid, up, url, workers, restarts,
         strstr(json, "\"reloading\":true") ? ", reloading" : "");
  status_print_workers(stdout, json);
}

/* What the client expects of the master: the port given with --port (or the default one, when the
 * socket is found from it), the pid in --pid-file. 0, or -1 with err set. */
static int command_expect(const mf_config_t *cfg, control_expect_t *expect, char *err, size_t errlen) {
  expect->port = cfg->port >= 0 ? cfg->port : cfg->control ? 0 : 8080;
  expect->pid = 0;
  if (cfg->pid_file) {
    FILE *f = fopen(cfg->pid_file, "r");
    int got = f != NULL && fscanf(f, "%ld", &expect->pid) == 1 && expect->pid > 0;
    if (f != NULL) fclose(f);
    if (!got) {
      snprintf(err, errlen, "cannot read a pid from --pid-file %s", cfg->pid_file);
      return -1;
    }
  }
  return 0;
}

/* A control command's own arguments (N for scale, --json) into request and *json; the rest are ordinary
 * options (--control, --port, --pid-file), which give the control socket's path and what to expect
 * of the master there. Returns 0, or the exit status after a message on stderr. */
static int parse_command(int argc, char **argv, char *request, size_t reqlen, int *json, char *path,
                         size_t pathlen, control_expect_t *expect) {
  const char *cmd = argv[1];
  mf_config_t cfg;
  char err[512];
  char **rest = malloc((size_t)argc * sizeof *rest);
  int nrest = 0, scale = strcmp(cmd, "scale") == 0;
  long n = 0;
  if (rest == NULL) return 1;
  mf_config_defaults(&cfg);
  cfg.port = -1; /* to tell whether --port was given */
  rest[nrest++] = argv[0];
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      *json = 1;
    } else if (scale && argv[i][0] != '-' && n == 0) {
      if (mf_parse_int(argv[i], 1, 1024, &n) != 0) {
        snprintf(err, sizeof err, "scale needs a worker count from 1 to 1024, not '%s'", argv[i]);
        goto fail;
      }
    } else {
      rest[nrest++] = argv[i];
    }
  }
  if (scale && n == 0) {
    snprintf(err, sizeof err, "usage: moonfork scale N [--control PATH | --port PORT]");
    goto fail;
  }
  if (mf_config_parse_args(&cfg, nrest, rest, err, sizeof err) != 0) goto fail;
  if (cfg.script != NULL) {
    snprintf(err, sizeof err, "a control command takes no script");
    goto fail;
  }
  free(rest);
  if (scale) snprintf(request, reqlen, "scale %ld", n);
  else snprintf(request, reqlen, "%s", cmd);
  int r = command_expect(&cfg, expect, err, sizeof err) != 0 ||
          control_path(cfg.control, cfg.port >= 0 ? cfg.port : 8080, 0, path, pathlen, err, sizeof err) != 0;
  free(cfg.control); /* the option strings are copies (a sanitized build counts them) */
  free(cfg.pid_file);
  if (r) fprintf(stderr, "moonfork: %s\n", err);
  return r;
fail:
  free(rest);
  fprintf(stderr, "moonfork: %s\n", err);
  return 2;
}

/* Prints the reply to cmd: the error (stderr), the JSON (--json), the table (status) or the message. */
static void print_reply(const char *cmd, const char *reply, int ok, int json) {
  if (json || !ok) {
    const char *e = strstr(reply, "\"error\":\"");
    if (!ok && e) {
      e += 9;
      const char *end = strstr(e, "\"}");
      fprintf(stderr, "moonfork: %s failed: %.*s\n", cmd, end ? (int)(end - e) : (int)strlen(e), e);
    } else if (!ok) {
      fprintf(stderr, "moonfork: %s failed: %s", cmd, reply);
    }
    if (json) fputs(reply, stdout);
    return;
  }
  const char *m = strstr(reply, "\"message\":\"");
  if (strcmp(cmd, "status") == 0) {
    print_status(reply);
  } else if (m) {
    m += 11;
    const char *end = strchr(m, '"');
    printf("%s: %.*s\n", cmd, end ? (int)(end - m) : (int)strlen(m), m);
  } else if (strcmp(cmd, "reload") == 0) {
    printf("reload: done\n");
  } else {
    fputs(reply, stdout);
  }
}

/* moonfork status|reload|scale N|stop [--json] [--control PATH] [--port PORT] */
static int run_command(int argc, char **argv) {
  const char *cmd = argv[1];
  char request[64], path[512], err[512];
  int json = 0;
  control_expect_t expect;
  int r = parse_command(argc, argv, request, sizeof request, &json, path, sizeof path, &expect);
  if (r != 0) return r;
  /* a reload waits for every worker to be replaced: allow for slow starts */
  char *reply = control_request(path, request, &expect, strcmp(cmd, "reload") == 0 ? 600000 : 30000, err, sizeof err);
  if (reply == NULL) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  int ok = strstr(reply, "\"ok\":true") != NULL;
  print_reply(cmd, reply, ok, json);
  free(reply);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  mf_config_t cfg;
  char err[512];
  if (argc > 1)
    for (size_t i = 0; i < MF_ARRAY_SIZE(commands); i++)
      if (strcmp(argv[1], commands[i]) == 0) return run_command(argc, argv);
  mf_config_defaults(&cfg);
  if (mf_config_parse_args(&cfg, argc, argv, err, sizeof err) != 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 2;
  }
  if (cfg.want_help) {
    mf_config_usage(stdout);
    return 0;
  }
  if (cfg.want_version) {
    printf("moonfork %s\n", MOONFORK_VERSION);
    return 0;
  }
  if (cfg.script == NULL) {
    fprintf(stderr, "moonfork: no script given (usage: moonfork [options] SCRIPT.lua; try --help)\n");
    return 2;
  }
  if (cfg.worker_id > 0) return worker_run(&cfg);
  return master_run(&cfg);
}
