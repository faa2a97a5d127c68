/*
 * test_admin_badinput - every class of bad request gets the status AND the
 * error code of docs/api.md (and the target field where there is one), with
 * a JSON error body, and the daemon survives all of it.
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

static struct ts_cp *cp;

static int group_setup(void **state)
{
    struct ts_cp_opts o = { .geo_ids = { "us", "eu", NULL } };
    cp = ts_controlplane_start(&o);
    if (!ts_controlplane_wait_ready(cp, 20000))
        return -1;
    /* a small tree to PATCH against */
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/regions", "{\"id\":\"us-east\",\"geography\":\"us\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps", "{\"id\":\"us-east-1\",\"region\":\"us-east\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/dps-instances",
                              "{\"id\":\"us-east-1-dps\",\"stamp\":\"us-east-1\",\"idScope\":\"0ne001\",\"endpoint\":\"d:443\"}"),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/hubs",
                              "{\"id\":\"us-east-1-hub\",\"stamp\":\"us-east-1\",\"hostName\":\"h1.example\"}"),
                     201);
    return 0;
}

/* POST/PATCH with raw bytes and chosen headers. */
static struct ts_resp *send_body(const char *method, const char *path, const char *ctype, const void *b, size_t n)
{
    return ts_admin_raw(cp, method, path, ctype, b, n);
}

#define EXPECT_TARGET(r, t) TS_EXPECT_STREQ(ts_err_target(r), (t))

/* POST body to coll; expect 400 code, target (if not NULL) */
static void bad(const char *method, const char *path, const char *json, const char *code, const char *target)
{
    struct ts_resp *r = ts_admin(cp, method, path, json);
    if (r->status != 400 || !ts_is_error_body(r) || strcmp(ts_err_code(r), code) != 0)
        ts_fail("%s %s %s: expected 400 %s, got %s", method, path, json, code, ts_resp_str(r));
    if (target && (!ts_err_target(r) || strcmp(ts_err_target(r), target) != 0))
        ts_fail("%s %s %s: expected target \"%s\", got %s", method, path, json, target, ts_resp_str(r));
}

static void test_unauthorized(void **state)
{
    const char *wrong[] = { "Authorization: Bearer not-the-token", NULL };
    const char *scheme[] = { ts_str("Authorization: Basic %s", cp->token), NULL };
    const char *lower[] = { ts_str("Authorization: Token %s", cp->token), NULL };
    const char *empty[] = { "Authorization: Bearer ", NULL };
    const char *prefix[] = { ts_str("Authorization: Bearer %.*s", (int)strlen(cp->token) - 1, cp->token), NULL };
    const char *longer[] = { ts_str("Authorization: Bearer %sx", cp->token), NULL };
    struct ts_resp *r;

    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", NULL, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", wrong, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", scheme, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", lower, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", empty, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", prefix, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/geographies", longer, NULL, 0), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_http(cp->port, "GET", "/v1/stamps/us-east-1", NULL, NULL, 0), 401, "unauthorized");
    /* a write without token changes nothing */
    r = ts_http(cp->port, "DELETE", "/v1/hubs/us-east-1-hub", wrong, NULL, 0);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/hubs/us-east-1-hub", NULL), 200);
    r = ts_http(cp->port, "POST", "/v1/geographies", (const char *[]){ "Content-Type: application/json", NULL },
                "{\"id\":\"eu\"}", 11);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/geographies/eu", NULL), 404, "not_found");
    /* the same answer for all three causes (no oracle) */
    {
        struct ts_resp *a = ts_http(cp->port, "GET", "/v1/geographies", NULL, NULL, 0);
        struct ts_resp *b = ts_http(cp->port, "GET", "/v1/geographies", wrong, NULL, 0);
        struct ts_resp *c = ts_http(cp->port, "GET", "/v1/geographies", scheme, NULL, 0);
        TS_EXPECT_STREQ(ts_jstr(json_object_get(b->json, "error"), "message"),
                        ts_jstr(json_object_get(a->json, "error"), "message"));
        TS_EXPECT_STREQ(ts_jstr(json_object_get(c->json, "error"), "message"),
                        ts_jstr(json_object_get(a->json, "error"), "message"));
    }
    /* probes need no token */
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
}

