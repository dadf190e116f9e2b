/* test_config.c -- unit tests for server/config.c: command line, listen() options, worker argv. */
#include <stdlib.h>

#include "../server/config.h"
#include "test.h"

static int parse(mf_config_t *cfg, char **argv, int argc, char *err) {
  mf_config_defaults(cfg);
  return mf_config_parse_args(cfg, argc, argv, err, 256);
}

int main(void) {
  mf_config_t cfg;
  char err[256];

  char *a1[] = {"moonfork", "--port", "9000", "--workers=3", "--grace", "0.25", "--max-body", "2k", "app.lua"};
  CHECK(parse(&cfg, a1, 9, err) == 0);
  CHECK(cfg.port == 9000 && cfg.workers == 3 && cfg.grace_ms == 250 && cfg.max_body == 2048);
  CHECK_STR(cfg.script, "app.lua");
  CHECK_STR(cfg.host, "127.0.0.1");

  /* listen() options fill in only what the command line left alone */
  CHECK(mf_config_set_from_script(&cfg, "port", "7000", err, sizeof err) == 0);
  CHECK(cfg.port == 9000);
  CHECK(mf_config_set_from_script(&cfg, "host", "0.0.0.0", err, sizeof err) == 0);
  CHECK_STR(cfg.host, "0.0.0.0");
  CHECK(mf_config_set_from_script(&cfg, "nodes", "5", err, sizeof err) == 0);
  CHECK(cfg.workers == 3);
  CHECK(mf_config_set_from_script(&cfg, "keepaliveTimeout", "2", err, sizeof err) == 0);
  CHECK(cfg.keepalive_timeout_ms == 2000);
  CHECK(mf_config_set_from_script(&cfg, "schedSlice", "1.5", err, sizeof err) == 0);
  CHECK(cfg.sched_slice_us == 1500);
  CHECK(mf_config_set_from_script(&cfg, "noSuchOption", "1", err, sizeof err) == 1);
  CHECK(mf_config_set_from_script(&cfg, "maxConnections", "lots", err, sizeof err) == -1);
  CHECK(strstr(err, "maxConnections") != NULL);

  /* what a worker gets round-trips to the same settings */
  char *wargv[40];
  wargv[0] = "moonfork";
  int n = mf_config_to_args(&cfg, wargv + 1, 38);
  wargv[n + 1] = "app.lua";
  mf_config_t w;
  CHECK(parse(&w, wargv, n + 2, err) == 0);
  CHECK(w.port == cfg.port && w.workers == cfg.workers && w.grace_ms == cfg.grace_ms);
  CHECK(w.max_body == cfg.max_body && w.keepalive_timeout_ms == cfg.keepalive_timeout_ms);
  CHECK(w.sched_slice_us == 1500);
  CHECK_STR(w.host, cfg.host);
  for (int i = 1; i <= n; i++) free(wargv[i]);

  char *bad1[] = {"moonfork", "--workers", "abc", "app.lua"};
  CHECK(parse(&cfg, bad1, 4, err) == -1 && strstr(err, "workers") != NULL);
  char *bad2[] = {"moonfork", "--port", "70000", "app.lua"};
  CHECK(parse(&cfg, bad2, 4, err) == -1 && strstr(err, "port") != NULL);
  char *bad3[] = {"moonfork", "--frobnicate", "app.lua"};
  CHECK(parse(&cfg, bad3, 3, err) == -1 && strstr(err, "unknown option") != NULL);
  char *bad4[] = {"moonfork", "--port"};
  CHECK(parse(&cfg, bad4, 2, err) == -1 && strstr(err, "needs a value") != NULL);
  char *bad5[] = {"moonfork", "a.lua", "b.lua"};
  CHECK(parse(&cfg, bad5, 3, err) == -1);
  char *bad6[] = {"moonfork", "-x", "a.lua"};
  CHECK(parse(&cfg, bad6, 3, err) == -1);
  /* --sched-slice: milliseconds, kept in microseconds; 0, or the kernel's 0.1..100 ms */
  char *s1[] = {"moonfork", "app.lua"};
  CHECK(parse(&cfg, s1, 2, err) == 0 && cfg.sched_slice_us == 300);
  char *s2[] = {"moonfork", "--sched-slice", "0", "app.lua"};
  CHECK(parse(&cfg, s2, 4, err) == 0 && cfg.sched_slice_us == 0);
  char *s3[] = {"moonfork", "--sched-slice=0.1", "app.lua"};
  CHECK(parse(&cfg, s3, 3, err) == 0 && cfg.sched_slice_us == 100);
  char *s4[] = {"moonfork", "--sched-slice", "0.05", "app.lua"};
  CHECK(parse(&cfg, s4, 4, err) == -1 && strstr(err, "sched-slice") != NULL);
  char *s5[] = {"moonfork", "--sched-slice", "100.5", "app.lua"};
  CHECK(parse(&cfg, s5, 4, err) == -1 && strstr(err, "0.1 to 100") != NULL);
  char *s6[] = {"moonfork", "--sched-slice", "fast", "app.lua"};
  CHECK(parse(&cfg, s6, 4, err) == -1);
  /* the size options' upper bounds (what the code can hold) and the connection timeouts */
  char *z1[] = {"moonfork", "--max-body", "1g", "--max-header-size", "1m", "app.lua"};
  CHECK(parse(&cfg, z1, 6, err) == 0 && cfg.max_body == 1u << 30 && cfg.max_header_size == 1u << 20);
  char *z2[] = {"moonfork", "--max-body", "2g", "app.lua"};
  CHECK(parse(&cfg, z2, 4, err) == -1 && strstr(err, "max-body") != NULL && strstr(err, "0 to 1g") != NULL);
  char *z3[] = {"moonfork", "--max-header-size=1025k", "app.lua"};
  CHECK(parse(&cfg, z3, 3, err) == -1 && strstr(err, "256 to 1m") != NULL);
  CHECK(parse(&cfg, s1, 2, err) == 0 && cfg.send_timeout_ms == 60000 && cfg.body_timeout_ms == 60000);
  CHECK(cfg.max_body_memory == 256u << 20);
  CHECK(mf_config_set_from_script(&cfg, "sendTimeout", "1.5", err, sizeof err) == 0 && cfg.send_timeout_ms == 1500);
  CHECK(mf_config_set_from_script(&cfg, "maxBody", "3g", err, sizeof err) == -1 && strstr(err, "maxBody") != NULL);
  char *help[] = {"moonfork", "--help"};
  CHECK(parse(&cfg, help, 2, err) == 0 && cfg.want_help);
  TEST_DONE();
}
