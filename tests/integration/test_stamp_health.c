/*
 * test_stamp_health - the stamp agent's reports drive GET /v1/stamps/<id>:
 * healthy with the agent's load, stale then down after kill -9, healthy again
 * after a restart, down at once after SIGTERM (the final report), and down
 * with lastReportAt null for a stamp that never reported.
 *
 * staleAfterIntervals=3 and downAfterIntervals=10 with a 200 ms interval:
 * stale after 0.6 s without a report, down after 2 s.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"

static struct ts_cp *cp;
static struct ts_proc *agent;
/* Unique stamp ids: the shared Redis may be used by other tests at the same time. */
static const char *stamp, *stamp2, *region, *dps, *hub1, *hub2;

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "eu", NULL }, .stale_after = 3, .down_after = 10 };
    long pid = (long)getpid();
    region = ts_str("eu-w%ld", pid);
    stamp = ts_str("eu-w%ld-1", pid);
    stamp2 = ts_str("eu-w%ld-2", pid);
    dps = ts_str("eu-w%ld-1-dps", pid);
    hub1 = ts_str("eu-w%ld-1-hub1", pid);
    hub2 = ts_str("eu-w%ld-1-hub2", pid);

    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", ts_json("{'id':'%s','geography':'eu'}", region)), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", ts_json("{'id':'%s','region':'%s'}", stamp, region)), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", ts_json("{'id':'%s','region':'%s'}", stamp2, region)), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/dps-instances",
                              ts_json("{'id':'%s','stamp':'%s','idScope':'0ne%ld','endpoint':'dps.local:443'}", dps,
                                      stamp, pid)),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs",
                              ts_json("{'id':'%s','stamp':'%s','hostName':'%s.local'}", hub1, stamp, hub1)),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs",
                              ts_json("{'id':'%s','stamp':'%s','hostName':'%s.local'}", hub2, stamp, hub2)),
                     201);
    return 0;
}

static struct ts_proc *start_agent(void)
{
    struct ts_agent_opts a = {
        .stamp_id = stamp, .region = region, .interval_ms = 200,
        .dps = { dps, NULL }, .hubs = { hub1, hub2, NULL },
    };
    return ts_agent_start(&a);
}

static json_t *get_stamp(const char *id)
{
    struct ts_resp *r = ts_admin(cp, "GET", ts_str("/v1/stamps/%s", id), NULL);
    TS_EXPECT_STATUS(r, 200);
    return r->json;
}

static const char *health(const char *id)
{
    const char *h = ts_jstr(get_stamp(id), "health");
    if (!h)
        ts_fail("stamp %s has no health string", id);
    return h;
}

static bool is_healthy(void *arg)
{
    (void)arg;
    return strcmp(health(stamp), "healthy") == 0;
}

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Poll until `down`; records when stale and down were first seen (ms after t0, -1 if never). */
static void watch_until_down(int64_t t0, int timeout_ms, int64_t *stale_at, int64_t *down_at, bool *healthy_after_stale)
{
    *stale_at = *down_at = -1;
    *healthy_after_stale = false;
    while (ts_now_ms() - t0 < timeout_ms) {
        const char *h = health(stamp);
        int64_t t = ts_now_ms() - t0;
        if (strcmp(h, "stale") == 0 && *stale_at < 0)
            *stale_at = t;
        else if (strcmp(h, "healthy") == 0 && *stale_at >= 0)
            *healthy_after_stale = true;
        else if (strcmp(h, "down") == 0) {
            *down_at = t;
            return;
        } else if (strcmp(h, "healthy") != 0 && strcmp(h, "stale") != 0)
            ts_fail("unknown health word \"%s\"", h);
        ts_sleep_ms(40);
    }
}

static void test_never_reported(void **state)
{
    json_t *s = get_stamp(stamp2);
    TS_EXPECT_STREQ(ts_jstr(s, "health"), "down");
    assert_true(json_is_null(json_object_get(s, "lastReportAt")));
    assert_true(json_is_null(json_object_get(s, "load")));
    /* also before our agent ever ran */
    s = get_stamp(stamp);
    TS_EXPECT_STREQ(ts_jstr(s, "health"), "down");
    assert_true(json_is_null(json_object_get(s, "lastReportAt")));
}