static void test_invalid_json(void **state)
{
    static const char *const cases[] = {
        "{\"id\":", "{id:\"eu\"}", "[{\"id\":\"eu\"}]", "[]", "\"eu\"", "42", "null",
        "{\"id\":\"eu\",\"id\":\"us\"}", "{\"id\":\"eu\"} trailing", "{\"id\":\"eu\"}{}", "   ", NULL,
    };
    for (const char *const *c = cases; *c; c++) {
        struct ts_resp *r = send_body("POST", "/v1/geographies", "application/json", *c, strlen(*c));
        if (r->status != 400 || !ts_is_error_body(r) || strcmp(ts_err_code(r), "invalid_json") != 0)
            ts_fail("POST body '%s': expected 400 invalid_json, got %s", *c, ts_resp_str(r));
    }
    /* empty body, with and without Content-Length: 0 */
    TS_EXPECT_ERROR(send_body("POST", "/v1/geographies", "application/json", "", 0), 400, "invalid_json");
    TS_EXPECT_ERROR(send_body("PATCH", "/v1/stamps/us-east-1", "application/json", "", 0), 400, "invalid_json");
    TS_EXPECT_ERROR(send_body("PATCH", "/v1/stamps/us-east-1", "application/json", "[1]", 3), 400, "invalid_json");
    {
        const char *dup = "{\"status\":\"draining\",\"status\":\"active\"}";
        TS_EXPECT_ERROR(send_body("PATCH", "/v1/stamps/us-east-1", "application/json", dup, strlen(dup)), 400,
                        "invalid_json");
        TS_EXPECT_STREQ(ts_jstr(ts_admin(cp, "GET", "/v1/stamps/us-east-1", NULL)->json, "status"), "active");
    }
    /* nothing was created */
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/geographies/eu", NULL), 404, "not_found");
}

static void test_invalid_encoding(void **state)
{
    static const char lone_cont[] = "{\"id\":\"eu\",\"displayName\":\"\x80\"}";
    static const char latin1[] = "{\"id\":\"eu\",\"displayName\":\"Europ\xe4\"}";
    static const char overlong[] = "{\"id\":\"eu\",\"displayName\":\"\xc0\xaf\"}";
    static const char surrogate[] = "{\"id\":\"eu\",\"displayName\":\"\xed\xa0\x80\"}";
    static const char truncated[] = "{\"id\":\"eu\",\"displayName\":\"\xe2\x82\"}";
    const char *cases[] = { lone_cont, latin1, overlong, surrogate, truncated };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct ts_resp *r = send_body("POST", "/v1/geographies", "application/json", cases[i], strlen(cases[i]));
        if (r->status != 400 || !ts_is_error_body(r) || strcmp(ts_err_code(r), "invalid_encoding") != 0)
            ts_fail("invalid UTF-8 case %zu: expected 400 invalid_encoding, got %s", i, ts_resp_str(r));
    }
    TS_EXPECT_ERROR(send_body("PATCH", "/v1/regions/us-east", "application/json", latin1, strlen(latin1)), 400,
                    "invalid_encoding");
    /* valid non-ASCII is fine */
    {
        struct ts_resp *r = ts_admin(cp, "PATCH", "/v1/regions/us-east", "{\"displayName\":\"Ost \xc3\xbc \xe2\x82\xac\"}");
        TS_EXPECT_STATUS(r, 200);
        TS_EXPECT_STREQ(ts_jstr(r->json, "displayName"), "Ost \xc3\xbc \xe2\x82\xac");
    }
}

static void test_unknown_field(void **state)
{
    struct ts_resp *r = ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\",\"colour\":\"blue\"}");
    TS_EXPECT_ERROR(r, 400, "unknown_field");
    EXPECT_TARGET(r, "colour");
    bad("POST", "/v1/regions", "{\"id\":\"us-west\",\"geography\":\"us\",\"paired\":\"us-east\"}", "unknown_field", "paired");
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\",\"region\":\"us-east\",\"Status\":\"active\"}", "unknown_field",
        "Status");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"weight\":3}", "unknown_field", "weight");
    bad("PATCH", "/v1/hubs/us-east-1-hub", "{\"maxdevices\":3}", "unknown_field", "maxdevices");
    bad("PATCH", "/v1/dps-instances/us-east-1-dps", "{\"scope\":\"x\"}", "unknown_field", "scope");
    /* snake_case is not an alias */
    bad("POST", "/v1/geographies", "{\"id\":\"eu\",\"display_name\":\"Europe\"}", "unknown_field", "display_name");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/geographies/eu", NULL), 404, "not_found");
}

