/*
 * test_stamp_ops - the stamp-operation outbox (schema/geo/010, controlplane/
 * stamp_ops.c): a device's deprovision, retire and move reach its stamp,
 * checked through the stamp's own APIs (the DPS service API and the hub
 * registry, contract R), with the real stamp agents and the official Node
 * SDK device.
 *
 * Layout: geography eu with stamps eu-west-1 and eu-north-1, one DPS
 * instance and one hub each, both served by real agents with service
 * credentials. Control plane: stampOps.pollMs 200, maxBackoffMs 1000.
 *
 *  - deprovision: the registration (GET /registrations/{id}: 404 404202)
 *    and the hub identity (registry GET: 404 DeviceNotFound) are gone; the
 *    device history says stamp_removed; the outbox is empty;
 *  - retire: a disabled individual enrollment for the id exists (tagged
 *    managedBy stampcp, tenantId), the hub identity is status "disabled", the
 *    official SDK device with its group-derived key is refused (401) at the
 *    DPS, the control plane answers 410 device_retired;
 *  - move: after a reprovision to the other stamp the old registration stays
 *    while the device has not registered at the new one (the op waits,
 *    reported by GET /v1/dps-instances/{id}/stamp-ops), and goes once it has;
 *  - no service credentials + order per device: with the instance's
 *    serviceKey removed, deprovision, place again, retire: both ops wait
 *    (attempts, last_error "no usable service credentials", reported); the
 *    key back, they are delivered in order (history stamp_removed before
 *    stamp_disabled) and the stamp ends in the last op's state (refused);
 *  - a stamp answering 500 (the instance's endpoint pointed at a fake HTTPS
 *    server): the op is retried with attempts and "HTTP 500" recorded, never
 *    taken as done; the endpoint back, it is delivered.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define S2 "eu-north-1"
#define D1 "eu-west-1-dps"
#define D2 "eu-north-1-dps"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { "eu-north", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, 0 } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = S2, .region = "eu-north", .dps = { { D2, 0, 0 } }, .hubs = { { "eu-north-1-hub", 0 } } },
        { .id = NULL },
    },
};
static const char *const dps_ids[2] = { D1, D2 };
static struct ts_stamp agents[2];
static struct ts_tenant *acme;

/* ---- helpers ---- */

static const char *eu(void) { return ts_rt_geo_db(rt, "eu"); }

static struct ts_stamp *agent_of(const char *dps)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(dps_ids[i], dps) == 0)
            return &agents[i];
    ts_fail("no agent serves %s", dps);
}

/* The DPS instance of a locate or reprovision answer (its stamp's only one). */
static const char *dps_of(const json_t *answer)
{
    const char *stamp = ts_jstr(answer, "stamp");
    if (stamp && strcmp(stamp, S1) == 0)
        return D1;
    if (stamp && strcmp(stamp, S2) == 0)
        return D2;
    ts_fail("no known stamp in %s", ts_jdump(answer));
}

/* locate through the control plane: the device's DPS instance and ID scope */
static json_t *locate(const char *regid)
{
    struct ts_resp *r = ts_rt_locate(rt->cp[0], acme, regid);
    TS_EXPECT_STATUS(r, 200);
    return r->json;
}

/* The device registers at its instance with its group-derived key (curl):
 * its registrationState (assigned). */
static json_t *register_at(const char *dps, const char *scope, const char *regid)
{
    struct ts_resp *r = ts_stamp_provision(agent_of(dps), scope, regid,
                                           ts_device_sas(scope, regid, ts_derive_key(acme->key_b64, regid), 0),
                                           15000);
    json_t *st = r->json ? json_object_get(r->json, "registrationState") : NULL;
    if (r->status != 200 || !st || !ts_jstr(st, "assignedHub") || strcmp(ts_jstr(r->json, "status"), "assigned") != 0)
        ts_fail("%s did not register at %s: %d %s", regid, dps, r->status, ts_resp_str(r));
    return st;
}

static struct ts_resp *reg_get(const char *dps, const char *regid)
{
    return ts_stamp_service(agent_of(dps), NULL, "GET",
                            ts_str("/registrations/%s?api-version=2021-10-01&dpsInstance=%s", regid, dps), NULL);
}

static struct ts_resp *hub_get(const char *dps, const char *hub, const char *devid)
{
    return ts_stamp_hub(agent_of(dps), hub, "GET", ts_str("/devices/%s?api-version=2021-04-12", devid), NULL, NULL);
}

