/* config.h -- the server's settings: defaults, the command line, listen() options, and the worker's argv. */
#ifndef MOONFORK_CONFIG_H
#define MOONFORK_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifndef MOONFORK_VERSION
#define MOONFORK_VERSION "0.1.0"
#endif

#define MF_SHARED_MAX 32 /* shared dicts (listen()'s `shared` table) */

typedef struct {
  char host[256];
  long port;
  long workers;
  uint64_t grace_ms;
  uint64_t max_header_size;
  uint64_t max_body;
  uint64_t header_timeout_ms;
  uint64_t keepalive_timeout_ms;
  uint64_t request_timeout_ms;
  uint64_t send_timeout_ms; /* a client that reads none of its response for this long is closed */
  uint64_t body_timeout_ms; /* the whole of a request body must arrive within this */
  uint64_t resolver_ttl_ms; /* how long a worker caches a resolved host name (socket.lua) */
  uint64_t max_body_memory; /* request bodies one worker buffers at once */
  long max_connections;
  long reuseport;      /* a listening socket per worker slot (reuseport.c) */
  uint64_t sched_slice_us; /* the CPU time slice workers ask for, 0 = the kernel's (cpuslice.c) */
  char *control;      /* control socket path (NULL: the default for the port) */
  char *redis;        /* --redis URL: the Redis the hosts of a cluster share (nodes:publish, the chat) */
  char *pid_file;
  char *access_log;
  char *error_log;
  char *user, *group; /* workers run as these */
  long watch;         /* reload when the script's .lua files change */
  uint64_t watchdog_ms;
  long max_requests;
  long max_memory_mb;
  const char *script; /* points into argv */
  /* Bit i set: option i of the table was given on the command line (it beats listen()). */
  uint64_t from_cli;
  /* Worker only: set by the hidden --worker-id / --master-pid options the master passes. */
  long worker_id;
  long master_pid;
  long serial; /* the master's spawn count: a later worker has a higher one */
  long sb_index; /* this worker's entry in the scoreboard */
  int want_help, want_version;
  /* listen({shared = {name = size}}): the shared dicts the master makes (shdict_region.c) */
  struct {
    char name[64];
    uint64_t size;
  } shared[MF_SHARED_MAX];
  int nshared;
} mf_config_t;

void mf_config_defaults(mf_config_t *cfg);

/* Parses argv into cfg. Returns 0, or -1 with a one-line reason in err. */
int mf_config_parse_args(mf_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* Sets one option by its listen() name (e.g. "maxBody", "nodes") unless the command line already set it.
 * Returns 0, 1 when the name is unknown, or -1 with a reason in err when the value is bad. */
int mf_config_set_from_script(mf_config_t *cfg, const char *key, const char *value, char *err,
                              size_t errlen);

/* Adds a shared dict from listen()'s `shared` table: name ([A-Za-z_][A-Za-z0-9_]*, at most 63 bytes)
 * and size (bytes, or "512k", "10m", "1g"; from 32k to 16g). Returns 0, or -1 with a reason in err. */
int mf_config_add_shared(mf_config_t *cfg, const char *name, const char *size, char *err, size_t errlen);

/* Writes the options a worker needs as "--name=value" strings into argv (caller frees each string).
 * Returns how many were written (at most max). */
int mf_config_to_args(const mf_config_t *cfg, char **argv, int max);

void mf_config_usage(FILE *out);


#endif
