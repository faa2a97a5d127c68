/*
 * test_api_bodies.c - the database-free body checks the control plane's
 * tenant and device routes share with the fuzz harnesses
 * (api_tenants_validate, router_check_body, api_certificates_validate,
 * installer_tokens_validate): good bodies pass, and every bad one fails with
 * the code and field the 400 answer carries.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "api_certificates.h"
#include "router.h"
#include "api_tenants.h"
#include "installer_tokens.h"

static json_t *body_of(const char *text)
{
    json_t *b = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(b);
    return b;
}

/* Validate text for a tenant route; on failure check the code and field. */
static void tenant(enum api_tenants_body kind, const char *text, const char *code, const char *field)
{
    json_t *b = body_of(text);
    struct jv_err e;
    bool ok;
    memset(&e, 0, sizeof e);
    ok = api_tenants_validate(kind, b, &e);
    json_decref(b);
    if (!code) {
        if (!ok)
            fail_msg("%s: refused: %s %s %s", text, e.code, e.field, e.message);
        return;
    }
    if (ok)
        fail_msg("%s: accepted, expected %s", text, code);
    assert_string_equal(e.code, code);
    assert_string_equal(e.field, field);
}

static void cert(enum api_certificates_body kind, const char *text, const char *code, const char *field)
{
    json_t *b = body_of(text);
    struct jv_err e;
    bool ok;
    memset(&e, 0, sizeof e);
    ok = api_certificates_validate(kind, b, &e);
    json_decref(b);
    if (!code) {
        if (!ok)
            fail_msg("%s: refused: %s %s %s", text, e.code, e.field, e.message);
        return;
    }
    if (ok)
        fail_msg("%s: accepted, expected %s", text, code);
    assert_string_equal(e.code, code);
    assert_string_equal(e.field, field);
}

static void test_certificate_bodies(void **state)
{
    (void)state;
    cert(API_CERTIFICATES_CREATE, "{\"certificate\":\"x\"}", NULL, NULL);
    cert(API_CERTIFICATES_CREATE, "{\"name\":\"CA 1\",\"certificate\":\"x\"}", NULL, NULL);
    cert(API_CERTIFICATES_CREATE, "{\"name\":\"CA 1\"}", "missing_field", "certificate");
    cert(API_CERTIFICATES_CREATE, "{\"certificate\":1}", "invalid_type", "certificate");
    cert(API_CERTIFICATES_CREATE, "{\"certificate\":\"\"}", "invalid_value", "certificate");
    cert(API_CERTIFICATES_CREATE, "{\"certificate\":\"x\",\"key\":\"y\"}", "unknown_field", "key");
    cert(API_CERTIFICATES_VERIFY, "{\"certificate\":\"x\"}", NULL, NULL);
    cert(API_CERTIFICATES_VERIFY, "{\"certificate\":\"x\",\"name\":\"n\"}", "unknown_field", "name");
    cert(API_CERTIFICATES_VERIFY, "{}", "missing_field", "certificate");
    cert(API_CERTIFICATES_PATCH, "{}", NULL, NULL);
    cert(API_CERTIFICATES_PATCH, "{\"enabled\":false,\"name\":\"n\"}", NULL, NULL);
    cert(API_CERTIFICATES_PATCH, "{\"enabled\":\"no\"}", "invalid_type", "enabled");
    cert(API_CERTIFICATES_PATCH, "{\"certificate\":\"x\"}", "unknown_field", "certificate");
}

static void test_tenant_create(void **state)
{
    (void)state;
    tenant(API_TENANTS_CREATE, "{\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}", NULL, NULL);
    tenant(API_TENANTS_CREATE,
           "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\",\"us\"],\"regions\":[\"eu-west\"]},"
           "\"tenancy\":\"dedicated\",\"dedicatedStamps\":[\"eu-west-1\"]}", NULL, NULL);
    tenant(API_TENANTS_CREATE, "{\"residency\":{\"geographies\":[\"eu\"]}}", "missing_field", "name");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[]}}", "invalid_value",
           "residency.geographies");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\",\"eu\"]}}", "invalid_value",
           "residency.geographies");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[7]}}", "invalid_type",
           "residency.geographies");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"],\"x\":1}}", "unknown_field",
           "residency.x");
    tenant(API_TENANTS_CREATE, "{\"id\":\"Bad\",\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]}}",
           "invalid_value", "id");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"shared\"}",
           "invalid_value", "tenancy");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"tenancy\":\"dedicated\"}",
           "missing_field", "dedicatedStamps");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"dedicatedStamps\":[\"s\"]}",
           "invalid_value", "dedicatedStamps");
}

