/* test_chanset.c -- the channel table ws_chan.c and http_chan.c share (server/chanset.c), without a
 * connection: owners are plain ints. Joins and leaves, each owner's list of memberships, the holes a
 * leave makes during a publish and the compaction after, a channel freed only once its publish ends,
 * the walk that visits every member once from a rotating start, the messages kept for after a publish,
 * and a table of many channels. */
#include <stdio.h>
#include <stdlib.h>

#include "../server/chanset.h"
#include "test.h"

#define S(x) x, sizeof x - 1

static chanset_t set;

/* The owners a full walk of ch visits, in order, into out; returns how many. */
static size_t walk_all(chanset_chan_t *ch, void **out, size_t max) {
  chanset_walk_t w;
  size_t k = 0;
  chanset_walk_init(&w, ch);
  for (chanset_member_t *m; (m = chanset_walk_next(&w)) != NULL;)
    if (k < max) out[k++] = m->owner;
  return k;
}

static void test_join_leave(void) {
  int a, b, c;
  chanset_member_t *la = NULL, *lb = NULL, *lc = NULL;
  CHECK(chanset_join(&set, &la, &a, 7, S("room")) == 1);
  CHECK(la != NULL && la->owner == &a && la->tag == 7);
  CHECK(chanset_join(&set, &la, &a, 7, S("room")) == 0); /* a member already */
  CHECK(chanset_join(&set, &lb, &b, 0, S("room")) == 1);
  CHECK(chanset_join(&set, &lc, &c, 0, S("room")) == 1);
  CHECK(chanset_join(&set, &lc, &c, 0, S("lobby")) == 1);
  CHECK(lc->chan->nlen == 5 && lc->next->chan->nlen == 4); /* the newest membership first */
  CHECK(chanset_count(&set, S("room")) == 3 && chanset_count(&set, S("lobby")) == 1);
  CHECK(chanset_count(&set, S("roo")) == 0 && chanset_count(&set, S("none")) == 0); /* names are whole */
  CHECK(chanset_find(&set, S("room")) != NULL && chanset_find(&set, S("rooms")) == NULL);
  /* a leaves from the front of the array: the last member takes its place */
  CHECK(chanset_leave(&set, &la, S("room")) == 1 && la == NULL);
  CHECK(chanset_leave(&set, &la, S("room")) == 0);
  CHECK(chanset_leave(&set, &lb, S("lobby")) == 0);
  chanset_chan_t *room = chanset_find(&set, S("room"));
  CHECK(room->n == 2 && room->members[0]->owner == &c && room->members[0]->idx == 0);
  CHECK(room->members[1]->owner == &b && room->members[1]->idx == 1);
  chanset_leave_all(&set, &lc);
  CHECK(lc == NULL && chanset_count(&set, S("lobby")) == 0 && chanset_find(&set, S("lobby")) == NULL);
  CHECK(chanset_leave(&set, &lb, S("room")) == 1);
  CHECK(chanset_find(&set, S("room")) == NULL && set.count == 0); /* the empty channel is gone */
  CHECK(chanset_join(&set, &lb, &b, 0, S("room")) == 1);         /* and made again */
  chanset_leave_all(&set, &lb);
  CHECK(set.count == 0);
}

/* Members that leave during a publish leave holes: the walk skips them and visits the others once, the
 * count leaves them out, and chanset_end closes the array up (and frees a channel left empty). */
static void test_holes(void) {
  enum { N = 6 };
  int o[N];
  chanset_member_t *l[N] = {0};
  for (int i = 0; i < N; i++) CHECK(chanset_join(&set, &l[i], &o[i], 0, S("h")) == 1);
  chanset_chan_t *ch = chanset_find(&set, S("h"));
  chanset_begin(ch);
  chanset_walk_t w;
  chanset_walk_init(&w, ch);
  size_t seen = 0;
  int late = 0;
  chanset_member_t *late_list = NULL;
  for (chanset_member_t *m; (m = chanset_walk_next(&w)) != NULL;) {
    seen++;
    if (seen == 1) { /* the first one visited makes two others leave, and one joins */
      for (int i = 0, gone = 0; i < N && gone < 2; i++)
        if (&o[i] != m->owner && l[i] != NULL) chanset_leave_all(&set, &l[i]), gone++;
      CHECK(chanset_join(&set, &late_list, &late, 0, S("h")) == 1);
    }
    CHECK(m->owner != &late); /* who joined meanwhile waits for the next walk */
  }
  CHECK(seen == N - 2);
  CHECK(ch->holes == 2 && ch->n == N + 1 && chanset_chan_count(ch) == N - 1);
  chanset_end(&set, ch);
  CHECK(ch->holes == 0 && ch->n == N - 1);
  int ok = 1;
  for (size_t i = 0; i < ch->n; i++) ok &= ch->members[i]->idx == i && ch->members[i]->owner != NULL;
  CHECK(ok);
  /* everyone leaves during a publish: the channel outlives it and goes at its end */
  chanset_begin(ch);
  for (int i = 0; i < N; i++) chanset_leave_all(&set, &l[i]);
  chanset_leave_all(&set, &late_list);
  CHECK(chanset_find(&set, S("h")) == ch && chanset_count(&set, S("h")) == 0);
  chanset_end(&set, ch);
  CHECK(chanset_find(&set, S("h")) == NULL && set.count == 0);
}

