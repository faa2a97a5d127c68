/*
 * test_cp_plumbing - residency holds in the control plane's plumbing
 * (docs/security.md, "Residency in the plumbing"):
 *
 *  - a stamp whose reports name another region (a misconfigured agent) or
 *    another geography (a report forged straight into Redis) is flagged: a
 *    log line, health "misreported" with identityMismatch in the admin API,
 *    and placement never uses it (decision rule "identity"); a correct
 *    report clears the flag;
 *  - device identifiers never appear in the control planes' logs (at debug
 *    level, every request logged) nor in anything sent to Redis (a MONITOR
 *    capture), through locate, repeat lookups, reprovision, deprovision,
 *    retire and the admin view; the pseudonyms do, and invalidation across
 *    two control planes still works by pseudonym; `controlplane --pseudonym`
 *    prints the same pseudonym as the admin view;
 *  - a lookup that cannot tell a device's geography (its database no longer
 *    identifies as the configured geography) fails closed with 503
 *    geography_unknown, changes nothing, and works again once it does.
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

#define NDEV 12
#define PSEUDONYM_KEY "plumbing-test-pseudonym-key-0123"

static struct ts_rt *rt;
static struct ts_tenant *acme;
static struct ts_proc *monitor;
static char monitor_path[600];
static const char *dev_ids[NDEV + 4];
static int ndev_ids;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { "eu-north", "eu" }, { "eu-south", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
        { .id = "eu-north-1", .region = "eu-north",
          .dps = { { "eu-north-1-dps" } }, .hubs = { { "eu-north-1-hub1" } } },
        { .id = "eu-south-1", .region = "eu-south",
          .dps = { { "eu-south-1-dps" } }, .hubs = { { "eu-south-1-hub1" } } },
    },
};

/* Device ids distinctive enough that finding one anywhere is a leak. */
static const char *dev_id(int i)
{
    const char *id = ts_str("zq7plumb-%02d-x9", i);
    if (ndev_ids < (int)(sizeof dev_ids / sizeof dev_ids[0]))
        dev_ids[ndev_ids++] = id;
    return id;
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = {
        .ncp = 2, .geos = { "eu", NULL },
        .extra_json = "\"pseudonymKey\": \"" PSEUDONYM_KEY "\"",
    };
    (void)state;
    setenv("TS_CP_LOG", "debug", 1);   /* every request in the log */
    rt = ts_rt_start(&o);
    /* Everything the control planes (and agents) send to Redis from here on. */
    snprintf(monitor_path, sizeof monitor_path, "%s/redis-monitor.log", ts_tmp());
    {
        char *argv[] = { "/usr/bin/redis-cli", "-p", ts_str("%d", rt->redis->port), "MONITOR", NULL };
        monitor = ts_proc_spawn("redis-monitor", argv, monitor_path, NULL);
    }
    ts_sleep_ms(300);
    ts_rt_register_layout(rt, &layout);
    acme = ts_rt_tenant_acme(rt->cp[0]);
    return 0;
}

static const char *health_of(int cp, const char *stamp, const char **mismatch)
{
    struct ts_resp *r = ts_admin(rt->cp[cp], "GET", ts_str("/v1/stamps/%s", stamp), NULL);
    if (mismatch)
        *mismatch = r->status == 200 ? ts_jstr(r->json, "identityMismatch") : NULL;
    return r->status == 200 && ts_jstr(r->json, "health") ? ts_jstr(r->json, "health") : "?";
}

struct health_want { const char *stamp, *health; };

static bool health_is(void *arg)
{
    const struct health_want *w = arg;
    for (int i = 0; i < rt->ncp; i++)
        if (strcmp(health_of(i, w->stamp, NULL), w->health) != 0)
            return false;
    return true;
}

static void wait_health(const char *stamp, const char *health)
{
    struct health_want w = { stamp, health };
    if (!ts_wait_until(health_is, &w, 10000))
        ts_fail("stamp %s: expected health %s, got %s", stamp, health, health_of(0, stamp, NULL));
}

/* A report published straight into Redis, as a forger (or a broken agent) would. */
static void publish_report(const char *stamp, const char *region, const char *geography)
{
    const char *msg = ts_str(
        "{'stampId':'%s','region':'%s',%s'health':'healthy','ts':%lld,'intervalMs':60000,'seq':1,"
        "'load':{'dps':[{'id':'%s-dps','registrations':0,'registrationsLastMinute':0,'throttledLastMinute':0}],"
        "'hubs':[{'id':'%s-hub1','devices':0}],'groups':[]}}",
        stamp, region, geography ? ts_str("'geography':'%s',", geography) : "",
        (long long)time(NULL) * 1000, stamp, stamp);
    char *json = ts_str("%s", msg);
    for (char *p = json; *p; p++)
        if (*p == '\'') *p = '"';
    if (!ts_redis_cmd(rt->redis->addr, "PUBLISH stamps:load:%s %s", stamp, json))
        ts_fail("PUBLISH failed");
}

