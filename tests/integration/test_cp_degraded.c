/*
 * test_cp_degraded - what an instance still serves when one of its parts is
 * down (issue 14, findings 1 and 2; docs/api.md "Probes"):
 *
 *  - a geography database outage: /readyz stays 200 ("degraded", naming
 *    geo:eu and what it costs); the other geography's devices are served, a
 *    new device of the failing geography answers 503; back to "ready" after;
 *  - a 60 s outage of the global catalog: status lookups of placed devices
 *    (tenant cache TTL 1 s) stay 200 the whole time on an instance with the
 *    default tenants.staleOnErrorMs (10 min), with at most one catalog query
 *    per tenant and second (coalesced), while an instance configured with
 *    staleOnErrorMs 1000 answers 503 once TTL + 1 s have passed; /readyz is
 *    200 "degraded" naming globalDatabase; the admin API answers 503;
 *  - after the outage a tenant change (suspend) is seen at once;
 *  - a Redis outage (invalidations unheard): status lookups stay 200, the
 *    tenant is read from the catalog about once a second per router (not
 *    once per lookup), and a suspend made through the other router meanwhile
 *    is seen within that second.
 *
 * Every database is on a server of the test's own (the shared one stays up).
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

#define OUTAGE_MS 60000

static struct ts_pgserver *pg_global, *pg_eu;
static struct ts_rt rt_storage, *rt = &rt_storage;
static struct ts_tenant *acme, *bolt;

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
        { .id = "us-east-1", .region = "us-east",
          .dps = { { "us-east-1-dps" } }, .hubs = { { "us-east-1-hub1" } } },
    },
};

static struct ts_cp *start_cp(const char *name, const char *global_db, const char *eu_db, const char *us_db,
                              const char *tenants_json)
{
    struct ts_cp_opts co;
    struct ts_cp *cp;
    memset(&co, 0, sizeof co);
    co.name = name;
    co.global_db = global_db;
    co.geo_ids[0] = "eu";
    co.geo_ids[1] = "us";
    co.geo_dbs[0] = eu_db;
    co.geo_dbs[1] = us_db;
    co.redis = rt->redis->addr;
    co.stale_after = 3;
    co.down_after = 10;
    co.extra_json = ts_str("\"layoutRefreshMs\": 200, \"tenantCacheTtlMs\": 1000, \"tenants\": %s", tenants_json);
    cp = ts_controlplane_start(&co);
    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("control plane %s not ready: %s", name, ts_resp_str(ts_get(cp, "/readyz")));
    return cp;
}

static int group_setup(void **state)
{
    const char *global_db, *eu_db, *us_db;
    (void)state;
    pg_global = ts_pgserver_start("degraded-global");
    pg_eu = ts_pgserver_start("degraded-eu");
    global_db = ts_pg_create_db(pg_global->conninfo, "deg_global");
    eu_db = ts_pg_create_db(pg_eu->conninfo, "deg_eu");
    us_db = ts_pg_create_db(getenv("STAMPCP_TEST_PG"), "deg_us");
    rt->layout_refresh_ms = 200;
    rt->redis = ts_redis_start("degraded");
    rt->cp[rt->ncp++] = start_cp("cp-default", global_db, eu_db, us_db, "{}");
    rt->cp[rt->ncp++] = start_cp("cp-short", global_db, eu_db, us_db, "{\"staleOnErrorMs\": 1000}");
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    acme = ts_rt_tenant_acme(rt->cp[0]);
    bolt = ts_rt_tenant(rt->cp[0], "{\"id\":\"bolt\",\"name\":\"Bolt\",\"residency\":{\"geographies\":[\"us\"]}}");
    for (int i = 0; i < rt->ncp; i++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i], acme, "e1"), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i], bolt, "u1"), 200);
    }
    return 0;
}

static struct ts_resp *readyz(struct ts_cp *cp)
{
    return ts_get(cp, "/readyz");
}

static const char *ready_status(struct ts_cp *cp)
{
    struct ts_resp *r = readyz(cp);
    const char *s = ts_jstr(r->json, "status");
    return r->status == 200 && s ? s : "unready";
}

static bool all_ready(void *arg)
{
    (void)arg;
    for (int i = 0; i < rt->ncp; i++)
        if (strcmp(ready_status(rt->cp[i]), "ready") != 0)
            return false;
    return true;
}

static bool degraded_naming(void *arg)
{
    const char *part = arg;
    struct ts_resp *r = readyz(rt->cp[0]);
    const char *check = ts_jstr(json_object_get(r->json, "checks"), part);
    return r->status == 200 && strcmp(ts_jstr(r->json, "status"), "degraded") == 0 && check &&
           strcmp(check, "ok") != 0 && strstr(ts_resp_str(r), ts_str("\"%s: ", part)) != NULL;
}

static int64_t tenant_queries(struct ts_cp *cp)
{
    struct ts_resp *r = readyz(cp);
    return (int64_t)json_integer_value(json_object_get(json_object_get(r->json, "tenantCache"), "queries"));
}

static void test_geography_outage(void **state)
{
    struct ts_resp *r;
    (void)state;
    ts_pgserver_stop(pg_eu, "fast");
    if (!ts_wait_until(degraded_naming, "geo:eu", 5000))
        ts_fail("readyz is not 200 degraded naming geo:eu: %s", ts_resp_str(readyz(rt->cp[0])));
    r = readyz(rt->cp[0]);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "geo:us"), "ok");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "checks"), "globalDatabase"), "ok");
    /* the other geography is served, placements included; the failing one is not */
    for (int i = 0; i < rt->ncp; i++) {
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i], bolt, "u1"), 200);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[i], bolt, ts_str("u-new-%d", i)), 200);
        TS_EXPECT_ERROR(ts_rt_locate(rt->cp[i], acme, ts_str("e-new-%d", i)), 503, "database_unavailable");
    }
    ts_pgserver_restart(pg_eu);
    if (!ts_wait_until(all_ready, NULL, 15000))
        ts_fail("not ready again after the eu database came back: %s", ts_resp_str(readyz(rt->cp[0])));
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "e-new-0"), 200);
}

