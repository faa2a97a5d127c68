/*
 * test_caches.c - the assignment cache (LRU bound, epochs
 * that refuse a racing insert, forget, TTL) and tenant row parsing (the
 * string map has test_strmap.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "assign_cache.h"
#include "tenants.h"

static void test_assign_cache(void **state)
{
    struct assign_cache *c = assign_cache_new(3, 60000);
    uint64_t e;
    (void)state;
    e = assign_cache_epoch(c);
    assign_cache_put(c, e, "t", "a", "A");
    assign_cache_put(c, e, "t", "b", "B");
    assign_cache_put(c, e, "t", "c", "C");
    assert_string_equal(assign_cache_get(c, "t", "a"), "A");   /* a is now most recent */
    assign_cache_put(c, e, "t", "d", "D");                      /* evicts b, the least recent */
    assert_null(assign_cache_get(c, "t", "b"));
    assert_string_equal(assign_cache_get(c, "t", "a"), "A");
    assert_int_equal(assign_cache_count(c), 3);
    /* a lookup that started before an invalidation must not be cached */
    e = assign_cache_epoch(c);
    assign_cache_forget(c, "t", "a");
    assign_cache_put(c, e, "t", "a", "STALE");
    assert_null(assign_cache_get(c, "t", "a"));
    /* keys of different tenants don't collide */
    e = assign_cache_epoch(c);
    assign_cache_put(c, e, "t1", "x", "one");
    assign_cache_put(c, e, "t2", "x", "two");
    assert_string_equal(assign_cache_get(c, "t1", "x"), "one");
    assert_string_equal(assign_cache_get(c, "t2", "x"), "two");
    assign_cache_clear(c);
    assert_int_equal(assign_cache_count(c), 0);
    assign_cache_free(c);

    c = assign_cache_new(10, 100);   /* 100 ms TTL */
    assign_cache_put(c, assign_cache_epoch(c), "t", "a", "A");
    assert_non_null(assign_cache_get(c, "t", "a"));
    usleep(150000);
    assert_null(assign_cache_get(c, "t", "a"));
    assign_cache_free(c);
}

static void test_tenant_row(void **state)
{
    json_t *row = json_loads("{\"public\":{\"id\":\"acme\",\"residency\":{\"geographies\":[\"eu\",\"us\"],"
                             "\"regions\":[\"eu-west\"]},\"tenancy\":\"pooled\",\"dedicatedStamps\":[]},"
                             "\"enrollmentKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\","
                             "\"lookupGeographies\":[\"eu\",\"us\"],\"installerTokens\":["
                             "{\"sha256\":\"ab12\",\"id\":\"00112233aabbccdd\",\"expiresAtMs\":4102444800000,"
                             "\"prefix\":\"line-4-\"},"
                             "{\"sha256\":\"cd34\",\"id\":\"0011223344556677\",\"expiresAtMs\":1,\"prefix\":null},"
                             "{\"sha256\":\"ef56\"}]}", 0, NULL);
    const struct tenant_installer *ti;
    struct tenant *t = tenant_from_row(row);
    (void)state;
    assert_non_null(t);
    assert_int_equal(t->keylen, 32);
    assert_true(tenant_allows_geo(t, "us"));
    assert_false(tenant_allows_geo(t, "ap"));
    assert_true(tenant_allows_region(t, "eu-west"));
    assert_false(tenant_allows_region(t, "eu-north"));
    assert_non_null(ti = tenant_find_installer(t, "ab12"));
    assert_string_equal(ti->id, "00112233aabbccdd");
    assert_string_equal(ti->prefix, "line-4-");
    assert_int_equal(ti->expires_wall_ms, 4102444800000LL);
    assert_non_null(ti = tenant_find_installer(t, "cd34"));
    assert_null(ti->prefix);
    assert_int_equal(ti->expires_wall_ms, 1);   /* the caller judges expiry */
    assert_null(tenant_find_installer(t, "ef56"));   /* no id: never matches */
    assert_null(tenant_find_installer(t, "ab13"));
    assert_null(tenant_find_installer(t, "ab1"));
    tenant_unref(t);
    json_object_set_new(row, "enrollmentKey", json_string("not base64!"));
    assert_null(tenant_from_row(row));
    json_decref(row);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_assign_cache),
        cmocka_unit_test(test_tenant_row),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