static void test_misreported_stamps(void **state)
{
    struct ts_rt_stamp *west = ts_rt_find_stamp(rt, "eu-west-1");
    struct ts_rt_stamp bad_north = *ts_rt_find_stamp(rt, "eu-north-1");
    const char *mismatch = NULL;
    (void)state;

    ts_rt_agent_start(rt, west);
    wait_health("eu-west-1", "healthy");
    /* eu-north-1's agent is configured with the wrong region. */
    bad_north.region = "eu-west";
    ts_rt_agent_start(rt, &bad_north);
    wait_health("eu-north-1", "misreported");
    assert_string_equal(health_of(0, "eu-north-1", &mismatch), "misreported");
    assert_non_null(mismatch);
    assert_non_null(strstr(mismatch, "reported region eu-west, catalog eu-north"));

    /* eu-south-1: a correct report with a geography is healthy ... */
    publish_report("eu-south-1", "eu-south", "eu");
    wait_health("eu-south-1", "healthy");
    assert_string_equal(health_of(1, "eu-south-1", &mismatch), "healthy");
    assert_null(mismatch);
    /* ... a forged one naming another geography is flagged. */
    publish_report("eu-south-1", "eu-south", "us");
    wait_health("eu-south-1", "misreported");
    health_of(0, "eu-south-1", &mismatch);
    assert_non_null(mismatch);
    assert_non_null(strstr(mismatch, "reported geography us, catalog eu"));
    ts_sleep_ms(1500);   /* the periodic check logs it */
    for (int i = 0; i < rt->ncp; i++) {
        assert_true(ts_proc_log_contains(rt->cp[i]->proc, "event=stamp_identity_mismatch stamp=eu-north-1"));
        assert_true(ts_proc_log_contains(rt->cp[i]->proc, "event=stamp_identity_mismatch stamp=eu-south-1"));
        assert_false(ts_proc_log_contains(rt->cp[i]->proc, "event=stamp_identity_mismatch stamp=eu-west-1"));
    }
    ts_rt_wait_layout(rt);

    /* Placement never uses a flagged stamp, whichever control plane places. */
    for (int i = 0; i < NDEV; i++) {
        struct ts_resp *r = ts_rt_locate(rt->cp[i % 2], acme, dev_id(i));
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), "eu-west-1");
    }
    {
        struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", dev_id(0)), NULL);
        json_t *stamps = json_object_get(json_object_get(r->json, "decision"), "stamps"), *v;
        size_t i;
        int identity = 0;
        TS_EXPECT_STATUS(r, 200);
        json_array_foreach(stamps, i, v) {
            const char *id = ts_jstr(v, "stamp");
            if (strcmp(id, "eu-north-1") == 0 || strcmp(id, "eu-south-1") == 0) {
                TS_EXPECT_STREQ(ts_jstr(v, "rule"), "identity");
                assert_false(json_is_true(json_object_get(v, "admitted")));
                assert_non_null(ts_jstr(v, "detail"));
                identity++;
            }
        }
        assert_int_equal(identity, 2);
    }

    /* A correct report clears the flag, and the stamp is usable again. */
    publish_report("eu-south-1", "eu-south", "eu");
    wait_health("eu-south-1", "healthy");
    ts_sleep_ms(1500);
    assert_true(ts_proc_log_contains(rt->cp[0]->proc, "event=stamp_identity_ok stamp=eu-south-1"));
}

/* ---- pseudonyms ---- */

static const char *pseudonym_cli(const char *tenant, const char *regid)
{
    char *out = NULL;
    char *argv[] = { (char *)ts_bin("controlplane"), "--config", rt->cp[0]->config_path, "--pseudonym",
                     ts_str("%s/%s", tenant, regid), NULL };
    int rc = ts_run(argv, 10000, &out);
    char ps[32];
    if (rc != 0 || !out || sscanf(out, "%31s", ps) != 1)
        ts_fail("controlplane --pseudonym: exit %d, output %s", rc, out ? out : "(none)");
    if (!strstr(out, ts_str(" %s %s", tenant, regid)))
        ts_fail("controlplane --pseudonym output lacks the pair: %s", out);
    return ts_str("%s", ps);
}

