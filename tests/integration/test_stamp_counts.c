/*
 * test_stamp_counts - a stamp agent's registration counts survive its
 * restart (issue 14, finding 10): with maxRegistrations 3 and three devices
 * assigned, a restarted agent never assigns a fourth device: first
 * allocations wait until it has read the count from its database, then the
 * registration fails with 403002; and
 * its first load report says 3 registrations, not 0. Registrations running
 * at the same time count too: of 6 devices registering at once with room for
 * one, exactly one is assigned.
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

#define SCOPE "0ne000CNT01"
#define HUB "hub-a.cnt.test.net"

static struct ts_stamp *st;
static const char *gkey;

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "counts",
        .inst = { { .id = "cnt-dps", .scope = SCOPE, .max_registrations = 3 } },
        .hubs = { { .id = "hub-a", .host = HUB, .weight = 1 } },
    };
    st = ts_stamp_start(&o);
    gkey = ts_random_key(64);
    ts_stamp_put_symkey_group(st, "grp-cnt", gkey, ts_random_key(64));
    return 0;
}

static const char *sas(const char *regid)
{
    return ts_device_sas(SCOPE, regid, ts_derive_key(gkey, regid), 0);
}

static const char *assigned_rows(void)
{
    return ts_pg_scalar(st->db, "SELECT count(*) FROM dps_registrations WHERE dps_id = 'cnt-dps' AND status = 'assigned'");
}

static bool is_quota_failure(const struct ts_resp *r)
{
    json_t *e = json_object_get(json_object_get(r->json, "registrationState"), "errorCode");
    return r->status == 200 && ts_jstr(r->json, "status") && strcmp(ts_jstr(r->json, "status"), "failed") == 0 &&
           json_integer_value(e) == 403002;
}

/* The registrations the stamp's last load report names for cnt-dps. */
static long long reported(void)
{
    const char *load = ts_redis_cmd(st->redis->addr, "HGET stamp:counts-%ld:load load", (long)getpid());
    json_t *j = load ? json_loads(load, 0, NULL) : NULL;
    json_t *dps = json_array_get(json_object_get(j, "dps"), 0);
    long long n = dps ? (long long)json_integer_value(json_object_get(dps, "registrations")) : -1;
    json_decref(j);
    return n;
}

static bool reports_three(void *arg)
{
    (void)arg;
    return reported() == 3;
}

static void test_restart_keeps_count(void **state)
{
    struct ts_resp *r;
    int refused_503 = 0, refused_quota = 0;
    int64_t deadline;
    (void)state;
    for (int i = 1; i <= 3; i++) {
        r = ts_stamp_provision(st, SCOPE, ts_str("dev-%d", i), sas(ts_str("dev-%d", i)), 15000);
        TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    }
    r = ts_stamp_provision(st, SCOPE, "dev-4", sas("dev-4"), 15000);
    if (!is_quota_failure(r))
        ts_fail("the 4th registration should fail with 403002: %s", ts_resp_str(r));

    ts_stamp_kill(st, SIGKILL);
    ts_stamp_restart(st);
    /* from the first moment the new process listens: never a 4th assignment */
    deadline = ts_now_ms() + 10000;
    while (refused_quota == 0 && ts_now_ms() < deadline) {
        r = ts_stamp_provision(st, SCOPE, "dev-5", sas("dev-5"), 15000);
        if (r->status == 503 && ts_is_dps_error(r, 503) && ts_header(r, "Retry-After"))
            refused_503++;   /* the store not reachable yet: retryable, nothing assigned */
        else if (is_quota_failure(r))
            refused_quota++;
        else
            ts_fail("after the restart a registration beyond maxRegistrations answered: %s", ts_resp_str(r));
    }
    ts_log("after the restart: %d answered 503 (store not reachable yet), then 403002", refused_503);
    if (refused_quota == 0)
        ts_fail("the restarted agent never enforced maxRegistrations within 10 s");
    TS_EXPECT_STREQ(assigned_rows(), "3");
    if (!ts_wait_until(reports_three, NULL, 5000))
        ts_fail("the restarted agent's load report says %lld registrations, not 3 (%s)", reported(),
                ts_redis_cmd(st->redis->addr, "HGET stamp:counts-%ld:load load", (long)getpid()));
}

/* Six registrations at once with room for one (one released first). */
static void test_concurrent_first_registrations(void **state)
{
    struct ts_resp *r;
    const char *ops[6];
    int assigned = 0, quota = 0;
    (void)state;
    /* make room for exactly one more: delete dev-3's registration state */
    TS_EXPECT_STATUS(ts_stamp_service(st, NULL, "DELETE", "/registrations/dev-3?api-version=2021-10-01", NULL), 204);
    TS_EXPECT_STREQ(assigned_rows(), "2");
    ts_stamp_kill(st, SIGTERM);
    ts_stamp_restart(st);   /* the count is re-read: 2 held */
    for (int i = 0; i < 6; i++) {
        const char *id = ts_str("burst-%d", i);
        int64_t deadline = ts_now_ms() + 10000;
        do {
            r = ts_stamp_register(st, SCOPE, id, sas(id), NULL);
            if (r->status == 503)
                ts_sleep_ms(200);
        } while (r->status == 503 && ts_now_ms() < deadline);
        TS_EXPECT_STATUS(r, 202);
        ops[i] = ts_jstr(r->json, "operationId");
    }
    for (int i = 0; i < 6; i++) {
        const char *id = ts_str("burst-%d", i);
        int64_t deadline = ts_now_ms() + 15000;
        for (;;) {
            r = ts_stamp_operation(st, SCOPE, id, ops[i], sas(id));
            if (r->status == 200 && strcmp(ts_jstr(r->json, "status"), "assigning") != 0)
                break;
            if (ts_now_ms() > deadline)
                ts_fail("%s never settled: %s", id, ts_resp_str(r));
            ts_sleep_ms(200);
        }
        if (strcmp(ts_jstr(r->json, "status"), "assigned") == 0)
            assigned++;
        else if (is_quota_failure(r))
            quota++;
        else
            ts_fail("%s: %s", id, ts_resp_str(r));
        ts_log("%s: %s", id, ts_resp_str(r));
    }
    assert_int_equal(assigned, 1);
    assert_int_equal(quota, 5);
    TS_EXPECT_STREQ(assigned_rows(), "3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_keeps_count),
        cmocka_unit_test(test_concurrent_first_registrations),
    };
    ts_init("test_stamp_counts");
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
