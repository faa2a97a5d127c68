/*
 * test_redis_sentinel - a planned Redis failover (SENTINEL FAILOVER): the old
 * master stays up and becomes a replica, so nothing breaks the daemons'
 * connections; they must leave it on their own (common/redisconn.c follows
 * +switch-master; ROLE and READONLY catch what the message misses). Two
 * routers and a stamp agent find the master through three Sentinels
 * ("redisSentinel"). Measured from the failover command, each within
 * FAILOVER_BOUND_MS:
 *   - both routers place a new device (the rate-limit script writes on the
 *     master: a replica would refuse it);
 *   - a tenant change through each router is published on the new master (a
 *     subscriber there sees its invalidation);
 *   - the agent's load report lands on the new master;
 *   - none of the daemons' connections is left on the old master.
 * The Sentinels require their own password (infra/redis-sentinel-ctl): a
 * command without it is refused (NOAUTH), so daemons that find the master at
 * all sent "redisSentinel.auth".
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

#define FAILOVER_BOUND_MS 10000

static struct ts_sentinel *sen;
static struct ts_rt *rt;
static struct ts_tenant *acme;
static int probe_seq;

static struct ts_rt_layout layout = {
    .geographies = {"eu", NULL},
    .regions = {{"eu-west", "eu"}},
    .stamps = {
        {.id = "eu-west-1", .region = "eu-west", .dps = {{"eu-west-1-dps", 0, 6000}}, .hubs = {{"eu-west-1-hub"}}},
    },
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = {.ncp = 2, .geos = {"eu", NULL}};
    (void)state;
    sen = ts_sentinel_start("planned");
    o.redis_sentinel = sen->sentinel_json;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    acme = ts_rt_tenant_acme(rt->cp[0]);
    return 0;
}

/* A new device through router c: 200 placed (its token taken on the master). */
static bool placed(int c)
{
    struct ts_resp *r = ts_rt_locate(rt->cp[c], acme, ts_str("probe-%d", probe_seq++));
    int st = r->status;
    if (st != 200 && st != 429 && st != 503 && st != 0)
        ts_fail("router %d answered a new device %s", c, ts_resp_str(r));
    ts_resp_free(r);
    return st == 200;
}

/* A tenant change through router c reaches a subscriber on master. */
static bool inval_on(const char *master, int c, int n)
{
    struct ts_redis_sub *sub = ts_redis_subscribe(master, "cp:invalidate");
    struct ts_resp *r;
    const char *msg;
    bool seen = false;
    if (!sub)
        return false;
    r = ts_admin(rt->cp[c], "PATCH", "/v1/tenants/acme", ts_str("{\"name\":\"Acme %d\"}", n));
    if (r->status == 200)
        while (!seen && (msg = ts_redis_sub_next(sub, 1500)))
            seen = strncmp(msg, "tenant acme ", 12) == 0;
    else if (r->status != 503 && r->status != 0)
        ts_fail("PATCH /v1/tenants/acme through router %d: %s", c, ts_resp_str(r));
    ts_redis_sub_close(sub);
    return seen;
}

static bool report_on(const char *master, int64_t since_wall)
{
    const char *v = ts_redis_cmd(master, "HGET stamp:eu-west-1:load ts");
    return v && atoll(v) > since_wall;
}

static bool old_is_replica(void *arg)
{
    const char *role = ts_redis_cmd(arg, "ROLE");
    return role && strncmp(role, "slave ", 6) == 0;
}