static void test_missing_field(void **state)
{
    bad("POST", "/v1/geographies", "{}", "missing_field", "id");
    bad("POST", "/v1/geographies", "{\"displayName\":\"Europe\"}", "missing_field", "id");
    bad("POST", "/v1/regions", "{\"id\":\"us-west\"}", "missing_field", "geography");
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\"}", "missing_field", "region");
    bad("POST", "/v1/dps-instances", "{\"id\":\"d2\",\"stamp\":\"us-east-1\",\"endpoint\":\"x:1\"}", "missing_field",
        "idScope");
    bad("POST", "/v1/dps-instances", "{\"id\":\"d2\",\"stamp\":\"us-east-1\",\"idScope\":\"abc\"}", "missing_field",
        "endpoint");
    bad("POST", "/v1/hubs", "{\"id\":\"h2\",\"stamp\":\"us-east-1\"}", "missing_field", "hostName");
}

static void test_invalid_type(void **state)
{
    bad("POST", "/v1/geographies", "{\"id\":42}", "invalid_type", "id");
    bad("POST", "/v1/geographies", "{\"id\":\"eu\",\"displayName\":7}", "invalid_type", "displayName");
    bad("POST", "/v1/geographies", "{\"id\":null}", "invalid_type", "id");
    bad("POST", "/v1/geographies", "{\"id\":[\"eu\"]}", "invalid_type", "id");
    bad("POST", "/v1/hubs", "{\"id\":\"h2\",\"stamp\":\"us-east-1\",\"hostName\":\"h2.example\",\"maxDevices\":\"10\"}",
        "invalid_type", "maxDevices");
    bad("POST", "/v1/hubs", "{\"id\":\"h2\",\"stamp\":\"us-east-1\",\"hostName\":\"h2.example\",\"maxDevices\":1.5}",
        "invalid_type", "maxDevices");
    bad("PATCH", "/v1/hubs/us-east-1-hub", "{\"allocationWeight\":true}", "invalid_type", "allocationWeight");
    bad("PATCH", "/v1/hubs/us-east-1-hub", "{\"allocationWeight\":null}", "invalid_type", "allocationWeight");
    bad("PATCH", "/v1/dps-instances/us-east-1-dps", "{\"registrationsPerMinute\":\"5\"}", "invalid_type",
        "registrationsPerMinute");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"status\":null}", "invalid_type", "status");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"displayName\":null}", "invalid_type", "displayName");
    bad("PATCH", "/v1/regions/us-east", "{\"pairedRegion\":5}", "invalid_type", "pairedRegion");
    bad("POST", "/v1/dps-instances", "{\"id\":\"d2\",\"stamp\":\"us-east-1\",\"idScope\":123,\"endpoint\":\"x:1\"}",
        "invalid_type", "idScope");
}

