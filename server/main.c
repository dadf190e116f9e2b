/* main.c -- the command line: one binary is the master, or (when the master execs it) a worker. */
#include <stdio.h>

#include "config.h"
#include "master.h"
#include "worker.h"

int main(int argc, char **argv) {
  mf_config_t cfg;
  char err[512];
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
