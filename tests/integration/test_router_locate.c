/*
 * test_router_locate - the device status lookup (docs/api.md "Devices: where
 * do I belong?" and "Devices: admin"):
 *
 *  - a first locate with a device SAS token places the device inside the
 *    tenant's residency and answers every documented field, with the idScope
 *    and endpoint of the chosen stamp's DPS as registered;
 *  - repeat lookups (through the router that placed it, i.e. its cache, and
 *    through a second router, i.e. the database) answer the identical body
 *    and etag without any write (row xmin/ctid, history, dps_usage and the
 *    table's insert/update statistics unchanged);
 *  - the row is in the geography's database only; the global DB has no
 *    devices table;
 *  - installer tokens act for any device of their tenant only; the operator
 *    token acts for any device;
 *  - admin GET shows status, decision record and history; deprovision
 *    releases (a later locate places again: history assigned, deprovisioned,
 *    assigned); retire makes locate answer 410 device_retired;
 *  - a DPS instance's endpoint or idScope changed in the catalog (PATCH)
 *    reaches devices on their next lookup through every router, cached
 *    answers included, while the device row keeps the copy it took.
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

static struct ts_rt *rt;
static struct ts_tenant *acme, *other;
static const char *eu_db, *us_db;

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

static int group_setup(void **state)
{
    rt = ts_rt_start_fleet_acme(&layout, 2, &acme);
    eu_db = ts_rt_geo_db(rt, "eu");
    us_db = ts_rt_geo_db(rt, "us");
    other = ts_rt_tenant(rt->cp[0], "{\"id\":\"other\",\"name\":\"Other\",\"residency\":{\"geographies\":[\"eu\"]}}");
    return 0;
}

/* All documented fields of a 200 assignment answer, for the eu-west-1 stamp. */
static void check_answer(struct ts_resp *r, const char *tenant, const char *regid)
{
    json_t *j = r->json;
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(j, "registrationId"), regid);
    TS_EXPECT_STREQ(ts_jstr(j, "tenantId"), tenant);
    TS_EXPECT_STREQ(ts_jstr(j, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(j, "region"), "eu-west");
    TS_EXPECT_STREQ(ts_jstr(j, "stamp"), "eu-west-1");
    TS_EXPECT_STREQ(ts_jstr(j, "idScope"), ts_rt_id_scope("eu-west-1-dps"));
    TS_EXPECT_STREQ(ts_jstr(j, "dpsEndpoint"), ts_rt_endpoint("eu-west-1-dps"));
    if (ts_parse_rfc3339(ts_jstr(j, "assignedAt")) < 0)
        ts_fail("assignedAt is not RFC 3339 UTC: %s", ts_resp_str(r));
    if (!ts_jstr(j, "etag") || !*ts_jstr(j, "etag"))
        ts_fail("no etag string: %s", ts_resp_str(r));
}

static const char *row_state(const char *db, const char *tenant, const char *regid)
{
    return ts_pg_scalar(db, ts_str("SELECT xmin::text || ' ' || ctid::text || ' ' || etag || ' ' || status || ' ' ||"
                                   " updated_at FROM devices WHERE tenant_id = '%s' AND registration_id = '%s'",
                                   tenant, regid));
}

static const char *table_stats(const char *db)
{
    return ts_pg_scalar(db, "SELECT (SELECT n_tup_ins || '/' || n_tup_upd || '/' || n_tup_del FROM pg_stat_user_tables"
                            " WHERE relname = 'devices') || ' ' ||"
                            " (SELECT n_tup_ins || '/' || n_tup_upd FROM pg_stat_user_tables WHERE relname = 'device_history')"
                            " || ' ' || (SELECT n_tup_ins || '/' || n_tup_upd FROM pg_stat_user_tables"
                            " WHERE relname = 'dps_usage')");
}

