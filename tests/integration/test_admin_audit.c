/*
 * test_admin_audit - the audit log (docs/api.md "Audit log"), with a real
 * control plane, PostgreSQL (global + eu + us) and a stamp agent:
 *
 *  - a tenant's create, PATCH, rotation and DELETE each write exactly one
 *    entry (by request id) in the global catalog, answered only after it
 *    committed: who (operator token), tenant, method, route pattern,
 *    resource, status, before (PATCH, DELETE) and after, newest first on
 *    GET /v1/audit?tenant=;
 *  - secrets: no enrollment key (created or rotated), no DPS service key and
 *    no sealed value in any audit_log row (SQL on the tables); the fields
 *    read "[redacted]";
 *  - a device deprovision: its entry is in the eu database (not the global
 *    catalog, not us) with the device as it was, and GET /v1/audit shows it
 *    with geography "eu";
 *  - the operator token's reads are audited too (a 200 and a 404), with no
 *    body copied, and so is its use on a device route (in the device's
 *    geography); a device's own SAS call is not;
 *  - filters (tenant, resource, since/until) and paging (limit, cursor:
 *    every entry once, newest first, next null at the end);
 *  - bad query parameters: 400 invalid_query with the parameter as target;
 *    other methods 405.
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
static struct ts_tenant *acme;
static const char *gdb, *eu_db, *us_db;
static json_t *paged;   /* the entries collected page by page (freed by the teardown, also after a failure) */

static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" }, { NULL, NULL } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west", .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub" } } },
        { .id = NULL },
    },
};

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", "us", NULL } };
    (void)state;
    rt = ts_rt_start(&o);
    ts_rt_register_layout(rt, &layout);
    ts_rt_start_agents(rt);
    gdb = rt->cp[0]->global_db;
    eu_db = ts_rt_geo_db(rt, "eu");
    us_db = ts_rt_geo_db(rt, "us");
    acme = ts_rt_tenant_acme(rt->cp[0]);
    return 0;
}

/* An admin call with our own request id (X-Request-Id), to find its entry. */
static struct ts_resp *admin_rid(const char *method, const char *path, const char *body, const char *rid)
{
    const char *auth = ts_str("Authorization: Bearer %s", rt->cp[0]->token);
    const char *xr = ts_str("X-Request-Id: %s", rid);
    const char *h_body[] = { auth, xr, "Content-Type: application/json", NULL };
    const char *h_nobody[] = { auth, xr, NULL };
    return ts_http(rt->cp[0]->port, method, path, body ? h_body : h_nobody, body, body ? strlen(body) : 0);
}

static struct ts_resp *audit_get(const char *query)
{
    return ts_admin(rt->cp[0], "GET", ts_str("/v1/audit%s", query), NULL);
}

/* The one entry of request rid in the list (fails when it is absent or there twice). */
static json_t *entry_of(json_t *items, const char *rid)
{
    json_t *e, *found = NULL;
    size_t i;
    json_array_foreach(items, i, e) {
        if (ts_jstr(e, "requestId") && strcmp(ts_jstr(e, "requestId"), rid) == 0) {
            if (found)
                ts_fail("request %s has two audit entries", rid);
            found = e;
        }
    }
    if (!found)
        ts_fail("no audit entry for request %s in %s", rid, (char *)ts_keep(json_dumps(items, JSON_COMPACT)));
    return found;
}

static void expect_entry(json_t *e, const char *method, const char *route, const char *resource, int status,
                         const char *tenant)
{
    json_t *who = json_object_get(e, "who");
    TS_EXPECT_STREQ(ts_jstr(e, "method"), method);
    TS_EXPECT_STREQ(ts_jstr(e, "route"), route);
    TS_EXPECT_STREQ(ts_jstr(e, "resource"), resource);
    assert_int_equal(ts_jint(e, "status", -1), status);
    TS_EXPECT_STREQ(ts_jstr(who, "kind"), "operator");
    TS_EXPECT_STREQ(ts_jstr(who, "name"), "operator token");
    assert_true(json_is_null(json_object_get(who, "keyId")));
    if (tenant)
        TS_EXPECT_STREQ(ts_jstr(e, "tenant"), tenant);
    if (ts_parse_rfc3339(ts_jstr(e, "time")) < 0)
        ts_fail("entry time is not RFC 3339: %s", ts_jstr(e, "time") ? ts_jstr(e, "time") : "(null)");
}

static long rows_with(const char *conninfo, const char *needle)
{
    return ts_pg_count(conninfo, ts_str("SELECT count(*) FROM audit_log a WHERE strpos(row_to_json(a)::text, '%s') > 0",
                                        needle));
}

