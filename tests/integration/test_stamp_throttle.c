/*
 * test_stamp_throttle - an instance's registrationsPerMinute (token bucket,
 * stamp-agent/dps_device.c) seen by the official device SDK
 * (tests/sdk/burst.js: N concurrent registrations, group-derived keys).
 *
 *   "throttle":"reject", 60/min, 200 devices at once: about 60 (+ what the
 *   bucket refills during the burst) assigned, every other one fails with
 *   ThrottlingError / 429 (errorCode 429001) and leaves no registration row.
 *   "throttle":"gentle", 60/min, 200 devices at once on a second instance:
 *   all assigned (the SDK follows Retry-After), none got a 429 (the Node SDK
 *   gives up on one), and per window no more passed than the bucket allows:
 *   by t seconds after the first registration at most 60 + t + 1 assigned, so
 *   about 60 at once, then one a second (~140 s for the rest); the deferred
 *   ones were answered with the gentle 202 form. ctest TIMEOUT 420 for this.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define SCOPE_A "0ne000THR0A"
#define SCOPE_B "0ne000THR0B"
#define HUB_A "hub-a.thr.test.net"
#define HUB_B "hub-b.thr.test.net"

static struct ts_stamp *st;
static const char *key_a, *key_b;

static void make_group(const char *inst, const char *id, const char *key)
{
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "PUT",
                                      ts_str("/enrollmentGroups/%s?api-version=2021-10-01&dpsInstance=%s", id, inst),
                                      ts_json("{'enrollmentGroupId':'%s','attestation':{'type':'symmetricKey',"
                                              "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}",
                                              id, key, ts_random_key(64))),
                     200);
}

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "throttle",
        .inst = { { .id = "thr-a", .scope = SCOPE_A, .per_minute = 60, .throttle = "reject" },
                  { .id = "thr-b", .scope = SCOPE_B, .per_minute = 60, .throttle = "gentle" } },
        .hubs = { { .id = "hub-a", .host = HUB_A, .weight = 1 }, { .id = "hub-b", .host = HUB_B, .weight = 1 } },
    };
    ts_sdk_modules();
    st = ts_stamp_start(&o);
    key_a = ts_random_key(64);
    key_b = ts_random_key(64);
    make_group("thr-a", "grp-thr-a", key_a);
    make_group("thr-b", "grp-thr-b", key_b);
    return 0;
}

static json_t *burst(const char *scope, const char *prefix, int n, const char *key, int timeout_ms)
{
    int rc;
    const char *args[] = { st->hostport, scope, prefix, ts_str("%d", n), key, "group", NULL };
    json_t *r = ts_node("burst.js", args, timeout_ms, &rc);
    if (rc != 0 || !json_is_array(json_object_get(r, "results")) ||
        json_array_size(json_object_get(r, "results")) != (size_t)n)
        ts_fail("burst.js %s x%d failed (exit %d): %s", prefix, n, rc, ts_jdump(r));
    return r;
}

static bool is_hub(const char *h)
{
    return h && (strcmp(h, HUB_A) == 0 || strcmp(h, HUB_B) == 0);
}

static void test_reject(void **state)
{
    (void)state;
    json_t *r = burst(SCOPE_A, "rej-", 200, key_a, 90000);
    json_int_t elapsed = ts_jint(r, "elapsedMs", 0);
    int assigned = 0, throttled = 0;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(r, "results"), i, d) {
        if (json_is_true(json_object_get(d, "ok"))) {
            if (strcmp(ts_jstr(d, "status") ? ts_jstr(d, "status") : "", "assigned") != 0 ||
                !is_hub(ts_jstr(d, "assignedHub")))
                ts_fail("a device succeeded without an assignment: %s", ts_jdump(d));
            assigned++;
        } else if (ts_jint(d, "statusCode", 0) == 429) {
            const char *cls = ts_jstr(d, "error");
            if (!cls || strcmp(cls, "ThrottlingError") != 0 ||
                ts_jint(json_object_get(d, "responseBody"), "errorCode", 0) != 429001)
                ts_fail("a 429 that is not ThrottlingError / errorCode 429001: %s", ts_jdump(d));
            throttled++;
        } else {
            ts_fail("a device failed with something other than 429: %s", ts_jdump(d));
        }
    }
    /* refill: one token per second of the burst, plus one for rounding */
    long max_assigned = 60 + (long)(elapsed / 1000) + 1;
    ts_log("reject: %d assigned, %d throttled in %lld ms (allowed 60..%ld)", assigned, throttled,
           (long long)elapsed, max_assigned);
    assert_int_equal(assigned + throttled, 200);
    if (assigned < 60 || assigned > max_assigned)
        ts_fail("reject: %d devices assigned in %lld ms, expected 60..%ld (registrationsPerMinute 60)", assigned,
                (long long)elapsed, max_assigned);
    /* a rejected registration leaves no row; every accepted one is assigned */
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'thr-a'"), assigned);
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'thr-a' "
                                         "AND status = 'assigned'"),
                     assigned);
}

