/* mesh_frame.c -- the mesh's frame codec: a 4-byte big-endian length, then that many bytes.
 *
 * Pure functions, apart from mesh.c's sockets and callbacks, so the cases a stream can bring (frames
 * split anywhere, several in one read, a length over the limit) are tested without an event loop. */
#include "mesh_frame.h"

#include <uv.h>

ssize_t mesh_frame_split(const char *data, size_t len, uint32_t max, mesh_frame_cb on_frame, void *arg) {
  size_t taken = 0;
  while (len - taken >= MESH_FRAME_HEAD) {
    uint32_t n = mesh_frame_len(data + taken);
    if (n > max) return UV_EMSGSIZE;
    if (len - taken - MESH_FRAME_HEAD < n) break;
    int stop = on_frame(arg, data + taken + MESH_FRAME_HEAD, n);
    taken += MESH_FRAME_HEAD + n;
    if (stop) break;
  }
  return (ssize_t)taken;
}

static void fill_take(mf_buf_t *in, const char **data, size_t *len, size_t want) {
  size_t take = want - in->len < *len ? want - in->len : *len;
  mf_buf_append(in, *data, take); /* room was reserved */
  *data += take;
  *len -= take;
}

int mesh_frame_fill(mf_buf_t *in, const char **data, size_t *len, uint32_t max) {
  if (in->len < MESH_FRAME_HEAD) { /* even the length was split */
    if (mf_buf_reserve(in, MESH_FRAME_HEAD) != 0) return UV_ENOMEM;
    fill_take(in, data, len, MESH_FRAME_HEAD);
    if (in->len < MESH_FRAME_HEAD) return 0;
  }
  uint32_t n = mesh_frame_len(in->data);
  if (n > max) return UV_EMSGSIZE;
  size_t want = MESH_FRAME_HEAD + (size_t)n;
  if (in->cap < want && mf_buf_reserve(in, want - in->len) != 0) return UV_ENOMEM;
  fill_take(in, data, len, want);
  return in->len == want;
}