static void test_locate_then_status_lookups(void **state)
{
    struct ts_resp *first, *r;
    const char *body, *etag, *row0, *stats0, *usage0;
    long hist0;

    first = ts_rt_locate(rt->cp[0], acme, "dev-1");
    check_answer(first, "acme", "dev-1");
    body = first->body;
    etag = ts_jstr(first->json, "etag");
    ts_log("first locate: %s", ts_resp_str(first));

    /* committed in eu, nowhere else */
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE tenant_id='acme' AND registration_id='dev-1'"
                                        " AND status='assigned' AND stamp_id='eu-west-1' AND dps_id='eu-west-1-dps'"),
                     1);
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM devices"), 0);
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM device_history"), 0);
    if (ts_pg_table_exists(rt->cp[0]->global_db, "devices"))
        ts_fail("the global catalog has a devices table");
    if (ts_pg_table_exists(rt->cp[0]->global_db, "device_history"))
        ts_fail("the global catalog has a device_history table");

    /* let the statistics of the insert settle before taking the baseline */
    ts_sleep_ms(1500);
    row0 = row_state(eu_db, "acme", "dev-1");
    hist0 = ts_pg_count(eu_db, "SELECT count(*) FROM device_history");
    usage0 = ts_pg_scalar(eu_db, "SELECT string_agg(dps_id || '=' || registrations, ',' ORDER BY dps_id) FROM dps_usage");
    stats0 = table_stats(eu_db);
    ts_log("baseline: row %s, history %ld, usage %s, stats %s", row0, hist0, usage0, stats0);

    for (int i = 0; i < 20; i++) {
        /* even: the router that placed it (cache); odd: the other one (database) */
        r = ts_rt_locate(rt->cp[i % 2], acme, "dev-1");
        TS_EXPECT_STATUS(r, 200);
        if (strcmp(r->body, body) != 0)
            ts_fail("lookup %d via router %d answered a different body:\n first: %s\n now:   %s", i, i % 2, body,
                    r->body);
        TS_EXPECT_STREQ(ts_jstr(r->json, "etag"), etag);
    }
    ts_sleep_ms(1500);
    TS_EXPECT_STREQ(row_state(eu_db, "acme", "dev-1"), row0);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM device_history"), hist0);
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT string_agg(dps_id || '=' || registrations, ',' ORDER BY dps_id)"
                                        " FROM dps_usage"),
                    usage0);
    TS_EXPECT_STREQ(table_stats(eu_db), stats0);
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM devices"), 0);
}

static void test_installer_and_operator_tokens(void **state)
{
    const char *tok = ts_rt_installer_token(rt->cp[0], "acme");
    const char *bearer = ts_str("Bearer %s", tok);
    struct ts_resp *r;

    if (strncmp(tok, "cpi_", 4) != 0)
        ts_fail("installer token should start with cpi_: %s", tok);
    /* a new device of the tenant, placed on its behalf */
    r = ts_rt_device(rt->cp[0], "locate", "acme", "dev-inst-1", bearer, NULL);
    check_answer(r, "acme", "dev-inst-1");
    /* an existing one, through the other router */
    r = ts_rt_device(rt->cp[1], "locate", "acme", "dev-1", bearer, NULL);
    check_answer(r, "acme", "dev-1");
    /* not for another tenant's device */
    r = ts_rt_device(rt->cp[0], "locate", "other", "dev-x", bearer, NULL);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE tenant_id='other'"), 0);
    /* a made-up installer token */
    r = ts_rt_device(rt->cp[0], "locate", "acme", "dev-1", "Bearer cpi_0000000000000000000000000000", NULL);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    /* the operator token acts for any device of any tenant */
    r = ts_rt_device(rt->cp[1], "locate", "other", "dev-op-1", ts_str("Bearer %s", rt->cp[1]->token), NULL);
    check_answer(r, "other", "dev-op-1");
    r = ts_rt_device(rt->cp[0], "locate", "acme", "dev-1", ts_str("Bearer %s", rt->cp[0]->token), NULL);
    check_answer(r, "acme", "dev-1");
}

