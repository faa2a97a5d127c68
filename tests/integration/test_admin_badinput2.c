/*
 * test_admin_badinput2 - bad input on the admin routes test_admin_badinput
 * does not reach (docs/api.md "Tenants", "Devices: admin", "Inventory",
 * enrollment-sync, and the provision body):
 *
 *  - GET /v1/tenants and /v1/tenants/{id}: bad limit / cursor, a cursor of
 *    another list kind, unknown or repeated parameters (400 invalid_query),
 *    bad or unknown ids (404), wrong methods (405 with Allow);
 *  - POST /v1/tenants/{id}/installer-tokens: body rules (missing, wrong type,
 *    too long, unknown field, not JSON, wrong Content-Type), unknown tenant,
 *    wrong method; a token of tenant A is refused for tenant B's devices;
 *  - device list, device admin view and deprovision/retire/reprovision:
 *    query rules, registration id syntax, unknown devices, tenant isolation,
 *    body rules, wrong methods;
 *  - GET /v1/inventory: query rules, wrong method, tenant isolation;
 *  - GET /v1/dps-instances/{id}/enrollment-sync: unknown instance, method, token;
 *  - provision bodies: over maxBodyBytes (413), unknown field (400);
 *  - the operator gate (401 unauthorized) on every one of these routes;
 *  - every refusal is a JSON error body and changes nothing (counts in the
 *    global and geography databases); the daemon is alive at the end.
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
static struct ts_cp *cp;
static struct ts_tenant *acme, *beta;
static const char *eu_db;
static long n_tenants0, n_tokens0, n_devices0, n_history0;

static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" } },
    .stamps = {
        { .id = "eu-west-1", .region = "eu-west",
          .dps = { { "eu-west-1-dps" } }, .hubs = { { "eu-west-1-hub1" } } },
    },
};

static const char *op_authz(void)
{
    return ts_str("Bearer %s", cp->token);
}

static long count_global(const char *table)
{
    return ts_pg_count(cp->global_db, ts_str("SELECT count(*) FROM %s", table));
}

static long count_geo(const char *table)
{
    return ts_pg_count(eu_db, ts_str("SELECT count(*) FROM %s", table));
}

static void snapshot(void)
{
    n_tenants0 = count_global("tenants");
    n_tokens0 = count_global("installer_tokens");
    n_devices0 = count_geo("devices");
    n_history0 = count_geo("device_history");
}

static void expect_unchanged(const char *what)
{
    long t = count_global("tenants"), k = count_global("installer_tokens");
    long d = count_geo("devices"), h = count_geo("device_history");
    if (t != n_tenants0 || k != n_tokens0 || d != n_devices0 || h != n_history0)
        ts_fail("%s changed the databases: tenants %ld->%ld, installer_tokens %ld->%ld, devices %ld->%ld, "
                "device_history %ld->%ld",
                what, n_tenants0, t, n_tokens0, k, n_devices0, d, n_history0, h);
}

static int group_setup(void **state)
{
    struct ts_rt_opts o = { .ncp = 1, .geos = { "eu", "us", NULL } };
    (void)state;
    rt = ts_rt_start_fleet_with(&o, &layout);
    cp = rt->cp[0];
    eu_db = ts_rt_geo_db(rt, "eu");
    acme = ts_rt_tenant_acme(cp);
    beta = ts_rt_tenant(cp, "{\"id\":\"beta\",\"name\":\"Beta\",\"residency\":{\"geographies\":[\"eu\"]}}");
    (void)ts_rt_installer_token(cp, "acme");
    static const char *const a_devs[] = { "a-1", "a-2", "a-3", NULL };
    static const char *const b_devs[] = { "b-1", "b-2", NULL };
    for (const char *const *d = a_devs; *d; d++)
        TS_EXPECT_STATUS(ts_rt_locate(cp, acme, *d), 200);
    for (const char *const *d = b_devs; *d; d++)
        TS_EXPECT_STATUS(ts_rt_locate(cp, beta, *d), 200);
    snapshot();
    return 0;
}

/* Request with the operator token and chosen Content-Type (NULL: none). */
static struct ts_resp *send_body(const char *method, const char *path, const char *ctype, const void *b, size_t n)
{
    return ts_admin_raw(cp, method, path, ctype, b, n);
}

