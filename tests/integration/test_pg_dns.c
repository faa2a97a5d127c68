/*
 * test_pg_dns - PostgreSQL host names are resolved on the loop, never by
 * libpq (issue 14, finding 4). The control plane's database conninfos name
 * the server "pg.stampcp.test", which only the test's slow DNS server
 * (tests/support/slowdns.py, "dns.resolvConf") knows and answers after 5 s.
 * While PostgreSQL restarts and every pool reconnects (each attempt resolving
 * the name again, 5 s), sequential /healthz requests keep a p99 under 50 ms;
 * the reconnects went through the slow server (its log counts the queries)
 * and the pools come back (readyz 200, admin reads work).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

#define PG_NAME "pg.stampcp.test"
#define DNS_DELAY_MS 5000
#define HEALTHZ_P99_MS 50
#define MAX_SAMPLES 20000

static struct ts_pgserver *pg;
static struct ts_cp *cp;
static const char *dns_log;

static const char *by_name(const char *db)
{
    return ts_str("host=" PG_NAME " port=%d user=postgres dbname=%s", pg->port, db);
}

static int group_setup(void **state)
{
    struct ts_cp_opts o = {.geo_ids = {"eu", NULL}, .plain_http = true};
    const char *g = ts_unique("global"), *eu = ts_unique("eu");
    (void)state;
    o.resolv_conf = ts_slowdns_start(PG_NAME, DNS_DELAY_MS, &dns_log);
    pg = ts_pgserver_start("dns");
    ts_pg_create_db(pg->conninfo, g);
    ts_pg_create_db(pg->conninfo, eu);
    o.global_db = by_name(g);
    o.geo_dbs[0] = by_name(eu);
    /* a connect attempt includes its resolution: more than the resolver's 5 s */
    o.extra_json = ts_json("'db':{'connectTimeoutMs':9000}");
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 30000))
        return -1;
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* One sequential /healthz; its latency appended. */
static void sample(int64_t *lat, int *n)
{
    int64_t t0 = ts_now_ms();
    struct ts_resp *r = ts_http(cp->port, "GET", "/healthz", NULL, NULL, 0);
    if (r->status != 200)
        ts_fail("/healthz answered %d during the reconnect", r->status);
    if (*n < MAX_SAMPLES)
        lat[(*n)++] = ts_now_ms() - t0;
    ts_resp_free(r);
    ts_sleep_ms(5);
}

static void test_reconnect_through_slow_resolver(void **state)
{
    static int64_t lat[MAX_SAMPLES];
    int n = 0, q0;
    int64_t t0, end, back = -1, p99;
    (void)state;

    if (ts_slowdns_queries(dns_log, PG_NAME) < 1)
        ts_fail("the first connects did not resolve " PG_NAME " through the slow DNS server");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions", NULL), 200);
    q0 = ts_slowdns_queries(dns_log, PG_NAME);

    ts_pgserver_stop(pg, "fast");       /* every pool connection drops and reconnects */
    end = ts_now_ms() + 2000;
    while (ts_now_ms() < end)
        sample(lat, &n);
    ts_pgserver_restart(pg);
    t0 = ts_now_ms();
    end = t0 + 25000;
    while (ts_now_ms() < end && back < 0) {
        sample(lat, &n);
        if (n % 20 == 0 && ts_get(cp, "/readyz")->status == 200)
            back = ts_now_ms() - t0;
    }
    if (back < 0)
        ts_fail("not ready 25 s after PostgreSQL came back");
    qsort(lat, (size_t)n, sizeof lat[0], cmp_i64);
    p99 = lat[(n * 99) / 100];
    ts_log("/healthz: %d samples, p50 %lld ms, p99 %lld ms, max %lld ms; ready %lld ms after the restart; "
           "%d DNS queries for " PG_NAME " during the reconnect", n, (long long)lat[n / 2], (long long)p99,
           (long long)lat[n - 1], (long long)back, ts_slowdns_queries(dns_log, PG_NAME) - q0);
    if (ts_slowdns_queries(dns_log, PG_NAME) <= q0)
        ts_fail("the reconnects did not resolve " PG_NAME " through the slow DNS server");
    if (p99 >= HEALTHZ_P99_MS)
        ts_fail("/healthz p99 %lld ms >= %d ms while resolving slowly: the loop is blocked", (long long)p99,
                HEALTHZ_P99_MS);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions", NULL), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reconnect_through_slow_resolver),
    };
    ts_init("test_pg_dns");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