static bool reg_gone(const char *dps, const char *regid)
{
    struct ts_resp *r = reg_get(dps, regid);
    return r->status == 404 && ts_jint(r->json, "errorCode", 0) == 404202;
}

static bool hub_gone(const char *dps, const char *hub, const char *devid)
{
    struct ts_resp *r = hub_get(dps, hub, devid);
    return r->status == 404 && strstr(ts_resp_str(r), "DeviceNotFound") != NULL;
}

struct gone_wait {
    const char *dps, *regid, *hub, *devid;
};

static bool both_gone(void *arg)
{
    struct gone_wait *w = arg;
    return reg_gone(w->dps, w->regid) && hub_gone(w->dps, w->hub, w->devid);
}

static long ops_of(const char *regid)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = '%s'", regid));
}

static bool no_ops(void *arg)
{
    return ops_of(arg) == 0;
}

/* The events of the device's history through the admin API, "a,b,c". */
static const char *history(const char *regid)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/acme/devices/%s", regid), NULL);
    json_t *h, *e;
    size_t i;
    const char *out = "";
    TS_EXPECT_STATUS(r, 200);
    h = json_object_get(r->json, "history");
    json_array_foreach(h, i, e)
        out = ts_str("%s%s%s", out, i ? "," : "", ts_jstr(e, "event"));
    return out;
}

static json_t *backlog(const char *dps)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/stamp-ops", dps), NULL);
    TS_EXPECT_STATUS(r, 200);
    return r->json;
}

static bool backlog_empty(void *arg)
{
    return ts_jint(backlog(arg), "undelivered", -1) == 0;
}

/* ---- setup ---- */

static int setup(void **state)
{
    struct ts_rt_served_opts o = { .enrollment_sync_ms = 500, .policy = KEY_NAME,
                                   .cp_extra = "\"stampOps\": {\"pollMs\": 200, \"maxBackoffMs\": 1000}" };
    (void)state;
    rt = ts_rt_start_served_ready(&o, &layout, dps_ids, agents, 2);
    acme = ts_rt_tenant_synced(rt, D1, eu(), TS_RT_ACME_JSON);
    if (!ts_rt_group_synced(rt, D2, eu(), "acme", 0)) {
        int64_t deadline = ts_now_ms() + 15000;
        while (!ts_rt_group_synced(rt, D2, eu(), "acme", 0) && ts_now_ms() < deadline)
            ts_sleep_ms(100);
    }
    return 0;
}

/* ---- tests ---- */

static void test_deprovision(void **state)
{
    json_t *loc = locate("ops-dep-1"), *st;
    const char *dps = dps_of(loc), *hub, *dev;
    struct gone_wait w;
    int64_t t0;
    (void)state;

    st = register_at(dps, ts_jstr(loc, "idScope"), "ops-dep-1");
    hub = ts_str("%s", ts_jstr(st, "assignedHub"));
    dev = ts_str("%s", ts_jstr(st, "deviceId"));
    TS_EXPECT_STATUS(reg_get(dps, "ops-dep-1"), 200);
    TS_EXPECT_STATUS(hub_get(dps, hub, dev), 200);

    t0 = ts_now_ms();
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-dep-1/deprovision", NULL), 200);
    w = (struct gone_wait){ dps, "ops-dep-1", hub, dev };
    if (!ts_wait_until(both_gone, &w, 10000))
        ts_fail("10 s after the deprovision: registration %s, hub identity %s",
                ts_resp_str(reg_get(dps, "ops-dep-1")), ts_resp_str(hub_get(dps, hub, dev)));
    ts_log("deprovision reached the stamp in %lld ms", (long long)(ts_now_ms() - t0));
    if (!ts_wait_until(no_ops, "ops-dep-1", 5000))
        ts_fail("the op is still in the outbox");
    TS_EXPECT_STREQ(history("ops-dep-1"), "assigned,deprovisioned,stamp_removed");
    if (!ts_wait_until(backlog_empty, (void *)dps, 3000))   /* read every pollMs */
        ts_fail("the backlog still shows ops: %s", ts_jdump(backlog(dps)));
}

static bool retired_at_stamp(void *arg)
{
    const char **a = arg;   /* dps, regid, hub, devid */
    struct ts_resp *e = ts_stamp_service(agent_of(a[0]), NULL, "GET",
                                         ts_str("/enrollments/%s?api-version=2021-10-01&dpsInstance=%s", a[1], a[0]),
                                         NULL);
    struct ts_resp *h = hub_get(a[0], a[2], a[3]);
    return e->status == 200 && ts_jstr(e->json, "provisioningStatus") &&
           strcmp(ts_jstr(e->json, "provisioningStatus"), "disabled") == 0 && h->status == 200 &&
           ts_jstr(h->json, "status") && strcmp(ts_jstr(h->json, "status"), "disabled") == 0;
}

