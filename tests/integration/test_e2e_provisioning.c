/*
 * test_e2e_provisioning - end to end: tenant onboarding to a device on a hub,
 * with the real stamp agents' provisioning service (no mock DPS) and the
 * official Azure IoT device SDK (Node.js).
 *
 * Layout: geographies eu and us; stamp eu-west-1 (region eu-west) and
 * us-east-1 (region us-east), each with one DPS instance and two hubs. Every
 * stamp agent runs its `provisioning` section: a TLS endpoint on 127.0.0.1
 * (the test PKI's server certificate, ts_pki_server()), the
 * geography's database (the one the control plane uses), one service policy
 * "provisioningserviceowner" with a random key. The DPS instances are
 * registered with that endpoint and service credentials, so the control
 * plane's enrollment reconciler (dps.enrollmentSyncMs 500) keeps every
 * tenant's enrollment group on the instances its residency admits.
 *
 * Covered:
 *  - tenant acme (residency eu): its group appears on the eu instance only
 *    (GET /v1/dps-instances/{id}/enrollment-sync and dps_enrollments);
 *  - approach 1: locate with a device SAS token -> eu stamp's endpoint and
 *    idScope; the official SDK registers there with the derived device key ->
 *    assigned to an eu hub through group "acme"; the same device at the us
 *    stamp -> UnauthorizedError (no group there);
 *  - approach 2: provision through the router -> an eu hub, recorded in the
 *    stamp's dps_registrations and in the admin view;
 *  - every device that got a 200 is in the eu geography database only.
 *
 * The set-up is the standard served one (ts_rt_start_served, ts_stamp.h).
 * The SDK: tests/sdk/provision-symkey.js (with its port shim) on the
 * packages ts_sdk_modules() installs once per build directory, run by
 * ts_sdk_symkey with NODE_EXTRA_CA_CERTS = ts_pki_ca(), so the stamps' TLS is
 * verified by the SDK as by the router (dps.caFile).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "envelope.h"
#include "ts.h"
#include "ts_devrun.h"
#include "ts_stamp.h"

#define TENANT "acme"
#define KEY_NAME "provisioningserviceowner"
#define EU_STAMP "eu-west-1"
#define US_STAMP "us-east-1"
#define EU_DPS "eu-west-1-dps"
#define US_DPS "us-east-1-dps"

static struct ts_rt *rt;
static struct ts_rt_layout layout = {
    .geographies = { "eu", "us", NULL },
    .regions = { { "eu-west", "eu" }, { "us-east", "us" }, { NULL, NULL } },
    .stamps = {
        { .id = EU_STAMP, .region = "eu-west", .dps = { { EU_DPS, 0, 0 } },
          .hubs = { { "eu-west-1-hub-1", 0 }, { "eu-west-1-hub-2", 0 } } },
        { .id = US_STAMP, .region = "us-east", .dps = { { US_DPS, 0, 0 } },
          .hubs = { { "us-east-1-hub-1", 0 }, { "us-east-1-hub-2", 0 } } },
        { .id = NULL },
    },
};

/* The agents serving the two DPS instances (ts_rt_start_served). */
static const char *const dps_ids[2] = { EU_DPS, US_DPS };
static struct ts_stamp agents[2];

static struct ts_tenant *tenant;
static int64_t tenant_created_ms;

/* Devices that got a 200 from the router (checked in the geography databases at the end). */
static const char *answered[8];
static int nanswered;

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

/* The official SDK registers regid with its derived device key (individual
 * mode: the key is derived here, as a device's installer would) at endpoint. */
static json_t *sdk_register(const char *endpoint, const char *scope, const char *regid, int *rc)
{
    struct ts_stamp at = { .hostport = endpoint };
    json_t *out = ts_sdk_symkey(&at, scope, regid, ts_derive_key(tenant->key_b64, regid), false, NULL, rc);
    ts_log("SDK %s at %s (%s): exit %d %s", regid, endpoint, scope, *rc, ts_jdump(out));
    return out;
}

static bool is_hub_of(const char *stamp_id, const char *host)
{
    struct ts_rt_stamp *s = ts_rt_find_stamp(rt, stamp_id);
    return s && ts_rt_stamp_has_hub(s, host);
}

