/*
 * test_pg_stall - a database that stops answering (locks, a stopped server)
 * costs the control plane bounded time and never more backends than its pool:
 *   - lock_timeout is set per connection (server side): a statement waiting
 *     on a lock fails after db.lockTimeoutMs (503), before the client deadline;
 *   - with the server-side bounds off, the client deadline (db.queryTimeoutMs)
 *     answers 503 and cancels the backend's statement: it stops waiting on the
 *     lock, and the connection (same backend pid) serves again;
 *   - SIGSTOP of every PostgreSQL process: requests get 503 within
 *     queryTimeoutMs + queueTimeoutMs + 1 s, /healthz stays fast; after SIGCONT
 *     the control plane's backends (pg_stat_activity, its application_name)
 *     never exceed the pool size per database, and service resumes.
 * The server is the test's own (infra/pg-server under STAMPCP_TEST_TMP).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"

#define APP "stampcp-controlplane"
#define POOL 4

static struct ts_pgserver *pg;

static int group_setup(void **state)
{
    (void)state;
    pg = ts_pgserver_start("stall");
    return 0;
}

/* A control plane on fresh databases of the private server, db settings as given. */
static struct ts_cp *start_cp(const char *name, const char *db_json)
{
    struct ts_cp_opts o = { .name = name, .geo_ids = { "us", "eu", NULL } };
    struct ts_cp *cp;
    o.global_db = ts_pg_create_db(pg->conninfo, ts_unique(ts_str("%s_g", name)));
    o.geo_dbs[0] = ts_pg_create_db(pg->conninfo, ts_unique(ts_str("%s_us", name)));
    o.geo_dbs[1] = ts_pg_create_db(pg->conninfo, ts_unique(ts_str("%s_eu", name)));
    o.extra_json = ts_json("'db':%s", db_json);
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("%s not ready", name);
    return cp;
}

static const char *dbname_of(const char *conninfo)
{
    const char *p = strstr(conninfo, "dbname=");
    if (!p)
        ts_fail("no dbname in %s", conninfo);
    return ts_str("%.*s", (int)strcspn(p + 7, " "), p + 7);
}

/* The control plane's backends in one database: "pid,pid,..." (sorted). */
static const char *backend_pids(const char *db)
{
    const char *v = ts_pg_scalar(pg->conninfo,
                                 ts_str("SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity "
                                        "WHERE application_name = '" APP "' AND datname = '%s'", db));
    return v ? v : "";
}

static long lock_waiters(const char *db)
{
    return ts_pg_count(pg->conninfo,
                       ts_str("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" APP "' "
                              "AND datname = '%s' AND wait_event_type = 'Lock'", db));
}

struct pool_full { const char *db; };
static bool pool_connected(void *arg)
{
    struct pool_full *f = arg;
    return ts_pg_count(pg->conninfo, ts_str("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" APP
                                            "' AND datname = '%s'", f->db)) == POOL;
}