/* Each walk visits every member once, in array order from a start that wraps round, and the start
 * moves on from one walk to the next: a new channel starts at its first member. */
static void test_rotation(void) {
  enum { N = 10, ROUNDS = 8 };
  int o[N];
  chanset_member_t *l[N] = {0};
  for (int i = 0; i < N; i++) CHECK(chanset_join(&set, &l[i], &o[i], 0, S("rot")) == 1);
  chanset_chan_t *ch = chanset_find(&set, S("rot"));
  int starts = 0, cyclic = 1;
  for (int r = 0; r < ROUNDS; r++) {
    void *seen[N + 1];
    chanset_begin(ch);
    size_t k = walk_all(ch, seen, N + 1);
    chanset_end(&set, ch);
    CHECK(k == N);
    size_t first = (size_t)((int *)seen[0] - o);
    for (size_t j = 0; j < N; j++) cyclic &= seen[j] == ch->members[(first + j) % N]->owner;
    if (r == 0) CHECK(first == 0);
    starts |= 1 << first;
  }
  CHECK(cyclic);
  CHECK(__builtin_popcount((unsigned)starts) >= ROUNDS / 2); /* the start moved */
  for (int i = 0; i < N; i++) chanset_leave_all(&set, &l[i]);
  CHECK(set.count == 0);
}

/* What is published during a publish is kept, in order, and taken out one by one. */
static void test_later(void) {
  int a;
  chanset_member_t *la = NULL;
  CHECK(chanset_join(&set, &la, &a, 0, S("l")) == 1);
  chanset_chan_t *ch = chanset_find(&set, S("l"));
  CHECK(chanset_later_take(ch) == NULL);
  chanset_begin(ch);
  CHECK(chanset_later_add(ch, 1, S("one")) == 0);
  CHECK(chanset_later_add(ch, 2, S("")) == 0);
  chanset_later_t *x = chanset_later_take(ch);
  CHECK(x && x->kind == 1 && x->len == 3 && memcmp(x->data, "one", 3) == 0);
  free(x);
  CHECK(chanset_later_add(ch, 3, S("three")) == 0); /* added while the queue is being taken */
  x = chanset_later_take(ch);
  CHECK(x && x->kind == 2 && x->len == 0);
  free(x);
  x = chanset_later_take(ch);
  CHECK(x && x->kind == 3 && x->len == 5);
  free(x);
  CHECK(chanset_later_take(ch) == NULL);
  CHECK(chanset_later_add(ch, 4, S("4")) == 0); /* the queue works again once emptied */
  x = chanset_later_take(ch);
  CHECK(x && x->kind == 4);
  free(x);
  chanset_end(&set, ch);
  chanset_leave_all(&set, &la);
  CHECK(set.count == 0);
}

/* 1,000 channels of 3 members each (the table grows from 64 buckets), found again, then all left. */
static void test_many(void) {
  enum { N = 1000 };
  int o[3];
  chanset_member_t *l[3] = {0};
  char name[32];
  for (int i = 0; i < N; i++) {
    int n = snprintf(name, sizeof name, "ch-%d", i);
    for (int k = 0; k < 3; k++) CHECK(chanset_join(&set, &l[k], &o[k], 0, name, (size_t)n) == 1);
  }
  CHECK(set.count == N && set.nbuckets >= N);
  int ok = 1;
  for (int i = 0; i < N; i++) {
    int n = snprintf(name, sizeof name, "ch-%d", i);
    ok &= chanset_count(&set, name, (size_t)n) == 3;
  }
  CHECK(ok);
  for (int k = 0; k < 3; k++) chanset_leave_all(&set, &l[k]);
  CHECK(set.count == 0 && chanset_count(&set, S("ch-500")) == 0);
}

int main(void) {
  test_join_leave();
  test_holes();
  test_rotation();
  test_later();
  test_many();
  TEST_DONE();
}