static json_t *admin_device(const char *tenant, const char *regid)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/%s/devices/%s", tenant, regid), NULL);
    TS_EXPECT_STATUS(r, 200);
    return r->json;
}

static const char *history_events(json_t *dev)
{
    json_t *h = json_object_get(dev, "history"), *e;
    size_t i;
    char *acc = ts_str("%s", "");
    if (!json_is_array(h))
        ts_fail("device has no history array: %s", (char *)ts_keep(json_dumps(dev, JSON_COMPACT)));
    json_array_foreach(h, i, e) acc = ts_str("%s%s%s", acc, i ? "," : "", ts_jstr(e, "event") ? ts_jstr(e, "event") : "?");
    return acc;
}

static void test_admin_get_and_lifecycle(void **state)
{
    json_t *dev = admin_device("acme", "dev-1"), *dec, *stamps, *v, *cands;
    char *txt = ts_keep(json_dumps(dev, JSON_COMPACT));
    bool saw_eu = false, saw_us = false;
    size_t i;
    struct ts_resp *r;

    ts_log("admin GET: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(dev, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(dev, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(dev, "stamp"), "eu-west-1");
    TS_EXPECT_STREQ(ts_jstr(dev, "dps"), "eu-west-1-dps");
    dec = json_object_get(dev, "decision");
    stamps = json_object_get(dec, "stamps");
    if (!json_is_array(stamps))
        ts_fail("decision.stamps missing: %s", txt);
    json_array_foreach(stamps, i, v) {
        const char *id = ts_jstr(v, "stamp");
        json_t *adm = json_object_get(v, "admitted");
        if (!json_is_boolean(adm))
            ts_fail("decision stamp without boolean admitted: %s", txt);
        if (id && strcmp(id, "eu-west-1") == 0) {
            saw_eu = true;
            if (!json_is_true(adm))
                ts_fail("eu-west-1 should be admitted: %s", txt);
        } else if (id && strcmp(id, "us-east-1") == 0) {
            saw_us = true;
            if (json_is_true(adm))
                ts_fail("us-east-1 must be refused (residency): %s", txt);
            TS_EXPECT_STREQ(ts_jstr(v, "rule"), "residency");
        }
    }
    if (!saw_eu || !saw_us)
        ts_fail("decision.stamps should name every stamp: %s", txt);
    cands = json_object_get(dec, "candidates");
    if (!json_is_array(cands) || json_array_size(cands) < 1)
        ts_fail("decision.candidates missing or empty: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(json_array_get(cands, 0), "dps"), "eu-west-1-dps");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(cands, 0), "stamp"), "eu-west-1");
    if (!json_is_integer(json_object_get(json_array_get(cands, 0), "band")))
        ts_fail("candidate without integer band: %s", txt);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(dec, "chosen"), "stamp"), "eu-west-1");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(dec, "chosen"), "dps"), "eu-west-1-dps");
    if (!ts_jstr(dec, "reason") || ts_parse_rfc3339(ts_jstr(dec, "at")) < 0)
        ts_fail("decision needs reason and at: %s", txt);
    TS_EXPECT_STREQ(history_events(dev), "assigned");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(json_object_get(dev, "history"), 0), "toStamp"), "eu-west-1");

    /* unknown device */
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", "/v1/tenants/acme/devices/nope", NULL), 404, "not_found");

    /* deprovision: released, history kept, a later locate places it afresh */
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/dev-1/deprovision", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "deprovisioned");
    TS_EXPECT_STREQ(ts_jstr(r->json, "registrationId"), "dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "tenantId"), "acme");
    TS_EXPECT_STREQ(ts_jstr(admin_device("acme", "dev-1"), "status"), "deprovisioned");
    assert_int_equal(ts_pg_count(eu_db, "SELECT registrations FROM dps_usage WHERE dps_id='eu-west-1-dps'"),
                     ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE status='assigned' AND dps_id='eu-west-1-dps'"));
    /* both routers: no stale cached answer */
    r = ts_rt_locate(rt->cp[1], acme, "dev-1");
    check_answer(r, "acme", "dev-1");
    r = ts_rt_locate(rt->cp[0], acme, "dev-1");
    check_answer(r, "acme", "dev-1");
    dev = admin_device("acme", "dev-1");
    TS_EXPECT_STREQ(ts_jstr(dev, "status"), "assigned");
    TS_EXPECT_STREQ(history_events(dev), "assigned,deprovisioned,assigned");

    /* retire: 410 from then on, on both routers */
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/dev-1/retire", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "retired");
    TS_EXPECT_ERROR(ts_rt_locate(rt->cp[0], acme, "dev-1"), 410, "device_retired");
    TS_EXPECT_ERROR(ts_rt_locate(rt->cp[1], acme, "dev-1"), 410, "device_retired");
    TS_EXPECT_STREQ(ts_jstr(admin_device("acme", "dev-1"), "status"), "retired");
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM devices WHERE registration_id='dev-1' AND status='retired'"),
                     1);
}