static void test_global_outage(void **state)
{
    int64_t t0, now, q0, ok_default = 0, refused_short = 0, served_short_late = 0;
    struct ts_resp *r;
    (void)state;
    q0 = tenant_queries(rt->cp[0]);
    ts_pgserver_stop(pg_global, "fast");
    t0 = ts_now_ms();
    ts_http_set_timeout(5000);
    while ((now = ts_now_ms()) - t0 < OUTAGE_MS) {
        struct ts_resp *a = ts_rt_locate(rt->cp[0], acme, "e1");
        struct ts_resp *b = ts_rt_locate(rt->cp[0], bolt, "u1");
        struct ts_resp *c = ts_rt_locate(rt->cp[1], acme, "e1");
        if (a->status != 200 || b->status != 200)
            ts_fail("status lookup refused %lld ms into the global outage: %s / %s", (long long)(now - t0),
                    ts_resp_str(a), ts_resp_str(b));
        ok_default += 2;
        /* staleOnErrorMs 1000 with a 1 s TTL: no later than 2 s (+ the last read) after the stop */
        if (now - t0 > 4000) {
            if (c->status == 503)
                refused_short++;
            else
                served_short_late++;
        }
        ts_sleep_ms(100);
    }
    ts_log("global outage %d ms: %lld lookups answered 200 by the default instance; the 1 s instance refused %lld, "
           "served %lld after 4 s", OUTAGE_MS, (long long)ok_default, (long long)refused_short,
           (long long)served_short_late);
    if (served_short_late != 0 || refused_short == 0)
        ts_fail("staleOnErrorMs 1000 should refuse once expired: refused %lld, served %lld", (long long)refused_short,
                (long long)served_short_late);
    if (!degraded_naming("globalDatabase"))
        ts_fail("readyz during the global outage: %s", ts_resp_str(readyz(rt->cp[0])));
    r = readyz(rt->cp[0]);
    if (json_integer_value(json_object_get(json_object_get(r->json, "tenantCache"), "staleServed")) < ok_default / 2)
        ts_fail("tenantCache.staleServed does not count the stale answers: %s", ts_resp_str(r));
    /* coalesced: about one catalog query per tenant and second, not one per lookup */
    if (tenant_queries(rt->cp[0]) - q0 > 2 * (OUTAGE_MS / 1000 + 5))
        ts_fail("%lld tenant queries during the outage for %lld lookups", (long long)(tenant_queries(rt->cp[0]) - q0),
                (long long)ok_default);
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", "/v1/tenants/acme", NULL), 503, "database_unavailable");

    ts_pgserver_restart(pg_global);
    if (!ts_wait_until(all_ready, NULL, 15000))
        ts_fail("not ready again after the global database came back: %s", ts_resp_str(readyz(rt->cp[0])));
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], acme, "e1"), 200);
    /* a change after the outage is seen at once, stale copies or not */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/suspend", NULL), 200);
    for (int i = 0; i < rt->ncp; i++)
        TS_EXPECT_ERROR(ts_rt_locate(rt->cp[i], acme, "e1"), 403, "tenant_suspended");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/resume", NULL), 200);
    ts_http_set_timeout(10000);
}