static void expect_err(struct ts_resp *r, int status, const char *code, const char *target, const char *what)
{
    if (r->status != status || !ts_is_error_body(r) || !ts_err_code(r) || strcmp(ts_err_code(r), code) != 0)
        ts_fail("%s: expected %d %s with a JSON error body, got %s", what, status, code, ts_resp_str(r));
    if (target && (!ts_err_target(r) || strcmp(ts_err_target(r), target) != 0))
        ts_fail("%s: expected target \"%s\", got %s", what, target, ts_resp_str(r));
}

static void get_err(const char *path, int status, const char *code, const char *target)
{
    struct ts_resp *r = ts_admin(cp, "GET", path, NULL);
    expect_err(r, status, code, target, ts_str("GET %s", path));
}

static void post_err(const char *path, const char *json, int status, const char *code, const char *target)
{
    struct ts_resp *r = ts_admin(cp, "POST", path, json);
    expect_err(r, status, code, target, ts_str("POST %s %s", path, json ? json : "(no body)"));
}

/* 405 method_not_allowed with an Allow header that lists every allowed method and not the refused one */
static void expect_405(const char *method, const char *path, const char *allowed[])
{
    struct ts_resp *r = ts_admin(cp, method, path, strcmp(method, "GET") == 0 ? NULL : "{}");
    const char *allow;
    expect_err(r, 405, "method_not_allowed", NULL, ts_str("%s %s", method, path));
    allow = ts_header(r, "Allow");
    if (!allow)
        ts_fail("%s %s: 405 without Allow: %s", method, path, ts_resp_str(r));
    for (const char **a = allowed; *a; a++)
        if (!strstr(allow, *a))
            ts_fail("%s %s: Allow should list %s, got \"%s\"", method, path, *a, allow);
    if (strstr(allow, method))
        ts_fail("%s %s: Allow lists the refused method: \"%s\"", method, path, allow);
}

static const char *next_of(const char *path)
{
    struct ts_resp *r = ts_admin(cp, "GET", path, NULL);
    const char *n;
    TS_EXPECT_STATUS(r, 200);
    n = ts_jstr(r->json, "next");
    if (!n || !*n)
        ts_fail("GET %s: expected a next cursor, got %s", path, ts_resp_str(r));
    return n;
}

static const char *longstr(char c, size_t n)
{
    char *s = ts_keep(malloc(n + 1));
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_tenant_list(void **state)
{
    static const char *const qs[] = {
        "limit=0", "limit=501", "limit=abc", "limit=-1", "limit=", "limit=1.5",
        "cursor=garbage", "cursor=%00%01", "cursor=%FF%FE",
        "colour=blue", "limit=1&limit=2", "cursor=x&cursor=y", "tenant=acme", NULL,
    };
    const char *dev_cursor;
    (void)state;
    for (const char *const *q = qs; *q; q++)
        get_err(ts_str("/v1/tenants?%s", *q), 400, "invalid_query", NULL);
    /* a cursor of another list kind: the acme device list's next */
    dev_cursor = next_of("/v1/tenants/acme/devices?limit=1");
    get_err(ts_str("/v1/tenants?cursor=%s", ts_urlencode(dev_cursor)), 400, "invalid_query", NULL);
    /* the edges and a real cursor work */
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/tenants?limit=1", NULL), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/tenants?limit=500", NULL), 200);
    {
        const char *c = next_of("/v1/tenants?limit=1");
        struct ts_resp *r = ts_admin(cp, "GET", ts_str("/v1/tenants?limit=1&cursor=%s", ts_urlencode(c)), NULL);
        TS_EXPECT_STATUS(r, 200);
        assert_int_equal(json_array_size(json_object_get(r->json, "items")), 1);
        TS_EXPECT_STREQ(ts_jstr(json_array_get(json_object_get(r->json, "items"), 0), "id"), "beta");
    }
    expect_405("PUT", "/v1/tenants", (const char *[]){ "GET", "POST", NULL });
    expect_405("DELETE", "/v1/tenants", (const char *[]){ "GET", "POST", NULL });
    expect_405("PATCH", "/v1/tenants", (const char *[]){ "GET", "POST", NULL });
    expect_unchanged("tenant list");
}

