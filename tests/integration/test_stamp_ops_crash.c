/*
 * test_stamp_ops_crash - the stamp-operation outbox loses nothing: a stamp
 * that is down gets its ops when it comes back, and a kill -9 of the router
 * between the commit of a device change and its delivery does not lose it
 * (schema/geo/010, controlplane/stamp_ops.c, docs/architecture.md
 * "Stamp-operation outbox").
 *
 * One stamp (eu-west-1, one DPS instance, one hub) served by a real agent;
 * one control plane with stampOps.pollMs 200, maxBackoffMs 1000.
 *
 *  - down stamp: the agent killed (-9), retire is committed (200); the op
 *    waits with its attempts growing and last_error recorded, the delay
 *    between attempts capped; the agent back, the op is delivered (the
 *    enrollment disabled, the hub identity disabled), once;
 *  - outbox crash: the agent stopped, deprovision committed (200), the
 *    router killed with SIGKILL, the agent started, a router started: the
 *    registration and hub identity are gone, the outbox is empty and the
 *    device history holds exactly one stamp_removed;
 *  - a stamp that does not answer holds back only its own ops: 60 ops at a
 *    DPS instance whose endpoint stalls (each call ends at its 10 s deadline)
 *    are queued before a deprovision at the healthy instance; the deprovision
 *    is delivered after the first round (~10 s), not after every round of the
 *    dead instance's ops (~30 s): the worker holds a DPS instance that did
 *    not answer back from its claims for a while (per-instance backoff);
 *  - a device provisioned again while its deprovision is being delivered
 *    keeps what it registered: the op is claimed (device deprovisioned), its
 *    calls held by a stalled proxy; meanwhile the device is assigned again
 *    and registers again at the stamp; released, the op must not delete the
 *    new registration nor the new hub identity (it is skipped);
 *  - GET /v1/dps-instances/{id}/stamp-ops refuses a tenant's key (403, the
 *    JSON error), whatever its scopes;
 *  - shutdown: SIGTERM while a delivery hangs on a stalled connection to the
 *    stamp: exit 0 within 5 s, the op still in the outbox under its lease.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define D1 "eu-west-1-dps"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { D1, 0, 0 } }, .hubs = { { "eu-west-1-hub", 0 } } },
        { .id = NULL },
    },
};
static const char *const dps_ids[1] = { D1 };
static struct ts_stamp agents[1];
static struct ts_tenant *acme;

static const char *eu(void) { return ts_rt_geo_db(rt, "eu"); }

static int setup(void **state)
{
    struct ts_rt_served_opts o = { .enrollment_sync_ms = 500, .policy = KEY_NAME,
                                   .cp_extra = "\"stampOps\": {\"pollMs\": 200, \"maxBackoffMs\": 1000}" };
    (void)state;
    rt = ts_rt_start_served_ready(&o, &layout, dps_ids, agents, 1);
    acme = ts_rt_tenant_synced(rt, D1, eu(), TS_RT_ACME_JSON);
    return 0;
}

/* locate, then register at the stamp with the group-derived key: the registrationState */
static json_t *place_and_register(const char *regid)
{
    struct ts_resp *r = ts_rt_locate(rt->cp[0], acme, regid);
    const char *scope;
    json_t *st;
    TS_EXPECT_STATUS(r, 200);
    scope = ts_str("%s", ts_jstr(r->json, "idScope"));
    r = ts_stamp_provision(&agents[0], scope, regid, ts_device_sas(scope, regid, ts_derive_key(acme->key_b64, regid), 0),
                           15000);
    st = r->json ? json_object_get(r->json, "registrationState") : NULL;
    if (r->status != 200 || !st || !ts_jstr(st, "assignedHub"))
        ts_fail("%s did not register: %d %s", regid, r->status, ts_resp_str(r));
    return st;
}

static void agent_kill(void)
{
    ts_proc_kill(agents[0].proc, SIGKILL);
    ts_proc_wait(agents[0].proc, 5000);
}