static void test_planned_failover(void **state)
{
    const char *old, *now, *sentinel, *ok;
    int64_t t0, t0_wall, at_rl[2] = {-1, -1}, at_inval[2] = {-1, -1}, at_report = -1, at_left = -1;
    int n = 0;
    (void)state;

    old = ts_sentinel_master(sen);
    for (int c = 0; c < 2; c++) {
        assert_true(placed(c));
        assert_true(inval_on(old, c, n++));
    }
    assert_true(report_on(old, wall_ms() - 2000));
    if (ts_redis_daemon_clients(old) < 5)   /* cmd + sub per router, the agent's report connection */
        ts_fail("only %d daemon connections on the master %s before the failover", ts_redis_daemon_clients(old), old);

    sentinel = ts_str("%.*s", (int)strcspn(sen->sentinels, ","), sen->sentinels);
    ts_http_set_timeout(5000);
    t0 = ts_now_ms();
    t0_wall = wall_ms();
    /* the Sentinels require their password (so the daemons, who find the
     * master at all, sent it): without it nobody may reconfigure them */
    ok = ts_redis_cmd(sentinel, "SENTINEL FAILOVER %s", sen->master_name);
    if (!ok || strncmp(ok, "NOAUTH", 6) != 0)
        ts_fail("a Sentinel took a command without its password: %s", ok ? ok : "(no answer)");
    ok = ts_redis_cmd_auth(sentinel, ts_sentinel_password(sen), "SENTINEL FAILOVER %s", sen->master_name);
    if (!ok || strcmp(ok, "OK") != 0)
        ts_fail("SENTINEL FAILOVER answered %s", ok ? ok : "nothing");
    do {
        now = ts_sentinel_master(sen);
        if (ts_now_ms() - t0 > FAILOVER_BOUND_MS)
            ts_fail("the Sentinels still name %s %d ms after SENTINEL FAILOVER", old, FAILOVER_BOUND_MS);
        if (strcmp(now, old) == 0)
            ts_sleep_ms(100);
    } while (strcmp(now, old) == 0);
    ts_log("Sentinels name %s instead of %s after %lld ms", now, old, (long long)(ts_now_ms() - t0));

    while (at_rl[0] < 0 || at_rl[1] < 0 || at_inval[0] < 0 || at_inval[1] < 0 || at_report < 0 || at_left < 0) {
        if (ts_now_ms() - t0 > FAILOVER_BOUND_MS)
            ts_fail("not everything followed the failover within %d ms: placements %lld/%lld ms, invalidations"
                    " %lld/%lld ms, reports %lld ms, old master left %lld ms (%d daemon connections there)",
                    FAILOVER_BOUND_MS, (long long)at_rl[0], (long long)at_rl[1], (long long)at_inval[0],
                    (long long)at_inval[1], (long long)at_report, (long long)at_left, ts_redis_daemon_clients(old));
        for (int c = 0; c < 2; c++) {
            if (at_rl[c] < 0 && placed(c))
                at_rl[c] = ts_now_ms() - t0;
            if (at_inval[c] < 0 && inval_on(now, c, n++))
                at_inval[c] = ts_now_ms() - t0;
        }
        if (at_report < 0 && report_on(now, t0_wall))
            at_report = ts_now_ms() - t0;
        if (at_left < 0 && ts_redis_daemon_clients(old) == 0)
            at_left = ts_now_ms() - t0;
        ts_sleep_ms(50);
    }
    ts_log("planned failover %s -> %s followed after: placements %lld / %lld ms, invalidations %lld / %lld ms"
           " (router 0 / 1), load reports %lld ms, daemon connections off the old master %lld ms",
           old, now, (long long)at_rl[0], (long long)at_rl[1], (long long)at_inval[0], (long long)at_inval[1],
           (long long)at_report, (long long)at_left);
    /* Sentinel demotes the old master after the switch: then no daemon may be back on it. */
    if (!ts_wait_until(old_is_replica, (void *)old, FAILOVER_BOUND_MS))
        ts_fail("the old master %s did not become a replica: ROLE %s", old, ts_redis_cmd(old, "ROLE"));
    if (ts_redis_daemon_clients(old) != 0)
        ts_fail("%d daemon connections on the demoted master %s", ts_redis_daemon_clients(old), old);
    for (int c = 0; c < 2; c++)
        if (!ts_proc_log_contains(rt->cp[c]->proc, "event=sentinel_switch_master"))
            ts_fail("router %d did not log the +switch-master it followed", c);
    ts_http_set_timeout(10000);
    ts_sentinel_wait(sen, 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_planned_failover),
    };
    ts_init("test_redis_sentinel");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
