/* mesh_frame.h -- the mesh's frame codec: a 4-byte big-endian length, then that many bytes. */
#ifndef MOONFORK_MESH_FRAME_H
#define MOONFORK_MESH_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util.h"

#define MESH_FRAME_HEAD 4

/* Writes the length prefix of a len-byte message into hdr. */
static inline void mesh_frame_encode(unsigned char hdr[MESH_FRAME_HEAD], uint32_t len) {
  hdr[0] = (unsigned char)(len >> 24);
  hdr[1] = (unsigned char)(len >> 16);
  hdr[2] = (unsigned char)(len >> 8);
  hdr[3] = (unsigned char)len;
}

/* The length in the prefix at p (MESH_FRAME_HEAD bytes). */
static inline uint32_t mesh_frame_len(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Called with each whole message; returns nonzero to stop splitting (the reader is closing). */
typedef int (*mesh_frame_cb)(void *arg, const char *msg, size_t len);

/* Calls on_frame for each whole frame at the front of data. Returns the bytes taken (whole frames
 * only: a partial frame at the end is left), or UV_EMSGSIZE when a length is over max. */
ssize_t mesh_frame_split(const char *data, size_t len, uint32_t max, mesh_frame_cb on_frame, void *arg);

/* Moves bytes from *data into `in` (which holds the start of one frame) until it holds the whole
 * frame, advancing *data and *len. Returns 1 when the frame is whole (the message is at in->data +
 * MESH_FRAME_HEAD), 0 when it needs more input, UV_EMSGSIZE when its length is over max, UV_ENOMEM. */
int mesh_frame_fill(mf_buf_t *in, const char **data, size_t *len, uint32_t max);

/* The bytes the frame starting with the `have` bytes at p needs in all (MESH_FRAME_HEAD while its
 * length is not known yet). */
static inline size_t mesh_frame_need(const char *p, size_t have) {
  return have >= MESH_FRAME_HEAD ? MESH_FRAME_HEAD + (size_t)mesh_frame_len(p) : MESH_FRAME_HEAD;
}

#endif