static void test_tenant_get(void **state)
{
    static const char *const ids[] = {
        "UPPER", "nope", "-acme", "acme_1", "%C3%A9",
        "a1234567890123456789012345678901234567890123456789012345678901234", NULL,
    };
    (void)state;
    for (const char *const *id = ids; *id; id++) {
        const char *p = ts_str("/v1/tenants/%s", *id);
        struct ts_resp *r = ts_admin(cp, "GET", p, NULL);
        if (r->status != 404 || !ts_is_error_body(r))
            ts_fail("GET %s: expected 404 with a JSON error body, got %s", p, ts_resp_str(r));
    }
    get_err("/v1/tenants/nope", 404, "not_found", NULL);
    {
        struct ts_resp *r = ts_admin(cp, "GET", "/v1/tenants/acme", NULL);
        TS_EXPECT_STATUS(r, 200);
        if (json_object_get(r->json, "enrollmentKey") || strstr(r->body, acme->key_b64))
            ts_fail("GET /v1/tenants/acme shows the enrollment key: %s", ts_resp_str(r));
    }
    expect_405("PUT", "/v1/tenants/acme", (const char *[]){ "GET", "PATCH", "DELETE", NULL });
    expect_405("POST", "/v1/tenants/acme", (const char *[]){ "GET", "PATCH", "DELETE", NULL });
    expect_405("GET", "/v1/tenants/acme/enrollment-key/rotate", (const char *[]){ "POST", NULL });
    expect_405("DELETE", "/v1/tenants/acme/enrollment-key/rotate", (const char *[]){ "POST", NULL });
    /* acme has assigned devices: the delete is refused and changes nothing */
    expect_err(ts_admin(cp, "DELETE", "/v1/tenants/acme", NULL), 409, "tenant_has_devices", NULL,
               "DELETE /v1/tenants/acme");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/tenants/acme", NULL), 200);
    expect_unchanged("tenant get");
}

