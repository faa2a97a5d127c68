/*
 * test_router_reprovision - reprovision keeps a valid assignment and moves a
 * device off a stamp that is down or draining, within its geography, with
 * history, decision record and cache invalidation on every router
 * (docs/api.md "Devices: where do I belong?", docs/architecture.md
 * "Reprovision", "Cache"):
 *
 *  - on a healthy stamp: 200 moved:false, same stamp and etag, no write;
 *  - kill -9 the stamp's agent, wait until `down`: 200 moved:true, reason
 *    "stamp down", the other stamp of the geography; admin GET shows the
 *    `moved` history event (fromStamp, toStamp, reason) and the decision
 *    record refusing the old stamp by rule `health`;
 *  - locate afterwards answers the new stamp on the router that moved it
 *    (its cache) and, within ~1 s, on a second router that had the old
 *    answer cached (invalidation through Redis);
 *  - PATCH the new stamp to draining: reprovision moves off it with reason
 *    "stamp draining" (decision: rule `status`), also through the operator
 *    route;
 *  - never outside the geography, dps_usage consistent throughout.
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

static struct ts_rt *rt;
static struct ts_tenant *acme;
static const char *eu_db, *us_db;
static const char *s_old, *s_new;   /* the device's first stamp and where it moved */

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "eu-north", "eu" }, { "us-east", "us" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = "eu-north-1", .region = "eu-north", .dps = { { "eu-north-1-dps" } }, .hubs = { { "eu-north-1-hub" } } },
        { .id = "us-east-1", .region = "us-east", .dps = { { "us-east-1-dps" } }, .hubs = { { "us-east-1-hub" } } },
    },
};

static int group_setup(void **state)
{
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    us_db = ts_rt_geo_db(rt, "us");
    return 0;
}

static struct ts_resp *reprovision(struct ts_cp *cp, const char *regid)
{
    return ts_rt_device(cp, "reprovision", "acme", regid, ts_rt_sas(acme, regid, 0), NULL);
}

static const char *other_eu_stamp(const char *s)
{
    return strcmp(s, "eu-west-1") == 0 ? "eu-north-1" : "eu-west-1";
}

static void check_usage(void)
{
    ts_rt_expect_usage_matches(eu_db, "after the moves");
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM devices"), 0);
}

static json_t *admin_device(const char *regid)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", regid), NULL);
    TS_EXPECT_STATUS(r, 200);
    return r->json;
}

/* The verdict for stamp in the device's current decision record. */
static json_t *verdict(json_t *dev, const char *stamp)
{
    json_t *stamps = json_object_get(json_object_get(dev, "decision"), "stamps"), *v;
    size_t i;
    json_array_foreach(stamps, i, v) if (ts_jstr(v, "stamp") && strcmp(ts_jstr(v, "stamp"), stamp) == 0) return v;
    ts_fail("decision record does not name %s: %s", stamp, (char *)ts_keep(json_dumps(dev, JSON_COMPACT)));
}

/* The last history event. */
static json_t *last_event(json_t *dev)
{
    json_t *h = json_object_get(dev, "history");
    if (!json_is_array(h) || json_array_size(h) == 0)
        ts_fail("no history: %s", (char *)ts_keep(json_dumps(dev, JSON_COMPACT)));
    return json_array_get(h, json_array_size(h) - 1);
}

struct wait_stamp { struct ts_cp *cp; const char *regid; const char *stamp; };

static bool locate_says(void *arg)
{
    struct wait_stamp *w = arg;
    struct ts_resp *r = ts_rt_locate(w->cp, acme, w->regid);
    return r->status == 200 && ts_jstr(r->json, "stamp") && strcmp(ts_jstr(r->json, "stamp"), w->stamp) == 0;
}

static void test_keep_while_healthy(void **state)
{
    struct ts_resp *first, *r;
    const char *row0;

    first = ts_rt_locate(rt->cp[0], acme, "dev-1");
    TS_EXPECT_STATUS(first, 200);
    TS_EXPECT_STREQ(ts_jstr(first->json, "geography"), "eu");
    s_old = ts_str("%s", ts_jstr(first->json, "stamp"));
    ts_log("dev-1 placed on %s", s_old);
    row0 = ts_pg_scalar(eu_db, "SELECT xmin::text || ' ' || etag FROM devices WHERE registration_id = 'dev-1'");

    for (int i = 0; i < 2; i++) {
        r = reprovision(rt->cp[i], "dev-1");
        TS_EXPECT_STATUS(r, 200);
        if (!json_is_false(json_object_get(r->json, "moved")))
            ts_fail("reprovision on a healthy stamp must answer moved:false: %s", ts_resp_str(r));
        if (json_object_get(r->json, "reason"))
            ts_fail("moved:false with a reason: %s", ts_resp_str(r));
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_old);
        TS_EXPECT_STREQ(ts_jstr(r->json, "etag"), ts_jstr(first->json, "etag"));
        TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_jstr(first->json, "idScope"));
    }
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT xmin::text || ' ' || etag FROM devices WHERE registration_id = 'dev-1'"),
                    row0);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_history WHERE registration_id = 'dev-1'"), 1);
}