static void test_tenant_patch_token_rotate(void **state)
{
    (void)state;
    tenant(API_TENANTS_PATCH, "{}", NULL, NULL);
    tenant(API_TENANTS_PATCH, "{\"name\":\"New name\"}", NULL, NULL);
    tenant(API_TENANTS_PATCH, "{\"name\":\"\"}", "invalid_value", "name");
    tenant(API_TENANTS_PATCH, "{\"name\":5}", "invalid_type", "name");
    tenant(API_TENANTS_PATCH, "{\"residency\":{}}", "read_only_field", "residency");
    tenant(API_TENANTS_PATCH, "{\"name\":\"x\",\"enrollmentKey\":\"k\"}", "read_only_field", "enrollmentKey");
    tenant(API_TENANTS_PATCH, "{\"colour\":\"red\"}", "unknown_field", "colour");
    tenant(API_TENANTS_INSTALLER_TOKEN, "{\"name\":\"line 4\"}", NULL, NULL);
    tenant(API_TENANTS_INSTALLER_TOKEN, "{}", "missing_field", "name");
    tenant(API_TENANTS_INSTALLER_TOKEN, "{\"name\":\"x\",\"ttl\":1}", "unknown_field", "ttl");
    tenant(API_TENANTS_ROTATE, "{}", NULL, NULL);
    tenant(API_TENANTS_ROTATE, "{\"key\":\"mine\"}", "unknown_field", "key");
    /* quotas (docs/api.md "Quotas") */
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},"
           "\"quotas\":{\"maxDevices\":10,\"maxProvisionsPerMinute\":null}}", NULL, NULL);
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{}}", NULL, NULL);
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"maxDevices\":0}}",
           "out_of_range", "quotas.maxDevices");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"maxDevices\":-3}}",
           "out_of_range", "quotas.maxDevices");
    tenant(API_TENANTS_CREATE,
           "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"maxDevices\":1000000001}}",
           "out_of_range", "quotas.maxDevices");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"maxDevices\":\"9\"}}",
           "invalid_type", "quotas.maxDevices");
    tenant(API_TENANTS_CREATE,
           "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"maxProvisionsPerMinute\":1.5}}",
           "invalid_type", "quotas.maxProvisionsPerMinute");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":{\"max\":1}}",
           "unknown_field", "quotas.max");
    tenant(API_TENANTS_CREATE, "{\"name\":\"a\",\"residency\":{\"geographies\":[\"eu\"]},\"quotas\":[]}",
           "invalid_type", "quotas");
    tenant(API_TENANTS_PATCH, "{\"quotas\":{\"maxDevices\":null}}", NULL, NULL);
    tenant(API_TENANTS_PATCH, "{\"quotas\":{\"maxProvisionsPerMinute\":0}}", "out_of_range",
           "quotas.maxProvisionsPerMinute");
    tenant(API_TENANTS_PATCH, "{\"status\":\"active\"}", "read_only_field", "status");
    tenant(API_TENANTS_SUSPEND, "{}", NULL, NULL);
    tenant(API_TENANTS_SUSPEND, "{\"reason\":\"unpaid\"}", "unknown_field", "reason");
}

static void test_device_bodies(void **state)
{
    struct jv_err e;
    const char *reason = NULL;
    json_t *b;
    (void)state;

    b = body_of("{\"reason\":\"factory reset\"}");
    assert_true(router_check_body(b, true, false, &reason, &e));
    assert_string_equal(reason, "factory reset");
    memset(&e, 0, sizeof e);
    assert_false(router_check_body(b, false, true, &reason, &e));   /* provision: no reason */
    assert_string_equal(e.code, "unknown_field");
    assert_string_equal(e.field, "reason");
    json_decref(b);

    b = body_of("{\"payload\":{\"modelId\":\"dtmi:x;1\"}}");
    reason = NULL;
    assert_true(router_check_body(b, false, true, &reason, &e));
    assert_null(reason);
    assert_false(router_check_body(b, true, false, &reason, &e));
    assert_false(router_check_body(b, false, false, &reason, &e));
    assert_string_equal(e.field, "payload");
    json_decref(b);

    b = body_of("{\"reason\":\"\"}");
    assert_false(router_check_body(b, true, false, &reason, &e));
    assert_string_equal(e.code, "invalid_value");
    json_decref(b);
    b = body_of("{\"reason\":[1]}");
    assert_false(router_check_body(b, true, false, &reason, &e));
    assert_string_equal(e.code, "invalid_type");
    json_decref(b);
    b = body_of("{}");
    assert_true(router_check_body(b, false, false, &reason, &e));
    json_decref(b);
}

/* 2026-12-04T10:00:00Z */
#define T0 1796378400000LL

/* An installer token body judged at T0: NULL code = accepted. */
static void token(const char *text, const char *code, const char *field, struct installer_new *out)
{
    json_t *b = body_of(text);
    struct installer_new in;
    struct jv_err e;
    bool ok;
    memset(&e, 0, sizeof e);
    ok = installer_tokens_validate(b, T0, &in, &e);
    if (!code) {
        if (!ok)
            fail_msg("%s: refused: %s %s %s", text, e.code, e.field, e.message);
        if (out)
            *out = in;   /* its strings point into b: compare them here */
        if (out && out->prefix)
            out->prefix = "(set)";
        json_decref(b);
        return;
    }
    json_decref(b);
    if (ok)
        fail_msg("%s: accepted, expected %s", text, code);
    assert_string_equal(e.code, code);
    assert_string_equal(e.field, field);
}