/* Poll a router until a lookup names endpoint and scope (a layout refresh, 1 s). */
static void expect_address(struct ts_cp *cp, const char *regid, const char *endpoint, const char *scope)
{
    struct ts_resp *r = NULL;
    for (int i = 0; i < 50; i++) {
        r = ts_rt_locate(cp, acme, regid);
        TS_EXPECT_STATUS(r, 200);
        if (strcmp(ts_jstr(r->json, "dpsEndpoint"), endpoint) == 0 && strcmp(ts_jstr(r->json, "idScope"), scope) == 0)
            return;
        ts_sleep_ms(100);
    }
    ts_fail("router %s still answers %s after 5 s, wanted %s %s", cp->name, ts_resp_str(r), endpoint, scope);
}

static void test_catalog_address_reaches_devices(void **state)
{
    const char *old_ep = ts_rt_endpoint("eu-west-1-dps"), *old_scope = ts_rt_id_scope("eu-west-1-dps");
    const char *new_ep = "moved-eu-west-1.example:8443", *new_scope = "0ne0MOVED01";
    struct ts_resp *r;
    (void)state;

    /* both routers have answered (and router 0 cached) the old address */
    expect_address(rt->cp[0], "dev-addr", old_ep, old_scope);
    expect_address(rt->cp[1], "dev-addr", old_ep, old_scope);
    expect_address(rt->cp[0], "dev-addr", old_ep, old_scope);

    r = ts_admin(rt->cp[1], "PATCH", "/v1/dps-instances/eu-west-1-dps",
                 ts_str("{\"endpoint\":\"%s\",\"idScope\":\"%s\"}", new_ep, new_scope));
    TS_EXPECT_STATUS(r, 200);
    expect_address(rt->cp[0], "dev-addr", new_ep, new_scope);
    expect_address(rt->cp[1], "dev-addr", new_ep, new_scope);
    /* answered from the catalog: the row still holds what it took at assignment */
    TS_EXPECT_STREQ(ts_pg_scalar(eu_db, "SELECT dps_endpoint || ' ' || id_scope FROM devices"
                                        " WHERE tenant_id = 'acme' AND registration_id = 'dev-addr'"),
                    ts_str("%s %s", old_ep, old_scope));
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/acme/devices/dev-addr", NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsEndpoint"), new_ep);
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), new_scope);

    r = ts_admin(rt->cp[0], "PATCH", "/v1/dps-instances/eu-west-1-dps",
                 ts_str("{\"endpoint\":\"%s\",\"idScope\":\"%s\"}", old_ep, old_scope));
    TS_EXPECT_STATUS(r, 200);
    expect_address(rt->cp[1], "dev-addr", old_ep, old_scope);
    expect_address(rt->cp[0], "dev-addr", old_ep, old_scope);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locate_then_status_lookups),
        cmocka_unit_test(test_installer_and_operator_tokens),
        cmocka_unit_test(test_admin_get_and_lifecycle),
        cmocka_unit_test(test_catalog_address_reaches_devices),
    };
    ts_init("test_router_locate");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