static void test_move_when_down(void **state)
{
    struct ts_rt_stamp *st = ts_rt_find_stamp(rt, s_old);
    struct wait_stamp w;
    struct ts_resp *r;
    json_t *dev, *ev, *v;
    int64_t t0;

    /* router 2 caches the old answer */
    r = ts_rt_locate(rt->cp[1], acme, "dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_old);
    r = ts_rt_locate(rt->cp[1], acme, "dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_old);

    ts_proc_kill(st->agent, SIGKILL);
    assert_true(ts_proc_wait(st->agent, 2000));
    if (!ts_rt_wait_health(rt, s_old, "down", 8000))
        ts_fail("%s not down 8 s after its agent was killed (%s)", s_old, ts_rt_health(rt->cp[0], s_old));

    r = reprovision(rt->cp[0], "dev-1");
    TS_EXPECT_STATUS(r, 200);
    ts_log("reprovision after %s went down: %s", s_old, ts_resp_str(r));
    if (!json_is_true(json_object_get(r->json, "moved")))
        ts_fail("reprovision off a down stamp must answer moved:true: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "reason"), "stamp down");
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    s_new = ts_str("%s", ts_jstr(r->json, "stamp"));
    TS_EXPECT_STREQ(s_new, other_eu_stamp(s_old));
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(ts_str("%s-dps", s_new)));
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT stamp_id FROM devices WHERE registration_id = 'dev-1'"), s_new);
    check_usage();

    dev = admin_device("dev-1");
    ev = last_event(dev);
    TS_EXPECT_STREQ(ts_jstr(ev, "event"), "moved");
    TS_EXPECT_STREQ(ts_jstr(ev, "fromStamp"), s_old);
    TS_EXPECT_STREQ(ts_jstr(ev, "toStamp"), s_new);
    TS_EXPECT_STREQ(ts_jstr(ev, "reason"), "stamp down");
    TS_EXPECT_STREQ(ts_jstr(dev, "stamp"), s_new);
    v = verdict(dev, s_old);
    if (!json_is_false(json_object_get(v, "admitted")))
        ts_fail("the down stamp must be refused in the decision record: %s", (char *)ts_keep(json_dumps(v, 0)));
    TS_EXPECT_STREQ(ts_jstr(v, "rule"), "health");
    TS_EXPECT_STREQ(ts_jstr(verdict(dev, "us-east-1"), "rule"), "residency");
    if (!json_is_true(json_object_get(verdict(dev, s_new), "admitted")))
        ts_fail("the new stamp must be admitted in the decision record");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(json_object_get(dev, "decision"), "chosen"), "stamp"), s_new);

    /* the router that moved it answers the new stamp at once */
    r = ts_rt_locate(rt->cp[0], acme, "dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_new);
    /* the other router drops its cached answer within ~1 s */
    w = (struct wait_stamp){ rt->cp[1], "dev-1", s_new };
    t0 = ts_now_ms();
    if (!ts_wait_until(locate_says, &w, 1500))
        ts_fail("router 2 still answers the old stamp 1.5 s after the move: %s",
                ts_resp_str(ts_rt_locate(rt->cp[1], acme, "dev-1")));
    ts_log("router 2 answered the new stamp after %lld ms", (long long)(ts_now_ms() - t0));
    /* and a reprovision now keeps it */
    r = reprovision(rt->cp[1], "dev-1");
    TS_EXPECT_STATUS(r, 200);
    if (!json_is_false(json_object_get(r->json, "moved")))
        ts_fail("second reprovision should keep the new stamp: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_new);
}

static void test_cross_router_invalidation(void **state)
{
    /* a fresh device: placed by router 1 on s_new (the only live one), cached by router 2 */
    struct ts_rt_stamp *st = ts_rt_find_stamp(rt, s_old);
    struct ts_resp *r;
    struct wait_stamp w;
    int64_t t0;

    ts_rt_agent_start(rt, st);
    if (!ts_rt_wait_health(rt, s_old, "healthy", 5000))
        ts_fail("%s not healthy again after restarting its agent", s_old);
    r = ts_rt_locate(rt->cp[1], acme, "dev-2");
    TS_EXPECT_STATUS(r, 200);
    {
        const char *on = ts_jstr(r->json, "stamp");
        /* router 2 caches it */
        TS_EXPECT_STREQ(ts_jstr(ts_rt_locate(rt->cp[1], acme, "dev-2")->json, "stamp"), on);
        /* make its stamp draining through the catalog, reprovision via router 1 */
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", on), "{\"status\":\"draining\"}"), 200);
        /* catalog changes reach the placement snapshot within a layout refresh */
        ts_rt_wait_layout(rt);
        r = reprovision(rt->cp[0], "dev-2");
        TS_EXPECT_STATUS(r, 200);
        ts_log("reprovision of dev-2 off draining %s: %s", on, ts_resp_str(r));
        if (!json_is_true(json_object_get(r->json, "moved")))
            ts_fail("reprovision off a draining stamp must move: %s", ts_resp_str(r));
        TS_EXPECT_STREQ(ts_jstr(r->json, "reason"), "stamp draining");
        TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), other_eu_stamp(on));
        TS_EXPECT_STREQ(ts_jstr(verdict(admin_device("dev-2"), on), "rule"), "status");
        TS_EXPECT_STREQ(ts_jstr(last_event(admin_device("dev-2")), "reason"), "stamp draining");
        w = (struct wait_stamp){ rt->cp[1], "dev-2", other_eu_stamp(on) };
        t0 = ts_now_ms();
        if (!ts_wait_until(locate_says, &w, 1500))
            ts_fail("router 2 still answers the old stamp 1.5 s after router 1 moved dev-2: %s",
                    ts_resp_str(ts_rt_locate(rt->cp[1], acme, "dev-2")));
        ts_log("router 2 saw the move of dev-2 after %lld ms", (long long)(ts_now_ms() - t0));
        /* back to active */
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", on), "{\"status\":\"active\"}"), 200);
        ts_rt_wait_layout(rt);
    }
    check_usage();
}