static void test_installer_token_bodies(void **state)
{
    struct installer_new in;
    int64_t ms;
    (void)state;

    assert_true(installer_tokens_parse_time("2026-12-04T10:00:00Z", &ms));
    assert_int_equal(ms, T0);
    assert_true(installer_tokens_parse_time("2026-12-04T11:00:00.25+01:00", &ms));
    assert_int_equal(ms, T0 + 250);
    assert_true(installer_tokens_parse_time("2026-12-04T09:30:00.123456789-00:30", &ms));
    assert_int_equal(ms, T0 + 123);
    assert_true(installer_tokens_parse_time("2028-02-29T00:00:00Z", &ms));
    static const char *const bad_times[] = {
        "", "2026-12-04", "2026-12-04T10:00:00", "2026-12-04 10:00:00Z", "2026-12-04t10:00:00Z",
        "2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "2026-12-04T24:00:00Z", "2026-12-04T10:60:00Z",
        "2026-12-04T10:00:60Z", "2026-12-04T10:00:00.Z", "2026-12-04T10:00:00.1234567890Z",
        "2026-12-04T10:00:00+1:00", "2026-12-04T10:00:00+01:00x", "now", "1969-12-31T23:59:59Z",
        "+2026-12-04T10:00:00Z", NULL,
    };
    for (const char *const *t = bad_times; *t; t++)
        if (installer_tokens_parse_time(*t, &ms))
            fail_msg("'%s' parsed as a time", *t);

    token("{\"name\":\"line 4\"}", NULL, NULL, &in);
    assert_int_equal(in.expires_wall_ms, T0 + 24LL * 3600 * 1000);
    assert_null(in.prefix);
    assert_int_equal(in.max_placements, 0);
    token("{\"name\":\"x\",\"expiresAt\":\"2027-01-03T10:00:00Z\",\"registrationIdPrefix\":\"line-4.\","
          "\"maxPlacements\":10}", NULL, NULL, &in);
    assert_int_equal(in.expires_wall_ms, T0 + 30LL * 24 * 3600 * 1000);
    assert_string_equal(in.prefix, "(set)");
    assert_int_equal(in.max_placements, 10);
    token("{\"name\":\"x\",\"expiresAt\":null,\"registrationIdPrefix\":null,\"maxPlacements\":null}", NULL, NULL,
          &in);
    assert_int_equal(in.expires_wall_ms, T0 + 24LL * 3600 * 1000);
    token("{\"name\":\"x\",\"expiresAt\":\"2026-12-04T10:00:01Z\"}", NULL, NULL, NULL);

    token("{}", "missing_field", "name", NULL);
    token("{\"name\":\"x\",\"ttl\":1}", "unknown_field", "ttl", NULL);
    token("{\"name\":\"x\",\"token\":\"cpi_mine\"}", "unknown_field", "token", NULL);
    token("{\"name\":\"x\",\"expiresAt\":\"2026-12-04T10:00:00Z\"}", "out_of_range", "expiresAt", NULL);
    token("{\"name\":\"x\",\"expiresAt\":\"2020-01-01T00:00:00Z\"}", "out_of_range", "expiresAt", NULL);
    token("{\"name\":\"x\",\"expiresAt\":\"2027-01-03T10:01:01Z\"}", "out_of_range", "expiresAt", NULL);
    token("{\"name\":\"x\",\"expiresAt\":\"tomorrow\"}", "invalid_value", "expiresAt", NULL);
    token("{\"name\":\"x\",\"expiresAt\":1796378400}", "invalid_type", "expiresAt", NULL);
    token("{\"name\":\"x\",\"registrationIdPrefix\":\"\"}", "invalid_value", "registrationIdPrefix", NULL);
    token("{\"name\":\"x\",\"registrationIdPrefix\":\"Line-4\"}", "invalid_value", "registrationIdPrefix", NULL);
    token("{\"name\":\"x\",\"registrationIdPrefix\":\"a b\"}", "invalid_value", "registrationIdPrefix", NULL);
    token("{\"name\":\"x\",\"registrationIdPrefix\":7}", "invalid_type", "registrationIdPrefix", NULL);
    token("{\"name\":\"x\",\"maxPlacements\":0}", "out_of_range", "maxPlacements", NULL);
    token("{\"name\":\"x\",\"maxPlacements\":-1}", "out_of_range", "maxPlacements", NULL);
    token("{\"name\":\"x\",\"maxPlacements\":1.5}", "invalid_type", "maxPlacements", NULL);
    token("{\"name\":\"x\",\"maxPlacements\":\"3\"}", "invalid_type", "maxPlacements", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tenant_create),
        cmocka_unit_test(test_tenant_patch_token_rotate),
        cmocka_unit_test(test_device_bodies),
        cmocka_unit_test(test_certificate_bodies),
        cmocka_unit_test(test_installer_token_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
