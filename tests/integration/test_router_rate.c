/*
 * test_router_rate - a DPS instance's registrations/minute limit holds across
 * control plane instances (one token bucket in Redis per DPS, docs/api.md 429
 * `throttled`, docs/architecture.md "Rate"):
 *
 * Two routers on the same databases and Redis, one stamp whose single DPS
 * allows 60 registrations per minute (a bucket of 60 that refills 1/s).
 * 500 first-time locates of distinct devices are fired from 16 threads,
 * alternating between the routers, as fast as they go:
 *  - 200s: at least 55 and at most 60 + (elapsed seconds + 1);
 *  - every other answer is 429 throttled with a JSON body and an integer
 *    Retry-After in [1, 3], and the values are not all the same (jitter);
 *  - the devices table holds exactly the devices that got 200;
 * then, after waiting Retry-After, a throttled device is placed.
 *
 * test_bucket_after_data_loss: Redis loses every key (FLUSHALL, as a restart
 * without persistence would), then 120 new devices are fired at once: the
 * buckets start empty and refill (ratelimit.h "After Redis loses its data"),
 * so at most (seconds since the loss + 2) are placed, not a fresh 60.
 *
 * test_data_loss_with_every_router_restarted: both routers stop, Redis loses
 * every key, both start again: no router remembers the epoch in memory, but
 * the global catalog does (schema/global/014, ratelimit_epoch.c), so the
 * buckets again start empty: at most (seconds since the first request + 2)
 * of 120 are placed.
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

#define NREQ 500
#define NTHREADS 16

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps", 0, 60 } },
          .hubs = { { "eu-west-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    return 0;
}

static struct ts_rt_job jobs[NREQ];

static void test_shared_bucket(void **state)
{
    int n200 = 0, n429 = 0, ra_min = 1000, ra_max = -1;
    int64_t t0, elapsed;
    double allowance;
    int first_throttled = -1;

    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < NREQ; i++) {
        ts_rt_job_locate(&jobs[i], rt->cp[i % 2]->port, acme, ts_str("rate-%03d", i));
    }
    t0 = ts_now_ms();
    ts_rt_run_jobs(jobs, NREQ, NTHREADS);
    elapsed = ts_now_ms() - t0;

    for (int i = 0; i < NREQ; i++) {
        struct ts_rt_answer *a = &jobs[i].ans;
        if (a->status == 200) {
            json_t *j = ts_rt_answer_json(a);
            n200++;
            TS_EXPECT_STREQ(ts_jstr(j, "stamp"), "eu-west-1");
        } else if (a->status == 429) {
            const char *code = ts_rt_answer_code(a);
            char *end;
            long ra;
            n429++;
            if (!code || strcmp(code, "throttled") != 0)
                ts_fail("request %d: 429 without error code throttled: %s", i, a->body);
            if (!a->retry_after[0])
                ts_fail("request %d: 429 without Retry-After: %s", i, a->body);
            ra = strtol(a->retry_after, &end, 10);
            if (*end || end == a->retry_after || ra < 1 || ra > 3)
                ts_fail("request %d: Retry-After \"%s\" is not an integer in [1, 3] (bucket refills 1/s)", i,
                        a->retry_after);
            if (ra < ra_min) ra_min = (int)ra;
            if (ra > ra_max) ra_max = (int)ra;
            if (first_throttled < 0)
                first_throttled = i;
        } else {
            ts_fail("request %d (router %d): only 200 or 429 expected, got %d %s", i, i % 2, a->status, a->body);
        }
    }
    allowance = 60.0 + (double)elapsed / 1000.0 + 1.0;
    ts_log("%d requests in %lld ms: %d x 200, %d x 429 (allowed at most %.1f); Retry-After %d..%d", NREQ,
           (long long)elapsed, n200, n429, allowance, ra_min, ra_max);
    if (elapsed > 8000)
        ts_fail("the burst took %lld ms; the bound needs it to be fast", (long long)elapsed);
    if (n200 < 55)
        ts_fail("only %d placements: the full bucket (60) should admit at least 55", n200);
    if ((double)n200 > allowance)
        ts_fail("%d placements exceed 60 + refill (%.1f): the routers do not share the bucket", n200, allowance);
    if (ra_min == ra_max)
        ts_fail("all %d Retry-After values are %d: no jitter", n429, ra_min);

    /* what answered 200 is what is stored, and nothing else */
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices"), n200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE status = 'assigned'"), n200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT registrations FROM dps_usage WHERE dps_id = 'eu-west-1-dps'"), n200);
    {
        /* one query: which devices have a row */
        PGresult *res = ts_pg_query(eu_db, "SELECT registration_id FROM devices ORDER BY registration_id");
        static bool has_row[NREQ];
        const char *err = NULL;
        memset(has_row, 0, sizeof has_row);
        for (int k = 0; k < PQntuples(res); k++) {
            int i = atoi(PQgetvalue(res, k, 0) + 5);
            if (strncmp(PQgetvalue(res, k, 0), "rate-", 5) == 0 && i >= 0 && i < NREQ)
                has_row[i] = true;
        }
        PQclear(res);
        for (int i = 0; i < NREQ && !err; i++)
            if (has_row[i] != (jobs[i].ans.status == 200))
                err = ts_str("device rate-%03d answered %d but %s a row", i, jobs[i].ans.status,
                             has_row[i] ? "has" : "has no");
        if (err)
            ts_fail("%s", err);
    }

    /* placed devices are still answered while the bucket is empty (no token needed for a lookup) */
    for (int i = 0; i < NREQ; i++) {
        if (jobs[i].ans.status == 200) {
            const char *id = ts_str("rate-%03d", i);
            TS_EXPECT_STATUS(ts_rt_locate(rt->cp[(i + 1) % 2], acme, id), 200);
            break;
        }
    }

    /* after Retry-After (+ a margin) a throttled device gets its placement */
    if (first_throttled >= 0) {
        const char *id = ts_str("rate-%03d", first_throttled);
        struct ts_resp *r;
        ts_sleep_ms(ra_max * 1000 + 200);
        r = ts_rt_locate(rt->cp[0], acme, id);
        TS_EXPECT_STATUS(r, 200);
    }
}

