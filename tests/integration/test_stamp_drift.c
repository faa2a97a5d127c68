/*
 * test_stamp_drift - the registration drift report and orphan repair
 * (controlplane/stamp_drift.c, GET /v1/dps-instances/{id}/registration-drift)
 * with two real control planes, a real stamp agent serving the DPS device and
 * service API (its registry routes, docs/stamp-dps.md) and the stamp
 * operation outbox delivering the repairs. No mock.
 *
 * Layout: geography eu, region eu-west, stamp eu-west-1 with DPS instance
 * eu-west-1-dps (service credentials: the enrollment reconciler keeps the
 * tenant's group there) and one hub. stampDrift: a pass every 300 ms, grace
 * GRACE_S seconds.
 *
 * Covered:
 *  - the comparison itself (cp_stamp_drift_claim/_record on the geography
 *    database, an instance outside the catalog): the lease (a second router
 *    neither claims nor records), counts per tenant, unowned registrations,
 *    orphans (deprovisioned, moved, unknown; not assigned, retired, nor an
 *    enrollment's), the cursor walking and wrapping, orphans outside the
 *    sampled range kept, an unreachable stamp keeping them, a device
 *    assigned again no orphan, a registration gone forgotten, the repair
 *    enqueued once past the grace;
 *  - an unknown instance: 404 with the JSON error; a tenant's key: refused
 *    (platform route);
 *  - a device the control plane assigned that has not registered at the
 *    stamp yet: counted in "unregistered", listed with difference -1, still
 *    "ok"; once it registers, nothing is listed;
 *  - a device registered through the control plane: no drift ("ok"), and
 *    both control planes answer the same stored report;
 *  - a registration made directly at the stamp with the tenant's
 *    group-derived key (bypassing the control plane) shows as drift: acme's
 *    row controlPlane 2, stamp 3, difference 1, and an orphan in the sample
 *    with firstSeenAt/repairAt = firstSeenAt + grace;
 *  - after the grace it is repaired: the registration is gone at the stamp
 *    (service API 404), repaired >= 1, and a later report is "ok";
 *  - a directly made registration whose device the control plane assigns
 *    (locate) before the grace ends is no orphan any more and stays;
 *  - a device retired through the control plane (the outbox disables it at
 *    the stamp): its registration stays, no orphan, no difference ("ok");
 *  - the stamp down: status "unreachable" with the orphans seen before
 *    still listed; back up, the orphan is repaired.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define D1 "eu-west-1-dps"
#define GRACE_S 6

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, 0 } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = NULL },
    },
};
static struct ts_stamp agent[1];
static const char *const agent_dps[1] = { D1 };
static struct ts_tenant *acme;

/* ---- helpers ---- */

/* The host's wall clock in ms: what the reports' times (checkedAt, repairAt) are compared with
 * (ts_now_ms() is not wall time). The database runs on this host. */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct ts_resp *drift_at(struct ts_cp *cp, const char *dps)
{
    return ts_admin(cp, "GET", ts_str("/v1/dps-instances/%s/registration-drift", dps), NULL);
}

static json_t *drift(void)
{
    struct ts_resp *r = drift_at(rt->cp[0], D1);
    if (r->status != 200)
        ts_fail("GET registration-drift of %s: expected 200, got %s", D1, ts_resp_str(r));
    return r->json;
}

/* The orphan entry for regid in a report, or NULL. */
static json_t *orphan_in(json_t *report, const char *regid)
{
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(json_object_get(report, "sample"), "orphans"), i, o) {
        const char *id = ts_jstr(o, "registrationId");
        if (id && strcmp(id, regid) == 0)
            return o;
    }
    return NULL;
}

/* acme's row in a report's tenants (only tenants with a difference are listed), or NULL. */
static json_t *acme_row(json_t *report)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(report, "tenants"), i, t)
        if (ts_jstr(t, "tenantId") && strcmp(ts_jstr(t, "tenantId"), acme->id) == 0)
            return t;
    return NULL;
}

/* Register regid at the stamp directly with acme's group-derived key (no control plane). */
static void register_directly(const char *regid)
{
    const char *scope = ts_rt_id_scope(D1);
    struct ts_resp *r = ts_stamp_provision(&agent[0], scope, regid,
                                           ts_device_sas(scope, regid, ts_derive_key(acme->key_b64, regid), 0), 15000);
    if (r->status != 200 || !ts_jstr(r->json, "status") || strcmp(ts_jstr(r->json, "status"), "assigned") != 0)
        ts_fail("%s registered directly at the stamp: expected 200 assigned, got %s", regid, ts_resp_str(r));
}

