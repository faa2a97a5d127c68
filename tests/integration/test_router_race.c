/*
 * test_router_race - concurrent first requests for one device end in one
 * assignment (docs/architecture.md "Assign": SELECT ... FOR UPDATE, a
 * concurrent first request sees `existing`):
 *
 * 50 threads ask two routers (half each) at the same moment to locate one
 * new device: every answer is 200 with the same stamp, DPS, assignedAt and
 * etag; the geography database holds one devices row, one 'assigned'
 * history row, and dps_usage counts one registration. Repeated for several
 * devices, and once with a tenant whose SAS and installer token are mixed.
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

#define NREQ 50

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { "eu-north", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = "eu-west-2", .region = "eu-west", .dps = { { "eu-west-2-dps" } }, .hubs = { { "eu-west-2-hub" } } },
        { .id = "eu-north-1", .region = "eu-north", .dps = { { "eu-north-1-dps" } }, .hubs = { { "eu-north-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    return 0;
}

static void race_one(const char *regid, const char *alt_authz)
{
    static struct ts_rt_job jobs[NREQ];
    const char *sas = ts_rt_sas(acme, regid, 0);
    const char *path = ts_str("/v1/tenants/acme/registrations/%s/locate", regid);
    json_t *first = NULL;
    const char *fields[] = { "stamp", "idScope", "dpsEndpoint", "region", "geography", "assignedAt", "etag" };
    int64_t t0;

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NREQ; i++) {
        jobs[i].port = rt->cp[i % 2]->port;
        jobs[i].path = path;
        jobs[i].authz = alt_authz && i % 3 == 0 ? alt_authz : sas;
    }
    t0 = ts_now_ms();
    ts_rt_run_jobs(jobs, NREQ, NREQ);
    ts_log("%s: %d concurrent first locates in %lld ms", regid, NREQ, (long long)(ts_now_ms() - t0));
    {
        /* collect everything first, so a failure shows the whole picture */
        int n200 = 0, ndiff = 0;
        const char *diff_field = NULL;
        for (int i = 0; i < NREQ; i++) {
            json_t *j;
            if (jobs[i].ans.status != 200)
                ts_fail("%s: request %d (router %d) answered %d %s", regid, i, i % 2, jobs[i].ans.status,
                        jobs[i].ans.body);
            n200++;
            j = ts_rt_answer_json(&jobs[i].ans);
            if (!j)
                ts_fail("%s: request %d answered no JSON: %s", regid, i, jobs[i].ans.body);
            if (!first) {
                first = j;
                continue;
            }
            for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
                const char *a = ts_jstr(first, fields[f]), *b = ts_jstr(j, fields[f]);
                if (!a || !b || strcmp(a, b) != 0) {
                    if (!diff_field) {
                        diff_field = fields[f];
                    }
                    ndiff++;
                    break;
                }
            }
        }
        if (ndiff) {
            const char *etags = ts_str("%s", "");
            for (int i = 0; i < NREQ; i++)
                etags = ts_str("%s%s%s", etags, i ? "," : "", ts_jstr(ts_rt_answer_json(&jobs[i].ans), "etag"));
            ts_fail("%s: %d of %d answers differ from the first (first in %s); etags answered: %s; devices row: %s;"
                    " history: %s; dps_usage (registrations): %s; first answer: %s",
                    regid, ndiff, n200, diff_field, etags,
                    ts_pg_scalar(eu_db, ts_str("SELECT stamp_id || ' etag ' || etag FROM devices"
                                               " WHERE registration_id = '%s'", regid)),
                    ts_pg_scalar(eu_db, ts_str("SELECT count(*) || ' rows: ' || string_agg(event || '->' || to_stamp,"
                                               " ',' ORDER BY id) FROM device_history WHERE registration_id = '%s'",
                                               regid)),
                    ts_pg_scalar(eu_db, "SELECT string_agg(dps_id || '=' || registrations, ',' ORDER BY dps_id)"
                                        " FROM dps_usage"),
                    jobs[0].ans.body);
        }
    }
    assert_int_equal(ts_pg_count(eu_db, ts_str("SELECT count(*) FROM devices WHERE registration_id = '%s'", regid)), 1);
    assert_int_equal(ts_pg_count(eu_db, ts_str("SELECT count(*) FROM device_history WHERE registration_id = '%s'"
                                               " AND event = 'assigned'", regid)),
                     1);
    assert_int_equal(ts_pg_count(eu_db, ts_str("SELECT count(*) FROM device_history WHERE registration_id = '%s'",
                                               regid)),
                     1);
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, ts_str("SELECT stamp_id || ' ' || etag FROM devices WHERE registration_id = '%s'",
                                               regid)),
                    ts_str("%s %s", ts_jstr(first, "stamp"), ts_jstr(first, "etag")));
}

static void check_usage(long expected_total)
{
    ts_rt_expect_usage_matches(eu_db, "after the race");
    assert_int_equal(ts_pg_count(eu_db, "SELECT coalesce(sum(registrations), 0) FROM dps_usage"), expected_total);
}

static void test_one_device_fifty_requests(void **state)
{
    race_one("race-1", NULL);
    check_usage(1);
}

static void test_several_devices(void **state)
{
    for (int i = 2; i <= 5; i++)
        race_one(ts_str("race-%d", i), NULL);
    check_usage(5);
}

static void test_mixed_credentials(void **state)
{
    const char *tok = ts_rt_installer_token(rt->cp[0], "acme");
    race_one("race-mixed", ts_str("Bearer %s", tok));
    check_usage(6);
}

static void test_after_deprovision(void **state)
{
    /* a released device placed again by 50 requests at once: still one assignment */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/race-1/deprovision", NULL), 200);
    check_usage(5);
    {
        static struct ts_rt_job jobs[NREQ];
        const char *sas = ts_rt_sas(acme, "race-1", 0);
        memset(jobs, 0, sizeof jobs);
        for (int i = 0; i < NREQ; i++) {
            jobs[i].port = rt->cp[i % 2]->port;
            jobs[i].path = "/v1/tenants/acme/registrations/race-1/locate";
            jobs[i].authz = sas;
        }
        ts_rt_run_jobs(jobs, NREQ, NREQ);
        for (int i = 1; i < NREQ; i++) {
            if (jobs[i].ans.status != 200 || jobs[0].ans.status != 200)
                ts_fail("race-1 again: %d %s", jobs[i].ans.status, jobs[i].ans.body);
            if (strcmp(ts_jstr(ts_rt_answer_json(&jobs[i].ans), "etag"),
                       ts_jstr(ts_rt_answer_json(&jobs[0].ans), "etag")) != 0 ||
                strcmp(ts_jstr(ts_rt_answer_json(&jobs[i].ans), "stamp"),
                       ts_jstr(ts_rt_answer_json(&jobs[0].ans), "stamp")) != 0)
                ts_fail("race-1 again: answers differ:\n  %s\n  %s", jobs[0].ans.body, jobs[i].ans.body);
        }
    }
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_history WHERE registration_id = 'race-1'"
                                        " AND event = 'assigned'"),
                     2);
    check_usage(6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_device_fifty_requests),
        cmocka_unit_test(test_several_devices),
        cmocka_unit_test(test_mixed_credentials),
        cmocka_unit_test(test_after_deprovision),
    };
    ts_init("test_router_race");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
