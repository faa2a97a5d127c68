/*
 * test_assign_durable - the geography functions whose answer the router
 * acknowledges force synchronous_commit = on for their own transaction
 * (schema/geo/006, docs/architecture.md "Assign"), whatever the default.
 *
 * The geography database's default is set to off (ALTER DATABASE ... SET
 * synchronous_commit = off), and the control plane's connections are made
 * again so that they have it. A deferred constraint trigger on the tables
 * those functions write records current_setting('synchronous_commit') when
 * it fires, i.e. at COMMIT, the moment the setting decides whether the commit
 * waits for the standby:
 *  - a plain write in a fresh session records 'off' (the observer works and
 *    the default is off);
 *  - first locates through the router (one alone, then 60 at once: batches),
 *    a deprovision and a move through the router, and each function called
 *    directly (cp_assign_device, cp_assign_devices, cp_move_device,
 *    cp_release_device, cp_claim_device, cp_fence_claim,
 *    cp_assign_claimed_device) record only 'on'.
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

#define NBURST 60

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-a", .region = "eu-west", .dps = { { "eu-a-dps", 100000, 100000 } }, .hubs = { { "eu-a-hub" } } },
        { .id = "eu-b", .region = "eu-west", .dps = { { "eu-b-dps", 100000, 100000 } }, .hubs = { { "eu-b-hub" } } },
    },
};

/* The observer: one row per written row, with the setting at commit. */
static const char observer_sql[] =
    "CREATE TABLE t_commit_settings (id bigserial PRIMARY KEY, tbl text, setting text);"
    "CREATE FUNCTION t_observe() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " INSERT INTO t_commit_settings (tbl, setting) VALUES (TG_TABLE_NAME, current_setting('synchronous_commit'));"
    " RETURN NULL; END $$;"
    "CREATE CONSTRAINT TRIGGER t_observe AFTER INSERT OR UPDATE ON devices"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t_observe();"
    "CREATE CONSTRAINT TRIGGER t_observe AFTER INSERT OR UPDATE ON dps_usage_shards"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t_observe();"
    "CREATE CONSTRAINT TRIGGER t_observe AFTER INSERT OR UPDATE ON device_claims"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t_observe();"
    "CREATE CONSTRAINT TRIGGER t_observe AFTER INSERT OR UPDATE ON device_claim_fences"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t_observe();";