/* The stamp's service API on one registration: 200 (there) or 404 (gone). */
static int stamp_registration_status(const char *regid)
{
    return ts_stamp_service(&agent[0], NULL, "GET",
                            ts_str("/registrations/%s?api-version=2021-10-01&dpsInstance=%s", regid, D1), NULL)->status;
}

struct want { const char *regid; const char *status; int64_t after_ms; };

static bool report_has_orphan(void *arg)
{
    struct want *w = arg;
    json_t *rep = drift();
    return orphan_in(rep, w->regid) != NULL && (!w->status || strcmp(ts_jstr(rep, "status"), w->status) == 0);
}

static bool report_without_orphan(void *arg)
{
    struct want *w = arg;
    json_t *rep = drift();
    return ts_parse_rfc3339(ts_jstr(rep, "checkedAt")) > w->after_ms && orphan_in(rep, w->regid) == NULL &&
           (!w->status || strcmp(ts_jstr(rep, "status"), w->status) == 0);
}

static bool registration_gone(void *arg)
{
    return stamp_registration_status(arg) == 404;
}

static bool report_status_is(void *arg)
{
    struct want *w = arg;
    json_t *rep = drift();
    return ts_parse_rfc3339(ts_jstr(rep, "checkedAt")) > w->after_ms && strcmp(ts_jstr(rep, "status"), w->status) == 0;
}

static void wait_report_status(const char *status, int timeout_ms)
{
    struct want w = { NULL, status, wall_ms() };
    if (!ts_wait_until(report_status_is, &w, timeout_ms))
        ts_fail("no report with status %s within %d ms: %s", status, timeout_ms, ts_jdump(drift()));
}

static void wait_orphan(const char *regid)
{
    struct want w = { regid, "drift", 0 };
    if (!ts_wait_until(report_has_orphan, &w, 10000))
        ts_fail("%s not reported as an orphan within 10 s: %s", regid, ts_jdump(drift()));
}

/* ---- the comparison, on the geography database (cp_stamp_drift_claim / _record, schema/geo/011) ---- */

#define SQL_DPS "sql-dps"   /* not in the catalog: no pass of the control planes touches it */

static json_t *sql_json(const char *sql)
{
    const char *v = ts_pg_scalar(ts_rt_geo_db(rt, "eu"), sql);
    return v ? ts_jkeep(json_loads(v, 0, NULL)) : NULL;
}

