/* bench/cross/xfanout_report.h: the end of an xfanout run: the order check, the per-message dump and
 * what the summary and the RESULT line add to bench/chat/fanout_core.h's. Included once, by xfanout.c
 * (one translation unit: it reads xfanout.c's globals). */

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

static void dump_messages(void) {
  FILE *f = fopen(o_dump, "w");
  if (!f) { perror(o_dump); return; }
  for (int k = 0; k < nmsg; k++)
    if (ksent[k]) fprintf(f, "%d %.3f %.3f\n", k, (ksent[k] - ksent[0]) / 1e9, kmax[k]);
  fclose(f);
}

static void finish(void) {
  report_t r;
  finishing = 1;
  if (o_dump) dump_messages();
  report_prepare(&r);
  qsort(lat_x, nlat_x, sizeof *lat_x, cmpf);
  if (!o_quiet) {
    report_head(&r, "2xx");
    printf("latency ms (cross-host arrival, %ld): p50 %.3f  p99 %.3f\n", nlat_x, pct(lat_x, nlat_x, 50), pct(lat_x, nlat_x, 99));
    printf("order disagreements with client 0's order: %ld\n", order_disagreements());
    if (overlapping) printf("overlapping posts %d (the order check assumes none)\n", overlapping);
    report_tail(&r);
  }
  result_head(&r);
  jnum(stdout, "cross_p50_ms", pct(lat_x, nlat_x, 50)); jnum(stdout, "cross_p99_ms", pct(lat_x, nlat_x, 99));
  printf(",\"cross_deliveries\":%ld,\"overlapping_posts\":%d,\"order_disagreements\":%ld,\"hosts\":%d", nlat_x,
         overlapping, order_disagreements(), nh);
  result_tail(&r);
  exit(0);
}
