/*
 * test_ha_redis_failover - Redis runs as a master, a replica and three
 * Sentinels (infra/redis-sentinel-ctl); two routers and the stamp agents find
 * the master through the Sentinels ("redisSentinel": {"masterName",
 * "sentinels"}) and follow it when it moves.
 *
 * 1. test_kill_master: kill -9 the master. Measured from the kill, each
 *    within REDIS_FAILOVER_BOUND_MS (numbers in docs/deploy.md "Failures"):
 *     - rate limiting: both routers place a new device again (a placement
 *       takes its DPS token with a script on the master);
 *     - load reports: the stamp agent writes its report to the new master
 *       and both routers see the stamp healthy;
 *     - invalidations: a tenant change through each router is published on
 *       the new master (a subscriber of cp:invalidate there receives it).
 *    Then the killed server comes back as a replica.
 * 2. test_restart_without_data: the master is killed and started again at
 *    once without its data (the replica resyncs from it: every bucket is
 *    gone). A burst of first locates against a DPS of 60 registrations per
 *    minute, right after, gets no more placements than the refill since the
 *    restart plus a small start (RESTART_START_TOKENS): the buckets start
 *    conservatively after data loss instead of full (the `overload` change).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "ts.h"

#define REDIS_FAILOVER_BOUND_MS 20000
/* Tokens a DPS bucket may hold right after Redis lost its data: 10 % of a
 * minute (6 of 60). A full bucket would let 60 through at once. */
#define RESTART_START_TOKENS 6
#define NBURST 60
#define NTHREADS 8

static struct ts_sentinel *sen;
static struct ts_rt *rt;
static struct ts_tenant *acme, *burst;
static int probe_seq;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps", 0, 6000 } },
          .hubs = { { "eu-west-1-hub" } } },
        { .id = "us-east-1", .region = "us-east", .dps = { { "us-east-1-dps", 0, 60 } },
          .hubs = { { "us-east-1-hub" } } },
    },
};

static struct ts_rt_job jobs[NBURST + 20];

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 2, .geos = { "eu", "us", NULL } };
    sen = ts_sentinel_start("rt");
    o.redis_sentinel = sen->sentinel_json;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    acme = ts_rt_tenant_acme(rt->cp[0]);
    burst = ts_rt_tenant(rt->cp[0], "{\"id\":\"burst\",\"name\":\"Burst\",\"residency\":{\"geographies\":[\"us\"]}}");
    return 0;
}

/* A new acme device through router c: its status (200 placed, 429 bucket ran, 503 no Redis). */
static int place_new(int c)
{
    struct ts_resp *r = ts_rt_locate(rt->cp[c], acme, ts_str("probe-%d", probe_seq++));
    int st = r->status;
    if (st != 200 && st != 429 && st != 503 && st != 0)
        ts_fail("router %d answered a new device %s", c, ts_resp_str(r));
    ts_resp_free(r);
    return st;
}

/* The stamp's last report on the current master is newer than since (wall ms). */
static bool report_after(int64_t since)
{
    const char *m = ts_sentinel_master(sen);
    const char *v = ts_redis_cmd(m, "HGET stamp:eu-west-1:load ts");
    return v && atoll(v) > since;
}

static int patch_tenant(int c, int n)
{
    struct ts_resp *r = ts_admin(rt->cp[c], "PATCH", "/v1/tenants/acme", ts_str("{\"name\":\"Acme %d\"}", n));
    int st = r->status;
    if (st != 200 && st != 503 && st != 0)
        ts_fail("PATCH /v1/tenants/acme through router %d: %s", c, ts_resp_str(r));
    if (st == 503 && !ts_header(r, "Retry-After"))
        ts_fail("PATCH /v1/tenants/acme through router %d: 503 without Retry-After: %s", c, ts_resp_str(r));
    ts_resp_free(r);
    return st;
}

/* A tenant change through router c is published on the current master: a
 * subscriber there sees it (a 200 alone does not say so: a change committed
 * while the router has not yet noticed the dead connection is answered 200
 * with its invalidation undelivered, and the caches cleared). */
static bool inval_on_master(int c, int n)
{
    struct ts_redis_sub *sub = ts_redis_subscribe(ts_sentinel_master(sen), "cp:invalidate");
    const char *msg;
    bool seen = false;
    if (!sub)
        return false;
    if (patch_tenant(c, n) == 200)
        while (!seen && (msg = ts_redis_sub_next(sub, 1500)))
            seen = strncmp(msg, "tenant acme ", 12) == 0;
    ts_redis_sub_close(sub);
    return seen;
}