static bool sql_claim(const char *owner, const char **cursor)
{
    PGresult *r = ts_pg_query(ts_rt_geo_db(rt, "eu"),
                              ts_str("SELECT o_claimed, o_cursor FROM cp_stamp_drift_claim('" SQL_DPS "', '%s', 60000, 0)",
                                     owner));
    bool ok = PQntuples(r) == 1;
    if (ok && cursor)
        *cursor = PQgetisnull(r, 0, 1) ? NULL : ts_str("%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return ok;
}

/* cp_stamp_drift_record as owner; summary/items/after/next/error as SQL literals ("NULL" for none). */
static json_t *sql_record(const char *owner, const char *summary, const char *items, const char *after,
                          const char *next, int grace_s, const char *error)
{
    return sql_json(ts_str("SELECT cp_stamp_drift_record('" SQL_DPS "', '" S1 "', '%s', %s::jsonb, %s::jsonb, %s, %s, %d, 100, %s)",
                           owner, summary, items, after, next, grace_s, error));
}

static bool orphans_are(json_t *rep, const char *const *want)
{
    json_t *list = json_object_get(json_object_get(rep, "sample"), "orphans");
    size_t n = 0;
    while (want[n])
        n++;
    if (json_array_size(list) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!orphan_in(rep, want[i]))
            return false;
    return true;
}

#define EXPECT_ORPHANS(rep, ...) do { \
        const char *const w_[] = { __VA_ARGS__, NULL }; \
        if (!orphans_are((rep), w_)) ts_fail("orphans: expected " #__VA_ARGS__ ", report %s", ts_jdump(rep)); \
    } while (0)

/* ---- setup ---- */

static int setup(void **state)
{
    struct ts_rt_served_opts so = {
        .ncp = 2, .policy = KEY_NAME,
        .cp_extra = ts_str("\"stampDrift\": {\"intervalMs\": 300, \"graceSeconds\": %d, \"samplePage\": 1000}", GRACE_S),
    };
    (void)state;
    rt = ts_rt_start_served_ready(&so, &layout, agent_dps, agent, 1);
    acme = ts_rt_tenant_synced(rt, D1, agent[0].db, TS_RT_ACME_JSON);
    return 0;
}

/* ---- tests ---- */

static void test_comparison_sql(void **state)
{
    const char *geo = ts_rt_geo_db(rt, "eu"), *cursor = "x";
    const char *items1 = "'[{\"registrationId\":\"s-a\",\"owner\":\"tenant:sqlt\"},"
                         "{\"registrationId\":\"s-d\",\"owner\":\"tenant:sqlt\"},"
                         "{\"registrationId\":\"s-m\",\"owner\":\"tenant:sqlt\"},"
                         "{\"registrationId\":\"s-r\",\"owner\":\"tenant:sqlt\"},"
                         "{\"registrationId\":\"s-u\",\"owner\":\"tenant:sqlt\"},"
                         "{\"registrationId\":\"e-1\",\"owner\":\"enrollment:individual:e-1\"}]'";
    const char *summary = "'{\"owners\":[{\"owner\":\"tenant:sqlt\",\"assigned\":5,\"assigning\":0,\"failed\":0,"
                          "\"disabled\":0},{\"owner\":\"enrollment:individual:e-1\",\"assigned\":1}]}'";
    json_t *rep, *row;
    (void)state;
    /* s-a assigned here, s-d deprovisioned, s-r retired here, s-m moved to another instance; s-u unknown */
    PQclear(ts_pg_query(geo, "INSERT INTO devices (tenant_id, registration_id, status, stamp_id, dps_id) VALUES "
                             "('sqlt', 's-a', 'assigned', '" S1 "', '" SQL_DPS "'),"
                             "('sqlt', 's-d', 'deprovisioned', '" S1 "', '" SQL_DPS "'),"
                             "('sqlt', 's-r', 'retired', '" S1 "', '" SQL_DPS "'),"
                             "('sqlt', 's-m', 'assigned', '" S1 "', 'other-dps')"));
    /* the lease: one router at a time; the other's record is refused */
    assert_true(sql_claim("r1", &cursor));
    assert_null(cursor);
    assert_false(sql_claim("r2", NULL));
    assert_null(sql_record("r2", summary, items1, "NULL", "'s-u'", 3600, "NULL"));
    rep = sql_record("r1", summary, items1, "NULL", "'s-u'", 3600, "NULL");
    TS_EXPECT_STREQ(ts_jstr(rep, "status"), "drift");
    assert_int_equal(ts_jint(rep, "unowned", -1), 1);
    assert_int_equal(json_array_size(json_object_get(rep, "tenants")), 1);
    row = json_array_get(json_object_get(rep, "tenants"), 0);
    TS_EXPECT_STREQ(ts_jstr(row, "tenantId"), "sqlt");
    assert_int_equal(ts_jint(row, "controlPlane", -1), 1);
    assert_int_equal(ts_jint(row, "retired", -1), 1);
    assert_int_equal(ts_jint(row, "stamp", -1), 5);
    assert_int_equal(ts_jint(row, "difference", -1), 4);
    assert_int_equal(ts_jint(json_object_get(rep, "sample"), "checked", -1), 6);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(rep, "sample"), "cursor"), "s-u");
    EXPECT_ORPHANS(rep, "s-d", "s-m", "s-u");   /* not the assigned, the retired, nor an enrollment's */
    /* the lease was released; the next pass samples after the cursor, reaches the end and wraps */
    assert_true(sql_claim("r2", &cursor));
    TS_EXPECT_STREQ(cursor, "s-u");
    rep = sql_record("r2", summary, "'[]'", "'s-u'", "NULL", 3600, "NULL");
    EXPECT_ORPHANS(rep, "s-d", "s-m", "s-u");   /* outside the range sampled: kept */
    assert_null(ts_jstr(json_object_get(rep, "sample"), "cursor"));
    /* unreachable: the orphans stay, the cursor stays, nothing is repaired */
    assert_true(sql_claim("r1", &cursor));
    assert_null(cursor);
    rep = sql_record("r1", "NULL", "NULL", "NULL", "NULL", 0, "'connect: refused'");
    TS_EXPECT_STREQ(ts_jstr(rep, "status"), "unreachable");
    TS_EXPECT_STREQ(ts_jstr(rep, "error"), "connect: refused");
    EXPECT_ORPHANS(rep, "s-d", "s-m", "s-u");
    assert_int_equal(ts_jint(rep, "repairedLastPass", -1), 0);
    /* s-d assigned here again: no orphan; s-u gone from the stamp (absent from the range sampled): forgotten */
    PQclear(ts_pg_query(geo, "UPDATE devices SET status = 'assigned' WHERE tenant_id = 'sqlt' AND registration_id = 's-d'"));
    assert_true(sql_claim("r1", NULL));
    rep = sql_record("r1", summary, "'[{\"registrationId\":\"s-d\",\"owner\":\"tenant:sqlt\"},"
                                    "{\"registrationId\":\"s-m\",\"owner\":\"tenant:sqlt\"}]'",
                     "NULL", "NULL", 3600, "NULL");
    EXPECT_ORPHANS(rep, "s-m");
    /* past the grace (0 s): the repair is enqueued in the outbox, once */
    assert_true(sql_claim("r1", NULL));
    rep = sql_record("r1", summary, "'[{\"registrationId\":\"s-m\",\"owner\":\"tenant:sqlt\"}]'", "NULL", "NULL", 0,
                     "NULL");
    if (ts_pg_table_exists(geo, "stamp_ops")) {
        assert_int_equal(ts_jint(rep, "repairedLastPass", -1), 1);
        assert_non_null(ts_jstr(orphan_in(rep, "s-m"), "repairedAt"));
        assert_int_equal(ts_pg_count(geo, "SELECT count(*) FROM stamp_ops WHERE dps_id = '" SQL_DPS "' AND "
                                          "registration_id = 's-m' AND tenant_id = 'sqlt' AND op = 'deprovision' "
                                          "AND reason = 'orphan'"), 1);
        assert_true(sql_claim("r1", NULL));
        rep = sql_record("r1", summary, "'[{\"registrationId\":\"s-m\",\"owner\":\"tenant:sqlt\"}]'", "NULL", "NULL",
                         0, "NULL");
        assert_int_equal(ts_jint(rep, "repairedLastPass", -1), 0);   /* one undelivered op is enough */
        assert_int_equal(ts_jint(rep, "repaired", -1), 1);
        PQclear(ts_pg_query(geo, "DELETE FROM stamp_ops WHERE dps_id = '" SQL_DPS "'"));
    } else {
        assert_non_null(ts_jstr(rep, "repairError"));   /* no outbox in this build: said, not hidden */
    }
    PQclear(ts_pg_query(geo, "DELETE FROM devices WHERE tenant_id = 'sqlt'"));
}