static void test_installer_tokens(void **state)
{
    const char *p = "/v1/tenants/acme/installer-tokens";
    const char *long_name = ts_str("{\"name\":\"%s\"}", longstr('n', 129));
    (void)state;
    post_err(p, "{}", 400, "missing_field", "name");
    post_err(p, "{\"name\":42}", 400, "invalid_type", "name");
    post_err(p, "{\"name\":null}", 400, "invalid_type", "name");
    post_err(p, "{\"name\":[\"x\"]}", 400, "invalid_type", "name");
    post_err(p, long_name, 400, "invalid_value", "name");
    post_err(p, "{\"name\":\"\"}", 400, "invalid_value", "name");
    post_err(p, "{\"name\":\"x\",\"scope\":\"all\"}", 400, "unknown_field", "scope");
    {
        /* the token is the server's to choose */
        struct ts_resp *r = ts_admin(cp, "POST", p, "{\"name\":\"x\",\"token\":\"cpi_mine\"}");
        if (r->status != 400 || !ts_is_error_body(r))
            ts_fail("POST %s with a token of its own: expected 400, got %s", p, ts_resp_str(r));
    }
    {
        static const char *const notjson[] = { "{", "[]", "\"x\"", "name=x", "{\"name\":\"a\",\"name\":\"b\"}", NULL };
        for (const char *const *b = notjson; *b; b++) {
            struct ts_resp *r = send_body("POST", p, "application/json", *b, strlen(*b));
            expect_err(r, 400, "invalid_json", NULL, ts_str("POST %s %s", p, *b));
        }
        expect_err(send_body("POST", p, "application/json", "", 0), 400, "invalid_json", NULL, "empty token body");
    }
    expect_err(send_body("POST", p, "text/plain", "{\"name\":\"x\"}", 12), 415, "unsupported_media_type", NULL,
               "installer token text/plain");
    expect_err(send_body("POST", p, NULL, "{\"name\":\"x\"}", 12), 415, "unsupported_media_type", NULL,
               "installer token without Content-Type");
    post_err("/v1/tenants/nope/installer-tokens", "{\"name\":\"x\"}", 404, "not_found", NULL);
    expect_405("PUT", p, (const char *[]){ "GET", "POST", NULL });
    expect_405("DELETE", p, (const char *[]){ "GET", "POST", NULL });
    expect_405("PATCH", ts_str("%s/0123456789abcdef", p), (const char *[]){ "GET", "DELETE", NULL });
    expect_unchanged("installer token bad input");

    /* a token of acme acts for acme's devices only */
    {
        const char *tok = ts_rt_installer_token(cp, "acme");
        struct ts_resp *r;
        n_tokens0++;
        r = ts_rt_device(cp, "locate", "beta", "b-1", ts_str("Bearer %s", tok), NULL);
        if (r->status != 401 || !ts_is_error_body(r))
            ts_fail("acme's installer token on beta's device: expected 401 with a JSON error body, got %s",
                    ts_resp_str(r));
        r = ts_rt_device(cp, "locate", "beta", "b-new", ts_str("Bearer %s", tok), NULL);
        if (r->status != 401 || !ts_is_error_body(r))
            ts_fail("acme's installer token placing a new beta device: expected 401, got %s", ts_resp_str(r));
        /* an installer token is not the operator token */
        r = ts_http(cp->port, "GET", "/v1/tenants/acme/devices", (const char *[]){ ts_rt_authz(ts_str("Bearer %s", tok)), NULL },
                    NULL, 0);
        expect_err(r, 401, "unauthorized", NULL, "installer token on an admin route");
        /* and works for its own tenant (an existing device: no write) */
        TS_EXPECT_STATUS(ts_rt_device(cp, "locate", "acme", "a-1", ts_str("Bearer %s", tok), NULL), 200);
    }
    expect_unchanged("cross-tenant installer token");
}

static void test_device_list(void **state)
{
    static const char *const qs[] = {
        "limit=0", "limit=501", "limit=abc", "limit=", "cursor=garbage", "cursor=%FF%FE",
        "status=bogus", "status=Assigned", "status=", "stamp=NOT%20AN%20ID", "stamp=EU-WEST-1", "stamp=-x",
        "colour=blue", "tenant=beta", "limit=1&limit=2", "status=assigned&status=retired", NULL,
    };
    const char *ten_cursor;
    struct ts_resp *r;
    json_t *items;
    (void)state;
    for (const char *const *q = qs; *q; q++)
        get_err(ts_str("/v1/tenants/acme/devices?%s", *q), 400, "invalid_query", NULL);
    ten_cursor = next_of("/v1/tenants?limit=1");
    get_err(ts_str("/v1/tenants/acme/devices?cursor=%s", ts_urlencode(ten_cursor)), 400, "invalid_query", NULL);
    /* another tenant's device list cursor */
    {
        const char *bc = next_of("/v1/tenants/beta/devices?limit=1");
        r = ts_admin(cp, "GET", ts_str("/v1/tenants/acme/devices?cursor=%s", ts_urlencode(bc)), NULL);
        if (r->status == 200) {
            items = json_object_get(r->json, "items");
            for (size_t i = 0; i < json_array_size(items); i++)
                if (strncmp(ts_jstr(json_array_get(items, i), "registrationId"), "a-", 2) != 0)
                    ts_fail("beta's cursor on acme's list showed a beta device: %s", ts_resp_str(r));
        } else if (r->status != 400 || !ts_is_error_body(r) || strcmp(ts_err_code(r), "invalid_query") != 0) {
            ts_fail("beta's cursor on acme's device list: expected 200 (acme only) or 400 invalid_query, got %s",
                    ts_resp_str(r));
        }
    }
    /* isolation: acme's list has exactly acme's three devices */
    r = ts_admin(cp, "GET", "/v1/tenants/acme/devices", NULL);
    TS_EXPECT_STATUS(r, 200);
    items = json_object_get(r->json, "items");
    if (json_array_size(items) != 3)
        ts_fail("acme's device list should have 3 items, got %s", ts_resp_str(r));
    for (size_t i = 0; i < 3; i++) {
        const char *id = ts_jstr(json_array_get(items, i), "registrationId");
        if (!id || strcmp(id, ts_str("a-%zu", i + 1)) != 0)
            ts_fail("acme's device list item %zu: expected a-%zu, got %s", i, i + 1, ts_resp_str(r));
    }
    r = ts_admin(cp, "GET", "/v1/tenants/beta/devices?limit=500&status=assigned&stamp=eu-west-1", NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 2);
    /* unknown tenant: 404 or an empty list, never another tenant's devices */
    r = ts_admin(cp, "GET", "/v1/tenants/nope/devices", NULL);
    if (r->status == 200) {
        if (json_array_size(json_object_get(r->json, "items")) != 0)
            ts_fail("unknown tenant's device list is not empty: %s", ts_resp_str(r));
    } else {
        expect_err(r, 404, "not_found", NULL, "GET /v1/tenants/nope/devices");
    }
    expect_405("POST", "/v1/tenants/acme/devices", (const char *[]){ "GET", NULL });
    expect_405("DELETE", "/v1/tenants/acme/devices", (const char *[]){ "GET", NULL });
    expect_unchanged("device list");
}