/* wait_healthy: until the control plane sees the stamp healthy again */
static void agent_start(bool wait_healthy)
{
    ts_rt_dps_agent_start(rt, S1, D1, agents[0].db, agents[0].policy, &agents[0]);
    if (wait_healthy && !ts_rt_wait_health(rt, S1, "healthy", 10000))
        ts_fail("stamp %s not healthy 10 s after its agent started", S1);
}

static const char *op_state(const char *regid)
{
    return ts_pg_scalar(eu(), ts_str("SELECT attempts || ' | ' || coalesce(last_error, '') || ' | next in ' ||"
                                     " round(extract(epoch FROM next_at - now()) * 1000) || ' ms'"
                                     " FROM stamp_ops WHERE registration_id = '%s'", regid));
}

static long attempts(const char *regid)
{
    const char *a = ts_pg_scalar(eu(), ts_str("SELECT attempts FROM stamp_ops WHERE registration_id = '%s'", regid));
    return a ? atol(a) : -1;
}

static bool no_ops(void *arg)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = '%s'",
                                    (const char *)arg)) == 0;
}

static long events(const char *regid, const char *event)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM device_history WHERE registration_id = '%s'"
                                    " AND event = '%s'", regid, event));
}

static void test_down_stamp(void **state)
{
    json_t *st = place_and_register("crash-down-1");
    const char *hub = ts_str("%s", ts_jstr(st, "assignedHub")), *dev = ts_str("%s", ts_jstr(st, "deviceId"));
    struct ts_resp *r;
    long a1, a2;
    const char *max_delay;
    (void)state;

    agent_kill();
    TS_EXPECT_STATUS(ts_admin(rt->cp[0], "POST", "/v1/tenants/acme/devices/crash-down-1/retire", NULL), 200);
    ts_sleep_ms(2000);
    a1 = attempts("crash-down-1");
    ts_log("stamp down, 2 s after the retire: %s", op_state("crash-down-1"));
    if (a1 < 2)
        ts_fail("the op was not retried while the stamp is down: %s", op_state("crash-down-1"));
    if (!strstr(op_state("crash-down-1"), "GET registration at " D1))
        ts_fail("last_error does not say what failed: %s", op_state("crash-down-1"));
    /* the backoff is capped at maxBackoffMs (1000) */
    max_delay = ts_pg_scalar(eu(), "SELECT round(extract(epoch FROM next_at - now()) * 1000) FROM stamp_ops"
                                   " WHERE registration_id = 'crash-down-1'");
    /* (+50: a retry committed while this query starts has a later now()) */
    if (!max_delay || atol(max_delay) > 1050)
        ts_fail("the next attempt is %s ms away (cap 1000)", max_delay ? max_delay : "?");
    ts_sleep_ms(2000);
    a2 = attempts("crash-down-1");
    ts_log("4 s after: %s", op_state("crash-down-1"));
    if (a2 <= a1 || a2 > a1 + 6)
        ts_fail("attempts went from %ld to %ld in 2 s (capped backoff: about 2 more)", a1, a2);

    agent_start(true);
    if (!ts_wait_until(no_ops, "crash-down-1", 10000))
        ts_fail("not delivered 10 s after the stamp came back: %s", op_state("crash-down-1"));
    r = ts_stamp_service(&agents[0], NULL, "GET", "/enrollments/crash-down-1?api-version=2021-10-01&dpsInstance=" D1,
                         NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "provisioningStatus"), "disabled");
    r = ts_hub_registry(&agents[0], hub, ts_hub_sas(&agents[0], hub, NULL), "GET",
                        ts_str("/devices/%s?api-version=2021-04-12", dev), NULL, NULL);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "disabled");
    assert_int_equal(events("crash-down-1", "stamp_disabled"), 1);
}

