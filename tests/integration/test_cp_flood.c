/*
 * test_cp_flood - the control plane under an unauthenticated flood of
 * made-up tenant ids (docs/security.md, "Control plane under flood"):
 *
 *  - coalescing: 40 concurrent lookups of one unknown tenant id, while the
 *    catalog query is held up by a lock, make exactly one query; all 40 get
 *    401 invalid_signature;
 *  - the flood: 20,000 device requests for random tenant ids over 6
 *    concurrent connections while another client keeps locating 20 real,
 *    already placed devices: every real lookup answers 200, every flood
 *    request 401 invalid_signature (never a 5xx), the negative cache sits at
 *    its cap (tenants.negativeCacheSize) with evictions, the control plane's
 *    count of catalog queries stays within the token bucket's bound
 *    (burst + rate x elapsed), and so does the global database's own
 *    xact_commit count (pg_stat_database), far below one per request;
 *  - with the budget spent, an unknown id is refused without a query (the
 *    refused counter moves, the query counter does not), while the operator
 *    still gets an honest 404 for an unknown tenant.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "ts.h"

/* One TLS handshake per request: under ASan the control plane's side of
 * 20,000 takes about 4 minutes, so the sanitizer build floods less. */
#ifdef __SANITIZE_ADDRESS__
#define FLOOD_N 6000
#else
#define FLOOD_N 20000
#endif
#define FLOOD_THREADS 6
#define REAL_DEVICES 20
#define NEG_CAP 20
#define RATE 2      /* a slow refill keeps the bucket empty once spent */
#define BURST 50

static struct ts_rt *rt;
static struct ts_cp *cp;
static struct ts_tenant *acme;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = {
        .ncp = 1, .geos = { "eu", NULL },
        .extra_json = ts_str("\"tenantCacheTtlMs\": 1000, \"tenants\": {\"negativeCacheSize\": %d,"
                             " \"unknownFetchesPerSecond\": %d, \"unknownFetchBurst\": %d}",
                             NEG_CAP, RATE, BURST),
    };
    (void)state;
    rt = ts_rt_start_fleet_with(&o, &layout);
    cp = rt->cp[0];
    acme = ts_rt_tenant_acme(cp);
    for (int i = 0; i < REAL_DEVICES; i++)
        TS_EXPECT_STATUS(ts_rt_locate(cp, acme, ts_str("real-%d", i)), 200);
    return 0;
}

/* readyz's tenantCache counters */
static json_t *tenant_stats(void)
{
    struct ts_resp *r = ts_get(cp, "/readyz");
    json_t *tc = r->json ? json_object_get(r->json, "tenantCache") : NULL;
    if (r->status != 200 || !json_is_object(tc))
        ts_fail("readyz has no tenantCache: %s", ts_resp_str(r));
    return tc;
}

static long stat(const char *name)
{
    json_int_t v = ts_jint(tenant_stats(), name, -1);
    if (v < 0)
        ts_fail("tenantCache.%s missing", name);
    return (long)v;
}

static long global_xacts(void)
{
    return ts_pg_count(cp->global_db,
                       "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()");
}

/* A well-formed SAS for a tenant id the catalog doesn't have (any key: it
 * would fail verification, were the tenant ever found). */
static const char *stranger_sas(const char *tenant, const char *regid)
{
    static const unsigned char key[32] = {1, 2, 3};
    return ts_rt_sas_custom(key, sizeof key, regid, ts_str("%s/registrations/%s", tenant, regid), 0,
                            "registration");
}

static bool inflight_one(void *arg)
{
    (void)arg;
    return stat("inflight") == 1;
}

static void test_coalescing(void **state)
{
    enum { N = 40 };
    struct ts_rt_job jobs[N];
    struct ts_rt_batch *b;
    long q0 = stat("queries"), c0 = stat("coalesced");
    PGconn *lock = ts_pg_connect(cp->global_db);
    PGresult *res;
    (void)state;

    /* Hold the catalog query up so that every lookup arrives while it runs. */
    res = PQexec(lock, "BEGIN; LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].port = cp->port;
        jobs[i].path = ts_str("/v1/tenants/ghost-one/registrations/d%d/locate", i);
        jobs[i].authz = stranger_sas("ghost-one", ts_str("d%d", i));
    }
    b = ts_rt_batch_start(jobs, N, N);
    if (!ts_wait_until(inflight_one, NULL, 10000))
        ts_fail("the catalog query for ghost-one never started");
    /* Every request is in (40 connections, one per thread): let them queue up. */
    for (int tries = 0; tries < 100 && stat("coalesced") - c0 < N - 1; tries++)
        ts_sleep_ms(50);
    res = PQexec(lock, "COMMIT");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQfinish(lock);
    ts_rt_batch_wait(b);
    for (int i = 0; i < N; i++) {
        if (jobs[i].ans.status != 401 || !ts_rt_answer_code(&jobs[i].ans) ||
            strcmp(ts_rt_answer_code(&jobs[i].ans), "invalid_signature") != 0)
            ts_fail("ghost-one request %d: expected 401 invalid_signature, got %d %s", i, jobs[i].ans.status,
                    jobs[i].ans.body);
    }
    ts_log("40 concurrent lookups of one unknown id: queries +%ld, coalesced +%ld", stat("queries") - q0,
           stat("coalesced") - c0);
    assert_int_equal(stat("queries") - q0, 1);
    assert_int_equal(stat("coalesced") - c0, N - 1);
    /* Now it is in the negative cache: no query at all. */
    TS_EXPECT_ERROR(ts_rt_device(cp, "locate", "ghost-one", "d99", stranger_sas("ghost-one", "d99"), NULL), 401,
                    "invalid_signature");
    assert_int_equal(stat("queries") - q0, 1);
}