static void test_invalid_value(void **state)
{
    char longname[200];
    memset(longname, 'x', 129);
    longname[129] = '\0';

    bad("POST", "/v1/geographies", "{\"id\":\"EU\"}", "invalid_value", "id");
    bad("POST", "/v1/geographies", "{\"id\":\"\"}", "invalid_value", "id");
    bad("POST", "/v1/geographies", "{\"id\":\"-eu\"}", "invalid_value", "id");
    bad("POST", "/v1/geographies", "{\"id\":\"e u\"}", "invalid_value", "id");
    bad("POST", "/v1/geographies", "{\"id\":\"eu_1\"}", "invalid_value", "id");
    bad("POST", "/v1/regions",
        "{\"id\":\"a1234567890123456789012345678901234567890123456789012345678901234\",\"geography\":\"us\"}",
        "invalid_value", "id"); /* 65 characters */
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\",\"region\":\"us-east\",\"status\":\"paused\"}", "invalid_value",
        "status");
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\",\"region\":\"us-east\",\"tenancy\":\"Pooled\"}", "invalid_value",
        "tenancy");
    bad("PATCH", "/v1/stamps/us-east-1", ts_str("{\"displayName\":\"%s\"}", longname), "invalid_value",
        "displayName");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"displayName\":\"\"}", "invalid_value", "displayName");
    bad("POST", "/v1/geographies", ts_str("{\"id\":\"eu\",\"displayName\":\"%s\"}", longname), "invalid_value",
        "displayName");
    bad("PATCH", "/v1/dps-instances/us-east-1-dps", "{\"idScope\":\"0ne-001\"}", "invalid_value", "idScope");
    bad("PATCH", "/v1/hubs/us-east-1-hub", "{\"hostName\":\"hub_1.example\"}", "invalid_value", "hostName");
    /* the longest id is fine: 63 characters */
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/stamps",
                              "{\"id\":\"s12345678901234567890123456789012345678901234567890123456789012\",\"region\":\"us-east\"}"),
                     201);
    TS_EXPECT_STATUS(ts_admin(cp, "DELETE", "/v1/stamps/s12345678901234567890123456789012345678901234567890123456789012", NULL), 204);
    /* 128 characters is fine */
    longname[128] = '\0';
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/stamps/us-east-1", ts_str("{\"displayName\":\"%s\"}", longname)), 200);
}

static void test_out_of_range(void **state)
{
    const char *dps = "/v1/dps-instances/us-east-1-dps";
    const char *hub = "/v1/hubs/us-east-1-hub";
    bad("PATCH", dps, "{\"maxRegistrations\":0}", "out_of_range", "maxRegistrations");
    bad("PATCH", dps, "{\"maxRegistrations\":1000001}", "out_of_range", "maxRegistrations");
    bad("PATCH", dps, "{\"maxRegistrations\":-1}", "out_of_range", "maxRegistrations");
    bad("PATCH", dps, "{\"registrationsPerMinute\":0}", "out_of_range", "registrationsPerMinute");
    bad("PATCH", dps, "{\"registrationsPerMinute\":10000001}", "out_of_range", "registrationsPerMinute");
    bad("PATCH", hub, "{\"allocationWeight\":1001}", "out_of_range", "allocationWeight");
    bad("PATCH", hub, "{\"allocationWeight\":0}", "out_of_range", "allocationWeight");
    bad("PATCH", hub, "{\"maxDevices\":1000001}", "out_of_range", "maxDevices");
    bad("PATCH", hub, "{\"maxDevices\":99999999999999999}", "out_of_range", "maxDevices");
    bad("POST", "/v1/dps-instances",
        "{\"id\":\"d2\",\"stamp\":\"us-east-1\",\"idScope\":\"0ne002\",\"endpoint\":\"x:1\",\"maxRegistrations\":0}",
        "out_of_range", "maxRegistrations");
    bad("POST", "/v1/hubs", "{\"id\":\"h2\",\"stamp\":\"us-east-1\",\"hostName\":\"h2.example\",\"allocationWeight\":1001}",
        "out_of_range", "allocationWeight");
    /* nothing changed */
    {
        struct ts_resp *r = ts_admin(cp, "GET", hub, NULL);
        TS_EXPECT_STATUS(r, 200);
        assert_int_equal(ts_jint(r->json, "allocationWeight", -1), 1);
        assert_int_equal(ts_jint(r->json, "maxDevices", -1), 1000000);
        r = ts_admin(cp, "GET", dps, NULL);
        assert_int_equal(ts_jint(r->json, "maxRegistrations", -1), 1000000);
        assert_int_equal(ts_jint(r->json, "registrationsPerMinute", -1), 1000);
    }
    /* the edges are accepted */
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", hub, "{\"allocationWeight\":1000,\"maxDevices\":1}"), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", dps, "{\"maxRegistrations\":1000000,\"registrationsPerMinute\":1}"), 200);
}