static void test_kill_between_commit_and_delivery(void **state)
{
    json_t *st = place_and_register("crash-kill-1");
    const char *hub = ts_str("%s", ts_jstr(st, "assignedHub")), *dev = ts_str("%s", ts_jstr(st, "deviceId"));
    struct ts_cp *cp = rt->cp[0];
    struct ts_resp *r;
    (void)state;

    agent_kill();
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/tenants/acme/devices/crash-kill-1/deprovision", NULL), 200);
    ts_proc_kill(cp->proc, SIGKILL);
    ts_proc_wait(cp->proc, 5000);
    ts_log("router killed; the op: %s", op_state("crash-kill-1"));
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM stamp_ops WHERE registration_id = 'crash-kill-1'"
                                       " AND op = 'deprovision'"), 1);

    /* The router may have claimed the op in the moment before the kill: its
     * lease (90 s) would bring it back, beyond this test's time; end it now,
     * as time would. */
    ts_log("leases of the dead router ended by hand: %ld",
           ts_pg_count(eu(), "WITH u AS (UPDATE stamp_ops SET claimed_until = now() WHERE registration_id ="
                             " 'crash-kill-1' AND claimed_until > now() RETURNING 1) SELECT count(*) FROM u"));
    agent_start(false);   /* the router is dead: nobody to tell us it is healthy */
    ts_controlplane_spawn(cp);
    if (!ts_controlplane_wait_ready(cp, 20000))
        ts_fail("the router did not come back");
    if (!ts_wait_until(no_ops, "crash-kill-1", 15000))
        ts_fail("not delivered 15 s after the restart: %s", op_state("crash-kill-1"));
    r = ts_stamp_service(&agents[0], NULL, "GET", "/registrations/crash-kill-1?api-version=2021-10-01&dpsInstance=" D1,
                         NULL);
    assert_int_equal(r->status, 404);
    assert_int_equal(ts_jint(r->json, "errorCode", 0), 404202);
    r = ts_hub_registry(&agents[0], hub, ts_hub_sas(&agents[0], hub, NULL), "GET",
                        ts_str("/devices/%s?api-version=2021-04-12", dev), NULL, NULL);
    assert_int_equal(r->status, 404);
    if (!strstr(ts_resp_str(r), "DeviceNotFound"))
        ts_fail("hub registry: %s", ts_resp_str(r));
    /* exactly once: one delivery in the history, nothing left, nothing more after a while */
    ts_sleep_ms(1000);
    assert_int_equal(events("crash-kill-1", "stamp_removed"), 1);
    assert_int_equal(events("crash-kill-1", "stamp_op_skipped"), 0);
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM stamp_ops"), 0);
}

/* A DPS instance that does not answer must not starve the others: its ops
 * are held back from the claims for a while after a round of them failed. */
static void test_dead_instance_holds_back_only_its_ops(void **state)
{
    struct ts_tcpproxy *px = ts_tcpproxy_start(agents[0].hostport);
    struct ts_cp *cp = rt->cp[0];
    int64_t t0, took;
    (void)state;

    place_and_register("crash-hol-1");
    ts_tcpproxy_set_mode(px, TS_PROXY_STALL);
    ts_admin_post201(cp, "/v1/dps-instances",
                     ts_json("{'id':'eu-west-1-dead','stamp':'%s','idScope':'%s','endpoint':'%s',"
                             "'serviceKeyName':'%s','serviceKey':'%s'}", S1, ts_rt_id_scope("eu-west-1-dead"),
                             ts_tcpproxy_addr(px), agents[0].policy, agents[0].policy_key));
    /* three rounds' worth (20 a round), all due before the healthy one */
    assert_int_equal(ts_pg_count(eu(), "SELECT count(cp_stamp_op_enqueue('acme', 'dead-' || i, 'deprovision',"
                                       " 'eu-west-1-dead', '" S1 "', 'test')) FROM generate_series(1, 60) i"), 60);
    t0 = ts_now_ms();
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/tenants/acme/devices/crash-hol-1/deprovision", NULL), 200);
    if (!ts_wait_until(no_ops, "crash-hol-1", 40000))
        ts_fail("the healthy instance's op was not delivered in 40 s: %s", op_state("crash-hol-1"));
    took = ts_now_ms() - t0;
    ts_log("the healthy instance's op delivered %lld ms after its commit; dead instance: %s", (long long)took,
           ts_pg_scalar(eu(), "SELECT count(*) || ' ops, ' || sum(attempts) || ' attempts' FROM stamp_ops"
                              " WHERE dps_id = 'eu-west-1-dead'"));
    if (took > 22000)
        ts_fail("the healthy instance's op waited %lld ms behind a dead instance's ops", (long long)took);
    assert_int_equal(events("crash-hol-1", "stamp_removed"), 1);
    /* the dead instance's ops are still there, not lost */
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM stamp_ops WHERE dps_id = 'eu-west-1-dead'"), 60);
    ts_pg_count(eu(), "WITH d AS (DELETE FROM stamp_ops WHERE dps_id = 'eu-west-1-dead' RETURNING 1)"
                      " SELECT count(*) FROM d");
    ts_admin(cp, "DELETE", "/v1/dps-instances/eu-west-1-dead", NULL);
    ts_tcpproxy_stop(px);
}