/* BEGIN; LOCK api_keys: GET /v1/api-keys then waits on the lock. Caller PQfinish()es (rolls back). */
static PGconn *lock_api_keys(const char *conninfo)
{
    PGconn *c = ts_pg_connect(conninfo);
    PGresult *r = PQexec(c, "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        ts_fail("lock api_keys: %s", PQerrorMessage(c));
    PQclear(r);
    return c;
}

static void test_lock_timeout_server_side(void **state)
{
    struct ts_cp *cp;
    struct ts_resp *r;
    PGconn *lock;
    (void)state;

    /* defaults derived from queryTimeoutMs 3000: lock_timeout 1500 */
    cp = start_cp("cpdef", "{'poolSize':4,'queryTimeoutMs':3000}");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/api-keys", NULL), 200);
    lock = lock_api_keys(cp->global_db);
    r = ts_admin(cp, "GET", "/v1/api-keys", NULL);
    PQfinish(lock);
    TS_EXPECT_ERROR(r, 503, "database_unavailable");
    ts_log("lock wait answered 503 after %lld ms", (long long)r->elapsed_ms);
    if (r->elapsed_ms < 1300 || r->elapsed_ms >= 2800)
        ts_fail("503 after %lld ms: lock_timeout (1500 ms) should end the wait, before queryTimeoutMs (3000)",
                (long long)r->elapsed_ms);
    if (ts_proc_log_contains(cp->proc, "event=pg_statement_timeout"))
        ts_fail("the client deadline fired: the server-side lock_timeout was not set");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/api-keys", NULL), 200);
    assert_int_equal(ts_controlplane_stop(cp, 10000), 0);
}

static void test_client_timeout_cancels(void **state)
{
    struct ts_cp *cp;
    struct ts_resp *r;
    PGconn *lock;
    const char *db, *before;
    int64_t t0;
    (void)state;

    cp = start_cp("cpcancel", "{'poolSize':4,'queryTimeoutMs':1000,'lockTimeoutMs':0,'statementTimeoutMs':0,"
                              "'cancelGraceMs':5000}");
    db = dbname_of(cp->global_db);
    struct pool_full f = { db };
    if (!ts_wait_until(pool_connected, &f, 10000))
        ts_fail("pool of %s not connected: %s", db, backend_pids(db));
    before = backend_pids(db);
    lock = lock_api_keys(cp->global_db);
    r = ts_admin(cp, "GET", "/v1/api-keys", NULL);
    TS_EXPECT_ERROR(r, 503, "database_unavailable");
    if (r->elapsed_ms < 900 || r->elapsed_ms >= 2500)
        ts_fail("503 after %lld ms, expected about queryTimeoutMs (1000)", (long long)r->elapsed_ms);
    /* the lock is still held: only a cancel ends the backend's wait */
    t0 = ts_now_ms();
    while (lock_waiters(db) > 0 && ts_now_ms() - t0 < 3000)
        ts_sleep_ms(20);
    if (lock_waiters(db) > 0)
        ts_fail("the backend still waits on the lock 3 s after the client deadline: not cancelled");
    ts_log("backend's statement cancelled %lld ms after the 503", (long long)(ts_now_ms() - t0));
    PQfinish(lock);
    if (!ts_proc_log_contains(cp->proc, "event=pg_statement_cancelled"))
        ts_fail("no event=pg_statement_cancelled in the log");
    /* the same connections serve again: cancelled, not dropped */
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/api-keys", NULL), 200);
    TS_EXPECT_STREQ(backend_pids(db), before);
    assert_int_equal(ts_controlplane_stop(cp, 10000), 0);
}

/* The largest number of the control plane's backends in any one database. */
static long max_backends_per_db(void)
{
    return ts_pg_count(pg->conninfo, "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_stat_activity "
                                     "WHERE application_name = '" APP "' GROUP BY datname) x");
}

static void test_sigstop(void **state)
{
    struct ts_cp *cp;
    struct ts_resp *r;
    long most = 0;
    int64_t t0, stopped_at, resumed = -1;
    (void)state;

    cp = start_cp("cpstop", "{'poolSize':4,'queryTimeoutMs':1000,'queueTimeoutMs':1000,'cancelGraceMs':30000}");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/api-keys", NULL), 200);
    ts_http_set_timeout(8000);

    stopped_at = ts_now_ms();
    ts_pgserver_signal(pg, SIGSTOP);
    /* more requests than connections: some time out in flight, the rest in the queue */
    for (int i = 0; i < 5; i++) {
        r = ts_admin(cp, "GET", i % 2 ? "/v1/api-keys" : "/v1/geographies/us", NULL);
        if (r->status == 0)
            ts_fail("request %d during the stall: no answer (%s)", i, r->err);
        TS_EXPECT_ERROR(r, 503, "database_unavailable");
        if (r->elapsed_ms >= 3000)
            ts_fail("request %d: 503 after %lld ms (bound 3000)", i, (long long)r->elapsed_ms);
        ts_log("stalled request %d: 503 after %lld ms", i, (long long)r->elapsed_ms);
        r = ts_get(cp, "/healthz");
        TS_EXPECT_STATUS(r, 200);
        if (r->elapsed_ms >= 500)
            ts_fail("/healthz took %lld ms during the stall", (long long)r->elapsed_ms);
    }
    ts_pgserver_signal(pg, SIGCONT);
    ts_log("server stopped for %lld ms", (long long)(ts_now_ms() - stopped_at));

    /* the backends of the timed-out statements and any reconnects: never more
     * than the pool, while service comes back */
    t0 = ts_now_ms();
    while (ts_now_ms() - t0 < 4000) {
        long n = max_backends_per_db();
        if (n > most)
            most = n;
        if (n > POOL)
            ts_fail("%ld backends of the control plane in one database after SIGCONT (pool size %d)", n, POOL);
        if (resumed < 0 && ts_admin(cp, "GET", "/v1/api-keys", NULL)->status == 200)
            resumed = ts_now_ms() - t0;
        ts_sleep_ms(20);
    }
    ts_log("at most %ld backends per database after SIGCONT (pool %d); first 200 after %lld ms", most, POOL,
           (long long)resumed);
    if (resumed < 0)
        ts_fail("no 200 within 4 s after SIGCONT");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/api-keys", NULL), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/geographies/us", NULL), 404);
    if (!ts_controlplane_wait_ready(cp, 10000))
        ts_fail("not ready again after SIGCONT");
    if (max_backends_per_db() > POOL)
        ts_fail("more backends than the pool after recovery");
    ts_http_set_timeout(10000);
    assert_int_equal(ts_controlplane_stop(cp, 10000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lock_timeout_server_side),
        cmocka_unit_test(test_client_timeout_cancels),
        cmocka_unit_test(test_sigstop),
    };
    ts_init("test_pg_stall");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