static void test_not_found_and_scope(void **state)
{
    const char *key;
    (void)state;
    TS_EXPECT_ERROR(drift_at(rt->cp[0], "no-such-dps"), 404, "not_found");
    /* a tenant's key never reads a platform route */
    key = ts_api_key(rt->cp[0], NULL, acme->id, "[\"tenants:read\", \"devices:read\"]", NULL);
    {
        struct ts_resp *r = ts_call(rt->cp[0], key, "GET", "/v1/dps-instances/" D1 "/registration-drift", NULL);
        if (r->status != 403 && r->status != 404)
            ts_fail("a tenant key on registration-drift: expected 403 or 404, got %s", ts_resp_str(r));
        if (!json_object_get(r->json, "error"))
            ts_fail("the refusal is not the JSON error contract: %s", ts_resp_str(r));
    }
}

static bool report_unregistered_is(void *arg)
{
    struct want *w = arg;   /* status: the wanted "unregistered" count as text */
    json_t *rep = drift();
    return ts_parse_rfc3339(ts_jstr(rep, "checkedAt")) > w->after_ms &&
           ts_jint(rep, "unregistered", -1) == strtoll(w->status, NULL, 10);
}

/* A device the control plane assigned that has not registered at the stamp
 * yet (approach 1: locate first, register after) is counted, not drift. */
