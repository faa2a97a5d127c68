/*
 * test_migrations_concurrent - two control planes started at the same moment
 * on the same fresh databases both become ready and every migration version is
 * recorded exactly once; a third one started later changes nothing.
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

static const char *global_db, *us_db, *eu_db;

/* Every version once: count(*) == count(DISTINCT version). */
static void expect_each_version_once(const char *db, const char *what)
{
    PGresult *res;
    long total = ts_pg_count(db, "SELECT count(*) FROM schema_migrations");
    const char *col;
    if (total < 1)
        ts_fail("%s: schema_migrations is empty", what);
    /* the version column: first column of the table */
    col = ts_pg_scalar(db, "SELECT attname FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass "
                           "AND attnum > 0 AND NOT attisdropped ORDER BY attnum LIMIT 1");
    assert_non_null(col);
    res = ts_pg_query(db, ts_str("SELECT %s::text, count(*) FROM schema_migrations GROUP BY 1 HAVING count(*) > 1",
                                 col));
    if (PQntuples(res) > 0) {
        const char *v = ts_str("%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        ts_fail("%s: migration %s recorded more than once", what, v);
    }
    PQclear(res);
}

static const char *snapshot(const char *db)
{
    PGresult *res = ts_pg_query(db, "SELECT * FROM schema_migrations ORDER BY 1");
    char *acc = ts_str("%s", "");
    for (int i = 0; i < PQntuples(res); i++)
        for (int j = 0; j < PQnfields(res); j++)
            acc = ts_str("%s%s%s", acc, j ? "," : (i ? ";" : ""), PQgetvalue(res, i, j));
    PQclear(res);
    return acc;
}

static void test_concurrent_start(void **state)
{
    const char *admin = ts_env("STAMPCP_TEST_PG");
    struct ts_cp_opts o = { .geo_ids = { "us", "eu", NULL } };
    struct ts_cp *c1, *c2, *c3;
    const char *g_before, *u_before, *e_before;

    global_db = ts_pg_create_db(admin, ts_unique("global"));
    us_db = ts_pg_create_db(admin, ts_unique("us"));
    eu_db = ts_pg_create_db(admin, ts_unique("eu"));
    o.global_db = global_db;
    o.geo_dbs[0] = us_db;
    o.geo_dbs[1] = eu_db;

    /* both configs first, then the two processes forked back to back */
    o.name = "cp-a";
    c1 = ts_controlplane_prepare(&o);
    o.name = "cp-b";
    c2 = ts_controlplane_prepare(&o);
    ts_controlplane_spawn(c1);
    ts_controlplane_spawn(c2);
    if (!ts_controlplane_wait_ready(c1, 20000) || !ts_proc_alive(c1->proc))
        ts_fail("first controlplane not ready: %s", ts_resp_str(ts_get(c1, "/readyz")));
    if (!ts_controlplane_wait_ready(c2, 20000) || !ts_proc_alive(c2->proc))
        ts_fail("second controlplane not ready: %s", ts_resp_str(ts_get(c2, "/readyz")));

    expect_each_version_once(global_db, "global DB");
    expect_each_version_once(us_db, "us DB");
    expect_each_version_once(eu_db, "eu DB");
    TS_EXPECT_STREQ(ts_pg_scalar(us_db, "SELECT geography FROM geo_identity"), "us");
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT geography FROM geo_identity"), "eu");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM geo_identity"), 1);

    /* both serve the same catalog */
    TS_EXPECT_STATUS(ts_admin(c1, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(c2, "GET", "/v1/geographies/eu", NULL), 200);
    TS_EXPECT_ERROR(ts_admin(c2, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 409, "already_exists");

    /* a third one later: nothing to do */
    g_before = snapshot(global_db);
    u_before = snapshot(us_db);
    e_before = snapshot(eu_db);
    o.name = "cp-c";
    c3 = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(c3, 20000))
        ts_fail("third controlplane not ready: %s", ts_resp_str(ts_get(c3, "/readyz")));
    TS_EXPECT_STREQ(snapshot(global_db), g_before);
    TS_EXPECT_STREQ(snapshot(us_db), u_before);
    TS_EXPECT_STREQ(snapshot(eu_db), e_before);
    TS_EXPECT_STATUS(ts_admin(c3, "GET", "/v1/geographies/eu", NULL), 200);

    assert_int_equal(ts_controlplane_stop(c1, 5000), 0);
    assert_int_equal(ts_controlplane_stop(c2, 5000), 0);
    assert_int_equal(ts_controlplane_stop(c3, 5000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_start),
    };
    ts_init("test_migrations_concurrent");
    return ts_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