static void test_retire(void **state)
{
    json_t *loc = locate("ops-ret-1"), *st, *tags;
    const char *dps = dps_of(loc), *scope = ts_str("%s", ts_jstr(loc, "idScope"));
    struct ts_stamp at;
    const char *args[4];
    struct ts_resp *r;
    int rc;
    (void)state;

    /* the official SDK device registers with its group-derived key */
    at = (struct ts_stamp){ .hostport = agent_of(dps)->hostport };
    st = ts_sdk_symkey(&at, scope, "ops-ret-1", ts_derive_key(acme->key_b64, "ops-ret-1"), false, NULL, &rc);
    ts_log("SDK before retire: exit %d %s", rc, ts_jdump(st));
    assert_int_equal(rc, 0);
    args[0] = dps;
    args[1] = "ops-ret-1";
    args[2] = ts_str("%s", ts_jstr(st, "assignedHub"));
    args[3] = ts_str("%s", ts_jstr(st, "deviceId"));
    TS_EXPECT_STATUS(hub_get(dps, args[2], args[3]), 200);

    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-ret-1/retire", NULL), 200);
    if (!ts_wait_until(retired_at_stamp, args, 10000))
        ts_fail("not retired at the stamp 10 s after the retire: hub identity %s", ts_resp_str(hub_get(dps, args[2], args[3])));
    r = ts_stamp_service(agent_of(dps), NULL, "GET",
                         ts_str("/enrollments/ops-ret-1?api-version=2021-10-01&dpsInstance=%s", dps), NULL);
    tags = json_object_get(json_object_get(r->json, "initialTwin"), "tags");
    TS_EXPECT_STREQ(ts_jstr(tags, "managedBy"), "stampcp");
    TS_EXPECT_STREQ(ts_jstr(tags, "tenantId"), "acme");
    TS_EXPECT_STREQ(ts_jstr(hub_get(dps, args[2], args[3])->json, "statusReason"), "retired by stampcp");

    /* the SDK device with the same key is refused at the DPS now */
    st = ts_sdk_symkey(&at, scope, "ops-ret-1", ts_derive_key(acme->key_b64, "ops-ret-1"), false, NULL, &rc);
    ts_log("SDK after retire: exit %d %s", rc, ts_jdump(st));
    assert_int_not_equal(rc, 0);
    if (!strstr(ts_jdump(st), "401") && !strstr(ts_jdump(st), "403") && !strstr(ts_jdump(st), "Unauthorized"))
        ts_fail("the retired device was not refused with 401/403: %s", ts_jdump(st));
    /* and the control plane answers 410 */
    TS_EXPECT_ERROR(ts_rt_locate(rt->cp[0], acme, "ops-ret-1"), 410, "device_retired");
    if (!ts_wait_until(no_ops, "ops-ret-1", 5000))
        ts_fail("the op is still in the outbox");
    TS_EXPECT_STREQ(history("ops-ret-1"), "assigned,retired,stamp_disabled");
}

struct move_wait {
    const char *old_dps, *regid;
};