/*
 * POST /v1/tenants/{t}/devices/{r}/reprovision for a device the tenant does not
 * have: 404 not_found (docs/api.md: the admin route never places a device),
 * and beta's device of that id stays untouched.
 */
static void reprovision_unknown(void)
{
    struct ts_resp *before = ts_admin(cp, "GET", "/v1/tenants/beta/devices/b-1", NULL), *after, *r;
    TS_EXPECT_STATUS(before, 200);
    /* docs/api.md: the admin reprovision acts on assigned devices only */
    r = ts_admin(cp, "POST", "/v1/tenants/acme/devices/b-1/reprovision", NULL);
    expect_err(r, 404, "not_found", NULL, "admin reprovision acme/b-1");
    r = ts_admin(cp, "POST", "/v1/tenants/acme/devices/a-unknown/reprovision", NULL);
    expect_err(r, 404, "not_found", NULL, "admin reprovision acme/a-unknown");
    after = ts_admin(cp, "GET", "/v1/tenants/beta/devices/b-1", NULL);
    TS_EXPECT_STATUS(after, 200);
    TS_EXPECT_STREQ(ts_jstr(after->json, "etag"), ts_jstr(before->json, "etag"));
    TS_EXPECT_STREQ(ts_jstr(after->json, "status"), "assigned");
    snapshot(); /* from here on: what the placement above left */
}

