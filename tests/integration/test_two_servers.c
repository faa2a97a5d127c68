/*
 * test_two_servers - data residency: the global catalog on PostgreSQL server
 * A, geography eu on server B, us on A (its own database). Checks where the
 * tables and rows really are, and that pointing eu at the us database (which
 * says it belongs to us) is caught by /readyz.
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

static struct ts_pgserver *a, *b;
static const char *global_db, *us_db, *eu_db;

static int group_setup(void **state)
{
    a = ts_pgserver_start("a");
    b = ts_pgserver_start("b");
    global_db = ts_pg_create_db(a->conninfo, "catalog");
    us_db = ts_pg_create_db(a->conninfo, "geo_us");
    eu_db = ts_pg_create_db(b->conninfo, "geo_eu");
    return 0;
}

static const char *const catalog_tables[] = { "geographies", "regions", "stamps", "dps_instances", "hubs", NULL };

static void test_rows_land_where_configured(void **state)
{
    struct ts_cp_opts o = { .global_db = global_db, .geo_ids = { "us", "eu", NULL }, .geo_dbs = { us_db, eu_db } };
    struct ts_cp *cp = ts_controlplane_start(&o);
    struct ts_resp *r;

    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("readyz not 200: %s", ts_resp_str(ts_get(cp, "/readyz")));
    r = ts_get(cp, "/readyz");
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "ready");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "globalDatabase"), "ok");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "geo:eu"), "ok");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "geo:us"), "ok");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "redis"), "ok");

    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\",\"displayName\":\"Europe\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"eu-west\",\"geography\":\"eu\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", "{\"id\":\"eu-west-1\",\"region\":\"eu-west\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs",
                              "{\"id\":\"eu-west-1-hub1\",\"stamp\":\"eu-west-1\",\"hostName\":\"hub1.eu.example\"}"),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/dps-instances",
                              "{\"id\":\"eu-west-1-dps\",\"stamp\":\"eu-west-1\",\"idScope\":\"0neEU1\",\"endpoint\":\"dps.eu:443\"}"),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/stamps/eu-west-1", "{\"status\":\"draining\"}"), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL), 200);

    /* server A, global DB: the catalog with our rows, no geo_identity */
    for (const char *const *t = catalog_tables; *t; t++)
        if (!ts_pg_table_exists(global_db, *t))
            ts_fail("global DB (server A) lacks table %s", *t);
    assert_true(ts_pg_table_exists(global_db, "schema_migrations"));
    assert_false(ts_pg_table_exists(global_db, "geo_identity"));
    TS_EXPECT_STREQ(ts_pg_scalar(global_db, "SELECT display_name FROM geographies WHERE id = 'eu'"), "Europe");
    assert_int_equal(ts_pg_count(global_db, "SELECT count(*) FROM geographies"), 2);
    TS_EXPECT_STREQ(ts_pg_scalar(global_db, "SELECT geography_id FROM regions WHERE id = 'eu-west'"), "eu");
    TS_EXPECT_STREQ(ts_pg_scalar(global_db, "SELECT status FROM stamps WHERE id = 'eu-west-1'"), "draining");
    TS_EXPECT_STREQ(ts_pg_scalar(global_db, "SELECT host_name FROM hubs WHERE id = 'eu-west-1-hub1'"), "hub1.eu.example");
    TS_EXPECT_STREQ(ts_pg_scalar(global_db, "SELECT id_scope FROM dps_instances WHERE id = 'eu-west-1-dps'"), "0neEU1");

    /* server B, eu DB: identity eu, migrations, no catalog */
    assert_true(ts_pg_table_exists(eu_db, "geo_identity"));
    assert_true(ts_pg_table_exists(eu_db, "schema_migrations"));
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT geography FROM geo_identity"), "eu");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM geo_identity"), 1);
    for (const char *const *t = catalog_tables; *t; t++)
        if (ts_pg_table_exists(eu_db, *t))
            ts_fail("eu DB (server B) must not hold catalog table %s", *t);
    assert_true(ts_pg_count(eu_db, "SELECT count(*) FROM schema_migrations") >= 1);

    /* server A, us DB: identity us, no catalog */
    TS_EXPECT_STREQ(ts_pg_scalar(us_db, "SELECT geography FROM geo_identity"), "us");
    for (const char *const *t = catalog_tables; *t; t++)
        if (ts_pg_table_exists(us_db, *t))
            ts_fail("us DB must not hold catalog table %s", *t);

    /* server B holds nothing of the catalog anywhere (postgres DB untouched) */
    assert_false(ts_pg_table_exists(b->conninfo, "geographies"));
    assert_false(ts_pg_table_exists(b->conninfo, "schema_migrations"));

    assert_int_equal(ts_controlplane_stop(cp, 5000), 0);
}

/* eu pointed at the us database: that database says it belongs to us. */
static void test_wrong_geography_db_caught(void **state)
{
    struct ts_cp_opts o = {
        .name = "cp-misconfigured", .global_db = global_db, .geo_ids = { "us", "eu", NULL }, .geo_dbs = { us_db, us_db },
        .no_wait = true,
    };
    struct ts_cp *cp = ts_controlplane_start(&o);
    struct ts_resp *r = NULL;
    int64_t deadline = ts_now_ms() + 20000;
    const char *eu_check;

    /* It may refuse to start (exit != 0) or run unready; it must never be ready. */
    while (ts_now_ms() < deadline) {
        if (!ts_proc_alive(cp->proc))
            break;
        r = ts_get(cp, "/readyz");
        if (r->status == 503 || r->status == 200)
            break;
        ts_sleep_ms(100);
    }
    if (!ts_proc_alive(cp->proc)) {
        int code = ts_proc_exit_code(cp->proc);
        ts_log("misconfigured controlplane exited with %d", code);
        if (code == 0)
            ts_fail("a controlplane with eu pointing at the us database exited 0");
        assert_true(ts_proc_log_contains(cp->proc, "eu"));
    } else {
        if (!r || r->status != 503)
            ts_fail("readyz with eu pointing at the us database: expected 503, got %s", r ? ts_resp_str(r) : "nothing");
        /* stays unready */
        ts_sleep_ms(1000);
        r = ts_get(cp, "/readyz");
        TS_EXPECT_STATUS(r, 503);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "unavailable");
        eu_check = ts_jstr(json_object_get(r->json, "checks"), "geo:eu");
        if (!eu_check || strcmp(eu_check, "ok") == 0)
            ts_fail("readyz should report geo:eu as failing: %s", ts_resp_str(r));
        TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "geo:us"), "ok");
        ts_log("misconfigured controlplane stays up, unready: %s", ts_resp_str(r));
        /* eu writes must not land in the us database */
        r = ts_admin(cp, "GET", "/v1/geographies", NULL);
        TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    }
    /* the us database still says us */
    TS_EXPECT_STREQ(ts_pg_scalar(us_db, "SELECT geography FROM geo_identity"), "us");
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM geo_identity"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_land_where_configured),
        cmocka_unit_test(test_wrong_geography_db_caught),
    };
    ts_init("test_two_servers");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