static void test_assigned_not_registered(void **state)
{
    const char *scope;
    struct ts_resp *r;
    struct want w = { NULL, "1", wall_ms() };
    json_t *rep, *row;
    (void)state;
    r = ts_rt_locate(rt->cp[0], acme, "dev-unreg");
    TS_EXPECT_STATUS(r, 200);
    scope = ts_jstr(r->json, "idScope");
    if (!ts_wait_until(report_unregistered_is, &w, 10000))
        ts_fail("no report counting 1 unregistered device within 10 s: %s", ts_jdump(drift()));
    rep = drift();
    TS_EXPECT_STREQ(ts_jstr(rep, "status"), "ok");
    row = acme_row(rep);
    if (!row)
        ts_fail("acme is not listed with its difference: %s", ts_jdump(rep));
    assert_int_equal(ts_jint(row, "difference", 0), -1);
    /* the device comes: nothing left to report */
    r = ts_stamp_provision(&agent[0], scope, "dev-unreg",
                           ts_device_sas(scope, "dev-unreg", ts_derive_key(acme->key_b64, "dev-unreg"), 0), 15000);
    TS_EXPECT_STATUS(r, 200);
    w.status = "0";
    w.after_ms = wall_ms();
    if (!ts_wait_until(report_unregistered_is, &w, 10000))
        ts_fail("the registered device is still counted unregistered: %s", ts_jdump(drift()));
    rep = drift();
    TS_EXPECT_STREQ(ts_jstr(rep, "status"), "ok");
    assert_int_equal(json_array_size(json_object_get(rep, "tenants")), 0);
}

static void test_in_sync(void **state)
{
    const char *scope;
    struct ts_resp *r;
    json_t *a, *b;
    (void)state;
    /* one device the control plane placed, registered with its answer */
    r = ts_rt_locate(rt->cp[0], acme, "dev-ok");
    TS_EXPECT_STATUS(r, 200);
    scope = ts_jstr(r->json, "idScope");
    r = ts_stamp_provision(&agent[0], scope, "dev-ok", ts_device_sas(scope, "dev-ok", ts_derive_key(acme->key_b64, "dev-ok"), 0),
                           15000);
    TS_EXPECT_STATUS(r, 200);
    wait_report_status("ok", 10000);
    a = drift();
    TS_EXPECT_STREQ(ts_jstr(a, "dpsInstanceId"), D1);
    TS_EXPECT_STREQ(ts_jstr(a, "tenantsListed"), "with_difference");
    assert_int_equal(json_array_size(json_object_get(a, "tenants")), 0);
    assert_int_equal(json_array_size(json_object_get(json_object_get(a, "sample"), "orphans")), 0);
    assert_true(ts_jint(json_object_get(a, "sample"), "checked", -1) >= 1);
    /* the report is stored in the geography database: the other control plane answers it too */
    b = drift_at(rt->cp[1], D1)->json;
    assert_non_null(b);
    TS_EXPECT_STREQ(ts_jstr(b, "dpsInstanceId"), D1);
    assert_non_null(ts_jstr(b, "checkedAt"));
}

static void test_orphan_reported_and_repaired(void **state)
{
    json_t *rep, *o, *row;
    int64_t first, due;
    struct want w = { "orph-1", "ok", 0 };
    int64_t t0;
    (void)state;
    t0 = ts_now_ms();
    register_directly("orph-1");
    wait_orphan("orph-1");
    ts_log("orph-1 reported as an orphan %lld ms after its registration began", (long long)(ts_now_ms() - t0));
    rep = drift();
    row = acme_row(rep);
    if (!row)
        ts_fail("acme not listed with a difference: %s", ts_jdump(rep));
    /* dev-ok and dev-unreg (the tests before) are the control plane's; orph-1 is not */
    assert_int_equal(ts_jint(row, "controlPlane", -1), 2);
    assert_int_equal(ts_jint(row, "stamp", -1), 3);
    assert_int_equal(ts_jint(row, "difference", -1), 1);
    o = orphan_in(rep, "orph-1");
    TS_EXPECT_STREQ(ts_jstr(o, "tenantId"), acme->id);
    first = ts_parse_rfc3339(ts_jstr(o, "firstSeenAt"));
    due = ts_parse_rfc3339(ts_jstr(o, "repairAt"));
    assert_int_equal(due - first, GRACE_S * 1000);
    /* still there before the grace ends */
    assert_int_equal(stamp_registration_status("orph-1"), 200);
    /* repaired after it: the outbox deletes the registration */
    if (!ts_wait_until(registration_gone, (void *)"orph-1", (GRACE_S + 20) * 1000))
        ts_fail("orph-1 still registered at the stamp %d s after the grace: %s", 20, ts_jdump(drift()));
    ts_log("orph-1 gone from the stamp %lld ms after its registration began (grace %d s)", (long long)(ts_now_ms() - t0),
           GRACE_S);
    if (wall_ms() < due)   /* the database and this test share the host's clock */
        ts_fail("orph-1 was removed before its repairAt (%lld ms early)", (long long)(due - wall_ms()));
    w.after_ms = wall_ms();
    if (!ts_wait_until(report_without_orphan, &w, 10000))
        ts_fail("no report without orph-1 and status ok after its repair: %s", ts_jdump(drift()));
    rep = drift();
    assert_true(ts_jint(rep, "repaired", 0) >= 1);
    assert_null(acme_row(rep));
    /* the device the control plane placed was left alone */
    assert_int_equal(stamp_registration_status("dev-ok"), 200);
}

