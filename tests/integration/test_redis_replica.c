/*
 * test_redis_replica - a Sentinel-mode connection that finds itself on a
 * replica leaves it even when no +switch-master arrives (a missed message,
 * a Sentinel cut off): the control plane's heartbeat is ROLE, and the
 * agent's report gets READONLY. The Sentinel here is a stand-in
 * (tests/support/fakesentinel.py) that names whatever master the test
 * writes in a file and never announces a switch. The master A is turned
 * into a replica of B (REPLICAOF) and the stand-in made to name B: within
 * REPLICA_BOUND_MS every daemon connection (cmd, sub, report) has left A
 * and is on B, and reports land on B.
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

#define REPLICA_BOUND_MS 8000

static struct ts_redis *ra, *rb;
static struct ts_cp *cp;
static struct ts_proc *agent, *fake;
static const char *master_file;

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *fake_sentinel(void)
{
    int port = ts_free_port();
    const char *script = ts_str("%s/tests/support/fakesentinel.py", ts_env("STAMPCP_SOURCE_DIR"));
    const char *log = ts_str("%s/fakesentinel.log", ts_tmp());
    char *argv[] = {"/usr/bin/python3", (char *)script, "--port", (char *)ts_str("%d", port), "--master-file",
                    (char *)master_file, NULL};
    fake = ts_proc_spawn("fakesentinel", argv, log, NULL);
    for (int i = 0; i < 50; i++) {
        char *txt = ts_read_file(log, NULL);
        if (txt && strstr(txt, "listening"))
            break;
        ts_sleep_ms(100);
    }
    return ts_str("{\"masterName\":\"stampcp\",\"sentinels\":[\"127.0.0.1:%d\"]}", port);
}

static int group_setup(void **state)
{
    struct ts_cp_opts o = {.geo_ids = {"eu", NULL}, .plain_http = true};
    (void)state;
    ra = ts_redis_start("a");
    rb = ts_redis_start("b");
    master_file = ts_str("%s/sentinel-master", ts_tmp());
    ts_write_file(master_file, ra->addr);
    o.redis_sentinel = fake_sentinel();
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    ts_admin_post_stamp(cp, "eu", "eu-west", "eu-west-1");
    {
        struct ts_agent_opts a = {
            .stamp_id = "eu-west-1", .region = "eu-west", .redis_sentinel = o.redis_sentinel, .interval_ms = 200,
            .dps = {"eu-west-1-dps", NULL}, .hubs = {"eu-west-1-hub1", NULL},
        };
        agent = ts_agent_start(&a);
    }
    return 0;
}

static bool report_on(const char *addr, int64_t since_wall)
{
    const char *v = ts_redis_cmd(addr, "HGET stamp:eu-west-1:load ts");
    return v && atoll(v) > since_wall;
}

static bool reports_on_a(void *arg)
{
    (void)arg;
    return report_on(ra->addr, wall_ms() - 1000);
}

static void test_left_replica(void **state)
{
    int64_t t0, t0_wall, at_left = -1, at_report = -1, at_onb = -1;
    (void)state;
    if (!ts_wait_until(reports_on_a, NULL, 10000))
        ts_fail("no report on the master A named by the stand-in Sentinel");
    if (ts_redis_daemon_clients(ra->addr) < 3)   /* cmd, sub, report */
        ts_fail("only %d daemon connections on A", ts_redis_daemon_clients(ra->addr));

    ts_write_file(master_file, rb->addr);
    t0 = ts_now_ms();
    t0_wall = wall_ms();
    TS_EXPECT_STREQ(ts_redis_cmd(ra->addr, "REPLICAOF 127.0.0.1 %d", rb->port), "OK");
    ts_http_set_timeout(3000);
    while (at_left < 0 || at_report < 0 || at_onb < 0) {
        if (ts_now_ms() - t0 > REPLICA_BOUND_MS)
            ts_fail("not off the replica within %d ms: left %lld ms (%d daemon connections on A), reports on B"
                    " %lld ms, all on B %lld ms", REPLICA_BOUND_MS, (long long)at_left, ts_redis_daemon_clients(ra->addr),
                    (long long)at_report, (long long)at_onb);
        if (at_left < 0 && ts_redis_daemon_clients(ra->addr) == 0)
            at_left = ts_now_ms() - t0;
        if (at_report < 0 && report_on(rb->addr, t0_wall))
            at_report = ts_now_ms() - t0;
        if (at_onb < 0 && ts_redis_daemon_clients(rb->addr) >= 3)   /* cmd, sub, report */
            at_onb = ts_now_ms() - t0;
        ts_sleep_ms(50);
    }
    ts_log("A demoted without +switch-master: daemons off A after %lld ms, reports on B %lld ms, all on B %lld ms",
           (long long)at_left, (long long)at_report, (long long)at_onb);
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    if (!ts_proc_log_contains(cp->proc, "event=redis_not_master") ||
        !ts_proc_log_contains(agent, "event=redis_not_master"))
        ts_fail("a daemon did not log that it found itself on a replica");
    ts_http_set_timeout(10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_left_replica),
    };
    ts_init("test_redis_replica");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
