/*
 * test_stamp_durability - a registration survives kill -9 of the agent
 * between the 202 and the allocation (stamp-agent/dps_device.c: the PUT
 * commits the row in 'assigning' before answering; a poll that finds the row
 * 'assigning' with no job in memory starts one; the job settles the row at
 * most once).
 *
 * Instance registrationsPerMinute 1 with "throttle":"gentle": the first
 * device takes the only token (its allocation runs at once), the second is
 * deferred (202 assigning, the row stays 'assigning' with no job). kill -9
 * right after the second 202, restart, then poll both operations and
 * register a third time: every device is assigned exactly once (one row,
 * assigned, the hub counts add up, the group's registrationCounts agree).
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

#define SCOPE "0ne000DUR01"
#define HUB_A "hub-a.dur.test.net"
#define HUB_B "hub-b.dur.test.net"

static struct ts_stamp *st;
static const char *gkey;

static int group_setup(void **state)
{
    (void)state;
    struct ts_stamp_opts o = {
        .name = "durability",
        .inst = { { .id = "dur-dps", .scope = SCOPE, .per_minute = 1, .throttle = "gentle" } },
        .hubs = { { .id = "hub-a", .host = HUB_A, .weight = 1 }, { .id = "hub-b", .host = HUB_B, .weight = 1 } },
    };
    st = ts_stamp_start(&o);
    gkey = ts_random_key(64);
    ts_stamp_put_symkey_group(st, "grp-dur", gkey, ts_random_key(64));
    return 0;
}

static const char *sas(const char *regid)
{
    return ts_device_sas(SCOPE, regid, ts_derive_key(gkey, regid), 0);
}

static const char *row(const char *regid, const char *col)
{
    return ts_pg_scalar(st->db, ts_str("SELECT %s FROM dps_registrations WHERE registration_id = '%s'", col, regid));
}

/* Poll the operation (honouring Retry-After) until it is no longer assigning. */
static struct ts_resp *poll_op(const char *regid, const char *op, int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    struct ts_resp *r;
    for (;;) {
        r = ts_stamp_operation(st, SCOPE, regid, op, sas(regid));
        if (r->status == 429 || r->status == 202 ||
            (r->status == 200 && ts_jstr(r->json, "status") && strcmp(ts_jstr(r->json, "status"), "assigning") == 0)) {
            const char *ra = ts_header(r, "Retry-After");
            if (ts_now_ms() > deadline)
                ts_fail("%s: operation %s still not settled after %d ms: %s", regid, op, timeout_ms, ts_resp_str(r));
            ts_sleep_ms(ra ? atoi(ra) * 1000 + 50 : 1000);
            continue;
        }
        return r;
    }
}

static void expect_assigned(struct ts_resp *r, const char *regid, const char *op, const char *substatus)
{
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    if (op)
        TS_EXPECT_STREQ(ts_jstr(r->json, "operationId"), op);
    json_t *rs = json_object_get(r->json, "registrationState");
    TS_EXPECT_STREQ(ts_jstr(rs, "registrationId"), regid);
    TS_EXPECT_STREQ(ts_jstr(rs, "deviceId"), regid);
    TS_EXPECT_STREQ(ts_jstr(rs, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(rs, "substatus"), substatus);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(rs, "symmetricKey"), "enrollmentGroupId"), "grp-dur");
    const char *hub = ts_jstr(rs, "assignedHub");
    if (!hub || (strcmp(hub, HUB_A) != 0 && strcmp(hub, HUB_B) != 0))
        ts_fail("%s: assignedHub is not a stamp hub: %s", regid, ts_resp_str(r));
    /* the database agrees */
    TS_EXPECT_STREQ(row(regid, "status"), "assigned");
    TS_EXPECT_STREQ(row(regid, "assigned_hub"), hub);
}

