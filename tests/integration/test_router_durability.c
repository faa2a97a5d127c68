/*
 * test_router_durability - "The answer to a first request is sent only after
 * the assignment committed in the device's geography database"
 * (docs/api.md): 4 threads stream first-time locates of distinct devices at
 * one router, which is killed with SIGKILL after about a second. Every
 * device that got a 200 before the kill is in the geography database with
 * the stamp, DPS (idScope), endpoint and etag it was told, and a second
 * router (same databases) answers it the same. Nothing that wasn't answered
 * 200 is half-written (dps_usage agrees with the rows, one history row each).
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

#define NJOBS 20000
#define NTHREADS 4

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps", 0, 10000000 } },
          .hubs = { { "eu-west-1-hub" } } },
        { .id = "eu-west-2", .region = "eu-west", .dps = { { "eu-west-2-dps", 0, 10000000 } },
          .hubs = { { "eu-west-2-hub" } } },
    },
};

static struct ts_rt_job jobs[NJOBS];

static int group_setup(void **state)
{
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    return 0;
}

static void test_kill_during_stream(void **state)
{
    struct ts_rt_batch *b;
    struct ts_cp *victim = rt->cp[0];
    int n200 = 0, nother = 0, nlost = 0, checked = 0;
    PGresult *res;

    for (int i = 0; i < NJOBS; i++) {
        ts_rt_job_locate(&jobs[i], victim->port, acme, ts_str("dur-%05d", i));
    }
    b = ts_rt_batch_start(jobs, NJOBS, NTHREADS);
    ts_sleep_ms(1000);
    ts_proc_kill(victim->proc, SIGKILL);
    ts_rt_batch_stop(b);
    ts_rt_batch_wait(b);
    assert_true(ts_proc_wait(victim->proc, 5000));
    ts_log("router killed with SIGKILL (signal %d)", ts_proc_term_signal(victim->proc));

    /* every answered device, as answered */
    res = ts_pg_query(eu_db, "SELECT registration_id, stamp_id, dps_id, id_scope, dps_endpoint, etag::text, status"
                             " FROM devices WHERE tenant_id = 'acme' ORDER BY registration_id");
    for (int i = 0; i < NJOBS; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        json_t *j;
        const char *id = ts_str("dur-%05d", i);
        int row = -1;
        if (!jobs[i].done)
            continue;
        if (a->status != 200) {
            if (a->status != 0)
                nother++;
            continue;
        }
        n200++;
        j = ts_rt_answer_json(a);
        if (!j || !ts_jstr(j, "stamp") || !ts_jstr(j, "idScope") || !ts_jstr(j, "dpsEndpoint") || !ts_jstr(j, "etag"))
            ts_fail("%s answered 200 without a complete body: %s", id, a->body);
        for (int k = 0; k < PQntuples(res); k++)
            if (strcmp(PQgetvalue(res, k, 0), id) == 0) {
                row = k;
                break;
            }
        if (row < 0) {
            nlost++;
            ts_log("LOST: %s answered 200 %s but is not in the database", id, a->body);
            continue;
        }
        if (strcmp(PQgetvalue(res, row, 1), ts_jstr(j, "stamp")) != 0 ||
            strcmp(PQgetvalue(res, row, 3), ts_jstr(j, "idScope")) != 0 ||
            strcmp(PQgetvalue(res, row, 4), ts_jstr(j, "dpsEndpoint")) != 0 ||
            strcmp(PQgetvalue(res, row, 5), ts_jstr(j, "etag")) != 0 ||
            strcmp(PQgetvalue(res, row, 6), "assigned") != 0) {
            const char *msg = ts_str("%s answered %s but the row is %s/%s/%s/%s/%s", id, a->body,
                                     PQgetvalue(res, row, 1), PQgetvalue(res, row, 3), PQgetvalue(res, row, 4),
                                     PQgetvalue(res, row, 5), PQgetvalue(res, row, 6));
            PQclear(res);
            ts_fail("%s", msg);
        }
    }
    ts_log("%d answered 200 before the kill, %d rows in the database, %d other answers, %d lost", n200,
           PQntuples(res), nother, nlost);
    {
        int nrows = PQntuples(res);
        PQclear(res);
        if (nlost)
            ts_fail("%d devices answered 200 are missing from the geography database", nlost);
        if (n200 < 20)
            ts_fail("only %d placements in the second before the kill: the stream did not run", n200);
        /* in-flight requests may have committed without their answer arriving; nothing else */
        if (nrows < n200 || nrows > n200 + NTHREADS)
            ts_fail("%d rows for %d answered placements (at most %d in flight)", nrows, n200, NTHREADS);
    }
    if (nother)
        ts_fail("%d answers were neither 200 nor a dropped connection", nother);

    /* the database is consistent: usage = rows, one 'assigned' history row per device */
    {
        ts_rt_expect_usage_matches(eu_db, "after the kill");
        assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices d WHERE (SELECT count(*) FROM device_history h"
                                            " WHERE h.registration_id = d.registration_id AND h.event = 'assigned') <> 1"),
                         0);
    }

    /* the surviving router answers them the same */
    for (int i = 0; i < NJOBS && checked < 25; i++) {
        struct ts_resp *r;
        json_t *j;
        if (!jobs[i].done || jobs[i].ans.status != 200)
            continue;
        j = ts_rt_answer_json(&jobs[i].ans);
        r = ts_rt_locate(rt->cp[1], acme, ts_str("dur-%05d", i));
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), ts_jstr(j, "stamp"));
        TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_jstr(j, "idScope"));
        TS_EXPECT_STREQ(ts_jstr(r->json, "etag"), ts_jstr(j, "etag"));
        TS_EXPECT_STREQ(ts_jstr(r->json, "assignedAt"), ts_jstr(j, "assignedAt"));
        checked++;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_during_stream),
    };
    ts_init("test_router_durability");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
