/*
 * test_stamp_ops_same_stamp - a device moved between two DPS instances of one
 * stamp keeps its hub identity (schema/geo/010, controlplane/stamp_ops.c).
 *
 * The two instances share the stamp's hubs, so the registration at the new
 * instance lands on the same hub under the same device id and takes the
 * identity over (docs/stamp-dps.md, "Hub registry"). The remove_moved op of
 * the old instance must then delete only the old registration: deleting the
 * identity it read there would cut off the device's new registration.
 *
 * Layout: stamp eu-west-1 with instances eu-west-1-dps and eu-west-1-dps-b,
 * one hub, one agent serving both. The device is placed and registered, its
 * assignment is moved to the other instance by hand (the trigger writes the
 * remove_moved op), and it registers there: once the op is delivered, the
 * old registration is gone (404 404202), the new one is assigned, and the
 * hub identity is still there, enabled, with the device's history saying
 * stamp_removed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <libpq-fe.h>
#include <signal.h>

#include "ts.h"
#include "ts_stamp.h"

#define KEY_NAME "provisioningserviceowner"
#define S1 "eu-west-1"
#define DA "eu-west-1-dps"
#define DB "eu-west-1-dps-b"
#define HUB "eu-west-1-hub"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", NULL },
    .regions = { { "eu-west", "eu" }, { NULL, NULL } },
    .stamps = {
        { .id = S1, .region = "eu-west", .dps = { { DA, 0, 0 }, { DB, 0, 0 } }, .hubs = { { HUB, 0 } } },
        { .id = NULL },
    },
};
static const char *const dps_ids[1] = { DA };
static struct ts_stamp agents[1];
static struct ts_tenant *acme;

static const char *eu(void) { return ts_rt_geo_db(rt, "eu"); }

/* The agent serves both instances: its config gets the second, it starts
 * again, and the catalog names it as the second's endpoint and service. */
static void serve_second_instance(void)
{
    struct ts_stamp *a = &agents[0];
    json_t *cfg = json_load_file(a->config_path, 0, NULL);
    json_t *insts = cfg ? json_object_get(json_object_get(cfg, "provisioning"), "instances") : NULL;
    struct ts_resp *r;
    if (!json_is_array(insts))
        ts_fail("agent config %s has no provisioning.instances", a->config_path);
    json_array_append_new(insts, json_pack("{s:s, s:s}", "id", DB, "idScope", ts_rt_id_scope(DB)));
    if (json_dump_file(cfg, a->config_path, JSON_INDENT(2)) != 0)
        ts_fail("cannot write %s", a->config_path);
    json_decref(cfg);
    ts_proc_kill(a->proc, SIGKILL);
    ts_rt_dps_agent_restart(rt, S1, a);
    r = ts_admin(rt->cp[0], "PATCH", "/v1/dps-instances/" DB,
                 ts_str("{\"endpoint\":\"%s\",\"serviceKeyName\":\"%s\",\"serviceKey\":\"%s\"}", a->hostport, KEY_NAME,
                        a->policy_key));
    TS_EXPECT_STATUS(r, 200);
}

static int setup(void **state)
{
    struct ts_rt_served_opts o = { .enrollment_sync_ms = 500, .policy = KEY_NAME,
                                   .cp_extra = "\"stampOps\": {\"pollMs\": 200, \"maxBackoffMs\": 1000}" };
    int64_t deadline;
    (void)state;
    rt = ts_rt_start_served_ready(&o, &layout, dps_ids, agents, 1);
    serve_second_instance();
    acme = ts_rt_tenant_synced(rt, DA, eu(), TS_RT_ACME_JSON);
    deadline = ts_now_ms() + 15000;
    while (!ts_rt_group_synced(rt, DB, eu(), "acme", 0) && ts_now_ms() < deadline)
        ts_sleep_ms(100);
    if (!ts_rt_group_synced(rt, DB, eu(), "acme", 0))
        ts_fail("acme's group did not reach %s: %s", DB,
                ts_resp_str(ts_admin(rt->cp[0], "GET", "/v1/dps-instances/" DB "/enrollment-sync", NULL)));
    return 0;
}

