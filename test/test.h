/* test.h -- the smallest test harness: CHECK prints file:line and counts a failure; main returns it. */
#ifndef MOONFORK_TEST_H
#define MOONFORK_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failures;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      test_failures++;                                                      \
    }                                                                       \
  } while (0)

#define CHECK_STR(a, b)                                                              \
  do {                                                                               \
    const char *a_ = (a), *b_ = (b);                                                 \
    if (strcmp(a_, b_) != 0) {                                                       \
      fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__, b_, a_); \
      test_failures++;                                                               \
    }                                                                                \
  } while (0)

#define TEST_DONE()                                                  \
  do {                                                               \
    if (test_failures) fprintf(stderr, "%d check(s) failed\n", test_failures); \
    return test_failures ? 1 : 0;                                    \
  } while (0)

#endif
