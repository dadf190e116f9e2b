/* test_status.c -- unit tests for server/status.c: the status JSON and `moonfork status`'s table come
 * from one table of fields, so the table printed from a reply shows what the reply said. */
#include <stdlib.h>

#include "../server/scoreboard.h"
#include "../server/status.h"
#include "test.h"

static void test_reply(void) {
  mf_buf_t b;
  mf_buf_init(&b);
  status_reply(&b, 0, "error", "bad \"name\"\n");
  CHECK_STR(b.data, "{\"ok\":false,\"error\":\"bad \\\"name\\\"\\u000a\"}");
  mf_buf_free(&b);
  mf_buf_init(&b);
  status_reply(&b, 1, "message", "3 workers (was 2)");
  CHECK_STR(b.data, "{\"ok\":true,\"message\":\"3 workers (was 2)\"}");
  mf_buf_free(&b);
}

/* A group of two fake children (never spawned: pid 0 has no /proc entry, so rss is 0). */
static void test_json_and_table(void) {
  static group_t g;
  static child_t c[2];
  static scoreboard_entry_t sb[2];
  uv_loop_t *loop = uv_default_loop();
  uv_update_time(loop);
  g.loop = loop;
  g.nslots = 2;
  for (int i = 0; i < 2; i++) {
    c[i].group = &g;
    c[i].id = i + 1;
    c[i].serial = 10 + i;
    c[i].handles_open = 1;
    c[i].state = i ? CHILD_STARTING : CHILD_READY;
    c[i].started_ms = uv_now(loop) - 3000;
    c[i].data = &sb[i];
    sb[i].requests = 100 * (uint64_t)(i + 1);
    sb[i].connections = (uint64_t)(3 * i);
    sb[i].websockets = (uint64_t)(2 * i);
    sb[i].yields = 7;
  }
  c[1].next = &c[0]; /* newest first */
  g.children = &c[1];
  mf_buf_t b;
  mf_buf_init(&b);
  status_master_t m = {.pid = 42, .uptime = 5.0, .url = "http://127.0.0.1:8080", .restarts = 1};
  status_json(&b, &m, &g);
  mf_buf_append(&b, "", 1);
  CHECK_STR(b.data,
            "{\"ok\":true,\"master\":{\"pid\":42,\"uptime\":5.0,\"url\":\"http://127.0.0.1:8080\",\"workers\":2,"
            "\"restarts\":1,\"reloading\":false},\"workers\":["
            "{\"id\":1,\"pid\":0,\"serial\":10,\"state\":\"ready\",\"uptime\":3.0,\"requests\":100,"
            "\"connections\":0,\"websockets\":0,\"rss_kb\":0,\"yields\":7},"
            "{\"id\":2,\"pid\":0,\"serial\":11,\"state\":\"starting\",\"uptime\":3.0,\"requests\":200,"
            "\"connections\":3,\"websockets\":2,\"rss_kb\":0,\"yields\":7}]}");
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  status_print_workers(out, b.data);
  fclose(out);
  CHECK_STR(text,
            "  id      pid  serial state        uptime   requests   conns       rss\n"
            "   1        0      10 ready            3s        100       0     0.0MB\n"
            "   2        0      11 starting         3s        200       3     0.0MB\n");
  free(text);
  mf_buf_free(&b);
}

int main(void) {
  test_reply();
  test_json_and_table();
  TEST_DONE();
}