static void test_tenant_life_cycle_entries(void **state)
{
    struct ts_resp *r;
    json_t *items, *e;
    const char *key0, *key1;
    (void)state;

    r = admin_rid("POST", "/v1/tenants", "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}",
                  "aud-create");
    TS_EXPECT_STATUS(r, 201);
    key0 = ts_str("%s", ts_jstr(r->json, "enrollmentKey"));
    /* the entry committed before the answer was sent */
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-create'"), 1);
    TS_EXPECT_STATUS(admin_rid("PATCH", "/v1/tenants/beta", "{\"name\":\"Beta Two\"}", "aud-patch"), 200);
    r = admin_rid("POST", "/v1/tenants/beta/enrollment-key/rotate", NULL, "aud-rotate");
    TS_EXPECT_STATUS(r, 200);
    key1 = ts_str("%s", ts_jstr(r->json, "enrollmentKey"));
    TS_EXPECT_STATUS(admin_rid("DELETE", "/v1/tenants/beta", NULL, "aud-delete"), 204);
    for (int i = 0; i < 4; i++) {
        const char *rid = (const char *[]){ "aud-create", "aud-patch", "aud-rotate", "aud-delete" }[i];
        assert_int_equal(ts_pg_count(gdb, ts_str("SELECT count(*) FROM audit_log WHERE request_id = '%s'", rid)), 1);
        assert_int_equal(ts_pg_count(eu_db, ts_str("SELECT count(*) FROM audit_log WHERE request_id = '%s'", rid)), 0);
    }

    r = audit_get("?tenant=beta");
    TS_EXPECT_STATUS(r, 200);
    items = json_object_get(r->json, "items");
    assert_int_equal(json_array_size(items), 4);
    /* newest first */
    TS_EXPECT_STREQ(ts_jstr(json_array_get(items, 0), "requestId"), "aud-delete");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(items, 1), "requestId"), "aud-rotate");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(items, 2), "requestId"), "aud-patch");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(items, 3), "requestId"), "aud-create");

    e = entry_of(items, "aud-create");
    expect_entry(e, "POST", "/v1/tenants", "/v1/tenants", 201, "beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "after"), "id"), "beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "after"), "enrollmentKey"), "[redacted]");
    assert_true(json_is_null(json_object_get(e, "geography")));

    e = entry_of(items, "aud-patch");
    expect_entry(e, "PATCH", "/v1/tenants/{tenant}", "/v1/tenants/beta", 200, "beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "before"), "name"), "Beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "after"), "name"), "Beta Two");

    e = entry_of(items, "aud-rotate");
    expect_entry(e, "POST", "/v1/tenants/{tenant}/enrollment-key/rotate", "/v1/tenants/beta/enrollment-key/rotate", 200,
                 "beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "after"), "enrollmentKey"), "[redacted]");

    e = entry_of(items, "aud-delete");
    expect_entry(e, "DELETE", "/v1/tenants/{tenant}", "/v1/tenants/beta", 204, "beta");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(e, "before"), "name"), "Beta Two");
    assert_true(json_is_null(json_object_get(e, "after")));

    /* the tables themselves: no key, created or rotated, in any row of any database */
    assert_int_equal(rows_with(gdb, key0), 0);
    assert_int_equal(rows_with(gdb, key1), 0);
    assert_int_equal(rows_with(gdb, acme->key_b64), 0);
    assert_int_equal(rows_with(gdb, "enc:v1:"), 0);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE after ? 'enrollmentKey'"
                                      " AND after->>'enrollmentKey' <> '[redacted]'"), 0);
    assert_true(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE after->>'enrollmentKey' = '[redacted]'") >= 3);
}

static void test_service_key_redacted(void **state)
{
    const char *skey = "c2VydmljZS1rZXktb2YtdGhlLWF1ZGl0LXRlc3Q=";
    struct ts_resp *r;
    (void)state;
    r = admin_rid("PATCH", "/v1/dps-instances/eu-west-1-dps",
                  ts_str("{\"serviceKeyName\":\"owner\",\"serviceKey\":\"%s\"}", skey), "aud-dps-patch");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-dps-patch'"
                                      " AND route = '/v1/dps-instances/{id}' AND before IS NOT NULL AND after IS NOT NULL"), 1);
    assert_int_equal(rows_with(gdb, skey), 0);
    assert_int_equal(rows_with(gdb, "enc:v1:"), 0);
    /* the key is not in the answer either, and nothing in the audit log is a service key */
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE (after ? 'serviceKey'"
                                      " AND after->>'serviceKey' <> '[redacted]') OR (before ? 'serviceKey'"
                                      " AND before->>'serviceKey' <> '[redacted]')"), 0);
}

