/*
 * test_dps_limits.c - the DPS limits' arithmetic: token bucket (burst, steady
 * rate, wait), GCRA poll window (5 per 10 s), keyed states and their sweep,
 * the one-minute counter and Retry-After rounding.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "dps_limits.h"

static void test_bucket_burst_then_rate(void **state)
{
    struct dps_bucket b;
    int64_t t = 1000000;
    (void)state;
    dps_bucket_init(&b, 1000, 60000, t);
    for (int i = 0; i < 1000; i++)
        assert_true(dps_bucket_take(&b, t));
    assert_false(dps_bucket_take(&b, t));
    /* one token every 60 ms */
    assert_int_equal(dps_bucket_wait_ms(&b, t), 60);
    assert_false(dps_bucket_take(&b, t + 59));
    assert_true(dps_bucket_take(&b, t + 60));
    assert_false(dps_bucket_take(&b, t + 60));
    /* a full minute refills to capacity, never beyond */
    t += 10 * 60000;
    for (int i = 0; i < 1000; i++)
        assert_true(dps_bucket_take(&b, t));
    assert_false(dps_bucket_take(&b, t));
}

static void test_bucket_small_rate(void **state)
{
    struct dps_bucket b;
    (void)state;
    dps_bucket_init(&b, 2, 60000, 0);
    assert_true(dps_bucket_take(&b, 0));
    assert_true(dps_bucket_take(&b, 0));
    assert_false(dps_bucket_take(&b, 0));
    assert_int_equal(dps_bucket_wait_ms(&b, 0), 30000);
    assert_int_equal(dps_retry_after_s(dps_bucket_wait_ms(&b, 0)), 30);
    assert_int_equal(dps_bucket_wait_ms(&b, 29000), 1000);
    assert_true(dps_bucket_take(&b, 30000));
}

static void test_gcra_five_per_ten_seconds(void **state)
{
    struct dps_gcra g = {0};
    int64_t retry = 0, t = 50000;
    (void)state;
    for (int i = 0; i < 5; i++)
        assert_true(dps_gcra_admit(&g, 5, 10000, t, &retry));
    assert_false(dps_gcra_admit(&g, 5, 10000, t, &retry));
    assert_int_equal(retry, 2000);
    assert_false(dps_gcra_admit(&g, 5, 10000, t + 1999, &retry));
    assert_int_equal(retry, 1);
    assert_true(dps_gcra_admit(&g, 5, 10000, t + 2000, &retry));
    assert_false(dps_gcra_admit(&g, 5, 10000, t + 2000, &retry));
    /* the SDK's pace (one poll every 2 s, or every second with Retry-After: 1
     * for a few polls) stays admitted */
    g.tat_ms = 0;
    for (int i = 0; i < 100; i++)
        assert_true(dps_gcra_admit(&g, 5, 10000, t + 100000 + i * 2000, &retry));
    g.tat_ms = 0;
    for (int i = 0; i < 9; i++)
        assert_true(dps_gcra_admit(&g, 5, 10000, t + 300000 + i * 1000, &retry));
    assert_false(dps_gcra_admit(&g, 5, 10000, t + 309000, &retry));
    assert_false(dps_gcra_idle(&g, t + 309000));
    assert_true(dps_gcra_idle(&g, t + 320000));
}

static void test_keyed_gcra_and_sweep(void **state)
{
    struct dps_keyed_gcra *k = dps_keyed_gcra_new();
    int64_t retry;
    (void)state;
    for (int i = 0; i < 5; i++) {
        assert_true(dps_keyed_gcra_admit(k, "0/a", 5, 10000, 1000, &retry));
        assert_true(dps_keyed_gcra_admit(k, "0/b", 5, 10000, 1000, &retry));
    }
    assert_false(dps_keyed_gcra_admit(k, "0/a", 5, 10000, 1000, &retry));
    assert_true(dps_keyed_gcra_admit(k, "1/a", 5, 10000, 1000, &retry));   /* other instance */
    assert_int_equal(dps_keyed_gcra_sweep(k, 5000), 3);
    assert_int_equal(dps_keyed_gcra_sweep(k, 11001), 0);
    for (int i = 0; i < 5; i++)
        assert_true(dps_keyed_gcra_admit(k, "0/a", 5, 10000, 12000, &retry));
    dps_keyed_gcra_free(k);
}

/* The failed-authentication limit: peek decides without recording, and the
 * map of client addresses is trimmed to its cap, oldest first. */
static void test_keyed_gcra_peek_and_trim(void **state)
{
    struct dps_keyed_gcra *k = dps_keyed_gcra_new();
    int64_t retry = 0;
    char key[32];
    (void)state;
    assert_true(dps_keyed_gcra_peek(k, "10.0.0.1", 3, 10000, 1000, &retry));   /* never seen */
    for (int i = 0; i < 3; i++) {
        assert_true(dps_keyed_gcra_peek(k, "10.0.0.1", 3, 10000, 1000, &retry));
        assert_true(dps_keyed_gcra_admit(k, "10.0.0.1", 3, 10000, 1000, &retry));
    }
    assert_false(dps_keyed_gcra_peek(k, "10.0.0.1", 3, 10000, 1000, &retry));
    assert_true(retry > 0);
    /* peeking did not advance the state: one emission interval later it admits again */
    assert_true(dps_keyed_gcra_peek(k, "10.0.0.1", 3, 10000, 1000 + 3334, &retry));
    assert_true(dps_keyed_gcra_peek(k, "10.0.0.2", 3, 10000, 1000, &retry));
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "192.0.2.%d", i);
        assert_true(dps_keyed_gcra_admit(k, key, 3, 10000, 2000, &retry));
    }
    assert_int_equal(dps_keyed_gcra_trim(k, 50), 50);
    /* the oldest went first: 10.0.0.1 is forgotten (so admitted again) */
    assert_true(dps_keyed_gcra_peek(k, "10.0.0.1", 3, 10000, 2000, &retry));
    assert_int_equal(dps_keyed_gcra_trim(k, 1000), 50);
    dps_keyed_gcra_free(k);
}

static void test_minute_counter(void **state)
{
    struct dps_minute m = {0};
    (void)state;
    for (int i = 0; i < 10; i++)
        dps_minute_add(&m, 100000 + i * 100);         /* second 100 */
    dps_minute_add(&m, 130000);
    assert_int_equal(dps_minute_sum(&m, 130000), 11);
    assert_int_equal(dps_minute_sum(&m, 159999), 11);
    assert_int_equal(dps_minute_sum(&m, 160000), 1);  /* second 100 is out */
    dps_minute_add(&m, 160000);                       /* reuses slot 40, not 10 */
    assert_int_equal(dps_minute_sum(&m, 160500), 2);
    assert_int_equal(dps_minute_sum(&m, 500000), 0);
}

static void test_retry_after(void **state)
{
    (void)state;
    assert_int_equal(dps_retry_after_s(0), 1);
    assert_int_equal(dps_retry_after_s(1), 1);
    assert_int_equal(dps_retry_after_s(1000), 1);
    assert_int_equal(dps_retry_after_s(1001), 2);
    assert_int_equal(dps_retry_after_s(86400000), 3600);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_burst_then_rate),
        cmocka_unit_test(test_bucket_small_rate),
        cmocka_unit_test(test_gcra_five_per_ten_seconds),
        cmocka_unit_test(test_keyed_gcra_and_sweep),
        cmocka_unit_test(test_keyed_gcra_peek_and_trim),
        cmocka_unit_test(test_minute_counter),
        cmocka_unit_test(test_retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