static bool op_claimed(void *arg)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = '%s'"
                                    " AND claimed_until > now()", (const char *)arg)) == 1;
}

/* The claim said "deprovisioned", but the device was provisioned again and
 * registered again before the worker's calls reached the stamp. */
static void test_reprovisioned_during_delivery(void **state)
{
    json_t *st = place_and_register("crash-race-1");
    const char *hub = ts_str("%s", ts_jstr(st, "assignedHub")), *dev = ts_str("%s", ts_jstr(st, "deviceId"));
    struct ts_tcpproxy *px = ts_tcpproxy_start(agents[0].hostport);
    struct ts_cp *cp = rt->cp[0];
    struct ts_resp *r;
    (void)state;

    ts_tcpproxy_set_mode(px, TS_PROXY_HOLD);
    /* (the SAS names the agent's own host, as before) */
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/dps-instances/" D1,
                              ts_json("{'endpoint':'%s','serviceHostName':'%s'}", ts_tcpproxy_addr(px),
                                      agents[0].hostport)), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/tenants/acme/devices/crash-race-1/deprovision", NULL), 200);
    if (!ts_wait_until(op_claimed, "crash-race-1", 5000))
        ts_fail("the deprovision was not claimed: %s", op_state("crash-race-1"));
    for (int i = 0; i < 50 && ts_tcpproxy_live(px) == 0; i++)   /* its first call is held */
        ts_sleep_ms(50);
    /* provisioned again (assigned at D1 again) and registered again, directly at the agent */
    place_and_register("crash-race-1");
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM devices WHERE registration_id = 'crash-race-1'"
                                       " AND status = 'assigned' AND dps_id = '" D1 "'"), 1);
    ts_log("re-registered, the op held: %s; %d held connections", op_state("crash-race-1"), ts_tcpproxy_live(px));
    ts_tcpproxy_set_mode(px, TS_PROXY_PASS);
    if (!ts_wait_until(no_ops, "crash-race-1", 20000))
        ts_fail("the op did not settle: %s", op_state("crash-race-1"));
    ts_log("history: stamp_removed %ld, stamp_op_skipped %ld", events("crash-race-1", "stamp_removed"),
           events("crash-race-1", "stamp_op_skipped"));
    r = ts_stamp_service(&agents[0], NULL, "GET", "/registrations/crash-race-1?api-version=2021-10-01&dpsInstance=" D1,
                         NULL);
    if (r->status != 200)
        ts_fail("the device's new registration was deleted: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    r = ts_hub_registry(&agents[0], hub, ts_hub_sas(&agents[0], hub, NULL), "GET",
                        ts_str("/devices/%s?api-version=2021-04-12", dev), NULL, NULL);
    if (r->status != 200)
        ts_fail("the device's new hub identity was deleted: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "enabled");
    assert_int_equal(events("crash-race-1", "stamp_removed"), 0);
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/dps-instances/" D1,
                              ts_json("{'endpoint':'%s','serviceHostName':null}", agents[0].hostport)), 200);
    ts_tcpproxy_stop(px);
}

