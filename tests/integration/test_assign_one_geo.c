/*
 * test_assign_one_geo - a device of a tenant resident in several geographies
 * has one active assignment across them, however its first requests race
 * (schema/geo/007, docs/architecture.md "One geography per device"):
 *
 * Two control planes; eu and us each have one stamp (DPS instances of 40
 * registrations, so that a few placements move a DPS down a 5 % band). The
 * routers are first given different views: router 1 places four devices of
 * an eu-only tenant, router 2 four of a us-only tenant (each counts its own
 * placements at once, the other one only at its next layout refresh). Then:
 *  - 50 concurrent first locates of one device of tenant "multi" (eu and us),
 *    alternating between the routers;
 *  - 10 more devices, 10 concurrent first locates each, all in flight at once.
 * For every device: exactly one assigned row across both geography
 * databases, every answer is 200 and names that row's stamp, and the claim
 * in the arbiter geography (eu) names that row's geography.
 *
 * And the claim's way on when its geography can't take the device (SQL,
 * directly): a claim for us whose assignment never happened is fenced in us,
 * an assignment under the fenced token then answers claim_moved, the claim
 * moves on to eu from that token only, and a claim whose device is assigned
 * can't be fenced ('active').
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

#define NSAME 50
#define NDEV 10
#define NEACH 10
#define NJOBS (NDEV * NEACH)

static struct ts_rt *rt;
static struct ts_tenant *multi, *euonly, *usonly;
static const char *eu_db, *us_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-a", .region = "eu-west", .dps = { { "eu-a-dps", 40, 100000 } }, .hubs = { { "eu-a-hub" } } },
        { .id = "us-a", .region = "us-east", .dps = { { "us-a-dps", 40, 100000 } }, .hubs = { { "us-a-hub" } } },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", "us", NULL }, .layout_refresh_ms = 3000 };
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    eu_db = ts_rt_geo_db(rt, "eu");
    us_db = ts_rt_geo_db(rt, "us");
    multi = ts_rt_tenant(rt->cp[0],
                         "{\"id\":\"multi\",\"name\":\"Multi\",\"residency\":{\"geographies\":[\"us\",\"eu\"]}}");
    euonly = ts_rt_tenant(rt->cp[0], "{\"id\":\"euonly\",\"name\":\"EU\",\"residency\":{\"geographies\":[\"eu\"]}}");
    usonly = ts_rt_tenant(rt->cp[0], "{\"id\":\"usonly\",\"name\":\"US\",\"residency\":{\"geographies\":[\"us\"]}}");
    return 0;
}

static void job_set(struct ts_rt_job *j, int cp, const char *regid)
{
    j->port = rt->cp[cp]->port;
    j->path = ts_str("/v1/tenants/multi/registrations/%s/locate", regid);
    j->authz = ts_rt_sas(multi, regid, 0);
}

/* One assigned row across eu and us for the device; every answer names its stamp. */
static void check_device(const char *regid, struct ts_rt_job *jobs, int n)
{
    const char *q = ts_str("SELECT stamp_id FROM devices WHERE tenant_id = 'multi' AND registration_id = '%s'"
                           " AND status = 'assigned'", regid);
    const char *cnt = ts_str("SELECT count(*) FROM devices WHERE tenant_id = 'multi' AND registration_id = '%s'"
                             " AND status = 'assigned'", regid);
    long in_eu = ts_pg_count(eu_db, cnt), in_us = ts_pg_count(us_db, cnt);
    const char *stamp = in_eu ? ts_pg_scalar(eu_db, q) : ts_pg_scalar(us_db, q);
    const char *claim = ts_pg_scalar(eu_db, ts_str("SELECT geography FROM device_claims WHERE tenant_id = 'multi'"
                                                   " AND registration_id = '%s'", regid));
    if (in_eu + in_us != 1)
        ts_fail("%s: %ld assigned rows in eu, %ld in us", regid, in_eu, in_us);
    TS_EXPECT_STREQ(claim, in_eu ? "eu" : "us");
    for (int i = 0; i < n; i++) {
        json_t *j = ts_rt_answer_json(&jobs[i].ans);
        if (jobs[i].ans.status != 200 || !j)
            ts_fail("%s (router %d): %d %s", regid, jobs[i].port == rt->cp[0]->port ? 1 : 2, jobs[i].ans.status,
                    jobs[i].ans.body);
        TS_EXPECT_STREQ(ts_jstr(j, "stamp"), stamp);
    }
}