static void test_move(void **state)
{
    json_t *loc = locate("ops-mov-1"), *st, *b;
    const char *old_dps = dps_of(loc), *old_stamp = ts_str("%s", ts_jstr(loc, "stamp"));
    const char *new_dps, *hub, *dev;
    struct ts_resp *r;
    struct gone_wait w;
    (void)state;

    st = register_at(old_dps, ts_jstr(loc, "idScope"), "ops-mov-1");
    hub = ts_str("%s", ts_jstr(st, "assignedHub"));
    dev = ts_str("%s", ts_jstr(st, "deviceId"));
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", old_stamp), "{\"status\":\"draining\"}"), 200);
    ts_rt_wait_layout(rt);
    r = ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-mov-1/reprovision", NULL);
    TS_EXPECT_STATUS(r, 200);
    new_dps = dps_of(r->json);
    if (strcmp(new_dps, old_dps) == 0)
        ts_fail("the reprovision did not move the device: %s", ts_resp_str(r));

    /* not registered at the new instance yet: the old registration stays, the op waits */
    ts_sleep_ms(1500);
    TS_EXPECT_STATUS(reg_get(old_dps, "ops-mov-1"), 200);
    TS_EXPECT_STATUS(hub_get(old_dps, hub, dev), 200);
    assert_int_equal(ops_of("ops-mov-1"), 1);
    b = backlog(old_dps);
    ts_log("while waiting: %s", ts_jdump(b));
    assert_int_equal(ts_jint(b, "undelivered", -1), 1);
    assert_int_equal(ts_jint(b, "failing", -1), 0);
    if (!ts_jstr(b, "lastError") || !strstr(ts_jstr(b, "lastError"), "waiting until the device is registered"))
        ts_fail("the backlog does not say the op waits: %s", ts_jdump(b));

    /* the device registers at the new instance: then the old registration goes */
    register_at(new_dps, ts_jstr(r->json, "idScope"), "ops-mov-1");
    w = (struct gone_wait){ old_dps, "ops-mov-1", hub, dev };
    if (!ts_wait_until(both_gone, &w, 10000))
        ts_fail("10 s after the device registered at %s: old registration %s", new_dps,
                ts_resp_str(reg_get(old_dps, "ops-mov-1")));
    TS_EXPECT_STATUS(reg_get(new_dps, "ops-mov-1"), 200);
    if (!ts_wait_until(no_ops, "ops-mov-1", 5000))
        ts_fail("the op is still in the outbox");
    TS_EXPECT_STREQ(history("ops-mov-1"), "assigned,moved,stamp_removed");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", old_stamp), "{\"status\":\"active\"}"), 200);
    ts_rt_wait_layout(rt);
}

static bool ops_failing(void *arg)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = '%s' AND attempts >= 2",
                                    (const char *)arg)) >= 1;
}

static void test_no_credentials_and_order(void **state)
{
    json_t *loc = locate("ops-ord-1"), *st, *b;
    const char *dps = dps_of(loc), *scope = ts_str("%s", ts_jstr(loc, "idScope"));
    const char *stamp = ts_str("%s", ts_jstr(loc, "stamp"));
    const char *err;
    struct ts_resp *r;
    struct ts_stamp at;
    int rc;
    (void)state;

    register_at(dps, scope, "ops-ord-1");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/dps-instances/%s", dps), "{\"serviceKey\":null}"), 200);

    /* deprovision, place again (on the other stamp: its first is made
     * draining, so the deprovision op can't be found obsolete), register,
     * retire: both ops wait, the second behind the first */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-ord-1/deprovision", NULL), 200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", stamp), "{\"status\":\"draining\"}"), 200);
    ts_rt_wait_layout(rt);
    loc = locate("ops-ord-1");
    if (strcmp(dps_of(loc), dps) == 0)
        ts_fail("placed again on the draining stamp: %s", ts_jdump(loc));
    register_at(dps_of(loc), ts_jstr(loc, "idScope"), "ops-ord-1");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-ord-1/retire", NULL), 200);
    if (!ts_wait_until(ops_failing, "ops-ord-1", 10000))
        ts_fail("no failed attempts recorded without credentials");
    err = ts_pg_scalar(eu(), "SELECT last_error FROM stamp_ops WHERE registration_id = 'ops-ord-1' ORDER BY id LIMIT 1");
    ts_log("without credentials: %s", err);
    if (!err || !strstr(err, "no usable service credentials"))
        ts_fail("last_error: %s", err ? err : "(none)");
    b = backlog(dps);
    ts_log("backlog: %s", ts_jdump(b));
    if (ts_jint(b, "undelivered", -1) < 1 || ts_jint(b, "failing", -1) < 1 ||
        !strstr(ts_jstr(b, "lastError") ? ts_jstr(b, "lastError") : "", "service credentials"))
        ts_fail("the backlog does not report the waiting ops: %s", ts_jdump(b));
    /* the later op of the device never went first */
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM stamp_ops WHERE registration_id = 'ops-ord-1'"
                                           " AND op = 'retire' AND attempts > 0"), 0);

    /* the key back: delivered in order, the stamp in the last op's state */
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/dps-instances/%s", dps),
                              ts_json("{'serviceKey':'%s'}", agent_of(dps)->policy_key)), 200);
    if (!ts_wait_until(no_ops, "ops-ord-1", 15000))
        ts_fail("the ops were not delivered 15 s after the key came back: %s",
                ts_pg_scalar(eu(), "SELECT string_agg(op || ':' || coalesce(last_error, ''), '; ') FROM stamp_ops"));
    ts_log("history: %s", history("ops-ord-1"));
    /* in order: the deprovision at the first instance, then the retire at the second */
    TS_EXPECT_STREQ(history("ops-ord-1"), "assigned,deprovisioned,assigned,retired,stamp_removed,stamp_disabled");
    if (!reg_gone(dps, "ops-ord-1"))
        ts_fail("the first instance still has the registration");
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/stamps/%s", stamp), "{\"status\":\"active\"}"), 200);
    ts_rt_wait_layout(rt);
    r = ts_stamp_service(agent_of(dps_of(loc)), NULL, "GET",
                         ts_str("/enrollments/ops-ord-1?api-version=2021-10-01&dpsInstance=%s", dps_of(loc)),
                         NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "provisioningStatus"), "disabled");
    at = (struct ts_stamp){ .hostport = agent_of(dps_of(loc))->hostport };
    st = ts_sdk_symkey(&at, ts_jstr(loc, "idScope"), "ops-ord-1", ts_derive_key(acme->key_b64, "ops-ord-1"), false,
                       NULL, &rc);
    assert_int_not_equal(rc, 0);
    ts_log("SDK after the ops: %s", ts_jdump(st));
}