#define GENTLE_N 200
#define GENTLE_PER_MINUTE 60

static void test_gentle(void **state)
{
    (void)state;
    int64_t t0 = ts_now_ms();
    json_t *r = burst(SCOPE_B, "gen-", GENTLE_N, key_b, 300000);
    json_int_t elapsed = ts_jint(r, "elapsedMs", 0), slowest = 0;
    const char *rows;
    int k = 0, win[4] = {0, 0, 0, 0};
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(r, "results"), i, d) {
        if (!json_is_true(json_object_get(d, "ok")) || strcmp(ts_jstr(d, "status") ? ts_jstr(d, "status") : "",
                                                              "assigned") != 0 ||
            !is_hub(ts_jstr(d, "assignedHub")))
            ts_fail("gentle: a device was not assigned: %s", ts_jdump(d));
        if (ts_jint(d, "ms", 0) > slowest)
            slowest = ts_jint(d, "ms", 0);
    }
    ts_log("gentle: %d assigned in %lld ms (slowest device %lld ms, run %lld ms)", GENTLE_N, (long long)elapsed,
           (long long)slowest, (long long)(ts_now_ms() - t0));
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'thr-b' "
                                         "AND status = 'assigned'"),
                     GENTLE_N);
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'thr-b'"), GENTLE_N);

    /* Per window, from the stamp's own commit times: the k-th assignment, t
     * seconds after the first registration arrived, needs k <= 60 + t (the
     * bucket holds a minute's allowance and refills one a second) + 1. */
    rows = ts_pg_scalar(st->db, "SELECT string_agg(to_char(extract(epoch FROM updated_at - "
                                "(SELECT min(created_at) FROM dps_registrations WHERE dps_id = 'thr-b')), "
                                "'FM99990.000'), ' ' ORDER BY updated_at) FROM dps_registrations "
                                "WHERE dps_id = 'thr-b' AND status = 'assigned'");
    for (char *save = NULL, *tok = strtok_r(ts_str("%s", rows ? rows : ""), " ", &save); tok;
         tok = strtok_r(NULL, " ", &save)) {
        double t = strtod(tok, NULL);
        k++;
        if (k > GENTLE_PER_MINUTE + (int)t + 1)
            ts_fail("gentle: %d registrations assigned %.3f s after the first arrived; at %d/min at most %d may be",
                    k, t, GENTLE_PER_MINUTE, GENTLE_PER_MINUTE + (int)t + 1);
        win[t < 60 ? 0 : t < 120 ? 1 : t < 180 ? 2 : 3]++;
    }
    ts_log("gentle: assigned per minute window: %d, %d, %d, %d later", win[0], win[1], win[2], win[3]);
    assert_int_equal(k, GENTLE_N);
    /* the first window: the minute's allowance at once plus the refill; after
     * it one a second - and the deferred devices did get those tokens (the
     * gentle Retry-After brings them back in time: at least 2/3 of the rate) */
    if (win[0] < GENTLE_PER_MINUTE || win[0] > 2 * GENTLE_PER_MINUTE + 1)
        ts_fail("gentle: %d assigned in the first minute, expected %d..%d", win[0], GENTLE_PER_MINUTE,
                2 * GENTLE_PER_MINUTE + 1);
    if (win[1] > GENTLE_PER_MINUTE + 1 || win[1] < (GENTLE_N - win[0] < 40 ? GENTLE_N - win[0] : 40))
        ts_fail("gentle: %d assigned in the second minute, expected at most %d and at least %d", win[1],
                GENTLE_PER_MINUTE + 1, GENTLE_N - win[0] < 40 ? GENTLE_N - win[0] : 40);
    if (win[2] > GENTLE_PER_MINUTE + 1)
        ts_fail("gentle: %d assigned in the third minute, expected at most %d", win[2], GENTLE_PER_MINUTE + 1);
    if (win[3] > 0)
        ts_fail("gentle: %d devices still waited after three minutes", win[3]);
}

int main(void)
{
    ts_init("test_stamp_throttle");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reject),
        cmocka_unit_test(test_gentle),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