static void test_move_when_draining_operator(void **state)
{
    /* dev-1 is on s_new; drain it and reprovision through the operator route */
    struct ts_resp *r;
    json_t *dev;

    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", s_new), "{\"status\":\"draining\"}"), 200);
    /* the other router learns the layout change within a refresh */
    ts_rt_wait_layout(rt);
    r = ts_admin(rt->cp[1], "POST", "/v1/tenants/acme/devices/dev-1/reprovision", "{\"reason\":\"maintenance\"}");
    TS_EXPECT_STATUS(r, 200);
    if (!json_is_true(json_object_get(r->json, "moved")))
        ts_fail("operator reprovision off a draining stamp must move: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "reason"), "stamp draining");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_old);
    dev = admin_device("dev-1");
    TS_EXPECT_STREQ(ts_jstr(last_event(dev), "event"), "moved");
    TS_EXPECT_STREQ(ts_jstr(last_event(dev), "fromStamp"), s_new);
    TS_EXPECT_STREQ(ts_jstr(last_event(dev), "toStamp"), s_old);
    TS_EXPECT_STREQ(ts_jstr(verdict(dev, s_new), "rule"), "status");
    {
        struct wait_stamp w = { rt->cp[0], "dev-1", s_old };
        if (!ts_wait_until(locate_says, &w, 1500))
            ts_fail("router 1 still answers the old stamp after router 2 moved dev-1");
    }
    /* history: assigned, moved, moved */
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT string_agg(event, ',' ORDER BY id) FROM device_history"
                                        " WHERE registration_id = 'dev-1'"),
                    "assigned,moved,moved");
    check_usage();
    /* every stamp of the geography down or draining: nowhere to go, never outside */
    {
        struct ts_rt_stamp *st = ts_rt_find_stamp(rt, s_old);
        ts_proc_kill(st->agent, SIGKILL);
        assert_true(ts_proc_wait(st->agent, 2000));
        if (!ts_rt_wait_health(rt, s_old, "down", 8000))
            ts_fail("%s not down after its agent was killed", s_old);
        r = reprovision(rt->cp[0], "dev-1");
        ts_log("reprovision with no live stamp in the geography: %s", ts_resp_str(r));
        if (r->status == 200) {
            TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
            TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), s_old);
        } else if (r->status != 503 || !ts_err_code(r) || strcmp(ts_err_code(r), "no_healthy_stamp") != 0) {
            ts_fail("reprovision with no live stamp: expected 503 no_healthy_stamp (or keeping the stamp), got %s",
                    ts_resp_str(r));
        }
        TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT stamp_id FROM devices WHERE registration_id = 'dev-1'"), s_old);
        TS_EXPECT_STATUS(ts_rt_locate(rt->cp[1], acme, "dev-1"), 200);
        check_usage();
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_while_healthy),
        cmocka_unit_test(test_move_when_down),
        cmocka_unit_test(test_cross_router_invalidation),
        cmocka_unit_test(test_move_when_draining_operator),
    };
    ts_init("test_router_reprovision");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
