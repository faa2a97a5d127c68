/*
 * test_pseudonym.c - device pseudonyms (pseudonym.h): shape, determinism,
 * dependence on the key, the tenant and the id; the log-safe request path;
 * and the assignment cache's invalidation by pseudonym.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "assign_cache.h"
#include "pseudonym.h"

static void test_shape_and_keys(void **state)
{
    struct pseudonym a, b;
    char p1[PSEUDONYM_LEN], p2[PSEUDONYM_LEN], p3[PSEUDONYM_LEN], p4[PSEUDONYM_LEN];
    (void)state;
    pseudonym_init(&a, "deployment-secret-one");
    pseudonym_init(&b, "deployment-secret-two");
    pseudonym_device(&a, "acme", "dev-1", p1);
    assert_int_equal(strlen(p1), 20);
    assert_true(pseudonym_valid(p1));
    assert_memory_equal(p1, "dev_", 4);
    assert_string_equal(pseudonym_device(&a, "acme", "dev-1", p2), p1);    /* deterministic */
    assert_string_not_equal(pseudonym_device(&b, "acme", "dev-1", p3), p1); /* keyed */
    assert_string_not_equal(pseudonym_device(&a, "beta", "dev-1", p4), p1); /* per tenant */
    assert_string_not_equal(pseudonym_device(&a, "acme", "dev-2", p4), p1);
    assert_null(strstr(p1, "dev-1"));
    /* the key id: the same for the same key, different for another, 9 characters */
    assert_int_equal(strlen(pseudonym_key_id(&a)), 9);
    assert_string_not_equal(pseudonym_key_id(&a), pseudonym_key_id(&b));
    {
        struct pseudonym a2;
        pseudonym_init(&a2, "deployment-secret-one");
        assert_string_equal(pseudonym_key_id(&a2), pseudonym_key_id(&a));
        pseudonym_clear(&a2);
    }
    assert_false(pseudonym_valid("dev_0123"));
    assert_false(pseudonym_valid("dev_0123456789abcdeg"));
    assert_false(pseudonym_valid("xyz_0123456789abcdef"));
    assert_true(pseudonym_valid("dev_0123456789abcdef"));
    pseudonym_clear(&a);
    pseudonym_clear(&b);
}

static void test_redact_path(void **state)
{
    struct pseudonym k;
    char out[512], ps[PSEUDONYM_LEN], want[512];
    (void)state;
    pseudonym_init(&k, "deployment-secret-one");
    pseudonym_device(&k, "acme", "dev:1", ps);

    snprintf(want, sizeof want, "/v1/tenants/acme/registrations/%s/locate", ps);
    assert_string_equal(pseudonym_redact_path(&k, "/v1/tenants/acme/registrations/dev:1/locate", out, sizeof out),
                        want);
    /* percent-encoded: the same device, the same pseudonym */
    assert_string_equal(pseudonym_redact_path(&k, "/v1/tenants/acme/registrations/dev%3A1/locate", out, sizeof out),
                        want);
    snprintf(want, sizeof want, "/v1/tenants/acme/devices/%s/retire", ps);
    assert_string_equal(pseudonym_redact_path(&k, "/v1/tenants/acme/devices/dev:1/retire", out, sizeof out), want);
    assert_string_equal(pseudonym_redact_path(&k, "/v1/tenants/acme/devices?cursor=ZGV2OjE&limit=5", out, sizeof out),
                        "/v1/tenants/acme/devices?cursor=-&limit=5");
    assert_string_equal(pseudonym_redact_path(&k, "/v1/stamps/eu-west-1", out, sizeof out), "/v1/stamps/eu-west-1");
    assert_string_equal(pseudonym_redact_path(&k, NULL, out, sizeof out), "");
    /* cut to fit, still terminated */
    assert_int_equal(strlen(pseudonym_redact_path(&k, "/v1/tenants/acme/registrations/dev:1/locate", out, 10)), 9);
    pseudonym_clear(&k);
}

static void test_cache_forget_by_pseudonym(void **state)
{
    struct pseudonym k;
    struct assign_cache *c = assign_cache_new(10, 60000);
    char ps[PSEUDONYM_LEN];
    uint64_t e;
    (void)state;
    pseudonym_init(&k, "deployment-secret-one");
    assign_cache_set_pseudonym(c, &k);
    e = assign_cache_epoch(c);
    assign_cache_put(c, e, "acme", "dev-1", "A");
    assign_cache_put(c, e, "acme", "dev-2", "B");
    assign_cache_put(c, e, "beta", "dev-1", "C");
    /* another tenant's pseudonym of the same id drops nothing of acme's */
    assign_cache_forget_pseudo(c, "acme", pseudonym_device(&k, "beta", "dev-1", ps));
    assert_string_equal(assign_cache_get(c, "acme", "dev-1"), "A");
    assign_cache_forget_pseudo(c, "acme", pseudonym_device(&k, "acme", "dev-1", ps));
    assert_null(assign_cache_get(c, "acme", "dev-1"));
    assert_string_equal(assign_cache_get(c, "acme", "dev-2"), "B");
    assert_string_equal(assign_cache_get(c, "beta", "dev-1"), "C");
    assert_int_equal(assign_cache_count(c), 2);
    /* a forget invalidates lookups in flight (epoch), as the plain forget does */
    assign_cache_put(c, e, "acme", "dev-1", "STALE");
    assert_null(assign_cache_get(c, "acme", "dev-1"));
    /* eviction and clear keep both indexes consistent */
    e = assign_cache_epoch(c);
    for (int i = 0; i < 30; i++) {
        char id[16];
        snprintf(id, sizeof id, "x%d", i);
        assign_cache_put(c, e, "acme", id, "X");
    }
    assert_int_equal(assign_cache_count(c), 10);
    assign_cache_forget_pseudo(c, "acme", pseudonym_device(&k, "acme", "x29", ps));
    assert_int_equal(assign_cache_count(c), 9);
    assign_cache_clear(c);
    assert_int_equal(assign_cache_count(c), 0);
    assign_cache_free(c);
    pseudonym_clear(&k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shape_and_keys),
        cmocka_unit_test(test_redact_path),
        cmocka_unit_test(test_cache_forget_by_pseudonym),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