/* ---- the flood ---- */

struct real_client {
    volatile int stop;
    long ok, bad;
    int first_bad_status;
    char first_bad_body[256];
    char paths[REAL_DEVICES][96];
    char authz[REAL_DEVICES][400];
};

static void *real_client_run(void *arg)
{
    struct real_client *c = arg;
    struct ts_rt_answer *ans = malloc(sizeof *ans);
    for (int i = 0; ans && !__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE); i = (i + 1) % REAL_DEVICES) {
        ts_rt_post_mt(cp->port, c->paths[i], c->authz[i], NULL, 10000, ans);
        if (ans->status == 200 && strstr(ans->body, "\"stamp\":\"eu-west-1\"")) {
            c->ok++;
        } else {
            if (c->bad++ == 0) {
                c->first_bad_status = ans->status;
                snprintf(c->first_bad_body, sizeof c->first_bad_body, "%.200s", ans->body);
            }
        }
    }
    free(ans);
    return NULL;
}

static void test_flood(void **state)
{
    struct ts_rt_job *jobs = ts_keep(calloc(FLOOD_N, sizeof *jobs));
    struct real_client *real = ts_keep(calloc(1, sizeof *real));
    pthread_t th;
    long q0, x0, q1, x1, quiet_x0, quiet_x1, refused = 0, query_bound;
    int64_t t0, t1, quiet_ms;
    json_t *tc;
    (void)state;

    assert_non_null(jobs);
    assert_non_null(real);
    for (int i = 0; i < REAL_DEVICES; i++) {
        snprintf(real->paths[i], sizeof real->paths[i], "/v1/tenants/acme/registrations/real-%d/locate", i);
        snprintf(real->authz[i], sizeof real->authz[i], "%s", ts_rt_sas(acme, ts_str("real-%d", i), 0));
    }
    for (int i = 0; i < FLOOD_N; i++) {
        char tenant[40];
        snprintf(tenant, sizeof tenant, "rnd-%08x%04x", (unsigned)rand(), (unsigned)(i & 0xffff));
        jobs[i].port = cp->port;
        jobs[i].path = ts_str("/v1/tenants/%s/registrations/dev-%d/locate", tenant, i);
        jobs[i].authz = stranger_sas(tenant, ts_str("dev-%d", i));
    }

    /* The global database's background rate (layout refresh, probes) over a quiet second. */
    ts_sleep_ms(1200);   /* statistics are flushed at most once a second */
    quiet_x0 = global_xacts();
    t0 = ts_now_ms();
    ts_sleep_ms(3000);
    quiet_x1 = global_xacts();
    quiet_ms = ts_now_ms() - t0;

    q0 = stat("queries");
    x0 = global_xacts();
    t0 = ts_now_ms();
    assert_int_equal(pthread_create(&th, NULL, real_client_run, real), 0);
    ts_rt_run_jobs(jobs, FLOOD_N, FLOOD_THREADS);
    __atomic_store_n(&real->stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    t1 = ts_now_ms();
    tc = tenant_stats();
    q1 = (long)ts_jint(tc, "queries", -1);

    for (int i = 0; i < FLOOD_N; i++) {
        const char *code = ts_rt_answer_code(&jobs[i].ans);
        if (jobs[i].ans.status != 401 || !code || strcmp(code, "invalid_signature") != 0)
            ts_fail("flood request %d: expected 401 invalid_signature, got %d %s", i, jobs[i].ans.status,
                    jobs[i].ans.body);
    }
    ts_log("flood: %d requests in %lld ms; real lookups: %ld ok, %ld not ok", FLOOD_N, (long long)(t1 - t0),
           real->ok, real->bad);
    if (real->bad > 0)
        ts_fail("a real device's lookup was not 200 during the flood (%ld of %ld): %d %s", real->bad,
                real->ok + real->bad, real->first_bad_status, real->first_bad_body);
    assert_true(real->ok >= REAL_DEVICES);

    /* The negative cache is full, not growing. */
    {
        char *txt = json_dumps(tc, JSON_COMPACT);
        ts_log("tenantCache after the flood: %s", txt ? txt : "?");
        free(txt);
    }
    assert_int_equal(ts_jint(tc, "negative", -1), NEG_CAP);
    assert_int_equal(ts_jint(tc, "negativeCap", -1), NEG_CAP);
    assert_true(ts_jint(tc, "negativeEvictions", -1) > 0);
    refused = (long)ts_jint(tc, "refused", -1);
    assert_true(refused > 0);

    /* Catalog queries: the bucket's burst plus its rate over the flood (+1 s
     * slack), plus acme's own refreshes (its entry lives 1 s). */
    query_bound = BURST + (long)((t1 - t0 + 1000) * RATE / 1000) + (long)((t1 - t0) / 1000 + 2);
    {
        long bound = query_bound;
        ts_log("catalog queries during the flood: %ld (bound %ld); refused without a query: %ld", q1 - q0, bound,
               refused);
        assert_true(q1 - q0 <= bound);
        /* all but the budget's worth were answered without a query */
        assert_true(refused >= FLOOD_N - bound);
    }

    /* The global database agrees: its transactions grew by the catalog
     * queries plus the background rate, not by one per request. (A backend
     * flushes its statistics at most once a second, and an idle one within
     * 10 s: allow the background of 12 s more than the flood lasted.) */
    ts_sleep_ms(1500);
    x1 = global_xacts();
    {
        long background = (quiet_x1 - quiet_x0) * (ts_now_ms() - t0 + 12000) / (quiet_ms > 0 ? quiet_ms : 1);
        long bound = query_bound + background * 3 / 2 + 100;
        ts_log("global xacts: %ld during the flood (background ~%ld over the same time, bound %ld)", x1 - x0,
               background, bound);
        assert_true(x1 - x0 <= bound);
    }
}

static void test_refused_without_query(void **state)
{
    long q0, r0;
    struct ts_resp *r;
    int n = 0;
    (void)state;

    /* Spend whatever the bucket refilled, then one more must be refused without a query. */
    r0 = stat("refused");
    while (stat("refused") == r0 && n < 1000) {
        const char *t = ts_str("late-%d", n++);
        TS_EXPECT_ERROR(ts_rt_device(cp, "locate", t, "d1", stranger_sas(t, "d1"), NULL), 401, "invalid_signature");
    }
    /* Each unknown id costs a query or is refused, never both: once the
     * bucket is empty (it refills 2/s), a refused one costs no query. */
    for (n = 0;; n++) {
        const char *t = ts_str("late-x%d", n);
        long q, rf;
        q0 = stat("queries");
        r0 = stat("refused");
        r = ts_rt_device(cp, "locate", t, "d1", stranger_sas(t, "d1"), NULL);
        TS_EXPECT_ERROR(r, 401, "invalid_signature");
        assert_string_equal(ts_header(r, "WWW-Authenticate"), "SharedAccessSignature");
        q = stat("queries") - q0;
        rf = stat("refused") - r0;
        assert_int_equal(q + rf, 1);
        if (rf == 1)
            break;
        if (n > 5)
            ts_fail("the unknown-id budget does not run out");
    }

    /* The operator is authenticated: it gets the truth, and no token is needed. */
    r = ts_admin(cp, "GET", "/v1/tenants/late-y/devices/d1", NULL);
    TS_EXPECT_ERROR(r, 404, "not_found");
    assert_int_equal(stat("queries"), q0 + 1);
    /* A known tenant is never refused: let its entry expire (1 s), spend the
     * bucket again, and it is still fetched and answered. */
    ts_sleep_ms(1200);
    r0 = stat("refused");
    for (n = 0; stat("refused") == r0 && n < 1000; n++) {
        const char *t = ts_str("later-%d", n);
        TS_EXPECT_ERROR(ts_rt_device(cp, "locate", t, "d1", stranger_sas(t, "d1"), NULL), 401, "invalid_signature");
    }
    q0 = stat("queries");
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "real-0"), 200);
    TS_EXPECT_STATUS(ts_rt_locate(cp, acme, "real-new"), 200);
    assert_int_equal(stat("queries"), q0 + 1);   /* acme's one refresh */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coalescing),
        cmocka_unit_test(test_flood),
        cmocka_unit_test(test_refused_without_query),
    };
    int failed;
    ts_init("test_cp_flood");
    failed = cmocka_run_group_tests(tests, group_setup, NULL);
    return ts_finish(failed);
}