/* The device registers at instance dps with its group-derived key: its registrationState. */
static json_t *register_at(const char *dps, const char *regid)
{
    const char *scope = ts_rt_id_scope(dps);
    struct ts_resp *r = ts_stamp_provision(&agents[0], scope, regid,
                                           ts_device_sas(scope, regid, ts_derive_key(acme->key_b64, regid), 0), 15000);
    json_t *st = r->json ? json_object_get(r->json, "registrationState") : NULL;
    if (r->status != 200 || !st || !ts_jstr(st, "assignedHub"))
        ts_fail("%s did not register at %s: %s", regid, dps, ts_resp_str(r));
    return st;
}

static struct ts_resp *reg_get(const char *dps, const char *regid)
{
    return ts_stamp_service(&agents[0], NULL, "GET",
                            ts_str("/registrations/%s?api-version=2021-10-01&dpsInstance=%s", regid, dps), NULL);
}

static bool no_ops(void *arg)
{
    return ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = '%s'", (const char *)arg)) == 0;
}

static void test_move_within_stamp_keeps_identity(void **state)
{
    const char *from, *to, *hub, *devid;
    json_t *st;
    struct ts_resp *r;
    (void)state;
    r = ts_rt_locate(rt->cp[0], acme, "mv-1");
    TS_EXPECT_STATUS(r, 200);
    from = ts_pg_scalar(eu(), "SELECT dps_id FROM devices WHERE tenant_id = 'acme' AND registration_id = 'mv-1'");
    to = strcmp(from, DA) == 0 ? DB : DA;
    st = register_at(from, "mv-1");
    hub = ts_jstr(st, "assignedHub");
    devid = ts_jstr(st, "deviceId");

    /* the assignment moves to the other instance of the stamp (the trigger writes remove_moved) */
    PQclear(ts_pg_query(eu(), ts_str("UPDATE devices SET dps_id = '%s', id_scope = '%s', etag = etag + 1"
                                     " WHERE tenant_id = 'acme' AND registration_id = 'mv-1'", to, ts_rt_id_scope(to))));
    assert_int_equal(ts_pg_count(eu(), ts_str("SELECT count(*) FROM stamp_ops WHERE registration_id = 'mv-1'"
                                              " AND op = 'remove_moved' AND dps_id = '%s'", from)), 1);
    /* the device comes to its new instance: same hub, same device id, the identity taken over */
    st = register_at(to, "mv-1");
    TS_EXPECT_STREQ(ts_jstr(st, "assignedHub"), hub);
    TS_EXPECT_STREQ(ts_jstr(st, "deviceId"), devid);

    if (!ts_wait_until(no_ops, "mv-1", 15000))
        ts_fail("the remove_moved op was not delivered: %s",
                ts_pg_scalar(eu(), "SELECT coalesce(string_agg(op || ' ' || coalesce(last_error, ''), '; '), '')"
                                   " FROM stamp_ops WHERE registration_id = 'mv-1'"));
    r = reg_get(from, "mv-1");
    TS_EXPECT_STATUS(r, 404);
    assert_int_equal(ts_jint(r->json, "errorCode", 0), 404202);
    r = reg_get(to, "mv-1");
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    r = ts_hub_registry(&agents[0], hub, ts_hub_sas(&agents[0], hub, NULL), "GET",
                        ts_str("/devices/%s?api-version=2021-04-12", devid), NULL, NULL);
    if (r->status != 200)
        ts_fail("the moved device's hub identity was deleted: %s", ts_resp_str(r));
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "enabled");
    r = ts_admin(rt->cp[0], "GET", "/v1/tenants/acme/devices/mv-1", NULL);
    TS_EXPECT_STATUS(r, 200);
    if (!strstr(r->body, "\"stamp_removed\"") || !strstr(r->body, "hub identity kept"))
        ts_fail("no stamp_removed (identity kept) in the history: %s", ts_resp_str(r));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_move_within_stamp_keeps_identity),
    };
    ts_init("test_stamp_ops_same_stamp");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