static void test_device_entry_in_geography(void **state)
{
    struct ts_resp *r;
    json_t *items, *e;
    (void)state;
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "aud-dev-1"), 200);
    r = admin_rid("POST", "/v1/tenants/acme/devices/aud-dev-1/deprovision", NULL, "aud-deprov");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-deprov'"
                                        " AND resource = '/v1/tenants/acme/devices/aud-dev-1/deprovision'"
                                        " AND route = '/v1/tenants/{tenant}/devices/{device}/deprovision'"
                                        " AND tenant_id = 'acme' AND status = 200"
                                        " AND before->>'status' = 'assigned' AND after->>'status' = 'deprovisioned'"), 1);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-deprov'"), 0);
    assert_int_equal(ts_pg_count(us_db, "SELECT count(*) FROM audit_log"), 0);
    /* the device id stays in its geography: the global catalog never names it */
    assert_int_equal(rows_with(gdb, "aud-dev-1"), 0);

    r = audit_get("?tenant=acme&resource=/v1/tenants/acme/devices/aud-dev-1");
    TS_EXPECT_STATUS(r, 200);
    items = json_object_get(r->json, "items");
    e = entry_of(items, "aud-deprov");
    expect_entry(e, "POST", "/v1/tenants/{tenant}/devices/{device}/deprovision",
                 "/v1/tenants/acme/devices/aud-dev-1/deprovision", 200, "acme");
    TS_EXPECT_STREQ(ts_jstr(e, "geography"), "eu");
}

static void test_operator_reads_audited(void **state)
{
    struct ts_resp *r;
    (void)state;
    TS_EXPECT_STATUS(admin_rid("GET", "/v1/tenants/acme", NULL, "aud-read-ok"), 200);
    TS_EXPECT_ERROR(admin_rid("GET", "/v1/tenants/nosuch", NULL, "aud-read-404"), 404, "not_found");
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-read-ok'"
                                      " AND method = 'GET' AND status = 200 AND tenant_id = 'acme'"
                                      " AND actor_kind = 'operator' AND after IS NULL"), 1);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-read-404'"
                                      " AND method = 'GET' AND status = 404"), 1);
    /* reading the audit log with the operator token is a use too */
    r = admin_rid("GET", "/v1/audit?limit=1", NULL, "aud-read-audit");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(ts_pg_count(gdb, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-read-audit'"
                                      " AND route = '/v1/audit'"), 1);
    /* a device's admin read goes to its geography */
    TS_EXPECT_STATUS(admin_rid("GET", "/v1/tenants/acme/devices/aud-dev-1", NULL, "aud-read-dev"), 200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM audit_log WHERE request_id = 'aud-read-dev'"), 1);
    /* the operator token on a device route (it may place a device): audited, in the device's geography */
    TS_EXPECT_STATUS(ts_rt_device(rt->cp[0], "locate", "acme", "aud-dev-2",
                                  ts_str("Bearer %s", rt->cp[0]->token), NULL), 200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM audit_log WHERE actor_kind = 'operator'"
                                        " AND route = '/v1/tenants/{tenant}/registrations/{device}/locate'"
                                        " AND resource = '/v1/tenants/acme/registrations/aud-dev-2/locate'"
                                        " AND status = 200"), 1);
    assert_int_equal(rows_with(gdb, "aud-dev-2"), 0);
    /* a device's own credential on its route is not an admin call: nothing recorded */
    TS_EXPECT_STATUS(ts_rt_locate(rt->cp[0], acme, "aud-dev-2"), 200);
    assert_int_equal(ts_pg_count(eu_db, "SELECT count(*) FROM audit_log"
                                        " WHERE resource = '/v1/tenants/acme/registrations/aud-dev-2/locate'"), 1);
}

