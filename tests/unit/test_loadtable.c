/*
 * test_loadtable.c - stamp health from report age (healthy, stale, down),
 * ordering of reports, a final "down" report, and malformed reports.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "loadtable.h"

static json_t *report(const char *stamp, const char *health, long long ts, long long interval)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:[], s:[]}}", "stampId", stamp, "health", health,
                     "ts", ts, "intervalMs", interval, "seq", 1LL, "load", "dps", "hubs");
}

static bool apply(struct loadtable *lt, json_t *r, long long wall, long long mono)
{
    bool ok = loadtable_apply(lt, r, wall, mono);
    json_decref(r);
    return ok;
}

static void test_health_by_age(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    (void)state;
    assert_int_equal(loadtable_health(lt, "s1", 1000), STAMP_DOWN);   /* never reported */
    assert_null(loadtable_get(lt, "s1"));
    assert_true(apply(lt, report("s1", "healthy", 50000, 1000), 50000, 100000));
    assert_int_equal(loadtable_health(lt, "s1", 100000), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 102999), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 103000), STAMP_STALE);
    assert_int_equal(loadtable_health(lt, "s1", 109999), STAMP_STALE);
    assert_int_equal(loadtable_health(lt, "s1", 110000), STAMP_DOWN);
    assert_non_null(loadtable_get(lt, "s1")->load);
    assert_string_equal(loadtable_health_word(STAMP_STALE), "stale");
    loadtable_free(lt);
}

static void test_snapshot_age_and_order(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    (void)state;
    /* A snapshot read 2.5 s after the report was written is already 2.5 s old. */
    assert_true(apply(lt, report("s1", "healthy", 47500, 1000), 50000, 100000));
    assert_int_equal(loadtable_health(lt, "s1", 100400), STAMP_HEALTHY);
    assert_int_equal(loadtable_health(lt, "s1", 100500), STAMP_STALE);
    /* An older report arriving late does not roll the entry back. */
    assert_true(apply(lt, report("s1", "down", 40000, 1000), 50000, 100600));
    assert_int_equal(loadtable_get(lt, "s1")->report_wall_ms, 47500);
    /* A newer final report says down at once. */
    assert_true(apply(lt, report("s1", "down", 48000, 1000), 48000, 100600));
    assert_int_equal(loadtable_health(lt, "s1", 100600), STAMP_DOWN);
    /* and a fresh report after a restart brings it back */
    assert_true(apply(lt, report("s1", "healthy", 49000, 1000), 49000, 100700));
    assert_int_equal(loadtable_health(lt, "s1", 100700), STAMP_HEALTHY);
    loadtable_free(lt);
}

static void test_malformed(void **state)
{
    struct loadtable *lt = loadtable_new(3, 10);
    json_t *r;
    (void)state;
    assert_false(loadtable_apply(lt, NULL, 0, 0));
    r = json_pack("{s:s}", "stampId", "s1");
    assert_false(apply(lt, r, 0, 0));
    r = report("Bad Id", "healthy", 1, 1000);
    assert_false(apply(lt, r, 0, 0));
    r = report("s1", "healthy", 1, 0);   /* interval 0 */
    assert_false(apply(lt, r, 0, 0));
    r = json_pack("{s:s, s:s, s:s, s:I}", "stampId", "s1", "health", "healthy", "ts", "soon", "intervalMs", 1000LL);
    assert_false(apply(lt, r, 0, 0));
    assert_null(loadtable_get(lt, "s1"));
    loadtable_free(lt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_by_age),
        cmocka_unit_test(test_snapshot_age_and_order),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