static void test_read_only(void **state)
{
    bad("POST", "/v1/geographies", "{\"id\":\"eu\",\"createdAt\":\"2020-01-01T00:00:00Z\"}", "read_only_field",
        "createdAt");
    bad("POST", "/v1/geographies", "{\"id\":\"eu\",\"version\":1}", "read_only_field", "version");
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\",\"region\":\"us-east\",\"health\":\"healthy\"}", "read_only_field",
        "health");
    bad("POST", "/v1/stamps", "{\"id\":\"us-east-2\",\"region\":\"us-east\",\"geography\":\"us\"}", "read_only_field",
        "geography");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"health\":\"healthy\"}", "read_only_field", "health");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"lastReportAt\":null}", "read_only_field", "lastReportAt");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"id\":\"us-east-9\"}", "read_only_field", "id");
    bad("PATCH", "/v1/stamps/us-east-1", "{\"region\":\"us-east\"}", "read_only_field", "region");
    bad("PATCH", "/v1/regions/us-east", "{\"geography\":\"eu\"}", "read_only_field", "geography");
    bad("PATCH", "/v1/hubs/us-east-1-hub", "{\"stamp\":\"us-east-1\"}", "read_only_field", "stamp");
    bad("PATCH", "/v1/dps-instances/us-east-1-dps", "{\"updatedAt\":\"2020-01-01T00:00:00Z\"}", "read_only_field",
        "updatedAt");
    bad("PATCH", "/v1/geographies/us", "{\"id\":\"us\"}", "read_only_field", "id");
    TS_EXPECT_STREQ(ts_jstr(ts_admin(cp, "GET", "/v1/stamps/us-east-1", NULL)->json, "region"), "us-east");
}

static void test_body_too_large(void **state)
{
    size_t n = 70 * 1024;
    char *big = ts_keep(malloc(n + 64));
    struct ts_resp *r;
    int len = snprintf(big, n + 64, "{\"id\":\"eu\",\"displayName\":\"");
    memset(big + len, 'a', n - (size_t)len - 2);
    memcpy(big + n - 2, "\"}", 3);
    r = send_body("POST", "/v1/geographies", "application/json", big, n);
    TS_EXPECT_ERROR(r, 413, "body_too_large");
    /* 64 KiB + 1 */
    r = send_body("PATCH", "/v1/stamps/us-east-1", "application/json", big, 65537);
    TS_EXPECT_ERROR(r, 413, "body_too_large");
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
}

static void test_media_type(void **state)
{
    const char *b = "{\"id\":\"eu\"}";
    TS_EXPECT_ERROR(send_body("POST", "/v1/geographies", "text/plain", b, strlen(b)), 415, "unsupported_media_type");
    TS_EXPECT_ERROR(send_body("POST", "/v1/geographies", "application/x-www-form-urlencoded", b, strlen(b)), 415,
                    "unsupported_media_type");
    TS_EXPECT_ERROR(send_body("POST", "/v1/geographies", NULL, b, strlen(b)), 415, "unsupported_media_type");
    TS_EXPECT_ERROR(send_body("POST", "/v1/geographies", "application/merge-patch+json", b, strlen(b)), 415,
                    "unsupported_media_type"); /* merge-patch only on PATCH */
    TS_EXPECT_ERROR(send_body("PATCH", "/v1/stamps/us-east-1", "text/json", "{\"status\":\"active\"}", 19), 415,
                    "unsupported_media_type");
    /* accepted: charset parameter, and merge-patch on PATCH */
    TS_EXPECT_STATUS(send_body("PATCH", "/v1/stamps/us-east-1", "application/merge-patch+json",
                               "{\"status\":\"active\"}", 19), 200);
    TS_EXPECT_STATUS(send_body("PATCH", "/v1/stamps/us-east-1", "application/json; charset=utf-8",
                               "{\"status\":\"active\"}", 19), 200);
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/geographies/eu", NULL), 404, "not_found");
}