static void test_racing_first_locates(void **state)
{
    static struct ts_rt_job same[NSAME], many[NJOBS];
    (void)state;

    for (int i = 0; i < 4; i++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], euonly, ts_str("pre-%d", i)), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], usonly, ts_str("pre-%d", i)), 200);
    }
    memset(same, 0, sizeof same);
    for (int i = 0; i < NSAME; i++)
        job_set(&same[i], i % 2, "same-1");
    ts_rt_run_jobs(same, NSAME, NSAME);

    memset(many, 0, sizeof many);
    for (int i = 0; i < NJOBS; i++)
        job_set(&many[i], i % 2, ts_str("dev-%d", i % NDEV));
    ts_rt_run_jobs(many, NJOBS, 50);

    check_device("same-1", same, NSAME);
    for (int d = 0; d < NDEV; d++) {
        struct ts_rt_job mine[NEACH];
        int k = 0;
        for (int i = d; i < NJOBS; i += NDEV)
            mine[k++] = many[i];
        check_device(ts_str("dev-%d", d), mine, k);
    }
    ts_log("devices in eu: %ld, in us: %ld (of %d)",
           ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE tenant_id = 'multi'"),
           ts_pg_count(us_db, "SELECT count(*) FROM devices WHERE tenant_id = 'multi'"), NDEV + 1);
    /* single-geography tenants need no claim */
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_claims WHERE tenant_id <> 'multi'"), 0);
}

static void test_fence_and_move_on(void **state)
{
    const char *t1, *t2;
    (void)state;
    /* a claim for us whose assignment never happened */
    t1 = ts_pg_scalar(eu_db, "SELECT token FROM cp_claim_device('multi', 'lost-1', 'us', NULL)");
    assert_non_null(t1);
    /* another request sees it: elsewhere, same token */
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT outcome || ':' || geography || ':' || token FROM"
                                        " cp_claim_device('multi', 'lost-1', 'eu', NULL)"),
                    ts_str("elsewhere:us:%s", t1));
    /* us can't take it: fence the claim there, then nothing may commit under it */
    TS_EXPECT_STREQ(ts_pg_scalar(us_db, ts_str("SELECT cp_fence_claim('multi', 'lost-1', %s)", t1)), "fenced");
    TS_EXPECT_STREQ(ts_pg_scalar(us_db, ts_str("SELECT outcome FROM cp_assign_claimed_device(%s, 'multi', 'lost-1',"
                                               " 'us-east', 'us-a', 'us-a-dps', 's', 'e', 40, '{}', 'x')", t1)),
                    "claim_moved");
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM devices WHERE registration_id = 'lost-1'"), 0);
    /* moving on needs the fenced token */
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, ts_str("SELECT outcome || ':' || geography FROM"
                                               " cp_claim_device('multi', 'lost-1', 'eu', %s - 1)", t1)),
                    "elsewhere:us");
    t2 = ts_pg_scalar(eu_db, ts_str("SELECT outcome || ':' || geography || ':' || (token > %s) FROM"
                                    " cp_claim_device('multi', 'lost-1', 'eu', %s)", t1, t1));
    TS_EXPECT_STREQ(t2, "claimed:eu:true");
    /* an assigned device's claim can't be fenced */
    t2 = ts_pg_scalar(eu_db, "SELECT token FROM device_claims WHERE registration_id = 'same-1'");
    TS_EXPECT_STREQ(ts_pg_scalar(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id = 'same-1'")
                                     ? eu_db : us_db,
                                 ts_str("SELECT cp_fence_claim('multi', 'same-1', %s)", t2)),
                    "active");
    /* the router places the half-claimed device where the claim now says */
    {
        struct ts_resp *r = ts_rt_locate(rt->cp[1], multi, "lost-1");
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_racing_first_locates),
        cmocka_unit_test(test_fence_and_move_on),
    };
    ts_init("test_assign_one_geo");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