static void test_kill_master(void **state)
{
    int64_t t0, t0_wall, at_rl[2] = { -1, -1 }, at_inval[2] = { -1, -1 }, at_report = -1, at_healthy = -1;
    const char *old, *now;
    int n = 0;

    /* all works before */
    for (int c = 0; c < 2; c++) {
        assert_int_equal(place_new(c), 200);
        assert_true(inval_on_master(c, n++));
    }
    assert_true(report_after(wall_ms() - 2000));

    ts_http_set_timeout(5000);
    old = ts_sentinel_kill_master(sen);
    t0 = ts_now_ms();
    t0_wall = wall_ms();
    while (at_rl[0] < 0 || at_rl[1] < 0 || at_inval[0] < 0 || at_inval[1] < 0 || at_report < 0 || at_healthy < 0) {
        int64_t el = ts_now_ms() - t0;
        if (el > REDIS_FAILOVER_BOUND_MS)
            ts_fail("not everything resumed %d ms after the master was killed: placements %lld/%lld ms, tenant"
                    " changes %lld/%lld ms, reports %lld ms, stamp healthy %lld ms (-1: not yet); master now %s",
                    REDIS_FAILOVER_BOUND_MS, (long long)at_rl[0], (long long)at_rl[1], (long long)at_inval[0],
                    (long long)at_inval[1], (long long)at_report, (long long)at_healthy, ts_sentinel_master(sen));
        for (int c = 0; c < 2; c++) {
            if (at_rl[c] < 0 && place_new(c) == 200)
                at_rl[c] = ts_now_ms() - t0;
            if (at_inval[c] < 0 && inval_on_master(c, n++))
                at_inval[c] = ts_now_ms() - t0;
        }
        if (at_report < 0 && report_after(t0_wall))
            at_report = ts_now_ms() - t0;
        if (at_report >= 0 && at_healthy < 0 && strcmp(ts_rt_health(rt->cp[0], "eu-west-1"), "healthy") == 0 &&
            strcmp(ts_rt_health(rt->cp[1], "eu-west-1"), "healthy") == 0)
            at_healthy = ts_now_ms() - t0;
        ts_sleep_ms(100);
    }
    now = ts_sentinel_master(sen);
    ts_log("master %s killed; new master %s. Resumed after: placements (rate limit) %lld / %lld ms, tenant changes"
           " (invalidations) %lld / %lld ms (router 0 / 1), load reports %lld ms, stamp healthy on both %lld ms",
           old, now, (long long)at_rl[0], (long long)at_rl[1], (long long)at_inval[0], (long long)at_inval[1],
           (long long)at_report, (long long)at_healthy);
    if (strcmp(old, now) == 0)
        ts_fail("the Sentinels still name %s as master", old);
    ts_http_set_timeout(10000);

    /* the old master comes back as a replica */
    ts_sentinel_start_node(sen, old);
    ts_sentinel_wait(sen, 30);
    TS_EXPECT_STREQ(ts_sentinel_master(sen), now);
    for (int c = 0; c < 2; c++)
        assert_int_equal(place_new(c), 200);
}

static void burst_jobs(const char *prefix, int n)
{
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < n; i++) {
        ts_rt_job_locate(&jobs[i], rt->cp[i % 2]->port, burst, ts_str("%s-%03d", prefix, i));
    }
}

static void count(int n, int *n200, int *n429, int *nother)
{
    *n200 = *n429 = *nother = 0;
    for (int i = 0; i < n; i++) {
        if (jobs[i].ans.status == 200)
            (*n200)++;
        else if (jobs[i].ans.status == 429)
            (*n429)++;
        else if ((*nother)++ == 0)
            ts_log("first other answer: %d %s", jobs[i].ans.status, jobs[i].ans.body);
    }
}

static bool redis_back(void *arg)
{
    /* 200 or 429: the router ran its bucket script on the (restarted) master */
    int a = place_new(0), b = place_new(1);
    return (a == 200 || a == 429) && (b == 200 || b == 429);
}

static void test_restart_without_data(void **state)
{
    int n200, n429, nother;
    int64_t t_restart, t_end;
    double allowance;
    const char *m;

    /* use the us DPS's bucket up: the limit holds (a full bucket + 1/s refill) */
    burst_jobs("pre", NBURST + 20);
    t_restart = ts_now_ms();
    ts_rt_run_jobs(jobs, NBURST + 20, NTHREADS);
    count(NBURST + 20, &n200, &n429, &nother);
    allowance = NBURST + (double)(ts_now_ms() - t_restart) / 1000.0 + 1;
    ts_log("before the restart: %d placed, %d throttled, %d other (allowance %.1f)", n200, n429, nother, allowance);
    if (n429 == 0 || n200 > allowance || nother)
        ts_fail("the 60/min limit did not hold before the restart: %d placed, %d throttled, %d other", n200, n429,
                nother);

    m = ts_sentinel_restart_empty(sen);
    t_restart = ts_now_ms();
    if (ts_redis_cmd(m, "EXISTS dps:us-east-1-dps:bucket") && atoi(ts_redis_cmd(m, "EXISTS dps:us-east-1-dps:bucket")))
        ts_fail("the restarted master still has the bucket");
    ts_http_set_timeout(5000);
    if (!ts_wait_until(redis_back, NULL, REDIS_FAILOVER_BOUND_MS))
        ts_fail("the routers did not reach the restarted master within %d ms", REDIS_FAILOVER_BOUND_MS);
    ts_http_set_timeout(10000);
    ts_log("routers back on the restarted master after %lld ms", (long long)(ts_now_ms() - t_restart));

    burst_jobs("post", NBURST);
    ts_rt_run_jobs(jobs, NBURST, NTHREADS);
    t_end = ts_now_ms();
    count(NBURST, &n200, &n429, &nother);
    /* 1 token/s refill since the restart, plus the conservative start */
    allowance = (double)(t_end - t_restart) / 1000.0 + 1 + RESTART_START_TOKENS;
    ts_log("burst after the restart without data: %d placed, %d throttled, %d other in %lld ms since the restart"
           " (allowance %.1f)",
           n200, n429, nother, (long long)(t_end - t_restart), allowance);
    if (nother)
        ts_fail("%d answers of the burst were neither 200 nor 429", nother);
    if (n200 > allowance)
        ts_fail("a Redis restart without its data let %d placements of a 60/min DPS through in %lld ms"
                " (allowed %.1f): the buckets started full",
                n200, (long long)(t_end - t_restart), allowance);
    ts_sentinel_wait(sen, 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_master),
        cmocka_unit_test(test_restart_without_data),
    };
    ts_init("test_ha_redis_failover");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