static bool readyz_redis_degraded(void *arg)
{
    (void)arg;
    for (int i = 0; i < rt->ncp; i++) {
        struct ts_resp *r = readyz(rt->cp[i]);
        const char *c = ts_jstr(json_object_get(r->json, "checks"), "redis");
        if (r->status != 200 || !c || strcmp(c, "ok") == 0)
            return false;
    }
    return true;
}

#define REDIS_OUTAGE_MS 3000

static void test_redis_outage_lookups(void **state)
{
    int64_t t0, q0, q1, n = 0, t_suspend, seen_ms = -1;
    (void)state;
    ts_redis_stop(rt->redis);
    ts_http_set_timeout(5000);
    if (!ts_wait_until(readyz_redis_degraded, NULL, 8000))
        ts_fail("readyz does not name redis: %s", ts_resp_str(readyz(rt->cp[0])));
    q0 = tenant_queries(rt->cp[0]);
    t0 = ts_now_ms();
    while (ts_now_ms() - t0 < REDIS_OUTAGE_MS) {
        struct ts_resp *a = ts_rt_locate(rt->cp[0], acme, "e1");
        if (a->status != 200)
            ts_fail("status lookup refused %lld ms into the Redis outage: %s", (long long)(ts_now_ms() - t0),
                    ts_resp_str(a));
        n++;
    }
    q1 = tenant_queries(rt->cp[0]);
    ts_log("Redis outage: %lld lookups in %d ms, %lld tenant queries", (long long)n, REDIS_OUTAGE_MS,
           (long long)(q1 - q0));
    if (n < 20)
        ts_fail("only %lld lookups in %d ms: the test proves nothing", (long long)n, REDIS_OUTAGE_MS);
    /* one read per second of the outage (+1 for the edges), not one per lookup */
    if (q1 - q0 > REDIS_OUTAGE_MS / 1000 + 2)
        ts_fail("%lld tenant queries for %lld lookups while unsubscribed", (long long)(q1 - q0), (long long)n);

    /* a suspend through cp[1] reaches cp[0] within the 1 s, unannounced */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "e1"), 200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[1], "POST", "/v1/tenants/acme/suspend", NULL), 200);
    t_suspend = ts_now_ms();
    while (ts_now_ms() - t_suspend < 3000) {
        struct ts_resp *a = ts_rt_locate(rt->cp[0], acme, "e1");
        if (a->status == 403) {
            seen_ms = ts_now_ms() - t_suspend;
            break;
        }
        TS_EXPECT_STATUS(a, 200);
        ts_sleep_ms(20);
    }
    ts_log("the suspend was seen by the other router after %lld ms", (long long)seen_ms);
    if (seen_ms < 0 || seen_ms > 1000 + 500)
        ts_fail("the suspend was not seen within the 1 s bound while unsubscribed (%lld ms)", (long long)seen_ms);
    TS_EXPECT_STATUS(ts_admin(rt->cp[1], "POST", "/v1/tenants/acme/resume", NULL), 200);

    ts_redis_restart(rt->redis);
    if (!ts_wait_until(all_ready, NULL, 15000))
        ts_fail("not ready again after Redis came back: %s", ts_resp_str(readyz(rt->cp[0])));
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "e1"), 200);
    ts_http_set_timeout(10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geography_outage),
        cmocka_unit_test(test_global_outage),
        cmocka_unit_test(test_redis_outage_lookups),
    };
    ts_init("test_cp_degraded");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
