/*
 * test_pg_failover - the pools follow the primary through a libpq multi-host
 * conninfo with target_session_attrs=read-write, without Patroni: two of the
 * test's own PostgreSQL servers, B a hot standby of A (pg_basebackup,
 * standby.signal, streaming on loopback); every database conninfo of the
 * control plane lists both.
 *   1. Promote B, then demote A (default_transaction_read_only, reloaded): a
 *      write that reaches A fails with 25006, which the control plane answers
 *      503 database_unavailable with Retry-After (never a 500); the pool drops its connections
 *      to A (also those that only read: in_hot_standby/default_transaction_
 *      read_only reported by the server) and reconnects to B, where the
 *      following writes land, and no backend of the global pool is left on A.
 *   2. Stop B (admin shutdown, 57P01): 503s while no host is writable, then
 *      A made writable again takes the writes within a bound (measured).
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

#define APP "stampcp-controlplane"

static struct ts_pgserver *a, *b;
static struct ts_cp *cp;
static const char *db_global;

static const char *both(const char *db)
{
    return ts_str("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=%s target_session_attrs=read-write "
                  "connect_timeout=2", a->port, b->port, db);
}

static const char *on(const struct ts_pgserver *s, const char *db)
{
    return ts_pg_conninfo_db(s->conninfo, db);
}

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "us", "eu", NULL } };
    const char *gus = ts_unique("us"), *geu = ts_unique("eu");
    (void)state;
    a = ts_pgserver_start("a");
    db_global = ts_unique("global");
    ts_pg_create_db(a->conninfo, db_global);
    ts_pg_create_db(a->conninfo, gus);
    ts_pg_create_db(a->conninfo, geu);
    b = ts_pgserver_start_standby("b", a);
    o.global_db = both(db_global);
    o.geo_dbs[0] = both(gus);
    o.geo_dbs[1] = both(geu);
    /* few periodic statements (layout refresh, enrollment sync) on the global
     * database, so the test's write is most often the first statement A sees
     * after its demotion and meets 25006 (the outbox relay may meet it first) */
    o.extra_json = ts_json("'db':{'poolSize':4,'connectTimeoutMs':3000},'layoutRefreshMs':60000,"
                           "'dps':{'enrollmentSyncMs':3600000}");
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    return 0;
}

/* The control plane's backends in its global database on server s. */
static long cp_backends(const struct ts_pgserver *s)
{
    return ts_pg_count(s->conninfo, ts_str("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" APP
                                           "' AND datname = '%s'", db_global));
}

struct region_on { const struct ts_pgserver *s; const char *id; };
static bool region_replicated(void *arg)
{
    struct region_on *r = arg;
    return ts_pg_count(on(r->s, db_global), ts_str("SELECT count(*) FROM regions WHERE id = '%s'", r->id)) == 1;
}

static bool no_backends_on_a(void *arg)
{
    (void)arg;
    return cp_backends(a) == 0;
}

/*
 * POST regions until one is 201 (deadline_ms): every answer is 201 or 503
 * database_unavailable with Retry-After. Returns ms until the 201; *n503
 * counts the 503s.
 */
static int64_t write_until_201(const char *prefix, int deadline_ms, int *n503)
{
    int64_t t0 = ts_now_ms();
    for (int i = 0; ts_now_ms() - t0 < deadline_ms; i++) {
        struct ts_resp *r = ts_admin(cp, "POST", "/v1/regions",
                                     ts_json("{'id':'%s-%d','geography':'us'}", prefix, i));
        if (r->status == 201)
            return ts_now_ms() - t0;
        TS_EXPECT_ERROR(r, 503, "database_unavailable");
        if (!ts_header(r, "Retry-After"))
            ts_fail("503 without Retry-After: %s", ts_resp_str(r));
        (*n503)++;
        ts_sleep_ms(50);
    }
    ts_fail("no write succeeded within %d ms (%s)", deadline_ms, prefix);
}

static void test_promote_and_demote(void **state)
{
    struct region_on rep = { b, "before" };
    int n503 = 0;
    int64_t took;
    (void)state;

    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"before\",\"geography\":\"us\"}"), 201);
    if (!ts_wait_until(region_replicated, &rep, 10000))
        ts_fail("the standby did not replay the write");
    assert_int_equal(cp_backends(a), 4);
    assert_int_equal(cp_backends(b), 0);

    ts_pgserver_promote(b);
    PQclear(ts_pg_query(a->conninfo, "ALTER SYSTEM SET default_transaction_read_only = on"));
    PQclear(ts_pg_query(a->conninfo, "SELECT pg_reload_conf()"));
    ts_sleep_ms(300);   /* the reload reaches A's backends */

    took = write_until_201("demoted", 15000, &n503);
    ts_log("writes moved to B after %lld ms, %d answers 503", (long long)took, n503);
    if (!ts_proc_log_contains(cp->proc, "(25006)"))
        ts_fail("the control plane never saw 25006 (read-only) from A");
    /* The write that met 25006 answers 503, unless another statement met it
     * first and the pool had already moved (the invalidation relay polls the
     * global outbox): so 0 to at most the pool size. */
    if (n503 > 4)
        ts_fail("%d answers 503: at most the pool size may meet A", n503);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"after\",\"geography\":\"us\"}"), 201);
    assert_int_equal(ts_pg_count(on(b, db_global), "SELECT count(*) FROM regions WHERE id = 'after'"), 1);
    assert_int_equal(ts_pg_count(on(a, db_global), "SELECT count(*) FROM regions WHERE id = 'after'"), 0);
    /* the whole global pool left A (the read-only host), none of its
     * connections is stuck there on reads (the geography pools, which ran no
     * statement, move at their next one) */
    if (!ts_wait_until(no_backends_on_a, NULL, 8000))
        ts_fail("%ld backends of the global pool still on the demoted server", cp_backends(a));
    assert_int_equal(cp_backends(b), 4);
    if (!ts_controlplane_wait_ready(cp, 10000))
        ts_fail("not ready on B");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions/after", NULL), 200);
}

static void test_admin_shutdown(void **state)
{
    int n503 = 0;
    int64_t took;
    struct ts_resp *r;
    (void)state;

    ts_pgserver_stop(b, "fast");   /* 57P01 to every connection of the control plane */
    r = ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"nowhere\",\"geography\":\"us\"}");
    TS_EXPECT_ERROR(r, 503, "database_unavailable");
    if (r->elapsed_ms >= 5000)
        ts_fail("503 after %lld ms with no writable host", (long long)r->elapsed_ms);
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);

    /* A becomes the primary again */
    PQclear(ts_pg_query(a->conninfo, "ALTER SYSTEM RESET default_transaction_read_only"));
    PQclear(ts_pg_query(a->conninfo, "SELECT pg_reload_conf()"));
    took = write_until_201("back", 15000, &n503);
    ts_log("writes resumed on A %lld ms after it became writable (%d answers 503 meanwhile)", (long long)took, n503);
    if (took > 7000)
        ts_fail("writes resumed only after %lld ms (reconnect backoff is at most 5 s)", (long long)took);
    assert_int_equal(ts_pg_count(on(a, db_global), "SELECT count(*) FROM regions WHERE id LIKE 'back-%'"), 1);
    if (!ts_controlplane_wait_ready(cp, 10000))
        ts_fail("not ready on A");
    assert_true(ts_proc_alive(cp->proc));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promote_and_demote),
        cmocka_unit_test(test_admin_shutdown),
    };
    ts_init("test_pg_failover");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