static json_t *sync_status(const char *dps)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/dps-instances/%s/enrollment-sync", dps), NULL);
    return r->status == 200 ? r->json : NULL;
}

/* in_sync, from a pass that started after the tenant was created */
static bool sync_fresh(const char *dps, json_t **out)
{
    json_t *st = sync_status(dps);
    const char *state = ts_jstr(st, "state");
    int64_t at = ts_parse_rfc3339(ts_jstr(st, "lastRunAt"));
    *out = st;
    return st && state && strcmp(state, "in_sync") == 0 && at > tenant_created_ms;
}

static long enrollments(const char *geo, const char *dps, const char *group)
{
    return ts_pg_count(ts_rt_geo_db(rt, geo),
                       ts_str("SELECT count(*) FROM dps_enrollments WHERE dps_id = '%s' AND kind = 'group' "
                              "AND enrollment_id = '%s'", dps, group));
}

static void remember(const char *regid)
{
    for (int i = 0; i < nanswered; i++)
        if (strcmp(answered[i], regid) == 0)
            return;
    answered[nanswered++] = regid;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    struct ts_rt_served_opts o = { .enrollment_sync_ms = 500, .policy = KEY_NAME };
    (void)state;

    ts_log("device SDK from %s", ts_sdk_modules());
    rt = ts_rt_start_served_ready(&o, &layout, dps_ids, agents, 2);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

/* Before any tenant: both instances reconcile to nothing (proves the service credentials work). */
static void test_sync_before_tenant(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        json_t *st = NULL;
        int64_t deadline = ts_now_ms() + 10000;
        const char *s;
        while (!((st = sync_status(dps_ids[i])) && (s = ts_jstr(st, "state")) && strcmp(s, "in_sync") == 0) &&
               ts_now_ms() < deadline)
            ts_sleep_ms(100);
        if (!st || strcmp(ts_jstr(st, "state") ? ts_jstr(st, "state") : "", "in_sync") != 0)
            ts_fail("enrollment-sync of %s not in_sync 10 s after its agent started: %s", dps_ids[i],
                    ts_resp_str(ts_admin(rt->cp[0], "GET",
                                         ts_str("/v1/dps-instances/%s/enrollment-sync", dps_ids[i]), NULL)));
        assert_int_equal(ts_jint(st, "desiredGroups", -1), 0);
    }
}

static void test_tenant_group_synced_to_residency_only(void **state)
{
    json_t *eu = NULL, *us = NULL;
    int64_t deadline;
    (void)state;

    tenant_created_ms = ts_now_ms() - 1;
    tenant = ts_rt_tenant(rt->cp[0], ts_json("{'id':'%s','name':'Acme','residency':{'geographies':['eu']}}", TENANT));
    deadline = ts_now_ms() + 8000;
    for (;;) {
        bool eu_ok = sync_fresh(EU_DPS, &eu) && ts_jint(eu, "desiredGroups", -1) >= 1 &&
                     enrollments("eu", EU_DPS, TENANT) == 1;
        bool us_ok = sync_fresh(US_DPS, &us);
        if ((eu_ok && us_ok) || ts_now_ms() >= deadline)
            break;
        ts_sleep_ms(100);
    }
    if (!sync_fresh(EU_DPS, &eu) || ts_jint(eu, "desiredGroups", -1) < 1 || enrollments("eu", EU_DPS, TENANT) != 1)
        ts_fail("group %s not on %s 8 s after the tenant was created: status %s, rows %ld", TENANT, EU_DPS,
                ts_jdump(eu),
                enrollments("eu", EU_DPS, TENANT));
    if (!sync_fresh(US_DPS, &us))
        ts_fail("no in_sync pass on %s after the tenant was created: %s", US_DPS,
                ts_jdump(us));
    assert_int_equal(ts_jint(us, "desiredGroups", -1), 0);
    assert_int_equal(enrollments("us", US_DPS, TENANT), 0);
    assert_int_equal(enrollments("eu", US_DPS, TENANT), 0);
    /* the group is a symmetric-key group carrying the tenant's enrollment key, stored
     * sealed (common/envelope.h): it opens, with the group's AAD, to that key */
    {
        const char *stored = ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                          ts_str("SELECT doc->'attestation'->'symmetricKey'->>'primaryKey' FROM "
                                                 "dps_enrollments WHERE dps_id = '%s' AND kind = 'group' AND "
                                                 "enrollment_id = '%s'", EU_DPS, TENANT));
        char err[300], text[128], aad[ENVELOPE_AAD_MAX];
        struct envelope *env = envelope_load(ts_kek_file(), err, sizeof err);
        if (!env)
            ts_fail("%s", err);
        if (!stored || strncmp(stored, "enc:v1:", 7) != 0)
            ts_fail("the group's primaryKey is not stored sealed");
        envelope_aad_stamp_key(aad, sizeof aad, EU_DPS, "group", TENANT);
        assert_int_equal(envelope_open_text(env, stored, aad, text, sizeof text), ENVELOPE_OK);
        TS_EXPECT_STREQ(text, tenant->key_b64);
        envelope_free(env);
    }
}