static bool op_failed_500(void *arg)
{
    const char *e = ts_pg_scalar(eu(), ts_str("SELECT last_error FROM stamp_ops WHERE registration_id = '%s'"
                                              " AND attempts >= 2", (const char *)arg));
    return e && strstr(e, "HTTP 500");
}

static void test_stamp_answers_500(void **state)
{
    json_t *loc = locate("ops-500-1"), *st;
    const char *dps = dps_of(loc), *crt, *key, *hub, *dev;
    const char *log = ts_str("%s/fakehttps.log", ts_tmp());
    int port = ts_free_port();
    char *argv[8];
    struct ts_proc *fake;
    struct gone_wait w;
    (void)state;

    st = register_at(dps, ts_jstr(loc, "idScope"), "ops-500-1");
    hub = ts_str("%s", ts_jstr(st, "assignedHub"));
    dev = ts_str("%s", ts_jstr(st, "deviceId"));
    ts_pki_server(&crt, &key);
    argv[0] = "/usr/bin/python3";
    argv[1] = (char *)ts_str("%s/tests/support/fakehttps.py", ts_env("STAMPCP_SOURCE_DIR"));
    argv[2] = (char *)ts_str("%d", port);
    argv[3] = (char *)crt;
    argv[4] = (char *)key;
    argv[5] = "500";
    argv[6] = NULL;
    fake = ts_proc_spawn("fakehttps", argv, log, NULL);
    for (int i = 0; i < 50 && !ts_file_contains(log, "listening"); i++)
        ts_sleep_ms(100);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/dps-instances/%s", dps),
                              ts_json("{'endpoint':'127.0.0.1:%d'}", port)), 200);
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/ops-500-1/deprovision", NULL), 200);
    if (!ts_wait_until(op_failed_500, "ops-500-1", 10000))
        ts_fail("no failed attempt with HTTP 500 recorded: %s",
                ts_pg_scalar(eu(), "SELECT attempts || ' ' || coalesce(last_error, '') FROM stamp_ops"
                                   " WHERE registration_id = 'ops-500-1'"));
    ts_log("against the 500 stamp: %s", ts_pg_scalar(eu(), "SELECT attempts || ' ' || last_error FROM stamp_ops"
                                                            " WHERE registration_id = 'ops-500-1'"));
    /* never taken as done */
    TS_EXPECT_STATUS(reg_get(dps, "ops-500-1"), 200);
    assert_int_equal(ops_of("ops-500-1"), 1);

    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "PATCH", ts_str("/v1/dps-instances/%s", dps),
                              ts_json("{'endpoint':'%s'}", agent_of(dps)->hostport)), 200);
    w = (struct gone_wait){ dps, "ops-500-1", hub, dev };
    if (!ts_wait_until(both_gone, &w, 10000))
        ts_fail("not delivered 10 s after the endpoint came back");
    if (!ts_wait_until(no_ops, "ops-500-1", 5000))
        ts_fail("the op is still in the outbox");
    ts_proc_kill(fake, SIGTERM);
    ts_proc_wait(fake, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deprovision),
        cmocka_unit_test(test_retire),
        cmocka_unit_test(test_move),
        cmocka_unit_test(test_no_credentials_and_order),
        cmocka_unit_test(test_stamp_answers_500),
    };
    ts_init("test_stamp_ops");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