static void test_filters_and_paging(void **state)
{
    struct ts_resp *r;
    json_t *all = paged = json_array(), *items, *e;
    const char *cursor = NULL, *mid;
    char prev[80] = "";
    int pages = 0;
    long n_since, n_until;
    (void)state;
    ts_rt_tenant(rt->cp[0], "{\"id\":\"gamma\",\"name\":\"G0\",\"residency\":{\"geographies\":[\"eu\"]}}");
    for (int i = 1; i <= 6; i++)
        TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", "/v1/tenants/gamma", ts_str("{\"name\":\"G%d\"}", i)), 200);

    /* 7 entries of gamma, 2 a page: 4 pages, every entry once, newest first */
    do {
        r = audit_get(ts_str("?tenant=gamma&limit=2%s%s", cursor ? "&cursor=" : "", cursor ? ts_urlencode(cursor) : ""));
        TS_EXPECT_STATUS(r, 200);
        items = json_object_get(r->json, "items");
        assert_true(json_array_size(items) >= 1 && json_array_size(items) <= 2);
        for (size_t i = 0; i < json_array_size(items); i++) {
            e = json_array_get(items, i);
            TS_EXPECT_STREQ(ts_jstr(e, "tenant"), "gamma");
            if (prev[0] && strcmp(ts_jstr(e, "time"), prev) > 0)
                ts_fail("not newest first: %s after %s", ts_jstr(e, "time"), prev);
            snprintf(prev, sizeof prev, "%s", ts_jstr(e, "time"));
            for (size_t k = 0; k < json_array_size(all); k++)
                if (strcmp(ts_jstr(json_array_get(all, k), "id"), ts_jstr(e, "id")) == 0)
                    ts_fail("entry %s on two pages", ts_jstr(e, "id"));
            json_array_append(all, e);
        }
        cursor = ts_jstr(r->json, "next") ? ts_str("%s", ts_jstr(r->json, "next")) : NULL;
        pages++;
    } while (cursor && pages < 10);
    assert_int_equal(pages, 4);
    assert_int_equal(json_array_size(all), 7);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(json_array_get(all, 0), "after"), "name"), "G6");
    TS_EXPECT_STREQ(ts_jstr(json_array_get(all, 6), "method"), "POST");

    /* since (inclusive) and until (exclusive) split the list at any time */
    mid = ts_str("%s", ts_jstr(json_array_get(all, 3), "time"));
    r = audit_get(ts_str("?tenant=gamma&since=%s", ts_urlencode(mid)));
    TS_EXPECT_STATUS(r, 200);
    n_since = (long)json_array_size(json_object_get(r->json, "items"));
    r = audit_get(ts_str("?tenant=gamma&until=%s", ts_urlencode(mid)));
    TS_EXPECT_STATUS(r, 200);
    n_until = (long)json_array_size(json_object_get(r->json, "items"));
    assert_int_equal(n_since + n_until, 7);
    assert_true(n_since >= 4);
    r = audit_get("?tenant=gamma&since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00%2B02:00");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 0);
    assert_true(json_is_null(json_object_get(r->json, "next")));

    /* resource: the path and everything under it */
    r = audit_get("?resource=/v1/tenants/gamma");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 6);   /* the PATCHes; the create is /v1/tenants */
    r = audit_get("?resource=/v1/tenants/gamma/&tenant=gamma");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 6);
    /* an unknown tenant: an empty list */
    r = audit_get("?tenant=nobody-here");
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 0);
}

static void test_bad_queries(void **state)
{
    static const struct { const char *query, *target; } bad[] = {
        { "?limit=0", "limit" },
        { "?limit=501", "limit" },
        { "?limit=abc", "limit" },
        { "?cursor=bm90LW91cnM", "cursor" },
        { "?cursor=%%%", NULL },
        { "?since=yesterday", "since" },
        { "?since=2026-13-01T00:00:00Z", "since" },
        { "?since=2026-01-01T00:00:00", "since" },
        { "?until=2026-01-01", "until" },
        { "?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until" },
        { "?tenant=Not_An_Id", "tenant" },
        { "?resource=v1/tenants", "resource" },
        { "?colour=red", "colour" },
        { "?tenant=a&tenant=b", "tenant" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ts_resp *r = audit_get(bad[i].query);
        if (r->status != 400 || !ts_err_code(r) || (strcmp(ts_err_code(r), "invalid_query") != 0))
            ts_fail("GET /v1/audit%s: expected 400 invalid_query, got %s", bad[i].query, ts_resp_str(r));
        if (bad[i].target && (!ts_err_target(r) || strcmp(ts_err_target(r), bad[i].target) != 0))
            ts_fail("GET /v1/audit%s: expected target %s, got %s", bad[i].query, bad[i].target, ts_resp_str(r));
    }
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "POST", "/v1/audit", "{}"), 405, "method_not_allowed");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "DELETE", "/v1/audit", NULL), 405, "method_not_allowed");
    TS_EXPECT_ERROR(ts_http(rt->cp[0]->port, "GET", "/v1/audit", NULL, NULL, 0), 401, "unauthorized");
}

static int group_teardown(void **state)
{
    (void)state;
    json_decref(paged);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tenant_life_cycle_entries),
        cmocka_unit_test(test_service_key_redacted),
        cmocka_unit_test(test_device_entry_in_geography),
        cmocka_unit_test(test_operator_reads_audited),
        cmocka_unit_test(test_filters_and_paging),
        cmocka_unit_test(test_bad_queries),
    };
    ts_init("test_admin_audit");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, group_teardown));
}