/* GET /v1/inventory?tenant=acme lists the tenant's group at the eu stamp with >= 1 device. */
static bool inventory_has_group(void *arg)
{
    struct ts_resp *r = ts_admin(rt->cp[0], "GET", ts_str("/v1/inventory?tenant=%s", TENANT), NULL);
    json_t *g;
    size_t i;
    (void)arg;
    if (r->status != 200)
        return false;
    json_array_foreach(json_object_get(r->json, "groups"), i, g)
        if (ts_jstr(g, "stamp") && strcmp(ts_jstr(g, "stamp"), EU_STAMP) == 0 && ts_jstr(g, "dps") &&
            strcmp(ts_jstr(g, "dps"), EU_DPS) == 0 && ts_jstr(g, "group") &&
            strcmp(ts_jstr(g, "group"), TENANT) == 0 && ts_jint(g, "devices", 0) >= 1)
            return true;
    return false;
}

/* Approach 1: locate at the router, then the official SDK at the stamp. */
static void test_locate_then_sdk(void **state)
{
    struct ts_resp *r;
    json_t *out, *rs;
    int rc;
    (void)state;
    assert_non_null(tenant);

    r = ts_rt_locate(rt->cp[0], tenant, "dev-1");
    TS_EXPECT_STATUS(r, 200);
    remember("dev-1");
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(r->json, "dpsEndpoint"), agents[0].hostport);
    TS_EXPECT_STREQ(ts_jstr(r->json, "idScope"), ts_rt_id_scope(EU_DPS));

    out = sdk_register(ts_jstr(r->json, "dpsEndpoint"), ts_jstr(r->json, "idScope"), "dev-1", &rc);
    rs = rc == 0 ? out : NULL;
    if (!rs || !ts_jstr(rs, "status"))
        ts_fail("SDK registration of dev-1 at %s failed (exit %d): %s", agents[0].hostport, rc,
                ts_jdump(out));
    TS_EXPECT_STREQ(ts_jstr(rs, "status"), "assigned");
    TS_EXPECT_STREQ(ts_jstr(rs, "registrationId"), "dev-1");
    if (!is_hub_of(EU_STAMP, ts_jstr(rs, "assignedHub")))
        ts_fail("dev-1 assigned to %s, not a hub of %s", ts_jstr(rs, "assignedHub") ? ts_jstr(rs, "assignedHub")
                                                                                      : "(none)", EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(json_object_get(rs, "symmetricKey"), "enrollmentGroupId"), TENANT);
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub FROM dps_registrations "
                                        "WHERE dps_id = '%s' AND registration_id = 'dev-1'", EU_DPS)),
                    ts_str("assigned %s", ts_jstr(rs, "assignedHub")));
    /* The stamp counts per group every 5 s and reports; the inventory shows it. */
    if (!ts_wait_until(inventory_has_group, NULL, 15000))
        ts_fail("GET /v1/inventory?tenant=%s never listed group %s at %s with a device: %s", TENANT, TENANT,
                EU_STAMP, ts_jdump(ts_admin(rt->cp[0], "GET", ts_str("/v1/inventory?tenant=%s", TENANT), NULL)->json));
}