/* GET /v1/dps-instances/{id}/stamp-ops is a platform route: a tenant's key,
 * whatever its scopes, gets the JSON error (403), never the backlog. */
static void test_stamp_ops_route_platform_only(void **state)
{
    const char *key = ts_api_key(rt->cp[0], NULL, acme->id,
                                 "[\"tenants:read\", \"tenants:write\", \"devices:read\", \"devices:write\"]", NULL);
    struct ts_resp *r = ts_call(rt->cp[0], key, "GET", "/v1/dps-instances/" D1 "/stamp-ops", NULL);
    (void)state;
    TS_EXPECT_ERROR(r, 403, "insufficient_scope");
    if (strstr(ts_resp_str(r), "undelivered"))
        ts_fail("a tenant key read the backlog: %s", ts_resp_str(r));
    /* no credential: 401 before any lookup; an instance nobody knows: 404 */
    TS_EXPECT_ERROR(ts_call(rt->cp[0], NULL, "GET", "/v1/dps-instances/" D1 "/stamp-ops", NULL), 401, "unauthorized");
    TS_EXPECT_ERROR(ts_admin(rt->cp[0], "GET", "/v1/dps-instances/no-such-dps/stamp-ops", NULL), 404, "not_found");
}

/* A router stopped (SIGTERM) while a delivery hangs on a stalled stamp
 * connection exits at once and cleanly (exit 0; under ASan: no leak); the op
 * stays in the outbox (its lease brings it back to any router). */
static void test_shutdown_with_op_in_flight(void **state)
{
    struct ts_cp *cp = rt->cp[0];
    struct ts_tcpproxy *px = ts_tcpproxy_start(agents[0].hostport);
    int64_t t0;
    int rc;
    (void)state;

    place_and_register("crash-stop-1");
    ts_tcpproxy_set_mode(px, TS_PROXY_STALL);
    TS_EXPECT_STATUS(ts_admin(cp, "PATCH", "/v1/dps-instances/" D1, ts_json("{'endpoint':'%s'}", ts_tcpproxy_addr(px))),
                     200);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/tenants/acme/devices/crash-stop-1/deprovision", NULL), 200);
    /* the op claimed and a call hanging on the stall (the enrollment sync and
     * the drift pass call the same endpoint: a live connection alone is not
     * the op's; under ASan the op's first call may also have ended before) */
    for (int i = 0; i < 100 && !(ts_tcpproxy_live(px) > 0 && op_claimed("crash-stop-1")); i++)
        ts_sleep_ms(100);
    if (ts_tcpproxy_live(px) == 0 || !op_claimed("crash-stop-1"))
        ts_fail("no delivery reached the stalled stamp connection");
    t0 = ts_now_ms();
    rc = ts_controlplane_stop(cp, 8000);
    ts_log("router stopped with a delivery in flight: exit %d in %lld ms", rc, (long long)(ts_now_ms() - t0));
    assert_int_equal(rc, 0);
    if (ts_now_ms() - t0 > 5000)
        ts_fail("the router took %lld ms to stop", (long long)(ts_now_ms() - t0));
    /* nothing lost: the op is still in the outbox, for any router to take */
    assert_int_equal(ts_pg_count(eu(), "SELECT count(*) FROM stamp_ops WHERE registration_id = 'crash-stop-1'"), 1);
    ts_tcpproxy_stop(px);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_down_stamp),
        cmocka_unit_test(test_kill_between_commit_and_delivery),
        cmocka_unit_test(test_dead_instance_holds_back_only_its_ops),
        cmocka_unit_test(test_reprovisioned_during_delivery),
        cmocka_unit_test(test_stamp_ops_route_platform_only),
        cmocka_unit_test(test_shutdown_with_op_in_flight),
    };
    ts_init("test_stamp_ops_crash");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