static void test_assigned_again_not_removed(void **state)
{
    struct ts_resp *r;
    struct want w = { "back-1", NULL, 0 };
    (void)state;
    register_directly("back-1");
    wait_orphan("back-1");
    /* the control plane assigns it before the grace ends (one instance: the same one) */
    r = ts_rt_locate(rt->cp[0], acme, "back-1");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsInstance") ? ts_jstr(r->json, "dpsInstance") : D1, D1);
    w.after_ms = wall_ms();
    if (!ts_wait_until(report_without_orphan, &w, 10000))
        ts_fail("back-1 still an orphan after its assignment: %s", ts_jdump(drift()));
    /* well past the grace: it stays registered, and no orphan again */
    ts_sleep_ms((GRACE_S + 2) * 1000);
    assert_int_equal(stamp_registration_status("back-1"), 200);
    assert_null(orphan_in(drift(), "back-1"));
    wait_report_status("ok", 5000);
}

/* A retired device's registration stays at the stamp (disabled): neither an orphan nor a difference. */
static void test_retired_not_orphan(void **state)
{
    const char *scope;
    struct ts_resp *r;
    json_t *rep;
    (void)state;
    r = ts_rt_locate(rt->cp[0], acme, "ret-1");
    TS_EXPECT_STATUS(r, 200);
    scope = ts_jstr(r->json, "idScope");
    TS_EXPECT_STATUS(ts_stamp_provision(&agent[0], scope, "ret-1",
                                        ts_device_sas(scope, "ret-1", ts_derive_key(acme->key_b64, "ret-1"), 0), 15000),
                     200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", ts_str("/v1/tenants/%s/devices/ret-1/retire", acme->id), "{}"), 200);
    /* the outbox delivers the retire; then a pass finds nothing to report */
    {
        int64_t until = ts_now_ms() + 15000;
        for (;;) {
            rep = drift();
            if (ts_jint(rep, "pendingStampOps", -1) == 0 && strcmp(ts_jstr(rep, "status"), "ok") == 0)
                break;
            if (ts_now_ms() > until)
                ts_fail("no ok report with the retire delivered within 15 s: %s", ts_jdump(rep));
            ts_sleep_ms(200);
        }
    }
    wait_report_status("ok", 5000);   /* a pass after the delivery */
    rep = drift();
    assert_null(orphan_in(rep, "ret-1"));
    assert_null(acme_row(rep));
    assert_int_equal(stamp_registration_status("ret-1"), 200);   /* not removed */
}

static void test_unreachable_keeps_orphans(void **state)
{
    json_t *rep;
    (void)state;
    register_directly("orph-2");
    wait_orphan("orph-2");
    ts_proc_kill(agent[0].proc, SIGKILL);
    if (!ts_proc_wait(agent[0].proc, 5000))
        ts_fail("the stamp agent did not die");
    wait_report_status("unreachable", 10000);
    rep = drift();
    if (!orphan_in(rep, "orph-2"))
        ts_fail("the orphan seen before the stamp went down is not listed: %s", ts_jdump(rep));
    assert_non_null(ts_jstr(rep, "error"));
    /* back up: orph-2 is repaired like any orphan */
    ts_rt_dps_agent_restart(rt, S1, &agent[0]);
    if (!ts_wait_until(registration_gone, (void *)"orph-2", (GRACE_S + 25) * 1000))
        ts_fail("orph-2 still registered after the stamp came back: %s", ts_jdump(drift()));
    wait_report_status("ok", 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comparison_sql),
        cmocka_unit_test(test_not_found_and_scope),
        cmocka_unit_test(test_in_sync),
        cmocka_unit_test(test_assigned_not_registered),
        cmocka_unit_test(test_orphan_reported_and_repaired),
        cmocka_unit_test(test_assigned_again_not_removed),
        cmocka_unit_test(test_retired_not_orphan),
        cmocka_unit_test(test_unreachable_keeps_orphans),
    };
    ts_init("test_stamp_drift");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
