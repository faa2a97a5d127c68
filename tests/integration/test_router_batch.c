/*
 * test_router_batch - the router's natural batching of lookups and first
 * assignments (docs/architecture.md "Batching") answers exactly as one
 * statement per device would:
 *
 * eu has one DPS instance. Tenant "other" first holds ten registration ids
 * (held-0..9). Then 300 first locates arrive at once over 64 connections:
 * 160 new devices of "acme" (40 of them asked twice or three times, all in
 * flight together), acme's held-0..9 (another tenant has them on the only
 * DPS: 503 capacity_exhausted, target registrationId), and both tenants'
 * race-0..14 (new for both: exactly one tenant gets each, the other one a
 * 503 - the unique violation aborts a whole batch, whose items then run one
 * by one). Afterwards: every 200 agrees with the database, repeated asks of
 * a device got the same answer, each device is in the database once with one
 * 'assigned' history row, and dps_usage equals the assigned rows.
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

#define NNEW 160
#define NREPEAT 40
#define NHELD 10
#define NRACE 15
#define NJOBS (NNEW + 2 * NREPEAT + NHELD + 2 * NRACE)

static struct ts_rt *rt;
static struct ts_tenant *acme, *other;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps", 100000, 100000 } },
          .hubs = { { "eu-west-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    (void)state;
    rt = ts_rt_start_fleet_acme(&layout, 1, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    other = ts_rt_tenant(rt->cp[0], "{\"id\":\"other\",\"name\":\"Other\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

static void job_set(struct ts_rt_job *j, const struct ts_tenant *t, const char *tid, const char *regid)
{
    j->port = rt->cp[0]->port;
    j->path = ts_str("/v1/tenants/%s/registrations/%s/locate", tid, regid);
    j->authz = ts_rt_sas(t, regid, 0);
}

static const char *job_regid(const struct ts_rt_job *j)
{
    const char *p = strstr(j->path, "/registrations/") + strlen("/registrations/");
    return ts_str("%.*s", (int)(strchr(p, '/') - p), p);
}

static void test_concurrent_first_locates(void **state)
{
    static struct ts_rt_job jobs[NJOBS];
    int n = 0;
    (void)state;

    /* other's devices first: acme's held-* then collide with them */
    for (int i = 0; i < NHELD; i++) {
        struct ts_rt_job j;
        memset(&j, 0, sizeof j);
        job_set(&j, other, "other", ts_str("held-%d", i));
        ts_rt_run_jobs(&j, 1, 1);
        if (j.ans.status != 200)
            ts_fail("other's held-%d: %d %s", i, j.ans.status, j.ans.body);
    }

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NNEW; i++)
        job_set(&jobs[n++], acme, "acme", ts_str("new-%d", i));
    for (int i = 0; i < NREPEAT; i++) {
        job_set(&jobs[n++], acme, "acme", ts_str("new-%d", i * 3));
        job_set(&jobs[n++], acme, "acme", ts_str("new-%d", i * 3 + (i % 2)));
    }
    for (int i = 0; i < NHELD; i++)
        job_set(&jobs[n++], acme, "acme", ts_str("held-%d", i));
    for (int i = 0; i < NRACE; i++) {
        job_set(&jobs[n++], acme, "acme", ts_str("race-%d", i));
        job_set(&jobs[n++], other, "other", ts_str("race-%d", i));
    }
    assert_int_equal(n, NJOBS);
    /* interleave, so that every kind is in flight at once */
    for (int i = 0; i < n; i++) {
        int k = (int)(((unsigned)i * 7919u) % (unsigned)n);
        struct ts_rt_job t = jobs[i];
        jobs[i] = jobs[k];
        jobs[k] = t;
    }
    ts_rt_run_jobs(jobs, n, 64);

    for (int i = 0; i < n; i++) {
        const char *regid = job_regid(&jobs[i]);
        const char *tid = strstr(jobs[i].path, "/tenants/other/") ? "other" : "acme";
        const struct ts_rt_answer *a = &jobs[i].ans;
        if (strncmp(regid, "new-", 4) == 0) {
            json_t *j = ts_rt_answer_json(a);
            if (a->status != 200 || !j)
                ts_fail("acme %s: %d %s", regid, a->status, a->body);
            TS_EXPECT_STREQ(ts_jstr(j, "stamp"), "eu-west-1");
            TS_EXPECT_STREQ(ts_pg_scalar(eu_db, ts_str("SELECT etag || ' ' || cp_ts(assigned_at) FROM devices"
                                                       " WHERE tenant_id = 'acme' AND registration_id = '%s'",
                                                       regid)),
                            ts_str("%s %s", ts_jstr(j, "etag"), ts_jstr(j, "assignedAt")));
        } else if (strncmp(regid, "held-", 5) == 0) {
            if (a->status != 503 || !ts_rt_answer_code(a) || strcmp(ts_rt_answer_code(a), "capacity_exhausted") != 0 ||
                !strstr(a->body, "registrationId"))
                ts_fail("acme %s (held by other): %d %s", regid, a->status, a->body);
        } else {
            /* race-*: 200 for the tenant that holds it now, 503 for the other */
            const char *holder = ts_pg_scalar(eu_db, ts_str("SELECT tenant_id FROM devices WHERE registration_id = '%s'"
                                                            " AND status = 'assigned'", regid));
            if (!holder)
                ts_fail("%s: nobody holds it (%s got %d %s)", regid, tid, a->status, a->body);
            if (strcmp(holder, tid) == 0 ? a->status != 200 : a->status != 503)
                ts_fail("%s asked by %s (held by %s): %d %s", regid, tid, holder, a->status, a->body);
        }
    }
    /* each device once, with one 'assigned' history row */
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE tenant_id = 'acme'"
                                        " AND registration_id LIKE 'new-%'"),
                     NNEW);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'race-%'"), NRACE);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id LIKE 'held-%'"), NHELD);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM (SELECT tenant_id, registration_id FROM device_history"
                                        " WHERE event = 'assigned' GROUP BY 1, 2 HAVING count(*) <> 1) x"),
                     0);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_history WHERE event = 'assigned'"),
                     NNEW + NRACE + NHELD);
    ts_rt_expect_usage_matches(eu_db, "after the batches");
    assert_int_equal(ts_pg_count(eu_db, "SELECT coalesce(sum(registrations), 0) FROM dps_usage"), NNEW + NRACE + NHELD);
}

static void test_repeat_lookups_batched(void **state)
{
    /* the same devices again, all at once: the same answers, no write */
    static struct ts_rt_job jobs[NNEW];
    long hist = ts_pg_count(eu_db, "SELECT count(*) FROM device_history");
    (void)state;
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NNEW; i++)
        job_set(&jobs[i], acme, "acme", ts_str("new-%d", i));
    ts_rt_run_jobs(jobs, NNEW, 64);
    for (int i = 0; i < NNEW; i++)
        if (jobs[i].ans.status != 200)
            ts_fail("new-%d again: %d %s", i, jobs[i].ans.status, jobs[i].ans.body);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_history"), hist);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_first_locates),
        cmocka_unit_test(test_repeat_lookups_batched),
    };
    ts_init("test_router_batch");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