static void check_load(json_t *s)
{
    json_t *load = json_object_get(s, "load");
    json_t *d = json_object_get(load, "dps");
    json_t *h = json_object_get(load, "hubs");
    char *txt = ts_keep(json_dumps(s, JSON_COMPACT));
    if (!json_is_array(d) || json_array_size(d) != 1 || !json_is_array(h) || json_array_size(h) != 2)
        ts_fail("load should list 1 dps and 2 hubs: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(json_array_get(d, 0), "id"), dps);
    {
        json_t *e = json_array_get(d, 0);
        if (!json_is_integer(json_object_get(e, "registrations")) ||
            !json_is_integer(json_object_get(e, "registrationsLastMinute")) ||
            !json_is_integer(json_object_get(e, "throttledLastMinute")))
            ts_fail("dps load entry needs integer registrations, registrationsLastMinute, throttledLastMinute: %s", txt);
    }
    {
        const char *a = ts_jstr(json_array_get(h, 0), "id"), *b = ts_jstr(json_array_get(h, 1), "id");
        bool ok = a && b && ((strcmp(a, hub1) == 0 && strcmp(b, hub2) == 0) || (strcmp(a, hub2) == 0 && strcmp(b, hub1) == 0));
        if (!ok)
            ts_fail("load.hubs should be %s and %s: %s", hub1, hub2, txt);
        if (!json_is_integer(json_object_get(json_array_get(h, 0), "devices")) ||
            !json_is_integer(json_object_get(json_array_get(h, 1), "devices")))
            ts_fail("hub load entries need integer devices: %s", txt);
    }
}

static void test_healthy_then_killed(void **state)
{
    int64_t t0 = ts_now_ms(), stale_at, down_at;
    bool back;
    json_t *s;
    int64_t last1, last2;

    agent = start_agent();
    if (!ts_wait_until(is_healthy, NULL, 3000))
        ts_fail("stamp not healthy 3 s after the agent started: %s",
                ts_resp_str(ts_admin(cp, "GET", ts_str("/v1/stamps/%s", stamp), NULL)));
    ts_log("healthy after %lld ms", (long long)(ts_now_ms() - t0));
    s = get_stamp(stamp);
    check_load(s);
    last1 = ts_parse_rfc3339(ts_jstr(s, "lastReportAt"));
    if (last1 < 0)
        ts_fail("lastReportAt is not an RFC 3339 UTC time: %s", ts_resp_str(ts_admin(cp, "GET", ts_str("/v1/stamps/%s", stamp), NULL)));
    if (llabs(last1 - wall_ms()) > 5000)
        ts_fail("lastReportAt %s is not close to now", ts_jstr(s, "lastReportAt"));
    ts_sleep_ms(700);
    s = get_stamp(stamp);
    TS_EXPECT_STREQ(ts_jstr(s, "health"), "healthy");
    last2 = ts_parse_rfc3339(ts_jstr(s, "lastReportAt"));
    if (!(last2 > last1))
        ts_fail("lastReportAt did not advance in 700 ms (%lld, %lld)", (long long)last1, (long long)last2);
    /* the agent's hash in Redis */
    {
        const char *n = ts_redis_cmd(cp->redis, "EXISTS stamp:%s:load", stamp);
        TS_EXPECT_STREQ(n, "1");
    }
    /* the other stamp is unaffected */
    TS_EXPECT_STREQ(health(stamp2), "down");

    /* kill -9: no final report */
    ts_proc_kill(agent, SIGKILL);
    assert_true(ts_proc_wait(agent, 2000));
    t0 = ts_now_ms();
    watch_until_down(t0, 8000, &stale_at, &down_at, &back);
    ts_log("after SIGKILL: stale at %lld ms, down at %lld ms", (long long)stale_at, (long long)down_at);
    if (stale_at < 0)
        ts_fail("never saw `stale` between healthy and down (down at %lld ms)", (long long)down_at);
    if (back)
        ts_fail("stamp went back to healthy after stale with no agent running");
    if (stale_at > 3000)
        ts_fail("stale only %lld ms after the agent died (expected ~600 ms)", (long long)stale_at);
    if (down_at < 0)
        ts_fail("not down 8 s after the agent died (expected ~2 s)");
    if (down_at < 1000)
        ts_fail("down after only %lld ms: downAfterIntervals (10 x 200 ms) not honoured", (long long)down_at);
    s = get_stamp(stamp);
    /* lastReportAt stays: the last report is still known */
    if (ts_parse_rfc3339(ts_jstr(s, "lastReportAt")) < last2)
        ts_fail("lastReportAt went backwards or vanished after the agent died: %s",
                ts_jstr(s, "lastReportAt") ? ts_jstr(s, "lastReportAt") : "null");
}

static void test_restart_then_sigterm(void **state)
{
    int64_t t0;
    int64_t stale_at, down_at;
    bool back;

    agent = start_agent();
    t0 = ts_now_ms();
    if (!ts_wait_until(is_healthy, NULL, 3000))
        ts_fail("stamp not healthy again 3 s after the agent restarted (%s)", health(stamp));
    ts_log("healthy again after %lld ms", (long long)(ts_now_ms() - t0));
    check_load(get_stamp(stamp));
    ts_sleep_ms(400);
    TS_EXPECT_STREQ(health(stamp), "healthy");

    /* SIGTERM: the agent publishes a final `down` report and exits 0 */
    ts_proc_kill(agent, SIGTERM);
    t0 = ts_now_ms();
    watch_until_down(t0, 5000, &stale_at, &down_at, &back);
    ts_log("after SIGTERM: stale at %lld ms, down at %lld ms", (long long)stale_at, (long long)down_at);
    if (down_at < 0)
        ts_fail("not down 5 s after SIGTERM");
    if (stale_at >= 0 || down_at > 1000)
        ts_fail("after SIGTERM the stamp should go down at once (final report), not through stale/timeout: "
                "stale at %lld ms, down at %lld ms", (long long)stale_at, (long long)down_at);
    if (!ts_proc_wait(agent, 5000))
        ts_fail("stamp-agent still running 5 s after SIGTERM");
    assert_int_equal(ts_proc_exit_code(agent), 0);
    /* and it stays down */
    ts_sleep_ms(500);
    TS_EXPECT_STREQ(health(stamp), "down");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_never_reported),
        cmocka_unit_test(test_healthy_then_killed),
        cmocka_unit_test(test_restart_then_sigterm),
    };
    ts_init("test_stamp_health");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
