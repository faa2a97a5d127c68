/*
 * test_pg_outage - PostgreSQL goes away under a running control plane: the
 * daemon stays up (healthz 200), says 503 quickly (readyz, and admin calls
 * with database_unavailable + Retry-After; no hang), and recovers by itself
 * when PostgreSQL comes back on the same port, with the data intact and the
 * same process throughout.
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

static struct ts_pgserver *pg;
static struct ts_cp *cp;
static pid_t cp_pid;

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "us", "eu", NULL } };
    pg = ts_pgserver_start("outage");
    o.global_db = ts_pg_create_db(pg->conninfo, "cp_global");
    o.geo_dbs[0] = ts_pg_create_db(pg->conninfo, "cp_us");
    o.geo_dbs[1] = ts_pg_create_db(pg->conninfo, "cp_eu");
    cp = ts_controlplane_start(&o);
    cp_pid = cp->proc->pid;
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    return 0;
}

static bool readyz_503(void *arg)
{
    return ts_get(cp, "/readyz")->status == 503;
}

static bool readyz_200(void *arg)
{
    return ts_get(cp, "/readyz")->status == 200;
}

static bool admin_works(void *arg)
{
    return ts_admin(cp, "GET", "/v1/geographies/us", NULL)->status == 200;
}

static void expect_prompt_503(struct ts_resp *r, const char *what)
{
    if (r->status == 0)
        ts_fail("%s during the outage: no answer (%s) after %lld ms", what, r->err, (long long)r->elapsed_ms);
    if (r->elapsed_ms >= 5000)
        ts_fail("%s during the outage took %lld ms (must answer in < 5 s)", what, (long long)r->elapsed_ms);
    TS_EXPECT_ERROR(r, 503, "database_unavailable");
    if (!ts_header(r, "Retry-After"))
        ts_fail("%s: 503 database_unavailable without Retry-After: %s", what, ts_resp_str(r));
}

static void test_outage_and_recovery(void **state)
{
    struct ts_resp *r;
    int64_t t0;
    json_t *checks;

    /* data before the outage */
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"us\",\"displayName\":\"Before\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"us-east\",\"geography\":\"us\"}"), 201);

    ts_pgserver_stop(pg, "fast");
    t0 = ts_now_ms();
    ts_http_set_timeout(8000);
    if (!ts_wait_until(readyz_503, NULL, 5000))
        ts_fail("/readyz still not 503 5 s after PostgreSQL stopped: %s", ts_resp_str(ts_get(cp, "/readyz")));
    ts_log("readyz 503 after %lld ms", (long long)(ts_now_ms() - t0));
    r = ts_get(cp, "/readyz");
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "unavailable");
    checks = json_object_get(r->json, "checks");
    if (!json_is_object(checks) || !ts_jstr(checks, "globalDatabase") || strcmp(ts_jstr(checks, "globalDatabase"), "ok") == 0)
        ts_fail("readyz should name globalDatabase as failing: %s", ts_resp_str(r));

    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    /* several calls, each prompt: none may hang on a dead connection */
    for (int i = 0; i < 3; i++) {
        expect_prompt_503(ts_admin(cp, "GET", "/v1/geographies/us", NULL), "GET /v1/geographies/us");
        expect_prompt_503(ts_admin(cp, "GET", "/v1/regions", NULL), "GET /v1/regions");
        expect_prompt_503(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"us-west\",\"geography\":\"us\"}"),
                          "POST /v1/regions");
        expect_prompt_503(ts_admin(cp, "PATCH", "/v1/geographies/us", "{\"displayName\":\"During\"}"),
                          "PATCH /v1/geographies/us");
    }
    /* errors that need no database still work: auth, validation */
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/regions", NULL, NULL, 0), 401, "unauthorized");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    assert_true(ts_proc_alive(cp->proc));

    /* back on the same port */
    ts_pgserver_restart(pg);
    t0 = ts_now_ms();
    if (!ts_wait_until(readyz_200, NULL, 10000))
        ts_fail("/readyz not 200 10 s after PostgreSQL came back: %s", ts_resp_str(ts_get(cp, "/readyz")));
    if (!ts_wait_until(admin_works, NULL, 5000))
        ts_fail("admin GET still failing after readyz 200: %s",
                ts_resp_str(ts_admin(cp, "GET", "/v1/geographies/us", NULL)));
    ts_log("recovered after %lld ms", (long long)(ts_now_ms() - t0));
    ts_http_set_timeout(10000);

    /* the data from before is there, nothing from the failed writes */
    r = ts_admin(cp, "GET", "/v1/geographies/us", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "displayName"), "Before");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions/us-east", NULL), 200);
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/regions/us-west", NULL), 404, "not_found");
    /* writes work again */
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"us-west\",\"geography\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/geographies/us", "{\"displayName\":\"After\"}"), 200);
    TS_EXPECT_STREQ(ts_pg_scalar(ts_pg_conninfo_db(pg->conninfo, "cp_global"),
                                 "SELECT display_name FROM geographies WHERE id = 'us'"),
                    "After");

    /* the same process throughout */
    assert_true(ts_proc_alive(cp->proc));
    assert_int_equal(cp->proc->pid, cp_pid);
}

/* An abrupt stop (immediate: connections die without a goodbye) recovers too. */
static void test_immediate_stop(void **state)
{
    ts_pgserver_stop(pg, "immediate");
    ts_http_set_timeout(8000);
    if (!ts_wait_until(readyz_503, NULL, 5000))
        ts_fail("/readyz still not 503 5 s after PostgreSQL was killed");
    expect_prompt_503(ts_admin(cp, "GET", "/v1/regions", NULL), "GET /v1/regions");
    ts_pgserver_restart(pg);
    if (!ts_wait_until(readyz_200, NULL, 10000))
        ts_fail("/readyz not 200 10 s after PostgreSQL came back (immediate stop)");
    if (!ts_wait_until(admin_works, NULL, 5000))
        ts_fail("admin GET still failing after the immediate stop");
    ts_http_set_timeout(10000);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions/us-west", NULL), 200);
    assert_int_equal(cp->proc->pid, cp_pid);
    assert_true(ts_proc_alive(cp->proc));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outage_and_recovery),
        cmocka_unit_test(test_immediate_stop),
    };
    ts_init("test_pg_outage");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