static void test_kill_after_202(void **state)
{
    (void)state;
    /* dev-d-1 takes the only token */
    struct ts_resp *r1 = ts_stamp_register(st, SCOPE, "dev-d-1", sas("dev-d-1"), NULL);
    TS_EXPECT_STATUS(r1, 202);
    TS_EXPECT_STREQ(ts_jstr(r1->json, "status"), "assigning");
    const char *op1 = ts_jstr(r1->json, "operationId");
    assert_non_null(op1);
    /* dev-d-2 is deferred by the gentle throttle */
    struct ts_resp *r2 = ts_stamp_register(st, SCOPE, "dev-d-2", sas("dev-d-2"), NULL);
    TS_EXPECT_STATUS(r2, 202);
    TS_EXPECT_STREQ(ts_jstr(r2->json, "status"), "assigning");
    const char *op2 = ts_jstr(r2->json, "operationId");
    assert_non_null(op2);
    ts_stamp_kill(st, SIGKILL);
    ts_log("killed the agent right after the 202s: dev-d-1 %s, dev-d-2 %s", row("dev-d-1", "status"),
           row("dev-d-2", "status"));

    /* committed before the 202 */
    TS_EXPECT_STREQ(row("dev-d-1", "operation_id"), op1);
    TS_EXPECT_STREQ(row("dev-d-2", "operation_id"), op2);
    TS_EXPECT_STREQ(row("dev-d-2", "status"), "assigning");

    ts_stamp_restart(st);
    expect_assigned(poll_op("dev-d-2", op2, 30000), "dev-d-2", op2, "initialAssignment");
    expect_assigned(poll_op("dev-d-1", op1, 30000), "dev-d-1", op1, "initialAssignment");
    /* polling again answers the same */
    expect_assigned(poll_op("dev-d-2", op2, 10000), "dev-d-2", op2, "initialAssignment");

    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations"), 2);
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE status = 'assigned' "
                                         "AND assigned_hub IN ('" HUB_A "','" HUB_B "')"),
                     2);
}

static void test_reregister_after_restart(void **state)
{
    (void)state;
    const char *hub = row("dev-d-2", "assigned_hub");
    /* kill -9 again, with nothing in flight, then a new registration of dev-d-2 */
    ts_stamp_kill(st, SIGKILL);
    ts_stamp_restart(st);
    struct ts_resp *r = ts_stamp_register(st, SCOPE, "dev-d-2", sas("dev-d-2"), NULL);
    TS_EXPECT_STATUS(r, 202);
    const char *op = ts_jstr(r->json, "operationId");
    assert_non_null(op);
    ts_stamp_kill(st, SIGKILL);
    ts_stamp_restart(st);
    r = poll_op("dev-d-2", op, 30000);
    expect_assigned(r, "dev-d-2", op, "deviceDataMigrated");
    TS_EXPECT_STREQ(ts_jstr(json_object_get(r->json, "registrationState"), "assignedHub"), hub);

    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations"), 2);
    assert_int_equal(ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE registration_id = 'dev-d-2'"),
                     1);
    /* hub counts: each assigned device counted once */
    long a = ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE status='assigned' AND assigned_hub='" HUB_A "'");
    long b = ts_pg_count(st->db, "SELECT count(*) FROM dps_registrations WHERE status='assigned' AND assigned_hub='" HUB_B "'");
    assert_int_equal(a + b, 2);
    struct ts_resp *c = ts_stamp_service(st, NULL, "GET",
                                         "/enrollmentGroups/grp-dur/registrationCounts?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(c, 200);
    assert_int_equal(ts_jint(c->json, "assigned", -1), 2);
    assert_int_equal(ts_jint(c->json, "assigning", -1), 0);
    assert_int_equal(ts_jint(c->json, "failed", -1), 0);
    /* the service view */
    struct ts_resp *s = ts_stamp_service(st, NULL, "GET", "/registrations/dev-d-2?api-version=2021-10-01", NULL);
    TS_EXPECT_STATUS(s, 200);
    TS_EXPECT_STREQ(ts_jstr(s->json, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(s->json, "assignedHub"), hub);
}

int main(void)
{
    ts_init("test_stamp_durability");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_after_202),
        cmocka_unit_test(test_reregister_after_restart),
    };
    return ts_finish(cmocka_run_group_tests(tests, group_setup, NULL));
}