/* The same device at the us stamp: outside the residency, no group there -> 401. */
static void test_sdk_outside_residency_unauthorized(void **state)
{
    json_t *out;
    int rc;
    (void)state;
    assert_non_null(tenant);

    out = sdk_register(agents[1].hostport, ts_rt_id_scope(US_DPS), "dev-1", &rc);
    if (rc == 0)
        ts_fail("dev-1 registered at the us stamp (outside its residency): %s",
                ts_jdump(out));
    /* like Azure DPS: a credential no enrollment accepts is 401 (the SDK's UnauthorizedError) */
    if (strcmp(ts_jstr(out, "name") ? ts_jstr(out, "name") : "", "UnauthorizedError") != 0 ||
        ts_jint(out, "statusCode", 0) != 401)
        ts_fail("dev-1 at the us stamp (no group for %s there): expected UnauthorizedError (401), got %s", TENANT,
                ts_jdump(out));
    assert_int_equal(ts_pg_count(ts_rt_geo_db(rt, "us"),
                                 "SELECT count(*) FROM dps_registrations WHERE registration_id = 'dev-1' "
                                 "AND status = 'assigned'"),
                     0);
}

/* Approach 2: the router registers the device at the stamp's DPS itself. */
static void test_proxy_provision(void **state)
{
    struct ts_resp *r, *dev;
    const char *hub;
    (void)state;
    assert_non_null(tenant);

    r = ts_rt_device(rt->cp[0], "provision", TENANT, "dev-2", ts_rt_sas(tenant, "dev-2", 0), NULL);
    TS_EXPECT_STATUS(r, 200);
    remember("dev-2");
    TS_EXPECT_STREQ(ts_jstr(r->json, "geography"), "eu");
    TS_EXPECT_STREQ(ts_jstr(r->json, "stamp"), EU_STAMP);
    TS_EXPECT_STREQ(ts_jstr(r->json, "status"), "assigned");
    hub = ts_jstr(r->json, "assignedHub");
    if (!is_hub_of(EU_STAMP, hub))
        ts_fail("dev-2 provisioned to %s, not a hub of %s: %s", hub ? hub : "(none)", EU_STAMP, ts_resp_str(r));
    TS_EXPECT_STREQ(ts_pg_scalar(ts_rt_geo_db(rt, "eu"),
                                 ts_str("SELECT status || ' ' || assigned_hub || ' ' || enrollment_id "
                                        "FROM dps_registrations WHERE dps_id = '%s' AND registration_id = 'dev-2'",
                                        EU_DPS)),
                    ts_str("assigned %s %s", hub, TENANT));
    dev = ts_admin(rt->cp[0], "GET", ts_str("/v1/tenants/%s/devices/dev-2", TENANT), NULL);
    TS_EXPECT_STATUS(dev, 200);
    TS_EXPECT_STREQ(ts_jstr(dev->json, "assignedHub"), hub);
}

static void test_devices_stay_in_eu(void **state)
{
    (void)state;
    assert_true(nanswered >= 2);
    for (int i = 0; i < nanswered; i++) {
        const char *q = ts_str("SELECT count(*) FROM devices WHERE tenant_id = '%s' AND registration_id = '%s'",
                               TENANT, answered[i]);
        if (ts_pg_count(ts_rt_geo_db(rt, "eu"), q) != 1)
            ts_fail("%s got a 200 but has no row in the eu geography database", answered[i]);
        if (ts_pg_count(ts_rt_geo_db(rt, "us"), q) != 0)
            ts_fail("%s has a row in the us geography database", answered[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_before_tenant),
        cmocka_unit_test(test_tenant_group_synced_to_residency_only),
        cmocka_unit_test(test_locate_then_sdk),
        cmocka_unit_test(test_sdk_outside_residency_unauthorized),
        cmocka_unit_test(test_proxy_provision),
        cmocka_unit_test(test_devices_stay_in_eu),
    };
    ts_init("test_e2e_provisioning");
    return ts_finish(cmocka_run_group_tests(tests, setup, NULL));
}
