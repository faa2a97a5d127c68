/*
 * test_routes - the route table's invariants and its matcher (routes.h),
 * the API key parser (apikeys.h) and the RFC 3339 check of expiresAt:
 *  - every non-public route needs a scope, platform-only scopes sit only on
 *    platform routes, a route naming {tenant} says which segment is the tenant,
 *    no (method, pattern) twice, and each pattern is well formed;
 *  - matching: exact segment counts, {x} matches one segment, the Allow list
 *    of a known path with another method, device paths recognised;
 *  - keys: cpk_<16 hex>_<64 hex> only; timestamps: zone required.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "api_keys.h"
#include "apikeys.h"
#include "principal.h"
#include "routes.h"

static int split(const char *path, char *buf, char **segs)
{
    int n = 0;
    strcpy(buf, path);
    for (char *p = strtok(buf, "/"); p; p = strtok(NULL, "/"))
        segs[n++] = p;
    return n;
}

static void test_table_invariants(void **state)
{
    (void)state;
    assert_true(routes_count > 40);
    for (int i = 0; i < routes_count; i++) {
        const struct route *rt = &routes_table[i];
        char buf[256], *segs[8];
        int n = split(rt->pattern, buf, segs);
        assert_non_null(rt->handler);
        assert_true(rt->pattern[0] == '/');
        if (rt->access == ROUTE_PUBLIC) {
            assert_int_equal(rt->scope, 0);
            continue;
        }
        assert_true(rt->scope != 0 && (rt->scope & ~(uint32_t)SCOPE_ALL) == 0);   /* known scopes only */
        if (rt->scope & (SCOPE_PLATFORM_ADMIN | SCOPE_OPS_FAILOVER))
            assert_int_equal(rt->access, ROUTE_PLATFORM);
        if (strstr(rt->pattern, "{tenant}")) {
            assert_true(rt->tenant_seg >= 0 && rt->tenant_seg < n);
            assert_string_equal(segs[rt->tenant_seg], "{tenant}");
        } else {
            assert_int_equal(rt->tenant_seg, -1);
        }
        if (rt->access == ROUTE_DEVICE)
            assert_true(routes_is_device_path(segs, n));
        for (int j = 0; j < i; j++)
            assert_false(routes_table[j].method == rt->method && strcmp(routes_table[j].pattern, rt->pattern) == 0);
    }
}

static void test_match(void **state)
{
    char buf[256], *segs[8], allow[64];
    bool known;
    const struct route *rt;
    int n;
    (void)state;

    n = split("/v1/tenants/acme/devices/d-1", buf, segs);
    rt = routes_match(EVHTTP_REQ_GET, segs, n, &known, allow, sizeof allow);
    assert_non_null(rt);
    assert_string_equal(rt->pattern, "/v1/tenants/{tenant}/devices/{device}");
    assert_int_equal(rt->scope, SCOPE_DEVICES_READ);

    rt = routes_match(EVHTTP_REQ_PUT, segs, n, &known, allow, sizeof allow);
    assert_null(rt);
    assert_true(known);
    assert_string_equal(allow, "GET");

    n = split("/v1/api-keys", buf, segs);
    assert_null(routes_match(EVHTTP_REQ_DELETE, segs, n, &known, allow, sizeof allow));
    assert_true(known);
    assert_string_equal(allow, "GET, POST");

    n = split("/v1/tenants/acme/devices/d-1/extra", buf, segs);
    assert_null(routes_match(EVHTTP_REQ_GET, segs, n, &known, allow, sizeof allow));
    assert_false(known);
    n = split("/v1", buf, segs);
    assert_null(routes_match(EVHTTP_REQ_GET, segs, n, &known, allow, sizeof allow));
    assert_false(known);

    n = split("/v1/tenants/acme/registrations/d-1/locate", buf, segs);
    assert_true(routes_is_device_path(segs, n));
    rt = routes_match(EVHTTP_REQ_POST, segs, n, &known, allow, sizeof allow);
    assert_non_null(rt);
    assert_int_equal(rt->access, ROUTE_DEVICE);
    n = split("/v1/tenants/acme/devices", buf, segs);
    assert_false(routes_is_device_path(segs, n));
}

static void test_key_parse(void **state)
{
    char id[APIKEY_ID_LEN + 1], secret[APIKEY_SECRET_LEN + 1];
    const char *good = "cpk_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    (void)state;
    assert_true(apikeys_parse(good, id, secret));
    assert_string_equal(id, "0123456789abcdef");
    assert_int_equal(strlen(secret), 64);
    assert_false(apikeys_parse("cpk_0123456789ABCDEF_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", id, secret));
    assert_false(apikeys_parse("cpk_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", id, secret));
    assert_false(apikeys_parse("cpk_0123456789abcdef-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", id, secret));
    assert_false(apikeys_parse("cpi_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", id, secret));
    assert_false(apikeys_parse("cpk_", id, secret));
    assert_false(apikeys_parse(NULL, id, secret));
}

static void test_scope_words(void **state)
{
    (void)state;
    assert_int_equal(principal_scope_from_word("devices:read"), SCOPE_DEVICES_READ);
    assert_int_equal(principal_scope_from_word("devices:Read"), 0);
    assert_int_equal(principal_scope_from_word(""), 0);
    for (uint32_t b = 1; b & SCOPE_ALL; b <<= 1)
        assert_int_equal(principal_scope_from_word(principal_scope_word(b)), b);
}

static void test_timestamps(void **state)
{
    (void)state;
    assert_true(api_keys_valid_timestamp("2027-01-31T00:00:00Z"));
    assert_true(api_keys_valid_timestamp("2027-01-31T00:00:00.123456Z"));
    assert_true(api_keys_valid_timestamp("2027-01-31T00:00:00+02:00"));
    assert_false(api_keys_valid_timestamp("2027-01-31T00:00:00"));
    assert_false(api_keys_valid_timestamp("2027-01-31 00:00:00Z"));
    assert_false(api_keys_valid_timestamp("tomorrow"));
    assert_false(api_keys_valid_timestamp("infinity"));
    assert_false(api_keys_valid_timestamp("2027-01-31T00:00:00.Z"));
    assert_false(api_keys_valid_timestamp("2027-01-31T00:00:00Zjunk"));
    assert_false(api_keys_valid_timestamp(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_invariants),
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_key_parse),
        cmocka_unit_test(test_scope_words),
        cmocka_unit_test(test_timestamps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
