/*
 * test_redis_outage - Redis goes away under a running control plane and
 * agent: the control plane stays up (healthz 200) and stays ready but degraded
 * (readyz 200 "degraded", the redis check failing and named in `degraded`,
 * PostgreSQL checks fine: lookups are still served); when Redis comes back on
 * the same port the agent's reports flow again (stamp healthy, lastReportAt
 * advancing) without restarting either daemon.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"

static struct ts_redis *redis;
static struct ts_cp *cp;
static struct ts_proc *agent;
static pid_t cp_pid, agent_pid;

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "eu", NULL }, .stale_after = 3, .down_after = 10 };
    redis = ts_redis_start("outage");
    o.redis = redis->addr;
    cp = ts_controlplane_start(&o);
    cp_pid = cp->proc->pid;
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    ts_admin_post_stamp(cp, "eu", "eu-west", "eu-west-1");
    {
        struct ts_agent_opts a = {
            .stamp_id = "eu-west-1", .region = "eu-west", .redis = redis->addr, .interval_ms = 200,
            .dps = { "eu-west-1-dps", NULL }, .hubs = { "eu-west-1-hub1", NULL },
        };
        agent = ts_agent_start(&a);
        agent_pid = agent->pid;
    }
    return 0;
}

static const char *stamp_field(const char *field)
{
    struct ts_resp *r = ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL);
    if (r->status != 200)
        return NULL;
    return ts_jstr(r->json, field);
}

static bool healthy(void *arg)
{
    const char *h = stamp_field("health");
    return h && strcmp(h, "healthy") == 0;
}

static bool readyz_redis_failing(void *arg)
{
    struct ts_resp *r = ts_get(cp, "/readyz");
    const char *c = ts_jstr(json_object_get(r->json, "checks"), "redis");
    const char *st = ts_jstr(r->json, "status");
    return r->status == 200 && st && strcmp(st, "degraded") == 0 && c && strcmp(c, "ok") != 0 &&
           strstr(ts_resp_str(r), "redis: lookups are served") != NULL;
}

static bool readyz_200(void *arg)
{
    struct ts_resp *r = ts_get(cp, "/readyz");
    const char *st = ts_jstr(r->json, "status");
    return r->status == 200 && st && strcmp(st, "ready") == 0;
}

static void test_redis_outage(void **state)
{
    struct ts_resp *r;
    json_t *checks;
    int64_t t0, last_before, last_after1, last_after2;

    if (!ts_wait_until(healthy, NULL, 3000))
        ts_fail("stamp not healthy 3 s after the agent started: %s",
                ts_resp_str(ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL)));
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    last_before = ts_parse_rfc3339(stamp_field("lastReportAt"));
    assert_true(last_before > 0);

    ts_redis_stop(redis);
    t0 = ts_now_ms();
    ts_http_set_timeout(8000);
    if (!ts_wait_until(readyz_redis_failing, NULL, 5000))
        ts_fail("readyz should be 200 degraded with checks.redis failing within 5 s of Redis stopping: %s",
                ts_resp_str(ts_get(cp, "/readyz")));
    ts_log("readyz reports redis failing after %lld ms", (long long)(ts_now_ms() - t0));
    r = ts_get(cp, "/readyz");
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "degraded");
    checks = json_object_get(r->json, "checks");
    TS_EXPECT_STREQ(ts_jstr(checks, "globalDatabase"), "ok");
    TS_EXPECT_STREQ(ts_jstr(checks, "geo:eu"), "ok");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    /* catalog calls that don't need Redis still work; a stamp GET either works or says redis_unavailable */
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/regions/eu-west", NULL), 200);
    r = ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL);
    if (r->status == 503)
        TS_EXPECT_ERROR(r, 503, "redis_unavailable");
    else
        TS_EXPECT_STATUS(r, 200);
    if (r->elapsed_ms >= 5000)
        ts_fail("GET stamp took %lld ms during the Redis outage", (long long)r->elapsed_ms);
    /* both daemons ride it out */
    ts_sleep_ms(1500);
    if (!ts_proc_alive(cp->proc))
        ts_fail("controlplane died when Redis went away");
    if (!ts_proc_alive(agent))
        ts_fail("stamp-agent died when Redis went away");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);

    ts_redis_restart(redis);
    t0 = ts_now_ms();
    if (!ts_wait_until(readyz_200, NULL, 10000))
        ts_fail("readyz not 200 10 s after Redis came back: %s", ts_resp_str(ts_get(cp, "/readyz")));
    if (!ts_wait_until(healthy, NULL, 10000))
        ts_fail("stamp not healthy 10 s after Redis came back: %s",
                ts_resp_str(ts_admin(cp, "GET", "/v1/stamps/eu-west-1", NULL)));
    ts_log("reports resumed after %lld ms", (long long)(ts_now_ms() - t0));
    ts_http_set_timeout(10000);
    last_after1 = ts_parse_rfc3339(stamp_field("lastReportAt"));
    ts_sleep_ms(800);
    last_after2 = ts_parse_rfc3339(stamp_field("lastReportAt"));
    if (!(last_after1 > last_before && last_after2 > last_after1))
        ts_fail("lastReportAt not advancing after Redis came back (%lld, %lld, %lld)", (long long)last_before,
                (long long)last_after1, (long long)last_after2);
    TS_EXPECT_STREQ(stamp_field("health"), "healthy");
    TS_EXPECT_STREQ(ts_redis_cmd(redis->addr, "EXISTS stamp:eu-west-1:load"), "1");

    /* nobody was restarted */
    assert_true(ts_proc_alive(cp->proc));
    assert_true(ts_proc_alive(agent));
    assert_int_equal(cp->proc->pid, cp_pid);
    assert_int_equal(agent->pid, agent_pid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_outage),
    };
    ts_init("test_redis_outage");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