static void test_invalid_query(void **state)
{
    static const char *const qs[] = {
        "limit=0", "limit=501", "limit=abc", "limit=-1", "limit=", "limit=1.5", "limit=10x",
        "cursor=garbage", "cursor=%00%01", "cursor=%FF%FE%FD", NULL,
    };
    for (const char *const *q = qs; *q; q++) {
        const char *path = ts_str("/v1/stamps?%s", *q);
        struct ts_resp *r = ts_admin(cp, "GET", path, NULL);
        if (r->status != 400 || !ts_is_error_body(r) || strcmp(ts_err_code(r), "invalid_query") != 0)
            ts_fail("GET %s: expected 400 invalid_query, got %s", path, ts_resp_str(r));
    }
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/hubs?limit=0&stamp=us-east-1", NULL), 400, "invalid_query");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/regions?geography=NOT%20AN%20ID", NULL), 400, "invalid_query");
    /* the edges are accepted */
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/stamps?limit=1", NULL), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/stamps?limit=500", NULL), 200);
}

static void test_routes_and_methods(void **state)
{
    struct ts_resp *r;
    const char *allow;

    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/nothing", NULL), 404, "route_not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v2/stamps", NULL), 404, "route_not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/", NULL), 404, "route_not_found");
    TS_EXPECT_ERROR(ts_admin(cp, "GET", "/v1/stamps/us-east-1/extra", NULL), 404, "route_not_found");
    /* unknown route without a token: still a JSON error (401 or 404) */
    r = ts_http(cp->port, "GET", "/v1/nothing", NULL, NULL, 0);
    if (!(r->status == 401 || r->status == 404) || !ts_is_error_body(r))
        ts_fail("GET /v1/nothing without token: expected 401/404 JSON error, got %s", ts_resp_str(r));

    r = ts_admin(cp, "PUT", "/v1/stamps/us-east-1", "{\"status\":\"active\"}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    allow = ts_header(r, "Allow");
    if (!allow || !strstr(allow, "GET") || !strstr(allow, "PATCH") || !strstr(allow, "DELETE") || strstr(allow, "PUT"))
        ts_fail("405 on /v1/stamps/<id>: Allow should list GET, PATCH, DELETE, got %s", allow ? allow : "(none)");
    r = ts_admin(cp, "DELETE", "/v1/stamps", NULL);
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    allow = ts_header(r, "Allow");
    if (!allow || !strstr(allow, "GET") || !strstr(allow, "POST") || strstr(allow, "DELETE"))
        ts_fail("405 on /v1/stamps: Allow should list GET, POST, got %s", allow ? allow : "(none)");
    r = ts_admin(cp, "PATCH", "/v1/hubs", "{}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    r = ts_admin(cp, "POST", "/v1/geographies/us", "{}");
    TS_EXPECT_ERROR(r, 405, "method_not_allowed");
    assert_non_null(ts_header(r, "Allow"));
    r = ts_http(cp->port, "POST", "/healthz", NULL, "", 0);
    if (r->status != 405 || !ts_header(r, "Allow"))
        ts_fail("POST /healthz: expected 405 with Allow, got %s", ts_resp_str(r));

    /* garbage ids in the path: 400 or 404, with a JSON error body */
    {
        static const char *const paths[] = {
            "/v1/stamps/%FF%FE", "/v1/stamps/%C3%A9t%C3%A9", "/v1/stamps/\xc3\xa9t\xc3\xa9", "/v1/stamps/%00",
            "/v1/stamps/%2e%2e", "/v1/stamps/UPPER", "/v1/stamps/%", "/v1/stamps/%zz", "/v1/hubs/a%2Fb",
            NULL,
        };
        for (const char *const *p = paths; *p; p++) {
            r = ts_admin(cp, "GET", *p, NULL);
            if (!(r->status == 400 || r->status == 404) || !ts_is_error_body(r))
                ts_fail("GET %s: expected 400/404 with a JSON error body, got %s", *p, ts_resp_str(r));
            r = ts_admin(cp, "DELETE", *p, NULL);
            if (!(r->status == 400 || r->status == 404) || !ts_is_error_body(r))
                ts_fail("DELETE %s: expected 400/404 with a JSON error body, got %s", *p, ts_resp_str(r));
        }
    }
}

static void test_request_id_and_shape(void **state)
{
    const char *auth = ts_str("Authorization: Bearer %s", cp->token);
    const char *h1[] = { auth, "X-Request-Id: my-req.1_A", NULL };
    const char *h2[] = { auth, "X-Request-Id: bad id with spaces", NULL };
    struct ts_resp *r;
    const char *rid;

    r = ts_http(cp->port, "GET", "/v1/stamps/us-east-1", h1, NULL, 0);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_header(r, "X-Request-Id"), "my-req.1_A");
    r = ts_http(cp->port, "GET", "/v1/stamps/nope", h1, NULL, 0);
    TS_EXPECT_ERROR(r, 404, "not_found");
    TS_EXPECT_STREQ(ts_header(r, "X-Request-Id"), "my-req.1_A");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "error"), "requestId"), "my-req.1_A");
    r = ts_http(cp->port, "GET", "/v1/stamps/us-east-1", h2, NULL, 0);
    rid = ts_header(r, "X-Request-Id");
    if (!rid || !*rid || strcmp(rid, "bad id with spaces") == 0)
        ts_fail("an insane X-Request-Id must be replaced by a fresh one, got %s", rid ? rid : "(none)");
    r = ts_http(cp->port, "GET", "/v1/stamps/us-east-1", NULL, NULL, 0);
    TS_EXPECT_ERROR(r, 401, "unauthorized");
    assert_non_null(ts_header(r, "X-Request-Id"));
    /* errors are JSON */
    {
        const char *ct = ts_header(r, "Content-Type");
        if (!ct || strncmp(ct, "application/json", 16) != 0)
            ts_fail("error Content-Type should be application/json, got %s", ct ? ct : "(none)");
    }
}

