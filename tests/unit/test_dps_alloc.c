/*
 * test_dps_alloc.c - the built-in allocation policies: weighted hashed
 * allocation is stable per registration id, proportional to the weights,
 * moves only the devices of a removed hub, and skips full and excluded hubs;
 * static and geoLatency picks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "dps_alloc.h"

#define N_IDS 60000

static void test_policy_parse(void **state)
{
    (void)state;
    assert_int_equal(dps_policy_parse(NULL), DPS_POLICY_HASHED);
    assert_int_equal(dps_policy_parse(""), DPS_POLICY_HASHED);
    assert_int_equal(dps_policy_parse("hashed"), DPS_POLICY_HASHED);
    assert_int_equal(dps_policy_parse("static"), DPS_POLICY_STATIC);
    assert_int_equal(dps_policy_parse("geoLatency"), DPS_POLICY_GEO);
    assert_int_equal(dps_policy_parse("custom"), DPS_POLICY_CUSTOM);
    assert_int_equal(dps_policy_parse("Hashed"), DPS_POLICY_INVALID);
}

static void test_hashed_stable_and_weighted(void **state)
{
    struct dps_alloc_hub hubs[3] = {
        {"hub1.example.net", 1, 0, 1000000, false},
        {"hub2.example.net", 3, 0, 1000000, false},
        {"hub3.example.net", 6, 0, 1000000, false},
    };
    int count[3] = {0, 0, 0};
    char id[32];
    (void)state;
    for (int i = 0; i < N_IDS; i++) {
        int a, b;
        snprintf(id, sizeof id, "device-%d", i);
        a = dps_alloc_hashed(hubs, 3, id);
        b = dps_alloc_hashed(hubs, 3, id);
        assert_int_equal(a, b);
        assert_in_range(a, 0, 2);
        count[a]++;
    }
    /* expected 10 % / 30 % / 60 %, within 1.5 points */
    assert_in_range(count[0], N_IDS * 85 / 1000, N_IDS * 115 / 1000);
    assert_in_range(count[1], N_IDS * 285 / 1000, N_IDS * 315 / 1000);
    assert_in_range(count[2], N_IDS * 585 / 1000, N_IDS * 615 / 1000);
}

static void test_hashed_removal_moves_only_that_hub(void **state)
{
    struct dps_alloc_hub hubs[3] = {
        {"hub1.example.net", 2, 0, 1000000, false},
        {"hub2.example.net", 2, 0, 1000000, false},
        {"hub3.example.net", 2, 0, 1000000, false},
    };
    char id[32];
    int moved = 0;
    (void)state;
    for (int i = 0; i < 20000; i++) {
        int before, after;
        snprintf(id, sizeof id, "dev-%d", i);
        hubs[1].excluded = false;
        hubs[1].devices = 0;
        before = dps_alloc_hashed(hubs, 3, id);
        hubs[1].devices = hubs[1].max_devices;        /* full */
        after = dps_alloc_hashed(hubs, 3, id);
        assert_int_not_equal(after, 1);
        if (before != 1)
            assert_int_equal(before, after);
        else
            moved++;
        hubs[1].devices = 0;
        hubs[1].excluded = true;                      /* excluded: same effect */
        assert_int_equal(dps_alloc_hashed(hubs, 3, id), after);
    }
    assert_in_range(moved, 20000 * 30 / 100, 20000 * 37 / 100);
}

static void test_no_eligible_hub(void **state)
{
    struct dps_alloc_hub hubs[2] = {
        {"a", 1, 5, 5, false},
        {"b", 1, 0, 10, true},
    };
    (void)state;
    assert_int_equal(dps_alloc_hashed(hubs, 2, "x"), -1);
    assert_int_equal(dps_alloc_static(hubs, 2), -1);
    assert_int_equal(dps_alloc_least_filled(hubs, 2), -1);
    assert_int_equal(dps_alloc_pick(DPS_POLICY_CUSTOM, hubs, 2, "x"), -1);
    assert_int_equal(dps_alloc_hashed(hubs, 0, "x"), -1);
}

static void test_static_and_geo(void **state)
{
    struct dps_alloc_hub hubs[3] = {
        {"a", 1, 10, 10, false},     /* full */
        {"b", 1, 50, 100, false},    /* 50 % */
        {"c", 1, 100, 1000, false},  /* 10 % */
    };
    (void)state;
    assert_int_equal(dps_alloc_pick(DPS_POLICY_STATIC, hubs, 3, "x"), 1);
    assert_int_equal(dps_alloc_pick(DPS_POLICY_GEO, hubs, 3, "x"), 2);
    hubs[0].devices = 0;
    assert_int_equal(dps_alloc_pick(DPS_POLICY_STATIC, hubs, 3, "x"), 0);
    assert_int_equal(dps_alloc_pick(DPS_POLICY_GEO, hubs, 3, "x"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_parse),
        cmocka_unit_test(test_hashed_stable_and_weighted),
        cmocka_unit_test(test_hashed_removal_moves_only_that_hub),
        cmocka_unit_test(test_no_eligible_hub),
        cmocka_unit_test(test_static_and_geo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
