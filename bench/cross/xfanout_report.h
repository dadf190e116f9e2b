/* bench/cross/xfanout_report.h: the end of an xfanout run: the order check, the percentiles, the summary
 * and the RESULT line. Included once, by xfanout.c (one translation unit: it reads xfanout.c's globals). */

/* One global order: every client's sequence against client 0's (the first client that got anything);
 * a delivery that comes before one client 0 had it after counts as a disagreement. */
static long order_disagreements(void) {
  int *rank = malloc(sizeof(int) * nmsg), ref = -1;
  long bad = 0;
  if (!rank) die("malloc");
  for (int i = 0; i < o_clients && ref < 0; i++) if (cl[i].count) ref = i;
  for (int k = 0; k < nmsg; k++) rank[k] = -1;
  for (int j = 0; ref >= 0 && j < cl[ref].count; j++) rank[cl[ref].order[j]] = j;
  for (int i = 0; ref >= 0 && i < o_clients; i++) {
    int last = -1;
    for (int j = 0; j < cl[i].count; j++) {
      int r = rank[cl[i].order[j]];
      if (r < 0) continue;
      if (r < last) bad++; else last = r;
    }
  }
  free(rank);
  return bad;
}

static int cmpf(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return x < y ? -1 : x > y; }
static double pct(float *s, long n, double p) {
  if (!n) return NAN;
  long i = (long)ceil(p / 100 * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return s[i];
}
static void jnum(FILE *f, const char *k, double v) {
  if (isnan(v)) fprintf(f, ",\"%s\":null", k); else fprintf(f, ",\"%s\":%.3f", k, v);
}

static void dump_messages(void) {
  FILE *f = fopen(o_dump, "w");
  if (!f) { perror(o_dump); return; }
  for (int k = 0; k < nmsg; k++)
    if (ksent[k]) fprintf(f, "%d %.3f %.3f\n", k, (ksent[k] - ksent[0]) / 1e9, kmax[k]);
  fclose(f);
}

static void finish(void) {
  finishing = 1;
  if (o_dump) dump_messages();
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  qsort(lat_a, nlat, sizeof *lat_a, cmpf);
  qsort(lat_r, nlat, sizeof *lat_r, cmpf);
  qsort(lat_x, nlat_x, sizeof *lat_x, cmpf);
  qsort(post_lat, npost_lat, sizeof *post_lat, cmpf);
  long expected = (long)post_ok * connected_at_start;
  long lost = expected > received ? expected - received : 0;
  double window = (last_delivery_mono - first_send) / 1e9;
  long dps = window > 0 ? lround(received / window) : 0;
  int minc = -1, maxc = 0;
  for (int i = 0; i < o_clients; i++) if (cl[i].ok) {
    if (minc < 0 || cl[i].count < minc) minc = cl[i].count;
    if (cl[i].count > maxc) maxc = cl[i].count;
  }
  double mean = 0; for (long i = 0; i < nlat; i++) mean += lat_a[i]; mean = nlat ? mean / nlat : NAN;
  if (!o_quiet) {
    printf("clients %d/%d connected (conn errors %d, non-200 %d, streams closed during run %d)\n",
           connected_at_start, o_clients, conn_errors, non200, dropped);
    printf("messages sent %d (2xx: %d, failed: %d, not sent: publisher saturated %d) at %g/s for %g s\n", sent,
           post_ok, post_fail, post_skipped, o_rate, o_dur);
    printf("deliveries expected %ld, received %ld, lost %ld, duplicates %ld, out-of-order %ld", expected, received,
           lost, duplicates, out_of_order);
    if (foreign) printf(", other events %ld", foreign);
    if (reconnects) printf(", reconnects %d", reconnects);
    printf("\ndeliveries/s %ld (window %.2f s); per client min %d max %d\n", dps, window, minc < 0 ? 0 : minc, maxc);
    printf("latency ms (arrival): p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n", pct(lat_a, nlat, 50),
           pct(lat_a, nlat, 90), pct(lat_a, nlat, 99), nlat ? lat_a[nlat - 1] : NAN, mean);
    printf("latency ms (cross-host arrival, %ld): p50 %.3f  p99 %.3f\n", nlat_x, pct(lat_x, nlat_x, 50), pct(lat_x, nlat_x, 99));
    printf("order disagreements with client 0's order: %ld\n", order_disagreements());
    if (overlapping) printf("overlapping posts %d (the order check assumes none)\n", overlapping);
    printf("latency ms (read):    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", pct(lat_r, nlat, 50),
           pct(lat_r, nlat, 90), pct(lat_r, nlat, 99), nlat ? lat_r[nlat - 1] : NAN);
    printf("POST round trip ms: p50 %.3f  p99 %.3f; load generator CPU %.2f s\n", pct(post_lat, npost_lat, 50),
           pct(post_lat, npost_lat, 99), cpu);
  }
  printf("RESULT {\"label\":\"%s\",\"clients\":%d,\"connected\":%d,\"conn_errors\":%d,\"non_200\":%d,"
         "\"dropped_streams\":%d,\"reconnects\":%d,\"rate\":%g,\"duration\":%g,\"sent\":%d,\"post_ok\":%d,\"post_fail\":%d,\"post_skipped\":%d,"
         "\"expected\":%ld,\"received\":%ld,\"lost\":%ld,\"duplicates\":%ld,\"out_of_order\":%ld,"
         "\"deliveries_per_s\":%ld",
         o_label, o_clients, connected_at_start, conn_errors, non200, dropped, reconnects, o_rate, o_dur, sent, post_ok, post_fail, post_skipped,
         expected, received, lost, duplicates, out_of_order, dps);
  jnum(stdout, "p50_ms", pct(lat_a, nlat, 50)); jnum(stdout, "p90_ms", pct(lat_a, nlat, 90));
  jnum(stdout, "p99_ms", pct(lat_a, nlat, 99)); jnum(stdout, "max_ms", nlat ? lat_a[nlat - 1] : NAN);
  jnum(stdout, "mean_ms", mean);
  jnum(stdout, "cross_p50_ms", pct(lat_x, nlat_x, 50)); jnum(stdout, "cross_p99_ms", pct(lat_x, nlat_x, 99));
  printf(",\"cross_deliveries\":%ld,\"overlapping_posts\":%d,\"order_disagreements\":%ld,\"hosts\":%d", nlat_x,
         overlapping, order_disagreements(), nh);
  jnum(stdout, "read_p50_ms", pct(lat_r, nlat, 50)); jnum(stdout, "read_p99_ms", pct(lat_r, nlat, 99));
  jnum(stdout, "read_max_ms", nlat ? lat_r[nlat - 1] : NAN);
  jnum(stdout, "post_p50_ms", pct(post_lat, npost_lat, 50)); jnum(stdout, "post_p99_ms", pct(post_lat, npost_lat, 99));
  printf(",\"per_client_min\":%d,\"per_client_max\":%d,\"loadgen_cpu_s\":%.3f}\n", minc < 0 ? 0 : minc, maxc, cpu);
  fflush(stdout);
  exit(0);
}