static int group_setup(void **state)
{
    const char *db;
    (void)state;
    rt = ts_rt_start_fleet_acme(&layout, 1, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");

    db = ts_pg_scalar(eu_db, "SELECT current_database()");
    (void)ts_pg_scalar(eu_db, ts_str("ALTER DATABASE \"%s\" SET synchronous_commit = off", db));
    (void)ts_pg_scalar(eu_db, observer_sql);
    /* the control plane's connections come back with the new default */
    (void)ts_pg_scalar(eu_db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE datname = current_database() AND pid <> pg_backend_pid()");
    if (!ts_controlplane_wait_ready(rt->cp[0], 20000))
        ts_fail("the control plane did not become ready again");
    return 0;
}

/* Since row id `from`: the settings observed, "setting=count,..." */
static const char *observed(long from)
{
    const char *v = ts_pg_scalar(eu_db, ts_str("SELECT string_agg(setting || '=' || n, ',' ORDER BY setting) FROM"
                                               " (SELECT setting, count(*) n FROM t_commit_settings WHERE id > %ld"
                                               " GROUP BY 1) x", from));
    return v ? v : "";
}

static long last_id(void)
{
    return ts_pg_count(eu_db, "SELECT coalesce(max(id), 0) FROM t_commit_settings");
}

static void expect_only_on(long from, const char *what)
{
    const char *o = observed(from);
    ts_log("%s: commits observed %s", what, o);
    if (strncmp(o, "on=", 3) != 0 || strchr(o, ','))
        ts_fail("%s: a commit ran with synchronous_commit other than on: %s", what, o);
}

static void test_default_is_off(void **state)
{
    long from = last_id();
    (void)state;
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SHOW synchronous_commit"), "off");
    (void)ts_pg_scalar(eu_db, "INSERT INTO devices (tenant_id, registration_id, status) VALUES ('probe', 'probe', 'retired')");
    (void)ts_pg_scalar(eu_db, "DELETE FROM devices WHERE tenant_id = 'probe'");
    TS_EXPECT_STREQ(observed(from), "off=1");
}

static void test_router_writes_are_durable(void **state)
{
    static struct ts_rt_job jobs[NBURST];
    long from = last_id();
    struct ts_resp *r;
    const char *on;
    (void)state;

    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "alone-1"), 200);
    expect_only_on(from, "one first locate");

    from = last_id();
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NBURST; i++) {
        const char *regid = ts_str("burst-%d", i);
        jobs[i].port = rt->cp[0]->port;
        jobs[i].path = ts_str("/v1/tenants/acme/registrations/%s/locate", regid);
        jobs[i].authz = ts_rt_sas(acme, regid, 0);
    }
    ts_rt_run_jobs(jobs, NBURST, 30);
    for (int i = 0; i < NBURST; i++)
        if (jobs[i].ans.status != 200)
            ts_fail("burst-%d: %d %s", i, jobs[i].ans.status, jobs[i].ans.body);
    expect_only_on(from, "60 concurrent first locates");

    from = last_id();
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/burst-0/deprovision", NULL), 200);
    expect_only_on(from, "deprovision");

    /* a move: its stamp drains, reprovision takes it to the other one */
    from = last_id();
    r = ts_rt_locate(rt->cp[0], acme, "alone-1");
    TS_EXPECT_STATUS(r, 200);
    on = ts_jstr(r->json, "stamp");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", on), "{\"status\":\"draining\"}"), 200);
    ts_rt_wait_layout(rt);
    r = ts_rt_device(rt->cp[0], "reprovision", "acme", "alone-1", ts_rt_sas(acme, "alone-1", 0), NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_true(json_is_true(json_object_get(r->json, "moved")));
    expect_only_on(from, "move");
}

static void test_functions_are_durable(void **state)
{
    static const char *const calls[] = {
        "SELECT count(*) FROM cp_assign_device('f', 'f-1', 'eu-west', 'eu-a', 'eu-a-dps', 's', 'e', 1000, '{}', 'x')",
        "SELECT count(*) FROM cp_assign_devices(ARRAY['f','f'], ARRAY['f-2','f-3'], ARRAY['eu-west','eu-west'],"
        " ARRAY['eu-a','eu-a'], ARRAY['eu-a-dps','eu-a-dps'], ARRAY['s','s'], ARRAY['e','e'],"
        " ARRAY['1000','1000'], ARRAY['{}','{}'], ARRAY['x','x'])",
        "SELECT count(*) FROM cp_move_device('f', 'f-1', 1, 'eu-west', 'eu-b', 'eu-b-dps', 's', 'e', 1000, '{}', 'x')",
        "SELECT count(*) FROM cp_release_device('f', 'f-2', false, 'x')",
        "SELECT count(*) FROM cp_claim_device('f', 'f-9', 'eu', NULL)",
        "SELECT cp_fence_claim('f', 'f-8', 1)",
        "SELECT count(*) FROM cp_assign_claimed_device(cp_claim_next_token(0), 'f', 'f-7', 'eu-west', 'eu-a',"
        " 'eu-a-dps', 's', 'e', 1000, '{}', 'x')",
    };
    (void)state;
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        long from = last_id();
        (void)ts_pg_scalar(eu_db, calls[i]);   /* a fresh session: the default is off */
        if (strcmp(observed(from), "") == 0)
            ts_fail("nothing written by: %s", calls[i]);
        expect_only_on(from, calls[i]);
    }
    /* what they wrote is what was asked */
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT string_agg(registration_id || ':' || status || ':' || stamp_id, ','"
                                        " ORDER BY registration_id) FROM devices WHERE tenant_id = 'f'"),
                    "f-1:assigned:eu-b,f-2:deprovisioned:eu-a,f-3:assigned:eu-a,f-7:assigned:eu-a");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_is_off),
        cmocka_unit_test(test_router_writes_are_durable),
        cmocka_unit_test(test_functions_are_durable),
    };
    ts_init("test_assign_durable");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
