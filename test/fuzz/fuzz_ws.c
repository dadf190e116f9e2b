/* fuzz_ws.c -- libFuzzer harness for the WebSocket codec (server/ws_frame.c) and permessage-deflate
 * (ws_deflate.c), fed from bytes.
 *
 * The input is read three ways. As a stream of client frames, the way ws_conn.c reads them: headers
 * parsed (with and without RSV1 allowed), payloads unmasked, text payloads fed to the UTF-8 checker a
 * frame at a time, close payloads checked. As a Sec-WebSocket-Extensions offer (negotiation). And as
 * the deflate payload of a compressed message, inflated under a 64 KiB bound. Beyond what ASan and
 * UBSan catch, the promises are checked: a parsed header lies within what was given, a control frame
 * is small and final, an inflate never passes its bound, a negotiated answer is one line. A broken
 * promise aborts, so libFuzzer keeps the input.
 *
 * Build and run: make fuzz (tools/run-fuzz: FUZZ_TARGETS=fuzz_ws for this one alone). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws_deflate.h"
#include "ws_frame.h"

#define PROMISE(cond) \
  if (!(cond)) abort()

static void frames(uint8_t *p, size_t n, int flags) {
  size_t off = 0;
  ws_utf8_t u = {0, 0, 0};
  while (off < n) {
    ws_frame_t f;
    int h = ws_frame_parse(p + off, n - off, flags, &f);
    if (h <= 0) {
      PROMISE(h == 0 || h == -WS_CLOSE_PROTOCOL);
      return;
    }
    PROMISE((size_t)h <= n - off && h >= 2 && h <= 14);
    PROMISE(!(f.opcode & 8) || (f.len <= 125 && f.fin));
    if (f.len > n - off - (size_t)h) return; /* the payload is still to come */
    uint8_t *payload = p + off + h;
    ws_frame_unmask(payload, (size_t)f.len, f.mask, 0);
    if (f.opcode == WS_OP_TEXT || f.opcode == WS_OP_CONT) {
      if (ws_utf8_feed(&u, payload, (size_t)f.len) != 0) memset(&u, 0, sizeof u);
    } else if (f.opcode == WS_OP_CLOSE) {
      unsigned code;
      int r = ws_close_parse(payload, (size_t)f.len, &code);
      PROMISE(r == 0 || r == -WS_CLOSE_PROTOCOL || r == -WS_CLOSE_BAD_DATA);
      PROMISE(r != 0 || code == WS_CLOSE_NO_STATUS || ws_close_code_ok(code));
    }
    off += (size_t)h + (size_t)f.len;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *copy = malloc(size ? size : 1);
  memcpy(copy, data, size);
  frames(copy, size, WS_PARSE_CLIENT);
  memcpy(copy, data, size);
  frames(copy, size, WS_PARSE_CLIENT | WS_PARSE_ALLOW_RSV1);
  free(copy);

  ws_deflate_params_t p;
  char out[160];
  if (ws_deflate_negotiate((const char *)data, size, &p, out, sizeof out)) {
    PROMISE(strchr(out, '\r') == NULL && strchr(out, '\n') == NULL && strncmp(out, "permessage-deflate", 18) == 0);
    PROMISE(p.server_max_window_bits >= 9 && p.server_max_window_bits <= 15);
  }

  ws_deflate_params_t none = {0, 0, 15};
  ws_deflate_t *z = ws_deflate_new(&none);
  if (z) {
    mf_buf_t msg;
    mf_buf_init(&msg);
    size_t cut = size ? data[0] % (size + 1) : 0; /* fed as two frames, split anywhere */
    int r = ws_inflate(z, data, cut, 0, &msg, 65536);
    if (r == 0) r = ws_inflate(z, data + cut, size - cut, 1, &msg, 65536);
    PROMISE(msg.len <= 65536 + 1);
    PROMISE(r == 0 || r == -WS_CLOSE_TOO_BIG || r == -WS_CLOSE_BAD_DATA);
    mf_buf_free(&msg);
    ws_deflate_free(z);
  }
  return 0;
}