static void test_device_admin(void **state)
{
    const char *verbs[] = { "deprovision", "retire", "reprovision" };
    const char *bad_ids[] = { "Dev-1", "A-1", longstr('a', 129), "dev.", "dev:", NULL };
    (void)state;
    for (const char **id = bad_ids; *id; id++) {
        get_err(ts_str("/v1/tenants/acme/devices/%s", *id), 400, "invalid_value", "registrationId");
        for (size_t v = 0; v < 3; v++)
            post_err(ts_str("/v1/tenants/acme/devices/%s/%s", *id, verbs[v]), NULL, 400, "invalid_value",
                     "registrationId");
    }
    /* 128 characters is a valid id: an unknown device */
    get_err(ts_str("/v1/tenants/acme/devices/%s", longstr('a', 128)), 404, "not_found", NULL);
    get_err("/v1/tenants/acme/devices/nope", 404, "not_found", NULL);
    get_err("/v1/tenants/nope/devices/a-1", 404, "not_found", NULL);
    /* tenant isolation: acme's path with beta's device id */
    get_err("/v1/tenants/acme/devices/b-1", 404, "not_found", NULL);
    /* reprovision of an unknown device: see reprovision_unknown() */
    for (size_t v = 0; v < 2; v++) {
        post_err(ts_str("/v1/tenants/acme/devices/nope/%s", verbs[v]), NULL, 404, "not_found", NULL);
        post_err(ts_str("/v1/tenants/acme/devices/b-1/%s", verbs[v]), NULL, 404, "not_found", NULL);
        post_err(ts_str("/v1/tenants/acme/devices/b-1/%s", verbs[v]), "{}", 404, "not_found", NULL);
    }
    post_err("/v1/tenants/nope/devices/a-1/reprovision", NULL, 404, "not_found", NULL);
    expect_unchanged("device admin unknown ids");
    {
        struct ts_resp *r = ts_admin(cp, "GET", "/v1/tenants/beta/devices/b-1", NULL);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
    /* bodies on a real device: refused before anything changes */
    {
        const char *long_reason = ts_str("{\"reason\":\"%s\"}", longstr('r', 129));
        for (size_t v = 0; v < 3; v++) {
            const char *p = ts_str("/v1/tenants/acme/devices/a-1/%s", verbs[v]);
            post_err(p, "{\"colour\":\"red\"}", 400, "unknown_field", "colour");
            post_err(p, "{\"reason\":\"x\",\"force\":true}", 400, "unknown_field", "force");
            post_err(p, "{\"reason\":42}", 400, "invalid_type", "reason");
            post_err(p, long_reason, 400, "invalid_value", "reason");
            expect_err(send_body("POST", p, "application/json", "{", 1), 400, "invalid_json", NULL,
                       ts_str("POST %s {", p));
            expect_err(send_body("POST", p, "text/plain", "{}", 2), 415, "unsupported_media_type", NULL,
                       ts_str("POST %s text/plain", p));
        }
    }
    expect_405("DELETE", "/v1/tenants/acme/devices/a-1", (const char *[]){ "GET", NULL });
    expect_405("POST", "/v1/tenants/acme/devices/a-1", (const char *[]){ "GET", NULL });
    for (size_t v = 0; v < 3; v++) {
        expect_405("GET", ts_str("/v1/tenants/acme/devices/a-1/%s", verbs[v]), (const char *[]){ "POST", NULL });
        expect_405("DELETE", ts_str("/v1/tenants/acme/devices/a-1/%s", verbs[v]), (const char *[]){ "POST", NULL });
    }
    {
        struct ts_resp *r = ts_admin(cp, "GET", "/v1/tenants/acme/devices/a-1", NULL);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
    expect_unchanged("device admin bad bodies");
    reprovision_unknown();
}

static void test_inventory(void **state)
{
    static const char *const qs[] = {
        "colour=blue", "tenant=NOT%20AN%20ID", "tenant=ACME", "tenant=", "tenant=-a", "limit=1",
        "tenant=acme&tenant=beta", NULL,
    };
    struct ts_resp *r;
    json_t *tenants;
    (void)state;
    for (const char *const *q = qs; *q; q++)
        get_err(ts_str("/v1/inventory?%s", *q), 400, "invalid_query", NULL);
    expect_405("POST", "/v1/inventory", (const char *[]){ "GET", NULL });
    expect_405("DELETE", "/v1/inventory", (const char *[]){ "GET", NULL });
    r = ts_admin(cp, "GET", "/v1/tenants/acme/devices?status=assigned&limit=500", NULL);
    TS_EXPECT_STATUS(r, 200);
    const json_int_t n_acme = (json_int_t)json_array_size(json_object_get(r->json, "items"));
    if (n_acme < 3)
        ts_fail("acme should have at least 3 assigned devices: %s", ts_resp_str(r));
    r = ts_admin(cp, "GET", "/v1/inventory?tenant=acme", NULL);
    TS_EXPECT_STATUS(r, 200);
    tenants = json_object_get(r->json, "tenants");
    if (json_array_size(tenants) != 1 || !ts_jstr(json_array_get(tenants, 0), "tenant") ||
        strcmp(ts_jstr(json_array_get(tenants, 0), "tenant"), "acme") != 0 ||
        ts_jint(json_array_get(tenants, 0), "devices", -1) != n_acme)
        ts_fail("inventory?tenant=acme: expected tenants [{acme, %lld}], got %s", (long long)n_acme, ts_resp_str(r));
    {
        json_t *stamps = json_object_get(r->json, "stamps"), *dps = json_object_get(r->json, "dps");
        json_int_t s = 0, d = 0;
        for (size_t i = 0; i < json_array_size(stamps); i++)
            s += ts_jint(json_array_get(stamps, i), "devices", 0);
        for (size_t i = 0; i < json_array_size(dps); i++)
            d += ts_jint(json_array_get(dps, i), "registrations", 0);
        if (s != n_acme || d != n_acme)
            ts_fail("inventory?tenant=acme counts beta's devices (stamps %lld, dps %lld, expected %lld): %s",
                    (long long)s, (long long)d, (long long)n_acme, ts_resp_str(r));
        json_t *groups = json_object_get(r->json, "groups");
        for (size_t i = 0; i < json_array_size(groups); i++)
            if (!ts_jstr(json_array_get(groups, i), "group") ||
                strcmp(ts_jstr(json_array_get(groups, i), "group"), "acme") != 0)
                ts_fail("inventory?tenant=acme shows another group: %s", ts_resp_str(r));
    }
    r = ts_admin(cp, "GET", "/v1/inventory", NULL);
    TS_EXPECT_STATUS(r, 200);
    expect_unchanged("inventory");
}

static void test_enrollment_sync(void **state)
{
    (void)state;
    get_err("/v1/dps-instances/nope/enrollment-sync", 404, "not_found", NULL);
    /* a registered instance without service credentials */
    get_err("/v1/dps-instances/eu-west-1-dps/enrollment-sync", 404, "not_found", NULL);
    expect_405("POST", "/v1/dps-instances/eu-west-1-dps/enrollment-sync", (const char *[]){ "GET", NULL });
    expect_405("DELETE", "/v1/dps-instances/eu-west-1-dps/enrollment-sync", (const char *[]){ "GET", NULL });
    expect_err(ts_http(cp->port, "GET", "/v1/dps-instances/eu-west-1-dps/enrollment-sync", NULL, NULL, 0), 401,
               "unauthorized", NULL, "enrollment-sync without token");
    expect_err(ts_http(cp->port, "GET", "/v1/dps-instances/nope/enrollment-sync", NULL, NULL, 0), 401,
               "unauthorized", NULL, "enrollment-sync of an unknown instance without token");
    expect_unchanged("enrollment-sync");
}

static void test_provision_body(void **state)
{
    size_t n = 70 * 1024;
    char *big = ts_keep(malloc(n + 64));
    int len = snprintf(big, n + 64, "{\"payload\":{\"blob\":\"");
    struct ts_resp *r;
    (void)state;
    memset(big + len, 'p', n - (size_t)len - 3);
    memcpy(big + n - 3, "\"}}", 4);
    /* a new device and an existing one, with the operator token and the device's SAS */
    r = ts_rt_device(cp, "provision", "acme", "a-new", op_authz(), big);
    expect_err(r, 413, "body_too_large", NULL, "provision with a 70 KiB payload (operator, new device)");
    r = ts_rt_device(cp, "provision", "acme", "a-2", ts_rt_sas(acme, "a-2", 0), big);
    expect_err(r, 413, "body_too_large", NULL, "provision with a 70 KiB payload (SAS, placed device)");
    r = ts_rt_device(cp, "provision", "acme", "a-new", op_authz(), "{\"payload\":{\"x\":1},\"extra\":1}");
    expect_err(r, 400, "unknown_field", "extra", "provision {payload, extra}");
    r = ts_rt_device(cp, "provision", "acme", "a-2", ts_rt_sas(acme, "a-2", 0), "{\"payload\":1,\"extra\":1}");
    expect_err(r, 400, "unknown_field", "extra", "provision {payload, extra} (SAS)");
    r = ts_rt_device(cp, "provision", "acme", "a-new", op_authz(), "{\"reason\":\"x\"}");
    expect_err(r, 400, "unknown_field", "reason", "provision {reason}");
    r = ts_rt_device(cp, "provision", "acme", "a-new", op_authz(), "{\"payload\":1,\"payload\":2}");
    expect_err(r, 400, "invalid_json", NULL, "provision with a duplicate payload");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    expect_unchanged("provision bodies");
}

static void test_operator_gate(void **state)
{
    static const struct { const char *method, *path, *body; } routes[] = {
        { "GET", "/v1/tenants", NULL },
        { "GET", "/v1/tenants?limit=0", NULL },
        { "GET", "/v1/tenants/acme", NULL },
        { "GET", "/v1/tenants/nope", NULL },
        { "POST", "/v1/tenants/acme/installer-tokens", "{\"name\":\"x\"}" },
        { "POST", "/v1/tenants/nope/installer-tokens", "{\"name\":\"x\"}" },
        { "GET", "/v1/tenants/acme/devices", NULL },
        { "GET", "/v1/tenants/acme/devices?status=bogus", NULL },
        { "GET", "/v1/tenants/acme/devices/a-1", NULL },
        { "POST", "/v1/tenants/acme/devices/a-1/deprovision", NULL },
        { "POST", "/v1/tenants/acme/devices/a-1/retire", "{}" },
        { "POST", "/v1/tenants/acme/devices/a-1/reprovision", "{\"reason\":\"x\"}" },
        { "GET", "/v1/inventory", NULL },
        { "GET", "/v1/inventory?tenant=acme", NULL },
        { "GET", "/v1/dps-instances/eu-west-1-dps/enrollment-sync", NULL },
    };
    const char *wrong = "Authorization: Bearer not-the-token";
    const char *basic = ts_str("Authorization: Basic %s", cp->token);
    const char *sas = ts_rt_authz(ts_rt_sas(acme, "a-1", 0));
    (void)state;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const char *const hdrs[][3] = {
            { routes[i].body ? "Content-Type: application/json" : NULL, NULL, NULL },
            { wrong, routes[i].body ? "Content-Type: application/json" : NULL, NULL },
            { basic, routes[i].body ? "Content-Type: application/json" : NULL, NULL },
            { sas, routes[i].body ? "Content-Type: application/json" : NULL, NULL },
        };
        for (size_t h = 0; h < 4; h++) {
            struct ts_resp *r = ts_http(cp->port, routes[i].method, routes[i].path, hdrs[h], routes[i].body,
                                        routes[i].body ? strlen(routes[i].body) : 0);
            expect_err(r, 401, "unauthorized", NULL,
                       ts_str("%s %s with credential #%zu (none, wrong, Basic, device SAS)", routes[i].method,
                              routes[i].path, h));
        }
    }
    {
        struct ts_resp *r = ts_admin(cp, "GET", "/v1/tenants/acme/devices/a-1", NULL);
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
    expect_unchanged("requests without the operator token");
}

/* Last: the daemon is alive and nothing changed. */
static void test_still_alive(void **state)
{
    struct ts_resp *r;
    (void)state;
    r = ts_get(cp, "/healthz");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "ok");
    assert_true(ts_proc_alive(cp->proc));
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    r = ts_admin(cp, "GET", "/v1/tenants", NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 2);
    expect_unchanged("the whole run");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tenant_list),
        cmocka_unit_test(test_tenant_get),
        cmocka_unit_test(test_installer_tokens),
        cmocka_unit_test(test_device_list),
        cmocka_unit_test(test_device_admin),
        cmocka_unit_test(test_inventory),
        cmocka_unit_test(test_enrollment_sync),
        cmocka_unit_test(test_provision_body),
        cmocka_unit_test(test_operator_gate),
        cmocka_unit_test(test_still_alive),
    };
    ts_init("test_admin_badinput2");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