#define NLOSS 120

static struct ts_rt_job loss_jobs[NLOSS];

/* NLOSS first locates (ids PREFIX-NNN) right after a loss: at most one
 * token per second since t0, +2, may be placed. */
static void burst_after_loss(const char *prefix, int64_t t0)
{
    int n200 = 0, before = ts_pg_count(eu_db, "SELECT count(*) FROM devices");
    int64_t elapsed;

    memset(loss_jobs, 0, sizeof loss_jobs);
    for (int i = 0; i < NLOSS; i++) {
        ts_rt_job_locate(&loss_jobs[i], rt->cp[i % 2]->port, acme, ts_str("%s-%03d", prefix, i));
    }
    ts_rt_run_jobs(loss_jobs, NLOSS, NTHREADS);
    elapsed = ts_now_ms() - t0;
    for (int i = 0; i < NLOSS; i++) {
        if (loss_jobs[i].ans.status == 200)
            n200++;
        else if (loss_jobs[i].ans.status != 429)
            ts_fail("request %d: only 200 or 429 expected, got %d %s", i, loss_jobs[i].ans.status,
                    loss_jobs[i].ans.body);
    }
    ts_log("after the data loss: %d of %d placed in %lld ms", n200, NLOSS, (long long)elapsed);
    if ((double)n200 > (double)elapsed / 1000.0 + 2.0)
        ts_fail("%d placements within %lld ms of losing the buckets: a burst went through (allowed %.1f)", n200,
                (long long)elapsed, (double)elapsed / 1000.0 + 2.0);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices"), before + n200);
}

static void flushall(void)
{
    const char *reply = ts_redis_cmd(rt->redis->addr, "FLUSHALL");
    if (!reply || strcmp(reply, "OK") != 0)
        ts_fail("FLUSHALL: %s", reply ? reply : "(no reply)");
}

static void test_bucket_after_data_loss(void **state)
{
    (void)state;
    flushall();
    burst_after_loss("loss", ts_now_ms());
}

static void test_data_loss_with_every_router_restarted(void **state)
{
    (void)state;
    /* the epoch the routers saw is in the catalog */
    assert_int_equal(ts_pg_count(rt->cp[0]->global_db, "SELECT count(*) FROM ratelimit_epoch"), 1);
    for (int i = 0; i < rt->ncp; i++)
        if (ts_controlplane_stop(rt->cp[i], 10000) != 0)
            ts_fail("control plane %d did not stop cleanly", i);
    flushall();
    for (int i = 0; i < rt->ncp; i++)
        ts_controlplane_spawn(rt->cp[i]);
    for (int i = 0; i < rt->ncp; i++)
        if (!ts_controlplane_wait_ready(rt->cp[i], 20000))
            ts_fail("control plane %d not ready after the restart: %s", i,
                    ts_resp_str(ts_get(rt->cp[i], "/readyz")));
    burst_after_loss("restart", ts_now_ms());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_bucket),
        cmocka_unit_test(test_bucket_after_data_loss),
        cmocka_unit_test(test_data_loss_with_every_router_restarted),
    };
    ts_init("test_router_rate");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