static void test_malformed_http(void **state)
{
    static const char *const reqs[] = {
        "GARBAGE\r\n\r\n",
        "GET /v1/stamps HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "POST /v1/geographies HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\nConnection: close\r\n\r\n{}",
        "GET /v1/stamps HTTP/1.1\r\nBad Header Line\r\n\r\n",
        "\x16\x03\x01\x02\x01\x01\x01\x01\xfc\x03\x03\r\n\r\n", /* TLS-ish bytes, then an empty line */
        NULL,
    };
    for (const char *const *q = reqs; *q; q++) {
        int64_t t0 = ts_now_ms();
        ts_http_set_timeout(5000);
        struct ts_resp *r = ts_http_raw(cp->port, *q, strlen(*q));
        ts_http_set_timeout(10000);
        /* Any 4xx answer, or a closed connection; never a hang or a 2xx/5xx. */
        if (r->status != 0 && (r->status < 400 || r->status >= 500))
            ts_fail("malformed request %zu: expected a 4xx or a closed connection, got %s",
                    (size_t)(q - reqs), ts_resp_str(r));
        if (r->status == 0 && strstr(r->err, "timeout"))
            ts_fail("malformed request %zu: the daemon hung (%s, %lld ms)", (size_t)(q - reqs), r->err,
                    (long long)(ts_now_ms() - t0));
        TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    }
}

/* Last: after all of that the daemon is alive and still serves correctly. */
static void test_still_alive(void **state)
{
    struct ts_resp *r = ts_get(cp, "/healthz");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "ok");
    assert_true(ts_proc_alive(cp->proc));
    TS_EXPECT_STATUS(ts_get(cp, "/readyz"), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/stamps/us-east-1", NULL), 200);
    /* none of the bad requests created anything */
    r = ts_admin(cp, "GET", "/v1/geographies", NULL);
    TS_EXPECT_STATUS(r, 200);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 1);
    r = ts_admin(cp, "GET", "/v1/stamps", NULL);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 1);
    r = ts_admin(cp, "GET", "/v1/hubs", NULL);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 1);
    r = ts_admin(cp, "GET", "/v1/dps-instances", NULL);
    assert_int_equal(json_array_size(json_object_get(r->json, "items")), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unauthorized),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_invalid_encoding),
        cmocka_unit_test(test_unknown_field),
        cmocka_unit_test(test_missing_field),
        cmocka_unit_test(test_invalid_type),
        cmocka_unit_test(test_invalid_value),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_media_type),
        cmocka_unit_test(test_invalid_query),
        cmocka_unit_test(test_routes_and_methods),
        cmocka_unit_test(test_request_id_and_shape),
        cmocka_unit_test(test_malformed_http),
        cmocka_unit_test(test_still_alive),
    };
    ts_init("test_admin_badinput");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