static void test_no_device_ids_in_logs_or_redis(void **state)
{
    const char *d0 = dev_ids[0], *d1 = dev_ids[1], *d2 = dev_ids[2], *ps0;
    struct ts_resp *r, *before;
    (void)state;

    /* Repeat lookups (answered from each router's cache) */
    for (int i = 0; i < NDEV; i++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, dev_ids[i]), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], acme, dev_ids[i]), 200);
    }
    /* Bad requests are logged at info level with their path. */
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[0], "locate", "acme", d2,
                                  "SharedAccessSignature sr=x&sig=y&se=1&skn=registration", NULL), 401);
    TS_EXPECT_ERROR(ts_rt_device(rt->cp[1], "nonsense", "acme", d2, ts_rt_sas(acme, d2, 0), NULL), 404,
                    "route_not_found");
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[0], "reprovision", "acme", d2, ts_rt_sas(acme, d2, 0), NULL), 200);

    /* The admin view names the pseudonym; the operator's tool agrees. */
    r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", d0), NULL);
    TS_EXPECT_STATUS(r, 200);
    ps0 = ts_jstr(r->json, "pseudonym");
    assert_non_null(ps0);
    assert_int_equal(strlen(ps0), 20);
    assert_memory_equal(ps0, "dev_", 4);
    TS_EXPECT_STREQ(pseudonym_cli("acme", d0), ps0);

    /* Invalidation across control planes, by pseudonym: cp1 has d0 cached;
     * cp0 deprovisions it; cp1's next locate places it afresh. */
    before = ts_rt_locate(rt->cp[1], acme, d0);
    TS_EXPECT_STATUS(before, 200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/devices/%s/deprovision", d0), NULL), 200);
    r = ts_rt_locate(rt->cp[1], acme, d0);
    TS_EXPECT_STATUS(r, 200);
    if (strcmp(ts_jstr(r->json, "etag"), ts_jstr(before->json, "etag")) == 0)
        ts_fail("cp1 answered the deprovisioned device from its stale cache: %s", ts_resp_str(r));
    /* retire d1 through cp1: cp0's cached answer must go too */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, d1), 200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[1], "POST", ts_str("/v1/tenants/acme/devices/%s/retire", d1), NULL), 200);
    TS_EXPECT_ERROR(ts_rt_locate(rt->cp[0], acme, d1), 410, "device_retired");

    ts_sleep_ms(300);   /* let MONITOR and the logs catch up */
    /* The captures are real: they hold the pseudonym (logs: every request at
     * debug; Redis: the invalidation of d0). */
    assert_true(ts_file_contains(monitor_path, "PUBLISH"));
    assert_true(ts_file_contains(monitor_path, ps0));
    assert_true(ts_proc_log_contains(rt->cp[0]->proc, ps0));
    assert_true(ts_proc_log_contains(rt->cp[0]->proc, "event=http_request"));
    for (int i = 0; i < ndev_ids; i++) {
        for (int c = 0; c < rt->ncp; c++)
            if (ts_proc_log_contains(rt->cp[c]->proc, dev_ids[i]))
                ts_fail("device id %s appears in %s's log", dev_ids[i], rt->cp[c]->name);
        if (ts_file_contains(monitor_path, dev_ids[i]))
            ts_fail("device id %s appears in the Redis MONITOR capture", dev_ids[i]);
    }
    /* Both share pseudonymKey: invalidations matched by pseudonym, no cache-wide fallback. */
    for (int c = 0; c < rt->ncp; c++)
        assert_false(ts_proc_log_contains(rt->cp[c]->proc, "event=pseudonym_key_mismatch"));
    ts_log("no device id in %d control plane logs or the Redis capture (%d ids checked)", rt->ncp, ndev_ids);
}

/* ---- fail closed ---- */

static void test_unknown_geography_fails_closed(void **state)
{
    const char *eu = ts_rt_geo_db(rt, "eu");
    const char *d = dev_ids[3];
    long rows = ts_pg_count(eu, "SELECT count(*) FROM devices");
    const char *etag = ts_pg_scalar(eu, ts_str("SELECT etag::text FROM devices WHERE registration_id = '%s'", d));
    struct ts_resp *r;
    PGresult *res;
    (void)state;

    assert_non_null(etag);
    res = ts_pg_query(eu, "UPDATE geo_identity SET geography = 'zz'");
    PQclear(res);
    r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", d), NULL);
    TS_EXPECT_ERROR(r, 503, "geography_unknown");
    r = ts_rt_device(rt->cp[1], "reprovision", "acme", d, ts_rt_sas(acme, d, 0), NULL);
    TS_EXPECT_ERROR(r, 503, "geography_unknown");
    r = ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/acme/devices/%s/retire", d), NULL);
    TS_EXPECT_ERROR(r, 503, "geography_unknown");
    /* nothing changed */
    assert_int_equal(ts_pg_count(eu, "SELECT count(*) FROM devices"), rows);
    TS_EXPECT_STREQ(ts_pg_scalar(eu, ts_str("SELECT etag::text FROM devices WHERE registration_id = '%s'", d)), etag);
    TS_EXPECT_STREQ(ts_pg_scalar(eu, ts_str("SELECT status FROM devices WHERE registration_id = '%s'", d)),
                    "assigned");
    assert_true(ts_proc_log_contains(rt->cp[0]->proc, "event=device_geography_unknown tenant=acme device=dev_"));
    assert_false(ts_proc_log_contains(rt->cp[0]->proc, d));

    res = ts_pg_query(eu, "UPDATE geo_identity SET geography = 'eu'");
    PQclear(res);
    r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", d), NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[1], "reprovision", "acme", d, ts_rt_sas(acme, d, 0), NULL), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_misreported_stamps),
        cmocka_unit_test(test_no_device_ids_in_logs_or_redis),
        cmocka_unit_test(test_unknown_geography_fails_closed),
    };
    int failed;
    ts_init("test_cp_plumbing");
    failed = cmocka_run_group_tests(tests, group_setup, NULL);
    return ts_finish(failed);
}
