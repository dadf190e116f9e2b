/* mesh.h -- the worker mesh: one Unix-domain stream per pair of live workers, framed messages. */
#ifndef MOONFORK_MESH_H
#define MOONFORK_MESH_H

#include <stddef.h>
#include <uv.h>

#define MESH_MAX_MESSAGE (16u * 1024 * 1024) /* a message up to this arrives whole */
#define MESH_HIGH_WATER (4u * 1024 * 1024)   /* queued bytes above which write says "slow down" */
#define MESH_HARD_LIMIT (64u * 1024 * 1024)  /* queued bytes at which a peer that does not read is dropped */

typedef struct mesh_peer_s mesh_peer_t;

typedef struct {
  void (*on_peer)(void *data, mesh_peer_t *p);                              /* a peer joined */
  void (*on_message)(void *data, mesh_peer_t *p, const char *msg, size_t len); /* one whole message */
  void (*on_drain)(void *data, mesh_peer_t *p);                            /* queue back under high water */
  void (*on_closed)(void *data, mesh_peer_t *p);                           /* gone; p is freed after */
} mesh_callbacks_t;

void mesh_init(uv_loop_t *loop, const mesh_callbacks_t *cb, void *data);
/* Called when a stream to a live peer is dropped at MESH_HARD_LIMIT: ask for a new one (worker.c). */
typedef void (*mesh_repair_cb)(int id, long serial);
void mesh_set_repair(mesh_repair_cb repair);
/* Takes over `pipe` (an accepted, open uv_pipe_t the mesh now owns and frees) as the stream to worker
 * `id`, spawned as number `serial`; while an older stream to `id` is open or closing, it waits for
 * that one's end. */
void mesh_add_peer(uv_pipe_t *pipe, int id, long serial);
/* Queues one message. Returns 1 when sent, 0 when sent but the queue is over high water (on_drain
 * follows), UV_EPIPE when the peer is gone, UV_EMSGSIZE when the message is over MESH_MAX_MESSAGE
 * (nothing sent). */
int mesh_peer_write(mesh_peer_t *p, const char *msg, size_t len);
void mesh_peer_close(mesh_peer_t *p);
int mesh_peer_id(const mesh_peer_t *p);
long mesh_peer_serial(const mesh_peer_t *p);
int *mesh_peer_user_ref(mesh_peer_t *p);

#endif
